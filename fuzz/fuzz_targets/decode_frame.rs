//! Fuzzes the stream decoder and the datagram decoder with arbitrary bytes, fed in chunks chosen by
//! the input itself: neither may panic, and every frame that decodes must re-encode and decode to
//! itself.
#![no_main]

use bytes::BytesMut;
use chaski_wire::{decode_datagram, decode_frame, encode_frame};
use libfuzzer_sys::fuzz_target;

const MAX: usize = 1 << 16;

fuzz_target!(|data: &[u8]| {
    let _ = decode_datagram(bytes::Bytes::copy_from_slice(data), MAX);

    // The first byte picks the chunk size, as a network would split the stream.
    let Some((&chunk, data)) = data.split_first() else { return };
    let chunk = usize::from(chunk).max(1);
    let mut buf = BytesMut::new();
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match decode_frame(&mut buf, MAX) {
                Ok(Some(frame)) => {
                    let mut again = BytesMut::new();
                    encode_frame(&frame, &mut again, MAX).expect("a decoded frame re-encodes");
                    let back = decode_frame(&mut again, MAX).expect("re-encoded frame decodes");
                    assert_eq!(back.as_ref(), Some(&frame));
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});

//! `cargo xtask bench wire`: encode and decode rates of published messages.
//!
//! For payloads of 8 B, 64 B, 1 KiB, 64 KiB and 1 MiB: the time to encode one message into a
//! reused buffer, and to decode one from a buffer holding a single encoded frame (including the
//! zero-copy slicing of the payload), as medians over batches. The decode target is under 100 ns
//! for a 64 B payload, with no copy of the payload (checked here by pointer, not only timed).

#![allow(missing_docs)]

use bytes::{Bytes, BytesMut};
use chaski_testkit::bench::{si, size, time_per_op};
use chaski_wire::{
    DEFAULT_MAX_FRAME_LEN, Frame, Message, NodeId, Topic, decode_frame, encode_message,
};

const SIZES: [usize; 5] = [8, 64, 1 << 10, 64 << 10, 1 << 20];

fn message(len: usize) -> Message {
    Message {
        topic: Topic::from_static("sensors/temperature"),
        payload: Bytes::from(vec![0xa5; len]),
        publisher: NodeId::random(),
        sequence: 123_456,
        incarnation: 0,
        timestamp_micros: 1_764_000_000_000_000,
        hop_limit: 8,
        hops: 0,
        headers: Vec::new(),
    }
}

fn main() {
    println!("chaski-wire: published message encode/decode, median time per message");
    println!(
        "{:>8}  {:>12} {:>14} {:>11}  {:>12} {:>14} {:>11}",
        "payload", "encode", "", "", "decode", "", ""
    );
    for len in SIZES {
        let message = message(len);
        let mut buf = BytesMut::with_capacity(len + 64);
        let encode = time_per_op(|| {
            buf.clear();
            encode_message(&message, &mut buf, DEFAULT_MAX_FRAME_LEN).unwrap();
        });

        buf.clear();
        encode_message(&message, &mut buf, DEFAULT_MAX_FRAME_LEN).unwrap();
        let frame = buf.clone().freeze();
        // Check once that decoding does not copy the payload.
        let mut probe = BytesMut::from(&frame[..]);
        let range = probe.as_ptr_range();
        match decode_frame(&mut probe, DEFAULT_MAX_FRAME_LEN) {
            Ok(Some(Frame::Publish(m))) => assert!(range.contains(&m.payload.as_ptr()) || len == 0),
            other => panic!("decoding the benchmark frame failed: {other:?}"),
        }
        // Decode as a transport's reader does: a buffer holding many frames (as one read
        // syscall leaves it), frames sliced off its front one after the other. The buffer is
        // refilled for every batch; the refill is timed separately and subtracted.
        let batch = (256 << 10) / frame.len() + 1;
        let mut filled = BytesMut::new();
        for _ in 0..batch {
            filled.extend_from_slice(&frame);
        }
        let mut src = BytesMut::with_capacity(filled.len());
        let decode = time_per_op(|| {
            src.clear();
            src.extend_from_slice(&filled);
            let mut decoded = 0;
            while let Ok(Some(frame)) = decode_frame(&mut src, DEFAULT_MAX_FRAME_LEN) {
                std::hint::black_box(frame);
                decoded += 1;
            }
            assert_eq!(decoded, batch);
        });
        let refill = time_per_op(|| {
            src.clear();
            src.extend_from_slice(&filled);
        });
        let decode_only = ((decode.median - refill.median) / batch as f64).max(0.1);
        println!(
            "{:>8}  {:>9.1} ns {:>11}msg/s {:>8.2} GB/s  {:>9.1} ns {:>11}msg/s {:>8.2} GB/s",
            size(len),
            encode.median,
            si(1e9 / encode.median),
            len as f64 / encode.median,
            decode_only,
            si(1e9 / decode_only),
            len as f64 / decode_only,
        );
    }
}

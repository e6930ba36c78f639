//! Allocation behaviour of the decoder, checked with a counting global allocator: an oversized
//! length prefix is rejected without allocating anything, and a partial frame reserves nothing.
#![allow(missing_docs, unsafe_code)]

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicUsize, Ordering},
};

use bytes::{BufMut, BytesMut};
use chaski_wire::{DEFAULT_MAX_FRAME_LEN, DecodeError, decode_frame};

struct Counting;

static ALLOCATED: AtomicUsize = AtomicUsize::new(0);

// Test-only: a global allocator must be `unsafe impl`. It counts every allocation of this test
// binary and forwards to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size(), Ordering::SeqCst);
        // SAFETY: forwarded unchanged to the system allocator, with the caller's guarantees.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` in `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Bytes allocated while running `f`. Only one test runs in this binary, so nothing else
/// allocates concurrently.
fn allocated_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = ALLOCATED.load(Ordering::SeqCst);
    let out = f();
    (out, ALLOCATED.load(Ordering::SeqCst) - before)
}

#[test]
fn hostile_length_prefixes_allocate_nothing() {
    // 1. A prefix claiming 4 GiB, far over the maximum.
    let mut huge = BytesMut::with_capacity(16);
    huge.put_u32(u32::MAX);
    let (result, bytes) = allocated_during(|| decode_frame(&mut huge, DEFAULT_MAX_FRAME_LEN));
    assert!(
        matches!(result, Err(DecodeError::FrameTooLarge { len, .. }) if len == u32::MAX as usize)
    );
    assert_eq!(
        bytes, 0,
        "rejecting an oversized prefix allocated {bytes} bytes"
    );

    // 2. A prefix claiming exactly the maximum, followed by a few bytes: a partial frame, for
    //    which nothing may be reserved.
    let mut partial = BytesMut::with_capacity(16);
    partial.put_u32(DEFAULT_MAX_FRAME_LEN as u32);
    partial.put_slice(b"abc");
    let (result, bytes) = allocated_during(|| decode_frame(&mut partial, DEFAULT_MAX_FRAME_LEN));
    assert!(matches!(result, Ok(None)));
    assert_eq!(bytes, 0, "a partial frame allocated {bytes} bytes");
    assert_eq!(partial.capacity(), 16);
}

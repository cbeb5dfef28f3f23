//! Decoding a plain PUBLISH (no properties) must not allocate: the packet is
//! split off the read buffer and topic and payload are slices of it.
//!
//! A counting global allocator (per thread, so the test harness's own
//! threads don't interfere) checks it.

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::BytesMut;
use midge_protocol::{decode, Packet, Version};

#[derive(Debug)]
struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn count() {
    let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
}

// SAFETY: forwards to the system allocator; only adds a counter.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

#[test]
fn counter_counts() {
    let before = allocations();
    let v = std::hint::black_box(vec![1u8; 10]);
    assert!(allocations() > before);
    drop(v);
}

#[test]
fn plain_publish_decodes_without_allocating() {
    let publish_v311: &[u8] = &[
        0x32, 0x0a, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x01, b'x', b'y', b'z',
    ];
    let publish_v5: &[u8] = &[0x30, 0x07, 0x00, 0x03, b'a', b'/', b'b', 0x00, b'!'];
    for (version, packet) in [(Version::V311, publish_v311), (Version::V5, publish_v5)] {
        let mut buf = BytesMut::with_capacity(4096);
        for _ in 0..4 {
            buf.extend_from_slice(packet);
        }
        // The first split turns the buffer into a shared one (one allocation
        // inside `bytes`, once per buffer); after that decoding is free.
        let first = decode(&mut buf, Some(version), 1024);
        assert!(matches!(first, Ok(Some(Packet::Publish(_)))));
        for _ in 0..3 {
            let before = allocations();
            let decoded = decode(&mut buf, Some(version), 1024);
            let after = allocations();
            let Ok(Some(Packet::Publish(p))) = decoded else {
                panic!("{decoded:?}")
            };
            assert_eq!(&*p.topic, "a/b");
            assert_eq!(after - before, 0, "decoding a plain PUBLISH allocated");
        }
    }
}

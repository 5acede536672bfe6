//! Per-thread free lists of what every request needs and gives back when it
//! is done: read buffers, the bytes of an outgoing head, header maps. A
//! gateway worker serves all its connections on one thread, so taking and
//! giving back is a push and a pop, with no lock and no allocator call (as
//! nginx's per-worker free lists of buffers and chains).
//!
//! Only what is cheap to keep is kept: few per thread, small ones, and read
//! buffers only when no `Bytes` still shares them (so reusing one never
//! copies or reallocates). Anything else is simply dropped.

use std::cell::RefCell;

use bytes::BytesMut;
use http::HeaderMap;

/// Kept per thread, per kind: enough for the requests one worker has in
/// flight at a time in a burst, small next to the connections it holds.
const KEEP: usize = 64;
/// Buffers and heads that grew past this (large bodies, huge heads) go back
/// to the allocator.
const MAX_BYTES: usize = 16 * 1024;
/// Header maps with room for more fields than this are not kept.
const MAX_FIELDS: usize = 128;

thread_local! {
    static BUFFERS: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
    static HEADS: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    static MAPS: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
    static VALUES: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// Field values made here (request ids, trace contexts) are cut from one
/// per-thread block: an allocation per few dozen values, not one each.
const VALUE_BLOCK: usize = 4096;

/// A copy of `text` (a field value made here: ids, hex), as shared bytes.
pub fn made(text: &[u8]) -> bytes::Bytes {
    let cut = |block: &mut BytesMut| {
        if block.capacity() - block.len() < text.len() {
            *block = BytesMut::with_capacity(VALUE_BLOCK.max(text.len()));
        }
        block.extend_from_slice(text);
        block.split().freeze()
    };
    VALUES.try_with(|b| cut(&mut b.borrow_mut())).unwrap_or_else(|_| bytes::Bytes::copy_from_slice(text))
}

fn take<T>(list: &'static std::thread::LocalKey<RefCell<Vec<T>>>) -> Option<T> {
    list.try_with(|l| l.borrow_mut().pop()).ok().flatten()
}

fn give<T>(list: &'static std::thread::LocalKey<RefCell<Vec<T>>>, item: T) {
    // During thread teardown the list may be gone: then the item is just dropped.
    let _ = list.try_with(|l| {
        let mut l = l.borrow_mut();
        if l.len() < KEEP {
            l.push(item);
        }
    });
}

/// An empty read buffer, with the room of the one last given back.
pub fn buffer() -> BytesMut {
    take(&BUFFERS).unwrap_or_default()
}

/// Keeps `buf` for the next [`buffer`] if it is empty, small and no longer
/// shared with any `Bytes` cut from it.
pub fn give_buffer(mut buf: BytesMut) {
    if buf.is_empty() && buf.try_reclaim(super::INITIAL_BUFFER) && buf.capacity() <= MAX_BYTES {
        give(&BUFFERS, buf);
    }
}

/// An empty byte vector with room for at least `capacity` bytes.
pub fn head(capacity: usize) -> Vec<u8> {
    let mut v = take(&HEADS).unwrap_or_default();
    v.reserve(capacity);
    v
}

pub fn give_head(mut v: Vec<u8>) {
    if v.capacity() <= MAX_BYTES {
        v.clear();
        give(&HEADS, v);
    }
}

/// An empty header map with room for `fields` fields.
pub fn map(fields: usize) -> HeaderMap {
    let mut m = take(&MAPS).unwrap_or_default();
    m.reserve(fields);
    m
}

/// Keeps `map`, emptied (which also releases the read buffers its values
/// share), for the next [`map`].
pub fn give_map(mut map: HeaderMap) {
    map.clear();
    // A map that never held anything (a response whose fields stayed raw) has no room worth keeping.
    if map.capacity() > 0 && map.capacity() <= MAX_FIELDS {
        give(&MAPS, map);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut as _;

    #[test]
    fn a_buffer_is_kept_only_when_nothing_shares_it() {
        let mut buf = BytesMut::with_capacity(1024);
        buf.put_slice(b"GET / HTTP/1.1\r\n\r\n");
        let head = buf.split().freeze();
        give_buffer(buf);
        // `head` still shares the allocation: it was not kept.
        assert_eq!(buffer().capacity(), 0);
        drop(head);

        let mut buf = BytesMut::with_capacity(1024);
        buf.put_slice(b"GET / HTTP/1.1\r\n\r\n");
        let head = buf.split().freeze();
        let ptr2 = head.as_ptr();
        drop(head);
        give_buffer(buf);
        let again = buffer();
        assert!(again.capacity() >= 1024, "the whole allocation is usable again");
        assert_eq!(again.as_ptr(), ptr2, "the same allocation, from its start");
    }

    #[test]
    fn maps_come_back_empty_and_large_ones_are_dropped() {
        let mut m = map(4);
        m.insert(http::header::HOST, http::HeaderValue::from_static("a"));
        give_map(m);
        let m = map(4);
        assert!(m.is_empty());
        assert!(m.capacity() >= 4);
        let mut big = HeaderMap::with_capacity(1000);
        big.insert(http::header::HOST, http::HeaderValue::from_static("a"));
        give_map(big);
        assert!(map(0).capacity() < 1000);
    }
}

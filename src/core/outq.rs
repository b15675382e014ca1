//! The outgoing data frames of one connection: a queue of shared, fully
//! framed `Bytes`, written with `writev`.
//!
//! A room message is framed once (header + JSON) at its home core; queueing
//! it for a connection is a reference-count increment, and the flush hands
//! the kernel iovecs that point into those shared frames, so the bytes are
//! copied once (by the kernel) however many connections receive them. The
//! earlier path — tungstenite's `write` per connection — copied every frame
//! into a per-connection buffer first (see docs/ARCHITECTURE.md for the
//! measurement). tungstenite still reads frames and writes the control
//! frames it owns (pongs, pings, close); the core writes a close frame only
//! after this queue is empty, so no data follows it.
//!
//! The reference counted per connection is an [`Frame`] (`Rc<Bytes>`), made
//! once per frame on the core that delivers it: its count is a plain
//! increment, where cloning the `Bytes` itself is a locked (atomic)
//! instruction per connection, which also waits for the stores before it
//! (the cold queue slots of the connections before) — docs/ARCHITECTURE.md
//! has the measurement. A queue is a core's, so it never crosses threads.
//!
//! This module must not know about WebSocket state: it only frames and moves
//! bytes.

use bytes::Bytes;
use std::io::{self, IoSlice, Write};
use std::rc::Rc;

/// A frame shared by the connections of one core that receive it.
pub type Frame = Rc<Bytes>;

/// iovecs built on the stack; more (up to [`IOV_MAX`]) go in a heap vector.
const IOV_STACK: usize = 64;
/// Most iovecs per `writev` (the kernel's UIO_MAXIOV).
const IOV_MAX: usize = 1024;
/// Payloads up to this size are copied next to their header; larger ones
/// are queued as header + shared payload.
const INLINE_PAYLOAD: usize = 4096;
/// The tail buffer keeps its allocation between flushes up to this size.
const TAIL_KEEP: usize = 4096;
/// A frame for one connection alone up to this size is copied into the
/// tail rather than wrapped in a [`Frame`] (an allocation).
const COPY_OWN: usize = 512;

pub use crate::frame::{BINARY, TEXT, header_len, push_header, text_frame};

/// Queued output of one connection: shared frames, then a private tail
/// buffer that small frames built for this connection alone (replies,
/// echoes) are appended to, so they cost no allocation once it is warm.
///
/// 48 bytes, and nothing on the heap while idle (docs/ARCHITECTURE.md,
/// *Memory per connection*): the frame list a delivery touches is inline
/// (a boxed queue cost fan-out a cache line per delivery, measured there),
/// the tail is boxed and there only while in use, and a partly written
/// front frame is re-sliced rather than tracked by an offset. A queue used
/// flush after flush (a room member, request/response traffic) keeps its
/// buffers between flushes; a one-off's go back when it is written, and
/// [`OutQueue::release`] gives back a warm queue whose burst ended.
#[derive(Debug, Default)]
pub struct OutQueue {
    /// Unwritten frames, front first (only the front may be started).
    frames: Vec<Frame>,
    /// Bytes queued and not yet written.
    pending: usize,
    /// Private bytes after all of `frames`.
    tail: Option<Box<Tail>>,
    /// The front frame is partly written (`frames[0]` is what is left).
    started: bool,
    /// Something was queued for the previous complete flush too.
    warm: bool,
}

#[derive(Debug, Default)]
struct Tail {
    buf: Vec<u8>,
    /// Bytes of `buf` already written (only while `frames` is empty).
    offset: usize,
}

impl OutQueue {
    /// Queues a complete shared frame (or a piece of one).
    pub fn push(&mut self, frame: Frame) {
        self.seal_tail();
        self.pending += frame.len();
        self.frames.push(frame);
    }

    /// Queues a framed message for this connection alone: a small one is
    /// copied into the tail, a large one queued as it is.
    pub fn push_own(&mut self, bytes: Bytes) {
        if bytes.len() <= COPY_OWN {
            self.tail_buf().extend_from_slice(&bytes);
            self.pending += bytes.len();
        } else {
            self.push(Rc::new(bytes));
        }
    }

    fn tail_buf(&mut self) -> &mut Vec<u8> {
        &mut self.tail.get_or_insert_with(Box::default).buf
    }

    /// Moves unwritten tail bytes into the frame list, so that what is
    /// pushed next follows them.
    fn seal_tail(&mut self) {
        let Some(tail) = self.tail.as_mut() else {
            return;
        };
        if tail.buf.len() > tail.offset {
            let mut sealed = Bytes::from(std::mem::take(&mut tail.buf));
            let _ = sealed.split_to(tail.offset);
            // A started tail is written only while `frames` is empty, so
            // it becomes a started front frame.
            self.started |= tail.offset > 0;
            self.frames.push(Rc::new(sealed));
        }
        tail.buf.clear();
        tail.offset = 0;
    }

    /// Frames `payload` with `opcode` and queues it: small payloads are
    /// copied into the tail buffer; a large one is shared when `shared`
    /// holds it.
    pub fn push_frame(&mut self, opcode: u8, payload: &[u8], shared: Option<Bytes>) {
        match shared {
            Some(big) if payload.len() > INLINE_PAYLOAD => {
                let mut head = Vec::with_capacity(10);
                push_header(&mut head, opcode, payload.len());
                self.push(Rc::new(Bytes::from(head)));
                self.push(Rc::new(big));
            }
            _ => {
                let tail = self.tail_buf();
                let before = tail.len();
                push_header(tail, opcode, payload.len());
                tail.extend_from_slice(payload);
                let added = tail.len() - before;
                self.pending += added;
            }
        }
    }

    /// Queues a text frame built for this connection alone.
    pub fn push_text(&mut self, payload: &[u8]) {
        self.push_frame(TEXT, payload, None);
    }

    /// Bytes waiting to be written.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.pending == 0
    }

    /// Gives back the buffers kept for reuse between flushes; only while
    /// nothing is queued.
    pub fn release(&mut self) {
        if self.is_empty() {
            self.frames = Vec::new();
            self.tail = None;
            self.warm = false;
        }
    }

    /// Drops what has not started going out (a slow consumer about to be
    /// closed); a partly written frame is finished first, so the stream
    /// stays well framed.
    pub fn drop_unstarted(&mut self) {
        if self.frames.is_empty() {
            if let Some(tail) = self.tail.as_mut()
                && tail.offset == 0
            {
                self.pending = 0;
                tail.buf.clear();
            }
            // A started tail may hold several frames; it is kept whole.
            return;
        }
        if let Some(tail) = self.tail.as_mut() {
            self.pending -= tail.buf.len(); // not started: frames are queued
            tail.buf.clear();
        }
        let keep = usize::from(self.started);
        for f in self.frames.drain(keep..) {
            self.pending -= f.len();
        }
    }

    /// Writes as much as the socket takes. `Ok(true)` = all written,
    /// `Ok(false)` = the socket is full (WouldBlock; wait for writable).
    pub fn write_to(&mut self, w: &mut impl Write) -> io::Result<bool> {
        let used = self.pending > 0;
        // Frames before `head` are written; `offset` bytes of the next.
        let (mut head, mut offset) = (0, 0);
        while self.pending > 0 {
            let frames = &self.frames[head..];
            let tail = match self.tail.as_deref() {
                Some(t) => &t.buf[t.offset..],
                None => &[],
            };
            let result = if frames.is_empty() {
                w.write(tail)
            } else if frames.len() == 1 && tail.is_empty() {
                w.write(&frames[0][offset..])
            } else if frames.len() < IOV_STACK {
                let mut iov = [IoSlice::new(&[]); IOV_STACK];
                let n = fill_iov(frames, offset, tail, &mut iov);
                w.write_vectored(&iov[..n])
            } else {
                // A big batch (a busy core corked many messages): one call
                // for up to IOV_MAX frames rather than several.
                let mut iov = vec![IoSlice::new(&[]); (frames.len() + 1).min(IOV_MAX)];
                let n = fill_iov(frames, offset, tail, &mut iov);
                w.write_vectored(&iov[..n])
            };
            match result {
                Ok(0) => {
                    self.keep_unwritten(head, offset);
                    return Err(io::ErrorKind::WriteZero.into());
                }
                Ok(k) => {
                    self.pending -= k;
                    let mut n = k;
                    while n > 0 {
                        let Some(front) = self.frames.get(head) else {
                            let tail = self.tail.as_mut().expect("pending bytes are tail");
                            tail.offset += n; // the rest was tail
                            break;
                        };
                        let left = front.len() - offset;
                        if n >= left {
                            head += 1;
                            offset = 0;
                            n -= left;
                        } else {
                            offset += n;
                            n = 0;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.keep_unwritten(head, offset);
                    return if e.kind() == io::ErrorKind::WouldBlock {
                        Ok(false)
                    } else {
                        Err(e)
                    };
                }
            }
        }
        // All written. A queue used now and at the previous complete
        // flush keeps its buffers (up to a size); a one-off's go back.
        let keep = used && self.warm;
        self.warm = used;
        self.started = false;
        if keep && self.frames.capacity() <= 1024 {
            self.frames.clear();
        } else {
            self.frames = Vec::new();
        }
        match self.tail.as_mut() {
            Some(t) if keep && t.buf.capacity() <= TAIL_KEEP => {
                t.buf.clear();
                t.offset = 0;
            }
            _ => self.tail = None,
        }
        Ok(true)
    }

    /// After a write that stopped short: forgets the frames before `head`
    /// and re-slices the front to what is left of it.
    fn keep_unwritten(&mut self, head: usize, offset: usize) {
        self.frames.drain(..head);
        if head > 0 {
            self.started = false; // the front is a frame not yet started
        }
        if offset > 0 {
            let rest = self.frames[0].slice(offset..);
            self.frames[0] = Rc::new(rest);
            self.started = true;
        }
    }
}

/// Points `iov` at `frames` (the first from `offset`), then `tail` if it
/// fits; returns how many slices were set.
fn fill_iov<'a>(
    frames: &'a [Frame],
    offset: usize,
    tail: &'a [u8],
    iov: &mut [IoSlice<'a>],
) -> usize {
    let mut n = 0;
    for (i, f) in frames.iter().take(iov.len()).enumerate() {
        iov[i] = IoSlice::new(if i == 0 { &f[offset..] } else { f });
        n += 1;
    }
    if n < iov.len() && !tail.is_empty() {
        iov[n] = IoSlice::new(tail);
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes at most `cap` bytes per call, then WouldBlock
    /// after `calls` calls.
    struct Trickle {
        got: Vec<u8>,
        cap: usize,
        calls: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            if self.calls == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.calls -= 1;
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.cap - n);
                self.got.extend_from_slice(&b[..take]);
                n += take;
                if n == self.cap {
                    break;
                }
            }
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn frames_match_tungstenite() {
        use tungstenite::protocol::frame::Frame;
        use tungstenite::protocol::frame::coding::{Data, OpCode};
        for n in [0usize, 125, 126, 65_535, 65_536] {
            let payload = vec![b'a'; n];
            let mut theirs = Vec::new();
            Frame::message(payload.clone(), OpCode::Data(Data::Text), true)
                .format(&mut theirs)
                .unwrap();
            assert_eq!(&text_frame(&payload)[..], &theirs[..], "{n} bytes");
            for shared in [None, Some(Bytes::from(payload.clone()))] {
                let mut q = OutQueue::default();
                q.push_frame(TEXT, &payload, shared);
                let mut w = Trickle {
                    got: Vec::new(),
                    cap: usize::MAX,
                    calls: 100,
                };
                assert!(q.write_to(&mut w).unwrap());
                assert_eq!(w.got, theirs, "{n} bytes, queued");
            }
        }
    }

    #[test]
    fn dropping_keeps_a_started_frame_whole() {
        let mut q = OutQueue::default();
        let a = text_frame(b"first frame");
        let b = text_frame(b"second");
        q.push(Rc::new(a.clone()));
        q.push(Rc::new(b));
        let mut w = Trickle {
            got: Vec::new(),
            cap: 5,
            calls: 1,
        };
        assert!(!q.write_to(&mut w).unwrap());
        q.drop_unstarted();
        w.calls = usize::MAX;
        assert!(q.write_to(&mut w).unwrap());
        assert_eq!(
            w.got,
            &a[..],
            "the started frame is finished, the other dropped"
        );
        let mut q = OutQueue::default();
        q.push(Rc::new(text_frame(b"x")));
        q.drop_unstarted();
        assert!(q.is_empty());
    }

    #[test]
    fn tail_and_shared_frames_keep_their_order() {
        let mut q = OutQueue::default();
        let mut expect = Vec::new();
        for i in 0..300u32 {
            let text = format!("m{i}");
            if i % 3 == 0 {
                let f = text_frame(text.as_bytes());
                expect.extend_from_slice(&f);
                q.push(Rc::new(f));
            } else if i % 3 == 1 {
                let f = text_frame(text.as_bytes());
                expect.extend_from_slice(&f);
                q.push_own(f);
            } else {
                expect.extend_from_slice(&text_frame(text.as_bytes()));
                q.push_text(text.as_bytes());
            }
            if i % 50 == 0 {
                // partial progress in between
                let mut w = Trickle {
                    got: Vec::new(),
                    cap: 3,
                    calls: 2,
                };
                let _ = q.write_to(&mut w);
                expect.drain(..w.got.len());
                assert_eq!(q.pending(), expect.len());
            }
        }
        let mut w = Trickle {
            got: Vec::new(),
            cap: 41,
            calls: usize::MAX,
        };
        assert!(q.write_to(&mut w).unwrap());
        assert_eq!(w.got, expect);
    }

    #[test]
    fn a_one_off_reply_gives_its_buffers_back() {
        let mut w = Trickle {
            got: Vec::new(),
            cap: usize::MAX,
            calls: usize::MAX,
        };
        let mut q = OutQueue::default();
        q.push_text(b"pong");
        assert!(q.write_to(&mut w).unwrap());
        assert!(q.tail.is_none(), "one reply: nothing kept");
        q.push_text(b"pong");
        assert!(q.write_to(&mut w).unwrap());
        assert!(
            q.tail.is_some(),
            "output flush after flush keeps the buffer"
        );
        assert!(q.write_to(&mut w).unwrap());
        assert!(q.tail.is_none(), "a flush without output gives it back");
        q.push(Rc::new(text_frame(b"shared")));
        q.release();
        assert!(!q.is_empty(), "release keeps what is queued");
        assert!(q.write_to(&mut w).unwrap());
        assert_eq!(q.frames.capacity(), 0, "a one-off delivery keeps no list");
        q.push(Rc::new(text_frame(b"shared")));
        assert!(q.write_to(&mut w).unwrap());
        assert!(
            q.frames.capacity() > 0,
            "deliveries flush after flush keep it"
        );
        q.release();
        assert_eq!(q.frames.capacity(), 0);
        assert_eq!(w.got.len(), 2 * 6 + 2 * 8);
    }

    #[test]
    fn a_started_frame_survives_a_drop_after_any_stop() {
        // Stops at every byte position of three frames, then drops the
        // rest: what was written plus what is finished is whole frames.
        let frames: Vec<Bytes> = (0..3)
            .map(|i| text_frame(format!("frame {i}").as_bytes()))
            .collect();
        let total: usize = frames.iter().map(|f| f.len()).sum();
        for stop in 0..=total {
            let mut q = OutQueue::default();
            q.push_text(b"own");
            for f in &frames {
                q.push(Rc::new(f.clone()));
            }
            let mut w = Trickle {
                got: Vec::new(),
                cap: stop,
                calls: 1,
            };
            let _ = q.write_to(&mut w);
            q.drop_unstarted();
            w.cap = usize::MAX;
            w.calls = usize::MAX;
            assert!(q.write_to(&mut w).unwrap());
            let mut rest = &w.got[..];
            while !rest.is_empty() {
                let len = 2 + usize::from(rest[1] & 0x7f);
                assert!(rest.len() >= len, "stop {stop}: a frame cut short");
                rest = &rest[len..];
            }
        }
    }

    #[test]
    fn partial_writes_resume_exactly() {
        let mut q = OutQueue::default();
        let mut expect = Vec::new();
        for i in 0..1000u32 {
            let f = text_frame(format!("message {i}").as_bytes());
            expect.extend_from_slice(&f);
            q.push(Rc::new(f));
        }
        assert_eq!(q.pending(), expect.len());
        let mut w = Trickle {
            got: Vec::new(),
            cap: 77,
            calls: 10,
        };
        assert!(!q.write_to(&mut w).unwrap(), "blocked after 10 calls");
        assert_eq!(q.pending(), expect.len() - 770);
        w.calls = usize::MAX;
        assert!(q.write_to(&mut w).unwrap());
        assert_eq!(w.got, expect);
        assert!(q.is_empty());
    }
}

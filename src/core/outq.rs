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
//! This module must not know about WebSocket state: it only frames and moves
//! bytes.

use bytes::Bytes;
use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};

/// iovecs built on the stack; more (up to [`IOV_MAX`]) go in a heap vector.
const IOV_STACK: usize = 64;
/// Most iovecs per `writev` (the kernel's UIO_MAXIOV).
const IOV_MAX: usize = 1024;
/// Payloads up to this size are copied next to their header; larger ones
/// are queued as header + shared payload.
const INLINE_PAYLOAD: usize = 4096;
/// The tail buffer keeps its allocation between flushes up to this size.
const TAIL_KEEP: usize = 4096;

pub use crate::frame::{BINARY, TEXT, header_len, push_header, text_frame};

/// Queued output of one connection: shared frames, then a private tail
/// buffer that small frames built for this connection alone (replies,
/// echoes) are appended to, so they cost no allocation once it is warm.
#[derive(Debug, Default)]
pub struct OutQueue {
    frames: VecDeque<Bytes>,
    /// Bytes of the front frame already written.
    offset: usize,
    /// Private bytes after all of `frames`.
    tail: Vec<u8>,
    /// Bytes of `tail` already written (only while `frames` is empty).
    tail_offset: usize,
    /// Bytes queued and not yet written.
    pending: usize,
}

impl OutQueue {
    /// Queues a complete shared frame (or a piece of one).
    pub fn push(&mut self, bytes: Bytes) {
        self.seal_tail();
        self.pending += bytes.len();
        self.frames.push_back(bytes);
    }

    /// Moves unwritten tail bytes into the frame list, so that what is
    /// pushed next follows them.
    fn seal_tail(&mut self) {
        if self.tail.len() > self.tail_offset {
            let mut sealed = Bytes::from(std::mem::take(&mut self.tail));
            let _ = sealed.split_to(self.tail_offset);
            self.frames.push_back(sealed);
        }
        self.tail.clear();
        self.tail_offset = 0;
    }

    /// Frames `payload` with `opcode` and queues it: small payloads are
    /// copied into the tail buffer; a large one is shared when `shared`
    /// holds it.
    pub fn push_frame(&mut self, opcode: u8, payload: &[u8], shared: Option<Bytes>) {
        match shared {
            Some(big) if payload.len() > INLINE_PAYLOAD => {
                let mut head = Vec::with_capacity(10);
                push_header(&mut head, opcode, payload.len());
                self.push(Bytes::from(head));
                self.push(big);
            }
            _ => {
                let before = self.tail.len();
                push_header(&mut self.tail, opcode, payload.len());
                self.tail.extend_from_slice(payload);
                self.pending += self.tail.len() - before;
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

    /// Drops what has not started going out (a slow consumer about to be
    /// closed); a partly written frame is finished first, so the stream
    /// stays well framed.
    pub fn drop_unstarted(&mut self) {
        if self.frames.is_empty() {
            if self.tail_offset == 0 {
                self.pending = 0;
                self.tail.clear();
            }
            // A started tail may hold several frames; it is kept whole.
            return;
        }
        self.pending -= self.tail.len() - self.tail_offset;
        self.tail.clear();
        self.tail_offset = 0;
        let keep = usize::from(self.offset > 0);
        while self.frames.len() > keep {
            let f = self.frames.pop_back().expect("non-empty");
            self.pending -= f.len();
        }
    }

    /// Writes as much as the socket takes. `Ok(true)` = all written,
    /// `Ok(false)` = the socket is full (WouldBlock; wait for writable).
    pub fn write_to(&mut self, w: &mut impl Write) -> io::Result<bool> {
        while self.pending > 0 {
            let result = if self.frames.is_empty() {
                w.write(&self.tail[self.tail_offset..])
            } else if self.frames.len() == 1 && self.tail.is_empty() {
                w.write(&self.frames[0][self.offset..])
            } else if self.frames.len() < IOV_STACK {
                let mut iov = [IoSlice::new(&[]); IOV_STACK];
                let n = self.fill_iov(&mut iov);
                w.write_vectored(&iov[..n])
            } else {
                // A big batch (a busy core corked many messages): one call
                // for up to IOV_MAX frames rather than several.
                let mut iov = vec![IoSlice::new(&[]); (self.frames.len() + 1).min(IOV_MAX)];
                let n = self.fill_iov(&mut iov);
                w.write_vectored(&iov[..n])
            };
            match result {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(k) => self.consume(k),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.frames.capacity() > 1024 {
            self.frames = VecDeque::new(); // give back a burst's worth of slots
        }
        self.tail.clear();
        self.tail_offset = 0;
        if self.tail.capacity() > TAIL_KEEP {
            self.tail = Vec::new();
        }
        Ok(true)
    }

    /// Points `iov` at the unwritten frames (and the tail if it fits);
    /// returns how many slices were set.
    fn fill_iov<'a>(&'a self, iov: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (i, f) in self.frames.iter().take(iov.len()).enumerate() {
            iov[i] = IoSlice::new(if i == 0 { &f[self.offset..] } else { f });
            n += 1;
        }
        if n < iov.len() && !self.tail.is_empty() {
            iov[n] = IoSlice::new(&self.tail);
            n += 1;
        }
        n
    }

    fn consume(&mut self, mut n: usize) {
        self.pending -= n;
        while n > 0 {
            let Some(front) = self.frames.front() else {
                self.tail_offset += n; // the rest was tail
                return;
            };
            let left = front.len() - self.offset;
            if n >= left {
                self.frames.pop_front();
                self.offset = 0;
                n -= left;
            } else {
                self.offset += n;
                n = 0;
            }
        }
    }
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
        q.push(a.clone());
        q.push(b);
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
        q.push(text_frame(b"x"));
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
                q.push(f);
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
    fn partial_writes_resume_exactly() {
        let mut q = OutQueue::default();
        let mut expect = Vec::new();
        for i in 0..1000u32 {
            let f = text_frame(format!("message {i}").as_bytes());
            expect.extend_from_slice(&f);
            q.push(f);
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

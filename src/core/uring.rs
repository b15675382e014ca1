//! Experiment (issue 12, feature `uring`): a flush pass's `writev`s
//! submitted through one per-core io_uring, one `io_uring_enter` for a batch
//! of connections instead of one `writev` each.
//!
//! mio still does readiness; only the writes of plain (non-TLS) WebSocket
//! connections in the deferred flush pass go through the ring. Each staged
//! connection's iovecs (its [`OutQueue`]'s frames and tail, as `writev`
//! would take them) go into a per-core arena; [`Ring::submit`] pushes one
//! `IORING_OP_WRITEV` per connection and waits until every one of them has
//! completed before it returns, so the kernel never reads an iovec or a
//! frame after the queues are touched again. Every write carries
//! `RWF_NOWAIT`, so a write to a full socket completes at once with
//! `-EAGAIN`: without it io_uring does not honour the socket's `O_NONBLOCK`
//! (a file that supports non-blocking I/O is retried), it arms a poll and
//! completes the write when the socket drains, which would hold the whole
//! batch (and the core) until a reader that may never read does.
//!
//! It must not know about WebSocket state: [`super::ws`] applies the
//! results.

use super::outq::OutQueue;
use io_uring::{IoUring, opcode, types};
use std::io;
use std::os::fd::RawFd;

/// Submission queue entries (and most connections per `io_uring_enter`).
pub(super) const ENTRIES: usize = 256;

/// One connection's write in the current batch.
struct Staged {
    key: usize,
    generation: u32,
    fd: RawFd,
    start: usize,
    iovs: usize,
    bytes: usize,
}

/// The result of one staged write.
#[derive(Debug, Clone, Copy)]
pub(super) struct Done {
    pub(super) key: usize,
    pub(super) generation: u32,
    /// Bytes written, or `-errno`.
    pub(super) res: i32,
    /// Bytes the write offered.
    pub(super) bytes: usize,
}

/// A core's ring, its iovec arena and the batch being built.
pub(super) struct Ring {
    ring: IoUring,
    arena: Vec<libc::iovec>,
    staged: Vec<Staged>,
}

impl Ring {
    /// Sets up a ring on the calling thread (the core's: it is the only
    /// submitter), with the flags this kernel supports; `None` when io_uring
    /// is not available (the core keeps `writev`).
    pub(super) fn new() -> Option<Ring> {
        let tries: [fn(&mut io_uring::Builder); 3] = [
            |b| {
                b.setup_single_issuer().setup_defer_taskrun();
            },
            |b| {
                b.setup_single_issuer().setup_coop_taskrun();
            },
            |_| {},
        ];
        for setup in tries {
            let mut b = IoUring::builder();
            setup(&mut b);
            if let Ok(ring) = b.build(ENTRIES as u32) {
                return Some(Ring {
                    ring,
                    arena: Vec::with_capacity(ENTRIES * 4),
                    staged: Vec::with_capacity(ENTRIES),
                });
            }
        }
        None
    }

    /// Connections staged in the current batch.
    pub(super) fn len(&self) -> usize {
        self.staged.len()
    }

    /// Stages one connection's write (nothing when its queue is empty).
    ///
    /// # Safety
    ///
    /// `out` must not be changed or dropped, and `fd` must stay open, until
    /// the next [`Ring::submit`] returns: the staged iovecs point into the
    /// queue's frames and tail.
    pub(super) unsafe fn stage(&mut self, key: usize, generation: u32, fd: RawFd, out: &OutQueue) {
        let start = self.arena.len();
        let (iovs, bytes) = out.fill_raw(&mut self.arena);
        if iovs > 0 {
            self.staged.push(Staged {
                key,
                generation,
                fd,
                start,
                iovs,
                bytes,
            });
        }
    }

    /// Submits the batch and waits for all of it; the results go into
    /// `done` (in completion order).
    pub(super) fn submit(&mut self, done: &mut Vec<Done>) {
        let n = self.staged.len();
        if n == 0 {
            return;
        }
        let base = self.arena.as_ptr();
        {
            let mut sq = self.ring.submission();
            for (i, s) in self.staged.iter().enumerate() {
                // SAFETY: the arena is complete (nothing is appended until
                // the batch is over), so `base + start` stays valid; the
                // iovecs point into queues the caller promised (`stage`)
                // not to touch until this function returns, and it returns
                // only after the kernel completed every entry.
                let iov = unsafe { base.add(s.start) };
                let sqe = opcode::Writev::new(types::Fd(s.fd), iov, s.iovs as u32)
                    .rw_flags(libc::RWF_NOWAIT)
                    .build()
                    .user_data(i as u64);
                // SAFETY: as above; the entry's buffers outlive its use.
                unsafe { sq.push(&sqe) }.expect("batch larger than the ring");
            }
        }
        let mut reaped = 0;
        while reaped < n {
            super::stream::count_write_syscall();
            match self.ring.submit_and_wait(n - reaped) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                    ) => {}
                Err(e) => {
                    // Entries may still be in flight, pointing into memory
                    // the core would go on to change: stopping is the only
                    // safe answer (a kernel or setup bug, never seen).
                    eprintln!("io_uring_enter failed: {e}; aborting");
                    std::process::abort();
                }
            }
            for cqe in self.ring.completion() {
                let s = &self.staged[cqe.user_data() as usize];
                done.push(Done {
                    key: s.key,
                    generation: s.generation,
                    res: cqe.result(),
                    bytes: s.bytes,
                });
                reaped += 1;
            }
        }
        self.staged.clear();
        self.arena.clear();
    }
}

/// Whether a completion's error says the socket was full.
pub(super) fn is_full(res: i32) -> bool {
    res == -libc::EAGAIN || res == -libc::EWOULDBLOCK
}

/// The error a completion carried.
pub(super) fn error(res: i32) -> io::Error {
    io::Error::from_raw_os_error(-res)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::outq::text_frame;
    use std::io::Read;
    use std::os::fd::AsRawFd;

    /// A write to a full socket completes at once with -EAGAIN (never
    /// waits for the reader), and a partial one reports what it took.
    #[test]
    fn a_full_socket_completes_with_eagain_at_once() {
        let Some(mut ring) = Ring::new() else {
            return; // no io_uring here: nothing to test
        };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut reader = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (writer, _) = listener.accept().unwrap();
        writer.set_nonblocking(true).unwrap();
        let mut out = OutQueue::default();
        let frame = text_frame(&vec![b'x'; 60_000]);
        for _ in 0..200 {
            out.push(frame.clone());
        }
        let mut done = Vec::new();
        let mut full = false;
        for _ in 0..100 {
            // SAFETY: `out` and the socket are left alone until `submit`.
            unsafe { ring.stage(7, 3, writer.as_raw_fd(), &out) };
            ring.submit(&mut done);
            let d = done.pop().unwrap();
            assert_eq!((d.key, d.generation), (7, 3));
            if is_full(d.res) {
                full = true;
                break;
            }
            assert!(d.res > 0, "{}", error(d.res));
            out.written(d.res as usize);
        }
        assert!(full, "the socket never filled");
        // The reader still gets a well-formed prefix.
        reader.set_nonblocking(true).unwrap();
        let mut buf = vec![0; 4096];
        assert!(reader.read(&mut buf).unwrap() > 0);
        assert_eq!(&buf[..4], &frame[..4]);
    }
}

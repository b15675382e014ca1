//! Socket reads for tungstenite through one per-core scratch buffer.
//!
//! tungstenite keeps a read buffer per connection and zero-fills it up to
//! `read_buffer_size` before every read, so that buffer's size is resident
//! memory on every connection that ever read. Reading the socket into one
//! 64 KiB scratch per core instead, and handing tungstenite what it asks
//! for from there, lets its own buffer be tiny (`limits.read_buffer`) while
//! a burst of frames still costs one `read` syscall. Bytes left in the
//! scratch when a connection stops reading mid-burst (a pending join, the
//! read budget) move to that connection's `pending` buffer, which is
//! served first next time.
//!
//! Writes tungstenite makes (pongs, pings, close frames) go out only after
//! the connection's own queue of data frames ([`OutQueue`]) is empty, so a
//! control frame never lands inside a partly written data frame and a close
//! frame never precedes queued data. This module must not parse anything.

use super::outq::OutQueue;
use super::stream::Stream;
use std::io::{self, Read, Write};

/// Size of the per-core scratch: the most one `read` syscall takes in.
pub const SCRATCH: usize = 64 * 1024;

/// One core's read scratch.
#[derive(Debug)]
pub struct ReadScratch {
    buf: Box<[u8]>,
    pos: usize,
    end: usize,
    /// The last `read` returned less than asked: the socket's receive queue
    /// was empty at that moment, and on Linux edge-triggered epoll reports
    /// every later arrival as a new event, so the EAGAIN read that would
    /// follow is skipped (one syscall per burst saved).
    drained: bool,
    /// Whether `drained` may be trusted for the current connection.
    skip_allowed: bool,
    /// Bytes read from sockets through this scratch (metrics).
    pub bytes: u64,
}

impl Default for ReadScratch {
    fn default() -> Self {
        ReadScratch {
            buf: vec![0; SCRATCH].into_boxed_slice(),
            pos: 0,
            end: 0,
            drained: false,
            skip_allowed: false,
            bytes: 0,
        }
    }
}

impl ReadScratch {
    /// Starts reading a connection. `may_skip_eagain`: only after a
    /// readiness event that did not also report a hangup (a FIN that came
    /// with the data is seen only by reading past it) and not on a resume.
    pub fn begin(&mut self, may_skip_eagain: bool) {
        self.drained = false;
        self.skip_allowed = may_skip_eagain;
    }

    /// Moves unread bytes to a connection's `pending` buffer (or drops
    /// them when the connection is gone: `into` = `None`).
    pub fn stash(&mut self, into: Option<&mut Vec<u8>>) {
        if self.pos < self.end
            && let Some(pending) = into
        {
            pending.extend_from_slice(&self.buf[self.pos..self.end]);
        }
        self.pos = 0;
        self.end = 0;
    }
}

/// The stream tungstenite sees for one connection.
pub struct Io<'a> {
    /// The socket (writes go straight to it, through TLS if it has it).
    pub(super) tcp: &'a mut Stream,
    /// The core's scratch.
    pub scratch: &'a mut ReadScratch,
    /// The connection's stashed input.
    pub pending: &'a mut Vec<u8>,
    /// The connection's queued data frames (written before anything of
    /// tungstenite's).
    pub out: &'a mut OutQueue,
}

fn copy_out(from: &[u8], to: &mut [u8]) -> usize {
    let n = from.len().min(to.len());
    to[..n].copy_from_slice(&from[..n]);
    n
}

impl Read for Io<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.pending.is_empty() {
            let n = copy_out(self.pending, buf);
            self.pending.drain(..n);
            if self.pending.is_empty() {
                *self.pending = Vec::new(); // give the memory back
            }
            return Ok(n);
        }
        let s = &mut *self.scratch;
        if s.pos == s.end {
            if s.drained {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = self.tcp.read(&mut s.buf)?;
            s.bytes += n as u64;
            s.pos = 0;
            s.end = n;
            s.drained = s.skip_allowed && n < s.buf.len();
            if n == 0 {
                return Ok(0);
            }
        }
        let n = copy_out(&s.buf[s.pos..s.end], buf);
        s.pos += n;
        Ok(n)
    }
}

impl Write for Io<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.out.is_empty() && !self.out.write_to(self.tcp)? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.tcp.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

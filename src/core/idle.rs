//! Idle WebSocket connections hold no tungstenite context.
//!
//! A `tungstenite::WebSocketContext` is 256 bytes, and once it has read a
//! frame it also holds its read buffer (`limits.read_buffer`, 128 B) and
//! the `bytes` header that buffer was promoted to: ~450 B of what an idle
//! connection cost (~1 KiB). A context that is between frames holds no
//! state a fresh one lacks, so a connection keeps one only while it is
//! busy: one made for a connection that had been quiet (or for its first
//! read) is dropped as soon as the read that needed it is done, so the
//! next connection's read reuses the same memory, and one kept by a busy
//! connection is dropped by a once-a-second sweep after [`IDLE_AFTER_MS`]
//! of quiet. The next input, heartbeat ping or close makes a new one.
//! Nothing on the wire changes.
//!
//! Dropping early matters for memory as the kernel sees it: freed heap
//! memory stays resident, so a context allocated by every connection and
//! freed later would leave the peak in RSS; a context freed at once is
//! reused by the next one.
//!
//! "Between frames" is proven from outside tungstenite: every byte it
//! reads passes through [`FrameTrack`], which follows the frame headers
//! (RFC 6455 section 5.2) and knows when the bytes handed over so far are
//! whole frames and no fragmented message is open. With that, a read that
//! ended in `WouldBlock` (tungstenite reads only when it holds no complete
//! frame) means its buffer is empty; no ping received or written since
//! the last successful `flush` means no pong or ping waits in it; and an
//! open, unfailed connection means its close state is `Active`.
//!
//! Owns the tracker, the context's box ([`Live`]) and the sweep. It must
//! not read or write frames itself.

use super::conn::{Conn, State, WsConn};
use super::outq::OutQueue;
use super::sockio::{self, ReadScratch};
use super::stream::Stream;
use super::{Core, Shared};
use std::io::{self, Read, Write};
use tungstenite::Message;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig, WebSocketContext};

/// Quiet time after which a busy connection's context is dropped, ms
/// (and the quiet before a read that makes its new context a one-off).
/// Busy connections keep theirs: no allocation per message.
pub(super) const IDLE_AFTER_MS: u64 = 1000;

/// HTTP exchanges (upgrades, API requests) after which the heap is trimmed
/// at the next tick even while they keep coming.
const TRIM_AFTER: u64 = 1024;

/// A core's part: the connections that may go idle, and when the heap
/// was last trimmed.
#[derive(Debug, Default)]
pub(super) struct Idle {
    /// WebSocket connections holding a context kept while busy.
    list: Vec<(usize, u32)>,
    /// HTTP exchanges done at the last trim and at the last tick.
    at_trim: u64,
    at_tick: u64,
    /// Exchanges happened since the last quiet tick.
    busy: bool,
}

/// A connection's tungstenite context and what is known about it.
pub(super) struct Live {
    pub(super) ctx: WebSocketContext,
    /// Input read from the socket but not yet taken by tungstenite (only
    /// when reading stopped mid-burst: a pending join or the read budget);
    /// tungstenite gets it first next time.
    pub(super) pending: Vec<u8>,
    track: FrameTrack,
    /// The last read ended in `WouldBlock`: tungstenite holds no complete
    /// frame (it reads only when it has none).
    drained: bool,
    /// A ping was read (tungstenite owes a pong) or written since the
    /// last successful flush.
    owes: bool,
    /// Made for one read of a quiet connection: dropped once it is done.
    one_off: bool,
}

impl Live {
    /// A fresh context; `leftover`: bytes read after the request head,
    /// handed to tungstenite first; `one_off`: see [`Live::one_off`].
    pub(super) fn new(cfg: WebSocketConfig, leftover: Vec<u8>, one_off: bool) -> Box<Live> {
        let mut track = FrameTrack::default();
        track.feed(&leftover);
        let leftover_was_empty = leftover.is_empty();
        let ctx = if leftover.is_empty() {
            WebSocketContext::new(Role::Server, Some(cfg))
        } else {
            WebSocketContext::from_partially_read(leftover, Role::Server, Some(cfg))
        };
        Box::new(Live {
            ctx,
            pending: Vec::new(),
            track,
            drained: leftover_was_empty,
            owes: false,
            one_off,
        })
    }

    /// Reads a message, following the bytes tungstenite takes.
    pub(super) fn read(
        &mut self,
        tcp: &mut Stream,
        scratch: &mut ReadScratch,
        out: &mut OutQueue,
    ) -> tungstenite::Result<Message> {
        let mut io = sockio::Io {
            tcp,
            scratch,
            pending: &mut self.pending,
            out,
        };
        let mut tracked = Tracked {
            io: &mut io,
            track: &mut self.track,
        };
        let result = self.ctx.read(&mut tracked);
        self.drained = matches!(&result, Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock);
        self.owes |= matches!(result, Ok(Message::Ping(_)));
        result
    }

    /// Writes a control message (a heartbeat ping) through tungstenite;
    /// it goes out after the data already queued (see [`sockio::Io`]).
    pub(super) fn write(
        &mut self,
        tcp: &mut Stream,
        scratch: &mut ReadScratch,
        out: &mut OutQueue,
        msg: Message,
    ) -> tungstenite::Result<()> {
        self.owes = true;
        let mut io = sockio::Io {
            tcp,
            scratch,
            pending: &mut self.pending,
            out,
        };
        self.ctx.write(&mut io, msg)
    }

    /// Starts the close handshake; the close frame follows the data
    /// already queued.
    pub(super) fn close(
        &mut self,
        tcp: &mut Stream,
        scratch: &mut ReadScratch,
        out: &mut OutQueue,
        frame: CloseFrame,
    ) -> tungstenite::Result<()> {
        let mut io = sockio::Io {
            tcp,
            scratch,
            pending: &mut self.pending,
            out,
        };
        self.ctx.close(&mut io, Some(frame))
    }

    fn flush(
        &mut self,
        tcp: &mut Stream,
        scratch: &mut ReadScratch,
        out: &mut OutQueue,
    ) -> tungstenite::Result<()> {
        let mut io = sockio::Io {
            tcp,
            scratch,
            pending: &mut self.pending,
            out,
        };
        self.ctx.flush(&mut io)?;
        self.owes = false;
        Ok(())
    }

    /// Whether a fresh context would be the same as this one.
    fn is_clean(&self) -> bool {
        self.drained && !self.owes && self.track.at_boundary() && self.ctx.can_write()
    }
}

/// Whether a context made now for `ws` would be a one-off: its first
/// read, or the first after [`IDLE_AFTER_MS`] of quiet.
pub(super) fn quiet(ws: &WsConn, now_ms: u64) -> bool {
    !ws.has_read || now_ms.saturating_sub(ws.last_rx_ms) >= IDLE_AFTER_MS
}

/// The connection's context (`ctx` of its `WsConn`), made anew if it was
/// dropped; `echo`: an `/echo` connection; `one_off`: see [`Live::one_off`]
/// (from [`quiet`]).
pub(super) fn live<'a>(
    ctx: &'a mut Option<Box<Live>>,
    echo: bool,
    one_off: bool,
    shared: &Shared,
) -> &'a mut Live {
    ctx.get_or_insert_with(|| {
        let cfg = if echo {
            shared.echo_config
        } else {
            shared.ws_config
        };
        Live::new(cfg, Vec::new(), one_off)
    })
}

/// `flush` of a connection's context, if it has one (a dropped context had
/// nothing left to write).
pub(super) fn flush(
    ctx: &mut Option<Box<Live>>,
    tcp: &mut Stream,
    scratch: &mut ReadScratch,
    out: &mut OutQueue,
) -> tungstenite::Result<()> {
    match ctx.as_mut() {
        Some(live) => live.flush(tcp, scratch, out),
        None => Ok(()),
    }
}

/// The stream tungstenite reads through while its bytes are followed.
struct Tracked<'a, 'b> {
    io: &'a mut sockio::Io<'b>,
    track: &'a mut FrameTrack,
}

impl Read for Tracked<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.io.read(buf)?;
        self.track.feed(&buf[..n]);
        Ok(n)
    }
}

impl Write for Tracked<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.io.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.io.flush()
    }
}

/// Follows the frame structure of a client's byte stream (headers and
/// payload lengths only; validity is tungstenite's business).
#[derive(Debug, Default, Clone)]
pub(super) struct FrameTrack {
    /// Header bytes of the frame being read (at most 14).
    head: [u8; 14],
    head_len: u8,
    /// Payload bytes of the current frame still to come.
    rest: u64,
    /// A non-final data frame was seen and its final continuation not yet.
    fragmented: bool,
}

impl FrameTrack {
    /// Takes the next bytes of the stream.
    pub(super) fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.rest > 0 {
                let take = (data.len() as u64).min(self.rest);
                self.rest -= take;
                data = &data[take as usize..];
                continue;
            }
            self.head[self.head_len as usize] = data[0];
            self.head_len += 1;
            data = &data[1..];
            if let Some((fin, opcode, len)) = self.header() {
                if opcode < 8 {
                    // Data frames (continuation, text, binary, reserved);
                    // control frames do not touch a fragmented message.
                    self.fragmented = !fin;
                }
                self.rest = len;
                self.head_len = 0;
            }
        }
    }

    /// The header, once all of it is in: (FIN, opcode, payload length).
    fn header(&self) -> Option<(bool, u8, u64)> {
        let h = &self.head[..self.head_len as usize];
        if h.len() < 2 {
            return None;
        }
        let (ext, mask) = (
            match h[1] & 0x7f {
                126 => 2,
                127 => 8,
                _ => 0,
            },
            if h[1] & 0x80 != 0 { 4 } else { 0 },
        );
        if h.len() < 2 + ext + mask {
            return None;
        }
        let len = match ext {
            2 => u16::from_be_bytes([h[2], h[3]]) as u64,
            8 => u64::from_be_bytes(h[2..10].try_into().expect("8 bytes")),
            _ => (h[1] & 0x7f) as u64,
        };
        Some((h[0] & 0x80 != 0, h[0] & 0x0f, len))
    }

    /// Whether the bytes so far are whole frames with no fragmented
    /// message open.
    pub(super) fn at_boundary(&self) -> bool {
        self.head_len == 0 && self.rest == 0 && !self.fragmented
    }
}

impl Core {
    /// A read of connection `key` ended in `WouldBlock`: a one-off context
    /// that is clean goes at once; any other is listed for the sweep.
    pub(super) fn read_done(&mut self, key: usize, generation: u32) {
        let Some(Conn {
            state: State::Ws(ws),
            ..
        }) = self.conns.get_mut(key)
        else {
            return;
        };
        let Some(live) = ws.ctx.as_mut() else {
            return;
        };
        ws.has_read = true;
        let open = !(ws.closing || ws.doomed || ws.failed);
        if live.one_off && open && live.pending.is_empty() && live.is_clean() {
            ws.ctx = None;
        } else if !ws.idle_listed {
            live.one_off = false;
            ws.idle_listed = true;
            self.idle.list.push((key, generation));
        }
    }

    /// Once a second: listed connections quiet for [`IDLE_AFTER_MS`] whose
    /// context is clean drop it (and the buffers their queue kept); the
    /// others stay listed while they hold one.
    pub(super) fn sweep_idle(&mut self) {
        let mut list = std::mem::take(&mut self.idle.list);
        let quiet_since = self.now_ms.saturating_sub(IDLE_AFTER_MS);
        list.retain(|&(key, generation)| {
            let Some(conn) = self.conns.get_mut(key) else {
                return false;
            };
            if conn.generation != generation {
                return false;
            }
            let State::Ws(ws) = &mut conn.state else {
                return false;
            };
            let open = !(ws.closing || ws.doomed || ws.failed);
            let Some(live) = ws.ctx.as_mut().filter(|_| open) else {
                // Gone already, or its context finishes the close.
                ws.idle_listed = false;
                return false;
            };
            if ws.last_rx_ms > quiet_since
                || !ws.out.is_empty()
                || ws.urgent
                || ws.deferred
                || !live.pending.is_empty()
            {
                return true;
            }
            // A pong or heartbeat ping still in tungstenite goes out now.
            if live
                .flush(&mut conn.stream, &mut self.scratch, &mut ws.out)
                .is_err()
                || !live.is_clean()
            {
                return true;
            }
            ws.ctx = None;
            ws.out.release();
            ws.idle_listed = false;
            false
        });
        self.idle.list = list;
        self.trim_heap();
    }

    /// Gives the allocator's free memory inside the heap back to the
    /// kernel after a burst of connections: each HTTP exchange allocates
    /// ~1-2 KiB that is freed at its upgrade or response, and with
    /// thousands in flight at once that high-water mark stays resident
    /// (glibc returns only the top of the heap by itself). Measured at
    /// 15 000 idle connections: ~290 B per connection. Runs on the first
    /// tick after a burst with no exchange during the last second, and
    /// every [`TRIM_AFTER`] exchanges while they keep coming; it takes
    /// each arena's lock briefly (the other cores' and threads' too).
    fn trim_heap(&mut self) {
        let done = self.metrics.upgrades + self.metrics.api_requests;
        let active = done != self.idle.at_tick;
        self.idle.at_tick = done;
        let due = if active {
            self.idle.busy = true;
            done - self.idle.at_trim >= TRIM_AFTER
        } else {
            // The first quiet second after a burst: what the burst's
            // connections freed after their exchange (their first read's
            // context, one-off replies) is free by now too.
            std::mem::take(&mut self.idle.busy)
        };
        if !due {
            return;
        }
        self.idle.at_trim = done;
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        {
            let start = std::time::Instant::now();
            // SAFETY: malloc_trim has no preconditions; it is thread-safe
            // (it locks each arena while it works on it) and frees nothing
            // in use.
            let released = unsafe { libc::malloc_trim(0) };
            tracing::debug!(
                core = self.id,
                released,
                us = start.elapsed().as_micros() as u64,
                "heap trimmed"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(fin: bool, opcode: u8, len: usize) -> Vec<u8> {
        let mut f = vec![(if fin { 0x80 } else { 0 }) | opcode];
        if len < 126 {
            f.push(0x80 | len as u8);
        } else if len <= 0xffff {
            f.push(0x80 | 126);
            f.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            f.push(0x80 | 127);
            f.extend_from_slice(&(len as u64).to_be_bytes());
        }
        f.extend_from_slice(&[1, 2, 3, 4]);
        f.extend(std::iter::repeat_n(b'x', len));
        f
    }

    #[test]
    fn tracks_frames_fed_in_any_pieces() {
        let mut stream = Vec::new();
        for len in [0usize, 5, 125, 126, 300, 65_535, 65_536, 70_000] {
            stream.extend(frame(true, 1, len));
        }
        for piece in [1usize, 2, 3, 7, 13, 1000, usize::MAX] {
            let mut t = FrameTrack::default();
            let mut boundaries = 0;
            for chunk in stream.chunks(piece.min(stream.len())) {
                t.feed(chunk);
                boundaries += usize::from(t.at_boundary());
            }
            assert!(t.at_boundary(), "pieces of {piece}");
            assert!(boundaries >= 1);
        }
        let mut t = FrameTrack::default();
        t.feed(&stream[..stream.len() - 1]);
        assert!(!t.at_boundary(), "one payload byte short");
        let mut t = FrameTrack::default();
        t.feed(&frame(true, 1, 300)[..3]);
        assert!(!t.at_boundary(), "inside a header");
    }

    #[test]
    fn a_fragmented_message_is_open_until_its_final_frame() {
        let mut t = FrameTrack::default();
        t.feed(&frame(false, 1, 10));
        assert!(!t.at_boundary());
        t.feed(&frame(true, 9, 0)); // a ping in between
        assert!(!t.at_boundary());
        t.feed(&frame(false, 0, 10));
        assert!(!t.at_boundary());
        t.feed(&frame(true, 0, 3));
        assert!(t.at_boundary());
        t.feed(&frame(true, 10, 0)); // a pong
        assert!(t.at_boundary());
    }
}

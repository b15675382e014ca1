//! Framing of server-to-client WebSocket frames (RFC 6455 section 5.2):
//! unmasked, final, with the shortest length encoding.
//!
//! Below both the socket layer and the engines: an event is framed once,
//! wherever it is encoded (a home core, the Redis bridge, the store at
//! load), and the same `Bytes` is queued to every connection that gets it.
//! This module must not know about connections or rooms.

use bytes::Bytes;

/// Opcode of a text frame.
pub const TEXT: u8 = 0x1;
/// Opcode of a binary frame.
pub const BINARY: u8 = 0x2;

/// Appends the header of an unmasked, final frame (RFC 6455 section 5.2).
pub fn push_header(out: &mut Vec<u8>, opcode: u8, len: usize) {
    out.push(0x80 | opcode);
    if len < 126 {
        out.push(len as u8);
    } else if len <= 0xffff {
        out.push(126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// A complete text frame carrying `payload`, in one allocation.
pub fn text_frame(payload: &[u8]) -> Bytes {
    let mut v = Vec::with_capacity(payload.len() + 10);
    push_header(&mut v, TEXT, payload.len());
    v.extend_from_slice(payload);
    Bytes::from(v)
}

/// Length of the header of a server frame whose total length is
/// `frame_len` (the inverse of [`text_frame`]'s framing).
pub fn header_len(frame_len: usize) -> u8 {
    if frame_len < 2 + 126 {
        2
    } else if frame_len <= 4 + 0xffff {
        4
    } else {
        10
    }
}

/// The payload of a server frame (skips the header; empty for a frame too
/// short to have one).
pub fn payload(frame: &[u8]) -> &[u8] {
    let Some(&b1) = frame.get(1) else {
        return &[];
    };
    let start = match b1 & 0x7f {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    frame.get(start..).unwrap_or(&[])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_at_every_length_encoding() {
        for len in [0usize, 125, 126, 65_535, 65_536] {
            let body = vec![b'x'; len];
            let f = text_frame(&body);
            assert_eq!(payload(&f), &body[..], "length {len}");
            assert_eq!(header_len(f.len()) as usize, f.len() - len);
        }
    }
}

//! Broadcasts over the cluster and the count of connections they reached.
//!
//! The node that takes `POST /api/broadcast` PUBLISHes it on the broadcast
//! channel; the reply says how many nodes got it. Every node (itself
//! included) hands the frame to each of its cores, sums their counts, and
//! PUBLISHes the sum to the origin's node channel; the origin adds the
//! nodes' sums and answers the asking core. A gathering not complete
//! within [`GATHER_TIMEOUT_MS`] answers with what it has.
//!
//! [`Gathers`] owns the gatherings in progress; it must not deliver
//! anything itself (the cores do).

use super::io::{Io, Want};
use super::wire::{bcast_payload, parse_bcast};
use crate::engine::{AggRef, Event, Report};
use crate::proto::ErrorCode;
use bytes::Bytes;
use std::collections::HashMap;

/// A broadcast's count is awaited this long, ms.
pub const GATHER_TIMEOUT_MS: u64 = 4000;

/// Where a finished count goes.
#[derive(Debug)]
enum To {
    /// The asking core on this node (a broadcast this node started).
    Core(AggRef),
    /// Another node's gathering (node, its token): this node's cores' sum.
    Node(String, u64),
}

/// One count being gathered.
#[derive(Debug)]
struct Gather {
    to: To,
    /// Parts expected (nodes, or this node's cores); `None` until known.
    expect: Option<u32>,
    got: u32,
    sum: u64,
    started_ms: u64,
}

/// The gatherings of this bridge.
#[derive(Debug, Default)]
pub struct Gathers {
    map: HashMap<u64, Gather>,
    next: u64,
}

impl Gathers {
    fn start(&mut self, to: To, expect: Option<u32>, now_ms: u64) -> u64 {
        self.next += 1;
        let g = Gather {
            to,
            expect,
            got: 0,
            sum: 0,
            started_ms: now_ms,
        };
        self.map.insert(self.next, g);
        self.next
    }

    /// Publishes a broadcast asked for by a core (`agg` gets the total).
    pub fn broadcast(&mut self, io: &mut Io<'_>, frame: &Bytes, agg: AggRef) {
        let token = self.start(To::Core(agg), None, io.now_ms);
        let payload = bcast_payload(io.keys.node(), token, crate::frame::payload(frame));
        let c = io
            .keys
            .publish_cmd()
            .arg(io.keys.bcast())
            .arg(payload)
            .to_owned();
        io.call(&c, Want::Broadcast { token });
    }

    /// A broadcast from the channel (`b` payload without its kind byte):
    /// to every core of this node, which report to this gathering.
    pub fn on_broadcast(&mut self, io: &mut Io<'_>, cores: usize, p: &[u8]) {
        let Some((origin, token, json)) = parse_bcast(p) else {
            return;
        };
        let frame = crate::frame::text_frame(json);
        let mine = self.start(
            To::Node(origin.to_string(), token),
            Some(cores as u32),
            io.now_ms,
        );
        for c in 0..cores {
            let ev = Event::Broadcast {
                frame: frame.clone(),
                agg: Report::Bridge(mine),
            };
            io.event(c, ev);
        }
    }

    /// How many nodes got a broadcast this node published.
    pub fn expect(&mut self, io: &mut Io<'_>, token: u64, nodes: u32) {
        let done = self.map.get_mut(&token).is_some_and(|g| {
            g.expect = Some(nodes);
            g.got >= nodes
        });
        if done {
            self.finish(io, token);
        }
    }

    /// One part of a count: a core's (`Command::Delivered`) or a node's
    /// (`a` on the node channel).
    pub fn part(&mut self, io: &mut Io<'_>, token: u64, n: u64) {
        let done = self.map.get_mut(&token).is_some_and(|g| {
            g.got += 1;
            g.sum += n;
            g.expect.is_some_and(|e| g.got >= e)
        });
        if done {
            self.finish(io, token);
        }
    }

    /// The broadcast could not be published: the asking core gets an error.
    pub fn failed(&mut self, io: &mut Io<'_>, token: u64) {
        if let Some(Gather {
            to: To::Core(agg), ..
        }) = self.map.remove(&token)
        {
            let ev = Event::AggFailed {
                token: agg.token,
                code: ErrorCode::Unavailable,
            };
            io.event(agg.core, ev);
        }
    }

    /// Answers the gatherings that waited too long, with what they have.
    pub fn expire(&mut self, io: &mut Io<'_>) {
        let now = io.now_ms;
        let late: Vec<u64> = self
            .map
            .iter()
            .filter(|(_, g)| now.saturating_sub(g.started_ms) >= GATHER_TIMEOUT_MS)
            .map(|(&t, _)| t)
            .collect();
        for t in late {
            self.finish(io, t);
        }
    }

    fn finish(&mut self, io: &mut Io<'_>, token: u64) {
        let Some(g) = self.map.remove(&token) else {
            return;
        };
        match g.to {
            To::Core(agg) => {
                let ev = Event::AggDone {
                    token: agg.token,
                    delivered: g.sum,
                };
                io.event(agg.core, ev);
            }
            To::Node(node, token) => {
                let cmd = io
                    .keys
                    .publish_cmd()
                    .arg(io.keys.node_channel(&node))
                    .arg(format!("a{token},{}", g.sum))
                    .to_owned();
                io.call(&cmd, Want::Ignore("count"));
            }
        }
    }
}

/// `<token>,<count>` of a node's count for a gathering (`a` payload).
pub fn parse_count(p: &[u8]) -> Option<(u64, u64)> {
    let text = std::str::from_utf8(p).ok()?;
    let (token, n) = text.split_once(',')?;
    Some((token.parse().ok()?, n.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_parse() {
        assert_eq!(parse_count(b"12,3"), Some((12, 3)));
        assert_eq!(parse_count(b"12"), None);
        assert_eq!(parse_count(b"x,3"), None);
    }
}

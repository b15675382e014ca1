//! Per-address admission, shared by every core: how many WebSocket and SSE
//! connections one client address holds (`limits.max_connections_per_ip`)
//! and how fast it may open them (`limits.handshakes_per_ip_per_sec`, a
//! token bucket with `limits.handshakes_per_ip_burst`).
//!
//! Touched only when a connection is admitted and when it goes, never on
//! the message path: 64 shards, each a mutex over a map, so cores accepting
//! at once rarely meet. An address's entry lives while it holds a
//! connection or its bucket is refilling; idle entries are swept from a
//! shard when it grows, so the map stays bounded by the addresses that are
//! actually connecting. Addresses in `limits.per_ip_exempt` (loopback by
//! default: a local proxy, tests, benchmarks) are not counted. This module
//! decides nothing about sockets; the front door asks and answers 429.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

const SHARDS: usize = 64;
/// A shard is swept of idle entries when it holds more than this.
const SWEEP_AT: usize = 1024;

/// The limits, from the configuration.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections per address (0: no bound).
    pub max_connections: usize,
    /// Handshakes per second per address (bucket refill).
    pub per_sec: f64,
    /// Bucket size.
    pub burst: f64,
    /// Networks not counted.
    pub exempt: Vec<ipnet::IpNet>,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    conns: u32,
    tokens: f64,
    at_ms: u64,
}

/// Why an address was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// It holds `max_connections` already.
    Connections,
    /// Its handshake bucket is empty.
    Handshakes,
}

/// The shared table.
#[derive(Debug)]
pub struct PerIp {
    limits: Limits,
    shards: Vec<Mutex<HashMap<IpAddr, Entry>>>,
}

impl PerIp {
    /// An empty table enforcing `limits`.
    pub fn new(limits: Limits) -> Self {
        PerIp {
            limits,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    /// Whether `ip` is counted at all.
    pub fn counts(&self, ip: IpAddr) -> bool {
        !self.limits.exempt.iter().any(|n| n.contains(&ip))
    }

    fn shard(&self, ip: &IpAddr) -> &Mutex<HashMap<IpAddr, Entry>> {
        let h = match ip {
            IpAddr::V4(v4) => u32::from(*v4) as usize,
            IpAddr::V6(v6) => {
                let o = v6.octets();
                usize::from_le_bytes(o[8..16].try_into().expect("8 bytes"))
            }
        };
        &self.shards[h.wrapping_mul(0x9E37_79B9) >> 7 & (SHARDS - 1)]
    }

    /// Admits one new connection from `ip` at `now_ms` (a monotonic clock):
    /// takes a handshake token and counts the connection (`Ok(true)`), or
    /// refuses; `Ok(false)`: an exempt address, not counted. A counted
    /// connection must be [`release`](Self::release)d once.
    pub fn admit(&self, ip: IpAddr, now_ms: u64) -> Result<bool, Refusal> {
        self.admit_with(ip, now_ms, true)
    }

    /// As [`admit`](Self::admit) for a connection whose handshake token
    /// was already taken ([`take_handshake`](Self::take_handshake), at
    /// accept): only the connection bound applies.
    pub fn admit_paid(&self, ip: IpAddr, now_ms: u64) -> Result<bool, Refusal> {
        self.admit_with(ip, now_ms, false)
    }

    /// Takes a handshake token for `ip` without counting a connection: a
    /// TLS handshake costs the core a signature before any request is
    /// seen, so with TLS the token is taken at accept. `false`: over the
    /// rate (exempt addresses always pass).
    pub fn take_handshake(&self, ip: IpAddr, now_ms: u64) -> bool {
        if !self.counts(ip) {
            return true;
        }
        let l = &self.limits;
        let mut map = self.shard(&ip).lock().unwrap_or_else(|e| e.into_inner());
        let e = Self::entry(&mut map, ip, now_ms, l);
        if e.tokens < 1.0 {
            return false;
        }
        e.tokens -= 1.0;
        true
    }

    fn entry<'a>(
        map: &'a mut HashMap<IpAddr, Entry>,
        ip: IpAddr,
        now_ms: u64,
        l: &Limits,
    ) -> &'a mut Entry {
        if map.len() > SWEEP_AT {
            map.retain(|_, e| e.conns > 0 || refill(e, now_ms, l) < l.burst);
        }
        let e = map.entry(ip).or_insert(Entry {
            conns: 0,
            tokens: l.burst,
            at_ms: now_ms,
        });
        e.tokens = refill(e, now_ms, l);
        e.at_ms = now_ms;
        e
    }

    fn admit_with(&self, ip: IpAddr, now_ms: u64, take_token: bool) -> Result<bool, Refusal> {
        if !self.counts(ip) {
            return Ok(false);
        }
        let l = &self.limits;
        let mut map = self.shard(&ip).lock().unwrap_or_else(|e| e.into_inner());
        let e = Self::entry(&mut map, ip, now_ms, l);
        if l.max_connections > 0 && e.conns as usize >= l.max_connections {
            return Err(Refusal::Connections);
        }
        if take_token {
            if e.tokens < 1.0 {
                return Err(Refusal::Handshakes);
            }
            e.tokens -= 1.0;
        }
        e.conns += 1;
        Ok(true)
    }

    /// A connection counted under `ip` is gone.
    pub fn release(&self, ip: IpAddr) {
        let mut map = self.shard(&ip).lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = map.get_mut(&ip) {
            e.conns = e.conns.saturating_sub(1);
        }
    }

    /// Connections counted for `ip` (tests, debugging).
    pub fn connections(&self, ip: IpAddr) -> u32 {
        let map = self.shard(&ip).lock().unwrap_or_else(|e| e.into_inner());
        map.get(&ip).map_or(0, |e| e.conns)
    }

    /// Addresses in the table.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn refill(e: &Entry, now_ms: u64, l: &Limits) -> f64 {
    let dt = now_ms.saturating_sub(e.at_ms) as f64 / 1000.0;
    (e.tokens + dt * l.per_sec).min(l.burst)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(max: usize, per_sec: f64, burst: f64) -> PerIp {
        PerIp::new(Limits {
            max_connections: max,
            per_sec,
            burst,
            exempt: vec!["127.0.0.0/8".parse().unwrap()],
        })
    }

    #[test]
    fn connections_are_bounded_per_address() {
        let t = table(2, 1000.0, 1000.0);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(t.admit(a, 0), Ok(true));
        assert_eq!(t.admit(a, 0), Ok(true));
        assert_eq!(t.admit(a, 0), Err(Refusal::Connections));
        assert_eq!(t.admit(b, 0), Ok(true), "another address is unaffected");
        t.release(a);
        assert_eq!(t.connections(a), 1);
        assert_eq!(t.admit(a, 0), Ok(true));
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        for _ in 0..10 {
            assert_eq!(t.admit(lo, 0), Ok(false), "exempt");
        }
        assert_eq!(t.connections(lo), 0);
    }

    #[test]
    fn handshakes_refill_at_the_rate() {
        let t = table(0, 10.0, 3.0);
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(t.admit(a, 1000), Ok(true));
        }
        assert_eq!(t.admit(a, 1000), Err(Refusal::Handshakes));
        assert_eq!(t.admit(a, 1050), Err(Refusal::Handshakes), "half a token");
        assert_eq!(t.admit(a, 1100), Ok(true), "100 ms = one token at 10/s");
        // A token taken at accept (TLS) is not taken again at admission.
        let c: IpAddr = "192.0.2.3".parse().unwrap();
        for _ in 0..3 {
            assert!(t.take_handshake(c, 5000));
        }
        assert!(!t.take_handshake(c, 5000), "the burst is spent");
        assert_eq!(t.admit(c, 5000), Err(Refusal::Handshakes));
        assert_eq!(t.admit_paid(c, 5000), Ok(true), "paid at accept");
    }

    #[test]
    fn idle_addresses_are_swept() {
        let t = table(0, 1000.0, 5.0);
        // 200 000 addresses, one a millisecond, each gone at once: a
        // bucket is full again 1 ms later, so old entries are sweepable.
        for i in 0..200_000u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            t.admit(ip, u64::from(i)).unwrap();
            t.release(ip);
        }
        assert!(t.len() <= SHARDS * (SWEEP_AT + 1), "{}", t.len());
        // An address that still holds a connection is never swept.
        let held: IpAddr = "10.200.0.1".parse().unwrap();
        t.admit(held, 300_000).unwrap();
        for i in 0..200_000u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0b00_0000 + i));
            t.admit(ip, 400_000 + u64::from(i)).unwrap();
            t.release(ip);
        }
        assert_eq!(t.connections(held), 1);
    }
}

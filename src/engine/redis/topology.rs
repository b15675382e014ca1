//! Which Redis Cluster master owns which hash slot: the slot of a key or
//! channel (CRC16 of its hash tag, as Redis computes it), and the map from
//! slots to masters read from `CLUSTER SLOTS`.
//!
//! In standalone mode there is one master and every slot maps to it. This
//! module only computes and parses; it must not do I/O (the bridge asks
//! and routes).

use redis::Value;

/// Hash slots in a Redis Cluster.
pub const SLOTS: usize = 16384;

/// CRC16-CCITT (XMODEM), the checksum Redis Cluster hashes keys with.
/// Bitwise rather than table-driven: keys are short and the bridge hashes
/// one per command, far from the cost of the command itself.
fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= (b as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The slot of a key (or sharded channel): the hash of the part between
/// the first `{` and the next `}` when that part is not empty, else of the
/// whole key (the rule of the Redis Cluster specification).
pub fn slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16(tagged.unwrap_or(key)) % SLOTS as u16
}

/// A master: where to reach it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Master {
    /// Host (an address as the cluster announces it).
    pub host: String,
    /// Port.
    pub port: u16,
}

/// Slot → master, as one `CLUSTER SLOTS` reply described the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotMap {
    /// The masters, in the order first seen.
    pub masters: Vec<Master>,
    /// For each slot, its master's index in `masters` (`u16::MAX`: none).
    pub owner: Vec<u16>,
}

/// No master owns the slot (the cluster is not fully covered).
pub const UNOWNED: u16 = u16::MAX;

impl SlotMap {
    /// Every slot on one master (standalone Redis).
    pub fn single(master: Master) -> SlotMap {
        SlotMap {
            masters: vec![master],
            owner: vec![0; SLOTS],
        }
    }

    /// Parses a `CLUSTER SLOTS` reply: `[[start, end, [host, port, id, ..],
    /// replicas..], ..]`. A master announced with an empty host is reached
    /// at `default_host` (the address the reply came from), as Redis
    /// clients do.
    pub fn parse(v: &Value, default_host: &str) -> Result<SlotMap, String> {
        let Value::Array(ranges) = v else {
            return Err(format!("CLUSTER SLOTS: not an array: {v:?}"));
        };
        let mut map = SlotMap {
            masters: Vec::new(),
            owner: vec![UNOWNED; SLOTS],
        };
        for range in ranges {
            let Value::Array(r) = range else {
                return Err("CLUSTER SLOTS: a range is not an array".into());
            };
            let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(node))) =
                (r.first(), r.get(1), r.get(2))
            else {
                return Err(format!("CLUSTER SLOTS: bad range {r:?}"));
            };
            let host = match node.first() {
                Some(Value::BulkString(h)) => String::from_utf8_lossy(h).into_owned(),
                Some(Value::SimpleString(h)) => h.clone(),
                _ => return Err("CLUSTER SLOTS: a master without a host".into()),
            };
            let host = if host.is_empty() || host == "?" {
                default_host.to_string()
            } else {
                host
            };
            let Some(Value::Int(port)) = node.get(1) else {
                return Err("CLUSTER SLOTS: a master without a port".into());
            };
            let (start, end) = (*start as usize, *end as usize);
            if start > end || end >= SLOTS || !(1..=65535).contains(port) {
                return Err(format!("CLUSTER SLOTS: bad range {start}-{end} :{port}"));
            }
            let master = Master {
                host,
                port: *port as u16,
            };
            let i = match map.masters.iter().position(|m| *m == master) {
                Some(i) => i,
                None => {
                    map.masters.push(master);
                    map.masters.len() - 1
                }
            };
            map.owner[start..=end].fill(i as u16);
        }
        Ok(map)
    }

    /// Slots no master owns.
    pub fn unowned(&self) -> usize {
        self.owner.iter().filter(|&&o| o == UNOWNED).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"bar"), 5061);
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        assert_eq!(slot(b"foo{}{bar}"), slot(b"foo{}{bar}"));
        assert_ne!(
            slot(b"foo{}{bar}"),
            slot(b"bar"),
            "an empty tag hashes the whole key"
        );
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
        assert_eq!(slot(b"foo{bar}{zap}"), slot(b"bar"));
        assert_eq!(slot(b"cc:r:{lobby}:m"), slot(b"cc:r:{lobby}"));
    }

    fn node(host: &str, port: i64) -> Value {
        Value::Array(vec![
            Value::BulkString(host.as_bytes().to_vec()),
            Value::Int(port),
            Value::BulkString(b"id".to_vec()),
        ])
    }

    #[test]
    fn parses_cluster_slots() {
        let v = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node("127.0.0.1", 7000),
            ]),
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(10922),
                node("", 7001),
                node("127.0.0.1", 7004),
            ]),
            Value::Array(vec![
                Value::Int(10923),
                Value::Int(16000),
                node("127.0.0.1", 7002),
            ]),
            Value::Array(vec![
                Value::Int(16001),
                Value::Int(16383),
                node("127.0.0.1", 7000),
            ]),
        ]);
        let m = SlotMap::parse(&v, "10.0.0.9").unwrap();
        assert_eq!(m.masters.len(), 3);
        assert_eq!(m.masters[1].host, "10.0.0.9", "empty host: the one asked");
        assert_eq!(m.owner[0], 0);
        assert_eq!(m.owner[5461], 1);
        assert_eq!(m.owner[16383], 0);
        assert_eq!(m.unowned(), 0);
        let partial = Value::Array(vec![Value::Array(vec![
            Value::Int(0),
            Value::Int(99),
            node("h", 1),
        ])]);
        assert_eq!(
            SlotMap::parse(&partial, "x").unwrap().unowned(),
            SLOTS - 100
        );
        assert!(SlotMap::parse(&Value::Int(1), "x").is_err());
    }
}

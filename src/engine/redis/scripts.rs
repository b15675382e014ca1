//! What corecast keeps in Redis, and the Lua scripts that change it.
//!
//! Every key and channel starts with the configured prefix (`cc`); the
//! keys of one room, or of one user, share a hash tag (`{room}`, `{user}`)
//! so that each script touches one hash slot (Redis Cluster later).
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P:r:{R}:m` | hash | `e` epoch, `s` last seq |
//! | `P:r:{R}:h` | stream | history: id `<seq>-0`, field `d` (the event JSON) |
//! | `P:r:{R}:k` | hash | idempotency key → `seq:ts:epoch` of its message |
//! | `P:r:{R}:kq` | list | `seq:ts:epoch\|key`, oldest first (for forgetting keys) |
//! | `P:r:{R}:u` | hash | user → number of nodes with the user in the room |
//! | `P:r:{R}:nm` | hash | user → display name |
//! | `P:r:{R}:st` | hash | user → status when not online (for `members`) |
//! | `P:r:{R}:n:<node>` | hash | users in the room on that node → 1 |
//! | `P:u:{U}` | hash | `n:<node>` → connections on that node, `st` status (absent: online), `g` grace token |
//! | `P:node:<node>:rooms` / `:users` | set | what a node contributed (for reaping a dead node) |
//! | `P:{nodes}` | zset | node → expiry (Unix ms, from Redis TIME) |
//! | `P:{nodes}:stats` | hash | node → its stats JSON |
//! | `P:online` | set | users with a connection anywhere |
//!
//! Channels: `P:r:{R}` (a room's events), `P:u:{U}` (a user's direct
//! messages and status), `P:node:<node>` (replies to one node, probes),
//! `P:bcast` (broadcasts). A `message` is published as its event JSON
//! (starting `{`); other payloads start with a kind byte: `e` a room event
//! for every member, `x` a
//! room event except one user (`x<len>,<user><json>`, typing), `p`
//! presence (JSON), `d` a frame for a user's connections, `s` a status
//! change, `b` a broadcast, `a` a count for a gathering, `k` a probe.
//!
//! Redis runs one script at a time, so the publish script's `HINCRBY`,
//! `XADD` and `PUBLISH` give every subscriber a room's messages in seq
//! order. This module must not do I/O; it names keys and holds the scripts.

use redis::Script;

/// Key and channel names under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
    node: String,
    /// Redis Cluster: channels are sharded (SPUBLISH / SSUBSCRIBE), and
    /// the node and broadcast channels carry a hash tag too.
    sharded: bool,
}

impl Keys {
    /// Names for `node` under `prefix` (`sharded`: Redis Cluster).
    pub fn new(prefix: &str, node: &str, sharded: bool) -> Keys {
        Keys {
            prefix: prefix.to_string(),
            node: node.to_string(),
            sharded,
        }
    }

    /// Whether channels are sharded (Redis Cluster).
    pub fn sharded(&self) -> bool {
        self.sharded
    }

    /// The command that publishes on a channel: `SPUBLISH` on a cluster
    /// (the message stays in the shard that owns the channel's slot),
    /// `PUBLISH` on one Redis.
    pub fn publish_cmd(&self) -> redis::Cmd {
        redis::cmd(if self.sharded { "SPUBLISH" } else { "PUBLISH" })
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// `P:r:{R}:<part>`
    pub fn room(&self, room: &str, part: &str) -> String {
        format!("{}:r:{{{room}}}:{part}", self.prefix)
    }

    /// `P:r:{R}:n:<node>`
    pub fn room_node(&self, room: &str, node: &str) -> String {
        format!("{}:r:{{{room}}}:n:{node}", self.prefix)
    }

    /// The room's channel `P:r:{R}`.
    pub fn room_channel(&self, room: &str) -> String {
        format!("{}:r:{{{room}}}", self.prefix)
    }

    /// `P:u:{U}` (the user's hash and channel share the name).
    pub fn user(&self, user: &str) -> String {
        format!("{}:u:{{{user}}}", self.prefix)
    }

    /// `P:node:<node>:<part>`
    pub fn node_set(&self, node: &str, part: &str) -> String {
        format!("{}:node:{node}:{part}", self.prefix)
    }

    /// A node's channel `P:node:<node>` (`P:node:{<node>}` on a cluster).
    pub fn node_channel(&self, node: &str) -> String {
        if self.sharded {
            format!("{}:node:{{{node}}}", self.prefix)
        } else {
            format!("{}:node:{node}", self.prefix)
        }
    }

    /// The key and channel prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The broadcast channel (`P:bcast`; `P:{bcast}` on a cluster).
    pub fn bcast(&self) -> String {
        if self.sharded {
            format!("{}:{{bcast}}", self.prefix)
        } else {
            format!("{}:bcast", self.prefix)
        }
    }

    /// The node registry (zset) and its stats hash.
    pub fn nodes(&self) -> (String, String) {
        (
            format!("{}:{{nodes}}", self.prefix),
            format!("{}:{{nodes}}:stats", self.prefix),
        )
    }

    /// The set of online users.
    pub fn online(&self) -> String {
        format!("{}:online", self.prefix)
    }

    /// The lock a node takes before reaping `dead`.
    pub fn reap_lock(&self, dead: &str) -> String {
        format!("{}:reap:{dead}", self.prefix)
    }

    /// What a channel name is: a room, a user, or something else.
    pub fn classify<'a>(&self, channel: &'a [u8]) -> Channel<'a> {
        let Some(rest) = channel
            .strip_prefix(self.prefix.as_bytes())
            .and_then(|r| r.strip_prefix(b":"))
        else {
            return Channel::Other;
        };
        let tagged = |r: &'a [u8]| -> Option<&'a str> {
            let inner = r.strip_prefix(b"{")?.strip_suffix(b"}")?;
            std::str::from_utf8(inner).ok()
        };
        if let Some(r) = rest.strip_prefix(b"r:") {
            return tagged(r).map_or(Channel::Other, Channel::Room);
        }
        if let Some(u) = rest.strip_prefix(b"u:") {
            return tagged(u).map_or(Channel::Other, Channel::User);
        }
        Channel::Other
    }
}

/// A channel, by what it carries.
#[derive(Debug, PartialEq, Eq)]
pub enum Channel<'a> {
    /// A room's events.
    Room(&'a str),
    /// A user's direct messages and status.
    User(&'a str),
    /// The node channel, broadcasts.
    Other,
}

/// JSON string literal in Lua (cjson escapes as JSON requires).
const LUA_HELPERS: &str = r#"
local function js(s) return cjson.encode(s) end
-- The room's epoch: created when Redis has none, and renewed when Redis is
-- behind what a node already delivered under it (a restart or failover that
-- lost the tail), so that no position is ever reused for another message.
local function epoch_of(meta, stream, candidate, seen_epoch, seen_last)
  local e = redis.call('HGET', meta, 'e')
  local fresh = not e
  if e and seen_epoch and seen_epoch == e then
    if tonumber(redis.call('HGET', meta, 's') or '0') < tonumber(seen_last) then
      fresh = true
    end
  end
  if fresh then
    e = candidate
    redis.call('DEL', stream)
    redis.call('HSET', meta, 'e', e, 's', 0)
  end
  return e
end
-- A member's status in the room (absent: online).
local function set_status(statuses, user, status)
  if status == '' or status == 'online' then
    redis.call('HDEL', statuses, user)
  else
    redis.call('HSET', statuses, user, status)
  end
end
local function membership(ty, room, user, name)
  local n = 'null'
  if name and name ~= '' then n = js(name) end
  return '{"type":"' .. ty .. '","room":' .. js(room) .. ',"user":' .. js(user) .. ',"name":' .. n .. '}'
end
-- The ts of a stream entry (from its event JSON).
local function entry_ts(entry)
  return tonumber(string.match(entry[2][2], '"ts":(%d+)')) or 0
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function idle(meta, users, idle_ms)
  if redis.call('EXISTS', users) == 0 then
    redis.call('PEXPIRE', meta, idle_ms)
  else
    redis.call('PERSIST', meta)
  end
end
-- Registers user on this node's member hash (idempotent); publishes
-- `joined` when it is the user's first node in the room.
local function add_member(users, names, statuses, nodeusers, channel, room, user, name, status)
  set_status(statuses, user, status)
  if redis.call('HSETNX', nodeusers, user, 1) == 1 then
    if redis.call('HINCRBY', users, user, 1) == 1 then
      if name ~= '' then redis.call('HSET', names, user, name) end
      redis.call('PUBLISH', channel, 'e' .. membership('joined', room, user, name))
      return 1
    end
  end
  return 0
end
local function remove_member(users, names, statuses, nodeusers, channel, room, user)
  if redis.call('HDEL', nodeusers, user) == 1 then
    local n = redis.call('HINCRBY', users, user, -1)
    if n <= 0 then
      local name = redis.call('HGET', names, user)
      redis.call('HDEL', users, user)
      redis.call('HDEL', names, user)
      redis.call('HDEL', statuses, user)
      redis.call('PUBLISH', channel, 'e' .. membership('left', room, user, name or ''))
      return 1
    end
  end
  return 0
end
"#;

/// Sequences a batch of messages (every publish one bridge iteration took
/// in, grouped by room, so the script's fixed cost is paid once per batch
/// and a room's once per batch): KEYS meta, stream, users, keys hash, keys
/// list of each room in turn; ARGV epoch candidate, size, ttl_ms, idle_ms,
/// then for each room its name, channel, message count and per message its
/// tail (`{"user":..},"data":..}`) and idempotency key (`''` for none).
/// Returns `{ts, epoch, seq, seq, ..., epoch, seq, ...}`: per room its
/// epoch, then per message its seq (a string among them is a new epoch for
/// the messages after it), or `{seq, ts}` of the first message when its
/// key was already used (a duplicate: nothing stored or published).
///
/// Per message: one XADD and one PUBLISH of the event JSON itself (a
/// subscriber reads seq and epoch from its fixed prefix); with a key, one
/// HSETNX (`P:r:{R}:k`, key → `seq:ts:epoch`; an entry of another epoch is
/// stale and overwritten) and one RPUSH (`P:r:{R}:kq`, `seq:ts:epoch|key`,
/// oldest first, for forgetting). Per room: one HMGET, one HSET, the TTLs.
/// The stream keeps at least `size` messages (`XTRIM MAXLEN ~` every 64th
/// message of a room trims whole nodes, several times cheaper than exact
/// trimming and than trimming on every XADD), so up to about 64 + 100
/// more; the age bound and forgetting keys (the rule of
/// `engine::memory::dedupe`: kept while in the history window or for 10
/// minutes, at most max(size, 10000)) are applied at the same moments,
/// and reads skip older entries. Measured in Redis 7.0 here, per message
/// inside the script: XADD ~2.5 us (4.1 us with MAXLEN), PUBLISH ~1.2 us,
/// building the event ~0.8 us, and ~2 us of Lua overhead per `redis.call`
/// beyond that, so the script makes as few as it can.
const PUBLISH: &str = r#"
local ts = now_ms()
local out = {ts}
local size = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local cutoff = ts - ttl
local keep = math.max(ttl, 600000)
local cap = math.max(size, 10000)
-- Forgets the oldest keys that left the window (a batch at a time).
local function forget_keys(kk, kq, seq)
  local len = redis.call('LLEN', kq)
  if len == 0 then return end
  local drop, vals = {}, {}
  local function keeps(item)
    local v, key = string.match(item, '^([^|]*)|(.*)$')
    local s, t = string.match(v or '', '^(%d+):(%d+):')
    s, t = tonumber(s or '0'), tonumber(t or '0')
    local in_history = s + size > seq and t + ttl >= ts
    if len - #drop <= cap and (in_history or t + 600000 >= ts) then return true end
    drop[#drop + 1] = key or ''
    vals[#vals + 1] = v or ''
    return false
  end
  -- The oldest first (usually still kept: one call), then a batch.
  if keeps(redis.call('LINDEX', kq, 0)) then return end
  for _, item in ipairs(redis.call('LRANGE', kq, 1, 127)) do
    if keeps(item) then break end
  end
  if #drop == 0 then return end
  redis.call('LTRIM', kq, #drop, -1)
  -- Only entries still naming that message (not a newer one with the key).
  local now = redis.call('HMGET', kk, unpack(drop))
  local gone = {}
  for i, key in ipairs(drop) do
    if now[i] == vals[i] then gone[#gone + 1] = key end
  end
  if #gone > 0 then redis.call('HDEL', kk, unpack(gone)) end
end
local a = 5
local stop = false
for r = 0, #KEYS / 5 - 1 do
  local m, h = KEYS[5 * r + 1], KEYS[5 * r + 2]
  local kk, kq = KEYS[5 * r + 4], KEYS[5 * r + 5]
  local room, channel, n = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2])
  a = a + 3
  local keyed = false
  local es = redis.call('HMGET', m, 'e', 's')
  local e, seq = es[1], tonumber(es[2] or '0')
  if not e then
    e = ARGV[1]
    seq = 0
    redis.call('DEL', h)
    redis.call('HSET', m, 'e', e)
  end
  local head = '{"type":"message","room":"' .. room .. '","seq":'
  local mid = ',"epoch":"' .. e .. '","ts":' .. ts .. ',"from":'
  out[#out + 1] = e
  for i = 1, n do
    local tail, key = ARGV[a], ARGV[a + 1]
    a = a + 2
    local dup = nil
    if key ~= '' then
      keyed = true
      local v = (seq + 1) .. ':' .. ts .. ':' .. e
      if redis.call('HSETNX', kk, key, v) == 0 then
        local prev = redis.call('HGET', kk, key)
        local s, t, pe = string.match(prev, '^(%d+):(%d+):(.*)$')
        if pe == e then
          dup = {tonumber(s), tonumber(t)}
        else
          redis.call('HSET', kk, key, v)
        end
      end
      if not dup then redis.call('RPUSH', kq, v .. '|' .. key) end
    end
    if dup then
      out[#out + 1] = dup
    else
      seq = seq + 1
      local ev = head .. seq .. mid .. tail
      local added = redis.pcall('XADD', h, seq .. '-0', 'd', ev)
      if type(added) == 'table' and added.err
        and not string.find(added.err, 'equal or smaller', 1, true) then
        -- Not a position problem (OOM at maxmemory, say): this message and
        -- the rest of the batch are not sequenced (their acks become
        -- `unavailable`); what is done so far stays.
        seq = seq - 1
        stop = true
        break
      end
      if type(added) == 'table' and added.err then
        -- The stream is ahead of the room's seq (keys evicted or edited): the
        -- room starts over under a new epoch rather than reuse a position.
        -- (Messages of the room earlier in this batch keep their seqs; keys
        -- of the old epoch no longer count.)
        e = ARGV[1] .. 'r'
        seq = 1
        redis.call('DEL', h)
        redis.call('HSET', m, 'e', e)
        mid = ',"epoch":"' .. e .. '","ts":' .. ts .. ',"from":'
        ev = head .. seq .. mid .. tail
        redis.call('XADD', h, '1-0', 'd', ev)
        if key ~= '' then
          local v = seq .. ':' .. ts .. ':' .. e
          redis.call('HSET', kk, key, v)
          redis.call('RPUSH', kq, v .. '|' .. key)
        end
        out[#out + 1] = e
      end
      if seq % 64 == 0 then
        -- Trimmed here, not by each XADD: MAXLEN on every XADD costs ~1.6 us.
        redis.call('XTRIM', h, 'MAXLEN', '~', size)
        for _ = 1, 64 do
          local first = redis.call('XRANGE', h, '-', '+', 'COUNT', 1)
          if #first == 0 or entry_ts(first[1]) >= cutoff then break end
          redis.call('XDEL', h, first[1][1])
        end
        forget_keys(kk, kq, seq)
      end
      redis.call('PUBLISH', channel, ev)
      out[#out + 1] = seq
    end
  end
  if stop then
    -- Under OOM only what frees or keeps memory may run; the seq must
    -- still be written for the messages that were.
    redis.pcall('HSET', m, 's', seq)
    return out
  end
  redis.call('HSET', m, 's', seq)
  redis.call('PEXPIRE', h, ttl)
  if keyed then
    redis.call('PEXPIRE', kk, keep)
    redis.call('PEXPIRE', kq, keep)
  end
  if redis.call('EXISTS', KEYS[5 * r + 3]) == 0 then redis.call('PEXPIRE', m, ARGV[4]) end
end
return out
"#;

/// A join's position (and registration): KEYS meta, stream, users, names,
/// statuses, node users; ARGV channel, epoch candidate, room, user, name,
/// register (1/0), since epoch, since seq (`` = none), ttl_ms, idle_ms,
/// status, the node's epoch and position in the room (`` = none).
/// Returns `{epoch, seq, members, recovered (-1 = not asked, 0, 1), json...}`
/// with the missed messages' JSON when recovered.
const JOIN: &str = r#"
local seen = nil
if ARGV[12] ~= '' then seen = ARGV[12] end
local e = epoch_of(KEYS[1], KEYS[2], ARGV[2], seen, ARGV[13])
if ARGV[6] == '1' then
  add_member(KEYS[3], KEYS[4], KEYS[5], KEYS[6], ARGV[1], ARGV[3], ARGV[4], ARGV[5], ARGV[11])
end
idle(KEYS[1], KEYS[3], ARGV[10])
local seq = tonumber(redis.call('HGET', KEYS[1], 's'))
local out = {e, seq, redis.call('HLEN', KEYS[3]), -1}
if ARGV[8] ~= '' then
  local since = tonumber(ARGV[8])
  out[4] = 0
  if (ARGV[7] == '' or ARGV[7] == e) and since <= seq then
    if since == seq then
      out[4] = 1
    else
      local cutoff = now_ms() - tonumber(ARGV[9])
      local got = redis.call('XRANGE', KEYS[2], (since + 1) .. '-0', seq .. '-0')
      if #got == seq - since and entry_ts(got[1]) >= cutoff then
        out[4] = 1
        for i = 1, #got do out[#out + 1] = got[i][2][2] end
      end
    end
  end
end
return out
"#;

/// The room's position, creating its epoch if Redis has none (or renewing
/// it when Redis is behind the node's position): KEYS meta, stream; ARGV
/// epoch candidate, the node's epoch and position (`` = none). Returns
/// `{epoch, seq}`.
const POSITION: &str = r#"
local seen = nil
if ARGV[2] ~= '' then seen = ARGV[2] end
local e = epoch_of(KEYS[1], KEYS[2], ARGV[1], seen, ARGV[3])
return {e, tonumber(redis.call('HGET', KEYS[1], 's'))}
"#;

/// One user's last connection on this node left the room: KEYS meta,
/// users, names, statuses, node users; ARGV channel, room, user, idle_ms.
const LEAVE: &str = r#"
remove_member(KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[1], ARGV[2], ARGV[3])
idle(KEYS[1], KEYS[2], ARGV[4])
return 1
"#;

/// Makes this node's members of a room exactly ARGV[5..] (user, name,
/// status triples): KEYS meta, users, names, statuses, node users; ARGV
/// channel, room, idle_ms, count. Publishes `joined`/`left` for users that
/// appear or vanish. Used after a (re)connect and to reap a dead node
/// (empty list). Returns the users removed.
const SYNC_ROOM: &str = r#"
local want = {}
local n = tonumber(ARGV[4])
for i = 0, n - 1 do want[ARGV[5 + 3 * i]] = {ARGV[6 + 3 * i], ARGV[7 + 3 * i]} end
local removed = {}
for _, u in ipairs(redis.call('HKEYS', KEYS[5])) do
  if want[u] == nil then
    remove_member(KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[1], ARGV[2], u)
    removed[#removed + 1] = u
  end
end
for u, ns in pairs(want) do
  add_member(KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[1], ARGV[2], u, ns[1], ns[2])
end
idle(KEYS[1], KEYS[2], ARGV[3])
return removed
"#;

/// A connection of a user came or went on this node: KEYS user; ARGV
/// field `n:<node>`, delta (+1/-1), grace token. Returns `{total
/// connections, came online (1/0)}`; a total of 0 starts the grace under
/// the token.
const USER_CONN: &str = r#"
local all = redis.call('HGETALL', KEYS[1])
local before, gone = 0, false
for i = 1, #all, 2 do
  if string.sub(all[i], 1, 2) == 'n:' then before = before + tonumber(all[i + 1]) end
  if all[i] == 'g' then gone = true end
end
local mine = redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[2])
if mine <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
local total = before + tonumber(ARGV[2])
if total < 0 then total = 0 end
local online = 0
if tonumber(ARGV[2]) > 0 then
  if before == 0 and not gone then online = 1 end
  redis.call('HDEL', KEYS[1], 'g')
elseif total == 0 then
  redis.call('HSET', KEYS[1], 'g', ARGV[3])
end
return {total, online}
"#;

/// Sets this node's connection count of a user (after a reconnect, or 0
/// to reap a dead node): KEYS user; ARGV field `n:<node>`, count, grace
/// token. Returns `{total, came online, went offline}`: offline when the
/// user has no connection anywhere and no other node's grace runs.
const USER_SET: &str = r#"
local all = redis.call('HGETALL', KEYS[1])
local before, g = 0, nil
for i = 1, #all, 2 do
  if string.sub(all[i], 1, 2) == 'n:' then before = before + tonumber(all[i + 1]) end
  if all[i] == 'g' then g = all[i + 1] end
end
local old = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local count = tonumber(ARGV[2])
if count > 0 then
  redis.call('HSET', KEYS[1], ARGV[1], count)
  redis.call('HDEL', KEYS[1], 'g')
else
  redis.call('HDEL', KEYS[1], ARGV[1])
end
local total = before - old + count
local online, offline = 0, 0
if count > 0 and before - old == 0 and old == 0 and not g then online = 1 end
if total == 0 and count == 0 and old > 0 then
  if ARGV[3] == '' then
    redis.call('DEL', KEYS[1])
    offline = 1
  else
    redis.call('HSET', KEYS[1], 'g', ARGV[3])
  end
end
return {total, online, offline}
"#;

/// The grace of a user ended on this node: KEYS user; ARGV grace token.
/// Returns 1 (and forgets the user) when the user is still gone and the
/// grace is still this node's.
const USER_OFFLINE: &str = r#"
local all = redis.call('HGETALL', KEYS[1])
local g = nil
for i = 1, #all, 2 do
  if string.sub(all[i], 1, 2) == 'n:' and tonumber(all[i + 1]) > 0 then return 0 end
  if all[i] == 'g' then g = all[i + 1] end
end
if g ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
"#;

/// A user set a status: KEYS user; ARGV status, channel, payload (the
/// status message). Returns 1 when it changed (and was published).
const STATUS: &str = r#"
local cur = redis.call('HGET', KEYS[1], 'st') or 'online'
if cur == ARGV[1] then return 0 end
if ARGV[1] == 'online' then redis.call('HDEL', KEYS[1], 'st') else redis.call('HSET', KEYS[1], 'st', ARGV[1]) end
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
"#;

/// A direct message or notification: KEYS user; ARGV channel, payload.
/// Returns the user's connections over every node.
const DIRECT: &str = r#"
redis.call('PUBLISH', ARGV[1], ARGV[2])
local all = redis.call('HGETALL', KEYS[1])
local total = 0
for i = 1, #all, 2 do
  if string.sub(all[i], 1, 2) == 'n:' then total = total + tonumber(all[i + 1]) end
end
return total
"#;

/// A room's description: KEYS meta, users, names, stream, statuses.
/// Returns `{epoch or '', seq, history length, user, name, status, ...}`.
const ROOM_INFO: &str = r#"
local e = redis.call('HGET', KEYS[1], 'e') or ''
local s = tonumber(redis.call('HGET', KEYS[1], 's') or '0')
local out = {e, s, redis.call('XLEN', KEYS[4])}
for _, u in ipairs(redis.call('HKEYS', KEYS[2])) do
  out[#out + 1] = u
  out[#out + 1] = redis.call('HGET', KEYS[3], u) or ''
  out[#out + 1] = redis.call('HGET', KEYS[5], u) or 'online'
end
return out
"#;

/// The node's heartbeat: KEYS nodes, stats; ARGV node, ttl_ms, stats
/// JSON. Returns `{registered before (1/0), expired node, ...}`: a node
/// that finds itself gone was reaped while alive and must reconcile.
const HEARTBEAT: &str = r#"
local now = now_ms()
local was = 0
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then was = 1 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
local out = {was}
for _, n in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do out[#out + 1] = n end
return out
"#;

/// The live nodes' stats: KEYS nodes, stats. Returns `{node, json, ...}`.
const CLUSTER_STATS: &str = r#"
local now = now_ms()
local out = {}
for _, n in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')) do
  out[#out + 1] = n
  out[#out + 1] = redis.call('HGET', KEYS[2], n) or '{}'
end
return out
"#;

/// The scripts, loaded at every (re)connect and run with EVALSHA.
#[derive(Debug)]
pub struct Scripts {
    /// [`PUBLISH`]
    pub publish: Script,
    /// [`JOIN`]
    pub join: Script,
    /// [`POSITION`]
    pub position: Script,
    /// [`LEAVE`]
    pub leave: Script,
    /// [`SYNC_ROOM`]
    pub sync_room: Script,
    /// [`USER_CONN`]
    pub user_conn: Script,
    /// [`USER_SET`]
    pub user_set: Script,
    /// [`USER_OFFLINE`]
    pub user_offline: Script,
    /// [`STATUS`]
    pub status: Script,
    /// [`DIRECT`]
    pub direct: Script,
    /// [`ROOM_INFO`]
    pub room_info: Script,
    /// [`HEARTBEAT`]
    pub heartbeat: Script,
    /// [`CLUSTER_STATS`]
    pub cluster_stats: Script,
    /// Every script's full source, for `SCRIPT LOAD` after a connect.
    pub sources: Vec<String>,
}

impl Default for Scripts {
    fn default() -> Self {
        Scripts::new(false)
    }
}

impl Scripts {
    /// The scripts; `sharded` (Redis Cluster): they publish with
    /// `SPUBLISH`, on channels that share the hash tag of the keys they
    /// touch, so a script stays inside one slot.
    pub fn new(sharded: bool) -> Self {
        let bodies = [
            PUBLISH,
            JOIN,
            POSITION,
            LEAVE,
            SYNC_ROOM,
            USER_CONN,
            USER_SET,
            USER_OFFLINE,
            STATUS,
            DIRECT,
            ROOM_INFO,
            HEARTBEAT,
            CLUSTER_STATS,
        ];
        let sources: Vec<String> = bodies
            .iter()
            .map(|body| {
                let src = format!("{LUA_HELPERS}\n{body}");
                if sharded {
                    src.replace("redis.call('PUBLISH'", "redis.call('SPUBLISH'")
                } else {
                    src
                }
            })
            .collect();
        let s = |i: usize| Script::new(&sources[i]);
        Scripts {
            publish: s(0),
            join: s(1),
            position: s(2),
            leave: s(3),
            sync_room: s(4),
            user_conn: s(5),
            user_set: s(6),
            user_offline: s(7),
            status: s(8),
            direct: s(9),
            room_info: s(10),
            heartbeat: s(11),
            cluster_stats: s(12),
            sources,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_a_tag_per_room_and_classify_channels() {
        let k = Keys::new("cc", "n1", false);
        assert_eq!(k.room("team:1", "m"), "cc:r:{team:1}:m");
        assert_eq!(k.room_node("team:1", "n1"), "cc:r:{team:1}:n:n1");
        assert_eq!(k.room_channel("team:1"), "cc:r:{team:1}");
        assert_eq!(k.user("ann"), "cc:u:{ann}");
        assert_eq!(k.classify(b"cc:r:{team:1}"), Channel::Room("team:1"));
        assert_eq!(k.classify(b"cc:u:{ann}"), Channel::User("ann"));
        assert_eq!(k.classify(b"cc:node:n1"), Channel::Other);
        assert_eq!(k.classify(b"xx:r:{a}"), Channel::Other);
        let c = Keys::new("cc", "n1", true);
        assert_eq!(c.node_channel("n1"), "cc:node:{n1}");
        assert_eq!(c.bcast(), "cc:{bcast}");
        assert_eq!(c.classify(b"cc:node:{n1}"), Channel::Other);
        assert_eq!(c.classify(b"cc:{bcast}"), Channel::Other);
    }

    #[test]
    fn sharded_scripts_publish_in_their_shard() {
        let plain = Scripts::new(false);
        let sharded = Scripts::new(true);
        for (a, b) in plain.sources.iter().zip(&sharded.sources) {
            assert!(!b.contains("redis.call('PUBLISH'"));
            assert_eq!(
                a.matches("redis.call('PUBLISH'").count(),
                b.matches("redis.call('SPUBLISH'").count()
            );
        }
        assert!(sharded.sources.iter().any(|s| s.contains("SPUBLISH")));
    }
}

//! Configuration: defaults, then a TOML file, then `CORECAST_*` environment
//! variables, then command-line flags (later layers win), validated once at
//! start into a [`Config`].
//!
//! Owns the public names of PROTOCOL section 8 (keys, variables, flags) and
//! their defaults (the `DEFAULT_*` constants). It must not read the
//! configuration anywhere else or hold runtime state: the server gets an
//! immutable, validated `Config` and nothing else.

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

/// Default listen address: loopback only, so a server started by accident
/// is not reachable from the network.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default WebSocket ping interval, seconds.
pub const DEFAULT_HEARTBEAT: u64 = 25;
/// Default drain deadline on SIGTERM/SIGINT, seconds.
pub const DEFAULT_SHUTDOWN_TIMEOUT: u64 = 10;
/// Default time to authenticate (and to send the HTTP request head), seconds.
pub const DEFAULT_AUTH_TIMEOUT: u64 = 10;
/// Default grace after a token expires before the connection is closed, seconds.
pub const DEFAULT_EXPIRY_GRACE: u64 = 30;
/// Default maximum number of WebSocket connections per server.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1_000_000;
/// Default maximum size of a publish's `data`, bytes.
pub const DEFAULT_MAX_MESSAGE: usize = 65_536;
/// Default maximum rooms per connection.
pub const DEFAULT_MAX_ROOMS: usize = 100;
/// Default command rate per connection, per second.
pub const DEFAULT_RATE_PER_SEC: f64 = 20.0;
/// Default burst of the per-connection token bucket.
pub const DEFAULT_RATE_BURST: f64 = 40.0;
/// Default seconds of an empty bucket before a connection is closed with 4008.
pub const DEFAULT_RATE_KICK_AFTER: u64 = 10;
/// Default outbound backlog per connection before it is closed with 4009, bytes.
pub const DEFAULT_MAX_BACKLOG: usize = 1_048_576;
/// Default tungstenite read buffer per connection, bytes. Socket reads go
/// through a 64 KiB per-core scratch (`core::sockio`), so this only sets how
/// much tungstenite copies at a time; it is resident on every connection
/// that ever read (tungstenite's own default, 128 KiB, would be ~130 KiB).
pub const DEFAULT_READ_BUFFER: usize = 128;
/// Largest `limits.max_write_delay_ms`, ms.
pub const MAX_WRITE_DELAY_MS: u64 = 1000;
/// Default largest message on the `/echo` route (Autobahn sends 16 MiB).
pub const DEFAULT_ECHO_MAX_MESSAGE: usize = 16 * 1024 * 1024;
/// Default messages of history kept per room.
pub const DEFAULT_HISTORY_SIZE: usize = 1000;
/// Default age limit of history, seconds.
pub const DEFAULT_HISTORY_TTL: u64 = 86_400;
/// Default directory of the durable history store.
pub const DEFAULT_HISTORY_PATH: &str = "./data";

/// A whole-server configuration. Build it with [`Config::load`] (file, env,
/// flags) or start from [`Config::default`] in code and call
/// [`Config::validate`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on; every core binds it with SO_REUSEPORT. Port 0
    /// picks a free port (tests).
    #[serde(deserialize_with = "lenient_string")]
    pub listen: String,
    /// Number of core loops (threads); 0 = one per CPU.
    pub cores: usize,
    /// Pin each core loop to a CPU (core i to CPU i mod CPUs).
    pub pin: bool,
    /// Serve the raw `/echo` route (conformance tests and benchmarks).
    pub echo: bool,
    /// WebSocket ping interval, seconds; silent for 2 intervals = dropped.
    pub heartbeat: u64,
    /// Drain deadline on shutdown, seconds.
    pub shutdown_timeout: u64,
    /// Authentication.
    pub auth: AuthConfig,
    /// Limits.
    pub limits: LimitsConfig,
    /// Room history and durability.
    pub history: HistoryConfig,
    /// User presence.
    pub presence: PresenceConfig,
    /// The HTTP API.
    pub api: ApiConfig,
    /// Several nodes joined through Redis (absent: one node).
    pub cluster: ClusterConfig,
    /// Proxies in front of the server.
    pub proxy: ProxyConfig,
    /// TLS on the listener (absent: plain TCP).
    pub tls: TlsConfig,
}

/// `[tls]`: with `cert` and `key` the listener speaks TLS for everything on
/// its port (wss, https API, SSE, health, metrics, the served pages);
/// SIGHUP reads both files again.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the certificate chain, leaf first.
    pub cert: Option<String>,
    /// PEM file of its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<String>,
}

impl TlsConfig {
    /// Whether the listener speaks TLS.
    pub fn enabled(&self) -> bool {
        self.cert.is_some()
    }
}

/// `[proxy]`: which peers are proxies whose word on the client's address
/// is believed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// Networks (CIDR or address) of trusted proxies: from them, the PROXY
    /// protocol header (v1/v2), `X-Forwarded-For` and `Forwarded` give the
    /// client address (for the per-address limits and logs). Empty: no
    /// peer is trusted and those are ignored.
    #[serde(deserialize_with = "lenient_string_list")]
    pub trusted: Vec<String>,
}

/// Default key and channel prefix in Redis.
pub const DEFAULT_CLUSTER_PREFIX: &str = "cc";

/// How the Redis of `[cluster]` is deployed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterMode {
    /// One Redis server (with replicas for failover, if any).
    Standalone,
    /// Redis Cluster (seed URLs).
    Cluster,
    /// Redis Sentinel (sentinel URLs and `master`).
    Sentinel,
}

/// `[cluster]`: nodes joined through Redis behave as one server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Redis URL(s), `redis://[user:password@]host:port/db` or `rediss://`
    /// (TLS); none = a single node without Redis.
    #[serde(deserialize_with = "lenient_string_list")]
    pub redis: Vec<String>,
    /// How Redis is deployed.
    pub mode: ClusterMode,
    /// The Sentinel master name (mode `sentinel`).
    #[serde(deserialize_with = "lenient_opt_string")]
    pub master: Option<String>,
    /// This node's name, unique in the cluster; default: the host:port it
    /// listens on.
    #[serde(deserialize_with = "lenient_opt_string")]
    pub node: Option<String>,
    /// Prefix of every key and channel in Redis.
    #[serde(deserialize_with = "lenient_string")]
    pub prefix: String,
    /// `rediss://`: PEM file of the CA(s) that signed Redis's certificate;
    /// none = the system's trust store.
    #[serde(deserialize_with = "lenient_opt_string")]
    pub tls_ca: Option<String>,
    /// `rediss://`: PEM file of this node's client certificate chain, for
    /// a Redis that requires one (`tls-auth-clients yes`, its default).
    #[serde(deserialize_with = "lenient_opt_string")]
    pub tls_cert: Option<String>,
    /// `rediss://`: PEM file of the client certificate's private key.
    #[serde(deserialize_with = "lenient_opt_string")]
    pub tls_key: Option<String>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            redis: Vec::new(),
            mode: ClusterMode::Standalone,
            master: None,
            node: None,
            prefix: DEFAULT_CLUSTER_PREFIX.to_string(),
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
        }
    }
}

impl ClusterConfig {
    /// Whether the server runs as a node of a cluster.
    pub fn enabled(&self) -> bool {
        !self.redis.is_empty()
    }
}

/// Whether `s` is 1..=`max` bytes of `[A-Za-z0-9_:.-]` (node names and
/// prefixes: they become parts of Redis keys and channels).
fn plain_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b':' | b'.' | b'-'))
}

/// `[presence]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PresenceConfig {
    /// Seconds a user's last connection must be gone before `offline`.
    pub grace: u64,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        PresenceConfig { grace: 5 }
    }
}

/// `[api]`: the HTTP API (`/api/*`), authenticated with `auth.api_keys`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Requests per second per core before 429 (all keys together).
    pub rate_per_sec: f64,
    /// Burst of the same bucket.
    pub rate_burst: f64,
    /// Largest request body, bytes (413 beyond).
    pub max_body: usize,
    /// Serve `POST /api/tokens` (signs tokens with `auth.secret`) to anyone,
    /// without an API key (the demo page asks it for tokens): for
    /// development and demos only.
    pub dev_tokens: bool,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            rate_per_sec: 1000.0,
            rate_burst: 2000.0,
            max_body: DEFAULT_MAX_MESSAGE + 1024,
            dev_tokens: false,
        }
    }
}

/// What an `ack` promises about a message (config `history.durability`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// The message is on disk (fsynced, group commit) before it is delivered
    /// and acknowledged.
    Sync,
    /// Delivered and acknowledged at once, written to disk in the background.
    Async,
    /// Kept in memory only.
    Memory,
}

/// `[history]`: how much of each room is kept, and where.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryConfig {
    /// Messages kept per room, in memory and on disk alike.
    pub size: usize,
    /// Age limit, seconds.
    pub ttl: u64,
    /// What an ack promises.
    pub durability: Durability,
    /// Room patterns kept in memory only, whatever `durability` says
    /// (e.g. `cursor:*`).
    #[serde(deserialize_with = "lenient_string_list")]
    pub memory_rooms: Vec<String>,
    /// Room patterns written in the background (async), unless they match
    /// `memory_rooms`.
    #[serde(deserialize_with = "lenient_string_list")]
    pub async_rooms: Vec<String>,
    /// Directory of the durable store.
    #[serde(deserialize_with = "lenient_string")]
    pub path: String,
}

impl HistoryConfig {
    /// Whether any room can be written to disk (the store is opened).
    pub fn uses_store(&self) -> bool {
        self.durability != Durability::Memory
    }
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            size: DEFAULT_HISTORY_SIZE,
            ttl: DEFAULT_HISTORY_TTL,
            durability: Durability::Sync,
            memory_rooms: Vec::new(),
            async_rooms: Vec::new(),
            path: DEFAULT_HISTORY_PATH.to_string(),
        }
    }
}

/// `[auth]`: JWT verification and the default room policy.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// HS256 secret. Unset = no tokens can be verified (anonymous only).
    #[serde(deserialize_with = "lenient_opt_string")]
    pub secret: Option<String>,
    /// Allow connections without a token. Unset = true without a secret,
    /// false with one.
    pub anonymous: Option<bool>,
    /// Seconds to send the HTTP request head and, once upgraded, to authenticate.
    pub timeout: u64,
    /// Keys for the HTTP API (`Authorization: Bearer <key>`).
    #[serde(deserialize_with = "lenient_string_list")]
    pub api_keys: Vec<String>,
    /// Seconds between `token_expired` and close 4001.
    pub expiry_grace: u64,
    /// Room patterns for tokens without a `rooms` claim and for anonymous users.
    #[serde(deserialize_with = "lenient_string_list")]
    pub default_rooms: Vec<String>,
    /// Refuse tokens without an `exp` claim.
    pub require_exp: bool,
    /// Web origins whose pages may open WebSockets and SSE streams and
    /// call the API cross-origin (`https://app.example.com`,
    /// `https://*.example.com`, `*`). Empty = any. Requests without
    /// `Origin` (not from a browser page) are always allowed.
    #[serde(deserialize_with = "lenient_string_list")]
    pub allowed_origins: Vec<String>,
}

/// `[limits]`: per-server and per-connection bounds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// WebSocket connections per server; beyond it the upgrade gets 503.
    pub max_connections: usize,
    /// WebSocket and SSE connections per client address (0: no bound);
    /// beyond it the upgrade gets 429.
    pub max_connections_per_ip: usize,
    /// New WebSocket/SSE connections per second per client address (token
    /// bucket refill); beyond it the upgrade gets 429.
    pub handshakes_per_ip_per_sec: f64,
    /// Burst of the same bucket.
    pub handshakes_per_ip_burst: f64,
    /// Networks (CIDR or address) the per-address limits do not count.
    #[serde(deserialize_with = "lenient_string_list")]
    pub per_ip_exempt: Vec<String>,
    /// Largest `data` of a publish, bytes; a frame may be 1 KiB larger.
    pub max_message: usize,
    /// Rooms per connection.
    pub max_rooms: usize,
    /// Commands per second per connection (token bucket refill).
    pub rate_per_sec: f64,
    /// Token bucket size.
    pub rate_burst: f64,
    /// Seconds of an empty bucket before close 4008.
    pub rate_kick_after: u64,
    /// Outbound bytes queued per connection before close 4009.
    pub max_backlog: usize,
    /// tungstenite read buffer per connection, bytes.
    pub read_buffer: usize,
    /// Largest message on `/echo`, bytes.
    pub echo_max_message: usize,
    /// The CPU/latency dial, ms: a connection's deliveries (room messages,
    /// presence, direct messages, broadcasts) may wait up to this long so
    /// that more frames share one write syscall; replies (acks, errors,
    /// pongs) never wait. 0: written as soon as the core has no more input
    /// (latency first).
    pub max_write_delay_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: DEFAULT_LISTEN.to_string(),
            cores: 0,
            pin: true,
            echo: false,
            heartbeat: DEFAULT_HEARTBEAT,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            auth: AuthConfig::default(),
            limits: LimitsConfig::default(),
            history: HistoryConfig::default(),
            presence: PresenceConfig::default(),
            api: ApiConfig::default(),
            cluster: ClusterConfig::default(),
            proxy: ProxyConfig::default(),
            tls: TlsConfig::default(),
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            secret: None,
            anonymous: None,
            timeout: DEFAULT_AUTH_TIMEOUT,
            api_keys: Vec::new(),
            expiry_grace: DEFAULT_EXPIRY_GRACE,
            default_rooms: vec!["*".to_string()],
            require_exp: false,
            allowed_origins: Vec::new(),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_ip: 1000,
            handshakes_per_ip_per_sec: 100.0,
            handshakes_per_ip_burst: 200.0,
            per_ip_exempt: vec!["127.0.0.0/8".into(), "::1".into()],
            max_message: DEFAULT_MAX_MESSAGE,
            max_rooms: DEFAULT_MAX_ROOMS,
            rate_per_sec: DEFAULT_RATE_PER_SEC,
            rate_burst: DEFAULT_RATE_BURST,
            rate_kick_after: DEFAULT_RATE_KICK_AFTER,
            max_backlog: DEFAULT_MAX_BACKLOG,
            read_buffer: DEFAULT_READ_BUFFER,
            echo_max_message: DEFAULT_ECHO_MAX_MESSAGE,
            max_write_delay_ms: 0,
        }
    }
}

/// A configuration that could not be loaded or is invalid; the message names
/// the key and what is wrong with it.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// Values given as command-line flags; `None` = not given.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--listen`
    pub listen: Option<String>,
    /// `--cores`
    pub cores: Option<usize>,
    /// `--echo`
    pub echo: Option<bool>,
}

impl Config {
    /// Loads defaults <- `file` (if any) <- `CORECAST_*` from `env` <- `flags`,
    /// then validates.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: &Overrides,
    ) -> Result<Config, ConfigError> {
        match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError(format!("cannot read config file {}: {e}", path.display()))
                })?;
                Config::load_str(Some((&text, &path.display().to_string())), env, flags)
            }
            None => Config::load_str(None, env, flags),
        }
    }

    /// [`Config::load`] with the file's contents given: defaults <- the
    /// TOML `text` (if any; `origin` names it in a syntax error) <-
    /// `CORECAST_*` from `env` <- `flags`, then validates.
    pub fn load_str(
        text: Option<(&str, &str)>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: &Overrides,
    ) -> Result<Config, ConfigError> {
        let mut table = match text {
            Some((text, origin)) => text
                .parse::<toml::Table>()
                .map_err(|e| ConfigError(format!("{origin}: {e}")))?,
            None => toml::Table::new(),
        };
        apply_env(&mut table, env)?;
        if let Some(listen) = &flags.listen {
            table.insert("listen".into(), toml::Value::String(listen.clone()));
        }
        if let Some(cores) = flags.cores {
            table.insert("cores".into(), toml::Value::Integer(cores as i64));
        }
        if let Some(echo) = flags.echo {
            table.insert("echo".into(), toml::Value::Boolean(echo));
        }
        let config: Config = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| ConfigError(format!("config key `{}`: {}", e.path(), e.inner())))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every value; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |m: String| Err(ConfigError(m));
        if self.listen.parse::<SocketAddr>().is_err() {
            return err(format!(
                "listen: {:?} is not an IP:PORT address (e.g. 127.0.0.1:8080)",
                self.listen
            ));
        }
        if self.cores > 1024 {
            return err(format!("cores: {} is more than 1024", self.cores));
        }
        if !(1..=3600).contains(&self.heartbeat) {
            return err(format!(
                "heartbeat: {} must be 1..=3600 seconds",
                self.heartbeat
            ));
        }
        if !(1..=3600).contains(&self.shutdown_timeout) {
            return err(format!(
                "shutdown_timeout: {} must be 1..=3600 seconds",
                self.shutdown_timeout
            ));
        }
        let a = &self.auth;
        if let Some(secret) = &a.secret
            && secret.len() < 8
        {
            return err("auth.secret: must be at least 8 bytes".into());
        }
        if a.secret.is_none() && a.anonymous == Some(false) {
            return err(
                "auth.anonymous = false needs auth.secret (nobody could authenticate)".into(),
            );
        }
        if !(1..=3600).contains(&a.timeout) {
            return err(format!(
                "auth.timeout: {} must be 1..=3600 seconds",
                a.timeout
            ));
        }
        if a.expiry_grace > 86_400 {
            return err(format!(
                "auth.expiry_grace: {} is more than a day",
                a.expiry_grace
            ));
        }
        for o in &a.allowed_origins {
            crate::core::cors::validate(o)
                .map_err(|e| ConfigError(format!("auth.allowed_origins: {e}")))?;
        }
        for k in &a.api_keys {
            if k.len() < 8 {
                return err("auth.api_keys: every key must be at least 8 bytes".into());
            }
        }
        let l = &self.limits;
        if l.max_connections == 0 {
            return err("limits.max_connections: must be at least 1".into());
        }
        if !(l.handshakes_per_ip_per_sec > 0.0
            && l.handshakes_per_ip_per_sec.is_finite()
            && l.handshakes_per_ip_burst >= 1.0
            && l.handshakes_per_ip_burst.is_finite())
        {
            return err(
                "limits.handshakes_per_ip_per_sec must be > 0 and limits.handshakes_per_ip_burst >= 1 (both finite)"
                    .into(),
            );
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return err("tls: `cert` and `key` go together (set both, or neither)".into());
        }
        for n in &self.proxy.trusted {
            if parse_net(n).is_none() {
                return err(format!(
                    "proxy.trusted: `{n}` is not a network (10.0.0.0/8, ::1, 192.0.2.7)"
                ));
            }
        }
        for n in &l.per_ip_exempt {
            if parse_net(n).is_none() {
                return err(format!(
                    "limits.per_ip_exempt: `{n}` is not a network (10.0.0.0/8, ::1, 192.0.2.7)"
                ));
            }
        }
        if !(16..=16 * 1024 * 1024).contains(&l.max_message) {
            return err(format!(
                "limits.max_message: {} must be 16..=16777216 bytes",
                l.max_message
            ));
        }
        if !(1..=100_000).contains(&l.max_rooms) {
            return err(format!(
                "limits.max_rooms: {} must be 1..=100000",
                l.max_rooms
            ));
        }
        if !(l.rate_per_sec > 0.0 && l.rate_per_sec.is_finite()) {
            return err(format!(
                "limits.rate_per_sec: {} must be > 0",
                l.rate_per_sec
            ));
        }
        if !(l.rate_burst >= 1.0 && l.rate_burst.is_finite()) {
            return err(format!("limits.rate_burst: {} must be >= 1", l.rate_burst));
        }
        if !(1..=86_400).contains(&l.rate_kick_after) {
            return err(format!(
                "limits.rate_kick_after: {} must be 1..=86400 seconds",
                l.rate_kick_after
            ));
        }
        if l.max_backlog < 4096 {
            return err(format!(
                "limits.max_backlog: {} must be at least 4096 bytes",
                l.max_backlog
            ));
        }
        if l.max_backlog <= l.max_message + 1024 {
            return err(format!(
                "limits.max_backlog: {} must exceed limits.max_message + 1024 ({})",
                l.max_backlog,
                l.max_message + 1024
            ));
        }
        if !(64..=1024 * 1024).contains(&l.read_buffer) {
            return err(format!(
                "limits.read_buffer: {} must be 64..=1048576 bytes",
                l.read_buffer
            ));
        }
        let h = &self.history;
        if !(1..=1_000_000).contains(&h.size) {
            return err(format!(
                "history.size: {} must be 1..=1000000 messages",
                h.size
            ));
        }
        if h.ttl == 0 {
            return err("history.ttl: must be at least 1 second".into());
        }
        if h.uses_store() && h.path.trim().is_empty() {
            return err("history.path: must name a directory".into());
        }
        for (key, list) in [
            ("memory_rooms", &h.memory_rooms),
            ("async_rooms", &h.async_rooms),
        ] {
            if let Some(bad) = list.iter().find(|p| !crate::auth::valid_pattern(p)) {
                return err(format!("history.{key}: {bad:?} is not a room pattern"));
            }
        }
        if !(1..=3600).contains(&self.presence.grace) {
            return err(format!(
                "presence.grace: {} must be 1..=3600 seconds",
                self.presence.grace
            ));
        }
        let a = &self.api;
        if !(a.rate_per_sec > 0.0 && a.rate_per_sec.is_finite() && a.rate_burst >= 1.0) {
            return err("api.rate_per_sec must be > 0 and api.rate_burst >= 1".into());
        }
        if !(256..=64 * 1024 * 1024).contains(&a.max_body) {
            return err(format!(
                "api.max_body: {} must be 256..=67108864 bytes",
                a.max_body
            ));
        }
        if !(1024..=256 * 1024 * 1024).contains(&l.echo_max_message) {
            return err(format!(
                "limits.echo_max_message: {} must be 1024..=268435456 bytes",
                l.echo_max_message
            ));
        }
        if l.max_write_delay_ms > MAX_WRITE_DELAY_MS {
            return err(format!(
                "limits.max_write_delay_ms: {} must be 0..={MAX_WRITE_DELAY_MS} ms",
                l.max_write_delay_ms
            ));
        }
        self.validate_cluster()
    }

    fn validate_cluster(&self) -> Result<(), ConfigError> {
        let err = |m: String| Err(ConfigError(m));
        let c = &self.cluster;
        if !plain_name(&c.prefix, 64) {
            return err(format!(
                "cluster.prefix: {:?} must be 1-64 bytes of [A-Za-z0-9_:.-]",
                c.prefix
            ));
        }
        if let Some(node) = &c.node
            && !plain_name(node, 128)
        {
            return err(format!(
                "cluster.node: {node:?} must be 1-128 bytes of [A-Za-z0-9_:.-]"
            ));
        }
        if !c.enabled() {
            return Ok(());
        }
        match c.mode {
            ClusterMode::Standalone if c.redis.len() != 1 => {
                return err("cluster.redis: standalone mode takes exactly one URL".into());
            }
            ClusterMode::Sentinel => {
                return err(
                    "cluster.mode: \"sentinel\" is not supported yet; use \"standalone\" or \"cluster\""
                        .into(),
                );
            }
            _ => {}
        }
        if c.mode == ClusterMode::Cluster {
            let tls: Vec<bool> = c.redis.iter().map(|u| u.starts_with("rediss://")).collect();
            if tls.iter().any(|&t| t != tls[0]) {
                return err(
                    "cluster.redis: the seed URLs must all be redis:// or all rediss://".into(),
                );
            }
        }
        for url in &c.redis {
            match crate::engine::redis::conn::Target::parse(url) {
                Err(e) => return err(format!("cluster.redis: {e}")),
                Ok(t) if c.mode == ClusterMode::Cluster && t.db != 0 => {
                    return err(format!(
                        "cluster.redis: {url:?}: a Redis Cluster has only database 0"
                    ));
                }
                Ok(t) if !t.tls => {
                    let set = [("tls_ca", &c.tls_ca), ("tls_cert", &c.tls_cert)]
                        .into_iter()
                        .chain([("tls_key", &c.tls_key)])
                        .find(|(_, v)| v.is_some());
                    if let Some((key, _)) = set {
                        return err(format!(
                            "cluster.{key}: set, but {url:?} is not rediss:// (TLS)"
                        ));
                    }
                }
                Ok(_) => {}
            }
        }
        if c.tls_cert.is_some() != c.tls_key.is_some() {
            return err("cluster.tls_cert and cluster.tls_key go together".into());
        }
        Ok(())
    }

    /// This node's name in cluster mode, given the address it listens on
    /// (after a requested port 0 was resolved); `None` without `[cluster]`.
    pub fn node_name(&self, bound: SocketAddr) -> Option<String> {
        self.cluster.enabled().then(|| {
            self.cluster
                .node
                .clone()
                .unwrap_or_else(|| bound.to_string())
        })
    }

    /// The listen address (validated).
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen.parse().expect("validated listen address")
    }

    /// Whether connections without a token are accepted.
    pub fn anonymous_allowed(&self) -> bool {
        self.auth.anonymous.unwrap_or(self.auth.secret.is_none())
    }

    /// Number of core loops to run (resolves 0 = all CPUs).
    pub fn core_count(&self) -> usize {
        if self.cores > 0 {
            self.cores
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }
    }
}

/// Applies `CORECAST_KEY` (top level) and `CORECAST_SECTION__KEY` variables.
/// Values are read as TOML values when they parse as one (`10`, `true`,
/// `["a","b"]`), else as strings; string keys accept either.
fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix("CORECAST_") else {
            continue;
        };
        if rest.is_empty() || rest == "LOG" {
            continue; // CORECAST_LOG is the log filter, not a config key
        }
        let path: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
        if path.len() > 2 || path.iter().any(|p| p.is_empty()) {
            return Err(ConfigError(format!(
                "{name}: expected CORECAST_KEY or CORECAST_SECTION__KEY"
            )));
        }
        let value = format!("v = {raw}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw.clone()));
        let slot = if path.len() == 2 {
            let section = table
                .entry(path[0].clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match section {
                toml::Value::Table(t) => t,
                _ => {
                    return Err(ConfigError(format!(
                        "{name}: `{}` is not a section",
                        path[0]
                    )));
                }
            }
        } else {
            &mut *table
        };
        slot.insert(path[path.len() - 1].clone(), value);
    }
    Ok(())
}

/// A string that may have been typed as a number or bool (from the environment).
fn lenient_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(match toml::Value::deserialize(d)? {
        toml::Value::String(s) => s,
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        other => {
            return Err(de::Error::custom(format!(
                "expected a string, found {}",
                other.type_str()
            )));
        }
    })
}

fn lenient_opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    lenient_string(d).map(Some)
}

/// A list of strings, or one comma-separated string (`a,b,c`).
/// A CIDR network, or one address as a network of its own.
pub fn parse_net(s: &str) -> Option<ipnet::IpNet> {
    let s = s.trim();
    s.parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
}

fn lenient_string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    match toml::Value::deserialize(d)? {
        toml::Value::String(s) => Ok(s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()),
        toml::Value::Array(items) => items
            .into_iter()
            .map(|v| match v {
                toml::Value::String(s) => Ok(s),
                toml::Value::Integer(i) => Ok(i.to_string()),
                other => Err(de::Error::custom(format!(
                    "expected a list of strings, found {}",
                    other.type_str()
                ))),
            })
            .collect(),
        other => Err(de::Error::custom(format!(
            "expected a list of strings, found {}",
            other.type_str()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_valid_and_anonymous() {
        let c = Config::load(None, env(&[]), &Overrides::default()).unwrap();
        assert_eq!(c.listen, DEFAULT_LISTEN);
        assert!(c.anonymous_allowed());
        assert_eq!(c.limits.max_message, DEFAULT_MAX_MESSAGE);
        assert!(c.core_count() >= 1);
    }

    #[test]
    fn layering_file_then_env_then_flags() {
        let dir = std::env::temp_dir().join(format!("corecast-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9000\"\nheartbeat = 5\n[auth]\nsecret = \"file-secret-123\"\n[limits]\nmax_rooms = 7\n",
        )
        .unwrap();
        let c = Config::load(
            Some(&path),
            env(&[
                ("CORECAST_HEARTBEAT", "6"),
                ("CORECAST_AUTH__SECRET", "12345678"),
                ("CORECAST_LIMITS__MAX_ROOMS", "8"),
                ("CORECAST_AUTH__API_KEYS", "key-one-1,key-two-2"),
                ("OTHER", "x"),
            ]),
            &Overrides {
                listen: Some("127.0.0.1:9001".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(c.listen, "127.0.0.1:9001");
        assert_eq!(c.heartbeat, 6);
        assert_eq!(c.auth.secret.as_deref(), Some("12345678")); // numeric-looking string
        assert_eq!(c.limits.max_rooms, 8);
        assert_eq!(c.auth.api_keys, vec!["key-one-1", "key-two-2"]);
        assert!(!c.anonymous_allowed(), "a secret turns anonymous off");
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn tls_files_go_together_and_handshake_rates_are_finite() {
        let load = |vars: &[(&str, &str)]| Config::load(None, env(vars), &Overrides::default());
        let e = load(&[("CORECAST_TLS__CERT", "/x/cert.pem")]).unwrap_err();
        assert!(
            e.to_string().contains("`cert` and `key` go together"),
            "{e}"
        );
        let c = load(&[
            ("CORECAST_TLS__CERT", "/x/cert.pem"),
            ("CORECAST_TLS__KEY", "/x/key.pem"),
        ])
        .unwrap();
        assert!(
            c.tls.enabled(),
            "files are read at start, not by the loader"
        );
        for (rate, burst) in [(f64::INFINITY, 200.0), (100.0, f64::INFINITY), (0.0, 200.0)] {
            let mut c = Config::default();
            c.limits.handshakes_per_ip_per_sec = rate;
            c.limits.handshakes_per_ip_burst = burst;
            let e = c.validate().unwrap_err();
            assert!(e.to_string().contains("both finite"), "{rate}/{burst}: {e}");
        }
    }

    #[test]
    fn write_delay_is_a_bounded_dial() {
        let load = |vars: &[(&str, &str)]| Config::load(None, env(vars), &Overrides::default());
        assert_eq!(Config::default().limits.max_write_delay_ms, 0);
        let c = load(&[("CORECAST_LIMITS__MAX_WRITE_DELAY_MS", "20")]).unwrap();
        assert_eq!(c.limits.max_write_delay_ms, 20);
        assert!(load(&[("CORECAST_LIMITS__MAX_WRITE_DELAY_MS", "1000")]).is_ok());
        let e = load(&[("CORECAST_LIMITS__MAX_WRITE_DELAY_MS", "1001")]).unwrap_err();
        assert!(e.to_string().contains("limits.max_write_delay_ms"), "{e}");
    }

    #[test]
    fn history_room_patterns_are_validated_and_chosen_in_order() {
        let c = Config::load(
            None,
            env(&[
                ("CORECAST_HISTORY__MEMORY_ROOMS", "cursor:*,tmp"),
                ("CORECAST_HISTORY__ASYNC_ROOMS", "feed:*,cursor:x"),
            ]),
            &Overrides::default(),
        )
        .unwrap();
        let modes = crate::engine::memory::history::RoomModes::new(&c.history);
        assert_eq!(
            modes.of("cursor:x"),
            Durability::Memory,
            "memory_rooms first"
        );
        assert_eq!(modes.of("tmp"), Durability::Memory);
        assert_eq!(modes.of("feed:1"), Durability::Async);
        assert_eq!(modes.of("chat"), Durability::Sync, "the default");
        let err = Config::load(
            None,
            env(&[("CORECAST_HISTORY__ASYNC_ROOMS", "bad room")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("history.async_rooms"), "{err}");
        let mut all_memory = c.history.clone();
        all_memory.durability = Durability::Memory;
        let modes = crate::engine::memory::history::RoomModes::new(&all_memory);
        assert_eq!(
            modes.of("feed:1"),
            Durability::Memory,
            "a memory server never writes"
        );
    }

    #[test]
    fn cluster_keys_are_validated_and_name_the_node() {
        let c = Config::load(
            None,
            env(&[
                ("CORECAST_CLUSTER__REDIS", "redis://:pw@127.0.0.1:6390/2"),
                ("CORECAST_CLUSTER__PREFIX", "app1"),
            ]),
            &Overrides::default(),
        )
        .unwrap();
        assert!(c.cluster.enabled());
        let bound: SocketAddr = "127.0.0.1:9001".parse().unwrap();
        assert_eq!(c.node_name(bound).as_deref(), Some("127.0.0.1:9001"));
        let t = crate::engine::redis::conn::Target::parse(&c.cluster.redis[0]).unwrap();
        assert_eq!((t.port, t.db, t.password.as_deref()), (6390, 2, Some("pw")));
        let plain = Config::load(None, env(&[]), &Overrides::default()).unwrap();
        assert_eq!(plain.node_name(bound), None, "no [cluster]: one node");
        for (k, v, key) in [
            ("CORECAST_CLUSTER__REDIS", "http://x", "cluster.redis"),
            ("CORECAST_CLUSTER__REDIS", "rediss://127.0.0.1:6380#x", "#x"),
            ("CORECAST_CLUSTER__TLS_CA", "/ca.pem", "cluster.tls_ca"),
            ("CORECAST_CLUSTER__PREFIX", "a b", "cluster.prefix"),
            ("CORECAST_CLUSTER__NODE", "n{1}", "cluster.node"),
        ] {
            let mut vars = vec![(k, v)];
            if k != "CORECAST_CLUSTER__REDIS" {
                vars.push(("CORECAST_CLUSTER__REDIS", "redis://127.0.0.1:6390"));
            }
            let e = Config::load(None, env(&vars), &Overrides::default()).unwrap_err();
            assert!(e.0.contains(key), "{k}={v}: {e}");
        }
        let e = Config::load(
            None,
            env(&[
                ("CORECAST_CLUSTER__REDIS", "redis://127.0.0.1:6390"),
                ("CORECAST_CLUSTER__MODE", "sentinel"),
            ]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(e.0.contains("cluster.mode"), "{e}");
        let e = Config::load(
            None,
            env(&[
                ("CORECAST_CLUSTER__REDIS", "rediss://127.0.0.1:6390"),
                ("CORECAST_CLUSTER__TLS_CERT", "/client.pem"),
            ]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(e.0.contains("go together"), "{e}");
        let c = Config::load(
            None,
            env(&[
                (
                    "CORECAST_CLUSTER__REDIS",
                    "rediss://127.0.0.1:6390#insecure",
                ),
                ("CORECAST_CLUSTER__TLS_CERT", "/client.pem"),
                ("CORECAST_CLUSTER__TLS_KEY", "/client.key"),
            ]),
            &Overrides::default(),
        )
        .unwrap();
        let t = crate::engine::redis::conn::Target::parse(&c.cluster.redis[0]).unwrap();
        assert!(t.tls && t.insecure);
    }

    #[test]
    fn errors_name_the_key() {
        let e = Config::load(
            None,
            env(&[("CORECAST_HEARTBEAT", "0")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(e.0.contains("heartbeat"), "{e}");
        let e =
            Config::load(None, env(&[("CORECAST_NOPE", "1")]), &Overrides::default()).unwrap_err();
        assert!(e.0.contains("nope"), "{e}");
        let e = Config::load(
            None,
            env(&[("CORECAST_LISTEN", "localhost")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(e.0.contains("listen"), "{e}");
        let e = Config::load(
            None,
            env(&[("CORECAST_AUTH__ANONYMOUS", "false")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(e.0.contains("auth.secret"), "{e}");
        let e = Config::load(
            None,
            env(&[("CORECAST_LIMITS__MAX_MESSAGE", "\"big\"")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(e.0.contains("max_message"), "{e}");
    }
}

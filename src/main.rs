//! The `corecast` binary: command line, logging, limits, signals.

use clap::{Parser, Subcommand};
use corecast::auth::{TokenSpec, sign_token};
use corecast::config::{Config, Overrides};
use corecast::server::Server;
use std::path::PathBuf;
use std::process::ExitCode;
use tracing::{info, warn};

/// Real-time WebSocket messaging server.
///
/// Configuration comes from defaults, then the TOML file (--config), then
/// CORECAST_* environment variables (CORECAST_KEY, CORECAST_SECTION__KEY),
/// then these flags. Logs go to stderr; set CORECAST_LOG (or RUST_LOG), e.g.
/// CORECAST_LOG=debug.
///
/// Room history is durable by default: acks wait for an fsync of the store
/// in ./data (CORECAST_HISTORY__PATH). CORECAST_HISTORY__DURABILITY=async
/// acks at once and writes in the background; =memory keeps nothing on disk.
///
/// Several nodes: CORECAST_CLUSTER__REDIS=redis://HOST:PORT/DB (or
/// [cluster] redis in --config) makes this server a node of a cluster
/// through that Redis; CORECAST_CLUSTER__NODE names it (default: its listen
/// address). An ack then means the message is in Redis memory. rediss://
/// speaks TLS (CORECAST_CLUSTER__TLS_CA, __TLS_CERT, __TLS_KEY: PEM files).
/// A Redis Cluster: CORECAST_CLUSTER__MODE=cluster with
/// CORECAST_CLUSTER__REDIS listing seed nodes, comma-separated (sharded
/// pub/sub; each room lives on the master that owns its slot).
///
/// TLS on the port: CORECAST_TLS__CERT=chain.pem CORECAST_TLS__KEY=key.pem
/// (or [tls] cert/key) serve wss:// and https:// on the listen address.
/// SIGHUP reads both files again. SIGTERM or SIGINT drains; a second one
/// exits at once.
///
/// CPU or latency: CORECAST_LIMITS__MAX_WRITE_DELAY_MS=N (0-1000, default
/// 0) lets deliveries wait up to N ms so more frames share one write
/// syscall (replies never wait); /metrics shows corecast_core_busy_ratio and
/// corecast_frames_per_write per core to tell saturated from unbatched.
#[derive(Parser, Debug)]
#[command(name = "corecast", version, about, long_about)]
struct Cli {
    /// TOML configuration file.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on (default 127.0.0.1:8080).
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<String>,
    /// Number of core loops (default: one per CPU).
    #[arg(long, value_name = "N")]
    cores: Option<usize>,
    /// Serve the raw /echo WebSocket route (conformance tests, benchmarks).
    #[arg(long)]
    echo: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print a JWT signed with the configured auth.secret (for development).
    Token {
        /// User id (`sub`).
        #[arg(long)]
        sub: String,
        /// Display name.
        #[arg(long)]
        name: Option<String>,
        /// Room patterns the user may join, comma-separated ('lobby,team:*').
        #[arg(long, value_name = "PATTERNS")]
        rooms: Option<String>,
        /// Room patterns the user may publish to without joining.
        #[arg(long, value_name = "PATTERNS")]
        publish: Option<String>,
        /// Lifetime in seconds.
        #[arg(long, value_name = "SECS", default_value_t = 3600)]
        ttl: u64,
    },
}

fn patterns(s: Option<String>) -> Option<Vec<String>> {
    s.map(|s| {
        s.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(String::from)
            .collect()
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let overrides = Overrides {
        listen: cli.listen.clone(),
        cores: cli.cores,
        echo: cli.echo.then_some(true),
    };
    let config = match Config::load(cli.config.as_deref(), std::env::vars(), &overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("corecast: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(Command::Token {
        sub,
        name,
        rooms,
        publish,
        ttl,
    }) = cli.command
    {
        let Some(secret) = config.auth.secret.as_deref() else {
            eprintln!(
                "corecast: no auth.secret configured (set CORECAST_AUTH__SECRET or [auth] secret in --config)"
            );
            return ExitCode::from(2);
        };
        let spec = TokenSpec {
            sub,
            name,
            rooms: patterns(rooms),
            publish: patterns(publish),
            ttl: Some(ttl),
            exp: None,
        };
        println!("{}", sign_token(secret, &spec));
        return ExitCode::SUCCESS;
    }
    run(config)
}

fn run(config: Config) -> ExitCode {
    // A core that panics would leave its rooms unsequenced and its clients
    // hanging: exit the whole process so a supervisor restarts it cleanly.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        eprintln!("corecast: a thread panicked; exiting");
        std::process::exit(101);
    }));
    let filter = tracing_subscriber::EnvFilter::try_from_env("CORECAST_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => info!(nofile = n, "open-file limit raised to the hard limit"),
        Err(e) => warn!(error = %e, "could not raise the open-file limit"),
    }
    if config.anonymous_allowed() {
        if config.auth.secret.is_none() {
            warn!(
                "no auth.secret configured: every connection is anonymous (set CORECAST_AUTH__SECRET to require tokens)"
            );
        } else {
            warn!("auth.anonymous = true: connections without a token are accepted");
        }
    } else if config.auth.allowed_origins.is_empty() {
        warn!(
            "auth.allowed_origins is not set: pages of any web origin may connect (set it to your app's origins, e.g. CORECAST_AUTH__ALLOWED_ORIGINS=https://app.example.com)"
        );
    }
    if config.echo {
        info!("the /echo route is enabled");
    }
    // Signals first: a SIGTERM right after the listen log must drain, not kill.
    let mut signals = match signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("corecast: cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    };
    let server = match Server::start(config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("corecast: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    let handle = server.shutdown_handle();
    let tls = server.tls();
    std::thread::Builder::new()
        .name("corecast-signals".into())
        .spawn(move || {
            let mut first = true;
            for sig in signals.forever() {
                if sig == signal_hook::consts::SIGHUP {
                    match &tls {
                        None => info!("SIGHUP: no [tls] configured, nothing to reload"),
                        Some(t) => match t.reload() {
                            Ok(()) => {
                                let (cert, key) = t.files();
                                info!(cert, key, "SIGHUP: TLS certificate reloaded; new handshakes use it");
                            }
                            Err(e) => {
                                warn!(error = %e, "SIGHUP: TLS certificate not reloaded; the old one stays")
                            }
                        },
                    }
                    continue;
                }
                if first {
                    info!(
                        signal = sig,
                        "shutting down gracefully (signal again to exit at once)"
                    );
                    handle.shutdown();
                    first = false;
                } else {
                    warn!("second signal: exiting now");
                    std::process::exit(130);
                }
            }
        })
        .expect("spawn signal thread");
    server.join();
    info!("stopped");
    ExitCode::SUCCESS
}

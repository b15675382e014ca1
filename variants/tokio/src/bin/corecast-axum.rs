//! `corecast-axum`: the same protocol subset and the same connection loop as
//! `corecast-tokio`, behind axum's router and WebSocket upgrade (hyper
//! HTTP/1 server, axum's tokio-tungstenite underneath).

use axum::Router;
use axum::extract::State;
use axum::extract::ws::{Utf8Bytes, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::get;
use axum::serve::ListenerExt;
use clap::Parser;
use corecast_tokio::hub::Hub;
use corecast_tokio::proto::{ECHO_MAX_MESSAGE, MAX_FRAME};
use corecast_tokio::{conn, server};
use std::sync::Arc;

type AppHub = Arc<Hub<Utf8Bytes>>;

fn main() {
    let args = server::Args::parse();
    let workers = args.workers();
    let rt = server::runtime(workers).unwrap_or_else(|e| {
        eprintln!("corecast-axum: cannot start the runtime: {e}");
        std::process::exit(1)
    });
    rt.block_on(async move {
        let shutdown = server::shutdown_signal();
        let listener = server::bind(args.listen).unwrap_or_else(|e| {
            eprintln!("corecast-axum: cannot listen on {}: {e}", args.listen);
            std::process::exit(1)
        });
        server::announce("corecast-axum", &listener, workers);
        let hub: AppHub = Arc::new(Hub::new(args.room_capacity, args.membership_events));
        let app = Router::new()
            .route("/ws", get(ws))
            .route("/echo", get(echo))
            .with_state(hub);
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        tokio::select! {
            r = axum::serve(listener, app) => {
                if let Err(e) = r {
                    eprintln!("corecast-axum: server failed: {e}");
                }
            }
            _ = shutdown => {}
        }
    });
    std::process::exit(0);
}

/// Buffers as corecast-tokio: 4 KiB reads, writes flushed at 64 KiB.
fn tuned(upgrade: WebSocketUpgrade) -> WebSocketUpgrade {
    upgrade.read_buffer_size(4096).write_buffer_size(64 * 1024)
}

async fn ws(upgrade: WebSocketUpgrade, State(hub): State<AppHub>) -> Response {
    tuned(upgrade)
        .max_write_buffer_size(1 << 20)
        .max_message_size(MAX_FRAME)
        .max_frame_size(MAX_FRAME)
        .on_upgrade(move |socket| conn::serve_ws(socket, hub))
}

async fn echo(upgrade: WebSocketUpgrade) -> Response {
    tuned(upgrade)
        .max_write_buffer_size(2 * ECHO_MAX_MESSAGE + 1024)
        .max_message_size(ECHO_MAX_MESSAGE)
        .max_frame_size(ECHO_MAX_MESSAGE)
        .on_upgrade(conn::serve_echo)
}

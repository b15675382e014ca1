//! `corecast-tokio`: the corecast protocol subset on tokio + tokio-tungstenite.
//!
//! One `TcpListener`, an accept loop spawning a task per connection; the
//! route is read in the handshake callback.

use clap::Parser;
use corecast_tokio::hub::Hub;
use corecast_tokio::{conn, server, stacks};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::{Utf8Bytes, protocol::WebSocketConfig};

/// Time a client has to complete the upgrade (corecast's `auth.timeout`).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy)]
enum Route {
    Ws,
    Echo,
}

fn main() {
    let args = server::Args::parse();
    let workers = args.workers();
    let rt = server::runtime(workers).unwrap_or_else(|e| {
        eprintln!("corecast-tokio: cannot start the runtime: {e}");
        std::process::exit(1)
    });
    rt.block_on(async move {
        let shutdown = server::shutdown_signal();
        let listener = server::bind(args.listen).unwrap_or_else(|e| {
            eprintln!("corecast-tokio: cannot listen on {}: {e}", args.listen);
            std::process::exit(1)
        });
        server::announce("corecast-tokio", &listener, workers);
        let hub = Arc::new(Hub::<Utf8Bytes>::new(
            args.room_capacity,
            args.membership_events,
        ));
        tokio::select! {
            _ = accept_loop(listener, hub) => {}
            _ = shutdown => {}
        }
    });
    std::process::exit(0);
}

async fn accept_loop(listener: TcpListener, hub: Arc<Hub<Utf8Bytes>>) {
    let config = stacks::tungstenite::config();
    let mut last_error = None;
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(connection(stream, hub.clone(), config));
            }
            Err(e) => {
                server::accept_error(&e, &mut last_error);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn connection(stream: TcpStream, hub: Arc<Hub<Utf8Bytes>>, config: WebSocketConfig) {
    let _ = stream.set_nodelay(true);
    let mut route = None;
    // The signature is tungstenite's `Callback`; the error is its response.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        route = match req.uri().path() {
            "/ws" => Some(Route::Ws),
            "/echo" => Some(Route::Echo),
            _ => None,
        };
        match route {
            Some(_) => Ok(resp),
            None => {
                let mut err = ErrorResponse::new(Some(
                    r#"{"error":{"code":"not_found","message":"no such route"}}"#.into(),
                ));
                *err.status_mut() = StatusCode::NOT_FOUND;
                Err(err)
            }
        }
    };
    let accept = tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config));
    let ws = match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
        Ok(Ok(ws)) => ws,
        _ => return,
    };
    match route {
        Some(Route::Ws) => conn::serve_ws(ws, hub).await,
        Some(Route::Echo) => conn::serve_echo(ws).await,
        None => {}
    }
}

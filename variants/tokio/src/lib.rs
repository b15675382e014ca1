//! corecast's protocol subset on tokio, as a benchmark baseline.
//!
//! Two binaries share everything here: `corecast-tokio` (tokio-tungstenite)
//! and `corecast-axum` (axum's WebSocket upgrade). See README.md beside
//! Cargo.toml for the design.

pub mod conn;
pub mod hub;
pub mod proto;
pub mod server;
pub mod stacks;

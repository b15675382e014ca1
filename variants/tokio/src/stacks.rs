//! The two WebSocket stacks' message types, seen through [`WsMessage`].

use crate::conn::{Kind, WsMessage};
use crate::proto::ECHO_MAX_MESSAGE;

/// tokio-tungstenite 0.30 (tungstenite 0.30, as corecast).
pub mod tungstenite {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
    use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
    use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

    impl WsMessage for Message {
        type Frame = Utf8Bytes;

        fn text(frame: Utf8Bytes) -> Self {
            Message::Text(frame)
        }

        fn ping() -> Self {
            Message::Ping(Default::default())
        }

        fn close(code: u16, reason: &'static str) -> Self {
            Message::Close(Some(CloseFrame {
                code: code.into(),
                reason: Utf8Bytes::from_static(reason),
            }))
        }

        fn kind(&self) -> Kind<'_> {
            match self {
                Message::Text(t) => Kind::Text(t.as_str()),
                Message::Binary(_) => Kind::Binary,
                Message::Close(_) => Kind::Close,
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Kind::Control,
            }
        }
    }

    /// The configuration every accepted WebSocket gets (see the crate README).
    ///
    /// The handshake callback learns the route only after the configuration
    /// was handed over, so both routes share one: read limits are `/echo`'s
    /// and `/ws` enforces its 65 KiB frame limit itself (close 1009).
    /// Writes are buffered up to 64 KiB between flushes; the write buffer never
    /// holds more than that plus one frame, because `feed` waits for a
    /// blocked socket, so its hard cap only has to admit one `/echo` frame.
    pub fn config() -> WebSocketConfig {
        WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(64 * 1024)
            .max_write_buffer_size(2 * ECHO_MAX_MESSAGE + 1024)
            .max_message_size(Some(ECHO_MAX_MESSAGE))
            .max_frame_size(Some(ECHO_MAX_MESSAGE))
    }
}

/// axum 0.8 (its own tokio-tungstenite 0.29 underneath).
pub mod axum {
    use super::*;
    use ::axum::extract::ws::{CloseFrame, Message, Utf8Bytes};

    impl WsMessage for Message {
        type Frame = Utf8Bytes;

        fn text(frame: Utf8Bytes) -> Self {
            Message::Text(frame)
        }

        fn ping() -> Self {
            Message::Ping(Default::default())
        }

        fn close(code: u16, reason: &'static str) -> Self {
            Message::Close(Some(CloseFrame {
                code,
                reason: Utf8Bytes::from_static(reason),
            }))
        }

        fn kind(&self) -> Kind<'_> {
            match self {
                Message::Text(t) => Kind::Text(t.as_str()),
                Message::Binary(_) => Kind::Binary,
                Message::Close(_) => Kind::Close,
                Message::Ping(_) | Message::Pong(_) => Kind::Control,
            }
        }
    }
}

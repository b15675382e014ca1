//! The static pages the binary carries: the JavaScript client at
//! `GET /corecast.js` (clients/js/dist/corecast.js, built from
//! clients/js/src and committed; CI checks it matches its sources) and the
//! demo chat at `GET /` (clients/js/demo/index.html), both embedded at
//! compile time so a bare `cargo run --release` serves them.
//!
//! This module owns only the bytes and the demo's view of the
//! configuration (may it connect anonymously, may it mint tokens); it must
//! not read sockets or hold state.

use super::http;
use crate::config::Config;

/// The client bundle: one minified ES module.
pub const CLIENT_JS: &str = include_str!("../../clients/js/dist/corecast.js");

/// The demo page; [`CONFIG_MARK`] is replaced with what the page needs to
/// know about this server.
const DEMO_HTML: &str = include_str!("../../clients/js/demo/index.html");

/// Where the demo page takes its configuration object.
const CONFIG_MARK: &str = "/*CORECAST_DEMO_CONFIG*/{}";

/// The response to `GET /corecast.js`.
pub fn client_js() -> Vec<u8> {
    http::response(200, "text/javascript; charset=utf-8", CLIENT_JS)
}

/// The response to `GET /`: the demo page, told whether it may connect
/// without a token (`anonymous`) and whether `POST /api/tokens` will give
/// it one without an API key (`devTokens`: `api.dev_tokens` with an
/// `auth.secret` to sign with).
pub fn demo(config: &Config) -> Vec<u8> {
    let dev_tokens = config.api.dev_tokens && config.auth.secret.is_some();
    let conf = format!(
        "{{\"anonymous\":{},\"devTokens\":{}}}",
        config.anonymous_allowed(),
        dev_tokens
    );
    let page = DEMO_HTML.replacen(CONFIG_MARK, &conf, 1);
    http::response(200, "text/html; charset=utf-8", &page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_page_carries_the_config_mark_and_the_client_is_a_module() {
        assert!(
            DEMO_HTML.contains(CONFIG_MARK),
            "demo page lost its config mark"
        );
        assert!(DEMO_HTML.contains("/corecast.js"));
        assert!(CLIENT_JS.contains("export{"), "bundle is not an ES module");
        let mut c = Config::default();
        let page = String::from_utf8(demo(&c)).unwrap();
        assert!(page.contains("{\"anonymous\":true,\"devTokens\":false}"));
        c.auth.secret = Some("s".repeat(32));
        c.api.dev_tokens = true;
        let page = String::from_utf8(demo(&c)).unwrap();
        assert!(page.contains("{\"anonymous\":false,\"devTokens\":true}"));
    }
}

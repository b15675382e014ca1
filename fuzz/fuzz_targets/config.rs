//! `config`: TOML text (and `CORECAST_*` variables) into the config
//! loader, `corecast::config::Config::load_str` (what `Config::load` does
//! with a file's contents), and what the server derives from a valid one.
//!
//! Input: TOML text; after a first NUL byte, `NAME=VALUE` lines as the
//! environment. Checks (besides no panic): a loaded config validates;
//! the derived values (listen address, core count, session settings,
//! origins, trusted networks, authenticator) can be made from it; and it
//! serializes back to TOML that loads to the same config.

#![no_main]

use corecast::auth::Authenticator;
use corecast::config::{Config, Overrides, parse_net};
use corecast::core::cors::Origins;
use corecast::proto::session::SessionConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|buf: &[u8]| {
    let (text, env) = match buf.iter().position(|&b| b == 0) {
        Some(i) => (&buf[..i], &buf[i + 1..]),
        None => (buf, &[][..]),
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let env: Vec<(String, String)> = String::from_utf8_lossy(env)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let Ok(c) = Config::load_str(Some((text, "fuzz.toml")), env, &Overrides::default()) else {
        return;
    };
    c.validate().expect("a loaded config validates");
    let _ = c.listen_addr();
    assert!(c.core_count() >= 1);
    let _ = c.anonymous_allowed();
    let s = SessionConfig::from_config(&c);
    let _: serde_json::Value = serde_json::from_str(&s.limits_json).expect("limits JSON");
    let _ = Origins::new(&c.auth.allowed_origins);
    for n in c.proxy.trusted.iter().chain(&c.limits.per_ip_exempt) {
        parse_net(n).expect("a validated network");
    }
    let _ = Authenticator::new(
        c.auth.secret.as_deref(),
        c.auth.require_exp,
        &c.auth.default_rooms,
    );
    let _ = c.node_name(c.listen_addr());

    // Round trip: what it says, written back, loads to the same config.
    let written = toml::to_string(&c).expect("a config serializes");
    let back = Config::load_str(
        Some((&written, "written.toml")),
        Vec::new(),
        &Overrides::default(),
    )
    .unwrap_or_else(|e| panic!("written config does not load: {e}\n{written}"));
    assert_eq!(
        format!("{back:?}"),
        format!("{c:?}"),
        "round trip via\n{written}"
    );
});

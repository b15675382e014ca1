//! Timers of a core: one hashed wheel (`crate::timer`), entries keyed by
//! slab key + generation so a stale entry for a reused slot is ignored.
//!
//! Owns what each kind means when it fires: handshake and auth deadlines,
//! heartbeats, token expiry and its grace, close deadlines, the accept
//! retry, the 1-second tick, and the timers the memory engine's home asked
//! for (handed back to it). It must not arm timers for other cores.

use super::conn::{State, Then};
use super::http::error_response;
use super::{Core, HomeTimerKind, Timer, TimerKind};
use crate::engine::memory::HomeTimer;
use std::io::Write;
use tracing::{debug, info};
use tungstenite::Message;

impl Core {
    pub(super) fn run_timers(&mut self) {
        let mut expired = std::mem::take(&mut self.expired);
        self.wheel.advance(self.now_ms, &mut expired);
        for t in expired.drain(..) {
            self.fire(t);
            self.settle();
        }
        self.expired = expired;
    }

    pub(super) fn fire(&mut self, t: Timer) {
        let key = t.key as usize;
        match t.kind {
            TimerKind::AcceptRetry => {
                self.accept_paused = false;
                return self.accept();
            }
            TimerKind::Tick => {
                self.tick();
                self.sweep_idle();
                return self.timer(self.now_ms + 1000, 0, 0, TimerKind::Tick);
            }
            TimerKind::Home(kind) => {
                let t = match kind {
                    HomeTimerKind::Grace => HomeTimer::Grace {
                        slot: t.key,
                        generation: t.generation,
                    },
                    HomeTimerKind::Sweep => HomeTimer::Sweep,
                    HomeTimerKind::Tick => HomeTimer::Tick,
                };
                let clock = self.clock();
                if let Some(home) = self.home.as_mut() {
                    home.on_timer(t, clock);
                }
                return self.carry_home_out();
            }
            _ => {}
        }
        if !self.live(key, t.generation) {
            return; // stale: the connection is gone or the slot was reused
        }
        if matches!(self.conns[key].state, State::Sse(_)) {
            return match t.kind {
                TimerKind::Heartbeat => self.sse_ping(key, t.generation),
                TimerKind::Expiry => {
                    debug!(core = self.id, "SSE stream closed: token expired");
                    self.remove_conn(key)
                }
                _ => {}
            };
        }
        let conn = &mut self.conns[key];
        match (t.kind, &mut conn.state) {
            (TimerKind::Handshake, State::Http(h)) => {
                debug!(core = self.id, "handshake timeout");
                if matches!(h.then, Then::Waiting) {
                    self.metrics.http_error(503);
                    let r = error_response(503, "timeout", "no answer in time; retry", &[]);
                    return self.respond(key, r, Then::Close);
                }
                if matches!(h.then, Then::Reading) && (!h.buf.is_empty() || h.pending.is_some()) {
                    // Best effort: a slow client that sent part of a request
                    // learns why; nothing waits for this write.
                    let what = if h.pending.is_some() {
                        "request body not received in time"
                    } else {
                        "request head not received in time"
                    };
                    let r = error_response(408, "timeout", what, &[]);
                    let _ = conn.stream.write(&r);
                }
                self.remove_conn(key);
            }
            (TimerKind::CloseDeadline, _) => {
                debug!(core = self.id, "close handshake timeout");
                self.remove_conn(key);
            }
            (TimerKind::Heartbeat, State::Ws(ws)) if !ws.closing => {
                let hb = self.shared.config.heartbeat * 1000;
                if self.now_ms.saturating_sub(ws.last_rx_ms) >= 2 * hb {
                    let session = ws
                        .session
                        .as_ref()
                        .map(|s| s.id.to_string())
                        .unwrap_or_default();
                    info!(
                        core = self.id,
                        session,
                        code = "none",
                        reason = "heartbeat timeout",
                        "dropping connection: silent for two heartbeat intervals"
                    );
                    return self.remove_conn(key);
                }
                // A queue kept warm by a burst that ended goes back now
                // (a connection that is still busy makes a new one).
                ws.out.release();
                self.write_control(key, Message::Ping(Default::default()));
                self.timer(self.now_ms + hb, key, t.generation, TimerKind::Heartbeat);
            }
            (TimerKind::Auth, State::Ws(_)) => {
                let mut outputs = std::mem::take(&mut self.outputs);
                self.with_session(key, |s, _| s.on_auth_timeout(&mut outputs));
                self.outputs = outputs;
                self.apply_outputs(key, t.generation);
            }
            (TimerKind::Expiry, State::Ws(ws)) => {
                ws.expiry_armed = None;
                let mut outputs = std::mem::take(&mut self.outputs);
                let grace = self
                    .with_session(key, |s, ctx| s.on_token_expiry(ctx, &mut outputs))
                    .flatten();
                self.outputs = outputs;
                match grace {
                    Some(grace) => {
                        let at = self.now_ms + grace * 1000;
                        self.timer(at, key, t.generation, TimerKind::ExpiryGrace);
                    }
                    None => {
                        // Refreshed meanwhile (or the clock stepped back):
                        // wait for the current exp.
                        let later = self
                            .with_session(key, |s, ctx| {
                                s.identity
                                    .as_ref()
                                    .and_then(|i| i.exp)
                                    .is_some_and(|exp| exp > ctx.unix_s)
                            })
                            .unwrap_or(false);
                        if later {
                            self.arm_expiry(key, t.generation);
                        }
                    }
                }
                self.apply_outputs(key, t.generation);
            }
            (TimerKind::ExpiryGrace, State::Ws(_)) => {
                let mut outputs = std::mem::take(&mut self.outputs);
                self.with_session(key, |s, ctx| s.on_expiry_grace(ctx, &mut outputs));
                self.outputs = outputs;
                self.apply_outputs(key, t.generation);
            }
            _ => {}
        }
    }
}

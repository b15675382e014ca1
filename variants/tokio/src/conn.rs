//! One task per connection: `/ws` (the protocol) and `/echo`.
//!
//! The task owns the WebSocket (no split, no writer task) and `select!`s
//! between reading its socket, its rooms' broadcast receivers and the
//! heartbeat timer. Writes are batched: everything that can be answered or
//! forwarded without waiting is `feed`ed (tungstenite appends it to its
//! write buffer) and the socket is flushed once per wake-up.
//!
//! The code is generic over the WebSocket stack ([`WsMessage`]), so the
//! tokio-tungstenite binary and the axum binary run the very same loop.

use crate::hub::{Hub, Sub};
use crate::proto::{self, MAX_FRAME, MAX_MESSAGE, MAX_ROOMS};
use futures_util::future::select_all;
use futures_util::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::time::{Instant, MissedTickBehavior};

/// Most frames forwarded from the rooms in one batch before the loop looks
/// at its socket again.
const MAX_BATCH: usize = 1024;
/// Most commands already received that are handled in one batch.
const MAX_PIPELINE: usize = 64;
/// How long a closing handshake may take before the socket is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// What the connection loop needs to know about a received message.
#[derive(Debug)]
pub enum Kind<'a> {
    /// A text message.
    Text(&'a str),
    /// A binary message.
    Binary,
    /// The peer's close frame (the stack queues the reply).
    Close,
    /// Ping, pong or a raw frame (the stack answers pings itself).
    Control,
}

/// A WebSocket stack's message type.
pub trait WsMessage: Sized + Send + 'static {
    /// An encoded text frame shared by all members of a room; cloning it
    /// must be cheap (reference counted).
    type Frame: Clone + From<String> + Send + Sync + 'static;
    /// A text message carrying `frame`.
    fn text(frame: Self::Frame) -> Self;
    /// A ping (heartbeat).
    fn ping() -> Self;
    /// A close frame.
    fn close(code: u16, reason: &'static str) -> Self;
    /// What the message is.
    fn kind(&self) -> Kind<'_>;
}

/// What woke the connection loop.
enum Event<M, E, F> {
    Incoming(Option<Result<M, E>>),
    Frame(Result<F, RecvError>),
    Tick,
}

/// Why a connection loop ended.
#[derive(Debug)]
enum End {
    /// The peer is gone, an I/O or protocol error, or the heartbeat expired.
    Gone,
    /// The peer sent a close frame; flush the reply.
    Closed,
    /// The server closes with this code.
    Close(u16, &'static str),
}

struct Conn<F: Clone + From<String>> {
    hub: Arc<Hub<F>>,
    user: Arc<str>,
    subs: Vec<Sub<F>>,
    /// Where the next batch starts draining, so no room starves another.
    next_sub: usize,
}

impl<F: Clone + From<String>> Drop for Conn<F> {
    fn drop(&mut self) {
        for sub in self.subs.drain(..) {
            self.hub.leave(sub, &self.user);
        }
    }
}

async fn feed<S, M, E>(ws: &mut S, msg: M) -> Result<(), End>
where
    S: Sink<M, Error = E> + Unpin,
{
    ws.feed(msg).await.map_err(|_| End::Gone)
}

async fn reply<S, M, E>(ws: &mut S, text: String) -> Result<(), End>
where
    S: Sink<M, Error = E> + Unpin,
    M: WsMessage,
{
    feed(ws, M::text(text.into())).await
}

/// The next frame of any of the rooms. Never resolves without rooms.
async fn recv_any<F: Clone>(subs: &mut [Sub<F>]) -> Result<F, RecvError> {
    match subs {
        [] => std::future::pending().await,
        [one] => one.rx.recv().await,
        many => {
            select_all(many.iter_mut().map(|s| Box::pin(s.rx.recv())))
                .await
                .0
        }
    }
}

/// Serves the protocol on an accepted `/ws` WebSocket until it ends.
pub async fn serve_ws<S, M, E>(mut ws: S, hub: Arc<Hub<M::Frame>>)
where
    S: Stream<Item = Result<M, E>> + Sink<M, Error = E> + Unpin,
    M: WsMessage,
{
    let session = format!("s_{:016x}", fastrand::u64(..));
    let user: Arc<str> = format!("anon:{session}").into();
    let welcome = proto::welcome(&session, &user);
    let mut conn = Conn {
        hub,
        user,
        subs: Vec::new(),
        next_sub: 0,
    };
    let end = conn.run(&mut ws, welcome).await;
    // Leave the rooms first: nothing more is forwarded to this connection.
    drop(conn);
    finish(&mut ws, end).await;
}

async fn finish<S, M, E>(ws: &mut S, end: End)
where
    S: Sink<M, Error = E> + Unpin,
    M: WsMessage,
{
    match end {
        End::Gone => {}
        End::Closed => {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.flush()).await;
        }
        End::Close(code, reason) => {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.send(M::close(code, reason))).await;
        }
    }
}

impl<F: Clone + From<String> + Send + Sync + 'static> Conn<F> {
    async fn run<S, M, E>(&mut self, ws: &mut S, welcome: String) -> End
    where
        S: Stream<Item = Result<M, E>> + Sink<M, Error = E> + Unpin,
        M: WsMessage<Frame = F>,
    {
        if ws.send(M::text(welcome.into())).await.is_err() {
            return End::Gone;
        }
        let hb = Duration::from_secs(proto::HEARTBEAT_SECS);
        let mut heartbeat = tokio::time::interval_at(Instant::now() + hb, hb);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_seen = Instant::now();
        // A peer that does not read blocks our writes; one that stays
        // blocked this long is dropped (lagging is caught when it reads).
        let stall = 2 * hb;
        loop {
            let event = tokio::select! {
                incoming = ws.next() => Event::Incoming(incoming),
                frame = recv_any(&mut self.subs) => Event::Frame(frame),
                _ = heartbeat.tick() => Event::Tick,
            };
            let work = async {
                match event {
                    Event::Incoming(Some(Ok(msg))) => {
                        last_seen = Instant::now();
                        self.on_incoming(ws, msg).await?;
                    }
                    Event::Incoming(_) => return Err(End::Gone),
                    Event::Frame(Ok(frame)) => self.forward(ws, Some(frame)).await?,
                    Event::Frame(Err(RecvError::Lagged(_))) => {
                        return Err(End::Close(proto::CLOSE_SLOW_CONSUMER, "slow consumer"));
                    }
                    Event::Frame(Err(RecvError::Closed)) => return Err(End::Gone),
                    Event::Tick if last_seen.elapsed() >= 2 * hb => return Err(End::Gone),
                    Event::Tick => feed(ws, M::ping()).await?,
                }
                // One flush (one write syscall) for everything fed above.
                ws.flush().await.map_err(|_| End::Gone)
            };
            match tokio::time::timeout(stall, work).await {
                Ok(Ok(())) => {}
                Ok(Err(end)) => return end,
                Err(_) => return End::Gone,
            }
        }
    }

    /// Handles a received message, then the ones already received behind
    /// it, then forwards what the rooms have (own publishes included).
    async fn on_incoming<S, M, E>(&mut self, ws: &mut S, msg: M) -> Result<(), End>
    where
        S: Stream<Item = Result<M, E>> + Sink<M, Error = E> + Unpin,
        M: WsMessage<Frame = F>,
    {
        self.on_message(ws, msg).await?;
        for _ in 0..MAX_PIPELINE {
            match ws.next().now_or_never() {
                Some(Some(Ok(msg))) => self.on_message(ws, msg).await?,
                Some(_) => return Err(End::Gone),
                None => break,
            }
        }
        self.forward(ws, None).await
    }

    async fn on_message<S, M, E>(&mut self, ws: &mut S, msg: M) -> Result<(), End>
    where
        S: Sink<M, Error = E> + Unpin,
        M: WsMessage<Frame = F>,
    {
        match msg.kind() {
            Kind::Text(text) if text.len() > MAX_FRAME => {
                Err(End::Close(proto::CLOSE_TOO_BIG, "message too big"))
            }
            Kind::Text(text) => self.on_command(ws, text).await,
            Kind::Binary => {
                let e = proto::error(
                    None,
                    "unsupported",
                    "binary frames are not supported; send JSON text frames",
                );
                reply(ws, e).await
            }
            Kind::Close => Err(End::Closed),
            Kind::Control => Ok(()),
        }
    }

    async fn on_command<S, M, E>(&mut self, ws: &mut S, text: &str) -> Result<(), End>
    where
        S: Sink<M, Error = E> + Unpin,
        M: WsMessage<Frame = F>,
    {
        let cmd = match proto::parse(text) {
            Ok(cmd) => cmd,
            Err(e) => return reply(ws, proto::error(e.id, e.code, &e.message)).await,
        };
        let id = cmd.id;
        let err = |code: &str, message: &str| proto::error(id, code, message);
        let Some(ty) = cmd.ty.as_deref() else {
            return reply(ws, err("missing_field", "missing field `type`")).await;
        };
        let room = match (ty, cmd.room.as_deref()) {
            ("publish" | "join" | "leave", None) => {
                return reply(ws, err("missing_field", "missing field `room`")).await;
            }
            ("publish" | "join" | "leave", Some(room)) if !proto::valid_room(room) => {
                return reply(ws, err("invalid_room", "invalid room name")).await;
            }
            (_, room) => room.unwrap_or_default(),
        };
        match ty {
            "publish" => {
                let Some(data) = cmd.data else {
                    return reply(ws, err("missing_field", "missing field `data`")).await;
                };
                if data.get().len() > MAX_MESSAGE {
                    return reply(ws, err("too_large", "data is larger than max_message")).await;
                }
                let Some(sub) = self.subs.iter().find(|s| s.room.name() == room) else {
                    return reply(ws, err("not_member", "join the room first")).await;
                };
                let (seq, ts) = sub.room.publish(&self.user, data);
                let ack = proto::publish_ack(id, room, seq, ts);
                // The publisher's own copy (and whatever else is pending)
                // goes before the ack, as corecast orders them.
                self.forward(ws, None).await?;
                reply(ws, ack).await
            }
            "join" => {
                if let Some(sub) = self.subs.iter().find(|s| s.room.name() == room) {
                    let (seq, members) = sub.room.snapshot();
                    let ack = proto::join_ack(id, room, sub.room.epoch(), seq, members);
                    return reply(ws, ack).await;
                }
                if self.subs.len() >= MAX_ROOMS {
                    return reply(ws, err("room_limit", "too many rooms on this connection")).await;
                }
                let joined = self.hub.join(room, &self.user);
                let ack = proto::join_ack(
                    id,
                    room,
                    joined.sub.room.epoch(),
                    joined.seq,
                    joined.members,
                );
                self.subs.push(joined.sub);
                reply(ws, ack).await
            }
            "leave" => {
                let Some(pos) = self.subs.iter().position(|s| s.room.name() == room) else {
                    return reply(ws, err("not_member", "not in this room")).await;
                };
                let sub = self.subs.swap_remove(pos);
                self.hub.leave(sub, &self.user);
                reply(ws, proto::leave_ack(id, room)).await
            }
            "ping" => reply(ws, proto::pong(id)).await,
            other => {
                let mut cut = other.len().min(64);
                while !other.is_char_boundary(cut) {
                    cut -= 1;
                }
                let shown = serde_json::to_string(&other[..cut]).unwrap_or_default();
                let msg = format!("unknown command type {shown}");
                reply(ws, err("unknown_type", &msg)).await
            }
        }
    }

    /// Feeds `first` and then every frame the rooms already hold (up to
    /// [`MAX_BATCH`]), without flushing.
    async fn forward<S, M, E>(&mut self, ws: &mut S, first: Option<F>) -> Result<(), End>
    where
        S: Sink<M, Error = E> + Unpin,
        M: WsMessage<Frame = F>,
    {
        let mut budget = MAX_BATCH;
        if let Some(frame) = first {
            feed(ws, M::text(frame)).await?;
            budget -= 1;
        }
        let n = self.subs.len();
        for k in 0..n {
            let i = (self.next_sub + k) % n;
            loop {
                if budget == 0 {
                    self.next_sub = i;
                    return Ok(());
                }
                match self.subs[i].rx.try_recv() {
                    Ok(frame) => {
                        feed(ws, M::text(frame)).await?;
                        budget -= 1;
                    }
                    Err(TryRecvError::Empty | TryRecvError::Closed) => break,
                    Err(TryRecvError::Lagged(_)) => {
                        return Err(End::Close(proto::CLOSE_SLOW_CONSUMER, "slow consumer"));
                    }
                }
            }
        }
        if n > 0 {
            self.next_sub = (self.next_sub + 1) % n;
        }
        Ok(())
    }
}

/// Echoes every text and binary message back unchanged, flushing once per
/// batch of messages that were already received.
pub async fn serve_echo<S, M, E>(mut ws: S)
where
    S: Stream<Item = Result<M, E>> + Sink<M, Error = E> + Unpin,
    M: WsMessage,
{
    while let Some(Ok(msg)) = ws.next().await {
        let mut next = Some(msg);
        let mut handled = 0;
        while let Some(msg) = next.take() {
            let echo = match msg.kind() {
                Kind::Text(_) | Kind::Binary => true,
                Kind::Close => {
                    let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.flush()).await;
                    return;
                }
                Kind::Control => false,
            };
            if echo && ws.feed(msg).await.is_err() {
                return;
            }
            handled += 1;
            if handled < MAX_PIPELINE {
                match ws.next().now_or_never() {
                    Some(Some(Ok(m))) => next = Some(m),
                    Some(_) => {
                        let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.flush()).await;
                        return;
                    }
                    None => {}
                }
            }
        }
        if ws.flush().await.is_err() {
            return;
        }
    }
}

//! The second carrier: WebSocket (RFC 6455) over TLS 1.3, for clients whose network
//! blocks UDP (issue 14, stage 2).
//!
//! One WebSocket carries what QUIC splits into a main stream, a control stream and
//! datagrams. Each binary message holds whole length-prefixed frames exactly as a QUIC
//! stream would (a writer's batch is one message), so [`FrameReader`](crate::FrameReader)
//! reads them through [`WsReader`], a [`ByteSource`]. Text messages are refused: nothing
//! in the protocol is text (RFC 6455 section 5.6 lets an endpoint close on data it cannot
//! take).
//!
//! A connection is a [`WsConnection`] (shared: closing with a
//! [`CloseCode`], its end, the address of the other side, the RTT), a [`WsSender`] per
//! writer and one [`WsReader`]. A pump task owns the socket's write half: it writes what
//! the senders hand it, a ping at once and then every `keepalive`, and the close frame.
//! TCP never says that a path went silent, so the reader does it as QUIC's idle timeout
//! does: nothing (not even a pong) read for `idle` ends the connection as timed out.
//!
//! TCP does not show its RTT either, so each ping carries its send time and the pong
//! that echoes it (RFC 6455 section 5.5.3: a pong carries the ping's application data)
//! gives a sample, smoothed as RFC 6298 smooths TCP's own.

use crate::end::{ConnectionEnd, ReadEnd};
use crate::source::ByteSource;
use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use peergroup_protocol::CloseCode;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

/// What a WebSocket runs over: a TLS stream on TCP, boxed so both sides and every TLS
/// stream type share one [`WsConnection`].
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A boxed [`Io`].
pub type BoxedIo = Box<dyn Io>;

/// The first WebSocket close code of the range RFC 6455 (section 7.4.2) leaves to
/// applications: a [`CloseCode`] `n` travels as `4000 + n`.
pub const WS_CLOSE_BASE: u16 = 4000;

/// Batches queued for the pump, at most: the writer waits past it, so back-pressure
/// reaches the queue at the writer (as a full QUIC stream window does).
const PUMP_QUEUE: usize = 4;

/// Datagram frames queued for the pump, at most; past it they are dropped, as a full
/// datagram send buffer drops them on QUIC. Enough for a game tick's burst (a sender
/// calling `send` many times in a row) while the pump writes; small enough that a
/// datagram waits behind at most about this many others. The pump writes every queued
/// datagram after each batch, with one flush.
pub const DATAGRAM_QUEUE: usize = 128;

/// How long a closing pump may take to write what was queued and the close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// `code` as a WebSocket close code: `4000 + n`, or 4999 for a number that does not fit
/// (it reads back as [`CloseCode::Unknown`]`(999)`, never as a code this build names).
pub fn to_ws_code(code: CloseCode) -> u16 {
    match code.to_u64() {
        n if n < 999 => WS_CLOSE_BASE + n as u16,
        _ => WS_CLOSE_BASE + 999,
    }
}

/// The [`CloseCode`] of a WebSocket close code: `4000..=4999` as ours, 1000 (a plain
/// normal close, as a browser sends) as [`CloseCode::Normal`], `None` for the others.
pub fn from_ws_code(code: u16) -> Option<CloseCode> {
    match code {
        1000 => Some(CloseCode::Normal),
        4000..=4999 => Some(CloseCode::from_u64(u64::from(code - WS_CLOSE_BASE))),
        _ => None,
    }
}

/// The largest WebSocket message either side sends or accepts, bytes. Frames are a byte
/// stream across messages (the reader hands each message's bytes to [`crate::FrameReader`],
/// which reassembles frames as it does from a QUIC stream), so a larger write batch or
/// frame goes out as several messages. Small messages bound what a connection can make
/// its peer buffer before anything is checked: before login, one message of this size
/// rather than one maximal frame (1 MiB by default) per connection.
pub const WS_MESSAGE_BYTES: usize = 64 * 1024;

/// The limits a peergroup WebSocket runs with: messages and WebSocket frames of at most
/// [`WS_MESSAGE_BYTES`].
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(WS_MESSAGE_BYTES))
        .max_frame_size(Some(WS_MESSAGE_BYTES))
}

/// Queues `chunk` as binary messages of at most [`WS_MESSAGE_BYTES`] (slices of the same
/// buffer, no copy), without flushing.
async fn feed_chunk(sink: &mut WsSink, chunk: Bytes) -> Result<(), WsError> {
    let mut rest = chunk;
    while rest.len() > WS_MESSAGE_BYTES {
        let part = rest.split_to(WS_MESSAGE_BYTES);
        sink.feed(Message::Binary(part)).await?;
    }
    sink.feed(Message::Binary(rest)).await
}

/// Sends `message` (a batch split as [`feed_chunk`] does), then every datagram queued
/// meanwhile, and flushes once.
async fn send_message(
    sink: &mut WsSink,
    message: Outgoing,
    datagrams: &mut mpsc::Receiver<Bytes>,
) -> Result<(), WsError> {
    match message {
        Outgoing::Chunk(chunk) => feed_chunk(sink, chunk).await?,
        Outgoing::Ping(stamp) => {
            let payload = Bytes::copy_from_slice(&stamp.to_le_bytes());
            sink.feed(Message::Ping(payload)).await?
        }
    }
    // At most one queue's worth, so a sender that keeps it full cannot hold the flush.
    for _ in 0..DATAGRAM_QUEUE {
        let Ok(datagram) = datagrams.try_recv() else {
            break;
        };
        feed_chunk(sink, datagram).await?;
    }
    sink.flush().await
}

/// The write half of a peergroup WebSocket.
type WsSink = SplitSink<WebSocketStream<BoxedIo>, Message>;

/// What the pump writes next.
enum Outgoing {
    Chunk(Bytes),
    /// A ping carrying its send time: µs since the connection's `born`.
    Ping(u64),
}

/// One WebSocket connection, shared by its writers and whoever closes it. Once it and
/// every [`WsSender`] are dropped, the pump sends a normal close (unless a close was
/// sent already) and ends.
#[derive(Debug)]
pub struct WsConnection {
    remote: SocketAddr,
    sender: mpsc::Sender<Bytes>,
    datagrams: mpsc::Sender<Bytes>,
    state: Arc<WsState>,
}

/// What the connection's parts share, the pump and the reader included.
#[derive(Debug)]
struct WsState {
    /// The close frame to send, set once by [`WsConnection::close`].
    close: Mutex<Option<(CloseCode, String)>>,
    /// Cancelled when this side closes.
    closing: CancellationToken,
    /// Cancelled once the connection is over, with `end` set first.
    ended: CancellationToken,
    end: OnceLock<ConnectionEnd>,
    /// The base of ping stamps.
    born: Instant,
    /// Smoothed RTT, µs; 0 until the first pong. Written by the reader only.
    srtt_us: AtomicU64,
}

impl WsState {
    /// µs since `born`, a ping's stamp.
    fn stamp(&self) -> u64 {
        u64::try_from(self.born.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Takes a pong's payload as an RTT sample if it is one of our stamps: the first
    /// sample sets the estimate, later ones move it by an eighth (RFC 6298 section 2).
    /// Anything else (an unsolicited pong, a stamp from the future) is ignored.
    fn on_pong(&self, payload: &[u8]) {
        let Ok(stamp) = <[u8; 8]>::try_from(payload).map(u64::from_le_bytes) else {
            return;
        };
        let Some(sample) = self.stamp().checked_sub(stamp) else {
            return;
        };
        let sample = sample.max(1);
        let srtt = match self.srtt_us.load(Ordering::Relaxed) {
            0 => sample,
            srtt => srtt - srtt / 8 + sample / 8,
        };
        self.srtt_us.store(srtt.max(1), Ordering::Relaxed);
    }

    /// Records how the connection ended (the first account wins) and says it is over.
    fn finish(&self, end: ConnectionEnd) {
        let _ = self.end.set(end);
        self.ended.cancel();
    }

    async fn closed(&self) -> ConnectionEnd {
        self.ended.cancelled().await;
        self.end
            .get()
            .cloned()
            .unwrap_or(ConnectionEnd::LocallyClosed)
    }
}

impl WsConnection {
    /// The other side's address.
    pub fn remote_address(&self) -> SocketAddr {
        self.remote
    }

    /// Closes with `code` and `text` (cut by [`crate::close::close_text_ws`] to fit a
    /// close frame's 123 bytes of reason, RFC 6455 section 5.5). Batches already handed
    /// to the pump go first. The first close wins; a connection already over is left.
    pub fn close(&self, code: CloseCode, text: &str) {
        let state = &self.state;
        {
            let mut close = state.close.lock().unwrap_or_else(|p| p.into_inner());
            if close.is_some() || state.ended.is_cancelled() {
                return;
            }
            *close = Some((code, text.to_string()));
        }
        // The pump looks at `closing` before `ended`, so it sends the close frame.
        state.closing.cancel();
        state.finish(ConnectionEnd::LocallyClosed);
    }

    /// The smoothed RTT from pings and their pongs (RFC 6298's estimator); zero until
    /// the first pong, which the first ping (sent at once) usually brings within one RTT.
    /// A side that pauses reading (back-pressure) answers late, and its pause counts.
    pub fn rtt(&self) -> Duration {
        Duration::from_micros(self.state.srtt_us.load(Ordering::Relaxed))
    }

    /// Whether the connection is over.
    pub fn is_closed(&self) -> bool {
        self.state.ended.is_cancelled()
    }

    /// Resolves once the connection is over, with how it ended.
    pub async fn closed(&self) -> ConnectionEnd {
        self.state.closed().await
    }

    /// A writer's handle: it hands the pump whole batches of frames.
    pub fn sender(&self) -> WsSender {
        WsSender(self.sender.clone())
    }

    /// Queues `frame` (one whole datagram frame) for the pump if fewer than
    /// [`DATAGRAM_QUEUE`] wait: datagrams are dropped rather than queued behind a
    /// backlog. They go out between batches, never inside one, so they may overtake
    /// queued batches (as QUIC datagrams overtake stream data).
    ///
    /// # Errors
    /// [`WsClosed`] when it was not queued (the queue is full, or the connection is
    /// over).
    pub fn try_send_datagram(&self, frame: Bytes) -> Result<(), WsClosed> {
        self.datagrams.try_send(frame).map_err(|_| WsClosed)
    }
}

/// Hands batches of frames to a connection's pump, each as one binary message.
#[derive(Debug, Clone)]
pub struct WsSender(mpsc::Sender<Bytes>);

/// The WebSocket connection is gone: nothing more can be written to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WsClosed;

impl WsSender {
    /// Writes `chunk` (whole frames) as one binary message, waiting while the pump has
    /// [`PUMP_QUEUE`] batches queued.
    ///
    /// # Errors
    /// [`WsClosed`] once the connection is over; the chunk is lost with it.
    pub async fn write_chunk(&self, chunk: Bytes) -> Result<(), WsClosed> {
        self.0.send(chunk).await.map_err(|_| WsClosed)
    }
}

/// The read half of a WebSocket: its binary messages' bytes, in order.
pub struct WsReader {
    stream: SplitStream<WebSocketStream<BoxedIo>>,
    state: Arc<WsState>,
    idle: Duration,
}

impl std::fmt::Debug for WsReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsReader").finish_non_exhaustive()
    }
}

/// Starts a connection on a WebSocket whose handshake is done: spawns its pump (pings at
/// once and every `keepalive`) and returns the shared handle and the reader (which
/// ends the connection as timed out after `idle` without reading anything).
pub fn start(
    socket: WebSocketStream<BoxedIo>,
    remote: SocketAddr,
    keepalive: Duration,
    idle: Duration,
) -> (Arc<WsConnection>, WsReader) {
    let (sink, stream) = socket.split();
    let (sender, outgoing) = mpsc::channel(PUMP_QUEUE);
    let (datagrams, queued_datagrams) = mpsc::channel(DATAGRAM_QUEUE);
    let state = Arc::new(WsState {
        close: Mutex::new(None),
        closing: CancellationToken::new(),
        ended: CancellationToken::new(),
        end: OnceLock::new(),
        born: Instant::now(),
        srtt_us: AtomicU64::new(0),
    });
    tokio::spawn(pump(
        sink,
        outgoing,
        queued_datagrams,
        state.clone(),
        keepalive,
    ));
    let reader = WsReader {
        stream,
        state: state.clone(),
        idle,
    };
    let connection = Arc::new(WsConnection {
        remote,
        sender,
        datagrams,
        state,
    });
    (connection, reader)
}

/// Owns the write half: writes batches, datagrams, pings, and the close frame.
async fn pump(
    mut sink: WsSink,
    mut outgoing: mpsc::Receiver<Bytes>,
    mut datagrams: mpsc::Receiver<Bytes>,
    state: Arc<WsState>,
    keepalive: Duration,
) {
    // Pings go out on a fixed beat, busy or not: they keep an idle path alive and give
    // the RTT samples, which a busy connection needs as much as an idle one.
    let mut pings = tokio::time::interval(keepalive);
    pings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let message = tokio::select! {
            biased;
            () = state.closing.cancelled() => break,
            () = state.ended.cancelled() => return,
            chunk = outgoing.recv() => match chunk {
                Some(chunk) => Outgoing::Chunk(chunk),
                // Every handle is gone: close normally.
                None => break,
            },
            Some(datagram) = datagrams.recv() => Outgoing::Chunk(datagram),
            _ = pings.tick() => Outgoing::Ping(state.stamp()),
        };
        // A peer that stops reading must not hold the pump (and the socket) forever: a
        // close or the connection's end cuts the write short.
        let sent = tokio::select! {
            biased;
            () = state.closing.cancelled() => break,
            () = state.ended.cancelled() => return,
            sent = send_message(&mut sink, message, &mut datagrams) => sent,
        };
        if let Err(error) = sent {
            state.finish(ws_error_end(&error));
            return;
        }
    }
    let close = state
        .close
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .unwrap_or((CloseCode::Normal, String::new()));
    state.finish(ConnectionEnd::LocallyClosed);
    // Bounded: a peer that does not read must not hold the task.
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        // What writers handed over before the close goes first (at most `PUMP_QUEUE`
        // batches), so a graceful shutdown's last frames arrive.
        while let Ok(chunk) = outgoing.try_recv() {
            if feed_chunk(&mut sink, chunk).await.is_err() {
                return;
            }
        }
        let (code, text) = close;
        let reason = String::from_utf8_lossy(crate::close::close_text_ws(&text)).into_owned();
        let frame = CloseFrame {
            code: WsCode::from(to_ws_code(code)),
            reason: reason.into(),
        };
        let _ = sink.send(Message::Close(Some(frame))).await;
    })
    .await;
}

/// How a WebSocket error ends the connection.
fn ws_error_end(error: &WsError) -> ConnectionEnd {
    match error {
        WsError::ConnectionClosed | WsError::AlreadyClosed => ConnectionEnd::LocallyClosed,
        other => ConnectionEnd::Lost(other.to_string()),
    }
}

/// A close frame the other side sent, as a connection end.
fn peer_closed(frame: Option<CloseFrame>) -> ConnectionEnd {
    match frame {
        Some(frame) => {
            let raw = u16::from(frame.code);
            match from_ws_code(raw) {
                Some(code) => ConnectionEnd::PeerClosed {
                    code,
                    reason: frame.reason.as_str().to_string(),
                },
                None => ConnectionEnd::Lost(format!(
                    "closed with WebSocket code {raw}: {}",
                    frame.reason.as_str()
                )),
            }
        }
        None => ConnectionEnd::PeerClosed {
            code: CloseCode::Normal,
            reason: String::new(),
        },
    }
}

impl WsReader {
    async fn next_message(&mut self) -> Result<Option<Bytes>, ReadEnd> {
        loop {
            let next = tokio::select! {
                biased;
                end = self.state.closed() => return Err(ReadEnd::Ended(end)),
                next = tokio::time::timeout(self.idle, self.stream.next()) => next,
            };
            let message = match next {
                Err(_) => {
                    self.state.finish(ConnectionEnd::TimedOut);
                    return Err(ReadEnd::Ended(ConnectionEnd::TimedOut));
                }
                Ok(None) => {
                    let end = ConnectionEnd::Lost("the WebSocket ended without a close".into());
                    self.state.finish(end.clone());
                    return Err(ReadEnd::Ended(end));
                }
                Ok(Some(Err(error))) => return Err(self.read_error(error)),
                Ok(Some(Ok(message))) => message,
            };
            match message {
                Message::Binary(bytes) if bytes.is_empty() => continue,
                Message::Binary(bytes) => return Ok(Some(bytes)),
                // tungstenite answers pings itself; either shows the path is alive.
                Message::Pong(payload) => self.state.on_pong(&payload),
                Message::Ping(_) | Message::Frame(_) => continue,
                Message::Text(_) => {
                    return Err(ReadEnd::Violation(
                        CloseCode::ProtocolViolation,
                        "a text WebSocket message: peergroup frames travel as binary messages"
                            .into(),
                    ))
                }
                Message::Close(frame) => {
                    let end = peer_closed(frame);
                    self.state.finish(end.clone());
                    return Err(ReadEnd::Ended(end));
                }
            }
        }
    }

    /// A read error: a message over the size limit or a broken WebSocket is the other
    /// side's violation; the rest ends the connection.
    fn read_error(&self, error: WsError) -> ReadEnd {
        match error {
            WsError::Capacity(error) => ReadEnd::Violation(
                CloseCode::FrameTooLarge,
                format!("WebSocket message too large: {error}"),
            ),
            WsError::Protocol(error) => ReadEnd::Violation(
                CloseCode::ProtocolViolation,
                format!("WebSocket protocol error: {error}"),
            ),
            WsError::Utf8(text) => ReadEnd::Violation(
                CloseCode::ProtocolViolation,
                format!("WebSocket protocol error: {text}"),
            ),
            other => {
                let end = ws_error_end(&other);
                self.state.finish(end.clone());
                ReadEnd::Ended(end)
            }
        }
    }
}

impl ByteSource for WsReader {
    async fn read_chunk(&mut self, _max: usize) -> Result<Option<Bytes>, ReadEnd> {
        // A whole message at once: its size was bounded by the WebSocket config.
        self.next_message().await
    }
}

/// Where a server connection's frames come from: a QUIC stream or a WebSocket.
#[derive(Debug)]
pub enum CarrierSource {
    /// A QUIC receive stream.
    Quic(quinn::RecvStream),
    /// A WebSocket's read half.
    WebSocket(WsReader),
}

impl ByteSource for CarrierSource {
    async fn read_chunk(&mut self, max: usize) -> Result<Option<Bytes>, ReadEnd> {
        match self {
            CarrierSource::Quic(recv) => ByteSource::read_chunk(recv, max).await,
            CarrierSource::WebSocket(reader) => reader.read_chunk(max).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes_round_trip_in_the_application_range() {
        for code in [
            CloseCode::Normal,
            CloseCode::ProtocolViolation,
            CloseCode::FrameTooLarge,
            CloseCode::Replaced,
            CloseCode::Unknown(500),
        ] {
            let wire = to_ws_code(code);
            assert!((4000..=4999).contains(&wire));
            assert_eq!(from_ws_code(wire), Some(code));
        }
        assert_eq!(to_ws_code(CloseCode::Unknown(1 << 40)), 4999);
        assert_eq!(from_ws_code(4999), Some(CloseCode::Unknown(999)));
        assert_eq!(from_ws_code(1000), Some(CloseCode::Normal));
        assert_eq!(from_ws_code(1006), None);
    }
}

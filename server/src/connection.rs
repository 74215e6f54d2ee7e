//! One task per client connection: handshake, hello, auth, then the read loops.
//!
//! Errors end only this connection: they are logged and reported as
//! [`ServerEvent::ClientDisconnected`], never propagated (the mini-redis pattern).

use crate::admission::{lock as lock_admission, Admission, ClientSlot, HandshakeSlot, Refusal};
use crate::auth::{AuthDecision, AuthHook, LoginRequest};
use crate::events::{DisconnectReason, ServerEvent};
use crate::outbound::{OutboundQueue, OutboundReceiver, Outgoing};
use crate::registry::ProtocolViolation;
use crate::shared::{close_with, Core, Link, Shared};
use bytes::{Bytes, BytesMut};
use peergroup_protocol::{
    decode_body, decode_client_datagram, decode_client_frame, frame_to_bytes, peek_hello_version,
    ClientStream, ClientToServer, CloseCode, Hello, HostId, ServerToClient, LENGTH_PREFIX_LEN,
    PROTOCOL_VERSION,
};
use peergroup_transport::{
    close, finish_stream, peer_fingerprint, read_datagram_batch, write_batch, ConnectionEnd,
    FrameReader, ReadEnd, DATAGRAM_BATCH, WRITE_BATCH_BYTES,
};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// Serves one incoming connection until it ends. `slot` is its place among the
/// connections still logging in (`admission.rs`), given back once it has logged in or
/// failed to.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    (incoming, slot): (quinn::Incoming, HandshakeSlot),
    auth: AuthHook,
) {
    let remote = incoming.remote_address();
    let handshake = shared.handshake;
    let close_reason = Arc::new(OnceLock::new());
    let accepted = tokio::time::timeout(
        handshake,
        accept(&shared, incoming, &auth, close_reason.clone(), slot),
    )
    .await;
    let (host, connection, recv, _client_slot) = match accepted {
        Ok(Ok(accepted)) => accepted,
        Ok(Err(error)) => {
            // quinn's texts quote the client's close reason.
            let error = peergroup_protocol::Escaped(&error);
            tracing::debug!(%remote, %error, "connection not admitted");
            shared.counters.not_admitted();
            return;
        }
        Err(_) => {
            tracing::debug!(%remote, "handshake timed out");
            shared.counters.not_admitted();
            return;
        }
    };
    tracing::info!(%host, %remote, "client connected");

    let end = tokio::select! {
        end = read_stream(&shared, host, recv, &connection, ClientStream::Main) => end,
        end = read_control(&shared, host, &connection) => end,
        end = read_datagrams(&shared, host, &connection) => end,
        _ = shared.shutdown.cancelled() => ReadEnd::Connection(quinn::ConnectionError::LocallyClosed),
    };
    let reason = match end {
        ReadEnd::Violation(code, text) => {
            let shown = peergroup_protocol::Escaped(&text);
            tracing::warn!(%host, %code, text = %shown, "closing client for a protocol error");
            let reason = DisconnectReason::ProtocolError {
                detail: text.clone(),
            };
            close_with(&connection, &close_reason, code, reason, &text);
            close_reason
                .get()
                .cloned()
                .unwrap_or(DisconnectReason::TimedOut)
        }
        ReadEnd::Connection(error) => close_reason
            .get()
            .cloned()
            .unwrap_or_else(|| disconnect_reason(&shared, error)),
    };
    if shared.shutdown.is_cancelled() {
        close(
            &connection,
            CloseCode::ServerShutdown,
            "server shutting down",
        );
    }
    shared.counters.disconnected(&reason);
    let (_, deferred) = shared.with_core(|core| {
        core.links.remove(&host);
        core.registry.handle_disconnect(host, Instant::now());
    });
    shared.link_removed.notify_waiters();
    // Only notices to the others are left: never wait on their queues from here.
    drop(deferred);
    tracing::info!(%host, %reason, "client disconnected");
    // Behind the client's own messages, which lifecycle events would otherwise overtake:
    // the application reads everything a client sent before it hears the client went.
    shared
        .events
        .push_message(ServerEvent::ClientDisconnected { host, reason })
        .await;
}

fn disconnect_reason(shared: &Shared, error: quinn::ConnectionError) -> DisconnectReason {
    match ConnectionEnd::from(&error) {
        _ if shared.shutdown.is_cancelled() => DisconnectReason::ServerShutdown,
        ConnectionEnd::PeerClosed { reason, .. } => DisconnectReason::ClientClosed { reason },
        ConnectionEnd::TimedOut => DisconnectReason::TimedOut,
        ConnectionEnd::LocallyClosed => DisconnectReason::Kicked,
        ConnectionEnd::Lost(detail) => DisconnectReason::ConnectionLost { detail },
    }
}

/// Handshake, hello and auth; registers the client and starts its writer.
async fn accept(
    shared: &Arc<Shared>,
    incoming: quinn::Incoming,
    auth: &AuthHook,
    close_reason: Arc<OnceLock<DisconnectReason>>,
    // Held to the end: the connection counts as logging in until it is in or out.
    _slot: HandshakeSlot,
) -> Result<(HostId, quinn::Connection, FrameReader, ClientSlot), String> {
    let admission = shared.admission_config;
    let hello_deadline = tokio::time::Instant::now() + admission.hello_timeout;
    let connection = match tokio::time::timeout_at(hello_deadline, incoming).await {
        Ok(connected) => connected.map_err(|e| e.to_string())?,
        Err(_) => return Err("TLS handshake timed out".into()),
    };
    let identity = peer_fingerprint(&connection).ok_or("no client certificate")?;
    let source = connection.remote_address().ip();
    let refuse = |code: CloseCode, text: String| {
        let reason = DisconnectReason::ProtocolError {
            detail: text.clone(),
        };
        close_with(&connection, &close_reason, code, reason, &text);
        text
    };
    // A full server spends nothing more on the connection: no hello, no auth hook.
    if let Err(refusal) = lock_admission(&shared.admission).check_login(source) {
        shared.counters.refused_full();
        let text = refusal.to_string();
        close_with(
            &connection,
            &close_reason,
            CloseCode::ServerFull,
            DisconnectReason::Kicked,
            &text,
        );
        return Err(text);
    }
    // Until the client is logged in its datagrams are read and dropped, so quinn holds
    // none of them for it.
    let login = async {
        let hello = tokio::time::timeout_at(hello_deadline, read_hello(&connection, admission));
        let (send, recv, body) = match hello.await {
            Ok(Ok(hello)) => hello,
            Ok(Err(ReadEnd::Violation(code, text))) => return Err(refuse(code, text)),
            Ok(Err(ReadEnd::Connection(error))) => return Err(error.to_string()),
            Err(_) => {
                let text = format!(
                    "no hello within {:?} of connecting",
                    admission.hello_timeout
                );
                return Err(refuse(CloseCode::HandshakeTimeout, text));
            }
        };
        let login = check_hello(&body).map_err(|(code, text)| refuse(code, text))?;
        let request = LoginRequest {
            remote_addr: connection.remote_address(),
            identity,
            login: login.clone(),
        };
        Ok((send, recv, login, auth.decide(request).await))
    };
    let (send, mut recv, login, decision) = tokio::select! {
        login = login => login?,
        never = drop_datagrams(&connection) => match never {},
    };
    // From here on the client's frames may be as long as any.
    recv.set_max(shared.limits.max_frame_len());
    let app_data = match decision {
        AuthDecision::Accept { app_data } => app_data,
        AuthDecision::Reject { reason } => {
            shared.counters.auth_rejected();
            let code = CloseCode::AuthRejected;
            close_with(
                &connection,
                &close_reason,
                code,
                DisconnectReason::Kicked,
                &reason,
            );
            return Err(format!("login rejected: {reason}"));
        }
    };

    if app_data.len() > shared.limits.max_host_data_len {
        // The application's mistake, not the client's: say so on both sides.
        let text = format!(
            "the auth hook attached {} bytes of host data; the limit is {}",
            app_data.len(),
            shared.limits.max_host_data_len
        );
        tracing::error!(%text, "login refused");
        close_with(
            &connection,
            &close_reason,
            CloseCode::AuthRejected,
            DisconnectReason::Kicked,
            "server error: host data too large",
        );
        return Err(text);
    }

    let soft_limit = shared
        .limits
        .client_queue_bytes
        .max(shared.limits.max_frame_len() as usize + LENGTH_PREFIX_LEN);
    let (outbound, queued) = OutboundQueue::new(
        soft_limit,
        shared.limits.max_frame_len() as usize + LENGTH_PREFIX_LEN,
        shared.slow_consumer,
    );
    let registered_close_reason = close_reason.clone();
    let link = Link {
        connection: connection.clone(),
        outbound,
        remote_addr: connection.remote_address(),
        identity,
        login,
        connected_at: std::time::SystemTime::now(),
        close_reason,
    };
    let registered = shared.with_core(|core| {
        if core.links.len() >= shared.limits.max_clients {
            return Err((Box::new(link), Refusal::ServerFull.text()));
        }
        if !shared.events.has_room() {
            // Its ClientConnected could not be read any time soon; admitting more
            // clients would only grow the backlog.
            return Err((Box::new(link), "the server is busy; try again later"));
        }
        // Checked again: others may have logged in while this hello and auth hook ran.
        let slot = match ClientSlot::login(&shared.admission, source) {
            Ok(slot) => slot,
            Err(refusal) => return Err((Box::new(link), refusal.text())),
        };
        let host =
            core.registry
                .handle_connect(identity, connection.remote_address(), app_data.clone());
        let welcome = ServerToClient::Welcome {
            version: PROTOCOL_VERSION,
            host_id: host,
            app_data: app_data.clone(),
            max_frame_len: shared.limits.max_frame_len(),
        };
        // The welcome is queued before the link is visible, so it is the first frame.
        if let Ok(frame) = frame_to_bytes(&welcome, shared.limits.max_frame_len()) {
            link.outbound.push_control(frame);
        }
        core.links.insert(host, link);
        Ok((host, slot))
    });
    let (host, client_slot) = match registered.0 {
        Ok(registered) => registered,
        Err((link, text)) => {
            shared.counters.refused_full();
            link.close(CloseCode::ServerFull, DisconnectReason::Kicked, text);
            return Err(text.into());
        }
    };
    shared.events.push_lifecycle(ServerEvent::ClientConnected {
        host,
        remote_addr: connection.remote_address(),
        app_data,
    });
    let end = WriterEnd {
        shared: shared.clone(),
        connection: connection.clone(),
        close_reason: registered_close_reason,
    };
    tokio::spawn(write_frames(
        send,
        queued,
        end,
        shared.limits.max_frame_len(),
    ));
    // Logged in: the connection may now have a whole stream window in flight, and open
    // its control stream. The connection's window is the main stream's plus room for the
    // control stream: a main stream the server has stopped reading must not use up the
    // connection's flow-control credit, or the acks behind it could not be sent at all.
    let window = shared
        .limits
        .client_receive_window
        .saturating_add(CONTROL_WINDOW);
    connection.set_receive_window(window.into());
    connection.set_max_concurrent_uni_streams(1u8.into());
    Ok((host, connection, recv, client_slot))
}

/// Connection flow-control credit kept for a client's control stream beyond its main
/// stream's window, bytes. The server reads the control stream as it comes, so a few
/// frames' worth is plenty; a larger control frame still passes, in steps.
const CONTROL_WINDOW: u32 = 64 << 10;

/// The client's stream and its first frame, read with the hello's size limit.
async fn read_hello(
    connection: &quinn::Connection,
    admission: Admission,
) -> Result<(quinn::SendStream, FrameReader, Bytes), ReadEnd> {
    let (send, recv) = connection.accept_bi().await?;
    let mut recv = FrameReader::new(recv, admission.max_hello_len);
    match recv.next().await? {
        Some(body) => Ok((send, recv, body)),
        None => Err(ReadEnd::Violation(
            CloseCode::ProtocolViolation,
            "stream closed before hello".into(),
        )),
    }
}

/// The login of a hello in the protocol version this server speaks, or the close code and
/// text for anything else.
fn check_hello(body: &Bytes) -> Result<Bytes, (CloseCode, String)> {
    match peek_hello_version(body) {
        Some(PROTOCOL_VERSION) => {}
        Some(theirs) => {
            let text = format!(
                "protocol version mismatch: server speaks {PROTOCOL_VERSION}, client sent {theirs}"
            );
            return Err((CloseCode::VersionMismatch, text));
        }
        None => {
            let text = "the first frame must be a hello".to_string();
            return Err((CloseCode::ProtocolViolation, text));
        }
    }
    match decode_body::<ClientToServer>(body) {
        Ok(ClientToServer::Hello(Hello { login, .. })) => Ok(login),
        Ok(_) => Err((
            CloseCode::ProtocolViolation,
            "the first frame must be a hello".to_string(),
        )),
        Err(error) => Err((error.close_code(), error.to_string())),
    }
}

/// Reads and drops datagrams until the connection ends, then waits forever.
async fn drop_datagrams(connection: &quinn::Connection) -> std::convert::Infallible {
    while connection.read_datagram().await.is_ok() {}
    std::future::pending().await
}

/// What the writer needs to end a connection itself when the server drains.
struct WriterEnd {
    shared: Arc<Shared>,
    connection: quinn::Connection,
    close_reason: Arc<OnceLock<DisconnectReason>>,
}

impl WriterEnd {
    /// Graceful shutdown (`drain.rs`): the queue is empty, so finish the stream and close
    /// the connection with `ServerShutdown` once the client has acknowledged all of it (or
    /// at the drain deadline).
    async fn finish(self, mut send: quinn::SendStream) {
        let deadline = self.shared.drain.deadline();
        let _ = tokio::time::timeout_at(deadline, finish_stream(&mut send)).await;
        close_with(
            &self.connection,
            &self.close_reason,
            CloseCode::ServerShutdown,
            DisconnectReason::ServerShutdown,
            "server shutting down",
        );
    }
}

/// Writes queued frames in order, several at a time. Once the server drains, it finishes
/// the stream after the last queued frame (see [`WriterEnd::finish`]).
async fn write_frames(
    mut send: quinn::SendStream,
    mut queued: OutboundReceiver,
    end: WriterEnd,
    max_frame: u32,
) {
    let mut batch = Vec::with_capacity(64);
    let mut merged = BytesMut::new();
    loop {
        if end.shared.drain.is_started() && queued.is_empty() {
            end.finish(send).await;
            return;
        }
        // A few tens of KiB at a time (see `WRITE_BATCH_BYTES`).
        tokio::select! {
            biased;
            () = queued.recv_many(&mut batch, 64, WRITE_BATCH_BYTES) => {}
            // Nothing is taken from the queue until recv_many returns, so dropping it here
            // loses nothing.
            () = end.shared.drain.started.cancelled() => continue,
        }
        let bytes = batch.iter().map(Outgoing::len).sum();
        // Relayed messages are encoded only now, outside the lock, into the batch's one
        // buffer (see `write_batch`).
        for frame in batch.drain(..) {
            if let Err(error) = frame.write_to(&mut merged, max_frame) {
                tracing::error!(%error, "frame not sent");
            }
        }
        if write_batch(&mut send, &mut merged).await.is_err() {
            return;
        }
        queued.written(bytes);
    }
}

/// Frames taken from one read at most, handled under one lock: enough to share the
/// lock's cost across a burst, few enough to keep other clients' waits short.
const FRAMES_PER_TURN: usize = 64;

/// The control stream: acks, reports and requests, read all the while the main stream
/// is paused (ARCHITECTURE.md, "Streams"), so a client's acks never wait behind its
/// messages. Nothing here waits on a receiver: notices never do.
async fn read_control(shared: &Shared, host: HostId, connection: &quinn::Connection) -> ReadEnd {
    let recv = match connection.accept_uni().await {
        Ok(recv) => recv,
        Err(error) => return error.into(),
    };
    let recv = FrameReader::new(recv, shared.limits.max_frame_len());
    read_stream(shared, host, recv, connection, ClientStream::Control).await
}

/// Reads one of a client's streams until it ends; `stream` says which frames belong on it.
/// Every frame one read brought is handled under one lock and with one clock reading, and
/// what they caused is sent (and, on the main stream, waited on) once: that wait is where
/// a sender is paused while the receivers of its messages drain.
async fn read_stream(
    shared: &Shared,
    host: HostId,
    mut recv: FrameReader,
    connection: &quinn::Connection,
    stream: ClientStream,
) -> ReadEnd {
    let mut bodies = Vec::with_capacity(FRAMES_PER_TURN);
    loop {
        let body = match recv.next().await {
            Ok(Some(body)) => body,
            Ok(None) => {
                // A client that is leaving finishes its streams after its last frames,
                // so all of them have been read; its close follows.
                return match tokio::time::timeout(shared.handshake, connection.closed()).await {
                    Ok(error) => ReadEnd::Connection(error),
                    Err(_) => ReadEnd::Violation(
                        CloseCode::ProtocolViolation,
                        "stream finished without a close".into(),
                    ),
                };
            }
            Err(end) => return end,
        };
        bodies.push(body);
        let mut ended = None;
        while bodies.len() < FRAMES_PER_TURN {
            match recv.buffered() {
                Ok(Some(body)) => bodies.push(body),
                Ok(None) => break,
                Err(end) => {
                    ended = Some(end);
                    break;
                }
            }
        }
        let (handled, deferred) = shared.with_core(|core| {
            let now = Instant::now();
            bodies
                .drain(..)
                .try_for_each(|body| handle_frame(core, host, &body, stream, now))
        });
        match stream {
            ClientStream::Main => shared.settle(deferred).await,
            // Control frames cause notices only, which never wait: pausing this stream
            // on a backlogged receiver would hold the acks back again.
            ClientStream::Control => drop(deferred),
        }
        if let Some(end) = handled.err().or(ended) {
            return end;
        }
    }
}

/// One frame of a client's stream `stream`, under the lock: decoded, checked against the
/// stream it came on (which the registry does not know), and handed to the registry.
fn handle_frame(
    core: &mut Core,
    host: HostId,
    body: &Bytes,
    stream: ClientStream,
    now: Instant,
) -> Result<(), ReadEnd> {
    let frame = decode_client_frame(body)?;
    if frame.stream() != stream {
        return Err(ReadEnd::Violation(
            CloseCode::ProtocolViolation,
            format!("{} on the {}", frame.name(), stream.name()),
        ));
    }
    core.registry
        .handle_frame(host, frame, now)
        .map_err(|violation: ProtocolViolation| {
            ReadEnd::Violation(violation.close_code(), violation.to_string())
        })
}

/// Unreliable relay uploads, in batches: what already arrived is handled under one lock
/// (see `read_datagram_batch`).
async fn read_datagrams(shared: &Shared, host: HostId, connection: &quinn::Connection) -> ReadEnd {
    let mut batch = Vec::with_capacity(DATAGRAM_BATCH);
    loop {
        if let Err(error) = read_datagram_batch(connection, &mut batch).await {
            return error.into();
        }
        let (bad, deferred) = shared.with_core(|core| {
            let now = Instant::now();
            for datagram in &batch {
                match decode_client_datagram(datagram) {
                    Ok(datagram) => core.registry.handle_datagram(host, datagram, now),
                    Err(error) => return Some(error),
                }
            }
            None
        });
        shared.settle(deferred).await;
        if let Some(error) = bad {
            return error.into();
        }
    }
}

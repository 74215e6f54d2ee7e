//! One task per client connection: handshake, hello, auth, then the read loops.
//!
//! Errors end only this connection: they are logged and reported as
//! [`ServerEvent::ClientDisconnected`], never propagated (the mini-redis pattern).

use crate::admission::{lock as lock_admission, Admission, ClientSlot, HandshakeSlot, Refusal};
use crate::auth::{AuthDecision, AuthHook, LoginRequest};
use crate::events::{DisconnectReason, ServerEvent};
use crate::outbound::OutboundQueue;
use crate::registry::ProtocolViolation;
use crate::shared::{close_with, Core, Handoff, Link, Offline, Shared};
use crate::wire::{Wire, WireSend};
use crate::writer::{lock_unconfirmed, write_frames, WriterEnd};
use bytes::Bytes;
use peergroup_protocol::{
    decode_body, decode_client_datagram, decode_client_frame, frame_to_bytes, peek_hello_version,
    ClientStream, ClientToServer, CloseCode, Fingerprint, Hello, HostId, Resume, ServerToClient,
    Unconfirmed, LENGTH_PREFIX_LEN, PROTOCOL_VERSION,
};
use peergroup_transport::{
    peer_fingerprint, read_datagram_batch, CarrierSource, ConnectionEnd, FrameReader, ReadEnd,
    Transport,
};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
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
    let close_reason = Arc::new(OnceLock::new());
    let accepted = tokio::time::timeout(
        shared.handshake,
        accept(&shared, incoming, &auth, close_reason.clone(), slot),
    )
    .await;
    run(shared, remote, accepted, close_reason).await;
}

/// A connection's life after its handshake, on either carrier (`accepted` is the
/// handshake, hello and auth's outcome): its reading until it ends, then what becomes of
/// its host.
pub(crate) async fn run(
    shared: Arc<Shared>,
    remote: SocketAddr,
    accepted: Result<Result<Accepted, String>, tokio::time::error::Elapsed>,
    close_reason: Arc<OnceLock<DisconnectReason>>,
) {
    let (host, connection, recv, _client_slot, generation) = match accepted {
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
    let transport = connection.transport();
    tracing::info!(%host, %remote, generation, %transport, "client connected");

    let id = (host, generation);
    let shutdown = ReadEnd::Ended(ConnectionEnd::LocallyClosed);
    let end = match &connection {
        Wire::Quic(quic) => tokio::select! {
            end = read_stream(&shared, id, recv, &connection, Some(ClientStream::Main)) => end,
            end = read_control(&shared, id, quic, &connection) => end,
            end = read_datagrams(&shared, id, quic) => end,
            _ = shared.shutdown.cancelled() => shutdown,
        },
        // One stream carries everything (ARCHITECTURE.md, "Fallback over WebSocket").
        Wire::WebSocket(_) => tokio::select! {
            end = read_stream(&shared, id, recv, &connection, None) => end,
            _ = shared.shutdown.cancelled() => shutdown,
        },
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
            .unwrap_or_else(|| disconnect_reason(&shared, (&error).into())),
        ReadEnd::Ended(end) => close_reason
            .get()
            .cloned()
            .unwrap_or_else(|| disconnect_reason(&shared, end)),
    };
    if shared.shutdown.is_cancelled() {
        connection.close(CloseCode::ServerShutdown, "server shutting down");
    }
    // What becomes of the host: kept offline for a resume, removed, or left to the
    // connection that replaced this one.
    let now = Instant::now();
    let stopping = shared.shutdown.is_cancelled() || shared.drain.is_started();
    let resumable = !stopping
        && matches!(
            reason,
            DisconnectReason::TimedOut | DisconnectReason::ConnectionLost { .. }
        );
    let (fate, deferred) = shared.with_core(|core| {
        let Some(link) = core.links.get_mut(&host) else {
            return Fate::Replaced;
        };
        if link.generation != generation {
            return Fate::Replaced;
        }
        if resumable && core.registry.handle_offline(host, now) {
            let (offline, ended) = Offline::new(now);
            link.offline = Some(offline);
            return Fate::Offline(ended);
        }
        Fate::Remove
    });
    drop(deferred);
    match fate {
        Fate::Replaced => {
            tracing::info!(%host, generation, "connection replaced by a resumed one");
        }
        Fate::Remove => remove(&shared, host, generation, reason).await,
        Fate::Offline(ended) => {
            tracing::info!(%host, %reason, "client offline; kept for a resume");
            shared.events.push_lifecycle(ServerEvent::ClientOffline {
                host,
                reason: reason.clone(),
            });
            // The slot this task holds (`_client_slot`) stays taken while the host is
            // kept: an offline host still counts as a client.
            let removed = tokio::select! {
                ended = ended => ended.is_ok(),
                _ = shared.shutdown.cancelled() => true,
                _ = shared.drain.started.cancelled() => true,
            };
            if !removed {
                // Resumed: the new connection's task has the host now.
                return;
            }
            // Whoever ended it (a kick, an overflowing queue) said why; else the window
            // ran out on the lost connection.
            let reason = close_reason.get().cloned().unwrap_or(reason);
            remove(&shared, host, generation, reason).await;
        }
    }
}

/// What becomes of a host when its connection ends.
enum Fate {
    /// Another connection of the host took over: nothing to do.
    Replaced,
    /// Removed now.
    Remove,
    /// Kept offline until this fires (dropped when it resumes).
    Offline(tokio::sync::oneshot::Receiver<()>),
}

/// Removes `host` as a disconnect does, unless a connection newer than `generation` has
/// it: it leaves its groups, its pairs end, and the application hears it went.
async fn remove(shared: &Shared, host: HostId, generation: u64, reason: DisconnectReason) {
    let (removed, deferred) = shared.with_core(|core| {
        if core.links.get(&host).map(|link| link.generation) != Some(generation) {
            return false;
        }
        core.links.remove(&host);
        core.registry.handle_disconnect(host, Instant::now());
        true
    });
    // Only notices to the others are left: never wait on their queues from here.
    drop(deferred);
    if !removed {
        return;
    }
    shared.counters.disconnected(&reason);
    shared.link_removed.notify_waiters();
    tracing::info!(%host, %reason, "client disconnected");
    // Behind the client's own messages, which lifecycle events would otherwise overtake:
    // the application reads everything a client sent before it hears the client went.
    shared
        .events
        .push_message(ServerEvent::ClientDisconnected { host, reason })
        .await;
}

fn disconnect_reason(shared: &Shared, end: ConnectionEnd) -> DisconnectReason {
    match end {
        _ if shared.shutdown.is_cancelled() => DisconnectReason::ServerShutdown,
        ConnectionEnd::PeerClosed { reason, .. } => DisconnectReason::ClientClosed { reason },
        ConnectionEnd::TimedOut => DisconnectReason::TimedOut,
        ConnectionEnd::LocallyClosed => DisconnectReason::Kicked,
        ConnectionEnd::Lost(detail) => DisconnectReason::ConnectionLost { detail },
    }
}

/// The QUIC handshake, then the hello (`admit` does the rest).
async fn accept(
    shared: &Arc<Shared>,
    incoming: quinn::Incoming,
    auth: &AuthHook,
    close_reason: Arc<OnceLock<DisconnectReason>>,
    // Held to the end: the connection counts as logging in until it is in or out.
    _slot: HandshakeSlot,
) -> Result<Accepted, String> {
    let admission = shared.admission_config;
    let hello_deadline = tokio::time::Instant::now() + admission.hello_timeout;
    let connection = match tokio::time::timeout_at(hello_deadline, incoming).await {
        Ok(connected) => connected.map_err(|e| e.to_string())?,
        Err(_) => return Err("TLS handshake timed out".into()),
    };
    let identity = peer_fingerprint(&connection).ok_or("no client certificate")?;
    let wire = Wire::Quic(connection.clone());
    check_full(shared, &wire, &close_reason)?;
    // Until the client is logged in its datagrams are read and dropped, so quinn holds
    // none of them for it.
    let login = async {
        let hello = tokio::time::timeout_at(hello_deadline, read_hello(&connection, admission));
        let (send, recv, body) = hello_or_refusal(shared, &wire, &close_reason, hello.await)?;
        let opened = Opened {
            wire: wire.clone(),
            send: WireSend::Quic(send),
            recv,
            body,
            identity,
        };
        admit(shared, opened, auth, close_reason.clone()).await
    };
    tokio::select! {
        login = login => login,
        never = drop_datagrams(&connection) => match never {},
    }
}

/// A full server spends nothing more on a connection: no hello, no auth hook.
///
/// # Errors
/// The refusal's text, once the connection is closed with `ServerFull`.
pub(crate) fn check_full(
    shared: &Shared,
    wire: &Wire,
    close_reason: &OnceLock<DisconnectReason>,
) -> Result<(), String> {
    let source = wire.remote_address().ip();
    if let Err(refusal) = lock_admission(&shared.admission).check_login(source) {
        shared.counters.refused_full();
        let text = refusal.to_string();
        close_with(
            wire,
            close_reason,
            CloseCode::ServerFull,
            DisconnectReason::Kicked,
            &text,
        );
        return Err(text);
    }
    Ok(())
}

/// The outcome of reading a hello within its deadline; a violation or a timeout closes
/// the connection with its code.
///
/// # Errors
/// What went wrong, as text.
pub(crate) fn hello_or_refusal<T>(
    shared: &Shared,
    wire: &Wire,
    close_reason: &OnceLock<DisconnectReason>,
    hello: Result<Result<T, ReadEnd>, tokio::time::error::Elapsed>,
) -> Result<T, String> {
    match hello {
        Ok(Ok(hello)) => Ok(hello),
        Ok(Err(ReadEnd::Violation(code, text))) => Err(refuse(wire, close_reason, code, text)),
        Ok(Err(ReadEnd::Connection(error))) => Err(error.to_string()),
        Ok(Err(ReadEnd::Ended(end))) => Err(format!("{end:?}")),
        Err(_) => {
            let text = format!(
                "no hello within {:?} of connecting",
                shared.admission_config.hello_timeout
            );
            Err(refuse(
                wire,
                close_reason,
                CloseCode::HandshakeTimeout,
                text,
            ))
        }
    }
}

/// Closes `wire` with `code` and `text` as a protocol error, and returns the text.
fn refuse(
    wire: &Wire,
    close_reason: &OnceLock<DisconnectReason>,
    code: CloseCode,
    text: String,
) -> String {
    let reason = DisconnectReason::ProtocolError {
        detail: text.clone(),
    };
    close_with(wire, close_reason, code, reason, &text);
    text
}

/// A connection whose first frame has been read, on either carrier.
pub(crate) struct Opened {
    pub wire: Wire,
    pub send: WireSend,
    pub recv: FrameReader<CarrierSource>,
    /// The first frame: a hello or a resume.
    pub body: Bytes,
    /// The client certificate's SHA-256.
    pub identity: Fingerprint,
}

/// The hello (or resume) and auth hook; registers the client and starts its writer.
pub(crate) async fn admit(
    shared: &Arc<Shared>,
    opened: Opened,
    auth: &AuthHook,
    close_reason: Arc<OnceLock<DisconnectReason>>,
) -> Result<Accepted, String> {
    let Opened {
        wire,
        send,
        mut recv,
        body,
        identity,
    } = opened;
    let source = wire.remote_address().ip();
    let login = match check_hello(&body) {
        Ok(Opening::Hello(login)) => login,
        // A resume is proven by its token and identity: no auth hook.
        Ok(Opening::Resume(resume)) => {
            let opened = Opened {
                wire,
                send,
                recv,
                body,
                identity,
            };
            return resume_session(shared, opened, resume, close_reason).await;
        }
        Err((code, text)) => return Err(refuse(&wire, &close_reason, code, text)),
    };
    let request = LoginRequest {
        remote_addr: wire.remote_address(),
        identity,
        login: login.clone(),
    };
    let decision = auth.decide(request).await;
    // From here on the client's frames may be as long as any.
    recv.set_max(shared.limits.max_frame_len());
    let app_data = match decision {
        AuthDecision::Accept { app_data } => app_data,
        AuthDecision::Reject { reason } => {
            shared.counters.auth_rejected();
            let code = CloseCode::AuthRejected;
            close_with(
                &wire,
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
            &wire,
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
    let resume_on = !shared.resume.window.is_zero();
    let unconfirmed = Arc::new(Mutex::new(Unconfirmed::new(
        shared.resume.max_unconfirmed_frames,
        shared.resume.max_unconfirmed_bytes,
        resume_on,
    )));
    let (handoff, handoffs) = tokio::sync::mpsc::channel(1);
    let link = Link {
        wire: wire.clone(),
        outbound,
        remote_addr: wire.remote_address(),
        identity,
        login,
        connected_at: std::time::SystemTime::now(),
        close_reason,
        generation: 1,
        unconfirmed: unconfirmed.clone(),
        handoff,
        offline: None,
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
        let host = core
            .registry
            .handle_connect(identity, wire.remote_address(), app_data.clone());
        core.registry
            .set_relay_only(host, wire.transport() == Transport::WebSocket);
        let welcome = ServerToClient::Welcome {
            version: PROTOCOL_VERSION,
            host_id: host,
            app_data: app_data.clone(),
            max_frame_len: shared.limits.max_frame_len(),
        };
        // The welcome is queued before the link is visible, so it is the first frame
        // (frame 0 of the count a resume continues), and the resume token the second.
        if let Ok(frame) = frame_to_bytes(&welcome, shared.limits.max_frame_len()) {
            link.outbound.push_control(frame);
        }
        if resume_on {
            issue_token(shared, core, host, &link);
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
        remote_addr: wire.remote_address(),
        app_data,
    });
    let end = WriterEnd {
        shared: shared.clone(),
        wire: wire.clone(),
        close_reason: registered_close_reason,
    };
    tokio::spawn(write_frames(
        send,
        queued,
        end,
        shared.limits.max_frame_len(),
        unconfirmed,
        handoffs,
    ));
    open_logged_in(shared, &wire);
    Ok((host, wire, recv, client_slot, 1))
}

/// A connection that logged in or resumed: its host, its main stream's reader, its
/// place among the logged-in clients and which of the host's connections it is.
pub(crate) type Accepted = (HostId, Wire, FrameReader<CarrierSource>, ClientSlot, u64);

/// Gives `host` a resume token and queues it for the client (`link` is not registered
/// yet, or is the host's), unless the system has no randomness: then the host cannot
/// resume.
fn issue_token(shared: &Shared, core: &mut Core, host: HostId, link: &Link) {
    let Ok(token) = shared.fresh_token() else {
        tracing::error!(%host, "no randomness for a resume token; the client cannot resume");
        return;
    };
    core.registry.set_resume_token(host, token);
    let frame = ServerToClient::ResumeToken {
        token,
        window_ms: window_ms(shared),
    };
    if let Ok(frame) = frame_to_bytes(&frame, shared.limits.max_frame_len()) {
        link.outbound.push_control(frame);
    }
}

fn window_ms(shared: &Shared) -> u32 {
    shared.resume.window.as_millis().min(u128::from(u32::MAX)) as u32
}

/// Logged in (or resumed): the connection may now have a whole stream window in flight,
/// and open its control stream. The connection's window is the main stream's plus room
/// for the control stream: a main stream the server has stopped reading must not use up
/// the connection's flow-control credit, or the acks behind it could not be sent at all.
/// A WebSocket has no such windows: TCP's own flow control and the reader's pauses
/// stand in for them.
fn open_logged_in(shared: &Shared, wire: &Wire) {
    let Wire::Quic(connection) = wire else {
        return;
    };
    let window = logged_in_receive_window(shared.limits.client_receive_window);
    connection.set_receive_window(quinn::VarInt::from_u64(window).unwrap_or(quinn::VarInt::MAX));
    connection.set_max_concurrent_uni_streams(1u8.into());
}

/// A new connection resumes `resume.host` (ARCHITECTURE.md, "Resume"): the registry
/// checks the token and identity and rotates the token; the host's link takes the new
/// connection (closing a half-open old one with `Replaced`); the host's writer writes
/// the `Resumed` answer and every frame the client did not read, then goes on with its
/// queue. A refusal closes the new connection with `ResumeRefused` and changes nothing;
/// a host whose frames were no longer held is removed.
///
/// The new connection may use the other carrier than the lost one (QUIC after WebSocket or
/// the reverse): the writer, the replay and the registry do not depend on it.
async fn resume_session(
    shared: &Arc<Shared>,
    opened: Opened,
    resume: Resume,
    close_reason: Arc<OnceLock<DisconnectReason>>,
) -> Result<Accepted, String> {
    let Opened {
        wire: connection,
        send,
        mut recv,
        identity,
        ..
    } = opened;
    let refuse = |code: CloseCode, text: String| refuse(&connection, &close_reason, code, text);
    let source = connection.remote_address().ip();
    let slot = ClientSlot::login(&shared.admission, source)
        .map_err(|refusal| refuse(CloseCode::ServerFull, refusal.text().to_string()))?;
    let next_token = shared
        .fresh_token()
        .map_err(|_| refuse(CloseCode::ResumeRefused, "no randomness for a token".into()))?;
    let host = resume.host;
    let remote = connection.remote_address();
    let (taken, deferred) = shared.with_core(|core| {
        let Some(link) = core.links.get(&host) else {
            return Err("no such host is kept".to_string());
        };
        if link.handoff.capacity() == 0 {
            return Err("another resume of this host is under way".to_string());
        }
        let resumed = core
            .registry
            .handle_resume(
                host,
                identity,
                &resume.token,
                next_token,
                remote,
                Instant::now(),
            )
            .map_err(|refusal| refusal.to_string())?;
        let Some(link) = core.links.get_mut(&host) else {
            return Err("no such host is kept".to_string());
        };
        let reply = ServerToClient::Resumed {
            received: resumed.uploads_read,
            token: next_token,
            window_ms: window_ms(shared),
        };
        let reply = frame_to_bytes(&reply, shared.limits.max_frame_len())
            .map_err(|error| error.to_string())?;
        let (done, replayed) = tokio::sync::oneshot::channel();
        let handoff = Handoff {
            wire: connection.clone(),
            send,
            reply,
            from: resume.received,
            done,
            close_reason: close_reason.clone(),
        };
        if link.handoff.try_send(Box::new(handoff)).is_err() {
            return Err("the host's writer is gone".to_string());
        }
        // Dropping the offline state tells the task that kept the host to let go.
        let offline_since = link.offline.take().map(|offline| offline.since);
        if offline_since.is_none() {
            close_with(
                &link.wire,
                &link.close_reason,
                CloseCode::Replaced,
                DisconnectReason::ConnectionLost {
                    detail: "replaced by a resumed connection".into(),
                },
                "replaced by a resumed connection",
            );
        }
        link.wire = connection.clone();
        link.remote_addr = remote;
        core.registry
            .set_relay_only(host, connection.transport() == Transport::WebSocket);
        link.close_reason = close_reason.clone();
        link.generation += 1;
        Ok((replayed, link.generation, offline_since))
    });
    drop(deferred);
    let (replayed, generation, offline_since) =
        taken.map_err(|text| refuse(CloseCode::ResumeRefused, text))?;
    let replay = tokio::time::timeout(shared.handshake, replayed).await;
    if let Err(text) = match replay {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(gap))) => Err(format!("the server no longer holds what was lost: {gap}")),
        _ => Err("the host's writer did not take the connection".to_string()),
    } {
        // Its token was good, but the session cannot go on: remove the host.
        shared
            .with_core(|core| core.registry.end_resume(host))
            .1
            .messages
            .clear();
        let text = refuse(CloseCode::ResumeRefused, text);
        let reason = DisconnectReason::ConnectionLost {
            detail: text.clone(),
        };
        remove(shared, host, generation, reason).await;
        return Err(text);
    }
    recv.set_max(shared.limits.max_frame_len());
    let offline_for = offline_since.map_or(std::time::Duration::ZERO, |since| since.elapsed());
    tracing::info!(%host, %remote, ?offline_for, received = resume.received, "client resumed");
    shared.events.push_lifecycle(ServerEvent::ClientResumed {
        host,
        remote_addr: remote,
        offline_for,
    });
    open_logged_in(shared, &connection);
    Ok((host, connection, recv, slot, generation))
}

/// Connection flow-control credit kept for a client's control stream beyond its main
/// stream's window, bytes. The server reads the control stream as it comes, so a few
/// frames' worth is plenty; a larger control frame still passes, in steps.
const CONTROL_WINDOW: u32 = 64 << 10;

/// A logged-in connection's receive window (QUIC `MAX_DATA` credit, RFC 9000 section 4.1)
/// for a main-stream window of `stream_window` bytes: large enough that the main stream,
/// unread, can never use up the credit the control stream needs.
///
/// The connection's credit is not simply the main stream's plus [`CONTROL_WINDOW`]: quinn
/// announces a larger `MAX_DATA` only once it has grown by an eighth of the window, so the
/// credit the client holds can trail what was read by up to an eighth, while the stream's
/// own credit may have just been raised to a whole window. Seven eighths of the result
/// must therefore cover the stream's window and the control stream's room.
fn logged_in_receive_window(stream_window: u32) -> u64 {
    let needed = u64::from(stream_window) + u64::from(CONTROL_WINDOW);
    needed + needed.div_ceil(7)
}

/// The client's stream and its first frame, read with the hello's size limit.
async fn read_hello(
    connection: &quinn::Connection,
    admission: Admission,
) -> Result<(quinn::SendStream, FrameReader<CarrierSource>, Bytes), ReadEnd> {
    let (send, recv) = connection.accept_bi().await?;
    let mut recv = FrameReader::new(CarrierSource::Quic(recv), admission.max_hello_len);
    match recv.next().await? {
        Some(body) => Ok((send, recv, body)),
        None => Err(ReadEnd::Violation(
            CloseCode::ProtocolViolation,
            "stream closed before hello".into(),
        )),
    }
}

/// `ClientToServer::Resume`'s variant index (postcard writes it as the first byte).
const RESUME_VARIANT: u8 = 9;

/// How a connection opens: a hello with its login, or a resume.
enum Opening {
    Hello(Bytes),
    Resume(Resume),
}

/// The login of a hello (or the resume) in the protocol version this server speaks, or
/// the close code and text for anything else.
fn check_hello(body: &Bytes) -> Result<Opening, (CloseCode, String)> {
    let mismatch = |theirs: u32| {
        let text = format!(
            "protocol version mismatch: server speaks {PROTOCOL_VERSION}, client sent {theirs}"
        );
        Err((CloseCode::VersionMismatch, text))
    };
    match peek_hello_version(body) {
        Some(PROTOCOL_VERSION) => {}
        Some(theirs) => return mismatch(theirs),
        // A resume (protocol 6 on) is told by decoding it whole: its version is checked
        // then. A resume of another version that does not decode reads as no hello.
        None if body.first() == Some(&RESUME_VARIANT) => {
            return match decode_body::<ClientToServer>(body) {
                Ok(ClientToServer::Resume(resume)) if resume.version == PROTOCOL_VERSION => {
                    Ok(Opening::Resume(resume))
                }
                Ok(ClientToServer::Resume(resume)) => mismatch(resume.version),
                _ => Err((
                    CloseCode::ProtocolViolation,
                    "the first frame must be a hello".to_string(),
                )),
            };
        }
        None => {
            let text = "the first frame must be a hello".to_string();
            return Err((CloseCode::ProtocolViolation, text));
        }
    }
    match decode_body::<ClientToServer>(body) {
        Ok(ClientToServer::Hello(Hello { login, .. })) => Ok(Opening::Hello(login)),
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

/// Frames taken from one read at most, handled under one lock: enough to share the
/// lock's cost across a burst, few enough to keep other clients' waits short.
const FRAMES_PER_TURN: usize = 64;

/// The control stream: acks, reports and requests, read all the while the main stream
/// is paused (ARCHITECTURE.md, "Streams"), so a client's acks never wait behind its
/// messages. Nothing here waits on a receiver: notices never do.
async fn read_control(
    shared: &Shared,
    host: (HostId, u64),
    connection: &quinn::Connection,
    wire: &Wire,
) -> ReadEnd {
    let recv = match connection.accept_uni().await {
        Ok(recv) => recv,
        Err(error) => return error.into(),
    };
    let recv = FrameReader::new(CarrierSource::Quic(recv), shared.limits.max_frame_len());
    read_stream(shared, host, recv, wire, Some(ClientStream::Control)).await
}

/// Reads one of a client's streams until it ends; `stream` says which frames belong on it
/// (`None`: a WebSocket, which carries the frames of both streams and datagram frames).
/// Every frame one read brought is handled under one lock and with one clock reading, and
/// what they caused is sent (and, on the main stream, waited on) once: that wait is where
/// a sender is paused while the receivers of its messages drain. `(host, generation)`
/// names the host and which of its connections this is: once a resumed connection has
/// replaced it, nothing more from this one is handled (the client sends it again there).
async fn read_stream(
    shared: &Shared,
    (host, generation): (HostId, u64),
    mut recv: FrameReader<CarrierSource>,
    wire: &Wire,
    stream: Option<ClientStream>,
) -> ReadEnd {
    let mut bodies = Vec::with_capacity(FRAMES_PER_TURN);
    loop {
        let body = match recv.next().await {
            Ok(Some(body)) => body,
            Ok(None) => {
                // A client that is leaving finishes its streams after its last frames,
                // so all of them have been read; its close follows.
                return match tokio::time::timeout(shared.handshake, wire.closed()).await {
                    Ok(end) => ReadEnd::Ended(end),
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
            if !is_current(core, host, generation) {
                bodies.clear();
                return Err(replaced());
            }
            let now = Instant::now();
            bodies
                .drain(..)
                .try_for_each(|body| handle_frame(core, host, &body, stream, now))
        });
        match stream {
            // On a WebSocket the one stream is paused too: its acks then wait with its
            // messages (ARCHITECTURE.md, "Fallback over WebSocket").
            Some(ClientStream::Main) | None => shared.settle(deferred).await,
            // Control frames cause notices only, which never wait: pausing this stream
            // on a backlogged receiver would hold the acks back again.
            Some(ClientStream::Control) => drop(deferred),
        }
        if let Some(end) = handled.err().or(ended) {
            return end;
        }
    }
}

/// One frame of a client's stream `stream`, under the lock: decoded, checked against the
/// stream it came on (which the registry does not know), and handed to the registry. On
/// a WebSocket (`stream` is `None`) every frame a QUIC client may send on either stream
/// is taken, and datagram frames too; on QUIC a datagram frame is a violation.
fn handle_frame(
    core: &mut Core,
    host: HostId,
    body: &Bytes,
    stream: Option<ClientStream>,
    now: Instant,
) -> Result<(), ReadEnd> {
    let frame = decode_client_frame(body)?;
    if let Some(stream) = stream {
        if frame.stream() != stream || matches!(frame, ClientToServer::Datagram(_)) {
            return Err(ReadEnd::Violation(
                CloseCode::ProtocolViolation,
                format!("{} on the {}", frame.name(), stream.name()),
            ));
        }
    }
    if let ClientToServer::Received { frames } = frame {
        // The client read this many of our frames: they need not be kept any more.
        if let Some(link) = core.links.get(&host) {
            lock_unconfirmed(&link.unconfirmed)
                .confirm(frames)
                .map_err(|gap| ReadEnd::Violation(CloseCode::ProtocolViolation, gap.to_string()))?;
        }
        return Ok(());
    }
    core.registry
        .handle_frame(host, frame, now)
        .map_err(|violation: ProtocolViolation| {
            ReadEnd::Violation(violation.close_code(), violation.to_string())
        })
}

/// Unreliable relay uploads, in batches: what already arrived is handled under one lock
/// (see `read_datagram_batch`). Once a resumed connection has replaced this one, nothing
/// more from it is handled.
async fn read_datagrams(
    shared: &Shared,
    (host, generation): (HostId, u64),
    connection: &quinn::Connection,
) -> ReadEnd {
    // Grown on first use: an idle connection never allocates it.
    let mut batch = Vec::new();
    loop {
        if let Err(error) = read_datagram_batch(connection, &mut batch).await {
            return error.into();
        }
        let (bad, deferred) = shared.with_core(|core| {
            if !is_current(core, host, generation) {
                return Some(Err(()));
            }
            let now = Instant::now();
            for datagram in &batch {
                match decode_client_datagram(datagram) {
                    Ok(datagram) => core.registry.handle_datagram(host, datagram, now),
                    Err(error) => return Some(Ok(error)),
                }
            }
            None
        });
        shared.settle(deferred).await;
        match bad {
            Some(Ok(error)) => return error.into(),
            Some(Err(())) => return replaced(),
            None => {}
        }
    }
}

/// Whether `generation` is still the host's connection (not replaced by a resume).
fn is_current(core: &Core, host: HostId, generation: u64) -> bool {
    core.links
        .get(&host)
        .is_some_and(|link| link.generation == generation)
}

/// How reading ends on a connection a resumed one replaced.
fn replaced() -> ReadEnd {
    ReadEnd::Connection(quinn::ConnectionError::LocallyClosed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// quinn raises the announced `MAX_DATA` only once its credit has grown by an eighth of
    /// the window, so a client may hold up to that much less than the window beyond what
    /// was read; the main stream, unread, may hold a whole stream window of it.
    #[test]
    fn a_stale_connection_credit_still_leaves_the_control_stream_its_room() {
        for stream_window in [1u32, 4 << 10, 256 << 10, 1 << 20, 16 << 20, u32::MAX] {
            let window = logged_in_receive_window(stream_window);
            let least_announced = window - window / 8;
            assert!(
                least_announced >= u64::from(stream_window) + u64::from(CONTROL_WINDOW),
                "stream window {stream_window}: connection window {window}"
            );
        }
    }
}

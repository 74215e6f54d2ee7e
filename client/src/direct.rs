//! The thin async driver of direct paths: punch tasks, the probe dispatcher, direct
//! connections in both directions, and moving a peer's traffic between paths.
//!
//! The decisions live in sans-IO code ([`PunchSession`], [`Session`](crate::session));
//! this file only moves bytes and timers. A peer's path changes under the same lock that
//! sends take, so no message can slip between the old path and the new.

use crate::driver::shared::{DirectLink, Inner, PunchInput, PunchStart};
use crate::driver::writer::write_stream;
use crate::outbound::UploadQueue;
use crate::punch::{PunchResult, PunchSession, PunchTiming};
use crate::tls::peer_client_config;
use peergroup_protocol::{
    decode_body, decode_peer_frame, decode_server_datagram, frame_to_bytes, ClientToServer,
    CloseCode, Fingerprint, HostId, PairId, PathReason, PeerToPeer, Probe, PunchOrder,
    PunchOutcome,
};
use peergroup_transport::{close, peer_fingerprint, FrameReader, ReadEnd};
use ring::rand::SecureRandom;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

/// How long the QUIC handshake may take after a candidate pair validated.
const HANDSHAKE_GRACE: Duration = Duration::from_secs(5);

/// Starts a punch task for each punch [`Inner::flush`] registered. Holds the client's
/// state weakly: the sender lives in that state, so the queue closes, and this task ends,
/// once the client's last task and handle are gone.
pub(crate) async fn run_punches(
    inner: Weak<Inner>,
    mut starts: mpsc::UnboundedReceiver<PunchStart>,
) {
    while let Some(start) = starts.recv().await {
        let Some(inner) = inner.upgrade() else {
            return;
        };
        tokio::spawn(punch(inner, start.order, start.inputs, start.identity));
    }
}

/// One punch attempt: probes until a candidate pair validates, then (on the controlling
/// side) opens the direct connection; reports how it ended.
async fn punch(
    inner: Arc<Inner>,
    order: PunchOrder,
    mut inputs: mpsc::Receiver<PunchInput>,
    identity: Fingerprint,
) {
    let outcome = run_punch(&inner, &order, &mut inputs, identity).await;
    tracing::debug!(peer = %order.peer, attempt = order.attempt, ?outcome, "punch ended");
    {
        let mut core = inner.lock();
        if core
            .punches
            .get(&order.pair)
            .is_some_and(|p| p.attempt == order.attempt)
        {
            core.punches.remove(&order.pair);
        }
    }
    inner.expected_peers.remove(&identity);
    if let Some(outcome) = outcome {
        inner.send_server_frame(&ClientToServer::PunchReport {
            pair: order.pair,
            attempt: order.attempt,
            outcome,
        });
    }
}

/// Returns the failure to report, or `None` when the direct path came up (its success is
/// reported when it is established).
async fn run_punch(
    inner: &Arc<Inner>,
    order: &PunchOrder,
    inputs: &mut mpsc::Receiver<PunchInput>,
    identity: Fingerprint,
) -> Option<PunchOutcome> {
    let local = inner.endpoint.local_addr().ok()?;
    let mut seed = [0u8; 8];
    let _ = inner.random.fill(&mut seed);
    let timing = PunchTiming {
        window: inner.direct.punch_window,
        max_interval: inner.direct.probe_max_interval,
        ..PunchTiming::default()
    };
    let mut session = PunchSession::new(
        order,
        local,
        timing,
        std::time::Instant::now(),
        u64::from_le_bytes(seed),
    );
    let give_up = Instant::now()
        + Duration::from_millis(u64::from(order.start_in_ms))
        + timing.window
        + HANDSHAKE_GRACE;
    let mut connecting: Option<tokio::task::JoinHandle<Result<(), PunchOutcome>>> = None;
    loop {
        while let Some((to, bytes)) = session.poll_transmit() {
            if let Err(error) = inner.socket.send_probe(to, &bytes).await {
                tracing::debug!(%to, %error, "probe not sent");
            }
        }
        match session.result() {
            Some(PunchResult::TimedOut) if connecting.is_none() => {
                return Some(PunchOutcome::NoResponse)
            }
            Some(PunchResult::Validated(addr)) if session.controlling() && connecting.is_none() => {
                tracing::debug!(peer = %order.peer, %addr, "candidate pair validated; connecting");
                connecting = Some(tokio::spawn(connect(
                    inner.clone(),
                    order.clone(),
                    addr,
                    identity,
                )));
            }
            _ => {}
        }
        let next = Instant::from_std(session.poll_timeout());
        tokio::select! {
            _ = tokio::time::sleep_until(next) => session.handle_timeout(std::time::Instant::now()),
            input = inputs.recv() => match input {
                Some(PunchInput::Probe(from, bytes)) => {
                    session.handle_probe(from, &bytes, std::time::Instant::now());
                }
                Some(PunchInput::Connected) | None => return None,
            },
            result = async { connecting.as_mut().expect("guarded").await }, if connecting.is_some() => {
                return match result {
                    Ok(Ok(())) => None,
                    Ok(Err(outcome)) => Some(outcome),
                    Err(_) => Some(PunchOutcome::HandshakeFailed),
                };
            }
            _ = tokio::time::sleep_until(give_up) => {
                return Some(match connecting {
                    Some(_) => PunchOutcome::HandshakeFailed,
                    None => PunchOutcome::NoResponse,
                });
            }
        }
    }
}

/// The controlling side opens the direct connection to the validated address.
async fn connect(
    inner: Arc<Inner>,
    order: PunchOrder,
    addr: SocketAddr,
    identity: Fingerprint,
) -> Result<(), PunchOutcome> {
    let failed = |error: &dyn std::fmt::Display| {
        tracing::debug!(peer = %order.peer, %addr, %error, "direct handshake failed");
        PunchOutcome::HandshakeFailed
    };
    let config = peer_client_config(&inner.identity, identity, inner.peer_transport.clone())
        .map_err(|e| failed(&e))?;
    let connection = inner
        .endpoint
        .connect_with(config, addr, "peergroup-peer")
        .map_err(|e| failed(&e))?
        .await
        .map_err(|e| failed(&e))?;
    let (mut send, recv) = connection.open_bi().await.map_err(|e| failed(&e))?;
    let hello = PeerToPeer::Hello {
        pair: order.pair,
        host: inner.host_id,
    };
    let frame = frame_to_bytes(&hello, inner.max_frame_len).map_err(|e| failed(&e))?;
    send.write_all(&frame).await.map_err(|e| failed(&e))?;
    establish(
        &inner,
        order.peer,
        order.pair,
        order.attempt,
        connection,
        send,
        FrameReader::new(recv, inner.max_frame_len),
    )
    .await;
    Ok(())
}

/// Accepts direct connections from peers for as long as the endpoint is open.
pub(crate) async fn accept_peers(inner: Arc<Inner>) {
    while let Some(incoming) = inner.endpoint.accept().await {
        tokio::spawn(accept_peer(inner.clone(), incoming));
    }
}

async fn accept_peer(inner: Arc<Inner>, incoming: quinn::Incoming) {
    let accepted = tokio::time::timeout(HANDSHAKE_GRACE, async {
        let connection = incoming.await.ok()?;
        let identity = peer_fingerprint(&connection)?;
        let (peer, pair) = inner.lock().session.peer_by_identity(&identity)?;
        let (send, recv) = connection.accept_bi().await.ok()?;
        let mut recv = FrameReader::new(recv, inner.max_frame_len);
        let body = match recv.next().await {
            Ok(Some(body)) => body,
            _ => return None,
        };
        match decode_body::<PeerToPeer>(&body) {
            Ok(PeerToPeer::Hello { pair: p, host }) if p == pair && host == peer => {
                Some((peer, pair, connection, send, recv))
            }
            _ => {
                close(
                    &connection,
                    CloseCode::ProtocolViolation,
                    "expected the peer hello",
                );
                None
            }
        }
    })
    .await;
    let Ok(Some((peer, pair, connection, send, recv))) = accepted else {
        return;
    };
    let attempt = {
        let core = inner.lock();
        let handle = core.punches.get(&pair);
        let attempt = handle.map(|h| h.attempt);
        if let Some(handle) = handle {
            let _ = handle.input.try_send(PunchInput::Connected);
        }
        attempt
    };
    let Some(attempt) = attempt else {
        // No punch of ours expected this peer: it cannot have passed the certificate
        // check, but refuse it all the same.
        close(
            &connection,
            CloseCode::ProtocolViolation,
            "no punch under way",
        );
        return;
    };
    establish(&inner, peer, pair, attempt, connection, send, recv).await;
}

/// Makes `connection` the peer's path, then serves it until it ends.
async fn establish(
    inner: &Arc<Inner>,
    peer: HostId,
    pair: PairId,
    attempt: u32,
    connection: quinn::Connection,
    send: quinn::SendStream,
    recv: FrameReader,
) {
    let resume_reading = Arc::new(Notify::new());
    {
        let mut core = inner.lock();
        let current = core.session.pair_of(peer) == Some(pair);
        if !current || core.directs.contains_key(&peer) {
            drop(core);
            close(&connection, CloseCode::Normal, "not needed");
            return;
        }
        let (queue, queued) = UploadQueue::new(inner.peer_queue_bytes, true);
        tokio::spawn(write_stream(connection.clone(), send, queued));
        core.directs.insert(
            peer,
            DirectLink {
                connection: connection.clone(),
                queue,
                resume_reading: resume_reading.clone(),
            },
        );
        let rtt = connection.rtt();
        core.session
            .set_direct(peer, rtt, std::time::Instant::now());
        inner.send_server_frame(&ClientToServer::PunchReport {
            pair,
            attempt,
            outcome: PunchOutcome::Direct {
                rtt_us: rtt.as_micros().min(u128::from(u32::MAX)) as u32,
            },
        });
        inner.flush_and_wake(&mut core);
    }
    tracing::info!(%peer, remote = %connection.remote_address(), "direct path up");
    serve_direct(inner.clone(), peer, connection, recv, resume_reading).await;
}

/// Reads a direct connection until it ends, then moves the peer back to the relay.
async fn serve_direct(
    inner: Arc<Inner>,
    peer: HostId,
    connection: quinn::Connection,
    recv: FrameReader,
    resume_reading: Arc<Notify>,
) {
    // Both loops run to their end (each closes the connection as it ends, which ends the
    // other): cancelling one mid-way could drop messages it was handing to the
    // application after they were acked.
    let (frames_end, _) = tokio::join!(
        async {
            let end = read_peer_frames(&inner, peer, recv, &connection, &resume_reading).await;
            if let ReadEnd::Violation(code, text) = &end {
                close(&connection, *code, text);
            } else {
                close(&connection, CloseCode::Normal, "direct path closed");
            }
            end
        },
        async {
            let end = read_peer_datagrams(&inner, peer, &connection).await;
            if let ReadEnd::Violation(code, text) = &end {
                close(&connection, *code, text);
            }
        }
    );
    let reason = match &frames_end {
        ReadEnd::Connection(quinn::ConnectionError::TimedOut) => PathReason::DirectTimedOut,
        _ => PathReason::DirectClosed,
    };
    {
        let mut core = inner.lock();
        let ours = core
            .directs
            .get(&peer)
            .is_some_and(|link| link.connection.stable_id() == connection.stable_id());
        if !ours {
            return;
        }
        core.directs.remove(&peer);
        // Unacked messages are queued again for the relay, with their numbers.
        core.session
            .set_relay(peer, reason, std::time::Instant::now());
        inner.flush_and_wake(&mut core);
    }
    tracing::info!(%peer, ?reason, "direct path down; back to the relay");
}

async fn read_peer_frames(
    inner: &Arc<Inner>,
    peer: HostId,
    mut recv: FrameReader,
    connection: &quinn::Connection,
    resume_reading: &Notify,
) -> ReadEnd {
    loop {
        let body = match recv.next().await {
            Ok(Some(body)) => body,
            Ok(None) => return ReadEnd::Connection(quinn::ConnectionError::LocallyClosed),
            Err(end) => return end,
        };
        let frame = match decode_peer_frame(&body) {
            Ok(frame) => frame,
            Err(error) => return error.into(),
        };
        let paused = {
            let mut core = inner.lock();
            let handled = match frame {
                PeerToPeer::Ack { received } => {
                    // Acks count frames in the order they left the direct queue: the
                    // writer logged that order, and the session takes it before the ack.
                    if let Some(link) = core.directs.get(&peer) {
                        let sent = link.queue.take_sent();
                        core.session.handle_direct_sent(peer, sent);
                    }
                    core.session.handle_direct_ack(peer, received)
                }
                frame => core
                    .session
                    .handle_peer_frame(peer, frame, std::time::Instant::now()),
            };
            if let Err(text) = handled {
                return ReadEnd::Violation(CloseCode::ProtocolViolation, text);
            }
            inner.flush(&mut core);
            core.session.direct_reading_paused(peer)
        };
        inner.deliver_events().await;
        if paused {
            // The direct path is far ahead of the relay: stop reading it until the relay
            // catches up, so held memory stays bounded and the sender is paced.
            wait_until_resumed(inner, peer, connection, resume_reading).await;
        }
    }
}

/// Waits until the session lets the direct reader of `peer` go on
/// ([`Session::poll_resumed_reader`](crate::session::Session::poll_resumed_reader) wakes
/// `resume_reading`), or either connection closes: a peer that never fills its gap stops
/// acking too and loses its direct path, and then the next read ends the reader.
async fn wait_until_resumed(
    inner: &Inner,
    peer: HostId,
    connection: &quinn::Connection,
    resume_reading: &Notify,
) {
    // A wake-up stored by `notify_one` may be stale (from an earlier pause); the session
    // is asked again each time, so a stale one costs a look, never a missed resume.
    while inner.lock().session.direct_reading_paused(peer) {
        tokio::select! {
            _ = resume_reading.notified() => {}
            _ = connection.closed() => return,
            _ = inner.connection.closed() => return,
        }
    }
}

async fn read_peer_datagrams(
    inner: &Arc<Inner>,
    peer: HostId,
    connection: &quinn::Connection,
) -> ReadEnd {
    loop {
        let datagram = match connection.read_datagram().await {
            Ok(datagram) => datagram,
            Err(error) => return ReadEnd::Connection(error),
        };
        let Ok(message) = decode_server_datagram(&datagram) else {
            return ReadEnd::Violation(CloseCode::ProtocolViolation, "malformed datagram".into());
        };
        {
            let mut core = inner.lock();
            core.session
                .handle_peer_datagram(peer, message, std::time::Instant::now());
            inner.flush(&mut core);
        }
        inner.deliver_events().await;
    }
}

/// Hands each received probe to the punch task of its pair.
pub(crate) async fn dispatch_probes(inner: Arc<Inner>, mut probes: crate::socket::ProbeReceiver) {
    loop {
        // Ends with the server connection too: this task holds the client's state, and
        // that state holds the socket whose end would otherwise be the only way out.
        let (from, bytes) = tokio::select! {
            probe = probes.recv() => match probe {
                Some(probe) => probe,
                None => return,
            },
            _ = inner.connection.closed() => return,
        };
        let Ok((probe, _, _)) = Probe::decode(&bytes) else {
            continue;
        };
        let core = inner.lock();
        if let Some(handle) = core.punches.get(&probe.pair) {
            // A full queue drops the probe: the next round brings another.
            let _ = handle.input.try_send(PunchInput::Probe(from, bytes));
        }
    }
}

/// The session's timer, while the client lives: sleeps until
/// [`Session::poll_timeout`](crate::session::Session::poll_timeout) (acks due to direct
/// peers, dating and timing out direct messages, pings, clock requests, link reports),
/// runs `handle_timeout` then, and looks again whenever input moved a deadline earlier
/// ([`Inner::flush`] wakes `timer_moved`).
pub(crate) async fn tick(inner: Arc<Inner>) {
    // Made once: each `closed()` registers with quinn's connection state.
    let closed = inner.connection.closed();
    tokio::pin!(closed);
    loop {
        let next = {
            let mut core = inner.lock();
            let now = std::time::Instant::now();
            if core.session.poll_timeout().is_some_and(|at| at <= now) {
                core.session.handle_timeout(now);
                // Looked at again just below: no need to wake this task for it.
                core.session.take_timeout_moved();
                inner.flush_and_wake(&mut core);
            }
            core.session.poll_timeout()
        };
        let sleep = async {
            match next {
                Some(at) => tokio::time::sleep_until(Instant::from_std(at)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = sleep => {}
            _ = inner.timer_moved.notified() => {}
            _ = &mut closed => return,
        }
    }
}

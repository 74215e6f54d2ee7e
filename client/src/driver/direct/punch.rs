//! Punch tasks: one per attempt the server ordered, probing the peer's candidates until a
//! pair validates (the sans-IO [`PunchSession`] decides), then, on the controlling side,
//! dialling the peer; each reports how its attempt ended.
//!
//! [`Inner::flush`] registers each attempt under the lock and hands it to
//! [`run_punches`]: it cannot start the task itself, since the punch task goes on to serve
//! the direct link, and that calls `flush` in turn.

use super::dial::dial;
use super::HANDSHAKE_GRACE;
use crate::driver::shared::{Inner, PunchInput, PunchStart};
use crate::punch::{PunchResult, PunchSession, PunchTiming};
use peergroup_protocol::{ClientToServer, Fingerprint, PunchOrder, PunchOutcome};
use ring::rand::SecureRandom;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

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
    let superseded = {
        let mut core = inner.lock();
        match core.punches.get(&order.pair) {
            Some(p) if p.attempt == order.attempt => {
                core.punches.remove(&order.pair);
                false
            }
            // A newer attempt took the pair over and expects the same peer.
            Some(_) => true,
            None => false,
        }
    };
    if !superseded {
        inner.expected_peers.remove(&identity);
    }
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
    // A client without UDP (on WebSocket alone) cannot punch; the server never asks one.
    let Some(udp) = &inner.udp else {
        return Some(PunchOutcome::Declined);
    };
    let Ok(local) = udp.endpoint.local_addr() else {
        return Some(PunchOutcome::HandshakeFailed);
    };
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
            if let Err(error) = udp.socket.send_probe(to, &bytes).await {
                tracing::debug!(%to, %error, "probe not sent");
            }
        }
        match session.result() {
            Some(PunchResult::TimedOut) if connecting.is_none() => {
                return Some(PunchOutcome::NoResponse)
            }
            Some(PunchResult::Validated(addr)) if session.controlling() && connecting.is_none() => {
                tracing::debug!(peer = %order.peer, %addr, "candidate pair validated; connecting");
                connecting = Some(tokio::spawn(dial(
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

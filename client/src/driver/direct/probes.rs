//! The probe dispatcher task: punch probes arrive on the socket the server connection and
//! direct connections share ([`DemuxSocket`](crate::socket::DemuxSocket) tells them
//! apart), and each goes to the task punching its pair.

use crate::driver::shared::{Inner, PunchInput};
use crate::socket::ProbeReceiver;
use peergroup_protocol::Probe;
use std::sync::Arc;

/// Hands each received probe to the punch task of its pair.
pub(crate) async fn dispatch_probes(inner: Arc<Inner>, mut probes: ProbeReceiver) {
    loop {
        // Ends with the server connection too: this task holds the client's state, and
        // that state holds the socket whose end would otherwise be the only way out.
        let (from, bytes) = tokio::select! {
            probe = probes.recv() => match probe {
                Some(probe) => probe,
                None => return,
            },
            _ = inner.ended.cancelled() => return,
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

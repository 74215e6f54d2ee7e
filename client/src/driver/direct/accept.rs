//! The other side of a punch: accepts the direct connection a peer dialled, checks it
//! presented the certificate the server vouched for and said hello for the pair being
//! punched, and tells that punch's task it succeeded.

use super::link::establish;
use super::HANDSHAKE_GRACE;
use crate::driver::shared::{Inner, PunchInput};
use peergroup_protocol::{decode_body, CloseCode, PeerToPeer};
use peergroup_transport::{close, peer_fingerprint, FrameReader};
use std::sync::Arc;

/// Accepts direct connections from peers for as long as the endpoint is open (a client
/// without UDP has none, and accepts nothing).
pub(crate) async fn accept_peers(inner: Arc<Inner>) {
    let Some(endpoint) = inner.udp.as_ref().map(|udp| udp.endpoint.clone()) else {
        return;
    };
    while let Some(incoming) = endpoint.accept().await {
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

//! The controlling side of a punch: dials the peer at the candidate address that
//! validated, presents this client's certificate, and says hello on the one stream.

use super::link::establish;
use crate::driver::shared::Inner;
use crate::tls::peer_client_config;
use peergroup_protocol::{frame_to_bytes, Fingerprint, PeerToPeer, PunchOrder, PunchOutcome};
use peergroup_transport::FrameReader;
use std::net::SocketAddr;
use std::sync::Arc;

/// The controlling side opens the direct connection to the validated address.
pub(super) async fn dial(
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
    let udp = inner.udp.as_ref().ok_or(PunchOutcome::HandshakeFailed)?;
    let connection = udp
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

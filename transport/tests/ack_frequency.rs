//! `ack_less_often` over real QUIC on loopback: a peer asked to acknowledge every tenth
//! packet sends far fewer ACK frames for the same upload than one left at QUIC's default
//! of every second packet.

mod common;

use common::connected_pair;
use peergroup_transport::ack_less_often;
use std::time::Duration;

/// Writes of one packet each, paced so that each arrives on its own: on loopback a burst
/// reaches the peer in one receive batch, which it acknowledges once whatever the setting.
const WRITES: usize = 150;
const WRITE_LEN: usize = 1_000;
const UPLOAD: usize = WRITES * WRITE_LEN;

/// Uploads [`UPLOAD`] bytes on one stream, a millisecond between writes, waits until the server has read them all and
/// every packet is acknowledged, and returns the ACK frames the uploading side received
/// and the packets it sent.
async fn acks_for_one_upload(transport: quinn::TransportConfig) -> (u64, u64) {
    let (_endpoint, client, server) = connected_pair(transport).await;
    let before = client.stats();
    let mut send = client.open_uni().await.unwrap();
    let reader = tokio::spawn(async move {
        let mut recv = server.accept_uni().await.unwrap();
        let read = recv.read_to_end(UPLOAD).await.unwrap();
        (read.len(), server)
    });
    for _ in 0..WRITES {
        send.write_all(&[7u8; WRITE_LEN]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    send.finish().unwrap();
    let (read, _server) = reader.await.unwrap();
    assert_eq!(read, UPLOAD);
    // Resolves once the server has acknowledged every byte (the last ACK may wait for
    // its max_ack_delay, 25 ms).
    let acknowledged = tokio::time::timeout(Duration::from_secs(10), send.stopped()).await;
    assert!(matches!(acknowledged, Ok(Ok(None))), "{acknowledged:?}");
    let after = client.stats();
    (
        after.frame_rx.acks - before.frame_rx.acks,
        after.path.sent_packets - before.path.sent_packets,
    )
}

#[tokio::test]
async fn a_peer_asked_to_ack_less_often_sends_a_fraction_of_the_acks() {
    let (default_acks, default_packets) =
        acks_for_one_upload(quinn::TransportConfig::default()).await;
    let mut fewer = quinn::TransportConfig::default();
    ack_less_often(&mut fewer);
    let (fewer_acks, fewer_packets) = acks_for_one_upload(fewer).await;
    assert!(
        default_packets >= WRITES as u64 && fewer_packets >= WRITES as u64,
        "{default_packets} / {fewer_packets} packets"
    );
    // Every second packet: about half as many ACKs as packets; every tenth: about a tenth.
    assert!(
        default_acks * 4 >= default_packets,
        "{default_acks} ACKs for {default_packets} packets at QUIC's default"
    );
    assert!(
        fewer_acks * 6 <= fewer_packets,
        "{fewer_acks} ACKs for {fewer_packets} packets when asked for every tenth"
    );
}

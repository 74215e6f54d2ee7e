//! `read_datagram_batch` over real QUIC on loopback: what already arrived is taken in
//! order, at most `DATAGRAM_BATCH` at a time, and a connection's end comes after the
//! datagrams that arrived before it.

mod common;

use bytes::Bytes;
use common::connected_pair;
use peergroup_transport::{read_datagram_batch, DATAGRAM_BATCH};
use std::time::Duration;

/// Waits until `connection` has received `count` datagrams not yet read, so a batch read
/// finds them all queued.
async fn wait_received(connection: &quinn::Connection, count: u64) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while connection.stats().frame_rx.datagram < count {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("datagrams arrived");
}

#[tokio::test]
async fn queued_datagrams_come_in_order_in_batches_of_at_most_the_limit() {
    let (_endpoint, sending, receiving) = connected_pair(quinn::TransportConfig::default()).await;
    let total = DATAGRAM_BATCH + DATAGRAM_BATCH / 2;
    for n in 0..total {
        sending
            .send_datagram(Bytes::from((n as u32).to_le_bytes().to_vec()))
            .unwrap();
    }
    wait_received(&receiving, total as u64).await;

    let mut batch = Vec::new();
    let mut sizes = Vec::new();
    let mut numbers = Vec::new();
    while numbers.len() < total {
        read_datagram_batch(&receiving, &mut batch).await.unwrap();
        sizes.push(batch.len());
        numbers.extend(
            batch
                .iter()
                .map(|d| u32::from_le_bytes(d[..4].try_into().unwrap()) as usize),
        );
    }
    assert_eq!(numbers, (0..total).collect::<Vec<_>>());
    // Everything was already queued: a full batch, then the rest in one.
    assert_eq!(sizes, vec![DATAGRAM_BATCH, total - DATAGRAM_BATCH]);
}

#[tokio::test]
async fn one_datagram_is_a_batch_of_one_and_the_end_comes_after_it() {
    let (_endpoint, sending, receiving) = connected_pair(quinn::TransportConfig::default()).await;
    sending.send_datagram(Bytes::from_static(b"last")).unwrap();
    wait_received(&receiving, 1).await;
    sending.close(7u32.into(), b"done");
    // The close may already have arrived; the datagram before it still comes first.
    tokio::time::timeout(Duration::from_secs(10), receiving.closed())
        .await
        .unwrap();

    let mut batch = vec![Bytes::from_static(b"stale")];
    read_datagram_batch(&receiving, &mut batch).await.unwrap();
    assert_eq!(batch, vec![Bytes::from_static(b"last")]);
    let end = read_datagram_batch(&receiving, &mut batch)
        .await
        .unwrap_err();
    assert!(
        matches!(end, quinn::ConnectionError::ApplicationClosed(ref close) if close.error_code == 7u32.into()),
        "{end:?}"
    );
}

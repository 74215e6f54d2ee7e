//! A client that abuses the punch referee, over real QUIC on loopback (issue 12,
//! finding 6): it cannot make the server send its peer punch order after punch order.

mod common;

use common::*;
use peergroup_protocol::{
    decode_body, ClientToServer, FrameDecoder, PairId, PunchOutcome, ServerToClient,
    DEFAULT_MAX_FRAME_LEN,
};
use peergroup_server::{AuthHook, GroupOptions, PunchStart};
use std::time::Duration;

/// A raw client's frames from the server, read as they come.
struct Frames {
    decoder: FrameDecoder,
}

impl Frames {
    /// The next frame that `pick` accepts, or `None` if none comes within `wait`.
    async fn next<T>(
        &mut self,
        raw: &mut RawClient,
        wait: Duration,
        mut pick: impl FnMut(&ServerToClient) -> Option<T>,
    ) -> Option<T> {
        tokio::time::timeout(wait, async {
            loop {
                while let Some(body) = self.decoder.next_body().unwrap() {
                    let frame = decode_body::<ServerToClient>(&body).unwrap();
                    if let Some(found) = pick(&frame) {
                        return found;
                    }
                }
                let chunk = raw.recv.read_chunk(64 << 10, true).await.unwrap().unwrap();
                self.decoder.push(&chunk.bytes);
            }
        })
        .await
        .ok()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asking_for_punches_and_declining_them_does_not_flood_the_peer_with_orders() {
    // Before: every WantDirect after a Declined report ordered both hosts to punch
    // again (20 rounds, 20 orders to the victim), each a control frame ahead of the
    // victim's messages.
    let (server, mut server_events) = start_server_with(
        |c| c.punch.start = PunchStart::OnFirstMessage,
        AuthHook::accept_all(),
    )
    .await;
    let (_victim, _victim_events, victim) = connect(&server, "victim").await;
    let (mut raw, attacker) = raw_login(&server, &mut server_events, &[victim]).await;
    server
        .create_group(&[victim, attacker], GroupOptions::default(), "")
        .unwrap();
    let mut frames = Frames {
        decoder: FrameDecoder::new(DEFAULT_MAX_FRAME_LEN),
    };
    let pair: PairId = frames
        .next(&mut raw, WAIT, |f| match f {
            ServerToClient::PeerUp { peer, pair, .. } if *peer == victim => Some(*pair),
            _ => None,
        })
        .await
        .expect("the pair starts");
    let mut orders_seen = 0;
    for _ in 0..20 {
        raw.send_frame(&ClientToServer::WantDirect { pair }).await;
        let order = frames
            .next(&mut raw, Duration::from_millis(150), |f| match f {
                ServerToClient::PunchOrder(order) if order.pair == pair => Some(order.attempt),
                _ => None,
            })
            .await;
        if let Some(attempt) = order {
            orders_seen += 1;
            raw.send_frame(&ClientToServer::PunchReport {
                pair,
                attempt,
                outcome: PunchOutcome::Declined,
            })
            .await;
        }
    }
    assert_eq!(
        orders_seen, 1,
        "a declined attempt backs off (60 s) like a failed one"
    );
    let stats = server.punch_stats(victim).unwrap();
    assert_eq!(stats.orders, 1, "{stats:?}");
    // Repeating the report does not inflate the attacker's record either.
    for _ in 0..50 {
        raw.send_frame(&ClientToServer::PunchReport {
            pair,
            attempt: 1,
            outcome: PunchOutcome::Declined,
        })
        .await;
    }
    raw.send_frame(&ClientToServer::WantDirect { pair }).await;
    tokio::time::timeout(WAIT, async {
        while server.punch_stats(attacker).unwrap().declined == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(server.punch_stats(attacker).unwrap().declined, 1);
}

//! Heap allocations per send, counted on the sending thread.
//!
//! The sender's own work sits on the serial path that sets how many messages leave per
//! packet (README, "Benchmarks"), so each allocation on it costs more than its own time.
//! These tests pin how many a relayed send makes, so one added by accident shows up here
//! rather than as noise in a benchmark.

mod common;

use bytes::Bytes;
use common::*;
use peergroup_client::{Delivery, Target};

/// Messages per measurement: enough that a one-off (a queue growing) counts for little.
const SENDS: u64 = 200;

/// Allocations of [`SENDS`] `try_send`s of a 64-byte reliable message to `target` from
/// `a`, counted on this thread; the payloads are made outside the count (as a game's
/// message buffer would be).
fn allocations_of_sends(a: &peergroup_client::Client, target: &Target) -> u64 {
    let payloads: Vec<Bytes> = (0..SENDS).map(|_| Bytes::from(vec![7u8; 64])).collect();
    allocation_counter::measure(|| {
        for payload in payloads {
            a.try_send(target.clone(), payload, Delivery::ReliableOrdered)
                .expect("queued");
        }
    })
    .count_total
}

/// Two per send, and a few for queues that grow while the writer has not run (each
/// doubling of a queue's ring is one).
const ALLOWED: u64 = 2 * SENDS + 16;

// One worker thread, and the sends never await: every allocation counted is the
// send's own, made on this thread; the writer runs only after the count.
#[tokio::test(flavor = "current_thread")]
async fn a_relayed_send_allocates_only_its_frame_and_destination_list() {
    let (server, _server_events) = start_server().await;
    let (a, mut a_events, a_id) = connect(&server, "a").await;
    let mut members = vec![a_id];
    let mut receivers = Vec::new();
    for n in 0..8 {
        let (client, events, id) = connect(&server, &format!("b{n}")).await;
        members.push(id);
        receivers.push((client, events));
    }
    let group = server.create_group(&members, relay_only(), "").unwrap();
    next_client_events(&mut a_events, members.len()).await;
    let first = members[1];

    // Warm up: the first sends size the queues.
    allocations_of_sends(&a, &Target::Host(first));
    tokio::task::yield_now().await;

    // What stays: the encoded frame and the frame's destination list. Routing, planning,
    // the payload and queueing allocate nothing for a group of up to eight peers (six
    // allocations per send to one host before this was pinned).
    let to_one = allocations_of_sends(&a, &Target::Host(first));
    assert!(
        to_one <= ALLOWED,
        "{to_one} allocations for {SENDS} sends to one host"
    );
    let to_group = allocations_of_sends(&a, &Target::Group(group));
    assert!(
        to_group <= ALLOWED,
        "{to_group} allocations for {SENDS} sends to 8 hosts"
    );
    drop(receivers);
}

//! The blocking client driven from plain threads running fixed-tick game loops (no async
//! on the client side), against a real server on its own runtime over loopback QUIC:
//! events in order, messages exactly once and in order, and no thread left behind.

mod common;

use common::*;
use peergroup_client::blocking::BlockingClient;
use peergroup_client::{decode, ClientEvent, ConnectError, Delivery, HostId, Target};
use peergroup_server::{DisconnectReason, Server, ServerEvent};
use serde::{Deserialize, Serialize};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

/// One frame of the game loops.
const FRAME: Duration = Duration::from_millis(16);
/// Messages each client sends, a few per frame.
const COUNT: u32 = 100;
const PER_FRAME: u32 = 5;

/// The tests here count the process's `peergroup-rt` threads, so they take turns.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Chat {
    seq: u32,
    text: String,
}

/// Threads of this process named as the blocking client names its runtime thread.
fn runtime_threads() -> usize {
    let tasks = std::fs::read_dir("/proc/self/task").expect("Linux /proc");
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim_end() == "peergroup-rt")
        .count()
}

/// A server on a runtime of its own, its events forwarded to a plain channel.
fn server_on_its_own_runtime() -> (tokio::runtime::Runtime, Server, mpsc::Receiver<ServerEvent>) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (server, mut events) = runtime.block_on(start_server());
    let (tx, rx) = mpsc::channel();
    runtime.spawn(async move {
        while let Some(event) = events.next().await {
            let _ = tx.send(event);
        }
    });
    (runtime, server, rx)
}

fn wait_server_event<T>(
    events: &mpsc::Receiver<ServerEvent>,
    mut pick: impl FnMut(&ServerEvent) -> Option<T>,
) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = events
            .recv_timeout(left)
            .expect("timed out waiting for a server event");
        if let Some(found) = pick(&event) {
            return found;
        }
    }
}

/// A game loop: each frame it drains the events, and once it has seen itself join a group
/// it sends `PER_FRAME` messages to the group (alternating the waiting and the never-waiting
/// send) until it has sent `COUNT`. It stops when it has also received `COUNT` from `peer`.
/// Returns every event it saw, in order.
fn game_loop(client: &mut BlockingClient, peer: HostId, name: &str) -> Vec<ClientEvent> {
    let deadline = Instant::now() + WAIT;
    let me = client.host_id();
    let mut frame = Vec::new();
    let mut seen = Vec::new();
    let mut group = None;
    let (mut sent, mut received) = (0, 0);
    while sent < COUNT || received < COUNT {
        assert!(
            Instant::now() < deadline,
            "{name}: timed out after sending {sent} and receiving {received}; saw {seen:?}"
        );
        frame.clear();
        let drained = client.drain_events(&mut frame);
        assert_eq!(drained, frame.len());
        for event in &frame {
            match event {
                ClientEvent::MemberJoined {
                    group: g, member, ..
                } if *member == me => {
                    group = Some(*g);
                }
                ClientEvent::Message { from, .. } if *from == peer => received += 1,
                _ => {}
            }
        }
        seen.append(&mut frame);
        if let Some(group) = group {
            for _ in 0..PER_FRAME.min(COUNT - sent) {
                let chat = Chat {
                    seq: sent,
                    text: format!("{name} says {sent}"),
                };
                let target = Target::Group(group);
                if sent % 2 == 0 {
                    client.send_message(target, &chat, Delivery::ReliableOrdered)
                } else {
                    client.try_send_message(target, &chat, Delivery::ReliableOrdered)
                }
                .unwrap_or_else(|error| panic!("{name}: send {sent}: {error}"));
                sent += 1;
            }
        }
        std::thread::sleep(FRAME);
    }
    seen
}

/// Checks what a member of the two-member group saw: `Connected`, both joins (the first
/// member first), then `COUNT` messages from `peer`, each once and in order. Path changes
/// (the pair may go direct on loopback) may come anywhere and are left out.
fn check_seen(seen: &[ClientEvent], me: HostId, first: HostId, second: HostId, peer: HostId) {
    let seen: Vec<&ClientEvent> = seen
        .iter()
        .filter(|event| !matches!(event, ClientEvent::PathChanged { .. }))
        .collect();
    assert_eq!(seen.len(), 3 + COUNT as usize, "{seen:?}");
    assert_eq!(*seen[0], ClientEvent::Connected { host_id: me });
    assert!(
        matches!(seen[1], ClientEvent::MemberJoined { member, .. } if *member == first),
        "{seen:?}"
    );
    assert!(
        matches!(seen[2], ClientEvent::MemberJoined { member, .. } if *member == second),
        "{seen:?}"
    );
    for (n, event) in seen[3..].iter().enumerate() {
        let ClientEvent::Message { from, payload, .. } = event else {
            panic!("expected message {n}, got {event:?}");
        };
        assert_eq!(*from, peer);
        let chat: Chat = decode(payload).expect("a Chat");
        assert_eq!(chat.seq, n as u32, "message {n} out of order or twice");
    }
}

#[test]
fn fixed_tick_game_loops_exchange_messages_in_order_and_leave_no_thread() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (server_runtime, server, server_events) = server_on_its_own_runtime();
    let baseline = runtime_threads();

    let mut a = BlockingClient::connect(client_config(&server, "a")).expect("a connects");
    let mut b = BlockingClient::connect(client_config(&server, "b")).expect("b connects");
    assert_eq!(runtime_threads(), baseline + 2, "one runtime thread each");
    let (a_id, b_id) = (a.host_id(), b.host_id());
    assert_ne!(a_id, b_id);

    let (a_seen, b_seen) = std::thread::scope(|scope| {
        let a_loop = scope.spawn(|| game_loop(&mut a, b_id, "a"));
        let b_loop = scope.spawn(|| game_loop(&mut b, a_id, "b"));
        // Server calls may start work on the server's runtime.
        let _server_context = server_runtime.enter();
        server
            .create_group(&[a_id, b_id], Default::default(), "")
            .unwrap();
        (a_loop.join().unwrap(), b_loop.join().unwrap())
    });
    check_seen(&a_seen, a_id, a_id, b_id, b_id);
    check_seen(&b_seen, b_id, a_id, b_id, a_id);
    assert_eq!(a.groups().len(), 1);
    assert_eq!(b.group_members(a.groups()[0]), Some(vec![a_id, b_id]));
    assert!(a.peers().contains(&b_id));
    assert!(a.peer_stats(b_id).is_some());

    // A few more frames: nothing arrives twice.
    let mut late = Vec::new();
    for _ in 0..10 {
        a.drain_events(&mut late);
        b.drain_events(&mut late);
        std::thread::sleep(FRAME);
    }
    assert!(
        late.iter()
            .all(|event| matches!(event, ClientEvent::PathChanged { .. })),
        "{late:?}"
    );

    // Kicked: `Disconnected` comes out last and the stream reports its end.
    server_runtime
        .block_on(async { server.disconnect(b_id, "round over") })
        .unwrap();
    let deadline = Instant::now() + WAIT;
    let mut tail = Vec::new();
    while !b.is_finished() {
        assert!(
            Instant::now() < deadline,
            "b never saw Disconnected: {tail:?}"
        );
        b.drain_events(&mut tail);
        std::thread::sleep(FRAME);
    }
    assert!(
        matches!(tail.last(), Some(ClientEvent::Disconnected { .. })),
        "{tail:?}"
    );
    assert_eq!(b.drain_events(&mut tail), 0, "nothing after Disconnected");
    drop(b);
    assert_eq!(runtime_threads(), baseline + 1, "b's thread ended with it");

    // Closed: the server hears a close, not silence, and the thread has ended on return.
    a.close();
    assert_eq!(runtime_threads(), baseline, "a's thread ended with it");
    let reason = wait_server_event(&server_events, |event| match event {
        ServerEvent::ClientDisconnected { host, reason } if *host == a_id => Some(reason.clone()),
        _ => None,
    });
    assert!(
        matches!(reason, DisconnectReason::ClientClosed { .. }),
        "{reason:?}"
    );
    drop(server);
    drop(server_runtime);
}

#[test]
fn dropping_a_connected_client_closes_it_and_ends_its_thread() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (_server_runtime, server, server_events) = server_on_its_own_runtime();
    let baseline = runtime_threads();
    let client = BlockingClient::connect(client_config(&server, "c")).expect("connects");
    let id = client.host_id();
    assert_eq!(runtime_threads(), baseline + 1);
    drop(client);
    assert_eq!(runtime_threads(), baseline);
    let reason = wait_server_event(&server_events, |event| match event {
        ServerEvent::ClientDisconnected { host, reason } if *host == id => Some(reason.clone()),
        _ => None,
    });
    assert!(
        matches!(reason, DisconnectReason::ClientClosed { .. }),
        "{reason:?}"
    );
}

#[test]
fn a_failed_connect_returns_its_error_and_leaves_no_thread() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let baseline = runtime_threads();
    // A port with nothing behind it: bound, then released.
    let addr = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut config = peergroup_client::ClientConfig::new(
        addr,
        peergroup_client::ServerTrust::Fingerprint(peergroup_client::Fingerprint([7; 32])),
    );
    config.timeouts.connect = Duration::from_millis(500);
    let error = BlockingClient::connect(config).expect_err("nothing is listening");
    assert!(matches!(error, ConnectError::Unreachable { .. }), "{error}");
    assert_eq!(runtime_threads(), baseline);
}

//! Group membership over real QUIC on loopback: every join, leave, destroy and disconnect
//! path, with the exact events each party gets, and the join-ack results.

mod common;

use bytes::Bytes;
use common::*;
use peergroup_client::ClientEvent;
use peergroup_server::{
    DisconnectReason, GroupError, GroupOptions, JoinAckError, JoinOutcome, ServerEvent,
};
use std::time::Duration;

fn joined(
    group: peergroup_server::GroupId,
    member: peergroup_server::HostId,
    count: u32,
    msg: &'static str,
) -> impl Fn(&ClientEvent) -> bool {
    move |e| {
        matches!(e, ClientEvent::MemberJoined { group: g, member: m, member_count, join_message, .. }
            if *g == group && *m == member && *member_count == count && join_message == &Bytes::from_static(msg.as_bytes()))
    }
}

fn left_event(
    group: peergroup_server::GroupId,
    member: peergroup_server::HostId,
    count: u32,
) -> ClientEvent {
    ClientEvent::MemberLeft {
        group,
        member,
        member_count: count,
        member_data: Bytes::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_notifies_every_member_and_completes_when_all_have_acked() {
    let (server, mut server_events) = start_server().await;
    let (a, mut a_events, a_id) = connect(&server, "a").await;
    let (_b, mut b_events, b_id) = connect(&server, "b").await;

    let group = server
        .create_group(&[a_id], GroupOptions::default(), "first")
        .unwrap();
    let first = next_client_events(&mut a_events, 1).await;
    assert!(joined(group, a_id, 1, "first")(&first[0]), "{first:?}");
    join_ack(&mut server_events, group, a_id)
        .await
        .expect("a's join completes");

    assert_eq!(
        server.join_group(group, b_id, "second"),
        Ok(JoinOutcome::Joined)
    );
    // A hears of B; B hears of A and then of itself, last.
    let to_a = next_client_events(&mut a_events, 1).await;
    assert!(joined(group, b_id, 2, "second")(&to_a[0]), "{to_a:?}");
    let to_b = next_client_events(&mut b_events, 2).await;
    assert!(joined(group, a_id, 2, "second")(&to_b[0]), "{to_b:?}");
    assert!(joined(group, b_id, 2, "second")(&to_b[1]), "{to_b:?}");
    // The server vouches for A's identity to B.
    let ClientEvent::MemberJoined {
        peer: Some(info), ..
    } = &to_b[0]
    else {
        panic!("B learns A's identity")
    };
    assert_eq!(info.identity, a.identity());

    let result = join_ack(&mut server_events, group, b_id).await;
    assert_eq!(result, Ok(()));
    assert_eq!(server.group_members(group).unwrap(), vec![a_id, b_id]);
    assert_eq!(a.group_members(group), Some(vec![a_id, b_id]));

    assert_eq!(
        server.join_group(group, b_id, "again"),
        Ok(JoinOutcome::AlreadyMember)
    );
    assert_quiet(&mut b_events, Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leave_tells_everyone_and_the_leaver_hears_each_member_then_itself() {
    let (server, _server_events) = start_server().await;
    let (_a, mut a_events, a_id) = connect(&server, "a").await;
    let (b, mut b_events, b_id) = connect(&server, "b").await;
    let (_c, mut c_events, c_id) = connect(&server, "c").await;
    let group = server
        .create_group(&[a_id, b_id, c_id], GroupOptions::default(), "")
        .unwrap();
    // Drain the joins: A hears 3 (itself, B, C), B hears 3, C hears 3.
    next_client_events(&mut a_events, 3).await;
    next_client_events(&mut b_events, 3).await;
    next_client_events(&mut c_events, 3).await;

    server.leave_group(group, b_id).unwrap();
    assert_eq!(
        next_client_events(&mut a_events, 1).await,
        vec![left_event(group, b_id, 2)]
    );
    assert_eq!(
        next_client_events(&mut c_events, 1).await,
        vec![left_event(group, b_id, 2)]
    );
    assert_eq!(
        next_client_events(&mut b_events, 3).await,
        vec![
            left_event(group, a_id, 2),
            left_event(group, c_id, 2),
            left_event(group, b_id, 2)
        ]
    );
    assert!(b.groups().is_empty());
    assert_eq!(
        server.leave_group(group, b_id),
        Err(GroupError::NotMember { group, host: b_id })
    );
    assert_eq!(server.groups_of(b_id), Ok(vec![]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_removes_every_member_then_reports_group_removed() {
    let (server, mut server_events) = start_server().await;
    let (_a, mut a_events, a_id) = connect(&server, "a").await;
    let (_b, mut b_events, b_id) = connect(&server, "b").await;
    let group = server
        .create_group(&[a_id, b_id], GroupOptions::default(), "")
        .unwrap();
    next_client_events(&mut a_events, 2).await;
    next_client_events(&mut b_events, 2).await;
    // Let both joins complete first, so only GroupRemoved is left to see.
    for _ in 0..2 {
        wait_server(&mut server_events, |e| {
            matches!(e, ServerEvent::JoinAckComplete { result: Ok(()), .. }).then_some(())
        })
        .await;
    }

    server.destroy_group(group).unwrap();
    // Members leave in id order: A first (A hears B, then itself), then B (alone).
    assert_eq!(
        next_client_events(&mut a_events, 2).await,
        vec![left_event(group, b_id, 1), left_event(group, a_id, 1)]
    );
    assert_eq!(
        next_client_events(&mut b_events, 2).await,
        vec![left_event(group, a_id, 1), left_event(group, b_id, 0)]
    );
    let removed = wait_server(&mut server_events, |e| match e {
        ServerEvent::GroupRemoved { group } => Some(*group),
        _ => None,
    })
    .await;
    assert_eq!(removed, group);
    assert!(server.groups().is_empty());
    assert_eq!(
        server.destroy_group(group),
        Err(GroupError::UnknownGroup(group))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_client_leaves_its_groups_and_the_others_are_told() {
    let (server, mut server_events) = start_server().await;
    let (_a, mut a_events, a_id) = connect(&server, "a").await;
    let (b, mut b_events, b_id) = connect(&server, "b").await;
    let g1 = server
        .create_group(&[a_id, b_id], GroupOptions::default(), "")
        .unwrap();
    let g2 = server
        .create_group(&[a_id, b_id], GroupOptions::default(), "")
        .unwrap();
    next_client_events(&mut a_events, 4).await;
    next_client_events(&mut b_events, 4).await;

    b.close().await;
    let mut seen = next_client_events(&mut a_events, 2).await;
    seen.sort_by_key(|e| format!("{e:?}"));
    let mut expected = vec![left_event(g1, b_id, 1), left_event(g2, b_id, 1)];
    expected.sort_by_key(|e| format!("{e:?}"));
    assert_eq!(seen, expected);
    let reason = wait_server(&mut server_events, |e| match e {
        ServerEvent::ClientDisconnected { host, reason } if *host == b_id => Some(reason.clone()),
        _ => None,
    })
    .await;
    assert_eq!(
        reason,
        DisconnectReason::ClientClosed {
            reason: "client closed".into()
        }
    );
    assert!(matches!(
        wait_client(&mut b_events, |e| match e {
            ClientEvent::Disconnected { reason } => Some(reason.clone()),
            _ => None,
        })
        .await,
        peergroup_client::DisconnectReason::Closed
    ));
    assert_eq!(server.group_members(g1).unwrap(), vec![a_id]);
    assert_eq!(server.stats().clients, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_silent_is_dropped_within_the_idle_timeout() {
    let (server, mut server_events) = start_server_with(
        |c| {
            c.timeouts.idle = Duration::from_secs(1);
            // A lost client is kept this long for a resume first (tests/resume.rs).
            c.resume.window = Duration::from_secs(1);
        },
        Default::default(),
    )
    .await;
    // QUIC uses the smaller idle timeout of the two sides, so A must ping inside 1 s.
    let (_a, mut a_events, a_id) = connect_with(&server, "a", |c| {
        c.timeouts.keepalive = Duration::from_millis(250)
    })
    .await;

    // A raw client on its own runtime, which we then stop without a close: it vanishes.
    let silent = {
        let server = server.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            let raw = runtime.block_on(async {
                let mut raw = raw_connect(&server).await;
                raw.send_hello().await;
                let mut prefix = [0u8; 4];
                raw.recv.read_exact(&mut prefix).await.unwrap();
                raw
            });
            std::mem::forget(raw); // no close frame is ever sent
            runtime.shutdown_background();
        })
    };
    silent.join().unwrap();
    let silent_id = wait_server(&mut server_events, |e| match e {
        ServerEvent::ClientConnected { host, .. } if *host != a_id => Some(*host),
        _ => None,
    })
    .await;
    let group = server
        .create_group(&[a_id, silent_id], GroupOptions::default(), "")
        .unwrap();
    next_client_events(&mut a_events, 2).await;

    let started = std::time::Instant::now();
    let offline = wait_server(&mut server_events, |e| match e {
        ServerEvent::ClientOffline { host, reason } if *host == silent_id => Some(reason.clone()),
        _ => None,
    })
    .await;
    assert_eq!(offline, DisconnectReason::TimedOut);
    let reason = wait_server(&mut server_events, |e| match e {
        ServerEvent::ClientDisconnected { host, reason } if *host == silent_id => {
            Some(reason.clone())
        }
        _ => None,
    })
    .await;
    assert_eq!(reason, DisconnectReason::TimedOut);
    // The idle timeout, then the resume window.
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        next_client_events(&mut a_events, 1).await,
        vec![left_event(group, silent_id, 1)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_undone_before_its_acks_reports_why() {
    let (server, mut server_events) = start_server().await;
    // Raw clients that never ack: every join below is still waiting for its acks when
    // the operation that undoes it comes, however the machine schedules the test. (Real
    // clients acked a join before the next call on a loaded CI machine.)
    let (_a, a_id) = raw_login(&server, &mut server_events, &[]).await;
    let (_b, b_id) = raw_login(&server, &mut server_events, &[a_id]).await;

    let g1 = server
        .create_group(&[a_id], GroupOptions::default(), "")
        .unwrap();
    server.leave_group(g1, a_id).unwrap();
    assert_eq!(
        join_ack(&mut server_events, g1, a_id).await,
        Err(JoinAckError::MemberLeft)
    );

    let g2 = server
        .create_group(&[a_id, b_id], GroupOptions::default(), "")
        .unwrap();
    server.destroy_group(g2).unwrap();
    assert_eq!(
        join_ack(&mut server_events, g2, b_id).await,
        Err(JoinAckError::GroupDestroyed)
    );

    let g3 = server
        .create_group(&[b_id], GroupOptions::default(), "")
        .unwrap();
    server.disconnect(b_id, "bye").unwrap();
    assert_eq!(
        join_ack(&mut server_events, g3, b_id).await,
        Err(JoinAckError::Disconnected)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_that_never_come_time_out_after_the_configured_time() {
    let (server, mut server_events) = start_server_with(
        |c| c.timeouts.ack = Duration::from_millis(300),
        Default::default(),
    )
    .await;
    // A raw client logs in but never acks anything.
    let (raw, silent) = raw_login(&server, &mut server_events, &[]).await;
    let started = std::time::Instant::now();
    let group = server
        .create_group(&[silent], GroupOptions::default(), "")
        .unwrap();
    let result = wait_server(&mut server_events, |e| match e {
        ServerEvent::JoinAckComplete {
            group: g, result, ..
        } if *g == group => Some(*result),
        _ => None,
    })
    .await;
    assert_eq!(result, Err(JoinAckError::Timeout));
    assert!(started.elapsed() >= Duration::from_millis(300));
    drop(raw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_without_allow_empty_goes_when_its_last_member_leaves() {
    let (server, mut server_events) = start_server().await;
    let (_a, _a_events, a_id) = connect(&server, "a").await;
    let options = GroupOptions {
        allow_empty: false,
        ..GroupOptions::default()
    };
    assert_eq!(
        server.create_group(&[], options, ""),
        Err(GroupError::EmptyNotAllowed)
    );
    let group = server.create_group(&[a_id], options, "").unwrap();
    server.leave_group(group, a_id).unwrap();
    let removed = wait_server(&mut server_events, |e| match e {
        ServerEvent::GroupRemoved { group } => Some(*group),
        _ => None,
    })
    .await;
    assert_eq!(removed, group);
    let empty_ok = server
        .create_group(&[], GroupOptions::default(), "")
        .unwrap();
    assert_eq!(server.group_members(empty_ok), Ok(vec![]));
}

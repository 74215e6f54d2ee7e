//! The registry's client inputs, [`Registry::handle_frame`] and
//! [`Registry::handle_datagram`]: each frame kind reaches its handler (seen in the actions,
//! events and statistics it causes), the frames a client may not send are refused with
//! their typed violation and change nothing, and a clock request is answered from the
//! registry's epoch.

use super::*;
use peergroup_protocol::{ClientDatagram, ClientToServer as C, CloseCode, Hello};

/// Two hosts sharing a group (a pair on the relay), with every notice acked.
fn two_in_a_group(w: &mut World) -> (HostId, HostId, GroupId, PairId) {
    let (a, b) = (w.connect(1), w.connect(2));
    let group = w.group(&[a, b]);
    let pair = pair_of(&w.drain(), a, b);
    ack_all(w, &[a, b]);
    w.drain();
    (a, b, group, pair)
}

#[test]
fn an_ack_frame_completes_the_join_it_covers() {
    let mut w = World::new();
    let (a, b) = (w.connect(1), w.connect(2));
    let group = w.group(&[a, b]);
    w.drain();
    for host in [a, b] {
        let notices = w.notices[&host];
        w.registry
            .handle_frame(host, C::Ack { notices }, w.now)
            .unwrap();
    }
    let events = World::events(&w.drain());
    for member in [a, b] {
        assert!(
            events.contains(&ServerEvent::JoinAckComplete {
                group,
                member,
                result: Ok(())
            }),
            "{member}'s join completes once both acked: {events:?}"
        );
    }
    assert_eq!(w.registry.pending_acks(), 0);
}

#[test]
fn an_ack_beyond_what_was_sent_is_refused_and_changes_nothing() {
    let mut w = World::new();
    let (a, b) = (w.connect(1), w.connect(2));
    w.group(&[a, b]);
    w.drain();
    let sent = w.notices[&a];
    let pending = w.registry.pending_acks();
    assert_eq!(pending, 2, "both joins wait on both hosts");
    let refused = w
        .registry
        .handle_frame(a, C::Ack { notices: sent + 1 }, w.now)
        .unwrap_err();
    assert_eq!(
        refused,
        ProtocolViolation::AckBeyondSent(AckBeyondSent {
            acked: sent + 1,
            sent
        })
    );
    assert_eq!(refused.close_code(), CloseCode::ProtocolViolation);
    assert_eq!(
        refused.to_string(),
        format!(
            "acknowledged {} membership notices but only {sent} were sent",
            sent + 1
        )
    );
    assert!(w.drain().is_empty(), "a refused ack completes nothing");
    assert_eq!(w.registry.pending_acks(), pending, "no join completed");
    // The acks it owed still count once they come.
    w.ack(a);
    w.ack(b);
    assert_eq!(w.registry.pending_acks(), 0);
}

#[test]
fn a_second_hello_is_refused_and_changes_nothing() {
    let mut w = World::new();
    let a = w.connect(1);
    let hello = C::Hello(Hello {
        version: peergroup_protocol::PROTOCOL_VERSION,
        login: Bytes::from_static(b"again"),
    });
    let refused = w.registry.handle_frame(a, hello, w.now).unwrap_err();
    assert_eq!(refused, ProtocolViolation::SecondHello);
    assert_eq!(refused.close_code(), CloseCode::ProtocolViolation);
    assert_eq!(refused.to_string(), "a second hello");
    assert!(w.drain().is_empty());
    assert!(w.registry.is_connected(a));
}

#[test]
fn a_relay_frame_is_delivered_under_the_relay_rule() {
    let mut w = World::new();
    let (a, b, group, pair) = two_in_a_group(&mut w);
    let upload = C::Relay {
        group: Some(group),
        to_server: false,
        lane: Lane::Ordered { channel: 3 },
        priority: Priority::High,
        dests: vec![RelayDest { pair, seq: 1 }].into(),
        payload: Bytes::from_static(b"move"),
    };
    w.registry.handle_frame(a, upload, w.now).unwrap();
    assert_eq!(
        w.drain(),
        vec![Action::SendData {
            to: b,
            message: S::Deliver {
                from: a,
                group: Some(group),
                lane: Lane::Ordered { channel: 3 },
                seq: 1,
                payload: Bytes::from_static(b"move"),
            },
            priority: Priority::High,
            from: a,
            latest: None,
        }]
    );
    assert_eq!(w.registry.counters().relayed, 1);
}

#[test]
fn a_datagram_is_relayed_under_the_relay_rule() {
    let mut w = World::new();
    let (a, b, group, pair) = two_in_a_group(&mut w);
    let outsider = w.connect(3);
    let datagram = || ClientDatagram::Relay {
        group: Some(group),
        to_server: false,
        lane: DatagramLane::Sequenced { channel: 1 },
        server_seq: 0,
        dests: vec![RelayDest { pair, seq: 7 }].into(),
        payload: Bytes::from_static(b"pos"),
    };
    w.registry.handle_datagram(a, datagram(), w.now);
    assert_eq!(
        w.drain(),
        vec![Action::Datagram {
            to: vec![(b, pair, 7)],
            sender: a,
            message: ServerDatagram::Deliver {
                from: a,
                group: Some(group),
                lane: DatagramLane::Sequenced { channel: 1 },
                seq: 0,
                payload: Bytes::from_static(b"pos"),
            },
        }]
    );
    // A host outside the pair cannot use it, and is told.
    w.registry.handle_datagram(outsider, datagram(), w.now);
    let to_outsider = World::frames_to(&w.drain(), outsider);
    assert!(
        matches!(
            to_outsider.as_slice(),
            [S::Refused {
                reason: RefuseReason::UnknownPair,
                ..
            }]
        ),
        "{to_outsider:?}"
    );
}

#[test]
fn a_clock_request_is_answered_at_once_with_the_time_since_the_epoch() {
    let mut w = World::new();
    w.registry = Registry::new(RegistryConfig::default(), w.now);
    let a = w.connect(1);
    let at = w.now + Duration::from_micros(1_500_250);
    w.registry
        .handle_frame(a, C::TimeRequest { token: 42 }, at)
        .unwrap();
    // A `Send` is carried out as a notice: ahead of every message queued for the host.
    assert_eq!(
        w.drain(),
        vec![Action::Send {
            to: a,
            message: S::Time {
                token: 42,
                server_time_us: 1_500_250,
            },
        }]
    );
    // Nobody to answer once the host is gone.
    w.registry.handle_disconnect(a, at);
    w.drain();
    w.registry
        .handle_frame(a, C::TimeRequest { token: 43 }, at)
        .unwrap();
    assert!(w.drain().is_empty());
}

#[test]
fn host_candidates_are_kept_and_unusable_ones_dropped() {
    let mut w = World::new();
    let a = w.connect_at(1, "203.0.113.9:50001");
    let b = w.connect_at(2, "203.0.113.9:50002");
    let addrs = vec![
        "192.168.1.10:6000".parse().unwrap(),
        "192.168.1.10:0".parse().unwrap(),
    ];
    w.registry
        .handle_frame(a, C::HostCandidates { addrs }, w.now)
        .unwrap();
    assert_eq!(w.registry.counters().host_candidates_dropped, 1);
    w.group(&[a, b]);
    let Some(Action::Punch {
        candidates_of_controlling,
        ..
    }) = punches(&w.drain()).pop()
    else {
        panic!("a punch order")
    };
    assert_eq!(
        candidates_of_controlling,
        vec![
            "203.0.113.9:50001".parse().unwrap(),
            "192.168.1.10:6000".parse().unwrap()
        ],
        "peers behind the same address probe the kept candidate"
    );
}

#[test]
fn a_want_direct_frame_starts_the_punch_in_just_in_time_mode() {
    let mut w = World::with_punch(PunchConfig {
        start: PunchStart::OnFirstMessage,
        ..PunchConfig::default()
    });
    let (a, b, _, pair) = two_in_a_group(&mut w);
    w.registry
        .handle_frame(a, C::WantDirect { pair }, w.now)
        .unwrap();
    let orders = punches(&w.drain());
    assert!(
        matches!(
            orders.as_slice(),
            [Action::Punch { pair: p, attempt: 1, controlling, .. }]
                if *p == pair && *controlling == a.min(b)
        ),
        "{orders:?}"
    );
}

#[test]
fn punch_and_path_reports_reach_the_referee() {
    let mut w = World::new();
    let (a, b, _, pair) = two_in_a_group(&mut w);
    let punched = PunchOutcome::Direct { rtt_us: 900 };
    for host in [a, b] {
        let report = C::PunchReport {
            pair,
            attempt: 1,
            outcome: punched,
        };
        w.registry.handle_frame(host, report, w.now).unwrap();
    }
    assert_eq!(w.registry.punch_stats(a).unwrap().direct, 1);
    assert_eq!(w.registry.punch_stats(b).unwrap().direct, 1);
    let path = |host| {
        let report = C::PathReport {
            pair,
            path: PairPath::Direct,
            reason: PathReason::Punched,
        };
        (host, report)
    };
    let (host, report) = path(a);
    w.registry.handle_frame(host, report, w.now).unwrap();
    assert!(
        World::events(&w.drain()).is_empty(),
        "one side is not a path"
    );
    let (host, report) = path(b);
    w.registry.handle_frame(host, report, w.now).unwrap();
    assert_eq!(
        World::events(&w.drain()),
        vec![ServerEvent::PairPathChanged {
            a: a.min(b),
            b: a.max(b),
            path: PairPath::Direct,
            reason: PathReason::Punched,
        }]
    );
    assert_eq!(w.registry.counters().punch_successes, 1);
}

#[test]
fn a_link_report_frame_shows_in_pair_stats_in_its_units() {
    let mut w = World::new();
    let (a, b, _, pair) = two_in_a_group(&mut w);
    let report = C::LinkReport {
        pair,
        rtt_us: Some(30_000),
        last_rtt_us: Some(35_500),
        loss_permille: Some(250),
    };
    // The pair's statistics show the lower id's reports.
    w.registry.handle_frame(a.min(b), report, w.now).unwrap();
    let stats = w.registry.pair_stats(a, b).unwrap();
    assert_eq!(stats.recent_rtt, Some(Duration::from_micros(30_000)));
    assert_eq!(stats.last_rtt, Some(Duration::from_micros(35_500)));
    assert_eq!(stats.loss, Some(0.25));
}

//! The registry's offline state (`registry/resume.rs`): a host whose connection was lost
//! stays, with its groups and pairs, and its peers see nothing until its window ends; a
//! resume needs the host's current token and identity, and rotates the token; the frames
//! read from a host are counted and confirmed.

use super::*;
use peergroup_protocol::{ClientToServer as C, ResumeToken};

const WINDOW: Duration = Duration::from_secs(30);

fn token(n: u8) -> ResumeToken {
    ResumeToken([n; 32])
}

fn addr(n: u8) -> SocketAddr {
    SocketAddr::from(([198, 18, 1, n], 50_000))
}

/// Two hosts in a group, every notice acked, each with a token (a's is `token(1)`).
fn two_in_a_group(w: &mut World) -> (HostId, HostId, GroupId, PairId) {
    let (a, b) = (w.connect(1), w.connect(2));
    w.registry.set_resume_token(a, token(1));
    w.registry.set_resume_token(b, token(2));
    let group = w.group(&[a, b]);
    let pair = pair_of(&w.drain(), a, b);
    ack_all(w, &[a, b]);
    w.drain();
    (a, b, group, pair)
}

#[test]
fn an_offline_host_keeps_everything_and_its_peers_see_nothing_until_the_window_ends() {
    let mut w = World::new();
    let (a, b, group, pair) = two_in_a_group(&mut w);
    assert!(w.registry.handle_offline(a, w.now));
    assert!(w.registry.is_offline(a));
    assert_eq!(w.registry.offline_until(a), Some(w.now + WINDOW));
    assert!(w.registry.poll_timeout() <= Some(w.now + WINDOW));
    assert!(w.drain().is_empty(), "nobody is told anything");

    // Just before the end nothing happens; the host is still a member, the pair lives.
    w.advance(WINDOW - Duration::from_millis(1));
    assert!(w.drain().is_empty());
    assert!(w.registry.is_connected(a));
    assert_eq!(w.registry.pair_between(a, b), Some((pair, 1)));
    assert_eq!(w.registry.host_summary(a).unwrap().groups, vec![group]);

    // At the end the driver is told to remove it, and no resume brings it back.
    w.advance(Duration::from_millis(1));
    assert_eq!(w.drain(), vec![Action::ResumeWindowEnded { host: a }]);
    assert!(!w.registry.is_offline(a));
    assert_eq!(
        w.registry
            .handle_resume(a, identity(1), &token(1), token(9), addr(1), w.now),
        Err(ResumeRefusal::Ended)
    );
    // Removed as a disconnect: b gets an ordinary MemberLeft, then the pair ends.
    w.registry.handle_disconnect(a, w.now);
    let actions = w.drain();
    assert_eq!(
        World::frames_to(&actions, b),
        vec![left(group, a, 1), S::PeerDown { peer: a, pair }]
    );
}

#[test]
fn a_resume_needs_the_current_token_and_identity_and_rotates_the_token() {
    let mut w = World::new();
    let (a, b, group, pair) = two_in_a_group(&mut w);
    assert!(w.registry.handle_offline(a, w.now));
    w.advance(Duration::from_secs(5));

    // Refusals change nothing: still offline, still the same token.
    let refusals = [
        (b, identity(1), token(1), ResumeRefusal::WrongIdentity),
        (a, identity(2), token(1), ResumeRefusal::WrongIdentity),
        (a, identity(1), token(2), ResumeRefusal::BadToken),
        (
            HostId::from_raw(12_345),
            identity(1),
            token(1),
            ResumeRefusal::UnknownHost,
        ),
    ];
    for (host, who, presented, refusal) in refusals {
        assert_eq!(
            w.registry
                .handle_resume(host, who, &presented, token(9), addr(1), w.now),
            Err(refusal)
        );
        assert!(w.registry.is_offline(a));
    }

    let resumed = w
        .registry
        .handle_resume(a, identity(1), &token(1), token(3), addr(7), w.now)
        .unwrap();
    assert_eq!(
        resumed,
        Resumed {
            uploads_read: 0,
            was_offline: true
        }
    );
    assert!(!w.registry.is_offline(a));
    w.advance(WINDOW);
    // The pair's punch, under way when A went away, is ordered again (see
    // `a_punch_that_failed_while_a_host_was_away_is_retried_soon_after_it_resumes`);
    // nothing else happens.
    let actions = w.drain();
    assert!(
        actions.iter().all(|a| matches!(a, Action::Punch { .. })),
        "the window's timer is gone; nobody was told anything: {actions:?}"
    );
    assert_eq!(w.registry.pair_between(a, b), Some((pair, 1)));
    assert_eq!(w.registry.host_summary(a).unwrap().groups, vec![group]);

    // Once the client has sent a frame it has the answer and the new token: the spent
    // one is refused, the new one works (also while the host is online: a half-open old
    // connection is replaced).
    w.registry
        .handle_frame(a, C::TimeRequest { token: 1 }, w.now)
        .unwrap();
    assert_eq!(
        w.registry
            .handle_resume(a, identity(1), &token(1), token(4), addr(7), w.now),
        Err(ResumeRefusal::BadToken)
    );
    let again = w
        .registry
        .handle_resume(a, identity(1), &token(3), token(4), addr(7), w.now)
        .unwrap();
    assert!(!again.was_offline);
}

#[test]
fn with_a_zero_window_a_lost_host_is_not_kept() {
    let mut w = World::new();
    w.registry = Registry::new(
        RegistryConfig {
            resume_window: Duration::ZERO,
            ..RegistryConfig::default()
        },
        w.now,
    );
    let a = w.connect(1);
    w.registry.set_resume_token(a, token(1));
    assert!(!w.registry.handle_offline(a, w.now));
    assert!(!w.registry.is_offline(a));
    assert_eq!(
        w.registry
            .handle_resume(a, identity(1), &token(1), token(2), addr(1), w.now),
        Err(ResumeRefusal::Off)
    );
    // Nor is one without a token, or one whose resume was ended.
    let mut w = World::new();
    let a = w.connect(1);
    assert!(!w.registry.handle_offline(a, w.now));
    w.registry.set_resume_token(a, token(1));
    w.registry.end_resume(a);
    assert!(!w.registry.handle_offline(a, w.now));
}

#[test]
fn ending_an_offline_hosts_resume_cancels_its_window() {
    let mut w = World::new();
    let (a, _, _, _) = two_in_a_group(&mut w);
    assert!(w.registry.handle_offline(a, w.now));
    w.registry.end_resume(a);
    w.advance(WINDOW);
    assert!(
        !w.drain().contains(&Action::ResumeWindowEnded { host: a }),
        "the driver removes it already"
    );
    assert_eq!(
        w.registry
            .handle_resume(a, identity(1), &token(1), token(2), addr(1), w.now),
        Err(ResumeRefusal::Ended)
    );
}

#[test]
fn frames_read_from_a_host_are_confirmed_on_a_timer_at_every_256_and_on_resume() {
    let mut w = World::new();
    let (a, _, group, pair) = two_in_a_group(&mut w);
    let relay = |seq| C::Relay {
        group: Some(group),
        to_server: false,
        lane: Lane::Ordered { channel: 0 },
        priority: Priority::Medium,
        dests: vec![RelayDest { pair, seq }].into(),
        payload: Bytes::from_static(b"m"),
    };
    let received = |actions: &[Action]| -> Vec<u64> {
        World::frames_to(actions, a)
            .into_iter()
            .filter_map(|frame| match frame {
                S::Received { frames } => Some(frames),
                _ => None,
            })
            .collect()
    };
    w.registry.handle_frame(a, relay(1), w.now).unwrap();
    assert!(received(&w.drain()).is_empty(), "not at once");
    w.advance(peergroup_protocol::resume::CONFIRM_DELAY);
    assert_eq!(received(&w.drain()), vec![1]);

    for seq in 2..=257 {
        w.registry.handle_frame(a, relay(seq), w.now).unwrap();
    }
    assert_eq!(received(&w.drain()), vec![257], "at once after 256 more");
    w.advance(peergroup_protocol::resume::CONFIRM_DELAY);
    assert!(received(&w.drain()).is_empty(), "nothing new to confirm");

    // Offline, the count is told on the resume instead.
    w.registry.handle_frame(a, relay(258), w.now).unwrap();
    assert!(w.registry.handle_offline(a, w.now));
    w.advance(peergroup_protocol::resume::CONFIRM_DELAY);
    assert!(received(&w.drain()).is_empty());
    let resumed = w
        .registry
        .handle_resume(a, identity(1), &token(1), token(2), addr(1), w.now)
        .unwrap();
    assert_eq!(resumed.uploads_read, 258);
}

#[test]
fn a_resume_whose_answer_was_lost_can_be_made_again_with_the_same_token() {
    let mut w = World::new();
    let (a, _b, group, pair) = two_in_a_group(&mut w);
    assert!(w.registry.handle_offline(a, w.now));

    // The first resume is accepted, but its connection dies before the client reads the
    // answer (and `token(3)`): the client still holds `token(1)` and tries again.
    w.registry
        .handle_resume(a, identity(1), &token(1), token(3), addr(7), w.now)
        .unwrap();
    assert!(w.registry.handle_offline(a, w.now));
    let again = w
        .registry
        .handle_resume(a, identity(1), &token(1), token(4), addr(8), w.now)
        .expect("the token whose resume lost its answer still works");
    assert!(again.was_offline);
    // Never another identity's, though.
    assert_eq!(
        w.registry
            .handle_resume(a, identity(2), &token(1), token(5), addr(8), w.now),
        Err(ResumeRefusal::WrongIdentity)
    );

    // This time the answer arrives and the client sends: every older token is spent, and
    // the one it was just given (`token(4)`) is the only one that works.
    w.registry
        .handle_frame(a, C::TimeRequest { token: 1 }, w.now)
        .unwrap();
    for spent in [token(1), token(3)] {
        assert_eq!(
            w.registry
                .handle_resume(a, identity(1), &spent, token(6), addr(8), w.now),
            Err(ResumeRefusal::BadToken)
        );
    }
    w.registry
        .handle_resume(a, identity(1), &token(4), token(6), addr(8), w.now)
        .unwrap();

    // A relayed message shows it as well as any other frame: after it, the token that
    // resume spent (`token(4)`) is refused too.
    let upload = C::Relay {
        group: Some(group),
        to_server: false,
        lane: Lane::Ordered { channel: 0 },
        priority: Priority::Medium,
        dests: vec![RelayDest { pair, seq: 1 }].into(),
        payload: Bytes::from_static(b"m"),
    };
    w.registry.handle_frame(a, upload, w.now).unwrap();
    assert_eq!(
        w.registry
            .handle_resume(a, identity(1), &token(4), token(7), addr(8), w.now),
        Err(ResumeRefusal::BadToken)
    );
}

#[test]
fn a_punch_that_failed_while_a_host_was_away_is_retried_soon_after_it_resumes() {
    let mut w = World::new();
    let (a, _b, _group, pair) = two_in_a_group(&mut w);
    // The pair's first punch fails while A's connection is down (the server does not
    // know yet): a real failure would wait 60 s for its retry.
    w.registry
        .handle_punch_report(a, pair, 1, PunchOutcome::NoResponse, w.now);
    w.advance(Duration::from_secs(8));
    assert!(w.registry.handle_offline(a, w.now));
    w.advance(Duration::from_secs(4));
    w.registry
        .handle_resume(a, identity(1), &token(1), token(3), addr(7), w.now)
        .unwrap();
    // Retried as after a lost direct path (5 s), not at 60 s.
    w.advance(Duration::from_secs(4));
    assert!(punches(&w.drain()).is_empty(), "not before the wait");
    w.advance(Duration::from_secs(1));
    let retry = punches(&w.drain());
    assert!(
        matches!(retry.as_slice(), [Action::Punch { attempt: 2, .. }]),
        "{retry:?}"
    );
    // And not again at the old time.
    w.advance(Duration::from_secs(60));
    assert!(punches(&w.drain()).is_empty());
}

#[test]
fn a_pair_is_not_ordered_to_punch_while_a_host_is_offline_and_is_once_it_resumes() {
    let mut w = World::new();
    let (a, b, _group, pair) = two_in_a_group(&mut w);
    for host in [a, b] {
        w.registry
            .handle_path_report(host, pair, PairPath::Direct, PathReason::Punched, w.now);
    }
    // The direct path dies with A's uplink: B falls back, and the server plans a punch
    // 5 s later; A is known to be offline by then.
    w.registry
        .handle_path_report(b, pair, PairPath::Relay, PathReason::DirectTimedOut, w.now);
    w.advance(Duration::from_secs(1));
    assert!(w.registry.handle_offline(a, w.now));
    w.advance(Duration::from_secs(10));
    assert!(
        punches(&w.drain()).is_empty(),
        "no order for a host that cannot take it"
    );
    w.registry
        .handle_resume(a, identity(1), &token(1), token(3), addr(7), w.now)
        .unwrap();
    w.advance(Duration::from_secs(5));
    let order = punches(&w.drain());
    assert!(
        matches!(order.as_slice(), [Action::Punch { .. }]),
        "{order:?}"
    );
}

//! The direct path's timers and flow control, driven as the driver drives them: only
//! through `handle_*(.., now)`, `poll_timeout` and the `poll_*` / `take_*` queries, with
//! the clock injected. No sockets, no tokio.

use super::*;
use crate::session::direct_reliability::{ACK_DELAY, DATING_DELAY};

/// The acks among `uploads`.
fn acks(uploads: &[Upload]) -> Vec<u64> {
    uploads
        .iter()
        .filter_map(|u| match u {
            Upload::PeerControl {
                frame: PeerToPeer::Ack { received },
                ..
            } => Some(*received),
            _ => None,
        })
        .collect()
}

/// Runs `s`'s timer as the driver does, from deadline to deadline, while the next one is
/// before `until`; returns the runs' times and what each produced.
fn run_timer_before(s: &mut Session, until: Instant) -> Vec<(Instant, Vec<Upload>)> {
    let mut runs = Vec::new();
    while let Some(at) = s.poll_timeout().filter(|&at| at < until) {
        s.handle_timeout(at);
        runs.push((at, uploads(s)));
        assert!(
            s.poll_timeout().is_none_or(|next| next > at),
            "handle_timeout left work due"
        );
    }
    runs
}

#[test]
fn an_ack_is_due_20_ms_after_the_first_unacked_direct_frame_and_poll_timeout_says_when() {
    let t0 = Instant::now();
    let (mut a, mut b) = two_direct_sessions(t0);
    run_timer_before(&mut b, t0 + ms(1));
    b.take_timeout_moved();
    let arrived = t0 + ms(3);
    for t in ["one", "two"] {
        let frame = only(send(&mut a, PEER, t, Delivery::ReliableOrdered));
        carry(ME, frame, &mut b, arrived).unwrap();
    }
    assert!(
        uploads(&mut b).is_empty(),
        "two frames are not worth an ack at once"
    );
    assert!(
        b.take_timeout_moved(),
        "the ack deadline is new: the driver's timer must look again"
    );
    let third = only(send(&mut a, PEER, "three", Delivery::ReliableOrdered));
    carry(ME, third, &mut b, arrived + ms(5)).unwrap();
    assert!(
        !b.take_timeout_moved(),
        "one deadline serves every frame until the ack goes"
    );

    let due = arrived + ACK_DELAY;
    let before = run_timer_before(&mut b, due);
    assert!(
        before.iter().all(|(_, produced)| acks(produced).is_empty()),
        "no ack before it is due: {before:?}"
    );
    assert_eq!(
        b.poll_timeout(),
        Some(due),
        "the ack's deadline is the next"
    );
    b.handle_timeout(due);
    assert_eq!(
        acks(&uploads(&mut b)),
        [3],
        "every frame so far, in one ack"
    );
    assert!(b.poll_timeout().unwrap() > due, "nothing owed any more");

    // The ack reaches the sender, which keeps nothing then.
    assert_eq!(a.peer_stats(PEER, t0).unwrap().unacked, 3);
    fifo_ack(&mut a, PEER, 3).unwrap();
    assert_eq!(a.peer_stats(PEER, t0).unwrap().unacked, 0);
}

#[test]
fn a_direct_message_left_unacked_for_the_ack_timeout_falls_back_to_the_relay_on_the_timer() {
    let t0 = Instant::now();
    let (mut a, _b) = two_direct_sessions(t0);
    let timeout = DirectWindow::default().ack_timeout;
    let sent_by = t0 + ms(700);
    run_timer_before(&mut a, sent_by);
    drain(&mut a);
    a.take_timeout_moved();
    let upload = only(send(&mut a, PEER, "lost", Delivery::ReliableOrdered));
    let Upload::Peer { frame, .. } = upload else {
        panic!("not direct: {upload:?}");
    };
    let PeerToPeer::Data { lane, seq, .. } = frame else {
        panic!("not data: {frame:?}");
    };
    assert!(
        a.take_timeout_moved(),
        "a new unacked message brings a deadline: the driver's timer must look again"
    );
    // The timer's next run dates the message; the driver's timer wakes for it.
    let dated = a.poll_timeout().unwrap();
    assert!(
        dated <= sent_by + DATING_DELAY,
        "dated within 20 ms of its send"
    );
    a.handle_timeout(dated);
    drain(&mut a);
    assert!(a.poll_timeout().unwrap() <= dated + timeout);

    // The peer stays silent: nothing happens before the deadline...
    let runs = run_timer_before(&mut a, dated + timeout);
    assert!(a.poll_stalled_link().is_none(), "{runs:?}");
    assert_eq!(a.path_of(PEER), Some(PairPath::Direct));
    // ...and at it the path falls back to the relay, with the message and its number.
    assert_eq!(a.poll_timeout(), Some(dated + timeout));
    a.handle_timeout(dated + timeout);
    assert_eq!(a.poll_stalled_link(), Some(PEER), "the driver closes it");
    assert_eq!(a.path_of(PEER), Some(PairPath::Relay));
    let resent: Vec<(Lane, u64, String)> = uploads(&mut a)
        .iter()
        .filter(|u| matches!(u, Upload::Relay { .. }))
        .map(|u| {
            let (lane, seq) = relay_number(u);
            (lane, seq, upload_text(u))
        })
        .collect();
    assert_eq!(resent, [(lane, seq, "lost".to_owned())]);
    assert!(events(&mut a).iter().any(|e| matches!(
        e,
        ClientEvent::PathChanged {
            path: PairPath::Relay,
            reason: PathReason::DirectTimedOut,
            ..
        }
    )));
    assert_eq!(a.peer_stats(PEER, t0).unwrap().unacked, 0);
}

#[test]
fn a_direct_reader_holding_too_much_is_paused_until_the_relay_fills_the_gap() {
    let now = Instant::now();
    let mut s = Session::new(ME, Bytes::new(), MAX_FRAME_LEN, 1 << 20, NO_PINGS, now);
    for frame in [
        ServerToClient::PeerUp {
            peer: PEER,
            pair: PAIR,
            info: info(2),
        },
        joined(PEER, 2),
        joined(ME, 2),
    ] {
        s.handle_frame(frame, now).unwrap();
    }
    assert!(s.set_direct(PEER, ms(3), now));
    drain(&mut s);
    // Number 1 is on its way through the relay; 2, 3, ... come direct and are held.
    let payload = Bytes::from(vec![1u8; 16 << 10]);
    let mut seq = 1;
    while !s.direct_reading_paused(PEER) {
        assert!(
            s.held_bytes(PEER) <= MAX_HELD_BYTES,
            "read on while holding more than the limit"
        );
        assert!(s.poll_resumed_reader().is_none());
        seq += 1;
        let frame = PeerToPeer::Data {
            group: None,
            memberships: None,
            lane: CH0,
            seq,
            payload: payload.clone(),
        };
        s.handle_peer_frame(PEER, frame, now).unwrap();
    }
    assert!(s.held_bytes(PEER) > MAX_HELD_BYTES);
    assert!(
        events(&mut s).is_empty(),
        "everything waits behind number 1"
    );

    // A relayed message that does not fill the gap changes nothing.
    s.handle_frame(
        ServerToClient::Deliver {
            from: PEER,
            group: None,
            lane: CH1,
            seq: 1,
            payload: text("other channel"),
        },
        now,
    )
    .unwrap();
    s.handle_timeout(now + ms(50));
    assert!(s.direct_reading_paused(PEER));
    assert!(s.poll_resumed_reader().is_none());

    // The relay fills the gap: everything held is delivered and the reader may go on.
    s.handle_frame(
        ServerToClient::Deliver {
            from: PEER,
            group: None,
            lane: CH0,
            seq: 1,
            payload: text("first"),
        },
        now,
    )
    .unwrap();
    assert_eq!(s.held_bytes(PEER), 0);
    assert!(!s.direct_reading_paused(PEER));
    assert_eq!(
        s.poll_resumed_reader(),
        Some(PEER),
        "the driver wakes the reader"
    );
    assert!(s.poll_resumed_reader().is_none(), "once");
    assert_eq!(events(&mut s).len() as u64, seq + 1);

    // A paused reader is let go when its direct path ends too, to see its connection end.
    for n in seq + 2..seq + 2 + (MAX_HELD_BYTES / payload.len()) as u64 + 1 {
        let frame = PeerToPeer::Data {
            group: None,
            memberships: None,
            lane: CH0,
            seq: n,
            payload: payload.clone(),
        };
        s.handle_peer_frame(PEER, frame, now).unwrap();
    }
    assert!(s.direct_reading_paused(PEER));
    s.set_relay(PEER, PathReason::DirectClosed, now);
    assert!(!s.direct_reading_paused(PEER));
    assert_eq!(s.poll_resumed_reader(), Some(PEER));
}

#[test]
fn a_latest_value_replaced_in_the_direct_queue_is_not_waited_on() {
    let t0 = Instant::now();
    let (mut a, mut b) = two_direct_sessions(t0);
    let timeout = DirectWindow::default().ack_timeout;
    let mut queue = DirectQueue::new();
    for t in ["pos1", "pos2"] {
        let sent = send(&mut a, PEER, t, Delivery::Latest { key: 1 });
        queue.push(&mut a, sent);
    }
    assert_eq!(
        a.peer_stats(PEER, t0).unwrap().unacked,
        1,
        "pos1 is not kept"
    );
    // Only pos2 leaves the queue; the peer acks it when its ack is due.
    while let Some(frame) = queue.pop() {
        b.handle_peer_frame(ME, frame, t0).unwrap();
    }
    assert_eq!(texts(&mut b), ["pos2"]);
    run_timer_before(&mut b, t0 + ACK_DELAY);
    b.handle_timeout(t0 + ACK_DELAY);
    let from_b = uploads(&mut b);
    assert_eq!(acks(&from_b), [1]);
    // An ack of two would count pos1, which never left the queue: refused.
    a.handle_direct_sent(PEER, queue.went_out.drain(..));
    assert!(a.handle_direct_ack(PEER, 2).is_err());
    a.handle_direct_ack(PEER, 1).unwrap();
    assert_eq!(a.peer_stats(PEER, t0).unwrap().unacked, 0);

    // Nothing is waited on: long past the ack timeout the path is still direct.
    let runs = run_timer_before(&mut a, t0 + timeout * 3);
    assert!(a.poll_stalled_link().is_none(), "{runs:?}");
    assert_eq!(a.path_of(PEER), Some(PairPath::Direct));
    assert!(!a.direct_window_full(PEER));
}

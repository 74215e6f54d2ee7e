//! The server application's messages through [`Registry::handle_app_send`]: numbered per
//! host and lane, queued as actions from [`HostId::SERVER`], and never to a host that is
//! gone.

use super::*;
use peergroup_protocol::Carrier;

#[test]
fn stream_sends_are_numbered_per_host_and_lane_and_queued_as_data() {
    let mut w = World::new();
    let (a, b) = (w.connect(1), w.connect(2));
    let gone = w.connect(3);
    w.registry.handle_disconnect(gone, w.now);
    w.drain();
    let ordered = Lane::Ordered { channel: 2 };
    let payload = Bytes::from_static(b"round starts");
    w.registry.handle_app_send(
        &[a, b, gone],
        None,
        Carrier::Stream(ordered),
        Priority::High,
        payload.clone(),
    );
    let data = |to, lane, seq, latest| Action::SendData {
        to,
        message: S::FromServer {
            group: None,
            lane,
            seq,
            payload: payload.clone(),
        },
        priority: Priority::High,
        from: HostId::SERVER,
        latest,
    };
    assert_eq!(
        w.drain(),
        vec![data(a, ordered, 1, None), data(b, ordered, 1, None)],
        "nothing for the host that is gone"
    );
    // The next on the lane is 2 for the host that got the first; a new lane counts from 1.
    w.registry.handle_app_send(
        &[a],
        None,
        Carrier::Stream(ordered),
        Priority::High,
        payload.clone(),
    );
    let latest = Lane::Latest { key: 9 };
    w.registry.handle_app_send(
        &[b],
        None,
        Carrier::Stream(latest),
        Priority::High,
        payload.clone(),
    );
    assert_eq!(
        w.drain(),
        vec![data(a, ordered, 2, None), data(b, latest, 1, Some(9))]
    );
}

#[test]
fn datagram_sends_go_in_one_action_numbered_per_host_on_sequenced_lanes() {
    let mut w = World::new();
    let (a, b) = (w.connect(1), w.connect(2));
    let group = w.group(&[a, b]);
    w.drain();
    let sequenced = DatagramLane::Sequenced { channel: 4 };
    let payload = Bytes::from_static(b"tick");
    let deliver = |lane| ServerDatagram::Deliver {
        from: HostId::SERVER,
        group: Some(group),
        lane,
        seq: 0,
        payload: payload.clone(),
    };
    w.registry.handle_app_send(
        &[a],
        Some(group),
        Carrier::Datagram(sequenced),
        Priority::Medium,
        payload.clone(),
    );
    w.registry.handle_app_send(
        &[a, b],
        Some(group),
        Carrier::Datagram(sequenced),
        Priority::Medium,
        payload.clone(),
    );
    w.registry.handle_app_send(
        &[a, b],
        Some(group),
        Carrier::Datagram(DatagramLane::Plain),
        Priority::Medium,
        payload.clone(),
    );
    assert_eq!(
        w.drain(),
        vec![
            Action::AppDatagram {
                to: vec![(a, 1)],
                message: deliver(sequenced),
            },
            Action::AppDatagram {
                to: vec![(a, 2), (b, 1)],
                message: deliver(sequenced),
            },
            Action::AppDatagram {
                to: vec![(a, 0), (b, 0)],
                message: deliver(DatagramLane::Plain),
            },
        ]
    );
    // Nothing at all when nobody is left to send to.
    w.registry.handle_disconnect(a, w.now);
    w.registry.handle_disconnect(b, w.now);
    w.drain();
    w.registry.handle_app_send(
        &[a, b],
        None,
        Carrier::Datagram(DatagramLane::Plain),
        Priority::Medium,
        payload,
    );
    assert!(w.drain().is_empty());
}

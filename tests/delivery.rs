//! Delivery modes end to end over real QUIC on loopback: each mode's guarantee on the
//! relay, on the direct path and across a forced switch from one to the other; loopback
//! copies; typed messages; and messages the server application sends.
//!
//! The stream tests send a numbered stream of one mode from a sender to B and check what B
//! got against that mode's guarantee (per sender-receiver pair):
//! - `ReliableOrdered`: per channel, exactly the messages sent on it, in order;
//! - `ReliableUnordered`: exactly the set sent, each once;
//! - `Unreliable`: never duplicated (loss is allowed, but not of everything);
//! - `UnreliableSequenced`: per channel, numbers strictly increasing (so never older than
//!   one delivered, never duplicated);
//! - `Latest { key }`: per key, values strictly increasing, and each key's last value
//!   arrives.
//!
//! Message `n` of a stream is sent on channel `n % 2` (modes without channels must report
//! channel 0 whatever the send named) and, for `Latest`, with key `n % KEYS`; its payload
//! says so (see [`payload`]), so every arrival can be checked on its own as well.
//!
//! The tests, by section:
//! - each mode on each path: all five modes on a relay-only pair, on a direct pair (nothing
//!   through the relay), and across a switch where the sender (one test per mode) or the
//!   receiver closes the direct path halfway; the stream's per-mode counters are checked
//!   too;
//! - loopback: `Target::GroupLoopback` hands the sender its own copy;
//! - typed messages: a derived message enum, sent by a client and by the server;
//! - the server as sender: every mode from `Server::send`;
//! - priorities across a switch: a Low backlog overtaken by High traffic loses nothing when
//!   the direct path dies;
//! - a slow application across the move to the direct path: order holds while the
//!   application's event queue is full.
//!
//! Channel independence at the receiver is covered by the client's unit tests: a gap in one
//! channel cannot be forced end to end here. The direct path comes back by itself about
//! 5 s after a close (a new punch); no test waits that long or depends on it.

mod common;

use common::*;
use peergroup_client::{
    decode, Client, ClientEvent, ClientEvents, Delivery, GroupId, ModeCounters, PairPath, Path,
    Priority, SendOptions, Target, TypedError,
};
use peergroup_protocol::HostId;
use peergroup_server::{GroupOptions, Server, ServerEvents, ServerTarget};
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::time::Instant;

/// Messages per stream.
const COUNT: u32 = 600;
/// Where a switch test closes the direct path.
const HALF: u32 = COUNT / 2;
/// Messages a switch test sends right after closing the direct path, before the sender has
/// noticed (they race the fallback).
const RACE: u32 = 20;
/// Channels a stream uses.
const CHANNELS: u8 = 2;
/// Keys a `Latest` stream updates.
const KEYS: u64 = 8;
/// How long without an event counts as "nothing more is coming" (late duplicates would
/// show up within it).
const QUIET: Duration = Duration::from_millis(300);

// ---- the streams ---------------------------------------------------------------------------

/// A delivery mode under test, and how its stream is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Ordered = 1,
    Unordered = 2,
    Unreliable = 3,
    Sequenced = 4,
    Latest = 5,
}

const MODES: [Mode; 5] = [
    Mode::Ordered,
    Mode::Unordered,
    Mode::Unreliable,
    Mode::Sequenced,
    Mode::Latest,
];

impl Mode {
    /// The channel message `n` is sent on.
    fn channel(self, n: u32) -> u8 {
        (n % u32::from(CHANNELS)) as u8
    }

    /// The key of message `n` (0 outside `Latest`).
    fn key(self, n: u32) -> u64 {
        match self {
            Mode::Latest => u64::from(n) % KEYS,
            _ => 0,
        }
    }

    /// How message `n` is sent. Ordered channel 0 goes at Low priority and channel 1 at
    /// High, so the High channel overtakes the Low one in every send queue.
    fn options(self, n: u32) -> SendOptions {
        let channel = self.channel(n);
        match self {
            Mode::Ordered => {
                let priority = if channel == 0 {
                    Priority::Low
                } else {
                    Priority::High
                };
                Delivery::ReliableOrdered
                    .on_channel(channel)
                    .with_priority(priority)
            }
            Mode::Unordered => Delivery::ReliableUnordered.on_channel(channel),
            Mode::Unreliable => Delivery::Unreliable.on_channel(channel),
            Mode::Sequenced => Delivery::UnreliableSequenced.on_channel(channel),
            Mode::Latest => Delivery::Latest { key: self.key(n) }.on_channel(channel),
        }
    }

    /// The channel the receiver must report for message `n`.
    fn reported_channel(self, n: u32) -> u8 {
        match self {
            Mode::Ordered | Mode::Sequenced => self.channel(n),
            _ => 0,
        }
    }

    /// Whether B has everything the guarantee promises (for the unreliable modes: anything).
    fn complete(self, got: &[Got]) -> bool {
        match self {
            Mode::Ordered | Mode::Unordered => got.len() >= COUNT as usize,
            Mode::Latest => (0..KEYS).all(|key| {
                let last = last_value(key);
                got.iter().any(|g| g.key == key && g.n == last)
            }),
            Mode::Unreliable | Mode::Sequenced => !got.is_empty(),
        }
    }

    /// This mode's counter in per-mode stats.
    fn counter(self, counters: &ModeCounters) -> u64 {
        match self {
            Mode::Ordered => counters.reliable_ordered,
            Mode::Unordered => counters.reliable_unordered,
            Mode::Unreliable => counters.unreliable,
            Mode::Sequenced => counters.unreliable_sequenced,
            Mode::Latest => counters.latest,
        }
        .messages
    }
}

/// The last value sent for `key` in a `Latest` stream.
fn last_value(key: u64) -> u32 {
    (0..COUNT)
        .rev()
        .find(|&n| Mode::Latest.key(n) == key)
        .expect("every key is used")
}

/// Message `n` of `mode`'s stream: mode, channel sent on, number, key.
fn payload(mode: Mode, n: u32) -> Vec<u8> {
    let mut payload = vec![mode as u8, mode.channel(n)];
    payload.extend_from_slice(&n.to_be_bytes());
    payload.extend_from_slice(&mode.key(n).to_be_bytes());
    payload
}

/// One message B got, with what its payload and its event said.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Got {
    /// From the payload: the mode tag, the channel it was sent on, its number and key.
    mode: u8,
    sent_channel: u8,
    n: u32,
    key: u64,
    /// From the event.
    from: HostId,
    delivery: Delivery,
    channel: u8,
    path: Path,
}

/// Who sends a stream to B.
enum Sender<'a> {
    Client { client: &'a Client, to: HostId },
    Server { server: &'a Server, to: HostId },
}

impl Sender<'_> {
    async fn send(&self, mode: Mode, n: u32) {
        let (payload, options) = (payload(mode, n), mode.options(n));
        match self {
            Sender::Client { client, to } => client
                .send(Target::Host(*to), payload, options)
                .await
                .unwrap_or_else(|e| panic!("{mode:?} message {n} not sent: {e:?}")),
            Sender::Server { server, to } => server
                .send(ServerTarget::Host(*to), payload, options)
                .unwrap_or_else(|e| panic!("{mode:?} message {n} not sent: {e:?}")),
        }
    }

    async fn send_range(&self, mode: Mode, range: std::ops::Range<u32>) {
        for n in range {
            self.send(mode, n).await;
        }
    }
}

// ---- the receiving side ------------------------------------------------------------------

/// B's event stream, and the messages read from it so far.
struct Inbox {
    events: ClientEvents,
    got: Vec<Got>,
}

impl Inbox {
    fn new(events: ClientEvents) -> Self {
        Self {
            events,
            got: Vec::new(),
        }
    }

    fn take(&mut self, event: ClientEvent) {
        match event {
            ClientEvent::Message {
                from,
                payload,
                delivery,
                channel,
                path,
                ..
            } => {
                assert_eq!(payload.len(), 14, "not a stream message: {payload:?}");
                self.got.push(Got {
                    mode: payload[0],
                    sent_channel: payload[1],
                    n: u32::from_be_bytes(payload[2..6].try_into().unwrap()),
                    key: u64::from_be_bytes(payload[6..14].try_into().unwrap()),
                    from,
                    delivery,
                    channel,
                    path,
                });
            }
            ClientEvent::Disconnected { reason } => panic!("B disconnected: {reason}"),
            _ => {}
        }
    }

    /// Reads events until `done` holds for the messages got, for at most [`WAIT`].
    async fn until(&mut self, what: &str, done: impl Fn(&[Got]) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !done(&self.got) {
            match tokio::time::timeout_at(deadline, self.events.next()).await {
                Ok(Some(event)) => self.take(event),
                Ok(None) => panic!("B's event stream ended"),
                Err(_) => panic!("timed out waiting for {what}; {}", summary(&self.got)),
            }
        }
    }

    /// Reads events until none came for [`QUIET`] (at most [`WAIT`] in all).
    async fn quiet(&mut self) {
        let deadline = Instant::now() + WAIT;
        loop {
            assert!(Instant::now() < deadline, "B's events never went quiet");
            match tokio::time::timeout(QUIET, self.events.next()).await {
                Ok(Some(event)) => self.take(event),
                Ok(None) => panic!("B's event stream ended"),
                Err(_) => return,
            }
        }
    }
}

/// A short description of what was got, for failure messages.
fn summary(got: &[Got]) -> String {
    let paths: BTreeSet<String> = got.iter().map(|g| format!("{:?}", g.path)).collect();
    let last: Vec<u32> = got.iter().rev().take(5).rev().map(|g| g.n).collect();
    format!(
        "got {} messages, paths {paths:?}, last numbers {last:?}",
        got.len()
    )
}

/// Which paths may carry a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Paths {
    Only(Path),
    /// Direct, then the relay.
    Switched,
}

/// Checks every message's envelope, then the mode's guarantee over the whole stream.
fn check(mode: Mode, got: &[Got], from: HostId, paths: Paths) {
    for g in got {
        assert_eq!(
            g.mode, mode as u8,
            "{mode:?}: a message of another stream: {g:?}"
        );
        assert!(g.n < COUNT, "{mode:?}: a number never sent: {g:?}");
        assert_eq!(g.from, from, "{mode:?}: wrong sender: {g:?}");
        assert_eq!(
            g.delivery,
            mode.options(g.n).delivery,
            "{mode:?}: wrong delivery: {g:?}"
        );
        assert_eq!(
            (g.sent_channel, g.key),
            (mode.channel(g.n), mode.key(g.n)),
            "{mode:?}: payload mangled: {g:?}"
        );
        assert_eq!(
            g.channel,
            mode.reported_channel(g.n),
            "{mode:?}: wrong channel reported: {g:?}"
        );
        match paths {
            Paths::Only(path) => assert_eq!(g.path, path, "{mode:?}: wrong path: {g:?}"),
            Paths::Switched => assert!(
                matches!(g.path, Path::Direct | Path::Relay),
                "{mode:?}: wrong path: {g:?}"
            ),
        }
    }
    let numbers = |filter: &dyn Fn(&Got) -> bool| -> Vec<u32> {
        got.iter().filter(|g| filter(g)).map(|g| g.n).collect()
    };
    match mode {
        Mode::Ordered => {
            for channel in 0..CHANNELS {
                let want: Vec<u32> = (0..COUNT).filter(|&n| mode.channel(n) == channel).collect();
                let have = numbers(&|g| g.channel == channel);
                assert_same_sequence(&have, &want, &format!("ordered channel {channel}"));
            }
        }
        Mode::Unordered => {
            let mut have = numbers(&|_| true);
            have.sort_unstable();
            let want: Vec<u32> = (0..COUNT).collect();
            assert_same_sequence(&have, &want, "unordered, sorted");
        }
        Mode::Unreliable => {
            let mut seen = BTreeSet::new();
            for g in got {
                assert!(seen.insert(g.n), "unreliable: message {} duplicated", g.n);
            }
            assert!(!seen.is_empty(), "unreliable: nothing arrived");
        }
        Mode::Sequenced => {
            for channel in 0..CHANNELS {
                let have = numbers(&|g| g.channel == channel);
                assert!(
                    !have.is_empty(),
                    "sequenced channel {channel}: nothing arrived"
                );
                if let Some(w) = have.windows(2).find(|w| w[0] >= w[1]) {
                    panic!(
                        "sequenced channel {channel}: {} delivered after {}",
                        w[1], w[0]
                    );
                }
            }
        }
        Mode::Latest => {
            for key in 0..KEYS {
                let have = numbers(&|g| g.key == key);
                if let Some(w) = have.windows(2).find(|w| w[0] >= w[1]) {
                    panic!("latest key {key}: value {} delivered after {}", w[1], w[0]);
                }
                assert_eq!(
                    have.last(),
                    Some(&last_value(key)),
                    "latest key {key}: the last value sent did not end the stream"
                );
            }
        }
    }
}

/// Asserts `have == want`, naming the first difference rather than printing both.
fn assert_same_sequence(have: &[u32], want: &[u32], what: &str) {
    if let Some(i) = (0..have.len().min(want.len())).find(|&i| have[i] != want[i]) {
        panic!(
            "{what}: at position {i} got {} where {} was due (got {} of {})",
            have[i],
            want[i],
            have.len(),
            want.len()
        );
    }
    assert_eq!(
        have.len(),
        want.len(),
        "{what}: got {} messages, {} sent",
        have.len(),
        want.len()
    );
}

// ---- a pair of clients ---------------------------------------------------------------------

/// A server and two clients, A and B, in one group.
struct Pair {
    server: Server,
    _server_events: ServerEvents,
    a: Client,
    a_events: ClientEvents,
    a_id: HostId,
    b: Client,
    b_in: Inbox,
    b_id: HostId,
    group: GroupId,
}

/// Waits until `events` told of both members' joins and, when `direct`, of the direct path
/// to `peer`.
async fn settle(events: &mut ClientEvents, members: [HostId; 2], peer: HostId, direct: bool) {
    let mut joined = BTreeSet::new();
    let mut is_direct = !direct;
    wait_client(events, |e| {
        match e {
            ClientEvent::MemberJoined { member, .. } => {
                joined.insert(*member);
            }
            ClientEvent::PathChanged {
                peer: p,
                path: PairPath::Direct,
                ..
            } if *p == peer => is_direct = true,
            _ => {}
        }
        (members.iter().all(|m| joined.contains(m)) && is_direct).then_some(())
    })
    .await;
}

/// A pair in a group with `options`; with direct P2P on, both sides are direct already.
async fn pair(options: GroupOptions) -> Pair {
    let (server, server_events) = start_server().await;
    let (a, mut a_events, a_id) = connect(&server, "a").await;
    let (b, mut b_events, b_id) = connect(&server, "b").await;
    let group = server.create_group(&[a_id, b_id], options, "").unwrap();
    let direct = options.direct_p2p;
    settle(&mut a_events, [a_id, b_id], b_id, direct).await;
    settle(&mut b_events, [a_id, b_id], a_id, direct).await;
    let path = Some(if direct {
        PairPath::Direct
    } else {
        PairPath::Relay
    });
    assert_eq!(a.peer_stats(b_id).unwrap().path, path);
    assert_eq!(b.peer_stats(a_id).unwrap().path, path);
    Pair {
        server,
        _server_events: server_events,
        a,
        a_events,
        a_id,
        b,
        b_in: Inbox::new(b_events),
        b_id,
        group,
    }
}

/// How a client stream travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    /// On the pair's current path, which must be this one throughout.
    Stay(Path),
    /// Direct for the first half, then this side closes the direct path and the rest
    /// falls back to the relay.
    Switch(Closer),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Closer {
    Sender,
    Receiver,
}

/// Sends `mode`'s stream from A to B along `route` and checks what B got, and the per-mode
/// counters of both sides.
async fn client_stream(p: &mut Pair, mode: Mode, route: Route) {
    p.b_in.got.clear();
    let sender = Sender::Client {
        client: &p.a,
        to: p.b_id,
    };
    let relayed_before = p.server.pair_stats(p.a_id, p.b_id).unwrap().relayed;
    let mut relay_from = None;
    match route {
        Route::Stay(_) => sender.send_range(mode, 0..COUNT).await,
        Route::Switch(closer) => {
            sender.send_range(mode, 0..HALF).await;
            p.b_in
                .until("a first message on the direct path", |got| !got.is_empty())
                .await;
            assert_eq!(p.b_in.got[0].path, Path::Direct, "{mode:?}");
            match closer {
                Closer::Sender => p.a.close_direct_path(p.b_id),
                Closer::Receiver => p.b.close_direct_path(p.a_id),
            }
            sender.send_range(mode, HALF..HALF + RACE).await;
            let b_id = p.b_id;
            wait_client(&mut p.a_events, |e| {
                matches!(
                    e,
                    ClientEvent::PathChanged { peer, path: PairPath::Relay, .. } if *peer == b_id
                )
                .then_some(())
            })
            .await;
            assert_eq!(p.a.peer_stats(p.b_id).unwrap().path, Some(PairPath::Relay));
            relay_from = Some(HALF + RACE);
            sender.send_range(mode, HALF + RACE..COUNT).await;
        }
    }
    // Complete, and (after a switch) something sent after the fallback came by the relay.
    p.b_in
        .until(&format!("the {mode:?} stream ({route:?})"), |got| {
            mode.complete(got)
                && relay_from
                    .is_none_or(|from| got.iter().any(|g| g.n >= from && g.path == Path::Relay))
        })
        .await;
    p.b_in.quiet().await;
    let paths = match route {
        Route::Stay(path) => Paths::Only(path),
        Route::Switch(_) => Paths::Switched,
    };
    check(mode, &p.b_in.got, p.a_id, paths);

    let sent = p.a.peer_stats(p.b_id).unwrap();
    let received = p.b.peer_stats(p.a_id).unwrap();
    assert_eq!(
        mode.counter(&sent.sent_by_mode),
        u64::from(COUNT),
        "{mode:?}: A's sent_by_mode"
    );
    assert_eq!(
        mode.counter(&received.delivered_by_mode),
        p.b_in.got.len() as u64,
        "{mode:?}: B's delivered_by_mode"
    );
    if route == Route::Stay(Path::Direct) {
        assert_eq!(
            p.server.pair_stats(p.a_id, p.b_id).unwrap().relayed,
            relayed_before,
            "{mode:?}: direct traffic passed through the relay"
        );
    }
}

/// A fresh direct pair that streams `mode` and has the direct path closed halfway.
async fn switch_stream(mode: Mode, closer: Closer) {
    let mut p = pair(GroupOptions::default()).await;
    client_stream(&mut p, mode, Route::Switch(closer)).await;
}

// ---- each mode on each path ----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mode_keeps_its_guarantee_on_the_relay() {
    let mut p = pair(relay_only()).await;
    for mode in MODES {
        client_stream(&mut p, mode, Route::Stay(Path::Relay)).await;
    }
    assert_eq!(p.a.peer_stats(p.b_id).unwrap().path, Some(PairPath::Relay));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mode_keeps_its_guarantee_on_the_direct_path() {
    let mut p = pair(GroupOptions::default()).await;
    for mode in MODES {
        client_stream(&mut p, mode, Route::Stay(Path::Direct)).await;
    }
    assert_eq!(p.b.peer_stats(p.a_id).unwrap().duplicates_dropped, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reliable_ordered_survives_the_sender_closing_the_direct_path() {
    switch_stream(Mode::Ordered, Closer::Sender).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reliable_unordered_survives_the_sender_closing_the_direct_path() {
    switch_stream(Mode::Unordered, Closer::Sender).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreliable_survives_the_sender_closing_the_direct_path() {
    switch_stream(Mode::Unreliable, Closer::Sender).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreliable_sequenced_survives_the_sender_closing_the_direct_path() {
    switch_stream(Mode::Sequenced, Closer::Sender).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_survives_the_sender_closing_the_direct_path() {
    switch_stream(Mode::Latest, Closer::Sender).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mode_survives_the_receiver_closing_the_direct_path() {
    for mode in MODES {
        switch_stream(mode, Closer::Receiver).await;
    }
}

// ---- loopback ------------------------------------------------------------------------------

/// A message event's fields: from, group, payload, delivery, channel, path.
type Message = (HostId, Option<GroupId>, Vec<u8>, Delivery, u8, Path);

/// Picks message events, for [`wait_client`].
fn message(e: &ClientEvent) -> Option<Message> {
    match e {
        ClientEvent::Message {
            from,
            group,
            payload,
            delivery,
            channel,
            path,
        } => Some((*from, *group, payload.to_vec(), *delivery, *channel, *path)),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_loopback_hands_the_sender_its_own_copy_with_mode_and_channel() {
    let mut p = pair(relay_only()).await;
    let sends = [
        Delivery::ReliableOrdered
            .on_channel(3)
            .with_priority(Priority::High),
        Delivery::UnreliableSequenced.on_channel(2),
        Delivery::Latest { key: 9 }.into(),
    ];
    for (i, options) in sends.iter().enumerate() {
        p.a.send(Target::GroupLoopback(p.group), vec![i as u8], *options)
            .await
            .unwrap();
    }
    for (i, options) in sends.iter().enumerate() {
        assert_eq!(
            wait_client(&mut p.a_events, message).await,
            (
                p.a_id,
                Some(p.group),
                vec![i as u8],
                options.delivery,
                options.channel,
                Path::Loopback
            ),
            "loopback copy {i}"
        );
    }
    // B gets the reliable ones (and most likely the datagram) through the relay.
    let mut at_b = Vec::new();
    while at_b.len() < 2 {
        let got = wait_client(&mut p.b_in.events, message).await;
        assert_eq!((got.0, got.1, got.5), (p.a_id, Some(p.group), Path::Relay));
        let options = sends[usize::from(got.2[0])];
        assert_eq!((got.3, got.4), (options.delivery, options.channel));
        if options.delivery.is_unreliable() {
            continue;
        }
        at_b.push(got.2[0]);
    }
    at_b.sort_unstable();
    assert_eq!(at_b, [0, 2]);
    // The sender gets one copy each, and nothing through the relay.
    assert_quiet(&mut p.a_events, QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_copies_report_the_channel_remote_receivers_see() {
    let mut p = pair(relay_only()).await;
    for options in [
        Delivery::ReliableUnordered.on_channel(5),
        Delivery::Unreliable.on_channel(5),
        Delivery::Latest { key: 1 }.on_channel(5),
    ] {
        p.a.send(Target::GroupLoopback(p.group), "x", options)
            .await
            .unwrap();
        let looped = wait_client(&mut p.a_events, message).await;
        assert_eq!(looped.5, Path::Loopback);
        if !options.delivery.is_unreliable() {
            let remote = wait_client(&mut p.b_in.events, message).await;
            assert_eq!(remote.4, 0, "{options:?}: B's channel");
        }
        // `ClientEvent::Message::channel`: "0 for modes without channels".
        assert_eq!(looped.4, 0, "{options:?}: the loopback copy's channel");
    }
}

// ---- typed messages ------------------------------------------------------------------------

/// A game's messages, declared once for both sides.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
enum Game {
    Move {
        entity: u32,
        x: f32,
        y: f32,
    },
    Chat(String),
    Hit {
        attacker: HostId,
        victim: HostId,
        damage: u16,
    },
    Ready,
}

/// Another protocol, which a receiver might expect by mistake.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
enum Lobby {
    Join { room: String },
    Leave,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_messages_decode_as_sent_and_a_wrong_type_is_an_error() {
    let mut p = pair(relay_only()).await;
    let chat = Game::Chat("gg".into());
    let moved = Game::Move {
        entity: 7,
        x: 1.5,
        y: -20.25,
    };
    let hit = Game::Hit {
        attacker: p.a_id,
        victim: p.b_id,
        damage: 12,
    };
    let to_b = || Target::Host(p.b_id);
    let chat_channel = Delivery::ReliableOrdered.on_channel(1);
    p.a.send_message(to_b(), &chat, chat_channel).await.unwrap();
    p.a.send_message(to_b(), &moved, Delivery::Latest { key: 7 })
        .await
        .unwrap();
    p.a.send_message(to_b(), &hit, Delivery::ReliableUnordered)
        .await
        .unwrap();
    p.a.send_message(to_b(), &Game::Ready, chat_channel)
        .await
        .unwrap();
    // Not a `Game` at all: raw bytes.
    p.a.send(to_b(), "hello", chat_channel).await.unwrap();
    let welcome = Game::Chat("welcome".into());
    p.server
        .send_message(
            ServerTarget::Host(p.b_id),
            &welcome,
            Delivery::ReliableOrdered,
        )
        .unwrap();

    let mut from_a = Vec::new();
    let mut from_server = Vec::new();
    while from_a.len() + from_server.len() < 6 {
        let (from, _, payload, delivery, channel, _) =
            wait_client(&mut p.b_in.events, message).await;
        if from == HostId::SERVER {
            from_server.push(payload);
        } else {
            assert_eq!(from, p.a_id);
            from_a.push((delivery, channel, payload));
        }
    }
    assert_eq!(from_server.len(), 1);
    assert_eq!(decode::<Game>(&from_server[0]).unwrap(), welcome);
    // Channel 1 keeps its order; the other two travel on their own lanes.
    let on_channel_1: Vec<&Vec<u8>> = from_a
        .iter()
        .filter(|(d, c, _)| (*d, *c) == (Delivery::ReliableOrdered, 1))
        .map(|(_, _, payload)| payload)
        .collect();
    assert_eq!(on_channel_1.len(), 3);
    assert_eq!(decode::<Game>(on_channel_1[0]).unwrap(), chat);
    assert_eq!(decode::<Game>(on_channel_1[1]).unwrap(), Game::Ready);
    let payload_of = |delivery: Delivery| {
        &from_a
            .iter()
            .find(|(d, _, _)| *d == delivery)
            .unwrap_or_else(|| panic!("no {delivery:?} message"))
            .2
    };
    assert_eq!(
        decode::<Game>(payload_of(Delivery::Latest { key: 7 })).unwrap(),
        moved
    );
    assert_eq!(
        decode::<Game>(payload_of(Delivery::ReliableUnordered)).unwrap(),
        hit
    );

    // Read as the wrong type: an error, never a panic.
    let raw = on_channel_1[2];
    assert_eq!(raw.as_slice(), b"hello");
    assert!(
        matches!(decode::<Game>(raw), Err(TypedError::Decode(_))),
        "raw text read as a game message"
    );
    assert!(
        matches!(
            decode::<Lobby>(on_channel_1[0]),
            Err(TypedError::TrailingBytes { .. })
        ),
        "a chat read as a lobby message (its variant 1, Leave, has no fields)"
    );
    assert!(
        decode::<Lobby>(payload_of(Delivery::Latest { key: 7 })).is_err(),
        "a move read as a lobby message"
    );
    assert!(matches!(decode::<Game>(&[]), Err(TypedError::Decode(_))));
}

// ---- the server as sender ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mode_sent_by_the_server_keeps_its_guarantee() {
    let (server, _server_events) = start_server().await;
    let (_b, b_events, b_id) = connect(&server, "b").await;
    let mut inbox = Inbox::new(b_events);
    let sender = Sender::Server {
        server: &server,
        to: b_id,
    };
    // Ordered goes on two channels at two priorities (Low and High).
    for mode in MODES {
        inbox.got.clear();
        sender.send_range(mode, 0..COUNT).await;
        inbox
            .until(&format!("the server's {mode:?} stream"), |got| {
                mode.complete(got)
            })
            .await;
        inbox.quiet().await;
        check(mode, &inbox.got, HostId::SERVER, Paths::Only(Path::Relay));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_server_sent_message_reports_the_server_its_mode_and_channel() {
    let (server, _server_events) = start_server().await;
    let (_b, mut b_events, b_id) = connect(&server, "b").await;
    let sends = [
        Delivery::ReliableOrdered
            .on_channel(4)
            .with_priority(Priority::Low),
        Delivery::ReliableUnordered.into(),
        Delivery::Latest { key: 3 }.with_priority(Priority::High),
        Delivery::UnreliableSequenced.on_channel(6),
        Delivery::Unreliable.into(),
    ];
    for (i, options) in sends.iter().enumerate() {
        server
            .send(ServerTarget::Host(b_id), vec![i as u8], *options)
            .unwrap();
    }
    // Datagrams may overtake the stream: match each arrival to its send, until the reliable
    // ones are in and nothing more comes.
    let mut seen = BTreeSet::new();
    let mut take = |event: ClientEvent| {
        let Some((from, group, payload, delivery, channel, path)) = message(&event) else {
            return;
        };
        assert_eq!((from, group, path), (HostId::SERVER, None, Path::Relay));
        let i = usize::from(payload[0]);
        assert_eq!(
            (delivery, channel),
            (sends[i].delivery, sends[i].channel),
            "send {i}"
        );
        assert!(seen.insert(i), "send {i} delivered twice");
    };
    let deadline = Instant::now() + WAIT;
    let mut reliable = 0;
    while reliable < 3 {
        let event = tokio::time::timeout_at(deadline, b_events.next())
            .await
            .expect("the reliable messages arrive")
            .expect("events");
        if matches!(&event, ClientEvent::Message { delivery, .. } if !delivery.is_unreliable()) {
            reliable += 1;
        }
        take(event);
    }
    while let Ok(Some(event)) = tokio::time::timeout(QUIET, b_events.next()).await {
        take(event);
    }
}

// ---- priorities across a switch --------------------------------------------------------------

/// Sorts one of B's events into the bulk (channel 0) or urgent (channel 1) numbers.
fn record(event: ClientEvent, bulk: &mut Vec<u32>, urgent: &mut Vec<u32>) {
    if let ClientEvent::Message {
        payload, channel, ..
    } = event
    {
        let n = u32::from_be_bytes(payload[..4].try_into().unwrap());
        match channel {
            0 => bulk.push(n),
            _ => urgent.push(n),
        }
    }
}

/// Reliable messages sent direct stay unacked until the peer acks them, and are sent
/// again through the relay if the direct path dies first; nothing may be lost even when
/// priorities reorder the direct queue. (Acks once drained as many messages as the peer
/// had received from the front of the send-order list, so High messages overtaking a Low
/// backlog got queued Low messages dropped as acked, and lost with the path.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_low_priority_backlog_survives_a_switch_after_high_priority_traffic_overtook_it() {
    let mut p = pair(GroupOptions::default()).await;
    const BULK: u32 = 56;
    const BULK_LEN: usize = 64 << 10;
    const URGENT: u32 = 200;
    let to_b = Target::Host(p.b_id);
    // A bulk transfer at Low priority on channel 0 (3.5 MiB, under the direct queue's
    // 4 MiB, so no send waits)...
    for n in 0..BULK {
        let mut payload = vec![0u8; BULK_LEN];
        payload[..4].copy_from_slice(&n.to_be_bytes());
        let options = Delivery::ReliableOrdered
            .on_channel(0)
            .with_priority(Priority::Low);
        p.a.send(to_b.clone(), payload, options).await.unwrap();
    }
    // ...overtaken by urgent High messages on channel 1.
    for n in 0..URGENT {
        let options = Delivery::ReliableOrdered
            .on_channel(1)
            .with_priority(Priority::High);
        p.a.send(to_b.clone(), n.to_be_bytes().to_vec(), options)
            .await
            .unwrap();
    }
    let (mut bulk_got, mut urgent_got) = (Vec::new(), Vec::new());
    let deadline = Instant::now() + WAIT;
    while urgent_got.len() < URGENT as usize {
        let event = tokio::time::timeout_at(deadline, p.b_in.events.next())
            .await
            .expect("the urgent messages arrive")
            .expect("events");
        record(event, &mut bulk_got, &mut urgent_got);
    }
    // B acks what it received (every 32 messages, and every 20 ms): once acks for at least
    // the urgent messages have reached A, kill the direct path, with bulk still under way.
    let deadline = Instant::now() + WAIT;
    let unacked = loop {
        let unacked = p.a.peer_stats(p.b_id).unwrap().unacked;
        if unacked <= BULK as usize {
            break unacked;
        }
        assert!(Instant::now() < deadline, "B's acks never reached A");
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let received = p.b.peer_stats(p.a_id).unwrap().direct_received.messages;
    p.a.close_direct_path(p.b_id);
    let deadline = Instant::now() + WAIT;
    while bulk_got.len() < BULK as usize {
        let event = tokio::time::timeout_at(deadline, p.b_in.events.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "bulk stalled after {} of {BULK}: at the close B had received {received} \
                     of {} messages and A held {unacked} unacked",
                    bulk_got.len(),
                    BULK + URGENT,
                )
            })
            .expect("events");
        record(event, &mut bulk_got, &mut urgent_got);
    }
    assert_quiet(&mut p.b_in.events, QUIET).await;
    assert_same_sequence(&bulk_got, &(0..BULK).collect::<Vec<_>>(), "bulk");
    assert_same_sequence(&urgent_got, &(0..URGENT).collect::<Vec<_>>(), "urgent");
}

// ---- a slow application across the move to the direct path --------------------------------

/// A pair starts on the relay and moves to the direct path by itself once punched; A
/// streams from the start, so the receiver merges both paths. B's application reads a few
/// events per millisecond, so its event queue (64 here) is full most of the time: the
/// order must hold all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_messages_reach_a_slow_application_in_order_across_the_punch() {
    let (server, _server_events) = start_server().await;
    let (a, mut a_events, a_id) = connect(&server, "a").await;
    let (_b, mut b_events, b_id) = connect_with(&server, "b", |c| c.limits.event_queue = 64).await;
    server
        .create_group(&[a_id, b_id], GroupOptions::default(), "")
        .unwrap();
    wait_client(&mut a_events, |e| {
        matches!(e, ClientEvent::MemberJoined { member, .. } if *member == b_id).then_some(())
    })
    .await;
    const N: u32 = 3_000;
    let sender = {
        let a = a.clone();
        tokio::spawn(async move {
            for n in 0..N {
                let options = Delivery::ReliableOrdered;
                a.send(Target::Host(b_id), n.to_be_bytes().to_vec(), options)
                    .await
                    .unwrap();
                if n % 100 == 0 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        })
    };
    let mut got = Vec::new();
    let mut paths = BTreeSet::new();
    while got.len() < N as usize {
        let (_, _, payload, _, _, path) = wait_client(&mut b_events, message).await;
        got.push(u32::from_be_bytes(payload[..4].try_into().unwrap()));
        paths.insert(format!("{path:?}"));
        if got.len() % 5 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    sender.await.unwrap();
    assert_eq!(paths.len(), 2, "both paths carried messages: {paths:?}");
    assert_same_sequence(&got, &(0..N).collect::<Vec<_>>(), "ordered");
}

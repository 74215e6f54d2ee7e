//! One bot of the `mmo` section as a raw protocol client (the scale and churn sections'
//! technique): a QUIC connection speaking `peergroup_protocol` frames, with none of the
//! client library's machinery (no punching, no send queue, no receive window), so a
//! thousand of them fit on the machine beside the server.
//!
//! What it does is what `examples/mmo_view/bot.rs` asks of the library:
//! - hello, then read the welcome for its own id;
//! - find its own view group (the one whose data names it) and follow who is in it, from
//!   the membership notices, and the pair of every peer, from `PeerUp`/`PeerDown`;
//! - ack every notice it reads, cumulatively, one ack per read (as the library does);
//! - every tick, walk (the shared world's [`Walker`]) and upload its position to its view
//!   group: a `Relay` frame on the [`Lane::Latest`] lane (key 0, High priority) naming each
//!   watcher's pair with the pair's next number in that lane, and the server application
//!   as a destination (it is a member of every view group);
//! - count the position updates relayed to it.
//!
//! Reading and writing are two futures of one task, so a write that waits for flow
//! control never stops the bot reading (and acking) what the server sends it.

use super::world::{Position, Walker, TICK_HZ};
use bytes::BytesMut;
use peergroup_protocol::typed::encode;
use peergroup_protocol::{
    decode_server_frame, encode_frame, frame_to_bytes, ClientToServer, FrameDecoder, GroupId,
    Hello, HostId, Lane, LaneCounters, Notice, PairId, Priority, RelayDest, ServerToClient,
    DEFAULT_MAX_FRAME_LEN, PROTOCOL_VERSION,
};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Semaphore};
use tokio::time::MissedTickBehavior;

/// The lane of position updates: as the example's `Delivery::Latest { key: 0 }`.
const LANE: Lane = Lane::Latest { key: 0 };
/// Bound on the handshake of one bot (with its turn among the handshakes in flight).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// What one bot counted. Relaxed atomics: the section reads totals, never orders.
#[derive(Debug, Default)]
pub struct BotCounters {
    /// Position updates sent (one relay upload each).
    pub sent: AtomicU64,
    /// Watchers those uploads named, summed: deliveries the bot asked for.
    pub addressed: AtomicU64,
    /// Position updates relayed to this bot (`Deliver` frames).
    pub delivered: AtomicU64,
    /// Watchers in its view that it had no pair for, so could not address: should stay 0,
    /// since the server sends `PeerUp` before any notice about the peer.
    pub unpaired: AtomicU64,
    /// `Skipped` frames: a watcher's update refused by the server (the watcher had left the
    /// sender's view before the upload arrived).
    pub skipped: AtomicU64,
    /// `Refused` frames: this bot's update refused for one destination, for the same reason.
    pub refused: AtomicU64,
    /// Membership notices read.
    pub notices: AtomicU64,
    /// Ack frames written.
    pub acks: AtomicU64,
}

/// Totals over every bot at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct BotTotals {
    /// See [`BotCounters::sent`].
    pub sent: u64,
    /// See [`BotCounters::addressed`].
    pub addressed: u64,
    /// See [`BotCounters::delivered`].
    pub delivered: u64,
    /// See [`BotCounters::unpaired`].
    pub unpaired: u64,
    /// See [`BotCounters::skipped`].
    pub skipped: u64,
    /// See [`BotCounters::refused`].
    pub refused: u64,
    /// See [`BotCounters::notices`].
    pub notices: u64,
    /// See [`BotCounters::acks`].
    pub acks: u64,
}

impl BotTotals {
    /// Sums every bot's counters.
    pub fn read(bots: &[Arc<BotCounters>]) -> Self {
        let mut totals = Self::default();
        for bot in bots {
            let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
            totals.sent += read(&bot.sent);
            totals.addressed += read(&bot.addressed);
            totals.delivered += read(&bot.delivered);
            totals.unpaired += read(&bot.unpaired);
            totals.skipped += read(&bot.skipped);
            totals.refused += read(&bot.refused);
            totals.notices += read(&bot.notices);
            totals.acks += read(&bot.acks);
        }
        totals
    }

    /// What was counted after `before` was read.
    pub fn since(self, before: BotTotals) -> BotTotals {
        BotTotals {
            sent: self.sent - before.sent,
            addressed: self.addressed - before.addressed,
            delivered: self.delivered - before.delivered,
            unpaired: self.unpaired - before.unpaired,
            skipped: self.skipped - before.skipped,
            refused: self.refused - before.refused,
            notices: self.notices - before.notices,
            acks: self.acks - before.acks,
        }
    }
}

/// Everything a bot needs to run.
pub struct Bot {
    /// The quinn endpoint (shared UDP socket) it connects from.
    pub endpoint: quinn::Endpoint,
    /// The server.
    pub server: SocketAddr,
    /// Handshakes allowed under way at once.
    pub handshakes: Arc<Semaphore>,
    /// Its walk.
    pub walker: Walker,
    /// Whether the bots publish: set once every bot is connected, cleared after the
    /// window (they keep reading and acking throughout).
    pub publishing: Arc<AtomicBool>,
    /// Where it counts.
    pub counters: Arc<BotCounters>,
    /// Where it leaves its connection once connected, so the section can read the UDP
    /// datagrams every connection sent and received (quinn's path statistics).
    pub connections: Arc<Mutex<Vec<quinn::Connection>>>,
}

/// What the reading half learns and the writing half uses.
#[derive(Default)]
struct State {
    me: Option<HostId>,
    /// Its own view group, once its join notice (with the group's data) arrived.
    my_group: Option<GroupId>,
    /// The bots in its view group (the owner and the server left out).
    watchers: HashSet<HostId>,
    /// Each peer's pair, with this bot's numbers in the pair's lanes (they restart with a
    /// new pair).
    pairs: HashMap<HostId, (PairId, LaneCounters)>,
}

impl State {
    fn notice(&mut self, notice: &Notice) {
        match notice {
            Notice::MemberJoined {
                group,
                member,
                group_data,
                ..
            } => {
                let Some(me) = self.me else {
                    return;
                };
                if *member == me && self.my_group.is_none() {
                    // Every view group's data names its owner (as in the example).
                    let owner = group_data
                        .as_deref()
                        .map(|d| d == me.to_string().as_bytes());
                    if owner == Some(true) {
                        self.my_group = Some(*group);
                    }
                } else if Some(*group) == self.my_group
                    && *member != me
                    && *member != HostId::SERVER
                {
                    self.watchers.insert(*member);
                }
            }
            Notice::MemberLeft { group, member, .. } if Some(*group) == self.my_group => {
                self.watchers.remove(member);
            }
            _ => {}
        }
    }

    /// The upload of a position to its view group, once it has one.
    fn upload(&mut self, at: Position, counters: &BotCounters) -> Option<ClientToServer> {
        let group = self.my_group?;
        let payload = encode(&at).ok()?;
        let mut dests = Vec::with_capacity(self.watchers.len());
        for watcher in &self.watchers {
            match self.pairs.get_mut(watcher) {
                Some((pair, lanes)) => dests.push(RelayDest {
                    pair: *pair,
                    seq: lanes.next(LANE),
                }),
                None => {
                    counters.unpaired.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        counters.sent.fetch_add(1, Ordering::Relaxed);
        counters
            .addressed
            .fetch_add(dests.len() as u64, Ordering::Relaxed);
        Some(ClientToServer::Relay {
            group: Some(group),
            to_server: true,
            lane: LANE,
            priority: Priority::High,
            dests: dests.into(),
            payload,
        })
    }
}

/// Runs one bot until its connection ends (the section closes the endpoints).
pub async fn run(bot: Bot) -> Result<(), String> {
    let (connection, mut send, mut control, mut recv) = {
        let _turn = bot.handshakes.acquire().await.map_err(|e| e.to_string())?;
        tokio::time::timeout(CONNECT_TIMEOUT, async {
            let connection = bot
                .endpoint
                .connect(bot.server, "peergroup")
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| e.to_string())?;
            let (mut send, recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
            let hello = ClientToServer::Hello(Hello {
                version: PROTOCOL_VERSION,
                login: Default::default(),
            });
            let frame = frame_to_bytes(&hello, DEFAULT_MAX_FRAME_LEN).map_err(|e| e.to_string())?;
            send.write_all(&frame).await.map_err(|e| e.to_string())?;
            // Acks go on the control stream, which the server allows once logged in.
            let control = connection.open_uni().await.map_err(|e| e.to_string())?;
            bot.connections
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(connection.clone());
            Ok::<_, String>((connection, send, control, recv))
        })
        .await
        .map_err(|_| "timed out connecting".to_string())??
    };
    let state = Mutex::new(State::default());
    let (taken_tx, taken_rx) = watch::channel(0u64);
    let counters = &bot.counters;
    let reading = read(&mut recv, &state, taken_tx, counters);
    let publishing = publish(&mut send, &state, bot.walker, &bot.publishing, counters);
    let acking = acknowledge(&mut control, taken_rx, counters);
    // The reader ends with the connection; the acker ends when the reader does (its
    // sender of acks is dropped); either writer when a write fails.
    let result = tokio::select! {
        result = reading => result,
        result = publishing => result,
        result = acking => result,
    };
    drop(connection);
    result
}

/// Reads the server's frames: learns the bot's id, group, watchers and pairs, counts what
/// arrives, and hands the count of notices taken in to the writer for acking.
async fn read(
    recv: &mut quinn::RecvStream,
    state: &Mutex<State>,
    taken_tx: watch::Sender<u64>,
    counters: &BotCounters,
) -> Result<(), String> {
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
    let mut taken = 0u64;
    loop {
        let chunk = match recv.read_chunk(usize::MAX, true).await {
            Ok(Some(chunk)) => chunk,
            Ok(None) | Err(_) => return Ok(()),
        };
        decoder.push(&chunk.bytes);
        let (mut notices, mut delivered, mut skipped, mut refused) = (0u64, 0u64, 0u64, 0u64);
        {
            let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
            while let Some(body) = decoder.next_body().map_err(|e| e.to_string())? {
                match decode_server_frame(&body).map_err(|e| e.to_string())? {
                    ServerToClient::Welcome { host_id, .. } => state.me = Some(host_id),
                    ServerToClient::PeerUp { peer, pair, .. } => {
                        state.pairs.insert(peer, (pair, LaneCounters::default()));
                    }
                    // Only the pair that ended: a newer one with the peer may have started.
                    ServerToClient::PeerDown { peer, pair }
                        if state.pairs.get(&peer).is_some_and(|(p, _)| *p == pair) =>
                    {
                        state.pairs.remove(&peer);
                    }
                    ServerToClient::Notices(list) => {
                        for notice in &list {
                            state.notice(notice);
                        }
                        notices += list.len() as u64;
                    }
                    ServerToClient::Deliver { .. } => delivered += 1,
                    ServerToClient::Skipped { .. } => skipped += 1,
                    ServerToClient::Refused { .. } => refused += 1,
                    ServerToClient::RefusedMany { refused: list, .. } => {
                        refused += list.len() as u64;
                    }
                    _ => {}
                }
            }
        }
        counters.notices.fetch_add(notices, Ordering::Relaxed);
        counters.delivered.fetch_add(delivered, Ordering::Relaxed);
        counters.skipped.fetch_add(skipped, Ordering::Relaxed);
        counters.refused.fetch_add(refused, Ordering::Relaxed);
        if notices > 0 {
            taken += notices;
            // Taken in (the state above already reflects them): the writer acks them.
            let _ = taken_tx.send(taken);
        }
    }
}

/// Walks and publishes every tick while `publishing`, on the main stream.
async fn publish(
    send: &mut quinn::SendStream,
    state: &Mutex<State>,
    mut walker: Walker,
    publishing: &AtomicBool,
    counters: &BotCounters,
) -> Result<(), String> {
    let mut tick = tokio::time::interval(Duration::from_secs(1) / TICK_HZ);
    // A late tick is skipped, as the example's bots do, not made up in a burst.
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut out = BytesMut::new();
    loop {
        tick.tick().await;
        walker.step();
        if !publishing.load(Ordering::Relaxed) {
            continue;
        }
        let upload = state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .upload(walker.at, counters);
        if let Some(upload) = upload {
            encode_frame(&upload, DEFAULT_MAX_FRAME_LEN, &mut out).map_err(|e| e.to_string())?;
            send.write_all(&out).await.map_err(|e| e.to_string())?;
            out.clear();
        }
    }
}

/// Acks what the reader took in, on the control stream, so acks never wait behind
/// uploads the server has not read yet.
async fn acknowledge(
    control: &mut quinn::SendStream,
    mut taken_rx: watch::Receiver<u64>,
    counters: &BotCounters,
) -> Result<(), String> {
    let mut out = BytesMut::new();
    while taken_rx.changed().await.is_ok() {
        let notices = *taken_rx.borrow_and_update();
        encode_frame(
            &ClientToServer::Ack { notices },
            DEFAULT_MAX_FRAME_LEN,
            &mut out,
        )
        .map_err(|e| e.to_string())?;
        counters.acks.fetch_add(1, Ordering::Relaxed);
        control.write_all(&out).await.map_err(|e| e.to_string())?;
        out.clear();
    }
    // The reader is done.
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn joined(group: GroupId, member: HostId, group_data: Option<Bytes>) -> Notice {
        Notice::MemberJoined {
            group,
            member,
            membership: 1,
            member_count: 2,
            join_message: Bytes::new(),
            member_data: Bytes::new(),
            group_data,
        }
    }

    #[test]
    fn follows_its_own_view_group_and_numbers_each_pair() {
        let me = HostId::from_raw(10);
        let (mine, theirs) = (GroupId::from_raw(1), GroupId::from_raw(2));
        let watcher = HostId::from_raw(11);
        let mut state = State {
            me: Some(me),
            ..State::default()
        };
        let counters = BotCounters::default();
        let at = Position { x: 1.0, y: 2.0 };
        // Someone else's view first: not its own group.
        state.notice(&joined(theirs, me, Some(watcher.to_string().into())));
        assert!(state.upload(at, &counters).is_none());
        state.notice(&joined(mine, HostId::SERVER, None));
        state.notice(&joined(mine, me, Some(me.to_string().into())));
        assert_eq!(state.my_group, Some(mine));
        state
            .pairs
            .insert(watcher, (PairId::from_raw(7), LaneCounters::default()));
        state.notice(&joined(mine, watcher, None));
        assert_eq!(state.watchers.len(), 1);
        for seq in 1..=2 {
            let Some(ClientToServer::Relay { dests, .. }) = state.upload(at, &counters) else {
                panic!("an upload to its view group");
            };
            assert_eq!(
                dests[..],
                [RelayDest {
                    pair: PairId::from_raw(7),
                    seq
                }]
            );
        }
        state.notice(&Notice::MemberLeft {
            group: mine,
            member: watcher,
            member_count: 1,
        });
        assert!(state.watchers.is_empty());
        assert_eq!(counters.sent.load(Ordering::Relaxed), 2);
        assert_eq!(counters.addressed.load(Ordering::Relaxed), 2);
    }
}

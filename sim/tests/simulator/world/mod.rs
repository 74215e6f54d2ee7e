//! The simulated world: the registry, the client sessions, the links between them, and the
//! drivers' jobs (queues, writers, punching, direct connections) done the way the real
//! drivers do them, on the virtual clock.
//!
//! This file holds the types (the world, its clients, connections and events), the
//! constants and the setting up of a run; `impl World` goes on, one concern per file, in
//! `event_loop.rs` (the main loop), `server_side.rs` (the server's driver), `client_side.rs`
//! (the client's driver), `direct.rs` (punching and direct connections), `actions.rs` (the
//! application's random actions) and `finish.rs` (the checks at the end).

mod actions;
mod client_side;
mod direct;
mod event_loop;
mod finish;
mod server_side;

use super::check::Oracle;
use super::net::{Clock, EventQueue, LinkParams, StreamWriter};
use bytes::Bytes;
use peergroup_client::fuzzing::FuzzSession;
use peergroup_protocol::{
    ClientDatagram, ClientToServer, Fingerprint, GroupId, HostId, PairId, PathReason, PeerToPeer,
    ServerDatagram, ServerToClient,
};
use peergroup_server::registry::{GroupOptions, PunchConfig, Registry, RegistryConfig};
use rand::RngExt;
use rand_pcg::Pcg64;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

/// How a host's NAT filters unsolicited packets, which decides whether a punch between
/// two hosts can work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nat {
    /// A public address, or a full-cone NAT: anyone can reach it.
    Open,
    /// A port-restricted cone NAT: one mapping per local port, filtered by peer address.
    Cone,
    /// A symmetric NAT: a new mapping per destination.
    Symmetric,
}

impl Nat {
    /// Whether two hosts behind these NATs can punch through to each other: not two
    /// symmetric NATs, nor a symmetric one and a port-restricted one.
    pub fn can_punch(self, other: Nat) -> bool {
        !matches!(
            (self, other),
            (Nat::Symmetric, Nat::Symmetric)
                | (Nat::Symmetric, Nat::Cone)
                | (Nat::Cone, Nat::Symmetric)
        )
    }
}

/// Something that happens at a simulated time.
#[derive(Debug)]
enum Ev {
    /// A client's frame reaches the server.
    ServerFrame { from: HostId, frame: ClientToServer },
    /// A client's datagram reaches the server.
    ServerDatagram {
        from: HostId,
        datagram: ClientDatagram,
    },
    /// A server frame reaches a client.
    ClientFrame { to: HostId, frame: ServerToClient },
    /// A server datagram reaches a client.
    ClientDatagram {
        to: HostId,
        datagram: ServerDatagram,
    },
    /// A frame on a direct connection reaches `to`.
    PeerFrame {
        conn: u64,
        to: HostId,
        from: HostId,
        frame: PeerToPeer,
    },
    /// A datagram on a direct connection reaches `to`.
    PeerDatagram {
        conn: u64,
        to: HostId,
        from: HostId,
        datagram: ServerDatagram,
    },
    /// A writer of this client (or the server's writer to it) may take its next frame.
    Wake(HostId),
    /// A side's punch attempt comes to a verdict: the connection `conn` is up for it, or
    /// (`None`) the attempt failed.
    PunchEnd {
        host: HostId,
        pair: PairId,
        attempt: u32,
        conn: Option<u64>,
    },
    /// A direct path dies: everything in flight on it is lost from now on.
    PathDeath { conn: u64 },
    /// `host` learns that its direct connection `conn` ended.
    ConnLost {
        conn: u64,
        host: HostId,
        reason: PathReason,
    },
    /// The scenario's next application action.
    Act,
}

/// One direct connection between two hosts.
#[derive(Debug)]
struct Conn {
    hosts: (HostId, HostId),
    /// The path carries packets (`false` once it died).
    alive: bool,
    /// Each side closed it (or lost it).
    closed: (bool, bool),
    params: LinkParams,
}

impl Conn {
    fn closed_by(&mut self, host: HostId) -> &mut bool {
        if host == self.hosts.0 {
            &mut self.closed.0
        } else {
            &mut self.closed.1
        }
    }

    fn other(&self, host: HostId) -> HostId {
        if host == self.hosts.0 {
            self.hosts.1
        } else {
            self.hosts.0
        }
    }
}

/// A client's end of a direct connection, as the client driver keeps it.
#[derive(Debug)]
struct Direct {
    conn: u64,
    /// The direct send queue; items carry the session's retransmission id (0: untracked).
    writer: StreamWriter<(PeerToPeer, u64)>,
    /// Ids of tracked frames in the order they left, not yet handed to the session.
    sent_log: Vec<u64>,
    /// The session asked to stop reading; arrivals wait here.
    paused: bool,
    held: VecDeque<PeerToPeer>,
}

/// One simulated client: its session and what its driver holds.
#[derive(Debug)]
struct Client {
    session: FuzzSession,
    nat: Nat,
    /// Takes punch orders at all (else declines them).
    direct_enabled: bool,
    /// The main stream to the server (relay uploads).
    up_main: StreamWriter<ClientToServer>,
    /// The control stream to the server (acks, reports).
    up_control: StreamWriter<ClientToServer>,
    /// The server's queue and stream to this client.
    down: StreamWriter<ServerToClient>,
    directs: BTreeMap<HostId, Direct>,
    /// Punch attempts under way, by pair.
    punches: HashMap<PairId, u32>,
    /// The session's `poll_timeout`, as of its last input (every input ends in
    /// [`World::flush`], which updates it).
    timer: Option<Duration>,
}

/// A join or leave waiting for its completion.
#[derive(Debug, Clone, Copy)]
struct PendingOp {
    /// Action counter when it started.
    started: u64,
}

/// Numbers about one run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RunStats {
    /// Messages the application sent.
    pub sent: u64,
    /// Message deliveries per mode: ordered, unordered, unreliable, sequenced, latest.
    pub delivered: [u64; 5],
    /// Deliveries over a direct path.
    pub direct_deliveries: u64,
    /// Path changes clients saw: to direct, back to the relay.
    pub to_direct: u64,
    /// Path changes back to the relay.
    pub to_relay: u64,
    /// Joins and leaves that completed.
    pub ops_completed: u64,
    /// Direct paths killed.
    pub deaths: u64,
    /// Steps of the main loop (each one instant at which something happened).
    pub events: u64,
    /// Reliable (message, destination) pairs that had to arrive by the end, and did.
    pub required: u64,
}

impl RunStats {
    /// Adds another run's numbers to these.
    pub fn add(&mut self, other: &RunStats) {
        self.sent += other.sent;
        for (total, n) in self.delivered.iter_mut().zip(other.delivered) {
            *total += n;
        }
        self.direct_deliveries += other.direct_deliveries;
        self.to_direct += other.to_direct;
        self.to_relay += other.to_relay;
        self.ops_completed += other.ops_completed;
        self.deaths += other.deaths;
        self.events += other.events;
        self.required += other.required;
    }
}

/// The scenario's knobs, drawn from the seed.
#[derive(Debug, Clone)]
pub struct Shape {
    /// Clients.
    pub clients: usize,
    /// Simulated time the application acts for.
    pub active: Duration,
    /// Mean gap between application actions.
    pub mean_gap_ms: u64,
    /// How long pairs linger.
    pub linger: Duration,
}

/// One whole-system run.
pub struct World {
    rng: Pcg64,
    clock: Clock,
    events: EventQueue<Ev>,
    registry: Registry,
    clients: BTreeMap<HostId, Client>,
    conns: HashMap<u64, Conn>,
    next_conn: u64,
    /// Punch attempts: the sides that started each, with when they are ready to probe.
    attempts: HashMap<(PairId, u32), Vec<(HostId, Duration)>>,
    pending_joins: BTreeMap<(GroupId, HostId), VecDeque<PendingOp>>,
    pending_leaves: BTreeMap<(GroupId, HostId), VecDeque<PendingOp>>,
    /// Action counter at the last leave of each membership, and at the last disconnect or
    /// destroy.
    last_leave: HashMap<(GroupId, HostId), u64>,
    destroyed: HashMap<GroupId, u64>,
    disconnected: HashMap<HostId, u64>,
    action_counter: u64,
    /// Registry side: since when each pair of hosts shares no group (for the linger check).
    unshared_since: HashMap<(HostId, HostId), Duration>,
    had_pair: BTreeSet<(HostId, HostId)>,
    oracle: Oracle,
    shape: Shape,
    /// Simulated time the run ends at.
    end: Duration,
    stats: RunStats,
    /// Print what happens (`SIM_TRACE=1`), for replaying a failed seed.
    trace: bool,
    /// Clients whose writers (or the server's writer to them) may have work.
    dirty: BTreeSet<HostId>,
    /// Membership numbers each client was told, per (client, group, member).
    told_membership: HashMap<(HostId, GroupId, HostId), u32>,
    /// Current membership numbers, per (group, member), from the registry's notices.
    server_membership: HashMap<(GroupId, HostId), u32>,
}

/// Largest datagram payload the simulated paths take.
const MAX_DATAGRAM: usize = 1_200;
/// Largest frame.
const MAX_FRAME: u32 = 1 << 20;
/// Quiet time after the application's last action (on top of the pair linger).
const DRAIN: Duration = Duration::from_secs(7);
/// How much longer a run goes on past its end while something is still on its way.
const OVERTIME: Duration = Duration::from_secs(30);
/// A punch gives up this long after its start.
const PUNCH_WINDOW: Duration = Duration::from_secs(3);

fn frame_len_down(frame: &ServerToClient) -> usize {
    match frame {
        ServerToClient::Deliver { payload, .. } | ServerToClient::FromServer { payload, .. } => {
            payload.len() + 24
        }
        ServerToClient::Notices(notices) => 8 + 48 * notices.len(),
        _ => 40,
    }
}

fn frame_len_up(frame: &ClientToServer) -> usize {
    match frame {
        ClientToServer::Relay { payload, dests, .. } => payload.len() + 16 + 12 * dests.len(),
        _ => 24,
    }
}

fn frame_len_peer(frame: &PeerToPeer) -> usize {
    match frame {
        PeerToPeer::Data { payload, .. } => payload.len() + 32,
        _ => 12,
    }
}

fn ordered(a: HostId, b: HostId) -> (HostId, HostId) {
    if a < b {
        (a, b)
    } else {
        (b, a)
    }
}

impl World {
    /// A world for `seed`: its shape, hosts and links drawn from the seed.
    pub fn new(seed: u64) -> Self {
        use rand::SeedableRng;
        let mut rng = Pcg64::seed_from_u64(seed);
        let shape = Shape {
            clients: rng.random_range(2..=6),
            active: Duration::from_millis(rng.random_range(1_000..=5_000)),
            mean_gap_ms: rng.random_range(5..=60),
            linger: Duration::from_millis(rng.random_range(200..=3_000)),
        };
        let clock = Clock::new();
        let config = RegistryConfig {
            pair_linger: shape.linger,
            punch: PunchConfig {
                first_retry: Duration::from_millis(rng.random_range(500..=3_000)),
                after_direct_lost: Duration::from_millis(rng.random_range(200..=2_000)),
                ..PunchConfig::default()
            },
            ..RegistryConfig::default()
        };
        let registry = Registry::new(config, clock.now());
        // Long enough for every fallback (a dead path is noticed within 3 s, a stalled one
        // after the 5 s ack timeout), resend, linger and ack to settle.
        let end = shape.active + shape.linger + DRAIN;
        let mut world = World {
            rng,
            clock,
            events: EventQueue::new(),
            registry,
            clients: BTreeMap::new(),
            conns: HashMap::new(),
            next_conn: 1,
            attempts: HashMap::new(),
            pending_joins: BTreeMap::new(),
            pending_leaves: BTreeMap::new(),
            last_leave: HashMap::new(),
            destroyed: HashMap::new(),
            disconnected: HashMap::new(),
            action_counter: 0,
            unshared_since: HashMap::new(),
            had_pair: BTreeSet::new(),
            oracle: Oracle::default(),
            shape,
            end,
            stats: RunStats::default(),
            trace: std::env::var_os("SIM_TRACE").is_some(),
            dirty: BTreeSet::new(),
            told_membership: HashMap::new(),
            server_membership: HashMap::new(),
        };
        for i in 0..world.shape.clients {
            world.connect(i);
        }
        let groups = world.rng.random_range(1..=3);
        for _ in 0..groups {
            world.create_group();
        }
        world.events.push(Duration::ZERO, Ev::Act);
        world
    }

    fn connect(&mut self, i: usize) {
        let nat = [Nat::Open, Nat::Cone, Nat::Cone, Nat::Symmetric][self.rng.random_range(0..4)];
        let addr = SocketAddr::from(([10, 0, 0, i as u8 + 1], 5000));
        let identity = Fingerprint([i as u8; 32]);
        let host = self.registry.handle_connect(identity, addr, Bytes::new());
        let up = LinkParams::random(&mut self.rng, 5, 80);
        let down = LinkParams {
            loss: up.loss,
            ..LinkParams::random(&mut self.rng, 5, 80)
        };
        let client = Client {
            session: FuzzSession::new(host, MAX_FRAME, 1 << 16, true, self.clock.now()),
            nat,
            direct_enabled: self.rng.random_bool(0.9),
            up_main: StreamWriter::new(up),
            up_control: StreamWriter::new(up),
            down: StreamWriter::new(down),
            directs: BTreeMap::new(),
            punches: HashMap::new(),
            timer: None,
        };
        self.clients.insert(host, client);
        self.flush(host);
        self.dispatch();
    }

    fn create_group(&mut self) {
        let hosts: Vec<HostId> = self.clients.keys().copied().collect();
        let members: Vec<HostId> = hosts
            .into_iter()
            .filter(|_| self.rng.random_bool(0.6))
            .collect();
        let options = GroupOptions {
            direct_p2p: self.rng.random_bool(0.85),
            ..GroupOptions::default()
        };
        let now = self.clock.now();
        match self
            .registry
            .create_group(&members, options, Bytes::new(), Bytes::new(), now)
        {
            Ok(group) => {
                for member in members {
                    self.start_op(true, group, member);
                }
            }
            Err(error) => self.violation(format!("create_group failed: {error}")),
        }
        self.dispatch();
        self.check_pairs();
    }

    fn start_op(&mut self, join: bool, group: GroupId, member: HostId) {
        self.action_counter += 1;
        let op = PendingOp {
            started: self.action_counter,
        };
        let map = if join {
            &mut self.pending_joins
        } else {
            &mut self.pending_leaves
        };
        map.entry((group, member)).or_default().push_back(op);
    }

    fn violation(&mut self, text: String) {
        let text = format!("at {:?}: {text}", self.clock.elapsed());
        self.oracle.violations.push(text);
    }
}

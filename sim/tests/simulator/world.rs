//! The simulated world: the registry, the client sessions, the links between them, and the
//! drivers' jobs (queues, writers, punching, direct connections) done the way the real
//! drivers do them, on the virtual clock.

use super::check::{Oracle, Sent};
use super::net::{Clock, EventQueue, LinkParams, StreamWriter};
use bytes::Bytes;
use peergroup_client::fuzzing::{FuzzSession, Upload};
use peergroup_client::ClientEvent;
use peergroup_protocol::{
    ClientDatagram, ClientToServer, DatagramLane, Delivery, Fingerprint, GroupId, HostId, Notice,
    PairId, PairPath, PathReason, PeerToPeer, Priority, PunchOrder, PunchOutcome, SendOptions,
    ServerDatagram, ServerToClient,
};
use peergroup_server::registry::{
    punch_start_delays, Action, GroupOptions, NoticeOrder, PunchConfig, Registry, RegistryConfig,
};
use peergroup_server::{JoinAckError, LeaveAckError, ServerEvent};
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

    // ---- the main loop -------------------------------------------------------------------

    /// Runs to the end; returns the violations found (empty: every check passed).
    pub fn run(mut self) -> (Vec<String>, RunStats) {
        // Bounded in events too, whatever a bug does to the timers.
        const MAX_EVENTS: u64 = 2_000_000;
        let mut client_ran: HashMap<HostId, Duration> = HashMap::new();
        loop {
            if !self.oracle.violations.is_empty() {
                break;
            }
            if self.stats.events > MAX_EVENTS {
                self.violation(format!("over {MAX_EVENTS} events: a timer spins?"));
                break;
            }
            // The next thing due: an event, the registry's timer, or a session's timer.
            let now = self.clock.elapsed();
            let mut next = self.events.peek_time();
            let mut pick = |t: Duration| next = Some(next.map_or(t, |n: Duration| n.min(t)));
            if let Some(at) = self.registry.poll_timeout() {
                pick(self.clock.offset_of(at).max(now));
            }
            for (&host, client) in &self.clients {
                if let Some(at) = client.timer {
                    // A deadline in the past is due at once, but a session is not run twice
                    // at one instant (its timer task would not either).
                    let mut at = at.max(now);
                    if client_ran.get(&host) == Some(&at) {
                        at += Duration::from_millis(1);
                    }
                    pick(at);
                }
            }
            let Some(next) = next else { break };
            // Past the end only while something is still on its way (a backlogged link, a
            // join or leave waiting for acks), and not for long.
            if next > self.end && (self.settled() || next > self.end + OVERTIME) {
                break;
            }
            self.clock.advance_to(next);
            let now = self.clock.elapsed();
            self.stats.events += 1;
            while let Some((_, event)) = self.events.pop_due(now) {
                self.handle(event);
            }
            let instant = self.clock.now();
            if self.registry.poll_timeout().is_some_and(|at| at <= instant) {
                self.registry.handle_timeout(instant);
                self.dispatch();
                self.check_pairs();
            }
            let due: Vec<HostId> = self
                .clients
                .iter()
                .filter(|(_, c)| c.timer.is_some_and(|at| at <= now))
                .map(|(h, _)| *h)
                .collect();
            for host in due {
                if client_ran.get(&host) == Some(&now) {
                    continue;
                }
                client_ran.insert(host, now);
                if let Some(client) = self.clients.get_mut(&host) {
                    client.session.handle_timeout(instant);
                }
                self.flush(host);
            }
            self.pump();
        }
        self.finish();
        self.stats.delivered = self.oracle.delivered;
        self.stats.required = self.oracle.required;
        (self.oracle.violations, self.stats)
    }

    /// Whether nothing is on its way: no writer has a backlog, no join or leave waits.
    fn settled(&self) -> bool {
        self.registry.pending_acks() == 0
            && self.clients.values().all(|c| {
                c.up_main.is_idle()
                    && c.up_control.is_idle()
                    && c.down.is_idle()
                    && c.directs.values().all(|d| d.writer.is_idle())
            })
    }

    /// Lets every writer with work take what its link allows now.
    fn pump(&mut self) {
        let now = self.clock.elapsed();
        let mut wakes = Vec::new();
        let mut arrivals: Vec<(Duration, Ev)> = Vec::new();
        for host in std::mem::take(&mut self.dirty) {
            let Some(client) = self.clients.get_mut(&host) else {
                continue;
            };
            let rng = &mut self.rng;
            let mut wake = None;
            let mut note = |at: Option<Duration>| {
                if let Some(at) = at {
                    wake = Some(wake.map_or(at, |w: Duration| w.min(at)));
                }
            };
            note(client.up_main.pump(rng, now, |frame, at| {
                arrivals.push((at, Ev::ServerFrame { from: host, frame }))
            }));
            note(client.up_control.pump(rng, now, |frame, at| {
                arrivals.push((at, Ev::ServerFrame { from: host, frame }))
            }));
            note(client.down.pump(rng, now, |frame, at| {
                arrivals.push((at, Ev::ClientFrame { to: host, frame }))
            }));
            for (&peer, direct) in &mut client.directs {
                let conn = direct.conn;
                let log = &mut direct.sent_log;
                note(direct.writer.pump(rng, now, |(frame, id), at| {
                    if id != 0 {
                        log.push(id);
                    }
                    arrivals.push((
                        at,
                        Ev::PeerFrame {
                            conn,
                            to: peer,
                            from: host,
                            frame,
                        },
                    ))
                }));
            }
            if let Some(at) = wake {
                wakes.push((at, host));
            }
        }
        for (at, ev) in arrivals {
            self.events.push(at, ev);
        }
        for (at, host) in wakes {
            self.events.push(at, Ev::Wake(host));
        }
    }

    fn handle(&mut self, event: Ev) {
        if self.trace {
            eprintln!("{:?} {event:?}", self.clock.elapsed());
        }
        let now = self.clock.now();
        match event {
            Ev::Wake(host) => {
                self.dirty.insert(host);
            }
            Ev::Act => {
                self.act();
                if self.clock.elapsed() < self.shape.active {
                    let gap = self.rng.random_range(1..=2 * self.shape.mean_gap_ms);
                    self.events
                        .push(self.clock.elapsed() + Duration::from_millis(gap), Ev::Act);
                }
            }
            Ev::ServerFrame { from, frame } => {
                if !self.registry.is_connected(from) {
                    return;
                }
                if let Err(error) = self.registry.handle_frame(from, frame, now) {
                    self.violation(format!("the registry refused a frame of {from}: {error}"));
                }
                self.dispatch();
            }
            Ev::ServerDatagram { from, datagram } => {
                if self.registry.is_connected(from) {
                    self.registry.handle_datagram(from, datagram, now);
                    self.dispatch();
                }
            }
            Ev::ClientFrame { to, frame } => {
                if !self.clients.contains_key(&to) {
                    return;
                }
                if let ServerToClient::Notices(notices) = &frame {
                    for notice in notices {
                        match notice {
                            Notice::MemberJoined {
                                group,
                                member,
                                membership,
                                ..
                            } => {
                                self.told_membership
                                    .insert((to, *group, *member), *membership);
                            }
                            Notice::MemberLeft { group, member, .. } => {
                                self.told_membership.remove(&(to, *group, *member));
                            }
                            _ => {}
                        }
                    }
                }
                let Some(client) = self.clients.get_mut(&to) else {
                    return;
                };
                if let Err(error) = client.session.handle_frame(frame, now) {
                    self.violation(format!("{to} refused a server frame: {error}"));
                }
                self.flush(to);
            }
            Ev::ClientDatagram { to, datagram } => {
                if let Some(client) = self.clients.get_mut(&to) {
                    client.session.handle_datagram(datagram, now);
                    self.flush(to);
                }
            }
            Ev::PeerFrame {
                conn,
                to,
                from,
                frame,
            } => {
                if !self.conns.get(&conn).is_some_and(|c| c.alive) {
                    return; // lost with its path
                }
                let Some(direct) = self
                    .clients
                    .get_mut(&to)
                    .and_then(|c| c.directs.get_mut(&from))
                    .filter(|d| d.conn == conn)
                else {
                    return; // that end is closed
                };
                if direct.paused {
                    direct.held.push_back(frame);
                    return;
                }
                self.peer_frame(to, from, frame);
                self.flush(to);
            }
            Ev::PeerDatagram {
                conn,
                to,
                from,
                datagram,
            } => {
                if !self.conns.get(&conn).is_some_and(|c| c.alive) {
                    return;
                }
                let Some(client) = self.clients.get_mut(&to) else {
                    return;
                };
                if client.directs.get(&from).is_some_and(|d| d.conn == conn) {
                    client.session.handle_peer_datagram(from, datagram, now);
                    self.flush(to);
                }
            }
            Ev::PunchEnd {
                host,
                pair,
                attempt,
                conn,
            } => self.punch_end(host, pair, attempt, conn),
            Ev::PathDeath { conn } => {
                let Some(c) = self.conns.get_mut(&conn) else {
                    return;
                };
                if !c.alive {
                    return;
                }
                c.alive = false;
                self.stats.deaths += 1;
                let hosts = c.hosts;
                // Each side finds out when its idle timer runs out; with a longer one the
                // session's own ack timeout (5 s) gives up first, and the driver closes it.
                for host in [hosts.0, hosts.1] {
                    let after = Duration::from_millis(self.rng.random_range(300..=8_000));
                    self.events.push(
                        self.clock.elapsed() + after,
                        Ev::ConnLost {
                            conn,
                            host,
                            reason: PathReason::DirectTimedOut,
                        },
                    );
                }
            }
            Ev::ConnLost { conn, host, reason } => self.close_direct(host, conn, reason),
        }
    }

    /// A frame read from the direct connection of `to` with `from`.
    fn peer_frame(&mut self, to: HostId, from: HostId, frame: PeerToPeer) {
        let now = self.clock.now();
        let Some(client) = self.clients.get_mut(&to) else {
            return;
        };
        let result = match frame {
            PeerToPeer::Ack { received } => {
                // Acks count frames in the order they left the queue: hand that over first.
                if let Some(direct) = client.directs.get_mut(&from) {
                    let sent = std::mem::take(&mut direct.sent_log);
                    client.session.handle_direct_sent(from, sent);
                }
                client.session.handle_direct_ack(from, received)
            }
            frame => client.session.handle_peer_frame(from, frame, now),
        };
        if let Err(error) = result {
            self.violation(format!(
                "{to} refused a frame of its direct peer {from}: {error}"
            ));
            return;
        }
        if client.session.direct_reading_paused(from) {
            if let Some(direct) = client.directs.get_mut(&from) {
                direct.paused = true;
            }
        }
    }

    // ---- the server driver ---------------------------------------------------------------

    /// Carries out the registry's actions as the server's driver does: notices gathered
    /// into one frame per host, queued ahead of or behind the messages their order names.
    fn dispatch(&mut self) {
        #[derive(Default)]
        struct Gathered {
            notices: Vec<Notice>,
            after: Vec<HostId>,
            after_all: bool,
        }
        let mut gathered: BTreeMap<HostId, Gathered> = BTreeMap::new();
        let mut events = Vec::new();
        while let Some(action) = self.registry.poll_action() {
            match action {
                Action::Notice { to, notice, order } => {
                    match &notice {
                        Notice::MemberJoined {
                            group,
                            member,
                            membership,
                            ..
                        } => {
                            self.server_membership
                                .insert((*group, *member), *membership);
                        }
                        Notice::MemberLeft { group, member, .. } if *member == to => {
                            self.server_membership.remove(&(*group, *member));
                        }
                        _ => {}
                    }
                    let g = gathered.entry(to).or_default();
                    g.notices.push(notice);
                    match order {
                        NoticeOrder::AheadOfMessages => {}
                        NoticeOrder::AfterMessagesFrom(sender) => g.after.push(sender),
                        NoticeOrder::AfterAllMessages => g.after_all = true,
                    }
                }
                Action::Send { to, message } => {
                    if !matches!(message, ServerToClient::PeerUp { .. }) {
                        if let Some(g) = gathered.remove(&to) {
                            self.send_notices(to, g.notices, &g.after, g.after_all);
                        }
                    }
                    let Some(client) = self.clients.get_mut(&to) else {
                        continue;
                    };
                    let len = frame_len_down(&message);
                    if let ServerToClient::PeerDown { peer, .. } = &message {
                        client.down.queue.promote_flow(peer.raw());
                    }
                    client.down.push_control(message, len);
                    self.dirty.insert(to);
                }
                Action::Disconnect { host, reason } => {
                    self.violation(format!("the registry disconnects {host}: {reason}"));
                }
                Action::SendData {
                    to,
                    message,
                    priority,
                    from,
                    latest,
                } => {
                    if let Some(client) = self.clients.get_mut(&to) {
                        // As `server/src/outbound.rs`: an older latest value than the one
                        // queued is dropped, not put in its place.
                        let seq_of = |m: &ServerToClient| match m {
                            ServerToClient::Deliver { seq, .. } => Some(*seq),
                            _ => None,
                        };
                        if let Some(key) = latest {
                            let queued = client.down.queue.queued_latest(from.raw(), key);
                            if let (Some(old), Some(new)) =
                                (queued.and_then(seq_of), seq_of(&message))
                            {
                                if old > new {
                                    continue;
                                }
                            }
                        }
                        let len = frame_len_down(&message);
                        client
                            .down
                            .push_data(message, len, priority, from.raw(), latest);
                        self.dirty.insert(to);
                    }
                }
                Action::Datagram { to, message, .. } => {
                    let to = to.into_iter().map(|(host, _, number)| (host, number));
                    self.send_datagrams(to.collect(), message);
                }
                Action::AppDatagram { to, message } => self.send_datagrams(to, message),
                Action::Event(event) => events.push(event),
                Action::Punch {
                    pair,
                    attempt,
                    controlling,
                    controlled,
                    candidates_of_controlling,
                    candidates_of_controlled,
                } => {
                    let rtt = |w: &World, h: HostId| {
                        w.clients.get(&h).map_or(Duration::ZERO, |c| {
                            c.up_main.params.latency + c.down.params.latency
                        })
                    };
                    let (delay_a, delay_b) =
                        punch_start_delays(rtt(self, controlling), rtt(self, controlled));
                    let secret = [7u8; 32];
                    let order = |peer, candidates, delay: Duration, controlling| {
                        ServerToClient::PunchOrder(PunchOrder {
                            peer,
                            pair,
                            attempt,
                            secret,
                            candidates,
                            start_in_ms: delay.as_millis().min(10_000) as u32,
                            controlling,
                        })
                    };
                    let to_a = order(controlled, candidates_of_controlled, delay_a, true);
                    let to_b = order(controlling, candidates_of_controlling, delay_b, false);
                    for (host, frame) in [(controlling, to_a), (controlled, to_b)] {
                        if let Some(g) = gathered.remove(&host) {
                            self.send_notices(host, g.notices, &g.after, g.after_all);
                        }
                        if let Some(client) = self.clients.get_mut(&host) {
                            client.down.push_control(frame, 64);
                            self.dirty.insert(host);
                        }
                    }
                }
            }
        }
        for (to, g) in gathered {
            self.send_notices(to, g.notices, &g.after, g.after_all);
        }
        for event in events {
            self.server_event(event);
        }
    }

    fn send_notices(&mut self, to: HostId, notices: Vec<Notice>, after: &[HostId], all: bool) {
        let Some(client) = self.clients.get_mut(&to) else {
            return;
        };
        if all {
            client.down.queue.promote_flows(|_| true);
        } else if !after.is_empty() {
            client
                .down
                .queue
                .promote_flows(|flow| after.iter().any(|h| h.raw() == flow));
        }
        let frame = ServerToClient::Notices(notices);
        let len = frame_len_down(&frame);
        client.down.push_control(frame, len);
        self.dirty.insert(to);
    }

    fn send_datagrams(&mut self, to: Vec<(HostId, u64)>, mut message: ServerDatagram) {
        let now = self.clock.elapsed();
        for (host, number) in to {
            let Some(client) = self.clients.get(&host) else {
                continue;
            };
            let ServerDatagram::Deliver { lane, seq, .. } = &mut message;
            if matches!(lane, DatagramLane::Sequenced { .. }) {
                *seq = number;
            }
            if let Some(at) = client.down.params.datagram_arrival(&mut self.rng, now) {
                self.events.push(
                    at,
                    Ev::ClientDatagram {
                        to: host,
                        datagram: message.clone(),
                    },
                );
            }
        }
    }

    /// What the server application would be told.
    fn server_event(&mut self, event: ServerEvent) {
        match event {
            ServerEvent::JoinAckComplete {
                group,
                member,
                result,
            } => {
                let Some(op) = self
                    .pending_joins
                    .get_mut(&(group, member))
                    .and_then(VecDeque::pop_front)
                else {
                    self.violation(format!("a join of {member} to {group} completed twice"));
                    return;
                };
                self.stats.ops_completed += 1;
                let explained = match result {
                    Ok(()) => true,
                    Err(JoinAckError::MemberLeft) => self.left_since(group, member, op),
                    Err(JoinAckError::Disconnected) => self.disconnected_since(member, op),
                    Err(JoinAckError::GroupDestroyed) => self.destroyed_since(group, op),
                    Err(_) => false,
                };
                if !explained {
                    self.violation(format!("join of {member} to {group} ended {result:?}"));
                }
            }
            ServerEvent::LeaveAckComplete {
                group,
                member,
                result,
            } => {
                let Some(op) = self
                    .pending_leaves
                    .get_mut(&(group, member))
                    .and_then(VecDeque::pop_front)
                else {
                    self.violation(format!("a leave of {member} from {group} completed twice"));
                    return;
                };
                self.stats.ops_completed += 1;
                let explained = match result {
                    Ok(()) => true,
                    Err(LeaveAckError::Disconnected) => self.disconnected_since(member, op),
                    Err(LeaveAckError::GroupDestroyed) => self.destroyed_since(group, op),
                    Err(_) => false,
                };
                if !explained {
                    self.violation(format!("leave of {member} from {group} ended {result:?}"));
                }
            }
            _ => {}
        }
    }

    fn left_since(&self, group: GroupId, member: HostId, op: PendingOp) -> bool {
        self.last_leave
            .get(&(group, member))
            .is_some_and(|&at| at > op.started)
    }

    fn disconnected_since(&self, member: HostId, op: PendingOp) -> bool {
        self.disconnected
            .get(&member)
            .is_some_and(|&at| at >= op.started)
    }

    fn destroyed_since(&self, group: GroupId, op: PendingOp) -> bool {
        self.destroyed
            .get(&group)
            .is_some_and(|&at| at >= op.started)
    }

    /// Pair linger, on the registry's side: two hosts that share a group have a pair; one
    /// that shares none any more keeps it for the linger time, not less and not more.
    fn check_pairs(&mut self) {
        let now = self.clock.elapsed();
        let linger = self.shape.linger;
        let hosts: Vec<HostId> = self.clients.keys().copied().collect();
        let groups: HashMap<HostId, BTreeSet<GroupId>> = hosts
            .iter()
            .map(|&h| {
                let groups = self.registry.groups_of(h).unwrap_or_default();
                (h, groups.into_iter().collect())
            })
            .collect();
        let mut problems = Vec::new();
        for (i, &a) in hosts.iter().enumerate() {
            for &b in &hosts[i + 1..] {
                let key = ordered(a, b);
                let shares = !groups[&a].is_disjoint(&groups[&b]);
                let pair = self.registry.pair_between(a, b);
                if shares {
                    self.unshared_since.remove(&key);
                    if pair.is_none() {
                        problems.push(format!("{a} and {b} share a group but have no pair"));
                    }
                } else if self.had_pair.contains(&key) || pair.is_some() {
                    let since = *self.unshared_since.entry(key).or_insert(now);
                    match pair {
                        Some(_) if now > since + linger => problems.push(format!(
                            "the pair of {a} and {b} outlived its linger ({linger:?} from {since:?})"
                        )),
                        None if self.had_pair.contains(&key) && now < since + linger => {
                            problems.push(format!(
                                "the pair of {a} and {b} ended before its linger ({linger:?} from {since:?})"
                            ))
                        }
                        _ => {}
                    }
                }
                if pair.is_some() {
                    self.had_pair.insert(key);
                } else {
                    self.had_pair.remove(&key);
                }
            }
        }
        for problem in problems {
            self.violation(problem);
        }
    }

    // ---- the client driver ---------------------------------------------------------------

    /// Carries out what the session of `host` asks after an input, as the client driver
    /// does, and hands its events to the oracle.
    fn flush(&mut self, host: HostId) {
        let now = self.clock.elapsed();
        loop {
            let Some(client) = self.clients.get_mut(&host) else {
                return;
            };
            let mut closing = Vec::new();
            let mut orders = Vec::new();
            while let Some(upload) = client.session.poll_upload() {
                match upload {
                    Upload::Control(frame) => {
                        let len = frame_len_up(&frame);
                        client.up_control.push_control(frame, len);
                    }
                    Upload::Relay {
                        frame,
                        priority,
                        flow,
                        latest,
                    } => {
                        let len = frame_len_up(&frame);
                        client.up_main.push_data(frame, len, priority, flow, latest);
                    }
                    Upload::Datagram(datagram) => {
                        if let Some(at) = client.up_main.params.datagram_arrival(&mut self.rng, now)
                        {
                            self.events.push(
                                at,
                                Ev::ServerDatagram {
                                    from: host,
                                    datagram,
                                },
                            );
                        }
                    }
                    Upload::Peer {
                        to,
                        frame,
                        priority,
                        latest,
                        id,
                    } => {
                        let Some(direct) = client.directs.get_mut(&to) else {
                            continue;
                        };
                        let len = frame_len_peer(&frame);
                        if let Some((_, replaced)) =
                            direct
                                .writer
                                .push_data((frame, id), len, priority, 0, latest)
                        {
                            client.session.forget_replaced(to, replaced);
                        }
                    }
                    Upload::PeerControl { to, frame } => {
                        if let Some(direct) = client.directs.get_mut(&to) {
                            let len = frame_len_peer(&frame);
                            direct.writer.push_control((frame, 0), len);
                        }
                    }
                    Upload::PeerDatagram { to, datagram } => {
                        let Some(direct) = client.directs.get(&to) else {
                            continue;
                        };
                        let conn = direct.conn;
                        let Some(c) = self.conns.get(&conn) else {
                            continue;
                        };
                        if let Some(at) = c.params.datagram_arrival(&mut self.rng, now) {
                            self.events.push(
                                at,
                                Ev::PeerDatagram {
                                    conn,
                                    to,
                                    from: host,
                                    datagram,
                                },
                            );
                        }
                    }
                }
            }
            while let Some(order) = client.session.poll_punch_order() {
                orders.push(order);
            }
            while let Some(peer) = client.session.poll_stalled_link() {
                closing.push(peer);
            }
            while let Some(peer) = client.session.poll_ended_pair() {
                closing.push(peer);
            }
            let mut resumed = Vec::new();
            while let Some(peer) = client.session.poll_resumed_reader() {
                resumed.push(peer);
            }
            let mut events = Vec::new();
            while let Some(event) = client.session.poll_event() {
                events.push(event);
            }
            let idle =
                orders.is_empty() && closing.is_empty() && resumed.is_empty() && events.is_empty();
            for event in events {
                self.client_event(host, event);
            }
            for order in orders {
                self.start_punch(host, order);
            }
            for peer in closing {
                let conn = self
                    .clients
                    .get(&host)
                    .and_then(|c| c.directs.get(&peer))
                    .map(|d| d.conn);
                if let Some(conn) = conn {
                    self.close_direct(host, conn, PathReason::DirectClosed);
                }
            }
            for peer in resumed {
                self.resume_reading(host, peer);
            }
            if idle {
                self.dirty.insert(host);
                // Nothing more can come of this input until the next one.
                if let Some(client) = self.clients.get_mut(&host) {
                    client.timer = client
                        .session
                        .poll_timeout()
                        .map(|at| self.clock.offset_of(at));
                }
                return;
            }
        }
    }

    fn resume_reading(&mut self, host: HostId, peer: HostId) {
        loop {
            let Some(direct) = self
                .clients
                .get_mut(&host)
                .and_then(|c| c.directs.get_mut(&peer))
            else {
                return;
            };
            direct.paused = false;
            let Some(frame) = direct.held.pop_front() else {
                return;
            };
            self.peer_frame(host, peer, frame);
            let paused = self
                .clients
                .get(&host)
                .and_then(|c| c.directs.get(&peer))
                .is_none_or(|d| d.paused);
            if paused {
                return;
            }
        }
    }

    fn client_event(&mut self, host: HostId, event: ClientEvent) {
        if self.trace {
            eprintln!("{:?} {host} event {event:?}", self.clock.elapsed());
        }
        match event {
            ClientEvent::MemberJoined { group, member, .. } => {
                self.oracle.view_joined(host, group, member)
            }
            ClientEvent::MemberLeft { group, member, .. } => {
                self.oracle.view_left(host, group, member)
            }
            ClientEvent::Message {
                from,
                group,
                payload,
                delivery,
                channel,
                path,
            } => {
                if path == peergroup_protocol::Path::Direct {
                    self.stats.direct_deliveries += 1;
                }
                let before = self.oracle.violations.len();
                self.oracle
                    .delivered(host, from, group, &payload, delivery, channel);
                if self.oracle.violations.len() > before {
                    let last = self.oracle.violations.pop().unwrap_or_default();
                    self.violation(format!("{last} (path {path:?})"));
                }
            }
            ClientEvent::PathChanged { path, .. } => match path {
                PairPath::Direct => self.stats.to_direct += 1,
                _ => self.stats.to_relay += 1,
            },
            ClientEvent::PeerIgnored { peer, fault } => {
                self.violation(format!("{host} ignores its peer {peer}: {fault:?}"));
            }
            _ => {}
        }
    }

    // ---- punching and direct connections -------------------------------------------------

    fn start_punch(&mut self, host: HostId, order: PunchOrder) {
        let now = self.clock.elapsed();
        let Some(client) = self.clients.get_mut(&host) else {
            return;
        };
        if !client.direct_enabled {
            client.up_control.push_control(
                ClientToServer::PunchReport {
                    pair: order.pair,
                    attempt: order.attempt,
                    outcome: PunchOutcome::Declined,
                },
                24,
            );
            self.dirty.insert(host);
            return;
        }
        if client.directs.contains_key(&order.peer) || client.punches.contains_key(&order.pair) {
            return; // already direct, or already punching: a stale order
        }
        if client.session.pair_of(order.peer) != Some(order.pair) {
            return;
        }
        client.punches.insert(order.pair, order.attempt);
        let ready = now + Duration::from_millis(u64::from(order.start_in_ms));
        // This side gives up after the window unless the connection came up first.
        self.events.push(
            ready + PUNCH_WINDOW,
            Ev::PunchEnd {
                host,
                pair: order.pair,
                attempt: order.attempt,
                conn: None,
            },
        );
        let sides = self
            .attempts
            .entry((order.pair, order.attempt))
            .or_default();
        sides.push((host, ready));
        if sides.len() != 2 {
            return;
        }
        let (a, ready_a) = sides[0];
        let (b, ready_b) = sides[1];
        let (Some(nat_a), Some(nat_b)) = (
            self.clients.get(&a).map(|c| c.nat),
            self.clients.get(&b).map(|c| c.nat),
        ) else {
            return; // one side is gone
        };
        if !nat_a.can_punch(nat_b) || !self.rng.random_bool(0.9) {
            return; // both sides time out
        }
        let params = LinkParams::random(&mut self.rng, 2, 60);
        let conn = self.next_conn;
        self.next_conn += 1;
        self.conns.insert(
            conn,
            Conn {
                hosts: (a, b),
                alive: true,
                closed: (false, false),
                params,
            },
        );
        let up = ready_a.max(ready_b) + params.latency * 3;
        for (side, extra) in [(a, Duration::ZERO), (b, params.latency)] {
            self.events.push(
                up + extra,
                Ev::PunchEnd {
                    host: side,
                    pair: order.pair,
                    attempt: order.attempt,
                    conn: Some(conn),
                },
            );
        }
        // Some direct paths die on their own later (while the application acts: the
        // drain is for settling).
        if self.rng.random_bool(0.3) {
            let at = up + Duration::from_millis(self.rng.random_range(100..=6_000));
            if at < self.shape.active {
                self.events.push(at, Ev::PathDeath { conn });
            }
        }
    }

    fn punch_end(&mut self, host: HostId, pair: PairId, attempt: u32, conn: Option<u64>) {
        let now = self.clock.now();
        let Some(client) = self.clients.get_mut(&host) else {
            return;
        };
        if client.punches.get(&pair) != Some(&attempt) {
            return; // settled already
        }
        client.punches.remove(&pair);
        let Some(conn) = conn else {
            client.up_control.push_control(
                ClientToServer::PunchReport {
                    pair,
                    attempt,
                    outcome: PunchOutcome::NoResponse,
                },
                24,
            );
            self.dirty.insert(host);
            return;
        };
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let peer = c.other(host);
        let usable = c.alive && !c.closed.0 && !c.closed.1;
        let current = client.session.pair_of(peer) == Some(pair);
        if !usable || !current || client.directs.contains_key(&peer) {
            // Not needed, or closed by the other side already: close it.
            self.close_conn(host, conn);
            return;
        }
        let rtt = c.params.latency * 2;
        client.directs.insert(
            peer,
            Direct {
                conn,
                writer: StreamWriter::new(c.params),
                sent_log: Vec::new(),
                paused: false,
                held: VecDeque::new(),
            },
        );
        client.session.set_direct(peer, rtt, now);
        client.up_control.push_control(
            ClientToServer::PunchReport {
                pair,
                attempt,
                outcome: PunchOutcome::Direct {
                    rtt_us: rtt.as_micros() as u32,
                },
            },
            24,
        );
        self.flush(host);
    }

    /// `host` closes (or has lost) its end of `conn`: the session goes back to the relay
    /// for that peer, and the other side hears of it one latency later if the path lives.
    fn close_direct(&mut self, host: HostId, conn: u64, reason: PathReason) {
        let now = self.clock.now();
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let peer = c.other(host);
        let Some(client) = self.clients.get_mut(&host) else {
            return;
        };
        if client.directs.get(&peer).is_some_and(|d| d.conn == conn) {
            client.directs.remove(&peer);
            client.session.set_relay(peer, reason, now);
        }
        self.close_conn(host, conn);
        self.flush(host);
    }

    fn close_conn(&mut self, host: HostId, conn: u64) {
        let latency = {
            let Some(c) = self.conns.get_mut(&conn) else {
                return;
            };
            if std::mem::replace(c.closed_by(host), true) {
                return;
            }
            c.alive.then_some(c.params.latency)
        };
        let other = self.conns[&conn].other(host);
        if let Some(latency) = latency {
            self.events.push(
                self.clock.elapsed() + latency,
                Ev::ConnLost {
                    conn,
                    host: other,
                    reason: PathReason::DirectClosed,
                },
            );
        }
    }

    // ---- the application -----------------------------------------------------------------

    /// One application action, drawn at random.
    fn act(&mut self) {
        let roll = self.rng.random_range(0..100u32);
        match roll {
            0..=44 => self.random_send(),
            45..=54 => {
                let n = self.rng.random_range(5..=30);
                for _ in 0..n {
                    self.random_send();
                }
            }
            55..=69 => self.random_join(),
            70..=81 => self.random_leave(),
            82..=83 => self.create_group(),
            84 => self.random_destroy(),
            85..=91 => self.random_death(),
            92 if self.rng.random_bool(0.3) => self.random_disconnect(),
            93..=96 => self.random_app_send(),
            _ => self.random_send(),
        }
    }

    fn random_client(&mut self) -> Option<HostId> {
        let hosts: Vec<HostId> = self.clients.keys().copied().collect();
        (!hosts.is_empty()).then(|| hosts[self.rng.random_range(0..hosts.len())])
    }

    fn random_group(&mut self) -> Option<GroupId> {
        let groups: Vec<GroupId> = self.registry.groups();
        (!groups.is_empty()).then(|| groups[self.rng.random_range(0..groups.len())])
    }

    fn random_join(&mut self) {
        let (Some(host), Some(group)) = (self.random_client(), self.random_group()) else {
            return;
        };
        let now = self.clock.now();
        if self.trace {
            eprintln!("{:?} join {host} to {group}", self.clock.elapsed());
        }
        if let Ok(peergroup_server::registry::JoinOutcome::Joined) =
            self.registry.join_group(group, host, Bytes::new(), now)
        {
            self.start_op(true, group, host);
        }
        self.dispatch();
        self.check_pairs();
    }

    fn random_leave(&mut self) {
        let Some(group) = self.random_group() else {
            return;
        };
        let members = self.registry.group_members(group).unwrap_or_default();
        if members.is_empty() {
            return;
        }
        let host = members[self.rng.random_range(0..members.len())];
        let now = self.clock.now();
        if self.trace {
            eprintln!("{:?} leave {host} from {group}", self.clock.elapsed());
        }
        if self.registry.leave_group(group, host, now).is_ok() {
            self.start_op(false, group, host);
            self.last_leave.insert((group, host), self.action_counter);
            self.oracle.bump_epoch(host, Some(group));
        }
        self.dispatch();
        self.check_pairs();
    }

    fn random_destroy(&mut self) {
        let Some(group) = self.random_group() else {
            return;
        };
        let members = self.registry.group_members(group).unwrap_or_default();
        let now = self.clock.now();
        self.action_counter += 1;
        self.destroyed.insert(group, self.action_counter);
        if self.registry.destroy_group(group, now).is_ok() {
            // A destroy is a leave of every member.
            for host in members {
                self.start_op(false, group, host);
                self.last_leave.insert((group, host), self.action_counter);
                self.oracle.bump_epoch(host, Some(group));
            }
        }
        self.dispatch();
        self.check_pairs();
    }

    fn random_death(&mut self) {
        let mut live: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.alive && !c.closed.0 && !c.closed.1)
            .map(|(id, _)| *id)
            .collect();
        live.sort_unstable();
        if live.is_empty() {
            return;
        }
        let conn = live[self.rng.random_range(0..live.len())];
        self.events
            .push(self.clock.elapsed(), Ev::PathDeath { conn });
    }

    fn random_disconnect(&mut self) {
        if self.clients.len() <= 2 {
            return;
        }
        let Some(host) = self.random_client() else {
            return;
        };
        let now = self.clock.now();
        // It leaves every group; each of those leaves completes once the others ack.
        for group in self.registry.groups_of(host).unwrap_or_default() {
            self.start_op(false, group, host);
        }
        self.action_counter += 1;
        self.disconnected.insert(host, self.action_counter);
        self.oracle.bump_epoch(host, None);
        self.oracle.forget_view(host);
        let client = self.clients.remove(&host).expect("picked among clients");
        // Its direct connections close with it.
        for direct in client.directs.values() {
            self.close_conn(host, direct.conn);
        }
        // Its own joins and leaves end with it; they complete as `Disconnected`.
        self.registry.handle_disconnect(host, now);
        self.dispatch();
        self.check_pairs();
    }

    /// One message from the server application to some connected clients, in a random
    /// mode (as `Server::send` hands it to the registry).
    fn random_app_send(&mut self) {
        let to: Vec<HostId> = self
            .clients
            .keys()
            .copied()
            .filter(|_| self.rng.random_bool(0.5))
            .collect();
        if to.is_empty() {
            return;
        }
        let delivery = self.random_delivery();
        let channel = self.rng.random_range(0..3u8);
        let priority =
            [Priority::High, Priority::Medium, Priority::Low][self.rng.random_range(0..3)];
        let options = SendOptions {
            delivery,
            channel,
            priority,
        };
        let id = self.oracle.record_send(Sent {
            from: HostId::SERVER,
            group: None,
            delivery,
            channel,
            epochs: vec![0; to.len()],
            to: to.clone(),
            from_epoch: 0,
            at: self.clock.elapsed(),
        });
        let len = self.rng.random_range(8..=200);
        self.stats.sent += 1;
        self.registry.handle_app_send(
            &to,
            None,
            options.carrier(),
            priority,
            Oracle::payload(id, len),
        );
        self.dispatch();
    }

    fn random_delivery(&mut self) -> Delivery {
        match self.rng.random_range(0..10u32) {
            0..=2 => Delivery::ReliableOrdered,
            3..=4 => Delivery::ReliableUnordered,
            5 => Delivery::Unreliable,
            6 => Delivery::UnreliableSequenced,
            _ => Delivery::Latest {
                key: self.rng.random_range(0..4),
            },
        }
    }

    /// One send from a random client in a random mode, to a group it is in or to a peer.
    fn random_send(&mut self) {
        let Some(host) = self.random_client() else {
            return;
        };
        let client = &self.clients[&host];
        let groups = client.session.groups();
        if groups.is_empty() {
            return;
        }
        let group = groups[self.rng.random_range(0..groups.len())];
        let members: Vec<HostId> = client
            .session
            .group_members(group)
            .unwrap_or_default()
            .into_iter()
            .filter(|&m| m != host && m != HostId::SERVER)
            .collect();
        if members.is_empty() {
            return;
        }
        let (target, to, named_group) = if self.rng.random_bool(0.7) {
            (
                peergroup_client::fuzzing::Target::Group(group),
                members.clone(),
                Some(group),
            )
        } else {
            let peer = members[self.rng.random_range(0..members.len())];
            (
                peergroup_client::fuzzing::Target::Host(peer),
                vec![peer],
                None,
            )
        };
        // A send that would wait for a full direct window is not made (try_send's QueueFull).
        if to
            .iter()
            .any(|&p| self.clients[&host].session.direct_window_full(p))
        {
            return;
        }
        let delivery = self.random_delivery();
        let channel = self.rng.random_range(0..3u8);
        let priority =
            [Priority::High, Priority::Medium, Priority::Low][self.rng.random_range(0..3)];
        let len = if delivery.is_unreliable() {
            self.rng.random_range(8..=200)
        } else if self.rng.random_bool(0.05) {
            self.rng.random_range(2_000..=20_000)
        } else {
            self.rng.random_range(8..=300)
        };
        // Which destinations must get it if it is reliable: those the server has in the
        // group (or sharing a group, for a message to a host) along with the sender now.
        let server_groups = |h: HostId| -> BTreeSet<GroupId> {
            self.registry
                .groups_of(h)
                .unwrap_or_default()
                .into_iter()
                .collect()
        };
        let from_groups = server_groups(host);
        // On a direct path a message names the memberships its sender knew; one whose
        // receiver (or sender) has since left and joined again is dropped as sent under an
        // ended membership (README, "Ordering around membership"), so it must arrive only
        // if the sender knew the current ones.
        let current = |w: &World, member: HostId, g: GroupId| {
            let told = w.told_membership.get(&(host, g, member));
            told.is_some() && told == w.server_membership.get(&(g, member))
        };
        let epochs: Vec<u64> = to
            .iter()
            .map(|&peer| {
                let peer_groups = server_groups(peer);
                let required = match named_group {
                    Some(g) => {
                        from_groups.contains(&g)
                            && peer_groups.contains(&g)
                            && current(self, peer, g)
                            && current(self, host, g)
                    }
                    None => !from_groups.is_disjoint(&peer_groups),
                };
                // Guarantees hold per pair: one sent under a pair the server has ended
                // (and replaced) is refused as `UnknownPair`.
                let pair = self.clients[&host].session.pair_of(peer);
                let current_pair = self.registry.pair_between(host, peer).map(|(p, _)| p);
                if required && pair.is_some() && pair == current_pair {
                    self.oracle.epoch(peer, named_group)
                } else {
                    u64::MAX
                }
            })
            .collect();
        let from_epoch = self.oracle.epoch(host, named_group);
        let id = self.oracle.record_send(Sent {
            from: host,
            group: named_group,
            delivery,
            channel,
            to,
            epochs,
            from_epoch,
            at: self.clock.elapsed(),
        });
        let payload = Oracle::payload(id, len);
        let options = SendOptions {
            delivery,
            channel,
            priority,
        };
        let client = self.clients.get_mut(&host).expect("picked among clients");
        match client
            .session
            .send(&target, payload, options, Some(MAX_DATAGRAM))
        {
            Ok(()) => {
                if self.trace {
                    eprintln!(
                        "{:?} {host} sends #{id} {target:?} {delivery:?} ch {channel} {priority:?}",
                        self.clock.elapsed()
                    );
                }
                self.stats.sent += 1;
                self.flush(host);
            }
            Err(_) => self.oracle.unrecord_last(),
        }
    }

    // ---- the end -------------------------------------------------------------------------

    /// The checks once everything settled: every op completed, every client's view of
    /// its groups and peers agrees with the registry, every reliable message arrived.
    fn finish(&mut self) {
        self.check_pairs();
        if !self.oracle.violations.is_empty() {
            return;
        }
        let mut problems = Vec::new();
        for ((group, member), ops) in &self.pending_joins {
            if !ops.is_empty() {
                problems.push(format!("a join of {member} to {group} never completed"));
            }
        }
        for ((group, member), ops) in &self.pending_leaves {
            if !ops.is_empty() {
                problems.push(format!("a leave of {member} from {group} never completed"));
            }
        }
        if self.registry.pending_acks() != 0 {
            problems.push(format!(
                "{} joins and leaves still wait for acks",
                self.registry.pending_acks()
            ));
        }
        for (&host, client) in &self.clients {
            let server_groups: BTreeSet<GroupId> = self
                .registry
                .groups_of(host)
                .unwrap_or_default()
                .into_iter()
                .collect();
            let view = self.oracle.view_of(host);
            let told: BTreeSet<GroupId> = view.keys().copied().collect();
            if told != server_groups {
                problems.push(format!(
                    "{host} was told it is in {told:?}, the server has it in {server_groups:?}"
                ));
            }
            let session_groups: BTreeSet<GroupId> = client.session.groups().into_iter().collect();
            if session_groups != server_groups {
                problems.push(format!(
                    "{host}'s session is in {session_groups:?}, the server has it in {server_groups:?}"
                ));
            }
            for (&group, told_members) in &view {
                let members: BTreeSet<HostId> = self
                    .registry
                    .group_members(group)
                    .unwrap_or_default()
                    .into_iter()
                    .collect();
                if *told_members != members {
                    problems.push(format!(
                        "{host} was told {group} has {told_members:?}, the server has {members:?}"
                    ));
                }
                let session: BTreeSet<HostId> = client
                    .session
                    .group_members(group)
                    .unwrap_or_default()
                    .into_iter()
                    .collect();
                if session != members {
                    problems.push(format!(
                        "{host}'s session has {group} as {session:?}, the server has {members:?}"
                    ));
                }
            }
            // Pairs: exactly the hosts it shares a group with, the lingering ones gone.
            let sharing: BTreeSet<HostId> = self
                .clients
                .keys()
                .copied()
                .filter(|&other| {
                    other != host
                        && self
                            .registry
                            .groups_of(other)
                            .unwrap_or_default()
                            .iter()
                            .any(|g| server_groups.contains(g))
                })
                .collect();
            let peers: BTreeSet<HostId> = client.session.peers().into_iter().collect();
            if peers != sharing {
                problems.push(format!(
                    "{host} has peers {peers:?}, but shares groups with {sharing:?}"
                ));
            }
        }
        for problem in problems {
            self.violation(problem);
        }
        let connected: BTreeSet<HostId> = self.clients.keys().copied().collect();
        self.oracle.check_complete(&connected);
    }
}

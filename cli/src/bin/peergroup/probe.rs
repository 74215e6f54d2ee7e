//! `peergroup probe`: a machine-readable client for tests and benchmarks.
//!
//! The contract (also in `peergroup probe --help`; keep both in step, and keep it
//! stable: tests and benchmark scripts parse it):
//!
//! 1. Connects (login payload = `--name`) and joins `--room` as `--name`.
//! 2. Waits until at least `--expect-peers` other members are in the room, for at most
//!    `--duration` seconds; fewer by then is a failure (exit 3, nothing sent).
//! 3. Sends `--count` messages to the room's group at `--rate` per second, with
//!    `--delivery`: `reliable` = ReliableOrdered, `unordered` = ReliableUnordered,
//!    `unreliable` = Unreliable (datagrams), `sequenced` = UnreliableSequenced
//!    (datagrams), `latest` = Latest, message i under key i % `--keys` (its value is i);
//!    all on channel 0. Payload, `--size` bytes (at least 16): sequence number (u64
//!    big-endian, from 0), send time in microseconds since the UNIX epoch (u64
//!    big-endian; for one-way latency on one machine), zeros.
//! 4. Stays until `--duration` seconds have passed since sending started and its own
//!    sending has finished, and then until `--count` distinct messages (for `latest`: the
//!    last value sent for each key) have arrived from every peer still in the room, for
//!    at most 10 more seconds (1 for `unreliable` and `sequenced`). A peer that leaves is
//!    not waited for. Every probe of a room is taken to use the same `--count` and
//!    `--keys`.
//! 5. Leaves the room (which also flushes what it sent), disconnects and prints the
//!    summary.
//!
//! Stdout carries JSON objects, one per line, flushed line by line (ids are raw `u64`s,
//! `at_ms` counts milliseconds from process start):
//!
//! ```text
//! {"event":"connected","host":ID,"transport":"quic"|"websocket","at_ms":T}
//! {"event":"member_joined","group":G,"host":H}
//! {"event":"member_left","group":G,"host":H}
//! {"event":"path","peer":H,"path":"relay"|"direct","at_ms":T}
//! {"event":"connection_lost","at_ms":T}
//! {"event":"resumed","host":H,"after_ms":T}
//! {"event":"session_lost","reason":R,"at_ms":T}
//! {"event":"disconnected","reason":R,"at_ms":T}
//! {"event":"summary","sent":N,"peers":[{"peer":H,"received":n,"lost":n,"duplicates":n,
//!   "out_of_order":n,"malformed":n,"path":"relay"|"direct","relay_received":n,
//!   "direct_received":n,"rtt_ms":x,"latency_p50_us":n|null,"latency_p99_us":n|null
//!   [,"latest":{"keys":K,"sent":n,"delivered":n,"backwards":n,"stale_keys":n}]}],
//!   "send_failed":n}
//! ```
//!
//! - `connected`: `at_ms` is when the connection was up (login answered), so it is the
//!   connect time including the QUIC-or-WebSocket race of `--transport auto`.
//! - `member_joined` / `member_left`: every membership notice (the probe's own included).
//! - `connection_lost` / `resumed`: the server connection was lost (silence for the idle
//!   timeout) and the client is resuming its session; `resumed` when it did, `after_ms`
//!   counting from the loss being noticed.
//! - `session_lost`: the connection was lost and the session could not be resumed (the
//!   resume window ended, or the server refused the resume: it no longer kept the host);
//!   `disconnected`: the session ended in any other way while the probe ran (kicked,
//!   server closed, protocol error). `reason` is the client's text. Either is followed by
//!   the summary, and the probe exits with status 1.
//! - `path`: when a peer is first seen (its `MemberJoined`: `relay`), and on every
//!   change of the peer's path the client reports (relay to direct and back).
//! - `summary`: exactly once, last, also after a failure once the room was joined.
//!   `received` counts every message from the peer (duplicates included, malformed ones
//!   not); `lost` = count - distinct sequence numbers below count; `duplicates` = repeats
//!   of a sequence number; `out_of_order` = arrivals, not duplicates, below the highest
//!   sequence number seen before from that peer; `malformed` = payloads under 16 bytes;
//!   `path` = the last path; `rtt_ms` = the smoothed RTT of that path (the direct
//!   connection's, or the server connection's for the relay);
//!   latencies are one-way, send to receipt, over distinct arrivals (nearest rank),
//!   `null` when nothing arrived. `send_failed` counts messages the server refused to
//!   relay. Messages from the server itself are never counted.
//! - `latest`: only with `--delivery latest` (absent otherwise), per peer: `keys` =
//!   `--keys`; `sent` = values the peer sent (`--count`); `delivered` = distinct values
//!   below that which arrived (the others were superseded, which is allowed; for this
//!   mode `lost` counts them too); `backwards` = arrivals, not duplicates, older than a
//!   value already delivered for their key; `stale_keys` = keys sent to whose last
//!   delivered value is not the last value sent for the key (nothing delivered
//!   included). The guarantee held when both are 0.
//!
//! Exit status: 0 success; 1 connection failed or lost, or a send failed; 2 the room
//! join was refused; 3 a check failed: fewer than `--expect-peers` peers, fewer than
//! `--count` messages sent, a duplicate or malformed message, a relay refusal, or what
//! the mode forbids: any loss (`reliable`, `unordered`), any reordering (`reliable`,
//! `sequenced`), `backwards` or `stale_keys` (`latest`). The reason goes to stderr.

use crate::common::{self, Failure, ServerArgs, EXIT_CHECK_FAILED};
use peergroup_client::{
    Client, ClientEvent, ClientEvents, Delivery, GroupId, HostId, PairPath, Path, SendError, Target,
};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

/// Bytes of the payload header: sequence number and send time.
pub const HEADER_LEN: usize = 16;

/// How long past the end of the run the probe waits for missing reliable messages.
const RELIABLE_GRACE: Duration = Duration::from_secs(10);
/// How long past the end of the run the probe waits for missing unreliable messages.
const UNRELIABLE_GRACE: Duration = Duration::from_secs(1);

/// How the probe sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeliveryArg {
    /// `Delivery::ReliableOrdered`: no loss, duplicate or reordering allowed.
    Reliable,
    /// `Delivery::ReliableUnordered`: no loss or duplicate allowed; any order.
    Unordered,
    /// `Delivery::Unreliable` (QUIC datagrams): loss and reordering allowed.
    Unreliable,
    /// `Delivery::UnreliableSequenced` (datagrams): loss allowed; no duplicate, and
    /// nothing older than the newest delivered.
    Sequenced,
    /// `Delivery::Latest`, message i under key i % --keys: per key never older than the
    /// newest delivered, and the last value sent arrives; others may be skipped.
    Latest,
}

impl DeliveryArg {
    /// The checker of this mode; `keys` matters to `latest` only (at least 1).
    fn checker(self, keys: u64) -> Checker {
        match self {
            DeliveryArg::Reliable => Checker::Reliable,
            DeliveryArg::Unordered => Checker::Unordered,
            DeliveryArg::Unreliable => Checker::Unreliable,
            DeliveryArg::Sequenced => Checker::Sequenced,
            DeliveryArg::Latest => Checker::Latest { keys: keys.max(1) },
        }
    }
}

/// One delivery mode: how the probe sends in it and what it promises about each peer's
/// messages. Stateless, so one value judges every peer's [`PeerStats`]. Duplicates and
/// malformed payloads are wrong in every mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checker {
    /// `ReliableOrdered`: every message, in order.
    Reliable,
    /// `ReliableUnordered`: every message, in any order.
    Unordered,
    /// `Unreliable`: loss and reordering allowed.
    Unreliable,
    /// `UnreliableSequenced`: loss allowed, nothing older than the newest delivered.
    Sequenced,
    /// `Latest`: message i is value i of key i % `keys`. Per key, nothing older than the
    /// newest delivered, and the last value sent is the last delivered; values in between
    /// may be skipped.
    Latest {
        /// How many keys the values go round (at least 1).
        keys: u64,
    },
}

impl Checker {
    /// How message `seq` is sent.
    pub fn delivery(self, seq: u64) -> Delivery {
        match self {
            Checker::Reliable => Delivery::ReliableOrdered,
            Checker::Unordered => Delivery::ReliableUnordered,
            Checker::Unreliable => Delivery::Unreliable,
            Checker::Sequenced => Delivery::UnreliableSequenced,
            Checker::Latest { keys } => Delivery::Latest { key: seq % keys },
        }
    }

    /// How long past the end of the run to wait for missing messages.
    fn grace(self) -> Duration {
        if self.delivery(0).is_unreliable() {
            UNRELIABLE_GRACE
        } else {
            RELIABLE_GRACE
        }
    }

    /// Whether every message must arrive.
    fn no_loss(self) -> bool {
        matches!(self, Checker::Reliable | Checker::Unordered)
    }

    /// Whether a message older than the newest delivered must never arrive.
    fn in_order(self) -> bool {
        matches!(self, Checker::Reliable | Checker::Sequenced)
    }

    /// Whether all that can be waited for arrived of the `count` messages a peer sends:
    /// every message, or for `Latest` the last value of each key.
    pub fn complete(self, stats: &PeerStats, count: u64) -> bool {
        match self {
            Checker::Latest { keys } => {
                (0..keys.min(count)).all(|key| stats.seqs.contains(&last_of_key(key, keys, count)))
            }
            _ => stats.distinct_below(count) >= count,
        }
    }

    /// The per-key figures of `Latest` (`None` for the other modes).
    pub fn latest(self, stats: &PeerStats, count: u64) -> Option<LatestSummary> {
        let Checker::Latest { keys } = self else {
            return None;
        };
        // Per key: the newest value delivered and the last one.
        let mut newest: HashMap<u64, u64> = HashMap::new();
        let mut last: HashMap<u64, u64> = HashMap::new();
        let mut backwards = 0;
        for &value in &stats.arrivals {
            let key = value % keys;
            match newest.get_mut(&key) {
                Some(max) if value < *max => backwards += 1,
                Some(max) => *max = value,
                None => {
                    newest.insert(key, value);
                }
            }
            last.insert(key, value);
        }
        let stale_keys = (0..keys.min(count))
            .filter(|key| last.get(key) != Some(&last_of_key(*key, keys, count)))
            .count() as u64;
        Some(LatestSummary {
            keys,
            sent: count,
            delivered: stats.distinct_below(count),
            backwards,
            stale_keys,
        })
    }
}

/// The last of `count` values (0 to count - 1) that goes to `key` (below both `keys` and
/// `count`), value i going to key i % `keys`.
fn last_of_key(key: u64, keys: u64, count: u64) -> u64 {
    key + (count - 1 - key) / keys * keys
}

/// Measure a room: send sequenced messages, count what arrives, print JSON lines.
///
/// A machine-readable client for tests and benchmarks; this contract is stable.
///
///  1. Joins ROOM as NAME (also the login payload).
///  2. Waits until at least --expect-peers other members are in the room, for at most
///     --duration seconds; fewer by then fails (exit 3, nothing sent).
///  3. Sends --count messages to the room at --rate per second with --delivery (latest:
///     message i under key i % --keys, value i). Payload (--size bytes, at least 16):
///     sequence number (u64 big-endian, from 0), send time in microseconds since the
///     UNIX epoch (u64 big-endian), zeros.
///  4. Stays until --duration seconds have passed since sending started and its own
///     sending finished, then until --count distinct messages (latest: each key's last
///     value) arrived from every peer still in the room, for at most 10 s more (1 s for
///     unreliable and sequenced). All probes of a room use the same --count and --keys.
///  5. Leaves the room, disconnects, prints the summary.
///
/// Stdout: one JSON object per line (ids are raw u64; at_ms = ms since process start):
///   {"event":"connected","host":ID,"transport":"quic"|"websocket","at_ms":T}
///   {"event":"member_joined","group":G,"host":H}
///   {"event":"member_left","group":G,"host":H}
///   {"event":"path","peer":H,"path":"relay"|"direct","at_ms":T}
///   {"event":"connection_lost","at_ms":T}
///   {"event":"resumed","host":H,"after_ms":T}
///   {"event":"session_lost","reason":R,"at_ms":T}
///   {"event":"disconnected","reason":R,"at_ms":T}
///   {"event":"summary","sent":N,"peers":[{"peer":H,"received":n,"lost":n,
///     "duplicates":n,"out_of_order":n,"malformed":n,"path":"relay"|"direct",
///     "relay_received":n,"direct_received":n,"rtt_ms":x,
///     "latency_p50_us":n|null,"latency_p99_us":n|null[,"latest":{"keys":K,"sent":n,
///     "delivered":n,"backwards":n,"stale_keys":n}]}],"send_failed":n}
///
/// connected: at_ms = when the login was answered (the connect time).
/// member_joined/member_left: every membership notice, the probe's own included.
/// connection_lost/resumed: the session is being resumed / was (after_ms from the loss).
/// session_lost: lost and not resumed (window over, or refused); disconnected: ended
/// otherwise. Both come before the summary; the exit status is then 1.
/// path: when a peer is first seen (relay) and on every reported change of its path.
/// summary: exactly once, last, whenever the room was joined (also on failure).
/// received = all messages from the peer (duplicates included); lost = count -
/// distinct sequence numbers; out_of_order = non-duplicate arrivals below the highest
/// sequence number seen before; malformed = payloads under 16 bytes; rtt_ms =
/// smoothed RTT of the peer's path; latencies are one-way (nearest rank). Messages from
/// the server are never counted. latest (only with --delivery latest): keys; sent =
/// --count; delivered = distinct values that arrived (the rest were superseded);
/// backwards = arrivals older than a value already delivered for their key;
/// stale_keys = keys whose last delivered value is not the last sent for them.
///
/// Exit status: 0 success; 1 connection failed or lost; 2 join refused; 3 a check
/// failed (too few peers, not all sent, duplicates, malformed messages, relay
/// refusals, loss for reliable and unordered, reordering for reliable and sequenced,
/// backwards or stale_keys for latest). Reasons go to stderr.
#[derive(Debug, Clone, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct ProbeArgs {
    #[command(flatten)]
    server: ServerArgs,

    /// The room to join (created on first join).
    #[arg(long, value_name = "NAME")]
    room: String,

    /// Display name and login payload.
    #[arg(long, value_name = "NAME")]
    name: String,

    /// The room's password, if it has one.
    /// Prefer the PEERGROUP_ROOM_PASSWORD environment variable: other users of the
    /// machine can read a command line (`ps`), not another user's environment.
    #[arg(
        long,
        value_name = "PW",
        env = "PEERGROUP_ROOM_PASSWORD",
        hide_env_values = true
    )]
    password: Option<String>,

    /// Messages to send.
    #[arg(long, value_name = "N", default_value_t = 100)]
    count: u64,

    /// Messages per second.
    #[arg(long, value_name = "PER_SEC", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..))]
    rate: u32,

    /// Payload bytes, at least 16.
    #[arg(long, value_name = "BYTES", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(16..))]
    size: u32,

    /// Seconds to stay from the start of sending (fractions allowed).
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse_secs)]
    duration: Duration,

    /// How to send.
    #[arg(long, value_enum, default_value_t = DeliveryArg::Reliable)]
    delivery: DeliveryArg,

    /// Keys the values of --delivery latest go round (ignored by the other modes).
    #[arg(long, value_name = "N", default_value_t = 8,
          value_parser = clap::value_parser!(u64).range(1..))]
    keys: u64,

    /// Other members to wait for before sending.
    #[arg(long, value_name = "N", default_value_t = 1)]
    expect_peers: usize,
}

fn parse_secs(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .parse()
        .map_err(|e| format!("not a number of seconds: {e}"))?;
    Duration::try_from_secs_f64(secs).map_err(|e| format!("not a duration: {e}"))
}

// ---- payload ---------------------------------------------------------------------------

/// Microseconds since the UNIX epoch (0 if the clock is before it).
pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A probe payload of `size` bytes (at least [`HEADER_LEN`]).
pub fn encode_payload(seq: u64, sent_us: u64, size: usize) -> Vec<u8> {
    let mut payload = vec![0u8; size.max(HEADER_LEN)];
    payload[..8].copy_from_slice(&seq.to_be_bytes());
    payload[8..HEADER_LEN].copy_from_slice(&sent_us.to_be_bytes());
    payload
}

/// The sequence number and send time of a probe payload; `None` if it is too short.
pub fn decode_payload(payload: &[u8]) -> Option<(u64, u64)> {
    let seq = payload.get(..8)?.try_into().ok()?;
    let sent = payload.get(8..HEADER_LEN)?.try_into().ok()?;
    Some((u64::from_be_bytes(seq), u64::from_be_bytes(sent)))
}

// ---- statistics ------------------------------------------------------------------------

/// The `p`-th percentile (0 to 100) of sorted values by nearest rank; `None` if empty.
pub fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p.clamp(0.0, 100.0) / 100.0 * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// What one probe learned about one peer: sequence tracking, paths and latencies. No IO.
#[derive(Debug, Default, Clone)]
pub struct PeerStats {
    seqs: HashSet<u64>,
    /// The distinct sequence numbers in the order they arrived.
    arrivals: Vec<u64>,
    highest: Option<u64>,
    received: u64,
    duplicates: u64,
    out_of_order: u64,
    malformed: u64,
    relay_received: u64,
    direct_received: u64,
    latencies_us: Vec<u64>,
    path: Option<Path>,
}

impl PeerStats {
    /// Records the path the peer is on; `true` when it differs from the last one
    /// recorded (or none was).
    pub fn note_path(&mut self, path: Path) -> bool {
        let changed = self.path != Some(path);
        self.path = Some(path);
        changed
    }

    /// Records one message that arrived at `now_us` (microseconds since the UNIX epoch)
    /// on `path`. The peer's path itself is what the client reports (`PathChanged`):
    /// around a switch, messages of both paths can arrive interleaved.
    pub fn record(&mut self, payload: &[u8], path: Path, now_us: u64) {
        let Some((seq, sent_us)) = decode_payload(payload) else {
            self.malformed += 1;
            return;
        };
        self.received += 1;
        match path {
            Path::Direct => self.direct_received += 1,
            _ => self.relay_received += 1,
        }
        if !self.seqs.insert(seq) {
            self.duplicates += 1;
            return;
        }
        if self.highest.is_some_and(|highest| seq < highest) {
            self.out_of_order += 1;
        }
        self.highest = Some(self.highest.map_or(seq, |highest| highest.max(seq)));
        self.arrivals.push(seq);
        self.latencies_us.push(now_us.saturating_sub(sent_us));
    }

    /// Distinct sequence numbers below `count` received.
    pub fn distinct_below(&self, count: u64) -> u64 {
        self.seqs.iter().filter(|&&seq| seq < count).count() as u64
    }

    /// Of `count` messages sent, how many never arrived.
    pub fn lost(&self, count: u64) -> u64 {
        count.saturating_sub(self.distinct_below(count))
    }

    /// One-way latency percentile in microseconds over distinct arrivals.
    pub fn latency_us(&self, p: f64) -> Option<u64> {
        let mut sorted = self.latencies_us.clone();
        sorted.sort_unstable();
        percentile(&sorted, p)
    }

    /// The peer's entry of the summary line.
    pub fn summary(&self, peer: HostId, count: u64, rtt_ms: f64) -> PeerSummary {
        PeerSummary {
            peer: peer.raw(),
            received: self.received,
            lost: self.lost(count),
            duplicates: self.duplicates,
            out_of_order: self.out_of_order,
            malformed: self.malformed,
            path: common::path_name(self.path.unwrap_or(Path::Relay)),
            relay_received: self.relay_received,
            direct_received: self.direct_received,
            rtt_ms,
            latency_p50_us: self.latency_us(50.0),
            latency_p99_us: self.latency_us(99.0),
            latest: None,
        }
    }

    /// What is wrong with this peer's figures under `checker`'s mode, if anything.
    pub fn problems(&self, count: u64, checker: Checker) -> Vec<String> {
        let mut problems = Vec::new();
        if self.duplicates > 0 {
            problems.push(format!("{} duplicates", self.duplicates));
        }
        if self.malformed > 0 {
            problems.push(format!("{} malformed messages", self.malformed));
        }
        if checker.no_loss() && self.lost(count) > 0 {
            problems.push(format!("{} of {count} lost", self.lost(count)));
        }
        if checker.in_order() && self.out_of_order > 0 {
            problems.push(format!("{} out of order", self.out_of_order));
        }
        if let Some(latest) = checker.latest(self, count) {
            if latest.backwards > 0 {
                problems.push(format!(
                    "{} values older than one already delivered for their key",
                    latest.backwards
                ));
            }
            if latest.stale_keys > 0 {
                problems.push(format!(
                    "{} of {} keys did not end on their last value sent",
                    latest.stale_keys,
                    latest.keys.min(count)
                ));
            }
        }
        problems
    }
}

// ---- the run ---------------------------------------------------------------------------

/// One line of the probe's stdout. Field order is the documented one.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Line {
    /// Connected to the server as `host`.
    Connected {
        /// This probe's host id.
        host: u64,
        /// The carrier it connected over: `"quic"` or `"websocket"`.
        transport: &'static str,
        /// Milliseconds since process start when the connection was up (logged in).
        at_ms: u64,
    },
    /// `host` joined `group`.
    MemberJoined {
        /// The group.
        group: u64,
        /// Who joined.
        host: u64,
    },
    /// `host` left `group`.
    MemberLeft {
        /// The group.
        group: u64,
        /// Who left.
        host: u64,
    },
    /// `peer` is (now) reached over `path`.
    Path {
        /// The peer.
        peer: u64,
        /// `relay` or `direct`.
        path: &'static str,
        /// Milliseconds since process start.
        at_ms: u64,
    },
    /// The connection to the server was lost; the probe is resuming its session.
    ConnectionLost {
        /// Milliseconds since process start.
        at_ms: u64,
    },
    /// The session resumed as the same `host` (the one of the `connected` line).
    Resumed {
        /// This probe's host id.
        host: u64,
        /// Milliseconds from the loss being noticed to the resume.
        after_ms: u64,
    },
    /// The connection was lost and the session could not be resumed: the resume
    /// window ended or the server refused the resume.
    SessionLost {
        /// Why, as the client library says it.
        reason: String,
        /// Milliseconds since process start.
        at_ms: u64,
    },
    /// The session ended in another way (kicked, closed by the server, protocol error).
    Disconnected {
        /// Why, as the client library says it.
        reason: String,
        /// Milliseconds since process start.
        at_ms: u64,
    },
    /// The results, printed once at the end.
    Summary {
        /// Messages this probe sent.
        sent: u64,
        /// One entry per peer seen in the room.
        peers: Vec<PeerSummary>,
        /// Messages the server refused to relay.
        send_failed: u64,
    },
}

/// One peer's entry of [`Line::Summary`]; see the module docs for each figure.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PeerSummary {
    /// The peer's host id.
    pub peer: u64,
    /// Messages received, duplicates included, malformed ones not.
    pub received: u64,
    /// Of the count, sequence numbers that never arrived.
    pub lost: u64,
    /// Repeated sequence numbers.
    pub duplicates: u64,
    /// Non-duplicate arrivals below the highest sequence number seen before them.
    pub out_of_order: u64,
    /// Payloads too short to be probe messages.
    pub malformed: u64,
    /// The last path.
    pub path: &'static str,
    /// Messages that came through the relay.
    pub relay_received: u64,
    /// Messages that came over a direct path.
    pub direct_received: u64,
    /// Smoothed RTT to the server, milliseconds.
    pub rtt_ms: f64,
    /// Median one-way latency, microseconds.
    pub latency_p50_us: Option<u64>,
    /// 99th percentile one-way latency, microseconds.
    pub latency_p99_us: Option<u64>,
    /// The per-key figures of `--delivery latest`; absent in the other modes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latest: Option<LatestSummary>,
}

/// The `latest` object of a [`PeerSummary`]; see the module docs for each figure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LatestSummary {
    /// `--keys`.
    pub keys: u64,
    /// Values the peer sent (`--count`).
    pub sent: u64,
    /// Distinct values below `sent` that arrived; the rest were superseded.
    pub delivered: u64,
    /// Arrivals, not duplicates, older than a value already delivered for their key.
    pub backwards: u64,
    /// Keys sent to whose last delivered value is not the last value sent for them.
    pub stale_keys: u64,
}

/// Prints one JSON line to stdout and flushes it.
fn emit(line: &Line) {
    let Ok(text) = serde_json::to_string(line) else {
        return;
    };
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{text}");
    let _ = stdout.flush();
}

/// The probe's view of its room.
struct Run {
    me: HostId,
    group: GroupId,
    /// The delivery mode's checks (default: reliable).
    checker: Checker,
    /// Every peer seen in the room (by notice or message), by id.
    peers: BTreeMap<HostId, PeerStats>,
    /// Peers in the room now.
    present: BTreeSet<HostId>,
    /// `SendFailed` events: messages the server refused to relay.
    send_failed: u64,
    /// Why the connection ended, once it has.
    disconnected: Option<String>,
    /// Between `ConnectionLost` and `Resumed`: a disconnect now means the session was
    /// lost.
    resuming: bool,
}

impl Run {
    fn new(me: HostId, group: GroupId) -> Self {
        Self {
            me,
            group,
            checker: Checker::Reliable,
            peers: BTreeMap::new(),
            present: BTreeSet::new(),
            send_failed: 0,
            disconnected: None,
            resuming: false,
        }
    }

    fn emit_path(peer: HostId, path: Path) {
        emit(&Line::Path {
            peer: peer.raw(),
            path: common::path_name(path),
            at_ms: common::ms_since_start(),
        });
    }

    /// Takes one event (`None`: the stream ended). Returns the failure that ends the
    /// run, if this event is one.
    fn handle(&mut self, event: Option<ClientEvent>) -> Result<(), Failure> {
        let Some(event) = event else {
            return self.disconnect("the event stream ended".into());
        };
        match event {
            ClientEvent::MemberJoined { group, member, .. } => {
                emit(&Line::MemberJoined {
                    group: group.raw(),
                    host: member.raw(),
                });
                if group == self.group && member != self.me && member != HostId::SERVER {
                    self.present.insert(member);
                    let stats = self.peers.entry(member).or_default();
                    if stats.path.is_none() {
                        stats.note_path(Path::Relay);
                        Self::emit_path(member, Path::Relay);
                    }
                }
            }
            ClientEvent::MemberLeft { group, member, .. } => {
                emit(&Line::MemberLeft {
                    group: group.raw(),
                    host: member.raw(),
                });
                if group == self.group {
                    if member == self.me {
                        return Err(Failure::new("the server removed this probe from the room"));
                    }
                    self.present.remove(&member);
                }
            }
            ClientEvent::Message { from, .. } if from == HostId::SERVER => {
                tracing::debug!("ignoring a message from the server");
            }
            ClientEvent::Message {
                from,
                group,
                payload,
                path,
                ..
            } if group.is_none() || group == Some(self.group) => {
                let stats = self.peers.entry(from).or_default();
                stats.record(&payload, path, unix_micros());
            }
            ClientEvent::PathChanged { peer, path, .. } => {
                let path = match path {
                    PairPath::Direct => Path::Direct,
                    _ => Path::Relay,
                };
                if self.peers.entry(peer).or_default().note_path(path) {
                    Self::emit_path(peer, path);
                }
            }
            ClientEvent::SendFailed { to, reason, .. } => {
                self.send_failed += 1;
                tracing::warn!(%to, ?reason, "the server refused to relay a message");
            }
            ClientEvent::Disconnected { reason } => return self.disconnect(reason.to_string()),
            ClientEvent::ConnectionLost { reason } => {
                tracing::warn!(%reason, "connection lost; resuming");
                self.resuming = true;
                emit(&Line::ConnectionLost {
                    at_ms: common::ms_since_start(),
                });
            }
            ClientEvent::Resumed { after } => {
                self.resuming = false;
                emit(&Line::Resumed {
                    host: self.me.raw(),
                    after_ms: after.as_millis().min(u128::from(u64::MAX)) as u64,
                });
            }
            other => tracing::debug!(?other, "ignored event"),
        }
        Ok(())
    }

    /// The session ended: prints `session_lost` (if it was being resumed) or
    /// `disconnected`, once, and returns the failure (exit status 1).
    fn disconnect(&mut self, reason: String) -> Result<(), Failure> {
        let (failure, line) = if self.resuming {
            (
                Failure::new(format!("session lost: {reason}")),
                Line::SessionLost {
                    reason: reason.clone(),
                    at_ms: common::ms_since_start(),
                },
            )
        } else {
            (
                Failure::new(format!("disconnected: {reason}")),
                Line::Disconnected {
                    reason: reason.clone(),
                    at_ms: common::ms_since_start(),
                },
            )
        };
        if self.disconnected.is_none() {
            emit(&line);
        }
        self.disconnected = Some(reason);
        Err(failure)
    }

    /// Whether all that can be waited for arrived from every peer still in the room
    /// ([`Checker::complete`]).
    fn complete(&self, count: u64) -> bool {
        self.present.iter().all(|peer| {
            self.peers
                .get(peer)
                .is_some_and(|stats| self.checker.complete(stats, count))
        })
    }

    fn summary(&self, sent: u64, count: u64, rtt_ms: impl Fn(HostId) -> f64) -> Line {
        Line::Summary {
            sent,
            peers: self
                .peers
                .iter()
                .map(|(peer, stats)| PeerSummary {
                    latest: self.checker.latest(stats, count),
                    ..stats.summary(*peer, count, rtt_ms(*peer))
                })
                .collect(),
            send_failed: self.send_failed,
        }
    }
}

/// Waits for the peers, sends, and waits for arrivals, per the contract. `sent` counts
/// the messages sent so far, also when this fails.
async fn drive(
    args: &ProbeArgs,
    client: &Client,
    events: &mut ClientEvents,
    run: &mut Run,
    sent: &mut u64,
) -> Result<(), Failure> {
    let wait_deadline = Instant::now() + args.duration;
    while run.present.len() < args.expect_peers {
        tokio::select! {
            event = events.next() => run.handle(event)?,
            _ = tokio::time::sleep_until(wait_deadline) => {
                return Err(Failure::with_code(
                    EXIT_CHECK_FAILED,
                    format!(
                        "only {} of {} expected peers joined within {:?}",
                        run.present.len(),
                        args.expect_peers,
                        args.duration
                    ),
                ));
            }
        }
    }

    let count = args.count;
    let size = args.size as usize;
    let checker = run.checker;
    let grace = checker.grace();
    let period = Duration::from_secs_f64(1.0 / f64::from(args.rate));
    let send_time = Duration::from_secs_f64(count as f64 / f64::from(args.rate));
    let send_start = Instant::now();
    let min_end = send_start + args.duration;
    let cap = send_start + args.duration.max(send_time) + grace;
    let mut interval = tokio::time::interval_at(send_start, period);
    let mut send_done = (count == 0).then_some(send_start);
    tracing::info!(
        count,
        rate = args.rate,
        ?checker,
        peers = run.present.len(),
        "sending"
    );

    loop {
        let now = Instant::now();
        let wake = match send_done {
            Some(done) => {
                let ready = min_end.max(done);
                let give_up = (ready + grace).min(cap);
                if now >= ready && run.complete(count) {
                    return Ok(());
                }
                if now >= give_up {
                    tracing::info!("stopped waiting for missing messages");
                    return Ok(());
                }
                if now < ready {
                    ready
                } else {
                    give_up
                }
            }
            None if now >= cap => {
                return Err(Failure::with_code(
                    EXIT_CHECK_FAILED,
                    format!(
                        "sent only {sent} of {count} messages within {:?}",
                        cap - send_start
                    ),
                ));
            }
            None => cap,
        };
        tokio::select! {
            _ = interval.tick(), if send_done.is_none() => {
                let payload = encode_payload(*sent, unix_micros(), size);
                let delivery = checker.delivery(*sent);
                let send = client.send(Target::Group(run.group), payload, delivery);
                match tokio::time::timeout_at(cap, send).await {
                    Ok(Ok(())) => {
                        *sent += 1;
                        if *sent == count {
                            send_done = Some(Instant::now());
                        }
                    }
                    Ok(Err(SendError::Disconnected)) => {
                        // The Disconnected event carries the reason; take it from there.
                        let reason = tokio::time::timeout(Duration::from_secs(1), async {
                            loop {
                                match events.next().await {
                                    Some(ClientEvent::Disconnected { reason }) => {
                                        return reason.to_string()
                                    }
                                    None => return "the event stream ended".to_string(),
                                    Some(_) => {}
                                }
                            }
                        })
                        .await
                        .unwrap_or_else(|_| "not connected".into());
                        return run.disconnect(reason);
                    }
                    Ok(Err(error)) => {
                        return Err(Failure::new(format!("sending message {sent}: {error}")));
                    }
                    Err(_) => {} // past the cap: the loop's top reports it
                }
            }
            event = events.next() => run.handle(event)?,
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
}

/// Runs `peergroup probe` (see the [module docs](self) for the contract).
///
/// # Errors
/// A [`Failure`] with the exit status the contract gives.
pub async fn run(args: ProbeArgs) -> Result<(), Failure> {
    common::process_start();
    let (client, mut events) = common::connect(&args.server, &args.name).await?;
    emit(&Line::Connected {
        host: client.host_id().raw(),
        transport: client.transport().name(),
        at_ms: common::ms_since_start(),
    });
    let mut backlog = Vec::new();
    let joined = common::join(
        &client,
        &mut events,
        &args.room,
        args.password.as_deref(),
        &args.name,
        &mut backlog,
    )
    .await?;
    let mut run = Run::new(client.host_id(), joined.group);
    run.checker = args.delivery.checker(args.keys);
    let mut sent = 0;
    let mut outcome = Ok(());
    for event in backlog {
        outcome = run.handle(Some(event));
        if outcome.is_err() {
            break;
        }
    }
    if outcome.is_ok() {
        outcome = drive(&args, &client, &mut events, &mut run, &mut sent).await;
    }

    // The RTT of the path each peer is on: the direct path's, or the relay's (to the
    // server), measured before leaving.
    let server_rtt_ms = client.server_rtt().as_secs_f64() * 1e3;
    let rtts: std::collections::HashMap<HostId, f64> = run
        .peers
        .keys()
        .map(|peer| {
            let direct = client.peer_stats(*peer).and_then(|s| s.direct_rtt);
            (
                *peer,
                direct.map_or(server_rtt_ms, |rtt| rtt.as_secs_f64() * 1e3),
            )
        })
        .collect();
    let rtt_ms = |peer: HostId| rtts.get(&peer).copied().unwrap_or(server_rtt_ms);
    if run.disconnected.is_none() {
        common::leave(&client, &mut events, &args.room).await;
    }
    client.close().await;
    emit(&run.summary(sent, args.count, rtt_ms));
    outcome?;

    let mut problems = Vec::new();
    if run.peers.len() < args.expect_peers {
        problems.push(format!(
            "heard from {} of {} expected peers",
            run.peers.len(),
            args.expect_peers
        ));
    }
    if sent < args.count {
        problems.push(format!("sent {sent} of {} messages", args.count));
    }
    if run.send_failed > 0 {
        problems.push(format!(
            "the server refused to relay {} messages",
            run.send_failed
        ));
    }
    for (peer, stats) in &run.peers {
        let found = stats.problems(args.count, run.checker);
        if !found.is_empty() {
            problems.push(format!("peer {peer}: {}", found.join(", ")));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Failure::with_code(EXIT_CHECK_FAILED, problems.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arrive(stats: &mut PeerStats, seqs: &[u64]) {
        for &seq in seqs {
            stats.record(&encode_payload(seq, 1_000, 64), Path::Relay, 1_000 + seq);
        }
    }

    #[test]
    fn payload_layout_is_big_endian_sequence_then_time_then_zeros() {
        let payload = encode_payload(0x0102, 0x0a0b, 20);
        assert_eq!(payload.len(), 20);
        assert_eq!(&payload[..8], &[0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(&payload[8..16], &[0, 0, 0, 0, 0, 0, 0x0a, 0x0b]);
        assert_eq!(&payload[16..], &[0; 4]);
        assert_eq!(decode_payload(&payload), Some((0x0102, 0x0a0b)));
        assert_eq!(encode_payload(1, 2, 3).len(), HEADER_LEN);
        assert_eq!(decode_payload(&payload[..15]), None);
    }

    #[test]
    fn in_order_arrivals_count_clean() {
        let mut stats = PeerStats::default();
        arrive(&mut stats, &[0, 1, 2, 3]);
        assert_eq!(stats.received, 4);
        assert_eq!(stats.lost(4), 0);
        assert_eq!(stats.duplicates, 0);
        assert_eq!(stats.out_of_order, 0);
        assert!(stats.problems(4, Checker::Reliable).is_empty());
    }

    #[test]
    fn gaps_duplicates_and_reordering_are_counted_apart() {
        let mut stats = PeerStats::default();
        // 0 1 3 2 3 5: 4 lost of 6, one duplicate (3), one out of order (2).
        arrive(&mut stats, &[0, 1, 3, 2, 3, 5]);
        assert_eq!(stats.received, 6);
        assert_eq!(stats.duplicates, 1);
        assert_eq!(stats.out_of_order, 1);
        assert_eq!(stats.lost(6), 1);
        assert_eq!(stats.distinct_below(6), 5);
        // A late duplicate of an old number is a duplicate, not out of order.
        arrive(&mut stats, &[0]);
        assert_eq!((stats.duplicates, stats.out_of_order), (2, 1));
        // Numbers at or above the count do not hide losses.
        arrive(&mut stats, &[9]);
        assert_eq!(stats.lost(6), 1);
        let problems = stats.problems(6, Checker::Reliable);
        assert_eq!(problems.len(), 3, "{problems:?}");
        // Unreliable delivery forgives loss and reordering, never duplicates.
        assert_eq!(
            stats.problems(6, Checker::Unreliable),
            vec!["2 duplicates".to_string()]
        );
    }

    #[test]
    fn short_payloads_are_malformed_not_received() {
        let mut stats = PeerStats::default();
        stats.record(b"hello", Path::Relay, 0);
        assert_eq!((stats.received, stats.malformed), (0, 1));
        assert_eq!(stats.lost(1), 1);
        assert!(!stats.problems(1, Checker::Unreliable).is_empty());
    }

    #[test]
    fn paths_are_counted_and_changes_reported() {
        let mut stats = PeerStats::default();
        assert!(stats.note_path(Path::Relay));
        stats.record(&encode_payload(0, 0, 16), Path::Relay, 0);
        stats.record(&encode_payload(1, 0, 16), Path::Direct, 0);
        assert!(stats.note_path(Path::Direct));
        assert!(!stats.note_path(Path::Direct));
        stats.record(&encode_payload(2, 0, 16), Path::Direct, 0);
        stats.record(&encode_payload(3, 0, 16), Path::Relay, 0);
        assert!(stats.note_path(Path::Relay));
        let summary = stats.summary(HostId::from_raw(7), 4, 1.5);
        assert_eq!(summary.peer, 7);
        assert_eq!((summary.relay_received, summary.direct_received), (2, 2));
        assert_eq!(summary.path, "relay");
        assert_eq!(summary.rtt_ms, 1.5);
        assert_eq!(summary.lost, 0);
    }

    #[test]
    fn latency_percentiles_use_nearest_rank() {
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[5], 99.0), Some(5));
        let values: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&values, 50.0), Some(50));
        assert_eq!(percentile(&values, 99.0), Some(99));
        assert_eq!(percentile(&values, 100.0), Some(100));
        assert_eq!(percentile(&values, 0.0), Some(1));

        let mut stats = PeerStats::default();
        // Latency = receive time - send time; a clock step backwards counts as 0.
        stats.record(&encode_payload(0, 100, 16), Path::Relay, 130);
        stats.record(&encode_payload(1, 100, 16), Path::Relay, 110);
        stats.record(&encode_payload(2, 100, 16), Path::Relay, 50);
        stats.record(&encode_payload(2, 100, 16), Path::Relay, 900); // duplicate: ignored
        assert_eq!(stats.latency_us(50.0), Some(10));
        assert_eq!(stats.latency_us(99.0), Some(30));
        assert_eq!(
            stats.summary(HostId::from_raw(9), 3, 0.0).latency_p50_us,
            Some(10)
        );
        let empty = PeerStats::default().summary(HostId::from_raw(9), 3, 0.0);
        assert_eq!((empty.latency_p50_us, empty.lost), (None, 3));
    }

    #[test]
    fn lines_are_json_with_the_event_first_in_documented_order() {
        let line = |l: &Line| serde_json::to_string(l).unwrap();
        assert_eq!(
            line(&Line::Connected {
                host: 3,
                transport: "websocket",
                at_ms: 310
            }),
            r#"{"event":"connected","host":3,"transport":"websocket","at_ms":310}"#
        );
        assert_eq!(
            line(&Line::SessionLost {
                reason: "timed out".into(),
                at_ms: 41_000
            }),
            r#"{"event":"session_lost","reason":"timed out","at_ms":41000}"#
        );
        assert_eq!(
            line(&Line::Disconnected {
                reason: "closed".into(),
                at_ms: 9
            }),
            r#"{"event":"disconnected","reason":"closed","at_ms":9}"#
        );
        assert_eq!(
            line(&Line::MemberJoined { group: 5, host: 3 }),
            r#"{"event":"member_joined","group":5,"host":3}"#
        );
        assert_eq!(
            line(&Line::MemberLeft { group: 5, host: 3 }),
            r#"{"event":"member_left","group":5,"host":3}"#
        );
        assert_eq!(
            line(&Line::Path {
                peer: 3,
                path: "relay",
                at_ms: 12
            }),
            r#"{"event":"path","peer":3,"path":"relay","at_ms":12}"#
        );
        assert_eq!(
            line(&Line::Resumed {
                host: 3,
                after_ms: 1_500
            }),
            r#"{"event":"resumed","host":3,"after_ms":1500}"#
        );
        assert_eq!(
            line(&Line::ConnectionLost { at_ms: 7 }),
            r#"{"event":"connection_lost","at_ms":7}"#
        );
        let mut stats = PeerStats::default();
        stats.record(&encode_payload(0, 100, 16), Path::Relay, 130);
        let summary = Line::Summary {
            sent: 1,
            peers: vec![stats.summary(HostId::from_raw(3), 1, 0.25)],
            send_failed: 0,
        };
        assert_eq!(
            line(&summary),
            concat!(
                r#"{"event":"summary","sent":1,"peers":[{"peer":3,"received":1,"lost":0,"#,
                r#""duplicates":0,"out_of_order":0,"malformed":0,"path":"relay","#,
                r#""relay_received":1,"direct_received":0,"rtt_ms":0.25,"#,
                r#""latency_p50_us":30,"latency_p99_us":30}],"send_failed":0}"#
            )
        );
    }

    /// Stats of `seqs` arriving in that order.
    fn arrived(seqs: &[u64]) -> PeerStats {
        let mut stats = PeerStats::default();
        arrive(&mut stats, seqs);
        stats
    }

    #[test]
    fn each_mode_sends_with_its_delivery_and_waits_its_grace() {
        let keys = |arg: DeliveryArg| arg.checker(3);
        assert_eq!(keys(DeliveryArg::Reliable), Checker::Reliable);
        assert_eq!(keys(DeliveryArg::Unordered), Checker::Unordered);
        assert_eq!(keys(DeliveryArg::Unreliable), Checker::Unreliable);
        assert_eq!(keys(DeliveryArg::Sequenced), Checker::Sequenced);
        assert_eq!(keys(DeliveryArg::Latest), Checker::Latest { keys: 3 });
        assert_eq!(
            DeliveryArg::Latest.checker(0),
            Checker::Latest { keys: 1 },
            "at least one key"
        );
        assert_eq!(Checker::Reliable.delivery(4), Delivery::ReliableOrdered);
        assert_eq!(Checker::Unordered.delivery(4), Delivery::ReliableUnordered);
        assert_eq!(Checker::Unreliable.delivery(4), Delivery::Unreliable);
        assert_eq!(
            Checker::Sequenced.delivery(4),
            Delivery::UnreliableSequenced
        );
        // Message i goes to key i % keys.
        let latest = Checker::Latest { keys: 3 };
        let sent: Vec<Delivery> = (0..5).map(|seq| latest.delivery(seq)).collect();
        let key = |key| Delivery::Latest { key };
        assert_eq!(sent, vec![key(0), key(1), key(2), key(0), key(1)]);
        for checker in [Checker::Reliable, Checker::Unordered, latest] {
            assert_eq!(checker.grace(), RELIABLE_GRACE, "{checker:?}");
        }
        for checker in [Checker::Unreliable, Checker::Sequenced] {
            assert_eq!(checker.grace(), UNRELIABLE_GRACE, "{checker:?}");
        }
    }

    #[test]
    fn the_delivery_flag_takes_every_mode_and_latest_its_keys() {
        #[derive(Debug, clap::Parser)]
        struct Cli {
            #[command(flatten)]
            probe: ProbeArgs,
        }
        let parse = |extra: &[&str]| {
            let mut argv = vec![
                "probe",
                "--server",
                "127.0.0.1:1",
                "--server-cert",
                "c",
                "--room",
                "r",
                "--name",
                "n",
            ];
            argv.extend_from_slice(extra);
            <Cli as clap::Parser>::try_parse_from(argv).map(|cli| cli.probe)
        };
        let defaults = parse(&[]).unwrap();
        assert_eq!(defaults.delivery, DeliveryArg::Reliable);
        assert_eq!(defaults.keys, 8);
        for (name, arg) in [
            ("reliable", DeliveryArg::Reliable),
            ("unordered", DeliveryArg::Unordered),
            ("unreliable", DeliveryArg::Unreliable),
            ("sequenced", DeliveryArg::Sequenced),
            ("latest", DeliveryArg::Latest),
        ] {
            assert_eq!(
                parse(&["--delivery", name]).unwrap().delivery,
                arg,
                "{name}"
            );
        }
        let latest = parse(&["--delivery", "latest", "--keys", "3"]).unwrap();
        assert_eq!(
            latest.delivery.checker(latest.keys),
            Checker::Latest { keys: 3 }
        );
        assert!(parse(&["--keys", "0"]).is_err());
    }

    #[test]
    fn unordered_wants_every_message_once_in_any_order() {
        let unordered = Checker::Unordered;
        // Reordered but complete: fine for unordered, not for reliable.
        let shuffled = arrived(&[3, 0, 2, 1]);
        assert_eq!(shuffled.out_of_order, 3);
        assert!(unordered.complete(&shuffled, 4));
        assert!(shuffled.problems(4, unordered).is_empty());
        assert_eq!(
            shuffled.problems(4, Checker::Reliable),
            vec!["3 out of order".to_string()]
        );
        assert_eq!(unordered.latest(&shuffled, 4), None);
        // A missing message is loss; waiting goes on for it.
        let missing = arrived(&[3, 0, 1]);
        assert!(!unordered.complete(&missing, 4));
        assert_eq!(
            missing.problems(4, unordered),
            vec!["1 of 4 lost".to_string()]
        );
        // A repeated one is a duplicate.
        let repeated = arrived(&[1, 0, 1, 2, 3]);
        assert!(unordered.complete(&repeated, 4));
        assert_eq!(
            repeated.problems(4, unordered),
            vec!["1 duplicates".to_string()]
        );
    }

    #[test]
    fn sequenced_allows_loss_but_nothing_older_than_the_newest() {
        let sequenced = Checker::Sequenced;
        // Gaps are allowed: what arrives only moves forward.
        let gappy = arrived(&[0, 2, 5, 9]);
        assert_eq!((gappy.lost(10), gappy.out_of_order), (6, 0));
        assert!(gappy.problems(10, sequenced).is_empty());
        assert!(!sequenced.complete(&gappy, 10), "waits (its short grace)");
        assert!(sequenced.complete(&arrived(&[0, 1, 2]), 3));
        // One older than the newest delivered breaks the guarantee.
        let late = arrived(&[0, 2, 1, 3]);
        assert_eq!(
            late.problems(4, sequenced),
            vec!["1 out of order".to_string()]
        );
        assert!(late.problems(4, Checker::Unreliable).is_empty());
        // So does a repeat, even of the newest.
        let repeated = arrived(&[0, 1, 1]);
        assert_eq!(
            repeated.problems(3, sequenced),
            vec!["1 duplicates".to_string()]
        );
    }

    #[test]
    fn the_last_value_of_a_key_is_the_highest_below_the_count() {
        // keys 3, count 10: key 0 gets 0 3 6 9, key 1 gets 1 4 7, key 2 gets 2 5 8.
        assert_eq!(
            (0..3)
                .map(|key| last_of_key(key, 3, 10))
                .collect::<Vec<_>>(),
            vec![9, 7, 8]
        );
        assert_eq!(last_of_key(0, 1, 5), 4);
        // Fewer values than keys: each key sent to gets one.
        assert_eq!(last_of_key(2, 8, 3), 2);
    }

    #[test]
    fn latest_may_skip_values_but_ends_each_key_on_its_last_one() {
        let latest = Checker::Latest { keys: 3 };
        let summary = |stats: &PeerStats| latest.latest(stats, 10).unwrap();
        // Keys interleave out of order and skip values, yet each only moves forward and
        // ends on its last value (0: 0 3 9, 1: 1 7, 2: 2 8).
        let coalesced = arrived(&[1, 0, 3, 2, 7, 9, 8]);
        assert!(
            coalesced.out_of_order > 0,
            "across keys order does not matter"
        );
        assert_eq!(
            summary(&coalesced),
            LatestSummary {
                keys: 3,
                sent: 10,
                delivered: 7,
                backwards: 0,
                stale_keys: 0,
            }
        );
        assert!(latest.complete(&coalesced, 10));
        assert!(coalesced.problems(10, latest).is_empty());

        // Key 0 goes back from 6 to 3, then ends right on 9.
        let backwards = arrived(&[0, 6, 3, 9, 7, 8]);
        assert_eq!(
            (
                summary(&backwards).backwards,
                summary(&backwards).stale_keys
            ),
            (1, 0)
        );
        assert_eq!(
            backwards.problems(10, latest),
            vec!["1 values older than one already delivered for their key".to_string()]
        );

        // Key 2 never gets its last value (8): not complete (still waited for), and stale
        // at the end. Key 0 nothing at all: stale too.
        let stale = arrived(&[7, 5]);
        assert!(!latest.complete(&stale, 10));
        assert_eq!(
            (summary(&stale).backwards, summary(&stale).stale_keys),
            (0, 2)
        );
        assert_eq!(
            stale.problems(10, latest),
            vec!["2 of 3 keys did not end on their last value sent".to_string()]
        );

        // Going back after the last value leaves the key on a stale value.
        let regressed = arrived(&[9, 7, 8, 3]);
        assert!(
            latest.complete(&regressed, 10),
            "the last values did arrive"
        );
        assert_eq!(
            (
                summary(&regressed).backwards,
                summary(&regressed).stale_keys
            ),
            (1, 1)
        );
        assert_eq!(regressed.problems(10, latest).len(), 2);

        // A repeated value is a duplicate, not a step back.
        let repeated = arrived(&[9, 7, 8, 8]);
        assert_eq!(summary(&repeated).backwards, 0);
        assert_eq!(
            repeated.problems(10, latest),
            vec!["1 duplicates".to_string()]
        );

        // Fewer values than keys: only the keys sent to are checked.
        let few = Checker::Latest { keys: 8 };
        let stats = arrived(&[2, 0, 1]);
        assert!(few.complete(&stats, 3));
        assert!(stats.problems(3, few).is_empty());
        assert_eq!(few.latest(&stats, 3).unwrap().stale_keys, 0);
        assert_eq!(few.latest(&PeerStats::default(), 0).unwrap().stale_keys, 0);
    }

    #[test]
    fn the_latest_figures_end_a_peer_entry_only_in_latest_mode() {
        let stats = arrived(&[1, 0]);
        let mut run = Run::new(HostId::from_raw(2), GroupId::from_raw(5));
        run.peers.insert(HostId::from_raw(3), stats);
        let text = |run: &Run| serde_json::to_string(&run.summary(2, 2, |_| 0.5)).unwrap();
        assert!(!text(&run).contains("latest"), "{}", text(&run));
        run.checker = Checker::Latest { keys: 4 };
        let line = text(&run);
        assert!(
            line.ends_with(concat!(
                r#""latency_p99_us":1,"latest":{"keys":4,"sent":2,"delivered":2,"#,
                r#""backwards":0,"stale_keys":0}}],"send_failed":0}"#
            )),
            "{line}"
        );
    }

    #[test]
    fn room_completion_follows_the_mode() {
        let peer = HostId::from_raw(3);
        let mut run = Run::new(HostId::from_raw(2), GroupId::from_raw(5));
        run.present.insert(peer);
        // Keys 2, count 6: the last values are 4 (key 0) and 5 (key 1).
        run.peers.insert(peer, arrived(&[1, 4]));
        run.checker = Checker::Latest { keys: 2 };
        assert!(!run.complete(6));
        arrive(run.peers.get_mut(&peer).unwrap(), &[5]);
        assert!(run.complete(6));
        run.checker = Checker::Unordered;
        assert!(!run.complete(6), "unordered waits for all six");
    }

    #[test]
    fn a_disconnect_while_resuming_is_a_lost_session() {
        use peergroup_client::DisconnectReason;
        let lost = || ClientEvent::ConnectionLost {
            reason: DisconnectReason::TimedOut,
        };
        let ended = || ClientEvent::Disconnected {
            reason: DisconnectReason::TimedOut,
        };
        // Lost, not resumed, then ended: the session was lost.
        let mut run = Run::new(HostId::from_raw(2), GroupId::from_raw(5));
        run.handle(Some(lost())).unwrap();
        let failure = run.handle(Some(ended())).unwrap_err();
        assert_eq!(failure.code, common::EXIT_FAILURE);
        assert_eq!(failure.message, "session lost: timed out");
        // Lost and resumed, then ended: an ordinary disconnect.
        let mut run = Run::new(HostId::from_raw(2), GroupId::from_raw(5));
        run.handle(Some(lost())).unwrap();
        run.handle(Some(ClientEvent::Resumed {
            after: Duration::from_millis(5),
        }))
        .unwrap();
        let failure = run.handle(Some(ended())).unwrap_err();
        assert_eq!(failure.message, "disconnected: timed out");
        assert!(!run.resuming);
    }

    #[test]
    fn room_completion_waits_only_for_present_peers() {
        let group = GroupId::from_raw(5);
        let mut run = Run::new(HostId::from_raw(2), group);
        assert!(run.complete(3));
        let peer = HostId::from_raw(3);
        run.present.insert(peer);
        assert!(!run.complete(3));
        let stats = run.peers.entry(peer).or_default();
        arrive(stats, &[0, 1]);
        assert!(!run.complete(3));
        arrive(run.peers.get_mut(&peer).unwrap(), &[2]);
        assert!(run.complete(3));
        run.present.clear();
        run.present.insert(HostId::from_raw(4));
        assert!(!run.complete(3));
        // Messages from the server are not a peer's.
        let reply = ClientEvent::Message {
            from: HostId::SERVER,
            group: None,
            payload: encode_payload(0, 0, 16).into(),
            delivery: Delivery::ReliableOrdered,
            channel: 0,
            path: Path::Relay,
        };
        run.handle(Some(reply)).unwrap();
        assert!(!run.peers.contains_key(&HostId::SERVER));
        assert!(run.handle(None).is_err());
        assert!(run.disconnected.is_some());
    }
}

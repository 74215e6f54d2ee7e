//! The simulated network: a virtual clock, the event queue, and the two kinds of link a
//! QUIC connection offers (a reliable ordered stream fed from a send queue, and lossy
//! datagrams that may overtake each other).

use peergroup_protocol::schedule::SendQueue;
use peergroup_protocol::Priority;
use rand::RngExt;
use rand_pcg::Pcg64;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

/// The virtual clock: one real `Instant` taken at start, plus the simulated time since.
/// Every `now` handed to the registry and the sessions is `base + offset`, so nothing
/// depends on how fast the machine runs.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base: Instant,
    offset: Duration,
}

impl Clock {
    /// A clock at simulated time zero.
    pub fn new() -> Self {
        Self {
            base: Instant::now(),
            offset: Duration::ZERO,
        }
    }

    /// Simulated time since start.
    pub fn elapsed(&self) -> Duration {
        self.offset
    }

    /// The `Instant` for the current simulated time.
    pub fn now(&self) -> Instant {
        self.base + self.offset
    }

    /// Simulated time of `instant` (zero for one before start).
    pub fn offset_of(&self, instant: Instant) -> Duration {
        instant.saturating_duration_since(self.base)
    }

    /// Moves the clock to `at` (never backwards).
    pub fn advance_to(&mut self, at: Duration) {
        self.offset = self.offset.max(at);
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// Events ordered by time, ties broken by insertion order (so a run is a function of its
/// seed alone).
#[derive(Debug)]
pub struct EventQueue<E> {
    heap: BinaryHeap<Reverse<Entry<E>>>,
    next: u64,
}

#[derive(Debug)]
struct Entry<E> {
    at: Duration,
    id: u64,
    event: E,
}

impl<E> PartialEq for Entry<E> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.id) == (other.at, other.id)
    }
}

impl<E> Eq for Entry<E> {}

impl<E> PartialOrd for Entry<E> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl<E> Ord for Entry<E> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.id).cmp(&(other.at, other.id))
    }
}

impl<E> EventQueue<E> {
    /// An empty queue.
    pub fn new() -> Self {
        Self {
            heap: BinaryHeap::new(),
            next: 0,
        }
    }

    /// Schedules `event` at simulated time `at`.
    pub fn push(&mut self, at: Duration, event: E) {
        let id = self.next;
        self.next += 1;
        self.heap.push(Reverse(Entry { at, id, event }));
    }

    /// When the next event is due.
    pub fn peek_time(&self) -> Option<Duration> {
        self.heap.peek().map(|Reverse(entry)| entry.at)
    }

    /// The next event, if due by `now`.
    pub fn pop_due(&mut self, now: Duration) -> Option<(Duration, E)> {
        if self.peek_time()? > now {
            return None;
        }
        self.heap
            .pop()
            .map(|Reverse(entry)| (entry.at, entry.event))
    }
}

impl<E> Default for EventQueue<E> {
    fn default() -> Self {
        Self::new()
    }
}

/// One direction of a link: latency, jitter, bandwidth, datagram loss.
#[derive(Debug, Clone, Copy)]
pub struct LinkParams {
    /// One-way latency.
    pub latency: Duration,
    /// Up to this much more, drawn per packet (datagrams may overtake each other; a
    /// stream stays in order).
    pub jitter: Duration,
    /// Bytes per second the stream drains its queue at.
    pub bytes_per_sec: u64,
    /// Probability that a datagram is lost.
    pub loss: f64,
}

impl LinkParams {
    /// Random parameters for a link of this quality.
    pub fn random(rng: &mut Pcg64, min_ms: u64, max_ms: u64) -> Self {
        Self {
            latency: Duration::from_millis(rng.random_range(min_ms..=max_ms)),
            jitter: Duration::from_millis(rng.random_range(0..=20)),
            bytes_per_sec: rng.random_range(100_000..=4_000_000),
            loss: [0.0, 0.01, 0.05, 0.2][rng.random_range(0..4usize)],
        }
    }

    /// When a datagram sent at `now` arrives, or `None` when it is lost.
    pub fn datagram_arrival(&self, rng: &mut Pcg64, now: Duration) -> Option<Duration> {
        if rng.random_bool(self.loss) {
            return None;
        }
        Some(now + self.latency + jitter(rng, self.jitter))
    }
}

fn jitter(rng: &mut Pcg64, max: Duration) -> Duration {
    if max.is_zero() {
        Duration::ZERO
    } else {
        Duration::from_micros(rng.random_range(0..=max.as_micros() as u64))
    }
}

/// The sending end of a reliable ordered stream, fed from the shared scheduler's queue
/// (notices first, then messages by priority, latest values replaced in place), as the
/// server's and the client's writers are. It takes one frame at a time when the link is
/// free, so a queue builds up behind a slow link and the scheduler's order matters.
#[derive(Debug)]
pub struct StreamWriter<T> {
    /// What waits to be written.
    pub queue: SendQueue<T>,
    /// The link's parameters.
    pub params: LinkParams,
    busy_until: Duration,
    last_arrival: Duration,
    wake_at: Option<Duration>,
}

impl<T> StreamWriter<T> {
    /// A writer over a link with `params`.
    pub fn new(params: LinkParams) -> Self {
        Self {
            queue: SendQueue::new(),
            params,
            busy_until: Duration::ZERO,
            last_arrival: Duration::ZERO,
            wake_at: None,
        }
    }

    /// Queues a control frame (ahead of messages).
    pub fn push_control(&mut self, item: T, len: usize) {
        self.queue.push_control(item, len);
    }

    /// Queues a message; returns the one it replaced, if any.
    pub fn push_data(
        &mut self,
        item: T,
        len: usize,
        priority: Priority,
        flow: u64,
        latest: Option<u64>,
    ) -> Option<T> {
        self.queue
            .push_data_returning(item, len, priority, flow, latest)
            .map(|(old, _)| old)
    }

    /// Writes what the link takes at `now`: each frame with its arrival time (in order,
    /// never before the previous one). Returns when the writer next wants to run, if it
    /// has more and no wake-up is pending for that time yet.
    pub fn pump(
        &mut self,
        rng: &mut Pcg64,
        now: Duration,
        mut sent: impl FnMut(T, Duration),
    ) -> Option<Duration> {
        if self.wake_at.is_some_and(|at| at <= now) {
            self.wake_at = None;
        }
        while self.busy_until <= now {
            let Some((item, len)) = self.queue.pop() else {
                break;
            };
            let serialise =
                Duration::from_micros((len as u64 * 1_000_000) / self.params.bytes_per_sec.max(1));
            self.busy_until = now.max(self.busy_until) + serialise;
            let arrival = (self.busy_until + self.params.latency + jitter(rng, self.params.jitter))
                .max(self.last_arrival);
            self.last_arrival = arrival;
            sent(item, arrival);
        }
        if !self.queue.is_empty() && self.wake_at.is_none() {
            self.wake_at = Some(self.busy_until);
            return Some(self.busy_until);
        }
        None
    }

    /// Whether nothing waits to be written.
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty()
    }
}

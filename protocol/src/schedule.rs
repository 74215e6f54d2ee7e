//! The send queue: which queued frame leaves next on one reliable stream.
//!
//! Sans-IO: no clock, no IO, no async. The server keeps one [`SendQueue`] per connected client
//! (encoded frames waiting for that client's QUIC stream); the client keeps one for its upload
//! stream to the server and one per direct peer connection. The async wrappers hold it under a
//! mutex and call [`SendQueue::pop`] whenever the stream can take another frame.
//!
//! # Scheduling rule
//! 1. **Control class first, strictly, first in first out.** Notices, acks and time replies
//!    ([`SendQueue::push_control`]) always leave before any data item.
//! 2. **Data: three FIFOs, one per [`Priority`], served by Deficit Round Robin over bytes**
//!    (M. Shreedhar and G. Varghese, "Efficient fair queuing using deficit round robin",
//!    ACM SIGCOMM 1995; IEEE/ACM Transactions on Networking 4(3), 1996). The classes are
//!    visited in the fixed order High, Medium, Low. A visit adds the class's quantum
//!    (`WEIGHTS[class] * QUANTUM` bytes: 4 800, 2 400 and 1 200) to its deficit counter, then
//!    sends head items while the head fits in the deficit, subtracting each item's length. A
//!    class whose FIFO empties has its deficit reset to 0, as in the paper, so an idle class
//!    banks no credit.
//!
//!    Consequences: when all three classes are backlogged, bytes leave in the ratio 4:2:1, so
//!    every class gets at least 1/7 of the stream and none starves; a class alone gets the
//!    whole stream (the scheduler is work-conserving); with items no larger than a quantum,
//!    Low is served at least once in every `(4 + 2 + 1) * QUANTUM` bytes plus one item.
//! 3. **Within one priority, first in first out**, hence also per flow.
//! 4. **Replacement never changes order**: a "latest" push ([`SendQueue::push_data`] with
//!    `latest: Some(key)`, ProudNet's "unique id" send) overwrites the queued, unsent item
//!    with the same `(flow, key)` in its slot, keeping that slot's class and position.
//! 5. [`SendQueue::promote_flow`] moves one flow's data items, in push order, to the back of
//!    the control class (used before a "peer left" notice so it never overtakes that peer's
//!    messages).
//!
//! # Large items
//! Items may be far larger than a quantum (frames of several MiB). Instead of visiting the
//! classes one round at a time until some head fits, each visit first computes, for every
//! backlogged class, how many more quanta its head still needs, and credits every backlogged
//! class with the rounds in which nothing could have been sent (the minimum of those counts,
//! minus one) in one step. The order produced is exactly that of round-by-round DRR (a test
//! checks this), and a [`SendQueue::pop`] visits at most a handful of classes.
//!
//! # Costs
//! Memory is O(items). [`SendQueue::push_control`] and [`SendQueue::pop`] are O(1) amortized;
//! [`SendQueue::push_data`] is O(1), or O(log n) when it replaces (the item is found by its
//! id, which increases within each FIFO, by binary search); [`SendQueue::bytes_of`] is O(items);
//! [`SendQueue::promote_flow`] is O(items), which is fine because it is rare.

use std::collections::{HashMap, VecDeque};

/// The base quantum of Deficit Round Robin, in bytes (about one QUIC packet of payload).
pub const QUANTUM: usize = 1_200;

/// Quanta per visit of each data class, indexed High, Medium, Low: a class's quantum is
/// `WEIGHTS[class] * QUANTUM` bytes, so backlogged classes share bytes in the ratio 4:2:1.
pub const WEIGHTS: [usize; 3] = [4, 2, 1];

/// How urgently a message should leave, relative to other queued messages: the wire enum of
/// [`crate::messages`], re-exported so the scheduler and the messages share one type.
pub use crate::messages::Priority;

/// The index of `priority`'s class in [`WEIGHTS`]: the order DRR visits the classes in.
const fn class_of(priority: Priority) -> usize {
    match priority {
        Priority::High => 0,
        Priority::Medium => 1,
        Priority::Low => 2,
    }
}

/// Bytes of deficit class `class` earns per visit.
const fn quantum(class: usize) -> usize {
    WEIGHTS[class] * QUANTUM
}

/// What a push did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pushed {
    /// Queued as a new item.
    Added,
    /// Replaced a queued, unsent item with the same flow and latest key, in place.
    Replaced {
        /// The replaced item's length in bytes.
        old_len: usize,
    },
}

/// A queued data item.
#[derive(Debug)]
struct DataEntry<T> {
    /// Increasing push number; increases along each FIFO, so it can be binary searched.
    id: u64,
    item: T,
    len: usize,
    flow: u64,
    /// The latest key, while the item is replaceable.
    key: Option<u64>,
}

/// A queued control item.
#[derive(Debug)]
struct ControlEntry<T> {
    item: T,
    len: usize,
    /// The data flow it came from, when it was promoted (it still counts in `bytes_of`).
    flow: Option<u64>,
}

/// One data class: its FIFO and its DRR deficit counter.
#[derive(Debug)]
struct Class<T> {
    fifo: VecDeque<DataEntry<T>>,
    deficit: usize,
}

impl<T> Class<T> {
    fn new() -> Self {
        Class {
            fifo: VecDeque::new(),
            deficit: 0,
        }
    }
}

/// A send queue: a strict-priority control FIFO over three data FIFOs served by Deficit Round
/// Robin. See the [module documentation](self) for the rule.
#[derive(Debug)]
pub struct SendQueue<T> {
    control: VecDeque<ControlEntry<T>>,
    classes: [Class<T>; 3],
    /// The class DRR is visiting.
    current: usize,
    /// Whether the current visit has already added its quantum.
    granted: bool,
    /// `(flow, key)` to the class index and id of the queued, replaceable data item.
    /// Hashed with foldhash: a key is chosen by whoever sends, so a seeded hash, but one
    /// far cheaper than SipHash on this per-message path.
    latest: HashMap<(u64, u64), (usize, u64), foldhash::fast::RandomState>,
    bytes: usize,
    next_id: u64,
}

impl<T> Default for SendQueue<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> SendQueue<T> {
    /// An empty queue.
    pub fn new() -> Self {
        SendQueue {
            control: VecDeque::new(),
            classes: [Class::new(), Class::new(), Class::new()],
            current: 0,
            granted: false,
            latest: HashMap::default(),
            bytes: 0,
            next_id: 0,
        }
    }

    /// Queues a control item of `len` bytes.
    ///
    /// Control items (notices, acks, time replies) always leave before data items, first in
    /// first out among themselves.
    pub fn push_control(&mut self, item: T, len: usize) {
        self.bytes += len;
        self.control.push_back(ControlEntry {
            item,
            len,
            flow: None,
        });
    }

    /// Queues a data item of `len` bytes at `priority`, from `flow`.
    ///
    /// The server passes the sender's `HostId` as `u64` for `flow`; the client passes a hash
    /// of the destination set, or 0. With `latest: Some(key)`, a queued, unsent data item with
    /// the same `(flow, key)` is replaced in place by this one: the new item and `len` take the
    /// old one's slot, which keeps its position and class (`priority` is then ignored), and the
    /// old item is dropped. Items already promoted by [`SendQueue::promote_flow`] are no longer
    /// replaceable.
    pub fn push_data(
        &mut self,
        item: T,
        len: usize,
        priority: Priority,
        flow: u64,
        latest: Option<u64>,
    ) -> Pushed {
        match self.push_data_returning(item, len, priority, flow, latest) {
            Some((_, old_len)) => Pushed::Replaced { old_len },
            None => Pushed::Added,
        }
    }

    /// As [`SendQueue::push_data`], but hands back the replaced item and its length, for
    /// a caller that tracks items (the client forgets a replaced value it kept for
    /// retransmission).
    pub fn push_data_returning(
        &mut self,
        item: T,
        len: usize,
        priority: Priority,
        flow: u64,
        latest: Option<u64>,
    ) -> Option<(T, usize)> {
        if let Some(key) = latest {
            if let Some(&(class, id)) = self.latest.get(&(flow, key)) {
                let fifo = &mut self.classes[class].fifo;
                if let Ok(pos) = fifo.binary_search_by_key(&id, |e| e.id) {
                    let entry = &mut fifo[pos];
                    debug_assert_eq!((entry.flow, entry.key), (flow, Some(key)));
                    let old_len = std::mem::replace(&mut entry.len, len);
                    let old = std::mem::replace(&mut entry.item, item);
                    self.bytes = self.bytes - old_len + len;
                    return Some((old, old_len));
                }
                // Unreachable while the index is kept exact; recover by queueing anew.
                self.latest.remove(&(flow, key));
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        let class = class_of(priority);
        if let Some(key) = latest {
            self.latest.insert((flow, key), (class, id));
        }
        self.bytes += len;
        self.classes[class].fifo.push_back(DataEntry {
            id,
            item,
            len,
            flow,
            key: latest,
        });
        None
    }

    /// The queued, unsent item a latest push with `(flow, key)` would replace, if any: a
    /// caller whose items carry their own order can leave a newer one in place rather
    /// than overwrite it with an older one that came late.
    pub fn queued_latest(&self, flow: u64, key: u64) -> Option<&T> {
        let &(class, id) = self.latest.get(&(flow, key))?;
        let fifo = &self.classes[class].fifo;
        let pos = fifo.binary_search_by_key(&id, |e| e.id).ok()?;
        Some(&fifo[pos].item)
    }

    /// Moves every queued data item of `flow` into the control class, in the order they were
    /// pushed (across all three priorities), behind the control items already queued.
    ///
    /// Used before a "peer left" notice so that notice never overtakes that peer's messages.
    /// Promoted items are no longer replaceable by a latest push, and still count in
    /// [`SendQueue::bytes_of`] until they leave. O(items).
    pub fn promote_flow(&mut self, flow: u64) {
        self.promote_flows(|f| f == flow);
    }

    /// As [`SendQueue::promote_flow`], for every flow `selected` accepts, in one pass; with
    /// `|_| true` every queued data item goes ahead of the next control item (used before
    /// a host's own "you left" notice, so nothing queued for the group it left follows it).
    pub fn promote_flows(&mut self, selected: impl Fn(u64) -> bool) {
        let mut moved: [VecDeque<DataEntry<T>>; 3] =
            [VecDeque::new(), VecDeque::new(), VecDeque::new()];
        for (class, out) in self.classes.iter_mut().zip(moved.iter_mut()) {
            if !class.fifo.iter().any(|e| selected(e.flow)) {
                continue;
            }
            let old = std::mem::take(&mut class.fifo);
            for entry in old {
                if selected(entry.flow) {
                    out.push_back(entry);
                } else {
                    class.fifo.push_back(entry);
                }
            }
            if class.fifo.is_empty() {
                class.deficit = 0;
            }
        }
        // Three-way merge by id: ids are push order.
        loop {
            let next = moved
                .iter()
                .enumerate()
                .filter_map(|(i, q)| q.front().map(|e| (e.id, i)))
                .min();
            let Some((_, i)) = next else { break };
            let Some(entry) = moved[i].pop_front() else {
                break;
            };
            if let Some(key) = entry.key {
                self.latest.remove(&(entry.flow, key));
            }
            self.control.push_back(ControlEntry {
                item: entry.item,
                len: entry.len,
                flow: Some(entry.flow),
            });
        }
    }

    /// Removes and returns the next item to send and its length, or `None` when empty.
    pub fn pop(&mut self) -> Option<(T, usize)> {
        self.pop_inner(true)
    }

    /// Items queued.
    pub fn len(&self) -> usize {
        self.control.len() + self.classes.iter().map(|c| c.fifo.len()).sum::<usize>()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.control.is_empty() && self.classes.iter().all(|c| c.fifo.is_empty())
    }

    /// Sum of the lengths of the queued items, in bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Queued bytes of the data items pushed with `flow` (including those promoted into the
    /// control class and not yet popped). O(items): for diagnostics, not for every push (a
    /// running count per flow would cost a hash on each push and pop of the hot path).
    pub fn bytes_of(&self, flow: u64) -> usize {
        let promoted: usize = self
            .control
            .iter()
            .filter(|e| e.flow == Some(flow))
            .map(|e| e.len)
            .sum();
        let queued: usize = self
            .classes
            .iter()
            .flat_map(|c| c.fifo.iter())
            .filter(|e| e.flow == flow)
            .map(|e| e.len)
            .sum();
        promoted + queued
    }

    /// [`SendQueue::pop`], optionally without the arithmetic skip of idle rounds (tests compare
    /// both).
    fn pop_inner(&mut self, skip_idle_rounds: bool) -> Option<(T, usize)> {
        if let Some(entry) = self.control.pop_front() {
            self.bytes -= entry.len;
            return Some((entry.item, entry.len));
        }
        let c = self.next_class(skip_idle_rounds)?;
        let class = &mut self.classes[c];
        let entry = class.fifo.pop_front()?;
        class.deficit -= entry.len;
        if class.fifo.is_empty() {
            class.deficit = 0;
            self.advance();
        }
        self.bytes -= entry.len;
        if let Some(key) = entry.key {
            let removed = self.latest.remove(&(entry.flow, key));
            debug_assert_eq!(removed, Some((c, entry.id)));
        }
        Some((entry.item, entry.len))
    }

    /// Runs DRR until the head of some class fits in its deficit, and returns that class.
    ///
    /// Terminates: each iteration either returns or moves to the next class. With the skip,
    /// after the first grant of this call some backlogged class needs only one more grant, so
    /// at most one round of visits (three classes, plus the one being left) passes before a
    /// head fits. Without it, the number of rounds is bounded by the largest head divided by
    /// its quantum.
    fn next_class(&mut self, skip_idle_rounds: bool) -> Option<usize> {
        if self.classes.iter().all(|c| c.fifo.is_empty()) {
            return None;
        }
        loop {
            let c = self.current;
            let Some(head_len) = self.classes[c].fifo.front().map(|e| e.len) else {
                self.classes[c].deficit = 0;
                self.advance();
                continue;
            };
            if !self.granted {
                if skip_idle_rounds {
                    self.skip_idle_rounds();
                }
                self.classes[c].deficit += quantum(c);
                self.granted = true;
            }
            if head_len <= self.classes[c].deficit {
                return Some(c);
            }
            self.advance();
        }
    }

    /// At the start of a visit, credits every backlogged class with the full rounds of DRR in
    /// which no head could fit, as if those rounds had been run one by one.
    fn skip_idle_rounds(&mut self) {
        // Grants each backlogged class still needs before its head fits (a visit always
        // grants, so at least one); nothing is sent in the first `min - 1` rounds.
        let idle = self
            .classes
            .iter()
            .enumerate()
            .filter_map(|(i, class)| {
                let head = class.fifo.front()?;
                let q = quantum(i);
                Some(head.len.saturating_sub(class.deficit).div_ceil(q).max(1) - 1)
            })
            .min()
            .unwrap_or(0);
        if idle == 0 {
            return;
        }
        for (i, class) in self.classes.iter_mut().enumerate() {
            if !class.fifo.is_empty() {
                // idle * quantum < head.len, so this cannot overflow.
                class.deficit += idle * quantum(i);
            }
        }
    }

    /// Ends the current visit.
    fn advance(&mut self) {
        self.current = (self.current + 1) % self.classes.len();
        self.granted = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    /// The priorities in the order DRR visits them.
    const CLASSES: [Priority; 3] = [Priority::High, Priority::Medium, Priority::Low];

    fn drain<T>(q: &mut SendQueue<T>) -> Vec<(T, usize)> {
        std::iter::from_fn(|| q.pop()).collect()
    }

    fn items<T>(popped: Vec<(T, usize)>) -> Vec<T> {
        popped.into_iter().map(|(item, _)| item).collect()
    }

    /// Checks the counters against the queue's own contents.
    fn check_counters<T>(q: &SendQueue<T>) {
        let control: usize = q.control.iter().map(|e| e.len).sum();
        let data: usize = q
            .classes
            .iter()
            .flat_map(|c| c.fifo.iter())
            .map(|e| e.len)
            .sum();
        assert_eq!(q.bytes(), control + data);
        for class in &q.classes {
            if class.fifo.is_empty() {
                assert_eq!(class.deficit, 0);
            }
            assert!(class
                .fifo
                .iter()
                .zip(class.fifo.iter().skip(1))
                .all(|(a, b)| a.id < b.id));
        }
    }

    #[test]
    fn control_leaves_before_data_regardless_of_push_order() {
        let mut q = SendQueue::new();
        q.push_data("d1", 10, Priority::High, 1, None);
        q.push_data("d2", 10, Priority::Low, 2, None);
        q.push_control("c1", 5);
        q.push_data("d3", 10, Priority::Medium, 1, None);
        q.push_control("c2", 5);
        assert_eq!(q.pop(), Some(("c1", 5)));
        assert_eq!(q.pop(), Some(("c2", 5)));
        q.push_control("c3", 7);
        assert_eq!(q.pop(), Some(("c3", 7)));
        let rest = items(drain(&mut q));
        assert_eq!(rest.len(), 3);
        assert!(rest.iter().all(|s| s.starts_with('d')));
        assert!(q.is_empty());
        assert_eq!(q.pop(), None);
    }

    #[test]
    fn control_is_first_in_first_out() {
        let mut q = SendQueue::new();
        for i in 0..100 {
            q.push_control(i, i);
        }
        assert_eq!(items(drain(&mut q)), (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn each_priority_is_first_in_first_out_across_flows() {
        let mut q = SendQueue::new();
        for i in 0u64..300 {
            let priority = CLASSES[(i % 3) as usize];
            q.push_data(
                (priority, i),
                500 + (i as usize * 37) % 3000,
                priority,
                i % 5,
                None,
            );
        }
        let popped = items(drain(&mut q));
        assert_eq!(popped.len(), 300);
        for priority in CLASSES {
            let seq: Vec<u64> = popped
                .iter()
                .filter(|(p, _)| *p == priority)
                .map(|&(_, i)| i)
                .collect();
            assert!(seq.windows(2).all(|w| w[0] < w[1]), "{priority:?}: {seq:?}");
            assert_eq!(seq.len(), 100);
        }
    }

    /// Keeps all three classes backlogged with equal-size items and returns the priorities in
    /// the order they left.
    fn backlogged_run(item_len: impl Fn(usize) -> usize, pops: usize) -> Vec<(Priority, usize)> {
        let mut q = SendQueue::new();
        let mut n = 0;
        let mut out = Vec::new();
        for priority in CLASSES {
            for _ in 0..8 {
                q.push_data(priority, item_len(n), priority, 0, None);
                n += 1;
            }
        }
        for _ in 0..pops {
            let (priority, len) = q.pop().unwrap();
            out.push((priority, len));
            // Refill the class just served, so every class stays backlogged.
            q.push_data(priority, item_len(n), priority, 0, None);
            n += 1;
        }
        out
    }

    #[test]
    fn backlogged_classes_share_bytes_four_two_one() {
        for size in [100, 700, 1_000, 1_200, 3_000, 10_000] {
            let out = backlogged_run(|_| size, 30_000);
            let mut bytes = [0usize; 3];
            for (priority, len) in &out {
                bytes[class_of(*priority)] += len;
            }
            let total: usize = bytes.iter().sum();
            for (i, weight) in WEIGHTS.iter().enumerate() {
                let share = bytes[i] as f64 / total as f64;
                let expected = *weight as f64 / 7.0;
                assert!(
                    (share - expected).abs() < 0.01,
                    "size {size}: class {i} got {share}, expected {expected}"
                );
            }
        }
    }

    #[test]
    fn low_is_served_in_every_window_so_it_never_starves() {
        let sizes: [&dyn Fn(usize) -> usize; 3] = [
            &|_| 1_000,
            &|_| QUANTUM,
            // Pseudo-random sizes in 1..=QUANTUM.
            &|n| (n.wrapping_mul(2_654_435_761) >> 7) % QUANTUM + 1,
        ];
        for size in sizes {
            let out = backlogged_run(size, 20_000);
            let max_item = out.iter().map(|&(_, len)| len).max().unwrap();
            let window = (4 + 2 + 1) * QUANTUM + max_item;
            let mut since_low = 0;
            for (priority, len) in out {
                if priority == Priority::Low {
                    since_low = 0;
                } else {
                    since_low += len;
                    assert!(since_low <= window, "{since_low} bytes without Low");
                }
            }
        }
    }

    #[test]
    fn a_class_alone_gets_everything() {
        for priority in CLASSES {
            let mut q = SendQueue::new();
            for i in 0..50 {
                q.push_data(i, 100 + i * 173, priority, 0, None);
            }
            assert_eq!(items(drain(&mut q)), (0..50).collect::<Vec<_>>());
        }
        // Two backlogged classes share in the ratio of their weights, High being idle.
        let mut q = SendQueue::new();
        for _ in 0..3_000 {
            q.push_data(Priority::Medium, 600, Priority::Medium, 0, None);
            q.push_data(Priority::Low, 600, Priority::Low, 0, None);
        }
        let first: Vec<Priority> = (0..1_500).map(|_| q.pop().unwrap().0).collect();
        let medium = first.iter().filter(|&&p| p == Priority::Medium).count();
        assert_eq!(medium, 1_000);
    }

    #[test]
    fn an_item_much_larger_than_a_quantum_leaves_and_others_are_served_around_it() {
        const MIB: usize = 1 << 20;
        let mut q = SendQueue::new();
        q.push_data("big", MIB, Priority::Low, 9, None);
        q.push_data("after big", 10, Priority::Low, 9, None);
        for _ in 0..5_000 {
            q.push_data("high", QUANTUM, Priority::High, 1, None);
        }
        let mut high_before_big = 0;
        loop {
            let (item, len) = q.pop().unwrap();
            match item {
                "high" => high_before_big += len,
                "big" => break,
                other => panic!("{other} left before the big item"),
            }
        }
        // The big item needs ceil(1 MiB / 1 200) = 874 Low rounds, during which High gets
        // 4 800 bytes per round: both were served, in the ratio 4:1.
        assert_eq!(high_before_big, 874 * 4 * QUANTUM);
        // Low's visit goes on with its 874 * 1 200 - 1 MiB = 224 bytes of deficit left.
        assert_eq!(q.pop(), Some(("after big", 10)));
        let rest = items(drain(&mut q));
        assert_eq!(rest.len(), 5_000 - 874 * 4);
        assert!(rest.iter().all(|&s| s == "high"));
    }

    #[test]
    fn enormous_items_leave_without_looping_round_by_round() {
        // Round-by-round DRR would need about 10^15 rounds here; the skip needs one step.
        let huge = usize::MAX / 16;
        let mut q = SendQueue::new();
        q.push_data("huge high", huge, Priority::High, 0, None);
        q.push_data("huge low", huge, Priority::Low, 0, None);
        q.push_data("small medium", 10, Priority::Medium, 0, None);
        q.push_data("huge medium", huge, Priority::Medium, 0, None);
        let out = items(drain(&mut q));
        assert_eq!(out.len(), 4);
        assert_eq!(out[0], "small medium");
        // High needs half the rounds Medium needs and a quarter of Low's.
        assert_eq!(&out[1..], ["huge high", "huge medium", "huge low"]);
        assert_eq!(q.bytes(), 0);
    }

    #[test]
    fn latest_replaces_in_place_keeping_position() {
        let mut q = SendQueue::new();
        assert_eq!(
            q.push_data("a", 10, Priority::Medium, 1, None),
            Pushed::Added
        );
        assert_eq!(
            q.push_data("pos1", 20, Priority::Medium, 1, Some(7)),
            Pushed::Added
        );
        assert_eq!(
            q.push_data("c", 30, Priority::Medium, 1, None),
            Pushed::Added
        );
        assert_eq!(q.bytes(), 60);
        assert_eq!(
            q.push_data("pos2", 25, Priority::Medium, 1, Some(7)),
            Pushed::Replaced { old_len: 20 }
        );
        assert_eq!(q.bytes(), 65);
        assert_eq!(q.bytes_of(1), 65);
        assert_eq!(q.len(), 3);
        assert_eq!(
            q.push_data("pos3", 5, Priority::Medium, 1, Some(7)),
            Pushed::Replaced { old_len: 25 }
        );
        assert_eq!(q.bytes(), 45);
        assert_eq!(drain(&mut q), vec![("a", 10), ("pos3", 5), ("c", 30)]);
    }

    #[test]
    fn latest_replacement_keeps_the_replaced_items_class() {
        let mut q = SendQueue::new();
        q.push_data("low", 10, Priority::Low, 1, Some(1));
        q.push_data("high", 10, Priority::High, 1, None);
        assert_eq!(
            q.push_data("new", 10, Priority::High, 1, Some(1)),
            Pushed::Replaced { old_len: 10 }
        );
        assert_eq!(q.classes[class_of(Priority::Low)].fifo.len(), 1);
        assert_eq!(items(drain(&mut q)), vec!["high", "new"]);
    }

    #[test]
    fn latest_with_another_flow_or_key_is_added() {
        let mut q = SendQueue::new();
        q.push_data(0, 10, Priority::Medium, 1, Some(7));
        assert_eq!(
            q.push_data(1, 10, Priority::Medium, 2, Some(7)),
            Pushed::Added
        );
        assert_eq!(
            q.push_data(2, 10, Priority::Medium, 1, Some(8)),
            Pushed::Added
        );
        assert_eq!(q.push_data(3, 10, Priority::Medium, 1, None), Pushed::Added);
        assert_eq!(q.len(), 4);
        assert_eq!(items(drain(&mut q)), vec![0, 1, 2, 3]);
    }

    #[test]
    fn a_replacing_push_hands_back_the_replaced_item() {
        let mut q = SendQueue::new();
        assert_eq!(
            q.push_data_returning('a', 3, Priority::High, 1, Some(9)),
            None
        );
        assert_eq!(
            q.push_data_returning('b', 4, Priority::High, 1, Some(9)),
            Some(('a', 3))
        );
        assert_eq!(q.pop(), Some(('b', 4)));
    }

    #[test]
    fn a_popped_item_is_no_longer_replaceable() {
        let mut q = SendQueue::new();
        q.push_data("old", 10, Priority::High, 1, Some(7));
        assert_eq!(q.pop(), Some(("old", 10)));
        assert!(q.latest.is_empty());
        assert_eq!(
            q.push_data("new", 12, Priority::High, 1, Some(7)),
            Pushed::Added
        );
        assert_eq!(q.bytes(), 12);
        assert_eq!(drain(&mut q), vec![("new", 12)]);
    }

    #[test]
    fn a_promoted_item_is_no_longer_replaceable() {
        let mut q = SendQueue::new();
        q.push_data("old", 10, Priority::Low, 1, Some(7));
        q.promote_flow(1);
        assert!(q.latest.is_empty());
        assert_eq!(
            q.push_data("new", 12, Priority::Low, 1, Some(7)),
            Pushed::Added
        );
        assert_eq!(q.bytes(), 22);
        assert_eq!(q.bytes_of(1), 22);
        assert_eq!(drain(&mut q), vec![("old", 10), ("new", 12)]);
    }

    #[test]
    fn promote_flow_moves_exactly_that_flow_in_push_order() {
        let mut q = SendQueue::new();
        q.push_control("c1", 1);
        q.push_data("f1 low", 10, Priority::Low, 1, None);
        q.push_data("f2 high", 10, Priority::High, 2, None);
        q.push_data("f1 high", 10, Priority::High, 1, Some(3));
        q.push_data("f1 medium", 10, Priority::Medium, 1, None);
        q.push_data("f2 low", 10, Priority::Low, 2, Some(3));
        q.push_data("f1 low 2", 10, Priority::Low, 1, None);
        q.push_control("c2", 1);
        q.promote_flow(1);
        q.push_control("c3", 1);
        assert_eq!(q.len(), 9);
        assert_eq!(q.bytes_of(1), 40);
        assert_eq!(q.bytes_of(2), 20);
        // Flow 2 is untouched: still data, still replaceable.
        assert_eq!(
            q.push_data("f2 low new", 11, Priority::Low, 2, Some(3)),
            Pushed::Replaced { old_len: 10 }
        );
        let out = items(drain(&mut q));
        assert_eq!(
            out,
            vec![
                "c1",
                "c2",
                "f1 low",
                "f1 high",
                "f1 medium",
                "f1 low 2",
                "c3",
                "f2 high",
                "f2 low new",
            ]
        );
        assert_eq!((q.bytes_of(1), q.bytes_of(2)), (0, 0));
        assert!(q.latest.is_empty());
    }

    #[test]
    fn promoting_an_unknown_flow_changes_nothing() {
        let mut q = SendQueue::new();
        q.push_data(1, 10, Priority::Low, 1, Some(1));
        q.promote_flow(2);
        assert_eq!(q.control.len(), 0);
        assert_eq!(
            q.push_data(2, 10, Priority::Low, 1, Some(1)),
            Pushed::Replaced { old_len: 10 }
        );
    }

    #[test]
    fn bytes_of_counts_each_flow_until_its_items_leave() {
        let mut q = SendQueue::new();
        q.push_control("c", 100);
        q.push_data("a", 10, Priority::High, 1, None);
        q.push_data("b", 20, Priority::Low, 2, None);
        q.push_data("z", 0, Priority::Low, 3, None);
        assert_eq!((q.bytes_of(1), q.bytes_of(2), q.bytes_of(3)), (10, 20, 0));
        assert_eq!(q.bytes(), 130);
        drain(&mut q);
        assert_eq!((q.bytes_of(1), q.bytes_of(2), q.bytes_of(3)), (0, 0, 0));
        assert_eq!((q.bytes(), q.len()), (0, 0));
    }

    #[derive(Clone, Debug)]
    enum Op {
        Control(usize),
        Data {
            len: usize,
            priority: Priority,
            flow: u64,
            latest: Option<u64>,
        },
        Promote(u64),
        Pop,
    }

    fn op(max_len: usize) -> impl Strategy<Value = Op> {
        let len = prop_oneof![3 => 0..2_000usize, 1 => 0..max_len];
        prop_oneof![
            1 => len.clone().prop_map(Op::Control),
            4 => (len, 0..3usize, 0..4u64, proptest::option::of(0..3u64)).prop_map(
                |(len, p, flow, latest)| Op::Data {
                    len,
                    priority: CLASSES[p],
                    flow,
                    latest,
                }
            ),
            1 => (0..4u64).prop_map(Op::Promote),
            3 => Just(Op::Pop),
        ]
    }

    /// One queued item of the model.
    #[derive(Debug)]
    struct ModelItem {
        tag: u64,
        len: usize,
        flow: Option<u64>,
        key: Option<u64>,
        /// Push number (data) and, once in the control class, its control position.
        id: u64,
        control: Option<u64>,
        priority: Priority,
    }

    /// Everything queued, in push order, plus the bookkeeping the checks need.
    #[derive(Default)]
    struct Model {
        queued: Vec<ModelItem>,
        next_tag: u64,
        next_control: u64,
        pushed: HashSet<u64>,
        replaced: HashSet<u64>,
        popped: HashSet<u64>,
    }

    impl Model {
        fn new_tag(&mut self) -> u64 {
            self.next_tag += 1;
            self.pushed.insert(self.next_tag);
            self.next_tag
        }

        fn check_pop(&mut self, popped: Option<(u64, usize)>) -> Result<(), TestCaseError> {
            let Some((tag, len)) = popped else {
                prop_assert!(self.queued.is_empty());
                return Ok(());
            };
            let pos = self.queued.iter().position(|m| m.tag == tag);
            prop_assert!(pos.is_some(), "popped {} which is not queued", tag);
            let item = self.queued.remove(pos.unwrap_or(0));
            prop_assert_eq!(item.len, len);
            let first_control = self.queued.iter().filter_map(|m| m.control).min();
            match item.control {
                Some(c) => prop_assert!(first_control.is_none_or(|f| c < f)),
                None => {
                    prop_assert!(first_control.is_none(), "data left before control");
                    prop_assert!(self
                        .queued
                        .iter()
                        .filter(|m| m.control.is_none() && m.priority == item.priority)
                        .all(|m| m.id > item.id));
                }
            }
            prop_assert!(self.popped.insert(tag), "{} popped twice", tag);
            Ok(())
        }

        fn check(&self, q: &SendQueue<u64>) -> Result<(), TestCaseError> {
            prop_assert_eq!(q.len(), self.queued.len());
            prop_assert_eq!(q.is_empty(), self.queued.is_empty());
            prop_assert_eq!(q.bytes(), self.queued.iter().map(|m| m.len).sum::<usize>());
            for flow in 0..4 {
                let expected: usize = self
                    .queued
                    .iter()
                    .filter(|m| m.flow == Some(flow))
                    .map(|m| m.len)
                    .sum();
                prop_assert_eq!(q.bytes_of(flow), expected);
            }
            let replaceable = self
                .queued
                .iter()
                .filter(|m| m.control.is_none() && m.key.is_some())
                .count();
            prop_assert_eq!(q.latest.len(), replaceable);
            check_counters(q);
            Ok(())
        }
    }

    fn apply(q: &mut SendQueue<u64>, m: &mut Model, op: &Op) -> Result<(), TestCaseError> {
        match *op {
            Op::Control(len) => {
                let tag = m.new_tag();
                q.push_control(tag, len);
                m.next_control += 1;
                m.queued.push(ModelItem {
                    tag,
                    len,
                    flow: None,
                    key: None,
                    id: u64::MAX,
                    control: Some(m.next_control),
                    priority: Priority::Medium,
                });
            }
            Op::Data {
                len,
                priority,
                flow,
                latest,
            } => {
                let tag = m.new_tag();
                let pushed = q.push_data(tag, len, priority, flow, latest);
                let target = latest.and_then(|key| {
                    m.queued
                        .iter_mut()
                        .find(|i| i.control.is_none() && i.flow == Some(flow) && i.key == Some(key))
                });
                match target {
                    Some(target) => {
                        prop_assert_eq!(
                            pushed,
                            Pushed::Replaced {
                                old_len: target.len
                            }
                        );
                        m.replaced.insert(target.tag);
                        target.tag = tag;
                        target.len = len;
                    }
                    None => {
                        prop_assert_eq!(pushed, Pushed::Added);
                        m.queued.push(ModelItem {
                            tag,
                            len,
                            flow: Some(flow),
                            key: latest,
                            id: tag,
                            control: None,
                            priority,
                        });
                    }
                }
            }
            Op::Promote(flow) => {
                q.promote_flow(flow);
                let mut data: Vec<&mut ModelItem> = m
                    .queued
                    .iter_mut()
                    .filter(|i| i.control.is_none() && i.flow == Some(flow))
                    .collect();
                data.sort_by_key(|i| i.id);
                for item in data {
                    m.next_control += 1;
                    item.control = Some(m.next_control);
                }
            }
            Op::Pop => {
                let popped = q.pop();
                m.check_pop(popped)?;
            }
        }
        m.check(q)
    }

    proptest! {
        /// Against a model holding every queued item: the counters always match, control
        /// leaves first and in order, each priority is FIFO, replacement hits exactly the
        /// queued unpromoted item with the same (flow, key), and every pushed item leaves
        /// exactly once unless it was replaced.
        #[test]
        fn operations_match_a_model(ops in proptest::collection::vec(op(40_000), 0..300)) {
            let mut q = SendQueue::new();
            let mut m = Model::default();
            for op in &ops {
                apply(&mut q, &mut m, op)?;
            }
            while !q.is_empty() {
                apply(&mut q, &mut m, &Op::Pop)?;
            }
            prop_assert_eq!(q.pop(), None);
            prop_assert!(m.popped.is_disjoint(&m.replaced));
            let left: HashSet<u64> = m.popped.union(&m.replaced).copied().collect();
            prop_assert_eq!(left, m.pushed);
            prop_assert!((0..8).all(|flow| q.bytes_of(flow) == 0));
        }

        /// The arithmetic skip of idle rounds sends in exactly the order of plain DRR run one
        /// round at a time.
        #[test]
        fn skipping_idle_rounds_matches_round_by_round_drr(
            ops in proptest::collection::vec(op(60_000), 0..300),
        ) {
            let mut fast = SendQueue::new();
            let mut slow = SendQueue::new();
            for (tag, op) in ops.iter().chain(std::iter::repeat_n(&Op::Pop, 300)).enumerate() {
                match *op {
                    Op::Control(len) => {
                        fast.push_control(tag, len);
                        slow.push_control(tag, len);
                    }
                    Op::Data { len, priority, flow, latest } => {
                        prop_assert_eq!(
                            fast.push_data(tag, len, priority, flow, latest),
                            slow.push_data(tag, len, priority, flow, latest)
                        );
                    }
                    Op::Promote(flow) => {
                        fast.promote_flow(flow);
                        slow.promote_flow(flow);
                    }
                    Op::Pop => prop_assert_eq!(fast.pop(), slow.pop_inner(false)),
                }
            }
            prop_assert!(fast.is_empty() && slow.is_empty());
        }
    }
}

//! The send scheduler, `SendQueue`, driven by arbitrary pushes, promotions and pops and
//! compared with a model that runs Deficit Round Robin one round at a time.
//! Invariants: `bytes()`, `len()` and `bytes_of(flow)` match what is queued; control items
//! (and promoted ones, in push order) leave first, in order; within a priority, first in
//! first out (so per flow too); a latest push replaces the queued, unpromoted item with
//! the same (flow, key) in its slot and hands back the old one; every item pushed pops
//! exactly once unless replaced; and data leaves in exactly round-by-round DRR order (the
//! queue skips idle rounds arithmetically; the module promises the same order).
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use peergroup_protocol::schedule::{Priority, Pushed, SendQueue, QUANTUM, WEIGHTS};
use std::collections::{HashSet, VecDeque};

#[derive(Arbitrary, Debug)]
enum Op {
    Control {
        len: Len,
    },
    Data {
        len: Len,
        priority: u8,
        flow: u8,
        latest: Option<u8>,
        /// Through `push_data_returning` rather than `push_data`.
        returning: bool,
    },
    PromoteFlow(u8),
    /// Promotes the flows whose bit is set (flows 0 to 7).
    PromoteFlows(u8),
    Pop,
    PopMany(u8),
}

/// Item lengths: mostly small, sometimes many quanta (so idle rounds are skipped).
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Len {
    Small(u16),
    Large(u32),
}

impl Len {
    fn bytes(self) -> usize {
        match self {
            Len::Small(n) => usize::from(n),
            // Up to 4 MiB: thousands of rounds for the model, a handful of visits for the
            // queue.
            Len::Large(n) => (n % (4 << 20)) as usize,
        }
    }
}

#[derive(Debug, Clone)]
struct Item {
    id: u64,
    len: usize,
    flow: u64,
    key: Option<u64>,
}

/// The scheduler as its documentation states it, one DRR round at a time.
#[derive(Default)]
struct Model {
    control: VecDeque<Item>,
    classes: [VecDeque<Item>; 3],
    deficit: [usize; 3],
    current: usize,
    granted: bool,
}

impl Model {
    fn bytes(&self) -> usize {
        self.control
            .iter()
            .chain(self.classes.iter().flatten())
            .map(|i| i.len)
            .sum()
    }

    fn len(&self) -> usize {
        self.control.len() + self.classes.iter().map(VecDeque::len).sum::<usize>()
    }

    fn bytes_of(&self, flow: u64) -> usize {
        // Promoted items still count for their flow; control items have flow u64::MAX.
        self.control
            .iter()
            .chain(self.classes.iter().flatten())
            .filter(|i| i.flow == flow)
            .map(|i| i.len)
            .sum()
    }

    fn replaceable(&mut self, flow: u64, key: u64) -> Option<&mut Item> {
        self.classes
            .iter_mut()
            .flatten()
            .find(|i| i.flow == flow && i.key == Some(key))
    }

    fn promote(&mut self, selected: impl Fn(u64) -> bool) {
        let mut moved: Vec<(u64, Item)> = Vec::new();
        for (class, deficit) in self.classes.iter_mut().zip(self.deficit.iter_mut()) {
            let had = !class.is_empty();
            let (take, keep): (VecDeque<Item>, VecDeque<Item>) =
                class.drain(..).partition(|i| selected(i.flow));
            *class = keep;
            if had && !take.is_empty() && class.is_empty() {
                *deficit = 0;
            }
            // Slot order: a replaced item keeps its slot, so order by slot, not by item.
            moved.extend(take.into_iter().map(|i| (i.id, i)));
        }
        moved.sort_by_key(|(slot, _)| *slot);
        for (_, mut item) in moved {
            item.key = None;
            self.control.push_back(item);
        }
    }

    fn advance(&mut self) {
        self.current = (self.current + 1) % 3;
        self.granted = false;
    }

    fn pop(&mut self) -> Option<Item> {
        if let Some(item) = self.control.pop_front() {
            return Some(item);
        }
        if self.classes.iter().all(VecDeque::is_empty) {
            return None;
        }
        loop {
            let c = self.current;
            let Some(head) = self.classes[c].front().map(|i| i.len) else {
                self.deficit[c] = 0;
                self.advance();
                continue;
            };
            if !self.granted {
                self.deficit[c] += WEIGHTS[c] * QUANTUM;
                self.granted = true;
            }
            if head <= self.deficit[c] {
                let item = self.classes[c].pop_front().expect("head");
                self.deficit[c] -= item.len;
                if self.classes[c].is_empty() {
                    self.deficit[c] = 0;
                    self.advance();
                }
                return Some(item);
            }
            self.advance();
        }
    }
}

/// The queue holds item numbers; the model keeps each slot's first number as its position
/// (`Item::id` is the slot), and `names` maps a slot to the item number now in it.
struct Harness {
    queue: SendQueue<u64>,
    model: Model,
    /// Item number now in each slot (slot ids are the model's `Item::id`).
    names: std::collections::HashMap<u64, u64>,
    next: u64,
    live: HashSet<u64>,
}

impl Harness {
    fn check(&self) {
        assert_eq!(self.queue.bytes(), self.model.bytes(), "bytes()");
        assert_eq!(self.queue.len(), self.model.len(), "len()");
        assert_eq!(self.queue.is_empty(), self.model.len() == 0);
        for flow in 0..8 {
            assert_eq!(
                self.queue.bytes_of(flow),
                self.model.bytes_of(flow),
                "bytes_of"
            );
        }
    }

    fn pop(&mut self) {
        let got = self.queue.pop();
        let want = self.model.pop();
        match (got, want) {
            (None, None) => {}
            (Some((item, len)), Some(model)) => {
                let name = self.names.remove(&model.id).expect("named slot");
                assert_eq!((item, len), (name, model.len), "pop order");
                assert!(self.live.remove(&item), "item {item} popped twice");
            }
            (got, want) => panic!("queue popped {got:?}, model {want:?}"),
        }
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let mut h = Harness {
        queue: SendQueue::new(),
        model: Model::default(),
        names: Default::default(),
        next: 0,
        live: HashSet::new(),
    };
    let priorities = [Priority::High, Priority::Medium, Priority::Low];
    for op in ops {
        match op {
            Op::Control { len } => {
                let (item, len) = (h.next, len.bytes());
                h.next += 1;
                h.queue.push_control(item, len);
                h.model.control.push_back(Item {
                    id: item,
                    len,
                    flow: u64::MAX,
                    key: None,
                });
                h.names.insert(item, item);
                h.live.insert(item);
            }
            Op::Data {
                len,
                priority,
                flow,
                latest,
                returning,
            } => {
                let (item, len) = (h.next, len.bytes());
                h.next += 1;
                let flow = u64::from(flow % 8);
                let key = latest.map(|k| u64::from(k % 4));
                let priority = priorities[usize::from(priority % 3)];
                let replaced = key.and_then(|key| {
                    let slot = h.model.replaceable(flow, key)?;
                    let old_len = std::mem::replace(&mut slot.len, len);
                    Some((slot.id, old_len))
                });
                if returning {
                    let got = h.queue.push_data_returning(item, len, priority, flow, key);
                    match (got, replaced) {
                        (None, None) => {}
                        (Some((old, old_len)), Some((slot, want_len))) => {
                            assert_eq!(old_len, want_len, "replaced length");
                            let name = h.names.insert(slot, item).expect("named slot");
                            assert_eq!(old, name, "replaced the wrong item");
                            assert!(h.live.remove(&old));
                        }
                        (got, want) => panic!("replaced {got:?}, model {want:?}"),
                    }
                } else {
                    let got = h.queue.push_data(item, len, priority, flow, key);
                    match (got, replaced) {
                        (Pushed::Added, None) => {}
                        (Pushed::Replaced { old_len }, Some((slot, want_len))) => {
                            assert_eq!(old_len, want_len, "replaced length");
                            let old = h.names.insert(slot, item).expect("named slot");
                            assert!(h.live.remove(&old));
                        }
                        (got, want) => panic!("push gave {got:?}, model replaced {want:?}"),
                    }
                }
                if replaced.is_none() {
                    let class = match priority {
                        Priority::High => 0,
                        Priority::Medium => 1,
                        Priority::Low => 2,
                    };
                    h.model.classes[class].push_back(Item {
                        id: item,
                        len,
                        flow,
                        key,
                    });
                    h.names.insert(item, item);
                }
                h.live.insert(item);
            }
            Op::PromoteFlow(flow) => {
                let flow = u64::from(flow % 8);
                h.queue.promote_flow(flow);
                h.model.promote(|f| f == flow);
            }
            Op::PromoteFlows(mask) => {
                let selected = move |f: u64| f < 8 && mask & (1 << f) != 0;
                h.queue.promote_flows(selected);
                h.model.promote(selected);
            }
            Op::Pop => h.pop(),
            Op::PopMany(n) => {
                for _ in 0..n {
                    h.pop();
                }
            }
        }
        h.check();
    }
    // Everything still queued pops exactly once.
    while !h.queue.is_empty() {
        h.pop();
        h.check();
    }
    assert!(h.queue.pop().is_none());
    assert!(h.model.pop().is_none());
    assert!(h.live.is_empty(), "items never popped: {:?}", h.live);
});

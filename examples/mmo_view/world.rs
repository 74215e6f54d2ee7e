//! The world both halves agree on: its size, how far a bot sees, how bots wander, who sees
//! whom, and the messages they exchange. In a real game this is the shared "protocol" crate.
//!
//! It names nothing from peergroup, so `peergroup-bench` includes this very file (its `mmo`
//! section runs the same world on raw protocol clients).

use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};

/// A bot sees others within this many world units...
pub const SIGHT: f32 = 100.0;
/// ...and keeps seeing them until they are this far: the margin stops a bot on the edge of
/// sight from flickering in and out of view every tick (AOI hysteresis).
pub const SIGHT_LOST: f32 = 120.0;
/// Units a bot walks per second.
pub const SPEED: f32 = 40.0;
/// How often bots publish their position, and the server recomputes views.
pub const TICK_HZ: u32 = 10;

/// The side of the square world for `bots` bots, chosen so each sees about 8 others.
pub fn world_size(bots: usize) -> f32 {
    world_size_for(bots, 8.0)
}

/// The side of the square world (in world units) in which `bots` bots have about
/// `neighbours` others each within [`SIGHT`]: fewer near the edges, a few more kept in view
/// by the [`SIGHT_LOST`] margin.
pub fn world_size_for(bots: usize, neighbours: f32) -> f32 {
    SIGHT * (std::f32::consts::PI * bots as f32 / neighbours).sqrt()
}

/// A bot's position update: sent to its view group 10 times a second with
/// `Delivery::Latest`, so a slow receiver holds one per bot instead of a backlog.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Position {
    pub x: f32,
    pub y: f32,
}

impl Position {
    pub fn distance(self, other: Position) -> f32 {
        ((self.x - other.x).powi(2) + (self.y - other.y).powi(2)).sqrt()
    }
}

/// Everyone's position in square cells as wide as [`SIGHT_LOST`], so whoever can see a bot
/// stands in its cell or one of the 8 around it: an area-of-interest pass over every bot
/// costs about bots × neighbours distance checks instead of bots².
///
/// Generic over the bot's id so it needs nothing from peergroup.
pub struct Grid<K> {
    cells: HashMap<(i32, i32), Vec<(K, Position)>>,
}

impl<K: Copy + Ord> Grid<K> {
    /// Sorts `positions` into cells.
    pub fn new(positions: impl IntoIterator<Item = (K, Position)>) -> Self {
        let mut cells: HashMap<(i32, i32), Vec<(K, Position)>> = HashMap::new();
        for (bot, at) in positions {
            cells.entry(Self::cell(at)).or_default().push((bot, at));
        }
        Self { cells }
    }

    fn cell(at: Position) -> (i32, i32) {
        ((at.x / SIGHT_LOST) as i32, (at.y / SIGHT_LOST) as i32)
    }

    /// The bots that see `owner`, standing at `at`, this tick: everyone within [`SIGHT`],
    /// and those of `watching` (last tick's answer) still within [`SIGHT_LOST`].
    pub fn watchers(&self, owner: K, at: Position, watching: &BTreeSet<K>) -> BTreeSet<K> {
        let (cx, cy) = Self::cell(at);
        let mut sees = BTreeSet::new();
        for (dx, dy) in (-1..=1).flat_map(|dx| (-1..=1).map(move |dy| (dx, dy))) {
            for &(other, there) in self.cells.get(&(cx + dx, cy + dy)).into_iter().flatten() {
                let distance = at.distance(there);
                let watched = watching.contains(&other);
                if other != owner && (distance < SIGHT || watched && distance < SIGHT_LOST) {
                    sees.insert(other);
                }
            }
        }
        sees
    }
}

/// What a bot tells the server at the end of a `--demo`: how its view checks went.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Report {
    pub position_updates: u64,
    pub view_checks: u64,
    pub view_mismatches: u64,
}

/// Everything a bot sends to the server application.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ToServer {
    Report(Report),
}

/// A small deterministic generator (xorshift64*), so `--seed` replays the same walks.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// A uniform float in `[0, 1)`.
    pub fn unit(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let bits = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40;
        bits as f32 / (1u64 << 24) as f32
    }
}

/// A bot wandering the world: it walks straight and turns now and then, bouncing off the
/// edges.
#[derive(Debug, Clone)]
pub struct Walker {
    pub at: Position,
    heading: f32,
    size: f32,
    rng: Rng,
}

impl Walker {
    pub fn new(seed: u64, bot: u64, size: f32) -> Self {
        let mut rng = Rng::new(seed ^ bot.wrapping_mul(0xA24B_AED4_963E_E407));
        let at = Position {
            x: rng.unit() * size,
            y: rng.unit() * size,
        };
        let heading = rng.unit() * std::f32::consts::TAU;
        Self {
            at,
            heading,
            size,
            rng,
        }
    }

    /// Walks for one tick.
    pub fn step(&mut self) {
        if self.rng.unit() < 0.1 {
            self.heading += (self.rng.unit() - 0.5) * std::f32::consts::PI;
        }
        let step = SPEED / TICK_HZ as f32;
        let (mut x, mut y) = (
            self.at.x + step * self.heading.cos(),
            self.at.y + step * self.heading.sin(),
        );
        if !(0.0..self.size).contains(&x) {
            self.heading = std::f32::consts::PI - self.heading;
            x = x.clamp(0.0, self.size);
        }
        if !(0.0..self.size).contains(&y) {
            self.heading = -self.heading;
            y = y.clamp(0.0, self.size);
        }
        self.at = Position { x, y };
    }
}

//! A small seeded generator (xorshift64*), so a soak's choices replay from its seed.

/// xorshift64* (Vigna, "An experimental exploration of Marsaglia's xorshift generators").
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed` and `stream` (different streams give unrelated sequences).
    pub fn new(seed: u64, stream: u64) -> Self {
        // SplitMix64's finaliser spreads nearby seeds apart; zero is not a valid state.
        let mut z = seed ^ stream.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Self((z ^ (z >> 31)) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

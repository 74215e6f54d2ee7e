//! Room passwords as the rooms application keeps them: salted and stretched
//! (PBKDF2-HMAC-SHA256, RFC 8018 section 5.2), never in plain text, and compared in
//! constant time.
//!
//! Why: a room's password used to sit in memory as given and was compared with `!=`,
//! whose time depends on how many leading bytes match, so a guesser could learn it a byte
//! at a time. The stretching only matters against someone who reads the server's memory;
//! online guessing is bounded by the wrong-password limit instead
//! ([`RoomsConfig::max_wrong_passwords`](super::RoomsConfig::max_wrong_passwords)).

use ring::rand::SecureRandom;
use std::num::NonZeroU32;

/// PBKDF2 rounds: about 0.35 ms of one core per check (1,000 rounds of HMAC-SHA256 timed
/// through OpenSSL on this machine; not benchmarked through ring), paid only by joins that give
/// a password for a room that has one.
const ROUNDS: NonZeroU32 = match NonZeroU32::new(1_000) {
    Some(rounds) => rounds,
    None => panic!("rounds must not be zero"),
};
const SALT_LEN: usize = 16;
const HASH_LEN: usize = 32;

/// A room's password: a random salt and the derived key.
#[derive(Clone, PartialEq, Eq)]
pub(super) struct RoomPassword {
    salt: [u8; SALT_LEN],
    hash: [u8; HASH_LEN],
}

impl std::fmt::Debug for RoomPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RoomPassword(..)")
    }
}

impl RoomPassword {
    /// Derives the stored form of `password` with a fresh salt.
    ///
    /// # Errors
    /// When the system's random generator fails (then no room is made).
    pub(super) fn new(
        password: &str,
        random: &dyn SecureRandom,
    ) -> Result<Self, ring::error::Unspecified> {
        let mut salt = [0u8; SALT_LEN];
        random.fill(&mut salt)?;
        let mut hash = [0u8; HASH_LEN];
        ring::pbkdf2::derive(
            ring::pbkdf2::PBKDF2_HMAC_SHA256,
            ROUNDS,
            &salt,
            password.as_bytes(),
            &mut hash,
        );
        Ok(Self { salt, hash })
    }

    /// Whether `given` is the password, in time that does not depend on where it differs.
    pub(super) fn matches(&self, given: &str) -> bool {
        ring::pbkdf2::verify(
            ring::pbkdf2::PBKDF2_HMAC_SHA256,
            ROUNDS,
            &self.salt,
            given.as_bytes(),
            &self.hash,
        )
        .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_password_matches_and_none_is_kept_in_plain_text() {
        let random = ring::rand::SystemRandom::new();
        let stored = RoomPassword::new("hunter2", &random).unwrap();
        assert!(stored.matches("hunter2"));
        for wrong in ["", "hunter", "hunter22", "Hunter2", "hunter3"] {
            assert!(!stored.matches(wrong), "{wrong:?}");
        }
        let text = format!("{stored:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!stored.hash.windows(7).any(|w| w == b"hunter2"));
        // Two rooms with one password store different hashes (salted).
        let other = RoomPassword::new("hunter2", &random).unwrap();
        assert_ne!(stored.hash, other.hash);
        assert!(other.matches("hunter2"));
    }
}

//! Application close codes: why a peergroup connection ended.

use std::fmt;

/// The QUIC application error code (RFC 9000, section 20.2) that peergroup puts in
/// `CONNECTION_CLOSE` frames. Each wire error maps to exactly one code; the close reason
/// carries readable text beside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseCode {
    /// An orderly close by the application (client leaving, handle dropped).
    Normal,
    /// The two sides speak different protocol versions.
    VersionMismatch,
    /// The server's auth hook refused the login; the reason is the application's text.
    AuthRejected,
    /// The peer sent bytes that do not decode, or a message out of place.
    ProtocolViolation,
    /// A frame's length prefix exceeded the receiver's maximum.
    FrameTooLarge,
    /// The receiver did not read fast enough and its bounded send queue overflowed.
    SlowConsumer,
    /// The server is shutting down.
    ServerShutdown,
    /// The client did not complete its hello within the handshake timeout.
    HandshakeTimeout,
    /// The server is at its connection limit.
    ServerFull,
    /// The server application disconnected this client.
    Kicked,
    /// A code this build does not know (a newer peer).
    Unknown(u64),
}

impl CloseCode {
    /// The code as sent on the wire.
    pub const fn to_u64(self) -> u64 {
        match self {
            CloseCode::Normal => 0,
            CloseCode::VersionMismatch => 1,
            CloseCode::AuthRejected => 2,
            CloseCode::ProtocolViolation => 3,
            CloseCode::FrameTooLarge => 4,
            CloseCode::SlowConsumer => 5,
            CloseCode::ServerShutdown => 6,
            CloseCode::HandshakeTimeout => 7,
            CloseCode::ServerFull => 8,
            CloseCode::Kicked => 9,
            CloseCode::Unknown(code) => code,
        }
    }

    /// Reads a code from the wire; codes this build does not know become [`CloseCode::Unknown`].
    pub const fn from_u64(code: u64) -> Self {
        match code {
            0 => CloseCode::Normal,
            1 => CloseCode::VersionMismatch,
            2 => CloseCode::AuthRejected,
            3 => CloseCode::ProtocolViolation,
            4 => CloseCode::FrameTooLarge,
            5 => CloseCode::SlowConsumer,
            6 => CloseCode::ServerShutdown,
            7 => CloseCode::HandshakeTimeout,
            8 => CloseCode::ServerFull,
            9 => CloseCode::Kicked,
            other => CloseCode::Unknown(other),
        }
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            CloseCode::Normal => "normal close",
            CloseCode::VersionMismatch => "protocol version mismatch",
            CloseCode::AuthRejected => "login rejected",
            CloseCode::ProtocolViolation => "protocol violation",
            CloseCode::FrameTooLarge => "frame too large",
            CloseCode::SlowConsumer => "slow consumer",
            CloseCode::ServerShutdown => "server shutdown",
            CloseCode::HandshakeTimeout => "handshake timeout",
            CloseCode::ServerFull => "server full",
            CloseCode::Kicked => "kicked by the server",
            CloseCode::Unknown(code) => return write!(f, "unknown close code {code}"),
        };
        f.write_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_and_unknown_codes_survive() {
        for raw in 0..=12u64 {
            assert_eq!(CloseCode::from_u64(raw).to_u64(), raw);
        }
        assert_eq!(CloseCode::from_u64(77), CloseCode::Unknown(77));
        assert_eq!(CloseCode::VersionMismatch.to_u64(), 1);
    }
}

//! Application close codes: why a peergroup connection ended.

use std::fmt;

/// Text from the network (a close reason, a login name), shown with control characters
/// and bidirectional-text controls escaped (`\n`, `\u{1b}`, `\u{202e}`), so it can never
/// start a forged log line or restyle a terminal. Everything else is shown as is.
#[derive(Clone, Copy, Debug)]
pub struct Escaped<'a>(pub &'a str);

/// Whether `c` is escaped by [`Escaped`]: control characters (C0, DEL, C1) and the
/// characters that reorder text (bidi embeddings, overrides and isolates, line and
/// paragraph separators).
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(at) = rest.find(needs_escape) {
            f.write_str(&rest[..at])?;
            let c = rest[at..].chars().next().unwrap_or_default();
            write!(f, "{}", c.escape_default())?;
            rest = &rest[at + c.len_utf8()..];
        }
        f.write_str(rest)
    }
}

/// Network text as a `String` with [`Escaped`]'s escapes; borrowed when nothing needed it.
pub fn escape_text(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains(needs_escape) {
        std::borrow::Cow::Owned(Escaped(text).to_string())
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

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
    /// The server refused a [`crate::ClientToServer::Resume`]: an unknown, spent or
    /// another identity's token, a host no longer kept, or frames it no longer holds. The
    /// reason says which; nothing changed on the server. Added in protocol 6.
    ResumeRefused,
    /// A resumed connection of the same host took this one's place (the old one was
    /// still half-open). Added in protocol 6.
    Replaced,
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
            CloseCode::ResumeRefused => 10,
            CloseCode::Replaced => 11,
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
            10 => CloseCode::ResumeRefused,
            11 => CloseCode::Replaced,
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
            CloseCode::ResumeRefused => "resume refused",
            CloseCode::Replaced => "replaced by a resumed connection",
            CloseCode::Unknown(code) => return write!(f, "unknown close code {code}"),
        };
        f.write_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_text_cannot_forge_log_lines() {
        let forged = "bye\n2026-12-03T07:00:00Z  INFO admin logged in\r\u{1b}[2J\u{202e}x";
        let shown = Escaped(forged).to_string();
        assert!(!shown.contains('\n') && !shown.contains('\r') && !shown.contains('\u{1b}'));
        assert_eq!(
            shown,
            "bye\\n2026-12-03T07:00:00Z  INFO admin logged in\\r\\u{1b}[2J\\u{202e}x"
        );
        assert_eq!(Escaped("héllo wörld").to_string(), "héllo wörld");
        assert!(matches!(
            escape_text("plain"),
            std::borrow::Cow::Borrowed("plain")
        ));
    }

    #[test]
    fn every_code_round_trips_and_unknown_codes_survive() {
        for raw in 0..=12u64 {
            assert_eq!(CloseCode::from_u64(raw).to_u64(), raw);
        }
        assert_eq!(CloseCode::from_u64(77), CloseCode::Unknown(77));
        assert_eq!(CloseCode::VersionMismatch.to_u64(), 1);
    }
}

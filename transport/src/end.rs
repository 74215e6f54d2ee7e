//! Why a connection's reading stopped, and quinn's connection errors sorted into the cases
//! both sides report.

use peergroup_protocol::{CloseCode, FrameError};

/// Why the read side of a connection stopped.
#[derive(Debug)]
pub enum ReadEnd {
    /// The peer or the network ended the QUIC connection.
    Connection(quinn::ConnectionError),
    /// The peer or the network ended a connection of another carrier (WebSocket), already
    /// sorted as both sides report it.
    Ended(ConnectionEnd),
    /// The peer broke the protocol; the reader's owner closes with this code and text.
    Violation(CloseCode, String),
}

impl From<quinn::ConnectionError> for ReadEnd {
    fn from(error: quinn::ConnectionError) -> Self {
        ReadEnd::Connection(error)
    }
}

impl From<FrameError> for ReadEnd {
    fn from(error: FrameError) -> Self {
        ReadEnd::Violation(error.close_code(), error.to_string())
    }
}

/// How a connection ended, as both sides report it: each maps these onto its own
/// disconnect reason (the client's `DisconnectReason`, the server's), so the sorting of
/// quinn's errors is written once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionEnd {
    /// The other side closed with an application close code and its text (lossily
    /// decoded as UTF-8).
    PeerClosed {
        /// The other side's close code.
        code: CloseCode,
        /// The other side's close reason.
        reason: String,
    },
    /// Nothing was heard from the other side for the idle timeout.
    TimedOut,
    /// This side closed the connection.
    LocallyClosed,
    /// Anything else (a transport error, a reset, a version mismatch in QUIC itself):
    /// quinn's text.
    Lost(String),
}

impl From<&quinn::ConnectionError> for ConnectionEnd {
    fn from(error: &quinn::ConnectionError) -> Self {
        use quinn::ConnectionError as E;
        match error {
            E::ApplicationClosed(close) => {
                let (code, reason) = peer_close(close);
                ConnectionEnd::PeerClosed { code, reason }
            }
            E::TimedOut => ConnectionEnd::TimedOut,
            E::LocallyClosed => ConnectionEnd::LocallyClosed,
            other => ConnectionEnd::Lost(other.to_string()),
        }
    }
}

/// The code and text of an application close the other side sent.
pub fn peer_close(close: &quinn::ApplicationClose) -> (CloseCode, String) {
    (
        crate::close::from_varint(close.error_code),
        String::from_utf8_lossy(&close.reason).into_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_application_close_keeps_its_code_and_text() {
        let error = quinn::ConnectionError::ApplicationClosed(quinn::ApplicationClose {
            error_code: quinn::VarInt::from_u32(8),
            reason: bytes::Bytes::from_static(b"server full"),
        });
        assert_eq!(
            ConnectionEnd::from(&error),
            ConnectionEnd::PeerClosed {
                code: CloseCode::ServerFull,
                reason: "server full".into()
            }
        );
    }

    #[test]
    fn time_outs_local_closes_and_the_rest_are_told_apart() {
        assert_eq!(
            ConnectionEnd::from(&quinn::ConnectionError::TimedOut),
            ConnectionEnd::TimedOut
        );
        assert_eq!(
            ConnectionEnd::from(&quinn::ConnectionError::LocallyClosed),
            ConnectionEnd::LocallyClosed
        );
        let reset = quinn::ConnectionError::Reset;
        assert_eq!(
            ConnectionEnd::from(&reset),
            ConnectionEnd::Lost(reset.to_string())
        );
    }

    #[test]
    fn a_frame_error_is_a_violation_with_its_close_code() {
        let end = ReadEnd::from(FrameError::TooLarge { len: 10, max: 4 });
        assert!(matches!(
            end,
            ReadEnd::Violation(CloseCode::FrameTooLarge, _)
        ));
    }
}

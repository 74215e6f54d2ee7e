//! Turning quinn's failures during a connect into a [`ConnectError`] that names the cause.
//!
//! quinn reports a pin mismatch as a TLS alert ("bad certificate"), an absent server as an
//! idle timeout and a refusal as an application close; a game needs these told apart, so
//! the login records what it knows (whether QUIC connected, which certificate a pinned
//! verifier refused) and this module classifies with it.

use crate::error::ConnectError;
use crate::tls::RefusedCertificate;
use peergroup_protocol::{CloseCode, Fingerprint};
use std::net::SocketAddr;
use std::time::Instant;

/// What the login knows when it fails.
#[derive(Clone, Copy)]
pub(crate) struct LoginProgress<'a> {
    /// The server's address.
    pub addr: SocketAddr,
    /// When the connect started.
    pub started: Instant,
    /// The pinned fingerprint, if the server is trusted by pin.
    pub pinned: Option<Fingerprint>,
    /// Where the pinned verifier records a certificate it refused.
    pub refused: &'a RefusedCertificate,
    /// Whether the QUIC handshake completed.
    pub quic_up: bool,
}

/// Whether the server refused the connection at its first packet (QUIC
/// `CONNECTION_REFUSED`): a peergroup server does so only while too many connections are
/// logging in, in all or from this address, and means "try again later" (a draining
/// server closes with `ServerShutdown` instead).
pub(crate) fn is_busy(close: &quinn::ConnectionClose) -> bool {
    close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED
}

/// The error for a server that kept refusing the connection as busy.
pub(crate) fn busy() -> ConnectError {
    ConnectError::Refused {
        code: CloseCode::ServerFull,
        reason: "the server is busy (too many connections logging in); try again later".into(),
    }
}

/// QUIC carries TLS alerts as transport error codes 0x100–0x1ff (RFC 9001, section 4.8).
fn is_tls_alert(code: u64) -> bool {
    (0x100..=0x1ff).contains(&code)
}

impl LoginProgress<'_> {
    /// The error for a connection that failed during the login.
    pub fn connection_failed(&self, error: quinn::ConnectionError) -> ConnectError {
        if let (Some(expected), Some(presented)) = (self.pinned, self.refused.get()) {
            return ConnectError::PinMismatch {
                expected,
                presented,
            };
        }
        match error {
            quinn::ConnectionError::ApplicationClosed(close) => ConnectError::Refused {
                code: CloseCode::from_u64(close.error_code.into_inner()),
                reason: String::from_utf8_lossy(&close.reason).into_owned(),
            },
            quinn::ConnectionError::TransportError(error) if is_tls_alert(error.code.into()) => {
                ConnectError::Handshake(error.to_string())
            }
            quinn::ConnectionError::ConnectionClosed(close)
                if is_tls_alert(close.error_code.into()) =>
            {
                ConnectError::Handshake(close.to_string())
            }
            quinn::ConnectionError::ConnectionClosed(close) if is_busy(&close) => busy(),
            quinn::ConnectionError::TimedOut if !self.quic_up => self.unreachable(),
            other => ConnectError::Lost(other.to_string()),
        }
    }

    /// The error when the connect timeout ran out; `refused_busy` when the server had
    /// refused an attempt as busy.
    pub fn timed_out(&self, timeout: std::time::Duration, refused_busy: bool) -> ConnectError {
        if refused_busy && !self.quic_up {
            busy()
        } else if self.quic_up {
            ConnectError::Timeout(timeout)
        } else {
            self.unreachable()
        }
    }

    /// The error when quinn would not even start the connection.
    pub fn not_started(&self, error: quinn::ConnectError) -> ConnectError {
        match error {
            quinn::ConnectError::InvalidServerName(name) => {
                ConnectError::TlsSetup(format!("invalid server name {name:?}"))
            }
            quinn::ConnectError::InvalidRemoteAddress(_) => self.unreachable(),
            other => ConnectError::Lost(other.to_string()),
        }
    }

    fn unreachable(&self) -> ConnectError {
        ConnectError::Unreachable {
            addr: self.addr,
            waited: self.started.elapsed(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn progress(refused: &RefusedCertificate, quic_up: bool) -> LoginProgress<'_> {
        LoginProgress {
            addr: "127.0.0.1:9".parse().unwrap(),
            started: Instant::now() - Duration::from_millis(300),
            pinned: Some(Fingerprint([1; 32])),
            refused,
            quic_up,
        }
    }

    fn tls_alert(alert: u8) -> quinn::ConnectionError {
        quinn::ConnectionError::ConnectionClosed(quinn::ConnectionClose {
            error_code: quinn::TransportErrorCode::crypto(alert),
            frame_type: None,
            reason: bytes::Bytes::from_static(b"peer refused"),
        })
    }

    #[test]
    fn a_tls_alert_is_a_handshake_failure_unless_the_pin_refused_the_certificate() {
        let refused = RefusedCertificate::default();
        // 0x2a: bad_certificate (RFC 8446, section 6).
        let error = progress(&refused, false).connection_failed(tls_alert(0x2a));
        assert!(matches!(error, ConnectError::Handshake(_)), "{error}");
        refused.record(Fingerprint([2; 32]));
        let error = progress(&refused, false).connection_failed(tls_alert(0x2a));
        assert!(
            matches!(
                error,
                ConnectError::PinMismatch { expected, presented }
                    if expected == Fingerprint([1; 32]) && presented == Fingerprint([2; 32])
            ),
            "{error}"
        );
    }

    #[test]
    fn a_time_out_before_quic_connected_is_unreachable_and_after_it_a_missing_welcome() {
        let refused = RefusedCertificate::default();
        let error = progress(&refused, false).connection_failed(quinn::ConnectionError::TimedOut);
        assert!(
            matches!(error, ConnectError::Unreachable { waited, .. } if waited >= Duration::from_millis(300)),
            "{error}"
        );
        let error = progress(&refused, true).connection_failed(quinn::ConnectionError::TimedOut);
        assert!(matches!(error, ConnectError::Lost(_)), "{error}");
        let timeout = Duration::from_secs(10);
        assert!(matches!(
            progress(&refused, false).timed_out(timeout, false),
            ConnectError::Unreachable { .. }
        ));
        assert!(matches!(
            progress(&refused, true).timed_out(timeout, false),
            ConnectError::Timeout(t) if t == timeout
        ));
        // A server that kept refusing as busy is not unreachable.
        assert!(matches!(
            progress(&refused, false).timed_out(timeout, true),
            ConnectError::Refused {
                code: CloseCode::ServerFull,
                ..
            }
        ));
    }

    #[test]
    fn a_transport_error_that_is_not_an_alert_is_a_lost_connection() {
        let refused = RefusedCertificate::default();
        let closed = quinn::ConnectionError::ConnectionClosed(quinn::ConnectionClose {
            error_code: quinn::TransportErrorCode::PROTOCOL_VIOLATION,
            frame_type: None,
            reason: bytes::Bytes::new(),
        });
        let error = progress(&refused, true).connection_failed(closed);
        assert!(matches!(error, ConnectError::Lost(_)), "{error}");
    }
}

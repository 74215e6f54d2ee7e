//! Admission before login: what a connection that has not logged in may cost the server.
//!
//! Every connection is counted from its first packet until it is logged in or out (TLS
//! handshake, hello and auth hook): at most [`Admission::max_handshakes`] at once, at most
//! [`Admission::max_handshakes_per_source`] from one source, and past
//! [`Admission::validate_above`] a source must prove it owns its address (a QUIC Retry,
//! RFC 9000 section 8.1) before it costs any state. Logged-in clients are counted per
//! source too, and the client limit is checked before the hello is read and the auth hook
//! runs. A refused connection is told so at once (QUIC `CONNECTION_REFUSED`, or a close
//! with `ServerFull` and the reason once TLS is up) and counted.
//!
//! [`AdmissionCounter`] is the sans-IO bookkeeping (`handle_*` in, verdicts out); the accept
//! loop and the connection task drive it and hold its slots as guards.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Limits on connections before they are logged in. Plain data with documented defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// Connections logging in at most: from their first packet until they are logged in or
    /// out (TLS handshake, hello and auth hook). One more is refused before any state is
    /// kept for it (QUIC `CONNECTION_REFUSED`; the client library tries again, backing
    /// off, within its connect timeout), counted in
    /// [`ServerStats::admission_refusals`](crate::ServerStats::admission_refusals).
    /// Default 256.
    pub max_handshakes: usize,
    /// Connections logging in at most from one source (an IPv4 address, or an IPv6 /64,
    /// the block one subscriber usually holds); one more from it is refused as above, so
    /// one source cannot take every slot. Default 64.
    pub max_handshakes_per_source: usize,
    /// Logged-in clients at most from one source; one more is closed with `ServerFull`
    /// before its hello is read and counted in
    /// [`ServerStats::connections_refused`](crate::ServerStats::connections_refused).
    /// Large enough for a campus or carrier-grade NAT. Default 1,024.
    pub max_clients_per_source: usize,
    /// With this many connections logging in, a new one must first validate its address with a QUIC Retry (one extra round trip; a spoofed source never
    /// answers it), counted in
    /// [`ServerStats::address_validations`](crate::ServerStats::address_validations).
    /// `0` asks it of every connection. Default 64.
    pub validate_above: usize,
    /// Largest hello frame body, bytes (a hello is a version and a login token); a longer
    /// length prefix closes the connection at once with `FrameTooLarge`. Default 16 KiB.
    pub max_hello_len: u32,
    /// Time from a connection's first packet to its whole hello (the TLS handshake
    /// included); past it the connection is closed and counted in
    /// [`ServerStats::handshake_failures`](crate::ServerStats::handshake_failures). The
    /// auth hook then has what is left of [`Timeouts::handshake`](crate::Timeouts).
    /// Default 5 s.
    pub hello_timeout: Duration,
}

impl Default for Admission {
    fn default() -> Self {
        Self {
            max_handshakes: 256,
            max_handshakes_per_source: 64,
            max_clients_per_source: 1_024,
            validate_above: 64,
            max_hello_len: 16 << 10,
            hello_timeout: Duration::from_secs(5),
        }
    }
}

/// The bytes a connection may have in flight to the server before it has logged in: one
/// largest hello and its length prefix, rounded up. QUIC's connection flow control
/// (`initial_max_data`) holds a client to it until the server raises it at login.
pub(crate) fn pre_login_receive_window(config: &Admission) -> u32 {
    config.max_hello_len.saturating_add(4).next_power_of_two()
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// [`Admission::max_handshakes`] connections are in their handshake.
    Handshakes,
    /// [`Admission::max_handshakes_per_source`] from this source are.
    SourceHandshakes,
    /// The server has [`Limits::max_clients`](crate::Limits::max_clients) clients.
    ServerFull,
    /// [`Admission::max_clients_per_source`] clients from this source are logged in.
    SourceClients,
}

impl Refusal {
    /// The reason as the refused client reads it.
    pub fn text(self) -> &'static str {
        match self {
            Refusal::Handshakes => "too many connections are logging in; try again later",
            Refusal::SourceHandshakes => {
                "too many connections from this address are logging in; try again later"
            }
            Refusal::ServerFull => "the server is at its client limit",
            Refusal::SourceClients => "too many clients from this address",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text())
    }
}

/// What to do with a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Go on with the handshake; its slot is counted until `handle_handshake_end`.
    Accept,
    /// Ask the client to validate its address first (QUIC Retry); nothing is counted.
    Validate,
    /// Refuse it; nothing is counted.
    Refuse(Refusal),
}

/// One source's connections.
#[derive(Debug, Default, Clone, Copy)]
struct SourceCount {
    handshakes: usize,
    clients: usize,
}

/// The sans-IO bookkeeping: connections in their handshake, logged-in clients, per source.
#[derive(Debug)]
pub(crate) struct AdmissionCounter {
    config: Admission,
    max_clients: usize,
    handshakes: usize,
    clients: usize,
    /// Only sources with a connection in flight or a client logged in: at most
    /// `max_handshakes + max_clients` entries.
    sources: HashMap<IpAddr, SourceCount>,
}

/// The address one party is likely to hold many of counts as one source: an IPv6 address
/// stands for its /64, and an IPv4-mapped IPv6 address for the IPv4 address.
pub(crate) fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
    }
}

impl AdmissionCounter {
    pub fn new(config: Admission, max_clients: usize) -> Self {
        Self {
            config,
            max_clients,
            handshakes: 0,
            clients: 0,
            sources: HashMap::new(),
        }
    }

    /// A new connection from `ip`; `validated` once it has answered a Retry.
    pub fn handle_incoming(&mut self, ip: IpAddr, validated: bool) -> Verdict {
        if !validated && self.handshakes >= self.config.validate_above {
            return Verdict::Validate;
        }
        if self.handshakes >= self.config.max_handshakes {
            return Verdict::Refuse(Refusal::Handshakes);
        }
        let source = self.sources.entry(source_of(ip)).or_default();
        if source.handshakes >= self.config.max_handshakes_per_source {
            return Verdict::Refuse(Refusal::SourceHandshakes);
        }
        source.handshakes += 1;
        self.handshakes += 1;
        Verdict::Accept
    }

    /// A connection admitted by `handle_incoming` is logged in, or failed to.
    pub fn handle_handshake_end(&mut self, ip: IpAddr) {
        self.handshakes = self.handshakes.saturating_sub(1);
        self.change_source(ip, |s| s.handshakes = s.handshakes.saturating_sub(1));
    }

    /// Whether a client from `ip` could log in now: asked before its hello is read, so a
    /// full server spends nothing on it.
    pub fn check_login(&self, ip: IpAddr) -> Result<(), Refusal> {
        if self.clients >= self.max_clients {
            return Err(Refusal::ServerFull);
        }
        let source = self
            .sources
            .get(&source_of(ip))
            .copied()
            .unwrap_or_default();
        if source.clients >= self.config.max_clients_per_source {
            return Err(Refusal::SourceClients);
        }
        Ok(())
    }

    /// A client from `ip` logs in, if the limits still allow it (checked again: others may
    /// have logged in while its hello and auth hook ran).
    pub fn handle_login(&mut self, ip: IpAddr) -> Result<(), Refusal> {
        self.check_login(ip)?;
        self.clients += 1;
        self.sources.entry(source_of(ip)).or_default().clients += 1;
        Ok(())
    }

    /// A client from `ip` that `handle_login` admitted is gone.
    pub fn handle_logout(&mut self, ip: IpAddr) {
        self.clients = self.clients.saturating_sub(1);
        self.change_source(ip, |s| s.clients = s.clients.saturating_sub(1));
    }

    fn change_source(&mut self, ip: IpAddr, change: impl FnOnce(&mut SourceCount)) {
        let key = source_of(ip);
        if let Some(source) = self.sources.get_mut(&key) {
            change(source);
            if source.handshakes == 0 && source.clients == 0 {
                self.sources.remove(&key);
            }
        }
    }

    /// Connections logging in now.
    #[cfg(test)]
    pub fn handshakes(&self) -> usize {
        self.handshakes
    }

    /// Sources with something counted.
    #[cfg(test)]
    pub fn sources(&self) -> usize {
        self.sources.len()
    }
}

/// The counter as the server's tasks share it.
pub(crate) type SharedAdmission = Arc<Mutex<AdmissionCounter>>;

pub(crate) fn lock(admission: &SharedAdmission) -> std::sync::MutexGuard<'_, AdmissionCounter> {
    admission
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A handshake slot, given back when dropped (whatever way the connection task ends).
#[derive(Debug)]
pub(crate) struct HandshakeSlot {
    admission: SharedAdmission,
    ip: IpAddr,
}

impl HandshakeSlot {
    /// Takes the slot `handle_incoming` counted for a connection from `ip`.
    pub fn new(admission: SharedAdmission, ip: IpAddr) -> Self {
        Self { admission, ip }
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        lock(&self.admission).handle_handshake_end(self.ip);
    }
}

/// A logged-in client's slot, given back when dropped.
#[derive(Debug)]
pub(crate) struct ClientSlot {
    admission: SharedAdmission,
    ip: IpAddr,
}

impl ClientSlot {
    /// Logs a client from `ip` in, if the limits allow it.
    pub fn login(admission: &SharedAdmission, ip: IpAddr) -> Result<Self, Refusal> {
        lock(admission).handle_login(ip)?;
        Ok(Self {
            admission: admission.clone(),
            ip,
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        lock(&self.admission).handle_logout(self.ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn v4(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
    }

    fn config() -> Admission {
        Admission {
            max_handshakes: 8,
            max_handshakes_per_source: 3,
            max_clients_per_source: 2,
            validate_above: 4,
            ..Admission::default()
        }
    }

    #[test]
    fn one_source_cannot_take_every_handshake_slot() {
        let mut counter = AdmissionCounter::new(config(), 100);
        for _ in 0..3 {
            assert_eq!(counter.handle_incoming(v4(1), false), Verdict::Accept);
        }
        assert_eq!(
            counter.handle_incoming(v4(1), false),
            Verdict::Refuse(Refusal::SourceHandshakes)
        );
        assert_eq!(counter.handle_incoming(v4(2), false), Verdict::Accept);
        counter.handle_handshake_end(v4(1));
        assert_eq!(counter.handle_incoming(v4(1), true), Verdict::Accept);
    }

    #[test]
    fn many_handshakes_in_flight_ask_for_address_validation_then_refuse() {
        let mut counter = AdmissionCounter::new(config(), 100);
        for i in 0..4 {
            assert_eq!(counter.handle_incoming(v4(i), false), Verdict::Accept);
        }
        assert_eq!(counter.handle_incoming(v4(9), false), Verdict::Validate);
        assert_eq!(counter.handshakes(), 4, "a Retry keeps no state");
        for i in 4..8 {
            assert_eq!(counter.handle_incoming(v4(i), true), Verdict::Accept);
        }
        assert_eq!(
            counter.handle_incoming(v4(9), true),
            Verdict::Refuse(Refusal::Handshakes)
        );
        for i in 0..8 {
            counter.handle_handshake_end(v4(i));
        }
        assert_eq!(counter.handshakes(), 0);
        assert_eq!(
            counter.sources(),
            0,
            "nothing is kept for a source with nothing"
        );
    }

    #[test]
    fn logins_are_capped_in_all_and_per_source() {
        let mut counter = AdmissionCounter::new(config(), 3);
        assert_eq!(counter.handle_login(v4(1)), Ok(()));
        assert_eq!(counter.handle_login(v4(1)), Ok(()));
        assert_eq!(counter.check_login(v4(1)), Err(Refusal::SourceClients));
        assert_eq!(counter.handle_login(v4(2)), Ok(()));
        assert_eq!(counter.check_login(v4(3)), Err(Refusal::ServerFull));
        counter.handle_logout(v4(1));
        assert_eq!(counter.check_login(v4(1)), Ok(()));
    }

    #[test]
    fn an_ipv6_64_is_one_source_and_a_mapped_ipv4_is_its_ipv4() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert_eq!(source_of(a), source_of(b));
        assert_ne!(source_of(a), source_of("2001:db8:1:3::1".parse().unwrap()));
        let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped());
        assert_eq!(source_of(mapped), v4(1));
        assert_eq!(
            source_of(IpAddr::V6(Ipv6Addr::LOCALHOST)),
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        );
    }
}

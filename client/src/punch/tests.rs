//! Punch attempts through simulated NATs on a simulated clock: RFC 4787 mapping
//! (endpoint-independent or endpoint-dependent) and filtering (endpoint-independent or
//! address-and-port-dependent), latency and loss.

use super::*;
use peergroup_protocol::{HostId, PunchOrder};
use std::collections::{BTreeMap, HashMap, HashSet};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mapping {
    EndpointIndependent,
    EndpointDependent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Filtering {
    EndpointIndependent,
    AddressAndPortDependent,
}

/// A NAT with one public IP in front of one host.
struct Nat {
    public_ip: [u8; 4],
    mapping: Mapping,
    filtering: Filtering,
    next_port: u16,
    /// (internal source, destination if endpoint-dependent) -> public port.
    mappings: HashMap<(SocketAddr, Option<SocketAddr>), u16>,
    /// public port -> internal address.
    reverse: HashMap<u16, SocketAddr>,
    /// (public port, remote) pairs the inside has sent to: what APDF lets back in.
    sent_to: HashSet<(u16, SocketAddr)>,
}

impl Nat {
    fn new(public_ip: [u8; 4], mapping: Mapping, filtering: Filtering) -> Self {
        Self {
            public_ip,
            mapping,
            filtering,
            next_port: 40_000,
            mappings: HashMap::new(),
            reverse: HashMap::new(),
            sent_to: HashSet::new(),
        }
    }

    fn outbound(&mut self, from: SocketAddr, to: SocketAddr) -> SocketAddr {
        let key = match self.mapping {
            Mapping::EndpointIndependent => (from, None),
            Mapping::EndpointDependent => (from, Some(to)),
        };
        let port = *self.mappings.entry(key).or_insert_with(|| {
            self.next_port += 7;
            self.next_port
        });
        self.reverse.insert(port, from);
        self.sent_to.insert((port, to));
        SocketAddr::from((self.public_ip, port))
    }

    fn inbound(&self, to_port: u16, from: SocketAddr) -> Option<SocketAddr> {
        let inside = *self.reverse.get(&to_port)?;
        match self.filtering {
            Filtering::EndpointIndependent => Some(inside),
            Filtering::AddressAndPortDependent => {
                self.sent_to.contains(&(to_port, from)).then_some(inside)
            }
        }
    }
}

const SERVER: ([u8; 4], u16) = ([198, 51, 100, 1], 7700);
const ONE_WAY: Duration = Duration::from_millis(15);

struct Side {
    inside: SocketAddr,
    nat: Option<Nat>,
    session: PunchSession,
}

/// Two hosts, each behind an optional NAT, punching through a lossy network.
struct Net {
    now: Instant,
    sides: [Side; 2],
    /// Deliveries by time: (to public address, from public address, bytes).
    in_flight: BTreeMap<(Instant, u64), (SocketAddr, SocketAddr, Vec<u8>)>,
    sequence: u64,
    loss_per_mille: u32,
    rng: u64,
}

fn host(n: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, n, 2], 5000 + u16::from(n)))
}

impl Net {
    fn new(nats: [Option<(Mapping, Filtering)>; 2], loss_per_mille: u32) -> Self {
        let now = Instant::now();
        let server = SocketAddr::from(SERVER);
        let mut publics = Vec::new();
        let mut built = Vec::new();
        for (i, nat) in nats.into_iter().enumerate() {
            let inside = host(i as u8 + 1);
            let mut nat = nat.map(|(m, f)| Nat::new([203, 0, 113, i as u8 + 1], m, f));
            // The client's QUIC connection to the server made its server-reflexive mapping.
            let reflexive = match &mut nat {
                Some(nat) => nat.outbound(inside, server),
                None => inside,
            };
            publics.push(reflexive);
            built.push((inside, nat));
        }
        let sides = built
            .into_iter()
            .enumerate()
            .map(|(i, (inside, nat))| {
                let order = PunchOrder {
                    peer: HostId::from_raw(2 - i as u64),
                    pair: PairId::from_raw(77),
                    attempt: 1,
                    secret: [9; 32],
                    candidates: vec![publics[1 - i]],
                    start_in_ms: 0,
                    controlling: i == 0,
                };
                let session =
                    PunchSession::new(&order, inside, PunchTiming::default(), now, 1000 * i as u64);
                Side {
                    inside,
                    nat,
                    session,
                }
            })
            .collect::<Vec<_>>();
        let [a, b]: [Side; 2] = sides.try_into().ok().unwrap();
        Self {
            now,
            sides: [a, b],
            in_flight: BTreeMap::new(),
            sequence: 0,
            loss_per_mille,
            rng: 0x2545_F491_4F6C_DD1D,
        }
    }

    fn lose(&mut self) -> bool {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng % 1000) < u64::from(self.loss_per_mille)
    }

    fn flush(&mut self, i: usize) {
        while let Some((to, bytes)) = self.sides[i].session.poll_transmit() {
            let inside = self.sides[i].inside;
            let from = match &mut self.sides[i].nat {
                Some(nat) => nat.outbound(inside, to),
                None => inside,
            };
            if self.lose() {
                continue;
            }
            self.sequence += 1;
            self.in_flight
                .insert((self.now + ONE_WAY, self.sequence), (to, from, bytes));
        }
    }

    fn deliver(&mut self, to: SocketAddr, from: SocketAddr, bytes: &[u8]) {
        for i in 0..2 {
            let side = &mut self.sides[i];
            let inside = match &side.nat {
                Some(nat) if to.ip() == SocketAddr::from((nat.public_ip, 0)).ip() => {
                    nat.inbound(to.port(), from)
                }
                None if to == side.inside => Some(to),
                _ => None,
            };
            if inside == Some(side.inside) {
                side.session.handle_probe(from, bytes, self.now);
                self.flush(i);
            }
        }
    }

    /// Runs until both sides have a result or 10 simulated seconds pass.
    fn run(&mut self) -> [Option<PunchResult>; 2] {
        let end = self.now + Duration::from_secs(10);
        while self.now < end {
            for i in 0..2 {
                self.sides[i].session.handle_timeout(self.now);
                self.flush(i);
            }
            let done = self.sides.iter().all(|s| s.session.result().is_some());
            if done {
                break;
            }
            let next_timer = self
                .sides
                .iter()
                .map(|s| s.session.poll_timeout())
                .min()
                .unwrap();
            let next_delivery = self.in_flight.keys().next().map(|k| k.0);
            self.now = next_delivery
                .map_or(next_timer, |d| d.min(next_timer))
                .max(self.now);
            while let Some(entry) = self.in_flight.first_entry() {
                if entry.key().0 > self.now {
                    break;
                }
                let (to, from, bytes) = entry.remove();
                self.deliver(to, from, &bytes);
            }
        }
        [
            self.sides[0].session.result(),
            self.sides[1].session.result(),
        ]
    }
}

use Filtering::{AddressAndPortDependent as Apdf, EndpointIndependent as Eif};
use Mapping::{EndpointDependent as Edm, EndpointIndependent as Eim};

fn validated(results: [Option<PunchResult>; 2]) -> bool {
    results
        .iter()
        .all(|r| matches!(r, Some(PunchResult::Validated(_))))
}

#[test]
fn endpoint_independent_mapping_behind_port_restricted_firewalls_punches() {
    let mut net = Net::new([Some((Eim, Apdf)), Some((Eim, Apdf))], 0);
    let results = net.run();
    assert!(validated(results), "{results:?}");
    // Each side validated the other's server-reflexive address.
    assert_eq!(
        results[0],
        Some(PunchResult::Validated(SocketAddr::from((
            [203, 0, 113, 2],
            40_007
        ))))
    );
}

#[test]
fn full_cone_and_no_nat_punch() {
    assert!(validated(
        Net::new([Some((Eim, Eif)), Some((Eim, Eif))], 0).run()
    ));
    assert!(validated(Net::new([None, Some((Eim, Apdf))], 0).run()));
}

#[test]
fn endpoint_dependent_mapping_reaches_a_full_cone_through_a_peer_reflexive_candidate() {
    let mut net = Net::new([Some((Edm, Apdf)), Some((Eim, Eif))], 0);
    let results = net.run();
    assert!(validated(results), "{results:?}");
    // B validated A's mapping towards B, which no order listed: peer-reflexive.
    let Some(PunchResult::Validated(at)) = results[1] else {
        unreachable!()
    };
    assert_ne!(at, SocketAddr::from(([203, 0, 113, 1], 40_007)));
    assert_eq!(at.ip(), SocketAddr::from(([203, 0, 113, 1], 0)).ip());
}

#[test]
fn endpoint_dependent_mapping_on_both_sides_fails_within_the_window() {
    let mut net = Net::new([Some((Edm, Apdf)), Some((Edm, Apdf))], 0);
    let started = net.now;
    assert_eq!(
        net.run(),
        [Some(PunchResult::TimedOut), Some(PunchResult::TimedOut)]
    );
    assert_eq!(net.now - started, PunchTiming::default().window);
}

#[test]
fn endpoint_dependent_mapping_against_port_restricted_filtering_fails() {
    let mut net = Net::new([Some((Edm, Apdf)), Some((Eim, Apdf))], 0);
    let results = net.run();
    assert!(!validated(results), "{results:?}");
}

#[test]
fn punching_survives_heavy_packet_loss() {
    // A third of all probes lost: the repeated rounds still get through.
    let mut net = Net::new([Some((Eim, Apdf)), Some((Eim, Apdf))], 333);
    assert!(validated(net.run()));
}

#[test]
fn forged_stale_and_reflected_probes_are_ignored() {
    let now = Instant::now();
    let order = PunchOrder {
        peer: HostId::from_raw(2),
        pair: PairId::from_raw(5),
        attempt: 3,
        secret: [1; 32],
        candidates: vec!["203.0.113.2:4000".parse().unwrap()],
        start_in_ms: 0,
        controlling: true,
    };
    let mut session = PunchSession::new(&order, host(1), PunchTiming::default(), now, 42);
    let peer: SocketAddr = "203.0.113.2:4000".parse().unwrap();
    let request = |secret: [u8; 32], attempt, from_controlling| {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &secret);
        Probe {
            kind: ProbeKind::Request,
            pair: PairId::from_raw(5),
            attempt,
            nonce: 1,
            from_controlling,
        }
        .encode(|b| {
            let mut out = [0u8; PROBE_MAC_LEN];
            out.copy_from_slice(&hmac::sign(&key, b).as_ref()[..PROBE_MAC_LEN]);
            out
        })
    };
    assert!(
        !session.handle_probe(peer, &request([2; 32], 3, false), now),
        "wrong key"
    );
    assert!(
        !session.handle_probe(peer, &request([1; 32], 2, false), now),
        "stale attempt"
    );
    assert!(
        !session.handle_probe(peer, &request([1; 32], 3, true), now),
        "our own side"
    );
    assert!(session.poll_transmit().is_none(), "nothing answered");
    assert!(session.handle_probe(peer, &request([1; 32], 3, false), now));
    let (to, response) = session.poll_transmit().expect("answered");
    assert_eq!(to, peer);
    assert!(matches!(
        Probe::decode(&response).unwrap().0.kind,
        ProbeKind::Response { observed } if observed == peer
    ));
    // A response to a nonce we never sent is ignored.
    let mut unsolicited = Probe::decode(&response).unwrap().0;
    unsolicited.from_controlling = false;
    unsolicited.nonce = 999;
    let key = hmac::Key::new(hmac::HMAC_SHA256, &[1; 32]);
    let bytes = unsolicited.encode(|b| {
        let mut out = [0u8; PROBE_MAC_LEN];
        out.copy_from_slice(&hmac::sign(&key, b).as_ref()[..PROBE_MAC_LEN]);
        out
    });
    assert!(!session.handle_probe(peer, &bytes, now));
}

#[test]
fn probes_back_off_from_50_ms_to_500_ms() {
    let now = Instant::now();
    let order = PunchOrder {
        peer: HostId::from_raw(2),
        pair: PairId::from_raw(5),
        attempt: 1,
        secret: [1; 32],
        candidates: vec!["203.0.113.2:4000".parse().unwrap()],
        start_in_ms: 100,
        controlling: false,
    };
    let mut session = PunchSession::new(&order, host(1), PunchTiming::default(), now, 7);
    let mut at = now;
    let mut sent_at = Vec::new();
    while at < now + Duration::from_secs(3) {
        session.handle_timeout(at);
        if session.poll_transmit().is_some() {
            sent_at.push((at - now).as_millis());
        }
        at = session.poll_timeout();
    }
    assert_eq!(&sent_at[..5], &[100, 150, 225, 337, 506]);
    let gaps: Vec<u128> = sent_at.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.iter().all(|g| *g <= 500), "{gaps:?}");
    assert_eq!(*gaps.last().unwrap(), 500);
}

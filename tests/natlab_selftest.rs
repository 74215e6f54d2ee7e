//! Tests of the real-NAT lab itself (`tests/natlab`): that each NAT kind maps and filters
//! the way its documentation claims, that faults and loss work, and that a lab leaves no
//! namespace behind. They need root (see `natlab::should_skip`); each is bounded in time.

mod natlab;

use natlab::{Lab, Nat, Probe, SiteSpec, Tool};
use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// The re-executed test binary's entry point for lab tools (see `natlab::tool_entry`).
#[test]
fn natlab_tool() {
    natlab::tool_entry();
}

/// The bound for every test.
const LIMIT: Duration = Duration::from_secs(30);
/// A bound for one step inside a test.
const STEP: Duration = Duration::from_secs(10);
/// The echo (reflector) port on servers and public hosts.
const ECHO: u16 = 3478;

/// Starts an echo on `host` and waits until it is bound.
fn start_echo(host: &natlab::Host, port: u16) -> natlab::NsChild {
    let echo = host.spawn_tool(&Tool::echo(port)).expect("start echo");
    echo.wait_for_line("NATLAB READY", STEP)
        .expect("echo ready");
    echo
}

fn namespaces_now() -> BTreeSet<String> {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// 1. A client behind every NAT kind reaches the server's UDP echo, and the server sees the
///    router's public address as the source (the server-reflexive address).
#[test]
fn every_nat_kind_reaches_the_server_with_the_public_address() {
    if natlab::should_skip("every_nat_kind_reaches_the_server_with_the_public_address") {
        return;
    }
    natlab::bounded(LIMIT, || {
        let kinds = [
            Nat::FullCone,
            Nat::PortRestricted,
            Nat::Symmetric,
            Nat::UdpBlocked,
            Nat::Open,
        ];
        // The two homes share one LAN prefix, as homes behind 192.168.1.0/24 do.
        let home = Ipv4Addr::new(192, 168, 1, 0);
        let mut builder = Lab::builder();
        for kind in kinds {
            builder = match kind {
                Nat::FullCone | Nat::PortRestricted => {
                    builder.site_spec(SiteSpec::new(kind).lan(home))
                }
                _ => builder.site(kind),
            };
        }
        let lab = builder.build().expect("build lab");
        let _echo = start_echo(lab.server(), ECHO);
        let server = lab.server().sock(ECHO);

        let probes: Vec<_> = lab
            .sites()
            .iter()
            .map(|site| {
                let child = site
                    .client(0)
                    .spawn_tool(&Probe::new(0, &[server]).tool())
                    .expect("start probe");
                (site, child)
            })
            .collect();
        for (site, child) in probes {
            let out = child.wait_tool(STEP).expect("probe finishes");
            let seen = out
                .reflexive(server)
                .unwrap_or_else(|| panic!("{} client got no echo: {}", site.nat(), out.stdout));
            assert_eq!(
                seen.ip(),
                site.public_addr(),
                "{}: server saw {seen}",
                site.nat()
            );
            if site.nat() == Nat::Open {
                let bound = out.bound().expect("bound address");
                assert_eq!(seen.port(), bound.port(), "no NAT keeps the port");
            } else {
                assert_ne!(seen.ip(), site.client(0).addr(), "NAT rewrote the source");
            }
            if matches!(site.nat(), Nat::FullCone | Nat::PortRestricted) {
                assert_eq!(site.client(0).addr(), Ipv4Addr::new(192, 168, 1, 2));
            }
        }
    });
}

/// 2. Mapping: from one socket to two public destinations, FullCone and PortRestricted
///    (and no NAT) show one mapped port (EIM), Symmetric two (EDM). UdpBlocked reaches the
///    server but not the other host; NoUdp reaches neither.
#[test]
fn mapping_is_endpoint_independent_except_symmetric() {
    if natlab::should_skip("mapping_is_endpoint_independent_except_symmetric") {
        return;
    }
    natlab::bounded(LIMIT, || {
        let lab = Lab::builder()
            .public_hosts(1)
            .site(Nat::FullCone)
            .site(Nat::PortRestricted)
            .site(Nat::Symmetric)
            .site(Nat::UdpBlocked)
            .site(Nat::Open)
            .site(Nat::NoUdp)
            .build()
            .expect("build lab");
        let _echo_server = start_echo(lab.server(), ECHO);
        let _echo_public = start_echo(lab.public_host(0), ECHO);
        let server = lab.server().sock(ECHO);
        let other = lab.public_host(0).sock(ECHO);
        let targets = [server, other];

        let run = |site: &natlab::Site| {
            site.client(0)
                .run_tool(
                    &Probe::new(0, &targets)
                        .tries(5, Duration::from_millis(100))
                        .tool(),
                    STEP,
                )
                .expect("probe finishes")
        };

        thread::scope(|scope| {
            for site in lab.sites() {
                scope.spawn(move || match site.nat() {
                    Nat::FullCone | Nat::PortRestricted | Nat::Open => {
                        let out = run(site);
                        let a = out.reflexive(server).expect("server answered");
                        let b = out.reflexive(other).expect("public host answered");
                        assert_eq!(a, b, "{}: endpoint-independent mapping", site.nat());
                        assert_eq!(a.ip(), site.public_addr());
                    }
                    Nat::Symmetric => {
                        // --random-fully picks a random port per destination; two equal
                        // picks are possible but rare, so allow a few rounds.
                        let mut rounds = Vec::new();
                        for _ in 0..5 {
                            let out = run(site);
                            let a = out.reflexive(server).expect("server answered");
                            let b = out.reflexive(other).expect("public host answered");
                            assert_eq!(a.ip(), b.ip());
                            assert_eq!(a.ip(), site.public_addr());
                            if a.port() != b.port() {
                                return;
                            }
                            rounds.push((a, b));
                        }
                        panic!("Symmetric NAT kept one port in every round: {rounds:?}");
                    }
                    Nat::UdpBlocked => {
                        let out = run(site);
                        assert!(out.reflexive(server).is_some(), "server reachable");
                        assert!(out.no_reply(other), "other host blocked: {}", out.stdout);
                    }
                    Nat::NoUdp => {
                        let out = run(site);
                        assert!(out.no_reply(server), "server blocked: {}", out.stdout);
                        assert!(out.no_reply(other), "other host blocked: {}", out.stdout);
                    }
                });
            }
        });
    });
}

/// What a client at `site` received while an outside host sent to its server mapping: first
/// from a port the client never contacted, then from the one address:port it did contact.
fn filtering_case(lab: &Lab, site_index: usize) -> (SocketAddr, BTreeSet<SocketAddr>) {
    let site = lab.site(site_index);
    let outsider = lab.public_host(0);
    let server = lab.server().sock(ECHO);
    let port = 40_000 + site_index as u16;
    let (stranger_port, contacted_port) = (5_000 + site_index as u16, 6_000 + site_index as u16);
    let contacted = outsider.sock(contacted_port);
    // The client asks the server for its mapping and sends (unanswered) to `contacted`,
    // which opens a port-restricted filter for exactly that address and port.
    let client = site
        .client(0)
        .spawn_tool(
            &Probe::new(port, &[server, contacted])
                .tries(2, Duration::from_millis(100))
                .listen(Duration::from_millis(1500), 0)
                .idle(Duration::from_millis(400))
                .tool(),
        )
        .expect("start client");
    client
        .wait_for_line("NATLAB LISTENING", STEP)
        .expect("client listening");
    let mapped = natlab::ToolOutput::parse(client.stdout())
        .reflexive(server)
        .expect("client has its mapping");
    for from in [stranger_port, contacted_port] {
        outsider
            .run_tool(
                &Tool::send(from, mapped, 3, Duration::from_millis(20)),
                STEP,
            )
            .expect("outsider sends");
    }
    let out = client.wait_tool(STEP).expect("client finishes");
    (mapped, out.received().into_iter().collect())
}

/// 3. Filtering: PortRestricted drops datagrams from an endpoint the client never sent to
///    and passes the one it did; FullCone (DMZ and port-forward rules) lets everything in;
///    Symmetric drops both (its mapping for the contacted host is another port).
#[test]
fn filtering_port_restricted_drops_unsolicited_full_cone_admits() {
    if natlab::should_skip("filtering_port_restricted_drops_unsolicited_full_cone_admits") {
        return;
    }
    natlab::bounded(LIMIT, || {
        let lab = Lab::builder()
            .public_hosts(1)
            .site_with_clients(Nat::FullCone, 2)
            .site(Nat::PortRestricted)
            .site(Nat::Symmetric)
            .build()
            .expect("build lab");
        let _echo = start_echo(lab.server(), ECHO);
        let outsider = lab.public_host(0);
        let stranger = |s: usize| outsider.sock(5_000 + s as u16);
        let contacted = |s: usize| outsider.sock(6_000 + s as u16);

        thread::scope(|scope| {
            let lab = &lab;
            let full = scope.spawn(move || filtering_case(lab, 0));
            let restricted = scope.spawn(move || filtering_case(lab, 1));
            let symmetric = scope.spawn(move || filtering_case(lab, 2));

            let (mapped, got) = full.join().expect("full cone case");
            assert_eq!(mapped.port(), 40_000, "MASQUERADE kept the free port");
            assert!(
                got.contains(&stranger(0)),
                "full cone admits a stranger: {got:?}"
            );
            assert!(
                got.contains(&contacted(0)),
                "full cone admits a peer: {got:?}"
            );

            let (_, got) = restricted.join().expect("port-restricted case");
            assert!(
                !got.contains(&stranger(1)),
                "port-restricted dropped a stranger: {got:?}"
            );
            assert!(
                got.contains(&contacted(1)),
                "port-restricted admits the contacted endpoint: {got:?}"
            );

            let (_, got) = symmetric.join().expect("symmetric case");
            assert!(got.is_empty(), "symmetric admitted {got:?}");
        });

        // The second client behind the full cone is reached through a port forward.
        let site = lab.site(0);
        let port = 41_000;
        site.forward_udp_port(1, port).expect("port forward");
        let client = site
            .client(1)
            .spawn_tool(
                &Probe::new(port, &[lab.server().sock(ECHO)])
                    .listen(Duration::from_millis(1500), 1)
                    .tool(),
            )
            .expect("start client 1");
        client
            .wait_for_line("NATLAB LISTENING", STEP)
            .expect("client 1 listening");
        let mapped = natlab::ToolOutput::parse(client.stdout())
            .reflexive(lab.server().sock(ECHO))
            .expect("client 1 mapping");
        assert_eq!(mapped, SocketAddr::from((site.public_addr(), port)));
        outsider
            .run_tool(
                &Tool::send(7_000, mapped, 3, Duration::from_millis(20)),
                STEP,
            )
            .expect("outsider sends");
        let got = client
            .wait_tool(STEP)
            .expect("client 1 finishes")
            .received();
        assert_eq!(got, vec![outsider.sock(7_000)], "forwarded to client 1");
    });
}

/// Two clients on one LAN behind one NAT: same public address, distinct mappings even from
/// the same local port, and they reach each other directly on the LAN.
#[test]
fn two_clients_behind_one_nat() {
    if natlab::should_skip("two_clients_behind_one_nat") {
        return;
    }
    natlab::bounded(LIMIT, || {
        let lab = Lab::builder()
            .site_with_clients(Nat::PortRestricted, 2)
            .build()
            .expect("build lab");
        let _echo = start_echo(lab.server(), ECHO);
        let server = lab.server().sock(ECHO);
        let site = lab.site(0);
        let probe = Probe::new(40_000, &[server]).tool();
        // One after the other, so the first mapping holds port 40000 when the second comes.
        let first = site.client(0).run_tool(&probe, STEP).expect("client 0");
        let second = site.client(1).run_tool(&probe, STEP).expect("client 1");
        let a = first.reflexive(server).expect("client 0 mapping");
        let b = second.reflexive(server).expect("client 1 mapping");
        assert_eq!(a.ip(), site.public_addr());
        assert_eq!(b.ip(), site.public_addr());
        assert_ne!(a.port(), b.port(), "one public port per mapping");

        let _lan_echo = start_echo(site.client(0), 4_000);
        let peer = site.client(0).sock(4_000);
        let out = site
            .client(1)
            .run_tool(&Probe::new(0, &[peer]).tool(), STEP)
            .expect("LAN probe");
        let seen = out.reflexive(peer).expect("LAN echo answered");
        assert_eq!(seen.ip(), site.client(1).addr(), "no NAT on the LAN");
    });
}

/// Fault injection: a path-kill between two sites leaves the server reachable and can be
/// removed; random loss drops about the requested share.
#[test]
fn faults_kill_a_path_and_inject_loss() {
    if natlab::should_skip("faults_kill_a_path_and_inject_loss") {
        return;
    }
    natlab::bounded(LIMIT, || {
        let lab = Lab::builder()
            .site(Nat::FullCone)
            .site(Nat::Open)
            .build()
            .expect("build lab");
        let _echo = start_echo(lab.server(), ECHO);
        // Site 0's client is the full cone's DMZ host: reachable at the public address.
        let _peer_echo = start_echo(lab.client(0, 0), 4_000);
        let server = lab.server().sock(ECHO);
        let peer = SocketAddr::from((lab.site(0).public_addr(), 4_000));
        let b = lab.client(1, 0);
        let probe = Probe::new(0, &[server, peer])
            .tries(5, Duration::from_millis(100))
            .tool();

        let out = b.run_tool(&probe, STEP).expect("probe");
        assert!(out.reflexive(peer).is_some(), "path works: {}", out.stdout);

        let fault = lab.block_udp_between_sites(0, 1).expect("block");
        let out = b.run_tool(&probe, STEP).expect("probe");
        assert!(out.reflexive(server).is_some(), "server still reachable");
        assert!(out.no_reply(peer), "path killed: {}", out.stdout);
        let out = lab
            .client(0, 0)
            .run_tool(&Probe::new(0, &[server]).tool(), STEP)
            .expect("probe from site 0");
        assert!(
            out.reflexive(server).is_some(),
            "server reachable from site 0"
        );
        lab.remove_fault(fault).expect("unblock");
        let out = b.run_tool(&probe, STEP).expect("probe");
        assert!(out.reflexive(peer).is_some(), "path back: {}", out.stdout);

        // Loss: 300 datagrams server -> B at p = 0.5, then none lost without the rule.
        let count_received = |sent: u32| -> usize {
            let listener = b
                .spawn_tool(
                    &Probe::new(9_000, &[])
                        .listen(Duration::from_secs(5), sent as usize)
                        .idle(Duration::from_millis(500))
                        .tool(),
                )
                .expect("listener");
            listener
                .wait_for_line("NATLAB LISTENING", STEP)
                .expect("listening");
            lab.server()
                .run_tool(
                    &Tool::send(9_001, b.sock(9_000), sent, Duration::from_millis(1)),
                    STEP,
                )
                .expect("send");
            listener.wait_tool(STEP).expect("listener finishes").count()
        };
        let loss = lab
            .add_udp_loss(b.addr(), Some(lab.server().addr()), 0.5)
            .expect("loss");
        let lossy = count_received(300);
        assert!(
            (60..=240).contains(&lossy),
            "50% loss let {lossy}/300 through"
        );
        lab.remove_fault(loss).expect("remove loss");
        let clean = count_received(300);
        assert!(clean >= 295, "without loss {clean}/300 arrived");
    });
}

/// 3b. An outage cuts a site off from everyone (the server too) until it is lifted, and a
///    mapping change gives the same local port a new external port from the new range.
#[test]
fn an_outage_cuts_a_site_off_and_a_mapping_change_moves_its_port() {
    if natlab::should_skip("an_outage_cuts_a_site_off_and_a_mapping_change_moves_its_port") {
        return;
    }
    natlab::bounded(LIMIT, || {
        let lab = Lab::builder()
            .public_hosts(1)
            .site(Nat::FullCone)
            .site(Nat::PortRestricted)
            .build()
            .expect("build lab");
        let _echo = start_echo(lab.server(), ECHO);
        let _other_echo = start_echo(lab.public_host(0), ECHO);
        let server = lab.server().sock(ECHO);
        let other = lab.public_host(0).sock(ECHO);
        let probe = |site: usize, port: u16| {
            lab.client(site, 0)
                .run_tool(
                    &Probe::new(port, &[server, other])
                        .tries(5, Duration::from_millis(100))
                        .tool(),
                    STEP,
                )
                .expect("probe")
        };

        let fault = lab.block_all_of_site(0).expect("outage");
        let out = probe(0, 0);
        assert!(out.no_reply(server), "server cut off: {}", out.stdout);
        assert!(out.no_reply(other), "everyone cut off: {}", out.stdout);
        let out = probe(1, 0);
        assert!(
            out.reflexive(server).is_some(),
            "the other site is not cut off"
        );
        lab.remove_fault(fault).expect("lift the outage");

        for site in [0, 1] {
            let port = 40_100 + site as u16;
            let before = probe(site, port)
                .reflexive(server)
                .expect("server answered");
            assert_eq!(before.port(), port, "MASQUERADE keeps a free port");
            lab.site(site)
                .change_udp_mapping((45_000, 45_099))
                .expect("change the mapping");
            let out = probe(site, port);
            let after = out
                .reflexive(server)
                .expect("server answered after the change");
            assert_eq!(after.ip(), before.ip());
            assert!(
                (45_000..=45_099).contains(&after.port()),
                "a port from the new range: {after}"
            );
            assert_eq!(out.reflexive(other), Some(after), "still one mapping (EIM)");
        }
    });
}

/// 4. Cleanup: a dropped lab leaves none of its namespaces, also when a test panics.
#[test]
fn namespaces_are_removed_on_drop_and_on_panic() {
    if natlab::should_skip("namespaces_are_removed_on_drop_and_on_panic") {
        return;
    }
    natlab::bounded(LIMIT, || {
        let lab = Lab::builder()
            .public_hosts(1)
            .site_with_clients(Nat::PortRestricted, 2)
            .site(Nat::Open)
            .build()
            .expect("build lab");
        let names = lab.namespaces();
        assert_eq!(names.len(), 1 + 1 + 1 + (1 + 2) + 1, "{names:?}");
        assert!(names.iter().all(|n| n.starts_with(lab.prefix())));
        let before = namespaces_now();
        assert!(names.iter().all(|n| before.contains(n)));
        // A process left running inside does not keep the namespace listed.
        // Its guard is leaked here, so only the lab's cleanup can end it.
        let mut leftover =
            std::mem::ManuallyDrop::new(lab.server().spawn_tool(&Tool::echo(ECHO)).expect("echo"));
        leftover
            .wait_for_line("NATLAB READY", STEP)
            .expect("echo ready");
        drop(lab);
        let ended = leftover.wait_timeout(STEP).expect("wait for the leftover");
        assert!(ended.is_some(), "the lab killed the process left inside");
        let after = namespaces_now();
        let left: Vec<_> = names.iter().filter(|n| after.contains(*n)).collect();
        assert!(left.is_empty(), "left behind: {left:?}");

        let seen = Arc::new(Mutex::new(Vec::new()));
        let inner = Arc::clone(&seen);
        let result = std::panic::catch_unwind(move || {
            let lab = Lab::builder()
                .site(Nat::Symmetric)
                .build()
                .expect("build lab");
            *inner.lock().unwrap() = lab.namespaces();
            panic!("deliberate panic with a live lab");
        });
        assert!(result.is_err());
        let names = seen.lock().unwrap().clone();
        assert_eq!(names.len(), 4, "{names:?}");
        let after = namespaces_now();
        let left: Vec<_> = names.iter().filter(|n| after.contains(*n)).collect();
        assert!(left.is_empty(), "left behind after panic: {left:?}");
    });
}

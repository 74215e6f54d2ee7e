//! A real-NAT lab for integration tests: Linux network namespaces joined by veth pairs, with
//! iptables NAT routers between private LANs and a small private "internet".
//!
//! Include it from a test file with `mod natlab;`. Everything the lab creates lives in
//! namespaces the test made, and all of it is removed when the [`Lab`] is dropped (also when
//! the test panics). Nothing is created in the host's own network namespace: every veth pair
//! is made directly inside the lab's namespaces (`ip -n NS link add ... netns PEER`).
//!
//! # Topology
//!
//! ```text
//!             <prefix>-inet: the "internet", a router (ip_forward=1); faults and loss
//!             are iptables rules in its FORWARD chain. Link k is 198.18.k.0/24.
//!     .0.1 |                .k.1 |                      .m.1 |                 .n.1 |
//!   server host       public host i          site s router (NAT)       "Open" site client
//!   198.18.0.2        198.18.k.2             WAN 198.18.m.2             198.18.n.2
//!                                            LAN bridge 10.(s+1).0.1/24
//!                                              |                |
//!                                          client 0         client 1 ...
//!                                          10.(s+1).0.2     10.(s+1).0.3
//! ```
//!
//! Every node on the internet side has its own /24 link to the internet router, numbered in
//! build order (server 0, then the public hosts, then the sites' routers or open clients);
//! `198.18.0.0/15` is the benchmark range (RFC 2544), here private to the lab. Each site
//! is a NAT router namespace with a WAN veth and a LAN bridge, and one or more client host
//! namespaces on that bridge with a default route via the router. The NAT behaviour is set
//! by iptables rules in the router namespace; see [`Nat`].
//!
//! # Names
//!
//! Namespaces are `<prefix>-inet`, `<prefix>-srv`, `<prefix>-pub<i>`, `<prefix>-s<s>r`
//! (site router) and `<prefix>-s<s>c<c>` (site client); interfaces are `<prefix>` plus a
//! short suffix (at most 14 characters). The prefix is `pg<pid % 10000><counter>`, unique per
//! lab within this process and checked against the namespaces that already exist.
//!
//! # Running things inside
//!
//! [`Host::spawn`] runs a [`Command`] in the host's namespace through `ip netns exec` and
//! returns an [`NsChild`] guard that captures its output and kills it when dropped;
//! [`Host::run`] runs one to completion with a timeout. For UDP work without extra packages,
//! the lab re-executes the current test binary inside a namespace (see [`Tool`]): a test
//! file that uses tools must contain
//!
//! ```ignore
//! #[test]
//! fn natlab_tool() {
//!     natlab::tool_entry();
//! }
//! ```
//!
//! # Time bounds
//!
//! Every wait in the lab has a timeout, and tools end by themselves. Wrap a test body in
//! [`bounded`] for a hard limit: on overrun it tears down the body's labs and fails.
//!
//! # Kernel state
//!
//! Only per-namespace state is changed: `net.ipv4.ip_forward=1` in the internet and router
//! namespaces. Conntrack settings are per namespace and left at their defaults (an
//! unreplied UDP entry lives 30 s, a replied one 120 s), so a mapping or an opened filter
//! lasts that long after the last packet.
//!
//! # Capability policy
//!
//! The lab needs root, `ip` (iproute2) and `iptables`. Start every test with
//! `if natlab::should_skip("test name") { return; }`: on a machine without the capability
//! it prints a loud `SKIPPED` line, except under `CI=true`, where it panics.
#![allow(dead_code)]

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::unix::process::CommandExt;
use std::panic::{self, AssertUnwindSafe};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, OnceLock};
use std::thread::{self, ThreadId};
use std::time::{Duration, Instant};

/// How long any one set-up command (`ip`, `iptables`) may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(20);

/// Most sites a lab may have (site numbers appear in interface names and LAN prefixes).
pub const MAX_SITES: usize = 99;
/// Most clients one site may have.
pub const MAX_CLIENTS: usize = 99;
/// Most internet-side links (server, public hosts, site routers, open clients).
pub const MAX_LINKS: usize = 250;

// ---------------------------------------------------------------------------------------
// Capability check and skip policy
// ---------------------------------------------------------------------------------------

static CAPABILITY: OnceLock<Result<&'static str, String>> = OnceLock::new();

/// Whether the lab can run here: Linux, root, `ip` and a working `iptables` (tried in a
/// freshly created namespace with every rule kind the lab uses). The result is computed once
/// per process.
pub fn available() -> Result<(), String> {
    capability().map(|_| ())
}

/// The iptables command chosen by [`available`] (`iptables`, `iptables-nft` or
/// `iptables-legacy`, the first that works in a new namespace; the environment variable
/// `NATLAB_IPTABLES` may name the one to use).
pub fn iptables_command() -> Result<&'static str, String> {
    capability()
}

fn capability() -> Result<&'static str, String> {
    CAPABILITY.get_or_init(probe_capability).clone()
}

/// The skip policy. Returns `false` when the lab is available. Otherwise, with `CI=true` in
/// the environment it panics (a missing capability is a CI failure); elsewhere it prints a
/// loud `SKIPPED` message to stderr and returns `true`, and the test should return early.
pub fn should_skip(test: &str) -> bool {
    match available() {
        Ok(()) => false,
        Err(why) => {
            let ci = std::env::var("CI").map(|v| v == "true").unwrap_or(false);
            if ci {
                panic!("NAT lab unavailable in CI (CI=true), test {test} cannot run: {why}");
            }
            // Straight to fd 2: libtest captures `eprintln!`, and this must be seen.
            let _ = writeln!(
                io::stderr(),
                "\n==========\nSKIPPED: {test}: NAT lab needs root, iproute2 (`ip`) and \
                 iptables with network namespaces: {why}\n==========\n"
            );
            true
        }
    }
}

fn probe_capability() -> Result<&'static str, String> {
    if !cfg!(target_os = "linux") {
        return Err("network namespaces need Linux".into());
    }
    let euid = effective_uid().map_err(|e| format!("cannot read the effective uid: {e}"))?;
    if euid != 0 {
        return Err(format!("not running as root (effective uid {euid})"));
    }
    run_checked("ip", &["-V"]).map_err(|e| format!("`ip` (iproute2) is missing: {e}"))?;
    let candidates = ["iptables", "iptables-nft", "iptables-legacy"];
    // NATLAB_IPTABLES=iptables-legacy (say) restricts the choice to one of them.
    let forced = std::env::var("NATLAB_IPTABLES").ok();
    let present: Vec<&'static str> = candidates
        .into_iter()
        .filter(|c| forced.as_deref().is_none_or(|f| f == *c))
        .filter(|c| run_checked(c, &["-V"]).is_ok())
        .collect();
    if present.is_empty() {
        return Err("no iptables command found (install the `iptables` package)".into());
    }
    let set = NsSet::new().map_err(|e| format!("cannot name a namespace: {e}"))?;
    let ns = format!("{}-cap", set.prefix);
    set.add(&ns)
        .map_err(|e| format!("cannot create a network namespace: {e}"))?;
    let mut errors = Vec::new();
    for cmd in present {
        match iptables_works(&ns, cmd) {
            Ok(()) => return Ok(cmd),
            Err(e) => errors.push(format!("{cmd}: {e}")),
        }
    }
    Err(format!(
        "no iptables works inside a network namespace: {}",
        errors.join("; ")
    ))
}

/// Tries every rule kind the lab uses, in a scratch namespace, then flushes them.
fn iptables_works(ns: &str, cmd: &str) -> io::Result<()> {
    let rules: [&[&str]; 5] = [
        &[
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-o",
            "lo",
            "-j",
            "MASQUERADE",
        ],
        &[
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-o",
            "lo",
            "-j",
            "MASQUERADE",
            "--random-fully",
        ],
        &[
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-i",
            "lo",
            "-p",
            "udp",
            "--dport",
            "9",
            "-j",
            "DNAT",
            "--to-destination",
            "10.0.0.1:9",
        ],
        &[
            "-A",
            "FORWARD",
            "-i",
            "lo",
            "-m",
            "conntrack",
            "--ctstate",
            "NEW",
            "-j",
            "DROP",
        ],
        &[
            "-A",
            "FORWARD",
            "-p",
            "udp",
            "-m",
            "statistic",
            "--mode",
            "random",
            "--probability",
            "0.5",
            "-j",
            "DROP",
        ],
    ];
    for rule in rules {
        ns_iptables(ns, cmd, rule)?;
    }
    ns_iptables(ns, cmd, &["-t", "nat", "-F"])?;
    ns_iptables(ns, cmd, &["-F"])?;
    Ok(())
}

fn effective_uid() -> io::Result<u32> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|euid| euid.parse().ok())
        .ok_or_else(|| io::Error::other("no Uid line in /proc/self/status"))
}

// ---------------------------------------------------------------------------------------
// Time bound for a whole test
// ---------------------------------------------------------------------------------------

/// Labs alive in this process: (prefix, thread that made it). Used by [`bounded`] to
/// remove the namespaces of a test body that overran.
static LIVE: Mutex<Vec<(String, ThreadId)>> = Mutex::new(Vec::new());

/// Runs `body` on its own thread and fails the test if it takes longer than `limit`. On
/// overrun, every lab the body made is torn down at once (its processes killed, its
/// namespaces deleted) and this function panics. A panic in `body` is passed on unchanged.
pub fn bounded<F>(limit: Duration, body: F)
where
    F: FnOnce() + Send + 'static,
{
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let worker = thread::Builder::new()
        .name("natlab-bounded".into())
        .spawn(move || {
            let result = panic::catch_unwind(AssertUnwindSafe(body));
            let _ = done_tx.send(());
            result
        })
        .expect("spawn the bounded test thread");
    let worker_id = worker.thread().id();
    match done_rx.recv_timeout(limit) {
        Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => match worker.join() {
            Ok(Ok(())) => {}
            Ok(Err(payload)) | Err(payload) => panic::resume_unwind(payload),
        },
        Err(mpsc::RecvTimeoutError::Timeout) => {
            let prefixes: Vec<String> = lock(&LIVE)
                .iter()
                .filter(|(_, t)| *t == worker_id)
                .map(|(p, _)| p.clone())
                .collect();
            for prefix in &prefixes {
                cleanup_prefix(prefix, &[]);
            }
            panic!("test exceeded its time limit of {limit:?}; removed labs {prefixes:?}");
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---------------------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------------------

/// Runs `cmd` to completion with captured output, killing it after `timeout` (then the
/// error has kind `TimedOut` and carries the output so far). Stdin is null.
pub fn run_with_timeout(cmd: Command, timeout: Duration) -> io::Result<Output> {
    let label = describe(&cmd);
    NsChild::spawn(cmd, label)?.wait_output(timeout)
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs a program, failing on a non-zero exit with its stderr in the error.
fn run_checked(program: &str, args: &[&str]) -> io::Result<String> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    let label = describe(&cmd);
    let out = run_with_timeout(cmd, SETUP_TIMEOUT)?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "`{label}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ns_exec(ns: &str, program: &str, args: &[&str]) -> io::Result<String> {
    let mut all = vec!["netns", "exec", ns, program];
    all.extend_from_slice(args);
    run_checked("ip", &all)
}

fn ns_ip(ns: &str, args: &[&str]) -> io::Result<String> {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    run_checked("ip", &all)
}

fn ns_iptables(ns: &str, iptables: &str, args: &[&str]) -> io::Result<String> {
    // `-w`: iptables-legacy takes a lock file shared by all namespaces; wait for it.
    let mut all = vec!["-w", "10"];
    all.extend_from_slice(args);
    ns_exec(ns, iptables, &all)
}

fn ns_sysctl(ns: &str, key_path: &str, value: &str) -> io::Result<()> {
    // A shell redirect instead of `sysctl`, which a minimal image may lack. /proc/sys/net is
    // per network namespace, so this changes only `ns`.
    let script = format!("echo {value} > /proc/sys/{key_path}");
    ns_exec(ns, "sh", &["-c", &script]).map(|_| ())
}

fn list_namespaces() -> io::Result<Vec<String>> {
    Ok(run_checked("ip", &["netns", "list"])?
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

/// Kills every process whose network namespace is `ns` (only processes the lab started
/// can be there).
fn kill_ns_processes(ns: &str) {
    let Ok(out) = run_checked("ip", &["netns", "pids", ns]) else {
        return;
    };
    let me = std::process::id().to_string();
    let pids: Vec<&str> = out.split_whitespace().filter(|p| *p != me).collect();
    if pids.is_empty() {
        return;
    }
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "kill -KILL \"$@\" 2>/dev/null; true", "sh"])
        .args(&pids);
    let _ = run_with_timeout(cmd, Duration::from_secs(5));
}

/// Deletes the namespaces in `known` and any other whose name starts with `prefix-`,
/// after killing the processes inside them. Deleting a namespace deletes its veth ends, and
/// with them their peers.
fn cleanup_prefix(prefix: &str, known: &[String]) {
    let mut names: BTreeSet<String> = known.iter().cloned().collect();
    let tag = format!("{prefix}-");
    if let Ok(all) = list_namespaces() {
        names.extend(all.into_iter().filter(|n| n.starts_with(&tag)));
    }
    for ns in &names {
        kill_ns_processes(ns);
    }
    for ns in &names {
        if let Err(e) = run_checked("ip", &["netns", "del", ns]) {
            // Already gone (e.g. removed by `bounded` on overrun) is fine.
            if list_namespaces().map(|l| l.contains(ns)).unwrap_or(true) {
                eprintln!("natlab: could not delete namespace {ns}: {e}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Namespace set: the cleanup guard
// ---------------------------------------------------------------------------------------

static PREFIX_COUNTER: AtomicUsize = AtomicUsize::new(0);
/// Serializes `ip netns add` within this process (iproute2 sets up /run/netns on first use).
static NETNS_ADD: Mutex<()> = Mutex::new(());

/// Owns a prefix and the namespaces made under it; deletes them all on drop.
struct NsSet {
    prefix: String,
    names: Mutex<Vec<String>>,
}

impl NsSet {
    fn new() -> io::Result<NsSet> {
        let existing = list_namespaces()?;
        let pid = std::process::id() % 10_000;
        for _ in 0..100 {
            let n = PREFIX_COUNTER.fetch_add(1, Ordering::SeqCst) % 100;
            let prefix = format!("pg{pid:04}{n:02}");
            let tag = format!("{prefix}-");
            if !existing.iter().any(|e| e.starts_with(&tag)) {
                lock(&LIVE).push((prefix.clone(), thread::current().id()));
                return Ok(NsSet {
                    prefix,
                    names: Mutex::new(Vec::new()),
                });
            }
        }
        Err(io::Error::other("no free namespace prefix"))
    }

    /// Creates a namespace with its loopback up.
    fn add(&self, name: &str) -> io::Result<()> {
        {
            let _serial = lock(&NETNS_ADD);
            run_checked("ip", &["netns", "add", name])?;
        }
        lock(&self.names).push(name.to_owned());
        ns_ip(name, &["link", "set", "lo", "up"])?;
        Ok(())
    }

    fn names(&self) -> Vec<String> {
        lock(&self.names).clone()
    }
}

impl Drop for NsSet {
    fn drop(&mut self) {
        let names = self.names();
        cleanup_prefix(&self.prefix, &names);
        lock(&LIVE).retain(|(p, _)| *p != self.prefix);
    }
}

// ---------------------------------------------------------------------------------------
// Topology description
// ---------------------------------------------------------------------------------------

/// The NAT behaviour of a site's router (RFC 4787 terms).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Nat {
    /// No NAT: the site's clients sit directly on the internet, each with its own public
    /// address (no router namespace).
    Open,
    /// Endpoint-independent mapping and endpoint-independent filtering: `MASQUERADE` (which
    /// keeps the source port when it is free) and no firewall. Inbound UDP to the WAN address
    /// is DNATed, port unchanged, to the site's client 0 (a "DMZ host"), so any mapping of
    /// client 0 is reachable from anyone. For other clients add port forwards with
    /// [`Site::forward_udp_port`] (they take precedence over the DMZ rule).
    FullCone,
    /// Endpoint-independent mapping, address-and-port-dependent filtering: `MASQUERADE` plus a
    /// firewall (`-A INPUT/FORWARD -i WAN -m conntrack --ctstate NEW -j DROP`). The firewall
    /// drops unsolicited packets before conntrack confirms an entry for them.
    PortRestricted,
    /// Endpoint-dependent mapping: `MASQUERADE --random-fully` (a random port per
    /// destination) plus the same firewall as [`Nat::PortRestricted`].
    Symmetric,
    /// Like [`Nat::PortRestricted`], and all UDP to or from any address but the lab's server
    /// host is dropped: only the server is reachable over UDP.
    UdpBlocked,
    /// No UDP at all (a network that allows only TCP): [`Nat::PortRestricted`] for TCP,
    /// and every UDP packet through the router dropped, to and from the server too.
    NoUdp,
}

impl fmt::Display for Nat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// How to build one site.
#[derive(Clone, Debug)]
pub struct SiteSpec {
    /// The NAT kind.
    pub nat: Nat,
    /// How many client hosts (at least 1).
    pub clients: usize,
    /// The LAN's /24 network (NAT sites only); default `10.<site+1>.0.0`. Two sites may use
    /// the same LAN prefix (as two homes behind `192.168.1.0/24` do).
    pub lan: Option<Ipv4Addr>,
}

impl SiteSpec {
    /// A site with one client.
    pub fn new(nat: Nat) -> SiteSpec {
        SiteSpec {
            nat,
            clients: 1,
            lan: None,
        }
    }

    /// Sets the number of clients.
    pub fn clients(mut self, n: usize) -> SiteSpec {
        self.clients = n;
        self
    }

    /// Sets the LAN /24 network address (e.g. `192.168.1.0`).
    pub fn lan(mut self, network: Ipv4Addr) -> SiteSpec {
        self.lan = Some(network);
        self
    }
}

/// Builds a [`Lab`]: the internet router, the server host, `public_hosts` more hosts on the
/// internet, and the sites in the order they were added (site numbers start at 0).
#[derive(Clone, Debug, Default)]
pub struct LabBuilder {
    public_hosts: usize,
    sites: Vec<SiteSpec>,
}

impl LabBuilder {
    /// Adds `n` plain hosts on the internet besides the server (public addresses, no NAT).
    pub fn public_hosts(mut self, n: usize) -> LabBuilder {
        self.public_hosts = n;
        self
    }

    /// Adds a site with one client.
    pub fn site(self, nat: Nat) -> LabBuilder {
        self.site_spec(SiteSpec::new(nat))
    }

    /// Adds a site with `clients` clients on one LAN behind one router.
    pub fn site_with_clients(self, nat: Nat, clients: usize) -> LabBuilder {
        self.site_spec(SiteSpec::new(nat).clients(clients))
    }

    /// Adds a site described in full.
    pub fn site_spec(mut self, spec: SiteSpec) -> LabBuilder {
        self.sites.push(spec);
        self
    }

    /// Creates everything. On error, whatever was created is removed again.
    pub fn build(self) -> io::Result<Lab> {
        let iptables = capability().map_err(io::Error::other)?;
        if self.sites.len() > MAX_SITES {
            return Err(io::Error::other(format!("at most {MAX_SITES} sites")));
        }
        let links = 1
            + self.public_hosts
            + self
                .sites
                .iter()
                .map(|s| if s.nat == Nat::Open { s.clients } else { 1 })
                .sum::<usize>();
        if links > MAX_LINKS {
            return Err(io::Error::other(format!(
                "at most {MAX_LINKS} public links"
            )));
        }
        if let Some(bad) = self
            .sites
            .iter()
            .find(|s| s.clients == 0 || s.clients > MAX_CLIENTS)
        {
            return Err(io::Error::other(format!(
                "a site needs 1..={MAX_CLIENTS} clients, not {}",
                bad.clients
            )));
        }

        let set = NsSet::new()?;
        let p = set.prefix.clone();
        let inet = format!("{p}-inet");
        set.add(&inet)?;
        ns_sysctl(&inet, "net/ipv4/ip_forward", "1")?;
        let mut next_link = 0usize;
        let mut link = |node_ns: &str| -> io::Result<(Ipv4Addr, String)> {
            let k = next_link;
            next_link += 1;
            connect_public(&p, &inet, node_ns, k)
        };

        let server_ns = format!("{p}-srv");
        set.add(&server_ns)?;
        let (server_addr, _) = link(&server_ns)?;
        let server = Host::new(server_ns, server_addr);

        let mut public_hosts = Vec::new();
        for i in 0..self.public_hosts {
            let ns = format!("{p}-pub{i}");
            set.add(&ns)?;
            let (addr, _) = link(&ns)?;
            public_hosts.push(Host::new(ns, addr));
        }

        let mut sites = Vec::new();
        for (s, spec) in self.sites.iter().enumerate() {
            if spec.nat == Nat::Open {
                let mut clients = Vec::new();
                for c in 0..spec.clients {
                    let ns = format!("{p}-s{s}c{c}");
                    set.add(&ns)?;
                    let (addr, _) = link(&ns)?;
                    clients.push(Host::new(ns, addr));
                }
                sites.push(Site {
                    index: s,
                    nat: Nat::Open,
                    router: None,
                    wan_if: String::new(),
                    lan_if: String::new(),
                    clients,
                    iptables,
                });
                continue;
            }

            let router_ns = format!("{p}-s{s}r");
            set.add(&router_ns)?;
            ns_sysctl(&router_ns, "net/ipv4/ip_forward", "1")?;
            let (wan_addr, wan_if) = link(&router_ns)?;
            let lan_net = spec.lan.unwrap_or(Ipv4Addr::new(10, s as u8 + 1, 0, 0));
            let [a, b, c3, _] = lan_net.octets();
            let lan_if = format!("{p}b{s}");
            ns_ip(&router_ns, &["link", "add", &lan_if, "type", "bridge"])?;
            let gw = Ipv4Addr::new(a, b, c3, 1);
            ns_ip(
                &router_ns,
                &["addr", "add", &format!("{gw}/24"), "dev", &lan_if],
            )?;
            ns_ip(&router_ns, &["link", "set", &lan_if, "up"])?;

            let mut clients = Vec::new();
            for c in 0..spec.clients {
                let ns = format!("{p}-s{s}c{c}");
                set.add(&ns)?;
                let router_end = format!("{p}l{s}c{c}");
                let client_end = format!("{p}h{s}c{c}");
                ns_ip(
                    &router_ns,
                    &[
                        "link",
                        "add",
                        &router_end,
                        "type",
                        "veth",
                        "peer",
                        "name",
                        &client_end,
                        "netns",
                        &ns,
                    ],
                )?;
                ns_ip(&router_ns, &["link", "set", &router_end, "master", &lan_if])?;
                ns_ip(&router_ns, &["link", "set", &router_end, "up"])?;
                let addr = Ipv4Addr::new(a, b, c3, c as u8 + 2);
                ns_ip(
                    &ns,
                    &["addr", "add", &format!("{addr}/24"), "dev", &client_end],
                )?;
                ns_ip(&ns, &["link", "set", &client_end, "up"])?;
                ns_ip(&ns, &["route", "add", "default", "via", &gw.to_string()])?;
                clients.push(Host::new(ns, addr));
            }

            let site = Site {
                index: s,
                nat: spec.nat,
                router: Some(Host::new(router_ns, wan_addr)),
                wan_if,
                lan_if,
                clients,
                iptables,
            };
            site.install_nat(server.addr)?;
            sites.push(site);
        }

        Ok(Lab {
            set,
            inet,
            iptables,
            server,
            public_hosts,
            sites,
        })
    }
}

/// Makes internet link `k`: a veth pair between the internet router and `node_ns`, with
/// `198.18.k.1/24` on the router side and `198.18.k.2/24` (the node's public address, and
/// its default gateway `.1`) on the node side. Returns the node's address and interface.
fn connect_public(p: &str, inet: &str, node_ns: &str, k: usize) -> io::Result<(Ipv4Addr, String)> {
    let inet_end = format!("{p}i{k}");
    let node_end = format!("{p}e{k}");
    ns_ip(
        inet,
        &[
            "link", "add", &inet_end, "type", "veth", "peer", "name", &node_end, "netns", node_ns,
        ],
    )?;
    let gw = Ipv4Addr::new(198, 18, k as u8, 1);
    let addr = Ipv4Addr::new(198, 18, k as u8, 2);
    ns_ip(
        inet,
        &["addr", "add", &format!("{gw}/24"), "dev", &inet_end],
    )?;
    ns_ip(inet, &["link", "set", &inet_end, "up"])?;
    ns_ip(
        node_ns,
        &["addr", "add", &format!("{addr}/24"), "dev", &node_end],
    )?;
    ns_ip(node_ns, &["link", "set", &node_end, "up"])?;
    ns_ip(
        node_ns,
        &["route", "add", "default", "via", &gw.to_string()],
    )?;
    Ok((addr, node_end))
}

// ---------------------------------------------------------------------------------------
// Lab, hosts, sites
// ---------------------------------------------------------------------------------------

/// A built lab. Dropping it kills every process left in its namespaces and deletes the
/// namespaces (and with them every veth), also while unwinding from a panic.
pub struct Lab {
    // Declared first so it is dropped first; nothing else holds resources.
    set: NsSet,
    inet: String,
    iptables: &'static str,
    server: Host,
    public_hosts: Vec<Host>,
    sites: Vec<Site>,
}

impl fmt::Debug for Lab {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lab")
            .field("prefix", &self.set.prefix)
            .field("server", &self.server)
            .field("public_hosts", &self.public_hosts)
            .field("sites", &self.sites)
            .finish()
    }
}

impl Lab {
    /// Starts describing a lab.
    pub fn builder() -> LabBuilder {
        LabBuilder::default()
    }

    /// The unique prefix of every namespace and interface name in this lab.
    pub fn prefix(&self) -> &str {
        &self.set.prefix
    }

    /// The names of all namespaces this lab created.
    pub fn namespaces(&self) -> Vec<String> {
        self.set.names()
    }

    /// The internet router's namespace (where faults are injected).
    pub fn internet_ns(&self) -> &str {
        &self.inet
    }

    /// The server host (public address `198.18.0.2`).
    pub fn server(&self) -> &Host {
        &self.server
    }

    /// Public host `i` (no NAT, its own public address).
    pub fn public_host(&self, i: usize) -> &Host {
        &self.public_hosts[i]
    }

    /// All public hosts.
    pub fn public_hosts(&self) -> &[Host] {
        &self.public_hosts
    }

    /// Site `i`.
    pub fn site(&self, i: usize) -> &Site {
        &self.sites[i]
    }

    /// All sites.
    pub fn sites(&self) -> &[Site] {
        &self.sites
    }

    /// Client `c` of site `s`.
    pub fn client(&self, s: usize, c: usize) -> &Host {
        self.sites[s].client(c)
    }

    /// Runs `cmd` inside `host`'s namespace; see [`Host::spawn`].
    pub fn spawn(&self, host: &Host, cmd: Command) -> io::Result<NsChild> {
        host.spawn(cmd)
    }

    /// Runs `cmd` inside `host`'s namespace to completion; see [`Host::run`].
    pub fn run(&self, host: &Host, cmd: Command, timeout: Duration) -> io::Result<Output> {
        host.run(cmd, timeout)
    }

    /// Runs the lab's iptables command with `args` in namespace `ns` (an escape hatch for
    /// rules the lab has no method for). Returns its stdout.
    pub fn iptables(&self, ns: &str, args: &[&str]) -> io::Result<String> {
        ns_iptables(ns, self.iptables, args)
    }

    /// Drops all UDP between two public addresses, both ways, on the internet. Traffic of
    /// either with anyone else (the server, say) is untouched.
    pub fn block_udp_between(&self, a: Ipv4Addr, b: Ipv4Addr) -> io::Result<Fault> {
        let (a, b) = (a.to_string(), b.to_string());
        self.add_fault(vec![
            strings(&["-s", &a, "-d", &b, "-p", "udp", "-j", "DROP"]),
            strings(&["-s", &b, "-d", &a, "-p", "udp", "-j", "DROP"]),
        ])
    }

    /// Drops all UDP between the public addresses of sites `a` and `b` (a path-kill), both
    /// ways; both keep reaching the server.
    pub fn block_udp_between_sites(&self, a: usize, b: usize) -> io::Result<Fault> {
        let mut rules = Vec::new();
        for x in self.sites[a].public_addrs() {
            for y in self.sites[b].public_addrs() {
                let (x, y) = (x.to_string(), y.to_string());
                rules.push(strings(&["-s", &x, "-d", &y, "-p", "udp", "-j", "DROP"]));
                rules.push(strings(&["-s", &y, "-d", &x, "-p", "udp", "-j", "DROP"]));
            }
        }
        self.add_fault(rules)
    }

    /// Drops every packet (UDP, TCP, anything) from or to the public addresses of site
    /// `s`, on the internet: the site is cut off from everyone, the server included, as
    /// when its uplink fails.
    pub fn block_all_of_site(&self, s: usize) -> io::Result<Fault> {
        let mut rules = Vec::new();
        for x in self.sites[s].public_addrs() {
            let x = x.to_string();
            rules.push(strings(&["-s", &x, "-j", "DROP"]));
            rules.push(strings(&["-d", &x, "-j", "DROP"]));
        }
        self.add_fault(rules)
    }

    /// Drops each UDP packet from or to public address `a` (only those exchanged with `b`, if
    /// given) with probability `probability`, independently, in both directions
    /// (`-m statistic --mode random`). The kernel here has no netem, so this is the loss model.
    pub fn add_udp_loss(
        &self,
        a: Ipv4Addr,
        b: Option<Ipv4Addr>,
        probability: f64,
    ) -> io::Result<Fault> {
        if !(0.0..=1.0).contains(&probability) {
            return Err(io::Error::other(format!(
                "loss probability {probability} is not in 0..=1"
            )));
        }
        let prob = format!("{probability:.6}");
        let a = a.to_string();
        let b = b.map(|b| b.to_string());
        let mut rules = Vec::new();
        for src_is_a in [true, false] {
            let mut r = Vec::new();
            let (mine, theirs) = if src_is_a { ("-s", "-d") } else { ("-d", "-s") };
            r.extend(strings(&[mine, &a]));
            if let Some(b) = &b {
                r.extend(strings(&[theirs, b]));
            }
            r.extend(strings(&[
                "-p",
                "udp",
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                &prob,
                "-j",
                "DROP",
            ]));
            rules.push(r);
        }
        self.add_fault(rules)
    }

    /// Removes a fault added by one of the `block_*`/`add_*` methods.
    pub fn remove_fault(&self, fault: Fault) -> io::Result<()> {
        let mut first_err = None;
        for rule in &fault.rules {
            if let Err(e) = self.inet_rule("-D", rule) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn add_fault(&self, rules: Vec<Vec<String>>) -> io::Result<Fault> {
        for (i, rule) in rules.iter().enumerate() {
            if let Err(e) = self.inet_rule("-A", rule) {
                for done in &rules[..i] {
                    let _ = self.inet_rule("-D", done);
                }
                return Err(e);
            }
        }
        Ok(Fault { rules })
    }

    fn inet_rule(&self, op: &str, rule: &[String]) -> io::Result<()> {
        let mut args = vec![op, "FORWARD"];
        args.extend(rule.iter().map(String::as_str));
        ns_iptables(&self.inet, self.iptables, &args).map(|_| ())
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

/// A fault injected on the internet (iptables rules in the internet namespace's FORWARD
/// chain). Remove it with [`Lab::remove_fault`]; dropping it leaves the rules in place
/// (until the lab is dropped).
#[derive(Debug)]
#[must_use = "keep the fault to remove it with Lab::remove_fault"]
pub struct Fault {
    rules: Vec<Vec<String>>,
}

/// One host: a network namespace with one address. Cheap to clone; it holds only names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    ns: String,
    addr: Ipv4Addr,
}

impl Host {
    fn new(ns: String, addr: Ipv4Addr) -> Host {
        Host { ns, addr }
    }

    /// The namespace name (for `ip netns exec`).
    pub fn ns(&self) -> &str {
        &self.ns
    }

    /// The host's own address: public for the server, public hosts, routers (their WAN
    /// address) and open-site clients; the LAN address for clients behind a NAT.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// `addr():port`.
    pub fn sock(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.addr, port))
    }

    /// Starts `cmd` inside this namespace as `ip netns exec NS <program> <args>` (`ip` execs
    /// the program, so the child's pid is the program's). The program, arguments, environment
    /// changes and working directory are taken from `cmd` (an `env_clear` is not visible and
    /// is lost); stdin is null and stdout/stderr are captured by the returned guard, which
    /// kills the process (group) when dropped.
    pub fn spawn(&self, cmd: Command) -> io::Result<NsChild> {
        let mut wrapped = Command::new("ip");
        wrapped
            .args(["netns", "exec", &self.ns])
            .arg(cmd.get_program())
            .args(cmd.get_args());
        for (key, value) in cmd.get_envs() {
            match value {
                Some(v) => wrapped.env(key, v),
                None => wrapped.env_remove(key),
            };
        }
        if let Some(dir) = cmd.get_current_dir() {
            wrapped.current_dir(dir);
        }
        let label = format!("[{}] {}", self.ns, describe(&cmd));
        NsChild::spawn(wrapped, label)
    }

    /// Runs `cmd` inside this namespace to completion, killing it after `timeout` (an error
    /// of kind `TimedOut`). A non-zero exit is not an error here; check `status`.
    pub fn run(&self, cmd: Command, timeout: Duration) -> io::Result<Output> {
        self.spawn(cmd)?.wait_output(timeout)
    }

    /// Runs `program args...` inside this namespace, failing on a non-zero exit; returns
    /// stdout.
    pub fn run_checked(&self, program: &str, args: &[&str]) -> io::Result<String> {
        ns_exec(&self.ns, program, args)
    }

    /// Starts a [`Tool`] in this namespace (the current test binary re-executed; see
    /// [`tool_entry`]).
    pub fn spawn_tool(&self, tool: &Tool) -> io::Result<NsChild> {
        let mut cmd = self_command(TOOL_TEST)?;
        cmd.env(TOOL_ENV, tool.encode());
        self.spawn(cmd)
    }

    /// Runs a [`Tool`] to completion (failing on a non-zero exit or after `timeout`).
    pub fn run_tool(&self, tool: &Tool, timeout: Duration) -> io::Result<ToolOutput> {
        self.spawn_tool(tool)?.wait_tool(timeout)
    }
}

/// A command that re-executes the current test binary running only the test `test_name`
/// (`--exact --nocapture --test-threads=1`). Pass it to [`Host::spawn`] with an environment
/// variable telling that test what to do.
pub fn self_command(test_name: &str) -> io::Result<Command> {
    // `/proc/self/exe` would name `ip` once `ip netns exec` runs it, so resolve it here.
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.args([test_name, "--exact", "--nocapture", "--test-threads=1"]);
    Ok(cmd)
}

/// One site: a NAT router with clients on its LAN, or (for [`Nat::Open`]) clients directly
/// on the internet.
#[derive(Clone, Debug)]
pub struct Site {
    index: usize,
    nat: Nat,
    router: Option<Host>,
    wan_if: String,
    lan_if: String,
    clients: Vec<Host>,
    iptables: &'static str,
}

impl Site {
    /// The site's number in the lab.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The NAT kind.
    pub fn nat(&self) -> Nat {
        self.nat
    }

    /// The router (its [`Host::addr`] is the WAN address); `None` for an open site.
    pub fn router(&self) -> Option<&Host> {
        self.router.as_ref()
    }

    /// The router's WAN interface name (empty for an open site).
    pub fn wan_if(&self) -> &str {
        &self.wan_if
    }

    /// The router's LAN bridge name (empty for an open site).
    pub fn lan_if(&self) -> &str {
        &self.lan_if
    }

    /// The address the internet sees: the router's WAN address, or for an open site its
    /// first client's address.
    pub fn public_addr(&self) -> Ipv4Addr {
        match &self.router {
            Some(r) => r.addr,
            None => self.clients[0].addr,
        }
    }

    /// Every public address of the site (one for a NAT site; one per client if open).
    pub fn public_addrs(&self) -> Vec<Ipv4Addr> {
        match &self.router {
            Some(r) => vec![r.addr],
            None => self.clients.iter().map(|c| c.addr).collect(),
        }
    }

    /// Client `i`.
    pub fn client(&self, i: usize) -> &Host {
        &self.clients[i]
    }

    /// All clients.
    pub fn clients(&self) -> &[Host] {
        &self.clients
    }

    /// Full-cone port forward: inbound UDP to the WAN address on `port` goes to client
    /// `client`'s `port` (`-t nat -I PREROUTING -i WAN -p udp --dport P -j DNAT`). With the
    /// client bound to `port`, `MASQUERADE` keeps that port as long as no other flow took it,
    /// so the client's mapping becomes reachable from anyone. Only for [`Nat::FullCone`]
    /// (the other kinds' firewalls drop forwarded unsolicited traffic by design).
    pub fn forward_udp_port(&self, client: usize, port: u16) -> io::Result<()> {
        let router = match (&self.router, self.nat) {
            (Some(r), Nat::FullCone) => r,
            _ => {
                return Err(io::Error::other(format!(
                    "forward_udp_port needs a FullCone site; site {} is {}",
                    self.index, self.nat
                )))
            }
        };
        let to = format!("{}:{port}", self.clients[client].addr);
        let port = port.to_string();
        ns_iptables(
            &router.ns,
            self.iptables,
            &[
                "-t",
                "nat",
                "-I",
                "PREROUTING",
                "1",
                "-i",
                &self.wan_if,
                "-p",
                "udp",
                "--dport",
                &port,
                "-j",
                "DNAT",
                "--to-destination",
                &to,
            ],
        )
        .map(|_| ())
    }

    /// Changes the router's NAT mapping as a router reboot or a carrier-grade NAT's
    /// timeout would: UDP leaving the WAN is masqueraded to a port in `ports` from now on
    /// (`MASQUERADE --to-ports`, inserted ahead of the site's own rule) and every
    /// conntrack entry of the router is deleted (`conntrack -F`, needs the `conntrack`
    /// tool), so each existing flow gets a new external port with its next packet. Only
    /// for the cone kinds ([`Nat::FullCone`], [`Nat::PortRestricted`]); the full cone's
    /// DMZ rule still forwards any port to client 0. `ports` must not hold a flow's
    /// current port: MASQUERADE keeps a source port that is in range and free, so the
    /// mapping would not change (use ports below the ephemeral range, 32768 and up).
    pub fn change_udp_mapping(&self, ports: (u16, u16)) -> io::Result<()> {
        let router = match (&self.router, self.nat) {
            (Some(r), Nat::FullCone | Nat::PortRestricted) => r,
            _ => {
                return Err(io::Error::other(format!(
                    "change_udp_mapping needs a cone NAT site; site {} is {}",
                    self.index, self.nat
                )))
            }
        };
        let range = format!("{}-{}", ports.0, ports.1);
        ns_iptables(
            &router.ns,
            self.iptables,
            &[
                "-t",
                "nat",
                "-I",
                "POSTROUTING",
                "1",
                "-o",
                &self.wan_if,
                "-p",
                "udp",
                "-j",
                "MASQUERADE",
                "--to-ports",
                &range,
            ],
        )?;
        ns_exec(&router.ns, "conntrack", &["-F"]).map(|_| ())
    }

    fn install_nat(&self, server: Ipv4Addr) -> io::Result<()> {
        let Some(router) = &self.router else {
            return Ok(());
        };
        let ns = router.ns.as_str();
        let wan = self.wan_if.as_str();
        let ipt = |args: &[&str]| ns_iptables(ns, self.iptables, args).map(|_| ());
        let masquerade: &[&str] = match self.nat {
            Nat::Symmetric => &[
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-o",
                wan,
                "-j",
                "MASQUERADE",
                "--random-fully",
            ],
            _ => &[
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-o",
                wan,
                "-j",
                "MASQUERADE",
            ],
        };
        ipt(masquerade)?;
        match self.nat {
            Nat::Open => {}
            Nat::FullCone => {
                // The DMZ host: unsolicited inbound UDP, port kept, to client 0.
                let dmz = self.clients[0].addr.to_string();
                ipt(&[
                    "-t",
                    "nat",
                    "-A",
                    "PREROUTING",
                    "-i",
                    wan,
                    "-p",
                    "udp",
                    "-j",
                    "DNAT",
                    "--to-destination",
                    &dmz,
                ])?;
            }
            Nat::PortRestricted | Nat::Symmetric | Nat::UdpBlocked | Nat::NoUdp => {
                for chain in ["INPUT", "FORWARD"] {
                    ipt(&[
                        "-A",
                        chain,
                        "-i",
                        wan,
                        "-m",
                        "conntrack",
                        "--ctstate",
                        "NEW",
                        "-j",
                        "DROP",
                    ])?;
                }
                if self.nat == Nat::UdpBlocked {
                    let server = server.to_string();
                    ipt(&[
                        "-A", "FORWARD", "-o", wan, "-p", "udp", "!", "-d", &server, "-j", "DROP",
                    ])?;
                    ipt(&[
                        "-A", "FORWARD", "-i", wan, "-p", "udp", "!", "-s", &server, "-j", "DROP",
                    ])?;
                }
                if self.nat == Nat::NoUdp {
                    ipt(&["-A", "FORWARD", "-p", "udp", "-j", "DROP"])?;
                }
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct Captured {
    state: Mutex<(Vec<u8>, bool)>,
    changed: Condvar,
}

impl Captured {
    fn start(mut source: impl Read + Send + 'static) -> Arc<Captured> {
        let cap = Arc::new(Captured::default());
        let writer = Arc::clone(&cap);
        thread::spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                match source.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        lock(&writer.state).0.extend_from_slice(&buf[..n]);
                        writer.changed.notify_all();
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            lock(&writer.state).1 = true;
            writer.changed.notify_all();
        });
        cap
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&lock(&self.state).0).into_owned()
    }

    fn wait_eof(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut state = lock(&self.state);
        while !state.1 {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// A process started by the lab, with its stdout and stderr captured (by background
/// threads, so it never blocks on a full pipe). It runs in its own process group, which is
/// killed when the guard is dropped.
pub struct NsChild {
    child: Child,
    label: String,
    stdout: Arc<Captured>,
    stderr: Arc<Captured>,
    status: Option<ExitStatus>,
}

impl fmt::Debug for NsChild {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NsChild")
            .field("pid", &self.child.id())
            .field("label", &self.label)
            .field("status", &self.status)
            .finish()
    }
}

impl NsChild {
    fn spawn(mut cmd: Command, label: String) -> io::Result<NsChild> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot start `{label}`: {e}")))?;
        let stdout = Captured::start(child.stdout.take().expect("piped stdout"));
        let stderr = Captured::start(child.stderr.take().expect("piped stderr"));
        Ok(NsChild {
            child,
            label,
            stdout,
            stderr,
            status: None,
        })
    }

    /// The process id (also its process group id).
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// What was started, for messages.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Stdout captured so far.
    pub fn stdout(&self) -> String {
        self.stdout.text()
    }

    /// Stderr captured so far.
    pub fn stderr(&self) -> String {
        self.stderr.text()
    }

    /// Waits until a complete stdout line contains `needle` and returns that line. Fails on
    /// timeout or when stdout closes first (the error carries the output).
    pub fn wait_for_line(&self, needle: &str, timeout: Duration) -> io::Result<String> {
        let deadline = Instant::now() + timeout;
        let mut state = lock(&self.stdout.state);
        loop {
            let text = String::from_utf8_lossy(&state.0);
            let complete = match text.rfind('\n') {
                Some(end) => &text[..end],
                None => "",
            };
            if let Some(line) = complete.lines().find(|l| l.contains(needle)) {
                return Ok(line.to_owned());
            }
            let eof = state.1;
            let now = Instant::now();
            if eof || now >= deadline {
                let text = text.into_owned();
                drop(state);
                let why = if eof { "exited" } else { "timed out" };
                return Err(io::Error::new(
                    if eof {
                        io::ErrorKind::UnexpectedEof
                    } else {
                        io::ErrorKind::TimedOut
                    },
                    format!(
                        "`{}` {why} before printing {needle:?}\n--- stdout\n{text}\n--- stderr\n{}",
                        self.label,
                        self.stderr()
                    ),
                ));
            }
            state = self
                .stdout
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Polls for exit without blocking.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait()?;
        }
        Ok(self.status)
    }

    /// Waits up to `timeout` for exit; `None` if still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> io::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits up to `timeout` for exit and returns the captured output. On timeout the
    /// process is killed and the error (kind `TimedOut`) carries the output so far.
    pub fn wait_output(mut self, timeout: Duration) -> io::Result<Output> {
        match self.wait_timeout(timeout)? {
            Some(status) => {
                // The pipes close at exit unless a grandchild holds them: wait briefly.
                self.stdout.wait_eof(Duration::from_secs(2));
                self.stderr.wait_eof(Duration::from_secs(2));
                Ok(Output {
                    status,
                    stdout: lock(&self.stdout.state).0.clone(),
                    stderr: lock(&self.stderr.state).0.clone(),
                })
            }
            None => {
                self.kill();
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "`{}` did not finish within {timeout:?}\n--- stdout\n{}\n--- stderr\n{}",
                        self.label,
                        self.stdout(),
                        self.stderr()
                    ),
                ))
            }
        }
    }

    /// Waits for a [`Tool`] to finish and parses its output; a non-zero exit is an error.
    pub fn wait_tool(self, timeout: Duration) -> io::Result<ToolOutput> {
        let label = self.label.clone();
        let out = self.wait_output(timeout)?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "`{label}` failed ({})\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
                out.status
            )));
        }
        Ok(ToolOutput { stdout })
    }

    /// Kills the process group and reaps the process (idempotent).
    pub fn kill(&mut self) {
        if self.status.is_some() {
            return;
        }
        if let Ok(Some(status)) = self.child.try_wait() {
            self.status = Some(status);
            return;
        }
        // Not reaped yet, so the group id cannot have been reused.
        let group = format!("-{}", self.child.id());
        let _ = Command::new("sh")
            .args(["-c", "kill -KILL -- \"$1\" 2>/dev/null; true", "sh", &group])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        self.status = self.child.wait().ok();
    }
}

impl Drop for NsChild {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------
// Tools: small UDP programs run by re-executing the test binary inside a namespace
// ---------------------------------------------------------------------------------------

/// The environment variable that tells a re-executed test binary which tool to run.
pub const TOOL_ENV: &str = "NATLAB_TOOL";
/// The name of the test function that must call [`tool_entry`].
pub const TOOL_TEST: &str = "natlab_tool";

/// The body of the `natlab_tool` test every tool-using test file defines. In a normal test
/// run it returns at once; in a re-executed binary (with [`TOOL_ENV`] set) it runs the tool
/// and exits the process (status 0 on success, 2 on error).
pub fn tool_entry() {
    let Ok(spec) = std::env::var(TOOL_ENV) else {
        return;
    };
    let result = Tool::decode(&spec).and_then(|tool| tool.run());
    let code = match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("natlab tool {spec:?} failed: {e}");
            2
        }
    };
    let _ = io::stdout().flush();
    std::process::exit(code);
}

/// A UDP program to run inside a namespace with [`Host::spawn_tool`] or
/// [`Host::run_tool`]. Every tool binds `0.0.0.0:port` (`0` = any free port) and reports on
/// stdout in lines starting with `NATLAB `, which [`ToolOutput`] parses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tool {
    /// A reflector (a tiny STUN): answers every datagram with `SEEN <source ip:port>`.
    /// Prints `NATLAB READY <local>` once bound, then runs until killed or until `lifetime`
    /// (a bound for orphans) has passed.
    Echo {
        /// Local port.
        port: u16,
        /// Exit after this long.
        lifetime: Duration,
    },
    /// See [`Probe`].
    Probe(Probe),
    /// Sends `count` datagrams `DATA <i>` to `target`, `gap` apart, then prints
    /// `NATLAB SENT <count>`.
    Send {
        /// Local port.
        port: u16,
        /// Destination.
        target: SocketAddr,
        /// How many datagrams.
        count: u32,
        /// Pause between datagrams.
        gap: Duration,
    },
}

/// From one socket: asks each target (an [`Tool::Echo`]) in turn for the address it sees
/// (`NATLAB REPLY <target> <observed>`, or `NATLAB NOREPLY <target>` after `tries` sends
/// `gap` apart), then prints `NATLAB LISTENING <local>` and, for `listen`, reports every
/// other datagram (`NATLAB RECV <source>`), ending early after `until` of them (0: no
/// limit) or after `idle` of silence following the first; finally `NATLAB COUNT <n>`.
/// Datagrams other than the expected replies that arrive while probing are reported as
/// `RECV` too.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    /// Local port (0 = any).
    pub port: u16,
    /// Echo servers to ask, in order.
    pub targets: Vec<SocketAddr>,
    /// Sends per target before giving up.
    pub tries: u32,
    /// Wait for a reply after each send.
    pub gap: Duration,
    /// How long to listen after probing (0 = not at all).
    pub listen: Duration,
    /// Stop listening after this many datagrams (0 = no limit).
    pub until: usize,
    /// Stop listening after this long without a datagram, once one has arrived.
    pub idle: Option<Duration>,
}

impl Probe {
    /// A probe from `port` to `targets`: 10 tries 100 ms apart per target, no listening.
    pub fn new(port: u16, targets: &[SocketAddr]) -> Probe {
        Probe {
            port,
            targets: targets.to_vec(),
            tries: 10,
            gap: Duration::from_millis(100),
            listen: Duration::ZERO,
            until: 0,
            idle: None,
        }
    }

    /// Sets the sends per target and the wait after each.
    pub fn tries(mut self, tries: u32, gap: Duration) -> Probe {
        self.tries = tries;
        self.gap = gap;
        self
    }

    /// Listens for `listen` after probing, stopping after `until` datagrams (0: no limit).
    pub fn listen(mut self, listen: Duration, until: usize) -> Probe {
        self.listen = listen;
        self.until = until;
        self
    }

    /// Stops listening after `idle` of silence once a datagram has arrived.
    pub fn idle(mut self, idle: Duration) -> Probe {
        self.idle = Some(idle);
        self
    }

    /// As a [`Tool`].
    pub fn tool(self) -> Tool {
        Tool::Probe(self)
    }
}

impl From<Probe> for Tool {
    fn from(p: Probe) -> Tool {
        Tool::Probe(p)
    }
}

impl Tool {
    /// An echo on `port` living at most 60 s.
    pub fn echo(port: u16) -> Tool {
        Tool::Echo {
            port,
            lifetime: Duration::from_secs(60),
        }
    }

    /// A sender.
    pub fn send(port: u16, target: SocketAddr, count: u32, gap: Duration) -> Tool {
        Tool::Send {
            port,
            target,
            count,
            gap,
        }
    }

    fn encode(&self) -> String {
        let ms = |d: &Duration| d.as_millis().to_string();
        match self {
            Tool::Echo { port, lifetime } => format!("echo port={port} life_ms={}", ms(lifetime)),
            Tool::Probe(p) => {
                let to: Vec<String> = p.targets.iter().map(|t| t.to_string()).collect();
                format!(
                    "probe port={} to={} tries={} gap_ms={} listen_ms={} until={} idle_ms={}",
                    p.port,
                    to.join(","),
                    p.tries,
                    ms(&p.gap),
                    ms(&p.listen),
                    p.until,
                    p.idle.as_ref().map(ms).unwrap_or_else(|| "none".into())
                )
            }
            Tool::Send {
                port,
                target,
                count,
                gap,
            } => format!(
                "send port={port} to={target} count={count} gap_ms={}",
                ms(gap)
            ),
        }
    }

    fn decode(spec: &str) -> io::Result<Tool> {
        let bad = |what: &str| io::Error::other(format!("bad tool spec {spec:?}: {what}"));
        let mut words = spec.split_whitespace();
        let kind = words.next().ok_or_else(|| bad("empty"))?;
        let kv: HashMap<&str, &str> = words.filter_map(|w| w.split_once('=')).collect();
        let get = |k: &str| kv.get(k).copied().ok_or_else(|| bad(k));
        let num = |k: &str| -> io::Result<u64> { get(k)?.parse().map_err(|_| bad(k)) };
        let ms = |k: &str| -> io::Result<Duration> { num(k).map(Duration::from_millis) };
        let port = u16::try_from(num("port")?).map_err(|_| bad("port"))?;
        match kind {
            "echo" => Ok(Tool::Echo {
                port,
                lifetime: ms("life_ms")?,
            }),
            "probe" => {
                let to = get("to")?;
                let targets = to
                    .split(',')
                    .filter(|t| !t.is_empty())
                    .map(|t| t.parse().map_err(|_| bad("to")))
                    .collect::<io::Result<Vec<SocketAddr>>>()?;
                let idle = match get("idle_ms")? {
                    "none" => None,
                    _ => Some(ms("idle_ms")?),
                };
                Ok(Tool::Probe(Probe {
                    port,
                    targets,
                    tries: u32::try_from(num("tries")?).map_err(|_| bad("tries"))?,
                    gap: ms("gap_ms")?,
                    listen: ms("listen_ms")?,
                    until: usize::try_from(num("until")?).map_err(|_| bad("until"))?,
                    idle,
                }))
            }
            "send" => Ok(Tool::Send {
                port,
                target: get("to")?.parse().map_err(|_| bad("to"))?,
                count: u32::try_from(num("count")?).map_err(|_| bad("count"))?,
                gap: ms("gap_ms")?,
            }),
            other => Err(bad(&format!("unknown tool {other}"))),
        }
    }

    fn run(self) -> io::Result<()> {
        match self {
            Tool::Echo { port, lifetime } => run_echo(port, lifetime),
            Tool::Probe(p) => run_probe(&p),
            Tool::Send {
                port,
                target,
                count,
                gap,
            } => run_send(port, target, count, gap),
        }
    }
}

fn say(line: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "NATLAB {line}");
    let _ = out.flush();
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// Errors a UDP socket may report for an earlier datagram (ICMP); not fatal for a tool.
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
            | io::ErrorKind::PermissionDenied
    )
}

fn bind(port: u16) -> io::Result<UdpSocket> {
    UdpSocket::bind(("0.0.0.0", port))
}

/// Receives one datagram within `wait` (at least 1 ms).
fn recv_within(
    sock: &UdpSocket,
    buf: &mut [u8],
    wait: Duration,
) -> io::Result<Option<(usize, SocketAddr)>> {
    sock.set_read_timeout(Some(wait.max(Duration::from_millis(1))))?;
    match sock.recv_from(buf) {
        Ok(got) => Ok(Some(got)),
        Err(e) if is_timeout(&e) || is_transient(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

fn run_echo(port: u16, lifetime: Duration) -> io::Result<()> {
    let sock = bind(port)?;
    say(&format!("READY {}", sock.local_addr()?));
    let end = Instant::now() + lifetime;
    let mut buf = [0u8; 2048];
    while Instant::now() < end {
        if let Some((_, src)) = recv_within(&sock, &mut buf, Duration::from_millis(200))? {
            let _ = sock.send_to(format!("SEEN {src}").as_bytes(), src);
        }
    }
    Ok(())
}

fn run_probe(p: &Probe) -> io::Result<()> {
    let sock = bind(p.port)?;
    let local = sock.local_addr()?;
    say(&format!("BOUND {local}"));
    let mut buf = [0u8; 2048];
    let mut count = 0usize;
    let seen = |buf: &[u8]| -> Option<SocketAddr> {
        std::str::from_utf8(buf)
            .ok()?
            .strip_prefix("SEEN ")?
            .trim()
            .parse()
            .ok()
    };
    for &target in &p.targets {
        let mut observed = None;
        'tries: for attempt in 0..p.tries {
            let _ = sock.send_to(format!("PROBE {attempt}").as_bytes(), target);
            let deadline = Instant::now() + p.gap;
            while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                let Some((n, src)) = recv_within(&sock, &mut buf, left)? else {
                    continue;
                };
                match seen(&buf[..n]) {
                    Some(addr) if src == target => {
                        observed = Some(addr);
                        break 'tries;
                    }
                    // A late reply from an earlier target.
                    Some(_) if p.targets.contains(&src) => {}
                    _ => {
                        count += 1;
                        say(&format!("RECV {src}"));
                    }
                }
            }
        }
        match observed {
            Some(addr) => say(&format!("REPLY {target} {addr}")),
            None => say(&format!("NOREPLY {target}")),
        }
    }
    if !p.listen.is_zero() {
        say(&format!("LISTENING {local}"));
        let end = Instant::now() + p.listen;
        let mut last: Option<Instant> = None;
        loop {
            let now = Instant::now();
            if now >= end || (p.until > 0 && count >= p.until) {
                break;
            }
            if let (Some(idle), Some(last)) = (p.idle, last) {
                if now >= last + idle {
                    break;
                }
            }
            let wait = (end - now).min(Duration::from_millis(50));
            let Some((n, src)) = recv_within(&sock, &mut buf, wait)? else {
                continue;
            };
            if seen(&buf[..n]).is_some() && p.targets.contains(&src) {
                continue;
            }
            count += 1;
            last = Some(Instant::now());
            say(&format!("RECV {src}"));
        }
    }
    say(&format!("COUNT {count}"));
    Ok(())
}

fn run_send(port: u16, target: SocketAddr, count: u32, gap: Duration) -> io::Result<()> {
    let sock = bind(port)?;
    say(&format!("BOUND {}", sock.local_addr()?));
    let mut errors = 0u32;
    for i in 0..count {
        if let Err(e) = sock.send_to(format!("DATA {i}").as_bytes(), target) {
            if !is_transient(&e) {
                return Err(e);
            }
            errors += 1;
        }
        if !gap.is_zero() {
            thread::sleep(gap);
        }
    }
    say(&format!("SENT {} ERRORS {errors}", count - errors));
    Ok(())
}

/// The parsed stdout of a [`Tool`] (also usable on a running tool's output so far, via
/// [`ToolOutput::parse`]).
#[derive(Clone, Debug, Default)]
pub struct ToolOutput {
    /// The raw stdout.
    pub stdout: String,
}

impl ToolOutput {
    /// Parses captured stdout (e.g. [`NsChild::stdout`] of a running tool).
    pub fn parse(stdout: String) -> ToolOutput {
        ToolOutput { stdout }
    }

    fn fields(&self, tag: &'static str) -> impl Iterator<Item = Vec<&str>> + '_ {
        self.stdout.lines().filter_map(move |l| {
            // libtest may print `test natlab_tool ... ` on the same line before the first.
            let at = l.find("NATLAB ")?;
            let rest = l[at..].strip_prefix("NATLAB ")?.strip_prefix(tag)?;
            rest.starts_with(' ')
                .then(|| rest.split_whitespace().collect())
        })
    }

    /// The local address the tool bound (`BOUND` / `READY`).
    pub fn bound(&self) -> Option<SocketAddr> {
        self.fields("BOUND")
            .chain(self.fields("READY"))
            .find_map(|f| f.first()?.parse().ok())
    }

    /// The address `target` saw the probe come from (the server-reflexive address).
    pub fn reflexive(&self, target: SocketAddr) -> Option<SocketAddr> {
        self.fields("REPLY").find_map(|f| {
            let t: SocketAddr = f.first()?.parse().ok()?;
            (t == target).then(|| f.get(1)?.parse().ok()).flatten()
        })
    }

    /// Whether `target` never answered.
    pub fn no_reply(&self, target: SocketAddr) -> bool {
        self.fields("NOREPLY")
            .any(|f| f.first().and_then(|t| t.parse().ok()) == Some(target))
    }

    /// Sources of the datagrams received besides probe replies, in order.
    pub fn received(&self) -> Vec<SocketAddr> {
        self.fields("RECV")
            .filter_map(|f| f.first()?.parse().ok())
            .collect()
    }

    /// How many datagrams were received besides probe replies.
    pub fn count(&self) -> usize {
        self.fields("COUNT")
            .find_map(|f| f.first()?.parse().ok())
            .unwrap_or_else(|| self.received().len())
    }
}

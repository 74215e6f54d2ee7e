//! Scale: many connected clients at once (1k, 5k, 10k). For each level, the connection
//! set-up rate, the server's resident memory per client and its CPU while every client
//! only sends QUIC keepalives.
//!
//! The server is the `peergroup-server` binary (the rooms application) in a process of its
//! own, so its memory and CPU time can be read from `/proc/<pid>/status` (VmRSS) and
//! `/proc/<pid>/stat` (utime + stime). The clients are raw protocol connections in this
//! process, sharing a few quinn endpoints (one UDP socket per [`CONNECTIONS_PER_ENDPOINT`]
//! connections) on a runtime of their own: each sends `Hello`, reads its `Welcome` and then
//! stays idle with a keepalive every 4 s. Levels are reached one after another on the same
//! server (1k, then 4k more, then 5k more); memory is measured against the server's
//! resident size before the first client.

use crate::cpu::clock_ticks_per_sec;
use crate::report::{rate, Report, Table};
use crate::Mode;
use bytes::Bytes;
use peergroup_client::ServerTrust;
use peergroup_protocol::{
    body_len, decode_body, frame_to_bytes, ClientToServer, Fingerprint, Hello, ServerToClient,
    DEFAULT_MAX_FRAME_LEN, LENGTH_PREFIX_LEN, PROTOCOL_VERSION,
};
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The levels measured, in clients.
const LEVELS: [usize; 3] = [1_000, 5_000, 10_000];
/// Connections sharing one client endpoint (one UDP socket).
const CONNECTIONS_PER_ENDPOINT: usize = 500;
/// Handshakes under way at once while connecting. More in flight is slower here, not
/// faster: bursts of Initial packets overflow the server socket's receive buffer and the
/// lost ones wait for the client's retransmission timer (about 1 s at first). The drops
/// are counted and reported.
const HANDSHAKES_IN_FLIGHT: usize = 32;
/// Keepalive interval of the clients (as the client library's default).
const KEEPALIVE: Duration = Duration::from_secs(4);
/// QUIC idle timeout of the clients (as the server's default).
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// The section in quick mode stays under this, from when the server binary is ready.
const QUICK_BUDGET: Duration = Duration::from_secs(40);
/// Bound on one connection's handshake, hello and welcome.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// Settling time before memory is read.
const SETTLE: Duration = Duration::from_millis(500);

/// Runs the section.
pub fn run(mode: Mode, report: &mut Report, _out: &Path) -> Result<(), String> {
    let idle_window = mode.pick(Duration::from_secs(5), Duration::from_secs(20));
    let binary = server_binary()?;
    // The budget starts after the build: a run that had to build the server (33 s here)
    // left the 5,000 and 10,000 levels out.
    let started = Instant::now();
    let identity_dir = TempDir::new()?;
    let server = ServerProcess::spawn(&binary, &identity_dir.0)?;
    let ticks_per_sec = clock_ticks_per_sec();

    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("scale-clients")
        .enable_all()
        .build()
        .map_err(|e| format!("client runtime: {e}"))?;
    let mut clients = Clients::new(server.addr, server.fingerprint);

    std::thread::sleep(SETTLE);
    let baseline_kib = rss_kib(server.pid())?;
    eprintln!(
        "   server pid {} at {}, baseline RSS {baseline_kib} KiB",
        server.pid(),
        server.addr
    );

    let mut rows = Vec::new();
    let mut notes = Vec::new();
    let mut largest = None;
    let mut last_rate = 0.0f64;
    for level in LEVELS {
        let more = level - clients.connected();
        if mode == Mode::Quick && last_rate > 0.0 {
            // Connecting, settling, the idle window and the clean-up must fit the budget.
            let needed = Duration::from_secs_f64(more as f64 / last_rate)
                + idle_window
                + SETTLE
                + Duration::from_secs(3);
            if started.elapsed() + needed > QUICK_BUDGET {
                notes.push(format!(
                    "{level} clients left out of this quick run: at {} connections/s it \
                     would not fit the section's {} s budget.",
                    rate(last_rate),
                    QUICK_BUDGET.as_secs()
                ));
                break;
            }
        }
        let server_drops_before = udp_drops(&[server.addr.port()]);
        let client_drops_before = udp_drops(&clients.ports());
        let cpu_connect_before = cpu_ticks(server.pid())?;
        let connecting = Instant::now();
        let (added, failures) = client_rt.block_on(clients.add(more))?;
        let connect_secs = connecting.elapsed().as_secs_f64();
        let connect_per_sec = added as f64 / connect_secs.max(1e-9);
        let connect_cpu_ms = (cpu_ticks(server.pid())? - cpu_connect_before) as f64 / ticks_per_sec
            * 1000.0
            / added.max(1) as f64;
        let server_drops = udp_drops(&[server.addr.port()]) - server_drops_before;
        let client_drops = udp_drops(&clients.ports()).saturating_sub(client_drops_before);
        last_rate = connect_per_sec;
        if failures > 0 {
            notes.push(format!(
                "{failures} of {more} connections failed on the way to {level}."
            ));
        }
        std::thread::sleep(SETTLE);
        let connected_kib = rss_kib(server.pid())?;
        let n = clients.connected();

        let cpu_before = cpu_ticks(server.pid())?;
        let idle_started = Instant::now();
        std::thread::sleep(idle_window);
        let cpu_after = cpu_ticks(server.pid())?;
        let idle_secs = idle_started.elapsed().as_secs_f64();
        let idle_cpu_percent = (cpu_after - cpu_before) as f64 / ticks_per_sec / idle_secs * 100.0;
        let idle_kib = rss_kib(server.pid())?;
        let alive = clients.alive();

        let per_client = connected_kib.saturating_sub(baseline_kib) as f64 / n.max(1) as f64;
        let per_client_idle = idle_kib.saturating_sub(baseline_kib) as f64 / n.max(1) as f64;
        eprintln!(
            "   {n} clients: {} conn/s ({connect_cpu_ms:.2} ms server CPU each, {server_drops} \
             / {client_drops} datagrams dropped at server / clients), {per_client:.1} \
             KiB/client ({per_client_idle:.1} after idle), idle CPU {idle_cpu_percent:.1}%, \
             {alive} alive",
            rate(connect_per_sec)
        );
        let key = format!("scale.levels.{level}");
        report.set(
            &format!("{key}.rss_per_client_kib"),
            (per_client * 10.0).round() / 10.0,
        );
        report.set(
            &format!("{key}.idle_cpu_percent"),
            (idle_cpu_percent * 100.0).round() / 100.0,
        );
        report.set(&format!("{key}.connect_per_sec"), connect_per_sec.round());
        largest = Some(per_client);
        rows.push(vec![
            n.to_string(),
            rate(connect_per_sec),
            format!("{connect_cpu_ms:.2}"),
            format!("{server_drops} / {client_drops}"),
            format!("{:.1}", connected_kib as f64 / 1024.0),
            format!("{per_client:.1}"),
            format!("{per_client_idle:.1}"),
            format!("{idle_cpu_percent:.1}"),
            format!("{alive}/{n}"),
        ]);
        if alive < n {
            notes.push(format!(
                "At {level}: {} connections closed during the idle window.",
                n - alive
            ));
        }
    }

    let closing = Instant::now();
    client_rt.block_on(clients.close());
    drop(clients);
    client_rt.shutdown_timeout(Duration::from_secs(2));
    drop(server);
    drop(identity_dir);
    eprintln!("   clean-up took {:.1} s", closing.elapsed().as_secs_f64());

    let largest = largest.ok_or("no level was measured")?;
    report.set("scale.rss_per_client_kib", (largest * 10.0).round() / 10.0);
    report.set("scale.baseline_rss_kib", baseline_kib);
    notes.insert(
        0,
        format!(
            "`peergroup-server` (rooms application) in its own process; clients are raw \
             protocol connections in the bench process ({CONNECTIONS_PER_ENDPOINT} per UDP \
             socket, {HANDSHAKES_IN_FLIGHT} handshakes at once), each with its `Welcome` \
             read, then idle with a keepalive every {} s. Levels follow one another on one \
             server: connect/s and the server's CPU per connection are for the connections \
             added to reach the level. Dropped datagrams are the kernel's count for the \
             server's socket and the bench's sockets (`/proc/net/udp`) while connecting; a \
             dropped Initial costs its client a retransmission timeout. KiB per client: (server VmRSS − {baseline_kib} KiB before the first \
             client) / clients, read {} ms after the last connection and again after the \
             idle window. Idle CPU: server utime + stime over a {} s window with only \
             keepalives, in percent of one core. Target: 10,000 clients at no more than \
             50 KiB each.",
            KEEPALIVE.as_secs(),
            SETTLE.as_millis(),
            idle_window.as_secs()
        ),
    );
    report.table(Table {
        title: "Scale: concurrent connected clients".into(),
        columns: vec![
            "clients".into(),
            "connect/s".into(),
            "server CPU ms per connect".into(),
            "datagrams dropped while connecting (server / clients)".into(),
            "server RSS MiB".into(),
            "KiB per client".into(),
            "KiB per client after idle".into(),
            "idle CPU % of a core".into(),
            "still connected".into(),
        ],
        rows,
        notes,
    });
    Ok(())
}

// ---- the server process ------------------------------------------------------------------

/// The `peergroup-server` binary next to this one, built first (cargo does nothing when
/// it is up to date). Building every time matters: a binary left from an older checkout
/// speaks an older protocol, and every connection would fail on the version check.
fn server_binary() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let dir = exe.parent().ok_or("the bench binary has no directory")?;
    let binary = dir.join("peergroup-server");
    let release = dir.file_name().is_some_and(|n| n == "release");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    eprintln!("   building peergroup-server at {}", binary.display());
    let mut build = Command::new(cargo);
    build.current_dir(&workspace).args([
        "build",
        "-p",
        "peergroup-cli",
        "--bin",
        "peergroup-server",
    ]);
    if release {
        build.arg("--release");
    }
    let status = build
        .status()
        .map_err(|e| format!("running cargo build: {e}"))?;
    if !status.success() || !binary.exists() {
        return Err(format!(
            "peergroup-server is not at {} and cargo build failed ({status})",
            binary.display()
        ));
    }
    Ok(binary)
}

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<Self, String> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!(
            "peergroup-bench-scale-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The server child process, killed on drop.
struct ServerProcess {
    child: Child,
    addr: SocketAddr,
    fingerprint: Fingerprint,
}

impl ServerProcess {
    /// Starts the server on an ephemeral loopback port and reads its `listening on` line.
    fn spawn(binary: &Path, identity_dir: &Path) -> Result<Self, String> {
        // Every client connects from 127.0.0.1, one source, which the server's default
        // per-source limit (1,024 clients) would refuse past that.
        let config = identity_dir.join("scale.toml");
        let largest = LEVELS.iter().max().copied().unwrap_or_default();
        std::fs::write(
            &config,
            format!("[admission]\nmax_clients_per_source = {largest}\n"),
        )
        .map_err(|e| format!("writing {}: {e}", config.display()))?;
        let mut child = Command::new(binary)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--log",
                "error",
                "--identity-dir",
            ])
            .arg(identity_dir)
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", binary.display()))?;
        let stdout = child.stdout.take().ok_or("no stdout pipe")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let read = std::io::BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(read.map(|_| line));
        });
        // The guard kills the child on every error path from here on.
        let mut process = ServerProcess {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            fingerprint: Fingerprint([0; 32]),
        };
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Ok(line)) => line,
            Ok(Err(e)) => return Err(format!("reading the server's stdout: {e}")),
            Err(_) => return Err("the server printed no `listening on` line in 20 s".into()),
        };
        let words: Vec<&str> = line.split_whitespace().collect();
        let (addr, fingerprint) = match words.as_slice() {
            ["listening", "on", addr, "fingerprint", hex, "cert", ..] => (*addr, *hex),
            _ => return Err(format!("unexpected server line {line:?}")),
        };
        process.addr = addr
            .parse()
            .map_err(|e| format!("server address {addr:?}: {e}"))?;
        process.fingerprint = Fingerprint::from_hex(fingerprint)
            .map_err(|e| format!("server fingerprint {fingerprint:?}: {e}"))?;
        Ok(process)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resident memory of a process, KiB.
fn rss_kib(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .ok_or_else(|| format!("no VmRSS in {path}"))
}

/// User plus system CPU time of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    // Fields after the command name (which may hold spaces), from field 3 (state) on.
    let rest = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .ok_or_else(|| format!("malformed {path}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Result<u64, String> {
        fields
            .get(n - 3)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| format!("no field {n} in {path}"))
    };
    Ok(field(14)? + field(15)?)
}

/// Datagrams the kernel dropped (receive buffer full) on the loopback UDP sockets bound
/// to `ports`, from the `drops` column of `/proc/net/udp`.
fn udp_drops(ports: &[u16]) -> u64 {
    let Ok(table) = std::fs::read_to_string("/proc/net/udp") else {
        return 0;
    };
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let port = fields.get(1)?.rsplit(':').next()?;
            let port = u16::from_str_radix(port, 16).ok()?;
            let drops: u64 = fields.last()?.parse().ok()?;
            ports.contains(&port).then_some(drops)
        })
        .sum()
}

// ---- the clients -------------------------------------------------------------------------

/// One idle client: its connection and main stream, kept open.
struct Idle {
    connection: quinn::Connection,
    _send: quinn::SendStream,
    _recv: quinn::RecvStream,
}

/// Every client connection, on endpoints of [`CONNECTIONS_PER_ENDPOINT`] each.
struct Clients {
    server: SocketAddr,
    fingerprint: Fingerprint,
    endpoints: Vec<quinn::Endpoint>,
    idle: Vec<Idle>,
}

impl Clients {
    fn new(server: SocketAddr, fingerprint: Fingerprint) -> Self {
        Self {
            server,
            fingerprint,
            endpoints: Vec::new(),
            idle: Vec::new(),
        }
    }

    /// Local ports of the client endpoints.
    fn ports(&self) -> Vec<u16> {
        self.endpoints
            .iter()
            .filter_map(|e| e.local_addr().ok())
            .map(|a| a.port())
            .collect()
    }

    fn connected(&self) -> usize {
        self.idle.len()
    }

    /// Connections not closed.
    fn alive(&self) -> usize {
        self.idle
            .iter()
            .filter(|c| c.connection.close_reason().is_none())
            .count()
    }

    /// A new client endpoint with keepalives. Call inside the client runtime.
    fn endpoint(&self) -> Result<quinn::Endpoint, String> {
        let mut config =
            peergroup_client::raw_quic_client_config(&ServerTrust::Fingerprint(self.fingerprint))
                .map_err(|e| format!("client TLS config: {e}"))?;
        let mut transport = quinn::TransportConfig::default();
        transport
            .keep_alive_interval(Some(KEEPALIVE))
            .max_idle_timeout(Some(
                IDLE_TIMEOUT
                    .try_into()
                    .map_err(|e| format!("idle timeout: {e}"))?,
            ));
        config.transport_config(Arc::new(transport));
        let mut endpoint = client_endpoint()?;
        endpoint.set_default_client_config(config);
        Ok(endpoint)
    }

    /// Connects `more` clients, [`HANDSHAKES_IN_FLIGHT`] at a time. Returns how many got
    /// their welcome and how many failed.
    async fn add(&mut self, more: usize) -> Result<(usize, usize), String> {
        let first = self.idle.len();
        let target = first + more;
        while self.endpoints.len() * CONNECTIONS_PER_ENDPOINT < target {
            let endpoint = self.endpoint()?;
            self.endpoints.push(endpoint);
        }
        let limit = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES_IN_FLIGHT));
        let mut tasks = tokio::task::JoinSet::new();
        for i in first..target {
            let endpoint = self.endpoints[i / CONNECTIONS_PER_ENDPOINT].clone();
            let server = self.server;
            let permit = limit
                .clone()
                .acquire_owned()
                .await
                .map_err(|e| e.to_string())?;
            tasks.spawn(async move {
                let result = tokio::time::timeout(CONNECT_TIMEOUT, connect(endpoint, server))
                    .await
                    .unwrap_or_else(|_| Err("timed out".into()));
                drop(permit);
                result
            });
            // Collect what finished meanwhile, so the set stays small.
            while let Some(done) = tasks.try_join_next() {
                self.collect(done);
            }
        }
        while let Some(done) = tasks.join_next().await {
            self.collect(done);
        }
        let added = self.idle.len() - first;
        Ok((added, more - added))
    }

    fn collect(&mut self, done: Result<Result<Idle, String>, tokio::task::JoinError>) {
        match done {
            Ok(Ok(idle)) => self.idle.push(idle),
            Ok(Err(error)) => tracing::debug!(%error, "scale client failed to connect"),
            Err(error) => tracing::debug!(%error, "scale client task failed"),
        }
    }

    /// Closes every connection and waits (briefly) for the close frames to go out.
    async fn close(&mut self) {
        for endpoint in &self.endpoints {
            endpoint.close(0u32.into(), b"bench done");
        }
        self.idle.clear();
        let endpoints = std::mem::take(&mut self.endpoints);
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            for endpoint in &endpoints {
                endpoint.wait_idle().await;
            }
        })
        .await;
    }
}

/// Receive buffer asked for on each bench client socket (the kernel caps it at
/// `net.core.rmem_max`), so the bench's own sockets are not where datagrams get lost.
const CLIENT_RECV_BUFFER: usize = 4 << 20;

/// A quinn client endpoint on a loopback socket with a large receive buffer. Call inside a
/// tokio runtime.
pub(crate) fn client_endpoint() -> Result<quinn::Endpoint, String> {
    let socket = std::net::UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .map_err(|e| format!("client socket: {e}"))?;
    if let Ok(state) = quinn::udp::UdpSocketState::new((&socket).into()) {
        let _ = state.set_recv_buffer_size((&socket).into(), CLIENT_RECV_BUFFER);
    }
    let runtime = quinn::default_runtime().ok_or("no async runtime for quinn")?;
    quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, runtime)
        .map_err(|e| format!("client endpoint: {e}"))
}

/// Handshake, hello, welcome.
async fn connect(endpoint: quinn::Endpoint, server: SocketAddr) -> Result<Idle, String> {
    let connection = endpoint
        .connect(server, "peergroup")
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, mut recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
    let hello = ClientToServer::Hello(Hello {
        version: PROTOCOL_VERSION,
        login: Bytes::new(),
    });
    let frame = frame_to_bytes(&hello, DEFAULT_MAX_FRAME_LEN).map_err(|e| e.to_string())?;
    send.write_all(&frame).await.map_err(|e| e.to_string())?;
    let mut prefix = [0u8; LENGTH_PREFIX_LEN];
    recv.read_exact(&mut prefix)
        .await
        .map_err(|e| e.to_string())?;
    let len = body_len(prefix, DEFAULT_MAX_FRAME_LEN).map_err(|e| e.to_string())?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body)
        .await
        .map_err(|e| e.to_string())?;
    match decode_body::<ServerToClient>(&body).map_err(|e| e.to_string())? {
        ServerToClient::Welcome { .. } => Ok(Idle {
            connection,
            _send: send,
            _recv: recv,
        }),
        other => Err(format!("expected a welcome, got {other:?}")),
    }
}

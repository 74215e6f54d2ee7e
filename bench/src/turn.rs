//! The coturn baseline: a `turnserver` process on loopback and a minimal TURN client
//! (RFC 8489 STUN, RFC 8656 TURN over UDP) to relay through it.
//!
//! The client does what a relayed game peer does and nothing more: one Allocate
//! (REQUESTED-TRANSPORT UDP, no authentication: coturn runs with `--no-auth`), then a
//! CreatePermission and a ChannelBind per peer, then ChannelData both ways. It receives
//! Data indications too, for a peer that has a permission but no channel towards it.
//!
//! Not implemented, because a benchmark run stays well inside the defaults: Refresh
//! (allocations live 600 s, permissions 300 s, channel bindings 600 s from their
//! creation), long-term credentials (a 401 answer is reported as an error), TCP/TLS
//! transports and FINGERPRINT on requests.
//!
//! coturn is Debian's package `coturn` (`apt-get install coturn`, binary
//! `/usr/bin/turnserver`); without it [`Coturn::start`] returns an error and the caller
//! leaves the baseline out.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::oneshot;

/// STUN's magic cookie (RFC 8489 section 5).
const MAGIC_COOKIE: u32 = 0x2112_A442;
/// STUN header: type, length, cookie, transaction id.
const HEADER_LEN: usize = 20;
/// Transaction id length.
const TID_LEN: usize = 12;
/// A transaction id.
type Tid = [u8; TID_LEN];

// Message types (method and class combined, RFC 8489 section 5, RFC 8656 section 17).
const ALLOCATE: u16 = 0x0003;
const REFRESH: u16 = 0x0004;
const CREATE_PERMISSION: u16 = 0x0008;
const CHANNEL_BIND: u16 = 0x0009;
const DATA_INDICATION: u16 = 0x0017;
/// Class bits of a success response.
const SUCCESS: u16 = 0x0100;
/// Class bits of an error response.
const ERROR: u16 = 0x0110;

// Attributes.
const ATTR_ERROR_CODE: u16 = 0x0009;
const ATTR_CHANNEL_NUMBER: u16 = 0x000C;
const ATTR_LIFETIME: u16 = 0x000D;
const ATTR_XOR_PEER_ADDRESS: u16 = 0x0012;
const ATTR_DATA: u16 = 0x0013;
const ATTR_XOR_RELAYED_ADDRESS: u16 = 0x0016;
const ATTR_REQUESTED_TRANSPORT: u16 = 0x0019;
#[cfg(test)]
const ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;

/// IANA protocol number of UDP, for REQUESTED-TRANSPORT.
const PROTOCOL_UDP: u8 = 17;
/// Valid channel numbers (RFC 8656 section 12).
const CHANNELS: Range<u16> = 0x4000..0x5000;
/// ChannelData header: channel number and length.
const CHANNEL_HEADER_LEN: usize = 4;

/// How long to wait for an answer before each retransmission of a request, then give up.
const RETRANSMIT: [Duration; 6] = [
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_millis(1000),
    Duration::from_millis(1000),
    Duration::from_millis(1000),
    Duration::from_millis(1000),
];
/// How long [`Coturn::start`] waits for the server to grant an allocation.
const START_TIMEOUT: Duration = Duration::from_secs(5);
/// Relay ports for coturn: above Linux's default ephemeral range (32768 to 60999), so the
/// relay endpoints do not race the benchmark's own sockets for ports.
const RELAY_PORTS: (u16, u16) = (61000, 65535);

/// A coturn `turnserver` process listening for UDP on 127.0.0.1, with no authentication
/// and loopback peers allowed. Killed (and reaped) on drop.
pub struct Coturn {
    child: Child,
    addr: SocketAddr,
    /// Log, output, pid file and user database, removed on drop.
    files: Vec<PathBuf>,
}

impl Coturn {
    /// Starts `turnserver` on a free UDP port of 127.0.0.1 and waits (up to 5 s) until it
    /// grants an allocation. Fails if coturn is not installed or does not come up.
    pub fn start() -> Result<Coturn, String> {
        let binary = find_turnserver()
            .ok_or_else(|| "coturn is not installed (apt-get install coturn)".to_string())?;
        let deadline = Instant::now() + START_TIMEOUT;
        // A free port can be taken by someone else between probing and binding, which
        // makes turnserver exit: try twice more on other ports while time remains.
        let mut attempts = 0;
        loop {
            attempts += 1;
            match Self::start_once(&binary, deadline) {
                Ok(coturn) => return Ok(coturn),
                Err((error, exited)) => {
                    if !exited || attempts == 3 || Instant::now() >= deadline {
                        return Err(error);
                    }
                }
            }
        }
    }

    /// One attempt; the error says whether the process exited (worth another try).
    fn start_once(binary: &Path, deadline: Instant) -> Result<Coturn, (String, bool)> {
        let port = free_udp_port().map_err(|e| (format!("finding a free UDP port: {e}"), false))?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let stem =
            std::env::temp_dir().join(format!("peergroup-coturn-{}-{port}", std::process::id()));
        let log = stem.with_extension("log");
        let output = stem.with_extension("out");
        let pidfile = stem.with_extension("pid");
        let userdb = stem.with_extension("sqlite");
        let files = vec![log.clone(), output.clone(), pidfile.clone(), userdb.clone()];
        // coturn writes its log to `log` line by line; stdout and stderr (usage errors)
        // go to `output`.
        let creating = |e: io::Error| (format!("creating {}: {e}", output.display()), false);
        let stdout = std::fs::File::create(&output).map_err(creating)?;
        let stderr = stdout.try_clone().map_err(creating)?;
        let spawned = Command::new(binary)
            .args(turnserver_args(port, &log, &pidfile, &userdb))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(error) => {
                let _ = std::fs::remove_file(&output);
                return Err((format!("starting {}: {error}", binary.display()), false));
            }
        };
        let mut coturn = Coturn { child, addr, files };
        match coturn.wait_ready(deadline) {
            Ok(()) => Ok(coturn),
            Err((error, exited)) => Err((
                format!(
                    "coturn on {addr} did not come up: {error}; its output ends with:\n{}\n\
                     and its log with:\n{}",
                    log_tail(&output, 5),
                    log_tail(&log, 15)
                ),
                exited,
            )),
        }
    }

    /// Where clients send their requests.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Allocates (and frees) a relay endpoint until it works, the process exits (the
    /// error's flag is then true) or `deadline` passes.
    fn wait_ready(&mut self, deadline: Instant) -> Result<(), (String, bool)> {
        let mut last_error = "no answer".to_string();
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err((format!("turnserver exited with {status}"), true));
            }
            match probe_allocation(self.addr) {
                Ok(()) => return Ok(()),
                Err(ProbeError::Fatal(error)) => return Err((error, false)),
                Err(ProbeError::NotYet(error)) => last_error = error,
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err((
            format!("no allocation within {START_TIMEOUT:?} ({last_error})"),
            false,
        ))
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for file in &self.files {
            let _ = std::fs::remove_file(file);
        }
    }
}

/// The arguments `turnserver` runs with: UDP on loopback only, no configuration file, no
/// authentication, no TCP/TLS/DTLS listeners, no CLI, no RFC 5780 second port; log, pid
/// file and (unused) user database at the given paths.
fn turnserver_args(port: u16, log: &Path, pidfile: &Path, userdb: &Path) -> Vec<String> {
    vec![
        "-n".into(),
        "--listening-ip=127.0.0.1".into(),
        "--relay-ip=127.0.0.1".into(),
        format!("--listening-port={port}"),
        format!("--min-port={}", RELAY_PORTS.0),
        format!("--max-port={}", RELAY_PORTS.1),
        "--no-auth".into(),
        "--allow-loopback-peers".into(),
        "--no-tcp".into(),
        "--no-tls".into(),
        "--no-dtls".into(),
        "--no-tcp-relay".into(),
        "--no-cli".into(),
        "--no-rfc5780".into(),
        format!("--log-file={}", log.display()),
        "--simple-log".into(),
        format!("--pidfile={}", pidfile.display()),
        format!("--userdb={}", userdb.display()),
    ]
}

/// `turnserver` on the PATH, else in Debian's location.
fn find_turnserver() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("turnserver"))
            .find(|candidate| candidate.is_file())
    });
    on_path.or_else(|| {
        ["/usr/bin/turnserver", "/usr/local/bin/turnserver"]
            .iter()
            .map(PathBuf::from)
            .find(|candidate| candidate.is_file())
    })
}

/// A UDP port of 127.0.0.1 that was free a moment ago.
fn free_udp_port() -> io::Result<u16> {
    let socket = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(socket.local_addr()?.port())
}

/// The last `lines` lines of a log file, for error messages.
fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Why a readiness probe failed.
enum ProbeError {
    /// The server is not answering yet.
    NotYet(String),
    /// The server answered with a refusal: waiting longer will not help.
    Fatal(String),
}

/// One blocking Allocate against `server`; on success the allocation is freed again with
/// a Refresh of lifetime 0.
fn probe_allocation(server: SocketAddr) -> Result<(), ProbeError> {
    let not_yet = |e: io::Error| ProbeError::NotYet(e.to_string());
    let socket = std::net::UdpSocket::bind(local_bind_addr(server)).map_err(not_yet)?;
    socket.connect(server).map_err(not_yet)?;
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(not_yet)?;
    let tid = transaction_id();
    socket.send(&allocate_request(tid)).map_err(not_yet)?;
    let mut buf = [0u8; 2048];
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(200) {
        let n = socket.recv(&mut buf).map_err(not_yet)?;
        let Some(response) = Stun::parse(&buf[..n]).filter(|m| m.tid == tid) else {
            continue;
        };
        parse_allocate_response(&response).map_err(ProbeError::Fatal)?;
        let _ = socket.send(&refresh_request(transaction_id(), 0));
        let _ = socket.recv(&mut buf);
        return Ok(());
    }
    Err(ProbeError::NotYet("no answer".into()))
}

/// The address a client socket binds to for `server`: loopback for a loopback server,
/// else the unspecified address, of the same family.
fn local_bind_addr(server: SocketAddr) -> SocketAddr {
    let ip = match (server.ip(), server.ip().is_loopback()) {
        (IpAddr::V4(_), true) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        (IpAddr::V4(_), false) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        (IpAddr::V6(_), true) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        (IpAddr::V6(_), false) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    SocketAddr::new(ip, 0)
}

/// Requests waiting for their response, by transaction id: whichever task reads the
/// response from the socket (the requester itself or a concurrent [`TurnClient::recv`])
/// hands it over.
#[derive(Default)]
struct Pending(Mutex<Vec<(Tid, oneshot::Sender<Vec<u8>>)>>);

impl Pending {
    fn lock(&self) -> MutexGuard<'_, Vec<(Tid, oneshot::Sender<Vec<u8>>)>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// If `datagram` is a response to a pending request, hands it over and returns true.
    fn route(&self, datagram: &[u8]) -> bool {
        let Some(message) = Stun::parse(datagram) else {
            return false;
        };
        if message.msg_type & SUCCESS == 0 {
            return false; // a request or an indication
        }
        let mut pending = self.lock();
        match pending.iter().position(|(tid, _)| *tid == message.tid) {
            Some(index) => {
                let (_, sender) = pending.swap_remove(index);
                let _ = sender.send(datagram.to_vec());
                true
            }
            None => false,
        }
    }
}

/// A TURN allocation on a server, held by one UDP socket connected to that server.
///
/// `send` and `recv` take `&self`, so one task can send while another receives (share
/// the client in an `Arc`). Datagrams that arrive while `bind_channel` waits for its
/// answers and no `recv` is running are dropped: bind channels before sending.
pub struct TurnClient {
    socket: UdpSocket,
    relayed: SocketAddr,
    next_channel: AtomicU16,
    pending: Pending,
}

impl TurnClient {
    /// Binds a UDP socket and allocates a UDP relay endpoint on `server` (no credentials;
    /// a server that demands them answers 401, returned as an error).
    pub async fn allocate(server: SocketAddr) -> Result<TurnClient, String> {
        let socket = UdpSocket::bind(local_bind_addr(server))
            .await
            .map_err(|e| format!("binding a UDP socket: {e}"))?;
        socket
            .connect(server)
            .await
            .map_err(|e| format!("connecting to {server}: {e}"))?;
        let pending = Pending::default();
        let tid = transaction_id();
        let response = transact(&socket, &pending, &allocate_request(tid), tid, "Allocate").await?;
        let relayed = match Stun::parse(&response) {
            Some(message) => parse_allocate_response(&message)?,
            None => return Err("Allocate: unparsable response".into()),
        };
        Ok(TurnClient {
            socket,
            relayed,
            next_channel: AtomicU16::new(CHANNELS.start),
            pending,
        })
    }

    /// The relayed transport address: where peers (other allocations) send to reach
    /// this client.
    pub fn relayed_addr(&self) -> SocketAddr {
        self.relayed
    }

    /// Permission + ChannelBind towards a peer's relayed address; returns the channel
    /// number to pass to [`TurnClient::send`].
    pub async fn bind_channel(&self, peer_relayed: SocketAddr) -> Result<u16, String> {
        let channel = self.next_channel.fetch_add(1, Ordering::Relaxed);
        if !CHANNELS.contains(&channel) {
            return Err("no channel numbers left on this allocation".into());
        }
        self.create_permission(peer_relayed).await?;
        let tid = transaction_id();
        let request = StunBuilder::new(CHANNEL_BIND, tid)
            .attribute(ATTR_CHANNEL_NUMBER, &channel_number_value(channel))
            .xor_address(ATTR_XOR_PEER_ADDRESS, peer_relayed)
            .finish();
        let response = transact(&self.socket, &self.pending, &request, tid, "ChannelBind").await?;
        expect_success(&response, CHANNEL_BIND, "ChannelBind")?;
        Ok(channel)
    }

    /// Installs a permission for the peer's IP address: its datagrams are then relayed to
    /// this client, as Data indications until a channel is bound.
    async fn create_permission(&self, peer: SocketAddr) -> Result<(), String> {
        let tid = transaction_id();
        let request = StunBuilder::new(CREATE_PERMISSION, tid)
            .xor_address(ATTR_XOR_PEER_ADDRESS, peer)
            .finish();
        let response = transact(
            &self.socket,
            &self.pending,
            &request,
            tid,
            "CreatePermission",
        )
        .await?;
        expect_success(&response, CREATE_PERMISSION, "CreatePermission")
    }

    /// Sends one ChannelData message (padded to a multiple of 4 bytes).
    pub async fn send(&self, channel: u16, payload: &[u8]) -> io::Result<()> {
        let mut stack = [0u8; 1504];
        let mut heap = Vec::new();
        let frame_len = channel_data_len(payload.len());
        let out: &mut [u8] = if frame_len <= stack.len() {
            &mut stack[..]
        } else {
            heap.resize(frame_len, 0);
            &mut heap[..]
        };
        let len = encode_channel_data(channel, payload, out).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "payload too large for one ChannelData message",
            )
        })?;
        self.socket.send(&out[..len]).await.map(|_| ())
    }

    /// Receives one relayed message (ChannelData or Data indication) and returns the
    /// payload length, written at the start of `buf`. `buf` must hold the whole datagram
    /// (payload and 4 bytes of ChannelData header, or about 40 bytes of Data indication
    /// header); a datagram that fills `buf` and cannot be decoded is an `InvalidData`
    /// error. STUN responses are handed to the request waiting for them; anything else is
    /// skipped.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let n = self.socket.recv(buf).await?;
            let datagram = &buf[..n];
            if let Some(payload) = relayed_payload(datagram) {
                let len = payload.len();
                buf.copy_within(payload, 0);
                return Ok(len);
            }
            if self.pending.route(datagram) {
                continue;
            }
            if n == buf.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "a datagram filled the whole receive buffer and may have been cut",
                ));
            }
        }
    }
}

impl Drop for TurnClient {
    /// Frees the allocation (best effort, no answer awaited) so the relay port returns to
    /// coturn's pool at once instead of after the lifetime.
    fn drop(&mut self) {
        let _ = self.socket.try_send(&refresh_request(transaction_id(), 0));
    }
}

/// Sends `request` and waits for the response with its transaction id, retransmitting on
/// silence. Responses to other pending requests are handed over; other datagrams dropped.
async fn transact(
    socket: &UdpSocket,
    pending: &Pending,
    request: &[u8],
    tid: Tid,
    what: &str,
) -> Result<Vec<u8>, String> {
    let (sender, mut answer) = oneshot::channel();
    pending.lock().push((tid, sender));
    let result = async {
        let mut buf = vec![0u8; 4096];
        for wait in RETRANSMIT {
            socket
                .send(request)
                .await
                .map_err(|e| format!("{what}: sending: {e}"))?;
            let deadline = tokio::time::sleep(wait);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    handed = &mut answer => {
                        return handed.map_err(|_| format!("{what}: request dropped"));
                    }
                    received = socket.recv(&mut buf) => {
                        let n = received.map_err(|e| format!("{what}: receiving: {e}"))?;
                        let datagram = &buf[..n];
                        if Stun::parse(datagram).is_some_and(|m| m.tid == tid) {
                            return Ok(datagram.to_vec());
                        }
                        pending.route(datagram);
                    }
                    () = &mut deadline => break,
                }
            }
        }
        Err(format!("{what}: no answer from the TURN server"))
    }
    .await;
    pending
        .lock()
        .retain(|(pending_tid, _)| *pending_tid != tid);
    result
}

/// An Allocate request for a UDP relay.
fn allocate_request(tid: Tid) -> Vec<u8> {
    StunBuilder::new(ALLOCATE, tid)
        .attribute(ATTR_REQUESTED_TRANSPORT, &[PROTOCOL_UDP, 0, 0, 0])
        .finish()
}

/// A Refresh request (lifetime 0 deletes the allocation).
fn refresh_request(tid: Tid, lifetime_secs: u32) -> Vec<u8> {
    StunBuilder::new(REFRESH, tid)
        .attribute(ATTR_LIFETIME, &lifetime_secs.to_be_bytes())
        .finish()
}

/// CHANNEL-NUMBER's value: the number and 2 reserved bytes.
fn channel_number_value(channel: u16) -> [u8; 4] {
    let [high, low] = channel.to_be_bytes();
    [high, low, 0, 0]
}

/// The relayed address of a successful Allocate response, or the error it reports.
fn parse_allocate_response(message: &Stun<'_>) -> Result<SocketAddr, String> {
    check_response(message, ALLOCATE, "Allocate")?;
    message
        .attribute(ATTR_XOR_RELAYED_ADDRESS)
        .and_then(|value| decode_xor_address(value, &message.tid))
        .ok_or_else(|| "Allocate: success without a valid XOR-RELAYED-ADDRESS".to_string())
}

/// Ok if `response` parses as a success response of `method`.
fn expect_success(response: &[u8], method: u16, what: &str) -> Result<(), String> {
    match Stun::parse(response) {
        Some(message) => check_response(&message, method, what),
        None => Err(format!("{what}: unparsable response")),
    }
}

/// Ok for a success response of `method`; the error code and reason for an error one.
fn check_response(message: &Stun<'_>, method: u16, what: &str) -> Result<(), String> {
    if message.msg_type == method | SUCCESS {
        return Ok(());
    }
    if message.msg_type != method | ERROR {
        return Err(format!(
            "{what}: unexpected message type {:#06x} in response",
            message.msg_type
        ));
    }
    let (code, reason) = message
        .attribute(ATTR_ERROR_CODE)
        .and_then(decode_error_code)
        .unwrap_or((0, String::from("no ERROR-CODE")));
    let hint = if code == 401 {
        " (the server wants long-term credentials, which this client does not do: run \
         coturn with --no-auth)"
    } else {
        ""
    };
    Err(format!("{what}: error {code} {reason}{hint}"))
}

/// ERROR-CODE's value: 2 reserved bytes, class (hundreds), number, UTF-8 reason.
fn decode_error_code(value: &[u8]) -> Option<(u16, String)> {
    let head = value.get(..4)?;
    let code = u16::from(head[2] & 0x07) * 100 + u16::from(head[3]);
    Some((code, String::from_utf8_lossy(&value[4..]).into_owned()))
}

/// A fresh, unpredictable-enough transaction id: a per-process counter and the clock,
/// mixed by SipHash under std's randomly seeded keys. Unique ids matter here, secrecy
/// does not (loopback benchmark).
fn transaction_id() -> Tid {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    let first = hasher.finish();
    hasher.write_u8(0x5a);
    let second = hasher.finish();
    let mut tid = [0u8; TID_LEN];
    tid[..8].copy_from_slice(&first.to_be_bytes());
    tid[8..].copy_from_slice(&second.to_be_bytes()[..4]);
    tid
}

/// `n` rounded up to a multiple of 4.
fn padded(n: usize) -> usize {
    (n + 3) & !3
}

/// A STUN message read from a datagram (never panics on malformed input: parsing returns
/// `None` and attribute iteration stops at the first malformed attribute).
struct Stun<'a> {
    msg_type: u16,
    tid: Tid,
    /// The datagram up to the end of the message's attributes.
    message: &'a [u8],
}

impl<'a> Stun<'a> {
    /// Parses the header: top two bits zero, length a multiple of 4 within the datagram,
    /// the magic cookie.
    fn parse(datagram: &'a [u8]) -> Option<Stun<'a>> {
        let header = datagram.get(..HEADER_LEN)?;
        if header[0] & 0xC0 != 0 || header[4..8] != MAGIC_COOKIE.to_be_bytes() {
            return None;
        }
        let length = usize::from(u16::from_be_bytes([header[2], header[3]]));
        if length & 3 != 0 {
            return None;
        }
        let message = datagram.get(..HEADER_LEN + length)?;
        let mut tid = [0u8; TID_LEN];
        tid.copy_from_slice(&header[8..HEADER_LEN]);
        Some(Stun {
            msg_type: u16::from_be_bytes([header[0], header[1]]),
            tid,
            message,
        })
    }

    /// (type, value range in the datagram) of each attribute, in order.
    fn attributes(&self) -> impl Iterator<Item = (u16, Range<usize>)> + 'a {
        let message = self.message;
        let mut at = HEADER_LEN;
        std::iter::from_fn(move || {
            let head = message.get(at..at + 4)?;
            let kind = u16::from_be_bytes([head[0], head[1]]);
            let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
            let value = at + 4..at + 4 + len;
            if value.end > message.len() {
                at = message.len();
                return None;
            }
            at = (at + 4 + padded(len)).min(message.len());
            Some((kind, value))
        })
    }

    /// The value of the first attribute of type `kind`.
    fn attribute(&self, kind: u16) -> Option<&'a [u8]> {
        let message = self.message;
        self.attributes()
            .find(|(k, _)| *k == kind)
            .and_then(|(_, range)| message.get(range))
    }
}

/// Writes a STUN message.
struct StunBuilder {
    buf: Vec<u8>,
    tid: Tid,
}

impl StunBuilder {
    fn new(msg_type: u16, tid: Tid) -> StunBuilder {
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(&msg_type.to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        buf.extend_from_slice(&tid);
        StunBuilder { buf, tid }
    }

    /// Appends an attribute, zero-padded to 4 bytes. Values are cut at 65532 bytes (every
    /// caller here passes a few bytes).
    fn attribute(mut self, kind: u16, value: &[u8]) -> StunBuilder {
        let value = &value[..value.len().min(0xFFFC)];
        let len = u16::try_from(value.len()).unwrap_or(0xFFFC);
        self.buf.extend_from_slice(&kind.to_be_bytes());
        self.buf.extend_from_slice(&len.to_be_bytes());
        self.buf.extend_from_slice(value);
        self.buf
            .resize(HEADER_LEN + padded(self.buf.len() - HEADER_LEN), 0);
        self
    }

    /// Appends an XOR-…-ADDRESS attribute.
    fn xor_address(self, kind: u16, addr: SocketAddr) -> StunBuilder {
        let value = encode_xor_address(addr, &self.tid);
        self.attribute(kind, &value)
    }

    /// Sets the length field and returns the message.
    fn finish(mut self) -> Vec<u8> {
        let length = u16::try_from(self.buf.len() - HEADER_LEN).unwrap_or(u16::MAX);
        self.buf[2..4].copy_from_slice(&length.to_be_bytes());
        self.buf
    }
}

/// The XOR mask of an IPv6 address: magic cookie then transaction id.
fn xor_mask(tid: &Tid) -> [u8; 16] {
    let mut mask = [0u8; 16];
    mask[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    mask[4..].copy_from_slice(tid);
    mask
}

/// An XOR-MAPPED-ADDRESS-style value (RFC 8489 section 14.2): reserved byte, family,
/// port XOR the cookie's high half, address XOR the cookie (and transaction id for IPv6).
fn encode_xor_address(addr: SocketAddr, tid: &Tid) -> Vec<u8> {
    let port = addr.port() ^ (MAGIC_COOKIE >> 16) as u16;
    let mut value = vec![0u8];
    match addr.ip() {
        IpAddr::V4(ip) => {
            value.push(0x01);
            value.extend_from_slice(&port.to_be_bytes());
            value.extend_from_slice(&(u32::from(ip) ^ MAGIC_COOKIE).to_be_bytes());
        }
        IpAddr::V6(ip) => {
            value.push(0x02);
            value.extend_from_slice(&port.to_be_bytes());
            let mask = xor_mask(tid);
            value.extend(ip.octets().iter().zip(mask).map(|(byte, m)| byte ^ m));
        }
    }
    value
}

/// Decodes an XOR-…-ADDRESS value; `None` if malformed.
fn decode_xor_address(value: &[u8], tid: &Tid) -> Option<SocketAddr> {
    let head = value.get(..4)?;
    let port = u16::from_be_bytes([head[2], head[3]]) ^ (MAGIC_COOKIE >> 16) as u16;
    let ip = match head[1] {
        0x01 => {
            let raw: [u8; 4] = value.get(4..8)?.try_into().ok()?;
            IpAddr::V4(Ipv4Addr::from(u32::from_be_bytes(raw) ^ MAGIC_COOKIE))
        }
        0x02 => {
            let raw: [u8; 16] = value.get(4..20)?.try_into().ok()?;
            let mask = xor_mask(tid);
            let mut octets = [0u8; 16];
            for (out, (byte, m)) in octets.iter_mut().zip(raw.iter().zip(mask)) {
                *out = byte ^ m;
            }
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// The size of a padded ChannelData message carrying `payload_len` bytes.
fn channel_data_len(payload_len: usize) -> usize {
    CHANNEL_HEADER_LEN + padded(payload_len)
}

/// Writes a ChannelData message (RFC 8656 section 12.4) into `out`, zero-padded to a
/// multiple of 4 bytes; returns its length, or `None` if the payload is over 65535 bytes
/// or `out` is too small.
fn encode_channel_data(channel: u16, payload: &[u8], out: &mut [u8]) -> Option<usize> {
    let len = u16::try_from(payload.len()).ok()?;
    let total = channel_data_len(payload.len());
    let frame = out.get_mut(..total)?;
    frame[..2].copy_from_slice(&channel.to_be_bytes());
    frame[2..4].copy_from_slice(&len.to_be_bytes());
    let (body, padding) = frame[CHANNEL_HEADER_LEN..].split_at_mut(payload.len());
    body.copy_from_slice(payload);
    padding.fill(0);
    Some(total)
}

/// The channel number and payload range of a ChannelData message, padded or not;
/// `None` if `datagram` is not one (channel outside 0x4000..=0x4FFF, or shorter than
/// its length field says).
fn decode_channel_data(datagram: &[u8]) -> Option<(u16, Range<usize>)> {
    let head = datagram.get(..CHANNEL_HEADER_LEN)?;
    let channel = u16::from_be_bytes([head[0], head[1]]);
    if !CHANNELS.contains(&channel) {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
    let payload = CHANNEL_HEADER_LEN..CHANNEL_HEADER_LEN + len;
    (payload.end <= datagram.len()).then_some((channel, payload))
}

/// Where the relayed payload sits in a datagram from the server: the body of a
/// ChannelData message, or the DATA attribute of a Data indication.
fn relayed_payload(datagram: &[u8]) -> Option<Range<usize>> {
    match datagram.first()? >> 6 {
        0b01 => decode_channel_data(datagram).map(|(_, payload)| payload),
        0b00 => {
            let message = Stun::parse(datagram)?;
            if message.msg_type != DATA_INDICATION {
                return None;
            }
            message
                .attributes()
                .find(|(kind, _)| *kind == ATTR_DATA)
                .map(|(_, range)| range)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// RFC 5769 section 2.1: sample request (SOFTWARE, PRIORITY, ICE-CONTROLLED,
    /// USERNAME padded with spaces, MESSAGE-INTEGRITY, FINGERPRINT).
    const RFC5769_REQUEST: [u8; 108] = [
        0x00, 0x01, 0x00, 0x58, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6,
        0x86, 0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x10, 0x53, 0x54, 0x55, 0x4e, 0x20, 0x74,
        0x65, 0x73, 0x74, 0x20, 0x63, 0x6c, 0x69, 0x65, 0x6e, 0x74, 0x00, 0x24, 0x00, 0x04, 0x6e,
        0x00, 0x01, 0xff, 0x80, 0x29, 0x00, 0x08, 0x93, 0x2f, 0xf9, 0xb1, 0x51, 0x26, 0x3b, 0x36,
        0x00, 0x06, 0x00, 0x09, 0x65, 0x76, 0x74, 0x6a, 0x3a, 0x68, 0x36, 0x76, 0x59, 0x20, 0x20,
        0x20, 0x00, 0x08, 0x00, 0x14, 0x9a, 0xea, 0xa7, 0x0c, 0xbf, 0xd8, 0xcb, 0x56, 0x78, 0x1e,
        0xf2, 0xb5, 0xb2, 0xd3, 0xf2, 0x49, 0xc1, 0xb5, 0x71, 0xa2, 0x80, 0x28, 0x00, 0x04, 0xe5,
        0x7a, 0x3b, 0xcf,
    ];

    /// RFC 5769 section 2.2: sample IPv4 response.
    const RFC5769_IPV4_RESPONSE: [u8; 80] = [
        0x01, 0x01, 0x00, 0x3c, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6,
        0x86, 0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76,
        0x65, 0x63, 0x74, 0x6f, 0x72, 0x20, 0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xa1, 0x47, 0xe1,
        0x12, 0xa6, 0x43, 0x00, 0x08, 0x00, 0x14, 0x2b, 0x91, 0xf5, 0x99, 0xfd, 0x9e, 0x90, 0xc3,
        0x8c, 0x74, 0x89, 0xf9, 0x2a, 0xf9, 0xba, 0x53, 0xf0, 0x6b, 0xe7, 0xd7, 0x80, 0x28, 0x00,
        0x04, 0xc0, 0x7d, 0x4c, 0x96,
    ];

    /// RFC 5769 section 2.3: sample IPv6 response.
    const RFC5769_IPV6_RESPONSE: [u8; 92] = [
        0x01, 0x01, 0x00, 0x48, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6,
        0x86, 0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76,
        0x65, 0x63, 0x74, 0x6f, 0x72, 0x20, 0x00, 0x20, 0x00, 0x14, 0x00, 0x02, 0xa1, 0x47, 0x01,
        0x13, 0xa9, 0xfa, 0xa5, 0xd3, 0xf1, 0x79, 0xbc, 0x25, 0xf4, 0xb5, 0xbe, 0xd2, 0xb9, 0xd9,
        0x00, 0x08, 0x00, 0x14, 0xa3, 0x82, 0x95, 0x4e, 0x4b, 0xe6, 0x7b, 0xf1, 0x17, 0x84, 0xc9,
        0x7c, 0x82, 0x92, 0xc2, 0x75, 0xbf, 0xe3, 0xed, 0x41, 0x80, 0x28, 0x00, 0x04, 0xc8, 0xfb,
        0x0b, 0x4c,
    ];

    const ATTR_SOFTWARE: u16 = 0x8022;
    const ATTR_USERNAME: u16 = 0x0006;
    const ATTR_FINGERPRINT: u16 = 0x8028;

    /// CRC-32 (ISO HDLC), to check the vectors' FINGERPRINT: it proves the vectors here
    /// are byte-exact copies of RFC 5769's.
    fn crc32(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &byte in data {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    /// Checks a vector's FINGERPRINT (RFC 8489 section 14.7): the CRC-32 of the message
    /// up to the attribute, XOR 0x5354554e.
    fn assert_fingerprint(datagram: &[u8]) {
        let message = Stun::parse(datagram).expect("parses");
        let (_, range) = message
            .attributes()
            .find(|(kind, _)| *kind == ATTR_FINGERPRINT)
            .expect("FINGERPRINT");
        let stored = u32::from_be_bytes(datagram[range.clone()].try_into().expect("4 bytes"));
        assert_eq!(crc32(&datagram[..range.start - 4]) ^ 0x5354_554e, stored);
    }

    fn rfc5769_tid() -> Tid {
        RFC5769_IPV4_RESPONSE[8..20].try_into().expect("12 bytes")
    }

    #[test]
    fn turn_rfc5769_request_parses() {
        assert_fingerprint(&RFC5769_REQUEST);
        let message = Stun::parse(&RFC5769_REQUEST).expect("parses");
        assert_eq!(message.msg_type, 0x0001);
        assert_eq!(message.tid, rfc5769_tid());
        assert_eq!(
            message.attribute(ATTR_SOFTWARE),
            Some(&b"STUN test client"[..])
        );
        // USERNAME is 9 bytes followed by 3 bytes of (non-zero) padding.
        assert_eq!(message.attribute(ATTR_USERNAME), Some(&b"evtj:h6vY"[..]));
        let kinds: Vec<u16> = message.attributes().map(|(kind, _)| kind).collect();
        assert_eq!(kinds, [0x8022, 0x0024, 0x8029, 0x0006, 0x0008, 0x8028]);
    }

    #[test]
    fn turn_rfc5769_xor_mapped_address_ipv4() {
        assert_fingerprint(&RFC5769_IPV4_RESPONSE);
        let message = Stun::parse(&RFC5769_IPV4_RESPONSE).expect("parses");
        assert_eq!(message.msg_type, 0x0101);
        assert_eq!(message.attribute(ATTR_SOFTWARE), Some(&b"test vector"[..]));
        let value = message
            .attribute(ATTR_XOR_MAPPED_ADDRESS)
            .expect("attribute");
        let expected: SocketAddr = "192.0.2.1:32853".parse().expect("address");
        assert_eq!(decode_xor_address(value, &message.tid), Some(expected));
        assert_eq!(encode_xor_address(expected, &message.tid), value);
    }

    #[test]
    fn turn_rfc5769_xor_mapped_address_ipv6() {
        assert_fingerprint(&RFC5769_IPV6_RESPONSE);
        let message = Stun::parse(&RFC5769_IPV6_RESPONSE).expect("parses");
        let value = message
            .attribute(ATTR_XOR_MAPPED_ADDRESS)
            .expect("attribute");
        let expected: SocketAddr = "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
            .parse()
            .expect("address");
        assert_eq!(decode_xor_address(value, &message.tid), Some(expected));
        assert_eq!(encode_xor_address(expected, &message.tid), value);
    }

    #[test]
    fn turn_requests_encode_and_decode() {
        let tid = transaction_id();
        let request = allocate_request(tid);
        assert_eq!(
            request,
            [
                &[0x00, 0x03, 0x00, 0x08, 0x21, 0x12, 0xa4, 0x42][..],
                &tid,
                &[0x00, 0x19, 0x00, 0x04, 17, 0, 0, 0],
            ]
            .concat()
        );
        let peer: SocketAddr = "127.0.0.1:61234".parse().expect("address");
        let bind = StunBuilder::new(CHANNEL_BIND, tid)
            .attribute(ATTR_CHANNEL_NUMBER, &channel_number_value(0x4001))
            .xor_address(ATTR_XOR_PEER_ADDRESS, peer)
            .finish();
        assert_eq!(bind.len(), HEADER_LEN + 8 + 12);
        let message = Stun::parse(&bind).expect("parses");
        assert_eq!(message.msg_type, CHANNEL_BIND);
        assert_eq!(message.tid, tid);
        assert_eq!(
            message.attribute(ATTR_CHANNEL_NUMBER),
            Some(&[0x40, 0x01, 0, 0][..])
        );
        let value = message.attribute(ATTR_XOR_PEER_ADDRESS).expect("attribute");
        assert_eq!(decode_xor_address(value, &tid), Some(peer));
        // Odd-length attribute values are zero-padded.
        let odd = StunBuilder::new(REFRESH, tid)
            .attribute(0x8022, b"abcde")
            .finish();
        assert_eq!(odd.len(), HEADER_LEN + 4 + 8);
        assert_eq!(&odd[HEADER_LEN + 4..], b"abcde\0\0\0");
        assert_eq!(
            Stun::parse(&odd).expect("parses").attribute(0x8022),
            Some(&b"abcde"[..])
        );
        assert_ne!(transaction_id(), transaction_id());
    }

    #[test]
    fn turn_responses_and_errors() {
        let tid = transaction_id();
        let relayed: SocketAddr = "127.0.0.1:61001".parse().expect("address");
        let success = StunBuilder::new(ALLOCATE | SUCCESS, tid)
            .xor_address(ATTR_XOR_RELAYED_ADDRESS, relayed)
            .attribute(ATTR_LIFETIME, &600u32.to_be_bytes())
            .finish();
        let message = Stun::parse(&success).expect("parses");
        assert_eq!(parse_allocate_response(&message), Ok(relayed));
        let unauthorized = StunBuilder::new(ALLOCATE | ERROR, tid)
            .attribute(ATTR_ERROR_CODE, b"\0\0\x04\x01Unauthorized")
            .finish();
        let error =
            parse_allocate_response(&Stun::parse(&unauthorized).expect("parses")).expect_err("401");
        assert!(error.contains("error 401 Unauthorized"), "{error}");
        let ok = StunBuilder::new(CHANNEL_BIND | SUCCESS, tid).finish();
        assert_eq!(expect_success(&ok, CHANNEL_BIND, "ChannelBind"), Ok(()));
        assert!(expect_success(&ok, CREATE_PERMISSION, "CreatePermission").is_err());
        assert_eq!(ALLOCATE | SUCCESS, 0x0103);
        assert_eq!(CHANNEL_BIND | ERROR, 0x0119);
    }

    #[test]
    fn turn_malformed_input_never_panics() {
        let tid = transaction_id();
        let good = StunBuilder::new(DATA_INDICATION, tid)
            .xor_address(
                ATTR_XOR_PEER_ADDRESS,
                "127.0.0.1:9".parse().expect("address"),
            )
            .attribute(ATTR_DATA, b"hello")
            .finish();
        // Every truncation and every single-byte corruption of a valid message.
        for end in 0..=good.len() {
            let cut = &good[..end];
            let _ = relayed_payload(cut);
            if let Some(message) = Stun::parse(cut) {
                for (_, range) in message.attributes() {
                    assert!(range.end <= cut.len());
                }
            }
        }
        for index in 0..good.len() {
            for byte in [0x00, 0x01, 0x40, 0x7f, 0x80, 0xff] {
                let mut bad = good.clone();
                bad[index] = byte;
                let _ = relayed_payload(&bad);
                if let Some(message) = Stun::parse(&bad) {
                    let _ = message.attributes().count();
                    let _ = message.attribute(ATTR_DATA);
                }
            }
        }
        // An attribute claiming more than the message holds ends iteration.
        let mut overlong = StunBuilder::new(DATA_INDICATION, tid)
            .attribute(ATTR_DATA, b"abcd")
            .finish();
        overlong[HEADER_LEN + 3] = 0xff;
        assert_eq!(relayed_payload(&overlong), None);
        for value in [
            &[][..],
            &[0, 1, 0],
            &[0, 3, 0, 0, 1, 2, 3, 4],
            &[0, 2, 0, 0, 1],
        ] {
            assert_eq!(decode_xor_address(value, &tid), None);
        }
        assert_eq!(decode_error_code(&[0, 0, 4]), None);
        assert!(Stun::parse(&[0u8; 19]).is_none());
    }

    #[test]
    fn turn_channel_data_framing() {
        let mut out = [0u8; 16];
        let len = encode_channel_data(0x4000, b"hello", &mut out).expect("fits");
        assert_eq!(len, 12);
        assert_eq!(&out[..len], b"\x40\x00\x00\x05hello\0\0\0");
        assert_eq!(decode_channel_data(&out[..len]), Some((0x4000, 4..9)));
        // Unpadded (allowed over UDP) decodes too.
        assert_eq!(decode_channel_data(&out[..9]), Some((0x4000, 4..9)));
        assert_eq!(relayed_payload(&out[..9]), Some(4..9));
        // Truncated, or a channel number out of range: not ChannelData.
        assert_eq!(decode_channel_data(&out[..8]), None);
        assert_eq!(decode_channel_data(b"\x50\x00\x00\x00"), None);
        assert_eq!(decode_channel_data(b"\x40\x00"), None);
        // Empty payload and multiple-of-4 payloads have no padding.
        assert_eq!(encode_channel_data(0x4fff, b"", &mut out), Some(4));
        assert_eq!(decode_channel_data(&out[..4]), Some((0x4fff, 4..4)));
        assert_eq!(encode_channel_data(0x4001, b"abcd", &mut out), Some(8));
        // Too small an output buffer, or too large a payload.
        assert_eq!(encode_channel_data(0x4000, &[0; 13], &mut out), None);
        let mut big = vec![0u8; 70_000];
        assert_eq!(encode_channel_data(0x4000, &[0; 65_536], &mut big), None);
        assert_eq!(channel_data_len(65_535), 65_540);
    }

    #[test]
    fn turn_data_indication_payload() {
        let tid = transaction_id();
        let indication = StunBuilder::new(DATA_INDICATION, tid)
            .xor_address(
                ATTR_XOR_PEER_ADDRESS,
                "127.0.0.1:61002".parse().expect("address"),
            )
            .attribute(ATTR_DATA, b"payload")
            .finish();
        let range = relayed_payload(&indication).expect("Data indication");
        assert_eq!(&indication[range], b"payload");
        // Other STUN messages carry no relayed payload.
        let response = StunBuilder::new(CHANNEL_BIND | SUCCESS, tid)
            .attribute(ATTR_DATA, b"x")
            .finish();
        assert_eq!(relayed_payload(&response), None);
    }

    /// Whether the integration test can run: turnserver present, or a loud skip (a
    /// failure under CI=true).
    fn coturn_or_skip() -> Option<Coturn> {
        if find_turnserver().is_none() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true but coturn is not installed (apt-get install coturn)"
            );
            eprintln!(
                "\n!!! SKIPPING the coturn integration test: turnserver is not installed \
                 (apt-get install coturn) !!!\n"
            );
            return None;
        }
        Some(Coturn::start().expect("coturn starts"))
    }

    async fn recv_timeout(client: &TurnClient, buf: &mut [u8]) -> Vec<u8> {
        let n = tokio::time::timeout(Duration::from_secs(5), client.recv(buf))
            .await
            .expect("a relayed message within 5 s")
            .expect("recv");
        buf[..n].to_vec()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn turn_coturn_relays_both_ways() {
        let Some(coturn) = coturn_or_skip() else {
            return;
        };
        let a = Arc::new(
            TurnClient::allocate(coturn.addr())
                .await
                .expect("allocate A"),
        );
        let b = Arc::new(
            TurnClient::allocate(coturn.addr())
                .await
                .expect("allocate B"),
        );
        assert_ne!(a.relayed_addr(), b.relayed_addr());
        assert!(a.relayed_addr().ip().is_loopback());

        // B has a permission for A but no channel yet: A's message arrives as a Data
        // indication.
        let a_to_b = a.bind_channel(b.relayed_addr()).await.expect("bind A->B");
        b.create_permission(a.relayed_addr())
            .await
            .expect("permission B");
        let mut buf = vec![0u8; 65_536];
        a.send(a_to_b, b"via data indication").await.expect("send");
        assert_eq!(recv_timeout(&b, &mut buf).await, b"via data indication");

        // B binds its channel while a receiver task runs: the ChannelBind answer is
        // handed over by recv.
        let receiver = {
            let b = Arc::clone(&b);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 2048];
                recv_timeout(&b, &mut buf).await
            })
        };
        let b_to_a = b.bind_channel(a.relayed_addr()).await.expect("bind B->A");
        assert_ne!(b_to_a, 0);
        a.send(a_to_b, b"hello B").await.expect("send");
        assert_eq!(receiver.await.expect("join"), b"hello B");
        b.send(b_to_a, b"hello A, odd").await.expect("send");
        assert_eq!(recv_timeout(&a, &mut buf).await, b"hello A, odd");
        let large = vec![0x5a; 1200];
        b.send(b_to_a, &large).await.expect("send");
        assert_eq!(recv_timeout(&a, &mut buf).await, large);

        // Rough figures (informational, printed): round trips one at a time, then a
        // one-way stream of 64 B messages with at most 256 in flight, for 1 s each.
        let payload = [7u8; 64];
        let started = Instant::now();
        let mut round_trips = 0u32;
        while started.elapsed() < Duration::from_secs(1) {
            a.send(a_to_b, &payload).await.expect("send");
            recv_timeout(&b, &mut buf).await;
            b.send(b_to_a, &payload).await.expect("send");
            recv_timeout(&a, &mut buf).await;
            round_trips += 1;
        }
        let rtt_us = started.elapsed().as_micros() / u128::from(round_trips);

        let received = Arc::new(AtomicU64::new(0));
        let counter = {
            let (b, received) = (Arc::clone(&b), Arc::clone(&received));
            tokio::spawn(async move {
                let mut buf = vec![0u8; 2048];
                while let Ok(Ok(_)) =
                    tokio::time::timeout(Duration::from_millis(300), b.recv(&mut buf)).await
                {
                    received.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        let started = Instant::now();
        let mut sent = 0u64;
        while started.elapsed() < Duration::from_secs(1) {
            if sent - received.load(Ordering::Relaxed) >= 256 {
                tokio::task::yield_now().await;
                continue;
            }
            a.send(a_to_b, &payload).await.expect("send");
            sent += 1;
        }
        let elapsed = started.elapsed().as_secs_f64();
        counter.await.expect("join");
        let received = received.load(Ordering::Relaxed);
        eprintln!(
            "coturn relay: RTT {rtt_us} us ({round_trips} round trips); 64 B one way, \
             window 256: sent {sent}, received {received} ({:.0}/s)",
            received as f64 / elapsed
        );
        assert!(received > 0);
    }

    #[test]
    fn turn_command_line() {
        let args = turnserver_args(
            3478,
            Path::new("/tmp/c.log"),
            Path::new("/tmp/c.pid"),
            Path::new("/tmp/c.db"),
        );
        assert!(args.contains(&"--log-file=/tmp/c.log".to_string()));
        assert!(args.contains(&"--no-auth".to_string()));
        assert!(args.contains(&"--allow-loopback-peers".to_string()));
    }
}

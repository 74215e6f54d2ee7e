//! What the subcommands share: server flags, connecting, the rooms request/reply
//! exchange, exit codes and the process clock.

use peergroup_client::{
    Client, ClientConfig, ClientEvent, ClientEvents, Delivery, HostId, Path, ServerTrust, Target,
    TransportChoice,
};
use peergroup_protocol::rooms::{RoomsReply, RoomsRequest};
use peergroup_protocol::{datagram_to_bytes, decode_body};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Exit status of a run that failed for a reason other than the ones below (connection
/// failed or lost, bad input).
pub const EXIT_FAILURE: u8 = 1;
/// Exit status when the rooms application refused the request (wrong password, full
/// room, invalid name).
pub const EXIT_REFUSED: u8 = 2;
/// Exit status of `probe` when a check failed (loss, duplicates or reordering where they
/// must not happen, too few peers).
pub const EXIT_CHECK_FAILED: u8 = 3;

/// How long a rooms request may wait for its reply.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a subcommand stopped unsuccessfully: the exit status and a line for stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The process exit status.
    pub code: u8,
    /// What went wrong, for people.
    pub message: String,
}

impl Failure {
    /// A failure with [`EXIT_FAILURE`].
    pub fn new(message: impl Into<String>) -> Self {
        Self::with_code(EXIT_FAILURE, message)
    }

    /// A failure with a given exit status.
    pub fn with_code(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// The flags every subcommand takes to reach the server.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// The server's UDP address, HOST:PORT (`peergroup-server` prints it as
    /// "listening on ADDR ...").
    #[arg(long, value_name = "ADDR")]
    pub server: String,

    /// The server's certificate (PEM or DER) to pin; `peergroup-server` prints its path
    /// ("... cert PATH").
    #[arg(long, value_name = "PATH")]
    pub server_cert: PathBuf,

    /// The carrier to the server: `auto` (QUIC, and WebSocket over TLS if QUIC has not
    /// answered within 250 ms), `quic` or `websocket`.
    #[arg(long, value_name = "KIND", default_value = "auto")]
    pub transport: TransportArg,

    /// The server's WebSocket address, HOST:PORT (TCP). Default: --server's address
    /// (the server listens on the same port number over TCP by default).
    #[arg(long, value_name = "ADDR")]
    pub websocket: Option<String>,
}

/// `--transport`'s values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TransportArg {
    /// QUIC first, WebSocket over TLS in parallel 250 ms later.
    Auto,
    /// QUIC only.
    Quic,
    /// WebSocket over TLS only.
    Websocket,
}

static PROCESS_START: OnceLock<Instant> = OnceLock::new();

/// The instant the process started (the first call); `at_ms` counts from it.
pub fn process_start() -> Instant {
    *PROCESS_START.get_or_init(Instant::now)
}

/// Milliseconds since [`process_start`].
pub fn ms_since_start() -> u64 {
    u64::try_from(process_start().elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Lowercase name of a path, as printed and as in probe JSON.
pub fn path_name(path: Path) -> &'static str {
    match path {
        Path::Relay => "relay",
        Path::Direct => "direct",
        Path::Loopback => "loopback",
        _ => "unknown",
    }
}

/// The default display name and login: `user-<pid>`.
pub fn default_name() -> String {
    format!("user-{}", std::process::id())
}

/// Resolves the server address, pins its certificate and connects with `login` as the
/// login payload.
///
/// # Errors
/// A [`Failure`] with [`EXIT_FAILURE`] saying what failed.
pub async fn connect(args: &ServerArgs, login: &str) -> Result<(Client, ClientEvents), Failure> {
    let addr = tokio::net::lookup_host(args.server.as_str())
        .await
        .map_err(|e| Failure::new(format!("cannot resolve --server {}: {e}", args.server)))?
        .next()
        .ok_or_else(|| Failure::new(format!("--server {} resolves to nothing", args.server)))?;
    let trust = ServerTrust::from_cert_file(&args.server_cert)
        .map_err(|e| Failure::new(format!("--server-cert: {e}")))?;
    let mut config = ClientConfig::new(addr, trust);
    config.login = login.to_owned().into_bytes().into();
    config.transport = match args.transport {
        TransportArg::Auto => TransportChoice::Auto,
        TransportArg::Quic => TransportChoice::QuicOnly,
        TransportArg::Websocket => TransportChoice::WebSocketOnly,
    };
    if let Some(websocket) = &args.websocket {
        let addr = tokio::net::lookup_host(websocket.as_str())
            .await
            .map_err(|e| Failure::new(format!("cannot resolve --websocket {websocket}: {e}")))?
            .next()
            .ok_or_else(|| Failure::new(format!("--websocket {websocket} resolves to nothing")))?;
        config.websocket_addr = Some(addr);
    }
    let (client, events) = Client::connect(config)
        .await
        .map_err(|e| Failure::new(format!("cannot connect to {addr}: {e}")))?;
    tracing::info!(host = %client.host_id(), %addr, transport = %client.transport(), "connected");
    Ok((client, events))
}

/// Sends one rooms request to the server and waits (at most [`REPLY_TIMEOUT`]) for the
/// reply `accept` takes. Every other event that arrives meanwhile is pushed to `backlog`
/// in order, for the caller to handle afterwards.
///
/// `accept` returns `Some` for the reply it waits for and `None` for a reply to ignore
/// (logged).
///
/// # Errors
/// A [`Failure`] when the send fails, the connection ends or no reply comes in time.
pub async fn request<T>(
    client: &Client,
    events: &mut ClientEvents,
    request: &RoomsRequest,
    backlog: &mut Vec<ClientEvent>,
    mut accept: impl FnMut(RoomsReply) -> Option<T>,
) -> Result<T, Failure> {
    let bytes = datagram_to_bytes(request)
        .map_err(|e| Failure::new(format!("cannot encode the rooms request: {e}")))?;
    // The send waits while the upload queue is full, so it counts against the same
    // deadline as the answer: a client whose queue never drains gets a clear failure,
    // not a hang (a probe once waited here for over ten minutes after an overload).
    let deadline = tokio::time::Instant::now() + REPLY_TIMEOUT;
    tokio::time::timeout_at(
        deadline,
        client.send(Target::Server, bytes, Delivery::ReliableOrdered),
    )
    .await
    .map_err(|_| {
        Failure::new(format!(
            "the rooms request could not be queued within {REPLY_TIMEOUT:?}"
        ))
    })?
    .map_err(|e| Failure::new(format!("cannot send the rooms request: {e}")))?;
    loop {
        let event = tokio::time::timeout_at(deadline, events.next())
            .await
            .map_err(|_| {
                Failure::new(format!(
                    "no answer from the rooms application within {REPLY_TIMEOUT:?}"
                ))
            })?;
        match event {
            None => return Err(Failure::new("disconnected")),
            Some(ClientEvent::Disconnected { reason }) => {
                return Err(Failure::new(format!("disconnected: {reason}")))
            }
            Some(ClientEvent::Message {
                from,
                group: None,
                payload,
                ..
            }) if from == HostId::SERVER => match decode_body::<RoomsReply>(&payload) {
                Ok(reply) => {
                    let shown = format!("{reply:?}");
                    match accept(reply) {
                        Some(value) => return Ok(value),
                        None => tracing::debug!(reply = %shown, "ignoring a rooms reply"),
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, len = payload.len(), "undecodable message from the server")
                }
            },
            Some(ClientEvent::SendFailed {
                to,
                group: None,
                reason,
            }) if to == HostId::SERVER => {
                return Err(Failure::new(format!(
                    "the server refused the rooms request: {reason:?}"
                )))
            }
            Some(other) => backlog.push(other),
        }
    }
}

/// A room this client is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinedRoom {
    /// The room's group.
    pub group: peergroup_client::GroupId,
    /// Display names of the members when the reply was made, this client included.
    pub members: Vec<(HostId, String)>,
}

/// Joins `room` as `name`.
///
/// # Errors
/// [`EXIT_REFUSED`] with the server's reason when the rooms application refuses;
/// otherwise as [`request`].
pub async fn join(
    client: &Client,
    events: &mut ClientEvents,
    room: &str,
    password: Option<&str>,
    name: &str,
    backlog: &mut Vec<ClientEvent>,
) -> Result<JoinedRoom, Failure> {
    let req = RoomsRequest::Join {
        room: room.to_owned(),
        password: password.map(str::to_owned),
        name: name.to_owned(),
    };
    let reply = request(client, events, &req, backlog, |reply| match reply {
        RoomsReply::Joined {
            room: joined,
            group,
            members,
        } if joined == room => Some(Ok(JoinedRoom { group, members })),
        RoomsReply::Refused {
            room: refused,
            reason,
        } if refused == room || refused.is_empty() => Some(Err(reason)),
        _ => None,
    })
    .await?;
    reply.map_err(|reason| Failure::with_code(EXIT_REFUSED, format!("room {room:?}: {reason}")))
}

/// Leaves `room` and waits for the answer, so everything sent before has reached the
/// server (the request travels behind it on the same ordered stream). Problems are only
/// logged: this runs on the way out.
pub async fn leave(client: &Client, events: &mut ClientEvents, room: &str) {
    let req = RoomsRequest::Leave {
        room: room.to_owned(),
    };
    let mut ignored = Vec::new();
    let result = request(client, events, &req, &mut ignored, |reply| match reply {
        RoomsReply::Left { room: left } if left == room => Some(Ok(())),
        RoomsReply::Refused {
            room: refused,
            reason,
        } if refused == room => Some(Err(reason)),
        _ => None,
    })
    .await;
    match result {
        Ok(Ok(())) => tracing::debug!(room, "left the room"),
        Ok(Err(reason)) => tracing::warn!(room, %reason, "leaving the room was refused"),
        Err(failure) => tracing::warn!(room, error = %failure.message, "leaving the room failed"),
    }
}

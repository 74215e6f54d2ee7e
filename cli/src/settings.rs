//! The `peergroup-server` configuration: a TOML file (`--config PATH`) covering every
//! server option and the rooms application's, command-line flags over it, and defaults
//! under both. `--print-config` prints the result ([`Settings::to_toml`]), which is itself
//! a valid configuration file.
//!
//! Durations are seconds (`*_secs`, fractions allowed), sizes bytes. Unknown keys are
//! errors, so a misspelt option fails at start instead of being ignored. Errors name the
//! file, the line and column, and the reason (`toml`'s spans, TOML 1.0).

use crate::rooms::RoomsConfig;
use peergroup_server::{
    Admission, Limits, PunchConfig, PunchStart, ResumeConfig, Timeouts, WebSocketListen,
};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the identity lives when nothing says.
pub const DEFAULT_IDENTITY_DIR: &str = "./peergroup-identity";
/// Default UDP listen address.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:7700";
/// Default drain deadline of a graceful shutdown, seconds.
pub const DEFAULT_DRAIN_SECS: f64 = 10.0;

/// `websocket`'s default: the WebSocket fallback on the `listen` address, over TCP.
pub const WEBSOCKET_SAME_PORT: &str = "same-port";

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (tracing-subscriber's `fmt`). The default.
    #[default]
    Text,
    /// One JSON object per line, for log shippers (Vector, Fluent Bit, Loki's promtail).
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("unknown log format {other:?} (text or json)")),
        }
    }
}

/// A duration in seconds, as the file writes it (`10`, `0.5`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Secs(pub Duration);

impl Serialize for Secs {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_f64(self.0.as_secs_f64())
    }
}

impl<'de> Deserialize<'de> for Secs {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Number {
            Int(i64),
            Float(f64),
        }
        let secs = match Number::deserialize(deserializer)? {
            Number::Int(i) => i as f64,
            Number::Float(f) => f,
        };
        Duration::try_from_secs_f64(secs).map(Secs).map_err(|_| {
            serde::de::Error::custom(format!(
                "{secs} is not a duration in seconds (a number, 0 or more)"
            ))
        })
    }
}

/// The whole configuration, every field resolved. Its TOML form is the configuration
/// file's format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// UDP address the server listens on. Default `0.0.0.0:7700`.
    pub listen: SocketAddr,
    /// Directory with `cert.pem` and `key.pem`, created on first run. Default
    /// `./peergroup-identity`; ignored when `cert` and `key` are given.
    pub identity_dir: PathBuf,
    /// PEM certificate chain, leaf first (with `key`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// `tracing` filter, e.g. `info` or `peergroup_server=debug`. Default: `RUST_LOG`,
    /// else `info`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
    /// Log line format. Default `text`.
    pub log_format: LogFormat,
    /// How long a graceful shutdown (SIGTERM, SIGINT) may take to send what is queued
    /// before closing the remaining connections, seconds. Default 10.
    pub drain_secs: Secs,
    /// The WebSocket-over-TLS fallback for clients without UDP (TCP): `"same-port"`
    /// (the `listen` address over TCP), `"off"`, or an address. Default `"same-port"`.
    pub websocket: String,
    /// TCP address of the Prometheus endpoint (`/metrics`). Off unless given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<SocketAddr>,
    /// TCP address of the admin HTTP API and status page. Off unless given; needs
    /// `admin_token_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin: Option<SocketAddr>,
    /// File holding the admin API's bearer token (surrounding whitespace ignored).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_token_file: Option<PathBuf>,
    /// Size limits ([`Limits`]).
    pub limits: LimitsSettings,
    /// Timeouts ([`Timeouts`]).
    pub timeouts: TimeoutsSettings,
    /// Hole-punching policy ([`PunchConfig`]).
    pub punch: PunchSettings,
    /// Connections before login ([`Admission`]).
    pub admission: AdmissionSettings,
    /// Session resume ([`ResumeConfig`]).
    pub resume: ResumeSettings,
    /// The rooms application ([`RoomsConfig`]).
    pub rooms: RoomsSettings,
}

/// [`Limits`] as the file writes them; see there for each field's meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSettings {
    /// Connected clients at most. Default 10,000.
    pub max_clients: usize,
    /// Largest message payload, bytes. Default 1 MiB.
    pub max_message_len: u32,
    /// Soft limit of each client's send queue, bytes. Default 8 MiB.
    pub client_queue_bytes: usize,
    /// Client messages to the server application held unread. Default 4,096.
    pub app_message_queue: usize,
    /// Lifecycle events held unread before admission stops. Default 65,536.
    pub app_event_queue: usize,
    /// Largest host data, bytes. Default 1 KiB.
    pub max_host_data_len: usize,
    /// Largest group data, bytes. Default 4 KiB.
    pub max_group_data_len: usize,
    /// Membership notices a client may leave unacknowledged. Default 65,536.
    pub max_unacked_notices: u64,
    /// Datagram deliveries one client may cause a second. Default 16,384.
    pub datagram_deliveries_per_sec: u32,
    /// Bytes a logged-in client may send ahead of what the server has read. Default 1 MiB.
    pub client_receive_window: u32,
}

impl Default for LimitsSettings {
    fn default() -> Self {
        let l = Limits::default();
        Self {
            max_clients: l.max_clients,
            max_message_len: l.max_message_len,
            client_queue_bytes: l.client_queue_bytes,
            app_message_queue: l.app_message_queue,
            app_event_queue: l.app_event_queue,
            max_host_data_len: l.max_host_data_len,
            max_group_data_len: l.max_group_data_len,
            max_unacked_notices: l.max_unacked_notices,
            datagram_deliveries_per_sec: l.datagram_deliveries_per_sec,
            client_receive_window: l.client_receive_window,
        }
    }
}

impl From<LimitsSettings> for Limits {
    fn from(s: LimitsSettings) -> Self {
        Limits {
            max_clients: s.max_clients,
            max_message_len: s.max_message_len,
            client_queue_bytes: s.client_queue_bytes,
            app_message_queue: s.app_message_queue,
            app_event_queue: s.app_event_queue,
            max_host_data_len: s.max_host_data_len,
            max_group_data_len: s.max_group_data_len,
            max_unacked_notices: s.max_unacked_notices,
            datagram_deliveries_per_sec: s.datagram_deliveries_per_sec,
            client_receive_window: s.client_receive_window,
        }
    }
}

/// [`Timeouts`] in seconds; see there for each.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutsSettings {
    /// QUIC idle timeout (RFC 9000 section 10.1). Default 10.
    pub idle_secs: Secs,
    /// TLS handshake, hello and auth together. Default 10.
    pub handshake_secs: Secs,
    /// How long a backlogged receiver may take to drain. Default 3.
    pub slow_consumer_secs: Secs,
    /// How long a join or leave waits for its acks. Default 15.
    pub ack_secs: Secs,
    /// How long a pair outlives its last shared group. Default 10.
    pub pair_linger_secs: Secs,
}

impl Default for TimeoutsSettings {
    fn default() -> Self {
        let t = Timeouts::default();
        Self {
            idle_secs: Secs(t.idle),
            handshake_secs: Secs(t.handshake),
            slow_consumer_secs: Secs(t.slow_consumer),
            ack_secs: Secs(t.ack),
            pair_linger_secs: Secs(t.pair_linger),
        }
    }
}

impl From<TimeoutsSettings> for Timeouts {
    fn from(s: TimeoutsSettings) -> Self {
        Timeouts {
            idle: s.idle_secs.0,
            handshake: s.handshake_secs.0,
            slow_consumer: s.slow_consumer_secs.0,
            ack: s.ack_secs.0,
            pair_linger: s.pair_linger_secs.0,
        }
    }
}

/// When pairs punch ([`PunchStart`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PunchStartSetting {
    /// As soon as two hosts share a group that allows direct paths. The default.
    Always,
    /// On the first message between them (ProudNet's just-in-time punching).
    OnFirstMessage,
}

/// [`PunchConfig`] as the file writes it; see there for each.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PunchSettings {
    /// `always` (default) or `on_first_message`.
    pub start: PunchStartSetting,
    /// Wait before the first retry of a failed punch, seconds. Default 60.
    pub first_retry_secs: Secs,
    /// Failed attempts in a row at most. Default 4.
    pub max_attempts: u32,
    /// Wait before punching again after a direct path died, seconds. Default 5.
    pub after_direct_lost_secs: Secs,
    /// Punch orders one host may be sent in a burst. Default 128.
    pub order_burst: u32,
    /// One more punch order per this many seconds, up to the burst. Default 0.1.
    pub order_refill_secs: Secs,
    /// How long a pair must have lasted before it punches, seconds. Default 0.
    pub min_pair_age_secs: Secs,
}

impl Default for PunchSettings {
    fn default() -> Self {
        let p = PunchConfig::default();
        Self {
            start: match p.start {
                PunchStart::OnFirstMessage => PunchStartSetting::OnFirstMessage,
                PunchStart::Always => PunchStartSetting::Always,
            },
            first_retry_secs: Secs(p.first_retry),
            max_attempts: p.max_attempts,
            after_direct_lost_secs: Secs(p.after_direct_lost),
            order_burst: p.order_burst,
            order_refill_secs: Secs(p.order_refill),
            min_pair_age_secs: Secs(p.min_pair_age),
        }
    }
}

impl From<PunchSettings> for PunchConfig {
    fn from(s: PunchSettings) -> Self {
        PunchConfig {
            start: match s.start {
                PunchStartSetting::Always => PunchStart::Always,
                PunchStartSetting::OnFirstMessage => PunchStart::OnFirstMessage,
            },
            first_retry: s.first_retry_secs.0,
            max_attempts: s.max_attempts,
            after_direct_lost: s.after_direct_lost_secs.0,
            order_burst: s.order_burst,
            order_refill: s.order_refill_secs.0,
            min_pair_age: s.min_pair_age_secs.0,
        }
    }
}

/// [`Admission`] as the file writes it; see there for each.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdmissionSettings {
    /// Connections logging in at once at most; more are refused. Default 256.
    pub max_handshakes: usize,
    /// Connections logging in at once from one address (IPv6: one /64). Default 64.
    pub max_handshakes_per_source: usize,
    /// Logged-in clients from one address (IPv6: one /64). Default 1,024.
    pub max_clients_per_source: usize,
    /// Connections logging in past which new ones must validate their address (QUIC
    /// Retry). Default 64.
    pub validate_above: usize,
    /// Largest hello, bytes. Default 16,384.
    pub max_hello_len: u32,
    /// Seconds from a connection's first packet to its whole hello. Default 5.
    pub hello_timeout_secs: Secs,
}

impl Default for AdmissionSettings {
    fn default() -> Self {
        let a = Admission::default();
        Self {
            max_handshakes: a.max_handshakes,
            max_handshakes_per_source: a.max_handshakes_per_source,
            max_clients_per_source: a.max_clients_per_source,
            validate_above: a.validate_above,
            max_hello_len: a.max_hello_len,
            hello_timeout_secs: Secs(a.hello_timeout),
        }
    }
}

impl From<AdmissionSettings> for Admission {
    fn from(s: AdmissionSettings) -> Self {
        Admission {
            max_handshakes: s.max_handshakes,
            max_handshakes_per_source: s.max_handshakes_per_source,
            max_clients_per_source: s.max_clients_per_source,
            validate_above: s.validate_above,
            max_hello_len: s.max_hello_len,
            hello_timeout: s.hello_timeout_secs.0,
        }
    }
}

/// [`ResumeConfig`] as the file writes it; see there for each.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResumeSettings {
    /// How long a client whose connection was lost is kept for a resume, seconds; 0
    /// turns resume off. Default 30.
    pub window_secs: Secs,
    /// Frames written to a client and not yet confirmed that are kept for a resume, per
    /// client. Default 65,536.
    pub max_unconfirmed_frames: u64,
    /// Bytes of those, per client. Default 8,388,608.
    pub max_unconfirmed_bytes: usize,
}

impl Default for ResumeSettings {
    fn default() -> Self {
        let r = ResumeConfig::default();
        Self {
            window_secs: Secs(r.window),
            max_unconfirmed_frames: r.max_unconfirmed_frames,
            max_unconfirmed_bytes: r.max_unconfirmed_bytes,
        }
    }
}

impl From<ResumeSettings> for ResumeConfig {
    fn from(s: ResumeSettings) -> Self {
        ResumeConfig {
            window: s.window_secs.0,
            max_unconfirmed_frames: s.max_unconfirmed_frames,
            max_unconfirmed_bytes: s.max_unconfirmed_bytes,
        }
    }
}

/// [`RoomsConfig`] as the file writes it; see there for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoomsSettings {
    /// Rooms that may exist at once. Default 10,000.
    pub max_rooms: usize,
    /// Rooms one client may be in. Default 16.
    pub max_rooms_per_client: usize,
    /// Members one room may hold. Default 64.
    pub max_room_members: usize,
    /// Rooms one client may have created that still exist. Default 4.
    pub max_rooms_created_per_client: usize,
    /// Wrong passwords one connection may give before it is disconnected. Default 8.
    pub max_wrong_passwords: u32,
    /// Requests one client may make at once. Default 32.
    pub request_burst: u32,
    /// Requests a second one client may make after its burst. Default 16.
    pub requests_per_sec: u32,
}

impl Default for RoomsSettings {
    fn default() -> Self {
        let r = RoomsConfig::default();
        Self {
            max_rooms: r.max_rooms,
            max_rooms_per_client: r.max_rooms_per_client,
            max_room_members: r.max_room_members,
            max_rooms_created_per_client: r.max_rooms_created_per_client,
            max_wrong_passwords: r.max_wrong_passwords,
            request_burst: r.request_burst,
            requests_per_sec: r.requests_per_sec,
        }
    }
}

impl From<RoomsSettings> for RoomsConfig {
    fn from(s: RoomsSettings) -> Self {
        RoomsConfig {
            max_rooms: s.max_rooms,
            max_rooms_per_client: s.max_rooms_per_client,
            max_room_members: s.max_room_members,
            max_rooms_created_per_client: s.max_rooms_created_per_client,
            max_wrong_passwords: s.max_wrong_passwords,
            request_burst: s.request_burst,
            requests_per_sec: s.requests_per_sec,
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.parse().expect("a valid default address"),
            identity_dir: PathBuf::from(DEFAULT_IDENTITY_DIR),
            cert: None,
            key: None,
            log: None,
            log_format: LogFormat::Text,
            drain_secs: Secs(Duration::from_secs_f64(DEFAULT_DRAIN_SECS)),
            websocket: WEBSOCKET_SAME_PORT.into(),
            metrics: None,
            admin: None,
            admin_token_file: None,
            limits: LimitsSettings::default(),
            timeouts: TimeoutsSettings::default(),
            punch: PunchSettings::default(),
            admission: AdmissionSettings::default(),
            resume: ResumeSettings::default(),
            rooms: RoomsSettings::default(),
        }
    }
}

/// The file's form: every key optional, defaults filled in afterwards.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    listen: Option<SocketAddr>,
    identity_dir: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    log: Option<String>,
    log_format: Option<LogFormat>,
    drain_secs: Option<Secs>,
    websocket: Option<String>,
    metrics: Option<SocketAddr>,
    admin: Option<SocketAddr>,
    admin_token_file: Option<PathBuf>,
    #[serde(default)]
    limits: LimitsSettings,
    #[serde(default)]
    timeouts: TimeoutsSettings,
    #[serde(default)]
    punch: PunchSettings,
    #[serde(default)]
    admission: AdmissionSettings,
    #[serde(default)]
    resume: ResumeSettings,
    #[serde(default)]
    rooms: RoomsSettings,
}

/// What the command line gave; `None` where a flag was not used.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--listen`.
    pub listen: Option<SocketAddr>,
    /// `--identity-dir`.
    pub identity_dir: Option<PathBuf>,
    /// `--cert` (with `--key`).
    pub cert: Option<PathBuf>,
    /// `--key` (with `--cert`).
    pub key: Option<PathBuf>,
    /// `--log`.
    pub log: Option<String>,
    /// `--log-format`.
    pub log_format: Option<LogFormat>,
    /// `--drain-secs`.
    pub drain_secs: Option<f64>,
    /// `--websocket`.
    pub websocket: Option<String>,
    /// `--metrics`.
    pub metrics: Option<SocketAddr>,
    /// `--admin`.
    pub admin: Option<SocketAddr>,
    /// `--admin-token-file`.
    pub admin_token_file: Option<PathBuf>,
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The file could not be read.
    #[error("config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has a bad value.
    #[error("config {path}: line {line}, column {column}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line of the problem.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        reason: String,
    },
    /// The options do not fit together.
    #[error("{0}")]
    Invalid(String),
}

impl Settings {
    /// Reads `path` (if any), applies `overrides` over it and defaults under both, and
    /// checks the result.
    ///
    /// # Errors
    /// [`SettingsError::Read`] when the file cannot be read, [`SettingsError::Parse`] with
    /// its line and column when it is not valid TOML, has an unknown key or a bad value,
    /// [`SettingsError::Invalid`] when options conflict (`cert` without `key`, `admin`
    /// without `admin_token_file`, a negative `--drain-secs`).
    pub fn load(path: Option<&Path>, overrides: Overrides) -> Result<Self, SettingsError> {
        let file = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                Self::parse_file(path, &text)?
            }
            None => FileSettings::default(),
        };
        let defaults = Settings::default();
        // Key and certificate come as a pair: flags giving them replace the file's pair
        // (and its identity directory) as a whole.
        let (cert, key) = if overrides.cert.is_some() || overrides.key.is_some() {
            (overrides.cert, overrides.key)
        } else if overrides.identity_dir.is_some() {
            (None, None)
        } else {
            (file.cert, file.key)
        };
        let drain_secs = match overrides.drain_secs {
            Some(secs) => Secs(Duration::try_from_secs_f64(secs).map_err(|_| {
                SettingsError::Invalid(format!("--drain-secs {secs}: not a duration in seconds"))
            })?),
            None => file.drain_secs.unwrap_or(defaults.drain_secs),
        };
        let settings = Settings {
            listen: overrides.listen.or(file.listen).unwrap_or(defaults.listen),
            identity_dir: overrides
                .identity_dir
                .or(file.identity_dir)
                .unwrap_or(defaults.identity_dir),
            cert,
            key,
            log: overrides.log.or(file.log),
            log_format: overrides.log_format.or(file.log_format).unwrap_or_default(),
            drain_secs,
            websocket: overrides
                .websocket
                .or(file.websocket)
                .unwrap_or(defaults.websocket),
            metrics: overrides.metrics.or(file.metrics),
            admin: overrides.admin.or(file.admin),
            admin_token_file: overrides.admin_token_file.or(file.admin_token_file),
            limits: file.limits,
            timeouts: file.timeouts,
            punch: file.punch,
            admission: file.admission,
            resume: file.resume,
            rooms: file.rooms,
        };
        settings.check()?;
        Ok(settings)
    }

    fn parse_file(path: &Path, text: &str) -> Result<FileSettings, SettingsError> {
        toml::from_str(text).map_err(|error| {
            let (line, column) = error
                .span()
                .map(|span| line_and_column(text, span.start))
                .unwrap_or((1, 1));
            SettingsError::Parse {
                path: path.to_owned(),
                line,
                column,
                reason: error.message().trim().to_owned(),
            }
        })
    }

    fn check(&self) -> Result<(), SettingsError> {
        if self.cert.is_some() != self.key.is_some() {
            return Err(SettingsError::Invalid(
                "cert and key go together: give both or neither".into(),
            ));
        }
        self.websocket()?;
        if self.admin.is_some() && self.admin_token_file.is_none() {
            return Err(SettingsError::Invalid(
                "the admin API needs a token: give --admin-token-file (admin_token_file)".into(),
            ));
        }
        Ok(())
    }

    /// The configuration as a TOML document, every default written out: what
    /// `--print-config` prints, and a valid `--config` file.
    pub fn to_toml(&self) -> String {
        let body =
            toml::to_string(self).unwrap_or_else(|error| format!("# cannot print: {error}\n"));
        // Options that are off have no value to print; name them, so the output shows
        // every option there is.
        let off: Vec<&str> = [
            (
                self.cert.is_none(),
                "cert = \"PATH\" (with key; else identity_dir)",
            ),
            (self.key.is_none(), "key = \"PATH\""),
            (
                self.log.is_none(),
                "log = \"FILTER\" (default: RUST_LOG, else info)",
            ),
            (
                self.metrics.is_none(),
                "metrics = \"ADDR\" (Prometheus /metrics; off)",
            ),
            (
                self.admin.is_none(),
                "admin = \"ADDR\" (admin API and status page; off)",
            ),
            (
                self.admin_token_file.is_none(),
                "admin_token_file = \"PATH\"",
            ),
        ]
        .into_iter()
        .filter_map(|(unset, line)| unset.then_some(line))
        .collect();
        if off.is_empty() {
            return body;
        }
        let mut out = String::from("# peergroup-server configuration. Not set:\n");
        for line in off {
            out.push_str("#   ");
            out.push_str(line);
            out.push('\n');
        }
        out + &body
    }

    /// The server library's limits.
    pub fn limits(&self) -> Limits {
        self.limits.into()
    }

    /// The server library's timeouts.
    pub fn timeouts(&self) -> Timeouts {
        self.timeouts.into()
    }

    /// The server library's punch policy.
    pub fn punch(&self) -> PunchConfig {
        self.punch.into()
    }

    /// The server library's limits before login.
    pub fn admission(&self) -> Admission {
        self.admission.into()
    }

    /// The server library's session resume.
    pub fn resume(&self) -> ResumeConfig {
        self.resume.into()
    }

    /// Where the WebSocket fallback listens.
    ///
    /// # Errors
    /// [`SettingsError::Invalid`] when `websocket` is neither `same-port`, `off` nor an
    /// address.
    pub fn websocket(&self) -> Result<WebSocketListen, SettingsError> {
        match self.websocket.as_str() {
            WEBSOCKET_SAME_PORT => Ok(WebSocketListen::SamePort),
            "off" => Ok(WebSocketListen::Off),
            addr => addr.parse().map(WebSocketListen::At).map_err(|_| {
                SettingsError::Invalid(format!(
                    "websocket = {addr:?}: give \"same-port\", \"off\" or HOST:PORT"
                ))
            }),
        }
    }

    /// The rooms application's limits.
    pub fn rooms(&self) -> RoomsConfig {
        self.rooms.into()
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> tempfile_lite::TempFile {
        tempfile_lite::TempFile::with(text)
    }

    /// A file removed on drop (no extra crate for one test helper).
    mod tempfile_lite {
        use std::path::PathBuf;
        use std::sync::atomic::{AtomicU32, Ordering};

        pub struct TempFile(pub PathBuf);

        impl TempFile {
            pub fn with(text: &str) -> Self {
                static NEXT: AtomicU32 = AtomicU32::new(0);
                let path = std::env::temp_dir().join(format!(
                    "peergroup-settings-{}-{}.toml",
                    std::process::id(),
                    NEXT.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::write(&path, text).expect("writing the test config");
                TempFile(path)
            }
        }

        impl Drop for TempFile {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn defaults_print_as_a_file_that_loads_back_the_same() {
        let defaults = Settings::load(None, Overrides::default()).unwrap();
        assert_eq!(defaults, Settings::default());
        let printed = defaults.to_toml();
        for key in [
            "#   admin = \"ADDR\"",
            "listen = \"0.0.0.0:7700\"",
            "drain_secs = 10.0",
            "websocket = \"same-port\"",
            "[limits]",
            "max_clients = 10000",
            "[timeouts]",
            "ack_secs = 15.0",
            "[punch]",
            "start = \"always\"",
            "[rooms]",
            "max_room_members = 64",
            "max_wrong_passwords = 8",
        ] {
            assert!(printed.contains(key), "{key:?} missing in:\n{printed}");
        }
        let f = file(&printed);
        assert_eq!(
            Settings::load(Some(&f.0), Overrides::default()).unwrap(),
            defaults
        );
    }

    #[test]
    fn flags_override_the_file() {
        let f = file(
            "listen = \"127.0.0.1:9000\"\nadmin = \"127.0.0.1:9001\"\nadmin_token_file = \"t\"\n\
             drain_secs = 2.5\n[rooms]\nmax_room_members = 8\n[timeouts]\nack_secs = 1\n",
        );
        let s = Settings::load(Some(&f.0), Overrides::default()).unwrap();
        assert_eq!(s.listen, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(s.drain_secs.0, Duration::from_millis(2500));
        assert_eq!(s.rooms().max_room_members, 8);
        assert_eq!(s.rooms().max_rooms, RoomsConfig::default().max_rooms);
        assert_eq!(s.timeouts().ack, Duration::from_secs(1));
        let s = Settings::load(
            Some(&f.0),
            Overrides {
                listen: Some("127.0.0.1:7000".parse().unwrap()),
                drain_secs: Some(0.0),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(s.listen, "127.0.0.1:7000".parse().unwrap());
        assert_eq!(s.drain_secs.0, Duration::ZERO);
        assert_eq!(s.admin, Some("127.0.0.1:9001".parse().unwrap()));
    }

    #[test]
    fn a_bad_file_names_the_line_and_the_reason() {
        let f = file("listen = \"127.0.0.1:7700\"\n\n[limits]\nmax_clients = \"many\"\n");
        let error = Settings::load(Some(&f.0), Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(error.contains(&f.0.display().to_string()), "{error}");
        assert!(error.contains("line 4, column 15"), "{error}");
        assert!(error.contains("invalid type"), "{error}");

        let f = file("listne = \"127.0.0.1:7700\"\n");
        let error = Settings::load(Some(&f.0), Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(error.contains("line 1, column 1"), "{error}");
        assert!(error.contains("unknown field `listne`"), "{error}");

        let f = file("[timeouts]\nidle_secs = -1\n");
        let error = Settings::load(Some(&f.0), Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(error.contains("line 2"), "{error}");
        assert!(error.contains("not a duration"), "{error}");

        let f = file("listen = \"nowhere\"\n");
        let error = Settings::load(Some(&f.0), Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(error.contains("line 1, column 10"), "{error}");

        let unterminated = file("listen = \"127.0.0.1:7700\n");
        let error = Settings::load(Some(&unterminated.0), Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(error.contains("line 1"), "{error}");
    }

    #[test]
    fn conflicting_options_are_refused() {
        let f = file("admin = \"127.0.0.1:9001\"\n");
        let error = Settings::load(Some(&f.0), Overrides::default()).unwrap_err();
        assert!(error.to_string().contains("admin-token-file"), "{error}");
        let f = file("cert = \"c.pem\"\n");
        assert!(Settings::load(Some(&f.0), Overrides::default()).is_err());
        // Flags giving the identity replace the file's.
        let s = Settings::load(
            Some(&f.0),
            Overrides {
                identity_dir: Some("ids".into()),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!((s.cert, s.identity_dir), (None, PathBuf::from("ids")));
    }
}

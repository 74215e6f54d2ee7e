//! `peergroup-server`: the peergroup server running the built-in rooms application
//! ([`peergroup_cli::rooms`]), with its operations surface: a configuration file, a
//! Prometheus endpoint, the admin HTTP API and status page, graceful shutdown and JSON
//! logs. Everything beyond the UDP listener (and the WebSocket fallback on its port) is off
//! unless configured.
//!
//! ```text
//! peergroup-server [--config PATH] [--print-config] [--listen ADDR]
//!                  [--cert PEM --key PEM | --identity-dir DIR]
//!                  [--websocket same-port|off|ADDR]
//!                  [--metrics ADDR] [--admin ADDR --admin-token-file PATH]
//!                  [--drain-secs SECS] [--log LEVEL] [--log-format text|json]
//! ```
//!
//! - `--config PATH`: a TOML file with every option (see [`peergroup_cli::settings`]);
//!   flags override it. A bad file fails at start naming the file, line and reason.
//! - `--print-config`: prints the effective configuration, defaults included, as TOML
//!   (itself a valid `--config` file) and exits.
//! - `--listen ADDR`: UDP address to listen on. Default `0.0.0.0:7700`.
//! - `--cert PEM --key PEM`: the TLS certificate chain (leaf first) and its private key.
//! - `--identity-dir DIR`: loads `DIR/cert.pem` and `DIR/key.pem`, generating a
//!   self-signed identity there on first run so the fingerprint survives restarts.
//!   Default `./peergroup-identity` when `--cert`/`--key` are not given.
//! - `--websocket same-port|off|ADDR`: the WebSocket-over-TLS fallback for clients whose
//!   network blocks UDP (TCP; default `same-port`, the `--listen` address over TCP).
//! - `--metrics ADDR`: serves Prometheus metrics at `http://ADDR/metrics`
//!   ([`peergroup_cli::metrics`]).
//! - `--admin ADDR` with `--admin-token-file PATH`: the admin API under `/v1` and the
//!   status page at `/` ([`peergroup_cli::admin`]), behind the bearer token in the file.
//! - `--drain-secs SECS`: how long a graceful shutdown may take. Default 10.
//! - `--log LEVEL`: a `tracing` filter such as `info` or `peergroup_server=debug`. Without
//!   it `RUST_LOG` is used, and without that `info`. Logs go to stderr.
//! - `--log-format json`: one JSON object per log line, for log shippers.
//!
//! Once listening it prints, to stdout and flushed, for people and for a parent process
//! to read:
//!
//! ```text
//! listening on 0.0.0.0:7700 fingerprint 3f2a…(64 hex digits) cert /abs/path/cert.pem
//! metrics on 127.0.0.1:9100
//! admin on 127.0.0.1:9101
//! ```
//!
//! (the last two only when configured, with the bound addresses, so port 0 works).
//! `cert` names the certificate file clients pass as `--server-cert`; the fingerprint is
//! its SHA-256. SIGTERM or SIGINT (Ctrl-C) shuts down gracefully: new connections are
//! refused, what is queued for each client is sent, each is closed with close code
//! `ServerShutdown` ("server shutting down"), and after at most `--drain-secs` whatever
//! is left is closed at once; a second signal closes at once. Then it exits with status
//! 0. Startup failures exit with status 1.

use clap::Parser;
use peergroup_cli::admin::{self, AdminState};
use peergroup_cli::rooms::{self, RoomNames};
use peergroup_cli::settings::{LogFormat, Overrides, Settings};
use peergroup_cli::{hub, metrics};
use peergroup_server::{AuthHook, CancellationToken, Identity, Server, ServerConfig};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tracing_subscriber::EnvFilter;

/// The peergroup server with the rooms application.
#[derive(Debug, Parser)]
#[command(name = "peergroup-server", version)]
struct Args {
    /// TOML configuration file; flags override it.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,

    /// Print the effective configuration (with defaults) as TOML and exit.
    #[arg(long)]
    print_config: bool,

    /// UDP address to listen on [default: 0.0.0.0:7700].
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,

    /// PEM certificate chain, leaf first (needs --key).
    #[arg(
        long,
        value_name = "PEM",
        requires = "key",
        conflicts_with = "identity_dir"
    )]
    cert: Option<PathBuf>,

    /// PEM private key of the certificate (needs --cert).
    #[arg(
        long,
        value_name = "PEM",
        requires = "cert",
        conflicts_with = "identity_dir"
    )]
    key: Option<PathBuf>,

    /// Directory with cert.pem and key.pem, created on first run
    /// [default: ./peergroup-identity when --cert/--key are not given].
    #[arg(long, value_name = "DIR")]
    identity_dir: Option<PathBuf>,

    /// The WebSocket-over-TLS fallback for clients without UDP: same-port (the --listen
    /// address over TCP), off, or a TCP address [default: same-port].
    #[arg(long, value_name = "same-port|off|ADDR")]
    websocket: Option<String>,

    /// Serve Prometheus metrics at http://ADDR/metrics [default: off].
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,

    /// Serve the admin HTTP API (/v1) and status page (/) on ADDR; needs
    /// --admin-token-file [default: off].
    #[arg(long, value_name = "ADDR")]
    admin: Option<SocketAddr>,

    /// File holding the admin API's bearer token.
    #[arg(long, value_name = "PATH")]
    admin_token_file: Option<PathBuf>,

    /// Seconds a graceful shutdown may take to send what is queued [default: 10].
    #[arg(long, value_name = "SECS")]
    drain_secs: Option<f64>,

    /// Log filter, e.g. `info` or `peergroup_server=debug` [default: RUST_LOG, else info].
    #[arg(long, value_name = "LEVEL")]
    log: Option<String>,

    /// Log line format: text or json [default: text].
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<LogFormat>,
}

impl Args {
    fn overrides(&self) -> Overrides {
        Overrides {
            listen: self.listen,
            identity_dir: self.identity_dir.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            log: self.log.clone(),
            log_format: self.log_format,
            drain_secs: self.drain_secs,
            websocket: self.websocket.clone(),
            metrics: self.metrics,
            admin: self.admin,
            admin_token_file: self.admin_token_file.clone(),
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let settings = match Settings::load(args.config.as_deref(), args.overrides()) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("peergroup-server: {error}");
            return ExitCode::FAILURE;
        }
    };
    if args.print_config {
        print!("{}", settings.to_toml());
        return ExitCode::SUCCESS;
    }
    if let Err(error) = init_logging(settings.log.as_deref(), settings.log_format) {
        eprintln!("peergroup-server: {error}");
        return ExitCode::FAILURE;
    }
    match serve(settings).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "peergroup server failed");
            eprintln!("peergroup-server: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr with the filter `level`, else `RUST_LOG`, else `info`, as text or JSON
/// lines.
fn init_logging(level: Option<&str>, format: LogFormat) -> Result<(), String> {
    let filter = match level {
        Some(level) => {
            EnvFilter::try_new(level).map_err(|e| format!("bad --log filter {level:?}: {e}"))?
        }
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        // One object per line with the event's fields flattened, as log shippers expect.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
    Ok(())
}

async fn serve(settings: Settings) -> Result<(), Box<dyn std::error::Error>> {
    let (identity, cert_path) = load_identity(&settings)?;
    // Read before anything listens, so a missing token fails the start.
    let token = match &settings.admin_token_file {
        Some(path) if settings.admin.is_some() => Some(admin::read_token(path)?),
        _ => None,
    };
    let shutdown = CancellationToken::new();
    // Register the handlers before announcing, so a parent may signal right after reading
    // the line.
    let signals = Signals::new()?;

    let mut config = ServerConfig::new(settings.listen, identity);
    config.limits = settings.limits();
    config.timeouts = settings.timeouts();
    config.punch = settings.punch();
    config.admission = settings.admission();
    config.resume = settings.resume();
    config.websocket = settings.websocket().map_err(|e| e.to_string())?;
    let (server, events) =
        Server::start_with_auth(config, AuthHook::accept_all(), shutdown.clone()).await?;

    let bind = |addr: SocketAddr, what: &'static str| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("{what}: binding {addr}: {e}"))
    };
    let metrics_listener = match settings.metrics {
        Some(addr) => Some(bind(addr, "metrics").await?),
        None => None,
    };
    let admin_listener = match settings.admin {
        Some(addr) => Some(bind(addr, "admin").await?),
        None => None,
    };

    let cert_path = std::fs::canonicalize(&cert_path).unwrap_or(cert_path);
    let mut stdout = std::io::stdout().lock();
    writeln!(
        stdout,
        "listening on {} fingerprint {} cert {}",
        server.local_addr(),
        server.fingerprint(),
        cert_path.display()
    )?;
    if let Some(listener) = &metrics_listener {
        writeln!(stdout, "metrics on {}", listener.local_addr()?)?;
    }
    if let Some(listener) = &admin_listener {
        writeln!(stdout, "admin on {}", listener.local_addr()?)?;
    }
    stdout.flush()?;
    drop(stdout);

    let (control, rooms_inputs) = hub::start(server.clone(), events);
    let names = RoomNames::default();
    if let Some(listener) = metrics_listener {
        let router = metrics::router(server.clone());
        tokio::spawn(serve_http(listener, router, shutdown.clone(), "metrics"));
    }
    if let (Some(listener), Some(token)) = (admin_listener, token) {
        let state = AdminState::new(control.clone(), names.clone(), &token);
        state.sample_history(shutdown.clone());
        tokio::spawn(serve_http(
            listener,
            admin::router(state),
            shutdown.clone(),
            "admin",
        ));
    }

    let drain = Duration::from_secs_f64(settings.drain_secs.0.as_secs_f64());
    let signal_task =
        tokio::spawn(signals.drain_on_signal(server.clone(), drain, shutdown.clone()));
    rooms::run_app(control, rooms_inputs, settings.rooms(), names).await;
    // The rooms application ends once the server has shut down; the drain's report
    // follows.
    let _ = tokio::time::timeout(Duration::from_secs(2), signal_task).await;
    // Let the endpoint put the last close frames on the wire.
    tokio::time::sleep(Duration::from_millis(50)).await;
    tracing::info!("peergroup server stopped");
    Ok(())
}

/// Serves `router` on `listener` until `shutdown`.
async fn serve_http(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    shutdown: CancellationToken,
    what: &'static str,
) {
    if let Err(error) = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
    {
        tracing::error!(%error, what, "HTTP listener failed");
    }
}

/// The identity and the certificate file clients should pin.
fn load_identity(settings: &Settings) -> Result<(Identity, PathBuf), Box<dyn std::error::Error>> {
    if let (Some(cert), Some(key)) = (&settings.cert, &settings.key) {
        let identity = Identity::from_pem_files(cert, key)?;
        return Ok((identity, cert.clone()));
    }
    let dir = settings.identity_dir.clone();
    let existed = dir.join("cert.pem").exists();
    let identity = Identity::load_or_generate(&dir)?;
    if !existed {
        tracing::info!(dir = %dir.display(), "generated a new server identity");
    }
    Ok((identity, dir.join("cert.pem")))
}

/// The shutdown signals, registered up front.
struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    #[cfg(unix)]
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    #[cfg(not(unix))]
    fn new() -> std::io::Result<Self> {
        Ok(Self {})
    }

    /// On Ctrl-C or SIGTERM, shuts `server` down gracefully within `drain`; a second
    /// signal closes everything at once.
    #[cfg(unix)]
    async fn drain_on_signal(
        mut self,
        server: Server,
        drain: Duration,
        shutdown: CancellationToken,
    ) {
        let name = tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
            _ = shutdown.cancelled() => return,
        };
        tracing::info!(
            signal = name,
            drain_secs = drain.as_secs_f64(),
            "shutting down gracefully"
        );
        let draining = server.shutdown_gracefully(drain);
        tokio::pin!(draining);
        let report = tokio::select! {
            report = &mut draining => report,
            _ = self.interrupt.recv() => { server.shutdown(); draining.await }
            _ = self.terminate.recv() => { server.shutdown(); draining.await }
        };
        tracing::info!(
            clients = report.clients,
            cut_off = report.cut_off,
            elapsed_ms = report.elapsed.as_millis() as u64,
            "drained"
        );
    }

    /// On Ctrl-C, shuts `server` down gracefully within `drain`.
    #[cfg(not(unix))]
    async fn drain_on_signal(self, server: Server, drain: Duration, shutdown: CancellationToken) {
        tokio::select! {
            result = tokio::signal::ctrl_c() => {
                if let Err(error) = result {
                    tracing::warn!(%error, "cannot listen for Ctrl-C");
                    return;
                }
            }
            _ = shutdown.cancelled() => return,
        }
        tracing::info!("Ctrl-C: shutting down gracefully");
        let report = server.shutdown_gracefully(drain).await;
        tracing::info!(
            clients = report.clients,
            cut_off = report.cut_off,
            "drained"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use std::path::Path;

    #[test]
    fn cli_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn identity_flags() {
        let args = Args::try_parse_from(["pgs"]).unwrap();
        let settings = Settings::load(None, args.overrides()).unwrap();
        assert_eq!(settings.listen, "0.0.0.0:7700".parse().unwrap());
        assert!(settings.cert.is_none() && settings.key.is_none());
        assert_eq!(settings.identity_dir, Path::new("./peergroup-identity"));
        assert!(Args::try_parse_from(["pgs", "--cert", "c.pem"]).is_err());
        assert!(Args::try_parse_from(["pgs", "--key", "k.pem"]).is_err());
        assert!(Args::try_parse_from([
            "pgs",
            "--cert",
            "c.pem",
            "--key",
            "k.pem",
            "--identity-dir",
            "d"
        ])
        .is_err());
        let args =
            Args::try_parse_from(["pgs", "--cert", "c.pem", "--key", "k.pem", "--log", "debug"])
                .unwrap();
        assert_eq!(args.cert.as_deref(), Some(Path::new("c.pem")));
        assert_eq!(args.log.as_deref(), Some("debug"));
    }

    #[test]
    fn operations_flags() {
        let args = Args::try_parse_from([
            "pgs",
            "--metrics",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--admin-token-file",
            "t",
            "--log-format",
            "json",
            "--drain-secs",
            "2.5",
        ])
        .unwrap();
        let settings = Settings::load(None, args.overrides()).unwrap();
        assert_eq!(settings.log_format, LogFormat::Json);
        assert_eq!(settings.drain_secs.0, Duration::from_millis(2500));
        assert!(settings.metrics.is_some() && settings.admin.is_some());
        assert!(Args::try_parse_from(["pgs", "--log-format", "xml"]).is_err());
        // The admin API without a token is refused.
        let args = Args::try_parse_from(["pgs", "--admin", "127.0.0.1:0"]).unwrap();
        assert!(Settings::load(None, args.overrides()).is_err());
    }
}

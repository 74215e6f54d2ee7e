//! `peergroup-server`: the peergroup server running the built-in rooms application
//! ([`peergroup_cli::rooms`]).
//!
//! ```text
//! peergroup-server [--listen ADDR] [--cert PEM --key PEM | --identity-dir DIR] [--log LEVEL]
//! ```
//!
//! - `--listen ADDR`: UDP address to listen on. Default `0.0.0.0:7700`.
//! - `--cert PEM --key PEM`: the TLS certificate chain (leaf first) and its private key.
//! - `--identity-dir DIR`: loads `DIR/cert.pem` and `DIR/key.pem`, generating a
//!   self-signed identity there on first run so the fingerprint survives restarts.
//!   Default `./peergroup-identity` when `--cert`/`--key` are not given.
//! - `--log LEVEL`: a `tracing` filter such as `info` or `peergroup_server=debug`. Without
//!   it `RUST_LOG` is used, and without that `info`. Logs go to stderr.
//!
//! Once listening it prints one line to stdout and flushes it, for people and for a
//! parent process to read:
//!
//! ```text
//! listening on 0.0.0.0:7700 fingerprint 3f2a…(64 hex digits) cert /abs/path/cert.pem
//! ```
//!
//! `cert` names the certificate file clients pass as `--server-cert`; the fingerprint is
//! its SHA-256. Ctrl-C (SIGINT) or SIGTERM closes every connection with `ServerShutdown`
//! and exits with status 0. Startup failures exit with status 1.

use clap::Parser;
use peergroup_cli::rooms;
use peergroup_server::{AuthHook, CancellationToken, Identity, Server, ServerConfig};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tracing_subscriber::EnvFilter;

/// Where the identity lives when no flag says.
const DEFAULT_IDENTITY_DIR: &str = "./peergroup-identity";

/// How long to wait, after the application stops, for connections to close.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// The peergroup server with the rooms application.
#[derive(Debug, Parser)]
#[command(name = "peergroup-server", version)]
struct Args {
    /// UDP address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:7700")]
    listen: SocketAddr,

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

    /// Log filter, e.g. `info` or `peergroup_server=debug` [default: RUST_LOG, else info].
    #[arg(long, value_name = "LEVEL")]
    log: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(error) = init_logging(args.log.as_deref()) {
        eprintln!("peergroup-server: {error}");
        return ExitCode::FAILURE;
    }
    match serve(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("peergroup-server: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr with the filter from `--log`, else `RUST_LOG`, else `info`.
fn init_logging(level: Option<&str>) -> Result<(), String> {
    let filter = match level {
        Some(level) => {
            EnvFilter::try_new(level).map_err(|e| format!("bad --log filter {level:?}: {e}"))?
        }
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    Ok(())
}

async fn serve(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let (identity, cert_path) = load_identity(&args)?;
    let shutdown = CancellationToken::new();
    // Register the handlers before announcing, so a parent may signal right after reading
    // the line.
    let signals = Signals::new()?;

    let config = ServerConfig::new(args.listen, identity);
    let (server, events) =
        Server::start_with_auth(config, AuthHook::accept_all(), shutdown.clone()).await?;

    let cert_path = std::fs::canonicalize(&cert_path).unwrap_or(cert_path);
    let mut stdout = std::io::stdout().lock();
    writeln!(
        stdout,
        "listening on {} fingerprint {} cert {}",
        server.local_addr(),
        server.fingerprint(),
        cert_path.display()
    )?;
    stdout.flush()?;
    drop(stdout);

    tokio::spawn(signals.cancel_on_signal(shutdown.clone()));
    rooms::run(server.clone(), events).await;
    drain(&server).await;
    tracing::info!("peergroup server stopped");
    Ok(())
}

/// The identity and the certificate file clients should pin.
fn load_identity(args: &Args) -> Result<(Identity, PathBuf), Box<dyn std::error::Error>> {
    if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
        let identity = Identity::from_pem_files(cert, key)?;
        return Ok((identity, cert.clone()));
    }
    let dir = args
        .identity_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_IDENTITY_DIR));
    let existed = dir.join("cert.pem").exists();
    let identity = Identity::load_or_generate(&dir)?;
    if !existed {
        tracing::info!(dir = %dir.display(), "generated a new server identity");
    }
    Ok((identity, dir.join("cert.pem")))
}

/// Gives the connections a moment to close after shutdown, so clients see
/// `ServerShutdown` rather than an idle timeout. The library offers no future for this,
/// so poll its client count, bounded by [`DRAIN_TIMEOUT`].
async fn drain(server: &Server) {
    server.shutdown();
    let waited = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while server.stats().clients > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    if waited.is_err() {
        tracing::warn!(
            clients = server.stats().clients,
            "connections still open after the drain timeout"
        );
    }
    // Let the endpoint put the last close frames on the wire.
    tokio::time::sleep(Duration::from_millis(50)).await;
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

    /// Cancels `shutdown` on Ctrl-C or SIGTERM.
    #[cfg(unix)]
    async fn cancel_on_signal(mut self, shutdown: CancellationToken) {
        let name = tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
            _ = shutdown.cancelled() => return,
        };
        tracing::info!(signal = name, "shutting down");
        shutdown.cancel();
    }

    /// Cancels `shutdown` on Ctrl-C.
    #[cfg(not(unix))]
    async fn cancel_on_signal(self, shutdown: CancellationToken) {
        tokio::select! {
            result = tokio::signal::ctrl_c() => {
                if let Err(error) = result {
                    tracing::warn!(%error, "cannot listen for Ctrl-C");
                    return;
                }
            }
            _ = shutdown.cancelled() => return,
        }
        tracing::info!("Ctrl-C: shutting down");
        shutdown.cancel();
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
        assert_eq!(args.listen, "0.0.0.0:7700".parse().unwrap());
        assert!(args.cert.is_none() && args.key.is_none() && args.identity_dir.is_none());
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
}

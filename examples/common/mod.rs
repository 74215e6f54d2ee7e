//! What every example shares: where its server runs and how its clients find it.
//!
//! By default an example runs its server and its clients in one process on loopback. Split
//! it across processes or machines with `--server-only` (prints the address and the
//! certificate file) on one side and `--connect ADDR --server-cert PATH` on the other.

#![allow(dead_code)] // each example uses part of it

use peergroup::client::{ClientConfig, ServerTrust};
use peergroup::server::{
    AuthHook, CancellationToken, Identity, Server, ServerConfig, ServerEvents,
};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Where the server runs: the flags every example takes.
#[derive(Debug, Clone, clap::Args)]
pub struct Network {
    /// Run only the server; print its address and certificate file, then serve until
    /// Ctrl-C.
    #[arg(long, conflicts_with = "connect")]
    pub server_only: bool,

    /// UDP address the server listens on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,

    /// Run only the clients, against the server at this address.
    #[arg(long, value_name = "ADDR", requires = "server_cert")]
    pub connect: Option<SocketAddr>,

    /// The server's certificate (PEM or DER), as `--server-only` printed it.
    #[arg(long, value_name = "PATH")]
    pub server_cert: Option<PathBuf>,

    /// Where `--server-only` keeps its certificate and key, made on first run and kept,
    /// so clients can pin the same file across restarts [default: a directory named after
    /// the example in the system's temp dir].
    #[arg(long, value_name = "DIR")]
    pub identity_dir: Option<PathBuf>,
}

/// A running example server and what clients need to reach it.
pub struct Hosted {
    pub server: Server,
    pub events: ServerEvents,
    pub addr: SocketAddr,
    /// How its clients recognise it.
    pub trust: ServerTrust,
}

impl Network {
    /// Whether this process runs the server.
    pub fn runs_server(&self) -> bool {
        self.connect.is_none()
    }

    /// Whether this process runs the clients.
    pub fn runs_clients(&self) -> bool {
        !self.server_only
    }

    /// Starts the example's server with `auth`. In one process its clients pin its
    /// fingerprint; with `--server-only` it keeps its identity in `--identity-dir` and
    /// prints the address and the certificate file that clients pin.
    pub async fn start_server(
        &self,
        example: &str,
        auth: AuthHook,
        adjust: impl FnOnce(&mut ServerConfig),
    ) -> Result<Hosted, Box<dyn std::error::Error>> {
        let dir = self
            .identity_dir
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join(format!("peergroup-example-{example}")));
        let identity = if self.server_only {
            Identity::load_or_generate(&dir)?
        } else {
            Identity::generate(&["localhost"])?
        };
        let mut config = ServerConfig::new(self.listen, identity);
        adjust(&mut config);
        let (server, events) =
            Server::start_with_auth(config, auth, CancellationToken::new()).await?;
        let addr = server.local_addr();
        if self.server_only {
            let cert = dir.join("cert.pem");
            println!("listening on {addr} cert {}", cert.display());
            eprintln!(
                "clients: cargo run --release --example {example} -- --connect {addr} \
                 --server-cert {}",
                cert.display()
            );
        }
        let trust = ServerTrust::Fingerprint(server.fingerprint());
        Ok(Hosted {
            server,
            events,
            addr,
            trust,
        })
    }

    /// Where clients connect and how they recognise the server: the in-process server,
    /// or `--connect` with `--server-cert`.
    pub fn target(
        &self,
        hosted: Option<&Hosted>,
    ) -> Result<(SocketAddr, ServerTrust), Box<dyn std::error::Error>> {
        match (hosted, self.connect, &self.server_cert) {
            (Some(hosted), _, _) => Ok((hosted.addr, hosted.trust.clone())),
            (None, Some(addr), Some(cert)) => Ok((addr, ServerTrust::from_cert_file(cert)?)),
            _ => Err("--connect needs --server-cert".into()),
        }
    }
}

/// A client config for the server at `addr`, recognised by `trust`, logging in as `login`.
pub fn client_config(addr: SocketAddr, trust: &ServerTrust, login: &str) -> ClientConfig {
    let mut config = ClientConfig::new(addr, trust.clone());
    config.login = login.to_owned().into();
    config
}

/// Logs warnings and errors to stderr (`RUST_LOG` overrides).
pub fn init_logs() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Waits for Ctrl-C: how a `--server-only` run ends.
pub async fn until_ctrl_c() {
    let _ = tokio::signal::ctrl_c().await;
}

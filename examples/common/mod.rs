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
use std::path::{Path, PathBuf};

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
}

/// A running example server and what clients need to reach it.
pub struct Hosted {
    pub server: Server,
    pub events: ServerEvents,
    pub addr: SocketAddr,
    pub cert: PathBuf,
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

    /// Starts the example's server with `auth`, keeping its identity in a directory of
    /// its own under the system's temp dir, so `--server-only` can tell clients which
    /// certificate to trust.
    pub async fn start_server(
        &self,
        example: &str,
        auth: AuthHook,
        adjust: impl FnOnce(&mut ServerConfig),
    ) -> Result<Hosted, Box<dyn std::error::Error>> {
        let dir = std::env::temp_dir().join(format!("peergroup-example-{example}"));
        let identity = Identity::load_or_generate(&dir)?;
        let mut config = ServerConfig::new(self.listen, identity);
        adjust(&mut config);
        let (server, events) =
            Server::start_with_auth(config, auth, CancellationToken::new()).await?;
        let addr = server.local_addr();
        let cert = dir.join("cert.pem");
        if self.server_only {
            println!("listening on {addr} cert {}", cert.display());
            println!(
                "clients: cargo run --release --example {example} -- --connect {addr} \
                 --server-cert {}",
                cert.display()
            );
        }
        Ok(Hosted {
            server,
            events,
            addr,
            cert,
        })
    }

    /// Where clients connect: the in-process server, or `--connect`.
    pub fn target(&self, hosted: Option<&Hosted>) -> (SocketAddr, PathBuf) {
        match (hosted, self.connect, &self.server_cert) {
            (Some(hosted), _, _) => (hosted.addr, hosted.cert.clone()),
            (None, Some(addr), Some(cert)) => (addr, cert.clone()),
            _ => unreachable!("clap requires --server-cert with --connect"),
        }
    }
}

/// A client config that trusts exactly the certificate in `cert` and logs in as `login`.
pub fn client_config(
    addr: SocketAddr,
    cert: &Path,
    login: &str,
) -> Result<ClientConfig, Box<dyn std::error::Error>> {
    let mut config = ClientConfig::new(addr, ServerTrust::from_cert_file(cert)?);
    config.login = login.to_owned().into();
    Ok(config)
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

//! Shared set-up: an in-process peergroup server on a runtime of its own, and clients.

use peergroup_client::{
    Client, ClientConfig, ClientEvent, ClientEvents, HostId, PairPath, ServerTrust,
};
use peergroup_server::{Identity, Server, ServerConfig};
use std::time::Duration;

/// A server running on its own single-threaded runtime thread, so client work in the
/// bench does not share its scheduler.
pub struct ServerThread {
    /// The handle.
    pub server: Server,
    _runtime: tokio::runtime::Runtime,
}

/// Starts a server on 127.0.0.1 with `adjust` applied to its config.
pub fn server(adjust: impl FnOnce(&mut ServerConfig)) -> Result<ServerThread, String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("bench-server")
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let identity = Identity::generate(&["peergroup"]).map_err(|e| e.to_string())?;
    let mut config = ServerConfig::new("127.0.0.1:0".parse().expect("address"), identity);
    adjust(&mut config);
    // Nobody reads the server's events here: dropping them discards events instead of
    // queueing them.
    let (server, _events) = runtime
        .block_on(Server::start(config))
        .map_err(|e| e.to_string())?;
    Ok(ServerThread {
        server,
        _runtime: runtime,
    })
}

/// Connects a client and waits for `Connected`.
pub async fn client(server: &Server, name: &str) -> Result<(Client, ClientEvents, HostId), String> {
    let mut config = ClientConfig::new(
        server.local_addr(),
        ServerTrust::Fingerprint(server.fingerprint()),
    );
    config.login = name.to_string().into();
    let (client, mut events) = Client::connect(config).await.map_err(|e| e.to_string())?;
    let host = loop {
        match tokio::time::timeout(Duration::from_secs(10), events.next()).await {
            Ok(Some(ClientEvent::Connected { host_id })) => break host_id,
            Ok(Some(_)) => {}
            _ => return Err("no Connected event".into()),
        }
    };
    Ok((client, events, host))
}

/// Waits, up to 10 s each, until both clients of a pair report its direct path.
pub async fn wait_until_direct(
    a_events: &mut ClientEvents,
    b_events: &mut ClientEvents,
) -> Result<(), String> {
    let direct = |e: &ClientEvent| {
        matches!(
            e,
            ClientEvent::PathChanged {
                path: PairPath::Direct,
                ..
            }
        )
        .then_some(())
    };
    let limit = Duration::from_secs(10);
    wait_for(a_events, limit, direct).await?;
    wait_for(b_events, limit, direct).await
}

/// Skips events until `pick` accepts one, for at most `limit`.
pub async fn wait_for<T>(
    events: &mut ClientEvents,
    limit: Duration,
    mut pick: impl FnMut(&ClientEvent) -> Option<T>,
) -> Result<T, String> {
    tokio::time::timeout(limit, async {
        loop {
            match events.next().await {
                Some(event) => {
                    if let Some(found) = pick(&event) {
                        return Ok(found);
                    }
                }
                None => return Err("event stream ended".to_string()),
            }
        }
    })
    .await
    .map_err(|_| "timed out waiting for an event".to_string())?
}

/// A multi-threaded runtime for the clients of a section: one worker thread, and the
/// thread that calls `block_on`, which runs the measuring task.
pub fn client_runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("bench-clients")
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}

/// A runtime that runs every task on the thread that calls `block_on`, so no wake-up
/// crosses threads.
pub fn current_thread_runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}

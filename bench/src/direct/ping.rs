//! The four ping-pongs the direct section compares, each set up once and then driven one
//! round trip at a time ([`Pinger::ping`]), so the section can take them in turn; and the
//! bare quinn pair on loopback they and the rate runs use.

use crate::setup;
use bytes::Bytes;
use peergroup_client::{
    Client, ClientEvent, ClientEvents, Delivery, HostId, Path as MessagePath, Target,
};
use peergroup_server::{GroupOptions, Server};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The ping-pongs' payload, and the rate runs' message size, bytes.
pub(super) const PAYLOAD: usize = 64;

/// One frame of the quinn ping-pongs: a 4-byte length prefix and the payload.
type Frame = [u8; 4 + PAYLOAD];

/// One path's ping-pong, set up and echoing.
pub(super) enum Pinger {
    /// Raw UDP on loopback.
    Udp {
        socket: tokio::net::UdpSocket,
        echo: JoinHandle<()>,
    },
    /// One bidirectional quinn stream with length-prefixed frames.
    Quinn {
        connection: quinn::Connection,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
        echo: JoinHandle<Option<()>>,
    },
    /// The same stream, but each side's application hands frames to a writer task and
    /// gets them from a reader task through channels, as peergroup's client does: it
    /// tells how much of the direct path's RTT over bare quinn's is that task structure
    /// rather than peergroup's own work.
    Handovers {
        connection: quinn::Connection,
        to_writer: mpsc::UnboundedSender<Frame>,
        from_reader: mpsc::UnboundedReceiver<Frame>,
        echo: JoinHandle<Option<()>>,
    },
    /// Reliable messages between two peergroup clients on their direct path (the server
    /// that introduced them stays idle).
    Peergroup(Box<PeergroupPair>),
}

/// Two peergroup clients on a direct path; B echoes what A sends.
pub(super) struct PeergroupPair {
    a: Client,
    a_events: ClientEvents,
    a_id: HostId,
    b: Client,
    b_id: HostId,
    echo: JoinHandle<Result<(), String>>,
}

impl Pinger {
    /// Sets up every path, in the order the section's table lists them; `server`
    /// introduces the peergroup pair.
    pub(super) async fn all(server: &Server) -> Result<Vec<Pinger>, String> {
        Ok(vec![
            peergroup(server).await?,
            quinn_stream().await?,
            quinn_with_handovers().await?,
            udp().await?,
        ])
    }

    /// The path's key in `results.json` (`direct.rtt_p50_us.<key>`).
    pub(super) fn key(&self) -> &'static str {
        match self {
            Pinger::Udp { .. } => "udp",
            Pinger::Quinn { .. } => "quinn",
            Pinger::Handovers { .. } => "quinn_with_handovers",
            Pinger::Peergroup(_) => "peergroup",
        }
    }

    /// The path's name in the section's table.
    pub(super) fn name(&self) -> &'static str {
        match self {
            Pinger::Udp { .. } => "raw UDP",
            Pinger::Quinn { .. } => "bare quinn stream",
            Pinger::Handovers { .. } => {
                "bare quinn stream behind a writer and a reader task each side"
            }
            Pinger::Peergroup(_) => "peergroup direct path",
        }
    }

    /// One round trip: sends a ping and waits for its echo.
    ///
    /// # Errors
    /// The path failed; a peergroup message that took the relay is an error too.
    pub(super) async fn ping(&mut self) -> Result<Duration, String> {
        let sent = Instant::now();
        match self {
            Pinger::Udp { socket, .. } => {
                let mut buf = [0u8; 2048];
                socket
                    .send(&[7u8; PAYLOAD])
                    .await
                    .map_err(|e| e.to_string())?;
                socket.recv(&mut buf).await.map_err(|e| e.to_string())?;
            }
            Pinger::Quinn { send, recv, .. } => {
                send.write_all(&frame()).await.map_err(|e| e.to_string())?;
                let mut reply = [0u8; 4 + PAYLOAD];
                recv.read_exact(&mut reply)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Pinger::Handovers {
                to_writer,
                from_reader,
                ..
            } => {
                to_writer.send(frame()).map_err(|e| e.to_string())?;
                from_reader
                    .recv()
                    .await
                    .ok_or("the quinn echo with hand-overs ended")?;
            }
            Pinger::Peergroup(pair) => {
                let ping = Bytes::from_static(&[1u8; PAYLOAD]);
                pair.a
                    .send(Target::Host(pair.b_id), ping, Delivery::ReliableOrdered)
                    .await
                    .map_err(|e| format!("ping: {e}"))?;
                loop {
                    match pair.a_events.next().await {
                        Some(ClientEvent::Message { path, .. }) => {
                            if path != MessagePath::Direct {
                                return Err("an echo took the relay".into());
                            }
                            break;
                        }
                        Some(_) => {}
                        None => return Err("A's events ended".into()),
                    }
                }
            }
        }
        Ok(sent.elapsed())
    }

    /// Closes the path. For the peergroup pair, fails if any message took the relay.
    pub(super) async fn close(self, server: &Server) -> Result<(), String> {
        match self {
            Pinger::Udp { echo, .. } => echo.abort(),
            Pinger::Quinn {
                connection, echo, ..
            }
            | Pinger::Handovers {
                connection, echo, ..
            } => {
                connection.close(0u32.into(), b"done");
                echo.abort();
            }
            Pinger::Peergroup(pair) => {
                let relayed = server
                    .pair_stats(pair.a_id, pair.b_id)
                    .map_or(0, |stats| stats.relayed);
                pair.a.close().await;
                pair.b.close().await;
                // B's events end with its connection, and so does its echo.
                match tokio::time::timeout(Duration::from_secs(10), pair.echo).await {
                    Ok(Ok(Err(e))) => return Err(e),
                    Err(_) => return Err("the peergroup echo did not end".into()),
                    _ => {}
                }
                if relayed > 0 {
                    return Err(format!("{relayed} peergroup messages took the relay"));
                }
            }
        }
        Ok(())
    }
}

/// A ping frame for the quinn paths, and the rate runs' frame.
pub(super) fn frame() -> Frame {
    let mut frame = [1u8; 4 + PAYLOAD];
    frame[..4].copy_from_slice(&(PAYLOAD as u32).to_be_bytes());
    frame
}

async fn udp() -> Result<Pinger, String> {
    let io = |e: std::io::Error| e.to_string();
    let echo = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .map_err(io)?;
    let echo_addr = echo.local_addr().map_err(io)?;
    let echo = tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((len, from)) = echo.recv_from(&mut buf).await {
            if echo.send_to(&buf[..len], from).await.is_err() {
                return;
            }
        }
    });
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .map_err(io)?;
    socket.connect(echo_addr).await.map_err(io)?;
    Ok(Pinger::Udp { socket, echo })
}

async fn quinn_stream() -> Result<Pinger, String> {
    let (server, client, addr) = quinn_pair()?;
    let echo = tokio::spawn(async move {
        let connection = server.accept().await?.await.ok()?;
        let (mut send, mut recv) = connection.accept_bi().await.ok()?;
        let mut frame = [0u8; 4 + PAYLOAD];
        while recv.read_exact(&mut frame).await.is_ok() {
            send.write_all(&frame).await.ok()?;
        }
        Some(())
    });
    let (connection, send, recv) = open_stream(&client, addr).await?;
    Ok(Pinger::Quinn {
        connection,
        send,
        recv,
        echo,
    })
}

/// Spawns the writer and the reader task of one side of [`Pinger::Handovers`]; returns
/// its two channel ends.
fn handover_tasks(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> (mpsc::UnboundedSender<Frame>, mpsc::UnboundedReceiver<Frame>) {
    let (to_writer, mut writer_input) = mpsc::unbounded_channel::<Frame>();
    let (reader_output, from_reader) = mpsc::unbounded_channel::<Frame>();
    tokio::spawn(async move {
        while let Some(frame) = writer_input.recv().await {
            if send.write_all(&frame).await.is_err() {
                return;
            }
        }
    });
    tokio::spawn(async move {
        let mut frame = [0u8; 4 + PAYLOAD];
        while recv.read_exact(&mut frame).await.is_ok() {
            if reader_output.send(frame).is_err() {
                return;
            }
        }
    });
    (to_writer, from_reader)
}

async fn quinn_with_handovers() -> Result<Pinger, String> {
    let (server, client, addr) = quinn_pair()?;
    let echo = tokio::spawn(async move {
        let connection = server.accept().await?.await.ok()?;
        let (send, recv) = connection.accept_bi().await.ok()?;
        let (to_writer, mut from_reader) = handover_tasks(send, recv);
        while let Some(frame) = from_reader.recv().await {
            to_writer.send(frame).ok()?;
        }
        Some(())
    });
    let (connection, send, recv) = open_stream(&client, addr).await?;
    let (to_writer, from_reader) = handover_tasks(send, recv);
    Ok(Pinger::Handovers {
        connection,
        to_writer,
        from_reader,
        echo,
    })
}

/// Two clients of `server` in one group, waited on until their pair is direct.
pub(super) async fn direct_pair(
    server: &Server,
) -> Result<
    (
        (Client, ClientEvents, HostId),
        (Client, ClientEvents, HostId),
    ),
    String,
> {
    let (a, mut a_events, a_id) = setup::client(server, "a").await?;
    let (b, mut b_events, b_id) = setup::client(server, "b").await?;
    server
        .create_group(&[a_id, b_id], GroupOptions::default(), "")
        .map_err(|e| e.to_string())?;
    setup::wait_until_direct(&mut a_events, &mut b_events).await?;
    Ok(((a, a_events, a_id), (b, b_events, b_id)))
}

async fn peergroup(server: &Server) -> Result<Pinger, String> {
    let ((a, a_events, a_id), (b, mut b_events, b_id)) = direct_pair(server).await?;
    // B echoes every message back to A, on the path it came by.
    let echo = {
        let b = b.clone();
        tokio::spawn(async move {
            while let Some(event) = b_events.next().await {
                if let ClientEvent::Message { payload, path, .. } = event {
                    if path != MessagePath::Direct {
                        return Err("a ping took the relay".to_string());
                    }
                    b.send(Target::Host(a_id), payload, Delivery::ReliableOrdered)
                        .await
                        .map_err(|e| e.to_string())?;
                }
            }
            Ok(())
        })
    };
    Ok(Pinger::Peergroup(Box::new(PeergroupPair {
        a,
        a_events,
        a_id,
        b,
        b_id,
        echo,
    })))
}

/// A bare quinn server and client on loopback, with a self-signed certificate.
pub(super) fn quinn_pair(
) -> Result<(quinn::Endpoint, quinn::Endpoint, std::net::SocketAddr), String> {
    let certified =
        rcgen::generate_simple_self_signed(vec!["bench".into()]).map_err(|e| e.to_string())?;
    let cert = certified.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server_tls = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .map_err(|e| e.to_string())?;
    let server_config = quinn::ServerConfig::with_crypto(Arc::new(
        quinn::crypto::rustls::QuicServerConfig::try_from(server_tls).map_err(|e| e.to_string())?,
    ));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).map_err(|e| e.to_string())?;
    let client_tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let client_config = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(client_tls).map_err(|e| e.to_string())?,
    ));
    let server = quinn::Endpoint::server(server_config, "127.0.0.1:0".parse().expect("addr"))
        .map_err(|e| e.to_string())?;
    let addr = server.local_addr().map_err(|e| e.to_string())?;
    let mut client =
        quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).map_err(|e| e.to_string())?;
    client.set_default_client_config(client_config);
    Ok((server, client, addr))
}

/// Connects `client` to the server at `addr` (of [`quinn_pair`]) and opens a
/// bidirectional stream.
pub(super) async fn open_stream(
    client: &quinn::Endpoint,
    addr: std::net::SocketAddr,
) -> Result<(quinn::Connection, quinn::SendStream, quinn::RecvStream), String> {
    let connection = client
        .connect(addr, "bench")
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    let (send, recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
    Ok((connection, send, recv))
}

//! A UDP forwarder between one client and the server that can black-hole the path: an
//! outage the client's QUIC connection cannot tell from a dead network (resume and
//! fallback tests).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::UdpSocket;

/// Forwards UDP between one client and the server, and drops everything while
/// `blackhole` is set.
pub struct Forwarder {
    /// Where the client sends to reach the server.
    pub addr: SocketAddr,
    /// Set: everything is dropped, both ways.
    pub blackhole: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Forwarder {
    /// Starts forwarding to `server`, on loopback.
    pub async fn start(server: SocketAddr) -> Self {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind front"));
        let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind back"));
        back.connect(server).await.expect("connect back");
        let addr = front.local_addr().expect("front address");
        let blackhole = Arc::new(AtomicBool::new(false));
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let up = {
            let (front, back, blackhole, client) = (
                front.clone(),
                back.clone(),
                blackhole.clone(),
                client.clone(),
            );
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65_536];
                while let Ok((len, from)) = front.recv_from(&mut buf).await {
                    *client.lock().unwrap() = Some(from);
                    if !blackhole.load(Ordering::Acquire) {
                        let _ = back.send(&buf[..len]).await;
                    }
                }
            })
        };
        let down = {
            let blackhole = blackhole.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65_536];
                while let Ok(len) = back.recv(&mut buf).await {
                    let to = *client.lock().unwrap();
                    if let (Some(to), false) = (to, blackhole.load(Ordering::Acquire)) {
                        let _ = front.send_to(&buf[..len], to).await;
                    }
                }
            })
        };
        Self {
            addr,
            blackhole,
            tasks: vec![up, down],
        }
    }

    /// Drops everything from now on (`true`) or forwards again (`false`).
    pub fn cut(&self, cut: bool) {
        self.blackhole.store(cut, Ordering::Release);
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

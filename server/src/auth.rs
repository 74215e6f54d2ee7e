//! The auth hook: the application decides who may connect.

use bytes::Bytes;
use peergroup_protocol::Fingerprint;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

/// What the application learns about a client asking to log in.
#[derive(Debug, Clone)]
pub struct LoginRequest {
    /// The address the server sees the client at.
    pub remote_addr: SocketAddr,
    /// SHA-256 of the client's identity certificate.
    pub identity: Fingerprint,
    /// The client's login payload, as it sent it.
    pub login: Bytes,
}

/// The application's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthDecision {
    /// Let the client in; `app_data` becomes its host data: it goes back to the client,
    /// into [`ServerEvent::ClientConnected`](crate::ServerEvent), and onto every join
    /// notice about the client (so peers see, say, its player name), until
    /// [`Server::set_host_data`](crate::Server::set_host_data) changes it. At most
    /// [`Limits::max_host_data_len`](crate::Limits::max_host_data_len) bytes (default
    /// 1 KiB); a larger one refuses the login and logs an error.
    Accept {
        /// The client's host data (empty for none).
        app_data: Bytes,
    },
    /// Close the connection with `AuthRejected`; the client sees `reason` (cut to
    /// 512 bytes so it fits the close frame).
    Reject {
        /// Readable text for the client.
        reason: String,
    },
}

impl AuthDecision {
    /// Accept with no app data.
    pub fn accept() -> Self {
        AuthDecision::Accept {
            app_data: Bytes::new(),
        }
    }

    /// Accept with `data` as the client's host data.
    pub fn accept_with_data(data: impl Into<Bytes>) -> Self {
        AuthDecision::Accept {
            app_data: data.into(),
        }
    }

    /// Reject with a reason.
    pub fn reject(reason: impl Into<String>) -> Self {
        AuthDecision::Reject {
            reason: reason.into(),
        }
    }
}

type HookFn =
    dyn Fn(LoginRequest) -> Pin<Box<dyn Future<Output = AuthDecision> + Send>> + Send + Sync;

/// Decides each login. The default accepts everyone. It may be async (look up a
/// database); it runs within the handshake timeout, after which the client is closed with
/// `HandshakeTimeout`.
#[derive(Clone)]
pub struct AuthHook(Arc<HookFn>);

impl AuthHook {
    /// A hook from an async function.
    pub fn new<F, Fut>(hook: F) -> Self
    where
        F: Fn(LoginRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = AuthDecision> + Send + 'static,
    {
        AuthHook(Arc::new(move |request| Box::pin(hook(request))))
    }

    /// A hook from a plain function.
    pub fn from_fn<F>(hook: F) -> Self
    where
        F: Fn(LoginRequest) -> AuthDecision + Send + Sync + 'static,
    {
        let hook = Arc::new(hook);
        Self::new(move |request| {
            let hook = hook.clone();
            async move { hook(request) }
        })
    }

    /// Accepts every client.
    pub fn accept_all() -> Self {
        Self::from_fn(|_| AuthDecision::accept())
    }

    pub(crate) async fn decide(&self, request: LoginRequest) -> AuthDecision {
        (self.0)(request).await
    }
}

impl Default for AuthHook {
    fn default() -> Self {
        Self::accept_all()
    }
}

impl std::fmt::Debug for AuthHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthHook")
    }
}

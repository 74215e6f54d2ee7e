//! The admin HTTP API and status page of `peergroup-server` (`--admin ADDR`).
//!
//! The server library's group management API, for the rest of a studio's backend (a
//! matchmaker, an operator's tools), as Nakama's console and ProudNet's server monitor
//! serve operators: JSON under `/v1` (see [`api`] and `GET /v1/openapi.json`), errors as
//! RFC 9457 problem details (`application/problem+json`), and a status page at `/`.
//!
//! # Authentication
//! Every request needs the bearer token from `--admin-token-file`: `Authorization: Bearer
//! TOKEN` (RFC 6750 section 2.1), or the `peergroup_admin` cookie the login form sets
//! (`HttpOnly; SameSite=Strict`, so other sites cannot make a browser use it, RFC 6265bis).
//! Without it every request gets 401 with a problem document and changes nothing; `GET /`
//! then shows the login form (with status 401) instead of the page. Tokens are compared in
//! constant time. The listener speaks plain HTTP: bind it to loopback or a private
//! network, or put a TLS-terminating proxy in front.

pub mod api;

use crate::hub::Control;
use crate::rooms::RoomNames;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{
    AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde::Deserialize;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

/// The cookie the login form sets.
pub const COOKIE_NAME: &str = "peergroup_admin";

/// Seconds of relay throughput the status page's chart shows (one sample a second).
pub const HISTORY_SECS: usize = 300;

/// The status page: one self-contained HTML document (inline CSS and JS, no assets from
/// outside the binary) that polls the JSON API.
const STATUS_PAGE: &str = include_str!("status.html");

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AdminState {
    pub(crate) control: Control,
    pub(crate) rooms: RoomNames,
    token: Arc<str>,
    pub(crate) history: Arc<Mutex<VecDeque<(u64, u64)>>>,
    pub(crate) started: Instant,
}

impl AdminState {
    /// State for an admin API over `control`, naming rooms from `rooms`, accepting
    /// `token`.
    pub fn new(control: Control, rooms: RoomNames, token: &str) -> Self {
        Self {
            control,
            rooms,
            token: Arc::from(token),
            history: Arc::default(),
            started: Instant::now(),
        }
    }

    /// Records the relay's throughput once a second for the status page's chart, until
    /// `shutdown`.
    pub fn sample_history(&self, shutdown: CancellationToken) {
        let state = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.cancelled() => return,
                }
                let rate = state.control.server().stats().relay_bytes_per_sec;
                let now_ms = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                let mut history = state.history.lock().unwrap_or_else(|p| p.into_inner());
                if history.len() == HISTORY_SECS {
                    history.pop_front();
                }
                history.push_back((now_ms, rate));
            }
        });
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let bearer = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        if bearer.is_some_and(|t| constant_time_eq(t.as_bytes(), self.token.as_bytes())) {
            return true;
        }
        headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .any(|(name, value)| {
                name == COOKIE_NAME && constant_time_eq(value.as_bytes(), self.token.as_bytes())
            })
    }
}

/// Equality whose time depends on the lengths only, not on where the first difference
/// is, so response times leak nothing about the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Reads the token from `path`: its contents with surrounding whitespace removed.
///
/// # Errors
/// When the file cannot be read, is empty, or holds characters a cookie or an
/// `Authorization` header cannot carry (anything but visible ASCII).
pub fn read_token(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("admin token file {}: {e}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("admin token file {} is empty", path.display()));
    }
    // What a cookie value may hold (RFC 6265 section 4.1.1, cookie-octet), so the login
    // form's cookie carries the token unchanged.
    let cookie_octet = |b: u8| b.is_ascii_graphic() && !matches!(b, b'"' | b',' | b';' | b'\\');
    if !token.bytes().all(cookie_octet) {
        return Err(format!(
            "admin token file {}: the token must be visible ASCII without \", ; or \\",
            path.display()
        ));
    }
    if token.len() < 16 {
        tracing::warn!("the admin token is shorter than 16 characters; use a long random one");
    }
    Ok(token.to_owned())
}

/// The admin router: `/` (status page), `/login`, `/logout` and the API under `/v1`.
pub fn router(state: AdminState) -> Router {
    let protected = api::routes()
        .fallback(|| async { api::Problem::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async {
            api::Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "about:blank",
                "Method Not Allowed",
                "this endpoint does not take that method".into(),
            )
        })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ));
    Router::new()
        .route("/", get(status_page))
        .route("/login", post(login))
        .route("/logout", post(logout))
        .merge(protected)
        .with_state(state)
}

/// Lets a request through only with the right token.
async fn require_token(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    if state.authorized(request.headers()) {
        next.run(request).await
    } else {
        unauthorized()
    }
}

fn unauthorized() -> Response {
    let mut response = api::Problem::new(
        StatusCode::UNAUTHORIZED,
        "about:blank",
        "Unauthorized",
        "a valid bearer token is required (Authorization: Bearer TOKEN)".into(),
    )
    .into_response();
    response.headers_mut().insert(
        "www-authenticate",
        HeaderValue::from_static("Bearer realm=\"peergroup admin\""),
    );
    response
}

/// The page: with the token it shows the status; without, the same document shows its
/// login form (with status 401, so nothing without the token is a success).
async fn status_page(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    let status = if state.authorized(&headers) {
        StatusCode::OK
    } else {
        StatusCode::UNAUTHORIZED
    };
    let mut response = (status, STATUS_PAGE).into_response();
    let h = response.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Everything the page needs is inline; nothing may load from elsewhere.
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    response
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

/// The login form's target: sets the cookie and goes back to the page, or answers 401.
async fn login(State(state): State<AdminState>, Form(form): Form<LoginForm>) -> Response {
    let token = form.token.trim();
    if !constant_time_eq(token.as_bytes(), state.token.as_bytes()) {
        return unauthorized();
    }
    let cookie = format!("{COOKIE_NAME}={token}; Path=/; HttpOnly; SameSite=Strict");
    let mut response = Response::builder()
        .status(StatusCode::SEE_OTHER)
        .header(LOCATION, "/")
        .body(Body::empty())
        .unwrap_or_default();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(SET_COOKIE, value);
    }
    response
}

async fn logout() -> Response {
    let mut response = Response::builder()
        .status(StatusCode::SEE_OTHER)
        .header(LOCATION, "/")
        .body(Body::empty())
        .unwrap_or_default();
    response.headers_mut().insert(
        SET_COOKIE,
        HeaderValue::from_static("peergroup_admin=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_exactly() {
        assert!(constant_time_eq(b"secret-token", b"secret-token"));
        assert!(!constant_time_eq(b"secret-token", b"secret-tokeN"));
        assert!(!constant_time_eq(b"secret", b"secret-token"));
    }
}

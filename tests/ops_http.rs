//! The `peergroup-server` binary's operations surface, driven from outside as a studio
//! would: the admin HTTP API with a real HTTP client (every endpoint, 401 without the
//! token, a join completing with the client's ack, a kick the client sees, the rooms
//! application following API changes), `/metrics` scraped while probes run, graceful
//! shutdown on SIGTERM and SIGINT with JSON logs, and the status page in headless
//! Chromium (skipped with a note where `chromium` is not installed; `.ci/run` installs
//! it). Everything listens on loopback with port 0; the binary prints the bound
//! addresses (`listening on`, `metrics on`, `admin on`).

mod binaries;

use binaries::binaries;
use bytes::Bytes;
use peergroup_client::{
    Client, ClientConfig, ClientEvent, ClientEvents, CloseCode, Delivery, DisconnectReason,
    GroupId, HostId, ServerTrust, Target,
};
use peergroup_protocol::rooms::{RoomsReply, RoomsRequest};
use peergroup_protocol::{datagram_to_bytes, decode_body};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long any single expected thing may take.
const WAIT: Duration = Duration::from_secs(20);
const TOKEN: &str = "ops-test-token-4f1c9a7d2e";

// ---- the server process -----------------------------------------------------------------

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = std::env::temp_dir().join(format!(
            "peergroup-ops-{tag}-{}-{nanos}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("creating the temp dir");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `peergroup-server`, killed on drop.
struct ServerProc {
    child: Child,
    listen: SocketAddr,
    cert: PathBuf,
    admin: Option<String>,
    metrics: Option<String>,
    log: PathBuf,
    // Dropped last: the identity, token and log live here.
    _dir: TempDir,
}

impl ServerProc {
    /// Starts the server with admin (and the token) and metrics on, plus `extra` flags.
    fn start(tag: &str, extra: &[&str]) -> Self {
        let dir = TempDir::new(tag);
        let token_file = dir.0.join("token");
        std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
        let log = dir.0.join("server.log");
        let mut command = Command::new(&binaries().server);
        command
            .args(["--listen", "127.0.0.1:0", "--identity-dir"])
            .arg(dir.0.join("identity"))
            .args(["--admin", "127.0.0.1:0", "--metrics", "127.0.0.1:0"])
            .arg("--admin-token-file")
            .arg(&token_file)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap());
        let mut child = command.spawn().expect("spawning peergroup-server");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let (mut listen, mut cert, mut admin, mut metrics) = (None, None, None, None);
        let deadline = Instant::now() + WAIT;
        while listen.is_none() || admin.is_none() || metrics.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = rx.recv_timeout(left) else {
                let _ = child.kill();
                panic!(
                    "the server did not print its addresses; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            };
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["listening", "on", addr, "fingerprint", _, "cert", path] => {
                    listen = Some(addr.parse().unwrap());
                    cert = Some(PathBuf::from(path));
                }
                ["admin", "on", addr] => admin = Some(format!("http://{addr}")),
                ["metrics", "on", addr] => metrics = Some(format!("http://{addr}")),
                _ => panic!("unexpected line from the server: {line:?}"),
            }
        }
        Self {
            child,
            listen: listen.unwrap(),
            cert: cert.unwrap(),
            admin,
            metrics,
            log,
            _dir: dir,
        }
    }

    fn api(&self) -> Api {
        Api {
            base: self.admin.clone().unwrap(),
            token: Some(TOKEN.into()),
        }
    }

    fn client_config(&self, login: &str) -> ClientConfig {
        let trust = ServerTrust::from_cert_file(&self.cert).expect("the server's certificate");
        let mut config = ClientConfig::new(self.listen, trust);
        config.login = Bytes::copy_from_slice(login.as_bytes());
        config
    }

    async fn connect(&self, login: &str) -> (Client, ClientEvents, HostId) {
        let (client, mut events) =
            tokio::time::timeout(WAIT, Client::connect(self.client_config(login)))
                .await
                .expect("connecting in time")
                .expect("connecting");
        let host = wait(&mut events, |e| match e {
            ClientEvent::Connected { host_id } => Some(*host_id),
            _ => None,
        })
        .await;
        (client, events, host)
    }

    /// Sends `signal` (`TERM`, `INT`) and waits for the exit status.
    fn signal_and_wait(&mut self, signal: &str) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success());
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not exit after SIG{signal}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- server log ---\n{}", self.log());
        }
    }
}

async fn wait<T>(events: &mut ClientEvents, mut pick: impl FnMut(&ClientEvent) -> Option<T>) -> T {
    tokio::time::timeout(WAIT, async {
        loop {
            let event = events.next().await.expect("the client's events ended");
            if let Some(found) = pick(&event) {
                return found;
            }
        }
    })
    .await
    .expect("timed out waiting for a client event")
}

// ---- HTTP ---------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Api {
    base: String,
    token: Option<String>,
}

#[derive(Debug)]
struct Reply {
    status: u16,
    content_type: String,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    /// Asserts an RFC 9457 problem with `status` and type ending in `kind`.
    fn assert_problem(&self, status: u16, kind: &str) -> Value {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.content_type, "application/problem+json", "{self:?}");
        let problem = self.json();
        assert_eq!(problem["status"], status);
        assert!(
            problem["type"].as_str().unwrap().ends_with(kind),
            "{problem} is not a {kind}"
        );
        assert!(problem["title"].is_string() && problem["detail"].is_string());
        problem
    }
}

impl Api {
    fn blocking(&self, method: &str, path: &str, body: Option<&Value>) -> Reply {
        let agent: ureq::Agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(70)))
                .build(),
        );
        let mut request = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let result = match body {
            Some(body) => agent.run(
                request
                    .header("content-type", "application/json")
                    .body(body.to_string())
                    .unwrap(),
            ),
            None => agent.run(request.body(ureq::SendBody::none()).unwrap()),
        };
        let mut response = result.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        Reply {
            status: response.status().as_u16(),
            content_type,
            body: response.body_mut().read_to_string().unwrap_or_default(),
        }
    }

    /// The blocking client, off the async runtime's threads.
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Reply {
        let (api, method, path) = (self.clone(), method.to_owned(), path.to_owned());
        tokio::task::spawn_blocking(move || api.blocking(&method, &path, body.as_ref()))
            .await
            .unwrap()
    }

    async fn get(&self, path: &str) -> Value {
        let reply = self.call("GET", path, None).await;
        assert_eq!(reply.status, 200, "GET {path}: {reply:?}");
        reply.json()
    }
}

/// A rooms request from `client`, and the rooms application's reply.
async fn rooms(client: &Client, events: &mut ClientEvents, request: &RoomsRequest) -> RoomsReply {
    let bytes = datagram_to_bytes(request).unwrap();
    client
        .send(Target::Server, bytes, Delivery::ReliableOrdered)
        .await
        .unwrap();
    wait(events, |e| match e {
        ClientEvent::Message { from, payload, .. } if *from == HostId::SERVER => {
            decode_body::<RoomsReply>(payload).ok()
        }
        _ => None,
    })
    .await
}

fn join_room(room: &str, name: &str) -> RoomsRequest {
    RoomsRequest::Join {
        room: room.into(),
        password: None,
        name: name.into(),
    }
}

// ---- tests ------------------------------------------------------------------------------

/// A client listing without what changes by itself (RTT, queued bytes).
fn steady(mut clients: Value) -> Value {
    for client in clients.as_array_mut().unwrap() {
        let client = client.as_object_mut().unwrap();
        client.remove("rtt_ms");
        client.remove("queued_bytes");
    }
    clients
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_without_the_token_gets_401_and_changes_nothing() {
    let server = ServerProc::start("auth", &[]);
    let (_alice, _events, alice) = server.connect("alice").await;
    let with = server.api();
    let group = with
        .call("POST", "/v1/groups", Some(json!({"members": []})))
        .await;
    assert_eq!(group.status, 201, "{group:?}");
    let g = group.json()["group"].as_str().unwrap().to_owned();
    let before = (with.get("/v1/clients").await, with.get("/v1/groups").await);

    let a = alice.to_string();
    let requests: Vec<(&str, String, Option<Value>)> = vec![
        ("GET", "/v1/clients".into(), None),
        ("GET", format!("/v1/clients/{a}"), None),
        (
            "POST",
            format!("/v1/clients/{a}/kick"),
            Some(json!({"reason": "x"})),
        ),
        (
            "PUT",
            format!("/v1/clients/{a}/data"),
            Some(json!({"data": "evil"})),
        ),
        ("GET", "/v1/groups".into(), None),
        ("POST", "/v1/groups".into(), Some(json!({"members": [a]}))),
        ("GET", format!("/v1/groups/{g}"), None),
        ("DELETE", format!("/v1/groups/{g}"), None),
        (
            "PUT",
            format!("/v1/groups/{g}/data"),
            Some(json!({"data": "evil"})),
        ),
        ("PUT", format!("/v1/groups/{g}/members/{a}"), None),
        ("DELETE", format!("/v1/groups/{g}/members/{a}"), None),
        (
            "POST",
            "/v1/membership".into(),
            Some(json!({"changes": [{"op": "join", "group": g, "host": a}]})),
        ),
        ("GET", "/v1/pairs".into(), None),
        ("GET", "/v1/stats".into(), None),
        ("GET", "/v1/openapi.json".into(), None),
        ("GET", "/v1/no-such-thing".into(), None),
    ];
    for token in [
        None,
        Some("wrong-token".to_owned()),
        Some(format!("{TOKEN}x")),
    ] {
        let api = Api {
            base: with.base.clone(),
            token: token.clone(),
        };
        for (method, path, body) in &requests {
            let reply = api.call(method, path, body.clone()).await;
            reply.assert_problem(401, "about:blank");
        }
        // The page answers 401 too, showing its login form.
        let page = api.call("GET", "/", None).await;
        assert_eq!(page.status, 401);
        assert!(page.content_type.starts_with("text/html"));
        assert!(page.body.contains("id=\"login-form\""));
    }
    // A wrong token at the login form sets no cookie.
    let login = tokio::task::spawn_blocking({
        let base = with.base.clone();
        move || {
            let agent: ureq::Agent = ureq::Agent::new_with_config(
                ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .max_redirects(0)
                    .build(),
            );
            let bad = agent
                .post(format!("{base}/login"))
                .content_type("application/x-www-form-urlencoded")
                .send("token=nope")
                .unwrap();
            let good = agent
                .post(format!("{base}/login"))
                .content_type("application/x-www-form-urlencoded")
                .send(format!("token={TOKEN}"))
                .unwrap();
            let cookie = good
                .headers()
                .get("set-cookie")
                .map(|v| v.to_str().unwrap().to_owned());
            (
                bad.status().as_u16(),
                bad.headers().contains_key("set-cookie"),
                good.status().as_u16(),
                cookie,
            )
        }
    })
    .await
    .unwrap();
    assert_eq!((login.0, login.1), (401, false));
    assert_eq!(login.2, 303);
    let cookie = login.3.expect("the right token sets the cookie");
    assert!(
        cookie.starts_with(&format!("peergroup_admin={TOKEN};")),
        "{cookie}"
    );
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));

    // Nothing changed: alice is still connected with her data, the group is still empty
    // (measurements aside).
    assert_eq!(steady(with.get("/v1/clients").await), steady(before.0));
    assert_eq!(with.get("/v1/groups").await, before.1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_manages_clients_groups_and_membership() {
    let server = ServerProc::start("api", &[]);
    let api = server.api();
    let (_alice, mut alice_events, alice) = server.connect("alice").await;
    let (_bob, mut bob_events, bob) = server.connect("bob").await;
    let (a, b) = (alice.to_string(), bob.to_string());

    // Clients.
    let clients = api.get("/v1/clients").await;
    let listed: Vec<&str> = clients
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["host"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [a.as_str(), b.as_str()]);
    assert_eq!(clients[0]["login"], "alice");
    assert_eq!(clients[0]["transport"], "quic");
    let one = api.get(&format!("/v1/clients/{a}")).await;
    assert_eq!(one["host"], a);
    assert!(one["remote_addr"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    api.call("GET", "/v1/clients/h999", None)
        .await
        .assert_problem(404, "unknown-host");
    api.call("GET", "/v1/clients/alice", None)
        .await
        .assert_problem(400, "invalid-id");

    let reply = api
        .call(
            "PUT",
            &format!("/v1/clients/{a}/data"),
            Some(json!({"data": "Alice"})),
        )
        .await;
    assert_eq!(reply.status, 204, "{reply:?}");
    wait(&mut alice_events, |e| match e {
        ClientEvent::HostDataChanged { host, data } if *host == alice => Some(data.clone()),
        _ => None,
    })
    .await;
    assert_eq!(api.get(&format!("/v1/clients/{a}")).await["data"], "Alice");
    api.call(
        "PUT",
        &format!("/v1/clients/{a}/data"),
        Some(json!({"data_hex": "zz"})),
    )
    .await
    .assert_problem(400, "invalid-body");
    api.call(
        "PUT",
        &format!("/v1/clients/{a}/data"),
        Some(json!({"data": "x".repeat(2000)})),
    )
    .await
    .assert_problem(413, "data-too-large");

    // Groups.
    let created = api
        .call(
            "POST",
            "/v1/groups",
            Some(json!({"members": [a], "data": "arena", "options": {"allow_empty": true}})),
        )
        .await;
    assert_eq!(created.status, 201, "{created:?}");
    let view = created.json();
    let g = view["group"].as_str().unwrap().to_owned();
    let group: GroupId = g.parse().unwrap();
    assert_eq!(view["members"], json!([a]));
    assert_eq!(view["data"], "arena");
    assert_eq!(view["options"]["direct_p2p"], true);
    wait(&mut alice_events, |e| match e {
        ClientEvent::MemberJoined {
            group: gg, member, ..
        } if *gg == group && *member == alice => Some(()),
        _ => None,
    })
    .await;
    let groups = api.get("/v1/groups").await;
    assert_eq!(groups.as_array().unwrap().len(), 1);
    assert_eq!(groups[0]["group"], g);
    assert_eq!(groups[0]["room"], Value::Null);
    let reply = api
        .call(
            "PUT",
            &format!("/v1/groups/{g}/data"),
            Some(json!({"data": "arena-2"})),
        )
        .await;
    assert_eq!(reply.status, 204);
    wait(&mut alice_events, |e| match e {
        ClientEvent::GroupDataChanged { group: gg, data } if *gg == group => Some(data.clone()),
        _ => None,
    })
    .await;
    assert_eq!(api.get(&format!("/v1/groups/{g}")).await["data"], "arena-2");
    api.call("GET", "/v1/groups/g99", None)
        .await
        .assert_problem(404, "unknown-group");

    // A join through the API returns once bob and alice acked it: bob has been told.
    let joined = api
        .call(
            "PUT",
            &format!("/v1/groups/{g}/members/{b}?timeout_ms=10000"),
            Some(json!({"join_message": "welcome"})),
        )
        .await;
    assert_eq!(joined.status, 200, "{joined:?}");
    let result = joined.json();
    assert_eq!(
        (result["outcome"].as_str(), result["ack"].as_str()),
        (Some("joined"), Some("ok"))
    );
    let message = wait(&mut bob_events, |e| match e {
        ClientEvent::MemberJoined {
            group: gg,
            member,
            join_message,
            ..
        } if *gg == group && *member == bob => Some(join_message.clone()),
        _ => None,
    })
    .await;
    assert_eq!(message, "welcome");
    let again = api
        .call("PUT", &format!("/v1/groups/{g}/members/{b}"), None)
        .await;
    assert_eq!(again.status, 200);
    assert_eq!(again.json()["outcome"], "already_member");
    assert_eq!(again.json()["ack"], Value::Null);
    api.call("PUT", &format!("/v1/groups/{g}/members/h77"), None)
        .await
        .assert_problem(404, "unknown-host");

    // Pairs: the two share a group and go direct on loopback.
    let deadline = Instant::now() + WAIT;
    let pair = loop {
        let pairs = api.get("/v1/pairs").await;
        if pairs[0]["path"] == "direct" {
            break pairs[0].clone();
        }
        assert!(Instant::now() < deadline, "no direct pair: {pairs}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        (pair["a"].as_str(), pair["b"].as_str()),
        (Some(a.as_str()), Some(b.as_str()))
    );
    assert_eq!(pair["shared_groups"], 1);
    assert!(pair["relayed_bytes"].is_u64() && pair["punch_attempts"].as_u64() >= Some(1));
    let stats = api.get("/v1/stats").await;
    assert_eq!(
        (stats["clients"].as_u64(), stats["groups"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(stats["direct_pairs"], 1);
    assert!(stats["join_ack_latency"]["count"].as_u64() >= Some(2));

    // A leave through the API.
    let left = api
        .call("DELETE", &format!("/v1/groups/{g}/members/{b}"), None)
        .await;
    assert_eq!(left.status, 200, "{left:?}");
    assert_eq!(left.json()["ack"], "ok");
    wait(&mut bob_events, |e| match e {
        ClientEvent::MemberLeft {
            group: gg, member, ..
        } if *gg == group && *member == bob => Some(()),
        _ => None,
    })
    .await;
    api.call("DELETE", &format!("/v1/groups/{g}/members/{b}"), None)
        .await
        .assert_problem(409, "not-member");

    // A batch: bob in, alice out, all or nothing.
    let batch = api
        .call(
            "POST",
            "/v1/membership?timeout_ms=10000",
            Some(json!({"changes": [
                {"op": "join", "group": g, "host": b},
                {"op": "leave", "group": g, "host": a},
            ]})),
        )
        .await;
    assert_eq!(batch.status, 200, "{batch:?}");
    let results = batch.json()["results"].clone();
    assert_eq!(results[0]["outcome"], "joined");
    assert_eq!(results[0]["ack"], "ok");
    assert_eq!(results[1]["outcome"], "left");
    assert_eq!(results[1]["ack"], "ok");
    assert_eq!(
        api.get(&format!("/v1/groups/{g}")).await["members"],
        json!([b])
    );
    let refused = api
        .call(
            "POST",
            "/v1/membership",
            Some(json!({"changes": [
                {"op": "join", "group": g, "host": a},
                {"op": "join", "group": "g42", "host": a},
            ]})),
        )
        .await;
    let problem = refused.assert_problem(404, "unknown-group");
    assert_eq!(problem["index"], 1);
    assert_eq!(
        api.get(&format!("/v1/groups/{g}")).await["members"],
        json!([b]),
        "nothing of the refused batch was applied"
    );
    api.call(
        "POST",
        "/v1/membership",
        Some(json!({"changes": [{"op": "dance"}]})),
    )
    .await
    .assert_problem(422, "invalid-body");

    // Kick: bob sees why.
    let kicked = api
        .call(
            "POST",
            &format!("/v1/clients/{b}/kick"),
            Some(json!({"reason": "bye bob"})),
        )
        .await;
    assert_eq!(kicked.status, 204, "{kicked:?}");
    let reason = wait(&mut bob_events, |e| match e {
        ClientEvent::Disconnected { reason } => Some(reason.clone()),
        _ => None,
    })
    .await;
    assert_eq!(
        reason,
        DisconnectReason::ServerClosed {
            code: CloseCode::Kicked,
            reason: "bye bob".into()
        }
    );
    let deadline = Instant::now() + WAIT;
    while api.get("/v1/clients").await.as_array().unwrap().len() != 1 {
        assert!(Instant::now() < deadline, "bob is still listed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Destroy.
    assert_eq!(
        api.call("DELETE", &format!("/v1/groups/{g}"), None)
            .await
            .status,
        204
    );
    api.call("GET", &format!("/v1/groups/{g}"), None)
        .await
        .assert_problem(404, "unknown-group");
    api.call("DELETE", &format!("/v1/groups/{g}"), None)
        .await
        .assert_problem(404, "unknown-group");

    // The OpenAPI document, unknown paths and methods.
    let doc = api.get("/v1/openapi.json").await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/v1/clients/{host}/kick",
        "/v1/groups/{group}/members/{host}",
        "/v1/membership",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} missing");
    }
    api.call("GET", "/v1/nothing", None)
        .await
        .assert_problem(404, "about:blank");
    api.call("PATCH", "/v1/clients", None)
        .await
        .assert_problem(405, "about:blank");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_groups_are_managed_through_the_api_and_the_rooms_app_follows() {
    let server = ServerProc::start("rooms", &[]);
    let api = server.api();
    let (alice, mut alice_events, a) = server.connect("alice").await;
    let (bob, mut bob_events, b) = server.connect("bob").await;
    let (carol, mut carol_events, c) = server.connect("carol").await;

    let RoomsReply::Joined { group, .. } =
        rooms(&alice, &mut alice_events, &join_room("lobby", "alice")).await
    else {
        panic!("alice could not join the lobby");
    };
    // The room is a group like any other to the API, named.
    let view = api.get(&format!("/v1/groups/{group}")).await;
    assert_eq!(view["room"], "lobby");
    assert_eq!(view["members"], json!([a.to_string()]));
    assert_eq!(view["options"]["allow_empty"], false);

    // Bob is put in the room by an operator, under the name set through the API: the rooms
    // application learns both, so carol's reply names him.
    let reply = api
        .call(
            "PUT",
            &format!("/v1/clients/{b}/data"),
            Some(json!({"data": "Bob the Builder"})),
        )
        .await;
    assert_eq!(reply.status, 204);
    let joined = api
        .call("PUT", &format!("/v1/groups/{group}/members/{b}"), None)
        .await;
    assert_eq!(joined.json()["ack"], "ok", "{joined:?}");
    let RoomsReply::Joined { members, .. } =
        rooms(&carol, &mut carol_events, &join_room("lobby", "carol")).await
    else {
        panic!("carol could not join");
    };
    assert_eq!(
        members,
        vec![
            (a, "alice".to_string()),
            (b, "Bob the Builder".to_string()),
            (c, "carol".to_string())
        ]
    );

    // Alice is taken out by the API: the rooms application forgets her name, so her
    // next join of the room is a fresh one under her new name.
    let left = api
        .call("DELETE", &format!("/v1/groups/{group}/members/{a}"), None)
        .await;
    assert_eq!(left.json()["ack"], "ok", "{left:?}");
    let RoomsReply::Joined { members, .. } =
        rooms(&alice, &mut alice_events, &join_room("lobby", "alicia")).await
    else {
        panic!("alice could not rejoin");
    };
    assert!(members.contains(&(a, "alicia".to_string())), "{members:?}");

    // The room destroyed through the API is gone for the rooms application too: the name
    // is free, and a new room under it takes a new password.
    assert_eq!(
        api.call("DELETE", &format!("/v1/groups/{group}"), None)
            .await
            .status,
        204
    );
    let RoomsReply::Rooms(list) = rooms(&bob, &mut bob_events, &RoomsRequest::List).await else {
        panic!("no list");
    };
    assert!(list.is_empty(), "{list:?}");
    let fresh = RoomsRequest::Join {
        room: "lobby".into(),
        password: Some("new".into()),
        name: "bob".into(),
    };
    let RoomsReply::Joined {
        group: new_group, ..
    } = rooms(&bob, &mut bob_events, &fresh).await
    else {
        panic!("bob could not make the room again");
    };
    assert_ne!(new_group, group);
    assert_eq!(
        api.get(&format!("/v1/groups/{new_group}")).await["room"],
        "lobby"
    );
}

/// One Prometheus sample's value, e.g. `value(text, "peergroup_clients{transport=\"quic\"}")`.
fn value(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == sample).then(|| value.parse().ok())?
        })
        .unwrap_or_else(|| panic!("{sample} missing from:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_as_probes_run() {
    // Just-in-time punching, from the config file: the first messages of the pair go
    // through the relay, so the relay counters must move too. Every connection must
    // validate its address (a QUIC Retry), so that counter moves as well.
    let dir = TempDir::new("metrics-config");
    let config = dir.0.join("server.toml");
    std::fs::write(
        &config,
        "[punch]\nstart = \"on_first_message\"\n[admission]\nvalidate_above = 0\n",
    )
    .unwrap();
    let server = ServerProc::start("metrics", &["--config", config.to_str().unwrap()]);
    let scrape_url = format!("{}/metrics", server.metrics.as_ref().unwrap());
    let scrape = move || {
        let url = scrape_url.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let mut response = ureq::get(&url).call().expect("scraping");
                let content_type = response
                    .headers()
                    .get("content-type")
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_owned();
                assert!(
                    content_type.starts_with("application/openmetrics-text"),
                    "{content_type}"
                );
                response.body_mut().read_to_string().unwrap()
            })
            .await
            .unwrap()
        }
    };
    let idle = scrape().await;
    assert_eq!(value(&idle, "peergroup_clients{transport=\"quic\"}"), 0.0);
    assert_eq!(
        value(&idle, "peergroup_clients{transport=\"websocket\"}"),
        0.0
    );
    assert_eq!(value(&idle, "peergroup_groups"), 0.0);
    assert_eq!(
        value(&idle, "peergroup_join_ack_latency_seconds_count"),
        0.0
    );
    assert_eq!(
        value(
            &idle,
            "peergroup_relayed_messages_total{delivery=\"reliable_ordered\"}"
        ),
        0.0
    );
    assert!(idle.contains("# TYPE peergroup_join_ack_latency_seconds histogram"));
    assert!(idle.trim_end().ends_with("# EOF"));

    // Two probes in one room, 300 reliable messages each way.
    let probe = |name: &str| {
        Command::new(&binaries().client)
            .args([
                "probe",
                "--server",
                &server.listen.to_string(),
                "--server-cert",
            ])
            .arg(&server.cert)
            .args([
                "--room", "metrics", "--name", name, "--count", "300", "--rate", "200",
            ])
            .args(["--expect-peers", "1", "--duration", "3"])
            // The pair must go direct, which a WebSocket client never does.
            .args(["--transport", "quic"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting a probe")
    };
    let mut probes = [probe("p1"), probe("p2")];
    let deadline = Instant::now() + WAIT;
    let during = loop {
        let text = scrape().await;
        if value(&text, "peergroup_pairs{path=\"direct\"}") == 1.0 {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "the probes' pair never went direct:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(value(&during, "peergroup_clients{transport=\"quic\"}"), 2.0);
    assert_eq!(
        value(&during, "peergroup_clients{transport=\"websocket\"}"),
        0.0
    );
    assert_eq!(value(&during, "peergroup_groups"), 1.0);
    assert!(value(&during, "peergroup_punch_attempts_total") >= 1.0);
    assert!(value(&during, "peergroup_punch_successes_total") >= 1.0);
    assert!(value(&during, "peergroup_join_ack_latency_seconds_count") >= 2.0);
    assert!(value(&during, "peergroup_address_validations_total") >= 2.0);
    // The admin API's counters agree with the exporter's.
    let stats = server.api().get("/v1/stats").await;
    assert_eq!(
        (
            stats["clients"].as_u64(),
            stats["websocket_clients"].as_u64()
        ),
        (Some(2), Some(0))
    );
    assert!(stats["address_validations"].as_u64() >= Some(2), "{stats}");
    assert_eq!(stats["admission_refusals"], 0);
    assert!(stats["host_candidates_dropped"].is_u64(), "{stats}");
    assert!(stats["punch_orders_deferred"].is_u64(), "{stats}");
    let (notices, frames) = (
        stats["notices_sent"].as_u64().unwrap(),
        stats["notice_frames_sent"].as_u64().unwrap(),
    );
    assert!((1..=notices).contains(&frames), "{stats}");
    let relayed = value(
        &during,
        "peergroup_relayed_messages_total{delivery=\"reliable_ordered\"}",
    );
    assert!(relayed >= 1.0, "the first message went through the relay");
    assert!(
        value(
            &during,
            "peergroup_relayed_bytes_total{delivery=\"reliable_ordered\"}"
        ) >= 64.0 * relayed
    );

    for probe in &mut probes {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = probe.try_wait().unwrap() {
                assert!(status.success(), "a probe failed: {status}");
                break;
            }
            assert!(Instant::now() < deadline, "a probe did not finish");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let deadline = Instant::now() + WAIT;
    let after = loop {
        let text = scrape().await;
        if value(&text, "peergroup_clients{transport=\"quic\"}") == 0.0 {
            break text;
        }
        assert!(Instant::now() < deadline, "the probes are still counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Counters never go back; the room went with its last member.
    assert!(
        value(
            &after,
            "peergroup_relayed_messages_total{delivery=\"reliable_ordered\"}"
        ) >= relayed
    );
    assert_eq!(value(&after, "peergroup_groups"), 0.0);
    assert_eq!(value(&after, "peergroup_handshake_failures_total"), 0.0);
    assert_eq!(
        value(&after, "peergroup_slow_consumer_disconnects_total"),
        0.0
    );
    assert!(value(&after, "peergroup_leave_ack_latency_seconds_count") >= 1.0);
    let buckets: Vec<f64> = after
        .lines()
        .filter(|l| l.starts_with("peergroup_join_ack_latency_seconds_bucket"))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse().unwrap())
        .collect();
    assert!(
        buckets.windows(2).all(|w| w[0] <= w[1]),
        "buckets are cumulative: {buckets:?}"
    );
    assert_eq!(
        *buckets.last().unwrap(),
        value(&after, "peergroup_join_ack_latency_seconds_count")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_and_sigint_drain_tell_clients_why_and_exit_zero() {
    for signal in ["TERM", "INT"] {
        let mut server =
            ServerProc::start("signal", &["--log-format", "json", "--drain-secs", "5"]);
        let (_client, mut events, _host) = server.connect("alice").await;
        let status = tokio::task::block_in_place(|| server.signal_and_wait(signal));
        assert_eq!(status.code(), Some(0), "SIG{signal}: {status}");
        let reason = wait(&mut events, |e| match e {
            ClientEvent::Disconnected { reason } => Some(reason.clone()),
            _ => None,
        })
        .await;
        assert_eq!(
            reason,
            DisconnectReason::ServerClosed {
                code: CloseCode::ServerShutdown,
                reason: "server shutting down".into()
            },
            "SIG{signal}"
        );
        // Every log line is one JSON object.
        let log = server.log();
        let mut saw_drain = false;
        for line in log.lines() {
            let entry: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
            assert!(
                entry["level"].is_string() && entry["timestamp"].is_string(),
                "{line}"
            );
            saw_drain |= entry["message"] == "drained" && entry["clients"] == 1;
        }
        assert!(saw_drain, "no drain report in:\n{log}");
    }
}

/// `target/`, above this test's `target/<profile>/deps/`.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors().nth(3).unwrap().to_path_buf()
}

fn chromium() -> Option<PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Headless Chromium on `url`, with its own fresh profile, bounded in time; `mode` is
/// `--dump-dom` or `--screenshot=PATH`. Returns stdout.
fn run_chromium(chromium: &Path, profile: &Path, mode: &str, url: &str) -> String {
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--window-size=1280,900",
            // Lets the page's script log in and poll the API before the capture.
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(mode)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting chromium");
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "chromium {mode} failed: {status}");
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium {mode} ran past 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    reader.join().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_clients_groups_and_a_direct_pair_in_a_browser() {
    let Some(chromium) = chromium() else {
        eprintln!(
            "SKIPPED: the status page browser test needs Debian's chromium package \
             (apt-get install chromium; .ci/run installs it)"
        );
        return;
    };
    let server = ServerProc::start("page", &[]);
    let api = server.api();
    // alice and bob in a room: their pair goes direct. carol and dave share only a
    // relay-only group made through the API, and talk: a relayed pair, and throughput
    // for the chart.
    let (alice, mut alice_events, a) = server.connect("alice").await;
    let (bob, mut bob_events, b) = server.connect("bob").await;
    let (carol, mut carol_events, c) = server.connect("carol").await;
    let (_dave, _dave_events, d) = server.connect("dave").await;
    for (client, events, name) in [
        (&alice, &mut alice_events, "alice"),
        (&bob, &mut bob_events, "bob"),
    ] {
        let reply = rooms(client, events, &join_room("lobby", name)).await;
        assert!(matches!(reply, RoomsReply::Joined { .. }), "{reply:?}");
    }
    let relay = api
        .call(
            "POST",
            "/v1/groups",
            Some(json!({
                "members": [c.to_string(), d.to_string()],
                "data": "arena",
                "options": {"direct_p2p": false}
            })),
        )
        .await;
    let relay_group: GroupId = relay.json()["group"].as_str().unwrap().parse().unwrap();
    wait(&mut carol_events, |e| match e {
        ClientEvent::MemberJoined { group, member, .. }
            if *group == relay_group && *member == d =>
        {
            Some(())
        }
        _ => None,
    })
    .await;
    let deadline = Instant::now() + WAIT;
    while !api
        .get("/v1/pairs")
        .await
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["path"] == "direct")
    {
        assert!(Instant::now() < deadline, "no direct pair");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // About three seconds of relayed traffic, sampled once a second for the chart.
    for round in 0..12u32 {
        for _ in 0..=(round % 4) * 4 {
            carol
                .send(
                    Target::Group(relay_group),
                    vec![0u8; 4096],
                    Delivery::ReliableOrdered,
                )
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let profile = TempDir::new("chromium");
    let url = format!("{}/#token={TOKEN}", server.admin.as_ref().unwrap());
    let dom = tokio::task::block_in_place(|| {
        run_chromium(&chromium, &profile.0.join("dom"), "--dump-dom", &url)
    });
    for expected in [
        format!("<td class=\"id\">{a}</td>"),
        format!("<td class=\"id\">{b}</td>"),
        "<td>lobby</td>".to_string(),
        format!("<td class=\"id\">{c}</td>"),
        "<span class=\"badge direct\">direct</span>".to_string(),
        "<span class=\"badge relay\">relay</span>".to_string(),
        "id=\"k-clients\">4<".to_string(),
    ] {
        assert!(
            dom.contains(&expected),
            "the page lacks {expected:?}:\n{dom}"
        );
    }
    assert!(dom.contains("<polyline points=\""), "no chart drawn");
    assert!(
        dom.contains("id=\"login\" class=\"card\" hidden"),
        "the login form still shows"
    );

    // Without the token the page shows only its login form.
    let anonymous = server.admin.clone().unwrap() + "/";
    let login_dom = tokio::task::block_in_place(|| {
        run_chromium(&chromium, &profile.0.join("anon"), "--dump-dom", &anonymous)
    });
    assert!(
        login_dom.contains("id=\"login\" class=\"card\">"),
        "{login_dom}"
    );
    assert!(!login_dom.contains(&format!("<td class=\"id\">{a}</td>")));

    let shot = target_dir().join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    tokio::task::block_in_place(|| {
        run_chromium(
            &chromium,
            &profile.0.join("shot"),
            &format!("--screenshot={}", shot.display()),
            &url,
        )
    });
    let png = std::fs::read(&shot).expect("the screenshot was written");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    eprintln!("status page screenshot: {}", shot.display());
}

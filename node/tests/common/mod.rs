//! The harness of the tests that run the real `taskmesh` binary: start a node and read the
//! address it logs, stop it, and talk to its API with the access token these tests give it.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_taskmesh");

pub struct Node {
    pub child: Child,
    pub url: String,
    /// Every line the node logged so far.
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

/// A node a failing test leaves behind is killed, not left running.
impl Drop for Node {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts the binary on port 0 and reads the address it logs.
pub fn start(dir: &Path) -> Node {
    start_with(dir, &["--p2p-listen", "/ip4/127.0.0.1/tcp/0"])
}

/// The access token every node of these tests is given (a node keeps a token it finds in its
/// data directory), so one client talks to all of them.
pub const TOKEN: &str = "7d0c5e9a3b1f4e6d8c2a0b9f7e5d3c1a9b8f6e4d2c0a1b3f5e7d9c2b4a6f8e0d";

/// Starts the binary with more arguments for `run`.
pub fn start_with(dir: &Path, args: &[&str]) -> Node {
    start_via(Command::new(BIN), dir, args)
}

/// Starts a node with `command`, which is the binary or something that execs it with the
/// arguments it is given (`run …`).
pub fn start_via(mut command: Command, dir: &Path, args: &[&str]) -> Node {
    // A data directory the node is to make itself is left to it (it makes its own token).
    let token_file = dir.join("access-token");
    if dir.exists() && !token_file.exists() {
        std::fs::write(&token_file, format!("{TOKEN}\n")).expect("write the access token");
    }
    let mut child = command
        .args(["run", "--listen", "127.0.0.1:0", "--no-mdns"])
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .env("NO_COLOR", "1")
        .env("TASKMESH_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn taskmesh");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let lines = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            lines.lock().expect("log").push(line.clone());
            if let Some(i) = line.find("url=") {
                let _ = tx.send(
                    line[i + 4..]
                        .split_whitespace()
                        .next()
                        .unwrap_or("")
                        .to_owned(),
                );
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the node logs its URL");
    Node { child, url, log }
}

/// Stops a node cleanly (SIGTERM), so that the processes it runs stop with it.
pub fn stop(mut node: Node) {
    let _ = kill(Pid::from_raw(node.child.id() as i32), Signal::SIGTERM);
    let exited = wait_until("the node to stop", Duration::from_secs(15), || {
        node.child.try_wait().ok().flatten()
    });
    assert!(exited.success(), "{exited:?}");
}

/// A builder for the tests' HTTP clients. reqwest's TLS has no crypto provider of its own here
/// (see `taskmesh::http_client`): each client is given the node's ring configuration, trusting
/// no CA (these tests speak plain HTTP).
pub fn http_client() -> reqwest::blocking::ClientBuilder {
    reqwest::blocking::Client::builder().tls_backend_preconfigured(
        taskmesh::http_client::tls_config(rustls::RootCertStore::empty()),
    )
}

/// A client that sends the nodes' access token with every request.
pub fn client() -> reqwest::blocking::Client {
    client_with_timeout(Duration::from_secs(10))
}

/// A client with the nodes' access token that gives up on a request after `timeout`.
pub fn client_with_timeout(timeout: Duration) -> reqwest::blocking::Client {
    with_bearer(TOKEN).timeout(timeout).build().expect("client")
}

/// A builder for clients that send `token` as `Authorization: Bearer` with every request.
pub fn with_bearer(token: &str) -> reqwest::blocking::ClientBuilder {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().expect("header"),
    );
    http_client().default_headers(headers)
}

/// Sets one cluster setting through `url`'s API.
pub fn set_cluster_setting(http: &reqwest::blocking::Client, url: &str, key: &str, value: Value) {
    let mut settings: Value = http
        .get(format!("{url}/api/settings"))
        .send()
        .expect("get")
        .json()
        .expect("json");
    settings["cluster"][key] = value;
    let r = http
        .put(format!("{url}/api/settings"))
        .json(&settings)
        .send()
        .expect("put");
    assert_eq!(r.status().as_u16(), 200, "setting cluster.{key}");
}

/// Creates a task through `url`'s API.
pub fn create_task(http: &reqwest::blocking::Client, url: &str, body: &Value) {
    let r = http
        .post(format!("{url}/api/tasks"))
        .json(body)
        .send()
        .expect("post");
    assert_eq!(r.status().as_u16(), 201, "creating {}", body["name"]);
}

pub fn wait_until<T>(what: &str, deadline: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + deadline;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A free TCP port on loopback (free when asked; the node binds it a moment later).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

//! The mesh under a flood of TCP connections without the key: the node holds only a bounded
//! number of them (in all, and from one address), closes them all within its handshake timeout,
//! and meanwhile peers with the key keep talking and can still join, the API answers and runs
//! start. Alone in its test binary, so that the process's open file descriptors are the nodes'
//! and this test's own.

use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result};
use taskmesh::mesh::{CONNECTION_CAPS, HANDSHAKE_TIMEOUT, PeerId, Request, Response};
use taskmesh_tests::{TestNode, wait_for};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

const KEY: &str = "5f1c0a9e3b7d2a6c8e4f1b3d5a7c9e0b2d4f6a8c0e1b3d5f7a9c1e3b5d7f9a1c";
/// Connections that send nothing from one address, then from many, then ones that send garbage.
const FROM_ONE: usize = 100;
const FROM_MANY: usize = 250;
const GARBAGE: usize = 50;

async fn node(name: &str, peers: Vec<String>) -> Result<(TestNode, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let name = name.to_owned();
    let node = TestNode::start_with(dir.path(), move |c| {
        c.name = Some(name);
        c.cluster_key = Some(KEY.into());
        c.peers = peers;
    })
    .await?;
    Ok((node, dir))
}

/// A TCP connection to `port` on 127.0.0.1 from the loopback address `from` (127.0.0.x).
async fn connect_from(from: Ipv4Addr, port: u16) -> Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((from, 0)))?;
    Ok(socket
        .connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await?)
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// Reads what the node sent (its pnet nonce); true once the node has closed the connection.
fn closed_by_node(stream: &TcpStream) -> bool {
    let mut buf = [0u8; 256];
    loop {
        match stream.try_read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

/// Counts the flood's connections the node has closed, remembering each.
fn count_closed(flood: &[TcpStream], closed: &mut [bool]) -> usize {
    for (stream, done) in flood.iter().zip(closed.iter_mut()) {
        *done = *done || closed_by_node(stream);
    }
    closed.iter().filter(|c| **c).count()
}

async fn peer_id(node: &TestNode) -> Result<PeerId> {
    Ok(node
        .handle
        .peers()
        .this
        .peer_id
        .context("peer id")?
        .parse()?)
}

/// One request from `from` to `to` over the mesh, answered.
async fn exchange(from: &TestNode, to: &TestNode) -> Result<()> {
    let to_id = peer_id(to).await?;
    let mesh = from.handle.mesh().context("mesh up")?;
    wait_for(
        "an answered request over the mesh",
        Duration::from_secs(30),
        || {
            let mesh = mesh.clone();
            async move {
                let answer = tokio::time::timeout(
                    Duration::from_secs(2),
                    mesh.request(to_id, Request::Announcement),
                )
                .await;
                matches!(answer, Ok(Ok(Response::Announcement(Some(_))))).then_some(())
            }
        },
    )
    .await
}

/// Each peer `node` lists, by name, and whether it is connected: what a failed wait reports.
fn view(node: &TestNode) -> Vec<(String, bool)> {
    node.handle
        .peers()
        .peers
        .iter()
        .map(|p| (p.announcement.name.clone(), p.connected))
        .collect()
}

fn lists(node: &TestNode, name: &str) -> bool {
    view(node)
        .iter()
        .any(|(n, connected)| n == name && *connected)
}

#[tokio::test]
async fn a_flood_of_connections_without_the_key_is_bounded_and_closed() -> Result<()> {
    let (a, _da) = node("a", vec![]).await?;
    let seed = wait_for("a's p2p address", Duration::from_secs(5), || async {
        a.handle.peers().this.p2p_addrs.first().cloned()
    })
    .await?;
    let port: u16 = seed
        .split('/')
        .skip_while(|p| *p != "tcp")
        .nth(1)
        .context("tcp port")?
        .parse()?;
    let (b, _db) = node("b", vec![seed.clone()]).await?;
    wait_for("a and b to meet", Duration::from_secs(20), || async {
        (lists(&a, "b") && lists(&b, "a")).then_some(())
    })
    .await?;
    exchange(&b, &a).await?;
    let baseline = open_fds();
    let per_address = CONNECTION_CAPS.pending_incoming_per_address as usize;
    let cap = CONNECTION_CAPS.pending_incoming as usize;

    // One host floods the port with connections that never start the handshake: it gets its
    // few pending slots, the rest is closed at once, long before any handshake could time out.
    let started = tokio::time::Instant::now();
    let mut flood = Vec::new();
    for _ in 0..FROM_ONE {
        flood.push(connect_from(Ipv4Addr::new(127, 0, 0, 2), port).await?);
    }
    let mut closed = vec![false; FROM_ONE];
    wait_for(
        "the node to close what is over one address's cap",
        HANDSHAKE_TIMEOUT / 2,
        || {
            let done = count_closed(&flood, &mut closed);
            async move { (FROM_ONE - done <= per_address).then_some(()) }
        },
    )
    .await?;
    // Meanwhile a new peer with the key, at another address, gets in at once.
    let (c, dc) = node("c", vec![seed.clone()]).await?;
    wait_for("a to list c", HANDSHAKE_TIMEOUT / 2, || async {
        lists(&a, "c").then_some(())
    })
    .await
    .with_context(|| format!("a lists {:?}, c lists {:?}", view(&a), view(&c)))?;
    exchange(&c, &a).await?;
    assert!(started.elapsed() < HANDSHAKE_TIMEOUT, "too slow to tell");
    c.stop().await;
    drop(dc);

    // Many hosts flood it, some with garbage: the node holds at most its cap in all.
    let started = tokio::time::Instant::now();
    for i in 0..FROM_MANY {
        let from = Ipv4Addr::new(127, 0, 1, (i % 50) as u8 + 1);
        flood.push(connect_from(from, port).await?);
    }
    for i in 0..GARBAGE {
        let mut stream = connect_from(Ipv4Addr::new(127, 0, 2, (i % 50) as u8 + 1), port).await?;
        let garbage: Vec<u8> = (0..64).map(|j| (i * 31 + j * 7) as u8).collect();
        // The node may already have refused it; that is fine.
        let _ = stream.write_all(&garbage).await;
        flood.push(stream);
    }
    let total = flood.len();
    closed.resize(total, false);
    let mut most_fds = open_fds();
    wait_for(
        "the node to close what is over its pending cap",
        HANDSHAKE_TIMEOUT / 2,
        || {
            let done = count_closed(&flood, &mut closed);
            most_fds = most_fds.max(open_fds());
            async move { (total - done <= cap).then_some(()) }
        },
    )
    .await?;
    assert!(started.elapsed() < HANDSHAKE_TIMEOUT, "too slow to tell");
    assert!(
        most_fds <= baseline + total + cap + 16,
        "the node held more than its cap: {most_fds} descriptors open, {baseline} before the flood"
    );

    // The peers with the key keep talking, the API answers, and runs start.
    exchange(&b, &a).await?;
    exchange(&a, &b).await?;
    let health = tokio::time::timeout(Duration::from_secs(1), a.api.get("/api/health")).await;
    assert!(
        matches!(health, Ok(Ok((200, _)))),
        "/api/health did not answer within 1 s: {health:?}"
    );
    // Pinned to `a`: `c` stopped a moment ago and counts as live until its peer timeout, so
    // a run placed there would wait to be found lost.
    let (_, mut settings) = a.api.get("/api/settings").await?;
    settings["node"]["dependencies"] = serde_json::json!(["flood-target"]);
    let (status, answer) = a
        .api
        .send(reqwest::Method::PUT, "/api/settings", Some(&settings))
        .await?;
    anyhow::ensure!(status == 200, "setting a's dependencies: {status} {answer}");
    let task = a
        .api
        .create_task(&serde_json::json!({"name": "during-the-flood", "spec": {"command": ["true"], "dependencies": ["flood-target"]}, "when": {"mode": "manual"}}))
        .await?;
    // Accepted once the leader has heard a's new dependency (announced within a second).
    let run = wait_for(
        "the pinned task to be accepted",
        Duration::from_secs(10),
        || async { a.api.execute(&task).await.ok() },
    )
    .await?;
    let run = run["id"].as_str().context("run id")?.to_owned();
    wait_for("the run to succeed", Duration::from_secs(10), || async {
        let (_, r) = a.api.get(&format!("/api/runs/{run}")).await.ok()?;
        (r["status"] == "succeeded").then_some(())
    })
    .await?;

    // Every connection without the key is closed within the handshake timeout.
    wait_for(
        "the node to close every connection of the flood",
        HANDSHAKE_TIMEOUT * 3,
        || {
            let done = count_closed(&flood, &mut closed);
            async move { (done == total).then_some(()) }
        },
    )
    .await?;

    // With this test's ends closed too, the process is back near where it started.
    drop(flood);
    let fds = wait_for(
        "open descriptors back near the baseline",
        Duration::from_secs(20),
        || async {
            let now = open_fds();
            (now <= baseline + 16).then_some(now)
        },
    )
    .await?;
    assert!(
        fds <= baseline + 16,
        "{fds} open, {baseline} before the flood"
    );
    Ok(())
}

//! The mesh with in-process nodes on loopback (mDNS off, explicit peers): peer exchange, the
//! cluster key as a gate, and expiry of silent peers.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::json;
use taskmesh_tests::{TestNode, closed_port_outside_ephemeral_range, wait_for};

const KEY: &str = "5f1c0a9e3b7d2a6c8e4f1b3d5a7c9e0b2d4f6a8c0e1b3d5f7a9c1e3b5d7f9a1c";

async fn node(name: &str, key: &str, peers: Vec<String>) -> Result<(TestNode, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let (name, key) = (name.to_owned(), key.to_owned());
    let node = TestNode::start_with(dir.path(), move |c| {
        c.name = Some(name);
        c.cluster_key = Some(key);
        c.peers = peers;
    })
    .await?;
    Ok((node, dir))
}

fn names(node: &TestNode) -> BTreeSet<String> {
    node.handle
        .peers()
        .peers
        .into_iter()
        .map(|p| p.announcement.name)
        .collect()
}

async fn seed_addr(node: &TestNode) -> Result<String> {
    wait_for("the seed's p2p address", Duration::from_secs(5), || async {
        node.handle.peers().this.p2p_addrs.first().cloned()
    })
    .await
}

#[tokio::test]
async fn five_nodes_given_one_seed_all_learn_each_other() -> Result<()> {
    let (seed, _d0) = node("n0", KEY, vec![]).await?;
    let addr = seed_addr(&seed).await?;
    let mut nodes = vec![(seed, _d0)];
    for i in 1..5 {
        nodes.push(node(&format!("n{i}"), KEY, vec![addr.clone()]).await?);
    }
    let all: BTreeSet<String> = (0..5).map(|i| format!("n{i}")).collect();
    for (node, _) in &nodes {
        let me = node.handle.node_settings().name;
        let others: BTreeSet<String> = all.iter().filter(|n| **n != me).cloned().collect();
        wait_for(
            &format!("{me} to list every other node"),
            Duration::from_secs(20),
            || async { (names(node) == others).then_some(()) },
        )
        .await?;
    }
    // Peer exchange: n1..n4 were only given the seed, yet they connect to each other directly.
    let n1 = &nodes[1].0;
    wait_for(
        "n1 to connect to n4 directly",
        Duration::from_secs(20),
        || async {
            n1.handle
                .peers()
                .peers
                .iter()
                .any(|p| p.announcement.name == "n4" && p.connected)
                .then_some(())
        },
    )
    .await?;
    // The announcement carries what the scheduler and the UI need, and /api/peers shows it.
    let (status, view) = n1.api.get("/api/peers").await?;
    assert_eq!(status, 200);
    let seed_entry = view["peers"]
        .as_array()
        .expect("peers")
        .iter()
        .find(|p| p["name"] == "n0")
        .cloned()
        .expect("n0");
    assert_eq!(seed_entry["slots_total"], 8);
    assert!(
        seed_entry["dependencies"]
            .as_array()
            .is_some_and(|d| d.contains(&json!("os=linux")))
    );
    assert!(
        seed_entry["ui_url"]
            .as_str()
            .is_some_and(|u| u == nodes[0].0.api.base),
        "{seed_entry}"
    );
    assert_eq!(view["self"]["name"], "n1");
    // Paged: two peers a page in PeerId order, each peer once, the last page linking nowhere.
    let mut listed = Vec::new();
    let mut next = Some("/api/peers?limit=2".to_owned());
    while let Some(path) = next {
        let (status, page, link) = n1.api.page(&path).await?;
        assert_eq!(status, 200, "{path}: {page}");
        assert_eq!(page["self"]["name"], "n1", "every page names this node");
        let peers = page["peers"].as_array().expect("peers");
        assert!(peers.len() <= 2, "{path} holds {} peers", peers.len());
        listed.extend(
            peers
                .iter()
                .map(|p| p["peer_id"].as_str().unwrap_or("").to_owned()),
        );
        next = link;
    }
    let mut sorted = listed.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(listed, sorted, "in PeerId order, each once");
    assert_eq!(listed.len(), 4, "n1's four peers: {listed:?}");
    Ok(())
}

#[tokio::test]
async fn a_node_with_another_key_stays_out() -> Result<()> {
    let (a, _da) = node("a", KEY, vec![]).await?;
    let addr = seed_addr(&a).await?;
    let (b, _db) = node("b", KEY, vec![addr.clone()]).await?;
    let other = "0".repeat(64);
    let (intruder, _di) = node("intruder", &other, vec![addr.clone()]).await?;
    wait_for(
        "a and b to see each other",
        Duration::from_secs(20),
        || async { (names(&a).contains("b") && names(&b).contains("a")).then_some(()) },
    )
    .await?;
    // Watch for a while: the intruder keeps dialling (with backoff) and never gets in.
    let until = tokio::time::Instant::now() + Duration::from_secs(4);
    while tokio::time::Instant::now() < until {
        assert!(
            !names(&a).contains("intruder") && !names(&b).contains("intruder"),
            "the intruder got in"
        );
        assert!(
            names(&intruder).is_empty(),
            "the intruder learned peers: {:?}",
            names(&intruder)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_ne!(
        a.handle.peers().this.key_fingerprint,
        intruder.handle.peers().this.key_fingerprint
    );
    Ok(())
}

#[tokio::test]
async fn a_configured_peer_that_is_down_is_redialled_until_it_comes_up() -> Result<()> {
    let port = closed_port_outside_ephemeral_range()?;
    let (b, _db) = node("b", KEY, vec![format!("127.0.0.1:{port}")]).await?;
    // b dials a closed port and backs off; a then starts on that port.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(names(&b).is_empty());
    let dir = tempfile::tempdir()?;
    let a = TestNode::start_with(dir.path(), move |c| {
        c.name = Some("a".into());
        c.cluster_key = Some(KEY.into());
        c.p2p_listen = format!("/ip4/127.0.0.1/tcp/{port}");
    })
    .await?;
    wait_for(
        "b to reach a once it is up",
        Duration::from_secs(20),
        || async { (names(&b).contains("a") && names(&a).contains("b")).then_some(()) },
    )
    .await
    .with_context(|| format!("b lists {:?}, a lists {:?}", names(&b), names(&a)))?;
    Ok(())
}

/// A peer that stops drops out at once: its connection closes and a dial to it is refused, so
/// its process is gone; the peer timeout (3 s here) is for peers that fall silent (a cut
/// network, see the testnet tests), which nothing refuses.
#[tokio::test]
async fn a_peer_whose_process_is_gone_drops_out_before_its_timeout() -> Result<()> {
    let (a, _da) = node("a", KEY, vec![]).await?;
    let mut settings = a.api.get("/api/settings").await?.1;
    settings["cluster"]["peer_timeout"] = json!("3s");
    let (status, body) = a
        .api
        .send(reqwest::Method::PUT, "/api/settings", Some(&settings))
        .await?;
    assert_eq!(status, 200, "{body}");
    let addr = seed_addr(&a).await?;
    let (b, _db) = node("b", KEY, vec![addr]).await?;
    wait_for("a to list b", Duration::from_secs(20), || async {
        names(&a).contains("b").then_some(())
    })
    .await?;
    let stopped = tokio::time::Instant::now();
    b.stop().await;
    wait_for("b to drop out on a", Duration::from_secs(10), || async {
        (!names(&a).contains("b")).then_some(())
    })
    .await?;
    let after = stopped.elapsed();
    assert!(
        after < Duration::from_secs(3),
        "b dropped out after {after:?}, not before its 3 s timeout"
    );
    Ok(())
}

#[tokio::test]
async fn importing_a_members_settings_joins_its_mesh() -> Result<()> {
    let (a, _da) = node("a", KEY, vec![]).await?;
    seed_addr(&a).await?;
    let (b, _db) = node("b", &"1".repeat(64), vec![]).await?;
    // The export carries the key only when asked for secrets.
    let masked = a.api.get("/api/settings/export").await?.1;
    assert_eq!(masked["node"]["cluster_key"], "********");
    let export = a.api.get("/api/settings/export?secrets=true").await?.1;
    assert_eq!(export["node"]["cluster_key"], KEY);
    assert_eq!(export["exported_by"]["name"], "a");
    let r = b
        .api
        .http
        .post(format!("{}/api/settings/import", b.api.base))
        .body(export.to_string())
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await?);
    let settings = b.handle.settings(true);
    assert_eq!(settings.node.name, "b", "the newcomer keeps its own name");
    assert_eq!(settings.node.cluster_key.as_deref(), Some(KEY));
    wait_for("a and b to meet", Duration::from_secs(20), || async {
        (names(&a).contains("b") && names(&b).contains("a")).then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn metrics_show_the_peers_the_leader_and_the_bytes_between_them() -> Result<()> {
    use taskmesh_tests::metric_value;
    let (seed, _d0) = node("m0", KEY, vec![]).await?;
    let addr = seed_addr(&seed).await?;
    let (other, _d1) = node("m1", KEY, vec![addr]).await?;
    let nodes = [&seed, &other];
    // Each sees the other, one of them leads, and the follower has applied what was committed.
    let scrapes = wait_for(
        "two peers, one leader, no lag in the metrics",
        Duration::from_secs(30),
        || async {
            let mut scrapes = Vec::new();
            for node in nodes {
                scrapes.push(node.api.metrics().await.ok()?);
            }
            let all = |metric: &str, want: f64| {
                scrapes
                    .iter()
                    .all(|s| metric_value(s, metric, &[]) == Some(want))
            };
            let leaders: f64 = scrapes
                .iter()
                .filter_map(|s| metric_value(s, "taskmesh_raft_is_leader", &[]))
                .sum();
            let joined = scrapes.iter().all(|s| {
                metric_value(s, "taskmesh_raft_applied_index", &[]).is_some_and(|i| i >= 2.0)
            });
            (all("taskmesh_mesh_peers", 1.0)
                && all("taskmesh_raft_has_leader", 1.0)
                && all("taskmesh_raft_apply_lag", 0.0)
                && leaders == 1.0
                && joined)
                .then_some(scrapes)
        },
    )
    .await?;
    let terms: Vec<Option<f64>> = scrapes
        .iter()
        .map(|s| metric_value(s, "taskmesh_raft_term", &[]))
        .collect();
    assert_eq!(terms[0], terms[1], "one term on both nodes");
    for scrape in &scrapes {
        let commit = metric_value(scrape, "taskmesh_raft_commit_index", &[]).expect("commit");
        let applied = metric_value(scrape, "taskmesh_raft_applied_index", &[]).expect("applied");
        assert!(commit >= applied, "commit {commit} < applied {applied}");
        // Raft and announcements went both ways, over request streams and gossip.
        for (kind, direction) in [
            ("rpc", "out"),
            ("rpc", "in"),
            ("gossip", "out"),
            ("gossip", "in"),
        ] {
            let bytes = metric_value(
                scrape,
                "taskmesh_mesh_bytes_total",
                &[("kind", kind), ("direction", direction)],
            );
            assert!(
                bytes.is_some_and(|b| b > 0.0),
                "{kind} {direction}: {bytes:?}"
            );
        }
    }
    Ok(())
}

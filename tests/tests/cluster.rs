//! The replicated state with in-process nodes on loopback (mDNS off, explicit peers): forming
//! one cluster, replication, equal state hashes on every member, a new leader when the leader
//! stops, catch-up by snapshot, voters replaced, fast refusal without a quorum, and the merge of
//! two clusters.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use taskmesh::consensus::{ClusterStatus, Timing};
use taskmesh_tests::{TestNode, wait_for};

const KEY: &str = "7a1c0a9e3b7d2a6c8e4f1b3d5a7c9e0b2d4f6a8c0e1b3d5f7a9c1e3b5d7f9a1c";
const FORM: Duration = Duration::from_secs(30);

/// Short snapshot intervals, so that catch-up by snapshot shows in a test.
fn timing() -> Timing {
    Timing {
        snapshot_every: 40,
        keep_behind_snapshot: 5,
        ..Timing::default()
    }
}

struct Member {
    node: TestNode,
    dir: tempfile::TempDir,
    name: String,
}

async fn start(name: &str, dir: tempfile::TempDir, peers: Vec<String>) -> Result<Member> {
    let n = name.to_owned();
    let node = TestNode::start_with(dir.path(), move |c| {
        c.name = Some(n);
        c.cluster_key = Some(KEY.into());
        c.peers = peers;
        c.raft = timing();
    })
    .await?;
    Ok(Member {
        node,
        dir,
        name: name.to_owned(),
    })
}

async fn p2p_addr(node: &TestNode) -> Result<String> {
    wait_for("a p2p address", Duration::from_secs(5), || async {
        node.handle.peers().this.p2p_addrs.first().cloned()
    })
    .await
}

/// `n` nodes: the first alone (it founds the cluster at once), the others given its address.
async fn cluster(n: usize) -> Result<Vec<Member>> {
    let first = start("n0", tempfile::tempdir()?, vec![]).await?;
    let seed = p2p_addr(&first.node).await?;
    let mut members = vec![first];
    for i in 1..n {
        members.push(start(&format!("n{i}"), tempfile::tempdir()?, vec![seed.clone()]).await?);
    }
    Ok(members)
}

fn status(m: &Member) -> ClusterStatus {
    m.node.handle.peers().cluster
}

/// Waits until every member sees one cluster with one leader, `voters` voters and `learners`
/// learners; returns the leader's index.
async fn formed(members: &[&Member], voters: usize, learners: usize) -> Result<usize> {
    wait_for(
        &format!("one cluster of {voters} voters and {learners} learners"),
        FORM,
        || async {
            let all: Vec<ClusterStatus> = members.iter().map(|m| status(m)).collect();
            let first = &all[0];
            let same = all.iter().all(|s| {
                s.cluster.is_some() && s.cluster == first.cluster && s.leader == first.leader
            });
            let roles = |s: &ClusterStatus| {
                (
                    s.members.iter().filter(|m| m.voter).count(),
                    s.members.iter().filter(|m| !m.voter).count(),
                )
            };
            let shaped = all.iter().all(|s| roles(s) == (voters, learners));
            let live = all.iter().all(|s| s.members.iter().all(|m| m.live));
            let leader = all.iter().position(|s| s.role == "leader");
            (same && shaped && live && first.leader.is_some())
                .then_some(leader)
                .flatten()
        },
    )
    .await
}

fn task(name: &str) -> Value {
    json!({"name": name, "spec": {"command": ["true"]}, "when": {"mode": "manual"}})
}

async fn task_names(node: &TestNode) -> Result<BTreeSet<String>> {
    let (status, tasks) = node.api.get("/api/tasks").await?;
    ensure!(status == 200, "listing tasks answered {status}");
    Ok(tasks
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|t| t["name"].as_str().map(str::to_owned))
        .collect())
}

async fn all_have(members: &[&Member], names: &BTreeSet<String>) -> Result<()> {
    for m in members {
        wait_for(
            &format!("{} to have all {} tasks", m.name, names.len()),
            FORM,
            || async { task_names(&m.node).await.ok().filter(|n| n == names) },
        )
        .await?;
    }
    Ok(())
}

/// Waits until every member's `GET /api/peers` lists every member with one applied index and one
/// state hash; returns them, after checking the hash against each node's own state.
async fn states_agree(members: &[&Member]) -> Result<(u64, String)> {
    let last = std::sync::Mutex::new(Vec::new());
    let (applied, hash) = wait_for(
        "every member to show the same applied index and state hash",
        FORM,
        || async {
            let mut seen = BTreeSet::new();
            let mut views = Vec::new();
            for m in members {
                let (status, peers) = match m.node.api.get("/api/peers").await {
                    Ok(answer) => answer,
                    Err(e) => {
                        views.push(format!("{}: {e:#}", m.name));
                        *last.lock().expect("lock") = views;
                        return None;
                    }
                };
                let Some(listed) = peers["cluster"]["members"].as_array() else {
                    views.push(format!("{} ({status}): {peers}", m.name));
                    *last.lock().expect("lock") = views;
                    return None;
                };
                views.push(format!(
                    "{} ({}, own digest {:016x}): {}",
                    m.name,
                    status,
                    m.node.handle.state().digest(),
                    serde_json::Value::from(listed.clone())
                ));
                if status != 200 || listed.len() != members.len() {
                    *last.lock().expect("lock") = views;
                    return None;
                }
                *last.lock().expect("lock") = views.clone();
                for member in listed {
                    let applied = member["applied"].as_u64()?;
                    let hash = member["state_hash"].as_str()?.to_owned();
                    seen.insert((applied, hash));
                }
            }
            *last.lock().expect("lock") = views;
            (seen.len() == 1).then(|| seen.pop_first()).flatten()
        },
    )
    .await
    .with_context(|| format!("last seen:\n{}", last.lock().expect("lock").join("\n")))?;
    ensure!(
        hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
        "a state hash is 16 hex digits: {hash}"
    );
    for m in members {
        let own = format!("{:016x}", m.node.handle.state().digest());
        ensure!(
            own == hash,
            "{}'s state has the digest {own}, not {hash}",
            m.name
        );
    }
    Ok((applied, hash))
}

#[tokio::test]
async fn three_nodes_replicate_elect_a_new_leader_and_catch_up_by_snapshot() -> Result<()> {
    let mut members = cluster(3).await?;
    let leader = formed(&members.iter().collect::<Vec<_>>(), 3, 0).await?;

    // A write on a follower is answered once it is committed, and shows on every node.
    let follower = (leader + 1) % 3;
    members[follower]
        .node
        .api
        .create_task(&task("first"))
        .await?;
    let mut expected: BTreeSet<String> = ["first".to_string()].into();
    ensure!(
        task_names(&members[follower].node).await?.contains("first"),
        "the writer reads its own write"
    );
    all_have(&members.iter().collect::<Vec<_>>(), &expected).await?;

    // A run, wherever the leader placed it, reaches every node's run ledger, finished.
    let run = members[follower].node.api.execute("first").await?;
    let run_id = taskmesh::model::RunId(run["id"].as_str().unwrap_or_default().to_owned());
    let mut ran_on = BTreeSet::new();
    for m in &members {
        let seen = std::sync::Mutex::new(None);
        let node = wait_for(
            &format!("{} to list the run as finished", m.name),
            FORM,
            || async {
                let state = m.node.handle.state();
                let entry = state.runs.get(&run_id);
                *seen.lock().expect("lock") = entry.cloned();
                let entry = entry?;
                (entry.status.is_final() && !entry.node.is_empty()).then(|| entry.node.clone())
            },
        )
        .await
        .with_context(|| format!("last seen: {:?}", seen.lock().expect("lock")))?;
        ran_on.insert(node);
    }
    ensure!(
        ran_on.len() == 1,
        "every node agrees where it ran: {ran_on:?}"
    );
    // Replicas that applied the same entries show the same state hash.
    let (applied, hash) = states_agree(&members.iter().collect::<Vec<_>>()).await?;

    // The leader stops: the other two elect a new one and take writes.
    let gone = members.remove(leader);
    let old_leader = status(&gone).leader;
    let (gone_name, gone_dir) = (gone.name.clone(), gone.dir);
    gone.node.stop().await;
    let survivors: Vec<&Member> = members.iter().collect();
    wait_for("a new leader", FORM, || async {
        let s = status(survivors[0]);
        (s.leader.is_some() && s.leader != old_leader).then_some(())
    })
    .await?;
    // Enough writes that the log is compacted past what the stopped node has.
    for i in 0..100 {
        let name = format!("while-down-{i}");
        members[i % 2].node.api.create_task(&task(&name)).await?;
        expected.insert(name);
    }
    all_have(&survivors, &expected).await?;
    // The leader compacts its log once its snapshot is built and no replication uses what it
    // purges (openraft postpones a purge while a request to the stopped node holds those
    // entries), which can be a moment after the last write is applied everywhere.
    let leader_now = wait_for("the leader to compact its log", FORM, || async {
        let s = survivors
            .iter()
            .map(|m| status(m))
            .find(|s| s.role == "leader")?;
        s.purged.is_some().then_some(s)
    })
    .await?;
    let kept = leader_now.last_log.unwrap_or(0) - leader_now.purged.unwrap_or(0);
    ensure!(
        kept <= timing().snapshot_every + timing().keep_behind_snapshot + 10,
        "the log stays bounded: {kept} entries kept"
    );

    // It comes back (on a new port) and catches up, by snapshot since the log it missed is gone.
    // It is given both survivors, as an operator's peer list would: this test is about the
    // catch-up, and a node that knows only one seed learns of the others by gossip
    // (`tests/tests/mesh.rs`).
    let peers = vec![
        p2p_addr(&members[0].node).await?,
        p2p_addr(&members[1].node).await?,
    ];
    let back = start(&gone_name, gone_dir, peers).await?;
    members.push(back);
    all_have(&members.iter().collect::<Vec<_>>(), &expected).await?;
    let back = status(members.last().expect("back"));
    ensure!(
        back.snapshot.is_some(),
        "the returning node installed a snapshot: {back:?}"
    );
    // Having installed a snapshot, it agrees with the others on the state's hash, a new one.
    let (applied_now, hash_now) = states_agree(&members.iter().collect::<Vec<_>>()).await?;
    ensure!(
        applied_now > applied && hash_now != hash,
        "the state moved on: {applied} {hash} → {applied_now} {hash_now}"
    );
    Ok(())
}

#[tokio::test]
async fn five_voters_at_most_and_a_dead_voter_gives_its_seat_to_a_learner() -> Result<()> {
    let members = cluster(6).await?;
    let all: Vec<&Member> = members.iter().collect();
    let leader = formed(&all, 5, 1).await?;
    let mut settings = members[leader].node.handle.settings(true);
    settings.cluster.voter_timeout = "2s".parse().map_err(anyhow::Error::msg)?;
    members[leader].node.handle.put_settings(settings).await?;

    // Stop a voter that does not lead.
    let s = status(&members[leader]);
    let victim = s
        .members
        .iter()
        .find(|m| m.voter && !m.leader)
        .expect("a voter that does not lead")
        .peer_id
        .clone();
    let mut members = members;
    let index = members
        .iter()
        .position(|m| m.node.handle.peers().this.peer_id.as_deref() == Some(&victim))
        .expect("the victim");
    let stopped = members.remove(index);
    stopped.node.stop().await;

    let rest: Vec<&Member> = members.iter().collect();
    let s = wait_for("a learner to take the dead voter's seat", FORM, || async {
        let s = rest
            .iter()
            .map(|m| status(m))
            .find(|s| s.role == "leader")?;
        let victim_is_learner = s.members.iter().any(|m| m.peer_id == victim && !m.voter);
        let voters: Vec<_> = s.members.iter().filter(|m| m.voter).collect();
        (victim_is_learner && voters.len() == 5 && voters.iter().all(|m| m.live)).then_some(s)
    })
    .await?;
    ensure!(
        s.members.iter().filter(|m| !m.voter).count() == 1,
        "the dead voter stays a member, as a learner: {s:?}"
    );
    rest[0]
        .node
        .api
        .create_task(&task("after-replacement"))
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_node_without_a_majority_refuses_writes_fast() -> Result<()> {
    let mut members = cluster(3).await?;
    formed(&members.iter().collect::<Vec<_>>(), 3, 0).await?;
    members[0].node.api.create_task(&task("before")).await?;
    let lone = members.remove(0);
    for m in members {
        m.node.stop().await;
    }
    let started = Instant::now();
    let (code, body) = lone.node.api.post("/api/tasks", &task("alone")).await?;
    let took = started.elapsed();
    ensure!(code == 503, "answered {code}: {body}");
    let message = body["error"].as_str().unwrap_or_default();
    ensure!(message.contains("no quorum"), "the error says why: {body}");
    ensure!(took < Duration::from_secs(5), "it failed fast, in {took:?}");
    ensure!(
        task_names(&lone.node).await? == BTreeSet::from(["before".to_string()]),
        "nothing changed"
    );
    // A run it cannot commit is 503 too (not a refusal: the task could run, the cluster
    // cannot agree on it now).
    let (code, body) = lone
        .node
        .api
        .post("/api/tasks/before/run", &Value::Null)
        .await?;
    ensure!(code == 503, "Execute now answered {code}: {body}");
    ensure!(body.get("refused").is_none(), "not a refusal: {body}");
    Ok(())
}

#[tokio::test]
async fn two_clusters_that_meet_merge_and_keep_every_task() -> Result<()> {
    // Two clusters of two nodes each, started apart.
    let a0 = start("alpha", tempfile::tempdir()?, vec![]).await?;
    let a1 = start(
        "alpha-2",
        tempfile::tempdir()?,
        vec![p2p_addr(&a0.node).await?],
    )
    .await?;
    let b0 = start("beta", tempfile::tempdir()?, vec![]).await?;
    let b1 = start(
        "beta-2",
        tempfile::tempdir()?,
        vec![p2p_addr(&b0.node).await?],
    )
    .await?;
    formed(&[&a0, &a1], 1, 1).await?;
    formed(&[&b0, &b1], 1, 1).await?;
    ensure!(status(&a0).cluster != status(&b0).cluster, "two clusters");
    for (m, own) in [(&a0, "only-alpha"), (&b0, "only-beta")] {
        m.node.api.create_task(&task("backup")).await?;
        m.node.api.create_task(&task(own)).await?;
    }

    // A member of the cluster that will give way (the higher id) is away during the merge.
    let (giving, staying) = match status(&a0).cluster > status(&b0).cluster {
        true => ([a0, a1], [b0, b1]),
        false => ([b0, b1], [a0, a1]),
    };
    let [giving_leader, away] = giving;
    let (away_name, away_dir) = (away.name.clone(), away.dir);
    away.node.stop().await;

    // The giving cluster learns an address of the other: they meet.
    let mut settings = giving_leader.node.handle.settings(true);
    settings.node.peers = vec![p2p_addr(&staying[0].node).await?];
    giving_leader.node.handle.put_settings(settings).await?;

    let present = [&staying[0], &staying[1], &giving_leader];
    let names = wait_for(
        "the three present nodes to hold four tasks",
        FORM,
        || async {
            let names = task_names(&present[0].node).await.ok()?;
            for m in &present[1..] {
                (task_names(&m.node).await.ok()? == names).then_some(())?;
            }
            (names.len() == 4).then_some(names)
        },
    )
    .await?;
    ensure!(
        names.contains("only-alpha") && names.contains("only-beta") && names.contains("backup"),
        "{names:?}"
    );
    let renamed: Vec<&String> = names
        .iter()
        .filter(|n| n.starts_with("backup (from "))
        .collect();
    ensure!(
        renamed.len() == 1,
        "the clash is renamed visibly: {names:?}"
    );

    // The member that was away comes back to a cluster that no longer exists: it follows its
    // old peers into the merged one.
    let peers = vec![p2p_addr(&giving_leader.node).await?];
    let back = start(&away_name, away_dir, peers).await?;
    let all = [&staying[0], &staying[1], &giving_leader, &back];
    formed(&all, 3, 1).await?;
    all_have(&all, &names).await?;
    Ok(())
}

#[tokio::test]
async fn runs_land_only_on_nodes_whose_dependencies_match() -> Result<()> {
    let members = cluster(3).await?;
    let all: Vec<&Member> = members.iter().collect();
    let leader = formed(&all, 3, 0).await?;
    // One node has a GPU; the others do not.
    let gpu = (leader + 2) % 3;
    let mut settings = members[gpu].node.handle.settings(true);
    settings.node.dependencies = vec!["gpu=nvidia".into()];
    members[gpu].node.handle.put_settings(settings).await?;
    let gpu_peer = members[gpu]
        .node
        .handle
        .peers()
        .this
        .peer_id
        .expect("peer id");
    wait_for(
        "every node to see the GPU node's dependencies",
        FORM,
        || async {
            all.iter()
                .filter(|m| m.name != members[gpu].name)
                .all(|m| {
                    m.node.handle.peers().peers.iter().any(|p| {
                        p.announcement.peer_id == gpu_peer
                            && p.announcement
                                .dependencies
                                .contains(&"gpu=nvidia".to_string())
                    })
                })
                .then_some(())
        },
    )
    .await?;

    // Execute now on a follower without a GPU: the run goes to the GPU node.
    let asker = (leader + 1) % 3;
    let api = &members[asker].node.api;
    api.create_task(&json!({
        "name": "train",
        "spec": {"command": ["echo", "trained on the {{device}}"], "dependencies": ["gpu=nvidia"],
                 "parameters": {"device": "gpu"}},
        "when": {"mode": "manual"}
    }))
    .await?;
    for _ in 0..5 {
        let run = api.execute("train").await?;
        // The follower handed the request to the leader, which answered with the placed run.
        ensure!(run["node_id"] == gpu_peer.as_str(), "placed at once: {run}");
        let id = run["id"].as_str().unwrap_or_default().to_owned();
        let done = wait_for("the run to finish", FORM, || async {
            let (_, run) = api.get(&format!("/api/runs/{id}")).await.ok()?;
            (run["status"] == "succeeded").then_some(run)
        })
        .await?;
        ensure!(
            done["node_id"] == gpu_peer.as_str(),
            "the run ran on the GPU node: {done}"
        );
        // Its log, on the node that asked, comes from the GPU node over the mesh: as text, and
        // as the live stream the run page follows.
        let log_url = format!("{}/api/runs/{id}/log", api.base);
        let text = api.http.get(&log_url).send().await?.text().await?;
        ensure!(text.contains("trained on the gpu"), "remote log: {text}");
        let stream = api
            .http
            .get(format!("{log_url}?follow=true"))
            .send()
            .await?
            .text()
            .await?;
        ensure!(
            stream.contains("trained on the gpu") && stream.contains("event: end"),
            "followed remote log: {stream}"
        );
    }
    // Parameters given on the follower travel with the request to the leader and with the
    // run to the GPU node, which runs with them.
    let (code, run) = api
        .post(
            "/api/tasks/train/run",
            &json!({"parameters": {"device": "given device"}}),
        )
        .await?;
    ensure!(code == 202, "answered {code}: {run}");
    ensure!(
        run["node_id"] == gpu_peer.as_str() && run["parameters"]["device"] == "given device",
        "placed with its parameters: {run}"
    );
    let id = run["id"].as_str().unwrap_or_default().to_owned();
    wait_for("the run with parameters to finish", FORM, || async {
        let (_, run) = api.get(&format!("/api/runs/{id}")).await.ok()?;
        (run["status"] == "succeeded").then_some(())
    })
    .await?;
    let text = api
        .http
        .get(format!("{}/api/runs/{id}/log", api.base))
        .send()
        .await?
        .text()
        .await?;
    ensure!(
        text == "trained on the given device\n",
        "remote log: {text}"
    );

    // The GPU node has them in its own history, with their logs.
    let (_, runs) = members[gpu].node.api.get("/api/runs?limit=10").await?;
    ensure!(runs.as_array().map_or(0, Vec::len) >= 6, "{runs}");

    // A task no live node can run is refused (409, not 503: nothing failed), saying why.
    api.create_task(&json!({
        "name": "riscv",
        "spec": {"command": ["true"], "dependencies": ["arch=riscv64"]},
        "when": {"mode": "manual"}
    }))
    .await?;
    let (code, body) = api.post("/api/tasks/riscv/run", &Value::Null).await?;
    ensure!(code == 409, "answered {code}: {body}");
    ensure!(
        body["error"] == "no live node has arch=riscv64" && body["refused"] == "no_node",
        "it says why: {body}"
    );
    let page = api
        .http
        .get(format!("{}/", api.base))
        .send()
        .await?
        .text()
        .await?;
    ensure!(
        page.contains("no live node has arch=riscv64") && !page.contains("no live node has gpu"),
        "the task list says which task no node can run"
    );
    Ok(())
}

#[tokio::test]
async fn each_notification_leaves_the_mesh_once() -> Result<()> {
    let fake = taskmesh_tests::fake_http::FakeHttp::start().await?;
    let members = cluster(3).await?;
    let all: Vec<&Member> = members.iter().collect();
    let leader = formed(&all, 3, 0).await?;
    let mut settings = members[leader].node.handle.settings(true);
    settings.cluster.channels = serde_json::from_value(json!({
        "hook": {"kind": "webhook", "url": format!("{}/hook", fake.url)}
    }))?;
    members[leader].node.handle.put_settings(settings).await?;
    members[leader]
        .node
        .api
        .create_task(&json!({
            "name": "fails",
            "spec": {"command": ["false"], "concurrency": "allow"},
            "when": {"mode": "manual"},
            "exit_rules": [{"on": "!0", "action": "notify", "channel": "hook"}],
        }))
        .await?;
    // Runs asked for on every node, placed wherever the leader likes.
    let mut ids = BTreeSet::new();
    for i in 0..6 {
        let run = members[i % 3].node.api.execute("fails").await?;
        ids.insert(run["id"].as_str().context("run id")?.to_owned());
    }
    // Each run says its notification was delivered (by the node that ran it) ...
    for id in &ids {
        wait_for("the notification's outcome", FORM, || async {
            let (_, run) = members[0]
                .node
                .api
                .get(&format!("/api/runs/{id}"))
                .await
                .ok()?;
            run["actions"]
                .as_array()?
                .iter()
                .any(|a| a == "notify hook: delivered (webhook, 1 try)")
                .then_some(())
        })
        .await?;
    }
    // ... and the receiver got exactly one message per run.
    let seen: Vec<String> = fake
        .seen()
        .iter()
        .map(|s| s.body["run_id"].as_str().unwrap_or_default().to_owned())
        .collect();
    ensure!(seen.len() == ids.len(), "one message per run: {seen:?}");
    ensure!(
        seen.iter().cloned().collect::<BTreeSet<_>>() == ids,
        "each run's own message: {seen:?}"
    );
    Ok(())
}

/// Growth guard (counts, not times): what a node gossips does not grow with what the cluster
/// does. Idle, a node sends beats, not its announcement; however much the cluster writes, it
/// sends its announcement at most once per refresh (2 s), not per change; and one announcement
/// stays under 1 KiB.
#[tokio::test]
async fn nodes_gossip_beats_when_idle_and_one_announcement_per_refresh_when_busy() -> Result<()> {
    let members = cluster(3).await?;
    let all: Vec<&Member> = members.iter().collect();
    let leader = &members[formed(&all, 3, 0).await?];
    let gossiped = |m: &Member| -> Result<(u64, u64, u64)> {
        let mesh = m.node.handle.mesh().context("the mesh runs")?;
        let p = mesh.published();
        Ok((p.count(), p.beats(), p.largest()))
    };
    let counts = || -> Result<Vec<(u64, u64, u64)>> { members.iter().map(gossiped).collect() };
    // Idle: every node beats, and announces at most once (its load goes with the beats).
    let before = counts()?;
    let t0 = Instant::now();
    wait_for("every node to beat twice", FORM, || async {
        let now = counts().ok()?;
        now.iter()
            .zip(&before)
            .all(|(n, b)| n.1 >= b.1 + 2)
            .then_some(now)
    })
    .await
    .map(|now| -> Result<()> {
        for ((m, n), b) in members.iter().zip(&now).zip(&before) {
            ensure!(
                n.0 <= b.0 + 1,
                "{} announced itself {} times in {:.1} s of idling",
                m.name,
                n.0 - b.0,
                t0.elapsed().as_secs_f64()
            );
        }
        Ok(())
    })??;
    // Busy: 80 writes over about 8 s, each changing every node's applied index and digest.
    let before = counts()?;
    let t0 = Instant::now();
    let mut pace = tokio::time::interval(Duration::from_millis(100));
    let mut names = BTreeSet::new();
    for i in 0..80 {
        pace.tick().await;
        let name = format!("busy-{i}");
        leader.node.api.create_task(&task(&name)).await?;
        names.insert(name);
    }
    all_have(&all, &names).await?;
    let seconds = t0.elapsed().as_secs_f64();
    // One per refresh, and two to spare (a refresh that falls just before the first write and
    // just after the last).
    let allowed = (seconds / 2.0).ceil() as u64 + 2;
    for ((m, now), before) in members.iter().zip(counts()?).zip(before) {
        let sent = now.0 - before.0;
        ensure!(
            sent <= allowed,
            "{} announced itself {sent} times during 80 writes in {seconds:.1} s (at most {allowed})",
            m.name
        );
        ensure!(
            now.2 <= 1024,
            "{}'s largest announcement is {} bytes",
            m.name,
            now.2
        );
    }
    Ok(())
}

/// Liveness that does not grow with the mesh: with five voters and two learners, a learner
/// beats only the voters and a voter only the other voters, each pair of voters once a round,
/// yet every node keeps every other listed live; each learner lists the other on the voters'
/// word, without hearing it itself.
#[tokio::test]
async fn learners_beat_only_the_voters_and_list_each_other_on_their_word() -> Result<()> {
    let members = cluster(7).await?;
    let all: Vec<&Member> = members.iter().collect();
    formed(&all, 5, 2).await?;
    let peer_id = |m: &Member| m.node.handle.peers().this.peer_id.unwrap_or_default();
    let learners: Vec<&Member> = members
        .iter()
        .filter(|m| status(m).role == "learner")
        .collect();
    ensure!(learners.len() == 2, "two learners");
    let beats = |m: &Member| -> Result<(u64, u64)> {
        let mesh = m.node.handle.mesh().context("the mesh runs")?;
        let p = mesh.published();
        Ok((p.beats(), p.beat_exchanges()))
    };
    let before: Vec<(u64, u64)> = members.iter().map(beats).collect::<Result<_>>()?;
    for (me, other) in [(learners[0], learners[1]), (learners[1], learners[0])] {
        let other_id = peer_id(other);
        wait_for(
            &format!("{} to list {} unheard but vouched for", me.name, other.name),
            FORM,
            || async {
                me.node
                    .handle
                    .peers()
                    .peers
                    .iter()
                    .find(|p| p.announcement.peer_id == other_id)
                    .is_some_and(|p| p.heard_ms >= 4000 && p.last_seen_ms < 2500)
                    .then_some(())
            },
        )
        .await?;
    }
    // Two rounds of beats at least since `before` (the vouching above may have held already).
    wait_for("two rounds of beats on every node", FORM, || async {
        members
            .iter()
            .zip(&before)
            .all(|(m, b)| beats(m).is_ok_and(|(rounds, _)| rounds >= b.0 + 2))
            .then_some(())
    })
    .await?;
    let (mut voter_rounds, mut voter_exchanges) = (0, 0);
    for (m, before) in members.iter().zip(before) {
        let (rounds, exchanges) = beats(m)?;
        let (rounds, exchanges) = (rounds - before.0, exchanges - before.1);
        let learner = learners.iter().any(|l| l.name == m.name);
        if !learner {
            voter_rounds += rounds;
            voter_exchanges += exchanges;
        }
        // A learner beats the five voters; a voter the four others.
        let most = if learner { 5 } else { 4 };
        ensure!(rounds >= 2, "{} beat {rounds} times", m.name);
        ensure!(
            exchanges <= most * rounds,
            "{} sent {exchanges} beats in {rounds} rounds (at most {most} a round)",
            m.name
        );
        let listed = m.node.handle.peers().peers;
        ensure!(
            listed.len() == 6 && listed.iter().all(|p| p.last_seen_ms < 5000),
            "{} lists {:?}",
            m.name,
            listed
                .iter()
                .map(|p| (&p.announcement.name, p.last_seen_ms))
                .collect::<Vec<_>>()
        );
    }
    // Of two voters one beats and the other answers: the five exchange ten beats a round, not
    // twenty (2 a round each on average; 10 of slack for voters a round ahead of others).
    ensure!(
        voter_exchanges <= 2 * voter_rounds + 10,
        "the voters sent {voter_exchanges} beats in {voter_rounds} rounds"
    );
    Ok(())
}

/// History from every node: a task placed on all three nodes runs ten times; the replicated
/// ledger keeps only the newest 20 of its 30 runs, yet any node lists all 30 (the older ones
/// asked from the nodes that ran them), filtered by node, in the API and on the task's page in
/// a browser; once a node is down, the page names it.
#[tokio::test]
async fn any_node_lists_every_run_of_a_task_that_ran_on_three_nodes() -> Result<()> {
    let members = cluster(3).await?;
    let all: Vec<&Member> = members.iter().collect();
    formed(&all, 3, 0).await?;
    let api = &members[0].node.api;
    let id = api
        .create_task(&json!({"name": "everywhere", "spec": {"command": ["true"]},
                             "when": {"mode": "manual"}, "placement": "all"}))
        .await?;
    let finished = |m: &Member| {
        let path = format!("/api/runs?task={id}&limit=100&status=succeeded");
        let api = m.node.api.clone();
        async move {
            let (_, runs) = api.get(&path).await.ok()?;
            runs.as_array().map(Vec::len)
        }
    };
    for round in 1..=10 {
        // The previous round ends in the ledger a moment after the nodes' own history says so.
        wait_for(
            "Execute now to be accepted",
            Duration::from_secs(10),
            || async {
                let (status, _) = api
                    .post(&format!("/api/tasks/{id}/run"), &Value::Null)
                    .await
                    .ok()?;
                (status == 202).then_some(())
            },
        )
        .await?;
        wait_for(
            &format!("round {round} to end on all three"),
            Duration::from_secs(20),
            || async { (finished(&members[0]).await? >= 3 * round).then_some(()) },
        )
        .await?;
    }
    let task = taskmesh::model::TaskId(id.clone());
    // Once the last round's ends are committed, the ledger keeps the newest 20 of the 30.
    wait_for(
        "the ledger to keep 20 runs",
        Duration::from_secs(10),
        || async {
            let state = members[0].node.handle.state();
            let kept: Vec<_> = state.runs.of_task_before(&task, None).collect();
            (kept.len() == 20 && kept.iter().all(|r| r.status.is_final())).then_some(())
        },
    )
    .await?;
    for m in &members {
        let (status, runs) = m
            .node
            .api
            .get(&format!("/api/runs?task={id}&limit=100"))
            .await?;
        assert_eq!(status, 200);
        let runs = runs.as_array().cloned().unwrap_or_default();
        assert_eq!(runs.len(), 30, "{} lists {} runs", m.name, runs.len());
        for name in ["n0", "n1", "n2"] {
            let on = runs.iter().filter(|r| r["node"] == name).count();
            assert_eq!(on, 10, "{} lists {on} runs of {name}", m.name);
        }
        let (_, only) = m
            .node
            .api
            .get(&format!("/api/runs?task={id}&limit=100&node=n1"))
            .await?;
        let only = only.as_array().cloned().unwrap_or_default();
        assert!(
            only.len() == 10 && only.iter().all(|r| r["node"] == "n1"),
            "{only:?}"
        );
    }
    // A page of 25 and the next: every run once.
    let (_, first, next) = members[2]
        .node
        .api
        .page(&format!("/api/runs?task={id}&limit=25"))
        .await?;
    let next = next.context("a next page")?;
    let (_, second, _) = members[2].node.api.page(&next).await?;
    let ids: BTreeSet<String> = first
        .as_array()
        .into_iter()
        .chain(second.as_array())
        .flatten()
        .filter_map(|r| r["id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(ids.len(), 30);

    // The task's page on the third node, in a browser, lists all 30.
    let browser = taskmesh_tests::webdriver::Browser::logged_in(&members[2].node.api).await?;
    browser
        .goto(&format!("{}/tasks/{id}", members[2].node.api.base))
        .await?;
    browser.find("#task-runs table.runs").await?;
    let rows = browser.find_all("#task-runs table.runs tbody tr").await?;
    assert_eq!(rows.len(), 30);
    let bars = browser.find_all("#task-runs svg.spark rect.ok").await?;
    assert_eq!(bars.len(), 30, "a bar per finished run, all succeeded");
    let summary = browser
        .text(&browser.find("#task-runs .task-summary").await?)
        .await?;
    assert!(summary.contains("100 %"), "{summary}");

    // n1 goes down: the others list what they can and name it.
    let mut members = members;
    let n1 = members.remove(1);
    let dir = n1.dir;
    n1.node.stop().await;
    let unanswered = wait_for(
        "n1 to be named as down",
        Duration::from_secs(30),
        || async {
            let r = members[0]
                .node
                .api
                .http
                .get(format!(
                    "{}/api/runs?task={id}&limit=100",
                    members[0].node.api.base
                ))
                .send()
                .await
                .ok()?;
            let named = r
                .headers()
                .get("taskmesh-unanswered")?
                .to_str()
                .ok()?
                .to_owned();
            named.contains("n1").then_some(named)
        },
    )
    .await?;
    let (_, runs) = members[0]
        .node
        .api
        .get(&format!("/api/runs?task={id}&limit=100"))
        .await?;
    let from_n1 = runs
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["node"] == "n1")
        .count();
    assert!(
        from_n1 < 10,
        "{from_n1} runs of n1 listed while it is down ({unanswered})"
    );
    browser
        .goto(&format!("{}/tasks/{id}", members[1].node.api.base))
        .await?;
    let notice = browser.find("#task-runs .unanswered").await?;
    let text = browser.text(&notice).await?;
    assert!(text.contains("n1"), "{text}");
    drop(dir);
    Ok(())
}

//! The real `taskmesh` binary: durability under `kill -9`, a clean SIGTERM, and the CLI.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

mod common;

use common::*;

#[test]
fn everything_answered_ok_survives_kill_9() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut node = start(dir.path());
    let http = client();
    set_cluster_setting(&http, &node.url, "retention_days", json!(3));
    for i in 0..30 {
        let body = json!({"name": format!("task-{i}"), "spec": {"command": ["true"]}, "when": {"mode": "manual"}});
        create_task(&http, &node.url, &body);
    }
    // kill -9 right after the last OK answer.
    kill(Pid::from_raw(node.child.id() as i32), Signal::SIGKILL).expect("kill -9");
    node.child.wait().expect("reap");

    let node = start(dir.path());
    let tasks: Vec<Value> = http
        .get(format!("{}/api/tasks", node.url))
        .send()
        .expect("get")
        .json()
        .expect("json");
    let mut names: Vec<String> = tasks
        .iter()
        .map(|t| t["name"].as_str().expect("name").to_owned())
        .collect();
    names.sort();
    let mut expected: Vec<String> = (0..30).map(|i| format!("task-{i}")).collect();
    expected.sort();
    assert_eq!(names, expected);
    let settings: Value = http
        .get(format!("{}/api/settings", node.url))
        .send()
        .expect("get")
        .json()
        .expect("json");
    assert_eq!(settings["cluster"]["retention_days"], 3);
    stop(node);
}

fn task_names(http: &reqwest::blocking::Client, url: &str) -> Option<BTreeSet<String>> {
    let tasks: Vec<Value> = http
        .get(format!("{url}/api/tasks"))
        .send()
        .ok()?
        .json()
        .ok()?;
    Some(
        tasks
            .iter()
            .filter_map(|t| t["name"].as_str().map(str::to_owned))
            .collect(),
    )
}

/// Three nodes on loopback with fixed p2p ports, each given the others as peers, so a node
/// restarts on the same address.
struct Cluster {
    dirs: Vec<tempfile::TempDir>,
    ports: Vec<u16>,
    nodes: Vec<Option<Node>>,
}

impl Cluster {
    const KEY: &str = "3e1c0a9e3b7d2a6c8e4f1b3d5a7c9e0b2d4f6a8c0e1b3d5f7a9c1e3b5d7f9a1c";

    fn start(n: usize) -> Self {
        let mut cluster = Self {
            dirs: (0..n).map(|_| tempfile::tempdir().expect("tmp")).collect(),
            ports: (0..n).map(|_| free_port()).collect(),
            nodes: Vec::new(),
        };
        cluster.nodes = (0..n).map(|i| Some(cluster.launch(i))).collect();
        cluster
    }

    fn launch(&self, i: usize) -> Node {
        let key_file = self.dirs[i].path().join("given-cluster-key");
        std::fs::write(&key_file, Self::KEY).expect("write the key file");
        let mut args = vec![
            "--p2p-listen".to_string(),
            format!("/ip4/127.0.0.1/tcp/{}", self.ports[i]),
            "--cluster-key-file".into(),
            key_file.display().to_string(),
            "--name".into(),
            format!("n{i}"),
        ];
        for (j, port) in self.ports.iter().enumerate() {
            if j != i {
                args.extend(["--peer".to_string(), format!("127.0.0.1:{port}")]);
            }
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        start_with(self.dirs[i].path(), &args)
    }

    fn urls(&self) -> Vec<String> {
        self.nodes.iter().flatten().map(|n| n.url.clone()).collect()
    }

    fn url(&self, i: usize) -> String {
        self.nodes[i].as_ref().expect("running").url.clone()
    }

    /// Waits until every running node sees one cluster of `voters` voters with a leader;
    /// returns the leader's index.
    fn formed(&self, voters: usize, http: &reqwest::blocking::Client) -> usize {
        wait_until("one cluster with a leader", Duration::from_secs(30), || {
            let mut leader = None;
            for (i, node) in self.nodes.iter().enumerate() {
                let Some(node) = node else { continue };
                let peers: Value = http
                    .get(format!("{}/api/peers", node.url))
                    .send()
                    .ok()?
                    .json()
                    .ok()?;
                let cluster = &peers["cluster"];
                let live_voters = cluster["members"]
                    .as_array()?
                    .iter()
                    .filter(|m| m["voter"] == true && m["live"] == true)
                    .count();
                if live_voters < voters || cluster["leader"].is_null() {
                    return None;
                }
                if cluster["role"] == "leader" {
                    leader = Some(i);
                }
            }
            leader
        })
    }

    /// The index of the running node with this PeerId.
    fn index_of(&self, peer_id: &str, http: &reqwest::blocking::Client) -> usize {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_some())
            .find(|&i| {
                let peers: Value = http
                    .get(format!("{}/api/peers", self.url(i)))
                    .send()
                    .and_then(|r| r.json())
                    .unwrap_or(Value::Null);
                peers["self"]["peer_id"] == peer_id
            })
            .expect("a running node with that PeerId")
    }

    fn kill_9(&mut self, i: usize) {
        let mut node = self.nodes[i].take().expect("running");
        kill(Pid::from_raw(node.child.id() as i32), Signal::SIGKILL).expect("kill -9");
        node.child.wait().expect("reap");
    }

    fn stop_all(self) {
        for node in self.nodes.into_iter().flatten() {
            stop(node);
        }
    }
}

#[test]
fn a_cluster_keeps_every_acknowledged_write_through_kill_9_of_its_leader() {
    const WRITES: usize = 1000;
    const WRITERS: usize = 4;
    let mut cluster = Cluster::start(3);
    let urls = cluster.urls();
    let http = client();
    let leader = cluster.formed(3, &http);

    // Writers spread their writes over all nodes, and move on to the next node when one fails;
    // a write counts once a node answered 201 (or said it exists: a retry of a write that did
    // commit before its answer was lost).
    let acked = std::sync::Arc::new(std::sync::Mutex::new(BTreeSet::new()));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (urls, acked, http) = (urls.clone(), acked.clone(), client());
            std::thread::spawn(move || {
                for k in 0..WRITES / WRITERS {
                    let name = format!("w{w}-{k:04}");
                    let body = json!({"name": name, "spec": {"command": ["true"]}, "when": {"mode": "manual"}});
                    let until = Instant::now() + Duration::from_secs(30);
                    let mut target = k % urls.len();
                    loop {
                        assert!(Instant::now() < until, "{name} was never acknowledged");
                        let answer = http.post(format!("{}/api/tasks", urls[target])).json(&body).send();
                        match answer.map(|r| (r.status().as_u16(), r.text().unwrap_or_default())) {
                            Ok((201, _)) => break,
                            Ok((400, text)) if text.contains("already called") => break,
                            _ => target = (target + 1) % urls.len(),
                        }
                    }
                    acked.lock().expect("lock").insert(name);
                }
            })
        })
        .collect();
    wait_until("half of the writes", Duration::from_secs(120), || {
        (acked.lock().expect("lock").len() >= WRITES / 2).then_some(())
    });
    cluster.kill_9(leader);
    for writer in writers {
        writer.join().expect("writer");
    }
    let acked = acked.lock().expect("lock").clone();
    assert_eq!(acked.len(), WRITES);

    cluster.nodes[leader] = Some(cluster.launch(leader));
    for url in &cluster.urls() {
        let names = wait_until(
            "every acknowledged write on every node",
            Duration::from_secs(60),
            || task_names(&http, url).filter(|n| n.len() >= acked.len()),
        );
        assert_eq!(names, acked, "{url} holds exactly the acknowledged writes");
    }
    cluster.stop_all();
}

#[test]
fn a_run_whose_node_dies_is_lost_and_retried_on_another_node() {
    let mut cluster = Cluster::start(3);
    let http = client();
    let leader = cluster.formed(3, &http);
    let url = cluster.url(leader);
    set_cluster_setting(&http, &url, "max_retries", json!(1));
    let body =
        json!({"name": "long", "spec": {"command": ["sleep", "300"]}, "when": {"mode": "manual"}});
    create_task(&http, &url, &body);

    // The run lands somewhere; that node dies with it.
    let run: Value = http
        .post(format!("{url}/api/tasks/long/run"))
        .send()
        .expect("run")
        .json()
        .expect("json");
    let first = run["id"].as_str().expect("id").to_owned();
    let get = |url: &str, id: &str| -> Option<Value> {
        http.get(format!("{url}/api/runs/{id}"))
            .send()
            .ok()?
            .json()
            .ok()
    };
    let running = wait_until("the run to start", Duration::from_secs(20), || {
        get(&url, &first).filter(|r| r["status"] == "running")
    });
    let victim_peer = running["node_id"].as_str().expect("placed").to_owned();
    let victim = cluster.index_of(&victim_peer, &http);
    cluster.kill_9(victim);

    // A survivor marks it lost and retries it elsewhere, once (max_retries = 1).
    let survivor = cluster.urls()[0].clone();
    let retry = wait_until(
        "the run to be retried elsewhere",
        Duration::from_secs(60),
        || {
            let lost = get(&survivor, &first)?;
            if lost["status"] != "lost" {
                return None;
            }
            let runs: Vec<Value> = http
                .get(format!("{survivor}/api/runs?limit=50"))
                .send()
                .ok()?
                .json()
                .ok()?;
            runs.into_iter().find(|r| {
                r["trigger"]["kind"] == "retry"
                    && r["trigger"]["of"] == first.as_str()
                    && r["status"] == "running"
            })
        },
    );
    assert_eq!(retry["attempt"], 2, "{retry}");
    assert_ne!(
        retry["node_id"],
        victim_peer.as_str(),
        "retried on another node: {retry}"
    );
    let runs: Vec<Value> = http
        .get(format!("{survivor}/api/runs?limit=50"))
        .send()
        .expect("runs")
        .json()
        .expect("json");
    let retries = runs
        .iter()
        .filter(|r| r["trigger"]["kind"] == "retry")
        .count();
    assert_eq!(retries, 1, "one retry, no more: {runs:?}");
    cluster.stop_all();
}

#[test]
fn a_retry_waiting_for_its_backoff_outlives_the_node_that_asked_for_it() {
    let mut cluster = Cluster::start(3);
    let http = client();
    let leader = cluster.formed(3, &http);
    let url = cluster.url(leader);
    set_cluster_setting(&http, &url, "max_retries", json!(1));
    set_cluster_setting(&http, &url, "retry_backoff", json!("6s"));
    // The leader knows the asker is gone (3 s) before the backoff ends (6 s).
    set_cluster_setting(&http, &url, "peer_timeout", json!("3s"));
    // Fails on its first attempt; its exit rule asks for a retry, after the backoff.
    let body = json!({
        "name": "flaky",
        "spec": {"shell": "test \"$TASKMESH_ATTEMPT\" -gt 1"},
        "when": {"mode": "manual"},
        "exit_rules": [{"on": "!0", "action": "retry"}],
    });
    create_task(&http, &url, &body);
    let run: Value = http
        .post(format!("{url}/api/tasks/flaky/run"))
        .send()
        .expect("run")
        .json()
        .expect("json");
    let first = run["id"].as_str().expect("id").to_owned();
    let runs = |url: &str| -> Option<Vec<Value>> {
        http.get(format!("{url}/api/runs?limit=50"))
            .send()
            .ok()?
            .json()
            .ok()
    };
    let retry_of_first = |r: &&Value| r["trigger"]["of"] == first.as_str();

    // The node that ran it asked for the retry, which waits in the cluster's ledger. That node
    // dies before the backoff ends.
    let waiting = wait_until(
        "the retry to wait for its backoff",
        Duration::from_secs(20),
        || {
            runs(&url)?
                .iter()
                .find(|r| retry_of_first(r) && r["status"] == "queued")
                .cloned()
        },
    );
    // The run's own report (its node sends reports every 20 ms) may reach the ledger just
    // after the retry its exit rule asked for.
    let failed = wait_until("the first run to end", Duration::from_secs(10), || {
        runs(&url)?.into_iter().find(|r| {
            r["id"] == first.as_str() && r["status"] != "queued" && r["status"] != "running"
        })
    });
    assert_eq!(failed["status"], "failed", "{failed}");
    let asker = cluster.index_of(failed["node_id"].as_str().expect("placed"), &http);
    cluster.kill_9(asker);

    // A survivor's leader places it once the backoff is over; it runs, once, and succeeds.
    let survivor = cluster.urls()[0].clone();
    let done = wait_until("the retry to succeed", Duration::from_secs(60), || {
        runs(&survivor)?
            .into_iter()
            .find(|r| r["id"] == waiting["id"] && r["status"] == "succeeded")
    });
    assert_eq!(done["attempt"], 2, "{done}");
    assert_ne!(done["node_id"], failed["node_id"], "{done}");
    let retries = runs(&survivor)
        .expect("runs")
        .iter()
        .filter(retry_of_first)
        .count();
    assert_eq!(retries, 1, "one retry");
    cluster.stop_all();
}

#[test]
fn an_always_task_whose_node_dies_runs_on_another_node_once() {
    let mut cluster = Cluster::start(3);
    let http = client();
    let leader = cluster.formed(3, &http);
    let url = cluster.url(leader);
    set_cluster_setting(&http, &url, "peer_timeout", json!("3s"));
    let body = json!({"name": "daemon", "spec": {"command": ["sleep", "300"]}, "when": {"mode": "always"}});
    create_task(&http, &url, &body);

    // Which nodes run it: each node's own active runs of the daemon.
    let running_on = |cluster: &Cluster| -> Vec<usize> {
        (0..3)
            .filter(|&i| cluster.nodes[i].is_some())
            .filter(|&i| {
                let runs: Vec<Value> = http
                    .get(format!("{}/api/runs?task=daemon&limit=20", cluster.url(i)))
                    .send()
                    .and_then(|r| r.json())
                    .unwrap_or_default();
                let me: Value = http
                    .get(format!("{}/api/peers", cluster.url(i)))
                    .send()
                    .and_then(|r| r.json())
                    .unwrap_or(Value::Null);
                runs.iter()
                    .any(|r| r["status"] == "running" && r["node_id"] == me["self"]["peer_id"])
            })
            .collect()
    };
    let holder = wait_until(
        "the daemon to run on one node",
        Duration::from_secs(20),
        || match running_on(&cluster)[..] {
            [one] => Some(one),
            _ => None,
        },
    );
    cluster.kill_9(holder);
    let killed = Instant::now();
    let next = wait_until(
        "the daemon to run on another node",
        Duration::from_secs(30),
        || match running_on(&cluster)[..] {
            [one] => Some(one),
            _ => None,
        },
    );
    let took = killed.elapsed();
    assert_ne!(next, holder);
    // A holder whose process died is handed over at once when a dial to it is refused (about
    // 1.5 s on loopback, docs/guarantees.md). The bound held here is the hand-over of a silent
    // holder, which a loaded machine has been seen to fall back to (10.6 s once in CI): counted
    // live up to 5 s after it was last heard, then the lease term (1.5 s) + kill_grace (5 s) +
    // 1 s, then placing and starting it.
    assert!(took < Duration::from_secs(20), "moved after {took:?}");
    eprintln!("the always-task ran again on another node {took:?} after its node was killed");
    // And it stays at one instance (nothing else starts it) for a while.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        let now = running_on(&cluster);
        if now != vec![next] {
            let runs: Value = http
                .get(format!(
                    "{}/api/runs?task=daemon&limit=20",
                    cluster.url(next)
                ))
                .send()
                .and_then(|r| r.json())
                .unwrap_or_default();
            panic!("exactly one instance, on {next}: {now:?}; its runs: {runs:#}");
        }
    }
    cluster.stop_all();
}

/// Lines `start|stop <run id> <ns since the epoch>` the daemon's processes wrote, in order.
fn daemon_lines(file: &Path) -> Vec<(String, String, u128)> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let mut parts = line.split(' ');
            let (what, run, at) = (parts.next()?, parts.next()?, parts.next()?);
            Some((what.to_owned(), run.to_owned(), at.parse().ok()?))
        })
        .collect()
}

#[test]
fn a_drained_node_hands_its_daemon_over_without_overlap_and_finishes_its_runs() {
    let cluster = Cluster::start(3);
    let http = client();
    let leader = cluster.formed(3, &http);
    let url = cluster.url(leader);
    let out = tempfile::tempdir().expect("tmp");
    let log = out.path().join("daemon");
    let done = out.path().join("done");
    // The daemon writes when it starts and, half a second after SIGTERM, when it ends: two
    // instances at once would show as a start before the previous stop.
    let daemon = format!(
        "echo start $TASKMESH_RUN_ID $(date +%s%N) >> {log}; \
         trap 'sleep 0.5; echo stop $TASKMESH_RUN_ID $(date +%s%N) >> {log}; exit 0' TERM; \
         while :; do sleep 0.05; done",
        log = log.display()
    );
    create_task(
        &http,
        &url,
        &json!({"name": "daemon", "spec": {"shell": daemon}, "when": {"mode": "always"}}),
    );
    // One run on every node that outlasts the drain, and one that shows where runs go.
    create_task(
        &http,
        &url,
        &json!({"name": "long", "placement": "all", "spec": {"shell": format!(
            "sleep 4; echo $TASKMESH_RUN_ID >> {}", done.display())}, "when": {"mode": "manual"}}),
    );
    create_task(
        &http,
        &url,
        &json!({"name": "probe", "placement": "all", "spec": {"shell": "true", "concurrency": "allow"},
            "when": {"mode": "manual"}}),
    );
    let started = wait_until("the daemon to start", Duration::from_secs(20), || {
        daemon_lines(&log)
            .into_iter()
            .find(|(what, ..)| what == "start")
    });
    let run: Value = http
        .get(format!("{url}/api/runs/{}", started.1))
        .send()
        .and_then(|r| r.json())
        .expect("the daemon's run");
    let holder = cluster.index_of(run["node_id"].as_str().expect("placed"), &http);
    let holder_id = run["node_id"].as_str().expect("placed").to_owned();
    let r = http
        .post(format!("{url}/api/tasks/long/run"))
        .send()
        .expect("run long");
    assert_eq!(r.status().as_u16(), 202);

    // Drained through the CLI of another node, which waits until nothing runs there.
    let asker = (holder + 1) % 3;
    let mut drain = operator_cli(&cluster.url(asker), cluster.dirs[asker].path())
        .args(["node", "drain", &format!("n{holder}"), "--wait"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("taskmesh node drain");
    let status = wait_until("the drain to complete", Duration::from_secs(60), || {
        drain.try_wait().expect("wait")
    });
    let mut said = String::new();
    std::io::Read::read_to_string(drain.stdout.as_mut().expect("stdout"), &mut said).expect("read");
    assert!(status.success(), "{said}");
    assert!(
        said.lines()
            .last()
            .is_some_and(|l| l.ends_with("drained: nothing runs there")),
        "{said}"
    );

    // The daemon runs again elsewhere, and never two at once.
    let lines = wait_until(
        "the daemon to start elsewhere",
        Duration::from_secs(30),
        || {
            let lines = daemon_lines(&log);
            (lines.iter().filter(|(what, ..)| what == "start").count() == 2).then_some(lines)
        },
    );
    let kinds: Vec<&str> = lines.iter().map(|(what, ..)| what.as_str()).collect();
    assert_eq!(kinds, ["start", "stop", "start"], "{lines:?}");
    assert_eq!(
        lines[0].1, lines[1].1,
        "the first instance stopped: {lines:?}"
    );
    assert!(
        lines[1].2 < lines[2].2,
        "the second started after the first stopped: {lines:?}"
    );
    eprintln!(
        "the daemon ran again {} ms after its first instance ended",
        (lines[2].2 - lines[1].2) / 1_000_000
    );
    let second: Value = http
        .get(format!("{url}/api/runs/{}", lines[2].1))
        .send()
        .and_then(|r| r.json())
        .expect("the second run");
    assert_ne!(second["node_id"], holder_id.as_str(), "{second}");

    // The run that was there went on to its end; new runs go only to the two others.
    let runs: Vec<Value> = http
        .get(format!("{url}/api/runs?task=long&limit=10"))
        .send()
        .and_then(|r| r.json())
        .expect("runs");
    let there = runs
        .iter()
        .find(|r| r["node_id"] == holder_id.as_str())
        .expect("a run of long on the drained node");
    assert_eq!(there["status"], "succeeded", "{there}");
    assert!(
        std::fs::read_to_string(&done)
            .unwrap_or_default()
            .contains(there["id"].as_str().expect("id"))
    );
    let probe_nodes = |http: &reqwest::blocking::Client| -> BTreeSet<String> {
        let answer = http
            .post(format!("{url}/api/tasks/probe/run"))
            .send()
            .expect("run probe");
        let status = answer.status().as_u16();
        let first: Value = answer.json().expect("json");
        assert_eq!(status, 202, "{first}");
        let created = first["created_at"].clone();
        wait_until("the probe's runs", Duration::from_secs(10), || {
            let runs: Vec<Value> = http
                .get(format!("{url}/api/runs?task=probe&limit=10"))
                .send()
                .and_then(|r| r.json())
                .ok()?;
            let nodes: BTreeSet<String> = runs
                .iter()
                .filter(|r| r["created_at"] == created)
                .filter_map(|r| r["node_id"].as_str().map(str::to_owned))
                .collect();
            Some(nodes).filter(|n| !n.is_empty())
        })
    };
    let nodes = probe_nodes(&http);
    assert_eq!(nodes.len(), 2, "{nodes:?}");
    assert!(!nodes.contains(&holder_id), "{nodes:?}");

    // Undrained, it takes runs again.
    let r: Value = http
        .post(format!("{url}/api/peers/{holder_id}/undrain"))
        .send()
        .and_then(|r| r.json())
        .expect("undrain");
    assert_eq!(r["drained"], false, "{r}");
    assert_eq!(probe_nodes(&http).len(), 3);
    let unknown = http
        .post(format!("{url}/api/peers/nobody/drain"))
        .send()
        .expect("drain nobody");
    assert_eq!(unknown.status().as_u16(), 404);

    // Every node lists who drained and undrained it: the CLI on the asker, the API on `url`.
    let holder_url = cluster.url(holder);
    let changes: Vec<Value> = wait_until(
        "the activity on the holder",
        Duration::from_secs(10),
        || {
            let all: Vec<Value> = http
                .get(format!("{holder_url}/api/activity"))
                .send()
                .ok()?
                .json()
                .ok()?;
            let drains: Vec<Value> = all.into_iter().filter(|a| a["what"] == "drain").collect();
            (drains.len() == 2).then_some(drains)
        },
    );
    let (undrain, drain) = (&changes[0], &changes[1]);
    assert_eq!(drain["detail"], "drained", "{drain}");
    assert_eq!(drain["via"], "cli", "{drain}");
    assert_eq!(drain["node"], format!("n{asker}"), "{drain}");
    assert_eq!(drain["subject"], holder_id.as_str(), "{drain}");
    assert_eq!(drain["client"], "127.0.0.1", "{drain}");
    assert_eq!(undrain["detail"], "undrained", "{undrain}");
    assert_eq!(undrain["via"], "api", "{undrain}");
    assert_eq!(undrain["node"], format!("n{leader}"), "{undrain}");
    cluster.stop_all();
}

/// Sleeps until half a second past the next whole second: between cron slots, when no
/// one-second run of the chaos test is in flight.
fn between_slots() {
    let now = chrono::Utc::now();
    let into = now.timestamp_subsec_millis() as u64;
    let wait = if into < 500 { 500 - into } else { 1500 - into };
    std::thread::sleep(Duration::from_millis(wait));
}

#[test]
fn every_cron_slot_runs_exactly_once_while_the_leader_is_killed_twice() {
    let mut cluster = Cluster::start(3);
    let http = client();
    let mut leader = cluster.formed(3, &http);
    let out = tempfile::tempdir().expect("tmp");
    let slots_file = out.path().join("slots");
    let task = |enabled: bool| {
        json!({
            "name": "tick",
            // `allow`: a slot must not wait for a run on the killed node to be found lost.
            "spec": {
                "shell": format!("echo $TASKMESH_SLOT >> {}", slots_file.display()),
                "concurrency": "allow",
            },
            "when": {"mode": "cron", "schedule": "* * * * * *", "timezone": "UTC", "catch_up": "all"},
            "enabled": enabled,
        })
    };
    create_task(&http, &cluster.url(leader), &task(true));
    let read_slots = || -> Vec<String> {
        std::fs::read_to_string(&slots_file)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    };
    wait_until("the first slot", Duration::from_secs(10), || {
        (!read_slots().is_empty()).then_some(())
    });

    // Twice: kill -9 the leader between two slots, let the others go on, start it again.
    for _ in 0..2 {
        std::thread::sleep(Duration::from_secs(16));
        between_slots();
        cluster.kill_9(leader);
        std::thread::sleep(Duration::from_secs(4));
        cluster.nodes[leader] = Some(cluster.launch(leader));
        leader = cluster.formed(3, &http);
    }
    std::thread::sleep(Duration::from_secs(16));
    let r = http
        .put(format!("{}/api/tasks/tick", cluster.url(leader)))
        .json(&task(false))
        .send()
        .expect("put");
    assert_eq!(r.status().as_u16(), 200);
    let stopped = chrono::Utc::now();

    // Every second from the first slot until the task was disabled ran exactly once.
    let parse = |s: &str| {
        chrono::DateTime::parse_from_rfc3339(s)
            .expect("slot")
            .to_utc()
    };
    let complete = wait_until("the slots to be complete", Duration::from_secs(20), || {
        let slots: BTreeSet<_> = read_slots().iter().map(|s| parse(s)).collect();
        let (first, last) = (*slots.first()?, *slots.last()?);
        let span = (last - first).num_seconds() + 1;
        (last >= stopped - chrono::Duration::seconds(2) && slots.len() as i64 == span)
            .then_some(span)
    });
    let lines = read_slots();
    let unique: BTreeSet<&String> = lines.iter().collect();
    assert_eq!(
        lines.len(),
        unique.len(),
        "no slot ran twice: {} runs for {} slots",
        lines.len(),
        unique.len()
    );
    assert!(complete >= 55, "the test covered {complete} slots");
    eprintln!("{complete} slots, each ran once, across two leader kills");
    cluster.stop_all();
}

/// Whether `pid` is a live process (not gone, not a zombie).
fn process_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat[stat.rfind(')')? + 1..]
                .split_whitespace()
                .next()?
                .to_owned();
            Some(state != "Z")
        })
        .unwrap_or(false)
}

/// The node's reaper: the child it forked that names itself `taskmesh-reaper`.
fn reaper_of(node: &Node) -> i32 {
    let parent = node.child.id().to_string();
    let found = std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let Some(close) = stat.rfind(')') else {
                return false;
            };
            let name = stat.find('(').map(|open| &stat[open + 1..close]);
            let ppid = stat[close + 1..].split_whitespace().nth(1);
            name == Some("taskmesh-reaper") && ppid == Some(parent.as_str())
        })
        .collect::<Vec<_>>();
    assert_eq!(found.len(), 1, "one reaper: {found:?}");
    found[0]
}

/// A once-a-day cron task whose slot comes in three seconds. Its first run writes
/// `SLOT RUN_ID RETRY_OF` to `effects` and sleeps in a child of its shell (the sleep's pid in
/// `sleep.pid`); a retry only writes its line.
fn a_slot_soon(out: &Path) -> Value {
    let slot = chrono::Utc::now() + chrono::Duration::seconds(3);
    let script = format!(
        "echo \"$TASKMESH_SLOT $TASKMESH_RUN_ID ${{TASKMESH_RETRY_OF:-}}\" >> {out}/effects; \
         if [ -z \"$TASKMESH_RETRY_OF\" ]; then sleep 300 & echo $! > {out}/sleep.pid; wait; fi",
        out = out.display()
    );
    json!({
        "name": "nightly",
        "spec": {"shell": script},
        "when": {"mode": "cron", "schedule": slot.format("%S %M %H * * *").to_string(), "timezone": "UTC"},
    })
}

/// The pid of the sleep the first run of [`a_slot_soon`] started, once it has.
fn the_runs_sleep(out: &Path) -> i32 {
    wait_until("the run's sleep", Duration::from_secs(15), || {
        std::fs::read_to_string(out.join("sleep.pid"))
            .ok()?
            .trim()
            .parse::<i32>()
            .ok()
    })
}

fn effects(out: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(out.join("effects"))
        .unwrap_or_default()
        .lines()
        .map(|l| l.split(' ').map(str::to_owned).collect())
        .collect()
}

/// After the restart: the first run is `lost`, retried exactly once with the same slot, and the
/// retry's process saw the slot and the run it retries.
fn retried_once_with_its_slot(http: &reqwest::blocking::Client, node: &Node, out: &Path) {
    let first = effects(out)[0].clone();
    let retry = wait_until("the retry to finish", Duration::from_secs(30), || {
        let runs: Vec<Value> = http
            .get(format!("{}/api/runs?limit=50", node.url))
            .send()
            .ok()?
            .json()
            .ok()?;
        let lost = runs.iter().find(|r| r["id"] == first[1].as_str())?;
        let retries: Vec<&Value> = runs
            .iter()
            .filter(|r| r["trigger"]["kind"] == "retry" && r["trigger"]["of"] == first[1].as_str())
            .collect();
        (lost["status"] == "lost" && retries.len() == 1 && retries[0]["status"] == "succeeded")
            .then(|| retries[0].clone())
    });
    let lines = effects(out);
    assert_eq!(lines.len(), 2, "the run and its one retry: {lines:?}");
    assert_eq!(
        lines[1][0], first[0],
        "the retry ran with the same slot: {lines:?}"
    );
    assert_eq!(lines[1][1], retry["id"].as_str().expect("id"), "{lines:?}");
    assert_eq!(
        lines[1][2], first[1],
        "TASKMESH_RETRY_OF names the lost run: {lines:?}"
    );
}

#[test]
fn a_run_dies_with_its_node_and_is_retried_once_with_its_slot() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = tempfile::tempdir().expect("tmp");
    let mut node = start(dir.path());
    let http = client();
    create_task(&http, &node.url, &a_slot_soon(out.path()));
    let sleep = the_runs_sleep(out.path());
    assert!(process_alive(sleep));

    // kill -9 of the node alone: its reaper takes the run's whole process group with it.
    kill(Pid::from_raw(node.child.id() as i32), Signal::SIGKILL).expect("kill -9");
    node.child.wait().expect("reap");
    wait_until(
        "the sleep to die with its node",
        Duration::from_secs(5),
        || (!process_alive(sleep)).then_some(()),
    );

    let node = start(dir.path());
    retried_once_with_its_slot(&http, &node, out.path());
    stop(node);
}

#[test]
fn a_restarted_node_kills_what_its_previous_process_left_before_reporting_it_lost() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = tempfile::tempdir().expect("tmp");
    let mut node = start(dir.path());
    let http = client();
    create_task(&http, &node.url, &a_slot_soon(out.path()));
    let sleep = the_runs_sleep(out.path());

    // The reaper and the node both die: the run's processes live on as orphans.
    let reaper = reaper_of(&node);
    kill(Pid::from_raw(reaper), Signal::SIGKILL).expect("kill -9 the reaper");
    kill(Pid::from_raw(node.child.id() as i32), Signal::SIGKILL).expect("kill -9");
    node.child.wait().expect("reap");
    wait_until("the reaper to be gone", Duration::from_secs(5), || {
        (!process_alive(reaper)).then_some(())
    });
    assert!(
        process_alive(sleep),
        "the orphan lives on until the node starts again"
    );

    // The next start kills them before it serves anything.
    let node = start(dir.path());
    assert!(
        !process_alive(sleep),
        "the orphan is gone once the node is up"
    );
    retried_once_with_its_slot(&http, &node, out.path());
    stop(node);
}

#[test]
fn sigterm_stops_children_and_flushes_their_runs() {
    let dir = tempfile::tempdir().expect("tmp");
    let marker = dir.path().join("got-term");
    let mut node = start(dir.path());
    let http = client();
    let script = format!(
        "trap 'echo term > {}; exit 0' TERM; echo ready; sleep 300 & wait",
        marker.display()
    );
    let body = json!({"name": "daemon", "spec": {"shell": script}, "when": {"mode": "always"}});
    create_task(&http, &node.url, &body);
    let run_id = wait_until("the daemon to run", Duration::from_secs(10), || {
        let runs: Vec<Value> = http
            .get(format!("{}/api/runs", node.url))
            .send()
            .ok()?
            .json()
            .ok()?;
        runs.iter()
            .find(|r| r["status"] == "running")
            .map(|r| r["id"].as_str().unwrap_or("").to_owned())
    });
    // SIGTERM only once the trap is set (the script says so), or the shell dies without it.
    wait_until("the daemon's trap", Duration::from_secs(10), || {
        let log = http
            .get(format!("{}/api/runs/{run_id}/log", node.url))
            .send()
            .ok()?
            .text()
            .ok()?;
        log.contains("ready").then_some(())
    });
    kill(Pid::from_raw(node.child.id() as i32), Signal::SIGTERM).expect("sigterm");
    let status = wait_until("the node to exit", Duration::from_secs(15), || {
        node.child.try_wait().ok().flatten()
    });
    assert!(status.success(), "{status:?}");
    assert_eq!(
        std::fs::read_to_string(&marker)
            .expect("the child got SIGTERM")
            .trim(),
        "term"
    );

    let node = start(dir.path());
    let run: Value = http
        .get(format!("{}/api/runs/{run_id}", node.url))
        .send()
        .expect("get")
        .json()
        .expect("json");
    assert_eq!(
        run["status"], "succeeded",
        "the run's end was recorded before exit: {run}"
    );
    stop(node);
}

/// The CLI as an operator on the node's machine runs it: pointed at `url`, with no token given,
/// so that it finds the token in the node's data directory `data_dir` by itself.
fn operator_cli(url: &str, data_dir: &Path) -> Command {
    let mut cli = Command::new(BIN);
    cli.env("TASKMESH_URL", url)
        .env("TASKMESH_DATA_DIR", data_dir)
        .env_remove("TASKMESH_TOKEN")
        .env_remove("TASKMESH_TOKEN_FILE");
    cli
}

/// What the operator's CLI ([`operator_cli`]) says to `args`: its exit code, stdout and stderr.
fn operator_says(url: &str, data_dir: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = operator_cli(url, data_dir)
        .args(args)
        .output()
        .expect("run the cli");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn the_cli_adds_runs_and_removes_a_task() {
    let dir = tempfile::tempdir().expect("tmp");
    let node = start(dir.path());
    let cli = |args: &[&str]| {
        operator_cli(&node.url, dir.path())
            .args(args)
            .output()
            .expect("run the cli")
    };
    let out = cli(&["task", "add", "greet", "--", "echo", "hello from the cli"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&["task", "run", "greet", "--follow"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from the cli\n");
    assert_eq!(out.status.code(), Some(0));
    let out = cli(&["task", "add", "fail", "--shell", "exit 7"]);
    assert!(out.status.success());
    assert_eq!(
        cli(&["task", "run", "fail", "--follow"]).status.code(),
        Some(7)
    );
    let ls = String::from_utf8_lossy(&cli(&["task", "ls"]).stdout).to_string();
    assert!(ls.contains("greet") && ls.contains("fail"), "{ls}");
    let out = cli(&[
        "task",
        "add",
        "tagged",
        "--label",
        "team=ops",
        "--description",
        "for ops",
        "--",
        "true",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ops =
        String::from_utf8_lossy(&cli(&["task", "ls", "--label", "team=ops"]).stdout).to_string();
    assert!(ops.contains("tagged") && !ops.contains("greet"), "{ops}");
    // The CLI's own changes are listed as the CLI's.
    let activity = String::from_utf8_lossy(&cli(&["activity", "--limit", "3"]).stdout).to_string();
    let newest = activity.lines().nth(1).unwrap_or_default();
    assert!(
        newest.contains("put_task") && newest.contains("tagged") && newest.contains("cli on "),
        "{activity}"
    );
    // Without a name, the node the CLI talks to is drained and undrained.
    let drained = cli(&["node", "drain", "--wait"]);
    let said = String::from_utf8_lossy(&drained.stdout).to_string();
    assert!(
        drained.status.success() && said.contains("drained: nothing runs there"),
        "{said}"
    );
    let said = String::from_utf8_lossy(&cli(&["node", "undrain"]).stdout).to_string();
    assert!(said.contains("takes runs"), "{said}");
    let bad = cli(&["task", "add", "x", "--cron", "99 * * * *", "--", "true"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("when.schedule"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let show = String::from_utf8_lossy(&cli(&["task", "show", "greet"]).stdout).to_string();
    assert!(
        show.contains("\"hello from the cli\"") && show.contains("recent runs:"),
        "{show}"
    );
    let edited = dir.path().join("greet.json");
    std::fs::write(
        &edited,
        r#"{"name": "greet", "spec": {"command": ["echo", "edited"]}, "when": {"mode": "manual"}}"#,
    )
    .expect("write");
    let out = cli(&[
        "task",
        "edit",
        "greet",
        "--file",
        edited.to_str().expect("path"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&cli(&["task", "run", "greet", "--follow"]).stdout),
        "edited\n"
    );
    // In $EDITOR: the file it gets is private, and what it saves is what the task becomes.
    let editor = dir.path().join("editor.sh");
    let seen_mode = dir.path().join("edit-file-mode");
    std::fs::write(
        &editor,
        format!(
            "#!/bin/sh\nstat -c %a \"$1\" > '{}'\nsed -i 's/edited/edited again/' \"$1\"\n",
            seen_mode.display()
        ),
    )
    .expect("write the editor");
    std::fs::set_permissions(&editor, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let out = Command::new(BIN)
        .args(["task", "edit", "greet"])
        .env("TASKMESH_URL", &node.url)
        .env("TASKMESH_DATA_DIR", dir.path())
        .env("VISUAL", &editor)
        .output()
        .expect("run the cli");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(&seen_mode).expect("mode").trim(),
        "600"
    );
    assert_eq!(
        String::from_utf8_lossy(&cli(&["task", "run", "greet", "--follow"]).stdout),
        "edited again\n"
    );
    let export = dir.path().join("settings.json");
    assert!(
        cli(&["settings", "export", "-o", export.to_str().expect("path")])
            .status
            .success()
    );
    assert!(
        cli(&["settings", "import", export.to_str().expect("path")])
            .status
            .success()
    );
    assert!(cli(&["task", "rm", "greet"]).status.success());
    let ls = String::from_utf8_lossy(&cli(&["task", "ls"]).stdout).to_string();
    assert!(!ls.contains("greet"), "{ls}");
    let help = Command::new(BIN).arg("--help").output().expect("help");
    assert!(String::from_utf8_lossy(&help.stdout).contains("Run a node"));
    stop(node);
}

/// What supervisorctl and `nomad alloc` do, from the CLI: the cluster's runs listed and
/// filtered, one shown, a run's log and a task's newest log read (the daemon's too), a daemon's
/// run stopped (and started again by its supervision), a task disabled and enabled; bad input
/// said.
#[test]
fn the_cli_lists_runs_reads_logs_stops_a_run_and_disables_and_enables_a_task() {
    let dir = tempfile::tempdir().expect("tmp");
    let node = start(dir.path());
    let cli = |args: &[&str]| operator_says(&node.url, dir.path(), args);
    let runs_of = |task: &str, status: &str| -> Vec<Value> {
        let (code, out, err) = cli(&[
            "runs", "ls", "--task", task, "--status", status, "--output", "json",
        ]);
        assert_eq!(code, Some(0), "{err}");
        serde_json::from_str(&out).expect("a JSON list")
    };

    let (code, _, err) = cli(&[
        "task",
        "add",
        "count",
        "--shell",
        "echo one; echo two; exit 3",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let (code, run, err) = cli(&["task", "run", "count"]);
    assert_eq!(code, Some(0), "{err}");
    let run = run.trim().to_owned();
    wait_until("count's run to fail", Duration::from_secs(20), || {
        runs_of("count", "failed")
            .iter()
            .any(|r| r["id"] == run.as_str())
            .then_some(())
    });
    assert!(runs_of("count", "succeeded").is_empty());
    let (_, table, _) = cli(&["runs", "ls"]);
    let row = table
        .lines()
        .find(|l| l.starts_with(&run))
        .unwrap_or_else(|| panic!("{run} not listed: {table}"));
    assert!(
        row.contains("count") && row.contains("failed") && row.contains("manual"),
        "{row}"
    );
    let (_, shown, _) = cli(&["runs", "show", &run]);
    let shown: Value = serde_json::from_str(&shown).expect("a run as JSON");
    assert_eq!(shown["exit_code"], 3, "{shown}");
    assert_eq!(cli(&["runs", "log", &run]).1, "one\ntwo\n");
    let (code, log, said) = cli(&["task", "log", "count"]);
    assert_eq!((code, log.as_str()), (Some(0), "one\ntwo\n"), "{said}");
    assert!(said.contains(&run), "{said}");

    // A daemon: its log read by the task's name, its run stopped and started again.
    let (code, _, err) = cli(&[
        "task",
        "add",
        "daemon",
        "--always",
        "--shell",
        "echo up; exec sleep 600",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let first = wait_until("the daemon to run", Duration::from_secs(20), || {
        runs_of("daemon", "running")
            .first()
            .and_then(|r| Some((r["id"].as_str()?.to_owned(), r["pid"].as_i64()?)))
    });
    wait_until("the daemon's log", Duration::from_secs(10), || {
        (cli(&["task", "log", "daemon"]).1 == "up\n").then_some(())
    });
    let (code, said, err) = cli(&["runs", "stop", &first.0]);
    assert_eq!(code, Some(0), "{err}");
    assert!(said.contains("daemon"), "{said}");
    let second = wait_until("the daemon started again", Duration::from_secs(20), || {
        runs_of("daemon", "running")
            .first()
            .and_then(|r| Some((r["id"].as_str()?.to_owned(), r["pid"].as_i64()?)))
            .filter(|(id, _)| *id != first.0)
    });
    assert!(!process_alive(first.1 as i32), "the stopped daemon is gone");
    assert!(
        runs_of("daemon", "killed")
            .iter()
            .any(|r| r["id"] == first.0.as_str())
    );

    // Disabled, the daemon stops and stays stopped; enabled, it runs again.
    let (code, said, err) = cli(&["task", "disable", "daemon"]);
    assert_eq!((code, said.trim()), (Some(0), "daemon disabled"), "{err}");
    wait_until(
        "the disabled daemon to stop",
        Duration::from_secs(20),
        || {
            (runs_of("daemon", "running").is_empty() && !process_alive(second.1 as i32))
                .then_some(())
        },
    );
    let (code, said, err) = cli(&["task", "enable", "daemon"]);
    assert_eq!((code, said.trim()), (Some(0), "daemon enabled"), "{err}");
    wait_until("the enabled daemon to run", Duration::from_secs(20), || {
        (!runs_of("daemon", "running").is_empty()).then_some(())
    });

    // Bad input is said, with what was wrong.
    let (code, _, err) = cli(&["runs", "log", "nope"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("nope"), "{err}");
    let (code, _, err) = cli(&["task", "add", "idle", "--", "true"]);
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = cli(&["task", "log", "idle"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("idle has not run yet"), "{err}");
    let (code, _, err) = cli(&["runs", "ls", "--status", "bogus"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("bogus"), "{err}");
    let (code, _, err) = cli(&["task", "disable", "nobody"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("nobody"), "{err}");
    stop(node);
}

/// Tasks kept in a file: `task export` writes them, `task apply` makes another node's tasks the
/// same (creating a rule's target before the rule), again changes nothing, applies an edit,
/// says what it would do without doing it, prunes only when asked, and refuses a bad file
/// whole, saying where.
#[test]
fn tasks_are_exported_to_a_file_and_applied_from_it() {
    let (dir_a, dir_b) = (
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    );
    let (a, b) = (start(dir_a.path()), start(dir_b.path()));
    let cli = |node: &Node, dir: &Path, args: &[&str]| operator_says(&node.url, dir, args);
    let http = client();
    create_task(
        &http,
        &a.url,
        &json!({"name": "upload", "spec": {"shell": "echo up"},
                "when": {"mode": "cron", "schedule": "0 3 * * *", "timezone": "Europe/Berlin"}}),
    );
    create_task(
        &http,
        &a.url,
        &json!({"name": "report", "spec": {"command": ["true"]}, "when": {"mode": "manual"},
                "exit_rules": [{"on": "0", "action": "run", "task": "upload"}]}),
    );
    let file = dir_a.path().join("tasks.json");
    let (code, _, err) = cli(
        &a,
        dir_a.path(),
        &["task", "export", "-o", file.to_str().expect("path")],
    );
    assert_eq!(code, Some(0), "{err}");
    let exported: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(&file).expect("read")).expect("a list");
    assert_eq!(exported.len(), 2);

    let apply = |args: &[&str]| {
        let mut all = vec!["task", "apply", file.to_str().expect("path")];
        all.extend_from_slice(args);
        cli(&b, dir_b.path(), &all)
    };
    let names = |node: &Node| task_names(&http, &node.url).expect("tasks");
    let (code, said, err) = apply(&[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        said.starts_with("create upload\ncreate report\n")
            && said.contains("2 created, 0 changed, 0 removed, 0 unchanged"),
        "{said}"
    );
    assert_eq!(names(&b), names(&a));
    let (_, said, _) = apply(&[]);
    assert!(
        said.contains("0 created, 0 changed, 0 removed, 2 unchanged"),
        "{said}"
    );

    // An edit and a task the file does not name: a dry run changes nothing.
    create_task(
        &http,
        &b.url,
        &json!({"name": "local", "spec": {"command": ["true"]}, "when": {"mode": "manual"}}),
    );
    let mut edited = exported.clone();
    edited[1]["spec"]["shell"] = json!("echo changed");
    std::fs::write(&file, serde_json::to_string(&edited).expect("json")).expect("write");
    let (_, said, _) = apply(&["--prune", "--dry-run"]);
    assert!(
        said.contains("would change upload") && said.contains("would remove local"),
        "{said}"
    );
    assert!(names(&b).contains("local"));
    let (code, said, err) = apply(&[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        said.contains("0 created, 1 changed, 0 removed, 1 unchanged"),
        "{said}"
    );
    let upload: Value = http
        .get(format!("{}/api/tasks/upload", b.url))
        .send()
        .and_then(|r| r.json())
        .expect("upload");
    assert_eq!(upload["spec"]["shell"], "echo changed");
    assert!(names(&b).contains("local"), "kept without --prune");
    let (_, said, _) = apply(&["--prune"]);
    assert!(said.contains("1 removed"), "{said}");
    assert!(!names(&b).contains("local"));

    // A bad file is refused whole, each problem at its place; nothing changes.
    edited[0]["spec"]["command"] = json!("not a list");
    edited
        .push(json!({"name": "upload", "spec": {"command": ["true"]}, "when": {"mode": "manual"}}));
    std::fs::write(&file, serde_json::to_string(&edited).expect("json")).expect("write");
    let before = names(&b);
    let (code, _, err) = apply(&[]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("[0].spec.command")
            && err.contains("[2].name")
            && err.contains("nothing was applied"),
        "{err}"
    );
    assert_eq!(names(&b), before);
    stop(a);
    stop(b);
}

/// Execute now with parameters: the run gets them in place of the task's (in argv and in its
/// environment), its retry keeps them, and a parameter the task does not declare is refused.
#[test]
fn a_run_is_given_parameters_in_place_of_its_tasks_and_its_retry_keeps_them() {
    let dir = tempfile::tempdir().expect("tmp");
    let node = start(dir.path());
    let cli = |args: &[&str]| operator_says(&node.url, dir.path(), args);
    let http = client();
    create_task(
        &http,
        &node.url,
        &json!({"name": "greet", "spec": {"command": ["echo", "hello {{who}}"],
                "parameters": {"who": "world", "unused": 1}}, "when": {"mode": "manual"}}),
    );
    assert_eq!(
        cli(&["task", "run", "greet", "--follow"]).1,
        "hello world\n"
    );
    assert_eq!(
        cli(&[
            "task",
            "run",
            "greet",
            "-p",
            "who=mesh; rm -rf /",
            "--follow"
        ])
        .1,
        "hello mesh; rm -rf /\n"
    );

    let out = dir.path().join("attempts");
    create_task(
        &http,
        &node.url,
        &json!({"name": "flaky",
                "spec": {"shell": format!("echo \"$who $TASKMESH_ATTEMPT\" >> {}; [ $TASKMESH_ATTEMPT -ge 2 ]", out.display()),
                         "parameters": {"who": "default"}},
                "when": {"mode": "manual"},
                "exit_rules": [{"on": "!0", "action": "retry"}]}),
    );
    let (code, _, err) = cli(&["task", "run", "flaky", "--param", "who=given"]);
    assert_eq!(code, Some(0), "{err}");
    let lines = wait_until("the retry to run", Duration::from_secs(20), || {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        (text.lines().count() >= 2).then_some(text)
    });
    assert_eq!(lines, "given 1\ngiven 2\n");

    // What the task does not offer is refused, saying what and where; nothing runs.
    let (code, _, err) = cli(&["task", "run", "greet", "-p", "LD_PRELOAD=/tmp/x.so"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("parameters.LD_PRELOAD") && err.contains("no such parameter"),
        "{err}"
    );
    let (code, _, err) = cli(&["task", "run", "greet", "-p", "who"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("NAME=VALUE"), "{err}");
    let r = http
        .post(format!("{}/api/tasks/greet/run", node.url))
        .json(&json!({"parameters": {"who": ["a"]}, "extra": 1}))
        .send()
        .expect("post");
    assert_eq!(r.status().as_u16(), 400);
    let runs: Vec<Value> = http
        .get(format!("{}/api/runs?task=greet", node.url))
        .send()
        .and_then(|r| r.json())
        .expect("runs");
    assert_eq!(runs.len(), 2, "the refused runs made none: {runs:?}");
    assert_eq!(runs[0]["parameters"]["who"], "mesh; rm -rf /");
    assert!(runs[1].get("parameters").is_none(), "{:?}", runs[1]);
    stop(node);
}

/// A stand-in node on loopback for `task run greet --follow`: it starts run `r1`, then streams
/// its log as server-sent events in `pieces`, each its own TCP write after a pause. Its URL.
fn fake_follow_node(pieces: Vec<&'static [u8]>) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    std::thread::spawn(move || {
        for conn in listener.incoming().take(2) {
            let mut conn = conn.expect("accept");
            conn.set_nodelay(true).expect("nodelay");
            let mut reader = BufReader::new(conn.try_clone().expect("clone"));
            let mut head = Vec::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                head.push(line);
            }
            let request = head.first().cloned().unwrap_or_default();
            if request.starts_with("POST /api/tasks/greet/run ") {
                let body = r#"{"id": "r1", "task_id": "t1", "task_name": "greet", "trigger": {"kind": "manual"}, "attempt": 1, "node": "", "status": "queued", "created_at": "2026-12-01T00:00:00Z"}"#;
                let _ = write!(
                    conn,
                    "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            } else if request.starts_with("GET /api/runs/r1/log?follow=true ") {
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n",
                );
                for piece in &pieces {
                    std::thread::sleep(Duration::from_millis(50));
                    let _ = conn.write_all(piece);
                    let _ = conn.flush();
                }
            } else {
                let _ = conn.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        }
    });
    url
}

/// `task run greet --follow` against [`fake_follow_node`] sending `pieces`.
fn follow_fake_node(pieces: Vec<&'static [u8]>) -> std::process::Output {
    let url = fake_follow_node(pieces);
    let dir = tempfile::tempdir().expect("tmp");
    Command::new(BIN)
        .args(["task", "run", "greet", "--follow", "--url", &url])
        .env("TASKMESH_DATA_DIR", dir.path())
        .env("TASKMESH_TOKEN", TOKEN)
        .env_remove("TASKMESH_URL")
        .env_remove("TASKMESH_TOKEN_FILE")
        .output()
        .expect("run the cli")
}

#[test]
fn the_cli_follows_a_log_whose_characters_are_split_across_reads() {
    // "Grüße ✓\n" as the node sends it (axum gives each line of a piece its own `data:`), cut
    // inside the ü (c3|bc) and inside the ✓ (e2 9c|93), and an `end` event with CRLF line ends.
    let out = follow_fake_node(vec![
        b": a comment\nevent: log\nid: 11\ndata: Gr\xc3",
        b"\xbc\xc3\x9fe \xe2\x9c",
        b"\x93\ndata: \n\n",
        b"event: end\r\ndata: {\"id\": \"r1\", \"task_id\": \"t1\", \"task_name\": \"greet\", \"trigger\": {\"kind\": \"manual\"}, \"attempt\": 1, \"node\": \"fake\", \"status\": \"failed\", \"exit_code\": 4, \"created_at\": \"2026-12-01T00:00:00Z\"}\r\n\r\n",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        String::from_utf8(out.stdout).expect("UTF-8 output"),
        "Grüße ✓\n",
        "{stderr}"
    );
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("run r1 failed"), "{stderr}");
}

/// A line the node sends in two pieces prints as one line; a log whose last line has no newline
/// gets one at the run's end.
#[test]
fn the_cli_joins_a_line_sent_in_two_pieces() {
    let out = follow_fake_node(vec![
        b"event: log\nid: 3\ndata: hel\n\n",
        b"event: log\nid: 6\ndata: lo\ndata: \n\n",
        b"event: log\nid: 10\ndata: tail\n\n",
        b"event: end\ndata: {\"id\": \"r1\", \"task_id\": \"t1\", \"task_name\": \"greet\", \"trigger\": {\"kind\": \"manual\"}, \"attempt\": 1, \"node\": \"fake\", \"status\": \"succeeded\", \"exit_code\": 0, \"created_at\": \"2026-12-01T00:00:00Z\"}\n\n",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello\ntail\n",
        "{stderr}"
    );
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}

#[test]
fn the_cli_says_why_a_run_is_refused_and_exits_3() {
    let dir = tempfile::tempdir().expect("tmp");
    let node = start(dir.path());
    let cli = |args: &[&str]| {
        operator_cli(&node.url, dir.path())
            .args(args)
            .output()
            .expect("run the cli")
    };
    let http = client();
    create_task(
        &http,
        &node.url,
        &json!({"name": "gpu", "spec": {"command": ["true"], "dependencies": ["gpu=amd"]}, "when": {"mode": "manual"}}),
    );
    let out = cli(&["task", "run", "gpu", "--follow"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("error: 409 Conflict: no live node has gpu=amd"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "nothing ran");

    assert!(
        cli(&["task", "add", "slow", "--", "sleep", "30"])
            .status
            .success()
    );
    let out = cli(&["task", "run", "slow"]);
    assert!(out.status.success());
    let first = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    wait_until("the first run to start", Duration::from_secs(10), || {
        let run: Value = http
            .get(format!("{}/api/runs/{first}", node.url))
            .send()
            .ok()?
            .json()
            .ok()?;
        (run["status"] == "running").then_some(())
    });
    let out = cli(&["task", "run", "slow"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "error: 409 Conflict: run {first} is still running (concurrency `forbid`)"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("spec.concurrency"),
        "it says what to do: {stderr}"
    );
    stop(node);
}

/// Every folder and file under `root` (`root` included; links neither listed nor followed) with
/// its permission bits.
fn modes(root: &Path) -> Vec<(std::path::PathBuf, u32, bool)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).expect("stat");
        if meta.file_type().is_symlink() {
            continue;
        }
        out.push((
            path.clone(),
            meta.permissions().mode() & 0o7777,
            meta.is_dir(),
        ));
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).expect("read dir") {
                stack.push(entry.expect("entry").path());
            }
        }
    }
    out
}

/// Runs `task` (created before) on `node` and returns its log once it has ended.
fn run_to_end(http: &reqwest::blocking::Client, node: &Node, task: &str) -> String {
    let run: Value = http
        .post(format!("{}/api/tasks/{task}/run", node.url))
        .send()
        .expect("run")
        .json()
        .expect("json");
    let id = run["id"].as_str().expect("id").to_owned();
    wait_until("the run to end", Duration::from_secs(15), || {
        let run: Value = http
            .get(format!("{}/api/runs/{id}", node.url))
            .send()
            .ok()?
            .json()
            .ok()?;
        (run["status"] == "succeeded").then_some(())
    });
    http.get(format!("{}/api/runs/{id}/log", node.url))
        .send()
        .expect("log")
        .text()
        .expect("text")
}

/// Whether the file at `path` holds `needle` anywhere.
fn file_holds(path: &Path, needle: &[u8]) -> bool {
    std::fs::read(path)
        .expect("read")
        .windows(needle.len())
        .any(|w| w == needle)
}

#[test]
fn a_node_keeps_its_data_private_and_its_secrets_from_tasks() {
    const KEY: &str = "5f0e1d2c3b4a59687766554433221100ffeeddccbbaa99887766554433221100";
    const USER_TOKEN: &str = "a-token-in-the-environment-no-task-may-see";
    let dir = tempfile::tempdir().expect("tmp");
    let out = tempfile::tempdir().expect("tmp");
    // Started as a user would start it: umask 022, a soft open-file limit of 512, the key and
    // a token in the environment.
    let mut command = Command::new("sh");
    command
        .args(["-c", r#"umask 022; ulimit -Sn 512; exec "$0" "$@""#, BIN])
        .env("TASKMESH_CLUSTER_KEY", KEY)
        .env("TASKMESH_TOKEN", USER_TOKEN);
    let node = start_via(
        command,
        dir.path(),
        &["--p2p-listen", "/ip4/127.0.0.1/tcp/0"],
    );
    let http = client();
    set_cluster_setting(&http, &node.url, "daily_logs", json!(true));
    let made = out.path().join("made-by-task");
    let script = format!(
        "env; echo umask=$(umask); echo nofile=$(ulimit -n); touch '{}'",
        made.display()
    );
    create_task(
        &http,
        &node.url,
        &json!({"name": "probe", "spec": {"shell": script}, "when": {"mode": "manual"}}),
    );
    let log = run_to_end(&http, &node, "probe");

    // The task sees its own TASKMESH_ variables, none of the node's.
    assert!(log.contains("TASKMESH_RUN_ID="), "{log}");
    assert!(
        !log.contains(KEY),
        "the cluster key reached the task: {log}"
    );
    assert!(
        !log.contains(USER_TOKEN),
        "the token reached the task: {log}"
    );
    assert!(
        !log.contains("TASKMESH_CLUSTER_KEY") && !log.contains("TASKMESH_TOKEN"),
        "{log}"
    );
    // It gets the umask the node was started with: the node's own files are private by
    // their creation modes, not by its umask.
    assert!(log.contains("umask=0022"), "{log}");
    let task_file = modes(&made);
    assert_eq!(task_file[0].1, 0o644, "a file the task made");
    // The node runs with its soft limit raised (within the hard limit), and its tasks inherit it.
    let limits =
        std::fs::read_to_string(format!("/proc/{}/limits", node.child.id())).expect("limits");
    let open_files: Vec<&str> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("open files")
        .split_whitespace()
        .collect();
    let hard: u64 = open_files[4].parse().expect("hard limit");
    let soft = taskmesh::process_setup::wanted_soft_limit(512, hard);
    assert!(soft > 512 || hard <= 512, "raised: {limits}");
    assert_eq!(open_files[3], soft.to_string(), "{limits}");
    assert!(log.contains(&format!("nofile={soft}\n")), "{log}");

    // The key given in the environment is kept in its own private file.
    assert_eq!(
        std::fs::read_to_string(dir.path().join("cluster-key"))
            .expect("key file")
            .trim(),
        KEY
    );
    // A save that changes the key writes the file, and not the database.
    let mut settings: Value = http
        .get(format!("{}/api/settings?reveal=true", node.url))
        .send()
        .expect("get")
        .json()
        .expect("json");
    let new_key = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    settings["node"]["cluster_key"] = json!(new_key);
    let r = http
        .put(format!("{}/api/settings", node.url))
        .json(&settings)
        .send()
        .expect("put");
    assert_eq!(r.status().as_u16(), 200, "{:?}", r.text());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("cluster-key"))
            .expect("key file")
            .trim(),
        new_key
    );
    stop(node);
    let db = dir.path().join("taskmesh.redb");
    for key in [KEY, new_key] {
        assert!(!file_holds(&db, key.as_bytes()), "the database holds {key}");
        let raw: Vec<u8> = (0..32)
            .map(|i| u8::from_str_radix(&key[2 * i..2 * i + 2], 16).expect("hex"))
            .collect();
        assert!(!file_holds(&db, &raw), "the database holds the raw key");
    }

    // Everything the node made is its user's alone.
    let all = modes(dir.path());
    for name in [
        "taskmesh.redb",
        "raft.log",
        "identity",
        "access-token",
        "cluster-key",
    ] {
        assert!(
            all.iter().any(|(p, _, _)| p.ends_with(name)),
            "no {name}: {all:?}"
        );
    }
    assert!(
        all.iter().any(|(p, _, _)| p.ends_with("logs/probe")),
        "daily logs: {all:?}"
    );
    for (path, mode, is_dir) in &all {
        let want = if *is_dir { 0o700 } else { 0o600 };
        assert_eq!(*mode, want, "{} is {mode:o}", path.display());
    }
}

#[test]
fn an_old_install_is_made_private_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tmp");
    let node = start(dir.path());
    let http = client();
    create_task(
        &http,
        &node.url,
        &json!({"name": "hello", "spec": {"command": ["echo", "hi"]}, "when": {"mode": "manual"}}),
    );
    run_to_end(&http, &node, "hello");
    stop(node);
    // As an older version left it: folders 0755, files 0644.
    let before = modes(dir.path());
    for (path, _, is_dir) in &before {
        let mode = if *is_dir { 0o755 } else { 0o644 };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
    let node = start(dir.path());
    let line = wait_until(
        "the line saying what was fixed",
        Duration::from_secs(5),
        || {
            node.log
                .lock()
                .expect("log")
                .iter()
                .find(|l| l.contains("older install private"))
                .cloned()
        },
    );
    assert!(line.contains(&format!("fixed={}", before.len())), "{line}");
    for (path, mode, is_dir) in modes(dir.path()) {
        let want = if is_dir { 0o700 } else { 0o600 };
        assert_eq!(mode, want, "{} is {mode:o}", path.display());
    }
    stop(node);
}

/// Starts the binary and expects it to exit with an error; returns what it printed.
fn start_fails(args: &[&str]) -> String {
    let mut child = Command::new(BIN)
        .args(["run", "--listen", "127.0.0.1:0", "--no-mdns"])
        .args(["--p2p-listen", "/ip4/127.0.0.1/tcp/0"])
        .args(args)
        .env("NO_COLOR", "1")
        .env_remove("TASKMESH_CLUSTER_KEY")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let status = wait_until("the node to refuse", Duration::from_secs(15), || {
        child.try_wait().ok().flatten()
    });
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("stderr");
    assert!(!status.success(), "it started: {stderr}");
    stderr
}

#[test]
fn a_copied_database_without_its_key_file_does_not_start() {
    let dir = tempfile::tempdir().expect("tmp");
    let node = start(dir.path());
    stop(node);
    // Someone copies the database and the Raft log (not the key file) to start a node of theirs.
    let copy = tempfile::tempdir().expect("tmp");
    for name in ["taskmesh.redb", "raft.log"] {
        std::fs::copy(dir.path().join(name), copy.path().join(name)).expect("copy");
    }
    let data_dir = copy.path().to_str().expect("path");
    let stderr = start_fails(&["--data-dir", data_dir]);
    let key_file = copy.path().join("cluster-key");
    assert!(
        stderr.contains(&format!("{} is missing", key_file.display())),
        "{stderr}"
    );
    // A key on the command line is refused, with the way to give it instead.
    let stderr = start_fails(&["--data-dir", data_dir, "--cluster-key", &"ab".repeat(32)]);
    assert!(
        stderr.contains("--cluster-key-file") && stderr.contains("TASKMESH_CLUSTER_KEY"),
        "{stderr}"
    );
}

#[test]
fn the_start_log_has_a_login_link_and_the_cli_makes_more_and_rotates_the_token() {
    let dir = tempfile::tempdir().expect("tmp");
    let node = start(dir.path());
    // The first line with `url=` is the node's address; the login link follows on its own line.
    let link = wait_until("the login link in the log", Duration::from_secs(20), || {
        let log = node.log.lock().expect("log");
        let line = log.iter().find(|l| l.contains("login_link="))?;
        Some(
            line[line.find("login_link=")? + "login_link=".len()..]
                .split_whitespace()
                .next()?
                .to_owned(),
        )
    });
    {
        let log = node.log.lock().expect("log");
        let url_line = log
            .iter()
            .find(|l| l.contains("url="))
            .expect("the url line");
        assert!(!url_line.contains("login_link="), "{url_line}");
    }
    assert!(
        link.starts_with(&format!("{}/login?code=", node.url)),
        "{link}"
    );
    let http = http_client()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let r = http.get(&link).send().expect("login");
    assert_eq!(r.status().as_u16(), 303);
    assert_eq!(
        http.get(&link).send().expect("again").status().as_u16(),
        401
    );

    let cli = |args: &[&str]| {
        operator_cli(&node.url, dir.path())
            .args(args)
            .output()
            .expect("run the cli")
    };
    let out = cli(&["login-url"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fresh = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        fresh.starts_with(&format!("{}/login?code=", node.url)),
        "{fresh}"
    );
    assert_eq!(
        http.get(&fresh).send().expect("fresh").status().as_u16(),
        303
    );

    let token_file = dir.path().join("access-token");
    let old = std::fs::read_to_string(&token_file).expect("token");
    let out = cli(&["token", "rotate"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new = std::fs::read_to_string(&token_file).expect("token");
    assert_ne!(old, new);
    let tasks = |token: &str| {
        http.get(format!("{}/api/tasks", node.url))
            .bearer_auth(token.trim())
            .send()
            .expect("tasks")
            .status()
            .as_u16()
    };
    assert_eq!(tasks(&old), 401);
    assert_eq!(tasks(&new), 200);
    // The CLI reads the new token from the file by itself.
    assert!(cli(&["task", "ls"]).status.success());
    // A failed login is logged with the client's address, never with what it gave.
    let guess = "guess-5f3a9c";
    assert_eq!(tasks(guess), 401);
    let mut failures = Vec::new();
    wait_until(
        "both failed logins in the log",
        Duration::from_secs(10),
        || {
            failures = node
                .log
                .lock()
                .expect("log")
                .iter()
                .filter(|l| l.contains("login failed"))
                .cloned()
                .collect();
            (failures.len() >= 2).then_some(())
        },
    );
    for line in &failures {
        assert!(line.contains("client=127.0.0.1"), "{line}");
        assert!(
            !line.contains(guess) && !line.contains(old.trim()),
            "{line}"
        );
    }
    stop(node);
}

#[test]
fn a_config_that_turns_the_login_off_is_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let config = dir.path().join("taskmesh.toml");
    std::fs::write(&config, "require_login = false\n").expect("write");
    let out = Command::new(BIN)
        .args(["run", "--no-mdns", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("require_login") && err.contains("cannot be turned off"),
        "{err}"
    );
}

#[test]
fn the_cli_talks_to_a_tls_node_trusting_its_own_certificate_or_a_given_one() {
    let dir = tempfile::tempdir().expect("tmp");
    let node = start_with(
        dir.path(),
        &["--p2p-listen", "/ip4/127.0.0.1/tcp/0", "--tls"],
    );
    assert!(node.url.starts_with("https://127.0.0.1:"), "{}", node.url);
    // The node's data dir: its token and its self-signed tls-cert.pem.
    let cli = |args: &[&str]| {
        operator_cli(&node.url, dir.path())
            .args(args)
            .env_remove("TASKMESH_CA_CERT")
            .output()
            .expect("run the cli")
    };
    let ok = |out: &std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let link = ok(&cli(&["login-url"])).trim().to_owned();
    assert!(
        link.starts_with(&format!("{}/login?code=", node.url)),
        "{link}"
    );
    ok(&cli(&[
        "task",
        "add",
        "tls",
        "--shell",
        "echo over-tls; exit 3",
    ]));
    // The log streams over TLS to the end, and the run's exit code comes back.
    let out = cli(&["task", "run", "tls", "--follow"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("over-tls"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Elsewhere (no tls-cert.pem), the node's certificate is not trusted, and the error says so.
    let elsewhere = tempfile::tempdir().expect("tmp");
    let cli_elsewhere = |extra: &[&str]| {
        Command::new(BIN)
            .args(["task", "ls"])
            .args(extra)
            .env("TASKMESH_URL", &node.url)
            .env("TASKMESH_DATA_DIR", elsewhere.path())
            .env("TASKMESH_TOKEN", TOKEN)
            .env_remove("TASKMESH_TOKEN_FILE")
            .env_remove("TASKMESH_CA_CERT")
            .output()
            .expect("run the cli")
    };
    let out = cli_elsewhere(&[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("the node at {}", node.url))
            && err.contains("certificate this CLI does not trust")
            && err.contains("--ca-cert")
            && err.contains(&format!(
                "{}, which does not exist",
                elsewhere.path().join("tls-cert.pem").display()
            )),
        "{err}"
    );
    // --ca-cert with the node's certificate (an operator's own CA works the same way).
    let ca = elsewhere.path().join("node-ca.pem");
    std::fs::copy(dir.path().join("tls-cert.pem"), &ca).expect("copy the certificate");
    let out = cli_elsewhere(&["--ca-cert", ca.to_str().expect("utf-8")]);
    assert!(ok(&out).contains("tls"));
    let missing = elsewhere.path().join("missing.pem");
    let out = cli_elsewhere(&["--ca-cert", missing.to_str().expect("utf-8")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains(&format!("--ca-cert {}", missing.display())),
        "{err}"
    );

    // http:// against the TLS node says to use https://.
    let plain_url = node.url.replacen("https://", "http://", 1);
    let out = Command::new(BIN)
        .args(["task", "ls", "--url", &plain_url])
        .env("TASKMESH_DATA_DIR", dir.path())
        .output()
        .expect("run the cli");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains(&format!(
                "the node at {plain_url} does not answer plain HTTP"
            ))
            && err.contains("https://"),
        "{err}"
    );
    stop(node);

    // https:// against a plain node says to use http://.
    let plain_dir = tempfile::tempdir().expect("tmp");
    let plain = start(plain_dir.path());
    let tls_url = plain.url.replacen("http://", "https://", 1);
    let out = Command::new(BIN)
        .args(["task", "ls", "--url", &tls_url])
        .env("TASKMESH_DATA_DIR", plain_dir.path())
        .output()
        .expect("run the cli");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains(&format!("the node at {tls_url} does not answer over TLS"))
            && err.contains("http://"),
        "{err}"
    );
    stop(plain);
}

/// Every line `taskmesh run` writes to stderr, read on a thread.
fn logged_lines(child: &mut std::process::Child) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
    use std::io::BufRead;
    let stderr = child.stderr.take().expect("stderr");
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let into = lines.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            into.lock().expect("log").push(line);
        }
    });
    lines
}

/// `--log-format json`: every line on stderr is one JSON object, and a run's start and end carry
/// its `run_id` and `task`. The default text, on a pipe, has no ANSI colours and none of
/// openraft's or libp2p's internals.
#[test]
fn logs_are_json_lines_with_run_fields_or_plain_text_for_a_pipe() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("access-token"), format!("{TOKEN}\n")).expect("token");
    let mut child = Command::new(BIN)
        .args([
            "--log-format",
            "json",
            "run",
            "--listen",
            "127.0.0.1:0",
            "--no-mdns",
        ])
        .args(["--p2p-listen", "/ip4/127.0.0.1/tcp/0", "--data-dir"])
        .arg(dir.path())
        .env_remove("TASKMESH_LOG")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn");
    let lines = logged_lines(&mut child);
    let parsed = || -> Vec<Value> {
        let lines = lines.lock().expect("log").clone();
        lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    };
    let url = wait_until("the node's URL", Duration::from_secs(20), || {
        parsed()
            .iter()
            .find_map(|l| l["url"].as_str().map(str::to_owned))
    });
    let http = client();
    create_task(
        &http,
        &url,
        &json!({"name": "logged", "spec": {"command": ["true"]}, "when": {"mode": "manual"}}),
    );
    let run: Value = http
        .post(format!("{url}/api/tasks/logged/run"))
        .send()
        .and_then(|r| r.json())
        .expect("execute");
    let id = run["id"].as_str().expect("run id").to_owned();
    let ended = wait_until("the run's end in the log", Duration::from_secs(20), || {
        parsed()
            .into_iter()
            .find(|l| l["message"] == "run ended" && l["run_id"] == id.as_str())
    });
    assert_eq!(ended["task"], "logged");
    assert_eq!(ended["level"], "INFO");
    assert!(
        ended["timestamp"].is_string() && ended["target"].is_string(),
        "{ended}"
    );
    let started = parsed();
    assert!(
        started
            .iter()
            .any(|l| l["message"] == "run started" && l["run_id"] == id.as_str()),
        "run started"
    );
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    let _ = child.wait();
    for line in parsed() {
        assert!(line.is_object(), "{line}");
    }

    // The default format on a pipe: plain text, no colours, no dependency internals.
    let mut child = Command::new(BIN)
        .args(["run", "--listen", "127.0.0.1:0", "--no-mdns"])
        .args(["--p2p-listen", "/ip4/127.0.0.1/tcp/0", "--data-dir"])
        .arg(dir.path())
        .env_remove("TASKMESH_LOG")
        .env_remove("TASKMESH_LOG_FORMAT")
        .env_remove("NO_COLOR")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn");
    let lines = logged_lines(&mut child);
    wait_until("the node's URL", Duration::from_secs(20), || {
        lines
            .lock()
            .expect("log")
            .iter()
            .find(|l| l.contains("url="))
            .cloned()
    });
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    let _ = child.wait();
    let text = lines.lock().expect("log").join("\n");
    assert!(!text.contains('\u{1b}'), "ANSI escapes on a pipe:\n{text}");
    assert!(
        !text.contains("openraft::") && !text.contains("libp2p"),
        "{text}"
    );
    assert!(text.contains(" INFO "), "{text}");
}

/// `taskmesh completions bash|zsh|fish` prints a script that knows the subcommands (bash's
/// passes `bash -n`), and `taskmesh man` a manual page; neither needs a node.
#[test]
fn completions_and_the_manual_page_generate() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(BIN)
            .args(["completions", shell])
            .output()
            .expect("completions");
        assert!(out.status.success(), "{shell}: {out:?}");
        let script = String::from_utf8(out.stdout).expect("utf-8");
        for word in ["login-url", "settings", "completions"] {
            assert!(script.contains(word), "{shell} lacks {word}");
        }
        if shell == "bash" {
            let path = std::env::temp_dir()
                .join(format!("taskmesh-completion-{}.bash", std::process::id()));
            std::fs::write(&path, &script).expect("write");
            let checked = Command::new("bash")
                .arg("-n")
                .arg(&path)
                .status()
                .expect("bash -n");
            let _ = std::fs::remove_file(&path);
            assert!(checked.success(), "bash -n refused the script");
        }
    }
    let out = Command::new(BIN).arg("man").output().expect("man");
    assert!(out.status.success());
    let page = String::from_utf8(out.stdout).expect("utf-8");
    assert!(
        page.contains(".TH taskmesh 1") && page.contains(".SH NAME"),
        "{page}"
    );
    assert!(
        page.contains("completions"),
        "the page lists the subcommands"
    );
    let bad = Command::new(BIN)
        .args(["completions", "tcsh"])
        .output()
        .expect("bad shell");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("possible values"));
}

/// `taskmesh status` tells the node, the cluster and its leader, the members, the peers and what
/// runs; with `--output json` it and `task ls` print JSON for scripts.
#[test]
fn the_cli_tells_the_status_and_lists_as_json() {
    let dir = tempfile::tempdir().expect("tmp");
    let node = start(dir.path());
    let cli = |args: &[&str]| {
        let out = operator_cli(&node.url, dir.path())
            .args(args)
            .output()
            .expect("run the cli");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let http = client();
    create_task(
        &http,
        &node.url,
        &json!({"name": "sleeper", "spec": {"command": ["sleep", "30"]}, "when": {"mode": "manual"}}),
    );
    // One cluster, led by this node, once it has founded it.
    let json: Value = wait_until("a founded cluster", Duration::from_secs(20), || {
        let status: Value = serde_json::from_str(&cli(&["status", "--output", "json"])).ok()?;
        (status["cluster"]["role"] == "leader").then_some(status)
    });
    assert_eq!(json["health"]["status"], "ok");
    let run: Value = http
        .post(format!("{}/api/tasks/sleeper/run", node.url))
        .send()
        .and_then(|r| r.json())
        .expect("execute");
    let id = run["id"].as_str().expect("id").to_owned();
    let text = wait_until("the run in the status", Duration::from_secs(10), || {
        let text = cli(&["status"]);
        text.contains(&id).then_some(text)
    });
    for line in [
        "node ",
        "cluster ",
        "members  1 voters, 0 learners, all live",
        "peers    0 live",
        "runs     1 running or queued",
        "sleeper",
    ] {
        assert!(text.contains(line), "{line:?} missing in\n{text}");
    }
    assert!(text.contains("leader"), "{text}");
    let tasks: Value =
        serde_json::from_str(&cli(&["task", "ls", "--output", "json"])).expect("JSON");
    assert_eq!(tasks.as_array().map(Vec::len), Some(1));
    assert_eq!(tasks[0]["name"], "sleeper");
    assert_eq!(
        tasks[0]["last_run"]["id"],
        id.as_str(),
        "its newest run, from the index"
    );
    let listed = cli(&["task", "ls"]);
    assert!(
        listed.contains("sleeper") && listed.contains("running"),
        "{listed}"
    );
    stop(node);
}

/// Runs `taskmesh service …` and returns (success, stdout, stderr).
fn service(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(BIN)
        .arg("service")
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("run taskmesh service");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn service_install_writes_the_unit_config_and_a_private_data_dir_and_uninstall_keeps_the_data() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path().join("root");
    std::fs::create_dir(&root).expect("mkdir");
    let root_arg = root.to_str().expect("utf-8");

    let (ok, out, err) = service(&["install", "--root", root_arg, "--no-start"]);
    assert!(ok, "install failed: {out}{err}");
    let unit = root.join("etc/systemd/system/taskmesh.service");
    let config = root.join("etc/taskmesh/node.toml");
    let data = root.join("var/lib/taskmesh");
    let key = data.join("cluster-key");
    assert!(out.contains("not started (--no-start)"), "{out}");
    assert!(out.contains(&key.display().to_string()), "{out}");

    let unit_text = std::fs::read_to_string(&unit).expect("the unit");
    assert!(
        unit_text.contains(&format!(
            "\nExecStart={BIN} run --config /etc/taskmesh/node.toml\n"
        )),
        "the unit starts this binary:\n{unit_text}"
    );
    for line in [
        "Type=notify",
        "KillMode=mixed",
        "Restart=on-failure",
        "PrivateTmp=no",
    ] {
        assert!(unit_text.contains(&format!("\n{line}\n")), "{line} missing");
    }
    assert_eq!(mode_of(&unit), 0o644);
    assert_eq!(mode_of(&config), 0o644);
    let loaded = taskmesh::Config::load(&config).expect("the config loads");
    assert_eq!(loaded.data_dir, Path::new("/var/lib/taskmesh"));
    assert_eq!(mode_of(&data), 0o700);
    for secret in [key.clone(), data.join("identity")] {
        assert_eq!(mode_of(&secret), 0o600, "{}", secret.display());
    }
    let first_key = std::fs::read_to_string(&key).expect("key");
    assert_eq!(first_key.trim().len(), 64, "a cluster key: {first_key}");
    for (path, mode, _) in modes(&data) {
        assert_eq!(mode & 0o077, 0, "{} is {mode:o}", path.display());
    }

    // Again: the operator's config and the keys are kept; the unit is written anew.
    let written = std::fs::read_to_string(&config).expect("config");
    let edited = written.replace("listen = \"127.0.0.1:8080\"", "listen = \"0.0.0.0:8080\"");
    assert_ne!(edited, written, "the config names its listen address");
    std::fs::write(&config, &edited).expect("edit the config");
    std::fs::remove_file(&unit).expect("rm unit");
    let (ok, out, err) = service(&["install", "--root", root_arg, "--no-start"]);
    assert!(ok, "second install failed: {out}{err}");
    assert!(out.contains("kept as it is"), "{out}");
    assert_eq!(std::fs::read_to_string(&config).expect("config"), edited);
    assert_eq!(std::fs::read_to_string(&key).expect("key"), first_key);
    assert!(unit.exists(), "the unit is written again");

    // Uninstall removes the unit and keeps the data and the config.
    let (ok, out, err) = service(&["uninstall", "--root", root_arg]);
    assert!(ok, "uninstall failed: {out}{err}");
    assert!(!unit.exists(), "the unit is gone");
    assert_eq!(std::fs::read_to_string(&key).expect("key kept"), first_key);
    assert!(config.exists() && data.join("identity").exists());
    assert!(out.contains("--purge deletes them"), "{out}");

    // --purge deletes them.
    let (ok, out, err) = service(&["uninstall", "--root", root_arg, "--purge"]);
    assert!(ok, "purge failed: {out}{err}");
    assert!(!data.exists() && !config.exists(), "{out}");

    // Bad input: a root that is not there, a key file that is not a key.
    let missing = tmp.path().join("nowhere");
    let (ok, _, err) = service(&["install", "--root", missing.to_str().expect("utf-8")]);
    assert!(!ok);
    assert!(
        err.contains(&format!("--root {}: not a folder", missing.display())),
        "{err}"
    );
    let bad_key = tmp.path().join("bad-key");
    std::fs::write(&bad_key, "not a key\n").expect("write");
    let (ok, _, err) = service(&[
        "install",
        "--root",
        root_arg,
        "--no-start",
        "--cluster-key-file",
        bad_key.to_str().expect("utf-8"),
    ]);
    assert!(!ok);
    assert!(
        err.contains(&bad_key.display().to_string()) && err.contains("64 hex digits"),
        "{err}"
    );
}

#[test]
fn service_install_with_a_key_file_joins_that_mesh_and_the_node_starts_from_the_install() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path().join("root");
    std::fs::create_dir(&root).expect("mkdir");
    let key_file = tmp.path().join("key.txt");
    let key = "0123456789abcdef".repeat(4);
    std::fs::write(&key_file, format!("{key}\n")).expect("write");
    let (ok, out, err) = service(&[
        "install",
        "--root",
        root.to_str().expect("utf-8"),
        "--no-start",
        "--no-unit",
        "--cluster-key-file",
        key_file.to_str().expect("utf-8"),
    ]);
    assert!(ok, "install failed: {out}{err}");
    assert!(
        !root.join("etc/systemd/system/taskmesh.service").exists(),
        "--no-unit writes no unit"
    );
    let data = root.join("var/lib/taskmesh");
    assert_eq!(
        std::fs::read_to_string(data.join("cluster-key"))
            .expect("key")
            .trim(),
        key
    );
    // A node started on the installed data dir uses that key and identity.
    let node = start_with(
        &data,
        &[
            "--p2p-listen",
            "/ip4/127.0.0.1/tcp/0",
            "--name",
            "installed",
        ],
    );
    let health: Value = client()
        .get(format!("{}/api/health", node.url))
        .send()
        .expect("health")
        .json()
        .expect("json");
    assert!(health.is_object(), "{health}");
    stop(node);
    assert_eq!(
        std::fs::read_to_string(data.join("cluster-key"))
            .expect("key")
            .trim(),
        key,
        "the node kept the installed key"
    );
}

#[test]
fn the_node_tells_systemd_it_is_ready_once_its_api_answers_and_that_it_stops_at_sigterm() {
    use std::os::unix::net::UnixDatagram;
    let tmp = tempfile::tempdir().expect("tmp");
    let socket_path = tmp.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind the notify socket");
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let receive = |what: &str| -> String {
        let mut buf = [0u8; 4096];
        wait_until(what, Duration::from_secs(20), || {
            let n = socket.recv(&mut buf).ok()?;
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            text.lines().any(|l| l == what).then_some(text)
        })
    };
    let mut command = Command::new(BIN);
    command.env("NOTIFY_SOCKET", &socket_path);
    // Made here, so that the node is given the tests' access token.
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).expect("mkdir");
    let node = start_via(command, &data, &["--p2p-listen", "/ip4/127.0.0.1/tcp/0"]);
    let ready = receive("READY=1");
    // At READY=1 the API answers at once: no connection refused, no wait for the catch-up.
    let http = http_client()
        .timeout(Duration::from_millis(500))
        .build()
        .expect("client");
    let health = http
        .get(format!("{}/api/health", node.url))
        .send()
        .expect("the API answers when READY=1 arrives");
    assert_eq!(health.status().as_u16(), 200);
    assert!(ready.contains(&node.url), "STATUS names the UI: {ready}");
    // The socket is the node's: its tasks do not inherit it.
    let authed = client();
    create_task(
        &authed,
        &node.url,
        &json!({
            "name": "socket",
            "spec": {"shell": "echo \"socket=[${NOTIFY_SOCKET:-}]\""},
            "when": {"mode": "manual"}
        }),
    );
    let log = run_to_end(&authed, &node, "socket");
    assert!(
        log.contains("socket=[]"),
        "a task saw the notify socket: {log}"
    );
    let pid = node.child.id() as i32;
    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    let stopping = receive("STOPPING=1");
    assert!(stopping.contains("STATUS=stopping"), "{stopping}");
    let mut node = node;
    let exited = wait_until("the node to stop", Duration::from_secs(15), || {
        node.child.try_wait().ok().flatten()
    });
    assert!(exited.success(), "{exited:?}");
}

/// What the node's process holds: open file descriptors, threads, and exited children it has
/// not collected (zombies).
fn held(pid: u32) -> (usize, usize, usize) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("Threads");
    let zombies = std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            // `pid (comm) state ppid …`; comm may hold spaces and parentheses.
            let Some((_, rest)) = stat.rsplit_once(')') else {
                return false;
            };
            let mut fields = rest.split_whitespace();
            let (state, ppid) = (fields.next(), fields.next());
            state == Some("Z") && ppid == Some(pid.to_string().as_str())
        })
        .count();
    (fds, threads, zombies)
}

#[test]
fn a_node_holds_no_more_files_threads_or_children_after_busy_use_than_before() {
    let dir = tempfile::tempdir().expect("tmp");
    let node = start(dir.path());
    let pid = node.child.id();
    let url = node.url.clone();
    let warm = client();
    // Every run stays listed, so that the test can see each one end.
    set_cluster_setting(&warm, &url, "history_per_task", json!(1000));
    create_task(
        &warm,
        &url,
        &json!({"name": "echo", "spec": {"shell": "echo out; echo err >&2", "concurrency": "allow"},
            "when": {"mode": "manual"}}),
    );
    create_task(
        &warm,
        &url,
        &json!({"name": "slow", "spec": {"shell": "sleep 2; echo done", "concurrency": "allow"},
            "when": {"mode": "manual"}}),
    );
    // The first run opens what later runs share (the task's daily log, the tables).
    run_to_end(&warm, &node, "echo");
    drop(warm);
    let (fds_before, threads_before, _) = wait_until(
        "the node to close the warm-up client's connection",
        Duration::from_secs(10),
        || {
            let now = held(pid);
            std::thread::sleep(Duration::from_millis(200));
            (held(pid) == now).then_some(now)
        },
    );

    // 400 runs, 8 clients posting at once; event streams and log follows that end, and some the
    // client drops halfway through.
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                let http = client();
                for _ in 0..50 {
                    let r = http
                        .post(format!("{url}/api/tasks/echo/run"))
                        .send()
                        .expect("run");
                    assert_eq!(r.status().as_u16(), 202);
                }
            });
        }
        s.spawn(|| {
            let http = client();
            for _ in 0..20 {
                let impatient = client_with_timeout(Duration::from_millis(300));
                // An event stream never ends: the client leaves.
                if let Ok(r) = impatient.get(format!("{url}/api/events")).send() {
                    assert_eq!(r.status().as_u16(), 200);
                    let _ = r.bytes();
                }
                // A running run's log: the client leaves before it ends.
                let run: Value = http
                    .post(format!("{url}/api/tasks/slow/run"))
                    .send()
                    .expect("run")
                    .json()
                    .expect("json");
                let id = run["id"].as_str().expect("id").to_owned();
                if let Ok(r) = impatient
                    .get(format!("{url}/api/runs/{id}/log?follow=true"))
                    .send()
                {
                    let _ = r.bytes();
                }
            }
        });
    });
    // Every run ends, and a follow of a finished run ends by itself.
    let http = client();
    let runs = wait_until("every run to end", Duration::from_secs(60), || {
        let runs: Value = http
            .get(format!("{url}/api/runs?limit=1000"))
            .send()
            .ok()?
            .json()
            .ok()?;
        let Value::Array(runs) = runs else {
            return None;
        };
        runs.iter()
            .all(|r| r["status"] == "succeeded")
            .then_some(runs)
    });
    assert_eq!(runs.len(), 1 + 400 + 20);
    let last = runs[0]["id"].as_str().expect("id").to_owned();
    let followed = http
        .get(format!("{url}/api/runs/{last}/log?follow=true"))
        .send()
        .expect("follow")
        .text()
        .expect("a followed log that ends");
    assert!(followed.contains("event: end"), "{followed}");
    drop(http);

    // What the node holds returns to what it held before; idle pool threads retire after 10 s.
    let mut seen = (0, 0, 0);
    let settled = Instant::now() + Duration::from_secs(40);
    while Instant::now() < settled {
        seen = held(pid);
        let (fds, threads, zombies) = seen;
        if fds <= fds_before + 2 && threads <= threads_before + 2 && zombies == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (fds, threads, zombies) = seen;
    assert!(
        fds <= fds_before + 2 && threads <= threads_before + 2 && zombies == 0,
        "after 421 runs, 20 dropped event streams and 20 dropped log follows the node holds \
         {fds} files and {threads} threads ({fds_before} and {threads_before} before) and \
         {zombies} uncollected children"
    );
    stop(node);
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        match path.is_dir() {
            true => out.extend(files_under(&path)),
            false => out.push(path),
        }
    }
    out
}

#[test]
fn named_tokens_work_on_every_node_read_only_ones_change_nothing_and_a_removed_one_stops() {
    let cluster = Cluster::start(3);
    let http = client();
    cluster.formed(3, &http);
    let (maker, other) = (cluster.url(0), cluster.url(1));
    let cli = |args: &[&str]| {
        let out = operator_cli(&maker, cluster.dirs[0].path())
            .args(args)
            .output()
            .expect("taskmesh");
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(
            out.status.success(),
            "{args:?}: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let viewer = cli(&["token", "add", "viewer", "--read-only"]);
    let deploy = cli(&["token", "add", "deploy"]);
    assert!(viewer.len() == 64 && deploy.len() == 64 && viewer != deploy);
    let bearer = |token: &str| {
        with_bearer(token)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client")
    };
    let status = |client: &reqwest::blocking::Client, method: reqwest::Method, path: &str| {
        let r = client
            .request(method, format!("{other}{path}"))
            .json(&json!({"name": "made-by-viewer", "spec": {"command": ["true"]}, "when": {"mode": "manual"}}))
            .send()
            .expect("request");
        (r.status().as_u16(), r.text().unwrap_or_default())
    };

    // A token made through one node works on the other, once the cluster has it (asked with
    // the node's token: each wrong token would count as a failed login).
    let listed_there = || -> Vec<String> {
        let tokens: Value = http
            .get(format!("{other}/api/tokens"))
            .send()
            .and_then(|r| r.json())
            .expect("tokens");
        tokens
            .as_array()
            .expect("a list")
            .iter()
            .map(|t| t["name"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    wait_until(
        "the other node to take the tokens",
        Duration::from_secs(10),
        || (listed_there().len() == 2).then_some(()),
    );
    let as_viewer = bearer(&viewer);
    assert_eq!(
        status(&as_viewer, reqwest::Method::GET, "/api/tasks").0,
        200
    );
    let (code, said) = status(&as_viewer, reqwest::Method::POST, "/api/tasks");
    assert_eq!(code, 403, "{said}");
    assert!(said.contains("the token 'viewer' is read-only"), "{said}");
    assert_eq!(
        status(&as_viewer, reqwest::Method::GET, "/api/cluster-key").0,
        403
    );
    assert_eq!(
        status(
            &as_viewer,
            reqwest::Method::GET,
            "/api/settings/export?secrets=true"
        )
        .0,
        403
    );
    assert_eq!(
        status(&as_viewer, reqwest::Method::GET, "/api/settings/export").0,
        200
    );
    let tasks: Value = http
        .get(format!("{other}/api/tasks"))
        .send()
        .and_then(|r| r.json())
        .expect("tasks");
    assert_eq!(tasks.as_array().map(Vec::len), Some(0), "{tasks}");

    // A browser session made with it reads, and changes nothing either.
    let login = http_client()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
        .post(format!("{other}/login"))
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(format!("token={viewer}&next=%2F"))
        .send()
        .expect("login");
    assert_eq!(login.status().as_u16(), 303);
    let cookie = login
        .headers()
        .get(reqwest::header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .expect("a session cookie")
        .to_owned();
    let with_session = |method: reqwest::Method, path: &str| {
        http_client()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client")
            .request(method, format!("{other}{path}"))
            .header(reqwest::header::COOKIE, &cookie)
            .json(&json!({"name": "x", "spec": {"command": ["true"]}, "when": {"mode": "manual"}}))
            .send()
            .expect("request")
            .status()
            .as_u16()
    };
    assert_eq!(with_session(reqwest::Method::GET, "/api/tasks"), 200);
    assert_eq!(with_session(reqwest::Method::POST, "/api/tasks"), 403);

    // A full one changes things, and the activity names it (beside the viewer's sign-in, which
    // the node lists without waiting for it, so in either order).
    let (code, said) = status(&bearer(&deploy), reqwest::Method::POST, "/api/tasks");
    assert_eq!(code, 201, "{said}");
    let activity: Value = http
        .get(format!("{other}/api/activity?limit=5"))
        .send()
        .and_then(|r| r.json())
        .expect("activity");
    let saved: Vec<&Value> = activity
        .as_array()
        .expect("list")
        .iter()
        .filter(|a| a["what"] == "put_task")
        .collect();
    assert_eq!(saved.len(), 1, "{activity}");
    assert_eq!(saved[0]["token"], "deploy", "{activity}");
    assert!(
        activity
            .as_array()
            .expect("list")
            .iter()
            .any(|a| a["what"] == "put_token"
                && a["subject"] == "viewer"
                && a["detail"] == "read-only"
                && a["via"] == "cli"),
        "{activity}"
    );

    // Listed by name and rights; the tokens themselves are nowhere: not in the answers, the
    // nodes' files or their logs.
    let listed = cli(&["token", "ls", "--output", "json"]);
    let names: Vec<String> = serde_json::from_str::<Vec<Value>>(&listed)
        .expect("json")
        .iter()
        .map(|t| format!("{}:{}", t["name"], t["read_only"]))
        .collect();
    assert_eq!(names, ["\"deploy\":false", "\"viewer\":true"], "{listed}");
    for dir in &cluster.dirs {
        for file in files_under(dir.path()) {
            let bytes = std::fs::read(&file).unwrap_or_default();
            for token in [&viewer, &deploy] {
                assert!(
                    !bytes.windows(64).any(|w| w == token.as_bytes()),
                    "{} holds a named token",
                    file.display()
                );
            }
        }
    }
    for node in cluster.nodes.iter().flatten() {
        let log = node.log.lock().expect("log").join("\n");
        assert!(
            !log.contains(&viewer) && !log.contains(&deploy),
            "a log names a token"
        );
    }

    // One made to last a moment stops by itself, on every node, and says why.
    let brief = cli(&["token", "add", "brief", "--read-only", "--expires-in", "2s"]);
    wait_until(
        "the brief token to reach the other node",
        Duration::from_secs(10),
        || listed_there().contains(&"brief".to_owned()).then_some(()),
    );
    let as_brief = bearer(&brief);
    let said = wait_until("the brief token to expire", Duration::from_secs(10), || {
        let (code, said) = status(&as_brief, reqwest::Method::GET, "/api/tasks");
        (code == 401).then_some(said)
    });
    assert!(said.contains("the token 'brief' expired at"), "{said}");
    let listed = cli(&["token", "ls"]);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("brief") && l.ends_with("(expired)")),
        "{listed}"
    );
    cli(&["token", "rm", "brief"]);

    // Removed through one node: the token and its session stop on the other.
    cli(&["token", "rm", "viewer"]);
    wait_until(
        "the other node to drop the token",
        Duration::from_secs(10),
        || (listed_there() == ["deploy"]).then_some(()),
    );
    assert_eq!(
        status(&as_viewer, reqwest::Method::GET, "/api/tasks").0,
        401
    );
    assert_eq!(with_session(reqwest::Method::GET, "/api/tasks"), 401);
    let again = operator_cli(&maker, cluster.dirs[0].path())
        .args(["token", "rm", "viewer"])
        .output()
        .expect("taskmesh");
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("no token named 'viewer'"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}

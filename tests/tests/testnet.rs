//! The testnet end to end (`testnet/`, docs/testnet.md): real `taskmesh` processes, each in its
//! own network namespace on one bridge, finding each other by mDNS alone. Needs root; as any other
//! user these tests print a notice and pass without doing anything (CI runs them as root).
//!
//! There is one testnet per machine (fixed namespace names and addresses), so the tests here take
//! turns, and each uses its own state folder. A guard runs `testnet/down` when a test ends, also
//! when it fails.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use taskmesh_tests::{Api, wait_for};

/// The tests in this file take turns: they share the machine's one testnet.
static TESTNET: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long `N` nodes may take to find each other by mDNS.
const DISCOVERY: Duration = Duration::from_secs(30);
/// How long a node that lost its peers may take to stop listing them (the peer expiry, plus
/// detection) and to find them again after a heal (mDNS queries every 30 s, redials).
const EXPIRY: Duration = Duration::from_secs(60);
const RECOVERY: Duration = Duration::from_secs(90);

fn is_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!(
        "NOTICE: the testnet tests need root (network namespaces, a bridge, nftables); \
         not run. CI runs them as root; locally: sudo -E cargo test -p taskmesh-tests --test testnet"
    );
    false
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests package sits in the workspace")
        .to_owned()
}

/// The binary the testnet runs: `TASKMESH_BIN`, or a fresh debug build.
fn taskmesh_bin() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("TASKMESH_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args(["build", "-q", "-p", "taskmesh", "--bin", "taskmesh"])
        .current_dir(repo_root())
        .output()
        .context("running cargo build -p taskmesh")?;
    ensure!(
        out.status.success(),
        "cargo build -p taskmesh failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    Ok(target.join("debug").join("taskmesh"))
}

/// A testnet of this test: its state folder, and `testnet/down` on drop once it is up.
struct Testnet {
    dir: Option<tempfile::TempDir>,
    bin: PathBuf,
    apis: std::collections::BTreeMap<u32, Api>,
    /// Whether this test's `testnet/up` succeeded (only then does drop run `testnet/down`: a
    /// testnet that was up before belongs to someone else).
    ours: bool,
}

/// `testnet/up`'s exit code when a testnet is already up.
const ALREADY_UP: i32 = 3;
/// How long a test waits for another run's testnet to go away (another `cargo test` as root).
const TURN: Duration = Duration::from_secs(180);

impl Testnet {
    /// `testnet/up n`; waits its turn while another run's testnet is up.
    async fn up(n: u32) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("taskmesh-testnet-")
            .tempdir()
            .context("state folder")?;
        let mut net = Self {
            dir: Some(dir),
            bin: taskmesh_bin()?,
            apis: Default::default(),
            ours: false,
        };
        let until = tokio::time::Instant::now() + TURN;
        loop {
            let out = net.run("up", &[&n.to_string()])?;
            if out.status.success() {
                net.ours = true;
                return Ok(net);
            }
            if out.status.code() != Some(ALREADY_UP) || tokio::time::Instant::now() > until {
                bail!(
                    "testnet/up {n} failed ({}){}:\n{}",
                    out.status,
                    if out.status.code() == Some(ALREADY_UP) {
                        format!(" for {TURN:?}; run testnet/down if it is left over")
                    } else {
                        String::new()
                    },
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    fn dir(&self) -> &Path {
        self.dir.as_ref().expect("state folder").path()
    }

    fn run(&self, name: &str, args: &[&str]) -> Result<Output> {
        Command::new(repo_root().join("testnet").join(name))
            .args(args)
            .env("TESTNET_DIR", self.dir())
            .env("TASKMESH_BIN", &self.bin)
            .output()
            .with_context(|| format!("running testnet/{name}"))
    }

    /// Runs `testnet/<name> args…`; fails with its output when it fails.
    fn script(&mut self, name: &str, args: &[&str]) -> Result<Output> {
        let out = self.run(name, args)?;
        if !out.status.success() {
            bail!(
                "testnet/{name} {} failed ({}):\n{}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // A (re)started node may have a new token file; make its client again.
        self.apis.clear();
        Ok(out)
    }

    fn key_gen(&self) -> Result<String> {
        let out = Command::new(&self.bin).args(["key", "gen"]).output()?;
        ensure!(out.status.success(), "taskmesh key gen failed");
        let key = String::from_utf8(out.stdout)?.trim().to_owned();
        ensure!(!key.is_empty(), "taskmesh key gen printed nothing");
        Ok(key)
    }

    /// A client for node `i`'s API with its access token (read once, when first needed).
    fn api(&mut self, i: u32) -> Result<Api> {
        if let Some(api) = self.apis.get(&i) {
            return Ok(api.clone());
        }
        let token_file = self.dir().join(format!("node{i}/data/access-token"));
        let token = std::fs::read_to_string(&token_file)
            .with_context(|| format!("reading {}", token_file.display()))?;
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {}", token.trim()).parse()?,
        );
        // Longer than the deadline of a cluster-wide history read, which a node cut off from
        // its peers waits out before it answers with what it has.
        let http = taskmesh_tests::http_client()
            .no_proxy()
            .timeout(taskmesh::history::HISTORY_DEADLINE + Duration::from_secs(3))
            .default_headers(headers)
            .build()?;
        let api = Api {
            base: format!("http://198.18.0.{}:8080", 10 + i),
            http,
        };
        self.apis.insert(i, api.clone());
        Ok(api)
    }

    fn apis(&mut self, nodes: &[u32]) -> Result<Vec<(u32, Api)>> {
        nodes.iter().map(|&i| Ok((i, self.api(i)?))).collect()
    }

    /// Polls until every node in `nodes` lists exactly `expected(node)`.
    async fn wait_lists(
        &mut self,
        what: &str,
        deadline: Duration,
        nodes: &[u32],
        expected: impl Fn(u32) -> BTreeSet<String> + Copy,
    ) -> Result<()> {
        let apis = &self.apis(nodes)?;
        let last = &std::sync::Mutex::new(Vec::new());
        let result = wait_for(what, deadline, || async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let wrong = mismatches(apis, expected).await;
            let done = wrong.is_empty();
            *last.lock().expect("lock") = wrong;
            done.then_some(())
        })
        .await;
        result.with_context(|| format!("last seen: {:?}", last.lock().expect("lock")))
    }

    /// Checks for `window` that every node in `nodes` keeps listing exactly `expected(node)`.
    async fn hold_lists(
        &mut self,
        what: &str,
        window: Duration,
        nodes: &[u32],
        expected: impl Fn(u32) -> BTreeSet<String> + Copy,
    ) -> Result<()> {
        let apis = self.apis(nodes)?;
        let until = tokio::time::Instant::now() + window;
        let mut checks = 0u32;
        while tokio::time::Instant::now() < until {
            let wrong = mismatches(&apis, expected).await;
            ensure!(
                wrong.is_empty(),
                "{what}: broken after {checks} checks: {wrong:?}"
            );
            checks += 1;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        ensure!(checks > 0, "{what}: never checked");
        Ok(())
    }
}

/// The names a node lists as peers, or None when it does not answer.
async fn peers_of(api: &Api) -> Option<BTreeSet<String>> {
    let (status, body) = api.get("/api/peers").await.ok()?;
    if status != 200 {
        return None;
    }
    let peers = body["peers"].as_array()?;
    Some(
        peers
            .iter()
            .filter_map(|p| p["name"].as_str().map(str::to_owned))
            .collect(),
    )
}

/// The nodes whose peer lists are not `expected(node)`, with what they list.
async fn mismatches(
    apis: &[(u32, Api)],
    expected: impl Fn(u32) -> BTreeSet<String>,
) -> Vec<String> {
    let mut wrong = Vec::new();
    for (i, api) in apis {
        let want = expected(*i);
        match peers_of(api).await {
            Some(got) if got == want => {}
            got => wrong.push(format!("node{i} lists {got:?}, want {want:?}")),
        }
    }
    wrong
}

impl Drop for Testnet {
    fn drop(&mut self) {
        let Some(dir) = self.dir.take() else {
            return;
        };
        if !self.ours {
            return;
        }
        let out = Command::new(repo_root().join("testnet/down"))
            .env("TESTNET_DIR", dir.path())
            .output();
        match out {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "testnet/down failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("running testnet/down: {e}"),
        }
        if std::thread::panicking() {
            eprintln!("testnet logs kept in {}", dir.keep().display());
        }
    }
}

/// The names of `nodes` but `i`: what node `i` should list.
fn others(nodes: &'static [u32]) -> impl Fn(u32) -> BTreeSet<String> + Copy {
    move |i| {
        nodes
            .iter()
            .filter(|&&j| j != i)
            .map(|j| format!("node{j}"))
            .collect()
    }
}

fn nobody(_: u32) -> BTreeSet<String> {
    BTreeSet::new()
}

/// Keeps the state folder (with the nodes' logs) when the test fails.
fn keep_logs_on_error<T>(net: &mut Testnet, result: Result<T>) -> Result<T> {
    if result.is_err()
        && net.ours
        && let Some(dir) = net.dir.take()
    {
        let path = dir.keep();
        eprintln!("testnet logs kept in {}", path.display());
        let _ = Command::new(repo_root().join("testnet/down"))
            .env("TESTNET_DIR", &path)
            .output();
    }
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_find_each_other_by_mdns_and_a_wrong_key_stays_out() -> Result<()> {
    if !is_root() {
        return Ok(());
    }
    let _turn = TESTNET.lock().await;
    let mut net = Testnet::up(5).await?;
    let result = async {
        const FIVE: &[u32] = &[1, 2, 3, 4, 5];
        net.wait_lists(
            "every node to list the 4 others",
            DISCOVERY,
            FIVE,
            others(FIVE),
        )
        .await?;

        let wrong_key = net.key_gen()?;
        net.script("start", &["6", "--key", &wrong_key])?;
        // node6 runs, with mDNS, on the same bridge; it must not get in, and nobody lists it.
        net.hold_lists(
            "the five keep listing each other and not node6",
            Duration::from_secs(15),
            FIVE,
            others(FIVE),
        )
        .await?;
        net.hold_lists(
            "node6 (wrong key) lists no peers",
            Duration::from_secs(1),
            &[6],
            nobody,
        )
        .await?;
        // And it did meet them: mDNS showed it the five (libp2p-mdns logs that at info), so it
        // stayed out because of the key, not because it never saw them.
        let log = std::fs::read_to_string(net.dir().join("node6/node.log"))?;
        let seen = log.matches("discovered peer").count();
        ensure!(
            seen >= 5,
            "node6 logged {seen} mDNS discoveries, want the 5 others: the check proves nothing"
        );
        Ok(())
    }
    .await;
    keep_logs_on_error(&mut net, result)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_and_isolated_nodes_drop_out_and_heal_brings_them_back() -> Result<()> {
    if !is_root() {
        return Ok(());
    }
    let _turn = TESTNET.lock().await;
    let mut net = Testnet::up(3).await?;
    let result = async {
        const THREE: &[u32] = &[1, 2, 3];
        net.wait_lists(
            "every node to list the 2 others",
            DISCOVERY,
            THREE,
            others(THREE),
        )
        .await?;

        // Isolated, node3 expires from the others' lists and lists nobody itself.
        net.script("isolate", &["3"])?;
        net.wait_lists("node3 to drop out", EXPIRY, &[1, 2], others(&[1, 2]))
            .await?;
        net.wait_lists("node3 to list nobody", EXPIRY, &[3], nobody)
            .await?;
        net.script("heal", &[])?;
        net.wait_lists("node3 to come back", RECOVERY, THREE, others(THREE))
            .await?;

        // Cut from both others, node1 drops out the same way.
        net.script("cut", &["1", "2"])?;
        net.script("cut", &["1", "3"])?;
        net.wait_lists("node1 to drop out", EXPIRY, &[2, 3], others(&[2, 3]))
            .await?;
        net.wait_lists("node1 to list nobody", EXPIRY, &[1], nobody)
            .await?;
        net.script("heal", &[])?;
        net.wait_lists("node1 to come back", RECOVERY, THREE, others(THREE))
            .await?;
        Ok(())
    }
    .await;
    keep_logs_on_error(&mut net, result)
}

/// Node `i`'s view of the replicated state (`cluster` of /api/peers), or None when it does not
/// answer.
async fn cluster_of(api: &Api) -> Option<serde_json::Value> {
    let (status, body) = api.get("/api/peers").await.ok()?;
    (status == 200).then(|| body["cluster"].clone())
}

async fn task_names(api: &Api) -> Option<BTreeSet<String>> {
    let (status, body) = api.get("/api/tasks").await.ok()?;
    if status != 200 {
        return None;
    }
    Some(
        body.as_array()?
            .iter()
            .filter_map(|t| t["name"].as_str().map(str::to_owned))
            .collect(),
    )
}

/// This node's PeerId.
async fn cluster_peer(api: &Api) -> Option<String> {
    let (status, body) = api.get("/api/peers").await.ok()?;
    (status == 200).then(|| body["self"]["peer_id"].as_str().map(str::to_owned))?
}

/// The ids of the `tick` runs a node lists as started after `after` (on node `on`, if given).
async fn started_after(
    api: &Api,
    after: chrono::DateTime<chrono::Utc>,
    on: Option<&str>,
) -> Option<Vec<String>> {
    let (status, runs) = api.get("/api/runs?task=tick&limit=200").await.ok()?;
    if status != 200 {
        return None;
    }
    Some(
        runs.as_array()?
            .iter()
            .filter(|r| on.is_none_or(|p| r["node_id"] == p))
            .filter(|r| {
                r["started_at"]
                    .as_str()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .is_some_and(|t| t.to_utc() > after)
            })
            .filter_map(|r| r["id"].as_str().map(str::to_owned))
            .collect(),
    )
}

/// Waits for one cluster of the three nodes, all voters and agreeing on the leader; returns
/// the leader's node number.
async fn three_voters(apis: &[(u32, Api)]) -> Result<u32> {
    wait_for("one cluster of three voters", DISCOVERY, || async {
        let mut views = Vec::new();
        for (_, api) in apis {
            views.push(cluster_of(api).await?);
        }
        let voters = |c: &serde_json::Value| {
            c["members"].as_array().map_or(0, |m| {
                m.iter()
                    .filter(|m| m["voter"] == true && m["live"] == true)
                    .count()
            })
        };
        let agreed = views
            .iter()
            .all(|c| voters(c) == 3 && !c["leader"].is_null() && c["leader"] == views[0]["leader"]);
        let leader = views.iter().position(|c| c["role"] == "leader")?;
        agreed.then_some(apis[leader].0)
    })
    .await
}

fn task(name: &str) -> serde_json::Value {
    serde_json::json!({"name": name, "spec": {"command": ["true"]}, "when": {"mode": "manual"}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_starts_and_saves_nothing_the_majority_goes_on_and_all_converge()
-> Result<()> {
    if !is_root() {
        return Ok(());
    }
    let _turn = TESTNET.lock().await;
    let mut net = Testnet::up(3).await?;
    let result = async {
        let apis = net.apis(&[1, 2, 3])?;
        let leader = three_voters(&apis).await?;
        let (_, first) = &apis[0];
        let (code, body) = first.post("/api/tasks", &task("before")).await?;
        ensure!(code == 201, "the first write answered {code}: {body}");
        // A task every second, to see which side starts runs.
        let tick = serde_json::json!({
            "name": "tick",
            "spec": {"command": ["true"], "concurrency": "allow"},
            "when": {"mode": "cron", "schedule": "* * * * * *", "timezone": "UTC", "catch_up": "none"},
        });
        let (code, body) = first.post("/api/tasks", &tick).await?;
        ensure!(code == 201, "the cron task answered {code}: {body}");
        wait_for("the cron task to run", DISCOVERY, || async {
            (!started_after(first, chrono::Utc::now() - chrono::Duration::seconds(5), None)
                .await?
                .is_empty())
            .then_some(())
        })
        .await?;

        // Cut the leader off from everyone.
        let minority_peer = cluster_peer(&apis.iter().find(|(i, _)| *i == leader).expect("leader").1)
            .await
            .context("the leader's peer id")?;
        net.script("isolate", &[&leader.to_string()])?;
        let cut_at = chrono::Utc::now();
        let majority: Vec<&(u32, Api)> = apis.iter().filter(|(i, _)| *i != leader).collect();
        let minority = &apis.iter().find(|(i, _)| *i == leader).expect("leader").1;

        // The majority elects a new leader and takes a write (refused until it has one).
        let took = std::time::Instant::now();
        wait_for(
            "the majority to take a write",
            Duration::from_secs(30),
            || async {
                let (code, _) = majority[0]
                    .1
                    .post("/api/tasks", &task("majority"))
                    .await
                    .ok()?;
                (code == 201).then_some(())
            },
        )
        .await?;
        eprintln!(
            "the majority took a write {:?} after the cut",
            took.elapsed()
        );
        let new_leader = cluster_of(&majority[0].1).await.context("majority view")?;
        ensure!(new_leader["role"] == "leader" || new_leader["leader"] != serde_json::Value::Null);

        // The old leader refuses writes, fast and with a reason.
        let asked = std::time::Instant::now();
        let (code, body) = minority.post("/api/tasks", &task("minority")).await?;
        let waited = asked.elapsed();
        ensure!(code == 503, "the cut-off node answered {code}: {body}");
        ensure!(
            body["error"]
                .as_str()
                .unwrap_or_default()
                .contains("no quorum"),
            "it says why: {body}"
        );
        ensure!(waited < Duration::from_secs(5), "it answered in {waited:?}");

        // The majority goes on running the cron task; the cut-off side starts nothing new.
        let settled = cut_at + chrono::Duration::seconds(2);
        wait_for("the majority to run the cron task", Duration::from_secs(20), || async {
            (!started_after(&majority[0].1, settled, None).await?.is_empty()).then_some(())
        })
        .await?;
        let on_minority = started_after(minority, settled, Some(&minority_peer))
            .await
            .context("the cut-off node's runs")?;
        ensure!(
            on_minority.is_empty(),
            "the cut-off node started runs: {on_minority:?}"
        );
        // It tries its cron slot again each tick (4 a second), not in a busy loop.
        let log = std::fs::read_to_string(net.dir().join(format!("node{leader}/node.log")))?;
        let tries = log.matches("could not commit a cron slot").count();
        let seconds = (chrono::Utc::now() - cut_at).num_milliseconds() as f64 / 1000.0;
        ensure!(
            tries as f64 <= seconds * 8.0 + 20.0,
            "the cut-off leader tried its cron slot {tries} times in {seconds:.1} s"
        );

        // Heal: every node ends with the same tasks, without the refused one.
        net.script("heal", &[])?;
        let want: BTreeSet<String> = ["before", "majority", "tick"].map(String::from).into();
        for (i, api) in &apis {
            wait_for(&format!("node{i} to converge"), RECOVERY, || async {
                (task_names(api).await? == want).then_some(())
            })
            .await?;
        }
        wait_for(
            "every node to follow one leader again",
            RECOVERY,
            || async {
                let mut leaders = BTreeSet::new();
                for (_, api) in &apis {
                    leaders.insert(cluster_of(api).await?["leader"].to_string());
                }
                (leaders.len() == 1).then_some(())
            },
        )
        .await?;
        Ok(())
    }
    .await;
    keep_logs_on_error(&mut net, result)
}

/// The process groups of the processes whose command line holds `marker`: the instances of a
/// test's daemon (each run is a group of its own), seen in `/proc` whatever node (namespace)
/// runs them. Groups, not processes: a shell's child holds its command line from the fork
/// until its exec.
fn groups_with(marker: &str) -> BTreeSet<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return BTreeSet::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
                cmdline
                    .split(|b| *b == 0)
                    .any(|arg| arg == marker.as_bytes())
            })
        })
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // pid (comm) state ppid pgrp …; comm may hold spaces, so split after its ')'.
            stat.rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(2)?
                .parse()
                .ok()
        })
        .collect()
}

/// Samples the instances of `marker` every 50 ms until `stop`; returns the most alive at once
/// and the number of samples.
fn count_instances(
    marker: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<(usize, u32)> {
    std::thread::spawn(move || {
        let (mut most, mut samples) = (0, 0);
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            most = most.max(groups_with(&marker).len());
            samples += 1;
            std::thread::sleep(Duration::from_millis(50));
        }
        (most, samples)
    })
}

/// The always-task lease under a cut: a holder that hears no voter stops its daemon within the
/// lease term (half the peer timeout) of the last beat it heard, however long its peer list
/// goes unpublished, and so before the leader hands the task over. The daemon ignores SIGTERM
/// and dies only by the SIGKILL after its `kill_grace`: with a lease that lapsed only when the
/// voters expired from the holder's list (the peer timeout), the new instance started while
/// the old one still ran. Counted in /proc, not in the ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_holder_stops_its_daemon_within_the_lease_term_before_the_hand_over() -> Result<()>
{
    if !is_root() {
        return Ok(());
    }
    let _turn = TESTNET.lock().await;
    let mut net = Testnet::up(3).await?;
    let result = async {
        let apis = net.apis(&[1, 2, 3])?;
        let leader = three_voters(&apis).await?;
        let api = &apis[leader as usize - 1].1;
        // A long peer timeout makes the gap between the lease term (15 s) and the peer expiry
        // (30 s) wide: longer than the hand-over's margin over the lease.
        let (_, mut settings) = api.get("/api/settings").await?;
        settings["cluster"]["peer_timeout"] = serde_json::json!("30s");
        let (code, body) = api
            .send(reqwest::Method::PUT, "/api/settings", Some(&settings))
            .await?;
        ensure!(code == 200, "the settings answered {code}: {body}");
        let leader = three_voters(&apis).await?;
        let api = &apis[leader as usize - 1].1;
        // The leader gives nothing to itself: the holder is a follower, whose lease rests on
        // the beats it hears.
        let (code, body) = api
            .post(&format!("/api/peers/node{leader}/drain"), &serde_json::json!({}))
            .await?;
        ensure!(code == 200, "the drain answered {code}: {body}");
        let marker = format!("lease-probe-{}", std::process::id());
        let daemon = serde_json::json!({
            "name": "stubborn",
            "spec": {
                "command": ["sh", "-c", "trap '' TERM; while :; do sleep 0.2; done", &marker],
                "kill_grace": "10s",
            },
            "when": {"mode": "always"},
        });
        let (code, body) = api.post("/api/tasks", &daemon).await?;
        ensure!(code == 201, "the always-task answered {code}: {body}");
        let holder = wait_for("the daemon to run on a follower", DISCOVERY, || async {
            let (_, runs) = api.get("/api/runs?task=stubborn").await.ok()?;
            let run = runs.as_array()?.iter().find(|r| r["status"] == "running")?;
            let node: u32 = run["node"].as_str()?.strip_prefix("node")?.parse().ok()?;
            (groups_with(&marker).len() == 1).then_some(node)
        })
        .await?;
        ensure!(holder != leader, "the drained leader got the daemon");

        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let counter = count_instances(marker.clone(), stop.clone());
        let old = groups_with(&marker);
        net.script("isolate", &[&holder.to_string()])?;
        let cut = std::time::Instant::now();
        // Lease term 15 s from the last beat heard (at most a beat round, 2 s, before the
        // cut), SIGKILL 10 s later: gone by about 27 s. The hand-over comes after the peer
        // timeout, 30 s, plus the 5 s in which the leader still counts the holder live.
        let majority: Vec<&(u32, Api)> = apis.iter().filter(|(i, _)| *i != holder).collect();
        let replaced = wait_for(
            "the daemon to run again on another node",
            Duration::from_secs(90),
            || async {
                let (_, runs) = majority[0].1.get("/api/runs?task=stubborn").await.ok()?;
                let moved = runs.as_array()?.iter().any(|r| {
                    r["status"] == "running" && r["node"] != format!("node{holder}")
                });
                let now = groups_with(&marker);
                (moved && !now.is_empty() && now.iter().all(|p| !old.contains(p)))
                    .then(|| cut.elapsed())
            },
        )
        .await;
        // Sample on a while after the new instance started: nothing doubles later.
        tokio::time::sleep(Duration::from_secs(2)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (most, samples) = counter.join().expect("the sampler");
        let replaced = replaced?;
        eprintln!(
            "the daemon ran again {replaced:?} after the cut; at most {most} at once in {samples} samples"
        );
        ensure!(samples > 100, "too few samples: {samples}");
        ensure!(
            most == 1,
            "{most} instances of the always-task ran at once after its holder was cut off"
        );
        Ok(())
    }
    .await;
    keep_logs_on_error(&mut net, result)
}

/// The seed of CI's chaos run: the same faults in the same order on every run.
const CHAOS_SEED: &str = "7";

/// `testnet/chaos` for 2 minutes (docs/reliability.md): faults in a seeded order on 5 nodes,
/// counted by what the runs' processes did. Passes when its summary says no slot was lost or
/// doubled, at most one always-task instance ran at once, no acknowledged write is missing and
/// the replicas agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_two_minutes_loses_and_doubles_nothing() -> Result<()> {
    if !is_root() {
        return Ok(());
    }
    let _turn = TESTNET.lock().await;
    let bin = taskmesh_bin()?;
    let dir = tempfile::Builder::new()
        .prefix("taskmesh-chaos-")
        .tempdir()
        .context("state folder")?;
    // testnet/chaos waits its turn for another run's testnet itself and runs testnet/down at
    // its end, also when it fails.
    let out = tokio::process::Command::new(repo_root().join("testnet/chaos"))
        .args(["--duration", "120", "--seed", CHAOS_SEED])
        .env("TESTNET_DIR", dir.path())
        .env("TASKMESH_BIN", &bin)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(600), out)
        .await
        .context("testnet/chaos did not end within 10 minutes")?
        .context("running testnet/chaos")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary = stdout
        .lines()
        .rfind(|l| l.starts_with("chaos seed="))
        .unwrap_or_default()
        .to_owned();
    let passed = out.status.success()
        && summary.ends_with("result=PASS")
        && [
            "lost=0 ",
            "doubled=0 ",
            "always_max=1 ",
            "writes_missing=0 ",
        ]
        .iter()
        .all(|count| summary.contains(count))
        && !summary.contains("hashes=differ");
    if !passed {
        let kept = dir.keep();
        bail!(
            "testnet/chaos failed ({}): {summary}\nlogs and effects kept in {}\n{stdout}{}",
            out.status,
            kept.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    eprintln!("{summary}");
    Ok(())
}

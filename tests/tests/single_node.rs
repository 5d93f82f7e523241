//! One node in-process, driven through its REST API: cron, always-tasks, retries, catch-up,
//! logs, settings, and bad input.

use std::time::Duration;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use taskmesh_tests::{TestNode, wait_for};

fn finished(runs: &[Value]) -> Vec<&Value> {
    runs.iter()
        .filter(|r| !matches!(r["status"].as_str(), Some("queued" | "running")))
        .collect()
}

fn time(v: &Value) -> DateTime<Utc> {
    v.as_str().and_then(|s| s.parse().ok()).expect("timestamp")
}

#[tokio::test]
async fn a_cron_task_with_seconds_runs_on_its_slots() -> Result<()> {
    let node = TestNode::start().await?;
    let id = node
        .api
        .create_task(&json!({
            "name": "tick",
            "spec": {"command": ["true"]},
            "when": {"mode": "cron", "schedule": "* * * * * *", "timezone": "Europe/Berlin"}
        }))
        .await?;
    let runs = wait_for(
        "three finished cron runs",
        Duration::from_secs(10),
        || async {
            let runs = node.api.runs_of(&id).await.ok()?;
            (finished(&runs).len() >= 3).then_some(runs)
        },
    )
    .await?;
    let mut slots = Vec::new();
    for run in finished(&runs) {
        assert_eq!(run["trigger"]["kind"], "cron", "{run}");
        assert_eq!(run["status"], "succeeded", "{run}");
        let slot = time(&run["trigger"]["slot"]);
        let started = time(&run["started_at"]);
        let late = (started - slot).num_milliseconds();
        // On time: not before its slot, and well within the second (benchmarks measure the rest).
        assert!(
            (0..800).contains(&late),
            "run started {late} ms after its slot: {run}"
        );
        assert_eq!(slot.timestamp_subsec_millis(), 0, "slots are whole seconds");
        slots.push(slot);
    }
    let before = slots.len();
    slots.sort();
    slots.dedup();
    assert_eq!(slots.len(), before, "no slot ran twice");
    Ok(())
}

#[tokio::test]
async fn a_killed_always_task_comes_back() -> Result<()> {
    let node = TestNode::start().await?;
    let id = node
        .api
        .create_task(&json!({"name": "daemon", "spec": {"command": ["sleep", "300"]}, "when": {"mode": "always"}}))
        .await?;
    let first = wait_for("the daemon to run", Duration::from_secs(5), || async {
        let runs = node.api.runs_of(&id).await.ok()?;
        runs.into_iter()
            .find(|r| r["status"] == "running" && r["pid"].is_u64())
    })
    .await?;
    let pid = first["pid"].as_u64().expect("pid") as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    let second = wait_for(
        "the daemon to come back",
        Duration::from_secs(5),
        || async {
            let runs = node.api.runs_of(&id).await.ok()?;
            runs.into_iter()
                .find(|r| r["status"] == "running" && r["id"] != first["id"])
        },
    )
    .await?;
    assert_eq!(second["trigger"], json!({"kind": "always", "restart": 1}));
    assert_ne!(second["pid"], first["pid"]);
    let killed = node
        .api
        .get(&format!("/api/runs/{}", first["id"].as_str().expect("id")))
        .await?
        .1;
    assert_eq!(killed["status"], "killed");
    assert_eq!(killed["signal"], 9);
    let (_, removed) = node
        .api
        .send(reqwest::Method::DELETE, &format!("/api/tasks/{id}"), None)
        .await?;
    assert_eq!(removed["name"], "daemon");
    wait_for(
        "the removed daemon to stop",
        Duration::from_secs(10),
        || async {
            let runs = node.api.runs_of(&id).await.ok()?;
            runs.iter().all(|r| r["status"] != "running").then_some(())
        },
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_failing_task_is_retried_exactly_max_retries_times() -> Result<()> {
    let node = TestNode::start().await?;
    let mut settings = node.api.get("/api/settings").await?.1;
    settings["cluster"]["max_retries"] = json!(2);
    settings["cluster"]["retry_backoff"] = json!("50ms");
    let (status, body) = node
        .api
        .send(reqwest::Method::PUT, "/api/settings", Some(&settings))
        .await?;
    assert_eq!(status, 200, "{body}");
    let id = node
        .api
        .create_task(&json!({
            "name": "flaky",
            "spec": {"shell": "echo attempt $TASKMESH_ATTEMPT of ${TASKMESH_RETRY_OF:-none}; exit 4"},
            "when": {"mode": "manual"},
            "exit_rules": [{"on": "!0", "action": "retry"}, {"on": "0", "action": "disable"}]
        }))
        .await?;
    node.api.execute(&id).await?;
    let runs = wait_for(
        "the last attempt to give up",
        Duration::from_secs(10),
        || async {
            let runs = node.api.runs_of(&id).await.ok()?;
            runs.iter()
                .any(|r| {
                    r["actions"].as_array().is_some_and(|a| {
                        a.iter()
                            .any(|s| s.as_str().is_some_and(|s| s.contains("no attempts left")))
                    })
                })
                .then_some(runs)
        },
    )
    .await?;
    let mut attempts: Vec<u64> = runs
        .iter()
        .map(|r| r["attempt"].as_u64().expect("attempt"))
        .collect();
    attempts.sort();
    assert_eq!(
        attempts,
        vec![1, 2, 3],
        "the first run and exactly two retries"
    );
    assert!(runs.iter().all(|r| r["exit_code"] == 4));
    let log = node
        .api
        .http
        .get(format!(
            "{}/api/runs/{}/log",
            node.api.base,
            runs[0]["id"].as_str().expect("id")
        ))
        .send()
        .await?
        .text()
        .await?;
    // A retry is told which run it retries.
    let second = runs.iter().find(|r| r["attempt"] == 2).expect("attempt 2");
    assert_eq!(runs[0]["trigger"]["of"], second["id"], "{:?}", runs[0]);
    assert_eq!(
        log,
        format!("attempt 3 of {}\n", second["id"].as_str().expect("id"))
    );
    assert_eq!(
        node.api.get(&format!("/api/tasks/{id}")).await?.1["enabled"],
        true,
        "the disable rule is for exit 0"
    );
    Ok(())
}

#[tokio::test]
async fn parameters_reach_the_process_without_a_shell() -> Result<()> {
    let node = TestNode::start().await?;
    let out = node.dir.join("out.txt");
    let evil = "$(touch pwned); `id` & echo";
    let id = node
        .api
        .create_task(&json!({
            "name": "params",
            "spec": {
                "command": ["/bin/sh", "-c", "printf '%s|%s|%s' \"$1\" \"$who\" \"$EXTRA\" > \"$2\"", "argv0", "{{who}}", out],
                "parameters": {"who": evil},
                "env": {"EXTRA": "e"},
                "cwd": node.dir
            },
            "when": {"mode": "manual"}
        }))
        .await?;
    node.api.execute(&id).await?;
    let text = wait_for("the output file", Duration::from_secs(5), || async {
        std::fs::read_to_string(&out).ok().filter(|t| !t.is_empty())
    })
    .await?;
    assert_eq!(text, format!("{evil}|{evil}|e"));
    assert!(
        !node.dir.join("pwned").exists(),
        "a parameter value ran as shell code"
    );
    Ok(())
}

#[tokio::test]
async fn a_timeout_kills_the_whole_process_group() -> Result<()> {
    let node = TestNode::start().await?;
    // A channel for the rule to name; nothing listens there, which is not this test's concern.
    add_unheard_channel(&node, "ops").await?;
    let pidfile = node.dir.join("child.pid");
    let id = node
        .api
        .create_task(&json!({
            "name": "slow",
            "spec": {"shell": format!("sleep 300 & echo $! > {}; wait", pidfile.display()), "timeout": "1s"},
            "when": {"mode": "manual"},
            "exit_rules": [{"on": "timeout", "action": "notify", "channel": "ops"}]
        }))
        .await?;
    node.api.execute(&id).await?;
    let run = wait_for("the timeout", Duration::from_secs(10), || async {
        let runs = node.api.runs_of(&id).await.ok()?;
        runs.into_iter().find(|r| r["status"] == "timed_out")
    })
    .await?;
    assert!(
        run["actions"][0]
            .as_str()
            .is_some_and(|a| a.starts_with("notify ops")),
        "{run}"
    );
    let child: i32 = std::fs::read_to_string(&pidfile)?.trim().parse()?;
    wait_for(
        "the grandchild to be gone",
        Duration::from_secs(5),
        || async {
            let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child), None).is_ok()
                && !std::fs::read_to_string(format!("/proc/{child}/stat"))
                    .is_ok_and(|s| s.contains(") Z "));
            (!alive).then_some(())
        },
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn missed_slots_follow_the_catch_up_policy_and_are_never_silent() -> Result<()> {
    let node = TestNode::start().await?;
    let all = node
        .api
        .create_task(&json!({"name": "all", "spec": {"command": ["true"]}, "when": {"mode": "cron", "schedule": "@every 1s", "catch_up": "all"}}))
        .await?;
    let none = node
        .api
        .create_task(&json!({"name": "none", "spec": {"command": ["true"]}, "when": {"mode": "cron", "schedule": "@every 1s", "catch_up": "none"}}))
        .await?;
    // Both ran a slot to its end: a node stopped between committing a slot and its start would
    // find that run lost at restart, and its retry would race the catch-up runs (`forbid`).
    wait_for("both to run once", Duration::from_secs(5), || async {
        let ended = |runs: Vec<Value>| runs.iter().any(|r| r["status"] == "succeeded");
        let a = node.api.runs_of(&all).await.ok()?;
        let n = node.api.runs_of(&none).await.ok()?;
        (ended(a) && ended(n)).then_some(())
    })
    .await?;
    let dir = node.dir.clone();
    let tmp = node.stop().await;
    let down_at = Utc::now();
    // Let at least three slots pass while the node is down.
    wait_for("three missed slots", Duration::from_secs(10), || async {
        ((Utc::now() - down_at).num_milliseconds() > 3_500).then_some(())
    })
    .await?;
    let node = TestNode::start_in(&dir).await?;
    let caught_up = wait_for(
        "the missed slots of `all` to run",
        Duration::from_secs(10),
        || async {
            let runs = node.api.runs_of(&all).await.ok()?;
            let missed: Vec<Value> = runs
                .into_iter()
                .filter(|r| {
                    r["trigger"]["slot"].as_str().is_some_and(|s| {
                        time(&json!(s)) > down_at
                            && time(&json!(s)) < down_at + chrono::Duration::seconds(3)
                    })
                })
                .collect();
            (missed.len() >= 3).then_some(missed)
        },
    )
    .await?;
    assert!(
        caught_up.iter().all(|r| r["status"] != "skipped"),
        "{caught_up:?}"
    );
    let skipped = wait_for(
        "a skipped record for `none`",
        Duration::from_secs(10),
        || async {
            let runs = node.api.runs_of(&none).await.ok()?;
            runs.into_iter().find(|r| r["status"] == "skipped")
        },
    )
    .await?;
    assert!(
        skipped["actions"][0]
            .as_str()
            .is_some_and(|a| a.contains("not run (catch-up policy `none`)")),
        "{skipped}"
    );
    let none_runs = node.api.runs_of(&none).await?;
    let ran_while_down = none_runs.iter().filter(|r| {
        r["status"] != "skipped"
            && r["trigger"]["slot"].as_str().is_some_and(|s| {
                let t = time(&json!(s));
                t > down_at + chrono::Duration::milliseconds(500)
                    && t < down_at + chrono::Duration::seconds(3)
            })
    });
    assert_eq!(ran_while_down.count(), 0, "policy none ran a missed slot");
    drop(tmp);
    Ok(())
}

#[tokio::test]
async fn paused_cron_fires_nothing_and_resumed_it_catches_up_by_policy() -> Result<()> {
    let node = TestNode::start().await?;
    let out = tempfile::tempdir()?;
    let file = out.path().join("slots");
    let id = node
        .api
        .create_task(&json!({
            "name": "tick",
            "spec": {"shell": format!("echo $TASKMESH_SLOT >> {}", file.display()), "concurrency": "allow"},
            "when": {"mode": "cron", "schedule": "* * * * * *", "catch_up": "one"}
        }))
        .await?;
    // The slots the runs' own processes wrote.
    let slots = || -> Vec<DateTime<Utc>> {
        std::fs::read_to_string(&file)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.parse().ok())
            .collect()
    };
    wait_for("two slots", Duration::from_secs(10), || async {
        (slots().len() >= 2).then_some(())
    })
    .await?;

    let (status, paused) = node.api.post("/api/cron/pause", &json!({})).await?;
    assert_eq!(status, 200, "{paused}");
    let paused_at = Utc::now();
    assert_eq!(paused["paused"], true, "{paused}");
    assert_eq!(node.api.get("/api/cron").await?.1["paused"], true);
    // A slot fired just before the pause may still be starting; after that, nothing starts.
    let since =
        |ms: i64| async move { ((Utc::now() - paused_at).num_milliseconds() > ms).then_some(()) };
    wait_for("a second of pause", Duration::from_secs(5), || since(1_000)).await?;
    let before = slots().len();
    wait_for(
        "three more seconds of pause",
        Duration::from_secs(10),
        || since(4_000),
    )
    .await?;
    assert_eq!(
        slots().len(),
        before,
        "a cron slot ran while cron was paused: {:?}",
        slots()
    );

    let (status, resumed) = node.api.post("/api/cron/resume", &json!({})).await?;
    assert_eq!(status, 200, "{resumed}");
    let resumed_at = Utc::now();
    assert_eq!(resumed["paused"], false, "{resumed}");
    wait_for("cron to run again", Duration::from_secs(10), || async {
        slots().iter().any(|s| *s > resumed_at).then_some(())
    })
    .await?;
    // Policy `one`: of the slots missed while paused, only the latest ran; the others are
    // recorded as skipped, not silently dropped.
    let missed_ran = slots()
        .into_iter()
        .filter(|s| {
            *s > paused_at + chrono::Duration::seconds(1)
                && *s < resumed_at - chrono::Duration::seconds(1)
        })
        .count();
    assert!(
        missed_ran <= 1,
        "more than one missed slot ran: {:?}",
        slots()
    );
    let skipped = wait_for("the skipped record", Duration::from_secs(10), || async {
        let runs = node.api.runs_of(&id).await.ok()?;
        runs.into_iter().find(|r| r["status"] == "skipped")
    })
    .await?;
    assert!(
        skipped["actions"][0]
            .as_str()
            .is_some_and(|a| a.contains("not run (catch-up policy `one`)")),
        "{skipped}"
    );
    Ok(())
}

/// A task's `stop_signal` is what Stop sends (its trap writes the signal's name), and its own
/// `kill_grace` is how long a run that ignores it has before SIGKILL.
#[tokio::test]
async fn a_run_is_stopped_with_its_tasks_signal_and_killed_after_its_grace() -> Result<()> {
    let node = TestNode::start().await?;
    let out = tempfile::tempdir()?;
    let file = out.path().join("signals");
    let trap = |signal: &str| {
        format!(
            "trap 'echo {signal} >> {file}; exit 0' {signal}; echo up >> {file}; while :; do sleep 0.05; done",
            file = file.display()
        )
    };
    node.api
        .create_task(&json!({"name": "graceful", "when": {"mode": "manual"},
            "spec": {"shell": trap("QUIT"), "stop_signal": "QUIT", "kill_grace": "30s"}}))
        .await?;
    node.api
        .create_task(&json!({"name": "stubborn", "when": {"mode": "manual"},
            "spec": {"shell": "trap '' TERM; while :; do sleep 0.05; done", "kill_grace": "1s"}}))
        .await?;
    let lines = || std::fs::read_to_string(&file).unwrap_or_default();
    let run = node.api.execute("graceful").await?;
    let id = run["id"].as_str().context("run id")?.to_owned();
    wait_for("the run to be up", Duration::from_secs(10), || async {
        lines().contains("up").then_some(())
    })
    .await?;
    let (status, body) = node
        .api
        .post(&format!("/api/runs/{id}/stop"), &json!({}))
        .await?;
    assert_eq!(status, 202, "{body}");
    let ended = wait_for(
        "the graceful run to end",
        Duration::from_secs(20),
        || async {
            let (_, run) = node.api.get(&format!("/api/runs/{id}")).await.ok()?;
            (run["status"] != "running" && run["status"] != "queued").then_some(run)
        },
    )
    .await?;
    assert_eq!(lines(), "up\nQUIT\n", "its trap ran: {ended}");
    let log_of = |id: String| {
        let request = node
            .api
            .http
            .get(format!("{}/api/runs/{id}/log", node.api.base));
        async move { anyhow::Ok(request.send().await?.text().await?) }
    };
    let log = log_of(id).await?;
    assert!(log.contains("stopped; sending SIGQUIT"), "{log}");

    let run = node.api.execute("stubborn").await?;
    let id = run["id"].as_str().context("run id")?.to_owned();
    wait_for(
        "the stubborn run to run",
        Duration::from_secs(10),
        || async {
            let (_, run) = node.api.get(&format!("/api/runs/{id}")).await.ok()?;
            (run["status"] == "running").then_some(())
        },
    )
    .await?;
    node.api
        .post(&format!("/api/runs/{id}/stop"), &json!({}))
        .await?;
    let ended = wait_for(
        "the stubborn run to be killed",
        Duration::from_secs(20),
        || async {
            let (_, run) = node.api.get(&format!("/api/runs/{id}")).await.ok()?;
            (run["status"] != "running").then_some(run)
        },
    )
    .await?;
    let log = log_of(id).await?;
    assert!(
        log.contains("still running after the grace time; sending SIGKILL"),
        "{ended} {log}"
    );
    // Well before the cluster's grace (5 s) would have run out: its own second counted.
    let took = time(&ended["ended_at"]) - time(&ended["started_at"]);
    assert!(
        took < chrono::Duration::seconds(4),
        "killed after {took}: {ended}"
    );

    let (status, bad) = node
        .api
        .post(
            "/api/tasks",
            &json!({"name": "bad", "when": {"mode": "manual"},
            "spec": {"command": ["true"], "stop_signal": "KILL", "kill_grace": "2h"}}),
        )
        .await?;
    assert_eq!(status, 400, "{bad}");
    let text = bad.to_string();
    assert!(
        text.contains("spec.stop_signal") || text.contains("KILL"),
        "{bad}"
    );
    Ok(())
}

#[tokio::test]
async fn the_log_follows_a_running_task_and_daily_files_are_written() -> Result<()> {
    let node = TestNode::start().await?;
    let id = node
        .api
        .create_task(&json!({"name": "talk", "spec": {"shell": "echo one; sleep 0.3; echo two >&2"}, "when": {"mode": "manual"}}))
        .await?;
    let run = node.api.execute(&id).await?;
    let run_id = run["id"].as_str().expect("id").to_owned();
    let body = node
        .api
        .http
        .get(format!(
            "{}/api/runs/{run_id}/log?follow=true",
            node.api.base
        ))
        .send()
        .await?
        .text()
        .await?;
    let one = body.find("data: one").expect("first line streamed");
    let two = body.find("data: two").expect("second line streamed");
    let end = body.find("event: end").expect("end event");
    assert!(one < two && two < end, "{body}");
    let day = node
        .dir
        .join("logs/talk")
        .join(format!("{}.log", Utc::now().format("%Y-%m-%d")));
    let daily = std::fs::read_to_string(&day)?;
    assert!(
        daily.contains(&format!("{run_id} out one"))
            && daily.contains(&format!("{run_id} err two")),
        "{daily}"
    );
    let runs = node.dir.join("logs/.runs");
    assert!(runs.join(format!("{run_id}.log")).is_file());

    // A run that prints nothing leaves no file, and its log reads as empty.
    let quiet = node
        .api
        .create_task(
            &json!({"name": "quiet", "spec": {"command": ["true"]}, "when": {"mode": "manual"}}),
        )
        .await?;
    let run = node.api.execute(&quiet).await?;
    let quiet_id = run["id"].as_str().expect("id").to_owned();
    wait_for("the quiet run to end", Duration::from_secs(10), || async {
        let (_, run) = node.api.get(&format!("/api/runs/{quiet_id}")).await.ok()?;
        (run["status"] == "succeeded").then_some(())
    })
    .await?;
    let response = node
        .api
        .http
        .get(format!("{}/api/runs/{quiet_id}/log", node.api.base))
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await?, "");
    assert!(!runs.join(format!("{quiet_id}.log")).exists());
    Ok(())
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_nothing_is_lost() -> Result<()> {
    let node = TestNode::start().await?;
    let id = node
        .api
        .create_task(
            &json!({"name": "keep", "spec": {"command": ["true"]}, "when": {"mode": "manual"}}),
        )
        .await?;
    let cases = [
        (
            json!({"name": "keep", "spec": "{\"command\": [\"true\"],\n \"dependencies\": [1]}", "when": {"mode": "manual"}}),
            "spec.dependencies[0]",
        ),
        (
            json!({"name": "keep", "spec": {"command": ["true"]}, "when": {"mode": "cron", "schedule": "* * *"}}),
            "when.schedule",
        ),
        (
            json!({"name": "keep", "spec": {"command": ["true"]}, "when": {"mode": "weekly"}}),
            "when.mode",
        ),
        (
            json!({"name": "keep", "spec": {"command": ["true"]}, "when": {"mode": "manual"}, "exit_rules": [{"on": "300", "action": "retry"}]}),
            "exit_rules[0].on",
        ),
    ];
    for (body, path) in cases {
        let (status, err) = node
            .api
            .send(
                reqwest::Method::PUT,
                &format!("/api/tasks/{id}"),
                Some(&body),
            )
            .await?;
        assert_eq!(status, 400, "{body}");
        assert!(
            err["details"]
                .as_array()
                .is_some_and(|d| d.iter().any(|e| e["path"] == path)),
            "{path}: {err}"
        );
    }
    let (status, err) = node
        .api
        .post(
            "/api/tasks",
            &json!({"name": "keep", "spec": {"shell": "x"}, "when": {"mode": "manual"}}),
        )
        .await?;
    assert_eq!(status, 400, "a second task with the same name: {err}");
    let raw = node
        .api
        .http
        .post(format!("{}/api/tasks", node.api.base))
        .header("content-type", "application/json")
        .body("{\"name\": ")
        .send()
        .await?;
    assert_eq!(raw.status().as_u16(), 400);
    let err: Value = raw.json().await?;
    assert!(
        err["details"][0]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("malformed JSON")),
        "{err}"
    );
    let big = node
        .api
        .http
        .post(format!("{}/api/tasks", node.api.base))
        .header("content-type", "application/json")
        .body(vec![b' '; 2 << 20])
        .send()
        .await?;
    assert_eq!(big.status().as_u16(), 413);
    let err: Value = big.json().await?;
    assert!(
        err["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{err}"
    );
    let (status, err) = node.api.get("/api/runs?limit=lots").await?;
    assert_eq!(status, 400);
    assert!(
        err["error"].as_str().is_some_and(|e| e.contains("limit")),
        "{err}"
    );
    let cross = node
        .api
        .http
        .delete(format!("{}/api/tasks/{id}", node.api.base))
        .header("origin", "http://evil.example")
        .send()
        .await?;
    assert_eq!(cross.status().as_u16(), 403);
    let (status, task) = node.api.get(&format!("/api/tasks/{id}")).await?;
    assert_eq!(status, 200);
    assert_eq!(
        task["spec"]["command"],
        json!(["true"]),
        "the saved task is unchanged"
    );
    let (status, err) = node.api.get("/api/runs/nope").await?;
    assert_eq!(status, 400, "{err}");
    let (status, _) = node.api.get("/api/tasks/nope").await?;
    assert_eq!(status, 404);
    let (status, err) = node.api.get("/api/no/such/route").await?;
    assert_eq!((status, err["error"].is_string()), (404, true));
    let page = node
        .api
        .http
        .get(format!("{}/no-such-page", node.api.base))
        .send()
        .await?;
    assert_eq!(page.status().as_u16(), 404);
    assert!(
        page.text()
            .await?
            .contains("There is no page at /no-such-page")
    );
    Ok(())
}

#[tokio::test]
async fn settings_round_trip_with_masked_secrets() -> Result<()> {
    let node = TestNode::start().await?;
    let mut settings = node.api.get("/api/settings").await?.1;
    settings["cluster"]["telegram"]["bot_token"] = json!("123:abc");
    settings["node"]["dependencies"] = json!(["python3", "gpu=nvidia"]);
    let (status, saved) = node
        .api
        .send(reqwest::Method::PUT, "/api/settings", Some(&settings))
        .await?;
    assert_eq!(status, 200, "{saved}");
    assert_eq!(saved["cluster"]["telegram"]["bot_token"], "********");
    let masked = node.api.get("/api/settings/export").await?.1;
    assert_eq!(masked["cluster"]["telegram"]["bot_token"], "********");
    let full = node.api.get("/api/settings/export?secrets=true").await?.1;
    assert_eq!(full["cluster"]["telegram"]["bot_token"], "123:abc");
    // Importing the masked export keeps the secret.
    let import = node
        .api
        .http
        .post(format!("{}/api/settings/import", node.api.base))
        .body(masked.to_string())
        .send()
        .await?;
    assert_eq!(import.status().as_u16(), 200);
    assert_eq!(
        node.handle
            .settings(true)
            .cluster
            .telegram
            .bot_token
            .as_deref(),
        Some("123:abc")
    );
    let bad = node
        .api
        .http
        .post(format!("{}/api/settings/import", node.api.base))
        .body("{\"node\": {\"slots\": 0}}")
        .send()
        .await?;
    assert_eq!(bad.status().as_u16(), 400);
    let err: Value = bad.json().await?;
    assert_eq!(err["details"][0]["path"], "node.slots");
    assert_eq!(
        node.handle.node_settings().dependencies,
        vec!["python3", "gpu=nvidia"]
    );
    // A task needing what the node lacks is refused with the reason.
    let id = node.api.create_task(&json!({"name": "gpu", "spec": {"command": ["true"], "dependencies": ["gpu=amd"]}, "when": {"mode": "manual"}})).await?;
    let (status, err) = node
        .api
        .post(&format!("/api/tasks/{id}/run"), &json!(null))
        .await?;
    assert_eq!(status, 409);
    assert!(
        err["error"].as_str().is_some_and(|e| e.contains("gpu=amd")),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn a_task_runs_as_its_user_only_when_the_node_is_root() -> Result<()> {
    let node = TestNode::start().await?;
    let id = node
        .api
        .create_task(&json!({"name": "who", "spec": {"shell": "id -u; id -G", "user": "nobody"}, "when": {"mode": "manual"}}))
        .await?;
    let run = node.api.execute(&id).await?;
    let run_id = run["id"].as_str().expect("id").to_owned();
    let run = wait_for("the run to end", Duration::from_secs(5), || async {
        let (_, r) = node.api.get(&format!("/api/runs/{run_id}")).await.ok()?;
        (r["status"] != "queued" && r["status"] != "running").then_some(r)
    })
    .await?;
    let log = node
        .handle
        .run_log(&taskmesh::model::RunId(run_id), 0, 4096)
        .await?
        .unwrap_or_default();
    let log = String::from_utf8_lossy(&log);
    if nix::unistd::geteuid().is_root() {
        let nobody = nix::unistd::User::from_name("nobody")?.expect("user nobody");
        assert_eq!(run["status"], "succeeded", "{run}");
        let mut lines = log.lines();
        assert_eq!(lines.next(), Some(nobody.uid.to_string().as_str()));
        assert!(
            !lines
                .next()
                .unwrap_or("")
                .split_whitespace()
                .any(|g| g == "0"),
            "root's groups were kept: {log}"
        );
    } else {
        assert_eq!(run["status"], "failed", "{run}");
        assert!(log.contains("needs the node to run as root"), "{log}");
    }
    Ok(())
}

#[tokio::test]
async fn a_crash_looping_daemon_backs_off_and_shows_it() -> Result<()> {
    let node = TestNode::start().await?;
    let id = node
        .api
        .create_task(
            &json!({"name": "crashy", "spec": {"shell": "exit 1"}, "when": {"mode": "always"}}),
        )
        .await?;
    let task_id = taskmesh::model::TaskId(id.clone());
    let status = wait_for("a crash loop", Duration::from_secs(10), || async {
        node.handle
            .daemons()
            .get(&task_id)
            .filter(|d| d.crash_loop)
            .cloned()
    })
    .await?;
    assert!(status.quick_exits >= 5, "{status:?}");
    // Backoff: the starts of consecutive runs drift apart (50, 100, 200, 400 ms …).
    let mut starts: Vec<DateTime<Utc>> = node
        .api
        .runs_of(&id)
        .await?
        .iter()
        .filter_map(|r| r["started_at"].as_str()?.parse().ok())
        .collect();
    starts.sort();
    let gaps: Vec<i64> = starts
        .windows(2)
        .map(|w| (w[1] - w[0]).num_milliseconds())
        .collect();
    assert!(
        gaps.len() >= 4 && gaps[3] >= 300,
        "restarts did not back off: {gaps:?}"
    );
    let page = node
        .api
        .http
        .get(format!("{}/index", node.api.base))
        .send()
        .await?
        .text()
        .await?;
    assert!(
        page.contains("crash loop"),
        "the task list does not show the crash loop"
    );
    Ok(())
}

#[tokio::test]
async fn exit_rules_run_another_task_and_disable() -> Result<()> {
    let node = TestNode::start().await?;
    let cleanup = node
        .api
        .create_task(
            &json!({"name": "cleanup", "spec": {"command": ["true"]}, "when": {"mode": "manual"}}),
        )
        .await?;
    // `ghost` exists when `main` is saved (a rule's target must), and is gone when the rule fires.
    let ghost = node
        .api
        .create_task(
            &json!({"name": "ghost", "spec": {"command": ["true"]}, "when": {"mode": "manual"}}),
        )
        .await?;
    let main = node
        .api
        .create_task(&json!({
            "name": "main",
            "spec": {"shell": "exit 2"},
            "when": {"mode": "manual"},
            "exit_rules": [{"on": "2", "action": "run", "task": "cleanup"}, {"on": "1-3", "action": "disable"}, {"on": "*", "action": "run", "task": "ghost"}]
        }))
        .await?;
    let (status, body) = node
        .api
        .send(
            reqwest::Method::DELETE,
            &format!("/api/tasks/{ghost}"),
            None,
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    node.api.execute(&main).await?;
    let chained = wait_for("cleanup to run", Duration::from_secs(5), || async {
        node.api
            .runs_of(&cleanup)
            .await
            .ok()?
            .into_iter()
            .find(|r| r["status"] == "succeeded")
    })
    .await?;
    let main_run = node.api.runs_of(&main).await?.remove(0);
    assert_eq!(
        chained["trigger"],
        json!({"kind": "rule", "from": main_run["id"]})
    );
    let actions: Vec<&str> = main_run["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(actions.len(), 3, "{actions:?}");
    assert!(actions[0].starts_with("run cleanup"));
    assert!(actions[1].starts_with("disable"));
    assert!(actions[2].contains("no task called `ghost`"), "{actions:?}");
    assert_eq!(
        node.api.get(&format!("/api/tasks/{main}")).await?.1["enabled"],
        false
    );
    Ok(())
}

#[tokio::test]
async fn reboot_tasks_run_once_per_node_start() -> Result<()> {
    let node = TestNode::start().await?;
    let id = node
        .api
        .create_task(&json!({"name": "boot", "spec": {"command": ["true"]}, "when": {"mode": "cron", "schedule": "@reboot"}}))
        .await?;
    assert!(
        node.api.runs_of(&id).await?.is_empty(),
        "@reboot runs at start, not on save"
    );
    let dir = node.dir.clone();
    let tmp = node.stop().await;
    let node = TestNode::start_in(&dir).await?;
    let runs = wait_for("the @reboot run", Duration::from_secs(5), || async {
        let runs = node.api.runs_of(&id).await.ok()?;
        (!runs.is_empty()).then_some(runs)
    })
    .await?;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["trigger"]["kind"], "reboot");
    drop(tmp);
    Ok(())
}

#[tokio::test]
async fn concurrency_forbid_refuses_allow_overlaps_replace_stops_the_earlier_run() -> Result<()> {
    let node = TestNode::start().await?;
    let task = |name: &str, policy: &str| json!({"name": name, "spec": {"command": ["sleep", "30"], "concurrency": policy}, "when": {"mode": "manual"}});
    let status_of = |id: String| {
        let api = node.api.clone();
        async move {
            let (_, run) = api.get(&format!("/api/runs/{id}")).await.ok()?;
            run["status"].as_str().map(str::to_owned)
        }
    };
    let running = |id: String| {
        let status_of = &status_of;
        async move {
            wait_for("the run to start", Duration::from_secs(10), || {
                let id = id.clone();
                async move { (status_of(id).await? == "running").then_some(()) }
            })
            .await
        }
    };
    for (name, policy) in [("f", "forbid"), ("a", "allow"), ("r", "replace")] {
        node.api.create_task(&task(name, policy)).await?;
    }

    let first = node.api.execute("f").await?["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    running(first.clone()).await?;
    let (code, body) = node.api.post("/api/tasks/f/run", &Value::Null).await?;
    assert_eq!(code, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("concurrency `forbid`"),
        "{body}"
    );

    let a1 = node.api.execute("a").await?["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let a2 = node.api.execute("a").await?["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    running(a1).await?;
    running(a2).await?;

    let r1 = node.api.execute("r").await?["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    running(r1.clone()).await?;
    let r2 = node.api.execute("r").await?["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    running(r2).await?;
    wait_for(
        "the earlier run to be stopped",
        Duration::from_secs(10),
        || {
            let r1 = r1.clone();
            let status_of = &status_of;
            async move { (status_of(r1).await? == "killed").then_some(()) }
        },
    )
    .await?;
    Ok(())
}

/// Execute now that the cluster refuses is answered 409 with the reason and its kind, and
/// leaves no run behind: refusals are answers, not failures (503 stays for "not committed").
#[tokio::test]
async fn execute_now_that_cannot_run_is_refused_with_409_and_why() -> Result<()> {
    let node = TestNode::start().await?;
    let gpu = node
        .api
        .create_task(&json!({"name": "gpu", "spec": {"command": ["true"], "dependencies": ["gpu=amd"]}, "when": {"mode": "manual"}}))
        .await?;
    let (code, body) = node.api.post("/api/tasks/gpu/run", &Value::Null).await?;
    assert_eq!(code, 409, "{body}");
    assert_eq!(body["error"], "no live node has gpu=amd", "{body}");
    assert_eq!(body["refused"], "no_node", "{body}");
    assert!(node.api.runs_of(&gpu).await?.is_empty(), "no run recorded");

    let slow = node
        .api
        .create_task(&json!({"name": "slow", "spec": {"command": ["sleep", "30"]}, "when": {"mode": "manual"}}))
        .await?;
    let first = node.api.execute("slow").await?["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    wait_for(
        "the first run to start",
        Duration::from_secs(10),
        || async {
            let (_, run) = node.api.get(&format!("/api/runs/{first}")).await.ok()?;
            (run["status"] == "running").then_some(())
        },
    )
    .await?;
    let (code, body) = node.api.post("/api/tasks/slow/run", &Value::Null).await?;
    assert_eq!(code, 409, "{body}");
    assert_eq!(
        body["error"],
        format!("run {first} is still running (concurrency `forbid`)"),
        "{body}"
    );
    assert_eq!(body["refused"], "still_running", "{body}");
    let runs = node.api.runs_of(&slow).await?;
    assert_eq!(runs.len(), 1, "only the first run: {runs:?}");
    Ok(())
}

/// A run an exit rule asks for, refused by the target's concurrency `forbid`, is recorded as a
/// `skipped` run saying why: nobody is there to be answered 409, and nothing skips silently.
#[tokio::test]
async fn a_rules_run_that_forbid_refuses_is_recorded_skipped() -> Result<()> {
    let node = TestNode::start().await?;
    let slow = node
        .api
        .create_task(&json!({"name": "slow", "spec": {"command": ["sleep", "30"]}, "when": {"mode": "manual"}}))
        .await?;
    let main = node
        .api
        .create_task(&json!({
            "name": "main",
            "spec": {"shell": "exit 2"},
            "when": {"mode": "manual"},
            "exit_rules": [{"on": "2", "action": "run", "task": "slow"}]
        }))
        .await?;
    let first = node.api.execute("slow").await?["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    wait_for("slow to start", Duration::from_secs(10), || async {
        let (_, run) = node.api.get(&format!("/api/runs/{first}")).await.ok()?;
        (run["status"] == "running").then_some(())
    })
    .await?;
    node.api.execute(&main).await?;
    let skipped = wait_for(
        "the rule's run to be recorded",
        Duration::from_secs(10),
        || async {
            node.api
                .runs_of(&slow)
                .await
                .ok()?
                .into_iter()
                .find(|r| r["status"] == "skipped")
        },
    )
    .await?;
    assert_eq!(skipped["trigger"]["kind"], "rule", "{skipped}");
    assert_eq!(
        skipped["actions"][0],
        format!("not run: run {first} is still running (concurrency `forbid`)"),
        "{skipped}"
    );
    Ok(())
}

#[tokio::test]
async fn a_log_path_others_can_write_to_is_refused_at_save() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let node = TestNode::start().await?;
    let open = tempfile::tempdir()?;
    std::fs::set_permissions(open.path(), std::fs::Permissions::from_mode(0o777))?;
    let mut settings = node.api.get("/api/settings").await?.1;
    settings["node"]["log_path"] = json!(open.path().join("logs"));
    let (status, err) = node
        .api
        .send(reqwest::Method::PUT, "/api/settings", Some(&settings))
        .await?;
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["details"][0]["path"], "node.log_path", "{err}");
    let message = err["details"][0]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!(
            "{} is writable by everyone",
            open.path().display()
        )),
        "{err}"
    );
    assert_eq!(node.handle.node_settings().log_path, None);
    // With the sticky bit (as /tmp has), nobody can replace the folder below: accepted.
    std::fs::set_permissions(open.path(), std::fs::Permissions::from_mode(0o1777))?;
    let (status, saved) = node
        .api
        .send(reqwest::Method::PUT, "/api/settings", Some(&settings))
        .await?;
    assert_eq!(status, 200, "{saved}");
    Ok(())
}

#[tokio::test]
async fn listings_are_paged_with_a_link_to_the_next_page() -> Result<()> {
    let node = TestNode::start().await?;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(
            node.api
                .create_task(&json!({"name": format!("paged-{n}"), "spec": {"command": ["true"], "concurrency": "allow"}, "when": {"mode": "manual"}}))
                .await?,
        );
    }
    // Tasks: oldest first, two per page, the last page without a link.
    let mut listed = Vec::new();
    let mut next = Some("/api/tasks?limit=2".to_owned());
    let mut pages = 0;
    while let Some(path) = next {
        let (status, page, link) = node.api.page(&path).await?;
        assert_eq!(status, 200, "{path}: {page}");
        let page = page.as_array().context("a page is an array")?;
        assert!(page.len() <= 2, "{path} holds {} tasks", page.len());
        listed.extend(
            page.iter()
                .map(|t| t["id"].as_str().unwrap_or("").to_owned()),
        );
        pages += 1;
        next = link;
    }
    assert_eq!(listed, ids, "every task once, in the order they were made");
    assert_eq!(pages, 3);
    // Runs: newest first, paged the same way within one task.
    let mut runs = Vec::new();
    for _ in 0..3 {
        runs.push(
            node.api.execute(&ids[0]).await?["id"]
                .as_str()
                .context("id")?
                .to_owned(),
        );
    }
    runs.reverse();
    let (status, first, link) = node
        .api
        .page(&format!("/api/runs?task={}&limit=2", ids[0]))
        .await?;
    assert_eq!(status, 200, "{first}");
    let link = link.context("a full page of runs links to the next")?;
    let (_, second, last) = node.api.page(&link).await?;
    let listed: Vec<&str> = first
        .as_array()
        .into_iter()
        .chain(second.as_array())
        .flatten()
        .map(|r| r["id"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(listed, runs, "newest first, each run once");
    assert!(last.is_none(), "the last page links nowhere: {last:?}");
    // A page size out of range is refused with the range.
    for bad in ["/api/tasks?limit=0", "/api/runs?limit=1001"] {
        let (status, body) = node.api.get(bad).await?;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body.to_string().contains("1 to 1000"), "{bad}: {body}");
    }
    node.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_run_placed_on_an_earlier_start_of_its_node_is_placed_again_and_runs_once() -> Result<()>
{
    let node = TestNode::start().await?;
    let out = node.dir.join("effects");
    let id = node
        .api
        .create_task(&json!({"name": "once", "spec": {"command": ["sh", "-c", format!("echo ran >> {}", out.display())]}, "when": {"mode": "manual"}}))
        .await?;
    // A leader that has not yet heard this start of the node places a run on the start before.
    let peer_id = node
        .handle
        .peers()
        .this
        .peer_id
        .context("the node's PeerId")?;
    let task = node.handle.task(&id)?;
    let mut run = taskmesh::model::Run::new(
        task.id.clone(),
        task.name.clone(),
        taskmesh::model::Trigger::Manual,
        1,
        "test-node".into(),
    );
    run.node_id = Some(peer_id);
    run.node_start = Some(1);
    let run_id = run.id.clone();
    node.handle
        .consensus()
        .propose(taskmesh::consensus::Change::Runs(vec![run]))
        .await?;
    let ended = wait_for("the run to end", Duration::from_secs(20), || async {
        node.handle
            .run(&run_id)
            .await
            .ok()
            .filter(|r| r.status.is_final())
    })
    .await?;
    assert_eq!(
        ended.status,
        taskmesh::model::RunStatus::Succeeded,
        "{ended:?}"
    );
    assert_ne!(
        ended.node_start,
        Some(1),
        "placed again on this start: {ended:?}"
    );
    assert!(
        ended.actions.iter().any(|a| a.contains("placed again")),
        "{:?}",
        ended.actions
    );
    let ran = std::fs::read_to_string(&out)?;
    assert_eq!(ran.lines().count(), 1, "the process ran once: {ran:?}");
    node.stop().await;
    Ok(())
}

/// Growth guard (counts, not times): the first page of the task list is as big with 10,000
/// tasks as with 100.
#[tokio::test]
async fn the_first_page_of_tasks_does_not_grow_with_the_task_list() -> Result<()> {
    let node = TestNode::start().await?;
    let first_page = || async {
        let (status, page, next) = node.api.page("/api/tasks?limit=50").await?;
        anyhow::ensure!(status == 200, "{page}");
        let len = page.as_array().map_or(0, Vec::len);
        anyhow::Ok((page.to_string().len(), len, next.is_some()))
    };
    node.adopt_tasks(0, 100).await?;
    let (small, len, more) = first_page().await?;
    assert_eq!((len, more), (50, true));
    node.adopt_tasks(100, 10_000).await?;
    assert_eq!(node.handle.state().tasks.len(), 10_000);
    let (large, len, more) = first_page().await?;
    assert_eq!((len, more), (50, true));
    assert!(
        large <= small + small / 10,
        "the first page grew from {small} to {large} bytes"
    );
    node.stop().await;
    Ok(())
}

/// A rule that names a channel or a task that does not exist is refused at save, each at its
/// rule, and nothing is saved; a rule may name its own task.
#[tokio::test]
async fn rule_targets_are_checked_when_a_task_is_saved() -> Result<()> {
    let node = TestNode::start().await?;
    let bad = json!({
        "name": "nightly",
        "spec": {"command": ["true"]},
        "when": {"mode": "manual"},
        "exit_rules": [
            {"on": "!0", "action": "notify", "channel": "nope"},
            {"on": "0", "action": "run", "task": "ghost"},
            {"on": "2", "action": "run", "task": "nightly"}
        ]
    });
    let (status, body) = node.api.post("/api/tasks", &bad).await?;
    assert_eq!(status, 400, "{body}");
    let details: Vec<(String, String)> = body["details"]
        .as_array()
        .context("details")?
        .iter()
        .map(|d| {
            (
                d["path"].as_str().unwrap_or("").to_owned(),
                d["message"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        details.len(),
        2,
        "one error per bad rule, none for the task itself: {details:?}"
    );
    assert_eq!(details[0].0, "exit_rules[0].channel");
    assert!(
        details[0].1.contains("`nope`") && details[0].1.contains("no channel yet"),
        "{details:?}"
    );
    assert_eq!(details[1].0, "exit_rules[1].task");
    assert!(
        details[1].1.contains("no task is called `ghost`"),
        "{details:?}"
    );
    let (_, tasks) = node.api.get("/api/tasks").await?;
    assert_eq!(tasks, json!([]), "nothing was saved");
    // With the targets in place it saves; an update that names a missing one again is refused
    // and leaves the saved task as it was.
    add_unheard_channel(&node, "nope").await?;
    node.api
        .create_task(
            &json!({"name": "ghost", "spec": {"command": ["true"]}, "when": {"mode": "manual"}}),
        )
        .await?;
    let id = node.api.create_task(&bad).await?;
    let mut changed = bad.clone();
    changed["exit_rules"][1]["task"] = json!("gone");
    let (status, body) = node
        .api
        .send(
            reqwest::Method::PUT,
            &format!("/api/tasks/{id}"),
            Some(&changed),
        )
        .await?;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["details"][0]["path"], "exit_rules[1].task", "{body}");
    let (_, saved) = node.api.get(&format!("/api/tasks/{id}")).await?;
    assert_eq!(saved["exit_rules"][1]["task"], "ghost", "{saved}");
    Ok(())
}

/// Makes `name` the node's only notification channel: a webhook to a port nothing listens on.
async fn add_unheard_channel(node: &TestNode, name: &str) -> Result<()> {
    let (_, mut settings) = node.api.get("/api/settings").await?;
    settings["cluster"]["channels"] =
        json!({name: {"kind": "webhook", "url": format!("http://127.0.0.1:9/{name}")}});
    let (status, body) = node
        .api
        .send(reqwest::Method::PUT, "/api/settings", Some(&settings))
        .await?;
    assert_eq!(status, 200, "{body}");
    Ok(())
}

/// Optimistic concurrency: a replacement that carries the `updated_at` it was made from is
/// refused with 409 and the task as it is now when the task changed since (an edit, or the
/// enable toggle), and nothing of it is saved; read again, it saves; without `updated_at` a
/// replacement wins as before.
#[tokio::test]
async fn a_stale_save_is_refused_with_the_task_as_it_is_now() -> Result<()> {
    let node = TestNode::start().await?;
    let edit = |name: &str, seen: &Value| {
        json!({"name": name, "spec": {"command": ["true"]}, "when": {"mode": "manual"},
               "updated_at": seen})
    };
    let (status, created) = node
        .api
        .post("/api/tasks", &edit("report", &Value::Null))
        .await?;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().context("id")?.to_owned();
    let path = format!("/api/tasks/{id}");
    let put = |body: Value| {
        let (api, path) = (&node.api, &path);
        async move { api.send(reqwest::Method::PUT, path, Some(&body)).await }
    };
    let read = created["updated_at"].clone();
    let (status, theirs) = put(edit("report-theirs", &read)).await?;
    assert_eq!(status, 200, "{theirs}");
    let (status, refused) = put(edit("report-mine", &read)).await?;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["refused"], "stale");
    assert_eq!(refused["current"]["name"], "report-theirs");
    assert_eq!(refused["current"]["updated_at"], theirs["updated_at"]);
    let (_, now) = node.api.get(&path).await?;
    assert_eq!(now["name"], "report-theirs", "nothing of the stale copy");

    let (status, mine) = put(edit("report-mine", &refused["current"]["updated_at"])).await?;
    assert_eq!(status, 200, "read again, it saves: {mine}");

    // The toggle changes one flag and moves `updated_at`: an editor's older copy is stale.
    let (status, disabled) = node
        .api
        .post(&format!("{path}/disable"), &Value::Null)
        .await?;
    assert_eq!((status, &disabled["enabled"]), (200, &json!(false)));
    assert_eq!(disabled["name"], "report-mine", "only the flag changed");
    let (status, _) = put(edit("report-late", &mine["updated_at"])).await?;
    assert_eq!(status, 409);
    let (_, now) = node.api.get(&path).await?;
    assert_eq!(
        (&now["name"], &now["enabled"]),
        (&json!("report-mine"), &json!(false))
    );
    let (status, enabled) = node
        .api
        .post("/api/tasks/report-mine/enable", &Value::Null)
        .await?;
    assert_eq!((status, &enabled["enabled"]), (200, &json!(true)));
    let (status, _) = node
        .api
        .post("/api/tasks/ghost/enable", &Value::Null)
        .await?;
    assert_eq!(status, 404);

    // Without `updated_at` a replacement is unconditional.
    let mut blind = edit("report-blind", &Value::Null);
    blind
        .as_object_mut()
        .context("object")?
        .remove("updated_at");
    let (status, body) = put(blind).await?;
    assert_eq!(status, 200, "{body}");
    node.stop().await;
    Ok(())
}

/// The schedule preview: the next times of an entry in its timezone and the entry in words
/// (in German for a German browser); a bad entry or timezone is a 400 naming the field (and the column).
#[tokio::test]
async fn a_schedule_is_previewed_with_its_next_times_and_in_words() -> Result<()> {
    use chrono::{Datelike, Timelike};
    let node = TestNode::start().await?;
    let (status, preview) = node
        .api
        .get("/api/schedule?cron=0%203%20*%20*%201-5&timezone=Europe/Berlin")
        .await?;
    assert_eq!(status, 200, "{preview}");
    assert_eq!(preview["reading"], "every weekday at 03:00");
    let next: Vec<DateTime<Utc>> = serde_json::from_value(preview["next"].clone())?;
    assert_eq!(next.len(), 5);
    assert!(next.windows(2).all(|w| w[0] < w[1]), "{next:?}");
    for at in &next {
        // 03:00 in Berlin is 01:00 or 02:00 UTC, on the same weekday.
        assert!(matches!(at.hour(), 1 | 2) && at.minute() == 0, "{at}");
        assert!(at.weekday().number_from_monday() <= 5, "{at} is a weekend");
    }
    assert!(next[0] > Utc::now());
    // A German browser reads it in German, lists and ordinals included.
    for (cron, german) in [
        ("0%203%20*%20*%201-5", "werktags um 03:00"),
        (
            "30%202%201,15%20*%20*",
            "am 1. und 15. jedes Monats um 02:30",
        ),
    ] {
        let answer = node
            .api
            .http
            .get(format!("{}/api/schedule?cron={cron}", node.api.base))
            .header("accept-language", "de-DE,de;q=0.9")
            .send()
            .await?;
        assert_eq!(answer.status(), 200);
        let preview: serde_json::Value = answer.json().await?;
        assert_eq!(preview["reading"], german, "{cron}");
    }

    let (status, body) = node
        .api
        .get("/api/schedule?cron=61%20*%20*%20*%20*")
        .await?;
    assert_eq!(status, 400);
    assert_eq!(body["details"][0]["path"], "when.schedule");
    assert_eq!(body["details"][0]["column"], 1);
    let (status, body) = node
        .api
        .get("/api/schedule?cron=@daily&timezone=Mars/Olympus")
        .await?;
    assert_eq!(status, 400);
    assert_eq!(body["details"][0]["path"], "when.timezone");
    let (status, _) = node.api.get("/api/schedule?cron=@daily&count=0").await?;
    assert_eq!(status, 400);
    let (status, body) = node.api.get("/api/schedule?cron=@reboot").await?;
    assert_eq!((status, &body["reboot"]), (200, &json!(true)));
    assert_eq!(body["next"], json!([]));
    node.stop().await;
    Ok(())
}

/// GET /metrics with `token` as the bearer (none: without credentials): status and body.
async fn get_metrics(node: &TestNode, token: Option<&str>) -> Result<(u16, String, String)> {
    let api = match token {
        Some(token) => taskmesh_tests::Api::with_token(&node.api.base, token),
        None => taskmesh_tests::Api::anonymous(&node.api.base),
    };
    let r = api.http.get(format!("{}/metrics", api.base)).send().await?;
    let status = r.status().as_u16();
    let kind = r
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    Ok((status, kind, r.text().await?))
}

#[tokio::test]
async fn metrics_count_the_runs_that_ran_and_need_a_token() -> Result<()> {
    let node = TestNode::start().await?;
    let id = node
        .api
        .create_task(
            &json!({"name": "metered", "spec": {"command": ["true"]}, "when": {"mode": "manual"}}),
        )
        .await?;
    node.api.execute(&id).await?;
    wait_for("the run to succeed", Duration::from_secs(10), || async {
        let runs = node.api.runs_of(&id).await.ok()?;
        runs.iter()
            .any(|r| r["status"] == "succeeded")
            .then_some(())
    })
    .await?;

    // Without credentials: refused like the API, with JSON and no redirect.
    let (status, _, body) = get_metrics(&node, None).await?;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("Bearer"), "{body}");

    // A cron task, for the lateness of its slots.
    node.api
        .create_task(&json!({
            "name": "ticker",
            "spec": {"command": ["true"]},
            "when": {"mode": "cron", "schedule": "* * * * * *"}
        }))
        .await?;

    // With the access token: the families, and the one run counted once.
    let access = taskmesh_tests::access_token(&node.dir)?;
    let scrape = wait_for(
        "both runs in the metrics",
        Duration::from_secs(10),
        || async {
            let (status, _, text) = get_metrics(&node, Some(&access)).await.ok()?;
            let scrape = taskmesh_tests::parse_metrics(&text).ok()?;
            let done = taskmesh_tests::metric_value(
                &scrape,
                "taskmesh_runs_finished_total",
                &[("task", "metered"), ("outcome", "succeeded")],
            );
            let late = scrape.samples.iter().any(|s| {
                s.metric == "taskmesh_cron_lateness_seconds"
                    && s.labels.get("task") == Some("ticker")
            });
            (status == 200 && done.is_some() && late).then_some(scrape)
        },
    )
    .await?;
    let (_, kind, text) = get_metrics(&node, Some(&access)).await?;
    assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
    assert!(text.ends_with("# EOF\n"), "{text}");
    for family in [
        "taskmesh_runs_started",
        "taskmesh_runs_finished",
        "taskmesh_run_duration_seconds",
        "taskmesh_cron_lateness_seconds",
        "taskmesh_queue_length",
        "taskmesh_slots",
        "taskmesh_slots_free",
        "taskmesh_notifications",
        "taskmesh_sink_delivered_runs",
        "taskmesh_sink_failures",
        "taskmesh_sink_pending_runs",
        "taskmesh_raft_term",
        "taskmesh_raft_is_leader",
        "taskmesh_raft_commit_index",
        "taskmesh_raft_applied_index",
        "taskmesh_raft_apply_lag",
        "taskmesh_mesh_peers",
        "taskmesh_drained",
        "taskmesh_cron_paused",
        "taskmesh_mesh_bytes",
        "process_resident_memory_bytes",
        "process_cpu_seconds",
        "process_open_fds",
    ] {
        assert!(scrape.docs.contains_key(family), "no {family} in\n{text}");
    }
    assert_eq!(
        taskmesh_tests::metric_value(
            &scrape,
            "taskmesh_runs_finished_total",
            &[("task", "metered"), ("outcome", "succeeded")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        taskmesh_tests::metric_value(
            &scrape,
            "taskmesh_runs_started_total",
            &[("task", "metered"), ("trigger", "manual")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        taskmesh_tests::metric_value(
            &scrape,
            "taskmesh_runs_finished_total",
            &[("task", "metered"), ("outcome", "failed")]
        ),
        None,
        "{text}"
    );
    let duration = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == "taskmesh_run_duration_seconds" && s.labels.get("task") == Some("metered")
        })
        .context("the run's duration")?;
    let prometheus_parse::Value::Histogram(buckets) = &duration.value else {
        anyhow::bail!("the duration is no histogram: {duration:?}");
    };
    let all = buckets
        .iter()
        .find(|b| b.less_than.is_infinite())
        .context("+Inf bucket")?;
    assert_eq!(all.count, 1.0, "{text}");
    // The cron runs: counted with their trigger, each slot's lateness observed (under a minute).
    assert!(
        taskmesh_tests::metric_value(
            &scrape,
            "taskmesh_runs_started_total",
            &[("task", "ticker"), ("trigger", "cron")]
        )
        .is_some_and(|n| n >= 1.0),
        "{text}"
    );
    let lateness = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == "taskmesh_cron_lateness_seconds" && s.labels.get("task") == Some("ticker")
        })
        .context("the cron runs' lateness")?;
    let prometheus_parse::Value::Histogram(late) = &lateness.value else {
        anyhow::bail!("the lateness is no histogram: {lateness:?}");
    };
    let count = |le: f64| late.iter().find(|b| b.less_than == le).map(|b| b.count);
    assert!(count(f64::INFINITY).is_some_and(|n| n >= 1.0), "{text}");
    assert_eq!(count(60.0), count(f64::INFINITY), "{text}");
    // One node alone leads its cluster, with every committed entry applied.
    assert_eq!(
        taskmesh_tests::metric_value(&scrape, "taskmesh_raft_is_leader", &[]),
        Some(1.0)
    );
    assert!(
        taskmesh_tests::metric_value(&scrape, "taskmesh_raft_term", &[]).is_some_and(|t| t >= 1.0)
    );
    assert!(
        taskmesh_tests::metric_value(&scrape, "taskmesh_raft_applied_index", &[])
            .is_some_and(|i| i >= 1.0)
    );
    assert_eq!(
        taskmesh_tests::metric_value(&scrape, "taskmesh_slots", &[]),
        Some(8.0)
    );
    assert!(
        taskmesh_tests::metric_value(&scrape, "process_resident_memory_bytes", &[])
            .is_some_and(|b| b > 0.0)
    );
    assert_eq!(
        taskmesh_tests::metric_value(&scrape, "taskmesh_node_info", &[("node", "test-node")]),
        Some(1.0),
        "{text}"
    );

    // A metrics token: set, masked in the settings, and good for /metrics only.
    let scrape_token = "scrape-token-0123456789abcdef";
    let mut settings = node.api.get("/api/settings").await?.1;
    settings["node"]["metrics_token"] = json!("short");
    let (status, refused) = node
        .api
        .send(reqwest::Method::PUT, "/api/settings", Some(&settings))
        .await?;
    assert_eq!(status, 400, "{refused}");
    assert!(
        refused.to_string().contains("node.metrics_token"),
        "{refused}"
    );
    settings["node"]["metrics_token"] = json!(scrape_token);
    let (status, saved) = node
        .api
        .send(reqwest::Method::PUT, "/api/settings", Some(&settings))
        .await?;
    assert_eq!(status, 200, "{saved}");
    assert_eq!(saved["node"]["metrics_token"], "********", "{saved}");
    let (status, _, text) = get_metrics(&node, Some(scrape_token)).await?;
    assert_eq!(status, 200, "{text}");
    let by_token = taskmesh_tests::parse_metrics(&text)?;
    assert_eq!(
        taskmesh_tests::metric_value(
            &by_token,
            "taskmesh_runs_finished_total",
            &[("task", "metered"), ("outcome", "succeeded")]
        ),
        Some(1.0),
        "{text}"
    );
    let (status, body) = taskmesh_tests::Api::with_token(&node.api.base, scrape_token)
        .get("/api/tasks")
        .await?;
    assert_eq!(status, 401, "the metrics token opens nothing else: {body}");
    let (status, _, body) = get_metrics(&node, Some("wrong-token-0123456789abcdef")).await?;
    assert_eq!(status, 401, "{body}");
    // The access token still reads /metrics.
    assert_eq!(get_metrics(&node, Some(&access)).await?.0, 200);
    Ok(())
}

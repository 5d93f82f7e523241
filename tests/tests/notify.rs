//! Notifications on one node: the exact requests Telegram, Slack and a webhook receive (local
//! fake servers behind the configurable API bases), retries with backoff, failures on the run,
//! and the test message from the API and the CLI.

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{Value, json};
use taskmesh::cli::{Command, NotifyCommand, Remote};
use taskmesh_tests::fake_http::{FakeHttp, Seen};
use taskmesh_tests::{TestNode, wait_for};

const TOKEN: &str = "123456:telegram-secret";
const SLACK_TOKEN: &str = "xoxb-slack-secret";

/// Points the node's Telegram and Slack at `fake` and adds the channels `ops` (Telegram),
/// `team` (Slack bot), `hook` (Slack incoming webhook) and `web` (generic webhook).
async fn use_fake(node: &TestNode, fake: &FakeHttp) -> Result<()> {
    let (_, mut settings) = node.api.get("/api/settings").await?;
    let cluster = &mut settings["cluster"];
    cluster["telegram"] = json!({"bot_token": TOKEN, "api_base": fake.url});
    cluster["slack"] = json!({"bot_token": SLACK_TOKEN, "api_base": format!("{}/slack", fake.url)});
    cluster["channels"] = json!({
        "ops": {"kind": "telegram", "chat_id": "-1001234"},
        "team": {"kind": "slack", "channel": "#ops"},
        "hook": {"kind": "slack", "webhook_url": format!("{}/hooks/T1/B2", fake.url)},
        "web": {"kind": "webhook", "url": format!("{}/web", fake.url)},
    });
    cluster["notify"]["ui_url"] = json!("https://taskmesh.example");
    let (status, answer) = node
        .api
        .send(reqwest::Method::PUT, "/api/settings", Some(&settings))
        .await?;
    anyhow::ensure!(
        status == 200,
        "saving the settings answered {status}: {answer}"
    );
    Ok(())
}

async fn run_of(node: &TestNode, id: &str) -> Option<Value> {
    let (status, run) = node.api.get(&format!("/api/runs/{id}")).await.ok()?;
    (status == 200).then_some(run)
}

/// Waits until the run's note for `channel` is no longer "sending"; returns it.
async fn outcome(node: &TestNode, id: &str, channel: &str) -> Result<String> {
    let prefix = format!("notify {channel}: ");
    wait_for(
        &format!("the outcome of notify {channel}"),
        Duration::from_secs(30),
        || async {
            let run = run_of(node, id).await?;
            run["actions"]
                .as_array()?
                .iter()
                .filter_map(Value::as_str)
                .find(|a| a.starts_with(&prefix) && !a.contains(": sending"))
                .map(str::to_owned)
        },
    )
    .await
}

fn one<'a>(seen: &'a [Seen], path: &str) -> &'a Seen {
    let hits: Vec<&Seen> = seen.iter().filter(|s| s.path == path).collect();
    assert_eq!(hits.len(), 1, "one request to {path}: {seen:#?}");
    hits[0]
}

#[tokio::test]
async fn each_channel_kind_gets_the_exact_request() -> Result<()> {
    let fake = FakeHttp::start().await?;
    let node = TestNode::start().await?;
    use_fake(&node, &fake).await?;
    node.api
        .create_task(&json!({
            "name": "backup",
            "spec": {"shell": "echo starting; echo 'disk full' >&2; exit 3"},
            "when": {"mode": "manual"},
            "exit_rules": [
                {"on": "!0", "action": "notify", "channel": "ops"},
                {"on": "!0", "action": "notify", "channel": "team"},
                {"on": "!0", "action": "notify", "channel": "hook"},
                {"on": "!0", "action": "notify", "channel": "web"},
            ],
        }))
        .await?;
    let run = node.api.execute("backup").await?;
    let id = run["id"].as_str().context("run id")?.to_owned();
    for channel in ["ops", "team", "hook", "web"] {
        let note = outcome(&node, &id, channel).await?;
        assert!(note.contains("delivered"), "{note}");
    }
    let seen = fake.seen();
    assert_eq!(seen.len(), 4, "{seen:#?}");
    let link = format!("https://taskmesh.example/runs/{id}");

    let telegram = one(&seen, &format!("/bot{TOKEN}/sendMessage"));
    assert_eq!(telegram.method, "POST");
    assert_eq!(telegram.content_type.as_deref(), Some("application/json"));
    assert_eq!(telegram.body["chat_id"], "-1001234");
    let text = telegram.body["text"].as_str().context("telegram text")?;
    for needle in [
        "backup failed on test-node",
        "exit code 3",
        &link,
        "disk full",
        "starting",
    ] {
        assert!(text.contains(needle), "{needle:?} in {text:?}");
    }

    let slack = one(&seen, "/slack/chat.postMessage");
    assert_eq!(
        slack.authorization.as_deref(),
        Some(format!("Bearer {SLACK_TOKEN}").as_str())
    );
    assert_eq!(slack.body["channel"], "#ops");
    assert_eq!(slack.body["text"], text, "the same text everywhere");

    let hook = one(&seen, "/hooks/T1/B2");
    assert_eq!(hook.body, json!({"text": text}));
    assert_eq!(hook.authorization, None);

    let web = one(&seen, "/web");
    assert_eq!(web.body["task"], "backup");
    assert_eq!(web.body["status"], "failed");
    assert_eq!(web.body["exit_code"], 3);
    assert_eq!(web.body["run_id"], id.as_str());
    assert_eq!(web.body["link"], link.as_str());
    assert_eq!(web.body["text"], text);
    assert!(web.body["duration_ms"].as_i64().is_some(), "{:?}", web.body);
    node.stop().await;
    Ok(())
}

#[tokio::test]
async fn delivery_is_retried_and_a_failure_shows_on_the_run_without_the_token() -> Result<()> {
    let fake = FakeHttp::start().await?;
    let node = TestNode::start().await?;
    use_fake(&node, &fake).await?;
    node.api
        .create_task(&json!({
            "name": "flaky",
            "spec": {"command": ["false"]},
            "when": {"mode": "manual"},
            "exit_rules": [{"on": "!0", "action": "notify", "channel": "ops"}],
        }))
        .await?;

    // Two server errors, then it works: three tries, about 1 s + 2 s apart.
    fake.answer_next(502, json!({"ok": false, "description": "Bad Gateway"}));
    fake.answer_next(500, json!({"ok": false, "description": "Internal"}));
    let run = node.api.execute("flaky").await?;
    let id = run["id"].as_str().context("run id")?.to_owned();
    let note = outcome(&node, &id, "ops").await?;
    assert_eq!(note, "notify ops: delivered (telegram, 3 tries)");
    assert_eq!(fake.seen().len(), 3);
    // /metrics counts the notification once, however many tries it took.
    let telegram = |result| [("kind", "telegram"), ("result", result)];
    let scrape = node.api.metrics().await?;
    let sent = |scrape: &_, result| {
        taskmesh_tests::metric_value(scrape, "taskmesh_notifications_total", &telegram(result))
    };
    assert_eq!(sent(&scrape, "delivered"), Some(1.0));
    assert_eq!(sent(&scrape, "failed"), Some(0.0));

    // A refusal that will not change (a bad token) is not tried again.
    fake.answer_next(
        401,
        json!({"ok": false, "error_code": 401, "description": "Unauthorized"}),
    );
    let run = node.api.execute("flaky").await?;
    let id = run["id"].as_str().context("run id")?.to_owned();
    let note = outcome(&node, &id, "ops").await?;
    assert_eq!(
        note,
        "notify ops: not delivered (telegram, 1 try): Telegram answered 401 Unauthorized: Unauthorized"
    );
    assert_eq!(fake.seen().len(), 4, "no second try after a 401");
    assert!(!note.contains(TOKEN));
    let scrape = node.api.metrics().await?;
    assert_eq!(sent(&scrape, "delivered"), Some(1.0));
    assert_eq!(sent(&scrape, "failed"), Some(1.0));
    node.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_receiver_that_does_not_answer_is_a_failure_that_names_no_secret() -> Result<()> {
    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let node = TestNode::start().await?;
    let (_, mut settings) = node.api.get("/api/settings").await?;
    settings["cluster"]["telegram"] =
        json!({"bot_token": TOKEN, "api_base": format!("http://{closed}")});
    settings["cluster"]["channels"] = json!({"ops": {"kind": "telegram", "chat_id": "1"}});
    let (status, _) = node
        .api
        .send(reqwest::Method::PUT, "/api/settings", Some(&settings))
        .await?;
    assert_eq!(status, 200);
    let (status, answer) = node
        .api
        .post("/api/channels/ops/test", &Value::Null)
        .await?;
    assert_eq!(status, 502, "{answer}");
    let error = answer["error"].as_str().context("error")?;
    assert!(
        error.starts_with("channel `ops` (telegram): Telegram did not answer"),
        "{error}"
    );
    assert!(!error.contains(TOKEN), "{error}");
    node.stop().await;
    Ok(())
}

#[tokio::test]
async fn the_test_message_goes_out_from_the_api_and_the_cli() -> Result<()> {
    let fake = FakeHttp::start().await?;
    let node = TestNode::start().await?;
    use_fake(&node, &fake).await?;

    let (status, answer) = node
        .api
        .post("/api/channels/team/test", &Value::Null)
        .await?;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer,
        json!({"channel": "team", "kind": "slack", "delivered": true})
    );
    let seen = fake.seen();
    let slack = one(&seen, "/slack/chat.postMessage");
    assert_eq!(slack.body["channel"], "#ops");
    assert_eq!(
        slack.body["text"],
        "taskmesh: a test notification to channel team, sent by node test-node"
    );

    let (status, answer) = node
        .api
        .post("/api/channels/nope/test", &Value::Null)
        .await?;
    assert_eq!(status, 404, "{answer}");
    assert_eq!(
        answer["error"],
        "there is no channel `nope` in cluster.channels"
    );

    fake.answer_next(200, json!({"ok": false, "error": "channel_not_found"}));
    let (status, answer) = node
        .api
        .post("/api/channels/team/test", &Value::Null)
        .await?;
    assert_eq!(status, 502, "{answer}");
    assert_eq!(
        answer["error"],
        "channel `team` (slack): Slack: channel_not_found"
    );

    // The CLI, against the same node.
    let remote = Remote {
        url: format!("http://{}", node.addr),
        token_file: None,
        data_dir: Some(node.dir.clone()),
        ca_cert: None,
        output: taskmesh::cli::Output::Text,
    };
    let code = taskmesh::cli::run_command(Command::Notify(NotifyCommand::Test {
        channel: "ops".into(),
        remote: remote.clone(),
    }))
    .await?;
    assert_eq!(code, 0);
    let seen = fake.seen();
    let telegram = one(&seen, &format!("/bot{TOKEN}/sendMessage"));
    assert_eq!(telegram.body["chat_id"], "-1001234");
    let refused = taskmesh::cli::run_command(Command::Notify(NotifyCommand::Test {
        channel: "nope".into(),
        remote,
    }))
    .await;
    let error = refused.expect_err("an unknown channel fails").to_string();
    assert!(error.contains("there is no channel `nope`"), "{error}");
    node.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_template_with_an_unknown_placeholder_is_refused_with_its_field() -> Result<()> {
    let node = TestNode::start().await?;
    let (_, mut settings) = node.api.get("/api/settings").await?;
    let before = settings["cluster"]["notify"]["template"].clone();
    settings["cluster"]["notify"]["template"] = json!("{task} ended: {exitcode}");
    let (status, answer) = node
        .api
        .send(reqwest::Method::PUT, "/api/settings", Some(&settings))
        .await?;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["details"][0]["path"], "cluster.notify.template");
    assert!(
        answer["details"][0]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("unknown placeholder {exitcode}")),
        "{answer}"
    );
    let (_, kept) = node.api.get("/api/settings").await?;
    assert_eq!(
        kept["cluster"]["notify"]["template"], before,
        "nothing saved"
    );
    node.stop().await;
    Ok(())
}

/// The paths of a refusal's field errors.
fn refused_paths(answer: &Value) -> Vec<String> {
    answer["details"]
        .as_array()
        .map(|d| {
            d.iter()
                .filter_map(|e| e["path"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_stored_token_never_follows_a_changed_api_base() -> Result<()> {
    let fake = FakeHttp::start().await?;
    let evil = FakeHttp::start().await?;
    let node = TestNode::start().await?;
    use_fake(&node, &fake).await?;

    // Webhook URLs carry tokens: masked like the bot tokens.
    let (_, masked) = node.api.get("/api/settings").await?;
    let text = masked.to_string();
    for secret in [TOKEN, SLACK_TOKEN, "/hooks/T1/B2", "/web"] {
        assert!(!text.contains(secret), "{secret} shown: {text}");
    }
    assert_eq!(masked["cluster"]["channels"]["web"]["url"], "********");
    assert_eq!(
        masked["cluster"]["channels"]["hook"]["webhook_url"],
        "********"
    );

    // The masked settings with Telegram and Slack pointed elsewhere: refused at each token.
    let mut moved = masked.clone();
    moved["cluster"]["telegram"]["api_base"] = json!(evil.url);
    moved["cluster"]["slack"]["api_base"] = json!(format!("{}/slack", evil.url));
    let (status, answer) = node
        .api
        .send(reqwest::Method::PUT, "/api/settings", Some(&moved))
        .await?;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(
        refused_paths(&answer),
        ["cluster.telegram.bot_token", "cluster.slack.bot_token"],
        "{answer}"
    );
    assert!(
        answer["details"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("destination changed") && m.contains("api_base")),
        "{answer}"
    );
    // An import of the same document is refused the same way.
    let import = node
        .api
        .http
        .post(format!("{}/api/settings/import", node.api.base))
        .body(moved.to_string())
        .send()
        .await?;
    assert_eq!(import.status().as_u16(), 400);
    let answer: Value = import.json().await?;
    assert_eq!(refused_paths(&answer)[0], "cluster.telegram.bot_token");
    // Nothing changed: "Send test" still goes to the old base, and the new one hears nothing.
    for channel in ["ops", "team", "hook", "web"] {
        let (status, answer) = node
            .api
            .post(&format!("/api/channels/{channel}/test"), &Value::Null)
            .await?;
        assert_eq!(status, 200, "{channel}: {answer}");
    }
    assert_eq!(fake.seen().len(), 4, "{:#?}", fake.seen());
    assert!(evil.seen().is_empty(), "{:#?}", evil.seen());

    // With the token entered again, the new base is accepted and gets the new token only.
    moved["cluster"]["telegram"]["bot_token"] = json!("777:entered-again");
    moved["cluster"]["slack"]["bot_token"] = json!(null);
    let (status, answer) = node
        .api
        .send(reqwest::Method::PUT, "/api/settings", Some(&moved))
        .await?;
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = node
        .api
        .post("/api/channels/ops/test", &Value::Null)
        .await?;
    assert_eq!(status, 200, "{answer}");
    let seen = evil.seen();
    assert_eq!(seen.len(), 1, "{seen:#?}");
    assert_eq!(seen[0].path, "/bot777:entered-again/sendMessage");
    // The webhook URLs, left masked, kept their stored values.
    let (status, _) = node
        .api
        .post("/api/channels/web/test", &Value::Null)
        .await?;
    assert_eq!(status, 200);
    assert_eq!(fake.seen().last().map(|s| s.path.as_str()), Some("/web"));
    Ok(())
}

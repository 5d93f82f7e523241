//! The API description against a running node: `GET /api/openapi.json` needs the access token,
//! and every operation it describes is one the node serves (not the "no such route" answer,
//! not `405`).

use anyhow::{Context, Result};
use reqwest::Method;
use serde_json::Value;
use taskmesh_tests::{Api, TestNode};

/// What the API's fallback answers for a path it does not serve.
const NO_SUCH_ROUTE: &str = "no such route";

/// A described path with a value for each `{parameter}`.
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|segment| match segment {
            "{id}" => "0".repeat(32),
            "{key}" => "no-such-task".to_owned(),
            s if s.starts_with('{') => "no-such-name".to_owned(),
            s => s.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test]
async fn every_described_operation_is_served() -> Result<()> {
    let node = TestNode::start().await?;
    let (status, _) = Api::anonymous(&node.api.base)
        .get("/api/openapi.json")
        .await?;
    assert_eq!(status, 401, "the description needs the access token");
    let (status, doc) = node.api.get("/api/openapi.json").await?;
    assert_eq!(status, 200, "{doc}");
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "{}",
        doc["openapi"]
    );
    // The fallback is what the check looks for: an undescribed path answers it.
    let (status, body) = node.api.get("/api/no-such-thing").await?;
    assert_eq!(status, 404);
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains(NO_SUCH_ROUTE)),
        "{body}"
    );
    let mut operations: Vec<(Method, String)> = Vec::new();
    for (path, item) in doc["paths"].as_object().context("paths")? {
        for method in item.as_object().context("path item")?.keys() {
            operations.push((method.to_uppercase().parse()?, path.clone()));
        }
    }
    assert!(operations.len() > 20, "{operations:?}");
    // Rotating the token ends this client's access: ask it last.
    operations.sort_by_key(|(_, path)| path == "/api/token/rotate");
    for (method, path) in &operations {
        let url = format!("{}{}", node.api.base, concrete(path));
        // Streams answer their headers at once; the body is not read.
        let response = node.api.http.request(method.clone(), &url).send().await?;
        let status = response.status().as_u16();
        let streaming = response
            .headers()
            .get("content-type")
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        let body: Value = if streaming {
            Value::Null
        } else {
            response.json().await.unwrap_or(Value::Null)
        };
        assert_ne!(
            status, 405,
            "{method} {path}: not served for this method: {body}"
        );
        let error = body["error"].as_str().unwrap_or_default();
        assert!(
            !(status == 404 && error.contains(NO_SUCH_ROUTE)),
            "{method} {path}: described but not served: {body}"
        );
        assert_ne!(status, 401, "{method} {path}: {body}");
    }
    node.stop().await;
    Ok(())
}

/// The CLI reads the API's answers as the types the API serializes: each reading command gets
/// through them against a real node (an answer that does not fit fails the command with
/// "unreadable answer").
#[tokio::test]
async fn the_cli_reads_the_answers_as_the_shared_types() -> Result<()> {
    use clap::Parser;
    let node = TestNode::start().await?;
    // A failing run whose exit rule disables its task, and a cron task that never ran: the
    // listing carries a run, a null `last_run`, exit-code matchers and each kind of `when`.
    let task = node
        .api
        .create_task(&serde_json::json!({
            "name": "typed", "spec": {"shell": "exit 3"}, "when": {"mode": "manual"},
            "exit_rules": [{"on": "!0", "action": "disable"}]
        }))
        .await?;
    node.api
        .create_task(&serde_json::json!({
            "name": "nightly", "spec": {"shell": "true"},
            "when": {"mode": "cron", "schedule": "0 3 * * *", "timezone": "Europe/Berlin"}
        }))
        .await?;
    node.api.execute(&task).await?;
    taskmesh_tests::wait_for(
        "the run to end",
        std::time::Duration::from_secs(10),
        || async {
            let (_, runs) = node.api.get(&format!("/api/runs?task={task}")).await.ok()?;
            (runs[0]["status"] == "failed").then_some(())
        },
    )
    .await?;
    let token_file = node.dir.join("access-token");
    for args in [
        &["status"][..],
        &["status", "--output", "json"],
        &["task", "ls"],
        &["task", "ls", "--output", "json"],
        &["task", "show", "typed"],
    ] {
        let mut argv = vec!["taskmesh"];
        argv.extend_from_slice(args);
        let cli = taskmesh::cli::Cli::try_parse_from(
            argv.iter()
                .copied()
                .chain(["--url", &node.api.base])
                .chain(["--token-file", token_file.to_str().context("path")?]),
        )?;
        let code = taskmesh::cli::run_command(cli.command)
            .await
            .with_context(|| format!("taskmesh {}", args.join(" ")))?;
        assert_eq!(code, 0, "taskmesh {}", args.join(" "));
    }
    node.stop().await;
    Ok(())
}

/// Error answers read as the shared `ErrorBody` the CLI reads them with: a `400` with its
/// fields, a `404`, and a stale replacement's `409` with the task as it is now.
#[tokio::test]
async fn error_answers_read_as_the_shared_error_body() -> Result<()> {
    use taskmesh::api::ErrorBody;
    let node = TestNode::start().await?;
    let (status, bad) = node
        .api
        .post(
            "/api/tasks",
            &serde_json::json!({"name": "x", "spec": {"command": []}, "when": {"mode": "cron", "schedule": "61 * * * *"}}),
        )
        .await?;
    assert_eq!(status, 400);
    let bad: ErrorBody = serde_json::from_value(bad)?;
    assert!(
        bad.details.iter().any(|d| d.path == "when.schedule"),
        "{bad:?}"
    );

    let (status, missing) = node.api.get("/api/tasks/nope").await?;
    assert_eq!(status, 404);
    let missing: ErrorBody = serde_json::from_value(missing)?;
    assert!(
        missing.details.is_empty() && missing.refused.is_none(),
        "{missing:?}"
    );

    let id = node
        .api
        .create_task(&serde_json::json!({"name": "t", "spec": {"shell": "true"}, "when": {"mode": "manual"}}))
        .await?;
    let (_, task) = node.api.get(&format!("/api/tasks/{id}")).await?;
    let stale = serde_json::json!({
        "name": task["name"], "spec": {"shell": "false"}, "when": task["when"],
        "updated_at": "2020-01-01T00:00:00Z"
    });
    let (status, conflict) = node
        .api
        .send(
            reqwest::Method::PUT,
            &format!("/api/tasks/{id}"),
            Some(&stale),
        )
        .await?;
    assert_eq!(status, 409, "{conflict}");
    let conflict: ErrorBody = serde_json::from_value(conflict)?;
    assert_eq!(conflict.refused.as_deref(), Some("stale"));
    assert_eq!(
        conflict.current.map(|t| t.id.0),
        Some(id),
        "the task as it is now"
    );
    node.stop().await;
    Ok(())
}

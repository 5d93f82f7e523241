//! Bad input to the API's own parameters (log offsets, query parameters, headers, path ids)
//! answers 4xx with a JSON `error` that names the problem, never 500.

use std::time::Duration;

use anyhow::{Context, Result};
use reqwest::header::{HeaderName, HeaderValue};
use serde_json::{Value, json};
use taskmesh_tests::{TestNode, wait_for};

/// A request header: name and raw value.
type Header = (&'static str, &'static [u8]);

/// A bad request and its expected answer: method, path, headers, status, and the words its
/// `error` must contain.
type BadCase = (
    &'static str,
    String,
    Vec<Header>,
    u16,
    &'static [&'static str],
);

/// A node with one finished run whose log is `hello\n`; returns the run id.
async fn node_with_a_run() -> Result<(TestNode, String)> {
    let node = TestNode::start().await?;
    let task = node
        .api
        .create_task(
            &json!({"name": "hello", "spec": {"shell": "echo hello"}, "when": {"mode": "manual"}}),
        )
        .await?;
    let run = node.api.execute(&task).await?;
    let id = run["id"].as_str().context("run id")?.to_owned();
    wait_for("the run to end", Duration::from_secs(10), || async {
        let (_, r) = node.api.get(&format!("/api/runs/{id}")).await.ok()?;
        (r["status"] == "succeeded").then_some(())
    })
    .await?;
    Ok((node, id))
}

/// Sends a GET or POST with extra headers; the status and the body as text.
async fn send(
    node: &TestNode,
    method: &str,
    path: &str,
    headers: &[Header],
) -> Result<(u16, String)> {
    let method = reqwest::Method::from_bytes(method.as_bytes())?;
    let mut request = node
        .api
        .http
        .request(method, format!("{}{path}", node.api.base))
        .timeout(Duration::from_secs(10));
    for (name, value) in headers {
        request = request.header(
            HeaderName::from_bytes(name.as_bytes())?,
            HeaderValue::from_bytes(value)?,
        );
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    Ok((status, response.text().await?))
}

#[tokio::test]
async fn bad_offsets_parameters_headers_and_ids_answer_4xx_with_the_reason() -> Result<()> {
    let (node, run) = node_with_a_run().await?;
    let log = format!("/api/runs/{run}/log");
    let follow = format!("{log}?follow=true");
    let cases: Vec<BadCase> = vec![
        // Log offsets: past the largest file offset (these answered 500), not a number.
        (
            "GET",
            format!("{log}?offset=9223372036854775808"),
            vec![],
            400,
            &["offset", "9223372036854775807"],
        ),
        (
            "GET",
            format!("{log}?offset=18446744073709551615"),
            vec![],
            400,
            &["offset"],
        ),
        (
            "GET",
            format!("{log}?offset=18446744073709551616"),
            vec![],
            400,
            &["offset"],
        ),
        (
            "GET",
            format!("{follow}&offset=9223372036854775808"),
            vec![],
            400,
            &["offset"],
        ),
        ("GET", format!("{log}?offset=-1"), vec![], 400, &["offset"]),
        ("GET", format!("{log}?offset=abc"), vec![], 400, &["offset"]),
        ("GET", format!("{log}?offset=1e3"), vec![], 400, &["offset"]),
        (
            "GET",
            format!("{log}?follow=maybe"),
            vec![],
            400,
            &["follow"],
        ),
        ("GET", format!("{log}?colour=red"), vec![], 400, &["colour"]),
        // Last-Event-ID, read when a follower resumes.
        (
            "GET",
            follow.clone(),
            vec![("last-event-id", b"abc")],
            400,
            &["Last-Event-ID"],
        ),
        (
            "GET",
            follow.clone(),
            vec![("last-event-id", b"-5")],
            400,
            &["Last-Event-ID"],
        ),
        (
            "GET",
            follow.clone(),
            vec![("last-event-id", b"9223372036854775808")],
            400,
            &["Last-Event-ID", "9223372036854775807"],
        ),
        (
            "GET",
            follow.clone(),
            vec![("last-event-id", b"\xff\xfe")],
            400,
            &["Last-Event-ID"],
        ),
        // The run list's parameters.
        ("GET", "/api/runs?limit=abc".into(), vec![], 400, &["limit"]),
        ("GET", "/api/runs?limit=-1".into(), vec![], 400, &["limit"]),
        (
            "GET",
            "/api/runs?limit=99999999999999999999999".into(),
            vec![],
            400,
            &["limit"],
        ),
        (
            "GET",
            "/api/runs?before=nope".into(),
            vec![],
            400,
            &["nope", "run id"],
        ),
        (
            "GET",
            "/api/runs?colour=red".into(),
            vec![],
            400,
            &["colour"],
        ),
        (
            "GET",
            "/api/settings/export?secrets=maybe".into(),
            vec![],
            400,
            &["secrets"],
        ),
        // Path ids.
        (
            "GET",
            "/api/runs/nope".into(),
            vec![],
            400,
            &["nope", "run id"],
        ),
        ("GET", "/api/runs/%FF%FE".into(), vec![], 400, &["UTF-8"]),
        ("GET", "/api/runs/nope/log".into(), vec![], 400, &["run id"]),
        (
            "POST",
            "/api/runs/nope/stop".into(),
            vec![],
            400,
            &["run id"],
        ),
        ("GET", "/api/tasks/%FF%FE".into(), vec![], 400, &["UTF-8"]),
        (
            "GET",
            format!("/api/runs/{}", "0".repeat(32)),
            vec![],
            404,
            &["no run"],
        ),
        ("GET", "/api/tasks/nope".into(), vec![], 404, &["nope"]),
        (
            "POST",
            "/api/channels/nope/test".into(),
            vec![],
            404,
            &["nope"],
        ),
        // Headers the API reads.
        (
            "POST",
            "/api/tasks".into(),
            vec![("content-type", b"text/plain")],
            415,
            &["Content-Type"],
        ),
    ];
    let mut failures = Vec::new();
    for (method, path, headers, status, words) in &cases {
        let (got, text) = send(&node, method, path, headers).await?;
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let error = body["error"].as_str().unwrap_or_default();
        let named = words.iter().all(|w| error.contains(w));
        if got != *status || !named {
            failures.push(format!(
                "{method} {path} {headers:?}: {got} {text} (expected {status} naming {words:?})"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The node is unharmed, and good values still work.
    assert_eq!(node.api.get("/api/health").await?.0, 200);
    Ok(())
}

#[tokio::test]
async fn a_log_is_read_and_resumed_from_any_offset() -> Result<()> {
    let (node, run) = node_with_a_run().await?;
    let log = format!("/api/runs/{run}/log");
    let cases: &[(&str, &[Header], &str)] = &[
        ("", &[], "hello\n"),
        ("?offset=3", &[], "lo\n"),
        ("?offset=6", &[], ""),
        // Past the end, up to the largest offset: nothing yet, not an error.
        ("?offset=1000", &[], ""),
        ("?offset=9223372036854775807", &[], ""),
    ];
    for (query, headers, expected) in cases {
        let (status, text) = send(&node, "GET", &format!("{log}{query}"), headers).await?;
        assert_eq!((status, text.as_str()), (200, *expected), "{query}");
    }
    // Following: the events carry the offset after them; Last-Event-ID resumes there (and wins
    // over `offset`, as a reconnecting EventSource keeps its first URL).
    let follow = format!("{log}?follow=true&offset=0");
    let (status, text) = send(&node, "GET", &follow, &[]).await?;
    assert_eq!(status, 200);
    assert!(text.contains("event: log\nid: 6\ndata: hello\n"), "{text}");
    let (status, text) = send(&node, "GET", &follow, &[("last-event-id", b"3")]).await?;
    assert_eq!(status, 200);
    assert!(
        text.contains("event: log\nid: 6\ndata: lo\n") && !text.contains("data: hello"),
        "{text}"
    );
    assert!(text.contains("event: end"), "{text}");
    let (status, text) = send(&node, "GET", &follow, &[("last-event-id", b"6")]).await?;
    assert_eq!(status, 200);
    assert!(
        !text.contains("event: log") && text.contains("event: end"),
        "{text}"
    );
    Ok(())
}

/// A task's description and labels are saved as given (trimmed), the list filters by label with
/// its paging link keeping the filter, and a bad label is refused at its place.
#[tokio::test]
async fn labels_and_descriptions_are_saved_and_filter_the_list() -> Result<()> {
    let node = TestNode::start().await?;
    for (name, labels) in [
        ("a", json!(["team=ops", "nightly"])),
        ("b", json!(["team=web"])),
        ("c", json!(["team=ops"])),
    ] {
        node.api
            .create_task(
                &json!({"name": name, "description": format!("task {name}"), "labels": labels,
                "spec": {"command": ["true"]}, "when": {"mode": "manual"}}),
            )
            .await?;
    }
    let (status, a) = node.api.get("/api/tasks/a").await?;
    assert_eq!(status, 200, "{a}");
    assert_eq!(a["description"], "task a");
    assert_eq!(a["labels"], json!(["team=ops", "nightly"]));
    let (_, ops, next) = node.api.page("/api/tasks?label=team%3Dops&limit=1").await?;
    let names = |page: &Value| -> Vec<String> {
        page.as_array()
            .map(|tasks| {
                tasks
                    .iter()
                    .filter_map(|t| t["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(names(&ops), ["a"]);
    let next = next.context("a next page")?;
    assert!(next.contains("label=team%3Dops"), "{next}");
    let (_, rest, _) = node.api.page(&next).await?;
    assert_eq!(names(&rest), ["c"]);
    let (status, bad) = node
        .api
        .post(
            "/api/tasks",
            &json!({"name": "d", "labels": ["fine", "not fine"],
            "spec": {"command": ["true"]}, "when": {"mode": "manual"}}),
        )
        .await?;
    assert_eq!(status, 400, "{bad}");
    assert_eq!(bad["details"][0]["path"], "labels[1]", "{bad}");
    Ok(())
}

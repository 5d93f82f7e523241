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

//! The API's machine-readable description: an OpenAPI 3.1 document, served at
//! `GET /api/openapi.json`.
//!
//! The document is not written by hand. Each handler carries a `#[utoipa::path]` annotation
//! (method, path, parameters, answers), and the routers register the handlers through
//! `utoipa_axum::routes!`, which reads the method and path from that annotation and adds the
//! annotation to the document in the same step. The route table is therefore the annotations
//! themselves: a handler is served exactly where the document says, and there is no second list
//! that could drift. Two tests keep it so: `no_api_route_is_registered_outside_the_description`
//! (in this module) refuses an `/api` route added with a plain `.route(…)`, which would be served
//! but not described, and `tests/tests/openapi.rs` asks a running node for every described
//! operation and checks that none falls through to the "no such route" answer or a `405`.
//!
//! Types whose JSON differs from their Rust shape (durations such as `"30s"`, exit-code
//! matchers such as `"1-5"`, a spec given as text) have hand-written schemas in core, so the
//! document says what the wire carries.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use utoipa::OpenApi;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};

/// The document's fixed part: title, the security schemes, tags. The paths come from the
/// routers ([`document`]).
#[derive(OpenApi)]
#[openapi(
    info(
        title = "taskmesh",
        description = "The REST API every taskmesh node serves under /api (docs/api.md). \
                       Every operation needs the node's access token as a bearer token, or a \
                       browser session cookie; GET /api/health is open."
    ),
    modifiers(&Credentials),
    security(("bearer" = []), ("session" = [])),
    tags(
        (name = "node", description = "This node, its peers and the cluster"),
        (name = "tasks", description = "Task definitions, replicated to every node"),
        (name = "runs", description = "Runs of tasks, from every live node"),
        (name = "settings", description = "Cluster and node settings"),
        (name = "access", description = "Login links and the access token"),
    )
)]
struct ApiDoc;

/// The two ways to present the access token.
struct Credentials;

impl utoipa::Modify for Credentials {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "the node's access token, from <data dir>/access-token",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                super::auth::COOKIE,
                "a browser session made by logging in at /login",
            ))),
        );
    }
}

/// The whole description: the fixed part, the node's API routes and the login router's.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.merge(super::described_routes().into_openapi());
    doc.merge(super::login::described_routes().into_openapi());
    add_front_door_answers(&mut doc);
    doc
}

/// The answers the web front door gives before any handler runs, added to each operation:
/// `401` without credentials (not for the open ones), `403` for a cross-site write, `421` for
/// a foreign `Host`.
fn add_front_door_answers(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{Content, Ref, RefOr, ResponseBuilder};
    let error = |text: &str| -> RefOr<utoipa::openapi::Response> {
        ResponseBuilder::new()
            .description(text)
            .content(
                "application/json",
                Content::new(Some(Ref::from_schema_name("ErrorBody"))),
            )
            .into()
    };
    for item in doc.paths.paths.values_mut() {
        let reads = item.get.iter_mut().map(|op| (op, false));
        let writes = [&mut item.put, &mut item.post, &mut item.delete]
            .into_iter()
            .flatten()
            .map(|op| (op, true));
        for (op, write) in reads.chain(writes) {
            let open = serde_json::to_value(&op.security).ok() == Some(serde_json::json!([{}]));
            let answers = &mut op.responses.responses;
            if !open {
                answers
                    .entry("401".into())
                    .or_insert_with(|| error("no access token or session, or a wrong token"));
            }
            if write {
                answers
                    .entry("403".into())
                    .or_insert_with(|| error("a cross-site write (CSRF protection)"));
            }
            answers
                .entry("421".into())
                .or_insert_with(|| error("the Host is not one of this node's names"));
        }
    }
}

/// The document as JSON text, made once.
fn document_json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| document().to_pretty_json().unwrap_or_default())
}

/// This API's OpenAPI 3.1 description.
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    tag = "node",
    responses((status = 200, description = "the OpenAPI 3.1 document", content_type = "application/json", body = Object))
)]
pub(super) async fn openapi_json() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        document_json(),
    )
}

/// `GET /api/cluster-key`: the cluster key itself (a secret).
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClusterKey {
    /// 64 hex digits; null while the node has none.
    pub key: Option<String>,
    /// A label of the key, safe to show.
    pub fingerprint: Option<String>,
}

/// `GET /api/schedule`: a crontab entry checked and previewed.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SchedulePreview {
    pub cron: String,
    pub timezone: String,
    /// The entry in words for the common forms ("every weekday at 03:00"), else null; German
    /// for a German browser (the `taskmesh_lang` cookie, else `Accept-Language`).
    pub reading: Option<String>,
    /// Whether the entry is `@reboot`.
    pub reboot: bool,
    /// Its next times, in UTC.
    pub next: Vec<chrono::DateTime<chrono::Utc>>,
}

/// `POST /api/channels/{name}/test`: the test message was delivered.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChannelTested {
    pub channel: String,
    /// `telegram`, `slack` or `webhook`.
    pub kind: String,
    pub delivered: bool,
}

/// `POST /api/login-links`: a link that logs a browser in once.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LoginLink {
    pub url: String,
    pub expires_in_s: u64,
}

/// `POST /api/tokens`: a named access token to make.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// Who or what will hold it: 1 to 64 letters, digits, `_`, `.`, `-` or `@`.
    pub name: String,
    /// It may read everything but secrets, and change nothing.
    #[serde(default)]
    pub read_only: bool,
    /// It stops working this long after it is made ("30d", "1y"); none: never.
    #[serde(default)]
    pub expires_in: Option<crate::model::HumanDuration>,
}

/// `POST /api/tokens`: the new token, shown this once (the cluster keeps only its hash).
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NewToken {
    pub name: String,
    pub read_only: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<chrono::DateTime<chrono::Utc>>,
    pub token: String,
}

/// `POST /api/tasks/{key}/run` (optional): parameters for this run in place of the task's; only
/// those the task declares (`spec.parameters`), each a string, number or boolean.
#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecuteRequest {
    #[serde(default)]
    pub parameters: std::collections::BTreeMap<String, serde_json::Value>,
}

/// `POST /api/token/rotate`: the new token is in the token file, not in the answer.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenRotated {
    pub rotated: bool,
    pub token_file: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sources that build routers. A route registered there with `.route(` instead of
    /// `routes!` is served but not described; only the fallback, the login pages and `/metrics`
    /// (Prometheus text, outside `/api`, described in docs/metrics.md) may be.
    const ROUTER_SOURCES: &[(&str, &str)] = &[
        ("api/mod.rs", include_str!("mod.rs")),
        ("api/login.rs", include_str!("login.rs")),
        ("api/follow.rs", include_str!("follow.rs")),
    ];
    const UNDESCRIBED: &[&str] = &[
        "\"/api/{*rest}\"",
        "\"/login\"",
        "\"/logout\"",
        "auth::METRICS_PATH",
    ];

    #[test]
    fn no_api_route_is_registered_outside_the_description() {
        let mut plain = Vec::new();
        for (file, text) in ROUTER_SOURCES {
            for (at, _) in text.match_indices(".route(") {
                let rest = text[at + ".route(".len()..].trim_start();
                let path = rest.split(',').next().unwrap_or_default().trim();
                if !UNDESCRIBED.contains(&path) {
                    plain.push(format!("{file}: .route({path}, …)"));
                }
            }
        }
        assert!(
            plain.is_empty(),
            "register API routes with routes!(handler) so that they are described: {plain:?}"
        );
    }

    #[test]
    fn the_document_is_openapi_3_1_and_describes_the_api() {
        let doc: serde_json::Value =
            serde_json::from_str(document_json()).expect("the document is JSON");
        assert!(
            doc["openapi"]
                .as_str()
                .is_some_and(|v| v.starts_with("3.1")),
            "{}",
            doc["openapi"]
        );
        let paths = doc["paths"].as_object().expect("paths");
        for (method, path) in [
            ("get", "/api/health"),
            ("get", "/api/openapi.json"),
            ("get", "/api/tasks"),
            ("post", "/api/tasks"),
            ("put", "/api/tasks/{key}"),
            ("get", "/api/runs/{id}/log"),
            ("get", "/api/events"),
            ("post", "/api/login-links"),
            ("post", "/api/token/rotate"),
        ] {
            assert!(
                paths.get(path).and_then(|p| p.get(method)).is_some(),
                "{method} {path} is not described"
            );
        }
        assert!(
            paths.keys().all(|p| p.starts_with("/api/")),
            "{:?}",
            paths.keys()
        );
    }

    #[test]
    fn every_path_parameter_is_declared_and_every_operation_answers() {
        let doc: serde_json::Value = serde_json::from_str(document_json()).expect("JSON");
        for (path, item) in doc["paths"].as_object().expect("paths") {
            let wanted: Vec<&str> = path
                .split('/')
                .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
                .collect();
            for (method, op) in item.as_object().expect("path item") {
                let declared: Vec<&str> = op["parameters"]
                    .as_array()
                    .map(|ps| {
                        ps.iter()
                            .filter(|p| p["in"] == "path")
                            .filter_map(|p| p["name"].as_str())
                            .collect()
                    })
                    .unwrap_or_default();
                assert_eq!(declared, wanted, "{method} {path}: path parameters");
                assert!(
                    op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                    "{method} {path} describes no answer"
                );
            }
        }
    }

    #[test]
    fn wire_formats_are_described_as_the_wire_carries_them() {
        let doc: serde_json::Value = serde_json::from_str(document_json()).expect("JSON");
        let schemas = &doc["components"]["schemas"];
        assert_eq!(
            schemas["HumanDuration"]["type"], "string",
            "{}",
            schemas["HumanDuration"]
        );
        let matcher = schemas["ExitMatch"]["oneOf"]
            .as_array()
            .expect("ExitMatch oneOf");
        assert!(matcher.iter().any(|s| s["type"] == "string"));
        let spec = schemas["SpecInput"]["oneOf"]
            .as_array()
            .expect("SpecInput oneOf");
        assert!(
            spec.iter()
                .any(|s| s["$ref"] == "#/components/schemas/Spec")
        );
        assert!(
            schemas["Spec"].is_object(),
            "Spec is referenced, so it is a component"
        );
        let events = &doc["paths"]["/api/events"]["get"]["responses"]["200"]["content"];
        assert!(events["text/event-stream"].is_object(), "{events}");
        let log = &doc["paths"]["/api/runs/{id}/log"]["get"]["responses"]["200"]["content"];
        assert!(
            log["text/plain"].is_object() && log["text/event-stream"].is_object(),
            "{log}"
        );
        let security = &doc["components"]["securitySchemes"];
        assert_eq!(security["bearer"]["scheme"], "bearer", "{security}");
        let health = &doc["paths"]["/api/health"]["get"];
        assert_eq!(
            health["security"],
            serde_json::json!([{}]),
            "health is open: {health}"
        );
        assert!(health["responses"]["401"].is_null(), "{health}");
        let tasks = &doc["paths"]["/api/tasks"];
        assert!(tasks["get"]["responses"]["401"].is_object(), "{tasks}");
        assert!(
            tasks["get"]["responses"]["403"].is_null(),
            "a read is not a write: {tasks}"
        );
        assert!(tasks["post"]["responses"]["403"].is_object(), "{tasks}");
    }
}

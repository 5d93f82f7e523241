//! The REST API (JSON, plus server-sent events for live logs and changes) over the node handle.
//! docs/api.md documents every route.

pub mod auth;
mod error;
mod follow;
pub mod guard;
mod login;
pub mod openapi;
pub mod serve;
pub mod tls;
mod tokens;

pub use error::ErrorBody;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::handle::NodeHandle;
use crate::model::{RunId, TaskId, TaskInput, parse_json};
use crate::store::RunQuery;
use tracing::instrument;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use error::ApiError;
pub use login::login_router;

/// Largest request body accepted (a settings import, a task).
pub const MAX_BODY: usize = 1 << 20;

/// The node's API routes, each registered where its `#[utoipa::path]` annotation says and
/// described by it (see [`openapi`]). `routes!` takes handlers of one path only.
pub(crate) fn described_routes() -> OpenApiRouter<NodeHandle> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(openapi::openapi_json))
        .routes(routes!(peers))
        .routes(routes!(get_drain, drain_node))
        .routes(routes!(undrain_node))
        .routes(routes!(activity))
        .routes(routes!(cron_pause))
        .routes(routes!(pause_cron))
        .routes(routes!(resume_cron))
        .routes(routes!(sink))
        .routes(routes!(cluster_key))
        .routes(routes!(list_tasks, create_task))
        .routes(routes!(get_task, update_task, remove_task))
        .routes(routes!(execute_task))
        .routes(routes!(enable_task))
        .routes(routes!(disable_task))
        .routes(routes!(preview_schedule))
        .routes(routes!(list_runs))
        .routes(routes!(run_stats))
        .routes(routes!(get_run))
        .routes(routes!(stop_run))
        .routes(routes!(follow::run_log))
        .routes(routes!(follow::events))
        .routes(routes!(get_settings, put_settings))
        .routes(routes!(export_settings))
        .routes(routes!(import_settings))
        .routes(routes!(test_channel))
        .routes(routes!(tokens::list_tokens, tokens::add_token))
        .routes(routes!(tokens::remove_token))
}

pub fn router(node: NodeHandle) -> Router {
    let (api, _) = described_routes().split_for_parts();
    api.route(auth::METRICS_PATH, axum::routing::get(metrics))
        // Unknown API paths answer JSON; other unknown paths get the UI's page.
        .route("/api/{*rest}", axum::routing::any(not_found))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn(same_origin_writes))
        .layer(middleware::from_fn(json_errors))
        .with_state(node)
}

/// Path parameters, as the annotations name them.
const TASK_KEY: &str = "a task id or a task name";
const RUN_ID: &str = "a run id: 32 hex digits";

/// Every error answer of the API is JSON, including the ones axum's extractors make (a body over
/// the limit, a bad query string) as plain text.
async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let bytes = axum::body::to_bytes(response.into_body(), 64 * 1024)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes).trim().to_owned();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        text
    };
    ApiError::new(status, message).into_response()
}

/// CSRF protection: a browser must not be able to change anything on behalf of another site.
/// Writes that a browser marks cross-site, or whose Origin is not this host, are refused. (JSON
/// bodies also force a CORS preflight, which we never grant.)
pub(crate) async fn same_origin_writes(request: Request, next: Next) -> Response {
    let write = !matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    if write && !is_same_origin(request.headers()) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "cross-site request refused (CSRF protection)",
        )
        .into_response();
    }
    next.run(request).await
}

pub(crate) fn is_same_origin(headers: &HeaderMap) -> bool {
    if headers
        .get("sec-fetch-site")
        .is_some_and(|v| v == "cross-site" || v == "same-site")
    {
        return false;
    }
    match (headers.get(header::ORIGIN), headers.get(header::HOST)) {
        (None, _) => true,
        (Some(origin), Some(host)) => {
            let origin = origin.to_str().unwrap_or("");
            let host = host.to_str().unwrap_or("-");
            origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"))
                == Some(host)
        }
        (Some(_), None) => false,
    }
}

/// The body as JSON text; refuses other content types and invalid UTF-8.
fn json_text<'a>(headers: &HeaderMap, body: &'a Bytes) -> Result<&'a str, ApiError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send JSON with Content-Type: application/json",
        ));
    }
    std::str::from_utf8(body)
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "the body is not UTF-8"))
}

/// Parses a JSON body; errors name the field path and the line and column.
fn json_body<T: DeserializeOwned>(headers: &HeaderMap, body: &Bytes) -> Result<T, ApiError> {
    Ok(parse_json(json_text(headers, body)?, "")?)
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such route; see docs/api.md")
}

/// This node's health; open without the access token.
#[utoipa::path(get, path = "/api/health", tag = "node", security(()),
    responses((status = 200, description = "OK", body = taskmesh_core::view::Health)))]
async fn health(State(node): State<NodeHandle>) -> impl IntoResponse {
    Json(node.health())
}

/// The node's metrics for Prometheus (docs/metrics.md).
async fn metrics(State(node): State<NodeHandle>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        node.metrics_text(),
    )
}

/// This node's MySQL sink: its target, outbox and last error (never the password).
#[utoipa::path(get, path = "/api/sink", tag = "node",
    responses((status = 200, description = "OK", body = taskmesh_core::view::SinkStatus)))]
async fn sink(State(node): State<NodeHandle>) -> impl IntoResponse {
    Json(node.sink_status())
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct PeersParams {
    /// The PeerId of the last peer of the previous page.
    after: Option<String>,
    /// How many peers a page holds, 1 to 1000; 1000 when not given.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

/// This node, the cluster, and one page of the live peers in PeerId order, with a `Link` to the
/// next page like [`list_tasks`].
#[utoipa::path(get, path = "/api/peers", tag = "node", params(PeersParams),
    responses(
        (status = 200, description = "OK", body = taskmesh_core::view::PeersView,
            headers(("link" = String, description = "the next page, while there is one"))),
        (status = 400, description = "bad input: `error` (and `details`) say what and where", body = error::ErrorBody),
    ))]
async fn peers(
    State(node): State<NodeHandle>,
    Query(p): Query<PeersParams>,
) -> Result<impl IntoResponse, ApiError> {
    let limit = page_limit(p.limit, PEERS_PAGE)?;
    let mut view = node.peers();
    view.peers
        .sort_by(|a, b| a.announcement.peer_id.cmp(&b.announcement.peer_id));
    if let Some(after) = &p.after {
        view.peers.retain(|peer| peer.announcement.peer_id > *after);
    }
    let next = (view.peers.len() > limit).then(|| {
        view.peers.truncate(limit);
        let last = view.peers.last().map(|p| p.announcement.peer_id.as_str());
        format!(
            "/api/peers?after={}&limit={limit}",
            query_value(last.unwrap_or_default())
        )
    });
    Ok((next_link(next), Json(view)))
}

const NODE_KEY: &str = "a node's name or PeerId: this node, a live peer or a member";

/// Whether the node is drained, and what still runs there.
#[utoipa::path(get, path = "/api/peers/{node}/drain", tag = "node",
    params(("node" = String, Path, description = NODE_KEY)),
    responses(
        (status = 200, description = "OK", body = taskmesh_core::view::NodeDrain),
        (status = 404, description = "no such node", body = error::ErrorBody),
    ))]
async fn get_drain(
    State(node): State<NodeHandle>,
    Path(key): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(node.drain_status(&key)?))
}

/// Drains the node: the leader places no new run on it and moves its always-tasks to other
/// nodes (each starts there once it has stopped here); runs already there go on to their end.
#[utoipa::path(post, path = "/api/peers/{node}/drain", tag = "node",
    params(("node" = String, Path, description = NODE_KEY)),
    responses(
        (status = 200, description = "drained", body = taskmesh_core::view::NodeDrain),
        (status = 400, description = "the name fits more than one node", body = error::ErrorBody),
        (status = 404, description = "no such node", body = error::ErrorBody),
        (status = 503, description = "not committed: no quorum, not joined yet, or shutting down", body = error::ErrorBody),
    ))]
#[instrument(name = "api", skip_all, fields(node = %key))]
async fn drain_node(
    State(node): State<NodeHandle>,
    Path(key): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(node.drain(&key, true).await?))
}

/// Ends the node's drain: it takes runs again.
#[utoipa::path(post, path = "/api/peers/{node}/undrain", tag = "node",
    params(("node" = String, Path, description = NODE_KEY)),
    responses(
        (status = 200, description = "no longer drained", body = taskmesh_core::view::NodeDrain),
        (status = 400, description = "the name fits more than one node", body = error::ErrorBody),
        (status = 404, description = "no such node", body = error::ErrorBody),
        (status = 503, description = "not committed: no quorum, not joined yet, or shutting down", body = error::ErrorBody),
    ))]
#[instrument(name = "api", skip_all, fields(node = %key))]
async fn undrain_node(
    State(node): State<NodeHandle>,
    Path(key): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(node.drain(&key, false).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ActivityParams {
    /// How many changes, 1 to 1000; 100 when not given.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

/// The newest changes operators made through any node's UI, API or CLI, newest first (the
/// cluster keeps the last 500): when, which node took the request, how (`ui`, `cli`, `api`),
/// from which address, what was done and to what.
#[utoipa::path(get, path = "/api/activity", tag = "node", params(ActivityParams),
    responses(
        (status = 200, description = "OK", body = Vec<crate::model::Activity>),
        (status = 400, description = "bad input: `error` (and `details`) say what and where", body = error::ErrorBody),
    ))]
async fn activity(
    State(node): State<NodeHandle>,
    Query(p): Query<ActivityParams>,
) -> Result<impl IntoResponse, ApiError> {
    let limit = page_limit(p.limit, 100)?;
    Ok(Json(node.activity(limit)))
}

/// Whether cron is paused for the cluster, and since when.
#[utoipa::path(get, path = "/api/cron", tag = "tasks",
    responses((status = 200, description = "OK", body = taskmesh_core::view::CronPause)))]
async fn cron_pause(State(node): State<NodeHandle>) -> impl IntoResponse {
    Json(node.cron_pause())
}

/// Pauses cron for the whole cluster: no cron slot fires and no `@reboot` task starts until it
/// is resumed. Manual runs, retries, rules and always-tasks go on.
#[utoipa::path(post, path = "/api/cron/pause", tag = "tasks",
    responses(
        (status = 200, description = "paused", body = taskmesh_core::view::CronPause),
        (status = 503, description = "not committed: no quorum, not joined yet, or shutting down", body = error::ErrorBody),
    ))]
#[instrument(name = "api", skip_all)]
async fn pause_cron(State(node): State<NodeHandle>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(node.pause_cron(true).await?))
}

/// Resumes cron: each task's catch-up policy decides what happens to the slots it missed.
#[utoipa::path(post, path = "/api/cron/resume", tag = "tasks",
    responses(
        (status = 200, description = "resumed", body = taskmesh_core::view::CronPause),
        (status = 503, description = "not committed: no quorum, not joined yet, or shutting down", body = error::ErrorBody),
    ))]
#[instrument(name = "api", skip_all)]
async fn resume_cron(State(node): State<NodeHandle>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(node.pause_cron(false).await?))
}

/// The cluster key itself (a secret: the UI shows it only when asked).
#[utoipa::path(get, path = "/api/cluster-key", tag = "node",
    responses((status = 200, description = "OK", body = openapi::ClusterKey)))]
async fn cluster_key(State(node): State<NodeHandle>) -> impl IntoResponse {
    let settings = node.settings(true);
    Json(openapi::ClusterKey {
        key: settings.node.cluster_key,
        fingerprint: node.peers().this.key_fingerprint,
    })
}

/// The most items one page of a listing holds, and how many it holds when not asked.
const PAGE_MAX: usize = 1000;
const TASKS_PAGE: usize = 1000;
const RUNS_PAGE: usize = 50;
const PEERS_PAGE: usize = 1000;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct TasksParams {
    /// The id of the last task of the previous page.
    after: Option<String>,
    /// How many tasks a page holds, 1 to 1000; 1000 when not given.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// Only tasks whose name contains this, in any case.
    q: Option<String>,
    /// Only tasks with this label.
    label: Option<String>,
    /// Each task with its newest run (`last_run`, from the run ledger's index; null before the
    /// first).
    #[serde(default)]
    last_run: bool,
}

/// One page of the task list, oldest first; a `Link: <…>; rel="next"` header names the next
/// page while there is one.
#[utoipa::path(get, path = "/api/tasks", tag = "tasks", params(TasksParams),
    responses(
        (status = 200, description = "OK", body = Vec<taskmesh_core::view::TaskListItem>,
            headers(("link" = String, description = "the next page, while there is one"))),
        (status = 400, description = "bad input: `error` (and `details`) say what and where", body = error::ErrorBody),
    ))]
#[instrument(name = "api", skip_all)]
async fn list_tasks(
    State(node): State<NodeHandle>,
    Query(p): Query<TasksParams>,
) -> Result<impl IntoResponse, ApiError> {
    let limit = page_limit(p.limit, TASKS_PAGE)?;
    let after = p.after.map(TaskId);
    let q = p.q.as_deref().map(str::to_lowercase).unwrap_or_default();
    let state = node.state();
    let mut page: Vec<&std::sync::Arc<crate::model::Task>> = state
        .tasks
        .after(after.as_ref())
        .filter(|t| q.is_empty() || t.name.to_lowercase().contains(&q))
        .filter(|t| p.label.as_ref().is_none_or(|l| t.labels.contains(l)))
        .take(limit + 1)
        .collect();
    let next = (page.len() > limit).then(|| {
        page.truncate(limit);
        let last = page.last().map(|t| t.id.0.as_str()).unwrap_or_default();
        let q = (!q.is_empty()).then(|| format!("q={}&", query_value(&q)));
        let label = p
            .label
            .as_ref()
            .map(|l| format!("label={}&", query_value(l)));
        let with = if p.last_run { "last_run=true&" } else { "" };
        format!(
            "/api/tasks?{}{}{with}after={}&limit={limit}",
            q.unwrap_or_default(),
            label.unwrap_or_default(),
            query_value(last)
        )
    });
    let items: Vec<taskmesh_core::view::TaskListItem> = page
        .iter()
        .map(|task| taskmesh_core::view::TaskListItem {
            task: task.as_ref().clone(),
            last_run: p
                .last_run
                .then(|| state.runs.last_of(&task.id).map(|r| r.as_ref().clone())),
        })
        .collect();
    Ok((next_link(next), Json(items)))
}

/// `limit` within 1 to [`PAGE_MAX`], `default` when not given.
fn page_limit(limit: Option<usize>, default: usize) -> Result<usize, ApiError> {
    match limit.unwrap_or(default) {
        n @ 1..=PAGE_MAX => Ok(n),
        n => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("limit {n} is out of range: a page holds 1 to {PAGE_MAX} items"),
        )),
    }
}

/// The `Link` header naming the next page (RFC 8288), if there is one.
fn next_link(next: Option<String>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Some(value) = next.and_then(|n| format!("<{n}>; rel=\"next\"").parse().ok()) {
        headers.insert(header::LINK, value);
    }
    headers
}

fn query_value(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// One task.
#[utoipa::path(get, path = "/api/tasks/{key}", tag = "tasks",
    params(("key" = String, Path, description = TASK_KEY)),
    responses((status = 200, description = "OK", body = crate::model::Task), (status = 404, description = "no such task, run or channel", body = error::ErrorBody)))]
#[instrument(name = "api", skip_all, fields(task = %key))]
async fn get_task(
    State(node): State<NodeHandle>,
    Path(key): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(node.task(&key)?))
}

/// Creates a task.
#[utoipa::path(post, path = "/api/tasks", tag = "tasks",
    request_body = crate::model::TaskInput,
    responses(
        (status = 201, description = "created", body = crate::model::Task),
        (status = 400, description = "invalid: `details` names each field", body = error::ErrorBody),
        (status = 503, description = "not committed", body = error::ErrorBody),
    ))]
#[instrument(name = "api", skip_all)]
async fn create_task(
    State(node): State<NodeHandle>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let input: TaskInput = json_body(&headers, &body)?;
    Ok((StatusCode::CREATED, Json(node.create_task(input).await?)))
}

/// Replaces a task; with `updated_at`, only if it has not changed since.
#[utoipa::path(put, path = "/api/tasks/{key}", tag = "tasks",
    params(("key" = String, Path, description = TASK_KEY)),
    request_body = crate::model::TaskInput,
    responses(
        (status = 200, description = "OK", body = crate::model::Task),
        (status = 400, description = "bad input: `error` (and `details`) say what and where", body = error::ErrorBody),
        (status = 404, description = "no such task, run or channel", body = error::ErrorBody),
        (status = 409, description = "`refused: \"stale\"`: the task changed since `updated_at`; it is in `current`", body = error::ErrorBody),
    ))]
#[instrument(name = "api", skip_all, fields(task = %key))]
async fn update_task(
    State(node): State<NodeHandle>,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let input: TaskInput = json_body(&headers, &body)?;
    Ok(Json(node.update_task(&key, input).await?))
}

/// Removes a task (an always-task is stopped) and answers it.
#[utoipa::path(delete, path = "/api/tasks/{key}", tag = "tasks",
    params(("key" = String, Path, description = TASK_KEY)),
    responses((status = 200, description = "OK", body = crate::model::Task), (status = 404, description = "no such task, run or channel", body = error::ErrorBody)))]
#[instrument(name = "api", skip_all, fields(task = %key))]
async fn remove_task(
    State(node): State<NodeHandle>,
    Path(key): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(node.remove_task(&key).await?))
}

/// Execute now: a new run of the task.
#[utoipa::path(post, path = "/api/tasks/{key}/run", tag = "tasks",
    params(("key" = String, Path, description = TASK_KEY)),
    request_body(content = Option<openapi::ExecuteRequest>, description = "optional: parameters for this run in place of the task's"),
    responses(
        (status = 202, description = "accepted", body = crate::model::Run),
        (status = 400, description = "bad input: `error` (and `details`) say what and where", body = error::ErrorBody),
        (status = 404, description = "no such task, run or channel", body = error::ErrorBody),
        (status = 409, description = "refused as the cluster is now (`refused`: `no_node`, `still_running`)", body = error::ErrorBody),
        (status = 503, description = "not committed: no quorum, not joined yet, or shutting down", body = error::ErrorBody),
    ))]
#[instrument(name = "api", skip_all, fields(task = %key))]
async fn execute_task(
    State(node): State<NodeHandle>,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    // No body (or `null`) runs the task as it is.
    let asked: Option<openapi::ExecuteRequest> = match body.is_empty() {
        true => None,
        false => json_body(&headers, &body)?,
    };
    let parameters = asked.map(|a| a.parameters).unwrap_or_default();
    Ok((
        StatusCode::ACCEPTED,
        Json(node.execute(&key, parameters).await?),
    ))
}

/// Sets the task's `enabled` flag.
#[utoipa::path(post, path = "/api/tasks/{key}/enable", tag = "tasks",
    params(("key" = String, Path, description = TASK_KEY)),
    responses((status = 200, description = "OK", body = crate::model::Task), (status = 404, description = "no such task, run or channel", body = error::ErrorBody)))]
#[instrument(name = "api", skip_all, fields(task = %key))]
async fn enable_task(
    State(node): State<NodeHandle>,
    Path(key): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(node.set_enabled(&key, true).await?))
}

/// Clears the task's `enabled` flag.
#[utoipa::path(post, path = "/api/tasks/{key}/disable", tag = "tasks",
    params(("key" = String, Path, description = TASK_KEY)),
    responses((status = 200, description = "OK", body = crate::model::Task), (status = 404, description = "no such task, run or channel", body = error::ErrorBody)))]
#[instrument(name = "api", skip_all, fields(task = %key))]
async fn disable_task(
    State(node): State<NodeHandle>,
    Path(key): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(node.set_enabled(&key, false).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ScheduleParams {
    /// A crontab entry: five or six fields, or `@reboot`, `@daily`, ….
    cron: String,
    /// An IANA timezone; UTC when not given.
    #[serde(default = "utc")]
    #[param(required = false)]
    timezone: String,
    /// How many next times, 1 to 20.
    #[param(minimum = 1, maximum = 20)]
    count: Option<usize>,
}

fn utc() -> String {
    "UTC".into()
}

/// A crontab entry checked and previewed: its next times and, for the common forms, the entry
/// in plain words (German for a German browser: the `taskmesh_lang` cookie, else
/// `Accept-Language`); `400` with the error at `when.schedule` (with its column) or `when.timezone`.
#[utoipa::path(get, path = "/api/schedule", tag = "tasks", params(ScheduleParams),
    responses((status = 200, description = "OK", body = openapi::SchedulePreview), (status = 400, description = "bad input: `error` (and `details`) say what and where", body = error::ErrorBody)))]
async fn preview_schedule(
    lang: crate::ui::Lang,
    Query(p): Query<ScheduleParams>,
) -> Result<impl IntoResponse, ApiError> {
    let count = match p.count.unwrap_or(5) {
        n @ 1..=20 => n,
        n => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("count {n} is out of range: 1 to 20 next times"),
            ));
        }
    };
    let schedule = crate::model::parse_schedule(&p.cron, &p.timezone)
        .map_err(|e| crate::model::Invalid::new("the schedule is not valid", vec![e]))?;
    let mut next = Vec::with_capacity(count);
    let mut after = chrono::Utc::now();
    while next.len() < count {
        let Some(at) = schedule.next_after(after) else {
            break;
        };
        next.push(at);
        after = at;
    }
    Ok(Json(openapi::SchedulePreview {
        reading: crate::ui::schedule_reading(lang, &p.cron),
        reboot: schedule.is_reboot(),
        next,
        cron: p.cron,
        timezone: p.timezone,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct RunsParams {
    /// A task id or name: only its runs.
    task: Option<String>,
    /// The id of the last run of the previous page.
    before: Option<String>,
    /// How many runs a page holds, 1 to 1000; 50 when not given.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// Only runs with this status: queued, running, succeeded, failed, timed_out, killed, lost,
    /// skipped.
    status: Option<String>,
    /// Only runs on the node of this name.
    node: Option<String>,
    /// Only runs made by this kind of trigger: manual, cron, reboot, always, retry, rule.
    trigger: Option<String>,
}

/// The header naming the nodes whose history a listing lacks (they did not answer in time).
const UNANSWERED: &str = "taskmesh-unanswered";

/// One page of runs from every live node, newest first, with a `Link` to the next page like
/// [`list_tasks`], and the nodes that did not answer in a `Taskmesh-Unanswered` header.
#[utoipa::path(get, path = "/api/runs", tag = "runs", params(RunsParams),
    responses(
        (status = 200, description = "OK", body = Vec<crate::model::Run>, headers(
            ("link" = String, description = "the next page, while there is one"),
            ("taskmesh-unanswered" = String, description = "the nodes whose history is missing"),
        )),
        (status = 400, description = "bad input: `error` (and `details`) say what and where", body = error::ErrorBody),
    ))]
#[instrument(name = "api", skip_all, fields(task = ?p.task))]
async fn list_runs(
    State(node): State<NodeHandle>,
    Query(p): Query<RunsParams>,
) -> Result<impl IntoResponse, ApiError> {
    // The history of a removed task is still listed by its id.
    let task = p
        .task
        .as_ref()
        .map(|key| node.task(key).map(|t| t.id).unwrap_or(TaskId(key.clone())));
    let before = p.before.as_deref().map(parse_run_id).transpose()?;
    let limit = page_limit(p.limit, RUNS_PAGE)?;
    let status = p.status.as_deref().map(parse_status).transpose()?;
    if let Some(trigger) = p.trigger.as_deref() {
        if !crate::model::Trigger::KINDS.contains(&trigger) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "trigger `{trigger}` is unknown: one of {}",
                    crate::model::Trigger::KINDS.join(", ")
                ),
            ));
        }
    }
    let query = RunQuery {
        task: task.clone(),
        before,
        limit: limit + 1,
        status,
        node: p.node.clone(),
        trigger: p.trigger.clone(),
        since: None,
    };
    let crate::history::ClusterRuns {
        runs: mut page,
        unanswered,
    } = node.cluster_runs(query).await?;
    let next = (page.len() > limit).then(|| {
        page.truncate(limit);
        let last = page.last().map(|r| r.id.0.as_str()).unwrap_or_default();
        let mut params: Vec<String> = Vec::new();
        if let Some(task) = &task {
            params.push(format!("task={}", query_value(&task.0)));
        }
        for (name, value) in [
            ("status", &p.status),
            ("node", &p.node),
            ("trigger", &p.trigger),
        ] {
            if let Some(value) = value {
                params.push(format!("{name}={}", query_value(value)));
            }
        }
        params.push(format!("before={last}&limit={limit}"));
        format!("/api/runs?{}", params.join("&"))
    });
    let mut headers = next_link(next);
    if let Ok(value) = unanswered.join(", ").parse() {
        if !unanswered.is_empty() {
            headers.insert(UNANSWERED, value);
        }
    }
    Ok((headers, Json(page)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct StatsParams {
    /// How many hours back, 1 to 720 (30 days); 24 when not given.
    #[param(minimum = 1, maximum = 720)]
    hours: Option<i64>,
}

/// What the runs of every live node in the last `hours` did, added up, with the nodes that did
/// not answer in a `Taskmesh-Unanswered` header.
#[utoipa::path(get, path = "/api/stats", tag = "runs", params(StatsParams),
    responses(
        (status = 200, description = "OK", body = taskmesh_core::view::RunStats, headers(
            ("taskmesh-unanswered" = String, description = "the nodes that did not answer"),
        )),
        (status = 400, description = "bad input: `error` (and `details`) say what and where", body = error::ErrorBody),
    ))]
#[instrument(name = "api", skip_all)]
async fn run_stats(
    State(node): State<NodeHandle>,
    Query(p): Query<StatsParams>,
) -> Result<impl IntoResponse, ApiError> {
    let hours = match p.hours.unwrap_or(24) {
        h @ 1..=720 => h,
        h => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("hours {h} is out of range: 1 to 720"),
            ));
        }
    };
    let since = chrono::Utc::now() - chrono::Duration::hours(hours);
    let crate::history::ClusterStats { stats, unanswered } = node.cluster_stats(since).await?;
    let mut headers = HeaderMap::new();
    if let Ok(value) = unanswered.join(", ").parse() {
        if !unanswered.is_empty() {
            headers.insert(UNANSWERED, value);
        }
    }
    Ok((headers, Json(stats)))
}

/// A run status as the API spells it (`timed_out`).
fn parse_status(s: &str) -> Result<crate::model::RunStatus, ApiError> {
    serde_json::from_value(serde_json::Value::String(s.to_owned())).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "status `{s}` is unknown: one of queued, running, succeeded, failed, timed_out, \
                 killed, lost, skipped"
            ),
        )
    })
}

pub(crate) fn parse_run_id(s: &str) -> Result<RunId, ApiError> {
    RunId::parse(s).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("`{s}` is not a run id (32 hex digits)"),
        )
    })
}

/// One run, wherever it ran.
#[utoipa::path(get, path = "/api/runs/{id}", tag = "runs",
    params(("id" = String, Path, description = RUN_ID)),
    responses((status = 200, description = "OK", body = crate::model::Run), (status = 400, description = "bad input: `error` (and `details`) say what and where", body = error::ErrorBody), (status = 404, description = "no such task, run or channel", body = error::ErrorBody)))]
#[instrument(name = "api", skip_all, fields(run = %id))]
async fn get_run(
    State(node): State<NodeHandle>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(node.run(&parse_run_id(&id)?).await?))
}

/// Stops a run: SIGTERM to its process group, SIGKILL after `cluster.kill_grace`.
#[utoipa::path(post, path = "/api/runs/{id}/stop", tag = "runs",
    params(("id" = String, Path, description = RUN_ID)),
    responses((status = 202, description = "accepted", body = crate::model::Run), (status = 400, description = "bad input: `error` (and `details`) say what and where", body = error::ErrorBody), (status = 404, description = "no such task, run or channel", body = error::ErrorBody)))]
#[instrument(name = "api", skip_all, fields(run = %id))]
async fn stop_run(
    State(node): State<NodeHandle>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok((
        StatusCode::ACCEPTED,
        Json(node.stop_run(&parse_run_id(&id)?).await?),
    ))
}

/// Sends a test message to a notification channel: 200 when it was delivered, 404 for an
/// unknown channel, 502 with the receiver's answer when it was not.
#[utoipa::path(post, path = "/api/channels/{name}/test", tag = "settings",
    params(("name" = String, Path, description = "a channel's name in `cluster.channels`")),
    responses(
        (status = 200, description = "OK", body = openapi::ChannelTested),
        (status = 404, description = "no such task, run or channel", body = error::ErrorBody),
        (status = 502, description = "not delivered: the receiver's answer", body = error::ErrorBody),
    ))]
#[instrument(name = "api", skip_all, fields(channel = %name))]
async fn test_channel(
    State(node): State<NodeHandle>,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    match node.notifier().test(&name).await {
        Ok(kind) => Ok(Json(openapi::ChannelTested {
            channel: name,
            kind: kind.to_string(),
            delivered: true,
        })),
        Err(e @ crate::notify::TestError::NoChannel(_)) => {
            Err(ApiError::new(StatusCode::NOT_FOUND, e.to_string()))
        }
        Err(e) => Err(ApiError::new(StatusCode::BAD_GATEWAY, e.to_string())),
    }
}

/// The settings, secrets shown as `********`.
#[utoipa::path(get, path = "/api/settings", tag = "settings",
    responses((status = 200, description = "OK", body = crate::model::Settings)))]
async fn get_settings(State(node): State<NodeHandle>) -> impl IntoResponse {
    Json(node.settings(false))
}

/// Replaces the settings; a secret sent as `********` keeps its stored value.
#[utoipa::path(put, path = "/api/settings", tag = "settings",
    request_body = crate::model::Settings,
    responses((status = 200, description = "OK", body = crate::model::Settings), (status = 400, description = "bad input: `error` (and `details`) say what and where", body = error::ErrorBody), (status = 503, description = "not committed: no quorum, not joined yet, or shutting down", body = error::ErrorBody)))]
#[instrument(name = "api", skip_all)]
async fn put_settings(
    State(node): State<NodeHandle>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(
        node.import_settings(json_text(&headers, &body)?).await?,
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ExportParams {
    /// Include the secrets (and so the cluster key).
    #[serde(default)]
    secrets: bool,
}

/// The settings as a download, with `exported_by`.
#[utoipa::path(get, path = "/api/settings/export", tag = "settings", params(ExportParams),
    responses((status = 200, description = "OK", body = crate::model::Settings,
        headers(("content-disposition" = String, description = "attachment; filename=…")))))]
async fn export_settings(
    State(node): State<NodeHandle>,
    Query(p): Query<ExportParams>,
) -> impl IntoResponse {
    let name = format!("taskmesh-settings-{}.json", node.node_settings().name);
    let body = serde_json::to_string_pretty(&node.export_settings(p.secrets)).unwrap_or_default();
    (
        [
            (header::CONTENT_TYPE, "application/json".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{}\"", name.replace('"', "")),
            ),
        ],
        body,
    )
}

/// Imports an exported settings file; one from another node joins that node's mesh.
#[utoipa::path(post, path = "/api/settings/import", tag = "settings",
    request_body = crate::model::Settings,
    responses((status = 200, description = "OK", body = crate::model::Settings), (status = 400, description = "bad input: `error` (and `details`) say what and where", body = error::ErrorBody), (status = 503, description = "not committed: no quorum, not joined yet, or shutting down", body = error::ErrorBody)))]
#[instrument(name = "api", skip_all)]
async fn import_settings(
    State(node): State<NodeHandle>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "the file is not UTF-8"))?;
    Ok(Json(node.import_settings(text).await?))
}

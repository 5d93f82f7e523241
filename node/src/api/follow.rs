//! Live streams as server-sent events: a run's log as it grows, and the node's change events.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use futures::Stream;
use serde::Deserialize;
use tokio::sync::broadcast;

use super::{ApiError, parse_run_id};
use crate::events::Event;
use crate::handle::NodeHandle;
use crate::model::{Run, RunId};

/// Largest piece of log sent at once.
const CHUNK: usize = 64 * 1024;
/// A follower re-checks the run this often even without events (events can be skipped, and a
/// run on another node grows without local events: its log is fetched over the mesh).
const RECHECK: Duration = Duration::from_millis(250);

/// The largest byte offset in a file (`off_t` is signed): a larger `offset` is refused.
const MAX_OFFSET: u64 = i64::MAX as u64;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct LogParams {
    /// The byte of the log to start at, 0 to 2^63 - 1.
    #[serde(default)]
    offset: u64,
    /// Follow the log as server-sent events until the run ends.
    #[serde(default)]
    follow: bool,
}

/// `GET /api/runs/{id}/log`: the log as text from byte `offset` on, or with `follow=true` as
/// events: `log` (a piece of output, `id` = the offset after it), then `end` with the finished
/// run. A follower that reconnects with `Last-Event-ID` (as `EventSource` does) resumes at that
/// offset.
#[utoipa::path(get, path = "/api/runs/{id}/log", tag = "runs",
    params(
        ("id" = String, Path, description = super::RUN_ID),
        LogParams,
        ("last-event-id" = Option<String>, Header, description = "with `follow=true`: resume at this offset"),
    ),
    responses(
        (status = 200, description = "the log from `offset` on; with `follow=true` server-sent events: \
            `log` (a piece of output, `id:` the offset after it), then one `end` with the finished run as JSON",
            content(
                (String = "text/plain"),
                (String = "text/event-stream"),
            )),
        (status = 400, description = "bad input: `error` (and `details`) say what and where", body = super::error::ErrorBody),
        (status = 404, description = "no such run, or it never started, or its log was deleted", body = super::error::ErrorBody),
    ))]
pub(super) async fn run_log(
    State(node): State<NodeHandle>,
    Path(id): Path<String>,
    Query(p): Query<LogParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = parse_run_id(&id)?;
    let resume = if p.follow {
        last_event_id(&headers)?
    } else {
        None
    };
    let offset = match resume {
        Some(offset) => offset,
        None => checked_offset(p.offset, "offset")?,
    };
    let run = node.run(&id).await?;
    if !p.follow {
        let text = match node.run_log(&id, offset, 16 << 20).await? {
            Some(text) => text,
            // A run that printed nothing has no file.
            None if run.started_at.is_some() && !expired(&run, &node) => Vec::new(),
            None => {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!(
                        "run {} has no log (never started, or deleted by retention)",
                        run.id
                    ),
                ));
            }
        };
        return Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response());
    }
    let events = node.subscribe();
    let stream = futures::stream::unfold(
        Follow {
            node,
            id,
            offset,
            events,
            ended: false,
        },
        |mut f| async move { f.next().await.map(|e| (Ok::<_, Infallible>(e), f)) },
    );
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// `offset` if it is a byte position a file can have, else a 400 naming `what`.
fn checked_offset(offset: u64, what: &str) -> Result<u64, ApiError> {
    if offset > MAX_OFFSET {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("{what}: {offset} is past the largest log offset, {MAX_OFFSET}"),
        ));
    }
    Ok(offset)
}

/// The offset in a `Last-Event-ID` header (the `id` of the last `log` event a follower got), if
/// there is one; a value that is not an offset is a 400.
fn last_event_id(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get("last-event-id") else {
        return Ok(None);
    };
    let bad = || {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "Last-Event-ID: not a log offset (the `id` of a `log` event, a whole number of bytes)",
        )
    };
    let text = value.to_str().map_err(|_| bad())?.trim();
    if text.is_empty() {
        // An empty id means none (an SSE `id:` line without a value resets it).
        return Ok(None);
    }
    let offset = text.parse::<u64>().map_err(|_| bad())?;
    checked_offset(offset, "Last-Event-ID").map(Some)
}

/// Whether retention may have deleted the run's log: it ended longer ago than the logs are kept.
fn expired(run: &Run, node: &NodeHandle) -> bool {
    let kept = chrono::Duration::days(i64::from(node.state().settings.retention_days));
    run.ended_at.is_some_and(|ended| Utc::now() - ended > kept)
}

/// How many bytes of `chunk` end on a character boundary: all of them, except the first bytes
/// of a UTF-8 character whose other bytes are not there yet (kept back unless `complete`).
fn whole_characters(chunk: &[u8], complete: bool) -> usize {
    if complete {
        return chunk.len();
    }
    // The last character starts at most 3 bytes before the end.
    for back in 1..=chunk.len().min(4) {
        let at = chunk.len() - back;
        let byte = chunk[at];
        if byte & 0b1100_0000 == 0b1000_0000 {
            continue; // a continuation byte: its lead is further back
        }
        let length = match byte {
            b if b < 0x80 => 1,
            b if b & 0b1110_0000 == 0b1100_0000 => 2,
            b if b & 0b1111_0000 == 0b1110_0000 => 3,
            b if b & 0b1111_1000 == 0b1111_0000 => 4,
            _ => 1, // not UTF-8 at all: sent as it is (and shown as U+FFFD)
        };
        return if back < length { at } else { chunk.len() };
    }
    chunk.len()
}

struct Follow {
    node: NodeHandle,
    id: RunId,
    offset: u64,
    events: broadcast::Receiver<Event>,
    ended: bool,
}

impl Follow {
    async fn next(&mut self) -> Option<SseEvent> {
        if self.ended {
            return None;
        }
        loop {
            // Read what is there; only a finished run with nothing left to read ends the stream.
            let run = self.node.run(&self.id).await.ok()?;
            let chunk = self
                .node
                .run_log(&self.id, self.offset, CHUNK)
                .await
                .ok()?
                .unwrap_or_default();
            // A character cut at the end of what is written so far waits for its other bytes,
            // so that each event decodes whole (unless the run has ended: then it never comes).
            let whole = whole_characters(&chunk, run.status.is_final());
            if whole > 0 {
                self.offset += whole as u64;
                return Some(
                    SseEvent::default()
                        .event("log")
                        .id(self.offset.to_string())
                        .data(String::from_utf8_lossy(&chunk[..whole])),
                );
            }
            if run.status.is_final() {
                self.ended = true;
                return Some(
                    SseEvent::default()
                        .event("end")
                        .json_data(&run)
                        .unwrap_or_default(),
                );
            }
            let _ = tokio::time::timeout(RECHECK, self.wait_for_change()).await;
        }
    }

    async fn wait_for_change(&mut self) {
        loop {
            match self.events.recv().await {
                Ok(Event::Log { run, .. }) if run == self.id => return,
                Ok(Event::Run(run)) if run.id == self.id => return,
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => return,
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

/// `GET /api/events`: `run` (a run changed, with the run), `state` (tasks or settings changed)
/// and `supervision` events, for live pages.
#[utoipa::path(get, path = "/api/events", tag = "node",
    responses((status = 200, description = "server-sent events: `run` (data: the run, on every change), \
        `state` (tasks or settings changed), `supervision` (an always-task's restart state changed), \
        `lagged` (the client fell behind; re-read what it shows)",
        content_type = "text/event-stream", body = String)))]
pub(super) async fn events(
    State(node): State<NodeHandle>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let rx = node.subscribe();
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        loop {
            let event = match rx.recv().await {
                Ok(Event::Run(run)) => SseEvent::default()
                    .event("run")
                    .json_data(&*run)
                    .unwrap_or_default(),
                Ok(Event::State) => SseEvent::default().event("state").data("{}"),
                Ok(Event::Supervision) => SseEvent::default().event("supervision").data("{}"),
                Ok(Event::Log { .. }) => continue,
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    SseEvent::default().event("lagged").data("{}")
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            return Some((Ok(event), rx));
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

#[cfg(test)]
mod tests {
    use super::whole_characters;

    #[test]
    fn a_character_cut_at_the_end_waits_for_its_other_bytes() {
        let text = "Grüße ✓".as_bytes();
        let cases: &[(&[u8], bool, usize)] = &[
            (text, false, text.len()),
            (&text[..3], false, 2),              // "Gr" + the first byte of ü
            (&text[..3], true, 3),               // the run ended: nothing more will come
            (&text[..text.len() - 1], false, 8), // ✓ is 3 bytes; 2 of them are there
            (&text[..text.len() - 2], false, 8),
            (b"", false, 0),
            (&[0xff], false, 1),                   // not UTF-8: sent as it is
            (&[0x80, 0x80, 0x80, 0x80], false, 4), // stray continuation bytes
        ];
        for (chunk, complete, expected) in cases {
            assert_eq!(whole_characters(chunk, *complete), *expected, "{chunk:?}");
        }
    }
}

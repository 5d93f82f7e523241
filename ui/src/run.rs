//! The run page (`/runs/{id}`): one run's facts, the actions its exit rules took, and its log,
//! streamed live while it runs.

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::Utc;

use super::problem::ProblemTemplate;
use super::view::{Layout, RunSummary};
use crate::NodeView;
use crate::i18n::Lang;
use taskmesh_core::model::RunId;

#[derive(Template, WebTemplate)]
#[template(path = "run.html")]
pub struct RunTemplate {
    pub layout: Layout,
    pub run: RunSummary,
}

pub async fn view_run_get<N: NodeView>(
    State(node): State<N>,
    Path(id): Path<String>,
    lang: Lang,
) -> Response {
    let layout = Layout::new(&node, "", lang);
    let Some(run_id) = RunId::parse(&id) else {
        return ProblemTemplate::new(
            layout,
            StatusCode::NOT_FOUND,
            "No such run",
            format!("`{id}` is not a run id (run ids are 32 hex digits)."),
        )
        .respond();
    };
    match node.run(&run_id).await {
        Ok(Some(run)) => RunTemplate {
            layout,
            run: RunSummary::of(&run, Utc::now()),
        }
        .into_response(),
        Ok(None) => ProblemTemplate::new(
            layout,
            StatusCode::NOT_FOUND,
            "No such run",
            format!("There is no run {run_id}. Its history may have been trimmed."),
        )
        .respond(),
        Err(e) => ProblemTemplate::new(
            layout,
            StatusCode::INTERNAL_SERVER_ERROR,
            "The run could not be read",
            e,
        )
        .respond(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::sample::{self, EVIL};
    use taskmesh_core::model::RunStatus;

    fn page(run: &taskmesh_core::model::Run) -> String {
        RunTemplate {
            layout: Layout::named("node-a", ""),
            run: RunSummary::of(run, sample::now()),
        }
        .render()
        .expect("render")
    }

    #[test]
    fn a_running_run_has_stop_and_a_live_log() {
        let html = page(&sample::run("backup", RunStatus::Running));
        for needle in [
            "data-run-id=\"0123456789abcdef0123456789abcdef\"",
            "href=\"/tasks/t-backup\"",
            ">backup<",
            "badge s-running",
            "id=\"stop-run\"",
            "id=\"run-log\"",
            "manual",
            "node-a",
        ] {
            assert!(html.contains(needle), "missing {needle}");
        }
    }

    #[test]
    fn a_finished_run_shows_exit_and_actions() {
        let mut run = sample::run("backup", RunStatus::Failed);
        run.actions = vec!["retry → run abc".into()];
        let html = page(&run);
        assert!(html.contains("exit 2"));
        assert!(html.contains("retry → run abc"));
        assert!(html.contains("1 min"), "duration");
        assert!(!html.contains("id=\"stop-run\" class"), "no stop button");
    }

    #[test]
    fn user_text_is_escaped() {
        let mut run = sample::run(EVIL, RunStatus::Failed);
        run.node = EVIL.into();
        run.actions = vec![EVIL.into()];
        let html = page(&run);
        assert!(!html.contains(EVIL));
        assert!(html.contains("&#60;script&#62;alert(1)&#60;/script&#62;"));
    }
}

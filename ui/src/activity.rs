//! Who changed what (`/activity`, and the dashboard's *Changes*): the changes operators made
//! through any node, newest first, as the cluster keeps them (`GET /api/activity`).

use std::collections::HashMap;

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::State;
use chrono::{DateTime, Utc};

use super::view::{Layout, Moment};
use crate::NodeView;
use crate::i18n::Lang;
use taskmesh_core::model::{Activity, MAX_ACTIVITY};

#[derive(Template, WebTemplate)]
#[template(path = "activity.html")]
pub struct ActivityTemplate {
    pub layout: Layout,
    pub changes: Vec<Change>,
}

/// One change an operator made, as the pages list it.
#[derive(Debug, Clone)]
pub struct Change {
    pub at: Moment,
    /// The change in words: "task saved", "node drained", ….
    pub what: String,
    pub subject: String,
    /// "ui on lab-1 from 10.0.0.5", "cli (alice) on lab-1 from 10.0.0.5".
    pub who: String,
}

impl Change {
    /// `a` in words; `names` gives the names of the nodes the cluster knows, by PeerId (a drain
    /// names its node by PeerId; the page shows its name when known).
    pub fn of(a: &Activity, now: DateTime<Utc>, names: &HashMap<String, String>) -> Self {
        let what = match (a.what.as_str(), a.detail.as_str()) {
            ("put_task" | "replace_task", _) => "task saved",
            ("remove_task", _) => "task removed",
            ("settings", _) => "settings saved",
            ("set_enabled", "enabled") => "task enabled",
            ("set_enabled", _) => "task disabled",
            ("stop", _) => "run stopped",
            ("drain", "drained") => "node drained",
            ("drain", _) => "node undrained",
            ("pause_cron", "paused") => "cron paused",
            ("pause_cron", _) => "cron resumed",
            ("put_token", _) => "token added",
            ("remove_token", _) => "token removed",
            ("sign_in", "link") => "signed in with a login link",
            ("sign_in", _) => "signed in",
            ("rotate_token", _) => "access token rotated",
            (other, _) => other,
        };
        Self {
            at: Moment::new(a.origin.at, now),
            what: what.to_owned(),
            subject: match names.get(&a.subject) {
                Some(name) if a.what == "drain" => format!("{name} ({})", a.subject),
                _ => a.subject.clone(),
            },
            who: a.origin.who(),
        }
    }
}

/// The newest `limit` changes, as the pages list them.
pub fn changes(node: &impl NodeView, limit: usize) -> Vec<Change> {
    let now = Utc::now();
    let activity = node.activity(limit);
    let names = if activity.iter().any(|a| a.what == "drain") {
        node.peers()
            .cluster
            .members
            .into_iter()
            .filter_map(|m| Some((m.peer_id, m.name?)))
            .collect()
    } else {
        HashMap::new()
    };
    activity
        .iter()
        .map(|a| Change::of(a, now, &names))
        .collect()
}

pub async fn view_activity_get<N: NodeView>(State(node): State<N>, lang: Lang) -> ActivityTemplate {
    ActivityTemplate {
        layout: Layout::new(&node, "activity", lang),
        changes: changes(&node, MAX_ACTIVITY),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::sample::{self, EVIL};
    use taskmesh_core::model::Origin;

    fn change(what: &str, subject: &str, detail: &str) -> Activity {
        Activity {
            origin: Origin {
                at: sample::now(),
                node: "lab-1".into(),
                via: "cli".into(),
                client: "10.0.0.5".into(),
                token: None,
            },
            what: what.into(),
            subject: subject.into(),
            detail: detail.into(),
        }
    }

    #[test]
    fn the_page_says_what_was_done_to_what_and_by_whom_escaping_names() {
        let now = sample::now();
        let names = HashMap::from([("12D3KooWx".to_owned(), "lab-2".to_owned())]);
        let html = ActivityTemplate {
            layout: Layout::named("lab-1", "activity"),
            changes: vec![
                Change::of(&change("drain", "12D3KooWx", "drained"), now, &names),
                Change::of(&change("drain", "12D3KooWy", "undrained"), now, &names),
                Change::of(&change("put_task", EVIL, ""), now, &names),
                Change::of(&change("sign_in", "", "link"), now, &names),
            ],
        }
        .render()
        .expect("render");
        assert!(
            html.contains("node drained")
                && html.contains("task saved")
                && html.contains("signed in with a login link"),
            "{html}"
        );
        assert!(html.contains("cli on lab-1 from 10.0.0.5"), "{html}");
        assert!(
            html.contains("lab-2 (12D3KooWx)") && html.contains(">12D3KooWy<"),
            "a drained node by its name where the cluster knows it: {html}"
        );
        assert!(!html.contains(EVIL), "a task name is escaped");
        let empty = ActivityTemplate {
            layout: Layout::named("lab-1", "activity"),
            changes: Vec::new(),
        }
        .render()
        .expect("render");
        assert!(empty.contains("No change made yet."), "{empty}");
    }
}

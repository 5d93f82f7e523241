//! View pieces shared by every page: the layout, moments in time, run summaries and number formats.

use chrono::{DateTime, Utc};

use taskmesh_core::model::{Outcome, Run, Spec, Trigger};

use crate::i18n::Lang;

/// What the base layout needs: the node's name for the header, which nav entry is current, and
/// the page's language.
#[derive(Debug, Clone)]
pub struct Layout {
    pub node_name: String,
    /// "tasks", "settings", "node" or "" (no nav entry is current).
    pub page: &'static str,
    /// Appended to asset URLs so that a new build is fetched despite long cache lifetimes.
    pub assets: &'static str,
    pub lang: Lang,
    /// Since when cron is paused for the cluster (every page says so while it is).
    pub cron_paused: Option<Moment>,
    /// The read-only token the page is shown to (every page says so).
    pub read_only: Option<String>,
}

impl Layout {
    pub fn new(node: &impl crate::NodeView, page: &'static str, lang: Lang) -> Self {
        Self {
            cron_paused: node.cron_paused().map(|at| Moment::new(at, Utc::now())),
            read_only: node.read_only_token(),
            ..Self::named(node.node_settings().name, page).in_lang(lang)
        }
    }

    pub fn named(node_name: impl Into<String>, page: &'static str) -> Self {
        Self {
            node_name: node_name.into(),
            page,
            assets: super::assets::version(),
            lang: Lang::En,
            cron_paused: None,
            read_only: None,
        }
    }

    pub fn in_lang(self, lang: Lang) -> Self {
        Self { lang, ..self }
    }

    /// A template's literal text in the page's language.
    pub fn t(&self, english: &'static str) -> &'static str {
        self.lang.t(english)
    }

    /// Text a view made ("5 min ago", "timed out") in the page's language.
    pub fn tr(&self, text: impl AsRef<str>) -> String {
        self.lang.tr(text.as_ref()).into_owned()
    }
}

/// A point in time, three ways: for machines (`datetime=`), for a tooltip, and relative.
#[derive(Debug, Clone)]
pub struct Moment {
    pub iso: String,
    pub abs: String,
    pub rel: String,
}

impl Moment {
    pub fn new(at: DateTime<Utc>, now: DateTime<Utc>) -> Self {
        Self {
            iso: at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            abs: at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
            rel: relative(at, now),
        }
    }
}

/// This node's name and its live peers', sorted: what a filter by node offers.
pub fn node_names(node: &impl crate::NodeView) -> Vec<String> {
    let peers = node.peers();
    let mut names: Vec<String> = std::iter::once(peers.this.name)
        .chain(peers.peers.into_iter().map(|p| p.announcement.name))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// "just now", "5 s ago", "3 min ago", "2 h ago", "4 d ago", or "in 5 s" for the future.
pub fn relative(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (now - at).num_seconds();
    let (n, future) = (secs.unsigned_abs(), secs < 0);
    let text = match n {
        0..=4 => return "just now".into(),
        5..=59 => format!("{n} s"),
        60..=3599 => format!("{} min", n / 60),
        3600..=86_399 => format!("{} h", n / 3600),
        _ => format!("{} d", n / 86_400),
    };
    if future {
        format!("in {text}")
    } else {
        format!("{text} ago")
    }
}

/// "850 ms", "12.3 s", "4 min 5 s", "2 h 3 min", "3 d 4 h".
pub fn duration(d: chrono::Duration) -> String {
    let ms = d.num_milliseconds().max(0);
    let s = ms / 1000;
    match s {
        0 => format!("{ms} ms"),
        1..=59 => format!("{:.1} s", ms as f64 / 1000.0),
        60..=3599 => format!("{} min {} s", s / 60, s % 60),
        3600..=86_399 => format!("{} h {} min", s / 3600, (s % 3600) / 60),
        _ => format!("{} d {} h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// "512 B", "1.5 KiB", "20.0 MiB".
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A run as lists, rows and the run page show it.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub id: String,
    pub task_id: String,
    pub task_name: String,
    /// The status as the API spells it (`timed_out`); also the badge's CSS class.
    pub status: &'static str,
    /// The status for people (`timed out`).
    pub status_label: String,
    pub trigger: String,
    /// The run whose exit rule (retry, run another task) made this one.
    pub source_run: Option<String>,
    pub attempt: u32,
    pub node: String,
    /// "exit 0", "signal 9 (SIGKILL)", "failed to start: …", or empty while running.
    pub exit: String,
    pub created: Moment,
    pub started: Option<Moment>,
    pub ended: Option<Moment>,
    pub duration: String,
    pub actions: Vec<String>,
    pub active: bool,
    /// The parameters given to this run in place of its task's, as `name = value`.
    pub parameters: Vec<(String, String)>,
}

impl RunSummary {
    pub fn of(run: &Run, now: DateTime<Utc>) -> Self {
        let status = run.status.as_str();
        Self {
            id: run.id.to_string(),
            task_id: run.task_id.to_string(),
            task_name: run.task_name.clone(),
            status,
            status_label: status.replace('_', " "),
            trigger: run.trigger.to_string(),
            source_run: match &run.trigger {
                Trigger::Retry { of, .. } => Some(of.to_string()),
                Trigger::Rule { from } => Some(from.to_string()),
                _ => None,
            },
            attempt: run.attempt,
            node: run.node.clone(),
            exit: exit_text(run),
            created: Moment::new(run.created_at, now),
            started: run.started_at.map(|t| Moment::new(t, now)),
            ended: run.ended_at.map(|t| Moment::new(t, now)),
            duration: run
                .started_at
                .map(|start| duration(run.ended_at.unwrap_or(now) - start))
                .unwrap_or_default(),
            actions: run.actions.clone(),
            active: !run.status.is_final(),
            parameters: run
                .parameters
                .iter()
                .map(|(name, value)| (name.clone(), Spec::parameter_text(value)))
                .collect(),
        }
    }

    /// The first eight hex digits, enough to tell runs apart in a list.
    pub fn short_id(&self) -> &str {
        self.id.get(..8).unwrap_or(&self.id)
    }

    /// When the run last did something: its end, else its start, else its creation.
    pub fn latest(&self) -> &Moment {
        self.ended
            .as_ref()
            .or(self.started.as_ref())
            .unwrap_or(&self.created)
    }
}

fn exit_text(run: &Run) -> String {
    if let Some(code) = run.exit_code {
        return format!("exit {code}");
    }
    if let Some(signal) = run.signal {
        return match nix::sys::signal::Signal::try_from(signal) {
            Ok(name) => format!("signal {signal} ({name})"),
            Err(_) => format!("signal {signal}"),
        };
    }
    match &run.outcome {
        Some(Outcome::FailedToStart { error }) => format!("failed to start: {error}"),
        Some(Outcome::TimedOut) => "timed out".into(),
        Some(Outcome::Lost) => "lost (its node went away)".into(),
        _ => String::new(),
    }
}

#[cfg(test)]
pub(crate) mod sample {
    //! Sample data for the render tests.

    use chrono::{TimeZone, Utc};

    use taskmesh_core::model::{Run, RunId, RunStatus, TaskId, Trigger};

    pub const EVIL: &str = "<script>alert(1)</script>";

    pub fn now() -> chrono::DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 3, 1, 12, 0, 0)
            .single()
            .expect("date")
    }

    pub fn run(task: &str, status: RunStatus) -> Run {
        let mut run = Run::new(
            TaskId(format!("t-{task}")),
            task.to_owned(),
            Trigger::Manual,
            1,
            "node-a".into(),
        );
        run.id = RunId("0123456789abcdef0123456789abcdef".into());
        run.created_at = now() - chrono::Duration::seconds(90);
        run.started_at = Some(now() - chrono::Duration::seconds(80));
        run.status = status;
        if status.is_final() {
            run.ended_at = Some(now() - chrono::Duration::seconds(20));
            run.exit_code = Some(if status == RunStatus::Succeeded { 0 } else { 2 });
        }
        run
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_times_read_naturally() {
        let now = sample::now();
        let cases = [
            (0, "just now"),
            (30, "30 s ago"),
            (125, "2 min ago"),
            (7300, "2 h ago"),
            (200_000, "2 d ago"),
            (-30, "in 30 s"),
        ];
        for (secs, text) in cases {
            assert_eq!(relative(now - chrono::Duration::seconds(secs), now), text);
        }
    }

    #[test]
    fn durations_and_sizes_are_short() {
        assert_eq!(duration(chrono::Duration::milliseconds(850)), "850 ms");
        assert_eq!(duration(chrono::Duration::milliseconds(12_340)), "12.3 s");
        assert_eq!(duration(chrono::Duration::seconds(245)), "4 min 5 s");
        assert_eq!(duration(chrono::Duration::seconds(7380)), "2 h 3 min");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(20 * 1024 * 1024), "20.0 MiB");
    }

    #[test]
    fn exits_are_explained() {
        let mut run = sample::run("x", taskmesh_core::model::RunStatus::Killed);
        run.exit_code = None;
        run.signal = Some(9);
        assert_eq!(
            RunSummary::of(&run, sample::now()).exit,
            "signal 9 (SIGKILL)"
        );
    }
}

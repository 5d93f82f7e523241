//! Task definitions: what to run, where it may run, when, and what its exit codes trigger.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::HumanDuration;
use super::exit::ExitRule;
use super::validate::{FieldError, Invalid, parse_json};

/// A task's stable identity. Names can change; the id never does.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(transparent)]
pub struct TaskId(pub String);

impl TaskId {
    pub fn generate() -> Self {
        Self(format!("t{}", uuid::Uuid::now_v7().simple()))
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A task as the mesh stores and replicates it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Task {
    pub id: TaskId,
    pub name: String,
    /// What the task is for, in the operator's words (shown under its name).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Words to group and find tasks by, e.g. `team=billing` or `nightly`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    pub spec: Spec,
    pub when: When,
    #[serde(default)]
    pub placement: Placement,
    #[serde(default)]
    pub exit_rules: Vec<ExitRule>,
    #[serde(default = "yes")]
    pub enabled: bool,
    pub updated_at: DateTime<Utc>,
}

fn yes() -> bool {
    true
}

/// Named values: what a task offers its runs (`spec.parameters`), and what a run is given in
/// their place ([`Run::parameters`](crate::model::Run::parameters)).
pub type Parameters = BTreeMap<String, serde_json::Value>;

/// The JSON box: what runs, with which parameters, and what the node must fulfil.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// argv, run without a shell. `{{name}}` is replaced by the parameter `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// A script for `sh -c`. Parameters reach it only as environment variables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<String>,
    /// Capabilities the node must fulfil, e.g. "python3" or "gpu=nvidia".
    #[serde(default)]
    pub dependencies: Vec<String>,
    /// Named values, passed as environment variables and `{{name}}` placeholders.
    #[serde(default)]
    pub parameters: BTreeMap<String, serde_json::Value>,
    /// Higher runs first when runs queue for slots.
    #[serde(default)]
    pub priority: i32,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
    /// Run as this user (only when the node runs as root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// What a new run does while an earlier run of the task is unfinished.
    #[serde(default, skip_serializing_if = "Concurrency::is_default")]
    pub concurrency: Concurrency,
    /// What happens to a run lost with its node (which may have done part of its work).
    #[serde(default, skip_serializing_if = "OnLost::is_default")]
    pub on_lost: OnLost,
    /// The signal that asks a run to stop (Stop, its timeout, an always-task moved or removed,
    /// the node shutting down); SIGKILL follows after the grace time.
    #[serde(default, skip_serializing_if = "StopSignal::is_default")]
    pub stop_signal: StopSignal,
    /// How long a run asked to stop may take before SIGKILL; the cluster's `kill_grace` when
    /// left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kill_grace: Option<HumanDuration>,
}

/// The longest [`Spec::kill_grace`]: the leader waits that long, and more, before it moves the
/// always-task of a silent holder.
pub const MAX_KILL_GRACE: std::time::Duration = std::time::Duration::from_secs(3600);

/// The signal sent to a run's process group to ask it to stop (supervisord's `stopsignal`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum StopSignal {
    #[default]
    #[serde(alias = "SIGTERM")]
    Term,
    #[serde(alias = "SIGINT")]
    Int,
    #[serde(alias = "SIGQUIT")]
    Quit,
    #[serde(alias = "SIGHUP")]
    Hup,
    #[serde(alias = "SIGUSR1")]
    Usr1,
    #[serde(alias = "SIGUSR2")]
    Usr2,
}

impl StopSignal {
    fn is_default(&self) -> bool {
        *self == StopSignal::Term
    }

    /// Its name as `kill -l` and the run log say it: `SIGTERM`.
    pub fn name(&self) -> &'static str {
        match self {
            StopSignal::Term => "SIGTERM",
            StopSignal::Int => "SIGINT",
            StopSignal::Quit => "SIGQUIT",
            StopSignal::Hup => "SIGHUP",
            StopSignal::Usr1 => "SIGUSR1",
            StopSignal::Usr2 => "SIGUSR2",
        }
    }
}

/// What happens to a run whose node stopped answering while it was unfinished (or that a
/// restarted node found unfinished): the run is `lost` either way; the choice is whether it is
/// tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnLost {
    /// Retried on another node while attempts remain: at least once, so the task should be
    /// idempotent on its `TASKMESH_SLOT`.
    #[default]
    Retry,
    /// Not retried: the task runs at most once per slot or request.
    Skip,
}

impl OnLost {
    fn is_default(&self) -> bool {
        *self == OnLost::Retry
    }
}

/// What a new run of a task does while an earlier one is queued or running (always-tasks have
/// one process per holder and ignore it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Concurrency {
    /// It does not run; it is recorded as `skipped`, saying why (Nomad's and Dkron's default).
    #[default]
    Forbid,
    /// It runs alongside.
    Allow,
    /// The earlier runs are stopped, and it runs.
    Replace,
}

impl Concurrency {
    fn is_default(&self) -> bool {
        *self == Concurrency::Forbid
    }
}

/// When a task runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "mode", rename_all = "lowercase", deny_unknown_fields)]
pub enum When {
    /// Only by Execute now, the API or the CLI.
    Manual,
    /// A supervised daemon: started at node start, restarted whenever it exits.
    Always,
    /// A crontab entry evaluated in an IANA timezone.
    Cron {
        schedule: String,
        #[serde(default = "utc")]
        timezone: String,
        #[serde(default)]
        catch_up: CatchUp,
    },
}

fn utc() -> String {
    "UTC".to_owned()
}

/// What happens to cron slots missed while no node could fire them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CatchUp {
    /// Run the latest missed slot once (Nomad's behaviour).
    #[default]
    One,
    /// Run every missed slot.
    All,
    /// Run none; the skipped slots are recorded.
    None,
}

/// On how many matching nodes a run happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    #[default]
    One,
    All,
}

/// What a user sends to create or replace a task. `spec` may be a JSON object or the raw text
/// of the JSON box, so that a syntax error can be reported with its line and column.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskInput {
    pub name: String,
    /// What the task is for (at most 2,000 characters).
    #[serde(default)]
    pub description: String,
    /// Words to group and find tasks by: at most 20, each 1 to 64 letters, digits and
    /// `_ . : = / -`, starting with a letter or digit.
    #[serde(default)]
    pub labels: Vec<String>,
    #[serde(default)]
    pub spec: SpecInput,
    pub when: When,
    #[serde(default)]
    pub placement: Placement,
    #[serde(default)]
    pub exit_rules: Vec<ExitRule>,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// When replacing a task: its `updated_at` as the sender read it. Given, the replacement
    /// is refused if the task has changed since (optimistic concurrency); left out, the task
    /// is replaced whatever it is now.
    #[serde(default)]
    pub updated_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum SpecInput {
    Text(String),
    Value(serde_json::Value),
}

/// On the wire `spec` is the [`Spec`] object, or the JSON box's text as one string.
impl utoipa::PartialSchema for SpecInput {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
        use utoipa::openapi::{Ref, RefOr};
        OneOfBuilder::new()
            .item(RefOr::Ref(Ref::from_schema_name(
                <Spec as utoipa::ToSchema>::name(),
            )))
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .description(Some(
                        "the spec as JSON text; a syntax error is reported with its line and column",
                    )),
            )
            .into()
    }
}

impl utoipa::ToSchema for SpecInput {
    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        use utoipa::PartialSchema;
        schemas.push((Spec::name().into_owned(), Spec::schema()));
        Spec::schemas(schemas);
    }
}

impl Default for SpecInput {
    fn default() -> Self {
        Self::Value(serde_json::json!({}))
    }
}

/// A cron task's schedule in its timezone, checked; an error names `when.timezone` or
/// `when.schedule` (with the column).
pub fn parse_schedule(schedule: &str, timezone: &str) -> Result<crate::cron::Schedule, FieldError> {
    if timezone.parse::<chrono_tz::Tz>().is_err() {
        return Err(FieldError::new(
            "when.timezone",
            format!("`{timezone}` is not an IANA timezone like \"UTC\" or \"Europe/Berlin\""),
        ));
    }
    crate::cron::Schedule::parse(schedule, timezone).map_err(|e| {
        let mut err = FieldError::new("when.schedule", e.to_string());
        err.column = e.column();
        err
    })
}

impl TaskInput {
    /// Checks every field and builds the task; errors name the field path.
    pub fn into_task(self, id: TaskId, now: DateTime<Utc>) -> Result<Task, Invalid> {
        let mut errors = Vec::new();
        let name = self.name.trim().to_owned();
        if let Err(message) = check_name(&name) {
            errors.push(FieldError::new("name", message));
        }
        let spec = match self.spec {
            SpecInput::Text(text) => parse_json::<Spec>(&text, "spec"),
            SpecInput::Value(value) => {
                parse_json::<Spec>(&value.to_string(), "spec").map_err(|mut invalid| {
                    // Positions in re-serialised JSON mean nothing to the sender.
                    for e in &mut invalid.errors {
                        e.line = None;
                        e.column = None;
                    }
                    invalid
                })
            }
        };
        let spec = match spec {
            Ok(spec) => {
                errors.extend(spec.check());
                Some(spec)
            }
            Err(invalid) => {
                errors.extend(invalid.errors);
                None
            }
        };
        if let When::Cron {
            schedule, timezone, ..
        } = &self.when
        {
            if let Err(e) = parse_schedule(schedule, timezone) {
                errors.push(e);
            }
        }
        for (i, rule) in self.exit_rules.iter().enumerate() {
            if let Err(message) = rule.action.check() {
                errors.push(FieldError::new(format!("exit_rules[{i}].action"), message));
            }
        }
        let description = self.description.trim().to_owned();
        if description.chars().count() > MAX_DESCRIPTION {
            errors.push(FieldError::new(
                "description",
                format!("at most {MAX_DESCRIPTION} characters"),
            ));
        }
        if description
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t')
        {
            errors.push(FieldError::new(
                "description",
                "control characters other than line breaks and tabs are not allowed",
            ));
        }
        let labels: Vec<String> = self.labels.iter().map(|l| l.trim().to_owned()).collect();
        errors.extend(check_labels(&labels));
        match spec {
            Some(spec) if errors.is_empty() => Ok(Task {
                id,
                name,
                description,
                labels,
                spec,
                when: self.when,
                placement: self.placement,
                exit_rules: self.exit_rules,
                enabled: self.enabled,
                updated_at: now,
            }),
            _ => Err(Invalid::new("the task is not valid", errors)),
        }
    }
}

/// The longest [`Task::description`], in characters.
pub const MAX_DESCRIPTION: usize = 2000;
/// The most [`Task::labels`] a task has.
pub const MAX_LABELS: usize = 20;

/// Each label that is not a word of 1 to 64 letters, digits and `_ . : = / -` starting with a
/// letter or digit, or that repeats one before it; and too many labels.
fn check_labels(labels: &[String]) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if labels.len() > MAX_LABELS {
        errors.push(FieldError::new(
            "labels",
            format!("at most {MAX_LABELS} labels"),
        ));
    }
    for (i, label) in labels.iter().enumerate() {
        let first_ok = label
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric());
        let rest_ok = label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.:=/-".contains(c));
        if !first_ok || !rest_ok || label.len() > 64 {
            errors.push(FieldError::new(
                format!("labels[{i}]"),
                "a label is 1 to 64 letters, digits and `_ . : = / -`, starting with a letter or digit",
            ));
        } else if labels[..i].contains(label) {
            errors.push(FieldError::new(
                format!("labels[{i}]"),
                format!("`{label}` is given twice"),
            ));
        }
    }
    errors
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a task needs a name".into());
    }
    if name.chars().count() > 100 {
        return Err("at most 100 characters".into());
    }
    if name
        .chars()
        .any(|c| c.is_control() || c == '/' || c == '\\')
    {
        return Err("no control characters, `/` or `\\` (the name is used in log paths)".into());
    }
    if name.starts_with('.') {
        return Err("a name cannot start with `.`".into());
    }
    Ok(())
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Spec {
    /// Semantic checks beyond the JSON shape.
    pub fn check(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        match (&self.command, &self.shell) {
            (Some(_), Some(_)) => errors.push(FieldError::new(
                "spec",
                "give either `command` (an argv array) or `shell` (a script for sh -c), not both",
            )),
            (None, None) => errors.push(FieldError::new(
                "spec",
                "say what to run: `command` (an argv array, e.g. [\"echo\", \"hi\"]) or `shell` (a script for sh -c)",
            )),
            (Some(argv), None) => {
                if argv.first().is_none_or(|p| p.trim().is_empty()) {
                    errors.push(FieldError::new(
                        "spec.command",
                        "the first element must name the program",
                    ));
                }
                for (i, arg) in argv.iter().enumerate() {
                    for name in placeholders(arg) {
                        if !self.parameters.contains_key(name) {
                            errors.push(FieldError::new(
                                format!("spec.command[{i}]"),
                                format!("`{{{{{name}}}}}` names no parameter; add it to `parameters`"),
                            ));
                        }
                    }
                }
            }
            (None, Some(script)) => {
                if script.trim().is_empty() {
                    errors.push(FieldError::new("spec.shell", "the script is empty"));
                }
                if let Some(name) = placeholders(script).next() {
                    errors.push(FieldError::new(
                        "spec.shell",
                        format!(
                            "placeholders are not expanded in shell scripts (a value could inject shell code); use \"${name}\" instead of {{{{{name}}}}}"
                        ),
                    ));
                }
            }
        }
        for (i, dep) in self.dependencies.iter().enumerate() {
            if dep.trim().is_empty() || dep.trim() != dep {
                errors.push(FieldError::new(
                    format!("spec.dependencies[{i}]"),
                    "a dependency is a non-empty word without surrounding spaces",
                ));
            }
        }
        for (name, value) in &self.parameters {
            if !is_identifier(name) {
                errors.push(FieldError::new(
                    format!("spec.parameters.{name}"),
                    "parameter names are letters, digits and `_` (they become environment variables)",
                ));
            }
            if value.is_object() || value.is_array() {
                errors.push(FieldError::new(
                    format!("spec.parameters.{name}"),
                    "a parameter is a string, number or boolean",
                ));
            }
        }
        for name in self.env.keys() {
            if !is_identifier(name) {
                errors.push(FieldError::new(
                    format!("spec.env.{name}"),
                    "environment variable names are letters, digits and `_`",
                ));
            }
        }
        if let Some(timeout) = self.timeout {
            if timeout.0.is_zero() {
                errors.push(FieldError::new(
                    "spec.timeout",
                    "a timeout must be longer than 0s",
                ));
            }
        }
        if let Some(grace) = self.kill_grace {
            if grace.0 > MAX_KILL_GRACE {
                errors.push(FieldError::new(
                    "spec.kill_grace",
                    "at most 1h (a stopped run is killed after it)",
                ));
            }
        }
        if let Some(user) = &self.user {
            if user.trim().is_empty() {
                errors.push(FieldError::new(
                    "spec.user",
                    "leave `user` out to run as the node's user",
                ));
            }
        }
        errors
    }

    /// The spec a run with `given` parameters runs: the task's own, each one `given` names
    /// replaced. A run may change only what the task offers: a name the task does not declare
    /// is refused (a run cannot set other environment variables), and so is a value that is
    /// not a string, number or boolean. Each error says which parameter, under `parameters`.
    pub fn with_parameters(&self, given: &Parameters) -> Result<Cow<'_, Spec>, Vec<FieldError>> {
        if given.is_empty() {
            return Ok(Cow::Borrowed(self));
        }
        let mut errors = Vec::new();
        for (name, value) in given {
            let path = format!("parameters.{name}");
            if !self.parameters.contains_key(name) {
                let offered: Vec<&str> = self.parameters.keys().map(String::as_str).collect();
                errors.push(FieldError::new(
                    path,
                    match offered.is_empty() {
                        true => "the task has no parameters".to_owned(),
                        false => format!(
                            "the task has no such parameter (it has {})",
                            offered.join(", ")
                        ),
                    },
                ));
            } else if value.is_object() || value.is_array() {
                errors.push(FieldError::new(
                    path,
                    "a parameter is a string, number or boolean",
                ));
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut spec = self.clone();
        spec.parameters.extend(
            given
                .iter()
                .map(|(name, value)| (name.clone(), value.clone())),
        );
        Ok(Cow::Owned(spec))
    }

    /// A parameter's value as the process sees it.
    pub fn parameter_text(value: &serde_json::Value) -> String {
        match value {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => String::new(),
            other => other.to_string(),
        }
    }

    /// argv with `{{name}}` placeholders replaced. Each element stays one argument, whatever the
    /// value contains, because no shell ever sees it.
    pub fn expanded_argv(&self) -> Option<Vec<String>> {
        let argv = self.command.as_ref()?;
        Some(
            argv.iter()
                .map(|arg| {
                    let mut out = arg.clone();
                    for (name, value) in &self.parameters {
                        out = out.replace(&format!("{{{{{name}}}}}"), &Self::parameter_text(value));
                    }
                    out
                })
                .collect(),
        )
    }
}

/// Names inside `{{…}}` in a string.
fn placeholders(s: &str) -> impl Iterator<Item = &str> {
    s.split("{{")
        .skip(1)
        .filter_map(|rest| rest.split_once("}}").map(|(name, _)| name.trim()))
}

impl Task {
    /// How long a run of this task asked to stop may take before SIGKILL: its own
    /// `kill_grace`, else the cluster's (`cluster`).
    pub fn kill_grace(&self, cluster: std::time::Duration) -> std::time::Duration {
        self.spec.kill_grace.map_or(cluster, |g| g.0)
    }

    /// The exit rules whose target does not exist, one error each at the rule: a notify rule's
    /// channel that is not among `channels` (the settings'), a run rule's task that
    /// `task_exists` does not know (the task itself always counts).
    pub fn unknown_targets(
        &self,
        channels: &[String],
        task_exists: impl Fn(&str) -> bool,
    ) -> Vec<FieldError> {
        use super::exit::Action;
        let mut errors = Vec::new();
        for (i, rule) in self.exit_rules.iter().enumerate() {
            match &rule.action {
                Action::Notify { channel } if !channels.contains(channel) => {
                    let known = match channels {
                        [] => "the settings define no channel yet".to_owned(),
                        _ => format!("the settings define {}", channels.join(", ")),
                    };
                    errors.push(FieldError::new(
                        format!("exit_rules[{i}].channel"),
                        format!("no notification channel is called `{channel}`; {known}"),
                    ));
                }
                Action::Run { task } if *task != self.name && !task_exists(task) => {
                    errors.push(FieldError::new(
                        format!("exit_rules[{i}].task"),
                        format!("no task is called `{task}`"),
                    ));
                }
                _ => {}
            }
        }
        errors
    }

    /// A manual task running `true`, for the tests of every layer.
    pub fn sample(id: &str, name: &str) -> Task {
        Task {
            id: TaskId(id.into()),
            name: name.into(),
            description: String::new(),
            labels: Vec::new(),
            spec: Spec {
                shell: Some("true".into()),
                ..Default::default()
            },
            when: When::Manual,
            placement: Placement::One,
            exit_rules: vec![],
            enabled: true,
            updated_at: Utc::now(),
        }
    }

    /// Whether this is a supervised daemon ("always").
    pub fn is_always(&self) -> bool {
        matches!(self.when, When::Always)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(json: serde_json::Value) -> Result<Task, Invalid> {
        let input: TaskInput = serde_json::from_value(json).expect("input shape");
        input.into_task(TaskId("t1".into()), Utc::now())
    }

    #[test]
    fn a_run_changes_only_the_parameters_its_task_offers() {
        let task = input(serde_json::json!({
            "name": "deploy",
            "spec": {"command": ["deploy", "--to", "{{target}}", "{{version}}"],
                     "parameters": {"target": "staging", "version": "1.0"}},
            "when": {"mode": "manual"},
        }))
        .expect("valid");
        let given = BTreeMap::from([("version".to_owned(), serde_json::json!("1.2; rm -rf /"))]);
        let spec = task.spec.with_parameters(&given).expect("offered");
        assert_eq!(
            spec.expanded_argv().expect("argv"),
            ["deploy", "--to", "staging", "1.2; rm -rf /"],
            "one argument, whatever it holds; the others keep the task's value"
        );
        assert_eq!(
            *task.spec.with_parameters(&BTreeMap::new()).expect("none"),
            task.spec
        );
        let given = BTreeMap::from([
            ("LD_PRELOAD".to_owned(), serde_json::json!("/tmp/evil.so")),
            ("target".to_owned(), serde_json::json!(["a", "b"])),
        ]);
        let errors = task.spec.with_parameters(&given).expect_err("refused");
        let said: Vec<(&str, &str)> = errors
            .iter()
            .map(|e| (e.path.as_str(), e.message.as_str()))
            .collect();
        assert_eq!(
            said,
            [
                (
                    "parameters.LD_PRELOAD",
                    "the task has no such parameter (it has target, version)"
                ),
                (
                    "parameters.target",
                    "a parameter is a string, number or boolean"
                ),
            ]
        );
    }

    fn paths(invalid: Invalid) -> Vec<String> {
        invalid.errors.into_iter().map(|e| e.path).collect()
    }

    #[test]
    fn a_valid_task_builds() {
        let task = input(serde_json::json!({
            "name": "backup",
            "spec": {"command": ["tar", "czf", "{{dest}}"], "parameters": {"dest": "/tmp/x; rm -rf /"}, "priority": 3},
            "when": {"mode": "cron", "schedule": "*/5 * * * *", "timezone": "Europe/Berlin"},
            "exit_rules": [{"on": "!0", "action": "retry"}]
        }))
        .expect("valid");
        assert_eq!(task.spec.priority, 3);
        assert_eq!(
            task.spec.expanded_argv().expect("argv"),
            vec!["tar", "czf", "/tmp/x; rm -rf /"]
        );
    }

    #[test]
    fn errors_name_the_field_path() {
        let cases = [
            (
                serde_json::json!({"name": "", "spec": {"shell": "x"}, "when": {"mode": "manual"}}),
                "name",
            ),
            (
                serde_json::json!({"name": "a", "spec": {}, "when": {"mode": "manual"}}),
                "spec",
            ),
            (
                serde_json::json!({"name": "a", "spec": {"command": ["x", "{{nope}}"]}, "when": {"mode": "manual"}}),
                "spec.command[1]",
            ),
            (
                serde_json::json!({"name": "a", "spec": {"shell": "echo {{x}}", "parameters": {"x": 1}}, "when": {"mode": "manual"}}),
                "spec.shell",
            ),
            (
                serde_json::json!({"name": "a", "spec": {"shell": "x", "dependencies": ["ok", 5]}, "when": {"mode": "manual"}}),
                "spec.dependencies[1]",
            ),
            (
                serde_json::json!({"name": "a", "spec": {"shell": "x", "parameters": {"bad-name": 1}}, "when": {"mode": "manual"}}),
                "spec.parameters.bad-name",
            ),
            (
                serde_json::json!({"name": "a", "spec": {"shell": "x", "timeout": "soon"}, "when": {"mode": "manual"}}),
                "spec.timeout",
            ),
            (
                serde_json::json!({"name": "a", "spec": {"shell": "x", "colour": 1}, "when": {"mode": "manual"}}),
                "spec.colour",
            ),
            (
                serde_json::json!({"name": "a", "spec": {"shell": "x"}, "when": {"mode": "cron", "schedule": "61 * * * *"}}),
                "when.schedule",
            ),
            (
                serde_json::json!({"name": "a", "spec": {"shell": "x"}, "when": {"mode": "cron", "schedule": "* * * * *", "timezone": "Mars/Base"}}),
                "when.timezone",
            ),
            (
                serde_json::json!({"name": "a/b", "spec": {"shell": "x"}, "when": {"mode": "manual"}}),
                "name",
            ),
            (
                serde_json::json!({"name": "a", "spec": {"shell": "x", "stop_signal": "KILL"}, "when": {"mode": "manual"}}),
                "spec.stop_signal",
            ),
            (
                serde_json::json!({"name": "a", "labels": ["ok", "two words"], "spec": {"shell": "x"}, "when": {"mode": "manual"}}),
                "labels[1]",
            ),
            (
                serde_json::json!({"name": "a", "labels": ["team=x", "team=x"], "spec": {"shell": "x"}, "when": {"mode": "manual"}}),
                "labels[1]",
            ),
            (
                serde_json::json!({"name": "a", "labels": ["-x"], "spec": {"shell": "x"}, "when": {"mode": "manual"}}),
                "labels[0]",
            ),
            (
                serde_json::json!({"name": "a", "description": "x".repeat(2001), "spec": {"shell": "x"}, "when": {"mode": "manual"}}),
                "description",
            ),
            (
                serde_json::json!({"name": "a", "spec": {"shell": "x", "kill_grace": "2h"}, "when": {"mode": "manual"}}),
                "spec.kill_grace",
            ),
        ];
        for (json, path) in cases {
            let err = input(json.clone()).expect_err(&json.to_string());
            assert!(
                paths(err.clone()).contains(&path.to_string()),
                "{json}: {err:?}"
            );
        }
    }

    #[test]
    fn a_description_and_labels_are_kept_trimmed_and_left_out_when_empty() {
        let task = input(serde_json::json!({"name": "a", "description": "  Backs up the wiki.\nAsk ops.  ",
            "labels": [" team=ops ", "nightly"], "spec": {"shell": "x"}, "when": {"mode": "manual"}}))
        .expect("valid");
        assert_eq!(task.description, "Backs up the wiki.\nAsk ops.");
        assert_eq!(task.labels, ["team=ops", "nightly"]);
        let plain = input(
            serde_json::json!({"name": "a", "spec": {"shell": "x"}, "when": {"mode": "manual"}}),
        )
        .expect("valid");
        let json = serde_json::to_value(&plain).expect("json");
        assert!(
            json.get("description").is_none() && json.get("labels").is_none(),
            "{json}"
        );
    }

    #[test]
    fn a_stop_signal_is_named_with_or_without_sig_and_a_grace_falls_back_to_the_clusters() {
        let task = |spec: serde_json::Value| {
            input(serde_json::json!({"name": "a", "spec": spec, "when": {"mode": "manual"}}))
                .expect("valid")
        };
        let quit =
            task(serde_json::json!({"shell": "x", "stop_signal": "SIGQUIT", "kill_grace": "1m"}));
        assert_eq!(quit.spec.stop_signal, StopSignal::Quit);
        assert_eq!(quit.spec.stop_signal.name(), "SIGQUIT");
        let cluster = std::time::Duration::from_secs(5);
        assert_eq!(quit.kill_grace(cluster), std::time::Duration::from_secs(60));
        let plain = task(serde_json::json!({"shell": "x", "stop_signal": "INT"}));
        assert_eq!(plain.spec.stop_signal, StopSignal::Int);
        assert_eq!(plain.kill_grace(cluster), cluster);
        // The defaults are not written out.
        let json =
            serde_json::to_value(&task(serde_json::json!({"shell": "x"})).spec).expect("json");
        assert!(
            json.get("stop_signal").is_none() && json.get("kill_grace").is_none(),
            "{json}"
        );
    }

    #[test]
    fn spec_text_errors_carry_line_and_column() {
        let err = input(serde_json::json!({
            "name": "a",
            "spec": "{\n  \"shell\": \"x\",\n  \"priority\": \"high\"\n}",
            "when": {"mode": "manual"}
        }))
        .expect_err("priority is a number");
        let e = &err.errors[0];
        assert_eq!(e.path, "spec.priority");
        assert_eq!(e.line, Some(3));

        let err = input(serde_json::json!({
            "name": "a",
            "spec": "{\n  \"shell\": \"x\",,\n}",
            "when": {"mode": "manual"}
        }))
        .expect_err("syntax error");
        assert_eq!(err.errors[0].line, Some(2));
        assert!(err.errors[0].column.is_some());
    }
}

//! Task definitions as files: `task export` writes every task as the JSON a user edits, and
//! `task apply` makes the cluster's tasks match such a file (create what is new, replace what
//! differs, leave what is equal, and with `--prune` remove what the file does not name), as
//! Dkron's and Nomad's users keep their jobs in files and apply them.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use chrono::Utc;
use reqwest::Method;
use serde_json::Value;

use super::{Api, ClientError, ExitCode, editable, enc, read};
use crate::cli::Remote;
use crate::model::{Action, FieldError, Invalid, Task, TaskId, TaskInput, parse_json};
use taskmesh_core::view::TaskListItem;

/// Every task, by name, as `task apply` takes it back.
pub(super) async fn export(remote: &Remote, out: Option<&Path>) -> Result<ExitCode, ClientError> {
    let api = Api::new(remote)?;
    let mut tasks = current(&api).await?;
    tasks.sort_by(|a, b| a.name.cmp(&b.name));
    let text = serde_json::to_string_pretty(&tasks.iter().map(editable).collect::<Vec<_>>())
        .unwrap_or_default()
        + "\n";
    match out {
        Some(path) => std::fs::write(path, text).map_err(|source| ClientError::Io {
            context: format!("writing {}", path.display()),
            source,
        })?,
        None => print!("{text}"),
    }
    Ok(0)
}

/// What `apply` does with one task.
#[derive(Debug, PartialEq)]
enum Step {
    Create(Value),
    /// Replace the task of this id with `body`, which carries the task's `updated_at` as read,
    /// so that a change made meanwhile is not overwritten.
    Replace {
        id: TaskId,
        body: Value,
    },
    Remove {
        id: TaskId,
        name: String,
    },
}

/// Makes the cluster's tasks what `file` says (a JSON list of tasks, or one task).
pub(super) async fn apply(
    remote: &Remote,
    file: &Path,
    prune: bool,
    dry_run: bool,
) -> Result<ExitCode, ClientError> {
    let wanted = read_file(file)?;
    let api = Api::new(remote)?;
    let now = current(&api).await?;
    let (steps, unchanged) = plan(&wanted, &now, prune);
    for step in &steps {
        println!("{}", said(step, dry_run));
    }
    let count = |kind: fn(&Step) -> bool| steps.iter().filter(|s| kind(s)).count();
    let (created, replaced, removed) = (
        count(|s| matches!(s, Step::Create(_))),
        count(|s| matches!(s, Step::Replace { .. })),
        count(|s| matches!(s, Step::Remove { .. })),
    );
    if !dry_run {
        for step in &steps {
            run(&api, step).await.map_err(|e| match e {
                ClientError::Api(message) => ClientError::Api(format!(
                    "{message}\n(applying stopped at {}; the steps above it were done)",
                    name_of(step)
                )),
                other => other,
            })?;
        }
    }
    let verb = if dry_run { "would be" } else { "were" };
    println!(
        "{created} created, {replaced} changed, {removed} removed, {unchanged} unchanged ({verb} applied)"
    );
    Ok(0)
}

/// The file's tasks, checked as the node checks them (each error under `[i]`, the task's
/// place in the list); names must be unique.
fn read_file(file: &Path) -> Result<Vec<(TaskInput, Value)>, ClientError> {
    let text = read(file)?;
    let refused = |invalid: Invalid| {
        let details: Vec<String> = invalid.errors.iter().map(|e| format!("\n  {e}")).collect();
        ClientError::Usage(format!(
            "{}: {}{}",
            file.display(),
            invalid.message,
            details.concat()
        ))
    };
    let list = match parse_json::<Value>(&text, "").map_err(refused)? {
        Value::Array(list) => list,
        one @ Value::Object(_) => vec![one],
        _ => {
            return Err(ClientError::Usage(format!(
                "{}: a list of tasks (as `task export` writes), or one task",
                file.display()
            )));
        }
    };
    let mut errors = Vec::new();
    let mut tasks = Vec::new();
    let mut seen = HashMap::new();
    for (i, value) in list.into_iter().enumerate() {
        let input = match parse_json::<TaskInput>(&value.to_string(), &format!("[{i}]")) {
            Ok(input) => input,
            Err(invalid) => {
                errors.extend(invalid.errors);
                continue;
            }
        };
        // The checks the node makes, with what it fills in, for the comparison below.
        match input.clone().into_task(TaskId(String::new()), Utc::now()) {
            Ok(task) => {
                if let Some(first) = seen.insert(task.name.clone(), i) {
                    errors.push(FieldError::new(
                        format!("[{i}].name"),
                        format!("`{}` is also the name of [{first}]", task.name),
                    ));
                }
                tasks.push((input, editable(&task)));
            }
            Err(invalid) => errors.extend(
                invalid
                    .errors
                    .into_iter()
                    .map(|e| FieldError::new(format!("[{i}].{}", e.path), e.message)),
            ),
        }
    }
    match errors.is_empty() {
        true => Ok(tasks),
        false => Err(refused(Invalid::new("nothing was applied", errors))),
    }
}

/// The steps that make `now` into `wanted`, and how many tasks are already as wanted. New
/// tasks are created in an order that has the task a `run` rule names made before the rule.
fn plan(wanted: &[(TaskInput, Value)], now: &[Task], prune: bool) -> (Vec<Step>, usize) {
    let by_name: HashMap<&str, &Task> = now.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut steps = Vec::new();
    let mut new = BTreeMap::new();
    let mut unchanged = 0;
    for (input, body) in wanted {
        let name = input.name.trim();
        match by_name.get(name) {
            None => {
                new.insert(name.to_owned(), (input, body.clone()));
            }
            Some(task) if editable(task) == *body => unchanged += 1,
            Some(task) => {
                let mut body = body.clone();
                body["updated_at"] = serde_json::json!(task.updated_at);
                steps.push(Step::Replace {
                    id: task.id.clone(),
                    body,
                });
            }
        }
    }
    // Each new task after the new tasks its rules run.
    let mut made: Vec<String> = Vec::new();
    while !new.is_empty() {
        let ready: Vec<String> = new
            .iter()
            .filter(|(_, (input, _))| {
                input.exit_rules.iter().all(|rule| match &rule.action {
                    Action::Run { task } => !new.contains_key(task) || made.contains(task),
                    _ => true,
                })
            })
            .map(|(name, _)| name.clone())
            .collect();
        // A cycle of new tasks: the node refuses the rule whose target does not exist yet.
        let ready = match ready.is_empty() {
            true => new.keys().cloned().collect(),
            false => ready,
        };
        for name in ready {
            if let Some((_, body)) = new.remove(&name) {
                steps.insert(made.len(), Step::Create(body));
                made.push(name);
            }
        }
    }
    if prune {
        let named: Vec<&str> = wanted.iter().map(|(input, _)| input.name.trim()).collect();
        for task in now {
            if !named.contains(&task.name.as_str()) {
                steps.push(Step::Remove {
                    id: task.id.clone(),
                    name: task.name.clone(),
                });
            }
        }
    }
    (steps, unchanged)
}

fn name_of(step: &Step) -> String {
    match step {
        Step::Create(body) | Step::Replace { body, .. } => {
            body["name"].as_str().unwrap_or_default().to_owned()
        }
        Step::Remove { name, .. } => name.clone(),
    }
}

fn said(step: &Step, dry_run: bool) -> String {
    let verb = match (step, dry_run) {
        (Step::Create(_), false) => "create",
        (Step::Replace { .. }, false) => "change",
        (Step::Remove { .. }, false) => "remove",
        (Step::Create(_), true) => "would create",
        (Step::Replace { .. }, true) => "would change",
        (Step::Remove { .. }, true) => "would remove",
    };
    format!("{verb} {}", name_of(step))
}

async fn run(api: &Api, step: &Step) -> Result<(), ClientError> {
    let _: Task = match step {
        Step::Create(body) => {
            api.call(Method::POST, "/api/tasks", Some(body.clone()))
                .await?
        }
        Step::Replace { id, body } => {
            api.call(
                Method::PUT,
                &format!("/api/tasks/{}", enc(&id.0)),
                Some(body.clone()),
            )
            .await?
        }
        Step::Remove { id, .. } => {
            api.call(Method::DELETE, &format!("/api/tasks/{}", enc(&id.0)), None)
                .await?
        }
    };
    Ok(())
}

/// Every task the cluster has.
async fn current(api: &Api) -> Result<Vec<Task>, ClientError> {
    let items: Vec<TaskListItem> = api.get_all("/api/tasks").await?;
    Ok(items.into_iter().map(|item| item.task).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(json: Value) -> (TaskInput, Value) {
        let input: TaskInput = serde_json::from_value(json).expect("input");
        let task = input
            .clone()
            .into_task(TaskId(String::new()), Utc::now())
            .expect("valid");
        (input, editable(&task))
    }

    fn saved(json: Value, id: &str) -> Task {
        let input: TaskInput = serde_json::from_value(json).expect("input");
        input
            .into_task(TaskId(id.into()), Utc::now())
            .expect("valid")
    }

    #[test]
    fn a_plan_creates_targets_first_changes_what_differs_and_prunes_only_when_asked() {
        let manual = |name: &str, cmd: &str| serde_json::json!({"name": name, "spec": {"command": [cmd]}, "when": {"mode": "manual"}});
        let mut chained = manual("a-first", "true");
        chained["exit_rules"] = serde_json::json!([{"on": "0", "action": "run", "task": "z-last"}]);
        let wanted = [
            input(chained),
            input(manual("z-last", "true")),
            input(manual("same", "true")),
            input(manual("edited", "false")),
        ];
        let now = [
            saved(manual("same", "true"), "t1"),
            saved(manual("edited", "true"), "t2"),
            saved(manual("gone", "true"), "t3"),
        ];
        let (steps, unchanged) = plan(&wanted, &now, false);
        let lines: Vec<String> = steps.iter().map(|s| said(s, false)).collect();
        assert_eq!(lines, ["create z-last", "create a-first", "change edited"]);
        assert_eq!(unchanged, 1);
        let Step::Replace { id, body } = &steps[2] else {
            panic!("{steps:?}")
        };
        assert_eq!(id.0, "t2");
        assert_eq!(body["updated_at"], serde_json::json!(now[1].updated_at));
        let (steps, _) = plan(&wanted, &now, true);
        assert_eq!(
            steps.last().map(|s| said(s, true)).as_deref(),
            Some("would remove gone")
        );
    }
}

//! A task as the API reads it (`POST /api/tasks`, `PUT /api/tasks/{id}`): JSON into
//! `TaskInput`, then `into_task`, which checks it. A task that passes reads back from its own
//! JSON unchanged (the replicated state and the tables keep tasks as JSON).
#![no_main]

use chrono::{DateTime, Utc};
use libfuzzer_sys::fuzz_target;
use taskmesh_core::model::{Task, TaskId, TaskInput, parse_json};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(input) = parse_json::<TaskInput>(text, "") else {
        return;
    };
    let now: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().expect("a valid instant");
    let Ok(task) = input.into_task(TaskId("t".into()), now) else {
        return;
    };
    let json = serde_json::to_string(&task).expect("a task serialises");
    let back: Task = serde_json::from_str(&json).expect("a task reads back");
    assert_eq!(back, task, "a task changed on its way through JSON: {json}");
});

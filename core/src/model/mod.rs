//! The data the node works on: tasks, runs, settings, and how user input becomes them.

mod activity;
mod duration;
mod exit;
mod run;
mod settings;
mod task;
mod token;
mod validate;

pub use activity::{AccessEvent, Activity, MAX_ACTIVITY, Origin};
pub use duration::HumanDuration;
pub use exit::{Action, ExitMatch, ExitRule, Outcome, matching_actions};
pub use run::{Run, RunId, RunStatus, Trigger};
pub use settings::{
    ClusterIdentity, ClusterSettings, ExportOrigin, MASK, MysqlSettings, NOTIFY_PLACEHOLDERS,
    NodeSettings, NotifyChannel, NotifySettings, Settings, SlackSettings, TelegramSettings,
    hostname,
};
pub use task::{
    CatchUp, Concurrency, MAX_KILL_GRACE, OnLost, Parameters, Placement, Spec, StopSignal, Task,
    TaskId, TaskInput, When, parse_schedule,
};
pub use token::{MAX_TOKENS, NamedToken, TokenInfo};
pub use validate::{FieldError, Invalid, parse_json};

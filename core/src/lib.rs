//! taskmesh's vocabulary, shared by every layer: tasks, runs and settings ([`model`]), cron
//! schedules ([`cron`]), the choice of a node for a run ([`placement`]), what nodes announce
//! ([`peer`]), the status views the UI and API show ([`view`]), run events ([`events`]) and
//! error text. Pure data and pure functions: nothing here does I/O on its own except reading
//! the clock and the host name where a function says so. It depends on no other taskmesh crate.

pub mod backoff;
pub mod cluster_key;
pub mod cron;
pub mod cron_reading;
pub mod error_text;
pub mod events;
pub mod model;
pub mod peer;
pub mod placement;
pub mod view;

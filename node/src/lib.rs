//! taskmesh: runs tasks across a mesh of equal machines. This crate is one node: its layers
//! (store, consensus, executor, scheduler, api, ui, cli) and the [`run`] entry point.

pub mod api;
pub mod cli;
pub mod config;
pub mod consensus;
pub mod error_text;
pub mod events;
pub mod executor;
pub mod ledger;
pub mod logs;
pub mod mesh;
pub mod model;
pub mod notify;
pub mod scheduler;
pub mod service;
pub mod sink;
pub mod store;
pub mod ui;

pub use config::Config;
pub use service::{NodeError, NodeHandle, Started, run, start};

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

/// The Tokio runtime a node runs on: one worker thread (`TOKIO_WORKER_THREADS` sets another
/// number), plus the blocking pool for database commits and file reads.
///
/// A node's async work is small steps (a message, a log line, a request) passed between tasks,
/// and its heavy parts (fsyncs, spawns, reads) run on their own threads. With one worker, a
/// wake-up is a queue push instead of a futex call to another thread: on the 2-core testnet,
/// *Execute now* on a follower reached the remote process about 0.5 ms sooner than with a worker
/// per core (docs/performance.md, session 6).
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        builder.worker_threads(1);
    }
    builder.enable_all().build()
}

//! taskmesh: runs tasks across a mesh of equal machines. This crate is the node: it wires the
//! layers below it (the crates `taskmesh-core`, `-mesh`, `-store`, `-consensus` and `-ui`,
//! re-exported here under their layer names) to its own (scheduler, executor, ledger, logs, metrics,
//! notify, sink, api, cli) and holds the [`run`] entry point. docs/ARCHITECTURE.md has the map.

pub mod api;
pub mod caller;
pub mod cli;
pub mod cluster_key;
pub mod config;
pub mod executor;
pub mod handle;
pub mod history;
pub mod http_client;
#[cfg(test)]
mod layers;
pub mod ledger;
pub mod logs;
pub mod metrics;
pub mod notify;
pub mod process_setup;
pub mod reports;
pub mod scheduler;
pub mod server;
pub mod service;
pub mod sink;

pub use taskmesh_consensus as consensus;
pub use taskmesh_core::{error_text, events, model};
pub use taskmesh_mesh as mesh;
pub use taskmesh_store as store;
pub use taskmesh_store::private_files;
pub use taskmesh_ui as ui;

pub use config::Config;
pub use handle::{NodeError, NodeHandle};
pub use server::{Started, run, start};

/// The Tokio runtime a node runs on: one worker thread (`TOKIO_WORKER_THREADS` sets another
/// number), plus the blocking pool for database commits and file reads.
///
/// A node's async work is small steps (a message, a log line, a request) passed between tasks,
/// and its heavy parts (fsyncs, spawns, reads) run on their own threads. With one worker, a
/// wake-up is a queue push instead of a futex call to another thread: on the 2-core testnet,
/// *Execute now* on a follower reached the remote process about 0.5 ms sooner than with a worker
/// per core (docs/performance.md, 2026-11-28).
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let setting = std::env::var("TOKIO_WORKER_THREADS").ok();
    let workers = worker_threads(setting.as_deref())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
}

/// The number of worker threads `TOKIO_WORKER_THREADS` asks for (1 without it).
fn worker_threads(setting: Option<&str>) -> Result<usize, String> {
    let Some(text) = setting else {
        return Ok(1);
    };
    match text.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!(
            "TOKIO_WORKER_THREADS is `{text}`: it takes a number of threads, 1 or more"
        )),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn worker_threads_default_to_one_and_refuse_what_is_not_a_count() {
        assert_eq!(super::worker_threads(None), Ok(1));
        assert_eq!(super::worker_threads(Some("4")), Ok(4));
        for bad in ["0", "two", "-1", ""] {
            let error = super::worker_threads(Some(bad)).expect_err(bad);
            assert!(error.contains(&format!("`{bad}`")), "{error}");
        }
    }
}

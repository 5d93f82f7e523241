//! Who is asking, for the request being served: the API's authentication sets it around each
//! request it lets through, and the node handle reads it to name an operator's change
//! ([`Change::By`](crate::consensus::Change)). A task-local, so that no handler has to pass it on.

use std::future::Future;

/// How a request was authenticated, and from where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// `ui` (a browser session), `cli` (the taskmesh command) or `api` (the access token).
    pub via: &'static str,
    pub client: String,
    /// The named access token it came with (or that made its browser session); `None` for the
    /// node's own token.
    pub token: Option<String>,
    /// It may only read (a read-only named token).
    pub read_only: bool,
}

tokio::task_local! {
    static CALLER: Caller;
}

/// Runs `f` with `caller` as the one asking.
pub async fn scope<F: Future>(caller: Caller, f: F) -> F::Output {
    CALLER.scope(caller, f).await
}

/// The caller of the request this task serves, if it serves one.
pub fn current() -> Option<Caller> {
    CALLER.try_with(Clone::clone).ok()
}

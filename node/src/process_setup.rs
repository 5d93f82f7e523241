//! The node's own process: an open-file limit raised once at start, high enough for its
//! connection caps.
//!
//! The soft limit goes up to [`NOFILE_WANTED`] (or the hard limit, if lower), so that many
//! connections and runs cannot exhaust descriptors at the usual 1,024: the web server holds up
//! to `max_connections` (4,096 by default), the mesh a few hundred. Tasks inherit the raised
//! soft limit, as supervisord's children inherit its `minfds`.
//!
//! Two things are deliberately not done here. The node's umask is left alone: every file it
//! makes is created with an explicit private mode (`private_files`, and the few files other
//! modules open with `.mode(0o600)`), so tasks inherit the umask the node was started with.
//! And nothing is put back in each child before exec: a `pre_exec` hook makes the standard
//! library `fork()` the node for every run instead of using `posix_spawn`, which measured
//! 1.7-3.5 ms instead of 0.14-0.2 ms per spawn for a process of a node's size
//! (docs/performance.md, "Spawning").

use std::sync::Once;

use nix::sys::resource::{Resource, getrlimit, setrlimit};
use tracing::{info, warn};

/// The open-file soft limit the node wants: the web server's default cap, the mesh's caps,
/// the runs' pipes and the database, with room to spare.
pub const NOFILE_WANTED: u64 = 16_384;

/// Done once per process, by the first node started in it.
static PREPARED: Once = Once::new();

/// Raises the open-file soft limit; the first call in a process does it and logs it, later
/// calls (several in-process nodes in a test) change nothing.
pub fn prepare() {
    PREPARED.call_once(|| {
        if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
            let wanted = wanted_soft_limit(soft, hard);
            if wanted > soft {
                match setrlimit(Resource::RLIMIT_NOFILE, wanted, hard) {
                    Ok(()) => info!(from = soft, to = wanted, "open-file limit raised"),
                    Err(e) => {
                        warn!(soft, hard, error = %e, "raising the open-file limit failed; keeping it")
                    }
                }
            }
        }
    });
}

/// The soft limit a node wants, given the limits it was started with.
pub fn wanted_soft_limit(soft: u64, hard: u64) -> u64 {
    soft.max(NOFILE_WANTED.min(hard))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_goes_up_to_what_is_wanted_within_the_hard_limit() {
        let cases = [
            (1024, 1_048_576, NOFILE_WANTED),
            (1024, 4096, 4096),
            (1024, 1024, 1024),
            (65_536, 1_048_576, 65_536),
        ];
        for (soft, hard, want) in cases {
            assert_eq!(wanted_soft_limit(soft, hard), want, "{soft} / {hard}");
        }
        prepare();
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("limit");
        assert!(soft >= NOFILE_WANTED.min(hard), "{soft} / {hard}");
    }
}

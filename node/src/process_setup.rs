//! The node's own process: a private umask and a raised open-file limit, set once at start, and
//! what the processes it starts get back (the umask and limit the node was started with).
//!
//! The umask (0o077 added to the inherited one) makes every file the node and its libraries
//! create (the redb database, the Raft log, logs, keys) private to its user, without relying on
//! each `open` to say so. The open-file soft limit goes up to the hard limit, so that many
//! connections and runs cannot exhaust descriptors at the usual 1,024. Tasks behave as they
//! would without taskmesh: the executor puts both back in each child before it execs
//! ([`Inherited::restore_in_child`]); programs that use `select()` expect the 1,024.

use std::sync::OnceLock;

use nix::sys::resource::{Resource, getrlimit, setrlimit};
use nix::sys::stat::{Mode, umask};
use tracing::{info, warn};

/// What the node process was started with, before [`prepare`] changed it.
#[derive(Debug, Clone, Copy)]
pub struct Inherited {
    /// The umask the node was started with.
    pub umask: Mode,
    /// The open-file limits (soft, hard) the node was started with; `None` if unreadable.
    pub nofile: Option<(u64, u64)>,
}

static INHERITED: OnceLock<Inherited> = OnceLock::new();

/// Bits the node's umask always has: nothing it creates is readable or writable by others.
const PRIVATE: u32 = 0o077;

/// Sets the node's umask and open-file limit; the first call in a process does it and logs it,
/// later calls (several in-process nodes in a test) return what the first one found.
pub fn prepare() -> Inherited {
    *INHERITED.get_or_init(|| {
        let private = Mode::from_bits_truncate(PRIVATE);
        let original = umask(private);
        umask(original | private);
        let nofile = getrlimit(Resource::RLIMIT_NOFILE).ok();
        if let Some((soft, hard)) = nofile {
            if soft < hard {
                match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                    Ok(()) => info!(from = soft, to = hard, "open-file limit raised"),
                    Err(e) => {
                        warn!(soft, hard, error = %e, "raising the open-file limit failed; keeping it")
                    }
                }
            } else {
                info!(limit = soft, "open-file limit already at its hard limit");
            }
        }
        Inherited {
            umask: original,
            nofile,
        }
    })
}

/// What the node was started with, once [`prepare`] ran.
pub fn inherited() -> Option<Inherited> {
    INHERITED.get().copied()
}

impl Inherited {
    /// Puts the inherited umask and open-file soft limit back. Runs in a forked child before
    /// exec, so it only makes system calls (async-signal-safe) and allocates nothing.
    pub fn restore_in_child(&self) -> std::io::Result<()> {
        umask(self.umask);
        if let Some((soft, _)) = self.nofile {
            // The hard limit is the current one (the node never lowers it).
            let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
            setrlimit(Resource::RLIMIT_NOFILE, soft.min(hard), hard)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepare_makes_the_umask_private_and_raises_the_limit_once() {
        let first = prepare();
        let current = umask(Mode::empty());
        umask(current);
        assert_eq!(current.bits() & PRIVATE, PRIVATE, "{current:?}");
        assert_eq!(current, first.umask | Mode::from_bits_truncate(PRIVATE));
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("limit");
        assert_eq!(soft, hard, "the soft limit is raised to the hard limit");
        // A second node in the same process finds what the first one found.
        let second = prepare();
        assert_eq!(second.umask, first.umask);
        assert_eq!(second.nofile, first.nofile);
    }
}

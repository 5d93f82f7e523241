//! The reaper: a small process forked from the node at its start that kills the process groups
//! of the node's runs the moment the node dies.
//!
//! A run's process lives in its own process group, and when the node stops cleanly it stops
//! every group itself. When the node dies alone (a panic, an OOM kill, `kill -9` of the daemon),
//! its children would live on as orphans while the cluster retries their runs elsewhere: a
//! doubled side effect, or a second instance of a daemon. `PR_SET_PDEATHSIG` does not close
//! that gap: it reaches only the direct child (not what a shell script starts), follows the
//! death of the forking *thread* rather than the process, and needs a `pre_exec` hook, which
//! makes every spawn a full `fork()` of the node (docs/performance.md, "Spawning").
//!
//! So the node tells the reaper each group it starts and each it has seen end, over a pipe whose
//! write end only the node holds (close-on-exec, so no run inherits it). When the node's process
//! ends, however it ends, the kernel closes that end; the reaper reads end-of-file, sends SIGKILL
//! to every group still listed, and exits. It lives in its own process group and ignores the
//! terminal's and the service manager's polite signals, so that it outlives the node by exactly
//! that one read.
//!
//! The child of a `fork()` in a multi-threaded program may call only async-signal-safe functions
//! until it execs, so the reaper never allocates: its table is allocated before the fork, and it
//! speaks only `read`, `kill`, `sigaction`, `setpgid`, `prctl`, `close_range` and `_exit`. This is the
//! one module of the node that needs `unsafe`, for the fork and the child's system calls.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, Pid, fork, pipe2};
use tracing::warn;

/// The most groups the reaper tracks at once; beyond that, the start-up sweep of the next
/// start ([`super::groups`]) still finds them.
const CAPACITY: usize = 65_536;

/// The node's side of its reaper. Dropping it ends the reaper (which then kills whatever is
/// still listed) and collects its exit status.
pub struct Reaper {
    pipe: Option<OwnedFd>,
    pid: Pid,
    broken: bool,
}

impl Reaper {
    /// Forks the reaper.
    pub fn start() -> io::Result<Reaper> {
        let (read_end, write_end) = pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        // Allocated here: the child must not allocate.
        let mut table: Vec<i32> = vec![0; CAPACITY];
        // SAFETY: the child runs only `reap`, which calls async-signal-safe functions on memory
        // allocated before the fork, and ends with `_exit`.
        match unsafe { fork() }? {
            ForkResult::Child => unsafe { reap(read_end.as_raw_fd(), table.as_mut_ptr()) },
            ForkResult::Parent { child } => {
                drop(read_end);
                Ok(Reaper {
                    pipe: Some(write_end),
                    pid: child,
                    broken: false,
                })
            }
        }
    }

    /// The reaper's process id.
    pub fn pid(&self) -> i32 {
        self.pid.as_raw()
    }

    /// Lists a process group the node started.
    pub fn watch(&mut self, pgid: i32) {
        self.send(pgid);
    }

    /// Takes a group off the list: its run ended and the node killed or collected it.
    pub fn forget(&mut self, pgid: i32) {
        self.send(-pgid);
    }

    fn send(&mut self, word: i32) {
        let Some(pipe) = &self.pipe else { return };
        // Four bytes, below PIPE_BUF: the write is atomic.
        match nix::unistd::write(pipe, &word.to_ne_bytes()) {
            Ok(4) => {}
            result => {
                if !self.broken {
                    warn!(
                        ?result,
                        pid = self.pid.as_raw(),
                        "the reaper does not listen; a crash of this node would leave its runs' processes behind until its next start"
                    );
                    self.broken = true;
                }
            }
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        self.pipe = None;
        let _ = waitpid(self.pid, None);
    }
}

/// The reaper's whole life, in the forked child.
///
/// # Safety
/// Only in the child of `fork()`, with `table` pointing at `CAPACITY` writable `i32`s.
unsafe fn reap(pipe: i32, table: *mut i32) -> ! {
    unsafe {
        // Out of the node's process group (Ctrl-C at a terminal) and deaf to SIGTERM, SIGHUP
        // and SIGINT: it ends when the node has ended, by end-of-file.
        libc::setpgid(0, 0);
        // What `ps` and `top` show (it would otherwise carry the forking thread's name).
        libc::prctl(libc::PR_SET_NAME, c"taskmesh-reaper".as_ptr());
        for sig in [
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGHUP,
            libc::SIGQUIT,
            libc::SIGPIPE,
        ] {
            libc::signal(sig, libc::SIG_IGN);
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        // Keep nothing of the node open but the pipe (as fd 0): not its sockets, its database,
        // nor its runs' output pipes, whose readers wait for end-of-file.
        if pipe != 0 {
            libc::dup2(pipe, 0);
        }
        if libc::syscall(libc::SYS_close_range, 1u32, u32::MAX, 0u32) != 0 {
            for fd in 1..65_536 {
                libc::close(fd);
            }
        }
        let mut len = 0usize;
        let mut buf = [0u8; 4096];
        let mut carry = [0u8; 4];
        let mut carried = 0usize;
        loop {
            let n = libc::read(0, buf.as_mut_ptr().cast(), buf.len());
            if n < 0 {
                if *libc::__errno_location() == libc::EINTR {
                    continue;
                }
                break;
            }
            if n == 0 {
                break;
            }
            for &byte in &buf[..n as usize] {
                carry[carried] = byte;
                carried += 1;
                if carried < 4 {
                    continue;
                }
                carried = 0;
                let word = i32::from_ne_bytes(carry);
                if word > 0 && len < CAPACITY {
                    *table.add(len) = word;
                    len += 1;
                } else if word < 0 {
                    // Newest first: a group that ends was usually started recently.
                    let mut i = len;
                    while i > 0 {
                        i -= 1;
                        if *table.add(i) == -word {
                            len -= 1;
                            *table.add(i) = *table.add(len);
                            break;
                        }
                    }
                }
            }
        }
        for i in 0..len {
            libc::kill(-*table.add(i), libc::SIGKILL);
        }
        libc::_exit(0)
    }
}

//! The process groups of this node's runs: listed in a journal in the data directory before a
//! start is acknowledged, watched by the reaper (`executor::reaper`) while the node lives, and
//! swept at the next start when the node died with some still alive.
//!
//! The journal (`data/process-groups`) holds one line per event: `? RUN` just before a run's
//! process is spawned, `+ PGID START RUN` once its group exists (`START`: its leader's start time
//! in clock ticks since boot, field 22 of `/proc/PID/stat`), `x RUN` when the spawn failed, and
//! `- PGID` when the group is gone. It is written without fsync: it only has to outlive the
//! node's process, not the machine, whose end takes the runs' processes with it.
//!
//! At start, [`ProcessGroups::open`] reads what the previous process left listed and kills every
//! process still in one of those groups that is that run's (same group, started no earlier than
//! its leader, and `TASKMESH_RUN_ID` of that run in its environment where it can be read),
//! waits until they are gone, and only then lets the node go on — the run history then reports
//! those runs `lost`, and the cluster retries them by their task's `on_lost`. Nothing of a run
//! that a previous process started is adopted: its output pipes died with that process.
//!
//! The `?` line closes the window between the spawn and the `+` line: a node that dies there
//! (its thread preempted right after the spawn, while the run's shell goes on) leaves a run
//! whose group nobody listed. For such a run the sweep looks at every process on the machine and
//! kills those whose environment names it.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tracing::{info, warn};

use super::reaper::Reaper;
use crate::model::RunId;

/// The journal's file name in the data directory.
pub const FILE_NAME: &str = "process-groups";
/// How long the start-up sweep waits for killed processes to be gone.
const SWEEP_WAIT: Duration = Duration::from_secs(10);

/// One run's process group as the journal lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRecord {
    pub run: RunId,
    pub pgid: i32,
    /// The group leader's start time, in clock ticks since boot.
    pub start: u64,
}

/// What a journal leaves listed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Left {
    /// The groups that started and did not end.
    pub groups: Vec<GroupRecord>,
    /// The runs whose spawn began but whose group was never listed.
    pub spawning: Vec<RunId>,
}

/// What the start-up sweep found of a previous process's runs.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// The runs whose processes were still alive, and how many of them were killed.
    pub killed: Vec<(RunId, usize)>,
}

/// A cloneable handle on this node's process groups.
#[derive(Clone)]
pub struct ProcessGroups {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    path: PathBuf,
    journal: File,
    live: HashMap<i32, GroupRecord>,
    /// Runs between their `?` line and their `+` or `x` line.
    spawning: Vec<RunId>,
    /// Lines written since the journal was last rewritten.
    lines: usize,
    reaper: Option<Reaper>,
}

impl ProcessGroups {
    /// Sweeps what a previous process in `data_dir` left alive, then starts a fresh journal and
    /// the reaper. Without a reaper (the fork failed) the node still runs; its runs'
    /// processes then outlive a crash until the next start's sweep.
    pub fn open(data_dir: &Path) -> io::Result<(ProcessGroups, Swept)> {
        let path = data_dir.join(FILE_NAME);
        let left = match std::fs::read_to_string(&path) {
            Ok(text) => parse_journal(&text),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Left::default(),
            Err(e) => return Err(e),
        };
        let swept = sweep(&left);
        let journal = rewrite(&path, &Left::default())?;
        let reaper = match Reaper::start() {
            Ok(reaper) => Some(reaper),
            Err(e) => {
                warn!(error = %e, "starting the reaper failed; a crash of this node leaves its runs' processes behind until its next start");
                None
            }
        };
        let groups = ProcessGroups {
            inner: Arc::new(Mutex::new(Inner {
                path,
                journal,
                live: HashMap::new(),
                spawning: Vec::new(),
                lines: 0,
                reaper,
            })),
        };
        Ok((groups, swept))
    }

    /// The reaper's process id, if it runs.
    pub fn reaper_pid(&self) -> Option<i32> {
        self.lock().reaper.as_ref().map(Reaper::pid)
    }

    /// Notes that a run's process is about to be spawned. Called just before the spawn, and
    /// followed by [`ProcessGroups::started`] or [`ProcessGroups::not_started`].
    pub fn spawning(&self, run: &RunId) {
        let mut inner = self.lock();
        inner.append(&format!("? {}\n", run.0));
        inner.spawning.push(run.clone());
    }

    /// Takes back [`ProcessGroups::spawning`]: the spawn failed.
    pub fn not_started(&self, run: &RunId) {
        let mut inner = self.lock();
        if inner.take_spawning(run) {
            inner.append(&format!("x {}\n", run.0));
        }
    }

    /// Lists a run's new process group (its leader is `pgid`), in the journal and with the
    /// reaper. Called right after the spawn, before the start is recorded anywhere else.
    pub fn started(&self, run: &RunId, pgid: i32) {
        let start = start_ticks(pgid).unwrap_or(0);
        let record = GroupRecord {
            run: run.clone(),
            pgid,
            start,
        };
        let mut inner = self.lock();
        if let Some(reaper) = &mut inner.reaper {
            reaper.watch(pgid);
        }
        inner.take_spawning(run);
        inner.append(&format!("+ {pgid} {start} {}\n", run.0));
        inner.live.insert(pgid, record);
    }

    /// Takes a run's group off the lists: its leader was collected and the rest of the group
    /// killed or gone.
    pub fn ended(&self, pgid: i32) {
        let mut inner = self.lock();
        if let Some(reaper) = &mut inner.reaper {
            reaper.forget(pgid);
        }
        if inner.live.remove(&pgid).is_some() {
            inner.append(&format!("- {pgid}\n"));
        }
    }

    /// Ends the reaper (the node stops cleanly, after its runs).
    pub fn close(&self) {
        self.lock().reaper = None;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Inner {
    fn take_spawning(&mut self, run: &RunId) -> bool {
        let before = self.spawning.len();
        self.spawning.retain(|r| r != run);
        self.spawning.len() != before
    }

    fn append(&mut self, line: &str) {
        if let Err(e) = self.journal.write_all(line.as_bytes()) {
            warn!(error = %e, path = %self.path.display(), "writing the process-group journal failed");
        }
        self.lines += 1;
        // Rewritten to the live groups once the ended ones dominate, so it stays small.
        if self.lines > 1024 + 4 * (self.live.len() + self.spawning.len()) {
            let left = Left {
                groups: self.live.values().cloned().collect(),
                spawning: self.spawning.clone(),
            };
            match rewrite(&self.path, &left) {
                Ok(journal) => {
                    self.journal = journal;
                    self.lines = left.groups.len() + left.spawning.len();
                }
                Err(e) => {
                    warn!(error = %e, path = %self.path.display(), "rewriting the process-group journal failed")
                }
            }
        }
    }
}

/// Writes `left` as a new private journal (through a temporary file and a rename; no fsync, see
/// the module's doc) and opens it for appending.
fn rewrite(path: &Path, left: &Left) -> io::Result<File> {
    let tmp = path.with_extension("tmp");
    let groups = left
        .groups
        .iter()
        .map(|g| format!("+ {} {} {}\n", g.pgid, g.start, g.run.0));
    let spawning = left.spawning.iter().map(|r| format!("? {}\n", r.0));
    let text: String = groups.chain(spawning).collect();
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?
        .write_all(text.as_bytes())?;
    std::fs::rename(&tmp, path)?;
    crate::private_files::open_append(path)
}

/// What a journal leaves listed. Lines it cannot read (a torn last line) are skipped.
pub fn parse_journal(text: &str) -> Left {
    let mut left = Left::default();
    for line in text.lines() {
        let words: Vec<&str> = line.split_ascii_whitespace().collect();
        match words.as_slice() {
            ["+", pgid, start, run] => {
                let (Ok(pgid), Ok(start)) = (pgid.parse::<i32>(), start.parse::<u64>()) else {
                    continue;
                };
                if pgid <= 0 {
                    continue;
                }
                left.groups.retain(|g| g.pgid != pgid);
                left.spawning.retain(|r| r.0 != *run);
                left.groups.push(GroupRecord {
                    run: RunId(run.to_string()),
                    pgid,
                    start,
                });
            }
            ["-", pgid] => {
                if let Ok(pgid) = pgid.parse::<i32>() {
                    left.groups.retain(|g| g.pgid != pgid);
                }
            }
            ["?", run] => left.spawning.push(RunId(run.to_string())),
            ["x", run] => left.spawning.retain(|r| r.0 != *run),
            _ => {}
        }
    }
    left
}

/// Kills what is left of the runs in `left` and waits (bounded) until it is gone.
fn sweep(left: &Left) -> Swept {
    let mut swept = Swept::default();
    if left.groups.is_empty() && left.spawning.is_empty() {
        return swept;
    }
    let pgids: std::collections::HashSet<i32> = left.groups.iter().map(|g| g.pgid).collect();
    let procs = processes(&pgids, !left.spawning.is_empty());
    let mut killed: Vec<(i32, u64)> = Vec::new();
    let me = std::process::id() as i32;
    // A run whose group was never listed is found by its environment alone.
    let unlisted = left.spawning.iter().map(|run| (run, None));
    let listed = left.groups.iter().map(|g| (&g.run, Some(g)));
    for (run, group) in unlisted.chain(listed) {
        let mine: Vec<&Proc> = procs
            .iter()
            .filter(|p| match group {
                Some(g) => p.pgid == g.pgid && p.start >= g.start && p.has_run(run),
                None => p.pid != me && p.names(run),
            })
            .collect();
        for p in &mine {
            let _ = kill(Pid::from_raw(p.pid), Signal::SIGKILL);
            killed.push((p.pid, p.start));
        }
        if !mine.is_empty() {
            info!(run_id = %run, pgid = ?group.map(|g| g.pgid), processes = mine.len(), "killed what a previous start of this node left running");
            swept.killed.push((run.clone(), mine.len()));
        }
    }
    let deadline = Instant::now() + SWEEP_WAIT;
    while killed.iter().any(|&(pid, start)| alive(pid, start)) {
        if Instant::now() > deadline {
            warn!("processes killed at start are still there after 10 s; going on");
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    swept
}

/// A process as the sweep sees it.
struct Proc {
    pid: i32,
    pgid: i32,
    start: u64,
    /// `TASKMESH_RUN_ID=…` from its environment; `None` when it cannot be read.
    run: Option<Option<String>>,
}

impl Proc {
    fn has_run(&self, run: &RunId) -> bool {
        match &self.run {
            Some(_) => self.names(run),
            // Unreadable (another user's process, a set-id program): group and start decide.
            None => true,
        }
    }

    /// Whether its environment is readable and names `run`.
    fn names(&self, run: &RunId) -> bool {
        self.run
            .as_ref()
            .is_some_and(|found| found.as_deref() == Some(run.0.as_str()))
    }
}

/// The processes on the machine in one of `pgids`, or all of them with `every`, with their group,
/// start time and run (the environment is read only for those).
fn processes(pgids: &std::collections::HashSet<i32>, every: bool) -> Vec<Proc> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|entry| {
        let pid: i32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
        let (pgid, start) = stat(pid).filter(|(pgid, _)| every || pgids.contains(pgid))?;
        let run = std::fs::read(format!("/proc/{pid}/environ"))
            .ok()
            .map(|env| run_id_in(&env));
        Some(Proc {
            pid,
            pgid,
            start,
            run,
        })
    })
    .collect()
}

/// `TASKMESH_RUN_ID` in a process's environment block.
fn run_id_in(environ: &[u8]) -> Option<String> {
    environ
        .split(|&b| b == 0)
        .find_map(|var| var.strip_prefix(b"TASKMESH_RUN_ID="))
        .map(|id| String::from_utf8_lossy(id).into_owned())
}

/// Whether `pid` is still the process that started at `start` (not a zombie).
fn alive(pid: i32, start: u64) -> bool {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    parse_stat(&text).is_some_and(|s| s.start == start && s.state != 'Z')
}

/// A process's start time in clock ticks since boot.
fn start_ticks(pid: i32) -> Option<u64> {
    stat(pid).map(|(_, start)| start)
}

fn stat(pid: i32) -> Option<(i32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text).map(|s| (s.pgid, s.start))
}

struct Stat {
    state: char,
    pgid: i32,
    start: u64,
}

/// Fields of `/proc/PID/stat`. The command name (field 2) may hold spaces and parentheses, so
/// the fields are counted from its last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    // After the name: state (3), ppid (4), pgrp (5), …, starttime (22).
    Some(Stat {
        state: fields.first()?.chars().next()?,
        pgid: fields.get(2)?.parse().ok()?,
        start: fields.get(19)?.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    #[test]
    fn the_journal_leaves_listed_what_started_and_did_not_end() {
        let text = "? r1\n+ 10 500 r1\n? r2\n+ 11 501 r2\n- 10\n? r3\n+ 12 502 r3\n? r4\nx r4\n? r5\n+ 13 5";
        let left = parse_journal(text);
        let runs: Vec<(&str, i32, u64)> = left
            .groups
            .iter()
            .map(|g| (g.run.0.as_str(), g.pgid, g.start))
            .collect();
        assert_eq!(runs, [("r2", 11, 501), ("r3", 12, 502)]);
        assert_eq!(left.spawning, [RunId("r5".into())]);
    }

    #[test]
    fn a_run_whose_group_was_never_listed_is_found_by_its_environment() {
        let run = RunId(format!("sweep-test-{}", std::process::id()));
        let mut child = std::process::Command::new("sleep")
            .arg("300")
            .env("TASKMESH_RUN_ID", &run.0)
            .process_group(0)
            .spawn()
            .expect("spawn sleep");
        let pid = child.id() as i32;
        // The environment is readable once the child has exec'd `sleep`.
        let deadline = Instant::now() + Duration::from_secs(10);
        while processes(&Default::default(), true)
            .iter()
            .all(|p| p.pid != pid || p.run.as_ref().and_then(|r| r.as_deref()) != Some(&run.0))
        {
            assert!(
                Instant::now() < deadline,
                "the child's environment never showed its run"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let other = RunId("another-run".into());
        let swept = sweep(&Left {
            groups: Vec::new(),
            spawning: vec![other, run.clone()],
        });
        assert_eq!(swept.killed, [(run, 1)]);
        let status = child.wait().expect("reap");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
    }

    #[test]
    fn stat_fields_are_counted_from_the_end_of_the_name() {
        let text = "4242 (a (weird) name) S 1 4240 4240 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 10000 200";
        let stat = parse_stat(text).expect("parses");
        assert_eq!((stat.state, stat.pgid, stat.start), ('S', 4240, 987654));
    }

    #[test]
    fn the_run_id_is_read_from_the_environment_block() {
        let env = b"PATH=/bin\0TASKMESH_RUN_ID=abc\0TASKMESH_TASK=x\0";
        assert_eq!(run_id_in(env).as_deref(), Some("abc"));
        assert_eq!(run_id_in(b"PATH=/bin\0"), None);
    }

    #[test]
    fn this_process_has_a_start_time_and_group() {
        let me = std::process::id() as i32;
        let (pgid, start) = stat(me).expect("reads its own stat");
        assert_eq!(pgid, nix::unistd::getpgrp().as_raw());
        assert!(alive(me, start));
        assert!(!alive(me, start + 1));
    }
}

//! What a `pre_exec` hook costs a node's spawns: with one, the standard library `fork()`s the
//! whole process for every run; without, it uses `posix_spawn` (a `vfork`-like clone). Prints
//! the time `Command::spawn` takes (until the child has exec'd), median and p99, both ways,
//! interleaved, from a parent holding about a node's memory. See docs/performance.md.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Instant;

const ROUNDS: usize = 400;

fn spawn_micros(with_hook: bool) -> f64 {
    let mut command = Command::new("/bin/true");
    command
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if with_hook {
        // SAFETY: the hook makes one async-signal-safe system call and allocates nothing.
        #[allow(unsafe_code)]
        unsafe {
            command.pre_exec(|| {
                nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
                Ok(())
            });
        }
    }
    let started = Instant::now();
    let mut child = command.spawn().expect("spawn /bin/true");
    let took = started.elapsed().as_secs_f64() * 1e6;
    child.wait().expect("wait");
    took
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn main() {
    // About a node's resident memory (an idle node holds ~20 MB; under load more), touched.
    let held: Vec<Vec<u8>> = (0..400).map(|i| vec![i as u8; 100_000]).collect();
    let (mut spawned, mut forked) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        spawned.push(spawn_micros(false));
        forked.push(spawn_micros(true));
    }
    for v in [&mut spawned, &mut forked] {
        v.sort_by(f64::total_cmp);
    }
    println!(
        "Command::spawn, {ROUNDS} each, parent holding {} MB:",
        held.len() / 10
    );
    println!(
        "  without pre_exec (posix_spawn): median {:.0} µs, p99 {:.0} µs",
        percentile(&spawned, 0.5),
        percentile(&spawned, 0.99)
    );
    println!(
        "  with pre_exec (fork):           median {:.0} µs, p99 {:.0} µs",
        percentile(&forked, 0.5),
        percentile(&forked, 0.99)
    );
}

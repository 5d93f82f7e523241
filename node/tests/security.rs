//! The real binary under the threat model of docs/security.md: a node run as root, and another
//! user of the same machine (`nobody`) who has no token. Needs root to switch users; as any other
//! user these tests print a notice and pass without doing anything (CI runs them as root).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::{Value, json};

mod common;

use common::*;

/// The unprivileged user the attacker runs as.
const NOBODY: &str = "65534";

fn is_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!(
        "NOTICE: the security tests need root (they switch to an unprivileged user); not run. \
         CI runs them as root; locally: sudo -E cargo test -p taskmesh --test security"
    );
    false
}

/// Runs `program args` as `nobody`, with an environment of nothing but PATH.
fn as_nobody(program: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new("setpriv")
        .args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
            "--",
            program,
        ])
        .args(args)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .envs(env.iter().copied())
        .current_dir("/")
        .output()
        .expect("setpriv")
}

/// The HTTP status `nobody` gets for `method path` (curl prints it; 000 when refused).
fn status_as_nobody(method: &str, url: &str, extra: &[&str]) -> u16 {
    let mut args = vec![
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--noproxy",
        "*",
        "--max-time",
        "5",
        "-X",
        method,
    ];
    args.extend_from_slice(extra);
    args.push(url);
    let out = as_nobody("curl", &args, &[]);
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

/// Every path under `dir` (itself included), depth first.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_owned()];
    if dir.is_dir() && !dir.is_symlink() {
        for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
            out.extend(walk(&entry.path()));
        }
    }
    out
}

/// A folder `nobody` may enter, holding a copy of the binary it may run: the build's own
/// folder may sit under a home directory it cannot enter.
fn public_folder() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tmp");
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let bin = tmp.path().join("taskmesh");
    std::fs::copy(BIN, &bin).expect("copy the binary");
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    (tmp, bin)
}

#[test]
fn another_user_of_the_machine_gets_nothing_without_the_token() {
    if !is_root() {
        return;
    }
    let (public, bin) = public_folder();
    let data = public.path().join("data");
    let key = "5a1e".repeat(16);
    let mut command = Command::new(&bin);
    command.env("TASKMESH_CLUSTER_KEY", &key);
    let node = start_via(command, &data, &["--p2p-listen", "/ip4/127.0.0.1/tcp/0"]);
    let url = &node.url;
    let token = std::fs::read_to_string(data.join("access-token"))
        .expect("root reads the token")
        .trim()
        .to_owned();
    let http = http_client().build().expect("client");
    let authed = |r: reqwest::blocking::RequestBuilder| {
        r.bearer_auth(&token)
            .timeout(Duration::from_secs(10))
            .send()
            .expect("request")
    };

    // A run of root's, so that there is a run log to try to read. Each run of it leaves a line
    // in `roots-runs`: what the processes did, counted apart from the node's own records.
    let roots_runs = public.path().join("roots-runs");
    let script = format!(
        "echo private output; echo ran >> '{}'",
        roots_runs.display()
    );
    let r = authed(http.post(format!("{url}/api/tasks")).json(&json!({
        "name": "roots", "spec": {"shell": script}, "when": {"mode": "manual"}
    })));
    assert_eq!(r.status().as_u16(), 201);
    let run: Value = authed(http.post(format!("{url}/api/tasks/roots/run")))
        .json()
        .expect("run");
    let run_id = run["id"].as_str().expect("run id").to_owned();
    wait_until("root's run to end", Duration::from_secs(20), || {
        let run: Value = authed(http.get(format!("{url}/api/runs/{run_id}")))
            .json()
            .ok()?;
        (run["status"] == "succeeded").then_some(())
    });

    // Over TCP loopback, without the token: no write, no secret, no page.
    // Nobody's task would leave this file, if it ever ran.
    let probe_ran = public.path().join("probe-ran");
    let probe_ran_text = probe_ran.to_str().expect("path");
    let task = json!({"name": "probe", "spec": {"command": ["touch", probe_ran_text]}, "when": {"mode": "manual"}})
        .to_string();
    let task = task.as_str();
    let json = ["-H", "Content-Type: application/json"];
    let mut refused = vec![
        (
            "POST",
            "/api/tasks".to_owned(),
            vec![json[0], json[1], "-d", task],
        ),
        ("POST", "/api/tasks/roots/run".to_owned(), vec![]),
        (
            "PUT",
            "/api/settings".to_owned(),
            vec![json[0], json[1], "-d", "{}"],
        ),
        ("POST", "/api/settings/import".to_owned(), vec!["-d", "{}"]),
        ("DELETE", "/api/tasks/roots".to_owned(), vec![]),
        ("GET", "/api/cluster-key".to_owned(), vec![]),
        (
            "GET",
            "/api/settings/export?secrets=true".to_owned(),
            vec![],
        ),
        ("GET", "/api/settings".to_owned(), vec![]),
        ("GET", "/api/tasks".to_owned(), vec![]),
        ("GET", format!("/api/runs/{run_id}/log"), vec![]),
        ("GET", "/api/events".to_owned(), vec![]),
    ];
    // A browser's credentials and a rebound Host do not help either.
    refused.push((
        "GET",
        "/api/cluster-key".to_owned(),
        vec![
            "-H",
            "Host: evil.example:8080",
            "-H",
            "Origin: http://evil.example:8080",
            "-H",
            "Sec-Fetch-Site: same-origin",
        ],
    ));
    refused.push((
        "GET",
        "/api/cluster-key".to_owned(),
        vec!["-H", "Authorization: Bearer 0000"],
    ));
    for (method, path, extra) in &refused {
        let status = status_as_nobody(method, &format!("{url}{path}"), extra);
        assert!(
            matches!(status, 401 | 403 | 421),
            "{method} {path} {extra:?} as nobody answered {status}"
        );
    }
    // Pages send a stranger to the login page.
    for page in ["/", "/index", "/settings", "/node", "/peers"] {
        let status = status_as_nobody("GET", &format!("{url}{page}"), &[]);
        assert!(
            matches!(status, 303 | 302 | 307 | 401),
            "GET {page} as nobody answered {status}"
        );
    }

    // The CLI, as nobody: it cannot read the token and says so; nothing is created.
    let bin_text = bin.to_str().expect("path");
    let data_text = data.to_str().expect("path");
    let out = as_nobody(
        bin_text,
        &["task", "add", "probe", "--", "touch", probe_ran_text],
        &[("TASKMESH_URL", url), ("TASKMESH_DATA_DIR", data_text)],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the CLI as nobody added a task");
    assert!(
        stderr.contains("access token") && stderr.contains("not readable"),
        "the CLI says why: {stderr}"
    );

    // The files: nobody can list the data directory or read anything in it.
    let out = as_nobody("ls", &[data_text], &[]);
    assert!(!out.status.success(), "nobody listed the data directory");
    let files = walk(&data);
    assert!(
        files
            .iter()
            .any(|p| p.to_string_lossy().ends_with(&format!("{run_id}.log"))),
        "root's run log is among the files: {files:?}"
    );
    for path in &files {
        let mode = std::fs::symlink_metadata(path)
            .expect("meta")
            .permissions()
            .mode()
            & 0o777;
        let want = if path.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode, want, "{} has mode {mode:o}", path.display());
        if path.is_file() {
            let out = as_nobody("cat", &[path.to_str().expect("path")], &[]);
            assert!(!out.status.success(), "nobody read {}", path.display());
        }
    }
    // Nor from the node's process: its command line holds no secret, its environment is private.
    let pid = node.child.id();
    let cmdline = as_nobody("cat", &[&format!("/proc/{pid}/cmdline")], &[]);
    let cmdline = String::from_utf8_lossy(&cmdline.stdout);
    assert!(
        cmdline.contains("run"),
        "nobody can read the command line: {cmdline}"
    );
    assert!(
        !cmdline.contains(&key) && !cmdline.contains(&token),
        "{cmdline}"
    );
    let environ = as_nobody("cat", &[&format!("/proc/{pid}/environ")], &[]);
    assert!(
        !environ.status.success(),
        "nobody read the node's environment"
    );

    // With the token, root sees that nothing of nobody's reached the node.
    let tasks: Vec<Value> = authed(http.get(format!("{url}/api/tasks")))
        .json()
        .expect("tasks");
    let names: Vec<&str> = tasks.iter().filter_map(|t| t["name"].as_str()).collect();
    assert_eq!(names, ["roots"]);
    let runs: Vec<Value> = authed(http.get(format!("{url}/api/runs?limit=100")))
        .json()
        .expect("runs");
    assert_eq!(runs.len(), 1, "{runs:?}");
    // And the processes agree: root runs its task once more and waits for its line; by then
    // only root's two runs ever happened, and nobody's task never ran.
    assert_eq!(
        authed(http.post(format!("{url}/api/tasks/roots/run")))
            .status()
            .as_u16(),
        202
    );
    let lines = wait_until("root's second run", Duration::from_secs(20), || {
        let text = std::fs::read_to_string(&roots_runs).ok()?;
        (text.lines().count() >= 2).then_some(text.lines().count())
    });
    assert_eq!(lines, 2, "runs of root's task");
    assert!(!probe_ran.exists(), "nobody's task ran");
}

/// Lets this test process hold a few thousand sockets.
fn raise_fd_limit(want: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if soft < want {
        setrlimit(Resource::RLIMIT_NOFILE, want.min(hard), hard).expect("setrlimit");
    }
}

#[test]
fn idle_p2p_and_slow_http_connections_leave_the_node_answering() {
    const P2P: usize = 2000;
    const HTTP: usize = 1000;
    raise_fd_limit(8192);
    let dir = tempfile::tempdir().expect("tmp");
    let p2p_port = free_port();
    // Started with the soft file limit many systems give (1024): the node raises its own.
    let mut command = Command::new("sh");
    command.args(["-c", "ulimit -Sn 1024 && exec \"$0\" \"$@\"", BIN]);
    let p2p = format!("/ip4/127.0.0.1/tcp/{p2p_port}");
    let node = start_via(command, dir.path(), &["--p2p-listen", &p2p]);
    let url = node.url.clone();
    let http_addr: std::net::SocketAddr = url
        .trim_start_matches("http://")
        .parse()
        .expect("the UI address");
    let token = std::fs::read_to_string(dir.path().join("access-token"))
        .expect("token")
        .trim()
        .to_owned();
    let http = http_client()
        .timeout(Duration::from_secs(1))
        .build()
        .expect("client");
    let r = http
        .post(format!("{url}/api/tasks"))
        .bearer_auth(&token)
        .json(&json!({"name": "after", "spec": {"command": ["true"]}, "when": {"mode": "manual"}}))
        .send()
        .expect("create");
    assert_eq!(r.status().as_u16(), 201);

    // Connections without the cluster key that never speak, and HTTP requests whose headers
    // never end: what an attacker on the LAN or the machine can open for free.
    let p2p: Vec<std::net::TcpStream> = (0..P2P)
        .filter_map(|_| {
            std::net::TcpStream::connect_timeout(
                &std::net::SocketAddr::from(([127, 0, 0, 1], p2p_port)),
                Duration::from_secs(1),
            )
            .ok()
        })
        .collect();
    let slow: Vec<std::net::TcpStream> = (0..HTTP)
        .filter_map(|_| {
            use std::io::Write;
            let mut s =
                std::net::TcpStream::connect_timeout(&http_addr, Duration::from_secs(1)).ok()?;
            s.write_all(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                .ok()?;
            Some(s)
        })
        .collect();
    eprintln!(
        "opened {} idle p2p and {} slow HTTP connections",
        p2p.len(),
        slow.len()
    );
    // A few connects may time out in a full listen backlog; the flood must still be a flood.
    assert!(
        p2p.len() >= P2P * 9 / 10,
        "only {} p2p connections",
        p2p.len()
    );
    assert!(
        slow.len() >= HTTP * 9 / 10,
        "only {} HTTP connections",
        slow.len()
    );

    // The node still answers, each time within 1 s (the client's timeout), and runs start.
    for _ in 0..20 {
        let r = http
            .get(format!("{url}/api/health"))
            .send()
            .expect("/api/health answers within 1 s");
        assert!(r.status().is_success(), "{}", r.status());
    }
    let run: Value = http
        .post(format!("{url}/api/tasks/after/run"))
        .bearer_auth(&token)
        .send()
        .expect("execute")
        .json()
        .expect("run");
    let id = run["id"].as_str().expect("run id").to_owned();
    wait_until("the run to succeed", Duration::from_secs(20), || {
        let run: Value = http
            .get(format!("{url}/api/runs/{id}"))
            .bearer_auth(&token)
            .send()
            .ok()?
            .json()
            .ok()?;
        (run["status"] == "succeeded").then_some(())
    });
    drop((p2p, slow));
}

#[test]
fn service_install_and_uninstall_by_another_user_say_they_need_root_and_write_nothing() {
    if !is_root() {
        return;
    }
    let (public, bin) = public_folder();
    let bin = bin.to_str().expect("utf-8").to_owned();
    for command in ["install", "uninstall"] {
        let out = as_nobody(&bin, &["service", command], &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{command} ran as nobody: {stderr}");
        assert!(
            stderr.contains(&format!("taskmesh service {command} needs root"))
                && stderr.contains("--root DIR"),
            "{command}: {stderr}"
        );
    }
    // With --root, a folder it may not write is named in the error.
    let closed = public.path().join("closed");
    std::fs::create_dir(&closed).expect("mkdir");
    std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let out = as_nobody(
        &bin,
        &[
            "service",
            "install",
            "--root",
            closed.to_str().expect("utf-8"),
            "--no-start",
        ],
        &[],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&closed.join("etc").display().to_string())
            && stderr.contains("Permission denied"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_dir(&closed).expect("read").count(),
        0,
        "nothing written"
    );
}

/// `service install --user` on a machine as it is, then the node started as the unit would
/// start it: the system user is made, the data dir and keys are its own and private, and the
/// node runs as that user on them. The machine's /etc and /var/lib stay untouched: all of it
/// happens in a mount namespace over a copy of /etc and an empty /var/lib.
#[test]
fn service_install_as_its_own_user_gives_that_user_a_private_data_dir_and_the_node_runs_as_it() {
    if !is_root() {
        return;
    }
    let (public, bin) = public_folder();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let script = r#"
set -eu
cp -a /etc "$WORK/etc"
mount --bind "$WORK/etc" /etc
mount -t tmpfs -o mode=0755 tmpfs /var/lib
"$BIN" service install --user --no-start
echo "unit user lines: $(grep -c '^User=taskmesh$' /etc/systemd/system/taskmesh.service)"
find /var/lib/taskmesh -printf 'installed %u %g %m %p\n'
setpriv --reuid=taskmesh --regid=taskmesh --init-groups -- "$BIN" run \
    --config /etc/taskmesh/node.toml --listen "127.0.0.1:$PORT" \
    --p2p-listen /ip4/127.0.0.1/tcp/0 --no-mdns >"$WORK/node.log" 2>&1 &
node=$!
deadline=$(( $(date +%s) + 60 ))
until [ -e /var/lib/taskmesh/access-token ] &&
    curl -s -o /dev/null --noproxy '*' --max-time 2 "http://127.0.0.1:$PORT/"; do
    if ! kill -0 "$node" 2>/dev/null; then echo "the node exited"; cat "$WORK/node.log"; exit 1; fi
    if [ "$(date +%s)" -ge "$deadline" ]; then echo "the node did not answer"; cat "$WORK/node.log"; exit 1; fi
    sleep 0.1
done
echo "node runs as $(stat -c %U "/proc/$node")"
find /var/lib/taskmesh -printf 'running %u %g %m %p\n'
kill "$node"
wait "$node" || true
"#;
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", script])
        .env("WORK", public.path())
        .env("BIN", &bin)
        .env("PORT", port.to_string())
        .output()
        .expect("unshare");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("user taskmesh: made"), "{stdout}");
    assert!(stdout.contains("unit user lines: 1\n"), "{stdout}");
    assert!(stdout.contains("node runs as taskmesh\n"), "{stdout}");
    for stage in ["installed", "running"] {
        let files: Vec<&str> = stdout
            .lines()
            .filter(|l| l.starts_with(&format!("{stage} ")))
            .collect();
        for name in ["/var/lib/taskmesh", "cluster-key", "identity"] {
            assert!(
                files.iter().any(|l| l.ends_with(name)),
                "{stage}: {name} missing: {files:?}"
            );
        }
        if stage == "running" {
            assert!(
                files.iter().any(|l| l.ends_with("/access-token")),
                "the node made its token: {files:?}"
            );
        }
        for line in &files {
            let fields: Vec<&str> = line.split(' ').collect();
            let mode = u32::from_str_radix(fields[3], 8).expect("an octal mode");
            assert!(
                fields[1] == "taskmesh" && fields[2] == "taskmesh" && mode & 0o077 == 0,
                "{stage}: not the user's own and private: {line}"
            );
        }
    }
}

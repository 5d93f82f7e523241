"""Shared by the testnet benchmarks (testnet/bench, testnet/bench-consensus): running the testnet
scripts, calling a node's API with its token, polling, and percentiles."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def script(name, *args, env, check=True):
    r = subprocess.run([os.path.join(HERE, name), *args], env=env, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise SystemExit(f"testnet/{name} {' '.join(args)} failed:\n{r.stdout}{r.stderr}")
    return r


def token(state, i):
    with open(os.path.join(state, f"node{i}", "data", "access-token")) as f:
        return f.read().strip()


def call(state, i, path, body=None, method=None, timeout=2):
    """(status, parsed JSON or None) of node i's API, or (None, None) when it does not answer."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        f"http://198.18.0.{10 + i}:8080{path}",
        data=data,
        method=method or ("POST" if body is not None else "GET"),
        headers={"Authorization": f"Bearer {token(state, i)}", "Content-Type": "application/json"},
    )
    try:
        with OPENER.open(req, timeout=timeout) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        try:
            return e.code, json.load(e)
        except ValueError:
            return e.code, None
    except (OSError, ValueError):
        return None, None


def call_text(state, i, path, timeout=2):
    """(status, body text) of a GET on node i's API, or (None, None) when it does not answer."""
    req = urllib.request.Request(
        f"http://198.18.0.{10 + i}:8080{path}",
        headers={"Authorization": f"Bearer {token(state, i)}"},
    )
    try:
        with OPENER.open(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, None
    except OSError:
        return None, None


def wait(what, deadline, check, interval=0.01):
    """Polls check() until it is true; returns the seconds it took, or fails after deadline."""
    start = time.monotonic()
    while True:
        if check():
            return time.monotonic() - start
        if time.monotonic() - start > deadline:
            raise SystemExit(f"timed out after {deadline} s waiting for {what}")
        time.sleep(interval)


def percentile(xs, p):
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, round(p / 100 * (len(xs) - 1) + 0.4999)))
    return xs[k]


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise SystemExit(f"no VmRSS for pid {pid}")


class Testnet:
    """The testnet for one benchmark: a release binary, a state folder, and `down` at the end
    (the state folder is kept when something failed)."""

    def __init__(self):
        if os.geteuid() != 0:
            raise SystemExit("needs root (network namespaces); run it with sudo")
        self.env = dict(os.environ)
        if "TASKMESH_BIN" not in self.env:
            subprocess.run(["cargo", "build", "--release", "-q", "-p", "taskmesh"], cwd=ROOT, check=True)
            self.env["TASKMESH_BIN"] = os.path.join(ROOT, "target", "release", "taskmesh")
        self.own_state = "TESTNET_DIR" not in self.env
        self.state = self.env.get("TESTNET_DIR") or tempfile.mkdtemp(prefix="taskmesh-bench-")
        self.env["TESTNET_DIR"] = self.state
        self.ok = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        script("down", env=self.env, check=False)
        if self.own_state and self.ok:
            shutil.rmtree(self.state, ignore_errors=True)
        elif not self.ok:
            print(f"testnet state and logs kept in {self.state}", file=sys.stderr)
        return False

    def run(self, name, *args, check=True):
        return script(name, *args, env=self.env, check=check)

    def pid(self, i):
        with open(os.path.join(self.state, f"node{i}", "pid")) as f:
            return int(f.read())

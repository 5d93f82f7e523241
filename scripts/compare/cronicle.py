#!/usr/bin/env python3
"""Measures a running Cronicle the way benches/single_node.rs measures taskmesh, for a side-by-side run.

Cronicle is not built or installed here: point CRONICLE_URL at a Cronicle master that is already
running on this machine (CRONICLE_USER / CRONICLE_PASSWORD, admin / admin by default).

- start: the API's run_event -> the job's `date +%s%N`, 100 times, one job at a time;
- throughput: 300 runs posted with 32 requests in flight, until every job has written its line;
- first, idle RSS and CPU of the Cronicle server process over 20 s (found by its process title),
  and the size of its install: its directory without data and logs, and the Node.js executable.
Prints lines in the format of the taskmesh bench.
"""
import json, os, subprocess, tempfile, time, urllib.request

import measure
from measure import report
from concurrent.futures import ThreadPoolExecutor

URL = os.environ.get("CRONICLE_URL", "http://localhost:3012").rstrip("/")


def wait_for(check, deadline=30.0):
    return measure.wait_for(check, deadline, "cronicle bench")


def call(path, body, session=None):
    headers = {"Content-Type": "application/json"}
    if session:
        headers["X-Session-ID"] = session
    request = urllib.request.Request(URL + path, json.dumps(body).encode(), headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = json.load(response)
    if answer.get("code") != 0:
        raise RuntimeError(f"cronicle {path}: {answer}")
    return answer


def lines(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        text = f.read()
    return [int(l) for l in text.split("\n")[:-1]]


def server_pid():
    out = subprocess.run(["pgrep", "-f", "^Cronicle Server"], capture_output=True, text=True).stdout.split()
    if len(out) != 1:
        raise RuntimeError(f"cronicle bench: expected one 'Cronicle Server' process, found {out}")
    return int(out[0])


def main():
    pid = server_pid()
    ticks = lambda: sum(int(x) for x in open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[11:13])
    t0, c0 = time.time(), ticks()
    time.sleep(20)
    cpu = (ticks() - c0) / os.sysconf("SC_CLK_TCK") / (time.time() - t0) * 100
    rss = next(int(l.split()[1]) for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS:"))
    print(f"{'cronicle idle':<44} RSS {rss / 1024:.1f} MB, CPU {cpu:.2f} % of one core")
    home = os.readlink(f"/proc/{pid}/cwd")
    app = int(subprocess.run(["du", "-sb", "--exclude=./data", "--exclude=./logs", "."], cwd=home,
                             capture_output=True, text=True, check=True).stdout.split()[0])
    node = os.path.getsize(os.readlink(f"/proc/{pid}/exe"))
    print(f"{'cronicle install':<44} {app / 1e6:.1f} MB in {home}, Node.js {node / 1e6:.1f} MB")

    session = call("/api/user/login", {"username": os.environ.get("CRONICLE_USER", "admin"),
                                       "password": os.environ.get("CRONICLE_PASSWORD", "admin")})["session_id"]
    stamp = os.path.join(tempfile.mkdtemp(), "stamp.log")
    event = call("/api/app/create_event", {
        "title": f"taskmesh bench {time.time_ns()}", "enabled": 1, "category": "general",
        "target": "allgrp", "plugin": "shellplug", "max_children": 64, "queue": 1, "queue_max": 10000,
        "timing": False, "params": {"script": f"#!/bin/sh\ndate +%s%N >> {stamp}\n", "annotate": 0, "json": 0},
    }, session)["id"]
    try:
        starts = []
        for _ in range(100):
            before = len(lines(stamp))
            t0 = time.time_ns()
            call("/api/app/run_event", {"id": event}, session)
            new = wait_for(lambda: (lambda l: l[before] if len(l) > before else None)(lines(stamp)))
            starts.append((new - t0) / 1e6)
            # One job at a time: wait until Cronicle counts this one as finished.
            wait_for(lambda: True if not call("/api/app/get_active_jobs", {}, session)["jobs"] else None)
        report("cronicle: run_event -> process start", starts)

        before = len(lines(stamp))
        t0 = time.time()
        with ThreadPoolExecutor(32) as pool:
            list(pool.map(lambda _: call("/api/app/run_event", {"id": event}, session), range(300)))
        wait_for(lambda: True if len(lines(stamp)) >= before + 300 else None, 300)
        print(f"{'cronicle: 300 runs, 32 in flight':<44} {300 / (time.time() - t0):.1f} runs/s")
        wait_for(lambda: True if not call("/api/app/get_active_jobs", {}, session)["jobs"] else None, 120)
    finally:
        call("/api/app/delete_event", {"id": event}, session)


if __name__ == "__main__":
    main()

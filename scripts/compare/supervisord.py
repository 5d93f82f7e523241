#!/usr/bin/env python3
"""Measures supervisord the way benches/single_node.rs measures taskmesh, for a side-by-side run.

- start: XML-RPC startProcess (no wait) -> the program's `date +%s%N`, 200 times;
- restart: kill -9 of an autorestart program -> its next `date +%s%N`, 10 times;
- idle RSS of supervisord with those two programs configured.
Prints lines in the format of the taskmesh bench.
"""
import os, signal, subprocess, sys, tempfile, time, xmlrpc.client

import measure
from measure import report


def wait_for(check, deadline=10.0):
    return measure.wait_for(check, deadline, "supervisord bench")


def main():
    tmp = tempfile.mkdtemp()
    stamp, daemon = os.path.join(tmp, "stamp.log"), os.path.join(tmp, "daemon.log")
    sock = os.path.join(tmp, "sock")
    conf = os.path.join(tmp, "supervisord.conf")
    with open(conf, "w") as f:
        f.write(f"""[unix_http_server]
file={sock}
[supervisord]
logfile={tmp}/supervisord.log
pidfile={tmp}/supervisord.pid
nodaemon=true
[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
[program:stamp]
command=date +%%s%%N
autostart=false
autorestart=false
startsecs=0
stdout_logfile={stamp}
[program:daemon]
command=sh -c 'date +%%s%%N >> {daemon}; exec sleep 1000'
autostart=true
autorestart=true
startsecs=0
""")
    sup = subprocess.Popen([sys.executable, "-m", "supervisor.supervisord", "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        class UnixTransport(xmlrpc.client.Transport):
            def make_connection(self, host):
                import http.client, socket
                class C(http.client.HTTPConnection):
                    def connect(self):
                        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                        self.sock.connect(sock)
                return C("localhost")
        wait_for(lambda: True if os.path.exists(sock) else None)
        rpc = xmlrpc.client.ServerProxy("http://localhost", transport=UnixTransport()).supervisor
        wait_for(lambda: True if rpc.getProcessInfo("daemon")["statename"] == "RUNNING" else None)

        starts = []
        for _ in range(200):
            before = os.path.getsize(stamp) if os.path.exists(stamp) else 0
            t0 = time.time_ns()
            rpc.startProcess("stamp", False)
            def read():
                if not os.path.exists(stamp) or os.path.getsize(stamp) <= before:
                    return None
                with open(stamp) as f:
                    f.seek(before)
                    text = f.read()
                return int(text.split()[0]) if text.endswith("\n") else None
            starts.append((wait_for(read) - t0) / 1e6)
            wait_for(lambda: True if rpc.getProcessInfo("stamp")["statename"] in ("EXITED", "STOPPED") else None)
        report("supervisord: startProcess -> process start", starts)

        restarts = []
        for _ in range(10):
            lines = open(daemon).read().split()
            pid = rpc.getProcessInfo("daemon")["pid"]
            t0 = time.time_ns()
            os.kill(pid, signal.SIGKILL)
            new = wait_for(lambda: (lambda l: int(l[len(lines)]) if len(l) > len(lines) else None)(open(daemon).read().split()), 30)
            restarts.append((new - t0) / 1e6)
            wait_for(lambda: True if rpc.getProcessInfo("daemon")["statename"] == "RUNNING" else None)
        report("supervisord: kill -9 -> restarted process", restarts)

        rss = next(int(l.split()[1]) for l in open(f"/proc/{sup.pid}/status") if l.startswith("VmRSS:"))
        print(f"{'supervisord idle':<44} RSS {rss / 1024:.1f} MB")
    finally:
        sup.send_signal(signal.SIGTERM)
        sup.wait(timeout=30)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""System calls per proxied request, by call: nginx, plain Pingora and edgegate, side by side.

    python3 benches/load/syscalls.py [--requests N] [--edgegate BIN]   (or benches/load/run --syscalls)

Starts the same upstream, Redis and configuration as harness.py, warms each proxy, attaches
`strace -c -f` to it (every thread), sends N GETs on one keep-alive connection and prints
the calls per request. Like icount.py's instruction count, this does not move with the
machine's load; about half of edgegate's CPU time is in the kernel, so it is the other half
of the picture. Needs strace (Debian) and release binaries (benches/load/run builds them).
"""
import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
import icount  # noqa: E402

ROOT = h.ROOT


def counts(path):
    """strace -c's table: {call: calls}."""
    out = {}
    with open(path) as f:
        for line in f:
            parts = line.split()
            # % time, seconds, usecs/call, calls, [errors], syscall
            if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
                try:
                    out[parts[-1]] = int(parts[3])
                except ValueError:
                    pass
    return out


def measure(proc, port, n, work, name):
    icount.send(port, 200)  # warm: caches, connection pools, lazy statics
    path = os.path.join(work, f"{name}.strace")
    pid = h.tree_pids(proc.pid)[-1]  # nginx: its worker
    tracer = subprocess.Popen(["strace", "-c", "-f", "-o", path, "-p", str(pid)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attached to every thread
    icount.send(port, n)
    tracer.send_signal(signal.SIGINT)
    tracer.wait(timeout=30)
    return {k: v / n for k, v in counts(path).items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--edgegate", default=os.path.join(ROOT, "target/release/edgegate"),
                    help="the edgegate binary to trace (to compare two builds)")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = tempfile.mkdtemp(prefix="edgegate-syscalls-")
    procs = h.Procs()
    try:
        ng, pp, eg, adm = (h.free_port() for _ in range(4))
        up, rp = h.start_backend(procs, work, None)
        nginx = procs.start("nginx", ["nginx", "-c", h.nginx_conf(
            work, "proxy", h.nginx_proxy(up, f"127.0.0.1:{ng}"))])
        pingora = procs.start("pingora", [h.PLAIN, f"127.0.0.1:{pp}", f"127.0.0.1:{up}", "1"])
        cfg = h.edgegate_config(work, eg, adm, rp, os.path.join(work, "access.log"))
        edgegate = procs.start("edgegate", [args.edgegate, "run", "-c", cfg])
        for port in (ng, pp, eg):
            h.wait_port(port)
        results = {name: measure(p, port, args.requests, work, name) for name, p, port in
                   (("nginx", nginx, ng), ("pingora", pingora, pp), ("edgegate", edgegate, eg))}
        calls = sorted({c for r in results.values() for c in r},
                       key=lambda c: -max(r.get(c, 0) for r in results.values()))
        print(f"system calls per request (strace -c -f, {args.requests} keep-alive GETs, "
              "every thread):")
        print(f"  {'call':18}" + "".join(f"{n:>10}" for n in results))
        for c in calls:
            row = [results[n].get(c, 0) for n in results]
            if max(row) >= 0.005:
                print(f"  {c:18}" + "".join(f"{v:>10.2f}" for v in row))
        print(f"  {'total':18}" + "".join(f"{sum(r.values()):>10.2f}" for r in results.values()))
    finally:
        procs.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

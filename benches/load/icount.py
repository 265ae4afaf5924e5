#!/usr/bin/env python3
"""Instructions per request, under callgrind: a count that does not move with the machine's
noise, for before/after comparisons of edgegate against the plain Pingora proxy.

    python3 benches/load/icount.py [--requests N] [--edgegate BIN] [--keep]

Starts the same upstream, Redis and configuration as harness.py, runs each proxy under
`valgrind --tool=callgrind`, warms it, zeroes the counters, sends N keep-alive requests and
reads the instruction count (user space only: the kernel's share is not counted). Needs
valgrind (Debian) and release binaries (benches/load/run builds them).
"""
import argparse
import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

ROOT = h.ROOT


def send(port, n):
    """n GETs on one keep-alive connection; every answer must be 200."""
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for _ in range(n):
        c.request("GET", "/", headers={"Host": h.HOST, "Cookie": f"session={h.SESSION}"})
        r = c.getresponse()
        r.read()
        if r.status != 200:
            raise SystemExit(f"port {port}: status {r.status}")
    c.close()


def instructions(out_dir, pid):
    total = 0
    for f in glob.glob(os.path.join(out_dir, f"callgrind.out.{pid}*")):
        with open(f) as fh:
            for line in fh:
                if line.startswith("summary:") or line.startswith("totals:"):
                    total = max(total, int(line.split()[1]))
    return total


def measure(procs, name, cmd, port, n, work):
    out = os.path.join(work, name)
    os.makedirs(out, exist_ok=True)
    p = procs.start(name, ["valgrind", "--tool=callgrind", "--collect-atstart=yes",
                           f"--callgrind-out-file={out}/callgrind.out.%p"] + cmd)
    h.wait_port(port, limit=120.0)
    send(port, 200)  # warm: caches, connection pools, lazy statics
    subprocess.run(["callgrind_control", "--zero", str(p.pid)], check=True, capture_output=True)
    send(port, n)
    subprocess.run(["callgrind_control", "--dump", str(p.pid)], check=True, capture_output=True)
    deadline = time.time() + 30
    ir = 0
    while time.time() < deadline and not ir:
        time.sleep(0.5)
        ir = instructions(out, p.pid)
    return ir / n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--edgegate", default=os.path.join(ROOT, "target/release/edgegate"),
                    help="the edgegate binary to count (to compare two builds)")
    ap.add_argument("--keep", action="store_true",
                    help="keep the callgrind profiles (for callgrind_annotate) and print where")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = tempfile.mkdtemp(prefix="edgegate-icount-")
    procs = h.Procs()
    try:
        pp, eg, adm = (h.free_port() for _ in range(3))
        up, rp = h.start_backend(procs, work, None)
        cfg = h.edgegate_config(work, eg, adm, rp, os.path.join(work, "access.log"))
        results = {
            "pingora": measure(procs, "pingora", [
                h.PLAIN, f"127.0.0.1:{pp}", f"127.0.0.1:{up}", "1"], pp, args.requests, work),
        }
        # The same proxy built with edgegate's release profile: what the build settings alone
        # are worth, so the baseline's ratio is never read as the code's.
        if os.path.exists(h.PLAIN_SAME_PROFILE):
            ps = h.free_port()
            results["pingora*"] = measure(procs, "pingora-same-profile", [
                h.PLAIN_SAME_PROFILE, f"127.0.0.1:{ps}", f"127.0.0.1:{up}", "1"],
                ps, args.requests, work)
        results["edgegate"] = measure(procs, "edgegate", [args.edgegate, "run", "-c", cfg],
                                      eg, args.requests, work)
        print(f"instructions per request (user space, callgrind, {args.requests} keep-alive GETs):")
        for name, ir in results.items():
            print(f"  {name:9} {ir:>10,.0f}")
        print(f"  edgegate/pingora: {results['edgegate'] / results['pingora']:.2f}x"
              " (pingora: Cargo's release defaults, as its users build it)")
        if "pingora*" in results:
            print(f"  edgegate/pingora*: {results['edgegate'] / results['pingora*']:.2f}x"
                  " (pingora*: built with edgegate's own release profile)")
    finally:
        procs.stop()
        if args.keep:
            print(f"profiles: {work}/{{pingora,edgegate}}/callgrind.out.*")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

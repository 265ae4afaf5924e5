#!/usr/bin/env python3
"""Two edgegate builds head to head: CPU microseconds per request under the same load.

    python3 benches/load/ab.py BIN_A BIN_B [--rounds N] [--seconds S] [--unpinned]

Both builds run at once behind the same Redis and upstream (harness.py's configuration:
Redis-backed host routing on a cache hit, session auth, metrics and the access log on), and
wrk drives them in turn, A B A B ..., so the machine's drift over minutes hits both alike.
Prints per-round figures and the medians. Pinned by default: wrk on CPU 0, servers on CPU 1.
Used to choose the allocator (docs/BENCHMARKS.md). Every process it starts, it stops.
"""
import argparse
import os
import shutil
import signal
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--unpinned", action="store_true")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    gen, srv = (None, None) if args.unpinned else (0, 1)
    work = tempfile.mkdtemp(prefix="edgegate-ab-")
    procs = h.Procs()
    try:
        up, rp = h.start_backend(procs, work, srv)
        runs = {}
        for label, binary in (("A", args.a), ("B", args.b)):
            eg, adm = h.free_port(), h.free_port()
            d = os.path.join(work, label)
            os.makedirs(d)
            cfg = h.edgegate_config(d, eg, adm, rp, os.path.join(d, "access.log"))
            p = procs.start(label, [binary, "run", "-c", cfg], srv)
            h.wait_port(eg)
            w = h.wrk(eg, 1, gen)
            if w["bad"] or w["requests"] == 0:
                raise SystemExit(f"{binary} does not answer 200 ({w})")
            runs[label] = (p, eg, [])
        for r in range(args.rounds):
            for label, (p, port, res) in runs.items():
                pids = h.tree_pids(p.pid)
                before = sum(h.cpu_ticks(x) for x in pids)
                w = h.wrk(port, args.seconds, gen)
                ticks = sum(h.cpu_ticks(x) for x in pids) - before
                cpu = ticks / h.TICK * 1e6 / max(1, w["requests"])
                res.append((cpu, w["rps"], sum(h.rss_kib(x) for x in pids)))
                print(f"round {r + 1} {label}: {cpu:6.1f} us/req {w['rps']:>8.0f} req/s "
                      f"RSS {res[-1][2]} KiB  bad {w['bad']}", flush=True)
        for label, binary in (("A", args.a), ("B", args.b)):
            res = runs[label][2]
            print(f"{label} {binary}: median {statistics.median(x[0] for x in res):.1f} us/req, "
                  f"{statistics.median(x[1] for x in res):.0f} req/s, "
                  f"RSS {statistics.median(x[2] for x in res):.0f} KiB")
        a, b = (statistics.median(x[0] for x in runs[k][2]) for k in ("A", "B"))
        print(f"B/A CPU per request: {b / a:.3f}x")
    finally:
        procs.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Memory of idle kept-alive client connections held through edgegate: HTTP/1.1 connections
that have served one request each and wait for the next (idle WebSockets: harness.py).

    python3 benches/load/idle.py [--edgegate BIN] [--keepalive 1000,5000]

Starts its own upstream (nginx) and Redis through harness.py's helpers, then for each count N:
opens N connections, sends one request on each (the bench workspace, the session cookie),
reads the response, leaves the connection open, and measures edgegate's RSS growth (all of
its threads) against a warm baseline. Prints KiB per idle connection and the total for N.
Loopback only; everything it starts is stopped when it ends. The connections stay inside the
keep-alive timeout (75 s by default) while they are measured.
"""

import argparse
import os
import socket
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402


def hold_keepalive(port, n, host, wrap=None):
    """Open n connections, one request each, kept alive; return the sockets. `wrap` (a socket
    to a socket) puts each connection under TLS first."""
    req = (f"GET / HTTP/1.1\r\nHost: {host}\r\nCookie: session={h.SESSION}\r\n\r\n").encode()
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        if wrap:
            s = wrap(s)
        s.sendall(req)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                raise SystemExit(f"port {port}: connection closed before a response")
            buf += chunk
        head, _, body = buf.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise SystemExit(f"port {port}: {head[:80]!r}")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v.strip())
        while len(body) < length:
            chunk = s.recv(65536)
            if not chunk:
                raise SystemExit(f"port {port}: body cut short")
            body += chunk
        socks.append(s)
    return socks


def rss_total(pid):
    return sum(h.rss_kib(p) for p in h.tree_pids(pid))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--edgegate", default=os.path.join(h.ROOT, "target/release/edgegate"))
    ap.add_argument("--keepalive", default="1000,5000",
                    help="comma-separated counts of idle kept-alive connections")
    ap.add_argument("--read-buffer", type=int, metavar="BYTES",
                    help="listen.read_buffer_bytes for the run (default: the config's default)")
    a = ap.parse_args()
    if not os.path.exists(a.edgegate):
        raise SystemExit(f"{a.edgegate} is missing: cargo build --release")
    procs = h.Procs()
    work = tempfile.mkdtemp(prefix="edgegate-idle-")
    try:
        up, rp = h.start_backend(procs, work, None)
        eg, adm = h.free_port(), h.free_port()
        cfg = h.edgegate_config(work, eg, adm, rp, "off")
        if a.read_buffer is not None:
            with open(cfg) as f:
                text = f.read()
            with open(cfg, "w") as f:
                f.write(text.replace("[listen]\n", f"[listen]\nread_buffer_bytes = {a.read_buffer}\n", 1))
        p = procs.start("edgegate", [a.edgegate, "run", "-c", cfg], None)
        h.wait_port(eg)
        host = f"ws-{h.ID.lower()}.bench.test"
        warm = hold_keepalive(eg, 50, host)
        time.sleep(0.5)
        print(f"edgegate {a.edgegate}" + (f", read_buffer_bytes = {a.read_buffer}"
                                          if a.read_buffer is not None else ""))
        print(f"{'what':<28} {'N':>6} {'KiB each':>9} {'MiB total':>10}")
        for n in [int(x) for x in a.keepalive.split(",") if int(x) > 0]:
            before = rss_total(p.pid)
            held = hold_keepalive(eg, n, host)
            time.sleep(1.0)
            after = rss_total(p.pid)
            per = (after - before) / n
            print(f"{'idle keep-alive connection':<28} {n:>6} {per:>9.1f} {(after - before) / 1024:>10.1f}")
            for s in held:
                s.close()
            time.sleep(1.0)
        for s in warm:
            s.close()
    finally:
        procs.stop()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""How edgegate's cost grows (issue #20): many workspaces, cold misses, idle connections, two
workers. Started by `benches/load/run --scale [PART ...]`, which installs and builds what it
needs; each part can also be run alone:

    python3 benches/load/scale.py workspaces [--counts 1000,100000,1000000]
    python3 benches/load/scale.py cold [--records 400000]
    python3 benches/load/scale.py idle [--counts 1000,8000]
    python3 benches/load/scale.py workers
    python3 benches/load/scale.py tls [--counts 1000,3000]

workspaces  N records in Redis, every one requested once (cache ttl 1 h, so all stay cached),
            then: RSS per cached record, CPU per request at saturation and p50/p99 at a fixed
            rate with every request a random one of the N, Redis commands per request.
cold        every request a workspace no earlier request named (so never in the cache):
            edgegate against examples/naive_redis_pingora.rs (one HGETALL per request, no
            cache; once with one pool of upstream connections, once with a pool per
            workspace as edgegate keeps them), CPU per request of the proxy and of
            redis-server, Redis commands per request; then 64 concurrent requests for one
            uncached workspace while Redis is held still by DEBUG SLEEP, and the HGETALLs
            they cost.
idle        KiB per idle WebSocket and per idle keep-alive connection, at each count, for
            edgegate, plain Pingora, nginx and HAProxy (RSS growth of the process tree).
tls         KiB per idle kept-alive connection over TLS (one GET each, then held), edgegate
            without a TLS read buffer (the default) and with 16 KiB, beside nginx and HAProxy
            (not in the default parts: it takes a few minutes more).
workers     two workers each (edgegate threads = 2, nginx worker_processes 2, plain Pingora
            2 threads), unpinned: req/s and CPU per request, interleaved rounds.

SCALE_ACTIVITY_SECS=N sets edgegate's activity interval (0 turns the activity signal off:
`workspaces` then measures the record cache without the marks of the interval under way).

Loopback only; every loop is bounded; everything started here is stopped here. The machine's
open-file limit (20,000 here) bounds the idle counts: a proxied WebSocket holds two
descriptors in the proxy.
"""

import argparse
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

NAIVE = os.path.join(h.ROOT, "target/release/examples/naive_redis_pingora")
ECHO = os.path.join(h.ROOT, "target/release/examples/echo_upstream")
PREFIX = "01HZX3M9Q4"  # + 16 decimal digits: a valid ULID per workspace number


def ws_id(i):
    return f"{PREFIX}{i:016d}"


# wrk's Lua: the host of each request is workspace number `first + k` (k counting up, one
# sequence per wrk thread, wrapping after `count`) or, with mode "random", a random one of
# `count` from `first`.
WRK_LUA = r"""
local first, count, mode, pace = 0, 1, "seq", 0
local k = 0
function init(args)
  first = tonumber(args[1]); count = tonumber(args[2]); mode = args[3]; pace = tonumber(args[4])
  math.randomseed(os.time() + first)
end
function delay() return pace end
function request()
  local n
  if mode == "random" then n = first + math.random(0, count - 1)
  else n = first + (k % count); k = k + 1 end
  return wrk.format("GET", "/", {
    ["Host"] = string.format("ws-01hzx3m9q4%016d.bench.test", n),
    ["Cookie"] = "session=bench-session" })
end
"""


def wrk_lua(work, port, seconds, first, count, mode="seq", rate=0, threads=1, conns=64):
    """wrk with the script above. rate > 0 paces each connection (a fixed total rate)."""
    script = os.path.join(work, "hosts.lua")
    if not os.path.exists(script):
        with open(script, "w") as f:
            f.write(WRK_LUA)
    pace = conns * 1000.0 / rate if rate else 0
    cmd = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--latency", "-s", script,
           f"http://127.0.0.1:{port}/", "--", str(first), str(count), mode, f"{pace:.3f}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    return parse_wrk(out)


def parse_wrk(out):
    m = re.search(r"(\d+) requests in", out)
    if not m:
        raise SystemExit(f"wrk printed no summary: {out[:300]!r}")
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)

    def pct(p):
        m = re.search(rf"\s{p}(?:\.0+)?%\s+([\d.]+)(us|ms|s)\b", out)
        if not m:
            return float("nan")
        v, unit = float(m.group(1)), m.group(2)
        return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v

    return {"requests": int(m.group(1)),
            "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50": pct(50), "p99": pct(99), "bad": int(non2xx.group(1)) if non2xx else 0}


def cpu_of(pids):
    return sum(h.cpu_ticks(p) for p in pids)


def rss_of(proc):
    return sum(h.rss_kib(p) for p in h.tree_pids(proc.pid))


def hgetall_calls(rp):
    out = subprocess.run(["redis-cli", "-p", str(rp), "INFO", "commandstats"],
                         capture_output=True, text=True).stdout
    m = re.search(r"cmdstat_hgetall:calls=(\d+)", out)
    return int(m.group(1)) if m else 0


def redis_pid(rp):
    out = subprocess.run(["redis-cli", "-p", str(rp), "INFO", "server"],
                         capture_output=True, text=True).stdout
    return int(re.search(r"process_id:(\d+)", out).group(1))


def load_records(rp, first, count, backend):
    """HSET `count` workspace records through redis-cli --pipe, in chunks."""
    step = 100_000
    for start in range(first, first + count, step):
        lines = []
        for i in range(start, min(first + count, start + step)):
            key = f"workspace:{ws_id(i)}"
            parts = ["HSET", key, "backend", backend, "owner", "bench", "status", "running"]
            lines.append(f"*{len(parts)}\r\n" + "".join(f"${len(p)}\r\n{p}\r\n" for p in parts))
        r = subprocess.run(["redis-cli", "-p", str(rp), "--pipe"], input="".join(lines),
                           capture_output=True, text=True, timeout=600)
        if r.returncode != 0 or "errors: 0" not in r.stdout:
            raise SystemExit(f"redis-cli --pipe: {r.stdout[-300:]} {r.stderr[-300:]}")


def edgegate_conf(work, eg, adm, rp, cache, threads=1):
    cfg = h.edgegate_config(work, eg, adm, rp, "off")
    with open(cfg) as f:
        text = f.read()
    text = text.replace("[cache]\nttl_ms = 60000\n", "[cache]\n" + cache)
    if os.environ.get("SCALE_ACTIVITY_SECS"):
        text += f"[activity]\ninterval_secs = {os.environ['SCALE_ACTIVITY_SECS']}\n"
    text = text.replace("threads = 1\n", f"threads = {threads}\n")
    with open(cfg, "w") as f:
        f.write(text)
    return cfg


def start_edgegate(procs, work, rp, cache, threads=1, binary=None):
    eg, adm = h.free_port(), h.free_port()
    cfg = edgegate_conf(work, eg, adm, rp, cache, threads)
    p = procs.start("edgegate", [binary or os.path.join(h.ROOT, "target/release/edgegate"),
                                 "run", "-c", cfg])
    h.wait_port(eg)
    h.wait_port(adm)
    return p, eg


def drive_all(work, port, first, count):
    """Request workspaces first .. first+count-1, each at least once, in bounded wrk runs.
    Returns the non-2xx answers (a pass with any is repeated: a hit costs little)."""
    bad_total = 0
    for _ in range(3):
        done, runs, bad = 0, 0, 0
        while done < count:
            runs += 1
            if runs > 10_000:
                raise SystemExit("drive_all: no progress")
            w = wrk_lua(work, port, 5, first + done, count - done)
            bad += w["bad"]
            done += w["requests"]
        bad_total += bad
        if not bad:
            return bad_total
    raise SystemExit(f"drive_all: {bad_total} non-2xx answers in three passes")


def part_workspaces(a, work):
    print("## distinct workspaces, all cached\n")
    print("| records | RSS before / after warming (MiB) | bytes per cached record | "
          "CPU µs/req, each request a random one of the N | req/s | CPU µs/req, random one "
          f"of 64 of the N | req/s | p50 / p99 ms at {a.rate} req/s, random of N | "
          "Redis reads/req |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n in [int(x) for x in a.counts.split(",")]:
        procs = h.Procs()
        try:
            up, rp = h.start_backend(procs, work, None)
            load_records(rp, 0, n, f"127.0.0.1:{up}")
            cache = (f"ttl_ms = 3600000\nnegative_ttl_ms = 3600000\nmax_entries = {n * 5 // 4 + 1000}\n"
                     "max_bytes = 1073741824\n")
            eg, port = start_edgegate(procs, work, rp, cache)
            w = wrk_lua(work, port, 1, 0, 1)  # one workspace and the session: warm
            time.sleep(1)
            before = rss_of(eg)
            calls0 = hgetall_calls(rp)
            warm_bad = drive_all(work, port, 0, n)
            misses = hgetall_calls(rp) - calls0
            time.sleep(1)
            after = rss_of(eg)
            per = (after - before) * 1024 / n
            pids = h.tree_pids(eg.pid)
            # Record reads only: the activity flusher's writes (one EVAL per workspace marked
            # in the interval) are not a cost of the lookup.
            c0, calls0 = cpu_of(pids), hgetall_calls(rp)
            w = wrk_lua(work, port, a.seconds, 0, n, "random")
            cpu = (cpu_of(pids) - c0) / h.TICK * 1e6 / max(1, w["requests"])
            rcalls = (hgetall_calls(rp) - calls0) / max(1, w["requests"])
            # The same over 64 of the N: the upstream pools stay warm (each workspace has its
            # own), so this is the lookup among N cached records without an upstream connect.
            c0 = cpu_of(pids)
            hot = wrk_lua(work, port, a.seconds, n // 2, min(64, n), "random")
            hot_cpu = (cpu_of(pids) - c0) / h.TICK * 1e6 / max(1, hot["requests"])
            f = wrk_lua(work, port, a.seconds, 0, n, "random", rate=a.rate)
            print(f"| {n:,} | {before / 1024:.1f} / {after / 1024:.1f} | {per:.0f} | {cpu:.1f} | "
                  f"{w['rps']:,.0f} | {hot_cpu:.1f} | {hot['rps']:,.0f} | "
                  f"{f['p50']:.2f} / {f['p99']:.2f} | {rcalls:.4f} |", flush=True)
            print(f"  ({n:,} records: {misses:,} HGETALLs while warming, {warm_bad} non-2xx "
                  f"answers then; non-2xx while measured: {w['bad'] + f['bad']})", file=sys.stderr)
        finally:
            procs.stop()
    print()


def burst_one_key(port, rp, wid, n=64):
    """n requests for one uncached workspace while Redis sleeps: the HGETALLs of its record
    they cost (read off MONITOR, so the session's own reads are not counted)."""
    host = f"ws-{wid.lower()}.bench.test"
    monitor = subprocess.Popen(["redis-cli", "-p", str(rp), "MONITOR"],
                               stdout=subprocess.PIPE, text=True)
    time.sleep(0.2)
    sleeper = subprocess.Popen(["redis-cli", "-p", str(rp), "DEBUG", "SLEEP", "0.3"],
                               stdout=subprocess.DEVNULL)
    time.sleep(0.05)
    socks = []
    req = f"GET / HTTP/1.1\r\nHost: {host}\r\nCookie: session={h.SESSION}\r\n\r\n".encode()
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(req)
        socks.append(s)
    statuses = []
    for s in socks:
        head = b""
        while b"\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                break
            head += chunk
        statuses.append(head[9:12].decode(errors="replace"))
        s.close()
    sleeper.wait(timeout=10)
    time.sleep(0.2)
    monitor.terminate()
    out = monitor.communicate(timeout=10)[0]
    reads = sum(1 for line in out.splitlines()
                if '"HGETALL"' in line.upper() and f"workspace:{wid}" in line)
    return reads, statuses


def part_cold(a, work):
    print("## cold misses: every request a workspace not in the cache\n")
    procs = h.Procs()
    try:
        up, rp = h.start_backend(procs, work, None)
        load_records(rp, 0, a.records, f"127.0.0.1:{up}")
        # The default cache (ttl 1 s); no workspace is asked for twice.
        eg, egp = start_edgegate(procs, work, rp, "ttl_ms = 1000\n")
        npp, nip = h.free_port(), h.free_port()
        naive = procs.start("naive", [NAIVE, f"127.0.0.1:{npp}", f"redis://127.0.0.1:{rp}/0", "1"])
        isolated = procs.start("naive-isolated", [NAIVE, f"127.0.0.1:{nip}",
                                                  f"redis://127.0.0.1:{rp}/0", "1", "isolated"])
        h.wait_port(npp)
        h.wait_port(nip)
        rpid = redis_pid(rp)
        nxt = 10  # workspace numbers below are for warming
        proxies = (("edgegate", eg, egp), ("naive Pingora + Redis", naive, npp),
                   ("naive, pools per workspace", isolated, nip))
        for _, _, port in proxies:
            w = wrk_lua(work, port, 1, 0, 10, "random")
            if w["bad"] or not w["requests"]:
                raise SystemExit(f"port {port} does not answer 200 ({w})")
        rows = {name: [] for name, _, _ in proxies}
        for r in range(a.rounds):
            for name, proc, port in proxies:
                pids = h.tree_pids(proc.pid)
                c0, rc0, calls0 = cpu_of(pids), h.cpu_ticks(rpid), h.redis_calls(rp)
                w = wrk_lua(work, port, a.seconds, nxt, a.records - nxt)
                nxt += w["requests"] + 64
                if nxt >= a.records:
                    raise SystemExit("cold: ran out of workspaces; raise --records")
                n = max(1, w["requests"])
                rows[name].append({
                    "cpu": (cpu_of(pids) - c0) / h.TICK * 1e6 / n,
                    "redis": (h.cpu_ticks(rpid) - rc0) / h.TICK * 1e6 / n,
                    "calls": (h.redis_calls(rp) - calls0) / n,
                    "rps": w["rps"], "p99": w["p99"], "bad": w["bad"]})
                print(f"round {r + 1} {name:22} {w['rps']:>8.0f} req/s "
                      f"{rows[name][-1]['cpu']:5.1f} us/req", file=sys.stderr)
        print("| proxy | req/s | p99 ms | proxy CPU µs/req | redis-server CPU µs/req | "
              "total | Redis commands/req |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        med = {}
        for name, runs in rows.items():
            m = {k: statistics.median(x[k] for x in runs) for k in runs[0]}
            med[name] = m
            print(f"| {name} | {m['rps']:,.0f} | {m['p99']:.2f} | {m['cpu']:.1f} | "
                  f"{m['redis']:.1f} | {m['cpu'] + m['redis']:.1f} | {m['calls']:.2f} |")
        e = med["edgegate"]
        for other in ("naive Pingora + Redis", "naive, pools per workspace"):
            nv = med[other]
            print(f"\nedgegate / {other}: proxy CPU {e['cpu'] / nv['cpu']:.2f}x, with Redis "
                  f"{(e['cpu'] + e['redis']) / (nv['cpu'] + nv['redis']):.2f}x")
        for name, _, port in proxies:
            nxt += 1
            calls, statuses = burst_one_key(port, rp, ws_id(nxt))
            ok = sum(1 for s in statuses if s == "200")
            print(f"{name}: 64 concurrent requests for one uncached workspace: {calls} HGETALL of "
                  f"its record, "
                  f"{ok} of 64 answered 200")
    finally:
        procs.stop()
    print()


def nginx_conf(work, name, body, workers=1):
    """harness.py's nginx config with room for the idle counts and `workers` processes."""
    path = h.nginx_conf(work, name, body)
    with open(path) as f:
        text = f.read()
    text = text.replace("worker_connections 4096", "worker_connections 19000")
    text = text.replace("worker_processes 1;", f"worker_processes {workers};")
    with open(path, "w") as f:
        f.write(text)
    return path


def haproxy_conf(work, name, listen, backend, bind_opts=""):
    path = os.path.join(work, f"{name}.cfg")
    with open(path, "w") as f:
        f.write(f"""global
  maxconn 9000
defaults
  mode http
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  timeout tunnel 3600s
  timeout http-keep-alive 300s
frontend fe
  bind 127.0.0.1:{listen}{bind_opts}
  default_backend be
backend be
  http-reuse always
  server s1 {backend}
""")
    return path


def part_idle(a, work):
    print("## idle connections: RSS growth per connection (KiB)\n")
    counts = [int(x) for x in a.counts.split(",")]
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    backend = h.Procs()
    try:
        up, rp = h.start_backend(backend, work, None)
        wu = h.free_port()
        backend.start("ws-upstream", [ECHO, f"127.0.0.1:{wu}"])
        subprocess.run(["redis-cli", "-p", str(rp), "HSET", f"workspace:{h.WS_ID}", "backend",
                        f"127.0.0.1:{wu}", "owner", "bench", "status", "running"],
                       check=True, capture_output=True)
        h.wait_port(wu)

        def start(procs, name, target):
            """The proxy `name` in front of `target` (a port); returns (process, port)."""
            port = h.free_port()
            if name == "nginx":
                ws = "proxy_read_timeout 3600s; proxy_set_header Upgrade $http_upgrade; " \
                     "proxy_set_header Connection \"upgrade\";" if target == wu else \
                     "proxy_set_header Connection \"\";"
                p = procs.start("nginx", ["nginx", "-c", nginx_conf(work, f"idle-{port}", f"""
  keepalive_timeout 300s;
  upstream up {{ server 127.0.0.1:{target}; keepalive 64; }}
  server {{ listen 127.0.0.1:{port};
           location / {{ proxy_pass http://up; proxy_http_version 1.1; {ws}
                        proxy_set_header Host $host; }} }}
""")])
            elif name == "plain Pingora":
                p = procs.start(name, [h.PLAIN, f"127.0.0.1:{port}", f"127.0.0.1:{target}", "1"])
            elif name == "HAProxy":
                p = procs.start(name, ["haproxy", "-db", "-f", haproxy_conf(
                    work, f"idle-{port}", port, f"127.0.0.1:{target}")])
            else:
                p, port = start_edgegate(procs, work, rp, "ttl_ms = 3600000\n")
            h.wait_port(port)
            return p, port

        names = ["nginx", "plain Pingora"] + (["HAProxy"] if shutil.which("haproxy") else []) \
            + ["edgegate"]
        print("| proxy | " + " | ".join(f"WebSocket, {n:,} held" for n in counts) + " | "
              + " | ".join(f"keep-alive, {n:,} held" for n in counts) + " |")
        print("| --- |" + " ---: |" * (2 * len(counts)))
        for name in names:
            cells = []
            for target, opener in ((wu, lambda port, k: h.hold_websockets(port, k, h.WS_HOST)),
                                   (up, lambda port, k: hold_keepalive(port, k))):
                cells += fresh_cells(counts, lambda procs: start(procs, name, target), opener)
            print(f"| {name} | " + " | ".join(f"{c:.1f}" for c in cells) + " |", flush=True)
    finally:
        backend.stop()
    print()

def part_tls(a, work):
    """Idle kept-alive connections over TLS (each served one GET, then held): what a browser
    holds open. edgegate without a TLS read buffer (the default) and with 16 KiB, beside nginx and
    HAProxy terminating TLS the same way (one self-signed P-256 certificate, TLS 1.3)."""
    print("## idle keep-alive connections over TLS: RSS growth per connection (KiB)\n")
    counts = [int(x) for x in a.counts.split(",")]
    import resource
    import ssl
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    cert, key = os.path.join(work, "tls.crt"), os.path.join(work, "tls.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-days", "1", "-subj", "/CN=bench.test",
                    "-addext", "subjectAltName=DNS:*.bench.test", "-keyout", key, "-out", cert],
                   check=True, capture_output=True)
    pem = os.path.join(work, "tls.pem")
    with open(pem, "w") as f:
        f.write(open(cert).read() + open(key).read())
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    client.set_alpn_protocols(["http/1.1"])
    tls = lambda raw: client.wrap_socket(raw, server_hostname=h.HOST)  # noqa: E731

    backend = h.Procs()
    try:
        up, rp = h.start_backend(backend, work, None)

        def start(procs, name, buf):
            """The proxy `name` terminating TLS in front of the upstream: (process, port)."""
            port = h.free_port()
            if name == "nginx":
                p = procs.start("nginx", ["nginx", "-c", nginx_conf(
                    work, f"tls-{port}", "\n  keepalive_timeout 300s;" + h.nginx_proxy(
                        up, f"127.0.0.1:{port} ssl; ssl_certificate {cert}; "
                            f"ssl_certificate_key {key};\n           ssl_protocols TLSv1.3"))])
            elif name == "HAProxy":
                p = procs.start(name, ["haproxy", "-db", "-f", haproxy_conf(
                    work, f"tls-{port}", port, f"127.0.0.1:{up}",
                    f" ssl crt {pem} alpn http/1.1 ssl-min-ver TLSv1.3")])
            else:
                eg, adm = h.free_port(), h.free_port()
                cfg = edgegate_conf(work, eg, adm, rp, "ttl_ms = 3600000\n")
                with open(cfg) as f:
                    text = f.read()
                text = text.replace(f'http = ["127.0.0.1:{eg}"]\n',
                                    f'http = ["127.0.0.1:{eg}"]\ntls_read_buffer_bytes = {buf}\n'
                                    f'[[listen.tls]]\naddr = "127.0.0.1:{port}"\nh2 = false\n'
                                    f'[[listen.tls.certs]]\ncert_file = "{cert}"\n'
                                    f'key_file = "{key}"\nnames = ["*.bench.test"]\n')
                with open(cfg, "w") as f:
                    f.write(text)
                p = procs.start("edgegate", [os.path.join(h.ROOT, "target/release/edgegate"),
                                             "run", "-c", cfg])
                h.wait_port(eg)
            h.wait_port(port)
            return p, port

        print("| proxy | " + " | ".join(f"{n:,} held" for n in counts) + " |")
        print("| --- |" + " ---: |" * len(counts))
        rows = [("nginx", None), ("edgegate, `tls_read_buffer_bytes` 16640", 16640),
                ("edgegate, `tls_read_buffer_bytes` 0 (the default)", 0)]
        if shutil.which("haproxy"):
            rows.insert(1, ("HAProxy", None))
        for name, buf in rows:
            cells = fresh_cells(counts, lambda procs: start(procs, name, buf),
                                lambda port, k: hold_keepalive(port, k, tls))
            print(f"| {name} | " + " | ".join(f"{c:.1f}" for c in cells) + " |", flush=True)
    finally:
        backend.stop()
    print()


def fresh_cells(counts, start, opener):
    """RSS growth per held connection at each of `counts`, a fresh proxy for every measurement
    (memory that closed connections gave back would otherwise be reused by the next ones and
    read as less growth). `start(procs)` starts the proxy, returning (process, port);
    `opener(port, k)` opens and holds k connections."""
    cells = []
    for n in counts:
        procs = h.Procs()
        try:
            p, port = start(procs)
            cells.append(held_kib(p, lambda k: opener(port, k), n))
        finally:
            procs.stop()
    return cells


def held_kib(proc, opener, n):
    warm = opener(20)
    time.sleep(0.5)
    before = rss_of(proc)
    held = opener(n)
    # Idle for 2 s before the count, every proxy alike: edgegate's tunnels release their read
    # buffers after 1 s without traffic (src/websocket.rs, RELEASE_AFTER).
    time.sleep(2.0)
    after = rss_of(proc)
    for s in held + warm:
        s.close()
    return (after - before) / n


def hold_keepalive(port, n, wrap=None):
    import idle
    return idle.hold_keepalive(port, n, h.HOST, wrap)


def part_workers(a, work):
    print("## two workers each, unpinned (wrk -t2 -c128)\n")
    procs = h.Procs()
    try:
        up, rp = h.start_backend(procs, work, None)
        ng = h.free_port()
        nginx = procs.start("nginx", ["nginx", "-c", nginx_conf(work, "w-nginx", f"""
  upstream up {{ server 127.0.0.1:{up}; keepalive 128; }}
  server {{ listen 127.0.0.1:{ng};
           location / {{ proxy_pass http://up; proxy_http_version 1.1;
                        proxy_set_header Connection ""; proxy_set_header Host $host; }} }}
""", workers=2)])
        pp = h.free_port()
        plain = procs.start("pingora", [h.PLAIN, f"127.0.0.1:{pp}", f"127.0.0.1:{up}", "2"])
        eg, egp = start_edgegate(procs, work, rp, "ttl_ms = 3600000\n", threads=2)
        proxies = [("nginx", nginx, ng), ("plain Pingora", plain, pp), ("edgegate", eg, egp)]
        for _, _, port in proxies:
            h.wait_port(port)
        rows = {name: [] for name, _, _ in proxies}
        for r in range(a.rounds):
            for name, proc, port in proxies:
                pids = h.tree_pids(proc.pid)
                c0 = cpu_of(pids)
                cmd = ["wrk", "-t2", "-c128", f"-d{a.seconds}s", "--latency",
                       "-H", f"Host: {h.HOST}", "-H", f"Cookie: session={h.SESSION}",
                       f"http://127.0.0.1:{port}/"]
                w = parse_wrk(subprocess.run(cmd, capture_output=True, text=True,
                                             timeout=a.seconds + 60).stdout)
                w["cpu"] = (cpu_of(pids) - c0) / h.TICK * 1e6 / max(1, w["requests"])
                rows[name].append(w)
                print(f"round {r + 1} {name:14} {w['rps']:>8.0f} req/s {w['cpu']:5.1f} us/req",
                      file=sys.stderr)
        print("| proxy | req/s | p50 / p99 ms | CPU µs/req |")
        print("| --- | ---: | ---: | ---: |")
        med = {}
        for name, runs in rows.items():
            med[name] = {k: statistics.median(x[k] for x in runs)
                         for k in ("rps", "p50", "p99", "cpu")}
            m = med[name]
            print(f"| {name} | {m['rps']:,.0f} | {m['p50']:.2f} / {m['p99']:.2f} | {m['cpu']:.1f} |")
        e, n = med["edgegate"], med["nginx"]
        print(f"\nedgegate/nginx: CPU per request {e['cpu'] / n['cpu']:.2f}x, "
              f"req/s {e['rps'] / n['rps']:.2f}x")
    finally:
        procs.stop()
    print()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("parts", nargs="*", default=["workspaces", "cold", "idle", "workers"])
    ap.add_argument("--counts", help="workspaces: records (default 1000,100000,1000000); "
                    "idle: connections (default 1000,8000)")
    ap.add_argument("--records", type=int, default=1_200_000,
                    help="cold: workspaces in Redis")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rate", type=int, default=5000)
    a = ap.parse_args()
    import signal
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    random.seed(1)
    work = tempfile.mkdtemp(prefix="edgegate-scale-")
    print(f"edgegate scale run, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs\n")
    try:
        for part in a.parts:
            sub = argparse.Namespace(**vars(a))
            if part == "workspaces":
                sub.counts = a.counts or "1000,100000,1000000"
                part_workspaces(sub, work)
            elif part == "cold":
                part_cold(sub, work)
            elif part == "idle":
                sub.counts = a.counts or "1000,8000"
                part_idle(sub, work)
            elif part == "workers":
                part_workers(sub, work)
            elif part == "tls":
                sub.counts = a.counts or "1000,3000"
                part_tls(sub, work)
            else:
                raise SystemExit(f"unknown part {part!r}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

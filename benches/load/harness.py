#!/usr/bin/env python3
"""Side-by-side load harness: nginx, a plain Pingora proxy and edgegate, on loopback.

Started by benches/load/run (which installs and builds what is needed). Everything runs on
127.0.0.1, every loop is bounded, and every process started here is stopped here.

A fast upstream (nginx, 100-byte body) sits behind three proxies:
  nginx     proxy_pass with upstream keepalive
  pingora   examples/plain_pingora.rs: fixed peer, Pingora's defaults, built as its users
            build it (Cargo's release defaults: the `baseline` profile in Cargo.toml)
  edgegate  its real configuration: Redis-backed host routing (cache hit), session auth,
            metrics and the JSON access log on
They are driven interleaved (A B C, A B C, ...) with wrk at saturation, then, in the same
round, with oha at a fixed rate when oha is installed. Per proxy, medians over the rounds: req/s, p50/p99, CPU microseconds per request (from
/proc/PID/stat over the run), RSS, and the ratios edgegate/pingora and edgegate/nginx. Redis
commands per edgegate request come from INFO commandstats.
"""

import argparse
import glob
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Plain Pingora under Cargo's release defaults (the baseline) and under edgegate's own release
# profile (the same build settings as edgegate); benches/load/run builds both.
PLAIN = os.path.join(ROOT, "target/baseline/examples/plain_pingora")
PLAIN_SAME_PROFILE = os.path.join(ROOT, "target/release/examples/plain_pingora")
ID = "01HZX3M9Q4T8V6W2Y5B7C9D1EF"
HOST = f"ws-{ID.lower()}.bench.test"
SESSION = "bench-session"
TICK = os.sysconf("SC_CLK_TCK")
BODY = "x" * 99 + "\n"  # 100 bytes


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, limit=20.0):
    deadline = time.time() + limit
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port} after {limit}s")


def cpu_ticks(pid):
    return sum(cpu_split(pid))


def cpu_split(pid):
    """(user, system) CPU ticks of a process, all its threads."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def preemptions(pid):
    """Involuntary context switches of a process, summed over its threads: times the kernel
    took the CPU away from it (on the pinned layout, mostly for the upstream it just woke)."""
    total = 0
    for status in glob.glob(f"/proc/{pid}/task/*/status"):
        try:
            with open(status) as f:
                for line in f:
                    if line.startswith("nonvoluntary_ctxt_switches"):
                        total += int(line.split()[1])
        except OSError:
            pass  # a thread that ended
    return total


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def tree_pids(pid):
    """The process and its children (nginx's worker does the work)."""
    out = [pid]
    try:
        kids = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
        out += [int(k) for k in kids.split()]
    except FileNotFoundError:
        pass
    return out


class Procs:
    def __init__(self):
        self.procs = []

    def start(self, name, cmd, cpu=None, **kw):
        if cpu is not None:
            cmd = ["taskset", "-c", str(cpu)] + cmd
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
        self.procs.append((name, p))
        return p

    def stop(self):
        for _, p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.time() + 10
        for _, p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def nginx_conf(work, name, body):
    path = os.path.join(work, f"{name}.conf")
    with open(path, "w") as f:
        f.write(
            f"""worker_processes 1;
daemon off;
pid {work}/{name}.pid;
error_log {work}/{name}.err warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {work}/{name}-body;
  proxy_temp_path {work}/{name}-proxy;
  fastcgi_temp_path {work}/{name}-fcgi;
  uwsgi_temp_path {work}/{name}-uwsgi;
  scgi_temp_path {work}/{name}-scgi;
{body}
}}
"""
        )
    return path


def wrk(port, seconds, cpu):
    cmd = ["wrk", "-t1", "-c64", f"-d{seconds}s", "--latency",
           "-H", f"Host: {HOST}", "-H", f"Cookie: session={SESSION}",
           f"http://127.0.0.1:{port}/"]
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu)] + cmd
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30).stdout
    reqs = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)

    def pct(p):
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out)
        if not m:
            return float("nan")
        v, unit = float(m.group(1)), m.group(2)
        return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v

    return {
        "requests": reqs, "rps": rps, "p50": pct(50), "p99": pct(99),
        "bad": int(non2xx.group(1)) if non2xx else 0, "errors": errors.group(1) if errors else "",
    }


def oha(port, rate, seconds, cpu):
    if not shutil.which("oha"):
        return None
    cmd = ["oha", "--no-tui", "--output-format", "json", "--latency-correction",
           "-z", f"{seconds}s", "-q", str(rate), "-c", "64",
           "-H", f"Host: {HOST}", "-H", f"Cookie: session={SESSION}", f"http://127.0.0.1:{port}/"]
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu)] + cmd
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    try:
        data = json.loads(out)
    except json.JSONDecodeError:
        print(f"oha gave no JSON: {out[:200]!r}", file=sys.stderr)
        return None
    lat = data.get("latencyPercentiles", {})
    return {"p50": lat.get("p50", float("nan")) * 1000, "p99": lat.get("p99", float("nan")) * 1000}


WS_ID = "01HZX3M9Q4T8V6W2Y5B7C9D1EG"
WS_HOST = f"ws-{WS_ID.lower()}.bench.test"


def hold_websockets(port, n, host):
    """Open n idle WebSockets through the proxy at port; return the sockets (all upgraded)."""
    socks = []
    req = (f"GET /agent/ws HTTP/1.1\r\nHost: {host}\r\nCookie: session={SESSION}\r\n"
           f"Origin: http://{host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
           "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").encode()
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(req)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                raise SystemExit(f"port {port}: connection closed during the upgrade")
            head += chunk
        if not head.startswith(b"HTTP/1.1 101"):
            raise SystemExit(f"port {port}: upgrade refused: {head[:80]!r}")
        socks.append(s)
    return socks


def ws_kib_per_conn(proc, port, n, host):
    """RSS growth per held idle WebSocket, in KiB."""
    warm = hold_websockets(port, 20, host)
    time.sleep(0.5)
    before = sum(rss_kib(p) for p in tree_pids(proc.pid))
    held = hold_websockets(port, n, host)
    # 2 s idle, every proxy alike: edgegate's tunnels release their read buffers after 1 s.
    time.sleep(2.0)
    after = sum(rss_kib(p) for p in tree_pids(proc.pid))
    for s in held + warm:
        s.close()
    return (after - before) / n


def nginx_proxy(up, listen):
    """nginx as the side-by-side proxy of the plain upstream `up`: kept-alive upstream
    connections, the client's Host passed on. `listen`: what its `listen` directive says
    (with TLS, the rest of the TLS directives after it)."""
    return f"""
  upstream up {{ server 127.0.0.1:{up}; keepalive 64; }}
  server {{ listen {listen};
           location / {{ proxy_pass http://up; proxy_http_version 1.1;
                        proxy_set_header Connection ""; proxy_set_header Host $host; }} }}"""


def redis_calls(port):
    out = subprocess.run(["redis-cli", "-p", str(port), "INFO", "commandstats"],
                         capture_output=True, text=True).stdout
    total = 0
    for line in out.splitlines():
        m = re.match(r"cmdstat_(\w+):calls=(\d+)", line)
        if m and m.group(1) not in ("info",):
            total += int(m.group(2))
    return total


def start_backend(procs, work, cpu):
    """The fast upstream and a Redis holding the bench workspace and session, on free ports
    (main() adds a WebSocket upstream to the same; icount.py and ab.py use it too). Returns
    (upstream port, redis port)."""
    up, rp = free_port(), free_port()
    procs.start("upstream", ["nginx", "-c", nginx_conf(work, "upstream", f"""
  server {{ listen 127.0.0.1:{up}; default_type text/plain;
           location / {{ return 200 "{BODY}"; }} }}""")], cpu)
    procs.start("redis", ["redis-server", "--port", str(rp), "--bind", "127.0.0.1",
                          "--save", "", "--appendonly", "no", "--dir", work], cpu)
    wait_port(rp)
    cli = ["redis-cli", "-p", str(rp)]
    subprocess.run(cli + ["HSET", f"workspace:{ID}", "backend", f"127.0.0.1:{up}",
                          "owner", "bench", "status", "running"], check=True, capture_output=True)
    subprocess.run(cli + ["HSET", f"session:{SESSION}", "user", "bench"],
                   check=True, capture_output=True)
    wait_port(up)
    return up, rp


def edgegate_config(work, eg, adm, rp, access_log):
    """edgegate's real configuration for the bench: Redis host routing, session auth."""
    secret = os.path.join(work, "secret")
    with open(secret, "w") as f:
        f.write("load-harness-secret-0123456789abcdef-0123")
    cfg = os.path.join(work, "edgegate.toml")
    with open(cfg, "w") as f:
        f.write(f"""base_domain = "bench.test"
[listen]
http = ["127.0.0.1:{eg}"]
[admin]
listen = "127.0.0.1:{adm}"
[log]
level = "warn"
access_log = "{access_log}"
[server]
threads = 1
# Named, so that builds from before its in-table default (057cd96) load the same config.
drain_delay_secs = 0
pid_file = "{work}/edgegate.pid"
upgrade_sock = "{work}/edgegate.sock"
[redis]
url = "redis://127.0.0.1:{rp}/0"
key_prefix = ""
invalidate_channel = "edgegate:invalidate"
connect_timeout_ms = 500
command_timeout_ms = 500
[cache]
ttl_ms = 60000
[upstream]
# The bench's upstreams listen on loopback, which records may not name by default.
allowed_networks = ["127.0.0.0/8"]
[auth.tokens]
secret_file = "{secret}"
[api]
ide_route = ""
[rate_limits]
# One user drives the whole bench: its limit is checked on every request (that cost is part
# of the measurement) but set where it never refuses.
user_requests_per_second = 1000000000
user_burst = 1000000000
[[route]]
name = "workspace"
host = "ws-{{id}}.{{base_domain}}"
key = "workspace:{{id}}"
status_field = "status"
auth = ["session"]
""")
    return cfg


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rate", type=int, default=5000)
    ap.add_argument("--websockets", type=int, default=500,
                    help="idle WebSockets held through each proxy for the memory column (0: skip)")
    ap.add_argument("--access-log", metavar="DEST",
                    help="edgegate's access log destination (default: a file; 'off' to compare)")
    ap.add_argument("--perf", metavar="FILE",
                    help="record a perf profile of edgegate into FILE")
    ap.add_argument("--edgegate", default=os.path.join(ROOT, "target/release/edgegate"),
                    help="the edgegate binary to run (to compare two builds)")
    ap.add_argument("--pinned", action="store_true",
                    help="load generator on CPU 0; proxies, upstream and Redis on CPU 1")
    ap.add_argument("--pingora", default=PLAIN,
                    help="the plain Pingora binary (default: built with Cargo's release defaults;"
                         f" {os.path.relpath(PLAIN_SAME_PROFILE, ROOT)} is built with edgegate's)")
    args = ap.parse_args()

    # A SIGTERM (or Ctrl-C) still stops everything the harness started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    gen_cpu, srv_cpu = (0, 1) if args.pinned else (None, None)
    work = tempfile.mkdtemp(prefix="edgegate-load-")
    procs = Procs()
    try:
        ng, pp, eg, adm, wu, ngw, ppw = (free_port() for _ in range(7))
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
        up, rp = start_backend(procs, work, srv_cpu)
        ws_upstream = procs.start("ws-upstream", [os.path.join(ROOT, "target/release/examples/echo_upstream"),
                                                  f"127.0.0.1:{wu}"], srv_cpu)
        nginx = procs.start("nginx", ["nginx", "-c", nginx_conf(work, "proxy", nginx_proxy(
            up, f"127.0.0.1:{ng}") + f"""
  server {{ listen 127.0.0.1:{ngw};
           location / {{ proxy_pass http://127.0.0.1:{wu}; proxy_http_version 1.1;
                        proxy_read_timeout 3600s;
                        proxy_set_header Upgrade $http_upgrade;
                        proxy_set_header Connection "upgrade"; proxy_set_header Host $host; }} }}""")], srv_cpu)
        cli = ["redis-cli", "-p", str(rp)]
        subprocess.run(cli + ["HSET", f"workspace:{WS_ID}", "backend", f"127.0.0.1:{wu}",
                              "owner", "bench", "status", "running"], check=True, capture_output=True)
        pingora = procs.start("pingora", [args.pingora,
                                          f"127.0.0.1:{pp}", f"127.0.0.1:{up}", "1"], srv_cpu)
        pingora_ws = procs.start("pingora-ws", [args.pingora,
                                                f"127.0.0.1:{ppw}", f"127.0.0.1:{wu}", "1"], srv_cpu)
        cfg = edgegate_config(work, eg, adm, rp, args.access_log or work + "/access.log")
        eg_cmd = [args.edgegate, "run", "-c", cfg]
        if args.perf:
            # Sample edgegate's CPU (software clock: works where hardware counters do not).
            eg_cmd = ["perf", "record", "-e", "cpu-clock", "-F", "999", "-g", "-o", args.perf] + eg_cmd
        edgegate = procs.start("edgegate", eg_cmd, srv_cpu)
        for port in (up, ng, pp, eg, adm, wu, ngw, ppw):
            wait_port(port)
        # Warm every path once (edgegate's cache included) and check it answers 200.
        for port in (ng, pp, eg):
            w = wrk(port, 1, gen_cpu)
            if w["bad"] or w["requests"] == 0:
                raise SystemExit(f"port {port} does not answer 200 ({w})")

        proxies = [("nginx", nginx, ng), ("pingora", pingora, pp), ("edgegate", edgegate, eg)]
        # The same plain proxy built with edgegate's own release profile, so the table shows
        # what the build settings alone are worth beside the baseline.
        if os.path.exists(PLAIN_SAME_PROFILE) and args.pingora != PLAIN_SAME_PROFILE:
            ps = free_port()
            same = procs.start("pingora-same-profile", [PLAIN_SAME_PROFILE, f"127.0.0.1:{ps}",
                                                        f"127.0.0.1:{up}", "1"], srv_cpu)
            wait_port(ps)
            w = wrk(ps, 1, gen_cpu)
            if w["bad"] or w["requests"] == 0:
                raise SystemExit(f"port {ps} does not answer 200 ({w})")
            proxies.append(("pingora*", same, ps))
        results = {name: [] for name, _, _ in proxies}
        redis_per_req = []
        fixed_runs = {name: [] for name, _, _ in proxies}
        for r in range(args.rounds):
            for name, proc, port in proxies:
                pids = tree_pids(proc.pid)
                before = [cpu_split(p) for p in pids]
                pre = sum(preemptions(p) for p in pids)
                calls = redis_calls(rp) if name == "edgegate" else 0
                w = wrk(port, args.seconds, gen_cpu)
                if name == "edgegate":
                    # The INFO call itself is excluded in redis_calls.
                    redis_per_req.append((redis_calls(rp) - calls) / max(1, w["requests"]))
                after = [cpu_split(p) for p in pids]
                per_req = TICK * max(1, w["requests"]) / 1e6
                w["user_us"] = sum(a[0] - b[0] for a, b in zip(after, before)) / per_req
                w["sys_us"] = sum(a[1] - b[1] for a, b in zip(after, before)) / per_req
                w["cpu_us"] = w["user_us"] + w["sys_us"]
                w["preempt"] = (sum(preemptions(p) for p in pids) - pre) / max(1, w["requests"])
                w["rss"] = sum(rss_kib(p) for p in pids)
                results[name].append(w)
                print(f"round {r + 1} {name:9} {w['rps']:>9.0f} req/s  "
                      f"{w['cpu_us']:6.1f} us/req  p99 {w['p99']:.2f} ms  bad {w['bad']}",
                      file=sys.stderr)
            # The fixed rate, interleaved the same way (A B C in every round).
            for name, _, port in proxies:
                f = oha(port, args.rate, args.seconds, gen_cpu)
                if f:
                    fixed_runs[name].append(f)
                    print(f"round {r + 1} {name:9} at {args.rate} req/s: "
                          f"p50 {f['p50']:.2f} ms  p99 {f['p99']:.2f} ms", file=sys.stderr)
        fixed = {name: {k: statistics.median(x[k] for x in runs) for k in ("p50", "p99")}
                 if runs else None for name, runs in fixed_runs.items()}
        ws_kib = {}
        if args.websockets:
            for name, proc, port in (("nginx", nginx, ngw), ("pingora", pingora_ws, ppw),
                                     ("edgegate", edgegate, eg)):
                ws_kib[name] = ws_kib_per_conn(proc, port, args.websockets, WS_HOST)

        med = lambda name, k: statistics.median(x[k] for x in results[name])
        layout = "pinned (gen CPU 0, servers CPU 1)" if args.pinned else "unpinned"
        print(f"\nedgegate load harness: {args.rounds} interleaved rounds x {args.seconds}s, "
              f"wrk -t1 -c64, 100-byte bodies, {layout}")
        print(f"{'proxy':10} {'req/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'CPU us/req':>11} "
              f"{'RSS KiB':>8} {'fixed-rate p50/p99 ms':>22} {'KiB/idle WS':>12}")
        for name, _, _ in proxies:
            f = fixed[name]
            fr = f"{f['p50']:.2f} / {f['p99']:.2f}" if f else "n/a (install oha)"
            ws = f"{ws_kib[name]:.1f}" if name in ws_kib else "n/a"
            print(f"{name:10} {med(name, 'rps'):>9.0f} {med(name, 'p50'):>7.2f} "
                  f"{med(name, 'p99'):>7.2f} {med(name, 'cpu_us'):>11.1f} "
                  f"{med(name, 'rss'):>8.0f} {fr:>22} {ws:>12}")
        e, p, n = (med(x, "cpu_us") for x in ("edgegate", "pingora", "nginx"))
        er, pr, nr = (med(x, "rps") for x in ("edgegate", "pingora", "nginx"))
        print(f"\nedgegate/pingora: CPU per request {e / p:.2f}x, req/s {er / pr:.2f}x")
        print(f"edgegate/nginx:   CPU per request {e / n:.2f}x, req/s {er / nr:.2f}x")
        if "pingora*" in results:
            s_, sr = med("pingora*", "cpu_us"), med("pingora*", "rps")
            print(f"edgegate/pingora*: CPU per request {e / s_:.2f}x, req/s {er / sr:.2f}x "
                  "(pingora*: plain Pingora built with edgegate's release profile; "
                  "pingora: with Cargo's release defaults)")
        print(f"edgegate Redis commands per request: {statistics.median(redis_per_req):.4f}")
        # Where each proxy's CPU goes: its own code, the kernel on its behalf, and how often
        # it was preempted (the servers share one CPU when pinned).
        print("\nCPU per request, user + system, and preemptions per request:")
        for name, _, _ in proxies:
            print(f"  {name:10} {med(name, 'user_us'):5.1f} + {med(name, 'sys_us'):5.1f} us  "
                  f"{med(name, 'preempt'):.2f}")
        bad = sum(x["bad"] for v in results.values() for x in v)
        if bad:
            print(f"WARNING: {bad} non-2xx responses during the runs")
    finally:
        procs.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

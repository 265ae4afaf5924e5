"""gRPC through edgegate's TLS listener to a port on the content site, with a real gRPC client.

    python tests/e2e/grpc_check.py --gateway-port TLS_PORT --redis-port N --ca CA.pem \
        --artifacts DIR [--base-domain edgegate.test] [--content-domain edgegate-content.test] \
        [--gateway-log FILE] [--label grpc]

A grpcio server on an ephemeral loopback port (plain HTTP/2, "h2c": what a workspace's gRPC
dev server speaks) serves the service edgegate.e2e.Echo with generic handlers and bytes in and
out (no protoc): Echo (unary), Count (server streaming), Chat (bidirectional streaming, one
answer per message), Fail (a non-OK status with details). Every method sets initial and
trailing metadata and records the metadata it received. The server listens on two ports of one
workspace (written into Redis here, owner grpc-owner): PUB = {"visibility":"public",
"protocol":"h2c"}, PRIV = {"visibility":"private","protocol":"h2c"}.

The client (grpcio, TLS with the test CA) connects to 127.0.0.1:TLS_PORT and names
ws-{id}--{port}.{content_domain} in SNI and :authority. Checks:
  control-direct            the same calls straight to the server work (the harness is right)
  public-*                  through edgegate to PUB: responses, message counts, initial and
                            trailing metadata and status codes (OK and FAILED_PRECONDITION with
                            details) arrive intact; Chat answers each message before the next
                            is sent (full duplex, nothing buffered to the end of the stream);
                            a 1 MiB message each way; no credential reaches the server
  private-no-credential     PRIV without a credential: UNAUTHENTICATED (edgegate's 401), and
                            the server saw nothing
  private-bad-token         a tampered port token: UNAUTHENTICATED, nothing upstream
  private-token-*           a port token minted the app's way (POST
                            https://{base}/api/ports/{id}/{PRIV}/token, session cookie, the app's
                            Origin) in metadata x-edgegate-port-token: every call works, the
                            server never sees the token, and it is told the user
  private-other-port-token  the token for PRIV on a third (private) port of the workspace:
                            PERMISSION_DENIED (edgegate's 403), nothing upstream
  token-endpoint-other-origin  the token endpoint refuses a content origin (403)
Exit status: 0 all held, 1 a check failed, 2 the harness broke (a control failed).
Writes {artifacts}/{label}-result.json and {label}.log.
"""

import argparse
import http.client
import json
import os
import queue
import secrets
import socket
import ssl
import subprocess
import sys
import threading
import time
from concurrent import futures

import grpc

LOG = []
SERVICE = "edgegate.e2e.Echo"
ID = "01HZX3M9Q4T8V6W2Y5B7C9DGRP"
OWNER = "grpc-owner"
CALL_TIMEOUT = 15  # seconds, each call
TOTAL_SECS = 150  # the whole run, whatever happens


def log(line):
    line = f"[{time.strftime('%H:%M:%S')}] {line}"
    LOG.append(line)
    print(f"grpc: {line}", flush=True)


class HarnessError(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# The workspace's gRPC server: what it received, per port it was reached on


class Server:
    def __init__(self):
        self.calls = []  # {method, port_hint, metadata}
        self.lock = threading.Lock()

    def _record(self, method, context):
        md = {}
        for k, v in context.invocation_metadata():
            md.setdefault(k, []).append(v if isinstance(v, str) else repr(v))
        with self.lock:
            self.calls.append({"method": method, "metadata": md, "peer": context.peer()})

    def count(self):
        with self.lock:
            return len(self.calls)

    def since(self, n):
        with self.lock:
            return list(self.calls[n:])

    # Echo: unary. b"big:N" answers N bytes; anything else is echoed with a prefix.
    def echo(self, request, context):
        self._record("Echo", context)
        context.send_initial_metadata((("x-initial", "echo"),))
        context.set_trailing_metadata((("x-trailer", f"echo-{len(request)}"),
                                       ("x-bin-bin", b"\x00\x01\xfe\xff")))
        if request.startswith(b"big:"):
            n = int(request[4:].split(b":")[0])
            return bytes((i * 7) & 0xFF for i in range(n))
        return b"echo:" + request

    # Count: server streaming, N messages for b"N".
    def count_stream(self, request, context):
        self._record("Count", context)
        n = int(request)
        context.send_initial_metadata((("x-initial", "count"),))
        for i in range(n):
            yield f"item-{i}".encode()
        context.set_trailing_metadata((("x-count", str(n)),))

    # Chat: bidirectional, one answer per message, as it arrives.
    def chat(self, request_iterator, context):
        self._record("Chat", context)
        context.send_initial_metadata((("x-initial", "chat"),))
        seen = 0
        for msg in request_iterator:
            seen += 1
            yield b"re:" + msg
        context.set_trailing_metadata((("x-seen", str(seen)),))

    # Fail: a non-OK status with details and trailing metadata.
    def fail(self, request, context):
        self._record("Fail", context)
        context.set_trailing_metadata((("x-why", "asked-to-fail"),))
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, "precondition failed: " + request.decode())

    def handler(self):
        return grpc.method_handlers_generic_handler(SERVICE, {
            # No (de)serializers: bytes in, bytes out.
            "Echo": grpc.unary_unary_rpc_method_handler(self.echo),
            "Count": grpc.unary_stream_rpc_method_handler(self.count_stream),
            "Chat": grpc.stream_stream_rpc_method_handler(self.chat),
            "Fail": grpc.unary_unary_rpc_method_handler(self.fail),
        })


# ---------------------------------------------------------------------------------------------
# The calls, the same against any channel


def md_dict(md):
    out = {}
    for k, v in md or ():
        out.setdefault(k, []).append(v)
    return out


def run_calls(channel, metadata, what, check, big=True):
    """Every method once on `channel` with `metadata`; checks under the label `what`."""
    md = tuple(metadata)
    echo = channel.unary_unary(f"/{SERVICE}/Echo")
    count = channel.unary_stream(f"/{SERVICE}/Count")
    chat = channel.stream_stream(f"/{SERVICE}/Chat")
    fail = channel.unary_unary(f"/{SERVICE}/Fail")

    # Unary.
    resp, call = echo.with_call(b"hello", metadata=md, timeout=CALL_TIMEOUT)
    im, tm = md_dict(call.initial_metadata()), md_dict(call.trailing_metadata())
    check(resp == b"echo:hello", f"{what}-unary", f"unary answer {resp!r}")
    check(call.code() == grpc.StatusCode.OK, f"{what}-unary", f"status {call.code()}")
    check(im.get("x-initial") == ["echo"], f"{what}-unary", f"initial metadata x-initial {im.get('x-initial')}")
    check(tm.get("x-trailer") == ["echo-5"], f"{what}-unary", f"trailing metadata x-trailer {tm.get('x-trailer')}")
    check(tm.get("x-bin-bin") == [b"\x00\x01\xfe\xff"], f"{what}-unary",
          f"binary trailing metadata x-bin-bin {tm.get('x-bin-bin')}")

    # Server streaming.
    stream = count(b"50", metadata=md, timeout=CALL_TIMEOUT)
    items = [m for m in stream]
    tm = md_dict(stream.trailing_metadata())
    check(items == [f"item-{i}".encode() for i in range(50)], f"{what}-server-stream",
          f"50 messages in order (got {len(items)})")
    check(stream.code() == grpc.StatusCode.OK, f"{what}-server-stream", f"status {stream.code()}")
    check(md_dict(stream.initial_metadata()).get("x-initial") == ["count"], f"{what}-server-stream",
          "initial metadata x-initial")
    check(tm.get("x-count") == ["50"], f"{what}-server-stream", f"trailing metadata x-count {tm.get('x-count')}")

    # Bidirectional, lock-step: the next message goes only once the last one was answered, so
    # a proxy that held the request stream until its end would stall here (bounded).
    q = queue.Queue()
    n_chat = 20

    def requests():
        for i in range(n_chat):
            yield f"m{i}".encode()
            try:
                q.get(timeout=CALL_TIMEOUT)
            except queue.Empty:
                return

    replies = []
    t0 = time.monotonic()
    bidi = chat(requests(), metadata=md, timeout=CALL_TIMEOUT)
    try:
        for r in bidi:
            replies.append(r)
            q.put(1)
    except grpc.RpcError as e:
        check(False, f"{what}-bidi-stream", f"the stream failed: {e.code()} {e.details()}")
    tm = md_dict(bidi.trailing_metadata())
    check(replies == [f"re:m{i}".encode() for i in range(n_chat)], f"{what}-bidi-stream",
          f"{n_chat} answers, each before the next message was sent (got {len(replies)} "
          f"in {time.monotonic() - t0:.2f} s)")
    check(bidi.code() == grpc.StatusCode.OK, f"{what}-bidi-stream", f"status {bidi.code()}")
    check(md_dict(bidi.initial_metadata()).get("x-initial") == ["chat"], f"{what}-bidi-stream",
          "initial metadata x-initial")
    check(tm.get("x-seen") == [str(n_chat)], f"{what}-bidi-stream", f"trailing metadata x-seen {tm.get('x-seen')}")

    # A non-OK status: code, details and trailing metadata.
    try:
        fail.with_call(b"because", metadata=md, timeout=CALL_TIMEOUT)
        check(False, f"{what}-error-status", "Fail returned OK")
    except grpc.RpcError as e:
        tm = md_dict(e.trailing_metadata())
        check(e.code() == grpc.StatusCode.FAILED_PRECONDITION, f"{what}-error-status", f"status {e.code()}")
        check(e.details() == "precondition failed: because", f"{what}-error-status", f"details {e.details()!r}")
        check(tm.get("x-why") == ["asked-to-fail"], f"{what}-error-status", f"trailing metadata x-why {tm.get('x-why')}")

    # 1 MiB each way (several HTTP/2 flow-control windows).
    if big:
        payload = secrets.token_bytes(1 << 20)
        resp, call = echo.with_call(payload, metadata=md, timeout=CALL_TIMEOUT)
        check(resp == b"echo:" + payload, f"{what}-1mib-up", f"1 MiB request echoed ({len(resp)} bytes back)")
        want = bytes((i * 7) & 0xFF for i in range(1 << 20))
        resp, call = echo.with_call(b"big:%d" % (1 << 20), metadata=md, timeout=CALL_TIMEOUT)
        check(resp == want and call.code() == grpc.StatusCode.OK, f"{what}-1mib-down",
              f"1 MiB answer intact ({len(resp)} bytes, {call.code()})")


# ---------------------------------------------------------------------------------------------
# The app side: Redis records and the port-token endpoint


def rcli(a, *args):
    out = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(a.redis_port), *args],
                         check=True, capture_output=True, text=True, timeout=5)
    return out.stdout.strip()


def tls_request(a, ca, host, method, path, headers):
    """One HTTPS request to the gateway at 127.0.0.1, SNI and Host naming `host`."""
    ctx = ssl.create_default_context(cafile=ca)
    raw = socket.create_connection(("127.0.0.1", a.gateway_port), timeout=10)
    sock = ctx.wrap_socket(raw, server_hostname=host)
    conn = http.client.HTTPConnection(host, a.gateway_port, timeout=10)
    conn.sock = sock
    conn.request(method, path, headers={"Host": f"{host}:{a.gateway_port}", **headers})
    r = conn.getresponse()
    body = r.read().decode("utf-8", "replace")
    conn.close()
    return r.status, dict(r.getheaders()), body


def main(a):
    results = []
    failures = []
    broken = []

    def check(ok, name, what, control=False):
        log(("ok   " if ok else ("BROKEN " if control else "FAIL ")) + f"[{name}] {what}")
        results.append({"check": name, "ok": bool(ok), "what": what, "control": control})
        if not ok:
            (broken if control else failures).append(f"{name}: {what}")

    ca_pem = open(a.ca, "rb").read()
    server_impl = Server()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8),
                         options=[("grpc.max_receive_message_length", 8 << 20),
                                  ("grpc.max_send_message_length", 8 << 20)])
    server.add_generic_rpc_handlers((server_impl.handler(),))
    pub = server.add_insecure_port("127.0.0.1:0")
    priv = server.add_insecure_port("127.0.0.1:0")
    # A third port of the workspace nobody listens on: for a token of another port.
    third = socket.socket()
    third.bind(("127.0.0.1", 0))
    third_port = third.getsockname()[1]
    third.close()
    server.start()
    log(f"gRPC server on 127.0.0.1:{pub} (public) and :{priv} (private), grpcio {grpc.__version__}")
    sid = secrets.token_hex(24)
    try:
        now = int(time.time())
        rcli(a, "DEL", f"workspace:{ID}", f"session:{sid}")
        rcli(a, "HSET", f"session:{sid}", "user", OWNER, "expires_at", str(now + 3600))
        rcli(a, "HSET", f"workspace:{ID}", "backend", f"127.0.0.1:{pub}", "owner", OWNER,
             "status", "running",
             f"port.{pub}", json.dumps({"visibility": "public", "protocol": "h2c"}),
             f"port.{priv}", json.dumps({"visibility": "private", "protocol": "h2c"}),
             f"port.{third_port}", json.dumps({"visibility": "private", "protocol": "h2c"}))
        rcli(a, "PUBLISH", "edgegate:invalidate", f"workspace:{ID}")

        msg_opts = [("grpc.max_receive_message_length", 8 << 20),
                    ("grpc.max_send_message_length", 8 << 20)]

        # Control: straight to the server, no edgegate.
        with grpc.insecure_channel(f"127.0.0.1:{pub}", options=msg_opts) as ch:
            before = len(results)
            try:
                run_calls(ch, (), "control-direct", lambda ok, n, w: check(ok, n, w, control=True))
            except grpc.RpcError as e:
                check(False, "control-direct", f"a call failed: {e.code()} {e.details()}", control=True)
            log(f"control: {sum(r['ok'] for r in results[before:])}/{len(results) - before} held")
        if broken:
            raise HarnessError("the direct calls failed: the server or the client is wrong")
        direct_calls = server_impl.count()

        def channel(port):
            host = f"ws-{ID.lower()}--{port}.{a.content_domain}"
            creds = grpc.ssl_channel_credentials(root_certificates=ca_pem)
            return grpc.secure_channel(f"127.0.0.1:{a.gateway_port}", creds, options=msg_opts + [
                ("grpc.ssl_target_name_override", host),
                ("grpc.default_authority", f"{host}:{a.gateway_port}"),
            ])

        def upstream_saw_no_credential(n, name, token=None):
            leaked = []
            for c in server_impl.since(n):
                md = c["metadata"]
                for k in ("cookie", "authorization", "x-edgegate-port-token"):
                    if k in md:
                        leaked.append(f"{c['method']}: {k}")
                if token and token in json.dumps(md):
                    leaked.append(f"{c['method']}: the token's value")
            check(not leaked, name, f"no credential reached the server ({leaked or 'none'})")

        # Public port, h2c, through TLS: the whole call set.
        n = server_impl.count()
        with channel(pub) as ch:
            try:
                run_calls(ch, (("cookie", "app=1"),), "public", check)
            except grpc.RpcError as e:
                check(False, "public", f"a call failed: {e.code()} {e.details()!r}")
        seen = server_impl.since(n)
        check(len(seen) == 6, "public-reached-upstream", f"the server got the 6 calls ({len(seen)})")
        auth = sorted({v for c in seen for v in c["metadata"].get(":authority", [])} |
                      {c["metadata"].get("x-forwarded-host", ["-"])[0] for c in seen})
        log(f"public: what the server was told of the authority: {auth}")
        users = [c["metadata"].get("x-edgegate-user") for c in seen]
        check(all(u is None for u in users), "public-anonymous", f"no X-Edgegate-User on a public port ({users[:1]})")

        # Private port: no credential, a bad token, then a real port token.
        def refused(name, md, want):
            n = server_impl.count()
            with channel(priv if name != "private-other-port-token" else third_port) as ch:
                try:
                    ch.unary_unary(f"/{SERVICE}/Echo")(b"x", metadata=md, timeout=CALL_TIMEOUT)
                    check(False, name, "the call went through")
                except grpc.RpcError as e:
                    check(e.code() == want, name, f"status {e.code()} (want {want}); details {e.details()!r}")
            time.sleep(0.3)
            check(server_impl.count() == n, name, f"nothing reached the server ({server_impl.count() - n})")

        refused("private-no-credential", (), grpc.StatusCode.UNAUTHENTICATED)

        app = a.base_domain
        origin = f"https://{app}:{a.gateway_port}"
        status, headers, body = tls_request(a, a.ca, app, "POST", f"/api/ports/{ID}/{priv}/token",
                                            {"Cookie": f"session={sid}", "Origin": origin,
                                             "Content-Length": "0"})
        try:
            minted = json.loads(body)
        except ValueError:
            minted = {}
        check(status == 200 and minted.get("token") and minted.get("header") == "x-edgegate-port-token",
              "control-mint-port-token", f"POST /api/ports/{{id}}/{priv}/token: {status} "
              f"header={minted.get('header')!r} url={minted.get('url')!r}", control=True)
        if broken:
            raise HarnessError(f"cannot mint a port token: {status} {body[:300]}")
        token = minted["token"]
        # The endpoint is for the app's own pages only.
        status2, _, _ = tls_request(a, a.ca, app, "POST", f"/api/ports/{ID}/{priv}/token",
                                    {"Cookie": f"session={sid}", "Content-Length": "0",
                                     "Origin": f"https://ws-{ID.lower()}--{pub}.{a.content_domain}:{a.gateway_port}"})
        check(status2 == 403, "token-endpoint-other-origin", f"minting from a content origin: {status2} (want 403)")

        bad = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
        refused("private-bad-token", (("x-edgegate-port-token", bad),), grpc.StatusCode.UNAUTHENTICATED)
        refused("private-other-port-token", (("x-edgegate-port-token", token),), grpc.StatusCode.PERMISSION_DENIED)

        n = server_impl.count()
        with channel(priv) as ch:
            try:
                run_calls(ch, (("x-edgegate-port-token", token),), "private-token", check, big=False)
            except grpc.RpcError as e:
                check(False, "private-token", f"a call failed: {e.code()} {e.details()!r}")
        seen = server_impl.since(n)
        check(len(seen) == 4, "private-token-reached-upstream", f"the server got the 4 calls ({len(seen)})")
        upstream_saw_no_credential(n, "private-token-stripped", token)
        users = sorted({str(c["metadata"].get("x-edgegate-user")) for c in seen})
        check(users == [str([OWNER])], "private-token-user", f"the server was told the user: {users}")
        log(f"direct calls {direct_calls}, total calls {server_impl.count()}")
    finally:
        server.stop(grace=1)
        try:
            rcli(a, "DEL", f"workspace:{ID}", f"session:{sid}")
        except Exception:  # noqa: BLE001 - the run is over either way
            pass
        with open(os.path.join(a.artifacts, f"{a.label}-result.json"), "w") as f:
            json.dump({"checks": results, "failures": failures, "broken": broken,
                       "server_calls": server_impl.calls, "ports": {"public": pub, "private": priv}},
                      f, indent=2, default=repr)
    if broken:
        log(f"HARNESS BROKEN: {'; '.join(broken)}")
        return 2
    if failures:
        log(f"FAILED ({len(failures)}): " + "; ".join(failures))
        return 1
    log(f"PASSED ({len(results)} checks)")
    return 0


def parse_args():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gateway-port", type=int, required=True, help="edgegate's TLS listener")
    ap.add_argument("--redis-port", type=int, required=True)
    ap.add_argument("--ca", required=True, help="PEM of the CA that signed the gateway's certificate")
    ap.add_argument("--artifacts", required=True)
    ap.add_argument("--base-domain", default="edgegate.test")
    ap.add_argument("--content-domain", default="edgegate-content.test")
    ap.add_argument("--label", default="grpc")
    return ap.parse_args()


if __name__ == "__main__":
    args = parse_args()
    os.makedirs(args.artifacts, exist_ok=True)
    status = 2
    # Bounded whatever the calls do (each has its own deadline too).
    timer = threading.Timer(TOTAL_SECS, lambda: (log(f"still running after {TOTAL_SECS} s"), os._exit(2)))
    timer.daemon = True
    timer.start()
    try:
        status = main(args)
    except HarnessError as e:
        log(f"HARNESS BROKEN: {e}")
        status = 2
    except Exception as e:  # noqa: BLE001 - reported, and the run fails
        import traceback
        log(f"HARNESS BROKEN: {type(e).__name__}: {e}\n{traceback.format_exc()}")
        status = 2
    finally:
        with open(os.path.join(args.artifacts, f"{args.label}.log"), "w") as f:
            f.write("\n".join(LOG) + "\n")
    sys.exit(status)

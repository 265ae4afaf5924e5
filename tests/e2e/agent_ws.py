"""The agent WebSocket path with a real client (the `websockets` library) through edgegate.

    python tests/e2e/agent_ws.py --edgegate BIN --config FILE --gateway-port N \
        --agent-port A --base-domain D --id ID --owner USER --other-user USER2 \
        --idle 70 --artifacts DIR

The edgegate config reads its HS256 secret from the environment variable named in
[auth.tokens] secret_env (--secret-env, default EDGEGATE_JWT_SECRET); this process gets the
same variable, mints tokens with `edgegate token mint`, and signs its own with hmac.

An agent upstream listens on 127.0.0.1:A and records every HTTP request that reaches it (before
any handshake), and echoes messages. The workspace record `workspace:{ID}` must name it as its
backend. Checks:
  - the owner's terminal token (minted by edgegate) connects, a message is echoed, and after
    --idle seconds without a frame either way (no pings) a second message is still echoed;
  - a token signed here with the claim shape edgegate mints (copied from a minted one) connects,
    which shows the expired token below is refused for its time alone;
  - another user's terminal token: 403 at the handshake; an expired token: 401;
  - the upstream recorded no request for either refused token.
Exit status 0 when all hold, 1 otherwise. Writes {artifacts}/agent-ws.log.
"""

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import secrets
import subprocess
import sys
import time

import websockets
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from websockets.exceptions import InvalidStatus

LOG = []


def log(line):
    line = f"[{time.strftime('%H:%M:%S')}] {line}"
    LOG.append(line)
    print(f"agent-ws: {line}", flush=True)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def sign_hs256(header: dict, claims: dict, secret: bytes) -> str:
    signing_input = (
        b64url(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + b64url(json.dumps(claims, separators=(",", ":")).encode())
    )
    sig = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64url(sig)


def redact(token: str) -> str:
    return token[:12] + "…"


class Agent:
    """The VM agent stand-in: records each request that reaches it, echoes messages."""

    def __init__(self):
        self.requests = []

    def process_request(self, connection, request):
        h = request.headers
        self.requests.append(
            {
                "path": request.path.split("?")[0],
                "has_token": "token=" in request.path,
                "host": h.get("Host"),
                "x_edgegate_user": h.get("X-Edgegate-User"),
                "x_forwarded_host": h.get("X-Forwarded-Host"),
                "cookie": "Cookie" in h,
            }
        )
        log(f"upstream received {self.requests[-1]}")
        return None

    async def handler(self, ws):
        async for msg in ws:
            await ws.send(f"echo:{msg}")


def parse_args():
    ap = argparse.ArgumentParser()
    ap.add_argument("--edgegate", required=True)
    ap.add_argument("--config", required=True)
    ap.add_argument("--secret-env", default="EDGEGATE_JWT_SECRET")
    ap.add_argument("--gateway-port", type=int, required=True)
    ap.add_argument("--agent-port", type=int, required=True)
    ap.add_argument("--base-domain", required=True)
    ap.add_argument("--id", required=True)
    ap.add_argument("--owner", required=True)
    ap.add_argument("--other-user", required=True)
    ap.add_argument("--idle", type=float, default=70.0)
    ap.add_argument("--artifacts", required=True)
    return ap.parse_args()


async def main(a):

    secret = os.environ[a.secret_env].encode()
    host = f"ws-{a.id.lower()}.{a.base_domain}:{a.gateway_port}"
    failures = []

    def check(ok, what):
        log(("ok   " if ok else "FAIL ") + what)
        if not ok:
            failures.append(what)

    def mint(user):
        out = subprocess.run(
            [a.edgegate, "token", "mint", "-c", a.config, "--type", "terminal",
             "--id", a.id, "--user", user],
            check=True, capture_output=True, text=True, timeout=30,
        )
        return out.stdout.strip()

    def url(token):
        # Host header and URL name the workspace host; the TCP connection goes to loopback.
        return f"ws://{host}/agent/ws?token={token}"

    def dial(token):
        # No keepalive pings: the idle check needs a connection with no frames at all.
        return connect(url(token), host="127.0.0.1", port=a.gateway_port,
                       ping_interval=None, open_timeout=10, close_timeout=5)

    async def refused(token, what, want_status):
        before = len(agent.requests)
        try:
            async with dial(token) as ws:
                await ws.close()
            check(False, f"{what}: refused at the handshake (it connected)")
        except InvalidStatus as e:
            status = e.response.status_code
            check(status == want_status, f"{what}: refused with {want_status} (got {status})")
        await asyncio.sleep(0.5)
        check(len(agent.requests) == before,
              f"{what}: no request reached the upstream (it saw {len(agent.requests) - before})")

    agent = Agent()
    async with serve(agent.handler, "127.0.0.1", a.agent_port,
                     process_request=agent.process_request, ping_interval=None):
        owner_token = mint(a.owner)
        other_token = mint(a.other_user)

        # The claim shape edgegate mints, copied; only the times and jti are ours.
        header = json.loads(b64url_decode(owner_token.split(".")[0]))
        claims = json.loads(b64url_decode(owner_token.split(".")[1]))
        log(f"minted claim names: {sorted(claims)}; header {header}")
        ttl = claims["exp"] - claims["iat"]
        now = int(time.time())
        fresh = sign_hs256(header, {**claims, "iat": now, "exp": now + ttl,
                                    "jti": secrets.token_hex(16)}, secret)
        expired = sign_hs256(header, {**claims, "iat": now - 3 * ttl - 60,
                                      "exp": now - 2 * ttl - 60,
                                      "jti": secrets.token_hex(16)}, secret)

        # 1. The owner's minted token connects and survives the idle period.
        async with dial(owner_token) as ws:
            await ws.send("before-idle")
            reply = await asyncio.wait_for(ws.recv(), 10)
            check(reply == "echo:before-idle", f"owner: echo before idle ({reply!r})")
            check(len(agent.requests) == 1, f"owner: the upstream saw one request ({len(agent.requests)})")
            if agent.requests:
                r = agent.requests[0]
                check(r["path"] == "/agent/ws", f"owner: upstream path /agent/ws ({r['path']})")
                check(r["host"] == host, f"owner: upstream Host is the browser's ({r['host']})")
                check(r["x_edgegate_user"] == a.owner, f"owner: X-Edgegate-User ({r['x_edgegate_user']})")
                check(r["has_token"], "owner: ?token= forwarded to the agent (forward_token = true)")
            t_idle = time.monotonic()

            # 2. While the owner's socket sits idle, the refusals (other TCP connections).
            # A hand-signed token with the minted shape is accepted: the signing is right.
            async with dial(fresh) as ws2:
                await ws2.send("hand-signed")
                check(await asyncio.wait_for(ws2.recv(), 10) == "echo:hand-signed",
                      "hand-signed token with minted claims: connects and echoes")
            await refused(other_token, "another user's terminal token", 403)
            await refused(expired, "expired terminal token", 401)

            remaining = a.idle - (time.monotonic() - t_idle)
            log(f"owner socket idle; waiting {remaining:.0f} s more (total {a.idle:.0f} s)")
            await asyncio.sleep(max(0.0, remaining))
            try:
                await ws.send("after-idle")
                reply = await asyncio.wait_for(ws.recv(), 10)
            except Exception as e:  # noqa: BLE001 - any failure here is the finding
                reply = f"<{type(e).__name__}: {e}>"
            check(reply == "echo:after-idle",
                  f"owner: echo after {time.monotonic() - t_idle:.0f} s idle ({reply!r})")

        total_ok = 2  # the owner's and the hand-signed connection
        check(len(agent.requests) == total_ok,
              f"upstream saw exactly the {total_ok} accepted connections ({len(agent.requests)})")

    log(f"websockets {websockets.__version__}; tokens used: owner {redact(owner_token)}")
    if failures:
        log(f"FAILED ({len(failures)}): " + "; ".join(failures))
        return 1
    log("PASSED")
    return 0


if __name__ == "__main__":
    args = parse_args()
    status = 1
    try:
        status = asyncio.run(main(args))
    except Exception as e:  # noqa: BLE001 - reported, and the run fails
        log(f"FAILED: harness error {type(e).__name__}: {e}")
    finally:
        os.makedirs(args.artifacts, exist_ok=True)
        with open(os.path.join(args.artifacts, "agent-ws.log"), "w") as f:
            f.write("\n".join(LOG) + "\n")
    sys.exit(status)

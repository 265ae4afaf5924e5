// Shared ports on a content site (issue #17) in a real headless Chromium, over HTTPS through
// edgegate's TLS listener: each visibility against each kind of visitor, a credentialed
// cross-port fetch with a preflight between two ports of one workspace, and a hostile page of
// another user's workspace on the same content site against a signed-in victim.
//
//   node tests/e2e/ports.mjs --gateway-port TLS_PORT --redis-port N --cert LEAF.pem
//        --artifacts DIR [--base-domain edgegate.test] [--content-domain edgegate-content.test]
//        [--gateway-log FILE] [--invalidate-channel edgegate:invalidate] [--label ports]
//
// The gateway: content_domain = CONTENT, a route "ws-{id}--{port}.{content_domain}" with
// auth = ["port_cookie", "port_token", "share_link"], any port from 1024, the default
// __Host- port cookie (auth.cookie_secure = true), a TLS listener whose certificate (--cert)
// covers *.CONTENT, *.BASE and BASE. Chromium trusts that certificate by its key
// (--ignore-certificate-errors-spki-list), so every page is a real secure context.
//
// The world (written into Redis here; upstreams are node http servers in this process on
// ephemeral loopback ports that record every request and upgrade they receive):
//   users: ports-owner (org acme), ports-member (org acme), ports-outsider (org globex),
//          ports-hostile (org globex); an anonymous visitor has no session at all;
//   workspace A (ports-owner's, org acme): one port per visibility (private, organization,
//          authenticated, public), two private ports P1 and P2 for the cross-port fetch, and
//          a private port PV (the victim's) for the hostile page;
//   workspace B (ports-hostile's): one public port whose page is HOSTILE.
//
// Checks. Positive controls first: if one fails the harness is broken (exit 2).
//   control-private-owner      the owner signs in to A's private port through the app host
//                              and back: the page, a host-only HttpOnly Secure __Host- cookie,
//                              HTTP/2 by ALPN, a secure context
//   control-public-anonymous   an anonymous visitor opens A's public port, no sign-in
//   matrix-{visibility}-{visitor}  (the other 14) who reaches the upstream page; refused
//                              visitors see edgegate's 403 (signed in) or 401 (anonymous) on
//                              the app host, and the upstream recorded nothing for them; no
//                              upstream ever receives the session or the port cookie
//   cors-preflight-sibling     the owner's page on P1 fetches P2 (private) with credentials,
//                              PUT and a custom header: it reads the answer; edgegate answered
//                              the preflight (P2's upstream saw no OPTIONS) and gave its
//                              Access-Control-Allow-*; the PUT arrived without the port cookie
//   hostile-6a-cookie-read     B's page reads document.cookie: nothing of the victim's for A
//   hostile-6b-cookie-toss     B's page sets __Host-edgegate_port by script (own host, Domain=
//                              the content domain, Domain=A's host) and its response sets it
//                              and a wide cookie with Domain=the content domain: the victim's
//                              cookie for A is unchanged, the next visit to A works with it,
//                              and A's upstream never sees a tossed value
//   hostile-6c-cors-read       B's page fetches A's private port with credentials: no readable
//                              response, A's upstream recorded nothing
// Beyond the brief (listed: false), same rules: 6d no-cors fetch, 6e preflighted PUT, 6f
// <script src>, 6g WebSocket, 6h form POST, all from B's page to A's private port: nothing
// reaches A's upstream. Informational (reported, never deciding the exit status):
//   hostile-6i-iframe          B frames A's private port: a navigation, which the port cookie
//                              opens (SameSite=Lax, same site); what does A's upstream see?
//   hostile-6j-sibling-cookie  B's script sets an ordinary cookie with Domain=the content
//                              domain: browsers let it, and A's upstream receives it
//   credentials-never-upstream over the whole run (counted)
//
// Exit status: 0 every check held, 1 a check failed, 2 the harness broke (a control failed,
// a timeout, …). One JSON line per check on stdout; artifacts: {label}-result.json (every
// check, every upstream request), {label}-{check}.png, {label}-console.log.

import { chromium } from 'playwright-core';
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';

const TOTAL_MS = 170_000; // the whole test, whatever happens
const NAV_MS = 15_000;
const PAGE_DONE_MS = 20_000; // the hostile page's whole script
const ACCESS_LOG_FLUSH_MS = 700; // edgegate flushes its access log every 200 ms

function parseArgs(argv) {
  const a = {
    baseDomain: 'edgegate.test', contentDomain: 'edgegate-content.test',
    invalidateChannel: 'edgegate:invalidate', label: 'ports',
  };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i];
    const v = argv[++i];
    if (!k.startsWith('--') || v === undefined) throw new Error(`bad argument ${k}`);
    a[k.slice(2).replace(/-([a-z])/g, (_, c) => c.toUpperCase())] = v;
  }
  for (const k of ['gatewayPort', 'redisPort', 'artifacts', 'cert']) {
    if (!a[k]) throw new Error(`missing --${k.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase())}`);
  }
  return a;
}

let args;
try {
  args = parseArgs(process.argv.slice(2));
} catch (e) {
  console.error(`ports: ${e.message}`);
  process.exit(2);
}
const BASE = args.baseDomain;
const CONTENT = args.contentDomain;
const PORT = Number(args.gatewayPort);
fs.mkdirSync(args.artifacts, { recursive: true });
const art = (suffix) => path.join(args.artifacts, `${args.label}${suffix}`);

// The world's names. Ids are canonical (upper-case) ULIDs; hosts carry them in lower case.
const A = '01HZX3M9Q4T8V6W2Y5B7C9DPTA';
const B = '01HZX3M9Q4T8V6W2Y5B7C9DPTB';
const PORT_COOKIE = '__Host-edgegate_port';
const rand = (n) => crypto.randomBytes(n).toString('hex');
const VISITORS = [
  { name: 'owner', user: 'ports-owner', org: 'acme', sid: `po-${rand(20)}` },
  { name: 'member', user: 'ports-member', org: 'acme', sid: `pm-${rand(20)}` },
  { name: 'outsider', user: 'ports-outsider', org: 'globex', sid: `px-${rand(20)}` },
  { name: 'anonymous', user: null, org: null, sid: null },
];
const OWNER = VISITORS[0];
const HOSTILE = { name: 'hostile', user: 'ports-hostile', org: 'globex', sid: `ph-${rand(20)}` };
const VISIBILITIES = ['private', 'organization', 'authenticated', 'public'];
const LETS_IN = {
  private: ['owner'],
  organization: ['owner', 'member'],
  authenticated: ['owner', 'member', 'outsider'],
  public: ['owner', 'member', 'outsider', 'anonymous'],
};
const appOrigin = `https://${BASE}:${PORT}`;
const contentHost = (id, port) => `ws-${id.toLowerCase()}--${port}.${CONTENT}`;
const contentOrigin = (id, port) => `https://${contentHost(id, port)}:${PORT}`;
// What a tossing page sets; every value carries TOSSED so any sighting is found.
const TOSS = {
  hdrHost: `TOSSED-HDR-HOST-${rand(4)}`, // __Host-edgegate_port by B's response, B's own host
  hdrDomain: `TOSSED-HDR-DOMAIN-${rand(4)}`, // __Host-edgegate_port; Domain=CONTENT (response)
  hdrWide: `TOSSED-HDR-WIDE-${rand(4)}`, // edgegate_toss; Domain=CONTENT (response)
  jsHost: `TOSSED-JS-HOST-${rand(4)}`, // __Host-edgegate_port by script, B's own host
  jsDomain: `TOSSED-JS-DOMAIN-${rand(4)}`, // … Domain=CONTENT by script
  jsA: `TOSSED-JS-A-${rand(4)}`, // … Domain=A's host by script
  jsCase: `TOSSED-JS-CASE-${rand(4)}`, // __host-edgegate_port (lower case); Domain=CONTENT
  jsWide: `TOSSED-JS-WIDE-${rand(4)}`, // an ordinary cookie; Domain=CONTENT (informational)
};
// Tossed values that may reach A's upstream without any fault of edgegate's: cookies of other
// names, which any page of the registrable domain may set for all of it.
const TOSS_INFORMATIONAL = new Set([TOSS.jsCase, TOSS.jsWide]);

// ---------------------------------------------------------------------------------------------
// Bookkeeping

const consoleLines = [];
const checks = [];
const upstreamLog = []; // every request any upstream of this test received
let current = 'setup';
let harnessError = null;

function log(line) {
  consoleLines.push(`[${new Date().toISOString()}] [${current}] ${line}`);
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

let finished = false;
const watchdog = setTimeout(() => {
  harnessError = harnessError || new HarnessError(`the whole test took longer than ${TOTAL_MS} ms`);
  finish().finally(() => process.exit(2));
}, TOTAL_MS);

// A browser call that must not hang the test: its value, or `fallback` after `ms`.
function bounded(p, ms, fallback) {
  let timer;
  return Promise.race([
    Promise.resolve(p).catch(() => fallback),
    new Promise((r) => { timer = setTimeout(() => r(fallback), ms); }),
  ]).finally(() => clearTimeout(timer));
}

// ---------------------------------------------------------------------------------------------
// Upstreams: one recording server per port

function listen(server) {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve(server.address().port));
  });
}

const servers = [];
function recordRequest(label, req, extra = {}) {
  const r = {
    at: new Date().toISOString(), check: current, upstream: label, method: req.method,
    url: req.url, headers: { ...req.headers }, ...extra,
  };
  upstreamLog.push(r);
  log(`upstream ${label}: ${req.method} ${req.url}${extra.upgrade ? ' (upgrade)' : ''} origin=${req.headers.origin || '-'} cookie=${short(req.headers.cookie || '-', 120)}`);
  return r;
}

// An ordinary workspace port: a page that shows what it is, a JSON API, a script. No CORS
// headers of its own: whatever a browser is allowed to read cross-origin, edgegate allowed.
function portServer(label) {
  const s = http.createServer((req, res) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (c) => { if (body.length < 65536) body += c; });
    req.on('end', () => {
      recordRequest(label, req, { body: short(body, 2000) });
      const u = new URL(req.url, 'http://upstream.invalid');
      if (u.pathname.startsWith('/api')) {
        res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-store' });
        res.end(JSON.stringify({ upstream: label, method: req.method, url: req.url, body }));
      } else if (u.pathname.endsWith('.js')) {
        res.writeHead(200, { 'content-type': 'application/javascript', 'cache-control': 'no-store' });
        res.end(`window.__fromA = ${JSON.stringify(label)};\n`);
      } else {
        res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
        res.end(`<!doctype html><html><head><meta charset="utf-8"><link rel="icon" href="data:,"><title>${label}</title></head>
<body style="font:16px sans-serif"><h1 id="marker">upstream ${label}</h1><p>served ${req.method} <code>${(u.pathname + u.search).replace(/[<&"]/g, (c) => `&#${c.charCodeAt(0)};`)}</code></p>
<p>document.cookie: <code id="cookie"></code></p>
<script>document.getElementById('cookie').textContent = JSON.stringify(document.cookie);</script></body></html>`);
      }
    });
  });
  s.on('upgrade', (req, socket) => {
    recordRequest(label, req, { upgrade: true });
    socket.destroy();
  });
  servers.push(s);
  return s;
}

// B's page: tosses cookies by script and by its response, reads what it can of A.
async function hostileScript(C) {
  const out = { origin: location.origin, tosses: {} };
  const within = (p, ms) => Promise.race([p, new Promise((r) => setTimeout(() => r({ timeout: ms }), ms))]);
  const attempt = async (fn) => { try { return await fn(); } catch (e) { return { error: String(e) }; } };
  // (a) read.
  out.cookieAtStart = document.cookie;
  // (b) toss by script.
  const toss = (name, spelling) => {
    document.cookie = spelling;
    out.tosses[name] = { spelling, cookieAfter: document.cookie };
  };
  toss('jsHost', `__Host-edgegate_port=${C.toss.jsHost}; Path=/; Secure; SameSite=Lax`);
  toss('jsDomain', `__Host-edgegate_port=${C.toss.jsDomain}; Domain=${C.content}; Path=/; Secure`);
  toss('jsA', `__Host-edgegate_port=${C.toss.jsA}; Domain=${C.aHost}; Path=/; Secure`);
  toss('jsCase', `__host-edgegate_port=${C.toss.jsCase}; Domain=${C.content}; Path=/; Secure`);
  toss('jsWide', `sibling_planted=${C.toss.jsWide}; Domain=${C.content}; Path=/; Secure`);
  // The brief's own spellings, without Secure.
  document.cookie = `__Host-edgegate_port=${C.toss.jsHost}-nosecure; Path=/`;
  document.cookie = `__Host-edgegate_port=${C.toss.jsDomain}-nosecure; Domain=${C.content}; Path=/`;
  out.cookieAfterTosses = document.cookie;
  // (c) a credentialed CORS read of A's private port.
  out.cors = await within(attempt(async () => {
    const r = await fetch(`${C.a}/api/b-cors?from=b-cors`, { credentials: 'include' });
    return { status: r.status, body: (await r.text()).slice(0, 2000) };
  }), 5000);
  // (d) no-cors: an opaque answer, but did the request get through?
  out.noCors = await within(attempt(async () => {
    const r = await fetch(`${C.a}/api/b-nocors?from=b-nocors`, { credentials: 'include', mode: 'no-cors' });
    return { type: r.type, status: r.status };
  }), 5000);
  // (e) a preflighted PUT, as the workspace's own sibling would send it.
  out.put = await within(attempt(async () => {
    const r = await fetch(`${C.a}/api/b-put?from=b-put`, {
      credentials: 'include', method: 'PUT', headers: { 'x-thing': '1' }, body: 'from-b',
    });
    return { status: r.status, body: (await r.text()).slice(0, 2000) };
  }), 5000);
  // (f) <script src> (no Origin on a no-cors GET).
  out.script = await within(new Promise((resolve) => {
    const s = document.createElement('script');
    s.src = `${C.a}/b-script.js?from=b-script`;
    s.onload = () => resolve({ loaded: true, fromA: window.__fromA || null });
    s.onerror = () => resolve({ loaded: false });
    document.head.appendChild(s);
  }), 5000);
  // (g) a WebSocket with the victim's cookie.
  out.websocket = await within(new Promise((resolve) => {
    let ws;
    let opened = false;
    try { ws = new WebSocket(`${C.aWs}/ws/b-ws?from=b-ws`); } catch (e) { resolve({ error: String(e) }); return; }
    ws.onopen = () => { opened = true; ws.close(); };
    ws.onclose = (e) => resolve({ opened, code: e.code });
    ws.onerror = () => {};
  }), 5000);
  // (h) a form POST into a hidden frame.
  out.form = await within(new Promise((resolve) => {
    const f = document.createElement('iframe');
    f.name = 'sink';
    f.style.display = 'none';
    document.body.appendChild(f);
    const form = document.createElement('form');
    form.method = 'POST';
    form.action = `${C.a}/api/b-form?from=b-form`;
    form.target = 'sink';
    const i = document.createElement('input');
    i.name = 'x';
    i.value = 'from-b';
    form.appendChild(i);
    document.body.appendChild(form);
    f.onload = () => resolve({ submitted: true });
    form.submit();
    setTimeout(() => resolve({ submitted: true, load: 'timeout' }), 4000);
  }), 6000);
  // (i) a visible frame of A's private port.
  out.iframe = await within(new Promise((resolve) => {
    const f = document.createElement('iframe');
    f.src = `${C.a}/framed?from=b-iframe`;
    f.width = 500;
    f.height = 200;
    document.body.appendChild(f);
    f.onload = () => {
      let readable;
      try { readable = f.contentDocument ? f.contentDocument.body.innerText.slice(0, 300) : null; } catch (e) { readable = `not readable: ${e.name}`; }
      resolve({ loaded: true, readable });
    };
    setTimeout(() => resolve({ loaded: false }), 5000);
  }), 6000);
  out.cookieAtEnd = document.cookie;
  window.__hostile = out;
  window.__hostileDone = true;
}

function hostileServer(label) {
  const s = http.createServer((req, res) => {
    recordRequest(label, req);
    req.resume();
    const C = {
      a: contentOrigin(A, ports.victim), aWs: contentOrigin(A, ports.victim).replace(/^https/, 'wss'),
      aHost: contentHost(A, ports.victim), content: CONTENT, toss: TOSS,
    };
    const json = JSON.stringify(C).replace(/</g, '\\u003c');
    res.writeHead(200, {
      'content-type': 'text/html; charset=utf-8',
      'cache-control': 'no-store',
      'set-cookie': [
        // The port cookie for B's own host (edgegate's credential name: never from upstream).
        `${PORT_COOKIE}=${TOSS.hdrHost}; Path=/; Secure; HttpOnly; SameSite=Lax`,
        // The same for every content host (a browser refuses a __Host- cookie with Domain).
        `${PORT_COOKIE}=${TOSS.hdrDomain}; Domain=${CONTENT}; Path=/; Secure; HttpOnly`,
        // A cookie for every workspace of the content site (edgegate drops Domain=).
        `edgegate_toss=${TOSS.hdrWide}; Domain=${CONTENT}; Path=/; Secure; HttpOnly; SameSite=Lax`,
        // B's own, host-only: passes (the control that Set-Cookie is not dropped wholesale).
        'b_own=1; Path=/; Secure; SameSite=Lax',
      ],
    });
    res.end(`<!doctype html><html><head><meta charset="utf-8"><link rel="icon" href="data:,"><title>hostile workspace B</title></head>
<body style="background:#300;color:#fff;font:16px sans-serif">
<h1 id="marker">HOSTILE WORKSPACE B</h1><p>running on <b id="o"></b></p>
<script>document.getElementById('o').textContent = location.origin;
(${hostileScript.toString()})(${json});</script></body></html>`);
  });
  s.on('upgrade', (req, socket) => {
    recordRequest(label, req, { upgrade: true });
    socket.destroy();
  });
  servers.push(s);
  return s;
}

// ---------------------------------------------------------------------------------------------
// Redis and the gateway's access log

function rcli(...a) {
  return execFileSync('redis-cli', ['-h', '127.0.0.1', '-p', String(args.redisPort), ...a],
    { timeout: 5000, encoding: 'utf8' }).trim();
}

const ports = {}; // name -> upstream port
function writeWorld() {
  const now = Math.floor(Date.now() / 1000);
  const put = (key, ...fields) => {
    rcli('DEL', key);
    rcli('HSET', key, ...fields);
    rcli('PUBLISH', args.invalidateChannel, key);
    harness(rcli('HGET', key, fields[0]) === fields[1], `redis did not keep ${key}`);
  };
  for (const v of [...VISITORS, HOSTILE]) {
    if (v.sid) put(`session:${v.sid}`, 'user', v.user, 'org', v.org, 'expires_at', String(now + 3600));
  }
  const setting = (visibility) => JSON.stringify({ visibility });
  const a = ['backend', `127.0.0.1:${ports.private}`, 'owner', OWNER.user, 'status', 'running', 'org', 'acme'];
  for (const v of VISIBILITIES) a.push(`port.${ports[v]}`, setting(v));
  for (const p of ['p1', 'p2', 'victim']) a.push(`port.${ports[p]}`, JSON.stringify({ visibility: 'private', cors: 'default' }));
  put(`workspace:${A}`, ...a);
  put(`workspace:${B}`, 'backend', `127.0.0.1:${ports.hostile}`, 'owner', HOSTILE.user, 'status', 'running',
    'org', 'globex', `port.${ports.hostile}`, setting('public'));
}

function gatewayLogSize() {
  if (!args.gatewayLog) return 0;
  try { return fs.statSync(args.gatewayLog).size; } catch (_) { return 0; }
}
function gatewayLogSince(offset) {
  if (!args.gatewayLog) return [];
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
// Browser

let browser;
const contexts = new Set();

function spkiOf(pemFile) {
  const cert = new crypto.X509Certificate(fs.readFileSync(pemFile));
  const der = cert.publicKey.export({ type: 'spki', format: 'der' });
  return crypto.createHash('sha256').update(der).digest('base64');
}

async function launch() {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    chromiumSandbox: false,
    timeout: 60_000,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      `--host-resolver-rules=MAP *.${BASE} 127.0.0.1, MAP ${BASE} 127.0.0.1, MAP *.${CONTENT} 127.0.0.1`,
      // The gateway's certificate, trusted by its key: real HTTPS, no blanket exception.
      `--ignore-certificate-errors-spki-list=${spkiOf(args.cert)}`,
    ],
  });
}

// A visitor: a fresh context (its own cookie jar) with its app session on the app domain.
async function visitor(v) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 700 } });
  contexts.add(context);
  if (v.sid) {
    await context.addCookies([{
      name: 'session', value: v.sid, domain: `.${BASE}`, path: '/', httpOnly: true, secure: true, sameSite: 'Lax',
    }]);
  }
  const page = await context.newPage();
  const tag = v.name;
  page.on('console', (m) => log(`${tag} console.${m.type()}: ${short(m.text(), 500)}`));
  page.on('pageerror', (e) => log(`${tag} pageerror: ${short(e.message, 500)}`));
  page.on('requestfailed', (r) => log(`${tag} requestfailed: ${r.method()} ${short(r.url(), 200)} ${r.failure()?.errorText}`));
  page.on('response', (r) => log(`${tag} response ${r.status()} ${r.request().method()} ${short(r.url(), 200)}`));
  return {
    context, page, v,
    async close() { contexts.delete(context); await bounded(context.close(), 10_000, null); },
  };
}

async function visit(page, url) {
  const shown = { url };
  try {
    const resp = await page.goto(url, { waitUntil: 'load', timeout: NAV_MS });
    shown.status = resp ? resp.status() : null;
    if (resp) {
      const chain = [];
      for (let r = resp.request().redirectedFrom(); r; r = r.redirectedFrom()) {
        const rr = await r.response().catch(() => null);
        chain.unshift({ url: r.url(), status: rr ? rr.status() : null, location: rr ? rr.headers().location ?? null : null });
      }
      shown.redirects = chain;
      shown.headers = resp.headers();
    }
  } catch (e) {
    shown.error = short(String(e.message || e).split('\n')[0], 300);
  }
  shown.finalUrl = page.url();
  shown.text = short(await bounded(page.evaluate(() => (document.body ? document.body.innerText : '')), 5000, null), 400);
  Object.assign(shown, await bounded(page.evaluate(() => ({
    codes: [...document.querySelectorAll('code')].map((c) => c.textContent),
    protocol: performance.getEntriesByType('navigation')[0]?.nextHopProtocol ?? null,
    secureContext: window.isSecureContext,
  })), 5000, {}));
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

const redactCookie = (c) => ({
  name: c.name, value: c.value.startsWith('TOSSED') ? c.value : short(c.value, 12), domain: c.domain,
  path: c.path, httpOnly: c.httpOnly, secure: c.secure, sameSite: c.sameSite,
});

// ---------------------------------------------------------------------------------------------
// Checks

function begin(name) {
  current = name;
  say(`--- ${name}`);
  return { name, upstream: upstreamLog.length, gwlog: gatewayLogSize() };
}
// (A browser's own /favicon.ico requests are not the page's: the pages say they have none.)
const upstreamSince = (mark, label) => upstreamLog.slice(mark.upstream)
  .filter((r) => (!label || r.upstream === label) && r.url !== '/favicon.ico');

// What no upstream may receive: the app session, any port cookie, the port-token header.
const sids = [...VISITORS, HOSTILE].map((v) => v.sid).filter(Boolean);
const portCookieValues = new Set();
function credentialsIn(r) {
  const found = [];
  const cookie = r.headers.cookie || '';
  if (/(^|;\s*)session=/.test(cookie)) found.push('a session cookie');
  if (sids.some((s) => cookie.includes(s))) found.push('a session id');
  if (cookie.includes(PORT_COOKIE) || /__host-edgegate_port=(?!TOSSED)/i.test(cookie)) found.push('a port cookie');
  for (const v of portCookieValues) if (JSON.stringify(r.headers).includes(v)) found.push('a port cookie\'s value');
  if ('x-edgegate-port-token' in r.headers) found.push('the port-token header');
  return found;
}

// kind: 'control' | 'check'. problems: what did not hold (a control's are "broken").
async function record(mark, { kind = 'check', listed = true, informational = false, description, expected, shown, page, problems = [], notes = [], extra = {} }) {
  await sleep(150);
  const ups = upstreamSince(mark);
  let verdict;
  if (kind === 'control') verdict = problems.length ? 'HARNESS BROKEN' : 'control held';
  else if (informational) verdict = problems.length ? 'informational: it got through' : 'informational: held';
  else verdict = problems.length ? 'FAILED' : 'held';
  const screenshot = page ? await shot(page, mark.name) : null;
  const c = {
    name: mark.name, kind, listed, informational, description, expected, verdict, problems, notes,
    shown, screenshot,
    upstream: ups.map((r) => ({
      at: r.at, upstream: r.upstream, method: r.method, url: r.url, upgrade: !!r.upgrade,
      host: r.headers.host, origin: r.headers.origin, cookie: r.headers.cookie,
      'x-edgegate-user': r.headers['x-edgegate-user'], 'sec-fetch-site': r.headers['sec-fetch-site'],
      'sec-fetch-mode': r.headers['sec-fetch-mode'], 'sec-fetch-dest': r.headers['sec-fetch-dest'],
    })),
    ...extra,
  };
  checks.push(c);
  // One JSON line per check.
  console.log(JSON.stringify({ check: c.name, verdict, kind, listed, informational, problems, notes }));
  log(`${verdict}${problems.length ? `: ${problems.join(' | ')}` : ''}`);
  return c;
}

// One visitor opens one port of A with the visibility `vis` in a fresh context.
async function cell(vis, v, kind) {
  const name = kind === 'control' ? `control-${vis}-${v.name}` : `matrix-${vis}-${v.name}`;
  const mark = begin(name);
  const who = await visitor(v);
  const port = ports[vis];
  const host = contentHost(A, port);
  const origin = contentOrigin(A, port);
  const target = `/page?vis=${vis}&who=${v.name}`;
  const shown = await visit(who.page, origin + target);
  await sleep(100);
  const reqs = upstreamSince(mark, `A:${vis}`);
  const jar = await who.context.cookies();
  const portCookies = jar.filter((c) => c.name === PORT_COOKIE);
  for (const c of portCookies) portCookieValues.add(c.value);
  const allowed = LETS_IN[vis].includes(v.name);
  const problems = [];
  const notes = [];
  if (allowed) {
    if (shown.status !== 200) problems.push(`the page answered ${shown.status ?? shown.error}`);
    if (shown.finalUrl !== origin + target) problems.push(`ended on ${shown.finalUrl}, not ${origin + target}`);
    if (!(shown.text || '').includes(`upstream A:${vis}`)) problems.push('the upstream\'s page is not what the visitor sees');
    if (reqs.length !== 1) problems.push(`A's ${vis} upstream received ${reqs.length} requests, not 1`);
    const r = reqs[0];
    if (r && r.url !== target) problems.push(`the upstream was asked for ${r.url}, not ${target}`);
    const wantUser = vis === 'public' ? undefined : v.user;
    if (r && r.headers['x-edgegate-user'] !== wantUser) problems.push(`X-Edgegate-User upstream: ${r.headers['x-edgegate-user']} (want ${wantUser ?? 'none'})`);
    if (shown.protocol !== 'h2') problems.push(`the page came over ${shown.protocol}, not h2 (ALPN)`);
    if (shown.secureContext !== true) problems.push('the page is not a secure context');
    const seenCookie = shown.codes?.[1];
    if (seenCookie && seenCookie.includes('edgegate_port')) problems.push(`the page's script reads the port cookie: ${seenCookie}`);
    const hops = shown.redirects || [];
    if (vis === 'public') {
      if (hops.length) problems.push(`a public port redirected: ${hops.map((h) => `${h.status} ${h.url}`).join(' -> ')}`);
      if (portCookies.length) problems.push('a public port set a port cookie');
    } else {
      const authorize = `${appOrigin}/api/ports/${A}/${port}/authorize?`;
      const ok = hops.length === 3
        && hops[0].status === 303 && hops[0].url === origin + target
        && hops[1].status === 303 && hops[1].url.startsWith(authorize)
        && hops[2].status === 303 && hops[2].url.startsWith(`${origin}/__edgegate/auth?token=`);
      if (!ok) problems.push(`the sign-in did not go content -> app host -> content callback -> page: ${hops.map((h) => `${h.status} ${h.url.replace(/token=[^&]*/, 'token=…')}`).join(' -> ')}`);
      if (portCookies.length !== 1) problems.push(`${portCookies.length} port cookies in the jar`);
      const c = portCookies[0];
      if (c && !(c.domain === host && c.httpOnly && c.secure && c.path === '/' && c.sameSite === 'Lax')) {
        problems.push(`the port cookie is not host-only, HttpOnly, Secure, Path=/, SameSite=Lax: ${JSON.stringify(redactCookie(c))}`);
      }
      if (jar.some((x) => x.name === PORT_COOKIE && x.domain !== host)) problems.push('a port cookie for another host');
    }
  } else {
    const want = v.sid ? 403 : 401;
    const code = v.sid ? 'forbidden' : 'unauthenticated';
    if (shown.status !== want) problems.push(`answered ${shown.status ?? shown.error}, not ${want}`);
    if (!shown.finalUrl.startsWith(`${appOrigin}/api/ports/${A}/${port}/authorize`)) problems.push(`ended on ${shown.finalUrl}, not on the app host's sign-in`);
    if (shown.codes?.[0] !== code) problems.push(`edgegate's page says ${shown.codes?.[0]}, not ${code}`);
    if (reqs.length) problems.push(`A's ${vis} upstream received ${reqs.length} request(s) for a refused visitor`);
    if (portCookies.length) problems.push('a refused visitor got a port cookie');
  }
  for (const r of upstreamSince(mark)) {
    const creds = credentialsIn(r);
    if (creds.length) problems.push(`${r.upstream} received ${creds.join(', ')}`);
  }
  if (allowed) notes.push(`got the page over ${shown.protocol}`);
  else notes.push(`refused with ${shown.status} ${shown.codes?.[0]}`);
  const c = await record(mark, {
    kind: kind === 'control' ? 'control' : 'check',
    description: `${v.name} (${v.user ?? 'no session'}${v.org ? `, org ${v.org}` : ''}) opens A's ${vis} port in a fresh browser`,
    expected: allowed ? 'the upstream page; the upstream gets neither the session nor the port cookie' : `edgegate's ${v.sid ? 403 : 401} on the app host; nothing reaches the upstream`,
    shown, page: who.page, problems, notes,
    extra: { jar: jar.map(redactCookie) },
  });
  await who.close();
  return c;
}

async function run() {
  current = 'setup';
  for (const v of VISIBILITIES) ports[v] = await listen(portServer(`A:${v}`));
  ports.p1 = await listen(portServer('A:P1'));
  ports.p2 = await listen(portServer('A:P2'));
  ports.victim = await listen(portServer('A:victim'));
  ports.hostile = await listen(hostileServer('B:hostile'));
  say(`upstreams: ${JSON.stringify(ports)}`);
  writeWorld();
  await launch();
  say(`chromium ${browser.version()}`);

  // Positive controls.
  await cell('private', OWNER, 'control');
  await cell('public', VISITORS[3], 'control');
  if (checks.some((c) => c.verdict === 'HARNESS BROKEN')) {
    throw new HarnessError('a positive control failed: the setup does not work (certificate, sign-in, records)');
  }

  // The matrix.
  for (const vis of VISIBILITIES) {
    for (const v of VISITORS) {
      if ((vis === 'private' && v === OWNER) || (vis === 'public' && v.name === 'anonymous')) continue;
      await cell(vis, v, 'check');
    }
  }

  // A credentialed, preflighted fetch between two private ports of A.
  {
    const mark = begin('cors-preflight-sibling');
    const who = await visitor(OWNER);
    const p1 = contentOrigin(A, ports.p1);
    const p2 = contentOrigin(A, ports.p2);
    const signedP2 = await visit(who.page, `${p2}/`);
    const signedP1 = await visit(who.page, `${p1}/`);
    const problems = [];
    const broken = [];
    if (signedP2.status !== 200 || signedP2.finalUrl !== `${p2}/`) broken.push(`signing in to P2: ${signedP2.status ?? signedP2.error} at ${signedP2.finalUrl}`);
    if (signedP1.status !== 200 || signedP1.finalUrl !== `${p1}/`) broken.push(`signing in to P1: ${signedP1.status ?? signedP1.error} at ${signedP1.finalUrl}`);
    for (const c of await who.context.cookies()) if (c.name === PORT_COOKIE) portCookieValues.add(c.value);
    let fetched = null;
    let respHeaders = null;
    const mark2 = { ...mark, upstream: upstreamLog.length, gwlog: gatewayLogSize() };
    if (!broken.length) {
      const url = `${p2}/api?cors=1`;
      const seen = who.page.waitForResponse((r) => r.url() === url && r.request().method() === 'PUT', { timeout: 8000 }).catch(() => null);
      fetched = await bounded(who.page.evaluate(async (u) => {
        try {
          const r = await fetch(u, { credentials: 'include', method: 'PUT', headers: { 'x-thing': '1' }, body: 'payload-from-p1' });
          return { status: r.status, body: await r.text() };
        } catch (e) {
          return { error: String(e) };
        }
      }, url), 10_000, { error: 'timed out' });
      const resp = await seen;
      respHeaders = resp ? resp.headers() : null;
      await sleep(ACCESS_LOG_FLUSH_MS);
      let body = null;
      try { body = JSON.parse(fetched.body); } catch (_) { /* below */ }
      if (fetched.status !== 200 || !body) problems.push(`P1's page could not read P2's answer: ${JSON.stringify(fetched).slice(0, 300)}`);
      else if (body.upstream !== 'A:P2' || body.method !== 'PUT' || body.body !== 'payload-from-p1') problems.push(`P2's answer is not its PUT's: ${JSON.stringify(body)}`);
      if (!respHeaders) problems.push('no PUT response seen in the browser');
      else {
        if (respHeaders['access-control-allow-origin'] !== p1) problems.push(`Access-Control-Allow-Origin ${respHeaders['access-control-allow-origin']}, not ${p1}`);
        if (respHeaders['access-control-allow-credentials'] !== 'true') problems.push(`Access-Control-Allow-Credentials ${respHeaders['access-control-allow-credentials']}`);
      }
      const up = upstreamSince(mark2, 'A:P2');
      if (up.some((r) => r.method === 'OPTIONS')) problems.push('P2\'s upstream received the preflight (edgegate answers it for a sibling)');
      const puts = up.filter((r) => r.method === 'PUT');
      if (puts.length !== 1) problems.push(`P2's upstream received ${puts.length} PUTs, not 1`);
      const put = puts[0];
      if (put) {
        if (put.headers.origin !== p1) problems.push(`the PUT's Origin upstream: ${put.headers.origin}`);
        if (put.headers['x-thing'] !== '1') problems.push('the PUT lost its x-thing header');
        if (put.headers['x-edgegate-user'] !== OWNER.user) problems.push(`the PUT's X-Edgegate-User: ${put.headers['x-edgegate-user']}`);
        const creds = credentialsIn(put);
        if (creds.length) problems.push(`the PUT reached P2's upstream with ${creds.join(', ')}`);
      }
      const gw = gatewayLogSince(mark2.gwlog);
      const preflight = gw.find((l) => l.method === 'OPTIONS' && l.path.startsWith('/api'));
      if (args.gatewayLog && (!preflight || preflight.status !== 204)) problems.push(`edgegate's access log has no 204 OPTIONS /api (${JSON.stringify(preflight || null)})`);
    }
    await record(mark, {
      kind: broken.length ? 'control' : 'check',
      description: 'the owner, signed in to P1 and P2 (both private), runs fetch(P2/api, {credentials: "include", method: "PUT", headers: {"x-thing": "1"}}) on P1\'s page',
      expected: 'P1 reads the answer; edgegate answers the preflight (204, no OPTIONS upstream) and allows the origin with credentials; P2\'s upstream gets the PUT without the port cookie',
      shown: { signedP2, signedP1, fetched, responseHeaders: respHeaders }, page: who.page,
      problems: broken.length ? broken : problems,
      extra: { gatewayAccessLog: gatewayLogSince(mark.gwlog) },
    });
    await who.close();
  }

  // A hostile page of another user's workspace on the same content site.
  {
    const mark = begin('control-victim-signed-in');
    const victim = await visitor(OWNER);
    const a = contentOrigin(A, ports.victim);
    const aHost = contentHost(A, ports.victim);
    const b = contentOrigin(B, ports.hostile);
    const first = await visit(victim.page, `${a}/before`);
    const jarBefore = await victim.context.cookies();
    const mine = jarBefore.find((c) => c.name === PORT_COOKIE && c.domain === aHost);
    if (mine) portCookieValues.add(mine.value);
    const broken = [];
    if (first.status !== 200 || first.finalUrl !== `${a}/before`) broken.push(`the victim's own port: ${first.status ?? first.error} at ${first.finalUrl}`);
    if (!mine) broken.push('no port cookie for A in the victim\'s jar');
    await record(mark, {
      kind: 'control', description: 'the victim (A\'s owner) signs in to A\'s private port PV',
      expected: 'the page, and a port cookie for PV\'s host', shown: first, page: victim.page, problems: broken,
      extra: { jar: jarBefore.map(redactCookie) },
    });
    harness(!broken.length, `the victim could not sign in to A: ${broken.join('; ')}`);

    const markB = begin('control-hostile-page-runs');
    const shownB = await visit(victim.page, `${b}/`);
    const done = await bounded(victim.page.waitForFunction(() => window.__hostileDone === true, null, { timeout: PAGE_DONE_MS }), PAGE_DONE_MS + 1000, null);
    const h = await bounded(victim.page.evaluate(() => window.__hostile), 5000, null);
    await sleep(ACCESS_LOG_FLUSH_MS);
    const jarAfter = await victim.context.cookies();
    await record(markB, {
      kind: 'control', description: 'the victim opens B\'s public port; its page runs its attacks',
      expected: 'B\'s page runs to its end', shown: { ...shownB, hostile: h }, page: victim.page,
      problems: [...(shownB.status === 200 ? [] : [`B answered ${shownB.status ?? shownB.error}`]), ...(done && h ? [] : ['B\'s page did not finish'])],
      extra: { jarAfter: jarAfter.map(redactCookie), gatewayAccessLog: gatewayLogSince(markB.gwlog) },
    });
    harness(done && h, 'B\'s page did not run');
    // What B's page caused at A's victim port, per attack (by its ?from= tag).
    const fromB = upstreamSince(markB, 'A:victim');
    const tagged = (tag) => fromB.filter((r) => r.url.includes(`from=${tag}`));
    const sub = (name) => ({ name, upstream: markB.upstream, gwlog: markB.gwlog });

    // 6a: read.
    {
      const m = sub('hostile-6a-cookie-read');
      current = m.name;
      const problems = [];
      for (const [when, s] of [['at start', h.cookieAtStart], ['after the tosses', h.cookieAfterTosses], ['at the end', h.cookieAtEnd]]) {
        if ((s || '').includes(mine.value)) problems.push(`B's page read the victim's port cookie for A (${when})`);
        if (/(^|;\s*)session=/.test(s || '')) problems.push(`B's page read an app session (${when})`);
      }
      const a2 = jarAfter.find((c) => c.name === PORT_COOKIE && c.domain === aHost);
      if (a2 && !(a2.httpOnly && a2.secure)) problems.push('the victim\'s port cookie is not HttpOnly and Secure');
      await record(m, {
        description: 'B\'s page reads document.cookie', expected: 'nothing of the victim\'s for A (host-only, HttpOnly)',
        shown: { cookieAtStart: h.cookieAtStart, cookieAfterTosses: h.cookieAfterTosses, cookieAtEnd: h.cookieAtEnd }, problems,
      });
    }

    // 6b: toss, then the victim's next request to A.
    {
      const m = begin('hostile-6b-cookie-toss');
      const problems = [];
      const notes = [];
      const a2 = jarAfter.find((c) => c.name === PORT_COOKIE && c.domain === aHost);
      if (!a2) problems.push('the victim\'s port cookie for A is gone');
      else if (a2.value !== mine.value) problems.push(`the victim's port cookie for A was replaced (${short(a2.value, 40)})`);
      const foreign = jarAfter.filter((c) => c.name.toLowerCase() === PORT_COOKIE.toLowerCase() && c.domain !== aHost
        && !(c.domain === contentHost(B, ports.hostile) && c.value.startsWith(TOSS.jsHost)));
      if (foreign.length) problems.push(`port cookies planted: ${foreign.map((c) => `${c.name}=${c.value} on ${c.domain}`).join(', ')}`);
      if (jarAfter.some((c) => c.value === TOSS.hdrWide)) problems.push('B\'s response set a cookie for the whole content domain (Set-Cookie with Domain= passed)');
      if (jarAfter.some((c) => c.value === TOSS.hdrHost)) problems.push('B\'s response set the port cookie (edgegate\'s credential name) on B\'s host');
      if (!jarAfter.some((c) => c.name === 'b_own')) notes.push('B\'s own host-only cookie (b_own) did not land either');
      const landed = Object.entries(TOSS).filter(([, val]) => jarAfter.some((c) => c.value.startsWith(val))).map(([k]) => k);
      notes.push(`tossed values in the victim's jar: ${landed.join(', ') || 'none'}`);
      // The victim's next visit to A.
      const again = await visit(victim.page, `${a}/after-toss`);
      const reqs = upstreamSince(m, 'A:victim');
      if (again.status !== 200 || again.finalUrl !== `${a}/after-toss`) problems.push(`the victim's next visit to A: ${again.status ?? again.error} at ${again.finalUrl}`);
      if ((again.redirects || []).length) problems.push(`the victim had to sign in again: ${again.redirects.map((x) => `${x.status} ${x.url.replace(/token=[^&]*/, 'token=…')}`).join(' -> ')}`);
      if (reqs.length !== 1) problems.push(`A's upstream received ${reqs.length} requests for it`);
      const counted = Object.values(TOSS).filter((t) => !TOSS_INFORMATIONAL.has(t));
      for (const r of upstreamSince(markB, 'A:victim').concat(reqs)) {
        const got = counted.filter((t) => JSON.stringify(r.headers).includes(t));
        if (got.length) problems.push(`A's upstream received a tossed value (${got.join(', ')}) on ${r.method} ${r.url}`);
        const creds = credentialsIn(r);
        if (creds.length) problems.push(`A's upstream received ${creds.join(', ')} on ${r.method} ${r.url}`);
      }
      if (reqs[0] && reqs[0].headers['x-edgegate-user'] !== OWNER.user) problems.push(`the victim's request went up as ${reqs[0].headers['x-edgegate-user']}`);
      await record(m, {
        description: 'B\'s page sets __Host-edgegate_port by script (own host; Domain=the content domain; Domain=A\'s host) and by its response (own host; Domain=…), and edgegate_toss with Domain=the content domain by its response; then the victim opens A again',
        expected: 'the victim\'s cookie for A unchanged; no Domain= cookie from a response; the next visit to A works with the victim\'s own cookie and A\'s upstream sees no tossed value',
        shown: { tosses: h.tosses, again }, page: victim.page, problems, notes,
        extra: { jarAfterToss: jarAfter.map(redactCookie) },
      });
      // 6j (informational): the ordinary wide cookie B's script set, at A's upstream.
      const mj = sub('hostile-6j-sibling-cookie');
      current = mj.name;
      const wide = reqs.filter((r) => (r.headers.cookie || '').includes(TOSS.jsWide) || (r.headers.cookie || '').includes(TOSS.jsCase));
      await record(mj, {
        informational: true, listed: false,
        description: 'B\'s script sets ordinary cookies with Domain=the content domain (sibling_planted, and __host-edgegate_port in lower case); they ride along to A',
        expected: 'informational: any page of the content site may plant cookies of other names for all of it (a registrable domain shared by every workspace); edgegate strips only its own',
        shown: { cookieHeadersAtA: reqs.map((r) => r.headers.cookie) },
        problems: wide.length ? [`A's upstream received cookies B planted: ${wide.map((r) => r.headers.cookie).join(' | ')}`] : [],
      });
    }

    // 6c and beyond: requests from B's page to A's private port.
    // [check, tag, listed, what, what the page saw, "it read nothing", edgegate's answers
    // (method, status) in its access log for that path].
    const attempts = [
      ['hostile-6c-cors-read', 'b-cors', true, 'fetch(A/api, {credentials: "include"})', h.cors, (x) => x && x.error && !x.body, [['GET', 403]]],
      ['hostile-6d-no-cors', 'b-nocors', false, 'fetch(A/api, {credentials: "include", mode: "no-cors"})', h.noCors, (x) => x && x.type === 'opaque', [['GET', 403]]],
      ['hostile-6e-preflighted-put', 'b-put', false, 'fetch(A/api, {credentials: "include", method: "PUT", headers: {"x-thing": "1"}})', h.put, (x) => x && x.error && !x.body, [['OPTIONS', 401]]],
      ['hostile-6f-script-include', 'b-script', false, '<script src=A/app.js>', h.script, (x) => x && !x.fromA, [['GET', 403]]],
      ['hostile-6g-websocket', 'b-ws', false, 'new WebSocket(wss://A/ws)', h.websocket, (x) => x && !x.opened, [['GET', 403]]],
      ['hostile-6h-form-post', 'b-form', false, '<form method=POST action=A/api target=frame>', h.form, () => true, [['POST', 403]]],
    ];
    const pathOf = { 'b-cors': '/api/b-cors', 'b-nocors': '/api/b-nocors', 'b-put': '/api/b-put', 'b-script': '/b-script.js', 'b-ws': '/ws/b-ws', 'b-form': '/api/b-form' };
    for (const [name, tag, listed, what, result, unreadable, answers] of attempts) {
      const m = sub(name);
      current = name;
      const problems = [];
      const reached = tagged(tag);
      if (reached.length) problems.push(`A's upstream received ${reached.map((r) => `${r.method} ${r.url}${r.upgrade ? ' (upgrade)' : ''}`).join(', ')}`);
      if (!unreadable(result)) problems.push(`B's page got a readable answer: ${JSON.stringify(result).slice(0, 300)}`);
      const gw = gatewayLogSince(markB.gwlog).filter((l) => l.path === pathOf[tag]);
      const got = gw.map((l) => [l.method, l.status]);
      if (args.gatewayLog && JSON.stringify(got) !== JSON.stringify(answers)) {
        problems.push(`refused, but not as specified: edgegate answered ${JSON.stringify(got)}, want ${JSON.stringify(answers)}`);
      }
      await record(m, {
        listed,
        description: `B's page, with the victim's cookies: ${what} to A's private port`,
        expected: `no readable answer, nothing reaches A's upstream; edgegate answers ${answers.map(([mm, s]) => `${mm} ${s}`).join(', ')}`,
        shown: { pageSaw: result }, problems,
        extra: { gatewayAccessLog: gw, upstreamForThis: reached.map((r) => ({ method: r.method, url: r.url, origin: r.headers.origin })) },
      });
    }
    {
      const m = sub('hostile-6i-iframe');
      current = m.name;
      const reached = tagged('b-iframe');
      await record(m, {
        informational: true, listed: false,
        description: 'B\'s page frames A\'s private port (a same-site navigation in a frame: the victim\'s SameSite=Lax port cookie goes along)',
        expected: 'informational: whether A\'s upstream serves the frame is A\'s business (X-Frame-Options / frame-ancestors); B cannot read it',
        shown: { pageSaw: h.iframe },
        problems: reached.length ? [`A's upstream served B's frame as ${reached.map((r) => r.headers['x-edgegate-user']).join(', ')} (sec-fetch-dest ${reached.map((r) => r.headers['sec-fetch-dest']).join(', ')})`] : [],
        notes: [typeof h.iframe?.readable === 'string' && !h.iframe.readable.startsWith('not readable') ? `B READ the frame: ${h.iframe.readable}` : 'B could not read the frame'],
      });
      if (typeof h.iframe?.readable === 'string' && !h.iframe.readable.startsWith('not readable') && h.iframe.readable.includes('upstream')) {
        checks[checks.length - 1].informational = false;
        checks[checks.length - 1].verdict = 'FAILED';
        checks[checks.length - 1].problems.push('B read A\'s framed page');
      }
    }
    await victim.close();
  }

  // Over the whole run.
  {
    const mark = begin('credentials-never-upstream');
    const problems = [];
    for (const r of upstreamLog) {
      const creds = credentialsIn(r);
      if (creds.length) problems.push(`${r.upstream} ${r.method} ${r.url} (${r.check}): ${creds.join(', ')}`);
    }
    await record({ ...mark, upstream: 0 }, {
      description: 'over the whole run, no upstream receives an app session, a port cookie or a port token',
      expected: 'none', problems,
      extra: { upstreamCookieHeaders: [...new Set(upstreamLog.map((r) => r.headers.cookie).filter(Boolean))] },
    });
    checks[checks.length - 1].upstream = `${upstreamLog.length} requests (all in upstreamRequests)`;
  }
}

// ---------------------------------------------------------------------------------------------
// Verdict

let exitCode = 2;
async function finish() {
  if (finished) return exitCode;
  finished = true;
  clearTimeout(watchdog);
  const broken = checks.filter((c) => c.verdict === 'HARNESS BROKEN');
  const failed = checks.filter((c) => c.verdict === 'FAILED');
  let verdict;
  if (harnessError || broken.length) {
    exitCode = 2;
    verdict = `HARNESS BROKEN: ${harnessError ? harnessError.message : broken.map((c) => `${c.name}: ${c.problems.join('; ')}`).join(' | ')}`;
  } else if (failed.length) {
    exitCode = 1;
    verdict = `${failed.length} check(s) FAILED (${failed.map((c) => c.name).join(', ')})`;
  } else {
    exitCode = 0;
    verdict = 'every check held';
  }
  const result = {
    label: args.label, verdict, exitCode,
    world: { gateway: PORT, app: appOrigin, content: CONTENT, A, B, ports, visitors: VISITORS.map((v) => ({ ...v, sid: v.sid ? short(v.sid, 6) : null })) },
    summary: checks.map((c) => ({ name: c.name, kind: c.kind, listed: c.listed, informational: c.informational, verdict: c.verdict })),
    checks,
    upstreamRequests: upstreamLog,
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
    const tag = c.verdict === 'held' || c.verdict === 'control held' ? 'ok  ' : c.informational ? 'info' : 'FAIL';
    console.log(`  ${tag}  ${c.name.padEnd(34)} ${c.verdict}${c.listed === false ? ' (beyond the brief)' : ''}${c.problems.length ? `: ${c.problems.join(' | ')}` : ''}`);
  }
  console.log(`${args.label}: ${verdict} (exit ${exitCode}; ${path.basename(art('-result.json'))})`);
  for (const ctx of contexts) await bounded(ctx.close(), 5000, null);
  if (browser) await bounded(browser.close(), 10_000, null);
  for (const s of servers) {
    s.closeAllConnections?.();
    s.close();
  }
  try {
    rcli('DEL', `workspace:${A}`, `workspace:${B}`, ...sids.map((s) => `session:${s}`));
  } catch (_) { /* the run is over either way */ }
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

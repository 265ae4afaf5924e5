// Wake on request, in a real browser (issue #18): the owner opens a stopped workspace in
// headless Chromium. edgegate must answer with its waiting page (503, HTML, reloading by
// itself with no script), publish exactly one wake request however many reloads follow, and
// the same tab must reach the workspace by itself once the app marks the record running.
//
// Usage: node wake.mjs --gateway-port P --redis-port P --artifacts DIR [--base-domain D]
// Exit 0: all held; 1: something did not; 2: bad arguments.

import { chromium } from 'playwright-core';
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';

const TOTAL_MS = 90_000;
const STREAM = 'edgegate:wake';
const ID = '01HZX3M9Q4T8V6W2Y5B7C9DWAK';
const OWNER = 'wake-owner';
const SID = crypto.randomBytes(24).toString('hex');
const UP_TEXT = 'hello from the woken workspace';

const args = { baseDomain: 'edgegate.test', label: 'wake' };
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i += 2) {
  if (!argv[i].startsWith('--') || argv[i + 1] === undefined) {
    console.error(`wake: bad argument ${argv[i]}`);
    process.exit(2);
  }
  args[argv[i].slice(2).replace(/-([a-z])/g, (_, c) => c.toUpperCase())] = argv[i + 1];
}
for (const k of ['gatewayPort', 'redisPort', 'artifacts']) {
  if (!args[k]) {
    console.error(`wake: missing --${k}`);
    process.exit(2);
  }
}
fs.mkdirSync(args.artifacts, { recursive: true });
const log = (line) => console.log(`${args.label}: ${line}`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const rcli = (...a) => execFileSync('redis-cli', ['-h', '127.0.0.1', '-p', String(args.redisPort), ...a],
  { timeout: 5000, encoding: 'utf8' }).trim();

// The wake requests for this workspace on the stream.
function wakes() {
  // --raw: one line per stream id, field and value; the `workspace` value is the bare id.
  const out = rcli('--raw', 'XRANGE', STREAM, '-', '+');
  return out.split('\n').filter((l) => l.trim() === ID).length;
}

const watchdog = setTimeout(() => {
  log(`FAIL: still running after ${TOTAL_MS} ms`);
  process.exit(1);
}, TOTAL_MS);

const failures = [];
const check = (ok, what) => {
  log(`${ok ? 'ok  ' : 'FAIL'} ${what}`);
  if (!ok) failures.push(what);
};

// The workspace's server, once it "runs".
const upstream = http.createServer((req, res) => {
  res.writeHead(200, { 'content-type': 'text/html' });
  res.end(`<!doctype html><title>workspace</title><p id=up>${UP_TEXT}</p>`);
});
await new Promise((r) => upstream.listen(0, '127.0.0.1', r));
const backend = `127.0.0.1:${upstream.address().port}`;

rcli('HSET', `session:${SID}`, 'user', OWNER, 'expires_at', String(Math.floor(Date.now() / 1000) + 3600));
rcli('HSET', `workspace:${ID}`, 'backend', backend, 'owner', OWNER, 'status', 'stopped');
const before = wakes();

const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'edgegate-e2e-chromium-wake-'));
let context;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    chromiumSandbox: false,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
      '--disable-background-networking', `--host-resolver-rules=MAP *.${args.baseDomain} 127.0.0.1`],
    timeout: 60_000,
  });
  await context.addCookies([{
    name: 'session', value: SID, domain: `.${args.baseDomain}`, path: '/', httpOnly: true, secure: false, sameSite: 'Lax',
  }]);
  const page = context.pages()[0] || (await context.newPage());
  const url = `http://ws-${ID.toLowerCase()}.${args.baseDomain}:${args.gatewayPort}/`;
  const answers = [];
  page.on('response', (r) => {
    if (r.request().isNavigationRequest() && r.url() === url) answers.push(r.status());
  });

  const first = await page.goto(url, { waitUntil: 'load', timeout: 15_000 });
  check(first.status() === 503, `a navigation to the stopped workspace gets 503 (got ${first.status()})`);
  check((first.headers()['content-type'] || '').startsWith('text/html'), 'as an HTML page');
  const text = await page.evaluate(() => document.body.innerText);
  check(/starting/i.test(text), `the page says the workspace is starting: ${JSON.stringify(text.slice(0, 200))}`);
  check(/[0-9a-f]{24}/.test(text), 'the page shows the request id');

  // Left alone, the page reloads itself (no script: the CSP allows none).
  const reloaded = await (async () => {
    const until = Date.now() + 10_000;
    while (Date.now() < until) {
      if (answers.length >= 3) return true;
      await sleep(200);
    }
    return false;
  })();
  check(reloaded, `the waiting page reloads by itself (navigations seen: ${answers.join(', ')})`);
  check(wakes() - before === 1, `exactly one wake request for ${answers.length} page loads (got ${wakes() - before})`);

  // The app starts the workspace: the same tab shows it, nobody navigates.
  rcli('HSET', `workspace:${ID}`, 'status', 'running');
  rcli('PUBLISH', 'edgegate:invalidate', `workspace:${ID}`);
  let up = false;
  const until = Date.now() + 20_000;
  while (!up && Date.now() < until) {
    up = await page.evaluate((t) => document.body && document.body.innerText.includes(t), UP_TEXT).catch(() => false);
    if (!up) await sleep(250);
  }
  check(up, `the tab reached the workspace by itself once it ran (answers: ${answers.join(', ')})`);
  check(wakes() - before === 1, 'still one wake request');
  await page.screenshot({ path: path.join(args.artifacts, `${args.label}-final.png`) }).catch(() => {});
} catch (e) {
  failures.push(`harness: ${e.message}`);
  log(`FAIL harness: ${e.stack || e}`);
} finally {
  if (context) await context.close().catch(() => {});
  fs.rmSync(profile, { recursive: true, force: true });
  upstream.close();
  rcli('DEL', `workspace:${ID}`, `session:${SID}`);
  clearTimeout(watchdog);
}
fs.writeFileSync(path.join(args.artifacts, `${args.label}-result.json`), JSON.stringify({ failures }, null, 2));
log(failures.length ? `FAILED (${failures.length})` : 'PASSED');
process.exit(failures.length ? 1 : 0);

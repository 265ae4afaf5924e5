// A real code-server in a real headless Chromium, through edgegate.
//
//   node tests/e2e/ide.mjs --shape host|path --gateway-port N --base-domain D --id ID \
//        --session SID --artifacts DIR --label NAME [--expect-failure]
//
// host shape: the owner's app session cookie on .{base_domain}, open
//             http://ws-{id}.{base_domain}:N/ (the workspace route).
// path shape: the same cookie; from a page on app.{base_domain} POST /api/dev/{id}/ide-token,
//             navigate that page to the bootstrap URL it returns, land on /__ide/{ID}/ with
//             the ide cookie.
// Then, in both: the workbench loads, the explorer lists the known file and opens it (the
// editor shows its content), an integrated terminal echoes a computed value back.
//
// The run fails on any WebSocket close 1006, on "No file system provider found" (page or
// console), and when no WebSocket opened. Chromium resolves *.{base_domain} to 127.0.0.1 by
// --host-resolver-rules, so no DNS and no /etc/hosts are involved.
//
// --expect-failure inverts the verdict for the negative control: exit 0 only if the checks
// failed AND a WebSocket closed with 1006 (the failure the control is built to cause).
//
// Exit status: 0 verdict as expected, 1 verdict not as expected, 2 the harness itself broke.
// Always written to the artifacts folder: {label}.png, {label}-console.log,
// {label}-websockets.json, {label}-result.json.

import { chromium } from 'playwright-core';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const KNOWN_FILE = 'e2e-known-file.txt';
const KNOWN_TEXT = 'hello from edgegate e2e, 6*7=42';
// Typed into the terminal; only a shell that ran it prints the computed marker.
const TERMINAL_COMMAND = 'echo e2e-marker-$((6*7))-ok';
const TERMINAL_MARKER = 'e2e-marker-42-ok';
const NO_FS_PROVIDER = 'No file system provider found';
const STEP_MS = 60_000;

function parseArgs(argv) {
  const a = { expectFailure: false };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i];
    if (k === '--expect-failure') { a.expectFailure = true; continue; }
    const v = argv[++i];
    if (!k.startsWith('--') || v === undefined) throw new Error(`bad argument ${k}`);
    a[k.slice(2).replace(/-([a-z])/g, (_, c) => c.toUpperCase())] = v;
  }
  for (const k of ['shape', 'gatewayPort', 'baseDomain', 'id', 'session', 'artifacts', 'label']) {
    if (!a[k]) throw new Error(`missing --${k.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase())}`);
  }
  if (!['host', 'path'].includes(a.shape)) throw new Error(`bad --shape ${a.shape}`);
  return a;
}

const args = parseArgs(process.argv.slice(2));
const ID = args.id.toUpperCase();
const id = args.id.toLowerCase();
const port = Number(args.gatewayPort);
const wsOrigin = `http://ws-${id}.${args.baseDomain}:${port}`;
const appOrigin = `http://app.${args.baseDomain}:${port}`;
fs.mkdirSync(args.artifacts, { recursive: true });
const art = (suffix) => path.join(args.artifacts, `${args.label}${suffix}`);

const consoleLines = [];
const wsEvents = []; // every WebSocket event seen, from the page and from Playwright
const failures = []; // {kind, detail}
const passed = [];
let tearingDown = false; // closes caused by the test's own teardown are not failures
let fatal; // rejects the running step as soon as a failure condition is seen
const fatalPromise = new Promise((_, reject) => { fatal = reject; });
fatalPromise.catch(() => {});

function log(line) {
  const l = `[${new Date().toISOString()}] ${line}`;
  consoleLines.push(l);
}

function fail(kind, detail) {
  if (failures.some((f) => f.kind === kind && f.detail === detail)) return;
  failures.push({ kind, detail });
  const n = failures.filter((f) => f.kind === kind).length;
  if (n === 1) console.error(`${args.label}: FAIL ${kind}: ${detail.slice(0, 400)}`);
  else if (n === 2) console.error(`${args.label}: (more ${kind} failures: see ${args.label}-result.json)`);
  fatal(new Error(`${kind}: ${detail}`));
}

function watchText(source, text) {
  if (typeof text === 'string' && text.includes(NO_FS_PROVIDER)) {
    fail('no_file_system_provider', `${source}: ${text.slice(0, 300)}`);
  }
}

// Runs in every frame before its scripts: report each WebSocket's open and close (with the
// close code, which neither Playwright nor CDP exposes) to the test.
function wsProbe() {
  const Orig = window.WebSocket;
  if (!Orig || Orig.__e2eWrapped) return;
  class WebSocket extends Orig {
    constructor(...a) {
      super(...a);
      const url = String(a[0]);
      const report = (e) => {
        try { window.__e2eWs && window.__e2eWs(e); } catch (_) { /* page closing */ }
      };
      this.addEventListener('open', () => report({ event: 'open', url }));
      this.addEventListener('close', (ev) =>
        report({ event: 'close', url, code: ev.code, reason: ev.reason, wasClean: ev.wasClean }));
    }
  }
  WebSocket.__e2eWrapped = true;
  window.WebSocket = WebSocket;
}

async function step(name, fn, ms = STEP_MS) {
  const t0 = Date.now();
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms`)), ms);
  });
  try {
    await Promise.race([fn(), fatalPromise, timeout]);
    passed.push(name);
    log(`step ok: ${name} (${Date.now() - t0} ms)`);
    console.log(`${args.label}: ok ${name} (${Date.now() - t0} ms)`);
  } catch (e) {
    const msg = String(e && e.message ? e.message : e).split('\n')[0];
    if (!failures.some((f) => msg.startsWith(`${f.kind}: `))) fail('step', `${name}: ${msg}`);
    throw e;
  } finally {
    clearTimeout(timer);
  }
}

async function terminalText(page) {
  return page.evaluate(() =>
    Array.from(document.querySelectorAll('.terminal .xterm-rows'))
      .map((el) => el.innerText).join('\n'));
}

async function run() {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'edgegate-e2e-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    chromiumSandbox: false,
    viewport: { width: 1400, height: 900 },
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      `--host-resolver-rules=MAP *.${args.baseDomain} 127.0.0.1, MAP ${args.baseDomain} 127.0.0.1`,
      // In production these origins are https; plain http on loopback stands in for that,
      // so the pages get the secure context (service workers, crypto.subtle) they would have.
      `--unsafely-treat-insecure-origin-as-secure=${wsOrigin},${appOrigin}`,
    ],
  });
  try {
    await context.exposeBinding('__e2eWs', (_source, e) => {
      if (tearingDown) return;
      wsEvents.push({ at: new Date().toISOString(), from: 'page', ...e });
      log(`websocket ${e.event} ${e.url}${e.event === 'close' ? ` code=${e.code} clean=${e.wasClean} reason=${e.reason}` : ''}`);
      if (e.event === 'close' && e.code === 1006) {
        fail('websocket_1006', `${e.url} closed with 1006 (abnormal closure)`);
      }
    });
    await context.addInitScript(wsProbe);
    // The app's session cookie, as the app API sets it on .{base_domain}.
    await context.addCookies([{
      name: 'session', value: args.session, domain: `.${args.baseDomain}`, path: '/',
      httpOnly: true, sameSite: 'Lax',
    }]);

    const page = context.pages()[0] || (await context.newPage());
    page.on('console', (m) => {
      log(`console.${m.type()}: ${m.text()}`);
      watchText('console', m.text());
    });
    page.on('pageerror', (e) => {
      log(`pageerror: ${e.message}`);
      watchText('pageerror', e.message);
    });
    page.on('requestfailed', (r) => log(`requestfailed: ${r.url()} ${r.failure()?.errorText}`));
    page.on('response', (r) => {
      if (r.status() >= 400) log(`response ${r.status()} ${r.url()}`);
    });
    page.on('websocket', (ws) => {
      wsEvents.push({ at: new Date().toISOString(), from: 'playwright', event: 'created', url: ws.url() });
      let frames = 0;
      ws.on('framereceived', () => { frames += 1; });
      ws.on('socketerror', (err) => {
        wsEvents.push({ at: new Date().toISOString(), from: 'playwright', event: 'socketerror', url: ws.url(), error: err });
        log(`websocket socketerror ${ws.url()}: ${err}`);
      });
      ws.on('close', () => {
        wsEvents.push({ at: new Date().toISOString(), from: 'playwright', event: 'closed', url: ws.url(), framesReceived: frames });
      });
    });
    // The handshake status (a 403 from code-server's Origin check shows up here).
    const cdp = await context.newCDPSession(page);
    await cdp.send('Network.enable');
    const wsUrls = new Map();
    cdp.on('Network.webSocketCreated', (e) => wsUrls.set(e.requestId, e.url));
    cdp.on('Network.webSocketHandshakeResponseReceived', (e) => {
      wsEvents.push({ at: new Date().toISOString(), from: 'cdp', event: 'handshake', url: wsUrls.get(e.requestId), status: e.response.status });
      log(`websocket handshake ${e.response.status} ${wsUrls.get(e.requestId)}`);
    });
    cdp.on('Network.webSocketFrameError', (e) => {
      wsEvents.push({ at: new Date().toISOString(), from: 'cdp', event: 'frameerror', url: wsUrls.get(e.requestId), error: e.errorMessage });
      log(`websocket frame error ${wsUrls.get(e.requestId)}: ${e.errorMessage}`);
    });

    try {
      await checks(page, context);
      // A late abnormal close still counts: give the sockets a moment before judging.
      await page.waitForTimeout(2_000);
    } catch (_) {
      // recorded in failures; fall through to the artifacts
    }
    try {
      const body = await page.evaluate(() => document.body ? document.body.innerText : '');
      watchText('page text', body);
    } catch (e) {
      log(`could not read page text: ${e.message}`);
    }
    if (!wsEvents.some((e) => e.from === 'page' && e.event === 'open')) {
      fail('no_websocket', 'no WebSocket opened on the page');
    }
    try {
      await page.screenshot({ path: art('.png'), timeout: 15_000 });
    } catch (e) {
      log(`screenshot failed: ${e.message}`);
    }
  } finally {
    // Stop listening before the page goes away: closes caused by the teardown are not failures.
    tearingDown = true;
    wsEvents.push({ at: new Date().toISOString(), from: 'test', event: 'teardown' });
    await context.close().catch(() => {});
    fs.rmSync(profile, { recursive: true, force: true });
  }
}

async function checks(page, context) {
  if (args.shape === 'host') {
    await step('workbench page loads on the workspace host', async () => {
      const resp = await page.goto(`${wsOrigin}/`, { waitUntil: 'domcontentloaded', timeout: STEP_MS });
      if (!resp || resp.status() !== 200) throw new Error(`status ${resp && resp.status()}`);
    });
  } else {
    let bootstrapUrl;
    await step('app page answered by edgegate (agent status)', async () => {
      const resp = await page.goto(`${appOrigin}/api/servers/${ID}/status`, { timeout: STEP_MS });
      if (!resp || resp.status() !== 200) throw new Error(`status ${resp && resp.status()}`);
    });
    await step('ide token minted with the owner session', async () => {
      const r = await page.evaluate(async (u) => {
        const res = await fetch(u, { method: 'POST', credentials: 'include' });
        return { status: res.status, body: await res.text() };
      }, `${appOrigin}/api/dev/${ID}/ide-token`);
      if (r.status !== 200) throw new Error(`status ${r.status}: ${r.body}`);
      bootstrapUrl = JSON.parse(r.body).url;
      if (!bootstrapUrl || !bootstrapUrl.startsWith(`${appOrigin}/`)) {
        throw new Error(`unexpected bootstrap url ${bootstrapUrl}`);
      }
    });
    await step('bootstrap lands on /__ide/{ID}/ with the ide cookie', async () => {
      // The app's own page navigates (Sec-Fetch-Site: same-origin), as the app does: edgegate
      // refuses a bootstrap that a link from anywhere else started.
      const [resp] = await Promise.all([
        page.waitForNavigation({ waitUntil: 'domcontentloaded', timeout: STEP_MS }),
        page.evaluate((u) => { window.location.href = u; }, bootstrapUrl),
      ]);
      const u = new URL(page.url());
      if (u.origin !== appOrigin || !u.pathname.startsWith(`/__ide/${ID}/`)) {
        throw new Error(`landed on ${page.url()}`);
      }
      if (u.search.includes('token=')) throw new Error('the token is still in the URL');
      if (!resp || resp.status() !== 200) throw new Error(`status ${resp && resp.status()}`);
      const cookies = await context.cookies(`${appOrigin}/__ide/${ID}/`);
      const ide = cookies.find((c) => c.name === 'edgegate_ide');
      if (!ide) throw new Error(`no ide cookie; cookies: ${cookies.map((c) => c.name).join(',')}`);
      if (ide.path !== `/__ide/${ID}/` || !ide.httpOnly) {
        throw new Error(`ide cookie has path ${ide.path}, httpOnly ${ide.httpOnly}`);
      }
    });
  }

  await step('workbench renders', async () => {
    await page.locator('.monaco-workbench').first().waitFor({ state: 'visible', timeout: STEP_MS });
  });

  const row = page.locator(`.explorer-folders-view .monaco-list-row[aria-label^="${KNOWN_FILE}"]`);
  await step('explorer lists the known file', async () => {
    await row.first().waitFor({ state: 'visible', timeout: STEP_MS });
  });

  await step('the file opens in the editor with its content', async () => {
    await row.first().click();
    const lines = page.locator('.editor-instance .monaco-editor .view-lines');
    await page.waitForFunction(
      (text) => Array.from(document.querySelectorAll('.editor-instance .monaco-editor .view-lines'))
        .some((el) => el.innerText.replace(/\u00a0/g, ' ').includes(text)),
      KNOWN_TEXT, { timeout: STEP_MS, polling: 250 });
    await lines.first().waitFor({ state: 'visible', timeout: 5_000 });
  });

  await step('an integrated terminal echoes a command', async () => {
    // Focus the workbench, then the command palette opens a new terminal.
    await page.locator('.monaco-workbench').first().click({ position: { x: 700, y: 450 } }).catch(() => {});
    await page.keyboard.press('Control+Shift+P');
    const input = page.locator('.quick-input-widget input').first();
    await input.waitFor({ state: 'visible', timeout: 20_000 });
    await input.fill('>Terminal: Create New Terminal');
    await page.locator('.quick-input-widget .monaco-list-row').first().waitFor({ state: 'visible', timeout: 20_000 });
    await page.keyboard.press('Enter');
    const term = page.locator('.terminal-wrapper .xterm').first();
    await term.waitFor({ state: 'visible', timeout: STEP_MS });
    // Wait for the shell's first prompt (any text in the rows) before typing.
    await page.waitForFunction(
      () => Array.from(document.querySelectorAll('.terminal .xterm-rows'))
        .some((el) => el.innerText.trim().length > 0),
      null, { timeout: STEP_MS, polling: 250 });
    // The first keystrokes can land before xterm has focus (seen on a loaded 2-core
    // machine: only the command's tail reached the shell). Retype a few times; only a shell
    // that ran the whole command prints the marker.
    let text = '';
    for (let attempt = 1; attempt <= 3; attempt += 1) {
      await term.click();
      await page.waitForTimeout(300);
      await page.keyboard.press('Control+C');
      await page.keyboard.type(TERMINAL_COMMAND, { delay: 20 });
      await page.keyboard.press('Enter');
      const deadline = Date.now() + 10_000;
      while (Date.now() < deadline) {
        text = await terminalText(page);
        if (text.includes(TERMINAL_MARKER)) return;
        await page.waitForTimeout(250);
      }
      log(`terminal attempt ${attempt} did not show the marker; it shows: ${JSON.stringify(text.slice(-200))}`);
    }
    throw new Error(`terminal never showed ${TERMINAL_MARKER}; it shows: ${JSON.stringify(text.slice(-400))}`);
  });
}

let harnessError;
try {
  await run();
} catch (e) {
  harnessError = e;
  log(`harness error: ${e && e.stack}`);
}

const checksFailed = failures.length > 0;
const saw1006 = failures.some((f) => f.kind === 'websocket_1006');
let verdict;
let code;
if (harnessError) {
  verdict = `harness error: ${harnessError.message}`;
  code = 2;
} else if (!args.expectFailure) {
  verdict = checksFailed ? 'FAILED' : 'PASSED';
  code = checksFailed ? 1 : 0;
} else if (checksFailed && saw1006) {
  verdict = 'FAILED as the control must (a WebSocket closed with 1006)';
  code = 0;
} else if (checksFailed) {
  verdict = 'control FAILED, but not by a WebSocket 1006: it does not prove what it should';
  code = 1;
} else {
  verdict = 'control PASSED: the checks cannot tell a broken proxy from a working one';
  code = 1;
}

fs.writeFileSync(art('-console.log'), consoleLines.join('\n') + '\n');
fs.writeFileSync(art('-websockets.json'), JSON.stringify(wsEvents, null, 2) + '\n');
fs.writeFileSync(art('-result.json'), JSON.stringify({
  label: args.label, shape: args.shape, expectFailure: args.expectFailure,
  verdict, passed, failures,
}, null, 2) + '\n');
console.log(`${args.label}: ${verdict}`);
process.exit(code);

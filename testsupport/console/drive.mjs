// Drives Bulkhead's web console in Debian's headless Chromium (through playwright-core, which
// starts /usr/bin/chromium and never downloads a browser) against a running `bulkhead serve`.
// Run by crates/cli/tests/console.rs, which starts the server and reads what this prints: one
// line `ok <check>` per check passed; any failure throws, prints `FAILED <check>: <why>` and
// exits 1.
//
// Environment: BULKHEAD_URL, BULKHEAD_NAMESPACE, BULKHEAD_TOKEN (a developer key),
// BULKHEAD_VIEWER_TOKEN, BULKHEAD_ADMIN_TOKEN, BULKHEAD_AGENT_BUNDLE (a test agent's tar),
// CHROMIUM_USER_DATA_DIR (a fresh directory the caller removes), and optionally
// BULKHEAD_CONSOLE_SCREENSHOTS (a directory to save a PNG of each view into).

import { chromium } from 'playwright-core';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import assert from 'node:assert/strict';

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const URL_ = env('BULKHEAD_URL');
const NS = env('BULKHEAD_NAMESPACE');
const DEV = env('BULKHEAD_TOKEN');
const VIEWER = env('BULKHEAD_VIEWER_TOKEN');
const ADMIN = env('BULKHEAD_ADMIN_TOKEN');
const SHOTS = process.env.BULKHEAD_CONSOLE_SCREENSHOTS || '';
// Generous bounds for a loaded machine: they end a hung run, they time nothing.
const LONG = Number(process.env.CONSOLE_DRIVER_TIMEOUT_MS || 180_000);

const IMG = '<img src=x onerror="window.__xss=1">';
const SCRIPT = '<script>window.__xss=1</script>';

let current = 'start';
const check = async (name, fn) => {
  current = name;
  await fn();
  console.log(`ok ${name}`);
};

/** The API from Node, outside the browser: setup and reading back. */
async function call(method, path, token, { json, body, contentType, query } = {}) {
  const headers = {};
  if (token) headers.Authorization = `Bearer ${token}`;
  if (json !== undefined) { headers['Content-Type'] = 'application/json'; body = JSON.stringify(json); }
  if (contentType) headers['Content-Type'] = contentType;
  const q = query ? `?${new URLSearchParams(query)}` : '';
  const r = await fetch(`${URL_}${path}${q}`, { method, headers, body });
  const text = await r.text();
  if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${text}`);
  return text && (r.headers.get('content-type') || '').includes('json') ? JSON.parse(text) : text;
}
const ns = (rest) => `/v1/namespaces/${NS}${rest}`;

const browser = await chromium.launchPersistentContext(env('CHROMIUM_USER_DATA_DIR'), {
  executablePath: '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
  viewport: { width: 1280, height: 900 },
});
browser.setDefaultTimeout(LONG);

// Every request the browser makes: none may leave the server under test.
const offsite = [];
browser.on('request', (r) => { if (!r.url().startsWith(URL_) && !r.url().startsWith('data:') && !r.url().startsWith('blob:')) offsite.push(r.url()); });

/** A fresh page (its own sessionStorage), collecting the CSP violations and script errors it reports. */
const pages = [];
async function page() {
  const p = await browser.newPage();
  pages.push(p);
  p.problems = [];
  p.on('console', (m) => { if (m.type() === 'error') p.problems.push(m.text()); });
  p.on('pageerror', (e) => p.problems.push(String(e)));
  return p;
}

async function shot(p, name) {
  if (SHOTS) await p.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });
}

async function signIn(p, token) {
  await p.goto(`${URL_}/console`);
  await p.fill('#token', token);
  await p.fill('#namespace', NS);
  await p.click('#sign-in');
  await p.waitForSelector('#sign-out');
}

/** Opens view `hash` of the console (already signed in). */
async function view(p, hash, selector) {
  await p.evaluate((h) => { location.hash = h; }, hash);
  if (selector) await p.waitForSelector(selector);
}

const noXss = async (p) => assert.equal(await p.evaluate(() => window.__xss), undefined, 'a script of the data ran');

let failed = false;
try {
  const dev = await page();

  await check('static files are served without a token, with a strict CSP', async () => {
    const r = await dev.goto(`${URL_}/console`);
    assert.equal(r.status(), 200);
    assert.equal(new URL(dev.url()).pathname, '/console/');
    const csp = r.headers()['content-security-policy'] || '';
    for (const d of ["default-src 'none'", "script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'", "base-uri 'none'", "form-action 'none'"]) {
      assert.ok(csp.includes(d), `CSP ${csp} lacks ${d}`);
    }
    assert.ok(!/script-src[^;]*unsafe/.test(csp), `scripts are not restricted: ${csp}`);
    assert.equal(r.headers()['x-content-type-options'], 'nosniff');
    assert.equal(r.headers()['referrer-policy'], 'no-referrer');
    await dev.waitForSelector('#sign-in');
  });

  await check('the API refuses a call without a token', async () => {
    // On a page of its own: the browser reports every refused request as an error, and the
    // console's own pages must report none.
    const anonymous = await page();
    await anonymous.goto(`${URL_}/console/`);
    const status = await anonymous.evaluate(async (path) => (await fetch(path)).status, ns('/sandboxes'));
    assert.equal(status, 401);
    await anonymous.close();
  });

  await check('sign in with a key', async () => {
    await shot(dev, 'signin');
    await dev.fill('#token', DEV);
    await dev.fill('#namespace', NS);
    await dev.click('#sign-in');
    await dev.waitForSelector('#sandbox-create');
    assert.match(await dev.textContent('#principal'), /developer/);
    // The token is kept in this tab's sessionStorage, and nowhere in the page's URL.
    assert.equal(await dev.evaluate(() => sessionStorage.getItem('bulkhead.token')), DEV);
    assert.ok(!dev.url().includes(DEV));
  });

  let sandbox;
  await check('create a sandbox', async () => {
    await dev.click('#sandbox-create');
    await dev.waitForFunction(() => location.hash.startsWith('#/sandbox/sbx_'));
    sandbox = decodeURIComponent(dev.url().split('#/sandbox/')[1]);
    await dev.waitForSelector('#terminal-open');
    const listed = await call('GET', ns(`/sandboxes/${sandbox}`), DEV);
    assert.equal(listed.status, 'running');
    await view(dev, '#/sandboxes', `a.sandbox-link >> text=${sandbox}`);
    await shot(dev, 'sandboxes');
  });

  await check('type into the terminal and read its output', async () => {
    await view(dev, `#/sandbox/${sandbox}`, '#terminal-open');
    await dev.click('#terminal-open');
    await dev.waitForSelector('#terminal-state:text("connected")');
    await dev.waitForSelector('#terminal .xterm-rows');
    await dev.click('#terminal .xterm');
    await dev.keyboard.type('echo hi-$((6*7))\n');
    // `hi-42` is only in the output: the typed line says `hi-$((6*7))`.
    await dev.waitForFunction(() => document.querySelector('#terminal .xterm-rows').textContent.includes('hi-42'));
    await shot(dev, 'terminal');
  });

  await check('leaving the terminal hangs up its shell', async () => {
    const shell = await dev.$eval('#terminal .terminal-box', (el) => el.dataset.process);
    const path = ns(`/sandboxes/${sandbox}/processes/${shell}`);
    const running = await call('GET', path, DEV);
    assert.equal(running.status, 'running');
    await view(dev, '#/sandboxes', `a.sandbox-link >> text=${sandbox}`);
    let ended;
    for (let i = 0; i < 600; i++) {
      ended = await call('GET', path, DEV);
      if (ended.status !== 'running') break;
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(ended.status, 'exited', JSON.stringify(ended));
    assert.equal(ended.signal, 1, `ended by SIGHUP: ${JSON.stringify(ended)}`);
    await view(dev, `#/sandbox/${sandbox}`, '#terminal-open');
  });

  await check('upload a file and read it back through the API', async () => {
    await dev.fill('#files-path', '/tmp');
    await dev.click('#files-list');
    await dev.setInputFiles('#upload-file', { name: 'hello.txt', mimeType: 'text/plain', buffer: Buffer.from('uploaded from the console\n') });
    await dev.click('#upload');
    await dev.waitForSelector('#file-list .file-name:text-is("hello.txt")');
    const back = await call('GET', ns(`/sandboxes/${sandbox}/files`), DEV, { query: { path: '/tmp/hello.txt' } });
    assert.equal(back, 'uploaded from the console\n');
    await shot(dev, 'files');
  });

  await check('data that looks like markup is shown as text (XSS)', async () => {
    // A file named like markup, and one in a directory so named.
    for (const path of [`/tmp/${IMG}`, `/tmp/${SCRIPT}`]) {
      await call('PUT', ns(`/sandboxes/${sandbox}/files`), DEV, { query: { path }, body: 'x', contentType: 'application/octet-stream' });
    }
    await dev.click('#files-list');
    await dev.waitForSelector(`#file-list .file-name:text-is(${JSON.stringify(IMG)})`);
    await dev.waitForSelector(`#file-list .file-name:text-is(${JSON.stringify(SCRIPT.slice(0, SCRIPT.lastIndexOf('/')) + '/')})`);
    assert.equal(await dev.locator('#file-list img, #file-list script').count(), 0);
    // Output that is markup: in the console's own command runner and in the logs.
    await dev.fill('#exec-cmd', `printf '%s\\n' '${IMG}' '${SCRIPT}'`);
    await dev.click('#exec-run');
    await dev.waitForFunction((t) => document.querySelector('#exec-output').textContent.includes(t), SCRIPT);
    assert.equal(await dev.locator('#exec-output img, #exec-output script').count(), 0);
    await view(dev, `#/logs?sandbox=${sandbox}`, '#log-output');
    await dev.waitForFunction((t) => document.querySelector('#log-output').textContent.includes(t), IMG);
    assert.equal(await dev.locator('#log-output img, #log-output script').count(), 0);
    await shot(dev, 'logs');
    await noXss(dev);
  });

  await check('a filesystem\'s file browser uploads, lists and downloads', async () => {
    const fs = await call('POST', ns('/filesystems'), DEV, { json: { name: `console-fs-${Date.now()}`, size_bytes: 16 << 20 } });
    await view(dev, '#/filesystems', 'a.filesystem-link');
    await shot(dev, 'filesystems');
    await view(dev, `#/filesystem/${fs.id}`, '#upload-file');
    await dev.setInputFiles('#upload-file', { name: IMG, mimeType: 'text/plain', buffer: Buffer.from('in the filesystem\n') });
    await dev.click('#upload');
    await dev.waitForSelector(`#file-list .file-name:text-is(${JSON.stringify(IMG)})`);
    const back = await call('GET', ns(`/filesystems/${fs.id}/files`), DEV, { query: { path: IMG } });
    assert.equal(back, 'in the filesystem\n');
    // And down again, through the browser's download.
    const [download] = await Promise.all([dev.waitForEvent('download'), dev.locator('#file-list button.download').first().click()]);
    assert.equal(download.suggestedFilename().length > 0, true);
    assert.equal(await readFile(await download.path(), 'utf8'), 'in the filesystem\n');
    await shot(dev, 'filesystem');
    await noXss(dev);
  });

  await check('a usage chart renders', async () => {
    // Metering writes a bucket every few seconds; the view is opened again until the sandbox's
    // time is in one (a bound on a hung run, not a timing).
    const values = () => dev.locator('#chart-sandboxes circle.point')
      .evaluateAll((cs) => cs.map((c) => Number(c.getAttribute('data-value'))));
    for (let i = 0; ; i += 1) {
      await view(dev, `#/usage?granularity=minute&n=${i}`, '#chart-sandboxes');
      if ((await values()).some((v) => v > 0)) break;
      assert.ok(i < 90, `no sandbox time was metered: ${await values()}`);
      await dev.waitForTimeout(2000);
    }
    // The chart's points are the report's buckets.
    const report = await call('GET', ns('/usage'), DEV, { query: { granularity: 'minute' } });
    assert.ok((await values()).length >= 1 && report.buckets.length >= 1);
    await shot(dev, 'usage');
  });

  await check('the audit chain verifies', async () => {
    await view(dev, '#/audit', 'button.audit-verify');
    await dev.click('button.audit-verify');
    await dev.waitForSelector('#audit-verdict');
    assert.match(await dev.textContent('#audit-verdict'), /^Verified: \d+ records intact/);
    await shot(dev, 'audit');
  });

  await check('agents and a task with its live messages', async () => {
    const bundle = await readFile(env('BULKHEAD_AGENT_BUNDLE'));
    const agent = `echo-${Date.now()}`;
    await call('POST', ns('/agents'), DEV, { json: { name: agent } });
    const version = await call('POST', ns(`/agents/${agent}/versions`), DEV, { body: bundle, contentType: 'application/x-tar' });
    await call('POST', ns(`/agents/${agent}/deploy`), DEV, { json: { version: version.id } });
    await view(dev, '#/agents', '#task-list');
    await dev.click(`#agent-list a:text-is("${agent}")`);
    await dev.waitForSelector(`text=${version.id}`);
    await dev.fill('#task-agent', agent);
    await dev.fill('#task-message', 'hello from the console');
    await dev.click('#task-start');
    await dev.waitForFunction(() => location.hash.startsWith('#/task/tsk_'));
    await dev.waitForSelector('#task-messages .task-message[data-type="user_message"]');
    // The agent's answer arrives after the page was drawn: the view follows the task live.
    await dev.waitForSelector('#task-messages .task-message[data-type="agent_message_chunk"]');
    await shot(dev, 'task');
    await view(dev, '#/agents', '#task-list a');
    await shot(dev, 'agents');
  });

  await check('a viewer sees no exec button, and the API refuses it', async () => {
    const viewer = await page();
    await signIn(viewer, VIEWER);
    assert.match(await viewer.textContent('#principal'), /viewer/);
    await view(viewer, '#/sandboxes', `a.sandbox-link >> text=${sandbox}`);
    assert.equal(await viewer.locator('#sandbox-create').count(), 0);
    await view(viewer, `#/sandbox/${sandbox}`, '#sandbox-info .mono');
    for (const id of ['#terminal-open', '#exec-run', '#upload']) {
      assert.equal(await viewer.locator(id).count(), 0, `a viewer is offered ${id}`);
    }
    await shot(viewer, 'viewer-sandbox');
    assert.deepEqual(viewer.problems, []);
    const status = await viewer.evaluate(async ([path, token]) => (await fetch(path, {
      method: 'POST', headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
      body: JSON.stringify({ cmd: ['true'] }),
    })).status, [ns(`/sandboxes/${sandbox}/exec`), VIEWER]);
    assert.equal(status, 403);
    await viewer.close();
  });

  await check('the admin changes quotas, explains a decision and verifies both chains', async () => {
    const admin = await page();
    await signIn(admin, ADMIN);
    await view(admin, '#/namespaces', '#ns-create');
    await admin.waitForSelector(`td >> text=${NS}`);
    await admin.click(`button[data-edit="${NS}"]`);
    await admin.fill('#quota-max_sandboxes', '7');
    await shot(admin, 'namespaces');
    await admin.click('#quota-save');
    await admin.waitForSelector('#quota-editor:empty', { state: 'attached' });
    assert.equal((await call('GET', ns(''), ADMIN)).quotas.max_sandboxes, 7);
    await view(admin, '#/policies', '#explain');
    const keys = await call('GET', ns('/keys'), ADMIN);
    const viewerKey = keys.items.find((k) => k.role === 'viewer');
    await admin.fill('#explain-principal', `key:${viewerKey.id}`);
    await admin.fill('#explain-action', 'sandbox.exec');
    await admin.fill('#explain-resource', `sandbox:${sandbox}`);
    await admin.click('#explain');
    await admin.waitForFunction(() => document.querySelector('#explain-output').textContent.includes('"decision"'));
    assert.match(await admin.textContent('#explain-output'), /"decision": "deny"/);
    await shot(admin, 'policies');
    await view(admin, '#/audit', 'button.audit-verify');
    assert.equal(await admin.locator('button.audit-verify').count(), 2, 'the admin verifies both chains');
    assert.deepEqual(admin.problems, []);
    await admin.close();
  });

  await check("a revoked key's open page goes back to sign-in", async () => {
    const key = await call('POST', ns('/keys'), ADMIN, { json: { name: 'short-lived', role: 'developer' } });
    // A page of its own, outside the pages whose reported errors must be none: the refused
    // calls of a revoked key are reported, as they should be.
    const p = await browser.newPage();
    await signIn(p, key.token);
    await view(p, '#/sandboxes', `a.sandbox-link >> text=${sandbox}`);
    await call('DELETE', ns(`/keys/${key.id}`), ADMIN);
    // The next poll is refused: the page signs out and says why.
    await p.waitForSelector('#sign-in');
    assert.equal(await p.evaluate(() => sessionStorage.getItem('bulkhead.token')), null);
    assert.match(await p.textContent('body'), /refused/);
    await p.close();
  });

  await check('nothing executed, nothing was refused by the CSP, nothing left the machine', async () => {
    await noXss(dev);
    assert.deepEqual(dev.problems, []);
    assert.deepEqual(offsite, []);
  });
} catch (e) {
  failed = true;
  console.log(`FAILED ${current}: ${e && e.stack ? e.stack : e}`);
  // What the pages reported, and where they were.
  for (const [i, p] of pages.entries()) {
    if (p.isClosed()) continue;
    console.log(`page ${i} at ${p.url()}: ${JSON.stringify(p.problems)}`);
    await shot(p, `failed-${i}`).catch(() => {});
  }
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);

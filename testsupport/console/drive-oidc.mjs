// Drives the console's "Sign in with your organisation" in Debian's headless Chromium (through
// playwright-core) against a running `bulkhead serve` and the loopback test OIDC provider, whose
// authorization endpoint signs its configured user in without a form. Run by
// crates/cli/tests/console_oidc.rs, which reads what this prints: one line `ok <check>` per check
// passed; any failure prints `FAILED <check>: <why>` and exits 1.
//
// Environment: BULKHEAD_URL, OIDC_ISSUER, BULKHEAD_NAMESPACE (with console sign-in, its user mapped
// to developer), BULKHEAD_OTHER_NAMESPACE (without), BULKHEAD_SANDBOX (a sandbox of the namespace),
// CHROMIUM_USER_DATA_DIR (a fresh directory the caller removes), and optionally
// BULKHEAD_CONSOLE_SCREENSHOTS (a directory to save a PNG of each view into).

import { chromium } from 'playwright-core';
import { join } from 'node:path';
import assert from 'node:assert/strict';

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const URL_ = env('BULKHEAD_URL');
const ISSUER = env('OIDC_ISSUER');
const NS = env('BULKHEAD_NAMESPACE');
const OTHER = env('BULKHEAD_OTHER_NAMESPACE');
const SANDBOX = env('BULKHEAD_SANDBOX');
const SHOTS = process.env.BULKHEAD_CONSOLE_SCREENSHOTS || '';
// A generous bound for a loaded machine: it ends a hung run, it times nothing.
const LONG = Number(process.env.CONSOLE_DRIVER_TIMEOUT_MS || 180_000);

let current = 'start';
const check = async (name, fn) => {
  current = name;
  await fn();
  console.log(`ok ${name}`);
};

const browser = await chromium.launchPersistentContext(env('CHROMIUM_USER_DATA_DIR'), {
  executablePath: '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
  viewport: { width: 1280, height: 900 },
});
browser.setDefaultTimeout(LONG);

// Every request the browser sends and every address its pages show: the token may be in none
// (requests never carry a fragment; the address may hold it only until the console clears it).
const requests = [];
// The addresses of the page loads, redirects included (the server's, the provider's).
const loads = [];
const offsite = [];
browser.on('request', (r) => {
  requests.push(r.url());
  if (r.isNavigationRequest()) loads.push(r.url());
  if (!r.url().startsWith(URL_) && !r.url().startsWith(ISSUER) && !r.url().startsWith('data:')) offsite.push(r.url());
});
const navigations = [];

async function page() {
  const p = await browser.newPage();
  p.problems = [];
  p.on('console', (m) => { if (m.type() === 'error') p.problems.push(m.text()); });
  p.on('pageerror', (e) => p.problems.push(String(e)));
  p.on('framenavigated', (f) => { if (f === p.mainFrame()) navigations.push(f.url()); });
  return p;
}

async function shot(p, name) {
  if (SHOTS) await p.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });
}

const pages = [];
try {
  const user = await page();
  pages.push(user);

  await check("sign in through the namespace's provider", async () => {
    await user.goto(`${URL_}/console/`);
    await user.waitForSelector('#sign-in-sso');
    await shot(user, 'sign-in');
    await user.fill('#sso-namespace', NS);
    await user.click('#sign-in-sso');
    // Start, the provider, the callback, and back at the console, signed in.
    await user.waitForSelector('#principal');
    const seen = loads.map((u) => u.split('?')[0]).join('\n');
    assert.ok(loads.some((u) => u.startsWith(`${URL_}/console/oidc/start?`)), seen);
    assert.ok(loads.some((u) => u.startsWith(`${ISSUER}/authorize?`)), seen);
    assert.ok(loads.some((u) => u.startsWith(`${URL_}/console/oidc/callback?`)), seen);
  });

  await check('signed in as the mapped role, the namespace\'s sandboxes listed', async () => {
    await user.waitForFunction(() => document.getElementById('principal')?.textContent === 'user:alice (developer)');
    await user.waitForSelector(`a.sandbox-link >> text=${SANDBOX}`);
    assert.equal(await user.textContent('#who'), `${NS}user:alice (developer)Sign out`);
    await shot(user, 'signed-in-sso');
  });

  await check('the token is in this tab\'s sessionStorage and in no URL the browser sent or shows', async () => {
    const token = await user.evaluate(() => sessionStorage.getItem('bulkhead.token'));
    assert.ok(token && token.split('.').length === 3, 'an ID token is stored');
    const href = await user.evaluate(() => location.href);
    assert.equal(href, `${URL_}/console/#/sandboxes`);
    assert.ok(!href.includes(token));
    for (const u of requests) assert.ok(!u.includes(token), `a request carried the token: ${u.slice(0, 80)}`);
    for (const u of [...loads, ...navigations]) {
      assert.ok(!new URL(u).search.includes(token), `a URL query held the token: ${u.slice(0, 80)}`);
    }
    // It reached the console in the fragment of the callback's answer, which the console cleared.
    assert.ok(navigations.some((u) => u.startsWith(`${URL_}/console/#sso?`)), 'the fragment was the way in');
  });

  await check('a namespace without sign-in ends on the sign-in page with a message', async () => {
    const other = await page();
    pages.push(other);
    await other.goto(`${URL_}/console/`);
    await other.fill('#sso-namespace', OTHER);
    await other.click('#sign-in-sso');
    await other.waitForSelector('#sign-in-error');
    assert.equal(await other.textContent('#sign-in-error'),
      'Signing in with an organisation is not available for this namespace.');
    assert.equal(await other.evaluate(() => location.href), `${URL_}/console/`);
    assert.equal(await other.evaluate(() => sessionStorage.getItem('bulkhead.token')), null);
    await shot(other, 'sign-in-unavailable');
  });

  await check('nothing was refused by the CSP, nothing left the machine', async () => {
    for (const p of pages) assert.deepEqual(p.problems, []);
    assert.deepEqual(offsite, []);
  });
} catch (e) {
  console.log(`FAILED ${current}: ${e && e.stack ? e.stack : e}`);
  await browser.close();
  process.exit(1);
}
await browser.close();

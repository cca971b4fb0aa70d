// The console's shell: sign-in, the namespace it works in, what the principal may do there
// (asked of the API: `GET .../permissions`), the navigation, and the views by URL fragment.

import { api, all, nsPath, session, ApiError } from './api.js';
import { h, replace, flash } from './dom.js';
import * as views from './views.js';

const main = () => document.getElementById('main');

/** What the views know of the signed-in principal. */
const ctx = {
  ns: null,
  namespaces: [],
  principal: '',
  role: null,
  actions: new Set(),
  /** Whether the principal may take `action` (by its name, `sandbox.exec`) in the namespace. */
  may(action) { return this.actions.has(action); },
  /** Timers of the current view, cleared when it is left. */
  timers: [],
  cleanups: [],
  every(ms, fn) { this.timers.push(setInterval(fn, ms)); },
  onLeave(fn) { this.cleanups.push(fn); },
};

const NAV = [
  ['namespaces', 'Namespaces', () => ctx.may('namespace.create') || ctx.namespaces.length > 1],
  ['sandboxes', 'Sandboxes', () => ctx.may('sandbox.list')],
  ['logs', 'Logs', () => ctx.may('logs.read')],
  ['filesystems', 'Filesystems', () => ctx.may('filesystem.list')],
  ['usage', 'Usage', () => ctx.may('usage.read')],
  ['audit', 'Audit', () => ctx.may('audit.read') || ctx.may('platform.audit.read')],
  ['policies', 'Policies', () => ctx.may('policy.list') || ctx.may('authz.explain')],
  ['agents', 'Agents & tasks', () => ctx.may('agent.list') || ctx.may('task.list')],
];

const ROUTES = {
  namespaces: views.namespaces,
  sandboxes: views.sandboxes,
  sandbox: views.sandbox,
  logs: views.logs,
  filesystems: views.filesystems,
  filesystem: views.filesystem,
  usage: views.usage,
  audit: views.audit,
  policies: views.policies,
  agents: views.agents,
  task: views.task,
};

function signIn(message) {
  replace(document.getElementById('nav'));
  replace(document.getElementById('who'));
  const token = h('input', { type: 'password', id: 'token', autocomplete: 'off', placeholder: 'bk_…' });
  const ns = h('input', { type: 'text', id: 'namespace', placeholder: 'namespace (optional for a key)' });
  const go = async () => {
    try {
      await start(token.value.trim(), ns.value.trim());
    } catch (e) {
      session.clear();
      flash(e.message);
    }
  };
  token.addEventListener('keydown', (e) => { if (e.key === 'Enter') go(); });
  const orgNs = h('input', { type: 'text', id: 'sso-namespace', autocomplete: 'off', placeholder: 'namespace' });
  // The server starts the sign-in at the namespace's provider and brings the browser back here
  // (see crates/server/src/console_oidc.rs); the page itself never calls the provider.
  const sso = () => {
    const name = orgNs.value.trim();
    if (!name) { flash('Name the namespace to sign in to.'); return; }
    location.assign(`/console/oidc/start?namespace=${encodeURIComponent(name)}`);
  };
  orgNs.addEventListener('keydown', (e) => { if (e.key === 'Enter') sso(); });
  replace(main(), h('div', { class: 'signin panel' },
    h('h1', {}, 'Sign in'),
    message ? h('p', { class: 'bad', id: 'sign-in-error' }, message) : null,
    h('p', { class: 'muted' }, 'With an API key or the platform admin token. It is kept in this tab only (sessionStorage).'),
    h('div', { class: 'row' }, h('label', { for: 'token' }, 'API key'), token),
    h('div', { class: 'row' }, h('label', { for: 'namespace' }, 'Namespace'), ns),
    h('div', { class: 'row' }, h('button', { id: 'sign-in', onclick: go }, 'Sign in')),
    h('h2', {}, 'Sign in with your organisation'),
    h('p', { class: 'muted' }, "Through the namespace's single sign-on provider."),
    h('div', { class: 'row' }, h('label', { for: 'sso-namespace' }, 'Namespace'), orgNs),
    h('div', { class: 'row' }, h('button', { id: 'sign-in-sso', onclick: sso }, 'Sign in with your organisation'))));
  token.focus();
}

/** What the console says when a sign-in through a provider ends in `/console/#signin-error=<code>`. */
const SSO_ERRORS = {
  unavailable: 'Signing in with an organisation is not available for this namespace.',
  busy: 'Too many sign-ins are under way: try again in a few minutes.',
  provider: "The namespace's identity provider could not be reached, or answered something unusable.",
  expired: 'This sign-in has expired or was already used: start again.',
  refused: 'The identity provider did not sign you in.',
  token: "The identity provider's token was refused.",
  no_role: 'You are in no group that has a role in this namespace.',
};

/**
 * The end of a sign-in through a provider: `#sso?namespace=NS&token=T` (the server's answer to
 * the provider's callback; a fragment, never sent to a server) or `#signin-error=CODE`. The
 * fragment is removed from the address and the history at once. Returns the error message, if any.
 */
function takeSignInFragment() {
  const hash = location.hash;
  if (hash.startsWith('#sso?')) {
    const p = new URLSearchParams(hash.slice('#sso?'.length));
    history.replaceState(null, '', `${location.pathname}#/sandboxes`);
    if (p.get('token') && p.get('namespace')) session.setSso(p.get('token'), p.get('namespace'));
    return null;
  }
  if (hash.startsWith('#signin-error=')) {
    const code = hash.slice('#signin-error='.length);
    history.replaceState(null, '', location.pathname);
    session.clear();
    return SSO_ERRORS[code] || 'The sign-in failed.';
  }
  return null;
}

/** Signs in with `token`, in namespace `wanted` (default: the first the token sees). */
async function start(token, wanted) {
  if (session.sso) {
    // A user of the namespace's provider works in that namespace alone.
    ctx.namespaces = [session.namespace];
    await choose(session.namespace);
    if (!location.hash || location.hash === '#') location.hash = '#/sandboxes';
    route();
    return;
  }
  session.set(token, wanted || null);
  const namespaces = await all('/v1/namespaces', {}, 1000);
  const names = namespaces.map((n) => n.name);
  const ns = wanted || session.namespace || names[0] || null;
  session.set(token, ns);
  ctx.namespaces = names;
  await choose(ns);
  if (!location.hash || location.hash === '#') location.hash = '#/sandboxes';
  route();
}

/** Works in namespace `ns` from now on: what the principal may do there, asked of the API. */
async function choose(ns) {
  ctx.ns = ns;
  ctx.actions = new Set();
  if (ns) {
    session.setNamespace(ns);
    const p = await api('GET', nsPath(ns, '/permissions'));
    ctx.principal = p.principal;
    ctx.role = p.role;
    ctx.actions = new Set(p.actions);
  }
  header();
}

function header() {
  const nav = document.getElementById('nav');
  const here = (location.hash.split('/')[1] || '').split('?')[0];
  replace(nav, NAV.filter(([, , shown]) => shown()).map(([id, name]) =>
    h('a', { href: `#/${id}`, id: `nav-${id}`, class: here === id ? 'active' : '' }, name)));
  const picker = h('select', { id: 'ns-picker', onchange: async (e) => {
    try { await choose(e.target.value); route(); } catch (err) { flash(err.message); }
  } }, ctx.namespaces.map((n) => h('option', { value: n, selected: n === ctx.ns }, n)));
  replace(document.getElementById('who'),
    ctx.namespaces.length > 1 ? picker : h('span', {}, ctx.ns || ''),
    h('span', { id: 'principal' }, `${ctx.principal}${ctx.role ? ` (${ctx.role})` : ''}`),
    h('button', { class: 'secondary', id: 'sign-out', onclick: () => { session.clear(); location.hash = ''; leave(); signIn(); } }, 'Sign out'));
}

function leave() {
  for (const t of ctx.timers) clearInterval(t);
  for (const c of ctx.cleanups) { try { c(); } catch { /* already gone */ } }
  ctx.timers = [];
  ctx.cleanups = [];
}

async function route() {
  if (!session.token) { signIn(); return; }
  leave();
  const [path, query] = location.hash.replace(/^#\/?/, '').split('?');
  const [name, ...rest] = path.split('/');
  const view = ROUTES[name] || views.sandboxes;
  header();
  const el = main();
  replace(el, h('p', { class: 'muted' }, 'Loading…'));
  try {
    await view(ctx, el, rest.map(decodeURIComponent), new URLSearchParams(query || ''));
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) {
      const again = session.sso ? 'Your sign-in has expired: sign in again.' : 'The key was refused: sign in again.';
      session.clear();
      signIn(again);
      return;
    }
    replace(el, h('p', { class: 'bad', id: 'view-error' }, e.message));
  }
}

window.addEventListener('hashchange', route);
// Any call refused for the session's token (a poller's too): the session is over.
window.addEventListener('bulkhead:signed-out', () => {
  if (!session.token) return;
  const again = session.sso ? 'Your sign-in has expired: sign in again.' : 'The key was refused: sign in again.';
  session.clear();
  leave();
  signIn(again);
});
window.addEventListener('DOMContentLoaded', async () => {
  const failed = takeSignInFragment();
  if (!session.token) { signIn(failed); return; }
  try {
    await start(session.token, session.namespace);
  } catch (e) {
    session.clear();
    signIn(e.message);
  }
});

export { ctx };

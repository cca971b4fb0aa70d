// The console's views. Each is `(ctx, main, params, query)`: it draws into `main` from the API's
// answers, offers only what `ctx.may` allows (the API decides again on every call), and
// registers its live updates with `ctx.every` so leaving the view stops them.

import { api, all, nsPath, ApiError } from './api.js';
import { h, s, append, replace, table, bytes, flash } from './dom.js';
import { openTerminal } from './terminal.js';

const enc = encodeURIComponent;
const link = (href, text, props = {}) => h('a', { href, ...props }, text);
const need = (ctx) => { if (!ctx.ns) throw new Error('No namespace: the platform admin creates one first.'); return ctx.ns; };

/** Runs `fn`, showing its failure instead of throwing. */
async function attempt(fn) {
  try { return await fn(); } catch (e) { flash(e.message); return undefined; }
}

/** A labelled input. */
function field(label, props) {
  const input = h('input', { type: 'text', ...props });
  return [h('label', {}, label, input), input];
}

// --- namespaces and quotas -------------------------------------------------------------------

export async function namespaces(ctx, main) {
  const list = h('div');
  const draw = async () => {
    const items = await all('/v1/namespaces');
    replace(list, table([
      ['Name', (n) => h('span', { class: 'mono' }, n.name)],
      ['Isolation', (n) => n.isolation],
      ['CPU (millis)', (n) => n.quotas.cpu_millis, 'num'],
      ['Memory', (n) => bytes(n.quotas.memory_bytes), 'num'],
      ['Disk', (n) => bytes(n.quotas.disk_bytes), 'num'],
      ['Max sandboxes', (n) => n.quotas.max_sandboxes, 'num'],
      ['Max TTL (s)', (n) => n.quotas.max_sandbox_ttl_seconds, 'num'],
      ['Created', (n) => n.created_at],
      ['', (n) => (ctx.may('namespace.update')
        ? h('button', { class: 'secondary', 'data-edit': n.name, onclick: () => edit(n) }, 'Edit quotas') : '')],
    ], items));
  };
  // Changing a namespace's quotas (`namespace.update`, the platform admin's): only the fields
  // changed are sent.
  const editor = h('div', { id: 'quota-editor' });
  const edit = (n) => {
    const fields = [
      ['cpu_millis', 'CPU millis', n.quotas.cpu_millis, 1],
      ['memory_bytes', 'Memory MiB', n.quotas.memory_bytes / 1048576, 1048576],
      ['disk_bytes', 'Disk MiB', n.quotas.disk_bytes / 1048576, 1048576],
      ['max_sandboxes', 'Max sandboxes', n.quotas.max_sandboxes, 1],
      ['max_sandbox_ttl_seconds', 'Max TTL s', n.quotas.max_sandbox_ttl_seconds, 1],
    ].map(([key, label, value, unit]) => {
      const [l, input] = field(label, { type: 'number', value: String(value), id: `quota-${key}` });
      return { key, l, input, unit, before: String(value) };
    });
    replace(editor, h('div', { class: 'panel' }, h('h2', {}, `Quotas of ${n.name}`),
      h('div', { class: 'row' }, fields.map((f) => f.l)),
      h('button', { id: 'quota-save', onclick: () => attempt(async () => {
        const quotas = {};
        for (const f of fields) if (f.input.value !== f.before) quotas[f.key] = Number(f.input.value) * f.unit;
        await api('PATCH', nsPath(n.name), { json: { quotas } });
        flash(`Quotas of ${n.name} changed`, true);
        replace(editor);
        await draw();
      }) }, 'Save')));
  };
  replace(main, h('h1', {}, 'Namespaces and quotas'), list, editor);
  if (ctx.may('namespace.create')) {
    const [nameL, name] = field('Name', { id: 'ns-name', placeholder: 'team-a' });
    const [cpuL, cpu] = field('CPU millis', { type: 'number', value: '4000' });
    const [memL, mem] = field('Memory MiB', { type: 'number', value: '4096' });
    const [diskL, disk] = field('Disk MiB', { type: 'number', value: '8192' });
    const [maxL, max] = field('Max sandboxes', { type: 'number', value: '10' });
    append(main, h('div', { class: 'panel' }, h('h2', {}, 'Create a namespace'),
      h('div', { class: 'row' }, nameL, cpuL, memL, diskL, maxL),
      h('button', { id: 'ns-create', onclick: () => attempt(async () => {
        await api('POST', '/v1/namespaces', { idempotent: true, json: { name: name.value.trim(), quotas: {
          cpu_millis: Number(cpu.value), memory_bytes: Number(mem.value) * 1048576, disk_bytes: Number(disk.value) * 1048576,
          max_sandboxes: Number(max.value), pids_per_sandbox: 512, max_sandbox_ttl_seconds: 86400,
        } } });
        flash(`Namespace ${name.value} created`, true);
        await draw();
      }) }, 'Create')));
  }
  await draw();
}

// --- sandboxes -------------------------------------------------------------------------------

function statusCell(status) {
  return h('span', { class: `status-${status}` }, status);
}

export async function sandboxes(ctx, main) {
  const ns = need(ctx);
  const list = h('div', { id: 'sandbox-list' });
  const draw = async () => {
    const page = await api('GET', nsPath(ns, '/sandboxes'), { query: { limit: 200 } });
    replace(list, table([
      ['Sandbox', (x) => link(`#/sandbox/${enc(x.id)}`, x.id, { class: 'mono sandbox-link' })],
      ['Status', (x) => statusCell(x.status)],
      ['Image', (x) => (x.image && (x.image.name || x.image.reference)) || 'default'],
      ['CPU', (x) => x.cpu_millis, 'num'],
      ['Memory', (x) => bytes(x.memory_bytes), 'num'],
      ['Created', (x) => x.created_at],
      ['Expires', (x) => x.expires_at],
      ['', (x) => (ctx.may('sandbox.delete') && x.status !== 'deleted'
        ? h('button', { class: 'danger', onclick: () => attempt(async () => { await api('DELETE', nsPath(ns, `/sandboxes/${enc(x.id)}`)); await draw(); }) }, 'Delete')
        : '')],
    ], page.items, 'No sandboxes.'));
  };
  replace(main, h('h1', {}, 'Sandboxes'), h('p', { class: 'muted' }, 'Live: refreshed every 2 seconds.'));
  if (ctx.may('sandbox.create')) {
    const [memL, mem] = field('Memory MiB', { type: 'number', value: '256', id: 'sbx-memory' });
    const [ttlL, ttl] = field('TTL seconds', { type: 'number', value: '3600', id: 'sbx-ttl' });
    const [imgL, img] = field('Image', { placeholder: 'default', id: 'sbx-image' });
    append(main, h('div', { class: 'panel row' }, memL, ttlL, imgL,
      h('button', { id: 'sandbox-create', onclick: () => attempt(async () => {
        const body = { memory_bytes: Number(mem.value) * 1048576, ttl_seconds: Number(ttl.value) };
        if (img.value.trim()) body.image = img.value.trim();
        const made = await api('POST', nsPath(ns, '/sandboxes'), { idempotent: true, json: body });
        flash(`Sandbox ${made.id} created`, true);
        location.hash = `#/sandbox/${enc(made.id)}`;
      }) }, 'Create sandbox')));
  }
  append(main, list);
  await draw();
  ctx.every(2000, () => draw().catch(() => {}));
}

export async function sandbox(ctx, main, [id]) {
  const ns = need(ctx);
  const base = nsPath(ns, `/sandboxes/${enc(id)}`);
  const info = h('div', { class: 'panel', id: 'sandbox-info' });
  const drawInfo = async () => {
    const x = await api('GET', base);
    replace(info, h('div', { class: 'row' },
      h('strong', { class: 'mono' }, x.id), statusCell(x.status),
      h('span', { class: 'muted' }, `${x.cpu_millis} millis, ${bytes(x.memory_bytes)}, expires ${x.expires_at}`)));
    return x;
  };
  const x = await drawInfo();
  replace(main, h('h1', {}, 'Sandbox'), info);
  ctx.every(2000, () => drawInfo().catch(() => {}));
  const running = x.status === 'running';

  // The terminal and the one-shot exec: `sandbox.exec`.
  if (ctx.may('sandbox.exec') && running) {
    const box = h('div', { id: 'terminal' });
    const state = h('span', { class: 'muted', id: 'terminal-state' });
    let close = null;
    const open = h('button', { id: 'terminal-open', onclick: () => attempt(async () => {
      if (close) close();
      close = await openTerminal(box, ns, id, (st) => { state.textContent = st; });
      ctx.onLeave(() => close && close());
    }) }, 'Open terminal');
    const cmd = h('input', { type: 'text', id: 'exec-cmd', size: 60, placeholder: 'ls -la /' });
    const out = h('pre', { id: 'exec-output' });
    const run = () => attempt(async () => {
      const r = await api('POST', `${base}/exec`, { json: { cmd: ['/bin/sh', '-c', cmd.value] } });
      replace(out, r.stdout, r.stderr, `\n[exit ${r.exit_code}]`);
    });
    cmd.addEventListener('keydown', (e) => { if (e.key === 'Enter') run(); });
    append(main,
      h('div', { class: 'panel' }, h('h2', {}, 'Terminal'), h('div', { class: 'row' }, open, state), box),
      h('div', { class: 'panel' }, h('h2', {}, 'Run a command'),
        h('div', { class: 'row' }, cmd, h('button', { id: 'exec-run', onclick: run }, 'Run')), out));
  }

  // Files: `sandbox.file.read` to browse, `sandbox.file.write` to upload.
  if (ctx.may('sandbox.file.read') && running) {
    append(main, h('div', { class: 'panel' }, h('h2', {}, 'Files'),
      browser(ctx, `${base}/files`, '/', { write: ctx.may('sandbox.file.write'), absolute: true })));
  }
  if (!running) append(main, h('p', { class: 'muted' }, `The sandbox is ${x.status}.`));
  else if (!ctx.may('sandbox.exec') && !ctx.may('sandbox.file.read')) {
    append(main, h('p', { class: 'muted' }, 'Your role may see this sandbox, not run commands in it or read its files.'));
  }
  append(main, h('p', {}, link(`#/logs?sandbox=${enc(id)}`, 'Its logs')));
}

/**
 * A file browser of the files route `route` (a sandbox's or a filesystem's), starting in `dir`:
 * listing (`?list=true`), download, and with `opts.write` upload.
 */
function browser(ctx, route, dir, opts) {
  const root = h('div', { class: 'file-browser' });
  const where = h('input', { type: 'text', class: 'mono', id: 'files-path', size: 50, value: dir });
  const list = h('div', { id: 'file-list' });
  const join = (d, name) => (d === '' || d === '.' ? name : `${d.replace(/\/$/, '')}/${name}`);
  const draw = async () => {
    const d = where.value;
    const items = await all(route, { path: d, list: true });
    replace(list, table([
      ['Name', (f) => (f.type === 'directory'
        ? h('a', { href: '#', class: 'mono file-name', onclick: (e) => { e.preventDefault(); where.value = join(d, f.name); draw().catch((er) => flash(er.message)); } }, `${f.name}/`)
        : h('span', { class: 'mono file-name' }, f.name))],
      ['Type', (f) => f.type],
      ['Size', (f) => bytes(f.size), 'num'],
      ['Mode', (f) => f.mode, 'mono'],
      ['Modified', (f) => f.modified],
      ['', (f) => (f.type === 'file' ? h('button', { class: 'secondary download', 'data-name': f.name, onclick: () => attempt(() => download(route, join(d, f.name), f.name)) }, 'Download') : '')],
    ], items, 'Empty directory.'));
  };
  const up = h('button', { class: 'secondary', onclick: () => {
    const parts = where.value.replace(/\/$/, '').split('/');
    parts.pop();
    where.value = parts.join('/') || (opts.absolute ? '/' : '');
    draw().catch((e) => flash(e.message));
  } }, 'Up');
  append(root, h('div', { class: 'row' }, h('label', {}, 'Directory', where),
    h('button', { id: 'files-list', onclick: () => attempt(draw) }, 'List'), up));
  if (opts.write) {
    const file = h('input', { type: 'file', id: 'upload-file' });
    append(root, h('div', { class: 'row' }, file, h('button', { id: 'upload', onclick: () => attempt(async () => {
      const f = file.files[0];
      if (!f) throw new Error('Choose a file first');
      await api('PUT', route, { query: { path: join(where.value, f.name) }, body: await f.arrayBuffer() });
      flash(`Uploaded ${f.name}`, true);
      await draw();
    }) }, 'Upload')));
  }
  append(root, list);
  draw().catch((e) => replace(list, h('p', { class: 'bad' }, e.message)));
  return root;
}

/** Saves the file at `path` of files route `route` as `name`. */
async function download(route, path, name) {
  const r = await api('GET', route, { query: { path }, raw: true });
  const url = URL.createObjectURL(await r.blob());
  const a = h('a', { href: url, download: name });
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

// --- logs ------------------------------------------------------------------------------------

export async function logs(ctx, main, _params, query) {
  const ns = need(ctx);
  const sandboxId = query.get('sandbox') || '';
  const out = h('pre', { id: 'log-output' });
  let after = 0;
  const more = async () => {
    const page = await api('GET', nsPath(ns, '/logs'), { query: { sandbox: sandboxId, after, limit: 1000 } });
    for (const r of page.records) {
      append(out, h('span', { class: `log-${r.stream}` }, `${r.time} ${r.sandbox} ${r.stream}: ${r.data}${r.data.endsWith('\n') ? '' : '\n'}`));
      after = Math.max(after, r.seq);
    }
    if (page.next_after) after = Math.max(after, page.next_after);
  };
  replace(main, h('h1', {}, sandboxId ? `Logs of ${sandboxId}` : 'Logs'),
    h('p', { class: 'muted' }, 'The output of the namespace\'s commands, live.'), out);
  await more();
  ctx.every(2000, () => more().catch(() => {}));
}

// --- filesystems -----------------------------------------------------------------------------

export async function filesystems(ctx, main) {
  const ns = need(ctx);
  const list = h('div', { id: 'filesystem-list' });
  const draw = async () => {
    const items = await all(nsPath(ns, '/filesystems'));
    replace(list, table([
      ['Name', (f) => link(`#/filesystem/${enc(f.id)}`, f.name, { class: 'filesystem-link' })],
      ['Id', (f) => h('span', { class: 'mono' }, f.id)],
      ['Size', (f) => bytes(f.size_bytes), 'num'],
      ['Used', (f) => bytes(f.used_bytes), 'num'],
      ['Mounted by', (f) => f.mounted_by.join(', ')],
      ['Project', (f) => f.project || ''],
    ], items, 'No filesystems.'));
  };
  replace(main, h('h1', {}, 'Filesystems'));
  if (ctx.may('filesystem.create')) {
    const [nameL, name] = field('Name', { id: 'fs-name' });
    const [sizeL, size] = field('Size MiB', { type: 'number', value: '64', id: 'fs-size' });
    append(main, h('div', { class: 'panel row' }, nameL, sizeL, h('button', { id: 'fs-create', onclick: () => attempt(async () => {
      await api('POST', nsPath(ns, '/filesystems'), { idempotent: true, json: { name: name.value.trim(), size_bytes: Number(size.value) * 1048576 } });
      await draw();
    }) }, 'Create filesystem')));
  }
  append(main, list);
  await draw();
}

export async function filesystem(ctx, main, [id]) {
  const ns = need(ctx);
  const f = await api('GET', nsPath(ns, `/filesystems/${enc(id)}`));
  replace(main, h('h1', {}, `Filesystem ${f.name}`),
    h('p', { class: 'muted' }, `${f.id}: ${bytes(f.used_bytes)} used of ${bytes(f.size_bytes)}`));
  if (ctx.may('filesystem.file.read')) {
    append(main, h('div', { class: 'panel' }, browser(ctx, nsPath(ns, `/filesystems/${enc(id)}/files`), '',
      { write: ctx.may('filesystem.file.write'), absolute: false })));
  }
}

// --- usage -----------------------------------------------------------------------------------

/** A line chart of `points` ([label, value]) as an SVG, each point a circle with its value. */
export function chart(id, title, points, unit) {
  const W = 640; const H = 200; const P = 36;
  const max = Math.max(1e-9, ...points.map(([, v]) => v));
  const x = (i) => P + (points.length < 2 ? 0 : (i * (W - 2 * P)) / (points.length - 1));
  const y = (v) => H - P - (v / max) * (H - 2 * P);
  const svg = s('svg', { class: 'chart', id, width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: 'img' },
    s('title', {}, title),
    s('line', { class: 'axis', x1: P, y1: H - P, x2: W - P, y2: H - P }),
    s('line', { class: 'axis', x1: P, y1: P, x2: P, y2: H - P }),
    s('text', { x: 2, y: P }, `${max.toPrecision(3)} ${unit}`),
    s('text', { x: 2, y: H - P }, `0`),
    points.length ? s('text', { x: P, y: H - 8 }, points[0][0]) : null,
    points.length > 1 ? s('text', { x: W - P - 120, y: H - 8 }, points[points.length - 1][0]) : null,
    s('polyline', { class: 'line', points: points.map(([, v], i) => `${x(i)},${y(v)}`).join(' ') }),
    points.map(([label, v], i) => s('circle', { class: 'point', cx: x(i), cy: y(v), r: 3, 'data-value': v },
      s('title', {}, `${label}: ${v} ${unit}`))));
  return svg;
}

export async function usage(ctx, main, _params, query) {
  const ns = need(ctx);
  const granularity = query.get('granularity') || 'minute';
  const hours = granularity === 'minute' ? 1 : granularity === 'hour' ? 24 : 24 * 30;
  const from = new Date(Date.now() - hours * 3600 * 1000).toISOString().replace(/\.\d+Z$/, 'Z');
  const r = await api('GET', nsPath(ns, '/usage'), { query: { granularity, from } });
  const label = (b) => b.start.replace('T', ' ').replace(/:00Z$/, 'Z');
  replace(main, h('h1', {}, 'Usage'),
    h('div', { class: 'row' }, ['minute', 'hour', 'day'].map((g) =>
      link(`#/usage?granularity=${g}`, g, { class: g === granularity ? 'ok' : '' }))),
    h('p', { class: 'muted' }, `${r.from} to ${r.to}, by ${r.granularity}. Totals: ${r.totals.cpu_seconds.toFixed(2)} CPU seconds, `
      + `${r.totals.sandbox_seconds} sandbox seconds, ${r.totals.exec_count} commands, peak memory ${bytes(r.totals.memory_peak_bytes)}.`),
    h('h2', {}, 'CPU seconds'),
    chart('chart-cpu', 'CPU seconds per bucket', r.buckets.map((b) => [label(b), b.cpu_seconds]), 's'),
    h('h2', {}, 'Sandbox seconds'),
    chart('chart-sandboxes', 'Sandbox seconds per bucket', r.buckets.map((b) => [label(b), b.sandbox_seconds]), 's'),
    h('h2', {}, 'Commands'),
    chart('chart-execs', 'Commands per bucket', r.buckets.map((b) => [label(b), b.exec_count]), ''),
    h('p', { class: 'muted' }, `Disk: ${bytes(r.disk_used_bytes)} used of ${bytes(r.disk_bytes)} allocated; egress ${bytes(r.egress_bytes)}.`));
}

// --- audit -----------------------------------------------------------------------------------

function verdict(v) {
  return v.ok
    ? h('span', { class: 'ok', id: 'audit-verdict' }, `Verified: ${v.records} records intact${v.pruned ? ` (${v.pruned} pruned)` : ''}.`)
    : h('span', { class: 'bad', id: 'audit-verdict' }, `Broken at record ${v.first_bad_seq} of ${v.records}.`);
}

export async function audit(ctx, main) {
  const ns = ctx.ns;
  replace(main, h('h1', {}, 'Audit'));
  const chainView = (title, base, verifyAction) => {
    const result = h('div', { class: 'row' });
    const records = h('div');
    const box = h('div', { class: 'panel' }, h('h2', {}, title), result, records);
    if (ctx.may(verifyAction)) {
      append(result, h('button', { class: 'audit-verify', onclick: () => attempt(async () => {
        replace(result.querySelector('.verdict') || result, verdict(await api('GET', `${base}/verify`)));
      }) }, 'Verify the chain'), h('span', { class: 'verdict' }));
    }
    const drawRecords = async () => {
      const items = await all(base, { limit: 1000 }, 5000);
      const last = items.slice(-100).reverse();
      replace(records, table([
        ['#', (r) => r.seq, 'num'],
        ['Time', (r) => r.time],
        ['Principal', (r) => h('span', { class: 'mono' }, r.principal)],
        ['Action', (r) => r.action],
        ['Resource', (r) => h('span', { class: 'mono' }, r.resource)],
        ['Decision', (r) => r.decision],
        ['Status', (r) => r.status, 'num'],
        ['Hash', (r) => h('span', { class: 'mono', title: r.hash }, r.hash.slice(0, 12))],
      ], last, 'No records.'));
    };
    drawRecords().catch((e) => replace(records, h('p', { class: 'bad' }, e.message)));
    return box;
  };
  if (ns && ctx.may('audit.read')) append(main, chainView(`The chain of ${ns}`, nsPath(ns, '/audit'), 'audit.verify'));
  if (ctx.may('platform.audit.read')) append(main, chainView('The platform chain', '/v1/audit', 'platform.audit.verify'));
}

// --- policies --------------------------------------------------------------------------------

export async function policies(ctx, main) {
  const ns = need(ctx);
  replace(main, h('h1', {}, 'Policies'));
  if (ctx.may('policy.list')) {
    const list = h('div');
    const draw = async () => {
      const items = await all(nsPath(ns, '/policies'));
      replace(list, items.length ? items.map((p) => h('div', { class: 'panel' },
        h('div', { class: 'row' }, h('strong', {}, p.name), h('span', { class: 'mono muted' }, p.id),
          ctx.may('policy.delete') ? h('button', { class: 'danger', onclick: () => attempt(async () => {
            await api('DELETE', nsPath(ns, `/policies/${enc(p.id)}`)); await draw();
          }) }, 'Delete') : null),
        h('pre', {}, p.policy))) : h('p', { class: 'muted' }, 'No custom policies: the roles alone decide.'));
    };
    append(main, list);
    await draw();
    if (ctx.may('policy.create')) {
      const [nameL, name] = field('Name', { id: 'policy-name' });
      const text = h('textarea', { id: 'policy-text', rows: 5, cols: 80, placeholder: 'forbid(principal, action == Bulkhead::Action::"sandbox.exec", resource);' });
      append(main, h('div', { class: 'panel' }, h('h2', {}, 'Add a policy (Cedar)'), h('div', { class: 'row' }, nameL), text,
        h('div', { class: 'row' }, h('button', { onclick: () => attempt(async () => {
          await api('POST', nsPath(ns, '/policies'), { idempotent: true, json: { name: name.value.trim(), policy: text.value } });
          await draw();
        }) }, 'Add'))));
    }
  }
  if (ctx.may('authz.explain')) {
    const [pL, principal] = field('Principal', { id: 'explain-principal', placeholder: 'key:key_…' });
    const [aL, action] = field('Action', { id: 'explain-action', placeholder: 'sandbox.exec' });
    const [rL, resource] = field('Resource', { id: 'explain-resource', placeholder: 'sandbox:sbx_…' });
    const out = h('pre', { id: 'explain-output' });
    append(main, h('div', { class: 'panel' }, h('h2', {}, 'Explain a decision'), h('div', { class: 'row' }, pL, aL, rL,
      h('button', { id: 'explain', onclick: () => attempt(async () => {
        const r = await api('POST', nsPath(ns, '/authz/explain'), { json: { principal: principal.value.trim(), action: action.value.trim(), resource: resource.value.trim() } });
        replace(out, JSON.stringify(r, null, 2));
      }) }, 'Explain')), out));
  }
}

// --- agents and tasks ------------------------------------------------------------------------

export async function agents(ctx, main) {
  const ns = need(ctx);
  replace(main, h('h1', {}, 'Agents and tasks'));
  if (ctx.may('agent.list')) {
    const items = await all(nsPath(ns, '/agents'));
    const versions = h('div');
    append(main, h('h2', {}, 'Agents'), h('div', { id: 'agent-list' }, table([
      ['Name', (a) => h('a', { href: '#', onclick: (e) => { e.preventDefault(); attempt(async () => {
        const vs = await all(nsPath(ns, `/agents/${enc(a.name)}/versions`));
        replace(versions, h('h2', {}, `Versions of ${a.name}`), table([
          ['Version', (v) => h('span', { class: 'mono' }, v.id)],
          ['Active', (v) => (v.active ? 'yes' : '')],
          ['Digest', (v) => h('span', { class: 'mono' }, v.digest.slice(0, 19))],
          ['Size', (v) => bytes(v.size_bytes), 'num'],
          ['Created', (v) => v.created_at],
          ['', (v) => (!v.active && ctx.may('agent.deploy') ? h('button', { class: 'secondary', onclick: () => attempt(async () => {
            await api('POST', nsPath(ns, `/agents/${enc(a.name)}/deploy`), { json: { version: v.id } });
            flash(`Deployed ${v.id}`, true);
          }) }, 'Deploy') : '')],
        ], vs));
      }); } }, a.name)],
      ['Active version', (a) => h('span', { class: 'mono' }, a.active_version || '')],
      ['Updated', (a) => a.updated_at],
    ], items, 'No agents.')), versions);
  }
  if (ctx.may('task.list')) {
    const list = h('div', { id: 'task-list' });
    const draw = async () => {
      const page = await api('GET', nsPath(ns, '/tasks'), { query: { limit: 100 } });
      replace(list, table([
        ['Task', (t) => link(`#/task/${enc(t.id)}`, t.id, { class: 'mono' })],
        ['Agent', (t) => t.agent],
        ['Status', (t) => statusCell(t.status)],
        ['Messages', (t) => t.last_message, 'num'],
        ['Updated', (t) => t.updated_at],
      ], page.items, 'No tasks.'));
    };
    append(main, h('h2', {}, 'Tasks (live)'), list);
    if (ctx.may('task.create')) {
      const [agentL, agent] = field('Agent', { id: 'task-agent' });
      const [msgL, msg] = field('First message', { id: 'task-message', size: 40 });
      append(main, h('div', { class: 'panel row' }, agentL, msgL, h('button', { id: 'task-start', onclick: () => attempt(async () => {
        const body = { agent: agent.value.trim() };
        if (msg.value) body.message = msg.value;
        const t = await api('POST', nsPath(ns, '/tasks'), { idempotent: true, json: body });
        location.hash = `#/task/${enc(t.id)}`;
      }) }, 'Start a task')));
    }
    await draw();
    ctx.every(3000, () => draw().catch(() => {}));
  }
}

export async function task(ctx, main, [id]) {
  const ns = need(ctx);
  const base = nsPath(ns, `/tasks/${enc(id)}`);
  const info = h('div', { class: 'panel' });
  const out = h('div', { id: 'task-messages' });
  let after = 0;
  const drawInfo = async () => {
    const t = await api('GET', base);
    replace(info, h('div', { class: 'row' }, h('strong', { class: 'mono' }, t.id), statusCell(t.status),
      h('span', {}, `agent ${t.agent}`), t.sandbox ? link(`#/sandbox/${enc(t.sandbox)}`, t.sandbox, { class: 'mono' }) : null,
      t.reason ? h('span', { class: 'muted' }, t.reason) : null,
      ctx.may('task.cancel') && !t.ended_at ? h('button', { class: 'danger', onclick: () => attempt(() => api('POST', `${base}/cancel`)) }, 'Cancel') : null));
  };
  const more = async () => {
    const page = await api('GET', `${base}/messages`, { query: { after, limit: 1000 } });
    for (const m of page.items) {
      append(out, h('div', { class: 'panel task-message', 'data-type': m.type }, h('div', { class: 'row muted' }, `#${m.seq} ${m.type} ${m.created_at}`),
        h('pre', {}, JSON.stringify(m.data, null, 2))));
      after = Math.max(after, m.seq);
    }
  };
  replace(main, h('h1', {}, 'Task'), info);
  if (ctx.may('task.event')) {
    const [msgL, msg] = field('Message', { id: 'task-send', size: 60 });
    append(main, h('div', { class: 'panel row' }, msgL, h('button', { onclick: () => attempt(async () => {
      await api('POST', `${base}/events`, { json: { type: 'message', content: msg.value } });
      msg.value = '';
    }) }, 'Send')));
  }
  append(main, h('h2', {}, 'Messages (live)'), out);
  await drawInfo();
  await more();
  ctx.every(2000, () => { drawInfo().catch(() => {}); more().catch(() => {}); });
}

export { ApiError };

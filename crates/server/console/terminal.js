// A terminal into a sandbox: a shell started as a background process on a terminal
// (`POST .../processes` with `tty`), attached over the process WebSocket, drawn by xterm.js.

import { Terminal } from './vendor/xterm/xterm.mjs';
import { api, nsPath, socket } from './api.js';
import { h } from './dom.js';

const ROWS = 24;
const COLS = 100;
/** A terminal's shell ends after this long whatever happens (seconds). */
const SHELL_SECONDS = 8 * 3600;

/**
 * Opens a shell of sandbox `id` of namespace `ns` in a new terminal inside `box`. Answers a
 * function that closes it: the shell is hung up (`SIGHUP`, as a closed terminal does), so no
 * shell outlives its terminal to hold one of the namespace's concurrent commands. A tab closed
 * outright hangs it up too (a request kept alive past the page); a shell whose hang-up never
 * arrives still ends after `SHELL_SECONDS`.
 */
export async function openTerminal(box, ns, id, onStatus) {
  const sandbox = nsPath(ns, `/sandboxes/${encodeURIComponent(id)}`);
  const proc = await api('POST', `${sandbox}/processes`, {
    json: { cmd: ['/bin/sh'], tty: { rows: ROWS, cols: COLS }, timeout_seconds: SHELL_SECONDS },
  });
  const hangUp = () => api('POST', `${sandbox}/processes/${encodeURIComponent(proc.id)}/signal`,
    { json: { signal: 'HUP' }, keepalive: true }).catch(() => { /* ended already */ });
  window.addEventListener('pagehide', hangUp);
  const host = h('div', { class: 'terminal-box', 'data-process': proc.id });
  box.replaceChildren(host);
  const term = new Terminal({ rows: ROWS, cols: COLS, cursorBlink: true, convertEol: false, scrollback: 2000 });
  term.open(host);
  const ws = socket(nsPath(ns, `/sandboxes/${encodeURIComponent(id)}/processes/${encodeURIComponent(proc.id)}/attach`));
  const encoder = new TextEncoder();
  ws.addEventListener('open', () => {
    onStatus('connected');
    ws.send(JSON.stringify({ type: 'resize', rows: ROWS, cols: COLS }));
    term.focus();
  });
  ws.addEventListener('message', (ev) => {
    if (ev.data instanceof ArrayBuffer) {
      term.write(new Uint8Array(ev.data));
      return;
    }
    let msg;
    try { msg = JSON.parse(ev.data); } catch { return; }
    if (msg.type === 'exit') {
      term.write(`\r\n[process exited with ${msg.exit_code}]\r\n`);
      onStatus(`exited ${msg.exit_code}`);
    } else if (msg.type === 'error') {
      term.write(`\r\n[error: ${msg.message}]\r\n`);
    }
  });
  ws.addEventListener('close', () => onStatus('closed'));
  ws.addEventListener('error', () => onStatus('connection failed'));
  term.onData((data) => {
    if (ws.readyState === WebSocket.OPEN) ws.send(encoder.encode(data));
  });
  return () => {
    window.removeEventListener('pagehide', hangUp);
    hangUp();
    ws.close();
    term.dispose();
  };
}

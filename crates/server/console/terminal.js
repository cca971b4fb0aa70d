// A terminal into a sandbox: a shell started as a background process on a terminal
// (`POST .../processes` with `tty`), attached over the process WebSocket, drawn by xterm.js.

import { Terminal } from './vendor/xterm/xterm.mjs';
import { api, nsPath, socket } from './api.js';
import { h } from './dom.js';

const ROWS = 24;
const COLS = 100;

/**
 * Opens a shell of sandbox `id` of namespace `ns` in a new terminal inside `box`. Answers a
 * function that closes it (the shell goes on running with its stdin open, as the API says of a
 * socket closed without `eof`).
 */
export async function openTerminal(box, ns, id, onStatus) {
  const proc = await api('POST', nsPath(ns, `/sandboxes/${encodeURIComponent(id)}/processes`), {
    json: { cmd: ['/bin/sh'], tty: { rows: ROWS, cols: COLS } },
  });
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
  return () => { ws.close(); term.dispose(); };
}

// Building the page from data without ever parsing data as HTML: every string becomes a text
// node or an attribute set through the DOM. No innerHTML anywhere in the console.

/** The element `tag` with `props` (attributes; `class`, `on*` as listeners given functions)
 *  and `children` (nodes, or strings and numbers as text; null and false are skipped). */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') {
      el.addEventListener(k.slice(2), v);
    } else if (k === 'class') {
      el.className = v;
    } else if (k === 'value') {
      el.value = v;
    } else if (k === 'checked') {
      el.checked = !!v;
    } else {
      if (/^on/i.test(k)) throw new Error(`refusing attribute ${k}`);
      el.setAttribute(k, v === true ? '' : String(v));
    }
  }
  append(el, ...children);
  return el;
}

/** Appends `children` to `el` as `h` does. */
export function append(el, ...children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** Replaces the children of `el` with `children`. */
export function replace(el, ...children) {
  el.replaceChildren();
  return append(el, ...children);
}

const SVG = 'http://www.w3.org/2000/svg';

/** An SVG element `tag` with attributes `attrs` and `children` (strings as text). */
export function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined) continue;
    el.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** A table of `rows` with `columns`: [heading, row => cell (node or text), class?]. */
export function table(columns, rows, empty = 'None.') {
  if (!rows.length) return h('p', { class: 'muted' }, empty);
  return h('table', {},
    h('thead', {}, h('tr', {}, columns.map(([name]) => h('th', {}, name)))),
    h('tbody', {}, rows.map((r) => h('tr', {}, columns.map(([, cell, cls]) => h('td', { class: cls }, cell(r)))))));
}

/** Bytes as a short human size. */
export function bytes(n) {
  if (n === null || n === undefined) return '';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = Number(n);
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return `${i ? v.toFixed(1) : v} ${units[i]}`;
}

/** Shows `message` for a while at the bottom of the page (`info` for good news). */
export function flash(message, info = false) {
  const box = document.getElementById('flash');
  const el = h('div', { class: info ? 'info' : '' }, message);
  box.appendChild(el);
  setTimeout(() => el.remove(), 8000);
}

// DOM helpers: elements built from data as text, never as markup (names the broker
// shows cannot inject HTML), number formats, tables, toasts, and buttons and forms that
// call the API and show its refusal.

import { ApiError } from './api.js';

const SVG_NS = 'http://www.w3.org/2000/svg';

function build(el, attrs, children) {
  for (const [key, value] of Object.entries(attrs ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? '' : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

/** An HTML element: h('a', { href, onclick }, 'text', child, [more]). */
export const h = (tag, attrs, ...children) => build(document.createElement(tag), attrs, children);

/** An SVG element, as `h`. */
export const s = (tag, attrs, ...children) =>
  build(document.createElementNS(SVG_NS, tag), attrs, children);

/** The value at a dotted path (`message_stats.publish_details.rate`), or undefined. */
export const at = (obj, dotted) => dotted.split('.').reduce((o, k) => o?.[k], obj);

const integer = new Intl.NumberFormat();
const decimal = new Intl.NumberFormat(undefined, { minimumFractionDigits: 1, maximumFractionDigits: 1 });

/** A count, grouped by thousands; blank when the API left it out. */
export const num = (n) => (typeof n === 'number' ? integer.format(n) : '');

/** A rate per second with one decimal, as the API rounds them. */
export const rate = (n) => `${decimal.format(n ?? 0)}/s`;

/** A byte count in binary units. */
export function bytes(n) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n ?? 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${i ? v.toFixed(1) : v} ${units[i]}`;
}

/** JSON for the eye: `{}` for nothing. */
export const json = (value) => JSON.stringify(value ?? {}, null, 1);

/** What went wrong, for a person: the API's error and reason, or the exception's text. */
export function describe(e) {
  if (e instanceof ApiError) return e.status ? `${e.error} (${e.status}): ${e.reason}` : e.reason;
  return e?.message ?? String(e);
}

/** Shows `message`: errors stay until closed, confirmations go after a few seconds. */
export function toast(message, kind = 'error') {
  const box = document.getElementById('toasts');
  // A poll that keeps failing shows its error once, not every five seconds.
  if ([...box.children].some((t) => t.dataset.text === message)) return;
  const close = () => item.remove();
  const item = h(
    'div',
    { class: `toast ${kind}`, role: kind === 'error' ? 'alert' : 'status' },
    h('span', {}, message),
    h('button', { type: 'button', class: 'quiet', 'aria-label': 'Dismiss', onclick: close }, '×'),
  );
  item.dataset.text = message;
  box.append(item);
  if (kind !== 'error') setTimeout(close, 4000);
}

/**
 * An event handler that runs `work(event)` (async) with the form's or button's controls
 * disabled meanwhile, and shows a failure as a toast.
 */
export function act(work) {
  return async (event) => {
    event.preventDefault();
    const target = event.currentTarget;
    const controls = target instanceof HTMLFormElement ? [...target.elements] : [target];
    controls.forEach((c) => { c.disabled = true; });
    try {
      await work(event);
    } catch (e) {
      toast(describe(e));
    } finally {
      controls.forEach((c) => { c.disabled = false; });
    }
  };
}

/** A button for something that cannot be undone: the first click asks, a second does it. */
export function confirmButton(label, work, attrs = {}) {
  let timer;
  const button = h('button', { type: 'button', class: 'danger', ...attrs }, label);
  const run = act(work);
  button.addEventListener('click', (event) => {
    if (button.classList.contains('armed')) {
      clearTimeout(timer);
      button.classList.remove('armed');
      button.textContent = label;
      run(event);
      return;
    }
    button.classList.add('armed');
    button.textContent = `Really ${label.toLowerCase()}?`;
    timer = setTimeout(() => {
      button.classList.remove('armed');
      button.textContent = label;
    }, 4000);
  });
  return button;
}

/** A labelled control. */
export const field = (label, control) => h('label', {}, h('span', {}, label), control);

/** A `<select>` of `options` (strings, or [value, label] pairs). */
export function select(attrs, options, chosen) {
  return h('select', attrs, options.map((o) => {
    const [value, label] = Array.isArray(o) ? o : [o, o];
    return h('option', { value, selected: value === chosen }, label);
  }));
}

/** A textarea's JSON object, `{}` when empty; an error names `what` otherwise. */
export function jsonObject(text, what) {
  if (!text.trim()) return {};
  let value;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new Error(`${what} is not JSON: ${e.message}`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new Error(`${what} must be a JSON object`);
  }
  return value;
}

/**
 * A table in a scrolling box: `columns` are { label, cell(row) → text or node, num }
 * (num: right-aligned figures); `head(column)` may make a header cell's content.
 */
export function table(columns, rows, { empty = 'Nothing here yet.', head = (c) => c.label } = {}) {
  if (!rows.length) return h('p', { class: 'muted empty' }, empty);
  return h('div', { class: 'table-wrap' }, h('table', {},
    h('thead', {}, h('tr', {}, columns.map((c) => h('th', { class: c.num ? 'num' : null }, head(c))))),
    h('tbody', {}, rows.map((row) => h('tr', {},
      columns.map((c) => h('td', { class: c.num ? 'num' : null }, c.cell(row)))))),
  ));
}

/** Replaces `el`'s content, keeping a table's horizontal scroll across a refresh. */
export function fill(el, ...content) {
  const scrolled = el.querySelector('.table-wrap')?.scrollLeft ?? 0;
  el.replaceChildren(...content.flat().filter((c) => c !== null && c !== undefined && c !== false));
  const wrap = el.querySelector('.table-wrap');
  if (wrap) wrap.scrollLeft = scrolled;
}

/** A definition list of [term, value] pairs. */
export const facts = (pairs) =>
  h('dl', { class: 'facts' }, pairs.map(([term, value]) => [h('dt', {}, term), h('dd', {}, value)]));

/** A figure in a card: `label` over `value`. */
export const stat = (label, value, extra) =>
  h('div', { class: 'stat' }, h('span', { class: 'label' }, label), h('span', { class: 'value' }, value), extra);

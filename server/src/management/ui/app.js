// The app: login and logout, hash routing (#/page/segment/…, each segment URL-encoded),
// and the poll that keeps the visible page live every five seconds without a reload.

import { api, credentials } from './api.js';
import { h, describe, toast } from './dom.js';
import { views, sampleOverview } from './views.js';

const POLL_MS = 5000;
const $ = (id) => document.getElementById(id);

let refresh = null; // the visible page's
let polling = null;
let ticking = false;

/** Back to the login form, with `message` if there is one to give. */
function showLogin(message) {
  clearInterval(polling);
  polling = null;
  refresh = null;
  $('app').hidden = true;
  $('who').hidden = true;
  $('logout').hidden = true;
  $('main').replaceChildren();
  $('login').hidden = false;
  $('login-error').hidden = !message;
  $('login-error').textContent = message ?? '';
  $('login-user').focus();
}

/** Shows the page the hash names. */
async function route() {
  if (!polling) return;
  // A hand-typed hash may not decode, or may name no page (not even an inherited key).
  let first;
  let params;
  try {
    [first, ...params] = location.hash.replace(/^#\/?/, '').split('/').map(decodeURIComponent);
  } catch {
    [first, params] = ['?', []];
  }
  const page = first || 'overview';
  const entry = Object.hasOwn(views, page) ? views[page] : undefined;
  for (const link of $('nav').querySelectorAll('a')) {
    link.toggleAttribute('aria-current', link.getAttribute('href') === `#/${entry?.nav}`);
  }
  const root = h('section', { class: `page page-${page}` });
  $('main').replaceChildren(root);
  if (!entry) {
    refresh = null;
    root.append(h('h1', {}, 'No such page'), h('p', {}, h('a', { href: '#/overview' }, 'Overview')));
    return;
  }
  document.title = `${page[0].toUpperCase()}${page.slice(1)} · Warren`;
  const shown = entry.view(root, params);
  refresh = shown;
  try {
    await shown();
  } catch (e) {
    failed(e);
  }
}

/** A failed call: a session that no longer logs in goes back to the form. */
function failed(e) {
  if (e.loggedOut) showLogin('The broker no longer accepts these credentials: log in again.');
  else toast(describe(e));
}

/** One poll: the overview's sample (for the header and charts), then the page. */
async function tick() {
  // A hidden tab does not poll; a poll still running is not doubled.
  if (ticking || document.hidden) return;
  ticking = true;
  try {
    const o = await sampleOverview();
    $('node').textContent = `${o.cluster_name} · ${o.product_name} ${o.product_version}`;
    await refresh?.();
  } catch (e) {
    failed(e);
  } finally {
    ticking = false;
  }
}

/** Checks the stored credentials, then shows the app. */
async function enter() {
  let me;
  try {
    me = await api('GET', 'api/whoami');
  } catch (e) {
    credentials.clear();
    showLogin(e.loggedOut ? 'Login failed: check the user name and password.' : describe(e));
    return;
  }
  $('login').hidden = true;
  $('app').hidden = false;
  $('who').hidden = false;
  $('who').textContent = `${me.name}${me.tags.length ? ` (${me.tags.join(', ')})` : ''}`;
  $('logout').hidden = false;
  polling = setInterval(tick, POLL_MS);
  await tick();
  await route();
}

$('login').addEventListener('submit', (event) => {
  event.preventDefault();
  credentials.set($('login-user').value, $('login-password').value);
  $('login-password').value = '';
  enter();
});

$('logout').addEventListener('click', () => {
  credentials.clear();
  showLogin();
});

window.addEventListener('hashchange', route);

if (credentials.get()) enter();
else showLogin();

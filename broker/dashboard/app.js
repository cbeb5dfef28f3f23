// The dashboard's shell: login, navigation (hash routes), the connection
// banner, and the page lifecycle (each page's render returns its cleanup).

import * as api from './api.js';
import { h, clear, messages } from './ui.js';
import overview from './overview.js';
import { clientsPage, clientPage } from './clients.js';
import topics from './topics.js';
import retained from './retained.js';
import { rulesPage, rulePage } from './rules.js';
import plugins from './plugins.js';
import live from './live.js';
import clusterPage from './cluster.js';
import bridgesPage from './bridges.js';

const routes = [
  [/^\/(overview)?$/, overview],
  [/^\/clients$/, clientsPage],
  [/^\/clients\/(.+)$/, clientPage],
  [/^\/topics$/, topics],
  [/^\/retained$/, retained],
  [/^\/rules$/, rulesPage],
  [/^\/rules\/(.+)$/, rulePage],
  [/^\/plugins$/, plugins],
  [/^\/live$/, live],
  [/^\/cluster$/, clusterPage],
  [/^\/bridges$/, bridgesPage],
];

const $ = (id) => document.getElementById(id);
let cleanup = null;

function path() {
  const p = location.hash.replace(/^#/, '') || '/overview';
  return p.startsWith('/') ? p : '/' + p;
}

function stopPage() {
  if (cleanup) {
    try {
      cleanup();
    } catch (_) {
      // A page's cleanup must not stop the next page.
    }
  }
  cleanup = null;
}

async function route() {
  stopPage();
  const page = $('page');
  if (!api.token()) {
    showLogin();
    return;
  }
  $('login').hidden = true;
  $('nav').hidden = false;
  $('logout').hidden = false;
  const p = path();
  let match = null;
  let mod = null;
  for (const [re, m] of routes) {
    match = p.match(re);
    if (match) {
      mod = m;
      break;
    }
  }
  for (const a of document.querySelectorAll('#nav a')) {
    const target = a.getAttribute('href').slice(1);
    if (p === target || p.startsWith(target + '/')) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  closeMenu();
  clear(page);
  if (!mod) {
    document.title = 'Not found · Midge';
    page.append(h('h1', { tabindex: '-1' }, 'No such page'), h('p', {}, `Nothing at ${p}. `, h('a', { href: '#/overview' }, 'Go to the overview.')));
    return;
  }
  document.title = `${mod.title} · Midge`;
  const params = match.slice(1).map((x) => (x === undefined ? x : decodeURIComponent(x)));
  try {
    cleanup = mod.render(page, ...params) || null;
  } catch (e) {
    const m = messages();
    page.append(m.el);
    m.error(e);
  }
  const h1 = page.querySelector('h1');
  if (h1 && document.activeElement !== document.querySelector('#token')) {
    h1.setAttribute('tabindex', '-1');
    h1.focus({ preventScroll: false });
  }
}

function showLogin(message) {
  stopPage();
  clear($('page'));
  $('nav').hidden = true;
  $('logout').hidden = true;
  $('node').textContent = '';
  $('login').hidden = false;
  document.title = 'Log in · Midge';
  const msg = $('login-msg');
  clear(msg);
  if (message) msg.append(h('p', { class: 'msg error', role: 'alert' }, message));
  $('token').focus();
}

async function login(ev) {
  ev.preventDefault();
  const input = $('token');
  const t = input.value.trim();
  const msg = $('login-msg');
  clear(msg, h('p', { class: 'msg' }, 'Checking…'));
  try {
    const status = await api.tryToken(t);
    api.setToken(t);
    input.value = '';
    clear(msg);
    showNode(status);
    route();
  } catch (e) {
    clear(msg, h('p', { class: 'msg error', role: 'alert', id: 'login-error' }, e.message));
    input.select();
  }
}

function showNode(status) {
  if (status) $('node').textContent = `${status.node} · v${status.version}`;
}

function setLink(online) {
  const banner = $('banner');
  const link = $('link');
  if (online) {
    banner.hidden = true;
    clear(banner);
    link.textContent = '';
    link.className = 'link';
  } else {
    clear(banner, h('strong', {}, 'Lost the connection to the broker.'), ' Reconnecting… (the page recovers by itself when the broker is back)');
    banner.hidden = false;
    link.textContent = 'reconnecting';
    link.className = 'link down';
  }
}

function closeMenu() {
  document.body.classList.remove('menu-open');
  $('menu').setAttribute('aria-expanded', 'false');
}

function init() {
  $('login-form').addEventListener('submit', login);
  $('logout').addEventListener('click', () => {
    api.clearToken();
    showLogin('Logged out.');
  });
  $('menu').addEventListener('click', () => {
    const open = !document.body.classList.contains('menu-open');
    document.body.classList.toggle('menu-open', open);
    $('menu').setAttribute('aria-expanded', String(open));
  });
  api.setUnauthorizedHandler((message) => {
    api.clearToken();
    showLogin(message);
  });
  api.onConnection((online) => {
    setLink(online);
    if (online && api.token()) {
      // Back after an outage (maybe a restart): fresh data for the page.
      api.api('GET', '/api/v1/status').then(showNode, () => {});
      route();
    }
  });
  window.addEventListener('hashchange', route);
  if (api.token()) api.api('GET', '/api/v1/status').then(showNode, () => {});
  route();
}

init();

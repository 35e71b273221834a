// The console shell: hash routing between pages, the app/server filters,
// who is logged in and logout. Each page module exports
// mount(el, ctx) -> unmount function.
import { api, h, clear, parseHash, errorBox } from './lib.js';

const pages = {
  dashboard: () => import('./dashboard.js'),
  xview: () => import('./xview.js'),
  tx: () => import('./profile.js'),
  status: () => import('./status.js'),
  report: () => import('./report.js'),
  servers: () => import('./servers.js'),
  alerts: () => import('./alerts.js'),
  users: () => import('./users.js'),
};

const view = document.getElementById('view');
const appSel = document.getElementById('f-app');
const hostSel = document.getElementById('f-host');
const ctx = {
  session: null,
  get app() { return appSel.value; },
  get host() { return hostSel.value; },
};
let unmount = null;
let routeSeq = 0;

async function route() {
  const seq = ++routeSeq;
  const { page, arg, params } = parseHash();
  if (unmount) { try { unmount(); } catch (e) { console.error(e); } unmount = null; }
  for (const a of document.querySelectorAll('#nav a')) {
    a.classList.toggle('active', a.dataset.page === page || (page === 'tx' && a.dataset.page === 'xview'));
  }
  document.body.dataset.page = page;
  clear(view);
  const load = pages[page];
  if (!load) { view.appendChild(h('p', { class: 'empty' }, 'No such page.')); return; }
  try {
    const mod = await load();
    if (seq !== routeSeq) return;
    unmount = mod.mount(view, { ...ctx, arg, params, app: ctx.app, host: ctx.host, session: ctx.session }) || null;
  } catch (e) {
    view.appendChild(errorBox(e));
  }
}

async function loadFilters() {
  try {
    const { agents } = await api('/agents');
    const apps = [...new Set(agents.flatMap((a) => a.apps))].sort();
    const hosts = [...new Set(agents.map((a) => a.hostname || a.id))].sort();
    for (const a of apps) appSel.appendChild(h('option', { value: a }, a));
    for (const s of hosts) hostSel.appendChild(h('option', { value: s }, s));
  } catch (e) { console.warn('filters', e); }
  const saved = JSON.parse(sessionStorage.getItem('sonde-filters') || '{}');
  if (saved.app) appSel.value = saved.app;
  if (saved.host) hostSel.value = saved.host;
}

function onFilter() {
  sessionStorage.setItem('sonde-filters', JSON.stringify({ app: appSel.value, host: hostSel.value }));
  route();
}

async function start() {
  try {
    ctx.session = await api('/session');
    const who = document.getElementById('who');
    who.textContent = ctx.session.user ? `${ctx.session.user} (${ctx.session.role})` : '';
    if (ctx.session.open) document.getElementById('logout').hidden = true;
  } catch (e) { console.warn('session', e); }
  document.getElementById('logout').addEventListener('click', async () => {
    await fetch('/logout', { method: 'POST', credentials: 'same-origin' });
    location.href = '/login';
  });
  await loadFilters();
  appSel.addEventListener('change', onFilter);
  hostSel.addEventListener('change', onFilter);
  window.addEventListener('hashchange', route);
  if (!location.hash) history.replaceState(null, '', '#/dashboard');
  route();
}

start();

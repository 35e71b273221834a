// Shared helpers: the JSON API, safe DOM building (captured text is only
// ever set as text, never parsed as HTML), formatting, CSV.

export class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

/** GET (or other method) a JSON API path; params with empty values are left out. */
export async function api(path, params = {}, init = {}) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== '') q.set(k, v);
  }
  const url = '/api/v1' + path + (q.toString() ? '?' + q : '');
  const res = await fetch(url, { credentials: 'same-origin', ...init });
  if (res.status === 401) { location.href = '/login'; throw new ApiError(401, 'not logged in'); }
  const text = await res.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { body = { error: text }; }
  if (!res.ok) throw new ApiError(res.status, (body && body.error) || res.statusText);
  return body;
}

export function send(method, path, body) {
  return api(path, {}, {
    method,
    headers: { 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
}

/** Builds an element; strings and numbers become text nodes. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'style' && typeof v === 'object') Object.assign(el.style, v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else if (c instanceof Node) el.appendChild(c);
    else el.appendChild(document.createTextNode(String(c)));
  }
}

export function clear(el) { while (el.firstChild) el.removeChild(el.firstChild); return el; }

export function fmtMs(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return '–';
  if (ms >= 10000) return (ms / 1000).toFixed(1) + ' s';
  if (ms >= 1000) return (ms / 1000).toFixed(2) + ' s';
  if (ms >= 100) return ms.toFixed(0) + ' ms';
  if (ms >= 10) return ms.toFixed(1) + ' ms';
  return ms.toFixed(2) + ' ms';
}

export function fmtNum(n, digits = 0) {
  if (n === null || n === undefined || Number.isNaN(n)) return '–';
  return Number(n).toLocaleString(undefined, { maximumFractionDigits: digits, minimumFractionDigits: digits });
}

export function fmtBytes(b) {
  if (!b && b !== 0) return '–';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (b >= 1024 && i < u.length - 1) { b /= 1024; i++; }
  return (i ? b.toFixed(1) : b.toFixed(0)) + ' ' + u[i];
}

export function fmtPct(x) { return x === null || x === undefined ? '–' : (x * 100).toFixed(1) + ' %'; }

/** A time in the browser's zone. */
export function fmtTime(ms, withDate = false) {
  const d = new Date(ms);
  const t = d.toLocaleTimeString(undefined, { hour12: false });
  return withDate ? d.toLocaleDateString() + ' ' + t : t;
}

export function tz() { return Intl.DateTimeFormat().resolvedOptions().timeZone || 'UTC'; }

/** YYYY-MM-DD of a Date in the browser's zone. */
export function isoDate(d) {
  const p = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}`;
}

/** One CSV cell: quoted, and formula-looking text neutralised. */
export function csvCell(v) {
  let s = v === null || v === undefined ? '' : String(v);
  if (/^[=+\-@\t\r]/.test(s)) s = "'" + s;
  return '"' + s.replace(/"/g, '""') + '"';
}

export function downloadCsv(name, header, rows) {
  const text = [header, ...rows].map((r) => r.map(csvCell).join(',')).join('\r\n') + '\r\n';
  const url = URL.createObjectURL(new Blob([text], { type: 'text/csv' }));
  const a = h('a', { href: url, download: name });
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

/** A sortable table: columns [{key, label, fmt, num}], rows of objects. */
export function table(columns, rows, { onRow, sortKey, desc = true, rowAttrs } = {}) {
  let key = sortKey || columns[0].key;
  let descending = desc;
  const tbody = h('tbody');
  const heads = columns.map((c) => h('th', {
    class: c.num ? 'num sortable' : 'sortable',
    onclick: () => { if (key === c.key) descending = !descending; else { key = c.key; descending = !!c.num; } render(); },
  }, c.label));
  const el = h('table', { class: 'grid' }, h('thead', {}, h('tr', {}, heads)), tbody);
  function render() {
    const sorted = [...rows].sort((a, b) => {
      const x = a[key], y = b[key];
      const c = typeof x === 'number' && typeof y === 'number' ? x - y : String(x ?? '').localeCompare(String(y ?? ''));
      return descending ? -c : c;
    });
    clear(tbody);
    for (const r of sorted) {
      const tr = h('tr', { ...(rowAttrs ? rowAttrs(r) : {}), class: onRow ? 'clickable' : undefined },
        columns.map((c) => h('td', { class: c.num ? 'num' : undefined }, c.fmt ? c.fmt(r[c.key], r) : (r[c.key] ?? ''))));
      if (onRow) tr.addEventListener('click', () => onRow(r, tr));
      tbody.appendChild(tr);
    }
    heads.forEach((th, i) => { th.dataset.sort = columns[i].key === key ? (descending ? 'desc' : 'asc') : ''; });
  }
  render();
  el.setRows = (r) => { rows = r; render(); };
  return el;
}

/** Parses "#/page?a=1&b=2" into {page, params}. */
export function parseHash(hash = location.hash) {
  const s = hash.replace(/^#\/?/, '');
  const [path, query = ''] = s.split('?');
  const parts = path.split('/').filter(Boolean);
  return { page: parts[0] || 'dashboard', arg: parts.slice(1).join('/'), params: Object.fromEntries(new URLSearchParams(query)) };
}

/** Replaces the hash's query without adding a history entry or re-routing. */
export function setHashParams(page, params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') q.set(k, v);
  const hash = '#/' + page + (q.toString() ? '?' + q : '');
  history.replaceState(null, '', hash);
}

export function errorBox(e) { return h('p', { class: 'error' }, String(e.message || e)); }

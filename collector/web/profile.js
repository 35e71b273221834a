// Transaction profile: /api/v1/transactions/{id} — attributes, totals, the
// span timeline (SQL with rows, fetches, external calls, cache, errors) —
// and the transactions sharing its trace id (/api/v1/transactions?trace_id).
import { api, h, fmtMs, fmtBytes, fmtNum, fmtTime, table, errorBox } from './lib.js';

const KIND_COLORS = { sql: '#2f7ed8', fetch: '#76b041', external: '#9b59b6', cache: '#f0a30a', error: '#d9362b' };

export function mount(el, ctx) {
  const id = ctx.arg;
  const root = h('section', { class: 'profile' }, h('p', { class: 'muted' }, 'Loading…'));
  el.appendChild(root);
  let dead = false;
  api('/transactions/' + encodeURIComponent(id)).then((t) => { if (!dead) render(t); }, (e) => {
    root.replaceChildren(e.status === 404
      ? h('p', { class: 'empty' }, 'No such transaction (it may be past its retention).')
      : errorBox(e));
  });

  function render(t) {
    const attrs = [
      ['Endpoint', t.endpoint], ['URL', `${t.method} ${t.url}`], ['Status', t.status],
      ['App', t.app], ['Server', t.host], ['Ended', fmtTime(t.ts_ms, true)],
      ['PHP', `${t.php_version} (${t.sapi})`], ['Trace id', t.trace_id || '–'],
      ['Id', t.id],
    ];
    const totals = [
      ['Response time', fmtMs(t.elapsed_ms)], ['CPU', fmtMs(t.cpu_ms)], ['Memory', fmtBytes(t.memory_bytes)],
      ['SQL', `${fmtNum(t.sql_count)} · ${fmtMs(t.sql_ms)}`], ['Fetch', `${fmtNum(t.fetch_count)} rows · ${fmtMs(t.fetch_ms)}`],
      ['External', `${fmtNum(t.external_count)} · ${fmtMs(t.external_ms)}`], ['Cache', `${fmtNum(t.cache_count)} · ${fmtMs(t.cache_ms)}`],
      ['Queued', fmtMs(t.queue_ms)],
    ];
    const dl = (pairs) => h('dl', { class: 'kv' }, pairs.flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, String(v))]));
    const parts = [
      h('div', { class: 'page-head' }, h('h2', {}, 'Transaction'), h('span', { class: t.error ? 'badge bad' : 'badge ok' }, t.error ? 'failed' : 'ok'),
        h('a', { href: '#/xview' }, '← X-View')),
      h('div', { class: 'grid2' }, h('div', { class: 'panel' }, h('h3', {}, 'Request'), dl(attrs)),
        h('div', { class: 'panel' }, h('h3', {}, 'Totals'), dl(totals))),
    ];
    if (t.error) {
      parts.push(h('div', { class: 'panel error-panel' }, h('h3', {}, 'Error'),
        h('div', { class: 'mono' }, `${t.error.class}: ${t.error.message}`),
        t.error.file ? h('div', { class: 'muted mono' }, `${t.error.file}:${t.error.line}`) : null));
    }
    if (t.dropped_spans) parts.push(h('p', { class: 'muted' }, `${t.dropped_spans} spans were not recorded (per-request limit).`));
    parts.push(h('div', { class: 'panel' }, h('h3', {}, `Timeline (${t.spans.length} spans)`), timeline(t)));
    const links = h('div', { class: 'panel', id: 'trace-links' }, h('h3', {}, 'Related transactions'));
    parts.push(links);
    root.replaceChildren(...parts);
    related(t, links);
  }

  function timeline(t) {
    if (!t.spans.length) return h('p', { class: 'muted' }, 'No SQL, fetch, external, cache or error spans recorded.');
    const total = Math.max(t.elapsed_ms, ...t.spans.map((s) => s.start_ms + s.duration_ms), 0.001);
    const rows = t.spans.map((s, i) => {
      const left = (s.start_ms / total) * 100;
      const width = Math.max(0.3, (s.duration_ms / total) * 100);
      return h('tr', { class: 'span span-' + s.kind + (s.error ? ' err' : ''), dataset: { kind: s.kind } },
        h('td', { class: 'num muted' }, String(i + 1)),
        h('td', {}, h('span', { class: 'kind', style: { background: KIND_COLORS[s.kind] || '#888' } }, s.kind)),
        h('td', { class: 'num' }, fmtMs(s.start_ms)),
        h('td', { class: 'num' }, fmtMs(s.duration_ms)),
        h('td', { class: 'bar-cell' }, h('div', { class: 'bar', style: { left: left + '%', width: width + '%', background: KIND_COLORS[s.kind] || '#888' } })),
        h('td', { class: 'what' }, describe(s)));
    });
    return h('table', { class: 'grid timeline' },
      h('thead', {}, h('tr', {}, ['#', 'Kind', 'Start', 'Time', 'Timeline', 'What'].map((x) => h('th', {}, x)))),
      h('tbody', {}, rows));
  }

  function describe(s) {
    const bits = [];
    switch (s.kind) {
      case 'sql':
        bits.push(h('div', { class: 'mono sql' }, s.statement || ''),
          h('div', { class: 'muted small' }, `${s.rows ?? 0} rows · ${s.db || ''}`));
        break;
      case 'fetch':
        if (s.statement) bits.push(h('div', { class: 'mono sql' }, s.statement));
        bits.push(h('div', { class: 'muted small' }, `fetched ${s.rows ?? 0} rows in ${s.calls ?? 0} calls${s.db ? ' · ' + s.db : ''}`));
        break;
      case 'external':
        bits.push(h('div', { class: 'mono' }, s.url || ''), h('div', { class: 'muted small' }, `status ${s.status ?? '–'}${s.operation ? ' · ' + s.operation : ''}`));
        break;
      case 'cache':
        bits.push(h('div', { class: 'mono' }, `${s.operation || ''} ${s.db || ''}`));
        break;
      case 'error':
        bits.push(h('div', { class: 'mono' }, `${s.class || ''}: ${s.message || ''}`));
        break;
      default:
        bits.push(h('div', {}, JSON.stringify(s)));
    }
    if (s.error) bits.push(h('div', { class: 'error small' }, s.error));
    return bits;
  }

  async function related(t, box) {
    const items = [];
    if (t.parent_id) items.push(h('p', {}, 'Called by ', h('a', { href: '#/tx/' + t.parent_id }, t.parent_id)));
    if (t.trace_id) {
      try {
        // A trace's calls happen within seconds: ±10 min around this one
        // (the trace id is matched by scanning that window).
        const r = await api('/transactions', { trace_id: t.trace_id, around_ms: t.ts_ms, window_ms: 600000, limit: 500 });
        const others = r.transactions.filter((x) => x.id !== t.id);
        if (others.length) {
          items.push(table([
            { key: 'ts_ms', label: 'End', fmt: (v) => fmtTime(v, true) },
            { key: 'elapsed_ms', label: 'Elapsed', num: true, fmt: fmtMs },
            { key: 'app', label: 'App' }, { key: 'endpoint', label: 'Endpoint' }, { key: 'host', label: 'Server' },
            { key: 'status', label: 'Status', num: true },
          ], others, { sortKey: 'ts_ms', desc: false, onRow: (x) => { location.hash = '#/tx/' + x.id; } }));
        }
      } catch (e) { items.push(errorBox(e)); }
    }
    if (!items.length) items.push(h('p', { class: 'muted' }, 'No caller or callee transactions share its trace id.'));
    box.append(...items);
  }

  return () => { dead = true; };
}

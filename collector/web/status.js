// Application status: /api/v1/endpoints for a time range (sortable, CSV
// export); click an endpoint for its SQL statements (/api/v1/sql) and its
// external calls (/api/v1/externals).
import { api, h, clear, fmtMs, fmtNum, fmtTime, table, downloadCsv, setHashParams, errorBox } from './lib.js';

const RANGES = [['15m', 15 * 60e3], ['1h', 3600e3], ['6h', 6 * 3600e3], ['24h', 86400e3], ['7d', 7 * 86400e3]];

/** `datetime-local` value for epoch ms, in the browser's time zone. */
function localInput(ms) {
  const d = new Date(ms - new Date(ms).getTimezoneOffset() * 60e3);
  return d.toISOString().slice(0, 16);
}

export function mount(el, ctx) {
  let span = ctx.params.range || '1h';
  const now = Date.now();
  const fromIn = h('input', { type: 'datetime-local', id: 'status-from', value: localInput(Number(ctx.params.from) || now - 3600e3) });
  const toIn = h('input', { type: 'datetime-local', id: 'status-to', value: localInput(Number(ctx.params.to) || now) });
  const custom = h('span', { class: 'custom-range' }, ' from ', fromIn, ' to ', toIn, ' ',
    h('button', { type: 'button', id: 'status-apply', onclick: () => load() }, 'Show'));
  const out = h('div', { id: 'status-table' });
  const sqlBox = h('div', { id: 'status-sql' });
  const info = h('span', { class: 'muted' });
  const rangeSel = h('select', { id: 'status-range', onchange: () => { span = rangeSel.value; showCustom(); if (span !== 'custom') load(); } },
    [...RANGES.map(([k]) => h('option', { value: k, selected: k === span }, 'last ' + k)),
      h('option', { value: 'custom', selected: span === 'custom' }, 'custom range…')]);
  const showCustom = () => { custom.style.display = span === 'custom' ? '' : 'none'; };
  showCustom();
  const csvBtn = h('button', { type: 'button', id: 'status-csv' }, 'Export CSV');
  el.appendChild(h('section', {},
    h('div', { class: 'page-head' }, h('h2', {}, 'Application status'), info),
    h('div', { class: 'toolbar' }, rangeSel, custom, csvBtn),
    out, sqlBox));

  const cols = [
    { key: 'endpoint', label: 'Endpoint' },
    { key: 'app', label: 'App' },
    { key: 'calls', label: 'Calls', num: true, fmt: (v) => fmtNum(v) },
    { key: 'failures', label: 'Failures', num: true, fmt: (v) => fmtNum(v) },
    { key: 'bad_responses', label: 'Bad responses', num: true, fmt: (v) => fmtNum(v) },
    { key: 'avg_ms', label: 'Avg', num: true, fmt: fmtMs },
    { key: 'max_ms', label: 'Max', num: true, fmt: fmtMs },
    { key: 'p90_ms', label: 'p90', num: true, fmt: fmtMs },
    { key: 'sql_ms_per_tx', label: 'SQL/tx', num: true, fmt: fmtMs },
    { key: 'fetch_ms_per_tx', label: 'Fetch/tx', num: true, fmt: fmtMs },
    { key: 'external_ms_per_tx', label: 'External/tx', num: true, fmt: fmtMs },
    { key: 'total_ms', label: 'Total time', num: true, fmt: fmtMs },
  ];
  let rows = [];
  csvBtn.addEventListener('click', () => downloadCsv('sonde-endpoints.csv', cols.map((c) => c.key), rows.map((r) => cols.map((c) => r[c.key]))));

  async function load() {
    let from, to;
    if (span === 'custom') {
      // Local times, as the inputs show them.
      from = new Date(fromIn.value).getTime();
      to = new Date(toIn.value).getTime();
      if (!(from < to)) { clear(out); out.appendChild(h('p', { class: 'error' }, 'Pick a start before the end.')); return; }
      setHashParams('status', { range: span, from, to });
    } else {
      const ms = (RANGES.find(([k]) => k === span) || RANGES[1])[1];
      to = Date.now(); from = to - ms;
      setHashParams('status', { range: span });
    }
    clear(out); clear(sqlBox);
    try {
      const r = await api('/endpoints', { from, to, app: ctx.app });
      rows = r.endpoints;
      info.textContent = `${fmtTime(from, true)} – ${fmtTime(to, true)}`;
      if (!rows.length) {
        out.appendChild(h('p', { class: 'empty' }, 'No transactions in this range. Install the agent and the PHP extension on your web servers (see the README), or pick a longer range.'));
        return;
      }
      out.appendChild(table(cols, rows, {
        sortKey: 'total_ms',
        onRow: (r) => showSql(r, from, to),
        rowAttrs: (r) => ({ dataset: { endpoint: r.endpoint } }),
      }));
    } catch (e) { out.appendChild(errorBox(e)); }
  }

  async function showSql(row, from, to) {
    clear(sqlBox);
    sqlBox.appendChild(h('h3', {}, `SQL of ${row.endpoint}`));
    try {
      const r = await api('/sql', { from, to, app: row.app, endpoint: row.endpoint });
      if (!r.statements.length) sqlBox.appendChild(h('p', { class: 'muted' }, 'No SQL statements for this endpoint in this range.'));
      else sqlBox.appendChild(table([
        { key: 'statement', label: 'Statement', fmt: (v) => h('span', { class: 'mono' }, v) },
        { key: 'calls', label: 'Calls', num: true, fmt: (v) => fmtNum(v) },
        { key: 'failures', label: 'Failures', num: true, fmt: (v) => fmtNum(v) },
        { key: 'avg_ms', label: 'Avg', num: true, fmt: fmtMs },
        { key: 'max_ms', label: 'Max', num: true, fmt: fmtMs },
        { key: 'total_ms', label: 'Total', num: true, fmt: fmtMs },
      ], r.statements, { sortKey: 'total_ms' }));
    } catch (e) { sqlBox.appendChild(errorBox(e)); }
    sqlBox.appendChild(h('h3', {}, `External calls of ${row.endpoint}`));
    try {
      const r = await api('/externals', { from, to, app: row.app, endpoint: row.endpoint });
      if (!r.externals.length) {
        sqlBox.appendChild(h('p', { class: 'muted', id: 'status-ext-empty' }, 'No external calls for this endpoint in this range.'));
      } else {
        sqlBox.appendChild(h('div', { id: 'status-ext' }, table([
          { key: 'url', label: 'URL', fmt: (v) => h('span', { class: 'mono' }, v) },
          { key: 'calls', label: 'Calls', num: true, fmt: (v) => fmtNum(v) },
          { key: 'failures', label: 'Failures', num: true, fmt: (v) => fmtNum(v) },
          { key: 'avg_ms', label: 'Avg', num: true, fmt: fmtMs },
          { key: 'p90_ms', label: 'p90', num: true, fmt: fmtMs },
          { key: 'max_ms', label: 'Max', num: true, fmt: fmtMs },
          { key: 'total_ms', label: 'Total', num: true, fmt: fmtMs },
        ], r.externals, { sortKey: 'total_ms' })));
      }
    } catch (e) { sqlBox.appendChild(errorBox(e)); }
    sqlBox.scrollIntoView({ behavior: 'smooth', block: 'nearest' });
  }

  load();
}

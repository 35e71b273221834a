// Real-time dashboard: one EventSource on /api/v1/live (a `live` event per
// second) drives the tiles, charts, equalizer, host gauges and endpoint
// board; /api/v1/reports/daily (every 30 s) gives visitors and calls this
// hour and today; /api/v1/active lists the requests behind an equalizer
// bar; /api/v1/events (every 5 s) fills the events panel, with an
// acknowledge button per event (POST /api/v1/events/{id}/ack);
// /api/v1/deploys (with the events) gives the deploy markers drawn on the
// charts and the "Deploys" panel.
import { api, send, h, clear, fmtMs, fmtNum, fmtBytes, fmtPct, fmtTime, tz, isoDate, table, errorBox } from './lib.js';
import { lineChart } from './chart.js';

const BAR_COLORS = ['#2f7ed8', '#3fae49', '#f0a30a', '#d9362b'];

function tile(label, id, unit = '') {
  return h('div', { class: 'tile' }, h('div', { class: 'tile-label' }, label),
    h('div', { class: 'tile-value', id }, '–'), unit ? h('div', { class: 'tile-unit' }, unit) : null);
}

export function mount(el, ctx) {
  const tpsCanvas = h('canvas', { class: 'chart', id: 'tps-chart' });
  const rtCanvas = h('canvas', { class: 'chart', id: 'rt-chart' });
  const eq = h('div', { class: 'equalizer', id: 'equalizer' });
  const eqLabels = h('div', { class: 'eq-labels' });
  const activeList = h('div', { id: 'active-list' });
  const hosts = h('div', { class: 'hosts', id: 'hosts' });
  const board = h('div', { class: 'board', id: 'board' });
  const events = h('div', { id: 'events' }, h('p', { class: 'muted' }, 'Loading…'));
  const deploysBox = h('div', { id: 'deploys' });
  let deploys = [];
  const status = h('span', { class: 'muted', id: 'live-status' }, 'connecting…');

  el.appendChild(h('section', { class: 'dashboard' },
    h('div', { class: 'page-head' }, h('h2', {}, 'Dashboard'), status),
    h('div', { class: 'tiles' },
      tile('TPS', 'v-tps', 'calls/s'),
      tile('Avg response', 'v-avg'),
      tile('p90 response', 'v-p90'),
      tile('Errors', 'v-errors', 'last seconds'),
      tile('Active', 'v-active', 'in flight'),
      tile('Concurrent users', 'v-users', 'last 5 min'),
      tile('Visitors this hour', 'v-vis-hour'),
      tile('Visitors today', 'v-vis-day'),
      tile('Calls this hour', 'v-calls-hour'),
      tile('Calls today', 'v-calls-day'),
      tile('DB connections', 'v-db'),
    ),
    h('div', { class: 'grid2' },
      h('div', { class: 'panel' }, h('h3', {}, 'Transactions per second (last minute)'), tpsCanvas),
      h('div', { class: 'panel' }, h('h3', {}, 'Response time (avg, p90)'), rtCanvas),
    ),
    h('div', { class: 'grid2' },
      h('div', { class: 'panel' }, h('h3', {}, 'Active services'), eq, eqLabels,
        h('p', { class: 'muted small' }, 'Click a bar to list the requests in flight.'), activeList),
      h('div', { class: 'panel' }, h('h3', {}, 'Servers'), hosts),
    ),
    h('div', { class: 'panel' }, h('h3', {}, 'Endpoints (last minute; red: slow p90 or failing)'), board),
    h('div', { class: 'panel' }, h('h3', {}, 'Recent events'), events),
    h('div', { class: 'panel' }, h('h3', {}, 'Deploys (last 24 hours; dashed lines on the charts)'), deploysBox),
  ));

  const bars = [0, 1, 2, 3].map((i) => {
    const fill = h('div', { class: 'eq-fill', style: { background: BAR_COLORS[i] } });
    const count = h('div', { class: 'eq-count' }, '0');
    const bar = h('button', { class: 'eq-bar', type: 'button', dataset: { bucket: String(i) }, onclick: () => showActive(i) }, count, fill);
    eq.appendChild(bar);
    return { bar, fill, count };
  });
  let bounds = [1000, 3000, 8000];
  function labelBuckets() {
    clear(eqLabels);
    const s = (ms) => (ms % 1000 ? ms + ' ms' : ms / 1000 + ' s');
    [`< ${s(bounds[0])}`, `${s(bounds[0])}–${s(bounds[1])}`, `${s(bounds[1])}–${s(bounds[2])}`, `≥ ${s(bounds[2])}`]
      .forEach((t) => eqLabels.appendChild(h('span', {}, t)));
  }
  labelBuckets();

  async function showActive(bucket) {
    clear(activeList);
    try {
      const v = await api('/active', { app: ctx.app });
      const lo = bucket === 0 ? 0 : v.bounds_ms[bucket - 1];
      const hi = bucket === 3 ? Infinity : v.bounds_ms[bucket];
      const rows = v.active.filter((r) => r.elapsed_ms >= lo && r.elapsed_ms < hi && (!ctx.host || r.host === ctx.host));
      activeList.appendChild(h('h4', {}, `In flight, bucket ${bucket + 1}: ${rows.length}`));
      if (!rows.length) { activeList.appendChild(h('p', { class: 'muted' }, 'None right now.')); return; }
      activeList.appendChild(table([
        { key: 'host', label: 'Server' },
        { key: 'endpoint', label: 'Endpoint' },
        { key: 'method', label: 'Method' },
        { key: 'elapsed_ms', label: 'Elapsed', num: true, fmt: fmtMs },
        { key: 'current', label: 'Running now (SQL or URL)', fmt: (v) => v ?? '–' },
      ], rows, { sortKey: 'elapsed_ms' }));
    } catch (e) { activeList.appendChild(errorBox(e)); }
  }

  const set = (id, text) => { const n = el.querySelector('#' + id); if (n) n.textContent = text; };
  let last = null;

  function render(d) {
    last = d;
    const w = d.window;
    const tpsEl = el.querySelector('#v-tps');
    tpsEl.textContent = fmtNum(w.tps, 1);
    tpsEl.dataset.tps = String(w.tps);
    tpsEl.dataset.from = String(w.from_ms);
    tpsEl.dataset.to = String(w.to_ms);
    set('v-avg', fmtMs(w.calls ? w.avg_ms : null));
    set('v-p90', fmtMs(w.calls ? w.p90_ms : null));
    set('v-errors', fmtNum(w.errors));
    el.querySelector('#v-errors').classList.toggle('bad', w.errors > 0);
    set('v-active', fmtNum(d.active.count));
    set('v-users', fmtNum(d.concurrent_users));
    set('v-db', fmtNum(d.db_connections));
    status.textContent = 'live · ' + fmtTime(d.ts_ms);

    const rec = d.recent;
    const xMin = rec.length ? rec[0].ts_ms : 0, xMax = rec.length ? rec[rec.length - 1].ts_ms : 1;
    const markers = deploys.map((x) => ({ x: x.ts_ms, label: `deploy ${x.app} ${x.version}` }));
    lineChart(tpsCanvas, [{ label: 'calls/s', points: rec.map((p) => [p.ts_ms, p.calls]), color: '#2f7ed8' },
      { label: 'errors/s', points: rec.map((p) => [p.ts_ms, p.errors]), color: '#d9362b' }], { xMin, xMax, integer: true, markers });
    lineChart(rtCanvas, [
      { label: 'avg', points: rec.map((p) => [p.ts_ms, p.calls ? p.avg_ms : null]) },
      { label: 'p90', points: rec.map((p) => [p.ts_ms, p.calls ? p.p90_ms : null]), color: '#e4572e' },
    ], { xMin, xMax, yFmt: fmtMs, markers });

    if (String(d.active.bounds_ms) !== String(bounds)) { bounds = d.active.bounds_ms; labelBuckets(); }
    const maxB = Math.max(4, ...d.active.buckets);
    d.active.buckets.forEach((n, i) => {
      bars[i].fill.style.height = (n / maxB) * 100 + '%';
      bars[i].count.textContent = String(n);
      bars[i].bar.dataset.count = String(n);
    });

    clear(hosts);
    if (!d.hosts.length) hosts.appendChild(h('p', { class: 'muted' }, 'No host metrics yet: they come from running agents.'));
    for (const s of d.hosts) {
      const mem = s.mem_total_bytes ? s.mem_used_bytes / s.mem_total_bytes : 0;
      hosts.appendChild(h('div', { class: 'host' },
        h('div', { class: 'host-name' }, s.host),
        gauge('CPU', s.cpu_percent / 100, fmtNum(s.cpu_percent, 0) + ' %'),
        gauge('Memory', mem, `${fmtBytes(s.mem_used_bytes)} / ${fmtBytes(s.mem_total_bytes)}`),
        (s.disks || []).slice(0, 1).map((d) => gauge('Disk', d.used_percent / 100, `${d.mount} ${fmtNum(d.used_percent, 0)} %`)),
        h('div', { class: 'muted small' }, `load ${fmtNum(s.load1, 2)} · php-fpm ${s.fpm_active} busy / ${s.fpm_idle} idle · ${s.db_connections} DB conn.`)));
    }

    clear(board);
    if (!d.endpoints.length) board.appendChild(h('p', { class: 'muted' }, 'No transactions in the last minute. Is the PHP extension loaded and the agent running?'));
    for (const e of d.endpoints.slice(0, 60)) {
      board.appendChild(h('a', {
        class: 'ep ' + e.level, href: `#/xview?endpoint=${encodeURIComponent(e.endpoint)}`,
        title: `${e.app} ${e.endpoint}\n${e.calls} calls, ${e.errors} errors, p90 ${fmtMs(e.p90_ms)}`,
        dataset: { level: e.level },
      }, h('div', { class: 'ep-name' }, e.endpoint),
      h('div', { class: 'ep-stats' }, `${fmtNum(e.calls)} · p90 ${fmtMs(e.p90_ms)} · err ${fmtPct(e.error_rate)}`)));
    }
  }

  function gauge(label, frac, text) {
    const f = Math.max(0, Math.min(1, frac || 0));
    const color = f > 0.9 ? '#d9362b' : f > 0.7 ? '#f0a30a' : '#3fae49';
    return h('div', { class: 'gauge' }, h('span', { class: 'gauge-label' }, label),
      h('span', { class: 'gauge-bar' }, h('span', { class: 'gauge-fill', style: { width: f * 100 + '%', background: color } })),
      h('span', { class: 'gauge-text' }, text));
  }

  const q = new URLSearchParams();
  if (ctx.app) q.set('app', ctx.app);
  if (ctx.host) q.set('host', ctx.host);
  const es = new EventSource('/api/v1/live' + (q.toString() ? '?' + q : ''));
  es.addEventListener('live', (ev) => render(JSON.parse(ev.data)));
  es.onerror = () => { status.textContent = 'reconnecting…'; };
  const onResize = () => last && render(last);
  window.addEventListener('resize', onResize);

  async function daily() {
    try {
      const r = await api('/reports/daily', { date: isoDate(new Date()), tz: tz(), app: ctx.app, compare: '' });
      const hour = new Date().getHours();
      const cur = r.hourly.filter((x) => x.hour === hour).pop();
      set('v-vis-hour', fmtNum(cur ? cur.visitors : 0));
      set('v-vis-day', fmtNum(r.visitors));
      set('v-calls-hour', fmtNum(cur ? cur.calls : 0));
      set('v-calls-day', fmtNum(r.calls));
    } catch (e) { console.warn('daily', e); }
  }
  async function loadEvents() {
    try {
      const r = await api('/events', { from: Date.now() - 86400000, to: Date.now(), limit: 20 });
      clear(events);
      if (!r.events.length) { events.appendChild(h('p', { class: 'muted' }, 'No events in the last 24 hours.')); return; }
      const badge = (v, cls) => h('span', { class: 'badge ' + cls }, v);
      events.appendChild(table([
        { key: 'ts_ms', label: 'Time', fmt: (v) => fmtTime(v, true) },
        { key: 'level', label: 'Level', fmt: (v) => badge(v, v === 'critical' ? 'bad' : 'warn') },
        { key: 'state', label: 'State', fmt: (v) => badge(v, v === 'resolved' ? 'ok' : 'bad') },
        { key: 'message', label: 'What' }, { key: 'app', label: 'App' },
        { key: 'endpoint', label: 'Endpoint' }, { key: 'host', label: 'Server' },
        { key: 'acked_by', label: 'Ack', fmt: (v, e) => v ? h('span', { class: 'muted', title: fmtTime(e.acked_ms, true) }, v)
          : h('button', { onclick: (ev) => { ev.stopPropagation(); ack(e.id, ev.target); } }, 'Acknowledge') },
      ], r.events, { sortKey: 'ts_ms' }));
    } catch (e) {
      clear(events);
      events.appendChild(h('p', { class: 'muted' }, e.status === 404
        ? 'Events and alerts are not collected by this collector version yet.'
        : String(e.message)));
    }
  }
  async function loadDeploys() {
    try {
      const r = await api('/deploys', { from: Date.now() - 86400000, to: Date.now() + 60000, app: ctx.app });
      deploys = r.deploys;
      clear(deploysBox);
      if (!deploys.length) {
        deploysBox.appendChild(h('p', { class: 'muted' }, 'No deploys recorded in the last 24 hours (POST /api/v1/deploys, or scripts/sonde-deploy from a deploy script).'));
        return;
      }
      deploysBox.appendChild(table([
        { key: 'ts_ms', label: 'Time', fmt: (v) => fmtTime(v, true) },
        { key: 'app', label: 'App' }, { key: 'version', label: 'Version' },
        { key: 'user', label: 'By' }, { key: 'description', label: 'Description' },
      ], deploys, { sortKey: 'ts_ms' }));
    } catch (e) {
      clear(deploysBox);
      deploysBox.appendChild(h('p', { class: 'muted' }, String(e.message)));
    }
  }
  async function ack(id, button) {
    try {
      await send('POST', `/events/${id}/ack`);
      loadEvents();
    } catch (e) {
      button.replaceWith(h('span', { class: 'error' }, String(e.message)));
    }
  }
  daily();
  loadEvents();
  loadDeploys();
  const dailyTimer = setInterval(daily, 30000);
  const eventsTimer = setInterval(() => { loadEvents(); loadDeploys(); }, 5000);

  return () => {
    es.close();
    clearInterval(dailyTimer);
    clearInterval(eventsTimer);
    window.removeEventListener('resize', onResize);
  };
}

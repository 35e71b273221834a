// Daily system performance: /api/v1/reports/daily for a day in the
// browser's zone, with the API's comparison days (totals) and one overlay
// day drawn hour by hour, and the day's deploys (/api/v1/deploys) as dashed
// markers and a table. A print stylesheet fits it on one A4 page.
import { api, h, clear, fmtMs, fmtNum, fmtTime, isoDate, tz, setHashParams, errorBox } from './lib.js';
import { lineChart } from './chart.js';

export function mount(el, ctx) {
  const today = new Date();
  const yesterday = new Date(today.getTime() - 86400e3);
  const date = h('input', { type: 'date', value: ctx.params.date || isoDate(today), id: 'report-date' });
  const overlay = h('select', { id: 'report-overlay' },
    h('option', { value: 'prev' }, 'previous day'),
    h('option', { value: 'week' }, 'same day last week'),
    h('option', { value: 'date' }, 'a chosen date:'));
  const other = h('input', { type: 'date', value: isoDate(new Date(yesterday.getTime() - 86400e3)) });
  const out = h('div', { id: 'report' });
  el.appendChild(h('section', { class: 'report-page' },
    h('div', { class: 'page-head no-print' }, h('h2', {}, 'Daily system performance')),
    h('form', { class: 'toolbar no-print', onsubmit: (e) => { e.preventDefault(); load(); } },
      h('label', {}, 'Day ', date), h('label', {}, 'Compare with ', overlay), other,
      h('button', { type: 'submit' }, 'Show'), h('button', { type: 'button', onclick: () => window.print() }, 'Print')),
    out));
  overlay.addEventListener('change', load);
  date.addEventListener('change', load);

  function compareDate() {
    const d = new Date(date.value + 'T12:00:00');
    if (overlay.value === 'prev') return isoDate(new Date(d.getTime() - 86400e3));
    if (overlay.value === 'week') return isoDate(new Date(d.getTime() - 7 * 86400e3));
    return other.value;
  }

  async function load() {
    setHashParams('report', { date: date.value });
    clear(out);
    const zone = tz();
    try {
      const cmp = compareDate();
      const [y, m, d] = date.value.split('-').map(Number);
      const from = new Date(y, m - 1, d).getTime(), to = new Date(y, m - 1, d + 1).getTime() - 1;
      const [r, c, dep] = await Promise.all([
        api('/reports/daily', { date: date.value, tz: zone, app: ctx.app }),
        api('/reports/daily', { date: cmp, tz: zone, app: ctx.app, compare: date.value }),
        api('/deploys', { from, to, app: ctx.app }).catch(() => ({ deploys: [] })),
      ]);
      render(r, c, zone, dep.deploys);
    } catch (e) { out.appendChild(errorBox(e)); }
  }

  function render(r, c, zone, deploys) {
    const errRate = r.calls ? (r.errors / r.calls) * 100 : 0;
    const kpi = (label, v) => h('div', { class: 'tile' }, h('div', { class: 'tile-label' }, label), h('div', { class: 'tile-value' }, v));
    out.appendChild(h('h2', { class: 'print-only' }, `Daily system performance — ${r.date}${r.app ? ' — ' + r.app : ''}`));
    out.appendChild(h('p', { class: 'muted' }, `${r.date} (${zone})${r.app ? ' · app ' + r.app : ''}`));
    out.appendChild(h('div', { class: 'tiles' },
      kpi('Calls', fmtNum(r.calls)), kpi('Errors', `${fmtNum(r.errors)} (${errRate.toFixed(2)} %)`),
      kpi('Avg response', fmtMs(r.avg_ms)), kpi('Peak TPS', fmtNum(r.peak_tps)),
      kpi('Peak hour', r.peak_hour === null ? '–' : `${r.peak_hour}:00`), kpi('Visitors', fmtNum(r.visitors))));
    const hourly = (rep, key) => rep.hourly.map((x) => [x.hour, x[key]]);
    const charts = [
      ['Calls per hour', 'calls', fmtNum, true], ['Peak TPS per hour', 'max_tps', fmtNum, true],
      ['Average response time', 'avg_ms', fmtMs, false], ['Visitors per hour', 'visitors', fmtNum, true], ['Errors per hour', 'errors', fmtNum, true],
    ];
    // A deploy at 14:30 sits half-way between the 14h and 15h points.
    const markers = deploys.map((x) => {
      const t = new Date(x.ts_ms);
      return { x: Math.min(23, t.getHours() + t.getMinutes() / 60), label: `${x.app} ${x.version}` };
    });
    const grid = h('div', { class: 'report-charts' });
    out.appendChild(grid);
    for (const [title, key, fmt, integer] of charts) {
      const canvas = h('canvas', { class: 'chart small-chart' });
      grid.appendChild(h('div', { class: 'panel' }, h('h3', {}, title), canvas));
      requestAnimationFrame(() => lineChart(canvas, [
        { label: r.date, points: hourly(r, key), color: '#2f7ed8', width: 2 },
        { label: c.date, points: hourly(c, key), color: '#999', dash: true },
      ], { xMin: 0, xMax: 23, xFmt: (v) => `${Math.round(v)}h`, yFmt: fmt, legend: true, integer, markers }));
    }
    if (deploys.length) {
      out.appendChild(h('div', { class: 'panel' }, h('h3', {}, 'Deploys'),
        h('table', { class: 'grid', id: 'report-deploys' },
          h('thead', {}, h('tr', {}, ['Time', 'App', 'Version', 'By', 'Description'].map((x) => h('th', {}, x)))),
          h('tbody', {}, deploys.map((x) => h('tr', {},
            h('td', {}, fmtTime(x.ts_ms)), h('td', {}, x.app), h('td', {}, x.version),
            h('td', {}, x.user), h('td', {}, x.description)))))));
    }
    const rows = [{ date: r.date, calls: r.calls, errors: r.errors, avg_ms: r.avg_ms, peak_tps: r.peak_tps, visitors: r.visitors, self: true }, ...r.compare];
    out.appendChild(h('div', { class: 'panel' }, h('h3', {}, 'Comparison'),
      h('table', { class: 'grid', id: 'report-compare' },
        h('thead', {}, h('tr', {}, ['Day', 'Calls', 'Δ calls', 'Errors', 'Avg', 'Peak TPS', 'Visitors'].map((x) => h('th', {}, x)))),
        h('tbody', {}, rows.map((x) => h('tr', { class: x.self ? 'self' : undefined },
          h('td', {}, x.date), h('td', { class: 'num' }, fmtNum(x.calls)),
          h('td', { class: 'num' }, x.self || !x.calls ? '' : `${(((r.calls - x.calls) / x.calls) * 100).toFixed(1)} %`),
          h('td', { class: 'num' }, fmtNum(x.errors)), h('td', { class: 'num' }, fmtMs(x.avg_ms)),
          h('td', { class: 'num' }, fmtNum(x.peak_tps)), h('td', { class: 'num' }, fmtNum(x.visitors))))))));
  }

  load();
}

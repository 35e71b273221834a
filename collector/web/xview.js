// X-View: every transaction as a point (x = end time, y = response time,
// errors red) from /api/v1/transactions, scrolling live; drag a rectangle
// to list the transactions inside it, click one to open its profile.
// Points live in typed arrays and are drawn pixel by pixel into one
// ImageData, so 100,000 points draw in a few milliseconds.
import { api, h, clear, fmtMs, fmtTime, table, setHashParams, errorBox } from './lib.js';
import { niceScale, timeLabel } from './chart.js';

const LIVE_SPAN_MS = 5 * 60 * 1000;
const POLL_MS = 2000;
const LIMIT = 200000;
const PAD = { l: 56, r: 12, t: 10, b: 24 };

class Points {
  constructor() { this.n = 0; this.cap = 0; this.ts = null; this.el = null; this.err = null; this.rows = []; this.ids = new Set(); this.grow(1024); }
  grow(cap) {
    const ts = new Float64Array(cap), el = new Float32Array(cap), err = new Uint8Array(cap);
    if (this.ts) { ts.set(this.ts.subarray(0, this.n)); el.set(this.el.subarray(0, this.n)); err.set(this.err.subarray(0, this.n)); }
    this.ts = ts; this.el = el; this.err = err; this.cap = cap;
  }
  add(t) {
    if (this.ids.has(t.id)) return;
    if (this.n === this.cap) this.grow(this.cap * 2);
    const i = this.n++;
    this.ts[i] = t.ts_ms; this.el[i] = t.elapsed_ms; this.err[i] = t.error ? 1 : 0;
    this.rows[i] = t; this.ids.add(t.id);
  }
  /** Drops points that ended before fromMs. */
  prune(fromMs) {
    let j = 0;
    for (let i = 0; i < this.n; i++) {
      if (this.ts[i] >= fromMs) {
        if (i !== j) { this.ts[j] = this.ts[i]; this.el[j] = this.el[i]; this.err[j] = this.err[i]; this.rows[j] = this.rows[i]; }
        j++;
      } else this.ids.delete(this.rows[i].id);
    }
    this.n = j; this.rows.length = j;
  }
  clear() { this.n = 0; this.rows = []; this.ids = new Set(); }
}

export function mount(el, ctx) {
  const params = { ...ctx.params };
  let live = !(params.from && params.to) || params.live === '1';
  let range = live ? { from: Date.now() - LIVE_SPAN_MS, to: Date.now() } : { from: +params.from, to: +params.to };
  let sel = params.sel ? params.sel.split(',').map(Number) : null; // [t0, t1, e0, e1]
  const pts = new Points();
  let yMax = 1, truncated = false, pollTimer = null, frame = 0, lastTo = 0, dead = false;

  const canvas = h('canvas', { id: 'xview-canvas', class: 'xview-canvas', dataset: { points: '0' } });
  const rect = h('div', { class: 'drag-rect', hidden: true });
  const wrap = h('div', { class: 'xview-wrap' }, canvas, rect);
  const info = h('span', { class: 'muted', id: 'xview-info' });
  const list = h('div', { id: 'xview-list' });
  const inp = (name, attrs) => h('input', { name, value: params[name] || '', ...attrs });
  const fEndpoint = inp('endpoint', { placeholder: 'endpoint, e.g. /api/v6/photos', size: 24 });
  const fHost = inp('host', { placeholder: 'server', size: 12 });
  const fMin = inp('min', { placeholder: 'min ms', size: 6, type: 'number' });
  const fMax = inp('max', { placeholder: 'max ms', size: 6, type: 'number' });
  const fErr = h('input', { type: 'checkbox', name: 'errors', checked: params.errors === '1' });
  const toLocal = (ms) => { const d = new Date(ms - new Date(ms).getTimezoneOffset() * 60000); return d.toISOString().slice(0, 19); };
  const fFrom = h('input', { type: 'datetime-local', step: 1, value: toLocal(range.from) });
  const fTo = h('input', { type: 'datetime-local', step: 1, value: toLocal(range.to) });
  const liveBtn = h('button', { type: 'button', id: 'xview-live' }, live ? 'Pause' : 'Live');

  el.appendChild(h('section', { class: 'xview' },
    h('div', { class: 'page-head' }, h('h2', {}, 'X-View'), info),
    h('form', { class: 'toolbar', onsubmit: (e) => { e.preventDefault(); applyFilters(); } },
      fEndpoint, fHost, fMin, fMax, h('label', {}, fErr, ' errors only'),
      h('button', { type: 'submit' }, 'Apply'),
      h('span', { class: 'sep' }),
      fFrom, '–', fTo, h('button', { type: 'button', onclick: () => showRange() }, 'Show range'), liveBtn),
    wrap,
    h('p', { class: 'muted small' }, 'Drag a rectangle over points to list those transactions; click one to open its profile.'),
    list));

  function filters() {
    return {
      app: ctx.app, host: fHost.value.trim() || ctx.host, endpoint: fEndpoint.value.trim(),
      min_ms: fMin.value, max_ms: fMax.value, errors_only: fErr.checked ? 'true' : '',
    };
  }
  function saveHash() {
    setHashParams('xview', {
      endpoint: fEndpoint.value.trim(), host: fHost.value.trim(), min: fMin.value, max: fMax.value,
      errors: fErr.checked ? '1' : '', from: live ? '' : range.from, to: live ? '' : range.to,
      sel: sel ? sel.map((v) => Math.round(v * 1000) / 1000).join(',') : '',
    });
  }

  async function load(from, to, replace) {
    const r = await api('/transactions', { ...filters(), from: Math.floor(from), to: Math.ceil(to), limit: LIMIT });
    if (dead) return;
    if (replace) pts.clear();
    truncated = r.truncated;
    for (const t of r.transactions) pts.add(t);
    lastTo = to;
  }

  async function reload() {
    try {
      await load(range.from, range.to, true);
      draw();
      if (sel) listSelection();
    } catch (e) { list.prepend(errorBox(e)); }
  }

  async function poll() {
    if (!live || dead) return;
    const now = Date.now();
    range = { from: now - LIVE_SPAN_MS, to: now };
    try {
      // Overlap the previous poll: transactions reach the collector a
      // moment after they end.
      await load(Math.max(range.from, lastTo - 15000), now, false);
      pts.prune(range.from);
    } catch (e) { console.warn(e); }
    pollTimer = setTimeout(poll, POLL_MS);
  }

  function animate() {
    if (dead) return;
    if (live) { range = { from: Date.now() - LIVE_SPAN_MS, to: Date.now() }; draw(); }
    frame = setTimeout(() => requestAnimationFrame(animate), 250);
  }

  function draw() {
    const t0 = performance.now();
    const dpr = window.devicePixelRatio || 1;
    const W = Math.max(100, Math.round(canvas.clientWidth * dpr)), H = Math.max(100, Math.round(canvas.clientHeight * dpr));
    if (canvas.width !== W || canvas.height !== H) { canvas.width = W; canvas.height = H; }
    const g = canvas.getContext('2d');
    g.setTransform(1, 0, 0, 1, 0, 0);
    g.clearRect(0, 0, W, H);
    const pl = Math.round(PAD.l * dpr), pr = Math.round(PAD.r * dpr), pt = Math.round(PAD.t * dpr), pb = Math.round(PAD.b * dpr);
    const pw = W - pl - pr, ph = H - pt - pb;
    let maxEl = 0;
    const { from, to } = range;
    for (let i = 0; i < pts.n; i++) if (pts.ts[i] >= from && pts.ts[i] <= to && pts.el[i] > maxEl) maxEl = pts.el[i];
    const fixedMax = +fMax.value;
    yMax = niceScale(fixedMax > 0 ? fixedMax : Math.max(maxEl, 10), 5).max;
    const img = g.createImageData(pw, ph);
    const buf = new Uint32Array(img.data.buffer);
    // Little-endian ABGR.
    const BLUE = 0xffd87e2f, RED = 0xff2b36d9;
    const sx = pw / Math.max(1, to - from), sy = ph / yMax;
    const s = Math.max(2, Math.round(2 * dpr));
    let drawn = 0;
    for (let pass = 0; pass < 2; pass++) {
      const color = pass ? RED : BLUE;
      for (let i = 0; i < pts.n; i++) {
        if (pts.err[i] !== pass) continue;
        const t = pts.ts[i];
        if (t < from || t > to) continue;
        const x = ((t - from) * sx) | 0;
        let y = (ph - 1 - pts.el[i] * sy) | 0;
        if (y < 0) y = 0;
        drawn++;
        for (let dy = 0; dy < s; dy++) {
          const row = y + dy - (s >> 1);
          if (row < 0 || row >= ph) continue;
          const base = row * pw;
          for (let dx = 0; dx < s; dx++) {
            const col = x + dx - (s >> 1);
            if (col >= 0 && col < pw) buf[base + col] = color;
          }
        }
      }
    }
    g.putImageData(img, pl, pt);
    // Axes over the points, in CSS pixels.
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    const w = W / dpr, hh = H / dpr;
    g.strokeStyle = '#bbb'; g.lineWidth = 1;
    g.strokeRect(PAD.l + 0.5, PAD.t + 0.5, w - PAD.l - PAD.r, hh - PAD.t - PAD.b);
    g.fillStyle = '#555'; g.font = '11px system-ui, sans-serif';
    g.textAlign = 'right'; g.textBaseline = 'middle';
    const ys = niceScale(yMax, 5);
    for (let v = 0; v <= ys.max + 1e-9; v += ys.step) {
      const y = PAD.t + (hh - PAD.t - PAD.b) * (1 - v / yMax);
      g.fillText(fmtMs(v), PAD.l - 4, y);
    }
    g.textAlign = 'center'; g.textBaseline = 'top';
    const n = Math.max(2, Math.floor((w - PAD.l - PAD.r) / 100));
    for (let i = 0; i <= n; i++) {
      const v = from + ((to - from) * i) / n;
      g.fillText(timeLabel(v, to - from), PAD.l + ((w - PAD.l - PAD.r) * i) / n, hh - PAD.b + 6);
    }
    if (sel) {
      const [a, b, c, d] = sel;
      const X = (t) => PAD.l + ((t - from) / (to - from)) * (w - PAD.l - PAD.r);
      const Y = (e) => PAD.t + (hh - PAD.t - PAD.b) * (1 - e / yMax);
      g.strokeStyle = '#222'; g.setLineDash([4, 3]);
      g.strokeRect(X(a), Y(d), X(b) - X(a), Y(c) - Y(d));
      g.setLineDash([]);
    }
    const ms = performance.now() - t0;
    canvas.dataset.points = String(drawn);
    canvas.dataset.drawMs = ms.toFixed(1);
    info.textContent = `${drawn.toLocaleString()} transactions${truncated ? ' (capped: narrow the range)' : ''} · ${live ? 'live' : 'paused'} · drawn in ${ms.toFixed(1)} ms`;
  }

  // Dragging a selection.
  let drag = null;
  const toData = (px, py) => {
    const w = canvas.clientWidth, hh = canvas.clientHeight;
    const t = range.from + ((px - PAD.l) / (w - PAD.l - PAD.r)) * (range.to - range.from);
    const e = (1 - (py - PAD.t) / (hh - PAD.t - PAD.b)) * yMax;
    return [t, e];
  };
  canvas.addEventListener('mousedown', (ev) => {
    const b = canvas.getBoundingClientRect();
    drag = { x: ev.clientX - b.left, y: ev.clientY - b.top };
    Object.assign(rect.style, { left: drag.x + 'px', top: drag.y + 'px', width: '0px', height: '0px' });
    rect.hidden = false;
    ev.preventDefault();
  });
  const onMove = (ev) => {
    if (!drag) return;
    const b = canvas.getBoundingClientRect();
    const x = ev.clientX - b.left, y = ev.clientY - b.top;
    Object.assign(rect.style, {
      left: Math.min(x, drag.x) + 'px', top: Math.min(y, drag.y) + 'px',
      width: Math.abs(x - drag.x) + 'px', height: Math.abs(y - drag.y) + 'px',
    });
  };
  const onUp = (ev) => {
    if (!drag) return;
    const b = canvas.getBoundingClientRect();
    const x = ev.clientX - b.left, y = ev.clientY - b.top;
    rect.hidden = true;
    const start = drag; drag = null;
    if (Math.abs(x - start.x) < 4 && Math.abs(y - start.y) < 4) return;
    const [ta, ea] = toData(start.x, start.y), [tb, eb] = toData(x, y);
    sel = [Math.min(ta, tb), Math.max(ta, tb), Math.max(0, Math.min(ea, eb)), Math.max(ea, eb)];
    if (live) pause();
    saveHash();
    draw();
    listSelection();
  };
  window.addEventListener('mousemove', onMove);
  window.addEventListener('mouseup', onUp);

  function listSelection() {
    clear(list);
    if (!sel) return;
    const [a, b, c, d] = sel;
    const rows = [];
    for (let i = 0; i < pts.n; i++) {
      if (pts.ts[i] >= a && pts.ts[i] <= b && pts.el[i] >= c && pts.el[i] <= d) rows.push(pts.rows[i]);
    }
    list.appendChild(h('div', { class: 'page-head' },
      h('h3', { id: 'xview-selected', dataset: { count: String(rows.length) } }, `${rows.length.toLocaleString()} selected`),
      h('span', { class: 'muted' }, `${fmtTime(a, true)} – ${fmtTime(b)}, ${fmtMs(c)} – ${fmtMs(d)}`),
      h('button', { type: 'button', onclick: () => { sel = null; saveHash(); clear(list); draw(); } }, 'Clear selection')));
    const shown = rows.length > 2000 ? rows.slice(-2000) : rows;
    if (shown.length < rows.length) list.appendChild(h('p', { class: 'muted' }, `Showing the latest 2,000 of ${rows.length.toLocaleString()}.`));
    list.appendChild(table([
      { key: 'ts_ms', label: 'End', fmt: (v) => fmtTime(v, true) },
      { key: 'elapsed_ms', label: 'Elapsed', num: true, fmt: fmtMs },
      { key: 'endpoint', label: 'Endpoint' },
      { key: 'host', label: 'Server' },
      { key: 'app', label: 'App' },
      { key: 'status', label: 'Status', num: true },
      { key: 'error', label: 'Error', fmt: (v) => (v ? 'yes' : '') },
    ], shown, {
      sortKey: 'ts_ms',
      onRow: (r) => { location.hash = '#/tx/' + r.id; },
      rowAttrs: (r) => ({ class: r.error ? 'err' : undefined, dataset: { id: r.id } }),
    }));
  }

  function pause() {
    live = false;
    clearTimeout(pollTimer);
    liveBtn.textContent = 'Live';
    fFrom.value = toLocal(range.from); fTo.value = toLocal(range.to);
  }
  function goLive() {
    live = true; sel = null; clear(list);
    liveBtn.textContent = 'Pause';
    range = { from: Date.now() - LIVE_SPAN_MS, to: Date.now() };
    saveHash();
    reload().then(() => { pollTimer = setTimeout(poll, POLL_MS); });
  }
  liveBtn.addEventListener('click', () => { if (live) { pause(); saveHash(); draw(); } else goLive(); });
  function showRange() {
    const from = new Date(fFrom.value).getTime(), to = new Date(fTo.value).getTime();
    if (!(from < to)) return;
    pause(); range = { from, to }; sel = null; clear(list); saveHash(); reload();
  }
  function applyFilters() { sel = null; clear(list); saveHash(); reload(); }

  const onResize = () => draw();
  window.addEventListener('resize', onResize);
  reload().then(() => { if (live) pollTimer = setTimeout(poll, POLL_MS); });
  animate();

  // For benchmarks and tests: draw n synthetic points over the range.
  window.sondeXviewSynthetic = (n) => {
    pause(); pts.clear();
    const now = Date.now(); range = { from: now - 300000, to: now };
    for (let i = 0; i < n; i++) pts.add({ id: 's' + i, ts_ms: now - Math.random() * 300000, elapsed_ms: Math.random() * Math.random() * 3000, error: Math.random() < 0.01 });
    const t0 = performance.now(); draw(); return performance.now() - t0;
  };

  return () => {
    dead = true;
    clearTimeout(pollTimer); clearTimeout(frame);
    window.removeEventListener('mousemove', onMove);
    window.removeEventListener('mouseup', onUp);
    window.removeEventListener('resize', onResize);
    delete window.sondeXviewSynthetic;
  };
}


// Hand-drawn canvas charts (no library): time-series lines and bars with
// axes. Sizes follow the canvas's CSS box and the device pixel ratio.

export const COLORS = ['#2f7ed8', '#e4572e', '#76b041', '#9b59b6', '#f0a30a', '#17a2b8'];

/** Sizes the canvas backing store to its CSS box; returns {ctx, w, h}. */
export function fit(canvas) {
  const dpr = window.devicePixelRatio || 1;
  const w = Math.max(10, canvas.clientWidth);
  const h = Math.max(10, canvas.clientHeight);
  if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
  }
  const ctx = canvas.getContext('2d');
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  return { ctx, w, h };
}

/** A "nice" upper bound and step for an axis up to max. */
export function niceScale(max, ticks = 4) {
  if (!(max > 0)) return { max: 1, step: 0.25 };
  const raw = max / ticks;
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
  return { max: Math.ceil(max / step) * step, step };
}

export function timeLabel(ms, spanMs) {
  const d = new Date(ms);
  const p = (n) => String(n).padStart(2, '0');
  if (spanMs <= 10 * 60 * 1000) return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
  if (spanMs <= 2 * 86400 * 1000) return `${p(d.getHours())}:${p(d.getMinutes())}`;
  return `${d.getMonth() + 1}/${d.getDate()}`;
}

/**
 * Line chart. series: [{label, color, points: [[x, y], ...], dash}].
 * opts: {xMin, xMax, yMax, yFmt, xFmt, bars, markers: [{x, label, title}]}
 * Markers (deployments) are dashed vertical lines with a label; the
 * canvas's data-markers says how many were drawn.
 */
export function lineChart(canvas, series, opts = {}) {
  const { ctx, w, h } = fit(canvas);
  const pad = { l: 52, r: 10, t: 10, b: 22 };
  ctx.clearRect(0, 0, w, h);
  const xs = series.flatMap((s) => s.points.map((p) => p[0]));
  const xMin = opts.xMin ?? Math.min(...xs);
  const xMax = opts.xMax ?? Math.max(...xs);
  const yMaxData = Math.max(0, ...series.flatMap((s) => s.points.map((p) => p[1] || 0)));
  let scale = niceScale(opts.yMax ?? yMaxData);
  // Counts: no fractional ticks.
  if (opts.integer && scale.step < 1) scale = { max: Math.max(1, Math.ceil(scale.max)), step: 1 };
  const pw = w - pad.l - pad.r, ph = h - pad.t - pad.b;
  const X = (x) => pad.l + (xMax > xMin ? ((x - xMin) / (xMax - xMin)) * pw : pw / 2);
  const Y = (y) => pad.t + ph - (y / scale.max) * ph;
  ctx.font = '11px system-ui, sans-serif';
  ctx.fillStyle = '#666';
  ctx.strokeStyle = '#e3e3e3';
  ctx.lineWidth = 1;
  ctx.textAlign = 'right';
  ctx.textBaseline = 'middle';
  const yFmt = opts.yFmt || ((v) => String(Math.round(v * 100) / 100));
  for (let v = 0; v <= scale.max + 1e-9; v += scale.step) {
    const y = Math.round(Y(v)) + 0.5;
    ctx.beginPath(); ctx.moveTo(pad.l, y); ctx.lineTo(w - pad.r, y); ctx.stroke();
    ctx.fillText(yFmt(v), pad.l - 4, y);
  }
  ctx.textAlign = 'center';
  ctx.textBaseline = 'top';
  const xFmt = opts.xFmt || ((v) => timeLabel(v, xMax - xMin));
  const nx = Math.max(2, Math.floor(pw / 90));
  for (let i = 0; i <= nx; i++) {
    const v = xMin + ((xMax - xMin) * i) / nx;
    ctx.fillText(xFmt(v), X(v), h - pad.b + 5);
  }
  series.forEach((s, si) => {
    const color = s.color || COLORS[si % COLORS.length];
    if (opts.bars && si === 0) {
      const bw = Math.max(1, pw / Math.max(1, s.points.length) - 1);
      ctx.fillStyle = color;
      for (const [x, y] of s.points) ctx.fillRect(X(x) - bw / 2, Y(y || 0), bw, Y(0) - Y(y || 0));
      return;
    }
    ctx.strokeStyle = color;
    ctx.lineWidth = s.width || 1.5;
    ctx.setLineDash(s.dash ? [5, 4] : []);
    ctx.beginPath();
    let started = false;
    for (const [x, y] of s.points) {
      if (y === null || y === undefined) { started = false; continue; }
      if (!started) { ctx.moveTo(X(x), Y(y)); started = true; } else ctx.lineTo(X(x), Y(y));
    }
    ctx.stroke();
    ctx.setLineDash([]);
  });
  let drawn = 0;
  for (const m of opts.markers || []) {
    if (!(m.x >= xMin && m.x <= xMax)) continue;
    const x = Math.round(X(m.x)) + 0.5;
    ctx.strokeStyle = '#7a3db8';
    ctx.fillStyle = '#7a3db8';
    ctx.lineWidth = 1;
    ctx.setLineDash([3, 3]);
    ctx.beginPath(); ctx.moveTo(x, pad.t); ctx.lineTo(x, h - pad.b); ctx.stroke();
    ctx.setLineDash([]);
    ctx.textAlign = x > w - 80 ? 'right' : 'left';
    ctx.textBaseline = 'top';
    ctx.fillText(m.label || '', x + (x > w - 80 ? -3 : 3), pad.t + 12 + (drawn % 3) * 12);
    drawn++;
  }
  canvas.dataset.markers = String(drawn);
  if (series.length > 1 || opts.legend) {
    ctx.textAlign = 'left';
    ctx.textBaseline = 'top';
    let lx = pad.l + 6;
    series.forEach((s, si) => {
      ctx.fillStyle = s.color || COLORS[si % COLORS.length];
      ctx.fillRect(lx, pad.t + 2, 10, 3);
      ctx.fillStyle = '#444';
      ctx.fillText(s.label || '', lx + 14, pad.t - 2);
      lx += 24 + ctx.measureText(s.label || '').width;
    });
  }
  return { X, Y, pad, xMin, xMax, yMax: scale.max };
}

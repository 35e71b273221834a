// Servers: the registered agents (/api/v1/agents) with status and identity,
// and each host's CPU and memory over the last hour (/api/v1/hosts/series).
import { api, h, clear, fmtBytes, fmtTime, table, errorBox } from './lib.js';
import { lineChart } from './chart.js';

export function mount(el, ctx) {
  const agentsBox = h('div', { id: 'agents' });
  const charts = h('div', { id: 'host-charts', class: 'grid2' });
  el.appendChild(h('section', {}, h('div', { class: 'page-head' }, h('h2', {}, 'Servers')), agentsBox,
    h('h3', {}, 'Last hour'), charts));
  let dead = false;

  async function load() {
    try {
      const { agents } = await api('/agents');
      clear(agentsBox);
      if (!agents.length) {
        agentsBox.appendChild(h('p', { class: 'empty' }, 'No agent has registered yet. Install sonde-agent on each web server, point `collector` in /etc/sonde/agent.toml at this collector, and start it.'));
      } else {
        // One table per Auto Scaling group (then no group), each headed by
        // its apps and status counts: retired instances stay listed as
        // terminated, not as outages.
        const groups = new Map();
        for (const a of agents) {
          const g = a.group ?? '';
          if (!groups.has(g)) groups.set(g, []);
          groups.get(g).push(a);
        }
        const names = [...groups.keys()].sort((x, y) => (x === '') - (y === '') || x.localeCompare(y));
        for (const g of names) {
          const list = groups.get(g);
          const apps = [...new Set(list.flatMap((a) => a.apps))].sort();
          const counts = ['up', 'down', 'stopped', 'terminated']
            .map((st) => [st, list.filter((a) => a.status === st).length])
            .filter(([, n]) => n > 0).map(([st, n]) => `${n} ${st}`).join(' · ');
          agentsBox.appendChild(h('h3', { class: 'server-group', 'data-group': g },
            g ? `Auto Scaling group ${g}` : 'No Auto Scaling group',
            h('span', { class: 'muted' }, ` — ${counts}${apps.length ? ' — apps: ' + apps.join(', ') : ''}`)));
          agentsBox.appendChild(table([
            { key: 'hostname', label: 'Host' },
            { key: 'status', label: 'Status', fmt: (v) => h('span', { class: 'badge ' + (v === 'up' ? 'ok' : v === 'down' ? 'bad' : 'warn') }, v) },
            { key: 'flags', label: 'Flags', fmt: (_, a) => flags(a) },
            { key: 'instance_id', label: 'Instance' }, { key: 'ami_id', label: 'AMI' }, { key: 'zone', label: 'Zone' },
            { key: 'versions', label: 'Versions', fmt: (v) => `agent ${v.agent} · ext ${v.extension || '–'} · PHP ${v.php || '–'}` },
            { key: 'apps', label: 'Apps', fmt: (v) => v.join(', ') },
            { key: 'clock_skew_ms', label: 'Clock', fmt: (v) => v == null ? '–' : `${v > 0 ? '+' : ''}${v} ms` },
            { key: 'counters', label: 'Dropped', fmt: (v) => v == null ? '–' : String(v.records_dropped + v.ext_records_dropped) },
            { key: 'last_seen_ms', label: 'Last seen', fmt: (v) => fmtTime(v, true) },
          ], list, { sortKey: 'hostname', desc: false }));
        }
      }
      const to = Date.now();
      const { hosts } = await api('/hosts/series', { from: to - 3600e3, to, host: ctx.host });
      if (dead) return;
      clear(charts);
      if (!hosts.length) charts.appendChild(h('p', { class: 'muted' }, 'No host metrics in the last hour.'));
      for (const s of hosts) {
        const cpu = h('canvas', { class: 'chart' }), mem = h('canvas', { class: 'chart' });
        charts.appendChild(h('div', { class: 'panel' }, h('h3', {}, `${s.host} — CPU %`), cpu));
        charts.appendChild(h('div', { class: 'panel' }, h('h3', {}, `${s.host} — memory`), mem));
        requestAnimationFrame(() => {
          lineChart(cpu, [{ label: 'CPU %', points: s.points.map((p) => [p.ts_ms, p.cpu_percent]) }], { xMin: to - 3600e3, xMax: to, yMax: 100 });
          lineChart(mem, [{ label: 'used', points: s.points.map((p) => [p.ts_ms, p.mem_used_bytes]) },
            { label: 'total', points: s.points.map((p) => [p.ts_ms, p.mem_total_bytes]), color: '#999', dash: true }],
          { xMin: to - 3600e3, xMax: to, yFmt: fmtBytes });
        });
      }
    } catch (e) { agentsBox.appendChild(errorBox(e)); }
  }
  /** Badges for what needs a look: a duplicate identity, an identity that
   * did not verify, a clock more than 2 s off. Captured text goes in as
   * text nodes (h() never parses HTML). */
  function flags(a) {
    const out = [];
    if (a.duplicate_of) out.push(h('span', { class: 'badge bad', title: `another live agent (${a.duplicate_of}) holds this identity` }, 'duplicate'));
    if (a.identity_verified === false) out.push(h('span', { class: 'badge bad', title: 'its signed instance identity did not verify' }, 'unverified'));
    if (a.clock_skew_ms != null && Math.abs(a.clock_skew_ms) > 2000) out.push(h('span', { class: 'badge warn', title: 'its clock is off' }, 'clock'));
    return out.length ? h('span', {}, ...out) : '';
  }

  load();
  const timer = setInterval(load, 30000);
  return () => { dead = true; clearInterval(timer); };
}

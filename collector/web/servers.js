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
        agentsBox.appendChild(table([
          { key: 'hostname', label: 'Host' },
          { key: 'status', label: 'Status', fmt: (v) => h('span', { class: 'badge ' + (v === 'up' ? 'ok' : v === 'down' ? 'bad' : 'warn') }, v) },
          { key: 'instance_id', label: 'Instance' }, { key: 'ami_id', label: 'AMI' },
          { key: 'group', label: 'Group', fmt: (v) => v ?? '–' }, { key: 'zone', label: 'Zone' },
          { key: 'versions', label: 'Versions', fmt: (v) => `agent ${v.agent} · ext ${v.extension || '–'} · PHP ${v.php || '–'}` },
          { key: 'apps', label: 'Apps', fmt: (v) => v.join(', ') },
          { key: 'last_seen_ms', label: 'Last seen', fmt: (v) => fmtTime(v, true) },
        ], agents, { sortKey: 'hostname', desc: false }));
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
  load();
  const timer = setInterval(load, 30000);
  return () => { dead = true; clearInterval(timer); };
}

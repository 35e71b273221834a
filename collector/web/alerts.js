// Alerts: every rule in force or not (/api/v1/alerts/rules) with where it
// comes from — the config file and the built-in rules read-only, console
// rules editable here (POST/PUT/DELETE) — the channels with their delivery
// state and a "Send test" button (/api/v1/alerts/channels,
// POST /api/v1/alerts/test), and the deploy markers with a form to record
// one (/api/v1/deploys). The server refuses changes from read-only users.
import { api, send, h, clear, fmtTime, table, errorBox } from './lib.js';

// What `threshold` means per kind (docs/alerts.md).
const UNITS = {
  error_rate: '% of calls failing', error_count: 'failed calls (0 = any)', response_time: 'ms',
  tps_drop: '% below the baseline', tps_surge: '% above the baseline',
  stuck_requests: 'requests in the slowest bucket (0 = any)', sql_errors: 'failed SQL statements (0 = any)',
  agent_down: 'unused', host_cpu: '% CPU', host_memory: '% memory', host_disk: '% of the fullest disk',
};
const FIELDS = ['name', 'kind', 'level', 'threshold', 'stat', 'window_secs', 'min_tps', 'by', 'app', 'endpoint',
  'host', 'compare', 'compare_minutes', 'for_checks', 'silence_secs', 'channels', 'enabled'];

export function mount(el, ctx) {
  const rulesBox = h('div', { id: 'rules' });
  const channelsBox = h('div', { id: 'channels' });
  const deploysBox = h('div', { id: 'alert-deploys' });
  const msg = h('p', { id: 'alerts-msg', class: 'error' });
  const formTitle = h('h3', {}, 'New console rule');
  const inputs = {};
  const field = (name, input, hint) => {
    inputs[name] = input;
    return h('label', { class: 'field' }, h('span', {}, name), input, hint ? h('small', { class: 'muted' }, hint) : null);
  };
  const select = (name, values) => h('select', { name }, values.map((v) => h('option', { value: v }, v)));
  const num = (name, value, step = '1') => h('input', { name, type: 'number', step, min: '0', value: String(value) });
  const unit = h('small', { class: 'muted', id: 'threshold-unit' });
  const kindSel = select('kind', Object.keys(UNITS));
  kindSel.addEventListener('change', () => { unit.textContent = UNITS[kindSel.value] || ''; });
  let editing = null;
  const form = h('form', { id: 'rule-form', class: 'rule-form', onsubmit: save },
    field('name', h('input', { name: 'name', required: true, placeholder: 'checkout-errors' })),
    field('kind', kindSel),
    field('level', select('level', ['critical', 'warning'])),
    h('label', { class: 'field' }, h('span', {}, 'threshold'), (inputs.threshold = num('threshold', 5, 'any')), unit),
    field('stat', select('stat', ['p90', 'avg']), 'response_time'),
    field('window_secs', num('window_secs', 60), '1–60 s'),
    field('min_tps', num('min_tps', 1, 'any')),
    field('by', select('by', ['app', 'endpoint', 'host'])),
    field('app', h('input', { name: 'app', placeholder: 'all' })),
    field('endpoint', h('input', { name: 'endpoint', placeholder: '/api/v6/* (all)' })),
    field('host', h('input', { name: 'host', placeholder: 'all' })),
    field('compare', select('compare', ['minutes', 'week']), 'TPS rules'),
    field('compare_minutes', num('compare_minutes', 10), 'TPS rules'),
    field('for_checks', num('for_checks', 1)),
    field('silence_secs', num('silence_secs', 600)),
    field('channels', h('input', { name: 'channels', placeholder: 'all (comma-separated names)' })),
    field('enabled', h('input', { name: 'enabled', type: 'checkbox', checked: true })),
    h('div', { class: 'form-buttons' }, h('button', { type: 'submit', id: 'rule-save' }, 'Save rule'),
      h('button', { type: 'button', onclick: () => fill(null) }, 'Clear')));
  unit.textContent = UNITS[kindSel.value];

  const depApp = h('input', { name: 'app', placeholder: 'app', required: true });
  const depVersion = h('input', { name: 'version', placeholder: 'version', required: true });
  const depDesc = h('input', { name: 'description', placeholder: 'description' });
  const depForm = h('form', { id: 'deploy-form', class: 'toolbar', onsubmit: async (e) => {
    e.preventDefault(); msg.textContent = '';
    try {
      await send('POST', '/deploys', { app: depApp.value, version: depVersion.value, description: depDesc.value });
      depVersion.value = ''; depDesc.value = '';
      loadDeploys();
    } catch (err) { msg.textContent = err.message; }
  } }, depApp, depVersion, depDesc, h('button', { type: 'submit' }, 'Record deploy'));

  el.appendChild(h('section', { class: 'alerts-page' },
    h('div', { class: 'page-head' }, h('h2', {}, 'Alerts')),
    h('p', { class: 'muted', id: 'precedence' }),
    msg,
    h('div', { class: 'panel' }, h('h3', {}, 'Rules'), rulesBox),
    h('div', { class: 'panel' }, formTitle, form),
    h('div', { class: 'panel' }, h('h3', {}, 'Channels'), channelsBox),
    h('div', { class: 'panel' }, h('h3', {}, 'Deploys (last 7 days)'), depForm, deploysBox)));

  function fill(rule) {
    editing = rule ? rule.name : null;
    formTitle.textContent = rule ? `Edit console rule ${rule.name}` : 'New console rule';
    const d = rule || { name: '', kind: 'error_rate', level: 'critical', threshold: 5, stat: 'p90', window_secs: 60, min_tps: 1,
      by: 'app', app: '', endpoint: '', host: '', compare: 'minutes', compare_minutes: 10, for_checks: 1, silence_secs: 600,
      channels: [], enabled: true };
    for (const f of FIELDS) {
      const i = inputs[f];
      if (f === 'enabled') i.checked = !!d.enabled;
      else if (f === 'channels') i.value = (d.channels || []).join(', ');
      else i.value = d[f] ?? '';
    }
    inputs.name.disabled = !!rule;
    unit.textContent = UNITS[kindSel.value] || '';
  }

  async function save(e) {
    e.preventDefault(); msg.textContent = '';
    const rule = {};
    for (const f of FIELDS) {
      const i = inputs[f];
      if (f === 'enabled') rule.enabled = i.checked;
      else if (f === 'channels') rule.channels = i.value.split(',').map((x) => x.trim()).filter(Boolean);
      else if (i.type === 'number') rule[f] = Number(i.value);
      else rule[f] = i.value.trim();
    }
    try {
      if (editing) await send('PUT', '/alerts/rules/' + encodeURIComponent(editing), rule);
      else await send('POST', '/alerts/rules', rule);
      fill(null);
      loadRules();
    } catch (err) { msg.textContent = err.message; }
  }

  const badge = (text, cls) => h('span', { class: 'badge ' + cls }, text);
  async function loadRules() {
    try {
      const r = await api('/alerts/rules');
      el.querySelector('#precedence').textContent =
        `Precedence by rule name: ${r.precedence.join(' > ')}. The config file wins: a console rule with the name of a ` +
        'file rule is kept but not in force. A console rule replaces a built-in rule of the same name; ' +
        'a disabled one switches it off.';
      clear(rulesBox);
      rulesBox.appendChild(table([
        { key: 'name', label: 'Name' },
        { key: 'source', label: 'Source', fmt: (v) => badge(v, v === 'console' ? 'ok' : '') },
        { key: 'effective', label: 'Status', fmt: (v, x) => v ? badge('in force', 'ok')
          : x.overridden_by ? badge(`overridden by ${x.overridden_by}`, 'warn') : badge('disabled', '') },
        { key: 'kind', label: 'Kind' }, { key: 'level', label: 'Level' },
        { key: 'threshold', label: 'Threshold', num: true },
        { key: 'by', label: 'Scope', fmt: (v, x) => [v, x.app, x.endpoint, x.host].filter(Boolean).join(' · ') },
        { key: 'window_secs', label: 'Window', num: true, fmt: (v) => v + ' s' },
        { key: 'channels', label: 'Channels', fmt: (v) => v.length ? v.join(', ') : 'all' },
        { key: 'updated_by', label: 'Changed', fmt: (v, x) => v ? `${v}, ${fmtTime(x.updated_ms, true)}` : '' },
        { key: 'editable', label: '', fmt: (v, x) => v ? h('span', {},
          h('button', { type: 'button', class: 'rule-edit', onclick: (ev) => { ev.stopPropagation(); fill(x); } }, 'Edit'), ' ',
          h('button', { type: 'button', class: 'rule-delete', onclick: async (ev) => {
            ev.stopPropagation(); msg.textContent = '';
            try { await send('DELETE', '/alerts/rules/' + encodeURIComponent(x.name)); loadRules(); } catch (err) { msg.textContent = err.message; }
          } }, 'Delete')) : h('span', { class: 'muted' }, 'read-only') },
      ], r.rules, { sortKey: 'name', desc: false, rowAttrs: (x) => ({ dataset: { rule: x.name, source: x.source } }) }));
    } catch (e) { clear(rulesBox); rulesBox.appendChild(errorBox(e)); }
  }

  async function loadChannels() {
    try {
      const r = await api('/alerts/channels');
      clear(channelsBox);
      if (!r.channels.length) {
        channelsBox.appendChild(h('p', { class: 'muted' }, 'No channels: add [[alerts.webhooks]] or [[alerts.email]] to the collector config.'));
        return;
      }
      channelsBox.appendChild(table([
        { key: 'name', label: 'Name' }, { key: 'kind', label: 'Kind' }, { key: 'target', label: 'Target' },
        { key: 'sent', label: 'Sent', num: true }, { key: 'failed_attempts', label: 'Failed attempts', num: true },
        { key: 'gave_up', label: 'Given up', num: true }, { key: 'dropped', label: 'Dropped', num: true },
        { key: 'last_sent_ms', label: 'Last sent', fmt: (v) => v ? fmtTime(v, true) : '–' },
        { key: 'last_error', label: 'Last error', fmt: (v, x) => v ? h('span', { class: 'error' }, `${v} (${fmtTime(x.last_error_ms, true)})`) : '–' },
        { key: 'name', label: '', fmt: (v) => h('button', { type: 'button', class: 'send-test', onclick: async (ev) => {
          ev.stopPropagation(); msg.textContent = '';
          try { await send('POST', '/alerts/test?channel=' + encodeURIComponent(v)); ev.target.textContent = 'Queued'; setTimeout(loadChannels, 2000); } catch (err) { msg.textContent = err.message; }
        } }, 'Send test') },
      ], r.channels, { sortKey: 'name', desc: false }));
    } catch (e) { clear(channelsBox); channelsBox.appendChild(errorBox(e)); }
  }

  async function loadDeploys() {
    try {
      const r = await api('/deploys', { from: Date.now() - 7 * 86400000, to: Date.now() + 60000, app: ctx.app });
      clear(deploysBox);
      if (!r.deploys.length) { deploysBox.appendChild(h('p', { class: 'muted' }, 'None recorded.')); return; }
      deploysBox.appendChild(table([
        { key: 'ts_ms', label: 'Time', fmt: (v) => fmtTime(v, true) }, { key: 'app', label: 'App' },
        { key: 'version', label: 'Version' }, { key: 'user', label: 'By' }, { key: 'description', label: 'Description' },
      ], r.deploys, { sortKey: 'ts_ms' }));
    } catch (e) { clear(deploysBox); deploysBox.appendChild(errorBox(e)); }
  }

  fill(null);
  loadRules();
  loadChannels();
  loadDeploys();
  const timer = setInterval(loadChannels, 10000);
  return () => clearInterval(timer);
}

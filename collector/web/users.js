// Console users (admins only): list, create, delete. The server refuses
// read-only users whatever this page shows.
import { api, send, h, clear, fmtTime, table, errorBox } from './lib.js';

export function mount(el, ctx) {
  const box = h('div', { id: 'users' });
  const msg = h('p', { id: 'users-msg', class: 'error' });
  const name = h('input', { name: 'name', placeholder: 'user name', required: true });
  const pw = h('input', { name: 'password', type: 'password', placeholder: 'password', required: true });
  const role = h('select', { name: 'role' }, h('option', { value: 'read-only' }, 'read-only'), h('option', { value: 'admin' }, 'admin'));
  el.appendChild(h('section', {}, h('div', { class: 'page-head' }, h('h2', {}, 'Users')),
    h('form', { class: 'toolbar', id: 'user-form', onsubmit: async (e) => {
      e.preventDefault(); msg.textContent = '';
      try { await send('POST', '/users', { name: name.value, password: pw.value, role: role.value }); name.value = ''; pw.value = ''; load(); } catch (err) { msg.textContent = err.message; }
    } }, name, pw, role, h('button', { type: 'submit' }, 'Add user')), msg, box));

  async function load() {
    clear(box);
    try {
      const r = await api('/users');
      box.appendChild(table([
        { key: 'name', label: 'User' }, { key: 'role', label: 'Role' },
        { key: 'created_ms', label: 'Created', fmt: (v) => fmtTime(v, true) },
        { key: 'name', label: '', fmt: (v) => h('button', { type: 'button', onclick: async (e) => {
          e.stopPropagation();
          try { await send('DELETE', '/users/' + encodeURIComponent(v)); load(); } catch (err) { msg.textContent = err.message; }
        } }, 'Delete') },
      ], r.users, { sortKey: 'name', desc: false }));
    } catch (e) {
      box.appendChild(e.status === 403 ? h('p', { class: 'muted' }, e.message) : errorBox(e));
    }
  }
  load();
}

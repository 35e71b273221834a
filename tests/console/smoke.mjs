// Headless-browser smoke test of the Sonde console, against a running
// collector with traffic flowing. Drives Debian's chromium through
// playwright-core (never downloads a browser).
//
//   node smoke.mjs http://127.0.0.1:7718
//
// Env: SONDE_USER / SONDE_PASSWORD (the admin login), SONDE_SHOTS (where
// screenshots go; default a new temp dir), SONDE_CHROMIUM (the browser,
// default /usr/bin/chromium). Prints one JSON line of findings; exits 1 on
// the first failed check.
import { chromium } from 'playwright-core';
import { mkdtempSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const base = (process.argv[2] || 'http://127.0.0.1:7718').replace(/\/$/, '');
const user = process.env.SONDE_USER || 'admin';
const password = process.env.SONDE_PASSWORD || '';
const shots = process.env.SONDE_SHOTS || mkdtempSync(join(tmpdir(), 'sonde-shots-'));
mkdirSync(shots, { recursive: true });
const found = { shots };
const t0 = Date.now();
const step = (name) => { found.steps = found.steps || []; found.steps.push(`${name} @${Date.now() - t0}ms`); };

const browser = await chromium.launch({
  executablePath: process.env.SONDE_CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-dev-shm-usage'],
});
let page;
try {
  const context = await browser.newContext({ viewport: { width: 1400, height: 1000 } });
  page = await context.newPage();
  const consoleErrors = [];
  page.on('pageerror', (e) => consoleErrors.push(String(e)));

  // Log in.
  await page.goto(base + '/');
  if (page.url().includes('/login')) {
    await page.fill('input[name=user]', user);
    await page.fill('input[name=password]', password);
    await Promise.all([page.waitForURL((u) => !u.pathname.startsWith('/login'), { timeout: 20000 }), page.click('button[type=submit]')]);
    step('logged in');
  }

  // Dashboard: live TPS > 0 within a few seconds.
  await page.waitForSelector('#v-tps');
  await page.waitForFunction(() => Number(document.querySelector('#v-tps')?.dataset.tps || 0) > 0, null, { timeout: 15000 });
  const tps = await page.$eval('#v-tps', (e) => ({ tps: Number(e.dataset.tps), from: Number(e.dataset.from), to: Number(e.dataset.to) }));
  found.dashboard = tps;
  await page.waitForSelector('#board .ep', { timeout: 10000 });
  found.board = await page.$$eval('#board .ep', (els) => els.map((e) => [e.querySelector('.ep-name').textContent, e.dataset.level]));
  // Equalizer: a bar with requests in it lists them when clicked.
  const busy = await page.waitForFunction(() => {
    const b = [...document.querySelectorAll('.eq-bar')].find((x) => Number(x.dataset.count) > 0);
    return b ? b.dataset.bucket : null;
  }, null, { timeout: 10000 }).then((h) => h.jsonValue()).catch(() => null);
  if (busy !== null) {
    await page.click(`.eq-bar[data-bucket="${busy}"]`);
    await page.waitForSelector('#active-list table tbody tr', { timeout: 5000 });
    found.active = await page.$$eval('#active-list tbody tr', (rows) => rows.map((r) => r.children[1].textContent));
  }
  await page.screenshot({ path: join(shots, 'dashboard.png'), fullPage: true });
  step('dashboard');

  // X-View: points on the canvas; drag over all of them; open one.
  await page.goto(base + '/#/xview');
  await page.waitForFunction(() => Number(document.querySelector('#xview-canvas')?.dataset.points || 0) > 0, null, { timeout: 15000 });
  const box = await page.$eval('#xview-canvas', (c) => { const r = c.getBoundingClientRect(); return { x: r.x, y: r.y, w: r.width, h: r.height, points: Number(c.dataset.points) }; });
  found.xview_points = box.points;
  // From the canvas's top-left corner to past its bottom-right one, so the
  // rectangle covers every point however fast the requests were.
  await page.mouse.move(box.x + 1, box.y + 1);
  await page.mouse.down();
  await page.mouse.move(box.x + box.w / 2, box.y + box.h / 2, { steps: 5 });
  await page.mouse.move(box.x + box.w + 20, box.y + box.h + 20, { steps: 5 });
  await page.mouse.up();
  await page.waitForSelector('#xview-selected');
  found.selected = await page.$eval('#xview-selected', (e) => Number(e.dataset.count));
  if (!(found.selected > 0)) throw new Error('drag-select listed no transactions');
  if (!/sel=/.test(page.url())) throw new Error('the selection is not in the URL: ' + page.url());
  found.xview_url = page.url();
  await page.screenshot({ path: join(shots, 'xview.png'), fullPage: true });
  step('xview');
  const sqlRow = await page.$$eval('#xview-list tbody tr', (rows) => {
    const r = rows.find((x) => x.children[2].textContent === '/api/v6/photos');
    return r ? r.dataset.id : null;
  });
  if (!sqlRow) throw new Error('no /api/v6/photos transaction in the selection');
  await page.click(`#xview-list tr[data-id="${sqlRow}"]`);
  await page.waitForSelector('tr.span-sql', { timeout: 10000 });
  found.profile_sql = await page.$$eval('tr.span-sql .sql', (els) => els.map((e) => e.textContent));
  await page.screenshot({ path: join(shots, 'profile.png'), fullPage: true });
  step('profile');

  // Captured text that looks like markup is shown as text and runs nothing.
  if (process.env.SONDE_XSS_TX) {
    await page.goto(base + '/#/tx/' + process.env.SONDE_XSS_TX);
    await page.waitForSelector('dl.kv dd');
    found.xss_literal = await page.$$eval('dl.kv dd', (dds) => dds.some((d) => d.textContent.includes('<script>window.__xss=1</script>"\'')));
    found.xss_ran = await page.evaluate(() => window.__xss !== undefined || document.querySelectorAll('main script').length > 0);
    await page.screenshot({ path: join(shots, 'profile-markup.png'), fullPage: true });
    step('markup');
  }

  // Application status: the endpoints sent; click one for its SQL.
  await page.goto(base + '/#/status');
  await page.waitForSelector('#status-table tbody tr', { timeout: 10000 });
  found.status_endpoints = await page.$$eval('#status-table tbody tr', (rows) => rows.map((r) => r.dataset.endpoint));
  await page.click('#status-table tr[data-endpoint="/api/v6/photos"]');
  await page.waitForSelector('#status-sql tbody tr', { timeout: 10000 });
  found.status_sql = await page.$$eval('#status-sql tbody tr', (rows) => rows.length);
  await page.screenshot({ path: join(shots, 'status.png'), fullPage: true });
  // An endpoint's external calls, from /api/v1/externals.
  await page.click('#status-table tr[data-endpoint="/t/caller.php"]');
  await page.waitForSelector('#status-ext tbody tr', { timeout: 10000 });
  found.status_externals = await page.$$eval('#status-ext tbody tr', (rows) => rows.map((r) => r.children[0].textContent));
  await page.screenshot({ path: join(shots, 'status-externals.png'), fullPage: true });
  // CSV export: a cell a spreadsheet would run as a formula is neutralised
  // (a leading quote), the rest kept.
  const [download] = await Promise.all([page.waitForEvent('download'), page.click('#status-csv')]);
  const csv = readFileSync(await download.path(), 'utf8');
  found.csv_rows = csv.trim().split('\r\n').length;
  found.csv_formula_neutralised = csv.includes('"\'=HYPERLINK(""http://evil.example"",""x"")"')
    && !/(^|,)"[=+\-@]/m.test(csv) && csv.includes('"/api/v6/photos"');
  // A custom range: one around the test's traffic lists it, one a day
  // earlier is empty; the URL keeps the range.
  const local = (ms) => new Date(ms - new Date(ms).getTimezoneOffset() * 60e3).toISOString().slice(0, 16);
  await page.selectOption('#status-range', 'custom');
  await page.fill('#status-from', local(Date.now() - 3600e3));
  await page.fill('#status-to', local(Date.now() + 120e3));
  await page.click('#status-apply');
  await page.waitForSelector('#status-table tbody tr', { timeout: 10000 });
  found.custom_range_endpoints = await page.$$eval('#status-table tbody tr', (rows) => rows.length);
  found.custom_range_hash = page.url().includes('range=custom') && page.url().includes('from=');
  await page.fill('#status-from', local(Date.now() - 2 * 86400e3));
  await page.fill('#status-to', local(Date.now() - 86400e3));
  await page.click('#status-apply');
  await page.waitForSelector('#status-table p.empty', { timeout: 10000 });
  found.custom_range_empty = true;
  step('status');

  // Daily report and servers: they render.
  await page.goto(base + '/#/report');
  await page.waitForSelector('#report-compare tbody tr', { timeout: 10000 });
  found.report_rows = await page.$$eval('#report-compare tbody tr', (rows) => rows.length);
  await page.screenshot({ path: join(shots, 'report.png'), fullPage: true });
  // Printed (the print stylesheet), the report fits one A4 page.
  await page.emulateMedia({ media: 'print' });
  const pdf = await page.pdf({ format: 'A4', printBackground: true });
  await page.emulateMedia({ media: 'screen' });
  found.report_pdf_pages = (pdf.toString('latin1').match(/\/Type\s*\/Page(?!s)/g) || []).length;
  writeFileSync(join(shots, 'report.pdf'), pdf);
  await page.goto(base + '/#/servers');
  await page.waitForSelector('#agents table tbody tr', { timeout: 10000 });
  await page.screenshot({ path: join(shots, 'servers.png'), fullPage: true });
  step('report+servers');

  // Alerts: the rule editor makes, changes and deletes a console rule; a
  // deploy recorded on the page is a marker on the dashboard charts and
  // the daily report.
  await page.goto(base + '/#/alerts');
  await page.waitForSelector('#rules table tbody tr', { timeout: 10000 });
  found.rules = await page.$$eval('#rules tbody tr', (rows) => rows.map((r) => `${r.dataset.source}:${r.dataset.rule}`));
  if (!found.rules.includes('default:error-rate')) throw new Error('built-in rules not listed: ' + found.rules);
  if (!(await page.textContent('#precedence')).includes('file > console > default')) throw new Error('no precedence note');
  await page.fill('#rule-form input[name=name]', 'smoke-rule');
  await page.selectOption('#rule-form select[name=kind]', 'error_count');
  await page.fill('#rule-form input[name=threshold]', '3');
  await page.fill('#rule-form input[name=window_secs]', '30');
  await page.click('#rule-save');
  await page.waitForSelector('#rules tr[data-rule="smoke-rule"][data-source="console"]', { timeout: 5000 });
  const ruleNow = () => page.evaluate(async () => (await (await fetch('/api/v1/alerts/rules')).json()).rules
    .find((r) => r.name === 'smoke-rule' && r.source === 'console'));
  let rule = await ruleNow();
  if (!(rule && rule.threshold === 3 && rule.window_secs === 30 && rule.effective)) throw new Error('rule not created: ' + JSON.stringify(rule));
  await page.click('#rules tr[data-rule="smoke-rule"] .rule-edit');
  await page.fill('#rule-form input[name=threshold]', '7');
  await page.click('#rule-save');
  await page.waitForFunction(async () => (await (await fetch('/api/v1/alerts/rules')).json()).rules
    .some((r) => r.name === 'smoke-rule' && r.threshold === 7), null, { timeout: 5000 });
  rule = await ruleNow();
  found.rule_edited = { threshold: rule.threshold, updated_by: rule.updated_by };
  await page.fill('#deploy-form input[name=app]', 'fanapp');
  await page.fill('#deploy-form input[name=version]', 'smoke-1');
  await page.fill('#deploy-form input[name=description]', 'from the smoke test');
  await page.click('#deploy-form button[type=submit]');
  await page.waitForSelector('#alert-deploys table tbody tr', { timeout: 5000 });
  await page.screenshot({ path: join(shots, 'alerts.png'), fullPage: true });
  await page.click('#rules tr[data-rule="smoke-rule"] .rule-delete');
  await page.waitForFunction(() => !document.querySelector('#rules tr[data-rule="smoke-rule"]'), null, { timeout: 5000 });
  await page.goto(base + '/#/dashboard');
  await page.waitForFunction(() => Number(document.querySelector('#tps-chart')?.dataset.markers || 0) > 0
    && Number(document.querySelector('#rt-chart')?.dataset.markers || 0) > 0, null, { timeout: 15000 });
  await page.waitForSelector('#deploys table tbody tr', { timeout: 5000 });
  found.dashboard_deploys = await page.$$eval('#deploys tbody tr', (rows) => rows.map((r) => r.children[2].textContent));
  await page.screenshot({ path: join(shots, 'dashboard-deploy.png'), fullPage: true });
  await page.goto(base + '/#/report');
  await page.waitForSelector('#report-deploys tbody tr', { timeout: 10000 });
  await page.waitForFunction(() => [...document.querySelectorAll('.report-charts canvas')]
    .every((c) => Number(c.dataset.markers || 0) > 0), null, { timeout: 5000 });
  found.report_deploys = await page.$$eval('#report-deploys tbody tr', (rows) => rows.map((r) => r.children[2].textContent));
  await page.screenshot({ path: join(shots, 'report-deploy.png'), fullPage: true });
  step('alerts+deploys');

  // Repeated failed logins for one name are throttled by the server.
  found.login_throttle = await page.evaluate(async () => {
    const codes = [];
    for (let i = 0; i < 6; i++) {
      const r = await fetch('/login', { method: 'POST', headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ user: 'mallory', password: 'guess-' + i }) });
      codes.push(r.status);
    }
    return codes;
  });
  step('throttle');

  // The read-only role is refused changes by the server.
  const ro = await page.evaluate(async () => {
    const r = await fetch('/api/v1/users', { method: 'POST', headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ name: 'viewer', password: 'viewer-pw', role: 'read-only' }) });
    return r.status;
  });
  if (ro !== 201) throw new Error('admin could not create a read-only user: ' + ro);
  const viewer = await browser.newContext();
  const vp = await viewer.newPage();
  await vp.goto(base + '/login');
  await vp.fill('input[name=user]', 'viewer');
  await vp.fill('input[name=password]', 'viewer-pw');
  await Promise.all([vp.waitForURL((u) => !u.pathname.startsWith('/login'), { timeout: 20000 }), vp.click('button[type=submit]')]);
  found.read_only_post = await vp.evaluate(async () => (await fetch('/api/v1/users', { method: 'POST',
    headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ name: 'x', password: 'y', role: 'admin' }) })).status);
  if (found.read_only_post !== 403) throw new Error('a read-only user could create a user: ' + found.read_only_post);
  await viewer.close();
  step('read-only');

  // X-View with 100,000 points: the draw time (docs/console.md).
  await page.goto(base + '/#/xview');
  // After the page's own first load, so it cannot replace the points.
  await page.waitForFunction(() => Number(document.querySelector('#xview-canvas')?.dataset.points || 0) > 0);
  found.xview_100k_draw_ms = await page.evaluate(() => window.sondeXviewSynthetic(100000));
  found.xview_100k_points = await page.$eval('#xview-canvas', (c) => Number(c.dataset.points));
  await page.screenshot({ path: join(shots, 'xview-100k.png') });
  // The dashboard's first render: from opening it to its first live numbers
  // (docs/benchmarks.md).
  const opened = Date.now();
  await page.goto(base + '/#/dashboard');
  await page.waitForFunction(() => Number(document.querySelector('#v-tps')?.dataset.tps || 0) > 0, null, { timeout: 15000 });
  found.dashboard_first_render_ms = Date.now() - opened;

  // Logout ends the session.
  await page.goto(base + '/#/dashboard');
  await page.click('#logout');
  await page.waitForURL((u) => u.pathname.startsWith('/login'), { timeout: 5000 });
  found.after_logout = await page.evaluate(async () => (await fetch('/api/v1/session')).status);

  found.page_errors = consoleErrors;
  if (consoleErrors.length) throw new Error('errors in the page: ' + consoleErrors.join('; '));
  found.ok = true;
  console.log(JSON.stringify(found));
} catch (e) {
  found.ok = false;
  found.error = String(e && e.stack || e);
  if (page) await page.screenshot({ path: join(shots, 'failure.png'), fullPage: true }).catch(() => {});
  console.log(JSON.stringify(found));
  process.exitCode = 1;
} finally {
  await browser.close();
}

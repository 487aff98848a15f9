// The dashboard in a real browser (issue 19): Debian's Chromium driven by
// playwright-core (no browser download). Opens the page, enters a key,
// creates a generation, watches it reach COMPLETED, plays the video, cancels
// another one, checks the filters and that no generation shows twice, and
// takes a screenshot.
//
// Which server (the first that is set):
//   VIDEOGEN_HTTP_URL + VIDEOGEN_API_KEY   a server that is already running
//   VIDEOGEN_SERVER                        videogen-server, started here with
//       --simulate, a fresh SQLite store and a key from `keys create`
//       (VIDEOGEN_SERVER_ARGS appended); exits 77 (skip) if it has no
//       --http_listen flag
//   VIDEOGEN_HTTP_FAKE_SERVER              tests/http's http_fake_server
// DASHBOARD_SCREENSHOT: where to write the PNG (default: a temp file).
// CHROMIUM: the browser (default /usr/bin/chromium).
//
// Run: node tests/http/dashboard.test.mjs
import {after, before, test} from 'node:test';
import assert from 'node:assert/strict';
import {execFileSync, spawn} from 'node:child_process';
import {existsSync, mkdtempSync, rmSync} from 'node:fs';
import net from 'node:net';
import {tmpdir} from 'node:os';
import {join} from 'node:path';

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const SCREENSHOT = process.env.DASHBOARD_SCREENSHOT ||
    join(tmpdir(), 'videogen-dashboard.png');

if (process.env.VIDEOGEN_SERVER && !process.env.VIDEOGEN_HTTP_URL) {
  let help = '';
  try {
    help = execFileSync(process.env.VIDEOGEN_SERVER, ['--helpfull'],
                        {encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe']});
  } catch (e) {
    help = String(e.stdout || '') + String(e.stderr || '');
  }
  if (!help.includes('http_listen')) {
    console.log('SKIP: videogen-server has no --http_listen flag yet');
    process.exit(77);
  }
}
if (!existsSync(CHROMIUM)) {
  console.error(`no browser at ${CHROMIUM} (apt-get install chromium)`);
  process.exit(1);
}
const {chromium} = await import('playwright-core');

const temps = [];
let serverProcess = null;
let base = '';
let key = '';

function tempDir(prefix) {
  const d = mkdtempSync(join(tmpdir(), prefix));
  temps.push(d);
  return d;
}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const {port} = s.address();
      s.close(() => resolve(port));
    });
  });
}

async function waitReady(url, ms = 20000) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    try {
      const res = await fetch(url + '/');
      if (res.ok) return;
    } catch (e) { /* not yet */ }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`no answer from ${url}`);
}

async function startServer() {
  if (process.env.VIDEOGEN_HTTP_URL) {
    base = process.env.VIDEOGEN_HTTP_URL;
    key = process.env.VIDEOGEN_API_KEY || '';
    assert.ok(key, 'VIDEOGEN_API_KEY is needed with VIDEOGEN_HTTP_URL');
    return;
  }
  let log = '';
  if (process.env.VIDEOGEN_SERVER) {
    const bin = process.env.VIDEOGEN_SERVER;
    const data = tempDir('vg-dash-data-');
    const created = execFileSync(bin, ['keys', 'create', '--tenant=dashboard-e2e',
                                       '--store=sqlite', `--data_dir=${data}`],
                                 {encoding: 'utf8'});
    key = JSON.parse(created).key;
    const httpPort = await freePort();
    const grpcPort = await freePort();
    const extra = (process.env.VIDEOGEN_SERVER_ARGS || '').split(/\s+/).filter(Boolean);
    serverProcess = spawn(bin, [
      '--simulate', '--store=sqlite', `--data_dir=${data}`,
      `--listen=127.0.0.1:${grpcPort}`, `--http_listen=127.0.0.1:${httpPort}`,
      '--poll_initial_delay=200ms', '--poll_interval=300ms',
      '--sim_queued_for=1s', '--sim_generating_for=2s', ...extra,
    ], {stdio: ['ignore', 'pipe', 'pipe']});
    base = `http://127.0.0.1:${httpPort}`;
  } else if (process.env.VIDEOGEN_HTTP_FAKE_SERVER) {
    serverProcess = spawn(process.env.VIDEOGEN_HTTP_FAKE_SERVER,
                          ['--http_listen=127.0.0.1:0'], {stdio: ['ignore', 'pipe', 'pipe']});
    key = 'k-acme';
    base = await new Promise((resolve, reject) => {
      let out = '';
      serverProcess.stdout.on('data', (d) => {
        out += d;
        const m = out.match(/HTTP listening on (\S+)/);
        if (m) resolve(`http://${m[1]}`);
      });
      serverProcess.once('exit', (code) => reject(new Error(`fake server exited ${code}`)));
    });
  } else {
    throw new Error('set VIDEOGEN_HTTP_URL, VIDEOGEN_SERVER or VIDEOGEN_HTTP_FAKE_SERVER');
  }
  serverProcess.stderr.on('data', (d) => { log = (log + d).slice(-4000); });
  serverProcess.once('exit', (code, sig) => {
    if (code !== 0 && sig !== 'SIGTERM') console.error(`server exited ${code} ${sig}\n${log}`);
  });
  await waitReady(base);
}

let context = null;
let page = null;
const pageErrors = [];

before(async () => {
  await startServer();
  context = await chromium.launchPersistentContext(tempDir('vg-chromium-'), {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic',
           '--no-first-run', '--disable-background-networking',
           '--disable-component-update', '--disable-sync'],
    viewport: {width: 1280, height: 800},
  });
  page = context.pages()[0] || await context.newPage();
  page.on('pageerror', (e) => pageErrors.push(`pageerror: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error') pageErrors.push(`console: ${m.text()}`);
  });
});

after(async () => {
  if (context) await context.close();
  if (serverProcess && serverProcess.exitCode === null) {
    serverProcess.kill('SIGTERM');
    await new Promise((r) => {
      const t = setTimeout(() => { serverProcess.kill('SIGKILL'); r(); }, 10000);
      serverProcess.once('exit', () => { clearTimeout(t); r(); });
    });
  }
  for (const d of temps) rmSync(d, {recursive: true, force: true});
});

const rowOf = (prompt) => page.locator('#rows tr', {hasText: prompt});

// The progress bar of the row showing `prompt`, read in one synchronous step
// in the page (waiting until there is one). The dashboard replaces the bar
// every second and rows on every update, so a bar found first and read in a
// second step may already be detached (it was, once in CI).
async function readProgress(prompt) {
  const handle = await page.waitForFunction((text) => {
    const tr = [...document.querySelectorAll('#rows tr')]
        .find((r) => r.textContent.includes(text));
    const p = tr && tr.querySelector('progress');
    if (!p) return null;
    return {
      max: p.max, value: p.value, label: p.getAttribute('aria-label'),
      title: p.parentElement.title, text: p.parentElement.textContent,
      state: tr.querySelector('.badge').textContent,
    };
  }, prompt, {timeout: 15000});
  return handle.jsonValue();
}

async function createFromForm(prompt, labels) {
  await page.getByLabel('Prompt', {exact: true}).fill(prompt);
  await page.getByLabel('Labels', {exact: true}).fill(labels);
  await page.getByRole('button', {name: 'Create', exact: true}).click();
  // The detail view switches to the new generation once the POST answered.
  await page.locator('#detail-fields').getByText(prompt, {exact: true}).waitFor();
}

test('dashboard: key, create, complete, play, cancel, filters', {timeout: 240000}, async () => {
  const run = String(Date.now());
  const donePrompt = `a lighthouse at dusk ${run}`;
  const cancelPrompt = `to be cancelled ${run}`;

  await page.goto(base + '/');
  assert.equal(await page.title(), 'videogen dashboard');
  // A wrong key is refused and the form stays.
  await page.getByLabel('API key').fill('vg_wrong_key');
  await page.getByRole('button', {name: 'Connect'}).click();
  await page.getByText('The server refused this key.').waitFor();
  pageErrors.length = 0;  // Chromium logs that 401 to the console

  await page.getByLabel('API key').fill(key);
  await page.getByRole('button', {name: 'Connect'}).click();
  await page.locator('#conn.live').waitFor({timeout: 15000});

  // Create one and watch it reach COMPLETED live (no reload).
  await createFromForm(donePrompt, `e2e=browser, run=${run}`);
  // Issue 20: while it is queued or generating, its row shows a progress
  // bar from the estimate (a share of create..expected completion, capped at
  // 99 until the generation is done).
  const progress = await readProgress(donePrompt);
  assert.match(progress.state, /^(Queued|Generating)$/, 'a bar only while it runs');
  assert.equal(progress.max, 100, 'the bar counts percent');
  assert.ok(Number.isFinite(progress.value) && progress.value >= 0 && progress.value <= 99,
            `the bar is partly filled, never full while running (${progress.value})`);
  assert.equal(progress.label, 'Estimated progress');
  assert.match(progress.title, /^Expected \S/, 'the cell explains the estimate');
  assert.match(progress.text, /left|any moment/, 'the bar comes with the time left');
  await rowOf(donePrompt).locator('.badge', {hasText: 'Completed'})
      .waitFor({timeout: 120000});
  // Once done the estimate is gone, and so is the bar (also after a tick).
  await page.waitForTimeout(1200);
  assert.equal(await rowOf(donePrompt).locator('progress').count(), 0,
               'a completed generation shows no progress bar');
  assert.equal(await rowOf(donePrompt).locator('.eta').count(), 0);

  // The detail view plays it.
  await page.waitForFunction(() => {
    const v = document.getElementById('player');
    return v && v.currentSrc && v.readyState >= 2;
  }, null, {timeout: 30000});
  const played = await page.evaluate(async () => {
    const v = document.getElementById('player');
    v.muted = true;
    await v.play();
    await new Promise((r) => setTimeout(r, 800));
    return {time: v.currentTime, width: v.videoWidth, height: v.videoHeight,
            error: v.error ? v.error.code : 0, src: v.currentSrc};
  });
  assert.equal(played.error, 0, 'the video element reports no error');
  assert.ok(played.time > 0, `the video plays (currentTime ${played.time})`);
  assert.ok(played.width > 0 && played.height > 0, 'the video has frames');
  assert.ok(played.src.startsWith('blob:'),
            `the mirrored copy is played, fetched with the key (${played.src})`);

  // Create another one and cancel it at once.
  await createFromForm(cancelPrompt, `e2e=browser, run=${run}, kind=cancel`);
  await page.getByRole('button', {name: 'Cancel generation'}).click();
  await rowOf(cancelPrompt).locator('.badge', {hasText: 'Cancelled'})
      .waitFor({timeout: 15000});
  assert.ok(await page.getByRole('button', {name: 'Cancel generation'}).isHidden(),
            'a terminal generation has no cancel button');

  // Every generation shows once.
  const ids = await page.locator('#rows tr').evaluateAll((rows) => rows.map((r) => r.dataset.row));
  assert.equal(new Set(ids).size, ids.length, `no duplicate rows: ${ids}`);

  // Filters: by state and by label.
  await page.getByRole('checkbox', {name: 'Cancelled'}).uncheck();
  await rowOf(cancelPrompt).waitFor({state: 'detached'});
  assert.equal(await rowOf(donePrompt).count(), 1);
  await page.getByRole('checkbox', {name: 'Cancelled'}).check();
  await page.getByLabel('Label', {exact: true}).fill('kind=cancel');
  await rowOf(donePrompt).waitFor({state: 'detached'});
  assert.equal(await rowOf(cancelPrompt).count(), 1);
  await page.getByLabel('Label', {exact: true}).fill('');

  // The screenshot shows the completed one with its player.
  await rowOf(donePrompt).getByRole('button').click();
  await page.waitForFunction(() => document.getElementById('player').readyState >= 2);
  await page.evaluate(() => {
    window.scrollTo(0, 0);
    document.querySelector('.side').scrollTop = 0;
  });
  await page.screenshot({path: SCREENSHOT});
  console.log(`screenshot: ${SCREENSHOT}`);

  assert.deepEqual(pageErrors, [], 'no page or console errors');
});

// videogen dashboard: one page, no framework, no CDN. Lists the tenant's
// generations, keeps them live through GET /v1/generations:watch (fetch with
// the Authorization header and a streaming reader, not EventSource, which
// cannot send headers), and creates, cancels and plays them.
//
// Consistency: every generation is kept at its highest revision; anything at
// or below it is dropped, so no revision is ever shown twice. The firehose
// restarts with a SNAPSHOT of every live generation, and a list request after
// each (re)connect catches generations that ended while it was away.
'use strict';

const KEY_STORAGE = 'videogen.apiKey';
const WATCH_PATH = '/v1/generations:watch';
const LIST_PAGES = 2;        // pages of 100 loaded on (re)connect
const BACKOFF_MIN_MS = 1000;
const BACKOFF_MAX_MS = 30000;
const STATE_NAMES = {
  STATE_QUEUED: 'Queued',
  STATE_GENERATING: 'Generating',
  STATE_COMPLETED: 'Completed',
  STATE_FAILED: 'Failed',
  STATE_CANCELLED: 'Cancelled',
};

const generations = new Map();  // id -> Generation (proto3 JSON)
let selectedId = null;
let streamAbort = null;
let session = 0;  // bumped on sign-out: an older stream loop then stops
let renderQueued = false;
let player = {key: '', objectUrl: null};

const $ = (id) => document.getElementById(id);

// ---- API ----

function apiKey() { return sessionStorage.getItem(KEY_STORAGE) || ''; }

function headers(extra) {
  return Object.assign({Authorization: 'Bearer ' + apiKey()}, extra || {});
}

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function errorOf(res) {
  let body = null;
  try { body = JSON.parse(await res.text()); } catch (e) { /* not JSON */ }
  const err = body && body.error;
  return new ApiError(res.status, err ? err.status : '',
                      err ? err.message : 'HTTP ' + res.status);
}

async function api(method, path, body) {
  const init = {method, headers: headers(), cache: 'no-store'};
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  if (!res.ok) throw await errorOf(res);
  return res.json();
}

// ---- State ----

const revisionOf = (g) => Number(g.revision || 0);
const isDone = (g) => g.done === true;
const timeOf = (ts) => (ts ? Date.parse(ts) : NaN);

// Keeps the newer snapshot; true when it changed anything.
function merge(g) {
  if (!g || !g.id) return false;
  const old = generations.get(g.id);
  if (old && revisionOf(old) >= revisionOf(g)) return false;
  generations.set(g.id, g);
  return true;
}

function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    render();
  });
}

// ---- The live stream ----

function setConnection(text, kind) {
  const el = $('conn');
  el.textContent = text;
  el.className = 'conn ' + (kind || '');
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Reconnects by itself with exponential back-off and jitter.
async function runStream() {
  const mine = session;
  let backoff = BACKOFF_MIN_MS;
  while (apiKey() && mine === session) {
    const ctl = new AbortController();
    streamAbort = ctl;
    let reason = '';
    try {
      setConnection('Connecting…', 'down');
      const res = await fetch(WATCH_PATH, {
        headers: headers({Accept: 'text/event-stream'}),
        signal: ctl.signal,
        cache: 'no-store',
      });
      if (res.status === 401) {
        signOut('The server refused this key.');
        return;
      }
      if (!res.ok) throw await errorOf(res);
      setConnection('Live', 'live');
      backoff = BACKOFF_MIN_MS;
      refreshList().catch(() => {});  // after subscribing: nothing missed
      await readEvents(res.body);
      reason = 'stream ended';
    } catch (e) {
      if (mine !== session) return;  // signed out
      reason = e.message || String(e);
    }
    ctl.abort();  // release the connection before waiting
    const wait = Math.round(backoff * (0.8 + Math.random() * 0.4));
    backoff = Math.min(backoff * 2, BACKOFF_MAX_MS);
    setConnection('Reconnecting in ' + Math.ceil(wait / 1000) + ' s (' +
                  reason + ')', 'down');
    await sleep(wait);
  }
}

// Parses text/event-stream from a fetch body.
async function readEvents(body) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, {stream: true}).replace(/\r\n?/g, '\n');
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      handleBlock(block);
    }
  }
}

function handleBlock(block) {
  let event = 'message';
  let data = '';
  for (const line of block.split('\n')) {
    if (!line || line.startsWith(':')) continue;  // heartbeat comments
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'event') event = value;
    else if (field === 'data') data += (data ? '\n' : '') + value;
  }
  if (!data) return;
  const payload = JSON.parse(data);
  if (event === 'error') {
    // Drain or a slow connection: reconnect (and re-snapshot).
    throw new Error(payload.error ? payload.error.message : 'stream error');
  }
  if (merge(payload.generation)) scheduleRender();
}

// The newest generations, terminal ones included (the firehose snapshots
// only live ones); then any live one we hold that the pages did not cover.
async function refreshList() {
  const seen = new Set();
  let token = '';
  for (let page = 0; page < LIST_PAGES; ++page) {
    const q = 'page_size=100' + (token ? '&page_token=' + encodeURIComponent(token) : '');
    const res = await api('GET', '/v1/generations?' + q);
    for (const g of res.generations || []) {
      seen.add(g.id);
      merge(g);
    }
    token = res.nextPageToken || '';
    if (!token) break;
  }
  for (const g of Array.from(generations.values())) {
    if (!isDone(g) && !seen.has(g.id)) {
      try { merge(await api('GET', '/v1/generations/' + encodeURIComponent(g.id))); } catch (e) { /* gone */ }
    }
  }
  scheduleRender();
}

// ---- Rendering ----

function formatDuration(ms) {
  if (!isFinite(ms) || ms < 0) return '–';
  const s = Math.floor(ms / 1000);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = String(s % 60).padStart(2, '0');
  if (h > 0) return h + 'h ' + String(m).padStart(2, '0') + 'm';
  return m > 0 ? m + 'm ' + sec + 's' : (s % 60) + 's';
}

function elapsedOf(g, now) {
  const start = timeOf(g.createTime);
  const end = isDone(g) ? timeOf(g.updateTime) : now;
  return end - start;
}

// Progress from create_time to the expected completion time.
function estimateOf(g, now) {
  const est = g.estimate;
  if (isDone(g) || !est || !est.expectedCompleteTime) return null;
  const start = timeOf(g.createTime);
  const end = timeOf(est.expectedCompleteTime);
  if (!isFinite(start) || !isFinite(end) || end <= start) return null;
  const share = Math.min(0.99, Math.max(0, (now - start) / (end - start)));
  const left = end - now;
  const text = left > 0 ? '~' + formatDuration(left) + ' left' : 'any moment';
  const p90 = timeOf(est.p90CompleteTime);
  const title = 'Expected ' + new Date(end).toLocaleTimeString() +
      (isFinite(p90) ? ', 90% by ' + new Date(p90).toLocaleTimeString() : '') +
      (est.samples ? ' (from ' + est.samples + ' past runs)' : ' (documented timing)');
  return {share, text, title};
}

function filters() {
  const states = new Set(Array.from(document.querySelectorAll('input[name=state]:checked'),
                                    (el) => el.value));
  const raw = $('label-filter').value.trim();
  const eq = raw.indexOf('=');
  const label = raw ? {key: eq < 0 ? raw : raw.slice(0, eq).trim(),
                       value: eq < 0 ? null : raw.slice(eq + 1).trim()} : null;
  return {states, label};
}

function visible(g, f) {
  if (!f.states.has(g.state)) return false;
  if (f.label) {
    const v = (g.labels || {})[f.label.key];
    if (v === undefined || (f.label.value !== null && v !== f.label.value)) return false;
  }
  return true;
}

function el(tag, attrs, children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'text') node.textContent = v;
    else if (k === 'class') node.className = v;
    else node.setAttribute(k, v);
  }
  for (const c of children || []) if (c) node.append(c);
  return node;
}

function labelChips(labels) {
  return Object.entries(labels || {}).map(([k, v]) => el('span', {class: 'chip', text: k + '=' + v}));
}

function badge(g) {
  return el('span', {class: 'badge ' + g.state, text: STATE_NAMES[g.state] || g.state});
}

function render() {
  const now = Date.now();
  const f = filters();
  const all = Array.from(generations.values());
  all.sort((a, b) => (timeOf(b.createTime) - timeOf(a.createTime)) || (a.id < b.id ? 1 : -1));
  const shown = all.filter((g) => visible(g, f));
  const focusedId = document.activeElement && document.activeElement.dataset
      ? document.activeElement.dataset.id : null;
  const rows = shown.map((g) => {
    const open = el('button', {type: 'button', 'data-id': g.id,
                               'aria-label': 'Open ' + (g.request && g.request.prompt || g.id)},
                    [el('span', {text: (g.request && g.request.prompt) || '(no prompt)'})]);
    open.addEventListener('click', () => select(g.id));
    const eta = estimateOf(g, now);
    const etaCell = el('td', {'data-tick': 'eta', 'data-id': g.id});
    fillEta(etaCell, eta);
    const tr = el('tr', {'data-row': g.id, class: g.id === selectedId ? 'selected' : ''}, [
      el('td', {class: 'prompt'}, [open, el('span', {class: 'id', text: g.id})]),
      el('td', {}, [badge(g)]),
      el('td', {text: g.upstreamStatus || ''}),
      el('td', {'data-tick': 'elapsed', 'data-id': g.id, text: formatDuration(elapsedOf(g, now))}),
      etaCell,
      el('td', {}, labelChips(g.labels)),
    ]);
    tr.addEventListener('click', (e) => { if (e.target === tr || e.target.tagName === 'TD') select(g.id); });
    return tr;
  });
  $('rows').replaceChildren(...rows);
  $('empty').hidden = shown.length > 0;
  $('empty').textContent = all.length ? 'No generation matches the filters.' : 'No generations yet.';
  $('count').textContent = shown.length === all.length ? '(' + all.length + ')'
      : '(' + shown.length + ' of ' + all.length + ')';
  if (focusedId) {
    const again = document.querySelector('#rows button[data-id="' + CSS.escape(focusedId) + '"]');
    if (again) again.focus();
  }
  renderDetail();
}

function fillEta(cell, eta) {
  if (!eta) {
    cell.replaceChildren();
    return;
  }
  const bar = el('progress', {max: '100', value: String(Math.round(eta.share * 100)),
                              'aria-label': 'Estimated progress'});
  cell.title = eta.title;
  cell.replaceChildren(bar, el('span', {class: 'eta', text: eta.text}));
}

// Once a second: elapsed times and progress bars, without rebuilding rows
// (keeps keyboard focus and selection steady).
function tick() {
  const now = Date.now();
  for (const cell of document.querySelectorAll('[data-tick]')) {
    const g = generations.get(cell.dataset.id);
    if (!g) continue;
    if (cell.dataset.tick === 'elapsed') cell.textContent = formatDuration(elapsedOf(g, now));
    else fillEta(cell, estimateOf(g, now));
  }
}

function select(id) {
  selectedId = id;
  $('detail-error').textContent = '';
  for (const tr of document.querySelectorAll('#rows tr')) {
    tr.classList.toggle('selected', tr.dataset.row === id);
  }
  renderDetail();
}

function renderDetail() {
  const g = selectedId ? generations.get(selectedId) : null;
  $('detail').hidden = !g;
  if (!g) {
    resetPlayer();
    return;
  }
  const req = g.request || {};
  const fields = [
    ['ID', g.id],
    ['State', badge(g)],
    ['Upstream status', g.upstreamStatus || '–'],
    ['Upstream job', g.upstreamId || '–'],
    ['Prompt', req.prompt || ''],
    ['Model', req.model || '–'],
    ['Duration', (req.durationSeconds || 5) + ' s'],
    ['Aspect ratio', req.aspectRatio || '16:9'],
    ['Created', g.createTime ? new Date(g.createTime).toLocaleString() : ''],
    ['Updated', g.updateTime ? new Date(g.updateTime).toLocaleString() : ''],
    ['Revision', String(revisionOf(g))],
    ['Labels', labelChips(g.labels)],
  ];
  if (g.error) fields.push(['Error', (g.error.reason || '') + ': ' + (g.error.message || '')]);
  if (g.video && g.video.mirrorError) fields.push(['Mirror', 'not mirrored: ' + g.video.mirrorError]);
  if (g.usage && (g.usage.creditsUsed || g.usage.usdSpent)) {
    fields.push(['Cost', (g.usage.creditsUsed ? g.usage.creditsUsed + ' credits ' : '') +
                         (g.usage.usdSpent ? '$' + g.usage.usdSpent : '')]);
  }
  if (g.webhookStatus && g.webhookStatus.lastResult) fields.push(['Webhook', g.webhookStatus.lastResult]);
  const dl = $('detail-fields');
  dl.replaceChildren(...fields.flatMap(([k, v]) => [
    el('dt', {text: k}),
    el('dd', {}, Array.isArray(v) ? v : [typeof v === 'string' ? document.createTextNode(v) : v]),
  ]));
  $('cancel').hidden = isDone(g);
  $('cancel').disabled = false;
  updatePlayer(g);
}

function resetPlayer() {
  const video = $('player');
  if (player.objectUrl) URL.revokeObjectURL(player.objectUrl);
  player = {key: '', objectUrl: null};
  video.removeAttribute('src');
  video.load();
  $('player-wrap').hidden = true;
}

// Prefers videogen's mirrored copy (fetched with the key, so the key never
// lands in a URL), else the upstream's URL.
async function updatePlayer(g) {
  const v = g.video || {};
  const key = g.state === 'STATE_COMPLETED' ? g.id + '|' + (v.mirrorUrl || v.url || '') : '';
  if (key === player.key) return;
  resetPlayer();
  if (!key) return;
  player.key = key;
  $('player-wrap').hidden = false;
  const note = $('player-note');
  const video = $('player');
  if (v.mirrorUrl) {
    note.textContent = 'Mirrored copy' + (v.sha256 ? ' (sha256 ' + v.sha256.slice(0, 12) + '…)' : '');
    try {
      const res = await fetch(v.mirrorUrl, {headers: headers(), cache: 'no-store'});
      if (!res.ok) throw await errorOf(res);
      const blob = await res.blob();
      if (player.key !== key) return;  // another selection meanwhile
      player.objectUrl = URL.createObjectURL(blob);
      video.src = player.objectUrl;
      return;
    } catch (e) {
      note.textContent = 'Mirror unavailable (' + e.message + '); playing the upstream URL.';
    }
  } else {
    note.textContent = 'Upstream URL (may expire)';
  }
  if (player.key === key && v.url) video.src = v.url;
}

// ---- Actions ----

function parseLabels(text) {
  const labels = {};
  for (const part of text.split(',')) {
    const p = part.trim();
    if (!p) continue;
    const eq = p.indexOf('=');
    if (eq <= 0) throw new Error('labels are key=value pairs separated by commas: "' + p + '"');
    labels[p.slice(0, eq).trim()] = p.slice(eq + 1).trim();
  }
  return labels;
}

function requestId() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));  // plain-http pages
  return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

async function onCreate(ev) {
  ev.preventDefault();
  const error = $('create-error');
  error.textContent = '';
  const button = ev.submitter || ev.target.querySelector('button');
  button.disabled = true;
  try {
    const body = {
      requestId: requestId(),
      prompt: $('prompt').value,
      durationSeconds: Number($('duration').value),
      aspectRatio: $('aspect').value,
      labels: parseLabels($('labels').value),
    };
    const g = await api('POST', '/v1/generations', body);
    merge(g);
    $('prompt').value = '';
    select(g.id);
    scheduleRender();
  } catch (e) {
    error.textContent = e.message;
  } finally {
    button.disabled = false;
  }
}

async function onCancel() {
  if (!selectedId) return;
  const button = $('cancel');
  button.disabled = true;
  $('detail-error').textContent = '';
  try {
    merge(await api('POST', '/v1/generations/' + encodeURIComponent(selectedId) + ':cancel'));
    scheduleRender();
  } catch (e) {
    $('detail-error').textContent = e.message;
    button.disabled = false;
  }
}

// ---- Session ----

async function connect() {
  $('login').hidden = true;
  $('app').hidden = false;
  $('signout').hidden = false;
  runStream();
}

function signOut(message) {
  sessionStorage.removeItem(KEY_STORAGE);
  session++;
  if (streamAbort) streamAbort.abort();
  streamAbort = null;
  generations.clear();
  selectedId = null;
  resetPlayer();
  render();
  $('app').hidden = true;
  $('signout').hidden = true;
  $('login').hidden = false;
  $('login-error').textContent = message || '';
  setConnection('Not connected', '');
  $('key').focus();
}

async function onLogin(ev) {
  ev.preventDefault();
  const key = $('key').value.trim();
  if (!key) return;
  sessionStorage.setItem(KEY_STORAGE, key);
  $('login-error').textContent = '';
  try {
    await api('GET', '/v1/generations?page_size=1');
  } catch (e) {
    sessionStorage.removeItem(KEY_STORAGE);
    $('login-error').textContent = e.status === 401 ? 'The server refused this key.' : e.message;
    return;
  }
  $('key').value = '';
  connect();
}

document.addEventListener('DOMContentLoaded', () => {
  $('login-form').addEventListener('submit', onLogin);
  $('create-form').addEventListener('submit', onCreate);
  $('filters').addEventListener('input', scheduleRender);
  $('filters').addEventListener('submit', (e) => e.preventDefault());
  $('cancel').addEventListener('click', onCancel);
  $('close-detail').addEventListener('click', () => { selectedId = null; render(); });
  $('signout').addEventListener('click', () => signOut(''));
  setInterval(tick, 1000);
  if (apiKey()) connect();
  else $('key').focus();
});

// The operator dashboard (/admin on the admin listener): live figures polled every second from
// GET /admin/v1/stats, the elections with their live totals, open/close, the anti-bot
// difficulty, and a form to create an election (docs/design.md §4.3). Every call carries the admin
// token, taken from a sign-in form or from the URL fragment `#token=…` (which `make demo`
// prints), kept in sessionStorage.

import { api, byId, describeError, fmtInt, h, notify, seg, setChildren } from '/static/common.js';

const TOKEN_KEY = 'votes.admin.token';
const PUBLIC_URL_KEY = 'votes.admin.publicUrl';
const STATS_EVERY_MS = 1000;
const ELECTIONS_EVERY_MS = 2000;
const SPARK_POINTS = 120;
const ELECTION_ID = /^[a-z0-9-]{1,64}$/;
const OPTION_ID = /^[a-z0-9-]{1,32}$/;
const POW_MAX = 32;

const ui = {
  error: byId('admin-error'),
  status: byId('admin-status'),
  nodeName: byId('node-name'),
  signOut: byId('sign-out'),
  signin: byId('signin'),
  signinForm: byId('signin-form'),
  tokenInput: byId('admin-token'),
  dashboard: byId('dashboard'),
  readiness: byId('readiness'),
  rate: byId('stat-rate'),
  dupRate: byId('stat-dup-rate'),
  accepted: byId('stat-accepted'),
  rejectedRate: byId('stat-rejected-rate'),
  p50: byId('stat-p50'),
  p99: byId('stat-p99'),
  batch: byId('stat-batch'),
  sse: byId('stat-sse'),
  batches: byId('stat-batches'),
  redis: byId('stat-redis'),
  spark: byId('sparkline-line'),
  statsMeta: byId('stats-meta'),
  rejections: byId('rejections-body'),
  refresh: byId('refresh'),
  publicUrl: byId('public-url'),
  electionsBody: byId('elections-body'),
  electionsEmpty: byId('elections-empty'),
  createForm: byId('create-form'),
  newTitle: byId('new-title'),
  newId: byId('new-id'),
  optionRows: byId('option-rows'),
  addOption: byId('add-option'),
  newPow: byId('new-pow'),
};

const state = {
  token: null,
  generation: 0, // bumped at each sign-in/out, so an old polling loop stops by itself
  prevStats: null,
  rates: [],
  rows: new Map(), // election id → its table row's live parts
};

// ---- Token ----------------------------------------------------------------------------------

function authed(path, options = {}) {
  return api(path, { ...options, token: state.token });
}

/** A `#token=…` fragment: keep the token, then drop it from the address bar and history. */
function tokenFromFragment() {
  const params = new URLSearchParams(location.hash.slice(1));
  const token = params.get('token');
  if (token === null) return;
  history.replaceState(null, '', location.pathname + location.search);
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
}

function showSignIn(message) {
  state.generation++;
  state.token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  ui.dashboard.hidden = true;
  ui.signin.hidden = false;
  ui.signOut.hidden = true;
  ui.nodeName.textContent = '';
  notify(ui.status, '');
  notify(ui.error, message ?? '', 'error');
  ui.tokenInput.focus();
}

/** A 401 means the token is wrong (or was rotated): back to the sign-in form. */
function refused(res) {
  if (res.status !== 401) return false;
  showSignIn('The admin token was refused: sign in again.');
  return true;
}

function startDashboard() {
  state.generation++;
  state.prevStats = null;
  state.rates = [];
  ui.signin.hidden = true;
  ui.dashboard.hidden = false;
  ui.signOut.hidden = false;
  const gen = state.generation;
  loop(gen, pollStats, STATS_EVERY_MS);
  loop(gen, loadElections, ELECTIONS_EVERY_MS);
}

/** Runs `task` now and then every `everyMs` after it finishes, until the generation changes. */
async function loop(gen, task, everyMs) {
  while (gen === state.generation) {
    const started = Date.now();
    try {
      await task();
    } catch (err) {
      console.error(err);
    }
    await new Promise((r) => setTimeout(r, Math.max(100, everyMs - (Date.now() - started))));
  }
}

// ---- Live figures ---------------------------------------------------------------------------

const num = (x) => (Number.isFinite(Number(x)) ? Number(x) : null);

function fmtMs(x) {
  const v = num(x);
  if (v === null) return '—';
  return `${v < 10 ? v.toFixed(2) : v.toFixed(1)} ms`;
}

function fmtRate(x) {
  if (x === null) return '—';
  return x < 100 ? x.toFixed(1) : fmtInt(x);
}

function fmtDuration(s) {
  const v = Math.max(0, Math.floor(num(s) ?? 0));
  const d = Math.floor(v / 86400);
  const hh = Math.floor((v % 86400) / 3600);
  const mm = Math.floor((v % 3600) / 60);
  if (d) return `${d} d ${hh} h`;
  if (hh) return `${hh} h ${mm} min`;
  if (mm) return `${mm} min ${v % 60} s`;
  return `${v} s`;
}

/** A figure with a smaller note after it, e.g. "12 committed · 0 aborted". */
function setFigure(node, main, note) {
  setChildren(node, main, note ? h('small', {}, ` ${note}`) : null);
}

/** Per-second rate of a counter between two polls; null when unknown or the counter reset. */
function rateOf(cur, prev, key, dt) {
  if (!prev || dt <= 0) return null;
  const a = num(cur?.[key]);
  const b = num(prev?.[key]) ?? 0;
  if (a === null || a < b) return null;
  return (a - b) / dt;
}

async function pollStats() {
  const gen = state.generation;
  const res = await authed('/admin/v1/stats');
  if (gen !== state.generation) return;
  if (refused(res)) return;
  if (!res.ok || !res.data) {
    ui.readiness.className = 'badge error';
    ui.readiness.textContent = 'Unreachable';
    ui.statsMeta.textContent = describeError(res, 'Reading the figures');
    state.prevStats = null;
    return;
  }
  const s = res.data;
  const votes = s.votes && typeof s.votes === 'object' ? s.votes : {};
  const prev = state.prevStats;
  const dt = prev ? ((num(s.at_ms) ?? 0) - (num(prev.at_ms) ?? 0)) / 1000 : 0;
  const prevVotes = prev?.votes ?? {};
  const rate = rateOf(votes, prevVotes, 'accepted', dt);
  const dupRate = rateOf(votes, prevVotes, 'already_voted', dt);
  state.prevStats = s;

  ui.readiness.className = `badge ${s.ready ? 'ready' : 'not-ready'}`;
  ui.readiness.textContent = s.ready ? 'Ready' : 'Not ready';
  ui.nodeName.textContent = s.node ? `Node ${s.node}` : '';

  ui.rate.textContent = fmtRate(rate);
  ui.dupRate.textContent = fmtRate(dupRate);
  ui.accepted.textContent = fmtInt(num(votes.accepted) ?? 0);

  // Rejections: every code but accepted; duplicates have their own figure above.
  const codes = Object.keys(votes).filter((c) => c !== 'accepted')
    .sort((a, b) => (num(votes[b]) ?? 0) - (num(votes[a]) ?? 0));
  let rejectedRate = prev ? 0 : null;
  const rows = codes.map((code) => {
    const r = rateOf(votes, prevVotes, code, dt);
    if (code !== 'already_voted' && rejectedRate !== null) rejectedRate = r === null ? null : rejectedRate + r;
    return h('tr', {},
      h('td', {}, h('code', { text: code })),
      h('td', { class: 'num', text: fmtInt(votes[code]) }),
      h('td', { class: 'num', text: fmtRate(r) }));
  });
  setChildren(ui.rejections, rows.length ? rows
    : h('tr', {}, h('td', { colspan: '3', class: 'muted', text: 'None so far.' })));
  ui.rejectedRate.textContent = fmtRate(rejectedRate);

  const lat = s.commit_latency_ms ?? {};
  ui.p50.textContent = fmtMs(lat.p50);
  setFigure(ui.p99, fmtMs(lat.p99), num(lat.max) !== null ? `max ${fmtMs(lat.max)}` : '');
  ui.batch.textContent = num(s.batch_size_mean) === null ? '—' : num(s.batch_size_mean).toFixed(1);
  ui.sse.textContent = fmtInt(num(s.sse_subscribers) ?? 0);
  const batches = s.batches ?? {};
  setFigure(ui.batches, fmtInt(num(batches.committed) ?? 0), `committed · ${fmtInt(num(batches.aborted) ?? 0)} aborted`);
  const redis = s.redis ?? {};
  setFigure(ui.redis, num(redis.lag_ms) === null ? '—' : `${fmtInt(redis.lag_ms)} ms`,
    `${fmtInt(num(redis.errors) ?? 0)} errors`);

  if (rate !== null) {
    state.rates.push(rate);
    if (state.rates.length > SPARK_POINTS) state.rates.shift();
    drawSparkline();
  }
  const at = num(s.at_ms) ? new Date(num(s.at_ms)).toLocaleTimeString() : '—';
  ui.statsMeta.textContent = [
    s.node ? `Node ${s.node}` : null,
    `up ${fmtDuration(s.uptime_s)}`,
    num(s.cores) !== null ? `${s.cores} cores` : null,
    num(s.partitions) !== null ? `${s.partitions} partitions` : null,
    `updated ${at}`,
  ].filter(Boolean).join(' · ');
}

/** Votes/s over the last SPARK_POINTS polls, scaled to the highest rate shown. */
function drawSparkline() {
  const n = state.rates.length;
  if (n < 2) return;
  const max = Math.max(1, ...state.rates);
  const points = state.rates.map((r, i) => {
    const x = (i / (SPARK_POINTS - 1)) * 120;
    const y = 38 - (r / max) * 36;
    return `${x.toFixed(1)},${y.toFixed(1)}`;
  });
  ui.spark.setAttribute('points', points.join(' '));
}

// ---- Elections ------------------------------------------------------------------------------

function publicBase() {
  return (ui.publicUrl.value.trim() || `http://${location.hostname}:8080`).replace(/\/+$/, '');
}

function resultsUrl(id) {
  return `${publicBase()}/results/${seg(id)}`;
}

async function loadElections() {
  const gen = state.generation;
  const res = await authed('/admin/v1/elections');
  if (gen !== state.generation) return;
  if (refused(res)) return;
  if (!res.ok || !Array.isArray(res.data)) {
    notify(ui.error, describeError(res, 'Loading the elections'), 'error');
    return;
  }
  renderElections(res.data);
}

/**
 * Updates the table in place, row by row, so that a refresh every two seconds neither moves
 * the keyboard focus nor overwrites a difficulty being typed.
 */
function renderElections(list) {
  const seen = new Set();
  for (const e of list) {
    seen.add(e.id);
    let row = state.rows.get(e.id);
    if (!row) {
      row = makeRow(e);
      state.rows.set(e.id, row);
    }
    updateRow(row, e);
    ui.electionsBody.append(row.tr); // keeps the server's order
  }
  for (const [id, row] of state.rows) {
    if (!seen.has(id)) {
      row.tr.remove();
      state.rows.delete(id);
    }
  }
  ui.electionsEmpty.hidden = list.length > 0;
}

function makeRow(e) {
  const id = e.id;
  const row = { id, election: e };
  row.title = h('strong');
  row.badge = h('span', { class: 'badge' });
  row.totals = h('ul', { class: 'totals' });
  const inputId = `pow-${id}`;
  row.pow = h('input', {
    type: 'number', id: inputId, min: '0', max: String(POW_MAX), step: '1',
    oninput: () => { row.pow.dataset.dirty = '1'; },
  });
  row.powLabel = h('label', { for: inputId, class: 'visually-hidden' });
  row.powForm = h('form', { class: 'inline-form', novalidate: true, onsubmit: (ev) => setDifficulty(ev, row) },
    row.powLabel, row.pow, h('button', { type: 'submit', class: 'small secondary' }, 'Set'));
  row.openName = h('span', { class: 'visually-hidden' });
  row.closeName = h('span', { class: 'visually-hidden' });
  row.resultsName = h('span', { class: 'visually-hidden' });
  row.open = h('button', { type: 'button', class: 'small', onclick: () => transition(row, 'open') }, 'Open', row.openName);
  row.close = h('button', { type: 'button', class: 'small danger', onclick: () => transition(row, 'close') }, 'Close', row.closeName);
  row.link = h('a', { class: 'button small secondary', target: '_blank', rel: 'noopener' }, 'Results', row.resultsName);
  row.tr = h('tr', { dataset: { id } },
    h('td', { 'data-label': 'Election' }, row.title, h('br'), h('code', { class: 'muted', text: id })),
    h('td', { 'data-label': 'State' }, row.badge),
    h('td', { 'data-label': 'Live totals' }, row.totals),
    h('td', { 'data-label': 'Anti-bot difficulty' }, row.powForm),
    h('td', { 'data-label': 'Actions' }, h('div', { class: 'actions' }, row.open, row.close, row.link)));
  return row;
}

function updateRow(row, e) {
  row.election = e;
  const title = String(e.title ?? e.id);
  row.title.textContent = title;
  row.badge.className = `badge ${e.state}`;
  row.badge.textContent = e.state;
  row.powLabel.textContent = `Anti-bot difficulty of ${title}`;
  if (document.activeElement !== row.pow && !row.pow.dataset.dirty) row.pow.value = String(e.pow_difficulty ?? 0);
  row.openName.textContent = ` ${title}`;
  row.closeName.textContent = ` ${title}`;
  row.resultsName.textContent = ` of ${title}`;
  row.open.hidden = e.state !== 'draft';
  row.close.hidden = e.state !== 'open';
  row.link.href = resultsUrl(e.id);

  const totals = e.live?.totals ?? {};
  const items = (e.options ?? []).map((o) => h('li', {},
    h('span', { text: o.label }), h('span', { class: 'mono', text: fmtInt(totals[o.id] ?? 0) })));
  items.push(h('li', {}, h('strong', { text: 'Total' }), h('strong', { class: 'mono', text: fmtInt(e.live?.total ?? 0) })));
  setChildren(row.totals, items);
}

async function transition(row, action) {
  const e = row.election;
  if (action === 'close' && !window.confirm(
    `Close “${e.title}”? Voting stops at once and the official count starts. This cannot be undone.`)) {
    return;
  }
  notify(ui.error, '');
  const button = action === 'open' ? row.open : row.close;
  button.disabled = true;
  const res = await authed(`/admin/v1/elections/${seg(e.id)}/${action}`, { method: 'POST' });
  button.disabled = false;
  if (refused(res)) return;
  if (!res.ok) {
    notify(ui.error, `${action === 'open' ? 'Opening' : 'Closing'} “${e.title}” failed: ${describeError(res, 'The request')}`, 'error');
    return;
  }
  notify(ui.status, `“${e.title}” is now ${res.data?.state ?? (action === 'open' ? 'open' : 'closed')}.`, 'ok');
  await loadElections();
  // The button just used is hidden now: keep the keyboard focus in the row.
  (action === 'open' ? row.close : row.link).focus();
}

async function setDifficulty(event, row) {
  event.preventDefault();
  const e = row.election;
  const value = Number(row.pow.value);
  if (!Number.isInteger(value) || value < 0 || value > POW_MAX) {
    row.pow.setAttribute('aria-invalid', 'true');
    notify(ui.error, `The difficulty is a whole number from 0 to ${POW_MAX}.`, 'error');
    row.pow.focus();
    return;
  }
  row.pow.setAttribute('aria-invalid', 'false');
  notify(ui.error, '');
  const res = await authed(`/admin/v1/elections/${seg(e.id)}`, { method: 'PATCH', body: { pow_difficulty: value } });
  if (refused(res)) return;
  if (!res.ok) {
    notify(ui.error, `Changing the difficulty of “${e.title}” failed: ${describeError(res, 'The request')}`, 'error');
    return;
  }
  delete row.pow.dataset.dirty;
  notify(ui.status, `The anti-bot difficulty of “${e.title}” is now ${value}${value === 0 ? ' (off)' : ''}.`, 'ok');
  await loadElections();
}

// ---- New election ---------------------------------------------------------------------------

/** An id from free text: lower case ASCII letters, digits and dashes. */
function slug(text, max) {
  return text.normalize('NFKD').replace(/[\u0300-\u036f]/g, '').toLowerCase()
    .replace(/[^a-z0-9]+/g, '-').replace(/^-+|-+$/g, '').slice(0, max).replace(/-+$/, '');
}

let optionSeq = 0;

function addOptionRow(focus) {
  optionSeq++;
  const labelId = `opt-label-${optionSeq}`;
  const idId = `opt-id-${optionSeq}`;
  const label = h('input', { type: 'text', id: labelId, maxlength: '100', class: 'option-label' });
  const id = h('input', { type: 'text', id: idId, maxlength: '32', spellcheck: 'false', class: 'option-id', placeholder: 'from the label' });
  const remove = h('button', { type: 'button', class: 'small danger' }, 'Remove');
  const rowNode = h('div', { class: 'option-row' },
    h('div', {}, h('label', { for: labelId }, 'Label'), label),
    h('div', { class: 'option-id' }, h('label', { for: idId }, 'Option id'), id),
    remove);
  remove.addEventListener('click', () => {
    rowNode.remove();
    renumberOptions();
    ui.addOption.focus();
  });
  ui.optionRows.append(rowNode);
  renumberOptions();
  if (focus) label.focus();
}

/** Labels say which option they belong to ("Option 2 label"), and 2 options always stay. */
function renumberOptions() {
  const rows = [...ui.optionRows.children];
  rows.forEach((r, i) => {
    const [labelLabel, idLabel] = r.querySelectorAll('label');
    labelLabel.textContent = `Option ${i + 1} label`;
    idLabel.textContent = `Option ${i + 1} id`;
    const remove = r.querySelector('button');
    remove.disabled = rows.length <= 2;
    remove.setAttribute('aria-label', `Remove option ${i + 1}`);
  });
  ui.addOption.disabled = rows.length >= 64;
}

function invalid(field, message) {
  field.setAttribute('aria-invalid', 'true');
  notify(ui.error, message, 'error');
  field.focus();
  return null;
}

/** The create request from the form, or null (the first problem is shown and focused). */
function readCreateForm() {
  for (const f of ui.createForm.querySelectorAll('[aria-invalid]')) f.removeAttribute('aria-invalid');
  const title = ui.newTitle.value.trim();
  if (!title || new TextEncoder().encode(title).length > 200) return invalid(ui.newTitle, 'The title is 1 to 200 bytes.');
  const id = ui.newId.value.trim() || slug(title, 64);
  if (!ELECTION_ID.test(id)) return invalid(ui.newId, 'The election id is 1 to 64 of a–z, 0–9 and “-”.');
  const options = [];
  const ids = new Set();
  for (const [i, r] of [...ui.optionRows.children].entries()) {
    const labelField = r.querySelector('.option-label');
    const idField = r.querySelector('input.option-id');
    const label = labelField.value.trim();
    if (!label || new TextEncoder().encode(label).length > 100) return invalid(labelField, `Option ${i + 1}: the label is 1 to 100 bytes.`);
    const optionId = idField.value.trim() || slug(label, 32) || `option-${i + 1}`;
    if (!OPTION_ID.test(optionId)) return invalid(idField, `Option ${i + 1}: the id is 1 to 32 of a–z, 0–9 and “-”.`);
    if (ids.has(optionId)) return invalid(idField, `Option ${i + 1}: the id “${optionId}” is used twice.`);
    ids.add(optionId);
    options.push({ id: optionId, label });
  }
  if (options.length < 2 || options.length > 64) return invalid(ui.addOption, 'An election has 2 to 64 options.');
  const pow = Number(ui.newPow.value || 0);
  if (!Number.isInteger(pow) || pow < 0 || pow > POW_MAX) return invalid(ui.newPow, `The difficulty is a whole number from 0 to ${POW_MAX}.`);
  return { id, title, options, pow_difficulty: pow };
}

async function createElection(event) {
  event.preventDefault();
  notify(ui.status, '');
  const body = readCreateForm();
  if (!body) return;
  notify(ui.error, '');
  const res = await authed('/admin/v1/elections', { method: 'POST', body });
  if (refused(res)) return;
  if (!res.ok) {
    notify(ui.error, `Creating “${body.title}” failed: ${describeError(res, 'The request')}`, 'error');
    return;
  }
  notify(ui.status, `Created “${body.title}” (${body.id}) as a draft: open it from the list when ready.`, 'ok');
  resetCreateForm();
  await loadElections();
}

function resetCreateForm() {
  ui.createForm.reset();
  ui.optionRows.replaceChildren();
  addOptionRow(false);
  addOptionRow(false);
}

// ---- Start ----------------------------------------------------------------------------------

ui.signinForm.addEventListener('submit', async (event) => {
  event.preventDefault();
  const token = ui.tokenInput.value.trim();
  if (!token) {
    invalid(ui.tokenInput, 'Enter the admin token.');
    return;
  }
  state.token = token;
  const res = await authed('/admin/v1/elections');
  if (res.status === 401) {
    state.token = null;
    invalid(ui.tokenInput, 'That admin token was refused.');
    return;
  }
  ui.tokenInput.removeAttribute('aria-invalid');
  ui.tokenInput.value = '';
  sessionStorage.setItem(TOKEN_KEY, token);
  notify(ui.error, '');
  notify(ui.status, 'Signed in.', 'ok');
  startDashboard();
});
ui.signOut.addEventListener('click', () => {
  showSignIn();
  notify(ui.status, 'Signed out.', 'info');
});
ui.refresh.addEventListener('click', loadElections);
ui.addOption.addEventListener('click', () => addOptionRow(true));
ui.createForm.addEventListener('submit', createElection);
ui.publicUrl.value = localStorage.getItem(PUBLIC_URL_KEY) || `http://${location.hostname}:8080`;
ui.publicUrl.addEventListener('change', () => {
  localStorage.setItem(PUBLIC_URL_KEY, ui.publicUrl.value.trim());
  for (const row of state.rows.values()) row.link.href = resultsUrl(row.id);
});
resetCreateForm();

tokenFromFragment();
state.token = sessionStorage.getItem(TOKEN_KEY);
if (state.token) startDashboard();
else showSignIn();

// The voter page (served at /): sign in (development login or a pasted token), pick an open
// election, vote (solving the proof-of-work challenge in a worker when the election asks for
// one), see the receipt, and watch the live results. API: docs/design.md §4.2. Once an election is
// closed, "Check my receipt" proves in this browser that the vote is counted in the official
// result (receipt-check.js, docs/design.md §4.5); the receipts of votes made here are kept for that.

import {
  api, byId, describeError, fmtInt, followResults, h, notify, ResultsPanel, seg, setChildren,
} from '/static/common.js';
import { normalizeReceipt, runReceiptCheck } from '/static/receipt-check.js';

const SESSION_KEY = 'votes.voter';
// Receipts of the votes cast in this browser: {election id: [{receipt, voter, at}]}, oldest first.
const RECEIPTS_KEY = 'votes.receipts';
const RECEIPTS_PER_ELECTION = 10;
const U64_MAX = (1n << 64n) - 1n;

const ui = {
  pageMessage: byId('page-message'),
  signinLoading: byId('signin-loading'),
  devForm: byId('dev-form'),
  voterId: byId('voter-id'),
  tokenForm: byId('token-form'),
  token: byId('token'),
  signedIn: byId('signed-in'),
  signedInText: byId('signed-in-text'),
  signOut: byId('sign-out'),
  signinStatus: byId('signin-status'),
  refresh: byId('refresh'),
  electionsStatus: byId('elections-status'),
  elections: byId('elections'),
  electionsTitle: byId('elections-title'),
  ballotSection: byId('ballot-section'),
  ballotTitle: byId('ballot-title'),
  ballot: byId('ballot'),
  ballotFieldset: byId('ballot-fieldset'),
  choices: byId('choices'),
  cast: byId('cast'),
  pow: byId('pow'),
  powText: byId('pow-text'),
  powProgress: byId('pow-progress'),
  powAttempts: byId('pow-attempts'),
  powCancel: byId('pow-cancel'),
  voteStatus: byId('vote-status'),
  voteError: byId('vote-error'),
  liveSection: byId('live-section'),
  resultsLink: byId('results-link'),
  liveResults: byId('live-results'),
  checkSection: byId('check-section'),
  checkTitle: byId('check-title'),
  checkForm: byId('check-form'),
  checkReceipt: byId('check-receipt'),
  checkSaved: byId('check-saved'),
  checkButton: byId('check-button'),
  checkVerdict: byId('check-verdict'),
  checkDetails: byId('check-details'),
  checkDetailsList: byId('check-details-list'),
};

const state = {
  devLogin: false,
  elections: [],
  election: null, // the chosen election, from GET /v1/elections/{id}
  voted: false, // a vote in it was accepted on this page
  choosing: null, // {id, promise} of a ballot being loaded
  loadSeq: 0,
  stream: null,
  panel: null,
  busy: false,
  cancelPow: null,
  checking: false,
  checkFor: null, // the election whose receipt check is shown
};

// ---- Session --------------------------------------------------------------------------------

/** The stored session {token, voter, expires_at}, or null when absent or expired. */
function session() {
  try {
    const s = JSON.parse(sessionStorage.getItem(SESSION_KEY) ?? 'null');
    if (!s || typeof s.token !== 'string') return null;
    if (Number.isFinite(s.expires_at) && s.expires_at <= Date.now()) {
      sessionStorage.removeItem(SESSION_KEY);
      return null;
    }
    return s;
  } catch {
    return null;
  }
}

function saveSession(s) {
  sessionStorage.setItem(SESSION_KEY, JSON.stringify(s));
  renderSession();
}

function signOut(message) {
  sessionStorage.removeItem(SESSION_KEY);
  renderSession();
  notify(ui.signinStatus, message ?? 'Signed out.');
}

/** Claims of a JWT, without checking it (the server does): only to show who is signed in. */
function jwtClaims(token) {
  try {
    const part = token.split('.')[1];
    const b64 = part.replace(/-/g, '+').replace(/_/g, '/').padEnd(Math.ceil(part.length / 4) * 4, '=');
    return JSON.parse(new TextDecoder().decode(Uint8Array.from(atob(b64), (c) => c.charCodeAt(0))));
  } catch {
    return null;
  }
}

function renderSession() {
  const s = session();
  ui.signinLoading.hidden = true;
  ui.signedIn.hidden = !s;
  ui.devForm.hidden = !!s || !state.devLogin;
  ui.tokenForm.hidden = !!s || state.devLogin;
  if (s) {
    const who = s.voter ? `voter ${s.voter}` : 'a voter';
    const until = Number.isFinite(s.expires_at)
      ? ` until ${new Date(s.expires_at).toLocaleTimeString()}` : '';
    ui.signedInText.textContent = `Signed in as ${who}${until}.`;
  }
}

async function detectSignIn() {
  const res = await api('/v1/dev/login');
  state.devLogin = res.ok && res.data?.enabled === true;
  renderSession();
}

async function devSignIn(event) {
  event.preventDefault();
  const raw = ui.voterId.value.trim();
  let valid = /^\d{1,20}$/.test(raw);
  if (valid) valid = BigInt(raw) <= U64_MAX;
  ui.voterId.setAttribute('aria-invalid', String(!valid));
  if (!valid) {
    notify(ui.signinStatus, 'Enter your voter id: a whole number such as 42.');
    ui.voterId.focus();
    return;
  }
  notify(ui.signinStatus, 'Signing in…');
  const res = await api('/v1/dev/login', { method: 'POST', body: { voter: raw } });
  if (!res.ok || typeof res.data?.token !== 'string') {
    notify(ui.signinStatus, describeError(res, 'The sign-in'));
    return;
  }
  ui.voterId.value = '';
  saveSession({ token: res.data.token, voter: String(res.data.voter ?? raw), expires_at: Number(res.data.expires_at) || null });
  notify(ui.signinStatus, ''); // the focus moves to the "Signed in as …" line, which is read out
  ui.signedInText.focus();
}

function tokenSignIn(event) {
  event.preventDefault();
  const token = ui.token.value.trim();
  const claims = token ? jwtClaims(token) : null;
  if (!claims) {
    ui.token.setAttribute('aria-invalid', 'true');
    notify(ui.signinStatus, 'That does not look like a sign-in token: paste the whole token.');
    ui.token.focus();
    return;
  }
  const expiresAt = Number.isFinite(claims.exp) ? claims.exp * 1000 : null;
  if (expiresAt !== null && expiresAt <= Date.now()) {
    ui.token.setAttribute('aria-invalid', 'true');
    notify(ui.signinStatus, 'This token has expired: ask for a new one.');
    ui.token.focus();
    return;
  }
  ui.token.setAttribute('aria-invalid', 'false');
  ui.token.value = '';
  saveSession({ token, voter: typeof claims.sub === 'string' ? claims.sub : null, expires_at: expiresAt });
  notify(ui.signinStatus, '');
  ui.signedInText.focus();
}

// ---- Elections ------------------------------------------------------------------------------

const STATE_TEXT = { open: 'Open', closed: 'Closed', final: 'Final result', draft: 'Draft' };

async function loadElections() {
  notify(ui.electionsStatus, 'Loading elections…');
  const res = await api('/v1/elections');
  if (!res.ok || !Array.isArray(res.data)) {
    notify(ui.electionsStatus, describeError(res, 'Loading the elections'));
    return;
  }
  state.elections = res.data;
  renderElections();
  const open = state.elections.filter((e) => e.state === 'open').length;
  notify(ui.electionsStatus, state.elections.length === 0
    ? 'There are no elections yet.'
    : `${state.elections.length} election${state.elections.length === 1 ? '' : 's'}, ${open} open for voting.`);
}

function renderElections() {
  setChildren(ui.elections, state.elections.map((e) => {
    const title = String(e.title ?? e.id);
    const action = e.state === 'open'
      ? h('button', { type: 'button', class: 'small', onclick: () => chooseElection(e.id, true) },
        'Vote', h('span', { class: 'visually-hidden', text: ` in ${title}` }))
      : h('div', { class: 'actions' },
        (e.state === 'closed' || e.state === 'final') && h('button', {
          type: 'button', class: 'small', onclick: () => openCheck(e.id),
        }, 'Check receipt', h('span', { class: 'visually-hidden', text: ` in ${title}` })),
        h('a', { class: 'button secondary small', href: `/results/${seg(e.id)}` },
          'Results', h('span', { class: 'visually-hidden', text: ` of ${title}` })));
    return h('li', { class: `election${state.election?.id === e.id ? ' selected' : ''}`, dataset: { id: e.id } },
      h('div', { class: 'meta' },
        h('h3', { text: title }),
        h('span', { class: `badge ${e.state}`, text: STATE_TEXT[e.state] ?? e.state })),
      action);
  }));
}

/**
 * Shows the ballot of election `id`. Choosing the election already shown (and not yet voted
 * in) only moves the focus there, and a choice made while the same election is still loading
 * waits for that load: the ballot is never rebuilt under a choice being made.
 */
async function chooseElection(id, focus) {
  if (state.choosing?.id === id) {
    await state.choosing.promise;
  } else if (!(state.election?.id === id && !state.voted && !ui.ballotSection.hidden)) {
    const promise = loadBallot(id);
    state.choosing = { id, promise };
    try {
      await promise;
    } finally {
      if (state.choosing?.promise === promise) state.choosing = null;
    }
  }
  if (focus && state.election?.id === id) ui.ballotTitle.focus();
}

/** Loads election `id` into the ballot and follows its results. */
async function loadBallot(id) {
  const seq = ++state.loadSeq;
  cancelPow();
  const res = await api(`/v1/elections/${seg(id)}`);
  if (seq !== state.loadSeq) return; // another election was chosen meanwhile
  notify(ui.voteError, '');
  setChildren(ui.voteStatus);
  if (!res.ok || !res.data) {
    notify(ui.pageMessage, describeError(res, 'Loading the election'), 'error');
    return;
  }
  notify(ui.pageMessage, '');
  const e = res.data;
  state.election = e;
  state.voted = false;
  history.replaceState(null, '', `#${encodeURIComponent(e.id)}`);
  renderElections();

  ui.ballotTitle.textContent = e.title;
  const options = Array.isArray(e.options) ? e.options : [];
  setChildren(ui.choices, options.map((o, i) => {
    const inputId = `option-${i}`;
    return h('label', { class: 'choice', for: inputId },
      h('input', { type: 'radio', name: 'option', id: inputId, value: o.id, required: true }),
      h('span', { text: o.label }));
  }));
  const open = e.state === 'open';
  ui.ballotFieldset.disabled = !open;
  ui.cast.disabled = !open;
  ui.cast.hidden = !open;
  if (!open) {
    const check = e.state === 'closed' || e.state === 'final' ? ' Check your receipt and see the results below.' : ' See the results below.';
    notify(ui.voteError, `This election is ${e.state}: voting is over.${check}`, 'warn');
  }
  ui.ballotSection.hidden = false;
  if (e.state === 'closed' || e.state === 'final') showCheck(e);
  else hideCheck();

  ui.resultsLink.href = `/results/${seg(e.id)}`;
  ui.liveSection.hidden = false;
  startResults(e);
}

function startResults(e) {
  state.stream?.close();
  state.panel = new ResultsPanel(ui.liveResults, { label: 'Live results' });
  state.panel.setOptions(e.options ?? []);
  const panel = state.panel;
  // Initial numbers at once; the stream then sends every change.
  api(`/v1/elections/${seg(e.id)}/results`).then((res) => {
    if (res.ok && state.panel === panel) panel.update(res.data);
  });
  state.stream = followResults(e.id, {
    onResults: (r) => {
      panel.update(r);
      // The result became official while the page was open: receipts can be checked now.
      if (r.final && state.election?.id === e.id) showCheck(e);
    },
    onState: (s) => panel.setConnection(s),
  });
}

// ---- Voting ---------------------------------------------------------------------------------

function setBusy(busy) {
  state.busy = busy;
  ui.cast.disabled = busy;
  ui.cast.textContent = busy ? 'Sending…' : 'Cast my vote';
  ui.ballot.setAttribute('aria-busy', String(busy));
}

function cancelPow() {
  if (state.cancelPow) state.cancelPow();
}

/**
 * Solves a challenge in pow-worker.js, showing the attempts so far. Resolves with the nonce,
 * or null when cancelled.
 */
function solveInWorker(challenge, difficulty) {
  return new Promise((resolve, reject) => {
    const worker = new Worker('/static/pow-worker.js');
    const expected = 2 ** difficulty;
    ui.pow.hidden = false;
    ui.powText.textContent = `Running the anti-bot check (difficulty ${difficulty})…`;
    ui.powAttempts.textContent = '0';
    ui.powProgress.value = 0;
    const finish = () => {
      worker.terminate();
      state.cancelPow = null;
      ui.pow.hidden = true;
    };
    state.cancelPow = () => {
      finish();
      resolve(null);
    };
    worker.onmessage = ({ data }) => {
      if (data.type === 'progress') {
        ui.powAttempts.textContent = fmtInt(data.attempts);
        // The chance of having found a solution by now: an honest bar for a random search.
        ui.powProgress.value = 1 - Math.exp(-data.attempts / expected);
      } else if (data.type === 'solved') {
        finish();
        resolve(data.nonce);
      } else {
        finish();
        reject(new Error(data.message ?? 'the anti-bot check failed'));
      }
    };
    worker.onerror = (event) => {
      finish();
      reject(new Error(event.message || 'the anti-bot check could not run'));
    };
    worker.postMessage({ challenge, difficulty });
  });
}

/** Fetches and solves a challenge; null when cancelled or failed (the error is shown). */
async function proofOfWork(e, token) {
  notify(ui.voteError, '');
  setChildren(ui.voteStatus, h('p', { class: 'notice info', text: 'Getting the anti-bot check…' }));
  const res = await api(`/v1/elections/${seg(e.id)}/challenge`, { token });
  if (!res.ok || typeof res.data?.challenge !== 'string') {
    showVoteError(res);
    return null;
  }
  // The progress box shows it; this line is for screen readers only.
  setChildren(ui.voteStatus, h('p', { class: 'visually-hidden', text: 'Running the anti-bot check; this can take a few seconds.' }));
  try {
    const nonce = await solveInWorker(res.data.challenge, Number(res.data.difficulty) || 0);
    if (nonce === null) {
      setChildren(ui.voteStatus, h('p', { class: 'notice warn', text: 'Cancelled: your vote was not sent.' }));
      return null;
    }
    return { challenge: res.data.challenge, nonce };
  } catch (err) {
    setChildren(ui.voteStatus);
    notify(ui.voteError, `The anti-bot check failed: ${err.message}. Please try again.`, 'error');
    return null;
  }
}

function showVoteError(res) {
  setChildren(ui.voteStatus);
  if (res.error?.code === 'unauthorized') {
    signOut('Please sign in again.');
    const field = state.devLogin ? ui.voterId : ui.token;
    notify(ui.voteError, describeError(res, 'Your vote'), 'error');
    field.focus();
    return;
  }
  const kind = res.error?.code === 'already_voted' ? 'warn' : 'error';
  notify(ui.voteError, describeError(res, 'Your vote'), kind);
}

function showReceipt(data, e, optionLabel) {
  const receipt = String(data.receipt ?? '');
  const code = h('code', { id: 'receipt', text: receipt });
  const copied = h('span', { class: 'muted', 'aria-live': 'polite' });
  const copy = h('button', {
    type: 'button',
    class: 'secondary small',
    onclick: async () => {
      copied.textContent = (await copyText(receipt, code)) ? 'Copied.' : 'Select the receipt and copy it.';
    },
  }, 'Copy receipt');
  const heading = h('h3', { tabindex: '-1', text: 'Your vote is recorded' });
  setChildren(ui.voteStatus, h('div', { class: 'notice ok' },
    heading,
    h('p', {}, `You voted for ${optionLabel} in “${e.title}”. Keep this receipt to check your vote in the official result:`),
    h('div', { class: 'receipt' }, code, copy, copied),
    h('p', { class: 'muted' }, `Partition ${data.partition}, offset ${data.offset}.`)));
  heading.focus();
}

/** Copies to the clipboard; the Clipboard API needs a secure context, so fall back to a selection. */
async function copyText(text, node) {
  try {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(text);
      return true;
    }
  } catch {
    // fall through to the selection
  }
  const range = document.createRange();
  range.selectNodeContents(node);
  const sel = window.getSelection();
  sel.removeAllRanges();
  sel.addRange(range);
  try {
    return document.execCommand('copy');
  } catch {
    return false;
  }
}

async function castVote(event) {
  event.preventDefault();
  if (state.busy) return;
  const e = state.election;
  if (!e) return;
  notify(ui.voteError, '');
  const option = new FormData(ui.ballot).get('option');
  if (!option) {
    notify(ui.voteError, 'Choose an option first.', 'error');
    ui.choices.querySelector('input')?.focus();
    return;
  }
  const s = session();
  if (!s) {
    notify(ui.voteError, 'Sign in first: your vote needs to know who you are.', 'error');
    (state.devLogin ? ui.voterId : ui.token).focus();
    return;
  }
  const label = e.options.find((o) => o.id === option)?.label ?? option;
  setBusy(true);
  try {
    // The operator can raise the difficulty while the ballot is open: a vote refused for a
    // missing or too easy proof of work is retried once with a fresh challenge.
    let needPow = Number(e.pow_difficulty) > 0;
    for (let attempt = 0; attempt < 2; attempt++) {
      let pow = null;
      if (needPow) {
        pow = await proofOfWork(e, s.token);
        if (!pow) return;
      }
      setChildren(ui.voteStatus, h('p', { class: 'notice info', text: 'Sending your vote…' }));
      const body = pow ? { option, pow } : { option };
      const res = await api(`/v1/elections/${seg(e.id)}/votes`, { method: 'POST', token: s.token, body });
      if (res.ok) {
        state.voted = true;
        if (typeof res.data?.receipt === 'string') keepReceipt(e.id, res.data.receipt, s.voter);
        showReceipt(res.data ?? {}, e, label);
        // Voting again would only be refused: close the ballot (a reload opens a new one).
        ui.ballotFieldset.disabled = true;
        ui.cast.hidden = true;
        return;
      }
      const code = res.error?.code;
      if (attempt === 0 && (code === 'challenge_required' || code === 'challenge_failed')) {
        needPow = true;
        continue;
      }
      if (res.status === 0) {
        // The answer was lost: the vote may or may not have been recorded.
        setChildren(ui.voteStatus);
        notify(ui.voteError, `${describeError(res, 'Your vote')} If it did arrive, it counts once; voting again is safe.`, 'error');
        return;
      }
      showVoteError(res);
      return;
    }
  } finally {
    setBusy(false);
  }
}

// ---- Receipts: kept in this browser, checked against the official result -------------------

/** All kept receipts: {election id: [{receipt, voter, at}]}. */
function keptReceipts() {
  try {
    const all = JSON.parse(localStorage.getItem(RECEIPTS_KEY) ?? '{}');
    return all && typeof all === 'object' && !Array.isArray(all) ? all : {};
  } catch {
    return {}; // storage disabled or damaged: the receipt can still be pasted
  }
}

/** The kept receipts of election `id`, oldest first. */
function receiptsOf(id) {
  const list = keptReceipts()[id];
  return Array.isArray(list) ? list.filter((r) => typeof r?.receipt === 'string' && normalizeReceipt(r.receipt) === r.receipt) : [];
}

function keepReceipt(id, receipt, voter) {
  const all = keptReceipts();
  const list = receiptsOf(id).filter((r) => r.receipt !== receipt);
  list.push({ receipt, voter: voter ?? null, at: Date.now() });
  all[id] = list.slice(-RECEIPTS_PER_ELECTION);
  try {
    localStorage.setItem(RECEIPTS_KEY, JSON.stringify(all));
  } catch {
    // storage full or disabled: the receipt is on screen, to copy
  }
}

/** The receipt to offer for election `id`: the signed-in voter's latest, else the latest. */
function preferredReceipt(id) {
  const list = receiptsOf(id);
  const voter = session()?.voter;
  const mine = voter ? list.filter((r) => r.voter === voter) : [];
  return (mine.at(-1) ?? list.at(-1))?.receipt ?? '';
}

/** Shows "Check my receipt" for election `e` (closed or final), prefilled when a receipt is kept. */
function showCheck(e) {
  const kept = receiptsOf(e.id);
  setChildren(ui.checkSaved, kept.map((r) => h('option', { value: r.receipt })));
  if (state.checkFor !== e.id) {
    state.checkFor = e.id;
    ui.checkReceipt.value = preferredReceipt(e.id);
    ui.checkReceipt.setAttribute('aria-invalid', 'false');
    notify(ui.checkVerdict, '');
    ui.checkDetails.hidden = true;
    setChildren(ui.checkDetailsList);
  } else if (!ui.checkReceipt.value) {
    ui.checkReceipt.value = preferredReceipt(e.id);
  }
  ui.checkSection.hidden = false;
}

function hideCheck() {
  state.checkFor = null;
  ui.checkSection.hidden = true;
}

/** The list's "Check receipt" button: opens the election and moves to its receipt check. */
async function openCheck(id) {
  await chooseElection(id, false);
  if (state.election?.id === id && !ui.checkSection.hidden) ui.checkTitle.focus();
}

// The yes/no of a verdict (receipt-check.js codes) and its colour. Any other code is a proof
// that failed: the server could not show the vote is counted.
const VERDICT_HEAD = {
  counted: ['Counted', 'ok'],
  not_in_tree: ['Not counted', 'error'],
  not_final: ['Not checked yet', 'warn'],
  unavailable: ['Not checked', 'warn'],
  insecure: ['Not checked', 'warn'],
  invalid_receipt: ['Not checked', 'warn'],
  error: ['Not checked', 'warn'],
};

async function checkReceipt(event) {
  event.preventDefault();
  const e = state.election;
  if (state.checking || !e) return;
  const typed = ui.checkReceipt.value;
  if (!normalizeReceipt(typed)) {
    ui.checkReceipt.setAttribute('aria-invalid', 'true');
    ui.checkReceipt.focus();
  } else {
    ui.checkReceipt.setAttribute('aria-invalid', 'false');
  }
  state.checking = true;
  ui.checkButton.disabled = true;
  ui.checkButton.textContent = 'Checking…';
  ui.checkForm.setAttribute('aria-busy', 'true');
  ui.checkDetails.hidden = true;
  notify(ui.checkVerdict, 'Checking your receipt against the official result…', 'info');
  let verdict;
  try {
    verdict = await runReceiptCheck({ election: e, receipt: typed, api });
  } finally {
    state.checking = false;
    ui.checkButton.disabled = false;
    ui.checkButton.textContent = 'Check my receipt';
    ui.checkForm.removeAttribute('aria-busy');
  }
  if (state.election?.id !== e.id) return; // another election was chosen meanwhile
  const [head, kind] = verdict.counted ? VERDICT_HEAD.counted : VERDICT_HEAD[verdict.code] ?? ['Not proven', 'error'];
  notify(ui.checkVerdict, h('div', {},
    h('h3', { text: head }),
    h('p', { text: verdict.message })), kind);
  setChildren(ui.checkDetailsList, verdict.details.flatMap(([term, value]) => [
    h('dt', { text: term }), h('dd', { text: value })]));
  ui.checkDetails.hidden = verdict.details.length === 0;
}

// ---- Start ----------------------------------------------------------------------------------

ui.devForm.addEventListener('submit', devSignIn);
ui.tokenForm.addEventListener('submit', tokenSignIn);
ui.signOut.addEventListener('click', () => {
  signOut();
  (state.devLogin ? ui.voterId : ui.token).focus();
});
ui.refresh.addEventListener('click', loadElections);
ui.ballot.addEventListener('submit', castVote);
ui.powCancel.addEventListener('click', cancelPow);
ui.checkForm.addEventListener('submit', checkReceipt);

await Promise.all([detectSignIn(), loadElections()]);
// Reopen the ballot of the election in the fragment (kept across a reload).
const wanted = decodeURIComponent(location.hash.slice(1));
if (wanted && state.elections.some((e) => e.id === wanted)) await chooseElection(wanted, false);

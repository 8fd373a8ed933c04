// Shared by the voter, results and admin pages: building DOM, calling the JSON API with its
// error envelope (docs/design.md §4.2), human messages per error code, and the live result bars fed by
// Server-Sent Events.
//
// The pages run under a strict CSP (no inline script or style), so everything here builds
// elements with the DOM API; the one dynamic style value, a bar's length, is a CSS custom
// property set through the CSSOM, which the CSP allows.

/**
 * Creates an element. `attrs`: `class`, `text`, `hidden`, `on<event>` (listeners), `dataset`
 * (object), anything else as an attribute (skipped when null/undefined/false).
 * Children: nodes or strings; null/undefined/false are skipped.
 */
export function h(tag, attrs = {}, ...children) {
  const node = tag === 'svg' || tag === 'polyline'
    ? document.createElementNS('http://www.w3.org/2000/svg', tag)
    : document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === 'class') node.setAttribute('class', value);
    else if (key === 'text') node.textContent = value;
    else if (key === 'hidden') node.hidden = true;
    else if (key === 'dataset') Object.assign(node.dataset, value);
    else if (key.startsWith('on') && typeof value === 'function') {
      node.addEventListener(key.slice(2), value);
    } else node.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Replaces all children of `node`. */
export function setChildren(node, ...children) {
  node.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
}

/** `document.getElementById`, failing loudly when the page lacks the element. */
export function byId(id) {
  const node = document.getElementById(id);
  if (!node) throw new Error(`missing element #${id}`);
  return node;
}

const numberFormat = new Intl.NumberFormat();
export const fmtInt = (n) => numberFormat.format(Math.round(Number(n) || 0));

export function fmtTime(ms) {
  if (!Number.isFinite(ms) || ms <= 0) return '—';
  return new Date(ms).toLocaleTimeString();
}

/** Seconds to wait from a Retry-After value (delta-seconds or an HTTP date), or null. */
function parseRetryAfter(value) {
  if (!value) return null;
  if (/^\s*\d+\s*$/.test(value)) return Number(value);
  const at = Date.parse(value);
  return Number.isNaN(at) ? null : Math.max(0, Math.ceil((at - Date.now()) / 1000));
}

/**
 * Calls the JSON API. Never throws for HTTP or network failures (only for an abort): answers
 * `{ok, status, data, error, retryAfter}`, where `error` is the server's `{code, message}` or a
 * synthetic one (`network`, `http_<status>`) when the answer was not the JSON envelope.
 */
export async function api(path, { method = 'GET', token, body, signal } = {}) {
  const headers = { Accept: 'application/json' };
  if (token) headers.Authorization = `Bearer ${token}`;
  let payload;
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    payload = JSON.stringify(body);
  }
  let res;
  let text;
  try {
    res = await fetch(path, { method, headers, body: payload, signal, cache: 'no-store' });
    text = await res.text();
  } catch (err) {
    if (err?.name === 'AbortError') throw err;
    return {
      ok: false,
      status: 0,
      data: null,
      retryAfter: null,
      error: { code: 'network', message: String(err?.message || err) },
    };
  }
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  const result = {
    ok: res.ok,
    status: res.status,
    data,
    retryAfter: parseRetryAfter(res.headers.get('Retry-After')),
    error: null,
  };
  if (!res.ok) {
    result.error = data && data.error && typeof data.error.code === 'string'
      ? { code: data.error.code, message: String(data.error.message ?? '') }
      : { code: `http_${res.status}`, message: (text || res.statusText || '').slice(0, 200) };
  }
  return result;
}

/**
 * A sentence for a failed call, by error code (docs/design.md §4.2). `what` names the action for the
 * generic cases ("Your vote", "The sign-in").
 */
export function describeError(result, what = 'The request') {
  const { error, status, retryAfter } = result;
  const wait = retryAfter != null ? ` Try again in ${Math.max(1, retryAfter)} s.` : ' Try again in a moment.';
  switch (error?.code) {
    case 'network':
      return `${what} could not reach the server. Check your connection and try again.`;
    case 'unauthorized':
      return 'Your sign-in is missing, invalid or has expired. Please sign in again.';
    case 'challenge_required':
      return 'This election requires an anti-bot check that was not completed. Please try again.';
    case 'challenge_failed':
      return 'The anti-bot check was not accepted (it may have expired or become harder). Please try again.';
    case 'not_found':
      return 'This election does not exist (or no longer does).';
    case 'already_voted':
      return 'You have already voted in this election — only your first vote counts.';
    case 'election_not_open':
      return `This election is not open for voting${error.message ? ` (${error.message})` : ''}.`;
    case 'invalid_option':
      return 'That option is not on this ballot. Reload the page and choose again.';
    case 'rate_limited':
      return `Too many requests are coming from your network right now.${wait}`;
    case 'unavailable':
      return `The service is busy right now and nothing was recorded.${wait}`;
    case 'invalid_request':
      return `${what} was not understood by the server${error.message ? `: ${error.message}` : '.'}`;
    case 'too_large':
      return `${what} was too large for the server.`;
    case 'unsupported_media_type':
      return `${what} was sent in a format the server does not accept.`;
    case 'conflict':
      return error.message ? `Conflict: ${error.message}` : 'Conflict with the current state.';
    default:
      return `${what} failed (HTTP ${status || '?'})${error?.message ? `: ${error.message}` : '.'}`;
  }
}

/** Shows `text` in a notice element (`kind`: error, warn, ok, info), or clears it. */
export function notify(node, text, kind = 'info') {
  node.classList.remove('error', 'warn', 'ok', 'info');
  if (!text) {
    node.replaceChildren();
    return;
  }
  node.classList.add(kind);
  if (typeof text === 'string') node.textContent = text;
  else node.replaceChildren(text);
}

/** `/v1/elections/{id}` style path segment. */
export const seg = (s) => encodeURIComponent(s);

// ---- Live results -----------------------------------------------------------------------------

const STATUS_TEXT = {
  connecting: 'Connecting…',
  live: 'Live',
  reconnecting: 'Reconnecting…',
  offline: 'Not live',
  official: 'Official result',
};

/**
 * The result bars of one election, with total, status and time of the last update. Builds its
 * DOM in `container`. The visible list is not a live region (a stream can update it ten times a
 * second, far too chatty for a screen reader); a separate polite region announces a summary at
 * most every `announceEveryMs`, and the official result at once.
 */
export class ResultsPanel {
  constructor(container, { label = 'Results', announceEveryMs = 15000 } = {}) {
    this.announceEveryMs = announceEveryMs;
    this.options = [];
    this.rows = new Map();
    this.asOf = 0;
    this.final = false;
    this.lastAnnounced = 0;
    this.latest = null;

    this.badge = h('span', { class: 'badge connecting', text: STATUS_TEXT.connecting });
    this.totalNode = h('strong', { text: '0' });
    this.timeNode = h('time', { text: '—' });
    this.list = h('ol', { class: 'results', 'aria-label': label });
    this.announcer = h('p', { class: 'visually-hidden', role: 'status', 'aria-live': 'polite' });
    const meta = h('p', { class: 'results-meta' },
      h('span', {}, h('span', { class: 'visually-hidden', text: 'Status: ' }), this.badge),
      h('span', { class: 'total' }, 'Total ', this.totalNode, ' votes'),
      h('span', {}, 'Updated ', this.timeNode));
    container.replaceChildren(meta, this.list, this.announcer);
  }

  /** The ballot's options, in the election's order (kept: re-sorting live bars is confusing). */
  setOptions(options) {
    this.options = options.map((o) => ({ id: o.id, label: o.label }));
    this.rows.clear();
    this.list.replaceChildren();
    for (const o of this.options) this.addRow(o.id, o.label);
    if (this.latest) this.render(this.latest);
  }

  addRow(id, label) {
    const count = h('span', { class: 'count', text: '0' });
    const pct = h('span', { class: 'pct', text: '0%' });
    const fill = h('span');
    const item = h('li', { class: 'result', dataset: { option: id } },
      h('div', { class: 'line' },
        h('span', { class: 'option', text: label }),
        h('span', { class: 'numbers' },
          count, h('span', { class: 'visually-hidden', text: ' votes, ' }), pct)),
      h('div', { class: 'bar', 'aria-hidden': 'true' }, fill));
    this.list.append(item);
    const row = { item, count, pct, fill };
    this.rows.set(id, row);
    return row;
  }

  /** Connection state: connecting, live, reconnecting, offline (ignored once official). */
  setConnection(state) {
    if (this.final) state = 'official';
    this.badge.className = `badge ${state}`;
    this.badge.textContent = STATUS_TEXT[state] ?? state;
  }

  /**
   * Applies a results document (`GET …/results`, `tally` and `final` events). An update older
   * than the one shown is ignored (the initial fetch and the stream can cross), except that a
   * final result always wins.
   */
  update(results) {
    if (!results || typeof results !== 'object') return;
    const asOf = Number(results.as_of) || 0;
    if (this.final && !results.final) return;
    if (!results.final && asOf < this.asOf) return;
    this.asOf = Math.max(this.asOf, asOf);
    this.latest = results;
    if (results.final) this.final = true;
    this.render(results);
  }

  render(results) {
    const totals = results.totals && typeof results.totals === 'object' ? results.totals : {};
    // Counts for an option the page does not know (should not happen) still show, by id.
    for (const id of Object.keys(totals)) if (!this.rows.has(id)) this.addRow(id, id);
    const sum = Object.values(totals).reduce((a, n) => a + (Number(n) || 0), 0);
    const total = Number.isFinite(Number(results.total)) ? Number(results.total) : sum;
    const max = Math.max(0, ...Object.values(totals).map((n) => Number(n) || 0));
    for (const [id, row] of this.rows) {
      const n = Number(totals[id]) || 0;
      const share = total > 0 ? n / total : 0;
      row.count.textContent = fmtInt(n);
      row.pct.textContent = `${(share * 100).toFixed(1)}%`;
      row.fill.style.setProperty('--share', String(share));
      row.item.classList.toggle('leader', max > 0 && n === max);
    }
    this.totalNode.textContent = fmtInt(total);
    const asOf = Number(results.as_of) || Date.now();
    this.timeNode.textContent = fmtTime(asOf);
    this.timeNode.dateTime = new Date(asOf).toISOString();
    if (results.final) this.setConnection('official');
    this.maybeAnnounce(results);
  }

  maybeAnnounce(results) {
    const now = Date.now();
    if (!results.final && now - this.lastAnnounced < this.announceEveryMs) return;
    this.lastAnnounced = now;
    const parts = [...this.rows.entries()].map(([id, row]) => {
      const label = this.options.find((o) => o.id === id)?.label ?? id;
      return `${label} ${row.count.textContent} (${row.pct.textContent})`;
    });
    const head = results.final ? 'Official result' : 'Live results';
    this.announcer.textContent = `${head}: ${parts.join(', ')}. Total ${this.totalNode.textContent}.`;
  }
}

/**
 * Follows the election's live results. Calls `onResults` with each `tally` and `final` document
 * and `onState` with connecting / live / reconnecting / offline / official. Over SSE
 * (`GET …/results/stream`) by default; over WebSocket (`GET …/results/ws`) when `transport` is
 * `'ws'` or the browser has no EventSource. After `final` the stream is closed here (the
 * server closes it too). Returns `{close()}`.
 */
export function followResults(id, { onResults, onState, transport = 'sse' }) {
  if (transport === 'ws' || typeof EventSource === 'undefined') {
    return followResultsWs(id, { onResults, onState });
  }
  let finished = false;
  const source = new EventSource(`/v1/elections/${seg(id)}/results/stream`);
  onState('connecting');
  const parse = (event) => {
    try {
      return JSON.parse(event.data);
    } catch {
      return null;
    }
  };
  source.addEventListener('open', () => onState('live'));
  source.addEventListener('tally', (event) => {
    const data = parse(event);
    if (data) onResults(data);
    onState('live');
  });
  source.addEventListener('final', (event) => {
    finished = true;
    source.close();
    const data = parse(event);
    if (data) onResults({ ...data, final: true });
    onState('official');
  });
  source.addEventListener('error', () => {
    if (finished) return;
    // CONNECTING: the browser retries by itself. CLOSED: it gave up (e.g. a 204 or a non-SSE
    // answer), and the caller may fetch the results once instead.
    onState(source.readyState === EventSource.CLOSED ? 'offline' : 'reconnecting');
  });
  return {
    close() {
      finished = true;
      source.close();
    },
  };
}

/**
 * `followResults` over WebSocket: JSON text frames `{event, id, data}`; the browser answers the
 * server's pings. A dropped socket is reopened after 2 s, then more slowly (at most every 30 s).
 */
function followResultsWs(id, { onResults, onState }) {
  let finished = false;
  let socket = null;
  let timer = null;
  let retry = 2000;
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  const url = `${scheme}://${location.host}/v1/elections/${seg(id)}/results/ws`;
  const connect = () => {
    onState('connecting');
    socket = new WebSocket(url);
    socket.addEventListener('open', () => {
      retry = 2000;
      onState('live');
    });
    socket.addEventListener('message', (message) => {
      let event;
      try {
        event = JSON.parse(message.data);
      } catch {
        return;
      }
      if (event?.event === 'tally' && event.data) {
        onResults(event.data);
        onState('live');
      } else if (event?.event === 'final' && event.data) {
        finished = true;
        onResults({ ...event.data, final: true });
        onState('official');
        socket.close();
      }
    });
    socket.addEventListener('close', () => {
      if (finished) return;
      onState('reconnecting');
      timer = setTimeout(connect, retry);
      retry = Math.min(retry * 2, 30000);
    });
  };
  connect();
  return {
    close() {
      finished = true;
      clearTimeout(timer);
      socket?.close();
    },
  };
}

// The public results page (/results/{id}): title and options from GET /v1/elections/{id}, the
// numbers so far from GET …/results, then live updates from the SSE stream (or its WebSocket
// twin with `?transport=ws`) until the result is official (docs/design.md §4.2).

import { api, byId, describeError, followResults, h, notify, ResultsPanel, seg } from '/static/common.js';

const ui = {
  title: byId('title'),
  subtitle: byId('subtitle'),
  message: byId('message'),
  card: byId('results-card'),
  results: byId('results'),
  voteLink: byId('vote-link'),
  voteAnchor: byId('vote-anchor'),
};

const STATE_TEXT = {
  open: 'Voting is open: results are live.',
  closed: 'Voting has closed: the official count is being made.',
  final: 'Voting has closed.',
};

/** The election id: the last non-empty segment of the path (`/results/{id}`). */
function electionId() {
  const parts = location.pathname.split('/').filter(Boolean);
  try {
    return decodeURIComponent(parts[parts.length - 1] ?? '');
  } catch {
    return '';
  }
}

function notFound() {
  document.title = 'No such election';
  ui.title.textContent = 'No such election';
  ui.subtitle.textContent = '';
  notify(ui.message, h('span', {},
    'There is no election at this address. It may not be published yet, or the link may be wrong. ',
    h('a', { href: '/' }, 'See the elections')), 'warn');
}

let retryDelay = 2000;

async function start() {
  const id = electionId();
  if (!id || id === 'results') {
    notFound();
    return;
  }
  const res = await api(`/v1/elections/${seg(id)}`);
  if (res.status === 404) {
    notFound();
    return;
  }
  if (!res.ok || !res.data) {
    // The server may be restarting: try again, more slowly each time (at most every 30 s).
    notify(ui.message, `${describeError(res, 'Loading the election')} Retrying…`, 'error');
    setTimeout(start, retryDelay);
    retryDelay = Math.min(retryDelay * 2, 30000);
    return;
  }
  notify(ui.message, '');
  const e = res.data;
  document.title = `${e.title} — live results`;
  ui.title.textContent = e.title;
  ui.subtitle.textContent = STATE_TEXT[e.state] ?? '';
  ui.voteLink.hidden = e.state !== 'open';
  ui.voteAnchor.href = `/#${encodeURIComponent(e.id)}`;
  ui.card.hidden = false;

  const panel = new ResultsPanel(ui.results, { label: 'Results' });
  panel.setOptions(Array.isArray(e.options) ? e.options : []);

  const fetchResults = async () => {
    const r = await api(`/v1/elections/${seg(e.id)}/results`);
    if (r.ok && r.data) panel.update(r.data);
    return r;
  };
  const initial = await fetchResults();
  const official = () => {
    ui.subtitle.textContent = 'Official result.';
    ui.voteLink.hidden = true;
  };
  if (initial.ok && initial.data?.final) {
    panel.setConnection('official');
    official();
    return; // nothing more will change
  }
  followResults(e.id, {
    // `?transport=ws` follows over WebSocket instead of SSE.
    transport: new URLSearchParams(location.search).get('transport') === 'ws' ? 'ws' : 'sse',
    onResults: (r) => {
      panel.update(r);
      if (r.final) official();
    },
    onState: (s) => {
      panel.setConnection(s);
      // The browser stopped retrying (e.g. a 204 once the result is official): fetch once.
      if (s === 'offline') {
        fetchResults().then((r) => {
          if (r.ok && r.data?.final) official();
        });
      }
    },
  });
}

start();

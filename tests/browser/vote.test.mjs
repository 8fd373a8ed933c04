// Headless Chromium against a running `votes serve` (started by tests/browser/run.sh): the voter
// page signs in with the development login and votes, the public results page follows the
// count over SSE without reloading, a second vote is refused as already_voted, and the admin
// dashboard lists the election and shows live figures. axe-core audits every page for WCAG 2.1
// A/AA in the light and dark themes, at phone and desktop width. Last, the election is closed through
// the admin API and, once its result is official, the voter page's "Check my receipt" (in a
// browser that kept the first voter's receipt) proves the vote is counted for its option, and
// says a tampered receipt is not in the official tree.
//
// Environment (run.sh sets all of it):
//   VOTES_PUBLIC_URL   public listener, e.g. http://127.0.0.1:18080
//   VOTES_ADMIN_URL    admin listener
//   VOTES_ADMIN_TOKEN  admin bearer token
//   VOTES_ELECTION     an open election with at least 2 options
//   VOTES_VOTER        a fresh voter id (VOTES_VOTER + 1 and + 3 must be fresh too; + 2 signs
//                      in without voting)
//   VOTES_SERVE_LOG    optional: the server's log, named on failure
//   VOTES_PERSIST_LOG  optional: the persister's log, named on failure
//   VOTES_WEB_DIR      optional: serve the pages from this directory (src/serve/web) instead of
//                      the binary's embedded copy; without it, the embedded copy must equal
//                      src/serve/web (a stale binary fails at once, not with a puzzling timeout)
//   CHROMIUM           optional: the browser binary (default /usr/bin/chromium)
//
// On failure every page of the test is saved as target/browser/<test>-<page>.png.

import assert from 'node:assert/strict';
import { mkdir, readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const SHOTS = path.join(REPO, 'target', 'browser');
// SSE must deliver a new count within this (the brief of the test: 15 s).
const LIVE_UPDATE_MS = 15_000;
// A vote may include a proof of work and waits for its Kafka commit.
const VOTE_MS = 30_000;
// After the close: the recount waits for the persister, then replays the log (DESIGN §4.5).
const FINAL_MS = 60_000;
const WEB_SOURCE = path.join(REPO, 'src', 'serve', 'web');

function env(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run the tests with tests/browser/run.sh`);
  return value;
}

let browser;
let cfg;
// What the vote test leaves for the receipt check: {receipt, option, title, storageState}.
let firstVote = null;

before(async () => {
  cfg = {
    publicUrl: env('VOTES_PUBLIC_URL').replace(/\/+$/, ''),
    adminUrl: env('VOTES_ADMIN_URL').replace(/\/+$/, ''),
    adminToken: env('VOTES_ADMIN_TOKEN'),
    election: env('VOTES_ELECTION'),
    voter: BigInt(env('VOTES_VOTER')),
    webDir: process.env.VOTES_WEB_DIR || null,
    // HTTP/3: QUIC forced for the TLS origin, its development certificate trusted by its key.
    h3Origin: env('VOTES_H3_ORIGIN'),
    tlsSpki: env('VOTES_TLS_SPKI'),
  };
  if (!cfg.webDir) await assertBinaryIsCurrent();
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: [
      '--no-sandbox',
      '--enable-quic',
      `--origin-to-force-quic-on=${cfg.h3Origin}`,
      `--ignore-certificate-errors-spki-list=${cfg.tlsSpki}`,
    ],
  });
});

after(async () => {
  await browser?.close();
});

/** Fails unless the server's `/static/…` files are byte for byte those of src/serve/web. */
async function assertBinaryIsCurrent() {
  const stale = [];
  for (const name of (await readdir(WEB_SOURCE)).sort()) {
    const res = await fetch(`${cfg.publicUrl}/static/${encodeURIComponent(name)}`);
    const served = res.ok ? Buffer.from(await res.arrayBuffer()) : null;
    if (!served || !served.equals(await readFile(path.join(WEB_SOURCE, name)))) stale.push(name);
  }
  if (stale.length > 0) {
    throw new Error(`the binary embeds other pages than src/serve/web (${stale.join(', ')} differ): `
      + 'rebuild it (make build), or run with BROWSER_WEB_FROM_SOURCE=1 to test the pages from the source tree');
  }
}

/** The file of src/serve/web that `url` is served from, or null. */
function sourceFile(url) {
  const { origin, pathname } = new URL(url);
  const m = /^\/static\/([A-Za-z0-9._-]+)$/.exec(pathname);
  if (m && (origin === new URL(cfg.publicUrl).origin || origin === new URL(cfg.adminUrl).origin)) return m[1];
  if (origin === new URL(cfg.publicUrl).origin) {
    if (pathname === '/') return 'index.html';
    if (/^\/results\/[^/]+$/.test(pathname)) return 'results.html';
  }
  if (origin === new URL(cfg.adminUrl).origin && pathname === '/admin') return 'admin.html';
  return null;
}

const SOURCE_TYPES = { html: 'text/html; charset=utf-8', js: 'text/javascript; charset=utf-8', css: 'text/css; charset=utf-8', svg: 'image/svg+xml' };

/**
 * VOTES_WEB_DIR: the pages and /static/ files come from that directory, with the headers the
 * server gives them (its CSP included), so page changes are tested without a rebuild.
 */
async function serveFromSource(context) {
  await context.route((url) => sourceFile(url.href) !== null, async (route) => {
    const name = sourceFile(route.request().url());
    let body;
    try {
      body = await readFile(path.join(cfg.webDir, name));
    } catch {
      return route.fallback();
    }
    const response = await route.fetch();
    const headers = response.ok()
      ? response.headers()
      : { 'content-type': SOURCE_TYPES[name.split('.').pop()] ?? 'application/octet-stream', 'x-content-type-options': 'nosniff' };
    delete headers['content-length'];
    delete headers['content-encoding'];
    return route.fulfill({ status: 200, headers, body });
  });
}

/** Polls `check` until it returns a truthy value (returned), or fails after `timeout` ms. */
async function eventually(check, { timeout = 10_000, interval = 200, what = 'the condition' } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      const value = await check();
      if (value) return value;
      last = value;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) {
      const detail = last instanceof Error ? last.message : JSON.stringify(last);
      throw new Error(`timed out after ${timeout} ms waiting for ${what} (last: ${detail})`);
    }
    await new Promise((r) => setTimeout(r, interval));
  }
}

/**
 * A test with its own browser contexts. `open(label)` gives a page in a fresh context (its own
 * sessionStorage, so its own voter). On failure each page is screenshotted, the server log is
 * named, and what the pages logged is printed. Any CSP violation or uncaught page error fails
 * the test: the pages must work under the server's Content-Security-Policy.
 */
function browserTest(name, body) {
  test(name, { timeout: 180_000 }, async () => {
    const pages = new Map();
    const contexts = [];
    const logs = [];
    const problems = [];
    const open = async (label, options = {}) => {
      const context = await browser.newContext({ viewport: { width: 390, height: 844 }, ...options });
      contexts.push(context);
      if (cfg.webDir) await serveFromSource(context);
      const page = await context.newPage();
      page.setDefaultTimeout(20_000);
      page.on('console', (msg) => {
        const line = `[${label}] console.${msg.type()}: ${msg.text()}`;
        logs.push(line);
        if (/Content[- ]Security[- ]Policy/i.test(msg.text())) problems.push(line);
      });
      page.on('pageerror', (err) => problems.push(`[${label}] uncaught: ${err.stack || err}`));
      pages.set(label, page);
      return page;
    };
    try {
      await body({ open });
      assert.deepEqual(problems, [], 'the pages raised errors or CSP violations');
    } catch (err) {
      await mkdir(SHOTS, { recursive: true });
      const slug = name.replace(/[^a-z0-9]+/gi, '-').replace(/^-|-$/g, '').toLowerCase();
      for (const [label, page] of pages) {
        const file = path.join(SHOTS, `${slug}-${label}.png`);
        try {
          await page.screenshot({ path: file, fullPage: true });
          console.error(`screenshot: ${file}`);
        } catch (shotErr) {
          console.error(`screenshot of ${label} failed: ${shotErr.message}`);
        }
      }
      if (process.env.VOTES_SERVE_LOG) console.error(`server log: ${process.env.VOTES_SERVE_LOG}`);
      if (process.env.VOTES_PERSIST_LOG) console.error(`persister log: ${process.env.VOTES_PERSIST_LOG}`);
      for (const line of [...logs, ...problems]) console.error(line);
      throw err;
    } finally {
      for (const context of contexts) await context.close().catch(() => {});
    }
  });
}

/** The election as voters see it (title and options), straight from the API. */
async function election() {
  const res = await fetch(`${cfg.publicUrl}/v1/elections/${encodeURIComponent(cfg.election)}`);
  assert.equal(res.status, 200, `GET /v1/elections/${cfg.election}`);
  const e = await res.json();
  assert.equal(e.state, 'open', 'the test election must be open');
  assert.ok(e.options.length >= 2, 'the test election must have at least 2 options');
  return e;
}

async function signIn(page, voter, base = cfg.publicUrl) {
  await page.goto(`${base}/`);
  await page.getByLabel('Voter id').fill(String(voter));
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByText(`Signed in as voter ${voter}`).first().waitFor();
}

/**
 * Picks the election on the voter page, chooses `option` and casts the vote. Returns the HTTP
 * answer of `POST …/votes` ({status, body}).
 */
async function castVote(page, e, option) {
  await page.getByRole('button', { name: `Vote in ${e.title}` }).click();
  await page.getByRole('heading', { name: e.title, level: 2 }).waitFor();
  await page.getByRole('radio', { name: option.label, exact: true }).check();
  const answer = page.waitForResponse(
    (r) => r.request().method() === 'POST'
      && new URL(r.url()).pathname === `/v1/elections/${encodeURIComponent(e.id)}/votes`,
    { timeout: VOTE_MS },
  );
  await page.getByRole('button', { name: 'Cast my vote' }).click();
  const response = await answer;
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  return { status: response.status(), body };
}

/** Votes and waits for the receipt on the page; returns the receipt. */
async function voteAccepted(page, e, option) {
  const answer = await castVote(page, e, option);
  assert.equal(answer.status, 202, `the vote was answered ${answer.status} ${JSON.stringify(answer.body)}`);
  const recorded = page.getByRole('status').filter({ hasText: 'Your vote is recorded' });
  await recorded.waitFor({ timeout: VOTE_MS });
  const receipt = (await recorded.locator('code').textContent()).trim();
  assert.match(receipt, /^[0-9a-f]{64}$/, 'the receipt is 64 hex digits');
  assert.equal(receipt, answer.body.receipt, 'the page shows the receipt the API returned');
  return receipt;
}

/** The count shown for `option` on the results page. */
async function shownCount(page, option) {
  const row = page.getByRole('list', { name: 'Results' }).getByRole('listitem')
    .filter({ has: page.getByText(option.label, { exact: true }) });
  const text = await row.locator('.count').textContent({ timeout: 2000 });
  return Number(text.replace(/[^0-9]/g, ''));
}

browserTest('vote, live results and already voted', async ({ open }) => {
  const e = await election();
  const option = e.options[0];
  const first = cfg.voter;
  const second = cfg.voter + 1n;

  // The first voter signs in and votes.
  const voter = await open('voter');
  await signIn(voter, first);
  const receipt = await voteAccepted(voter, e, option);
  // The page keeps the receipt in localStorage; the receipt check reopens this browser's storage.
  firstVote = { receipt, option, title: e.title, storageState: await voter.context().storageState() };

  // The public results page shows that vote (once the read model has it).
  const results = await open('results');
  await results.goto(`${cfg.publicUrl}/results/${encodeURIComponent(e.id)}`);
  await results.getByRole('heading', { name: e.title, level: 1 }).waitFor();
  const before = await eventually(async () => {
    const n = await shownCount(results, option);
    return n >= 1 ? n : null;
  }, { timeout: LIVE_UPDATE_MS, what: `a count of at least 1 for ${option.label} on the results page` });
  await results.getByText('Live', { exact: true }).waitFor({ timeout: LIVE_UPDATE_MS });
  // A marker that a reload or navigation would wipe: the update below must come over SSE.
  await results.evaluate(() => {
    window.__votesNoReload = true;
  });

  // A second voter, in another browser context, votes for the same option.
  const other = await open('voter2');
  await signIn(other, second);
  await voteAccepted(other, e, option);

  const afterVote = await eventually(async () => {
    const n = await shownCount(results, option);
    return n > before ? n : null;
  }, { timeout: LIVE_UPDATE_MS, what: `the count of ${option.label} to rise above ${before} without a reload` });
  assert.ok(afterVote >= before + 1);
  assert.equal(await results.evaluate(() => window.__votesNoReload), true, 'the results page was not reloaded');

  // The first voter tries again (a fresh ballot after a reload; the session is kept).
  await voter.reload();
  await voter.getByText(`Signed in as voter ${first}`).first().waitFor();
  const again = await castVote(voter, e, option);
  assert.equal(again.status, 409, `a second vote was answered ${again.status} ${JSON.stringify(again.body)}`);
  assert.equal(again.body?.error?.code, 'already_voted');
  await voter.getByRole('alert').filter({ hasText: 'You have already voted in this election' }).waitFor();
});

browserTest('live results over WebSocket', async ({ open }) => {
  const e = await election();
  const option = e.options[1];
  const results = await open('results');
  // Every WebSocket the page opens, and the text frames it receives on it.
  const sockets = [];
  results.on('websocket', (ws) => {
    const seen = { url: ws.url(), frames: 0 };
    sockets.push(seen);
    ws.on('framereceived', () => { seen.frames += 1; });
  });
  await results.goto(`${cfg.publicUrl}/results/${encodeURIComponent(e.id)}?transport=ws`);
  await results.getByRole('heading', { name: e.title, level: 1 }).waitFor();
  await results.getByText('Live', { exact: true }).waitFor({ timeout: LIVE_UPDATE_MS });
  const before = await shownCount(results, option);
  await results.evaluate(() => {
    window.__votesNoReload = true;
  });

  // A voter who has not voted yet (VOTES_VOTER + 3) votes for that option elsewhere.
  const voter = await open('voter');
  await signIn(voter, cfg.voter + 3n);
  await voteAccepted(voter, e, option);

  await eventually(async () => {
    const n = await shownCount(results, option);
    return n > before ? n : null;
  }, { timeout: LIVE_UPDATE_MS, what: `the count of ${option.label} to rise above ${before} over WebSocket` });
  assert.equal(await results.evaluate(() => window.__votesNoReload), true, 'the results page was not reloaded');
  const ws = sockets.filter((s) => new URL(s.url).pathname === `/v1/elections/${encodeURIComponent(e.id)}/results/ws`);
  assert.ok(ws.length >= 1 && ws.some((s) => s.frames >= 2), `the page followed over WebSocket: ${JSON.stringify(sockets)}`);
});

/** The sum of a counter of the server's /metrics over its labels (each core publishes once a second). */
async function metricSum(name) {
  const res = await fetch(`${cfg.adminUrl}/metrics`, { headers: { Authorization: `Bearer ${cfg.adminToken}` } });
  assert.equal(res.status, 200, `/metrics with the admin token answered ${res.status}`);
  const text = await res.text();
  return text.split('\n')
    .filter((l) => l.startsWith(`${name}{`) || l.startsWith(`${name} `))
    .reduce((sum, l) => sum + Number(l.split(' ').pop()), 0);
}

browserTest('a vote over HTTP/3', async ({ open }) => {
  const e = await election();
  const before = await metricSum('votes_http3_requests_total');
  const page = await open('h3');
  const voter = cfg.voter + 1000n;
  await signIn(page, voter, `https://${cfg.h3Origin}`);
  const navigation = await page.evaluate(() => performance.getEntriesByType('navigation')[0].nextHopProtocol);
  assert.equal(navigation, 'h3', 'the voter page arrived over HTTP/3');
  await voteAccepted(page, e, e.options[1]);
  const votes = await page.evaluate(() => performance.getEntriesByType('resource')
    .filter((r) => r.name.endsWith('/votes')).map((r) => r.nextHopProtocol));
  assert.ok(votes.length >= 1 && votes.every((p) => p === 'h3'), `the vote went over HTTP/3: ${votes}`);
  await eventually(async () => (await metricSum('votes_http3_requests_total')) > before,
    { timeout: 5_000, interval: 250, what: 'the server to count the HTTP/3 requests' });
});

browserTest('results page of an unknown election', async ({ open }) => {
  const page = await open('results');
  await page.goto(`${cfg.publicUrl}/results/no-such-election-${Date.now()}`);
  await page.getByRole('heading', { name: 'No such election', level: 1 }).waitFor();
});

browserTest('admin dashboard', async ({ open }) => {
  const page = await open('admin');
  await page.goto(`${cfg.adminUrl}/admin#token=${encodeURIComponent(cfg.adminToken)}`);

  // The token is taken from the fragment, which is then removed from the address bar.
  await eventually(() => !page.url().includes('token='), { what: 'the #token fragment to be removed' });

  // The election is listed with its state.
  const row = page.getByRole('row').filter({ has: page.getByText(cfg.election, { exact: true }) });
  await row.waitFor();
  await row.getByText(/^open$/i).waitFor();
  const link = row.getByRole('link', { name: /^Results/ });
  assert.match(await link.getAttribute('href'), new RegExp(`/results/${cfg.election}$`));

  // The live figures show numbers, and the node is ready.
  const stats = page.getByRole('region', { name: 'Live figures' });
  await stats.waitFor();
  const accepted = stats.getByText('Accepted votes', { exact: true }).locator('xpath=following-sibling::dd[1]');
  await eventually(async () => /^\d[\d,.\u202f\u00a0]*$/.test((await accepted.textContent()).trim()),
    { what: 'a number in "Accepted votes"' });
  await stats.getByText('Ready', { exact: true }).waitFor();
  // Votes/s needs two polls one second apart.
  const rate = stats.getByText('Votes/s', { exact: true }).locator('xpath=following-sibling::dd[1]');
  await eventually(async () => /^\d/.test((await rate.textContent()).trim()), { what: 'a number in "Votes/s"' });

  // Create an election with the form, open it, and change its difficulty.
  const title = `Admin check ${Date.now()}`;
  const form = page.getByRole('region', { name: 'New election' });
  await form.getByLabel('Title', { exact: true }).fill(title);
  await form.getByLabel('Option 1 label').fill('Yes');
  await form.getByLabel('Option 2 label').fill('No');
  await form.getByRole('button', { name: 'Create election' }).click();
  await page.getByRole('status').filter({ hasText: `Created “${title}”` }).waitFor();
  const created = page.getByRole('row').filter({ has: page.getByText(title, { exact: true }) });
  await created.getByText(/^draft$/i).waitFor();
  await created.getByRole('button', { name: `Open ${title}` }).click();
  await created.getByText(/^open$/i).waitFor();
  await created.getByLabel(`Anti-bot difficulty of ${title}`).fill('3');
  await created.getByRole('button', { name: 'Set' }).click();
  await page.getByRole('status').filter({ hasText: `difficulty of “${title}” is now 3` }).waitFor();
  const id = (await created.locator('code').textContent()).trim();
  const res = await fetch(`${cfg.publicUrl}/v1/elections/${encodeURIComponent(id)}`);
  assert.equal(res.status, 200, `GET /v1/elections/${id} after creating it in the dashboard`);
  const e = await res.json();
  assert.equal(e.state, 'open');
  assert.equal(e.pow_difficulty, 3);
  assert.deepEqual(e.options.map((o) => o.label), ['Yes', 'No']);
});

/** axe-core's source, injected into each page it audits. */
const AXE_SOURCE = readFile(path.join(REPO, 'tests', 'browser', 'node_modules', 'axe-core', 'axe.min.js'), 'utf8');
// What the pages promise: WCAG 2.1 levels A and AA (axe-core's rules for those tags).
const WCAG_TAGS = ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa'];

/**
 * axe-core's WCAG 2.1 A/AA audit of the page as it is now: the violations, one line per rule
 * and one per element, and the rules that passed.
 */
async function audit(page) {
  // Evaluated through the DevTools protocol: the page's CSP (no inline or foreign scripts)
  // does not apply, and the page is audited under the policy it really runs with.
  await page.evaluate(await AXE_SOURCE);
  return page.evaluate(async (tags) => {
    const result = await window.axe.run(document, { runOnly: { type: 'tag', values: tags } });
    const violations = result.violations.flatMap((v) => [
      `${v.id} (${v.impact}): ${v.help}`,
      ...v.nodes.map((n) => `    ${n.target.join(' ')}: ${n.failureSummary.replace(/\s+/g, ' ')}`),
    ]);
    return { violations, passed: result.passes.map((p) => p.id) };
  }, WCAG_TAGS);
}

/** Fails with every WCAG 2.1 A/AA violation axe-core finds on the page as it is now. */
async function assertAccessible(page, what) {
  const { violations, passed } = await audit(page);
  assert.deepEqual(violations, [], `${what}: WCAG 2.1 A/AA violations`);
  // The audit saw the rendered page: text whose contrast it measured, a language, a title.
  for (const rule of ['color-contrast', 'html-has-lang', 'document-title']) {
    assert.ok(passed.includes(rule), `${what}: axe-core did not check ${rule} (passed: ${passed.join(', ')})`);
  }
}

// The audit itself can fail: a page with the faults it must name.
browserTest('accessibility audit names what it should', async ({ open }) => {
  const page = await open('faulty');
  await page.setContent('<html><head><title>faulty</title></head><body>'
    + '<img src="data:image/gif;base64,R0lGODlhAQABAAAAACw="><p style="color:#777;background:#888">faint</p>'
    + '<input type="text"></body></html>');
  const { violations } = await audit(page);
  const rules = violations.filter((l) => !l.startsWith(' ')).map((l) => l.split(' ')[0]).sort();
  assert.deepEqual(rules, ['color-contrast', 'html-has-lang', 'image-alt', 'label'], violations.join('\n'));
});

// Every page in each state a voter or an operator meets, in the light and the dark theme
// (prefers-color-scheme), at phone and desktop width. Runs while the election is open.
for (const colorScheme of ['light', 'dark']) {
  for (const [width, height] of [[390, 844], [1280, 800]]) {
    const look = `${colorScheme}, ${width}px`;
    browserTest(`accessibility (WCAG 2.1 A/AA, axe-core): ${look}`, async ({ open }) => {
      const e = await election();
      const options = { colorScheme, viewport: { width, height } };

      const voter = await open('voter', options);
      await voter.goto(`${cfg.publicUrl}/`);
      await voter.getByLabel('Voter id').waitFor();
      await assertAccessible(voter, `voter page, signed out (${look})`);
      // A voter who does not vote here: signing in is enough to see the ballot.
      await signIn(voter, cfg.voter + 2n);
      await assertAccessible(voter, `voter page, the list of elections (${look})`);
      await voter.getByRole('button', { name: `Vote in ${e.title}` }).click();
      await voter.getByRole('heading', { name: e.title, level: 2 }).waitFor();
      await assertAccessible(voter, `voter page, the ballot (${look})`);

      const results = await open('results', options);
      await results.goto(`${cfg.publicUrl}/results/${encodeURIComponent(e.id)}`);
      await results.getByRole('heading', { name: e.title, level: 1 }).waitFor();
      await assertAccessible(results, `results page (${look})`);

      const admin = await open('admin', options);
      await admin.goto(`${cfg.adminUrl}/admin#token=${encodeURIComponent(cfg.adminToken)}`);
      await admin.getByRole('row').filter({ has: admin.getByText(cfg.election, { exact: true }) }).waitFor();
      await assertAccessible(admin, `admin dashboard (${look})`);
    });
  }
}

browserTest('check my receipt once the result is official', async ({ open }) => {
  assert.ok(firstVote, 'the vote test left no receipt to check (it failed before the vote)');
  const { receipt, option, title, storageState } = firstVote;
  const id = encodeURIComponent(cfg.election);

  // Closing the election starts the official recount; it waits for the persister.
  const closed = await fetch(`${cfg.adminUrl}/admin/v1/elections/${id}/close`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${cfg.adminToken}` },
  });
  assert.equal(closed.status, 200, `POST /admin/v1/elections/${cfg.election}/close: ${await closed.text()}`);
  await eventually(async () => {
    const res = await fetch(`${cfg.publicUrl}/v1/elections/${id}`);
    return res.ok && (await res.json()).state === 'final';
  }, { timeout: FINAL_MS, interval: 500, what: `the state of ${cfg.election} to become final (recount log: the server log)` });
  const official = await (await fetch(`${cfg.publicUrl}/v1/elections/${id}/results`)).json();
  assert.equal(official.final, true, `the results once final: ${JSON.stringify(official)}`);
  assert.match(official.merkle?.root ?? '', /^[0-9a-f]{64}$/, `the official result's Merkle root: ${JSON.stringify(official)}`);
  assert.equal(official.merkle.tree_size, official.total, 'one leaf per counted vote');

  // The first voter's browser (its localStorage) offers the check, prefilled with the receipt.
  const page = await open('voter', { storageState });
  await page.goto(`${cfg.publicUrl}/`);
  await page.getByRole('button', { name: `Check receipt in ${title}` }).click();
  const section = page.getByRole('region', { name: 'Check my receipt' });
  await section.waitFor();
  const field = section.getByLabel('Receipt', { exact: true });
  assert.equal(await field.inputValue(), receipt, 'the receipt kept in this browser is filled in');

  await section.getByRole('button', { name: 'Check my receipt' }).click();
  const verdict = section.getByRole('status');
  await verdict.getByRole('heading', { name: 'Counted', exact: true }).waitFor();
  const text = (await verdict.textContent()).replace(/\s+/g, ' ');
  const said = /Your vote for (.+) is counted in the official result \(leaf (\d+) of (\d+)\)\./.exec(text);
  assert.ok(said, `the verdict: ${text}`);
  assert.equal(said[1], option.label, 'the vote is counted for the option it was cast for');
  assert.ok(Number(said[2]) < Number(said[3]));
  assert.equal(Number(said[3]), official.merkle.tree_size);
  // The details: checked against the official root.
  await section.getByText('Details of the check').click();
  const root = section.getByText('Official root', { exact: true }).locator('xpath=following-sibling::dd[1]');
  assert.equal((await root.textContent()).trim(), official.merkle.root);

  // One hex digit changed: not in the official tree.
  const at = 17;
  const tampered = receipt.slice(0, at) + ((parseInt(receipt[at], 16) + 1) % 16).toString(16) + receipt.slice(at + 1);
  await field.fill(tampered);
  await section.getByRole('button', { name: 'Check my receipt' }).click();
  await verdict.getByRole('heading', { name: 'Not counted', exact: true }).waitFor();
  assert.match(await verdict.textContent(), /the receipt is not in the official tree/i);
});

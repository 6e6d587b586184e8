// The web console in headless chromium, against a real gateway set up by
// crates/gatehouse/tests/console.rs (which passes everything in GH_*
// environment variables and checks the store afterwards). Prints one line
// per check; exits 1 with the failing check, the page's URL and text.
//
//   GH_URL                 https://127.0.0.1:PORT (the console)
//   GH_FINGERPRINT         SHA-256 of the certificate `gatehouse init` printed
//   GH_TLS_CERT/KEY        that certificate and key (the attacker's page is
//                          served with them from another port: same site,
//                          another origin)
//   GH_REVIEWER[_PASSWORD] rita: every console permission, TOTP
//   GH_REVIEWER_TOTP       her base32 TOTP secret
//   GH_USER[_PASSWORD]     alice: own_sessions, no TOTP
//   GH_SESSION             alice's recorded session (3 commands)
//   GH_LIVE_SESSION        alice's running session (prints live-tick-N)
//   GH_OTHER_SESSION       rita's session (alice must not see it); its
//                          recording was altered after session.end
//   GH_APPROVAL            alice's pending request for prod01
//   GH_SCREENSHOTS         where the PNGs go (docs/console)
//   GH_ARTIFACTS           where a failure's screenshot and HTML go
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import https from 'node:https';
import path from 'node:path';
import tls from 'node:tls';
import { launch, totp } from './lib.mjs';

function need(name) {
  const v = process.env[name];
  if (!v) {
    console.error(`console.test.mjs: ${name} is not set (run it through cargo test -p gatehouse --test console)`);
    process.exit(2);
  }
  return v;
}

const BASE = need('GH_URL').replace(/\/$/, '');
const FINGERPRINT = need('GH_FINGERPRINT');
const CERT = need('GH_TLS_CERT');
const KEY = need('GH_TLS_KEY');
const RITA = need('GH_REVIEWER');
const RITA_PW = need('GH_REVIEWER_PASSWORD');
const RITA_TOTP = need('GH_REVIEWER_TOTP');
const ALICE = need('GH_USER');
const ALICE_PW = need('GH_USER_PASSWORD');
const SESSION = need('GH_SESSION');
const LIVE = need('GH_LIVE_SESSION');
const OTHER = need('GH_OTHER_SESSION');
const APPROVAL = need('GH_APPROVAL');
const SHOTS = need('GH_SCREENSHOTS');
const ARTIFACTS = process.env.GH_ARTIFACTS || SHOTS;
mkdirSync(SHOTS, { recursive: true });
mkdirSync(ARTIFACTS, { recursive: true });

let checks = 0;
let current = null; // the page a failure is reported with
const pageErrors = [];
const cspViolations = [];

function ok(what) {
  checks++;
  console.log(`ok ${checks} - ${what}`);
}

async function step(name, fn) {
  console.log(`# ${name}`);
  await fn();
}

async function shot(page, file) {
  await page.screenshot({ path: path.join(SHOTS, file), fullPage: true });
  ok(`screenshot ${file}`);
}

// Collects script errors and CSP refusals of every page of a context.
function watch(page, who) {
  page.on('pageerror', (e) => pageErrors.push(`${who} ${page.url()}: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error' && /Content Security Policy|Refused to/.test(m.text())) {
      cspViolations.push(`${who} ${page.url()}: ${m.text()}`);
    }
  });
  page.setDefaultTimeout(20_000);
  page.setDefaultNavigationTimeout(20_000);
}

async function text(page, selector) {
  return (await page.locator(selector).first().innerText()).trim();
}

async function goto(page, urlPath, expectStatus = 200) {
  const res = await page.goto(BASE + urlPath);
  assert.ok(res, `no response for ${urlPath}`);
  assert.equal(res.status(), expectStatus, `GET ${urlPath}: status ${res.status()}`);
  return res;
}

// A code for `secret` other than the ones accepted now (steps -1, 0, +1).
function wrongCode(secret) {
  const now = Date.now() / 1000;
  const good = new Set([-30, 0, 30].map((d) => totp(secret, now + d)));
  for (let i = 0; ; i++) {
    const c = String((123456 + i * 7919) % 1000000).padStart(6, '0');
    if (!good.has(c)) return c;
  }
}

// The certificate the console serves is the one `gatehouse init` made.
function servedFingerprint() {
  const url = new URL(BASE);
  return new Promise((resolve, reject) => {
    const s = tls.connect({ host: url.hostname, port: Number(url.port), rejectUnauthorized: false }, () => {
      const fp = s.getPeerCertificate().fingerprint256;
      s.end();
      resolve(fp);
    });
    s.on('error', reject);
  });
}

// Another origin of the same site: https on another port of 127.0.0.1,
// with pages that auto-submit forms to the console.
function attacker() {
  const pages = {
    '/kill': `<form id="f" method="post" action="${BASE}/sessions/${LIVE}/kill"><input name="csrf" value="guessed"><input name="reason" value="csrf attack"></form>`,
    '/lock': `<form id="f" method="post" action="${BASE}/users/${ALICE}"><input name="csrf" value="guessed"><input name="action" value="lock"><input name="reason" value="csrf attack"></form>`,
  };
  const server = https.createServer({ cert: readFileSync(CERT), key: readFileSync(KEY) }, (req, res) => {
    if (req.url === '/submit.js') {
      res.writeHead(200, { 'content-type': 'text/javascript' });
      res.end("document.getElementById('f').submit();");
      return;
    }
    const form = pages[req.url];
    res.writeHead(form ? 200 : 404, { 'content-type': 'text/html' });
    res.end(`<!DOCTYPE html><html><body><h1>You won a prize</h1>${form || ''}<script src="/submit.js"></script></body></html>`);
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

async function signIn(page, user, password, code) {
  await goto(page, '/signin');
  await page.fill('#user', user);
  await page.fill('#password', password);
  if (code !== undefined) await page.fill('#code', code);
  const [res] = await Promise.all([
    page.waitForNavigation(),
    page.click('#signin'),
  ]);
  return res;
}

async function commandsOf(page) {
  return page.$$eval('#commands li a[data-time]', (as) =>
    as.map((a) => ({ text: a.textContent.trim(), time: Number(a.dataset.time), index: Number(a.dataset.index) })));
}

async function playerTime(page) {
  return page.evaluate(() => window.gatehousePlayer.getCurrentTime());
}

// Waits until the player's clock is at recording time `t` (mapped onto the
// idle-compressed player clock by console.js).
async function waitPlayerAt(page, t, what) {
  try {
    await page.waitForFunction((want) => {
      const p = window.gatehousePlayer;
      const r = window.gatehouseReplay;
      if (!p || !r) return false;
      return Math.abs(p.getCurrentTime() - r.toPlayerTime(want)) < 0.05;
    }, t, { timeout: 10_000 });
  } catch (e) {
    throw new Error(`${what}: the player is at ${await playerTime(page)}, expected recording time ${t}`);
  }
}

async function currentIndex(page) {
  return page.$eval('#commands', (ol) => {
    const li = ol.querySelector('li.current');
    const a = li && li.querySelector('a[data-index]');
    return a ? Number(a.dataset.index) : null;
  });
}

async function main() {
  const fp = await servedFingerprint();
  assert.equal(fp, FINGERPRINT, 'the console serves the certificate gatehouse init printed');
  ok(`the console serves init's certificate (${fp.slice(0, 11)}…)`);

  const { browser, context, page } = await launch();
  current = page;
  watch(page, RITA);
  page.on('dialog', (d) => d.accept());

  await step('sign-in', async () => {
    const res = await page.goto(BASE + '/');
    assert.equal(res.status(), 200);
    assert.match(new URL(page.url()).pathname, /^\/signin$/, 'signed out, / leads to the sign-in page');
    assert.equal(new URL(page.url()).searchParams.get('next'), '/sessions');
    ok('signed out, / redirects to /signin?next=/sessions');

    const refused = await signIn(page, RITA, RITA_PW, wrongCode(RITA_TOTP));
    assert.equal(refused.status(), 401);
    assert.equal(await text(page, '#error'), 'Wrong user, password or verification code.');
    ok('a wrong verification code is refused with a message (401)');
    await shot(page, 'signin.png');

    const wrongPw = await signIn(page, RITA, RITA_PW + 'x', totp(RITA_TOTP));
    assert.equal(wrongPw.status(), 401);
    assert.equal(await text(page, '#error'), 'Wrong user, password or verification code.');
    ok('a wrong password is refused with the same message');

    // The code of the wrong-password attempt was not used up: it is
    // refused before the code is looked at.
    await signIn(page, RITA, RITA_PW, totp(RITA_TOTP));
    assert.equal(new URL(page.url()).pathname, '/sessions', `signed in, at ${page.url()}`);
    assert.equal(await text(page, 'nav.top .who'), RITA);
    const cookies = await context.cookies(BASE);
    const c = cookies.find((k) => k.name === '__Host-gatehouse');
    assert.ok(c, `the sign-in cookie is __Host-gatehouse: ${JSON.stringify(cookies)}`);
    assert.ok(c.httpOnly && c.secure && c.sameSite === 'Strict', `cookie flags: ${JSON.stringify(c)}`);
    ok('rita signs in with password + TOTP; the cookie is __Host-, HttpOnly, Secure, SameSite=Strict');
  });

  await step('sessions list', async () => {
    await goto(page, '/sessions');
    const ids = await page.$$eval('#sessions tbody tr td:first-child', (tds) => tds.map((t) => t.textContent.trim()));
    for (const id of [SESSION, LIVE, OTHER]) assert.ok(ids.includes(id), `${id} listed: ${ids}`);
    ok(`the list shows alice's recorded and live sessions and rita's (${ids.length} rows)`);
    const headers = await page.$$eval('#sessions thead th', (ths) => ths.map((t) => t.textContent));
    assert.deepEqual(headers.slice(0, 3), ['Session', 'Started', 'User']);
    await shot(page, 'sessions.png');

    await goto(page, '/sessions?user=alice&command=third');
    let rows = await page.$$eval('#sessions tbody tr td:first-child', (tds) => tds.map((t) => t.textContent.trim()));
    assert.deepEqual(rows, [SESSION], `?user=alice&command=third: ${rows}`);
    assert.equal(await page.inputValue('#filters input[name=command]'), 'third');
    ok('?user=alice&command=third narrows the list to the recorded session, and the form keeps the filter');

    await goto(page, '/sessions?user=alice&command=no-such-command-anywhere');
    rows = await page.$$eval('#sessions tbody tr', (trs) => trs.length);
    assert.equal(rows, 0);
    assert.equal(await text(page, 'p.empty'), 'Nothing matches.');
    ok('a command nobody ran: "Nothing matches."');

    await goto(page, '/sessions?user=rita');
    rows = await page.$$eval('#sessions tbody tr td:first-child', (tds) => tds.map((t) => t.textContent.trim()));
    assert.deepEqual(rows, [OTHER]);
    await goto(page, '/sessions?active=1');
    rows = await page.$$eval('#sessions tbody tr td:first-child', (tds) => tds.map((t) => t.textContent.trim()));
    assert.ok(rows.includes(LIVE) && !rows.includes(SESSION), `?active=1: ${rows}`);
    ok('?user=rita and ?active=1 filter too');

    // The form builds the same URL.
    await goto(page, '/sessions');
    await page.fill('#filters input[name=user]', 'alice');
    await page.fill('#filters input[name=command]', 'third');
    await Promise.all([page.waitForNavigation(), page.click('#filters button[type=submit]')]);
    const u = new URL(page.url());
    assert.equal(u.searchParams.get('user'), 'alice');
    assert.equal(u.searchParams.get('command'), 'third');
    rows = await page.$$eval('#sessions tbody tr td:first-child', (tds) => tds.map((t) => t.textContent.trim()));
    assert.deepEqual(rows, [SESSION]);
    ok('the filter form puts the filters in the URL');

    await goto(page, '/sessions?since=yesterday-ish', 400);
    assert.match(await text(page, '#error'), /since=.*is not a time/);
    ok('a malformed filter is a 400 with one sentence');
  });

  await step('CSRF from another origin of the same site', async () => {
    const server = await attacker();
    const evil = `https://127.0.0.1:${server.address().port}`;
    try {
      for (const [attack, postPath] of [['/kill', `/sessions/${LIVE}/kill`], ['/lock', `/users/${ALICE}`]]) {
        const evilPage = await context.newPage();
        watch(evilPage, 'attacker');
        current = evilPage;
        const answered = evilPage.waitForResponse((r) => r.url() === BASE + postPath && r.request().method() === 'POST');
        await evilPage.goto(evil + attack);
        const res = await answered;
        assert.equal(res.status(), 403, `the forged POST ${postPath} got ${res.status()}`);
        await evilPage.waitForLoadState();
        assert.match(await text(evilPage, '#error'), /did not come from a page of this console/);
        ok(`a form on ${evil} posting to ${postPath} (with rita's cookie) is refused: 403, Origin`);
        await evilPage.close();
      }
    } finally {
      server.close();
    }
    current = page;

    // The right Origin but not the sign-in's anti-CSRF token.
    const res = await page.request.post(`${BASE}/sessions/${LIVE}/kill`, {
      form: { csrf: 'guessed', reason: 'no token' },
      headers: { Origin: BASE },
      maxRedirects: 0,
    });
    assert.equal(res.status(), 403);
    assert.match(await res.text(), /anti-CSRF token mismatch/);
    const noOrigin = await page.request.post(`${BASE}/users/${ALICE}`, {
      form: { csrf: 'guessed', action: 'lock', reason: 'no origin' },
      maxRedirects: 0,
    });
    assert.equal(noOrigin.status(), 403);
    ok('the same origin without the anti-CSRF token, and a POST without Origin, are refused (403)');

    await goto(page, '/live');
    const live = await page.$$eval('#live-sessions tbody tr td:first-child', (tds) => tds.map((t) => t.textContent.trim()));
    assert.ok(live.includes(LIVE), `the live session still runs: ${live}`);
    await goto(page, '/users');
    const aliceRow = page.locator('#users tbody tr', { hasText: ALICE }).first();
    assert.match(await aliceRow.innerText(), /active/);
    ok('nothing happened: the live session still runs, alice is not locked');
  });

  await step('one recorded session', async () => {
    const castRequests = [];
    const onRequest = (r) => { if (/\/sessions\/[^/]+\/cast$/.test(new URL(r.url()).pathname)) castRequests.push(r.url()); };
    page.on('request', onRequest);
    await goto(page, `/sessions/${SESSION}`);
    const preload = await page.$eval('head link[rel=preload]', (l) => ({ href: l.getAttribute('href'), as: l.getAttribute('as'), crossorigin: l.getAttribute('crossorigin') }));
    assert.deepEqual(preload, { href: `/sessions/${SESSION}/cast`, as: 'fetch', crossorigin: 'anonymous' });
    await page.waitForFunction(() => document.body.dataset.playerReady === '1');
    ok('the player is created (body[data-player-ready=1])');
    await page.waitForFunction(() => document.body.dataset.integrity !== undefined);
    assert.equal(await page.getAttribute('#integrity', 'data-state'), 'verified');
    assert.match(await text(page, '#integrity'), /^verified: SHA-256 [0-9a-f]{64} matches session\.end$/);
    assert.equal(await page.$eval('#integrity .badge', (b) => b.className), 'badge ok');
    page.off('request', onRequest);
    assert.deepEqual(castRequests, [`${BASE}/sessions/${SESSION}/cast`], 'the preload is the only download of the cast');
    ok('the cast is preloaded from <head> and downloaded once; the integrity line goes from checking to verified');

    // The markers the recorder wrote into the cast: the truth for the times.
    const castText = await (await page.request.get(`${BASE}/sessions/${SESSION}/cast`)).text();
    writeFileSync(path.join(ARTIFACTS, 'recorded.cast'), castText);
    const castMarkers = castText.split('\n').slice(1).filter((l) => l.startsWith('['))
      .map((l) => JSON.parse(l)).filter((e) => e[1] === 'm').map((e) => ({ t: e[0], label: e[2] }));
    const wanted = ['echo first-marker', 'ls /', 'echo third-marker'];
    for (const w of wanted) assert.ok(castMarkers.some((m) => m.label === w), `the cast has a marker for ${w}: ${JSON.stringify(castMarkers)}`);

    const all = await commandsOf(page);
    const texts = all.map((c) => c.text);
    const cmds = wanted.map((w) => {
      const c = all.find((x) => x.text === w);
      assert.ok(c, `#commands lists ${w}: ${JSON.stringify(texts)}`);
      return c;
    });
    assert.ok(cmds[0].index < cmds[1].index && cmds[1].index < cmds[2].index, `in order: ${JSON.stringify(all)}`);
    for (const c of cmds) {
      const m = castMarkers.find((x) => x.label === c.text);
      assert.ok(Math.abs(c.time - m.t) < 0.002,
        `${c.text}: data-time ${c.time} is not its marker's time ${m.t} (list: ${JSON.stringify(all)}; markers: ${JSON.stringify(castMarkers)})`);
    }
    ok(`#commands lists ${JSON.stringify(texts)}; each command's data-time is its own marker's time`);

    try {
      await page.waitForFunction((n) => document.querySelectorAll('#player .ap-marker-container').length === n,
        castMarkers.length, { timeout: 10_000 });
    } catch (e) { /* reported below with the labels */ }
    const labels = await page.$$eval('#player .ap-marker-container .ap-tooltip', (ts) => ts.map((t) => t.textContent));
    assert.equal(labels.length, castMarkers.length, `the player shows ${JSON.stringify(labels)}; the cast has ${JSON.stringify(castMarkers)}`);
    for (const w of wanted) assert.ok(labels.some((l) => l.endsWith(` - ${w}`)), `a marker for ${w}: ${JSON.stringify(labels)}`);
    ok(`the player's progress bar has ${labels.length} markers, one per command (${JSON.stringify(labels)})`);

    const link = (c) => `#commands a[data-index="${c.index}"]`;
    await page.click(link(cmds[2]));
    await waitPlayerAt(page, cmds[2].time, 'after clicking echo third-marker');
    assert.equal(await currentIndex(page), cmds[2].index);
    assert.equal(new URL(page.url()).searchParams.get('cmd'), String(cmds[2].index));
    await page.waitForFunction(() => /third-marker/.test(document.querySelector('#player .ap-term')?.textContent || ''));
    ok(`clicking "echo third-marker" seeks to it (player at ${(await playerTime(page)).toFixed(3)} s, ?cmd=${cmds[2].index}, highlighted, its line on screen)`);
    await page.click('h1'); // focus off the link; keys go to the page
    await page.keyboard.press('[');
    await waitPlayerAt(page, cmds[1].time, '[ from echo third-marker');
    assert.equal(await currentIndex(page), cmds[1].index);
    await page.keyboard.press('[');
    await waitPlayerAt(page, cmds[0].time, '[ from ls /');
    assert.equal(await currentIndex(page), cmds[0].index);
    await page.keyboard.press(']');
    await page.keyboard.press(']');
    await waitPlayerAt(page, cmds[2].time, '] ] from echo first-marker');
    assert.equal(await currentIndex(page), cmds[2].index);
    ok('[ and ] step one command back and forth');
    await shot(page, 'session.png');

    await goto(page, `/sessions/${SESSION}?cmd=${cmds[1].index}`);
    await page.waitForFunction(() => document.body.dataset.playerReady === '1');
    await waitPlayerAt(page, cmds[1].time, `?cmd=${cmds[1].index}`);
    assert.equal(await currentIndex(page), cmds[1].index);
    ok(`?cmd=${cmds[1].index} opens the player at "ls /"`);

    await goto(page, `/sessions/${SESSION}?t=0.5`);
    await page.waitForFunction(() => document.body.dataset.playerReady === '1');
    await waitPlayerAt(page, 0.5, '?t=0.5');
    ok('?t=0.5 opens the player at 0.5 s');

    const href = await page.getAttribute('#download', 'href');
    const cast = await page.request.get(BASE + href);
    assert.equal(cast.status(), 200);
    assert.match(cast.headers()['content-disposition'] || '', /^attachment; filename=".*\.cast"$/);
    const lines = (await cast.text()).split('\n');
    const header = JSON.parse(lines[0]);
    assert.equal(header.version, 2);
    assert.ok(lines.some((l) => l.includes('third-marker')), 'the cast holds the output');
    ok(`the download link returns an asciicast v2 (${header.width}x${header.height}, ${lines.length} lines)`);

    // rita's session: its recording was changed after session.end.
    await goto(page, `/sessions/${OTHER}`);
    await page.waitForFunction(() => document.body.dataset.integrity !== undefined);
    assert.equal(await page.getAttribute('#integrity', 'data-state'), 'tampered');
    assert.match(await text(page, '#integrity'), /^TAMPERED: SHA-256 [0-9a-f]{64} differs from [0-9a-f]{64} in session\.end$/);
    assert.equal(await page.$eval('#integrity .badge', (b) => b.className), 'badge bad');
    await shot(page, 'session-tampered.png');
    ok('a recording altered after session.end: the integrity line says TAMPERED, with both digests');
  });

  await step('live', async () => {
    await goto(page, '/live');
    await page.click(`#live-sessions a.watch:text-is("${LIVE}")`);
    await page.waitForURL(`${BASE}/sessions/${LIVE}/live`);
    try {
      await page.waitForFunction(
        () => /live-tick-\d+/.test(document.querySelector('#player .ap-term')?.textContent || ''),
        null,
        { timeout: 20_000 },
      );
    } catch (e) {
      throw new Error(`the live terminal never showed a live-tick line; status: ${await text(page, '#live-status')}`);
    }
    assert.equal(await text(page, '#live-status'), 'live');
    const seen = await page.$eval('#player .ap-term', (t) => t.textContent.match(/live-tick-\d+/g));
    ok(`/live lists the running session; its live page follows it (${seen.slice(-1)[0]} on screen)`);
    // A newer line arrives while watching.
    const last = Math.max(...seen.map((s) => Number(s.split('-').pop())));
    await page.waitForFunction((n) => {
      const m = (document.querySelector('#player .ap-term')?.textContent || '').match(/live-tick-\d+/g) || [];
      return m.some((s) => Number(s.split('-').pop()) > n);
    }, last, { timeout: 10_000 });
    ok('new output appears while watching');
    await shot(page, 'live.png');

    // A second viewer kills it from its own live page.
    const killer = await context.newPage();
    watch(killer, RITA);
    killer.on('dialog', (d) => d.accept());
    current = killer;
    await killer.goto(`${BASE}/sessions/${LIVE}/live`);
    await killer.fill('#kill-reason', 'ended from the browser test');
    await Promise.all([killer.waitForNavigation(), killer.click('#kill')]);
    assert.equal(new URL(killer.url()).pathname, `/sessions/${LIVE}`);
    assert.match(await text(killer, '#notice'), /Kill requested/);
    ok('Kill with a reason (confirm accepted) → the session page says "Kill requested"');

    current = page;
    await page.waitForFunction(() => document.body.dataset.liveEnded === '1', null, { timeout: 20_000 });
    assert.equal(await text(page, '#live-status'), 'session ended');
    ok('the watching live page shows "session ended"');

    current = killer;
    const deadline = Date.now() + 15_000;
    for (;;) {
      await killer.goto(`${BASE}/sessions/${LIVE}`);
      const dd = await killer.evaluate(() => {
        const dt = [...document.querySelectorAll('dl.meta dt')].find((d) => d.textContent === 'Ended');
        return dt ? dt.nextElementSibling.textContent : 'no Ended field';
      });
      if (dd.trim() !== 'running') break;
      assert.ok(Date.now() < deadline, 'the killed session still shows as running');
      await killer.waitForTimeout(500);
    }
    assert.equal(await killer.locator('#kill').count(), 0, 'no Kill button on an ended session');
    ok('the session page shows the killed session ended, without a Kill button');
    await killer.close();
    current = page;
  });

  await step('approvals', async () => {
    await goto(page, '/approvals');
    const row = page.locator('#approvals tbody tr', { hasText: APPROVAL });
    assert.equal(await row.count(), 1, `request ${APPROVAL} listed`);
    const cells = await row.locator('td').allInnerTexts();
    assert.equal(cells[1], ALICE);
    assert.match(cells[2], /@prod01$/);
    ok(`the pending request ${APPROVAL} of ${ALICE} for ${cells[2]} is listed`);
    await shot(page, 'approvals.png');
    await row.locator('input[name=reason]').fill('approved in the browser test');
    await Promise.all([page.waitForNavigation(), row.locator('button.approve').click()]);
    assert.match(await text(page, '#notice'), new RegExp(`approved ${APPROVAL}`));
    assert.equal(await page.locator('#approvals tbody tr', { hasText: APPROVAL }).count(), 0);
    ok('approved with a reason; the request leaves the list');
  });

  await step('runbooks', async () => {
    await goto(page, '/runbooks');
    const names = await page.$$eval('#runbooks tbody tr td:first-child', (tds) => tds.map((t) => t.textContent.trim()));
    for (const n of ['commands-matching', 'sessions-by-user', 'denied-surge']) assert.ok(names.includes(n), `${n} listed: ${names}`);
    ok(`the built-in runbooks are listed (${names.length})`);
    await Promise.all([page.waitForNavigation(), page.click('#runbooks a:text-is("commands-matching")')]);
    await page.fill('#run-form input[name=pattern]', '%third-marker%');
    await Promise.all([page.waitForNavigation(), page.click('#run')]);
    const rows = await page.$$eval('#results tbody tr', (trs) => trs.map((t) => t.textContent));
    assert.equal(rows.length, 1, `rows: ${rows}`);
    assert.match(rows[0], /echo third-marker/);
    const planned = await page.$$eval('#planned li', (lis) => lis.map((l) => l.textContent));
    assert.ok(planned.length >= 1 && planned.every((p) => /Notify/.test(p)), `planned: ${planned}`);
    ok(`Run with pattern=%third-marker% shows the row and the planned action (${planned})`);
    await shot(page, 'runbooks.png');
    await Promise.all([page.waitForNavigation(), page.click('#apply')]);
    assert.match(await text(page, '#notice'), /applied commands-matching: 1 action\(s\) taken, 0 failed/);
    const outcomes = await page.$$eval('#outcomes li', (lis) => lis.map((l) => l.textContent));
    assert.ok(outcomes.length === 1 && /done$/.test(outcomes[0]), `outcomes: ${outcomes}`);
    ok(`Apply (confirmed) takes the action: ${outcomes}`);
  });

  await step('audit log', async () => {
    await goto(page, '/audit?type=recording.access');
    const types = await page.$$eval('#events tbody tr td:nth-child(2)', (tds) => tds.map((t) => t.textContent.trim()));
    assert.ok(types.length >= 3, `recording.access rows: ${types.length}`);
    assert.ok(types.every((t) => t === 'recording.access'), `types: ${types}`);
    assert.equal(await page.inputValue('#filters input[name=type]'), 'recording.access');
    assert.match(await text(page, '#chain'), /Hash chain:/);
    ok(`?type=recording.access shows only those (${types.length} rows)`);
    await goto(page, '/audit?type=session.*&user=alice');
    const fam = await page.$$eval('#events tbody tr td:nth-child(2)', (tds) => tds.map((t) => t.textContent.trim()));
    assert.ok(fam.length >= 2 && fam.every((t) => t.startsWith('session.')), `session.* rows: ${fam}`);
    ok(`?type=session.* filters a family (${[...new Set(fam)].join(', ')})`);
    await shot(page, 'audit.png');

    const nd = await page.request.get(BASE + (await page.getAttribute('#export-ndjson', 'href')));
    assert.equal(nd.status(), 200);
    const ndRows = (await nd.text()).trim().split('\n').map((l) => JSON.parse(l));
    assert.ok(ndRows.length >= 2 && ndRows.every((r) => r.type.startsWith('session.') && r.user === ALICE), `ndjson: ${ndRows.length}`);
    const csv = await page.request.get(BASE + (await page.getAttribute('#export-csv', 'href')));
    assert.equal(csv.status(), 200);
    const csvLines = (await csv.text()).trim().split('\n');
    assert.ok(csvLines[0].startsWith('seq,id,time,type,severity,user'), csvLines[0]);
    assert.equal(csvLines.length - 1, ndRows.length, 'as many CSV rows as NDJSON rows');
    ok(`the NDJSON and CSV exports return the filtered rows (${ndRows.length} each)`);

    await page.click('#verify');
    await page.waitForURL(`${BASE}/audit/verify`);
    assert.match(await text(page, '#verify-result'), /^chain intact: \d+ events checked$/);
    ok(`Verify: ${await text(page, '#verify-result')}`);
  });

  await step('SQL', async () => {
    await goto(page, '/sql');
    await page.fill('#q', 'SELECT type, count(*) AS n FROM events GROUP BY type ORDER BY type');
    await Promise.all([page.waitForNavigation(), page.click('#run')]);
    const head = await page.$$eval('#results thead th', (ths) => ths.map((t) => t.textContent));
    assert.deepEqual(head, ['type', 'n']);
    const rows = await page.$$eval('#results tbody tr', (trs) => trs.map((t) => [...t.children].map((c) => c.textContent)));
    const types = rows.map((r) => r[0]);
    for (const t of ['auth.success', 'session.start', 'command', 'recording.access', 'audit.read']) {
      assert.ok(types.includes(t), `${t} in ${types}`);
    }
    ok(`the query shows a table of ${rows.length} event types`);
    await shot(page, 'sql.png');
    await goto(page, '/sql?q=' + encodeURIComponent('SELECT session_id, start_time FROM sessions LIMIT 1'));
    const link = await page.getAttribute('#results tbody a', 'href');
    assert.match(link, /^\/sessions\/[0-9A-Z]+$/, `session link: ${link}`);
    const when = await page.getAttribute('#results tbody time', 'datetime');
    assert.ok(when && !Number.isNaN(Date.parse(when)), `start_time as a time: ${when}`);
    ok(`a session_id cell links to ${link}; a time cell is shown in local time`);
    await goto(page, '/sql?q=' + encodeURIComponent('CREATE TABLE console_probe (a)'));
    assert.ok(await page.locator('#error').count() === 1, 'a write is refused with a message');
    ok(`a write query is refused: ${await text(page, '#error')}`);
  });

  await step('users', async () => {
    await goto(page, '/users');
    const users = await page.$$eval('#users tbody tr td:first-child', (tds) => tds.map((t) => t.textContent.trim()));
    for (const u of ['alice', 'bob', 'rita']) assert.ok(users.includes(u), `${u} listed: ${users}`);
    const rita = await page.locator('#users tbody tr', { hasText: 'reviewers' }).first().innerText();
    assert.match(rita, /TOTP enrolled/);
    ok(`the users page lists ${users.join(', ')}; rita's TOTP is enrolled`);
    await shot(page, 'users.png');
  });

  await step('a forged cookie', async () => {
    const other = await browser.newContext({ ignoreHTTPSErrors: true });
    await other.addCookies([{ name: '__Host-gatehouse', value: randomBytes(32).toString('hex'), url: BASE + '/', secure: true, httpOnly: true, sameSite: 'Strict' }]);
    assert.equal((await other.cookies(BASE)).length, 1, 'the forged cookie is set');
    const p = await other.newPage();
    watch(p, 'forger');
    current = p;
    for (const where of ['/sessions', `/sessions/${SESSION}`, '/audit']) {
      await p.goto(BASE + where);
      assert.equal(new URL(p.url()).pathname, '/signin', `${where} with a forged cookie went to ${p.url()}`);
      assert.equal(await p.locator('#signin').count(), 1);
    }
    const api = await p.request.get(`${BASE}/sessions/${SESSION}/cast`, { maxRedirects: 0 });
    assert.ok([302, 303, 307].includes(api.status()), `the cast with a forged cookie: ${api.status()}`);
    ok('a random cookie only gets the sign-in page (pages and the cast)');
    await other.close();
    current = page;
  });

  await step('alice sees only her own', async () => {
    const mine = await browser.newContext({ ignoreHTTPSErrors: true });
    const p = await mine.newPage();
    watch(p, ALICE);
    current = p;
    await signIn(p, ALICE, ALICE_PW);
    assert.equal(new URL(p.url()).pathname, '/sessions', `alice signed in without a code: ${p.url()}`);
    const nav = await p.$$eval('nav.top a', (as) => as.map((a) => a.textContent));
    assert.deepEqual(nav, ['Sessions'], `alice's menu: ${nav}`);
    const ids = await p.$$eval('#sessions tbody tr td:first-child', (tds) => tds.map((t) => t.textContent.trim()));
    assert.ok(ids.includes(SESSION) && !ids.includes(OTHER), `alice's list: ${ids}`);
    ok('alice signs in with a password only; her list has her sessions, not rita\'s; her menu only Sessions');
    await goto(p, `/sessions/${SESSION}`);
    await p.waitForFunction(() => document.body.dataset.playerReady === '1');
    ok('alice replays her own session');
    await goto(p, `/sessions/${OTHER}`, 404);
    assert.match(await text(p, '#error'), new RegExp(`no session ${OTHER} that you may see`));
    const unknown = await p.goto(`${BASE}/sessions/0123456789abcdef0123456789abcdef`);
    assert.equal(unknown.status(), 404);
    assert.match(await text(p, '#error'), /no session .* that you may see/);
    const cast = await p.request.get(`${BASE}/sessions/${OTHER}/cast`);
    assert.equal(cast.status(), 404);
    ok('rita\'s session is a 404 "no session … that you may see" for alice (page and cast), like an unknown id');
    await goto(p, '/audit', 403);
    await goto(p, '/users', 403);
    await goto(p, '/live', 403);
    ok('/audit, /users and /live are 403 for alice');
    await mine.close();
    current = page;
  });

  await browser.close();
  if (cspViolations.length) {
    console.log(`# CSP violations:\n${cspViolations.join('\n')}`);
  }
  assert.deepEqual(pageErrors, [], 'script errors on the pages');
  ok('no script errors on any page');
  console.log(`1..${checks}`);
}

main().catch(async (e) => {
  console.error(`FAILED: ${e && e.stack ? e.stack : e}`);
  if (pageErrors.length) console.error(`script errors:\n${pageErrors.join('\n')}`);
  if (cspViolations.length) console.error(`CSP violations:\n${cspViolations.join('\n')}`);
  if (current && !current.isClosed()) {
    try {
      console.error(`page: ${current.url()}`);
      const body = await current.locator('body').innerText({ timeout: 2000 });
      const squeezed = body.split('\n').map((l) => l.trimEnd()).filter((l) => l).join('\n');
      console.error(`page text:\n${squeezed.slice(0, 3000)}`);
      await current.screenshot({ path: path.join(ARTIFACTS, 'failure.png'), fullPage: true, timeout: 5000 });
      writeFileSync(path.join(ARTIFACTS, 'failure.html'), await current.content());
      console.error(`screenshot and HTML of the page: ${ARTIFACTS}/failure.{png,html}`);
    } catch (_) { /* the page is gone */ }
  }
  process.exit(1);
});

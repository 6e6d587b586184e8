// How long a recording takes to start playing in the console, in headless
// Chromium. Run by the benchmark's console section
// (crates/bench/src/console.rs), which sets:
//
//   GH_URL          http://127.0.0.1:PORT (the console)
//   GH_USER         a user who may see the session, with
//   GH_PASSWORD     their password and
//   GH_TOTP         their base32 TOTP secret
//   GH_SESSION      the recorded session's id
//   GH_FIRST_TEXT   text on the recording's first frame
//   GH_RUNS         how many times to open the page (default 3)
//
// Signs in once through the form, then opens /sessions/ID in a fresh
// browser context (empty cache, the sign-in cookie) per run and prints one
// JSON line per run. Times are the page's own clock (performance.now(),
// zero at navigation start): `ready_ms` when console.js sets
// data-player-ready (the player has loaded the recording and shows its
// first frame), `frame_ms` the first animation frame after the first
// frame's text is in the terminal (the frame that paints it), and on the
// way the session page's HTML (`html_ms`) and the recording's download
// (`cast_start_ms`, `cast_end_ms`; the page preloads it from <head>).
// `verified_ms`: when the integrity line, which console.js fills from
// /sessions/ID/integrity after the recording has loaded, says verified
// (each run waits for it). After that the script presses Play
// (`gatehousePlayer.play()`, at `play_pressed_ms`) and notes `play_ms`,
// when the player's clock has moved on from the first frame.
import { launch, totp } from '../tests/browser/lib.mjs';

function need(name) {
  const v = process.env[name];
  if (!v) {
    console.error(`console-player.mjs: ${name} is not set (run by gatehouse-bench, GH_BENCH_ONLY=console)`);
    process.exit(2);
  }
  return v;
}

const BASE = need('GH_URL').replace(/\/$/, '');
const USER = need('GH_USER');
const PASSWORD = need('GH_PASSWORD');
const SECRET = need('GH_TOTP');
const SESSION = need('GH_SESSION');
const FIRST = need('GH_FIRST_TEXT');
const RUNS = Number(process.env.GH_RUNS || 3);
const VIEWPORT = { width: 1280, height: 800 };

// Runs in the page before its own scripts: notes when the player is ready
// and when the first frame's text is in the terminal and then painted.
function instrument(first) {
  const gh = (window.__gh = {});
  function check() {
    const b = document.body;
    if (gh.ready_ms === undefined && b && b.dataset.playerReady === '1') gh.ready_ms = performance.now();
    if (gh.verified_ms === undefined && b && b.dataset.integrity !== undefined) {
      gh.verified_ms = performance.now();
      gh.integrity_state = b.dataset.integrity;
    }
    if (gh.frame_dom_ms === undefined) {
      const t = document.querySelector('#player .ap-term');
      if (t && t.textContent.includes(first)) gh.frame_dom_ms = performance.now();
    }
  }
  const observer = new MutationObserver(check);
  observer.observe(document, { subtree: true, childList: true, attributes: true, characterData: true });
  function frame() {
    check();
    if (gh.frame_dom_ms !== undefined && gh.frame_ms === undefined) gh.frame_ms = performance.now();
    if (gh.frame_ms === undefined || gh.ready_ms === undefined || gh.verified_ms === undefined) requestAnimationFrame(frame);
    else observer.disconnect();
  }
  requestAnimationFrame(frame);
}

const { browser, context, page, close } = await launch({ viewport: VIEWPORT });
try {
  await page.goto(BASE + '/signin');
  await page.fill('#user', USER);
  await page.fill('#password', PASSWORD);
  await page.fill('#code', totp(SECRET));
  await Promise.all([
    page.waitForURL((u) => !u.pathname.startsWith('/signin'), { timeout: 30_000 }),
    page.click('#signin'),
  ]);
  const cookies = await context.cookies();
  for (let run = 1; run <= RUNS; run++) {
    const ctx = await browser.newContext({ viewport: VIEWPORT });
    await ctx.addCookies(cookies);
    await ctx.addInitScript(instrument, FIRST);
    const p = await ctx.newPage();
    const errors = [];
    p.on('pageerror', (e) => errors.push(e.message));
    const t0 = Date.now();
    const res = await p.goto(`${BASE}/sessions/${SESSION}`, { waitUntil: 'commit', timeout: 120_000 });
    if (!res || res.status() !== 200) throw new Error(`GET /sessions/${SESSION}: ${res && res.status()}`);
    await p.waitForFunction(
      () => window.__gh && window.__gh.ready_ms !== undefined && window.__gh.frame_ms !== undefined,
      null,
      { timeout: 120_000, polling: 50 },
    );
    const wall_ms = Date.now() - t0;
    await p.waitForFunction(() => window.__gh && window.__gh.verified_ms !== undefined, null, { timeout: 120_000, polling: 50 });
    // Then Play, as a viewer would press it: `play_pressed_ms` when it
    // was pressed, `play_ms` when the player's clock has moved on from the
    // first frame (navigation start as zero, like the other times).
    const played = await p.evaluate(async () => {
      const player = window.gatehousePlayer;
      const from = await player.getCurrentTime();
      const pressed = performance.now();
      await player.play();
      while (performance.now() - pressed < 30_000) {
        if ((await player.getCurrentTime()) > from) return { play_pressed_ms: pressed, play_ms: performance.now() };
        await new Promise((r) => requestAnimationFrame(r));
      }
      return null;
    });
    if (played === null) throw new Error('the player did not start playing within 30 s of Play');
    const m = await p.evaluate(() => {
      const nav = performance.getEntriesByType('navigation')[0];
      const cast = performance.getEntriesByType('resource').find((r) => /\/cast$/.test(r.name));
      const check = performance.getEntriesByType('resource').find((r) => /\/integrity$/.test(r.name));
      const status = document.getElementById('integrity');
      return {
        ...window.__gh,
        html_ms: nav.responseEnd,
        dom_content_loaded_ms: nav.domContentLoadedEventEnd,
        cast_start_ms: cast ? cast.startTime : null,
        cast_end_ms: cast ? cast.responseEnd : null,
        cast_bytes: cast ? cast.decodedBodySize : null,
        cast_downloads: performance.getEntriesByType('resource').filter((r) => /\/cast$/.test(r.name)).length,
        integrity_start_ms: check ? check.startTime : null,
        integrity_end_ms: check ? check.responseEnd : null,
        integrity: status ? status.textContent.trim().slice(0, 40) : null,
        commands: document.querySelectorAll('#commands li').length,
      };
    });
    if (!/^verified/.test(m.integrity || '')) throw new Error(`integrity badge: ${m.integrity}`);
    console.log(JSON.stringify({ run, ...m, ...played, wall_ms, errors }));
    await ctx.close();
  }
} finally {
  await close();
}

// Gatehouse console: the only script of the console's pages (the CSP allows
// no inline script). Loaded with <script src="/assets/console.js" defer>,
// after /assets/vendor/asciinema-player/asciinema-player.min.js on the pages
// that show a recording. No other libraries.
//
// - form[data-confirm]: confirm(TEXT) before the form is submitted.
// - time[datetime]: shown in the browser's local time, UTC in the title.
// - #player[data-cast]: replay of a recording, with #commands, #speed, #idle.
// - #player[data-live]: live view of a running session over a WebSocket.
// - #integrity[data-integrity]: the recording's SHA-256 check, asked from
//   that URL once the recording has loaded (or failed to); the result is
//   in #integrity[data-state] and body[data-integrity].
(function () {
  'use strict';

  // ---- small helpers -------------------------------------------------------

  function num(value) {
    if (value === undefined || value === null || value === '') return undefined;
    const n = Number(value);
    return Number.isFinite(n) ? n : undefined;
  }

  // Sets (or, for null/undefined, removes) query parameters in place.
  function updateQuery(changes) {
    const url = new URL(window.location.href);
    for (const [key, value] of Object.entries(changes)) {
      if (value === null || value === undefined) url.searchParams.delete(key);
      else url.searchParams.set(key, String(value));
    }
    window.history.replaceState(window.history.state, '', url.pathname + url.search + url.hash);
  }

  function pad(n) {
    return String(n).padStart(2, '0');
  }

  function formatDate(d, utc) {
    if (utc) {
      return d.getUTCFullYear() + '-' + pad(d.getUTCMonth() + 1) + '-' + pad(d.getUTCDate()) + ' ' +
        pad(d.getUTCHours()) + ':' + pad(d.getUTCMinutes()) + ':' + pad(d.getUTCSeconds());
    }
    return d.getFullYear() + '-' + pad(d.getMonth() + 1) + '-' + pad(d.getDate()) + ' ' +
      pad(d.getHours()) + ':' + pad(d.getMinutes()) + ':' + pad(d.getSeconds());
  }

  function isTyping(target) {
    if (!target || target.nodeType !== 1) return false;
    if (target.isContentEditable) return true;
    return !!target.closest('input, select, textarea');
  }

  // ---- confirmations and times ---------------------------------------------

  // Capture phase, so it runs before any other submit handler.
  document.addEventListener('submit', function (e) {
    const form = e.target;
    if (!(form instanceof HTMLFormElement)) return;
    const submitter = e.submitter;
    const text = (submitter && submitter.dataset && submitter.dataset.confirm) || form.dataset.confirm;
    if (text && !window.confirm(text)) {
      e.preventDefault();
      e.stopImmediatePropagation();
    }
  }, true);

  function localTimes(root) {
    for (const el of root.querySelectorAll('time[datetime]')) {
      const value = el.getAttribute('datetime');
      // Only instants: a bare date or a duration stays as the server wrote it.
      if (!/^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}/.test(value)) continue;
      const d = new Date(value);
      if (Number.isNaN(d.getTime())) continue;
      el.textContent = formatDate(d, false);
      el.title = formatDate(d, true) + ' UTC';
    }
  }

  // ---- replay ----------------------------------------------------------------

  // The events of a cast as [[time, code, data], ...] with absolute times in
  // seconds (v3 casts store intervals). Lines that are not JSON are skipped:
  // a recording cut short by a crash can end in a partial line.
  function parseCast(text) {
    const lines = text.split('\n');
    const header = JSON.parse(lines[0]);
    const events = [];
    const abs = [];
    let t = 0;
    for (let i = 1; i < lines.length; i++) {
      const line = lines[i];
      if (line[0] !== '[') continue;
      let e;
      try {
        e = JSON.parse(line);
      } catch (_) {
        continue;
      }
      if (!Array.isArray(e) || typeof e[0] !== 'number' || typeof e[1] !== 'string') continue;
      events.push(e);
      t = header.version === 3 ? t + e[0] : e[0];
      abs.push(t);
    }
    // The player shows only markers strictly before the recording's end;
    // a session that ends right after a command (`exit`) has its last
    // marker at the very end, so one empty output a millisecond later
    // keeps it visible.
    const markerAtEnd = events.some(function (e, i) { return e[1] === 'm' && abs[i] >= t; });
    if (markerAtEnd) {
      events.push([header.version === 3 ? 0.001 : t + 0.001, 'o', '']);
      abs.push(t + 0.001);
    }
    return { header, events, times: abs };
  }

  // The player compresses idle gaps longer than the idle time limit, so its
  // clock (getCurrentTime, seek) runs on a compressed timeline. This is the
  // same computation as the player's, to map recording time (data-time,
  // data-start) to player time and back.
  function Timeline(times, limit) {
    const lim = limit > 0 ? limit : Infinity;
    const raw = [0];
    const play = [0];
    let prev = 0;
    let shift = 0;
    for (const t of times) {
      const delta = (t - prev) - lim;
      prev = t;
      if (delta > 0) shift += delta;
      raw.push(t);
      play.push(t - shift);
    }
    function lastAtOrBefore(arr, x) {
      let lo = 0;
      let hi = arr.length - 1;
      while (lo < hi) {
        const mid = (lo + hi + 1) >> 1;
        if (arr[mid] <= x) lo = mid;
        else hi = mid - 1;
      }
      return lo;
    }
    this.toPlayer = function (r) {
      const i = lastAtOrBefore(raw, r);
      return play[i] + Math.min(r - raw[i], lim);
    };
    this.toRecording = function (p) {
      const i = lastAtOrBefore(play, p);
      return raw[i] + (p - play[i]);
    };
  }

  function initReplay(el) {
    const status = document.getElementById('player-status');
    const speedSelect = document.getElementById('speed');
    const idleInput = document.getElementById('idle');
    const list = document.getElementById('commands');

    let speed = num(el.dataset.speed);
    if (!(speed > 0)) speed = 1;
    let idle = num(el.dataset.idle);
    if (!(idle > 0)) idle = undefined;
    const start = Math.max(0, num(el.dataset.start) || 0);

    const commands = [];
    if (list) {
      for (const a of list.querySelectorAll('a[data-time]')) {
        const time = num(a.dataset.time);
        if (time === undefined) continue;
        commands.push({ a: a, li: a.closest('li') || a, index: num(a.dataset.index), time: time, play: time });
      }
    }

    let cast = null;        // parsed recording
    let data = null;        // [header, ...events], handed to the player
    let timeline = null;    // for the current idle limit
    let player = null;
    let generation = 0;
    let playing = false;
    let seeking = 0;        // seeks in flight: the highlight waits for them
    let current = -1;       // index into commands

    function setCurrent(i, scroll) {
      if (i === current) return;
      if (current >= 0) {
        commands[current].li.classList.remove('current');
        commands[current].li.removeAttribute('aria-current');
      }
      current = i;
      if (i >= 0) {
        const li = commands[i].li;
        li.classList.add('current');
        li.setAttribute('aria-current', 'true');
        if (scroll && list) {
          // Scroll the list only, never the page.
          const top = li.offsetTop - list.offsetTop;
          if (top < list.scrollTop || top + li.offsetHeight > list.scrollTop + list.clientHeight) {
            list.scrollTop = Math.max(0, top - list.clientHeight / 3);
          }
        }
      }
    }

    // The command being shown at player time t: the last one at or before t,
    // keeping the current one when several share its time.
    function commandAt(t) {
      let i = -1;
      for (let k = 0; k < commands.length; k++) {
        if (commands[k].play <= t + 0.002) i = k;
        else break;
      }
      if (i >= 0 && current >= 0 && Math.abs(commands[current].play - commands[i].play) < 0.002) return current;
      return i;
    }

    function recordingTime() {
      if (!player || !timeline) return start;
      const t = player.getCurrentTime();
      return typeof t === 'number' ? timeline.toRecording(t) : start;
    }

    // nudge: half a millisecond past the target, so output written at a
    // marker's own time is on screen despite rounding.
    function seekPlayer(playerTime, nudge) {
      if (!player) return Promise.resolve();
      seeking++;
      return Promise.resolve(player.seek(playerTime + (nudge === false ? 0 : 0.0005)))
        .catch(function () {})
        .then(function () { seeking--; });
    }

    function goTo(i) {
      if (i < 0 || i >= commands.length) return;
      setCurrent(i, true);
      updateQuery({ cmd: commands[i].index, t: null });
      seekPlayer(commands[i].play);
    }

    function poll() {
      if (!player || seeking > 0) return;
      const t = player.getCurrentTime();
      if (typeof t !== 'number') return;
      setCurrent(commandAt(t), playing);
    }

    function showStatus(text) {
      if (status) status.textContent = text;
    }

    // (Re)creates the player at recording time startAt; exact: startAt is
    // the player's own position (after a speed/idle change), not a marker.
    function create(startAt, resume, exact) {
      const gen = ++generation;
      delete document.body.dataset.playerReady;
      if (player) {
        // Unmounts the UI and stops the old player's driver.
        try { player.dispose(); } catch (_) { /* already gone */ }
        player = null;
      }
      el.textContent = '';
      playing = false;
      timeline = new Timeline(cast.times, idle !== undefined ? idle : num(cast.header.idle_time_limit));
      for (const c of commands) c.play = timeline.toPlayer(c.time);

      const p = window.AsciinemaPlayer.create({ data: data, parser: 'asciicast' }, el, {
        speed: speed,
        idleTimeLimit: idle,
        startAt: startAt,
        fit: 'width',
        controls: true,
        preload: false,
        autoPlay: false,
      });
      player = p;
      window.gatehousePlayer = p;
      p.addEventListener('play', function () { if (gen === generation) playing = true; });
      p.addEventListener('playing', function () { if (gen === generation) playing = true; });
      p.addEventListener('pause', function () { if (gen === generation) playing = false; });
      p.addEventListener('ended', function () { if (gen === generation) playing = false; });
      p.addEventListener('error', function (e) {
        if (gen === generation) showStatus('The recording could not be played: ' + ((e && e.message) || 'error'));
      });
      // Loads the recording and shows the frame at startAt.
      seekPlayer(timeline.toPlayer(startAt), !exact).then(function () {
        if (gen !== generation) return;
        document.body.dataset.playerReady = '1';
        poll();
        if (resume) p.play();
      });
    }

    // Recording time (what data-time and data-start count) of the player's
    // position, and the mapping both ways; the player's own clock
    // (gatehousePlayer.getCurrentTime) skips idle time beyond the limit.
    window.gatehouseReplay = {
      recordingTime: recordingTime,
      toPlayerTime: function (t) { return timeline ? timeline.toPlayer(t) : t; },
      toRecordingTime: function (t) { return timeline ? timeline.toRecording(t) : t; },
    };

    if (list) {
      list.addEventListener('click', function (e) {
        if (e.button !== 0 || e.ctrlKey || e.metaKey || e.shiftKey || e.altKey) return;
        const a = e.target.closest('a[data-time]');
        if (!a || !list.contains(a)) return;
        const i = commands.findIndex(function (c) { return c.a === a; });
        if (i < 0) return;
        e.preventDefault();
        goTo(i);
      });
    }

    // Capture phase on window: runs before the player's own [ and ] (which
    // jump between its markers) and stops them, so one press is one step.
    window.addEventListener('keydown', function (e) {
      if (e.key !== '[' && e.key !== ']') return;
      if (e.altKey || e.ctrlKey || e.metaKey || isTyping(e.target)) return;
      if (!commands.length || !player) return;
      e.preventDefault();
      e.stopPropagation();
      if (e.key === ']') goTo(current < 0 ? 0 : Math.min(current + 1, commands.length - 1));
      else if (current > 0) goTo(current - 1);
      else if (current === 0) goTo(0);
    }, true);

    if (speedSelect) {
      const wanted = String(speed);
      if (!Array.from(speedSelect.options).some(function (o) { return num(o.value) === speed; })) {
        const o = document.createElement('option');
        o.value = wanted;
        o.textContent = wanted + '×';
        speedSelect.appendChild(o);
      }
      for (const o of speedSelect.options) o.selected = num(o.value) === speed;
      speedSelect.addEventListener('change', function () {
        const v = num(speedSelect.value);
        if (!(v > 0) || v === speed || !cast) return;
        const at = recordingTime();
        speed = v;
        updateQuery({ speed: v });
        create(at, playing, true);
      });
    }
    if (idleInput) {
      idleInput.value = idle !== undefined ? String(idle) : '';
      idleInput.addEventListener('change', function () {
        const v = num(idleInput.value);
        const next = v > 0 ? v : undefined;
        if (next === idle || !cast) return;
        const at = recordingTime();
        idle = next;
        updateQuery({ idle: next === undefined ? null : next });
        create(at, playing, true);
      });
    }

    // The server may have marked the current command already; from here on
    // this script keeps exactly one marked. ?cmd=N highlights that command
    // from the start (data-start is its time).
    if (list) {
      for (const li of list.querySelectorAll('li.current, li[aria-current]')) {
        li.classList.remove('current');
        li.removeAttribute('aria-current');
      }
    }
    const cmdParam = num(new URLSearchParams(window.location.search).get('cmd'));
    if (cmdParam !== undefined) {
      const i = commands.findIndex(function (c) { return c.index === cmdParam; });
      if (i >= 0) setCurrent(i, true);
    }

    // The recording is fetched once here (not by the player) so that the
    // command times can be mapped onto the player's idle-compressed clock
    // and the player can be recreated without fetching it again.
    // A <link rel="preload" as="fetch" crossorigin="anonymous"> in the
    // page's head started this download already; this fetch (CORS mode,
    // same-origin credentials, like the preload) takes its response.
    return fetch(el.dataset.cast, { credentials: 'same-origin' })
      .then(function (r) {
        if (!r.ok) throw new Error(r.status + ' ' + r.statusText);
        return r.text();
      })
      .then(function (text) {
        cast = parseCast(text);
        if (!cast.events.length) throw new Error('the recording has no events');
        data = [cast.header].concat(cast.events);
        create(start, false);
        window.setInterval(poll, 250);
      })
      .catch(function (err) {
        el.classList.add('player-error');
        el.textContent = 'The recording could not be loaded: ' + err.message;
        showStatus('');
      });
  }

  // ---- integrity -------------------------------------------------------------

  function showIntegrity(el, state, kind, text) {
    const badge = document.createElement('span');
    badge.className = 'badge' + (kind ? ' ' + kind : '');
    badge.textContent = text;
    el.textContent = '';
    el.appendChild(badge);
    el.dataset.state = state;
    document.body.dataset.integrity = state;
  }

  function checkIntegrity(el) {
    fetch(el.dataset.integrity, { credentials: 'same-origin', headers: { Accept: 'application/json' } })
      .then(function (r) {
        return r.json().catch(function () { return {}; }).then(function (j) {
          if (!r.ok || !j.state) throw new Error(j.error || (r.status + ' ' + r.statusText));
          showIntegrity(el, j.state, j.badge, j.text);
        });
      })
      .catch(function (err) {
        showIntegrity(el, 'error', 'bad', 'the recording could not be checked: ' + err.message);
      });
  }

  // ---- live ----------------------------------------------------------------

  // The player's own websocket driver, with the "v2.asciicast" subprotocol:
  // the server answers the upgrade with Sec-WebSocket-Protocol: v2.asciicast,
  // sends the asciicast v2 header as the first text message and then one
  // event line per text message, and closes with 1000 when the session ends.
  function initLive(el) {
    const status = document.getElementById('live-status');
    const url = new URL(el.dataset.live, window.location.href);
    url.protocol = window.location.protocol === 'https:' ? 'wss:' : 'ws:';
    let ended = false;

    function showStatus(text) {
      if (status && !ended) status.textContent = text;
    }

    // bufferTime 0: each event is shown as it arrives. With the player's
    // default jitter buffer, output still buffered when the socket closes
    // is dropped, so a session's last screen could go missing.
    const p = window.AsciinemaPlayer.create({ driver: 'websocket', url: url.href, bufferTime: 0 }, el, {
      autoPlay: true,
      fit: 'width',
    });
    window.gatehousePlayer = p;
    showStatus('connecting…');
    p.addEventListener('playing', function () {
      document.body.dataset.playerReady = '1';
      showStatus('live');
    });
    p.addEventListener('loading', function () { showStatus('reconnecting…'); });
    p.addEventListener('offline', function () { showStatus('no data from the session'); });
    p.addEventListener('ended', function () {
      if (status) status.textContent = 'session ended';
      ended = true;
      document.body.dataset.liveEnded = '1';
    });
  }

  // ---- start -----------------------------------------------------------------

  function start() {
    localTimes(document);
    const integrity = document.querySelector('#integrity[data-integrity]');
    const el = document.getElementById('player');
    // The check waits for the recording's download: both read the whole
    // file, and the replay is what the reviewer waits for.
    let loaded = Promise.resolve();
    if (el && typeof window.AsciinemaPlayer === 'undefined') {
      el.textContent = 'The player script did not load.';
    } else if (el && el.dataset.cast) {
      loaded = initReplay(el);
    } else if (el && el.dataset.live) {
      initLive(el);
    }
    if (integrity) loaded.then(function () { checkIntegrity(integrity); });
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();

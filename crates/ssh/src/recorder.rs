//! The recorder: one task per recorded channel, fed by the bridge through
//! a bounded queue so that the data path never writes files or parses
//! terminals itself. It writes the asciicast file incrementally (flushed
//! at least every [`FLUSH_INTERVAL`], so a crash loses at most that much),
//! hashes what it writes, and turns accepted command lines into `command`
//! events with `m` markers in the recording.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gatehouse_model::{EventType, Outcome, Severity};
use gatehouse_record::asciicast::{CastWriter, Header, SessionInfo};
use gatehouse_record::capture::LineCapture;
use gatehouse_store::recordings;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

pub use crate::session::RecordingSummary;
use crate::session::{Destination, Events, Identity};

pub const FLUSH_INTERVAL: Duration = Duration::from_millis(500);
/// The flush after the last one (see `run`): just over object storage's
/// chunk interval.
const LATE_FLUSH: Duration = Duration::from_millis(2100);
/// Quiet time after which the command capture's screen is put to sleep.
const IDLE_SLEEP: Duration = Duration::from_secs(5);
/// Recording size per exec channel beyond which its output is no longer
/// recorded (metadata and events go on).
pub const EXEC_OUTPUT_CAP: u64 = 10 * 1024 * 1024;
const QUEUE: usize = 256;
/// Queued events taken in one go before the timers are looked at again.
const DRAIN_ROUND: usize = 64;
/// How long the recorder lets events gather after a round that emptied
/// the queue, before it waits on the queue again. Waiting on it, the task
/// is woken for every chunk the session hands over, and on the
/// multi-threaded runtime each wake-up is a thread switch: measured, 320
/// more per MB of terminal output than an unrecorded gateway
/// (BENCHMARKS.md). Times in the cast are taken as events are taken, so
/// they move by at most this much.
const GATHER: Duration = Duration::from_millis(4);

pub(crate) enum RecEvent {
    Output(Bytes),
    Input(Bytes),
    Resize(u32, u32),
}

pub(crate) struct Recorder {
    tx: mpsc::Sender<RecEvent>,
    done: oneshot::Receiver<Option<RecordingSummary>>,
}

impl Recorder {
    pub async fn output(&self, data: &Bytes) {
        let _ = self.tx.send(RecEvent::Output(data.clone())).await;
    }
    pub async fn input(&self, data: &Bytes) {
        let _ = self.tx.send(RecEvent::Input(data.clone())).await;
    }
    pub async fn resize(&self, cols: u32, rows: u32) {
        let _ = self.tx.send(RecEvent::Resize(cols, rows)).await;
    }
    /// Ends the recording and returns its summary once it is on disk.
    pub async fn finish(self) -> Option<RecordingSummary> {
        drop(self.tx);
        self.done.await.ok().flatten()
    }
}

/// What is being recorded.
pub(crate) struct RecordingSpec {
    pub cols: u32,
    pub rows: u32,
    pub command: Option<String>,
    pub term: Option<String>,
    /// A terminal session: parse the screen for command lines.
    pub pty: bool,
}

/// A `Write` that hashes exactly the bytes that reach the file, with a
/// write buffer that exists only while data waits in it: an idle
/// session's recording holds no buffer at all. After a failed write
/// (a full disk) `bytes` and `hash` still describe what is on disk.
struct Hashing<W: Write> {
    inner: W,
    buf: Vec<u8>,
    hash: Sha256,
    /// Bytes written to the file.
    bytes: u64,
}

/// Written out when the buffer reaches this size.
const WRITE_BUFFER: usize = 16 * 1024;

impl<W: Write> Hashing<W> {
    /// Bytes handed to this writer: on disk or waiting in the buffer.
    fn accepted(&self) -> u64 {
        self.bytes + self.buf.len() as u64
    }

    /// Writes `data` to the file, hashing and counting what the file took.
    fn put(
        inner: &mut W,
        hash: &mut Sha256,
        bytes: &mut u64,
        mut data: &[u8],
    ) -> std::io::Result<()> {
        while !data.is_empty() {
            match inner.write(data) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    hash.update(&data[..n]);
                    *bytes += n as u64;
                    data = &data[n..];
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn drain(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            let r = Self::put(&mut self.inner, &mut self.hash, &mut self.bytes, &self.buf);
            self.buf.clear();
            r?;
        }
        Ok(())
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + data.len() > WRITE_BUFFER {
            self.drain()?;
        }
        if data.len() >= WRITE_BUFFER {
            Self::put(&mut self.inner, &mut self.hash, &mut self.bytes, data)?;
        } else {
            self.buf.extend_from_slice(data);
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.drain()?;
        self.buf = Vec::new();
        self.inner.flush()
    }
}

/// Starts recording a channel of this session; the error says what could
/// not be created (the caller decides, by `recording.required`, whether
/// the channel may run without it).
pub(crate) fn start(
    events: Events,
    who: &Identity,
    dest: &Destination,
    spec: RecordingSpec,
) -> Result<Recorder, String> {
    let state = events.state();
    let n = state
        .recording_seq
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let id = if n == 0 {
        state.session_id.clone()
    } else {
        format!("{}-{n}", state.session_id)
    };
    let storage = match recordings::from_config(&who.config.recording) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot reach the recording storage");
            return Err(format!("cannot create the recording {id}: {e}"));
        }
    };
    let file = match storage.create(&id) {
        Ok(f) => f,
        Err(e) => {
            let path = storage.locate(&id);
            tracing::error!(error = %e, %path, "cannot create the recording");
            return Err(format!("cannot create the recording {path}: {e}"));
        }
    };
    let mut env = serde_json::Map::new();
    if let Some(term) = &spec.term {
        env.insert("TERM".into(), serde_json::Value::String(term.clone()));
    }
    env.insert("SHELL".into(), serde_json::Value::String("/bin/sh".into()));
    let header = Header {
        version: 2,
        width: spec.cols.max(1),
        height: spec.rows.max(1),
        timestamp: chrono::Utc::now().timestamp(),
        command: spec.command.clone(),
        title: format!(
            "{}@{} as {}",
            who.user,
            dest.target.clone().unwrap_or_default(),
            dest.login.clone().unwrap_or_default()
        ),
        env,
        gatehouse: SessionInfo {
            session_id: state.session_id.clone(),
            user: who.user.clone(),
            target: dest.target.clone().unwrap_or_default(),
            login: dest.login.clone().unwrap_or_default(),
        },
    };
    let hashing = Hashing {
        inner: file,
        buf: Vec::new(),
        hash: Sha256::new(),
        bytes: 0,
    };
    // The header goes to disk at once: a recording that cannot be
    // written is known before anything runs on the target.
    let cast = match CastWriter::new(hashing, &header).and_then(|mut c| c.flush().map(|()| c)) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot write the recording header");
            return Err(format!(
                "cannot write the recording {}: {e}",
                storage.locate(&id)
            ));
        }
    };
    let (tx, rx) = mpsc::channel(QUEUE);
    let (done_tx, done) = oneshot::channel();
    let config = who.config.clone();
    tokio::spawn(async move {
        let summary = run(events, config, spec, id, cast, rx).await;
        let _ = done_tx.send(summary);
    });
    Ok(Recorder { tx, done })
}

type Cast = CastWriter<Hashing<Box<dyn recordings::RecordingWriter>>>;

async fn run(
    events: Events,
    config: Arc<gatehouse_model::Config>,
    spec: RecordingSpec,
    id: String,
    mut cast: Cast,
    mut rx: mpsc::Receiver<RecEvent>,
) -> Option<RecordingSummary> {
    let start = Instant::now();
    let required = config.recording.required;
    let mut rec = Taps {
        events: &events,
        id: &id,
        cap: if spec.pty {
            u64::MAX
        } else if config.recording.exec_output {
            EXEC_OUTPUT_CAP
        } else {
            0
        },
        capped: false,
        record_input: config.recording.input && spec.pty,
        capture: spec.pty.then(|| LineCapture::new(spec.cols, spec.rows)),
    };
    // Set at the first failed write: nothing more is written (the file
    // ends where the disk refused), the session is told.
    let mut failed: Option<String> = None;
    let mut timers = Timers::new();
    // One timer for the whole recording, moved only when the next
    // deadline moves: while output streams, a chunk costs no timer
    // registration.
    let sleep = tokio::time::sleep_until(tokio::time::Instant::now());
    tokio::pin!(sleep);
    let mut armed = None;
    loop {
        let next = timers.next();
        if next != armed {
            if let Some(at) = next {
                sleep.as_mut().reset(at);
            }
            armed = next;
        }
        let ev = tokio::select! {
            ev = rx.recv() => ev,
            () = &mut sleep, if armed.is_some() => {
                armed = None;
                match timers.fired(tokio::time::Instant::now()) {
                    Some(Timer::Flush) if failed.is_none() => {
                        if let Err(e) = flush(&mut cast, events.is_watched()) {
                            failed = Some(e.to_string());
                            write_failed(&events, required, &id, &e, cast.get_ref().bytes).await;
                        }
                    }
                    Some(Timer::Sleep) => {
                        if let Some(c) = rec.capture.as_mut() {
                            c.hibernate();
                        }
                    }
                    _ => {}
                }
                continue;
            }
        };
        let Some(ev) = ev else { break };
        timers.data(tokio::time::Instant::now());
        // What else is queued is taken at once, up to a bound (the
        // timers are looked at between rounds), without going back to
        // the select.
        let mut queued = Some(ev);
        let mut round = 0;
        while let Some(ev) = queued.take() {
            round += 1;
            let t = start.elapsed().as_secs_f64();
            let writing = failed.is_none();
            if let (true, Err(e)) = (writing, rec.take(&mut cast, ev, t, writing).await) {
                failed = Some(e.to_string());
                write_failed(&events, required, &id, &e, cast.get_ref().bytes).await;
            }
            if round < DRAIN_ROUND {
                queued = rx.try_recv().ok();
            }
        }
        if round < DRAIN_ROUND {
            tokio::time::sleep(GATHER).await;
        }
    }
    if failed.is_none() {
        if let Err(e) = cast.flush() {
            failed = Some(e.to_string());
            write_failed(&events, required, &id, &e, cast.get_ref().bytes).await;
        }
    }
    Some(finish(&events, required, id, cast, failed).await)
}

/// What a running recording keeps besides its file: the command capture
/// and the output cap.
struct Taps<'a> {
    events: &'a Events,
    id: &'a str,
    /// Output bytes the recording holds at most.
    cap: u64,
    capped: bool,
    /// Keystrokes go into the recording (terminal sessions only).
    record_input: bool,
    capture: Option<LineCapture>,
}

impl Taps<'_> {
    /// One event from the bridge, at `t` seconds into the recording;
    /// nothing is written once `writing` is false (the command capture
    /// and its events go on).
    async fn take(
        &mut self,
        cast: &mut Cast,
        ev: RecEvent,
        t: f64,
        writing: bool,
    ) -> std::io::Result<()> {
        match ev {
            RecEvent::Output(data) => {
                let (r, commands) = write_output(
                    cast,
                    self.capture.as_mut(),
                    &mut self.capped,
                    self.cap,
                    writing,
                    t,
                    &data,
                );
                for command in commands {
                    let ev = self
                        .events
                        .event(EventType::COMMAND, Severity::Info, Outcome::Success)
                        .details(serde_json::json!({
                            "command": command,
                            "source": "interactive",
                            "recording_id": self.id,
                            "offset": (t * 1000.0).round() / 1000.0,
                        }));
                    self.events.fact(ev).await;
                }
                r
            }
            RecEvent::Input(data) => {
                if let Some(c) = self.capture.as_mut() {
                    c.input(&data);
                }
                if writing && self.record_input {
                    cast.input(t, &data)
                } else {
                    Ok(())
                }
            }
            RecEvent::Resize(cols, rows) => {
                if let Some(c) = self.capture.as_mut() {
                    c.resize(cols, rows);
                }
                if writing {
                    cast.resize(t, cols, rows)
                } else {
                    Ok(())
                }
            }
        }
    }
}

/// Writes out what the recording holds; while someone follows the
/// session live, also makes it readable elsewhere at once (object storage
/// stores a chunk now rather than at its interval).
fn flush(cast: &mut Cast, watched: bool) -> std::io::Result<()> {
    cast.flush()?;
    if watched {
        cast.get_mut().inner.publish()?;
    }
    Ok(())
}

/// Ends the recording in its storage, then reports its digest: an object
/// store's last chunk is in the bucket once `finish` returns.
async fn finish(
    events: &Events,
    required: bool,
    id: String,
    cast: Cast,
    mut failed: Option<String>,
) -> RecordingSummary {
    let mut hashing = cast.into_inner();
    let mut inner = std::mem::replace(&mut hashing.inner, Box::new(std::io::sink()));
    let finished = tokio::task::spawn_blocking(move || inner.finish())
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
    if let (None, Err(e)) = (&failed, finished) {
        failed = Some(e.to_string());
        write_failed(events, required, &id, &e, hashing.bytes).await;
    }
    summary(hashing, id, failed)
}

/// The recorder's timers, set only while there is something to do: a
/// flush when data is waiting in the buffer, one more [`LATE_FLUSH`]
/// after it (storage that batches, like object storage cutting a chunk at
/// most every 2 s, then stores what the last burst left though nothing
/// more comes), and putting the screen to sleep. An idle session's
/// recorder costs no wake-ups.
struct Timers {
    flush_at: Option<tokio::time::Instant>,
    late_at: Option<tokio::time::Instant>,
    sleep_at: Option<tokio::time::Instant>,
}

enum Timer {
    Flush,
    Sleep,
}

impl Timers {
    /// The screen sleeps until there is something on it.
    fn new() -> Timers {
        Timers {
            flush_at: None,
            late_at: None,
            sleep_at: Some(tokio::time::Instant::now()),
        }
    }

    fn next(&self) -> Option<tokio::time::Instant> {
        [self.flush_at, self.late_at, self.sleep_at]
            .into_iter()
            .flatten()
            .min()
    }

    /// Data came in at `now`.
    fn data(&mut self, now: tokio::time::Instant) {
        if self.flush_at.is_none() {
            self.flush_at = Some(now + FLUSH_INTERVAL);
        }
        self.sleep_at = Some(now + IDLE_SLEEP);
    }

    /// Which timer is due at `now` (cleared; a flush sets the late one).
    fn fired(&mut self, now: tokio::time::Instant) -> Option<Timer> {
        let due = |at: Option<tokio::time::Instant>| at.is_some_and(|t| t <= now);
        if due(self.flush_at) {
            self.flush_at = None;
            self.late_at = Some(now + LATE_FLUSH);
            Some(Timer::Flush)
        } else if due(self.late_at) {
            self.late_at = None;
            Some(Timer::Flush)
        } else if due(self.sleep_at) {
            self.sleep_at = None;
            Some(Timer::Sleep)
        } else {
            None
        }
    }
}

/// Output into the recording, up to `cap` bytes held, with a marker for
/// each command line the screen shows (the commands are returned, for
/// their events). Nothing is written once `writing` is false.
fn write_output<W: Write>(
    cast: &mut CastWriter<Hashing<W>>,
    capture: Option<&mut LineCapture>,
    capped: &mut bool,
    cap: u64,
    writing: bool,
    t: f64,
    data: &[u8],
) -> (std::io::Result<()>, Vec<String>) {
    let mut r = Ok(());
    // The cap counts what the recording holds, not what went
    // by: binary output grows up to six-fold as JSON text.
    if !writing {
    } else if cast.get_ref().accepted() < cap {
        r = cast.output(t, data);
    } else if !*capped {
        *capped = true;
        r = cast.marker(t, "output not recorded beyond the size cap");
    }
    let Some(c) = capture else {
        return (r, Vec::new());
    };
    let commands = c.output(data);
    for command in &commands {
        if writing && r.is_ok() {
            r = cast.marker(t, command);
        }
    }
    (r, commands)
}

/// The finished recording: its id, hash and size on disk.
fn summary<W: Write>(hashing: Hashing<W>, id: String, failed: Option<String>) -> RecordingSummary {
    let sha256 = gatehouse_model::hex(&hashing.hash.finalize());
    RecordingSummary {
        id,
        sha256,
        bytes: hashing.bytes,
        error: failed,
    }
}

/// A recording write failed (a full disk, a vanished directory): a
/// `recording.failed` event, and with `recording.required` the session
/// is stopped like one whose events cannot be written.
async fn write_failed(
    events: &Events,
    required: bool,
    id: &str,
    error: &std::io::Error,
    on_disk: u64,
) {
    tracing::error!(error = %error, recording = %id, "recording write failed");
    let ev = events
        .event(EventType::RECORDING_FAILED, Severity::High, Outcome::Error)
        .reason(format!("cannot write the recording: {error}"))
        .details(serde_json::json!({
            "recording_id": id,
            "bytes_on_disk": on_disk,
            "required": required,
        }));
    events.fact(ev).await;
    if required {
        events.stop(format!("the session recording cannot be written ({error})"));
    }
}

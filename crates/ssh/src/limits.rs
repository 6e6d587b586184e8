//! What one client may hold of the gateway before and after it has
//! authenticated: the login deadline that closes a socket whatever state
//! its handshake is in, unauthenticated connections per source address,
//! and authenticated connections per user.
//!
//! russh runs each connection in a task of its own and offers no way to
//! abort it before key exchange (its `disconnect` is a message the
//! session reads only once encrypted), so the deadline works on the
//! socket itself: [`Killable`] wraps the stream, and once its
//! [`KillSwitch`] is thrown every read and write fails, which ends the
//! session task, drops the handler and frees the slot it held.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Throws the switch of one [`Killable`] stream.
#[derive(Clone, Default)]
pub(crate) struct KillSwitch(Arc<KillInner>);

#[derive(Default)]
struct KillInner {
    killed: AtomicBool,
    read_waker: AtomicWaker,
    write_waker: AtomicWaker,
}

impl KillSwitch {
    /// From now on the stream's reads and writes fail; a pending read or
    /// write is woken to see it.
    pub fn kill(&self) {
        self.0.killed.store(true, Ordering::Release);
        self.0.read_waker.wake();
        self.0.write_waker.wake();
    }

    pub fn killed(&self) -> bool {
        self.0.killed.load(Ordering::Acquire)
    }
}

/// A stream that fails once its [`KillSwitch`] is thrown.
pub(crate) struct Killable<S> {
    inner: S,
    switch: KillSwitch,
}

impl<S> Killable<S> {
    pub fn new(inner: S) -> (Killable<S>, KillSwitch) {
        let switch = KillSwitch::default();
        (
            Killable {
                inner,
                switch: switch.clone(),
            },
            switch,
        )
    }
}

fn aborted() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "closed by the gateway: login grace time exceeded",
    )
}

impl<S: AsyncRead + Unpin> AsyncRead for Killable<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.switch.0.read_waker.register(cx.waker());
        if self.switch.killed() {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Killable<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.switch.0.write_waker.register(cx.waker());
        if self.switch.killed() {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.switch.killed() {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Counts per key (a source address, a user) with a cap; a [`Slot`] is
/// one counted holder and gives its place back when dropped.
#[derive(Clone, Default)]
pub(crate) struct Counter(Arc<Mutex<HashMap<String, usize>>>);

pub(crate) struct Slot {
    counter: Counter,
    key: String,
}

impl Counter {
    /// Takes a place for `key` if fewer than `max` are held; else returns
    /// how many are held.
    pub fn try_take(&self, key: &str, max: usize) -> Result<Slot, usize> {
        let Ok(mut map) = self.0.lock() else {
            return Err(0);
        };
        let n = map.entry(key.to_string()).or_insert(0);
        if *n >= max {
            return Err(*n);
        }
        *n += 1;
        Ok(Slot {
            counter: self.clone(),
            key: key.to_string(),
        })
    }

    #[cfg(test)]
    pub fn held(&self, key: &str) -> usize {
        self.0
            .lock()
            .ok()
            .and_then(|m| m.get(key).copied())
            .unwrap_or(0)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut map) = self.counter.0.lock() {
            if let Some(n) = map.get_mut(&self.key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    map.remove(&self.key);
                }
            }
        }
    }
}

/// Unauthenticated connections per source address
/// (`server.per_source_max_startups`), with a queue in front: a
/// connection over its source's share waits, unread, for a place (at
/// most `server.per_source_queue` of them per source and `total` in all,
/// first come first served) until its login deadline. A burst of
/// connections from one control host (Ansible with many forks) is
/// admitted as places free instead of refused.
#[derive(Clone, Default)]
pub(crate) struct SourceGate(Arc<Mutex<Gate>>);

#[derive(Default)]
struct Gate {
    sources: HashMap<String, Source>,
    /// Connections waiting for a place, all sources together.
    waiting: usize,
}

/// One source's places (a fair semaphore) and how many connections hold
/// or wait for one; the entry goes when that count is back at zero.
struct Source {
    places: Arc<tokio::sync::Semaphore>,
    max: usize,
    users: usize,
}

/// A place among its source's unauthenticated connections.
pub(crate) struct SourceSlot {
    gate: SourceGate,
    key: String,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// Why a connection got no place: the queue was full (its source's or
/// the gateway's), or the login deadline came while it waited. Counts
/// of its source as they were then.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum NoPlace {
    QueueFull { held: usize, waiting: usize },
    TimedOut { held: usize, waiting: usize },
}

/// How many may wait: per source and in all.
#[derive(Clone, Copy)]
pub(crate) struct Queue {
    pub per_source: usize,
    pub total: usize,
}

impl SourceGate {
    /// A place for a connection from `key`: at once when one is free and
    /// nobody waits, else after the connections queued before it, until
    /// `deadline`. Refused at once when the queue is full.
    pub async fn take(
        &self,
        key: &str,
        max: usize,
        queue: Queue,
        deadline: tokio::time::Instant,
    ) -> Result<SourceSlot, NoPlace> {
        let full = NoPlace::QueueFull {
            held: 0,
            waiting: 0,
        };
        let places = {
            let Ok(mut gate) = self.0.lock() else {
                return Err(full);
            };
            let total_waiting = gate.waiting;
            let s = gate
                .sources
                .entry(key.to_string())
                .or_insert_with(|| Source {
                    places: Arc::new(tokio::sync::Semaphore::new(max)),
                    max,
                    users: 0,
                });
            // A fair semaphore has no free permit while anyone waits.
            if let Ok(permit) = s.places.clone().try_acquire_owned() {
                s.users += 1;
                return Ok(self.slot(key, permit));
            }
            let (held, waiting) = s.counts();
            if waiting >= queue.per_source || total_waiting >= queue.total {
                if s.users == 0 {
                    gate.sources.remove(key);
                }
                return Err(NoPlace::QueueFull { held, waiting });
            }
            s.users += 1;
            let places = s.places.clone();
            gate.waiting += 1;
            places
        };
        // Counted as waiting until the wait ends, however it ends: a
        // connection dropped mid-wait (shutdown) is uncounted by the guard.
        let mut waiter = Waiter {
            gate: self,
            key,
            settled: false,
        };
        let got = tokio::time::timeout_at(deadline, places.acquire_owned()).await;
        waiter.settled = true;
        self.stop_waiting();
        match got {
            Ok(Ok(permit)) => Ok(self.slot(key, permit)),
            _ => {
                let (held, waiting) = self.leave(key);
                // This connection was one of the waiting ones.
                Err(NoPlace::TimedOut {
                    held,
                    waiting: waiting + 1,
                })
            }
        }
    }

    fn stop_waiting(&self) {
        if let Ok(mut gate) = self.0.lock() {
            gate.waiting = gate.waiting.saturating_sub(1);
        }
    }

    fn slot(&self, key: &str, permit: tokio::sync::OwnedSemaphorePermit) -> SourceSlot {
        SourceSlot {
            gate: self.clone(),
            key: key.to_string(),
            _permit: permit,
        }
    }

    /// Connections holding a place and waiting for one, all sources
    /// together.
    pub fn totals(&self) -> (usize, usize) {
        self.0
            .lock()
            .map(|g| {
                let holding = g.sources.values().map(|s| s.counts().0).sum();
                (holding, g.waiting)
            })
            .unwrap_or((0, 0))
    }

    /// One holder or waiter of `key` is gone; the counts left.
    fn leave(&self, key: &str) -> (usize, usize) {
        let Ok(mut gate) = self.0.lock() else {
            return (0, 0);
        };
        let Some(s) = gate.sources.get_mut(key) else {
            return (0, 0);
        };
        s.users = s.users.saturating_sub(1);
        let counts = s.counts();
        if s.users == 0 {
            gate.sources.remove(key);
        }
        counts
    }

    #[cfg(test)]
    pub fn counts(&self, key: &str) -> (usize, usize) {
        self.0
            .lock()
            .ok()
            .and_then(|g| g.sources.get(key).map(Source::counts))
            .unwrap_or((0, 0))
    }
}

impl Source {
    /// (holding a place, waiting for one).
    fn counts(&self) -> (usize, usize) {
        let held = self.max.saturating_sub(self.places.available_permits());
        (held, self.users.saturating_sub(held))
    }
}

/// A connection in a source's queue; see [`SourceGate::take`].
struct Waiter<'a> {
    gate: &'a SourceGate,
    key: &'a str,
    /// The wait ended and `take` counted the outcome itself.
    settled: bool,
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.gate.stop_waiting();
            self.gate.leave(self.key);
        }
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        // The permit goes back after the count (field order): a waiter
        // woken by it finds the entry still there.
        self.gate.leave(&self.key);
    }
}

/// At most one `source.flood` event per source address per window: a
/// flood must not become a flood of audit events.
#[derive(Default)]
pub(crate) struct FloodNotices(Mutex<HashMap<IpAddr, Instant>>);

const FLOOD_NOTICE_EVERY: Duration = Duration::from_secs(60);
const FLOOD_TRACKED: usize = 10_000;

impl FloodNotices {
    /// True when this source has not been reported within the window.
    pub fn should_report(&self, ip: IpAddr) -> bool {
        let Ok(mut map) = self.0.lock() else {
            return false;
        };
        let now = Instant::now();
        if map.len() >= FLOOD_TRACKED {
            map.retain(|_, t| now.duration_since(*t) < FLOOD_NOTICE_EVERY);
        }
        match map.get(&ip) {
            Some(t) if now.duration_since(*t) < FLOOD_NOTICE_EVERY => false,
            _ => {
                map.insert(ip, now);
                true
            }
        }
    }
}

/// Clamps a requested terminal size to the configured largest one.
pub(crate) fn clamp_pty(cols: u32, rows: u32, max_cols: u32, max_rows: u32) -> (u32, u32) {
    (cols.min(max_cols), rows.min(max_rows))
}

/// What an unauthenticated connection holds: a place among
/// `server.max_startups` and among its source's
/// `server.per_source_max_startups`. Dropped once it authenticates.
pub(crate) struct Startup {
    #[allow(dead_code)] // held for its Drop
    pub permit: tokio::sync::OwnedSemaphorePermit,
    #[allow(dead_code)] // held for its Drop
    pub source: SourceSlot,
    /// The login deadline: `server.login_grace_time` after the
    /// connection was accepted, time spent waiting for a place included.
    pub deadline: tokio::time::Instant,
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn counter_caps_and_releases() {
        let c = Counter::default();
        let a = c.try_take("10.0.0.1", 2).ok();
        let b = c.try_take("10.0.0.1", 2).ok();
        assert!(a.is_some() && b.is_some());
        assert_eq!(c.try_take("10.0.0.1", 2).err(), Some(2));
        assert!(c.try_take("10.0.0.2", 2).is_ok());
        drop(a);
        assert_eq!(c.held("10.0.0.1"), 1);
        assert!(c.try_take("10.0.0.1", 2).is_ok());
        drop(b);
    }

    #[tokio::test]
    async fn a_source_over_its_share_waits_its_turn() {
        let gate = SourceGate::default();
        let soon = || tokio::time::Instant::now() + Duration::from_secs(10);
        let q = |per_source| Queue {
            per_source,
            total: 10,
        };
        let first = gate
            .take("10.0.0.1", 1, q(2), soon())
            .await
            .expect("a place");
        // Two wait in order; a third finds the queue full.
        let (g2, g3) = (gate.clone(), gate.clone());
        let order = Arc::new(Mutex::new(Vec::new()));
        let (o2, o3) = (order.clone(), order.clone());
        let second = tokio::spawn(async move {
            let slot = g2.take("10.0.0.1", 1, q(2), soon()).await;
            o2.lock().map(|mut o| o.push(2)).ok();
            slot
        });
        while gate.counts("10.0.0.1") != (1, 1) {
            tokio::task::yield_now().await;
        }
        let third = tokio::spawn(async move {
            let slot = g3.take("10.0.0.1", 1, q(2), soon()).await;
            o3.lock().map(|mut o| o.push(3)).ok();
            slot
        });
        while gate.counts("10.0.0.1") != (1, 2) {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            gate.take("10.0.0.1", 1, q(2), soon()).await.err(),
            Some(NoPlace::QueueFull {
                held: 1,
                waiting: 2
            })
        );
        // Another source is not held up.
        assert!(gate.take("10.0.0.2", 1, q(2), soon()).await.is_ok());
        drop(first);
        let second = second.await.expect("task").expect("second gets the place");
        drop(second);
        let third = third.await.expect("task").expect("third gets it next");
        assert_eq!(*order.lock().expect("order"), vec![2, 3]);
        // A waiter whose deadline comes first gives up and says so.
        let late = gate
            .take(
                "10.0.0.1",
                1,
                q(2),
                tokio::time::Instant::now() + Duration::from_millis(50),
            )
            .await;
        assert_eq!(
            late.err(),
            Some(NoPlace::TimedOut {
                held: 1,
                waiting: 1
            })
        );
        drop(third);
        assert_eq!(gate.counts("10.0.0.1"), (0, 0));
        // A waiter dropped mid-wait (shutdown) leaves no count behind.
        let held = gate
            .take("10.0.0.1", 1, q(2), soon())
            .await
            .expect("a place");
        let dropped = tokio::time::timeout(
            Duration::from_millis(20),
            gate.take("10.0.0.1", 1, q(2), soon()),
        )
        .await;
        assert!(dropped.is_err(), "it was waiting");
        assert_eq!(gate.counts("10.0.0.1"), (1, 0));
        assert_eq!(gate.totals(), (1, 0));
        drop(held);
        // With no queue, over the share is refused at once.
        let only = gate
            .take("10.0.0.3", 1, q(0), soon())
            .await
            .expect("a place");
        assert!(matches!(
            gate.take("10.0.0.3", 1, q(0), soon()).await,
            Err(NoPlace::QueueFull {
                held: 1,
                waiting: 0
            })
        ));
        drop(only);
        // Nor when the gateway's queue is full, whatever the source's.
        let one = gate
            .take("10.0.0.4", 1, q(2), soon())
            .await
            .expect("a place");
        let none_in_all = Queue {
            per_source: 2,
            total: 0,
        };
        assert!(matches!(
            gate.take("10.0.0.4", 1, none_in_all, soon()).await,
            Err(NoPlace::QueueFull {
                held: 1,
                waiting: 0
            })
        ));
        drop(one);
    }

    #[test]
    fn flood_notices_once_per_window() {
        let f = FloodNotices::default();
        let ip: IpAddr = "127.0.0.2".parse().unwrap_or(IpAddr::from([127, 0, 0, 2]));
        assert!(f.should_report(ip));
        assert!(!f.should_report(ip));
        assert!(f.should_report(IpAddr::from([127, 0, 0, 3])));
    }

    #[test]
    fn pty_clamped() {
        assert_eq!(clamp_pty(1000, 1000, 500, 200), (500, 200));
        assert_eq!(clamp_pty(80, 24, 500, 200), (80, 24));
    }

    #[tokio::test]
    async fn a_pending_read_fails_when_killed() {
        let (mut client, server) = tokio::io::duplex(64);
        let (mut killable, switch) = Killable::new(server);
        client.write_all(b"SSH-2.0-x\r\n").await.expect("write");
        let mut buf = [0u8; 11];
        killable
            .read_exact(&mut buf)
            .await
            .expect("read before kill");
        let reader = tokio::spawn(async move {
            let mut more = [0u8; 4];
            killable.read(&mut more).await
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        switch.kill();
        let r = tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .expect("the read ends")
            .expect("task");
        assert_eq!(
            r.err().map(|e| e.kind()),
            Some(io::ErrorKind::ConnectionAborted)
        );
        drop(client);
    }
}

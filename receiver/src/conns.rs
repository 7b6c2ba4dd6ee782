//! Open connections: how many may be open, how long an idle one may stay, and which to close
//! to make room for a new one.
//!
//! The design is nginx's: the accept loop never stops accepting. A connection is *idle* while
//! it is not in the middle of a request: from accept (TLS handshake included) until its first
//! request head is complete, and between a response and the next request head. When a new
//! connection would go over the cap, the idle connection that has been idle longest is closed to
//! make room; a connection in the middle of a request is never closed for another. So one
//! client holding many idle or slow connections can only push out its own (and other idle
//! ones), never stop a new request from being answered.
//!
//! Timeouts (see [`Timeouts`]): a new connection must complete its first request head within
//! `head` of being accepted; a connection between requests may stay idle for `keep_alive`,
//! and once a byte of the next request arrives, must complete its head within `head` of it.
//! hyper's own `header_read_timeout` is not used: it restarts with every request head, so it
//! would bound idle keep-alive connections and slow heads alike, and it does not cover the TLS
//! handshake.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

/// How long connections may wait; the defaults are 10 s for a request head and 60 s idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// From accept to a complete first request head (TLS handshake included), and from the
    /// first byte of a later request to its complete head.
    pub head: Duration,
    /// How long a connection may stay idle between a response and the next request.
    pub keep_alive: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            head: Duration::from_secs(10),
            keep_alive: Duration::from_secs(60),
        }
    }
}

/// File descriptors kept for the store, spool files, outbound requests and the listener,
/// besides two per connection (its socket, and a spool file while it uploads).
const RESERVED_FDS: u64 = 64;

/// Raises the soft limit on open files to the hard limit (a server that holds many
/// connections needs more than the usual 1,024), then returns the most connections that
/// limit leaves room for.
pub fn connection_room() -> usize {
    let fds = raise_open_files_limit();
    usize::try_from(fds.saturating_sub(RESERVED_FDS) / 2).unwrap_or(usize::MAX)
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the soft limit now in force.
#[cfg(unix)]
fn raise_open_files_limit() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    // `None` is unlimited.
    let soft = limit.current.unwrap_or(u64::MAX);
    let hard = limit.maximum.unwrap_or(u64::MAX);
    if soft >= hard {
        return soft;
    }
    match setrlimit(
        Resource::Nofile,
        Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        },
    ) {
        Ok(()) => hard,
        Err(e) => {
            tracing::warn!(error = %e, soft, hard, "could not raise the limit on open files");
            soft
        }
    }
}

#[cfg(not(unix))]
fn raise_open_files_limit() -> u64 {
    u64::MAX
}

/// Where a connection is, as far as its timeouts and eviction care.
#[derive(Debug)]
struct State {
    /// When it was accepted.
    accepted: Instant,
    /// Requests being served (hyper serves one at a time; a count keeps this honest).
    in_request: usize,
    /// A response has been sent: the connection is between requests, not new.
    served: bool,
    /// When it last became idle (accepted, or its last response done).
    idle_since: Instant,
    /// When the first byte after `idle_since` arrived, once one has (after the first request).
    head_started: Option<Instant>,
    /// Closed to make room for another.
    evicted: bool,
}

impl State {
    /// When the connection is to be closed if nothing changes; `None` while it serves a request.
    fn deadline(&self, t: &Timeouts) -> Option<Instant> {
        if self.in_request > 0 {
            return None;
        }
        Some(match (self.served, self.head_started) {
            (false, _) => self.accepted + t.head,
            (true, Some(started)) => started + t.head,
            (true, None) => self.idle_since + t.keep_alive,
        })
    }
}

/// One open connection's shared state.
#[derive(Debug)]
pub struct Conn {
    id: u64,
    state: Mutex<State>,
    /// Wakes the connection's watchdog when its state changes.
    changed: Notify,
}

/// Why a connection was closed by its watchdog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// Closed to make room for a new connection.
    Evicted,
    /// No complete request head in time.
    HeadTimeout,
    /// Idle between requests for too long.
    KeepAliveTimeout,
}

impl Conn {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while the lock is held leaves plain data behind; keep using it.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A request head is complete: the connection is busy until the guard is dropped (with
    /// the response body, once it is sent).
    pub fn begin_request(self: &Arc<Self>) -> RequestGuard {
        self.state().in_request += 1;
        self.changed.notify_one();
        RequestGuard { conn: self.clone() }
    }

    /// Bytes arrived from the client.
    fn received(&self) {
        let mut s = self.state();
        if s.served && s.in_request == 0 && s.head_started.is_none() {
            s.head_started = Some(Instant::now());
            drop(s);
            self.changed.notify_one();
        }
    }

    /// Completes when the connection is to be closed: idle past its deadline, or evicted.
    /// Never completes while a request is being served.
    pub async fn watchdog(&self, t: Timeouts) -> Closed {
        loop {
            // Registered before the state is read, so that no change is missed.
            let changed = self.changed.notified();
            let (deadline, why) = {
                let s = self.state();
                if s.evicted {
                    return Closed::Evicted;
                }
                let why = if s.served && s.head_started.is_none() {
                    Closed::KeepAliveTimeout
                } else {
                    Closed::HeadTimeout
                };
                (s.deadline(&t), why)
            };
            match deadline {
                None => changed.await,
                Some(at) if at <= Instant::now() => return why,
                Some(at) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(at) => {}
                        () = changed => {}
                    }
                }
            }
        }
    }
}

/// Marks a connection busy while it lives; see [`Conn::begin_request`].
#[derive(Debug)]
pub struct RequestGuard {
    conn: Arc<Conn>,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let mut s = self.conn.state();
        s.in_request = s.in_request.saturating_sub(1);
        if s.in_request == 0 {
            s.served = true;
            s.idle_since = Instant::now();
            s.head_started = None;
        }
        drop(s);
        self.conn.changed.notify_one();
    }
}

/// A response body that keeps its connection marked busy until it is sent (or dropped).
#[derive(Debug)]
pub struct Tracked<B> {
    inner: B,
    _guard: RequestGuard,
}

impl<B> Tracked<B> {
    /// `inner`, holding `guard` until it is dropped.
    pub fn new(inner: B, guard: RequestGuard) -> Tracked<B> {
        Tracked {
            inner,
            _guard: guard,
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A connection's socket, telling its [`Conn`] when bytes arrive (so that a slow request
/// head is timed from its first byte).
#[derive(Debug)]
pub struct Watched<S> {
    inner: S,
    conn: Arc<Conn>,
}

impl<S> Watched<S> {
    /// Wraps `inner`, the socket of `conn`.
    pub fn new(inner: S, conn: Arc<Conn>) -> Watched<S> {
        Watched { inner, conn }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.conn.received();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The open connections, and the room for them.
#[derive(Debug)]
pub struct Registry {
    /// The most connections the limit on open files leaves room for.
    room: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    next_id: u64,
    open: HashMap<u64, Arc<Conn>>,
    /// When a new connection was last refused for want of an idle one to close (logged at
    /// most every few seconds).
    last_full_warning: Option<Instant>,
    /// The last configured cap found over the room (warned about once).
    warned_over_room: Option<usize>,
}

impl Registry {
    /// A registry that keeps at most `room` connections open, whatever the cap given to
    /// [`Registry::admit`].
    pub fn new(room: usize) -> Registry {
        Registry {
            room: room.max(1),
            inner: Mutex::new(Inner {
                next_id: 0,
                open: HashMap::new(),
                last_full_warning: None,
                warned_over_room: None,
            }),
        }
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers a connection just accepted, closing the longest-idle connection first when
    /// the cap is reached: `configured` (`max_connections`, read for each connection so that a
    /// reload applies to the next one), or the room the limit on open files leaves if that is
    /// lower. `None` when every open connection is in the middle of a request: the new one is
    /// then closed at once.
    pub fn admit(&self, configured: usize) -> Option<Arc<Conn>> {
        let now = Instant::now();
        let mut inner = self.inner();
        let cap = configured.min(self.room).max(1);
        if cap < configured && inner.warned_over_room != Some(configured) {
            inner.warned_over_room = Some(configured);
            tracing::warn!(
                configured,
                cap,
                "the limit on open files allows fewer connections than max_connections"
            );
        }
        if inner.open.len() >= cap {
            let oldest = inner
                .open
                .values()
                .filter_map(|c| {
                    let s = c.state();
                    (s.in_request == 0 && !s.evicted).then_some((s.idle_since, c.id))
                })
                .min();
            match oldest.and_then(|(_, id)| inner.open.remove(&id)) {
                Some(victim) => {
                    victim.state().evicted = true;
                    victim.changed.notify_one();
                    tracing::debug!(
                        connection = victim.id,
                        "closing the longest-idle connection to make room"
                    );
                }
                None => {
                    let warn = inner
                        .last_full_warning
                        .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10));
                    if warn {
                        inner.last_full_warning = Some(now);
                        tracing::warn!(
                            cap,
                            "every connection is busy with a request; refusing new connections"
                        );
                    }
                    return None;
                }
            }
        }
        let id = inner.next_id;
        inner.next_id += 1;
        let conn = Arc::new(Conn {
            id,
            state: Mutex::new(State {
                accepted: now,
                in_request: 0,
                served: false,
                idle_since: now,
                head_started: None,
                evicted: false,
            }),
            changed: Notify::new(),
        });
        inner.open.insert(id, conn.clone());
        Some(conn)
    }

    /// Forgets a connection that has closed.
    pub fn remove(&self, conn: &Conn) {
        self.inner().open.remove(&conn.id);
    }

    /// How many connections are open (evicted ones that have not closed yet not counted).
    pub fn open(&self) -> usize {
        self.inner().open.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_busy_connection_is_never_evicted_and_the_longest_idle_goes_first() {
        let r = Registry::new(2);
        let a = r.admit(usize::MAX).unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
        let b = r.admit(usize::MAX).unwrap();
        // Full: the longest idle (a) makes room.
        let c = r.admit(usize::MAX).unwrap();
        assert!(a.state().evicted);
        assert!(!b.state().evicted);
        assert_eq!(r.open(), 2);
        // Both open ones busy: a new connection is refused.
        let _gb = b.begin_request();
        let _gc = c.begin_request();
        assert!(r.admit(usize::MAX).is_none());
        // One done: it is idle, and goes when room is needed.
        drop(_gc);
        let _d = r.admit(usize::MAX).unwrap();
        assert!(c.state().evicted);
        assert!(!b.state().evicted);
    }

    #[tokio::test(start_paused = true)]
    async fn the_watchdog_times_heads_and_keep_alive_apart() {
        let t = Timeouts::default();
        let r = Registry::new(8);
        let c = r.admit(usize::MAX).unwrap();
        let started = Instant::now();
        assert_eq!(c.watchdog(t).await, Closed::HeadTimeout);
        assert_eq!(started.elapsed(), t.head);

        // Served once: idle for keep_alive, then a slow head for `head` from its first byte.
        let c = r.admit(usize::MAX).unwrap();
        drop(c.begin_request());
        let idle = Instant::now();
        assert_eq!(c.watchdog(t).await, Closed::KeepAliveTimeout);
        assert_eq!(idle.elapsed(), t.keep_alive);

        let c = r.admit(usize::MAX).unwrap();
        drop(c.begin_request());
        tokio::time::advance(Duration::from_secs(30)).await;
        c.received();
        let first_byte = Instant::now();
        assert_eq!(c.watchdog(t).await, Closed::HeadTimeout);
        assert_eq!(first_byte.elapsed(), t.head);

        // Busy: no deadline until the request is done.
        let c = r.admit(usize::MAX).unwrap();
        let g = c.begin_request();
        let waited = tokio::time::timeout(Duration::from_secs(3600), c.watchdog(t)).await;
        assert!(waited.is_err());
        drop(g);
        assert_eq!(c.watchdog(t).await, Closed::KeepAliveTimeout);
    }
}

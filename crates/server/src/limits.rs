//! What keeps one client, or many, from stopping call control: timeouts on every
//! phase of a connection, a bound on open connections, and a separate, bounded place
//! where report work runs. The values are in [`Limits`]; README "Limits and timeouts"
//! lists them with their flags.

use crate::error::{err, ApiError, ApiResult};
use commcredits_core::ErrorCode;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A trusted proxy's network (`--trusted-proxy`).
pub use ipnet::IpNet;

/// The server's limits and timeouts.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Connections open at once; one more is answered `503 overloaded` and closed.
    pub max_connections: usize,
    /// Connections open at once from one client address, so that one client cannot
    /// take every connection; one more is answered `503 overloaded` and closed.
    /// Addresses in `unlimited` (the trusted proxies, which carry everyone) are not
    /// counted.
    pub max_connections_per_address: usize,
    /// Peers the per-address bound does not apply to.
    pub unlimited: Vec<IpNet>,
    /// Time a client has to send a request's whole header (also how long an idle
    /// keep-alive connection waits for its next request).
    pub header_read_timeout: Duration,
    /// Time a client may go without sending any of a request body it announced.
    pub body_read_timeout: Duration,
    /// Time from a request's header to its answer's header. A streamed export is past
    /// that point once its first byte is ready: its length is not limited, only its pace
    /// (`send_timeout`).
    pub request_timeout: Duration,
    /// Time a client may go without accepting any byte of an answer; then the
    /// connection is dropped, and an export it was reading stops.
    pub send_timeout: Duration,
    /// Report work (exports, report pages, summaries) running at once, all callers
    /// together; past it `503 overloaded`.
    pub max_reports: usize,
    /// File exports (CSV, Excel, zip) one key may run at once; past it `429 rate_limited`.
    pub max_exports_per_key: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 4096,
            max_connections_per_address: 256,
            unlimited: Vec::new(),
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(300),
            send_timeout: Duration::from_secs(30),
            max_reports: 8,
            max_exports_per_key: 2,
        }
    }
}

/// Seconds a refused caller is told to wait (`Retry-After`).
pub const RETRY_AFTER_SECONDS: u64 = 5;

/// Where report work runs: at most `max_reports` jobs, each on a thread of its own
/// (never tokio's blocking pool, which authentication and call control need), and at
/// most `max_exports_per_key` exports per key. A job that cannot start is refused at
/// once instead of queued: a queue would only hold the connection open longer.
pub struct ReportSlots {
    all: Arc<Semaphore>,
    max_per_key: usize,
    per_key: PerKey,
}

/// A running report's slots, given back when the job ends (its thread returns).
pub struct ReportPermit {
    _all: OwnedSemaphorePermit,
    _key: KeySlot,
}

/// Exports running per key.
type PerKey = Arc<Mutex<HashMap<String, usize>>>;

/// One of a key's export slots (or none): given back when dropped.
struct KeySlot(Option<(String, PerKey)>);

impl Drop for KeySlot {
    fn drop(&mut self) {
        if let Some((key, per_key)) = self.0.take() {
            let mut map = per_key.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = map.get_mut(&key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    map.remove(&key);
                }
            }
        }
    }
}

impl ReportSlots {
    pub fn new(limits: &Limits) -> ReportSlots {
        ReportSlots {
            all: Arc::new(Semaphore::new(limits.max_reports.max(1))),
            max_per_key: limits.max_exports_per_key.max(1),
            per_key: Arc::default(),
        }
    }

    /// A slot for report work; with `export_key`, also one of that key's export slots.
    pub fn acquire(&self, export_key: Option<&str>) -> ApiResult<ReportPermit> {
        let key = KeySlot(match export_key {
            Some(k) => {
                let mut map = self.per_key.lock().unwrap_or_else(|p| p.into_inner());
                let n = map.entry(k.to_string()).or_insert(0);
                if *n >= self.max_per_key {
                    return Err(err(
                        ErrorCode::RateLimited,
                        format!(
                            "this key already runs {} exports, the most it may at once; wait for one to finish",
                            self.max_per_key
                        ),
                    ));
                }
                *n += 1;
                Some((k.to_string(), self.per_key.clone()))
            }
            None => None,
        });
        // A refusal here drops `key`, which gives the key's slot back.
        match self.all.clone().try_acquire_owned() {
            Ok(all) => Ok(ReportPermit { _all: all, _key: key }),
            Err(_) => {
                Err(err(ErrorCode::Overloaded, "the server runs as many reports as it may at once; try again shortly"))
            }
        }
    }

    /// Runs `f` on a report thread holding `permit` until it returns.
    pub async fn run<T: Send + 'static>(
        permit: ReportPermit,
        f: impl FnOnce() -> commcredits_core::Result<T> + Send + 'static,
    ) -> ApiResult<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        Self::spawn(permit, move || {
            let _ = tx.send(f());
        })?;
        Ok(rx.await.map_err(|_| err(ErrorCode::Internal, "a report thread stopped before answering"))??)
    }

    /// Starts `f` on a report thread that holds `permit` until `f` returns.
    pub fn spawn(permit: ReportPermit, f: impl FnOnce() + Send + 'static) -> ApiResult<()> {
        std::thread::Builder::new()
            .name("report".into())
            .spawn(move || {
                let _permit = permit;
                f()
            })
            .map(drop)
            .map_err(|e| err(ErrorCode::Overloaded, format!("cannot start a report thread: {e}")))
    }
}

/// A connection whose writes fail with `TimedOut` when the peer accepts no byte for
/// `send_timeout`: a client that stops reading is dropped, whatever it was sent.
pub(crate) struct SendDeadline<T> {
    inner: T,
    send_timeout: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> SendDeadline<T> {
    pub(crate) fn new(inner: T, send_timeout: Duration) -> SendDeadline<T> {
        SendDeadline { inner, send_timeout, stalled: None }
    }

    /// Called when a write made no progress: arms the deadline once, and fails when it passed.
    fn pending<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        let timeout = self.send_timeout;
        let sleep = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client accepted nothing within the send timeout",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for SendDeadline<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for SendDeadline<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, data) {
            Poll::Pending => self.pending(cx),
            done => {
                self.stalled = None;
                done
            }
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending => self.pending(cx),
            done => {
                self.stalled = None;
                done
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending => self.pending(cx),
            done => {
                self.stalled = None;
                done
            }
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The answer to a connection past `max_connections`, written before it is closed.
pub(crate) fn overloaded_connection_answer() -> Vec<u8> {
    let body = commcredits_engine::views::problem(&commcredits_core::Error::new(
        ErrorCode::Overloaded,
        "the server has as many connections open as it may; try again shortly",
    ))
    .to_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\nretry-after: {RETRY_AFTER_SECONDS}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Answers a request that got no answer within `request_timeout`.
pub(crate) fn request_timed_out(timeout: Duration) -> ApiError {
    err(ErrorCode::Overloaded, format!("the request was not answered within {} s", timeout.as_secs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_slots_bound_per_key_and_in_all_and_come_back() {
        let limits = Limits { max_reports: 3, max_exports_per_key: 2, ..Limits::default() };
        let slots = ReportSlots::new(&limits);
        let a1 = slots.acquire(Some("a")).unwrap();
        let _a2 = slots.acquire(Some("a")).unwrap();
        assert_eq!(slots.acquire(Some("a")).err().unwrap().0.code, ErrorCode::RateLimited);
        let _b1 = slots.acquire(Some("b")).unwrap();
        // All three slots are taken: another key, or a page, is refused as overloaded,
        // and the refused export does not keep its key's slot.
        assert_eq!(slots.acquire(Some("c")).err().unwrap().0.code, ErrorCode::Overloaded);
        assert_eq!(slots.acquire(None).err().unwrap().0.code, ErrorCode::Overloaded);
        assert!(!slots.per_key.lock().unwrap().contains_key("c"));
        drop(a1);
        let _a3 = slots.acquire(Some("a")).unwrap();
    }
}

/// Counts open connections per client address; a connection holds its [`AddressSlot`]
/// until it ends. Entries go when their count reaches zero, so the map holds at most
/// one entry per open connection.
#[derive(Default)]
pub struct PerAddress {
    open: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

/// One open connection of an address.
pub struct AddressSlot {
    owner: std::sync::Arc<PerAddress>,
    ip: Option<std::net::IpAddr>,
}

impl PerAddress {
    /// A slot for a connection from `ip`, or None when the address has `max` open.
    /// Addresses in `unlimited` always get one and are not counted.
    pub fn take(
        self: &std::sync::Arc<Self>,
        ip: std::net::IpAddr,
        max: usize,
        unlimited: &[IpNet],
    ) -> Option<AddressSlot> {
        if unlimited.iter().any(|n| n.contains(&ip)) {
            return Some(AddressSlot { owner: self.clone(), ip: None });
        }
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(AddressSlot { owner: self.clone(), ip: Some(ip) })
    }

    /// Addresses with a connection open (for tests and metrics).
    pub fn addresses(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        if let Some(ip) = self.ip {
            let mut open = self.owner.open.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = open.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    open.remove(&ip);
                }
            }
        }
    }
}

/// Descriptors kept free of connections: the database's connections, the SQLite
/// files, report threads' files, the log.
pub const DESCRIPTOR_HEADROOM: u64 = 256;

/// Raises the process's soft limit on open files to its hard limit, and returns the
/// number of connections that fit under it with [`DESCRIPTOR_HEADROOM`] to spare (None
/// where the limit cannot be read). A connection bound above the descriptor limit would
/// end in failed accepts and a database that cannot open its sockets.
#[cfg(unix)]
pub fn connections_that_fit() -> Option<usize> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let mut lim = getrlimit(Resource::Nofile);
    if let (Some(cur), max) = (lim.current, lim.maximum) {
        if max.is_none_or(|m| cur < m) {
            let raised = Rlimit { current: max, maximum: max };
            if setrlimit(Resource::Nofile, raised).is_ok() {
                lim.current = max;
            }
        }
    }
    // None is unlimited.
    let soft = lim.current.unwrap_or(u64::MAX);
    Some(usize::try_from(soft.saturating_sub(DESCRIPTOR_HEADROOM).max(1)).unwrap_or(usize::MAX))
}

#[cfg(not(unix))]
pub fn connections_that_fit() -> Option<usize> {
    None
}

#[cfg(test)]
mod per_address_tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn one_address_gets_its_share_and_gives_it_back() {
        let p = Arc::new(PerAddress::default());
        let a: std::net::IpAddr = "198.51.100.7".parse().unwrap();
        let b: std::net::IpAddr = "198.51.100.8".parse().unwrap();
        let held: Vec<_> = (0..3).map(|_| p.take(a, 3, &[]).expect("within the share")).collect();
        assert!(p.take(a, 3, &[]).is_none(), "a fourth connection of one address is refused");
        let other = p.take(b, 3, &[]).expect("another address is not held back");
        drop(held);
        assert!(p.take(a, 3, &[]).is_some(), "closed connections give their slots back");
        drop(other);
        assert_eq!(p.addresses(), 0, "no entry is kept for an address without connections");
        let proxy: IpNet = "198.51.100.0/24".parse().unwrap();
        let many: Vec<_> = (0..10).map(|_| p.take(a, 3, std::slice::from_ref(&proxy)).unwrap()).collect();
        assert_eq!((many.len(), p.addresses()), (10, 0), "trusted proxies are not counted");
    }
}

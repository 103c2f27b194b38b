//! Accepting connections: hyper's HTTP/1.1 on each, a bounded number of them where idle
//! sockets cannot lock clients out (the oldest idle one is closed to make room), and the
//! drain (not ready, new work refused with 503 while connections are still accepted, let
//! answers finish, close; end the rest after the drain timeout).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::Router;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tower::ServiceExt;

use super::error::ApiError;
use super::{routes, Phase, ServerHandle};

/// The kernel send buffer of each connection (bytes).
const SEND_BUFFER_BYTES: usize = 128 << 10;

/// How long connections get to close once nothing runs, and answers ended after the drain
/// timeout to reach their clients.
const FINAL_FLUSH: Duration = Duration::from_secs(2);

/// One open connection, as the registry sees it.
struct Slot {
    /// Requests being answered on it (their response bodies not yet finished).
    busy: AtomicUsize,
    /// Asks the connection to close once its current answer is done.
    close: Notify,
    /// The client's address.
    ip: IpAddr,
}

/// Marks its connection busy while alive.
struct Busy(Arc<Slot>);

impl Busy {
    fn new(slot: Arc<Slot>) -> Self {
        slot.busy.fetch_add(1, Ordering::SeqCst);
        Self(slot)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The open connections, oldest first.
struct Registry {
    max: usize,
    /// Connections one client address may hold.
    per_ip: usize,
    slots: Mutex<BTreeMap<u64, Arc<Slot>>>,
    next: AtomicUsize,
    /// Signalled when the last connection ends.
    empty: Notify,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, Arc<Slot>>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a new connection from `ip`, closing the oldest idle one when full (that
    /// client's own when it holds its share); `None` when every connection that could make
    /// room is busy.
    fn admit(&self, ip: IpAddr) -> Option<(u64, Arc<Slot>)> {
        let mut slots = self.lock();
        let own = slots.values().filter(|s| s.ip == ip).count();
        if own >= self.per_ip || slots.len() >= self.max {
            let idle = slots
                .iter()
                .filter(|(_, s)| own < self.per_ip || s.ip == ip)
                .find(|(_, s)| s.busy.load(Ordering::SeqCst) == 0)
                .map(|(&id, _)| id)?;
            if let Some(slot) = slots.remove(&idle) {
                slot.close.notify_one();
            }
        }
        let id = self.next.fetch_add(1, Ordering::SeqCst) as u64;
        let slot = Arc::new(Slot {
            busy: AtomicUsize::new(0),
            close: Notify::new(),
            ip,
        });
        slots.insert(id, slot.clone());
        Some((id, slot))
    }

    fn remove(&self, id: u64) {
        let mut slots = self.lock();
        slots.remove(&id);
        if slots.is_empty() {
            self.empty.notify_waiters();
        }
    }

    fn len(&self) -> usize {
        self.lock().len()
    }

    /// True while a request is being answered on any connection.
    fn busy(&self) -> bool {
        self.lock().values().any(|s| s.busy.load(Ordering::SeqCst) > 0)
    }
}

/// Accepts until shutdown, then drains; returns when every connection has ended.
pub(super) async fn serve(listener: TcpListener, handle: ServerHandle) {
    let state = handle.state.clone();
    let router = routes::router(state.clone());
    let registry = Arc::new(Registry {
        max: state.config.max_connections,
        per_ip: state
            .config
            .max_connections_per_ip
            .clamp(1, state.config.max_connections),
        slots: Mutex::new(BTreeMap::new()),
        next: AtomicUsize::new(0),
        empty: Notify::new(),
    });
    let mut phase = state.phase.subscribe();
    let drainer = tokio::spawn(drain(handle.clone(), registry.clone()));
    let upkeep_state = state.clone();
    let upkeep = tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep_state.metrics.upkeep();
        }
    });
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = phase.wait_for(|p| *p >= Phase::Closing) => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(_) => {
                // E.g. out of file descriptors: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        // A small send buffer: a client that stops reading fills it within a few hundred
        // tokens, so its stream hits the send timeout soon instead of after megabytes.
        let _ = socket2::SockRef::from(&stream).set_send_buffer_size(SEND_BUFFER_BYTES);
        let Some((id, slot)) = registry.admit(peer.ip()) else {
            tokio::spawn(refuse(stream));
            continue;
        };
        let (router, registry, phase) = (router.clone(), registry.clone(), phase.clone());
        let timeout = state.config.request_timeout;
        tokio::spawn(async move {
            connection(stream, peer, router, slot, phase, timeout).await;
            registry.remove(id);
        });
    }
    drop(listener);
    close(&handle, &registry).await;
    drainer.abort();
    upkeep.abort();
}

/// How often a drain looks whether anything still runs.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// Once a drain is asked, waits until no request is being answered (then connections
/// close) or until the drain timeout (then running answers end with an error event).
async fn drain(handle: ServerHandle, registry: Arc<Registry>) {
    let state = &handle.state;
    let mut phase = state.phase.subscribe();
    let _ = phase.wait_for(|p| *p >= Phase::Draining).await;
    let deadline = tokio::time::Instant::now() + state.config.drain_timeout;
    loop {
        if *phase.borrow() >= Phase::Closing {
            return;
        }
        if !registry.busy() && state.in_flight.load(Ordering::SeqCst) == 0 {
            return state.advance(Phase::Closing);
        }
        if tokio::time::Instant::now() >= deadline {
            return state.advance(Phase::Aborting);
        }
        tokio::time::sleep(DRAIN_POLL).await;
    }
}

/// Waits for the connections to close once the listener is gone. Nothing runs any more
/// (the drain saw no request being answered, or its timeout ended what did), so what is
/// still open gets a moment; then whatever is left is told to end and gets another.
async fn close(handle: &ServerHandle, registry: &Registry) {
    let all_closed = async {
        loop {
            let waiting = registry.empty.notified();
            if registry.len() == 0 {
                return;
            }
            waiting.await;
        }
    };
    tokio::pin!(all_closed);
    if tokio::time::timeout(FINAL_FLUSH, &mut all_closed).await.is_ok() {
        return;
    }
    handle.state.advance(Phase::Aborting);
    let _ = tokio::time::timeout(FINAL_FLUSH, all_closed).await;
}

/// Answers 503 on a connection that found every slot busy, then closes it.
async fn refuse(mut stream: TcpStream) {
    let error = ApiError::overloaded(1);
    let body = error.body().to_string();
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let write = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), write).await;
}

/// Serves one connection until it closes, is evicted, or the server drains.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    slot: Arc<Slot>,
    mut phase: watch::Receiver<Phase>,
    header_timeout: Duration,
) {
    let _ = stream.set_nodelay(true);
    let busy_slot = slot.clone();
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        let router = router.clone();
        let busy = Busy::new(busy_slot.clone());
        request.extensions_mut().insert(ConnectInfo(peer));
        async move {
            let response = match router.oneshot(request.map(Body::new)).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            // The connection stays busy until the response body has been sent or dropped.
            Ok::<_, Infallible>(response.map(|body| {
                Body::new(body.map_frame(move |frame| {
                    let _ = &busy;
                    frame
                }))
            }))
        }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true)
        // No half-close: a client whose read side ends has gone (as nginx takes it), so
        // that a queued or non-streamed request of a vanished client is dropped at once.
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let mut closing = false;
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = slot.close.notified(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = phase.wait_for(|p| *p >= Phase::Closing), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

//! The web server's accept loop: HTTP/1.1 over TCP (or TLS), bounded against exhaustion.
//!
//! Replaces `axum::serve`, which has neither a header-read timeout nor a connection cap:
//!
//! - **Header-read timeout.** hyper starts it when it begins to read a request head, which for
//!   a new connection is at once, so a connection that sends nothing at all is closed after it,
//!   and so is one that sends a partial head, or idles between keep-alive requests. The TLS
//!   handshake has the same bound.
//! - **Connection cap.** At most `max_connections` connections at once. When a new connection
//!   finds them all taken, the oldest connection that has not yet sent a whole request head
//!   (a slow or silent client, the kind an exhaustion attack opens) is closed to make room; when
//!   every connection has sent a request, the new one is accepted and closed at once, so the
//!   backlog never fills with clients that wait.
//! - **Client address.** Every request carries `ConnectInfo<SocketAddr>` (the login rate limit
//!   and its log use it).
//! - **Graceful shutdown.** When `shutdown` fires, the listener closes, open connections finish
//!   their request in flight and close; [`serve`] returns once all have.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::connect_info::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tower_service::Service;
use tracing::{debug, warn};

/// How the server bounds its connections.
#[derive(Clone)]
pub struct ServeOptions {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
    /// Serve TLS instead of plain HTTP.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

/// The connection slots, and the connections that have not sent a request head yet (by age).
struct Slots {
    free: Arc<Semaphore>,
    max: u32,
    fresh: Mutex<BTreeMap<u64, CancellationToken>>,
}

impl Slots {
    /// A slot for a new connection: a free one, else the oldest fresh connection's (which is
    /// closed), else none.
    async fn take(&self) -> Option<OwnedSemaphorePermit> {
        if let Ok(slot) = self.free.clone().try_acquire_owned() {
            return Some(slot);
        }
        let oldest = {
            let mut fresh = self.fresh.lock().expect("fresh lock");
            fresh.pop_first().map(|(_, stop)| stop)
        }?;
        oldest.cancel();
        // The closed connection's task gives its slot back as it ends.
        tokio::time::timeout(Duration::from_secs(1), self.free.clone().acquire_owned())
            .await
            .ok()?
            .ok()
    }

    fn forget(&self, id: u64) {
        self.fresh.lock().expect("fresh lock").remove(&id);
    }
}

/// Serves `app` on `listener` until `shutdown` fires and every connection has closed.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    options: ServeOptions,
    shutdown: CancellationToken,
) {
    let max = options.max_connections.clamp(1, Semaphore::MAX_PERMITS) as u32;
    let slots = Arc::new(Slots {
        free: Arc::new(Semaphore::new(max as usize)),
        max,
        fresh: Mutex::default(),
    });
    let mut warned_full = false;
    let mut next_id = 0u64;
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    warn!(error = %e, "accepting a web connection failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    }
                }
            },
        };
        let Some(slot) = slots.take().await else {
            if !warned_full {
                warn!(max, client = %peer, "web connection limit reached with every connection busy; closing new connections");
                warned_full = true;
            }
            drop(stream);
            continue;
        };
        warned_full = false;
        let id = next_id;
        next_id += 1;
        let stop = CancellationToken::new();
        slots
            .fresh
            .lock()
            .expect("fresh lock")
            .insert(id, stop.clone());
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let options = options.clone();
        let shutdown = shutdown.clone();
        let slots = slots.clone();
        tokio::spawn(async move {
            let started = {
                let slots = slots.clone();
                move || slots.forget(id)
            };
            tokio::select! {
                _ = stop.cancelled() => debug!(client = %peer, "closed to make room for a new connection"),
                _ = async {
                    match &options.tls {
                        None => connection(stream, peer, app, &options, shutdown, started).await,
                        Some(acceptor) => {
                            let handshake = tokio::time::timeout(
                                options.header_read_timeout,
                                acceptor.accept(stream),
                            );
                            match handshake.await {
                                Ok(Ok(tls)) => connection(tls, peer, app, &options, shutdown, started).await,
                                Ok(Err(e)) => debug!(client = %peer, error = %e, "TLS handshake failed"),
                                Err(_) => debug!(client = %peer, "TLS handshake timed out"),
                            }
                        }
                    }
                } => {}
            }
            slots.forget(id);
            drop(slot);
        });
    }
    drop(listener);
    // Every connection holds a slot; all slots back means all connections closed.
    let _ = slots.free.acquire_many(slots.max).await;
}

async fn connection<IO>(
    io: IO,
    peer: SocketAddr,
    app: Router,
    options: &ServeOptions,
    shutdown: CancellationToken,
    started: impl Fn() + Send + Sync + 'static,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let first = AtomicBool::new(true);
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        // A whole request head arrived: this connection is no longer one to shed.
        if first.swap(false, Ordering::Relaxed) {
            started();
        }
        request.extensions_mut().insert(ConnectInfo(peer));
        let mut app = app.clone();
        async move { Ok::<_, Infallible>(app.call(request).await.unwrap_or_else(|e| match e {})) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        debug!(client = %peer, error = %e, "web connection ended");
    }
}

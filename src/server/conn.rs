//! One connection's task: hyper drives it on the runtime, the handlers run elsewhere.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use crate::bridge::{Activity, SyncService};
use crate::handler::Handler;

/// What every connection task shares.
pub(super) struct ConnConfig {
    pub(super) http: auto::Builder<TokioExecutor>,
    pub(super) keep_alive: Option<Duration>,
    pub(super) graceful: CancellationToken,
    pub(super) force: CancellationToken,
}

/// Serves one connection until it closes, idles out, or the server stops.
///
/// `_permit` is the connection's slot under `max_connections`; it returns when the task
/// ends.
pub(super) async fn serve<H: Handler>(
    stream: TcpStream,
    peer: SocketAddr,
    config: Arc<ConnConfig>,
    service: SyncService<H>,
    _permit: OwnedSemaphorePermit,
) {
    let activity = Arc::new(Activity::new());
    let conn = config.http.serve_connection(
        TokioIo::new(stream),
        service.with_activity(activity.clone()),
    );
    let mut conn = std::pin::pin!(conn);
    let mut draining = false;
    loop {
        // Re-armed only when this loop turns (a shutdown or an idle check), not per request.
        let idle_check = match config.keep_alive {
            Some(limit) if !draining => limit.saturating_sub(activity.idle_for()),
            _ => Duration::from_secs(3600),
        };
        tokio::select! {
            biased;
            result = conn.as_mut() => {
                if let Err(err) = result {
                    tracing::debug!(%peer, error = %err, "connection ended with an error");
                }
                return;
            }
            _ = config.force.cancelled() => {
                let in_flight = activity.in_flight();
                if in_flight > 0 {
                    tracing::warn!(%peer, in_flight, "connection cut off at the shutdown deadline");
                }
                return;
            }
            _ = config.graceful.cancelled(), if !draining => {
                conn.as_mut().graceful_shutdown();
                draining = true;
            }
            _ = tokio::time::sleep(idle_check), if config.keep_alive.is_some() && !draining => {
                if let Some(limit) = config.keep_alive {
                    if activity.idle_for() >= limit {
                        tracing::debug!(%peer, "keep-alive idle timeout; closing");
                        conn.as_mut().graceful_shutdown();
                        draining = true;
                    }
                }
            }
        }
    }
}

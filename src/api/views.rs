//! Anonymous "read for more than 3 s" beacons: counted in memory, flushed to the
//! state store every few seconds, so a beacon never waits on (or fails with) the
//! database. Rate-limited per client address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use panneau_domain::PublicationId;
use tokio_util::sync::CancellationToken;

use crate::store::StateStore;

/// Beacons one client address may send per window.
pub const BEACONS_PER_WINDOW: u32 = 120;
pub const WINDOW: Duration = Duration::from_secs(60);
const FLUSH_EVERY: Duration = Duration::from_secs(5);

/// A fixed-window budget of requests per client address.
#[derive(Debug)]
pub struct PerClientLimit {
    per_window: u32,
    window: Duration,
    used: moka::sync::Cache<IpAddr, Arc<AtomicU32>>,
}

impl PerClientLimit {
    pub fn new(per_window: u32, window: Duration) -> Self {
        Self {
            per_window,
            window,
            used: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(window)
                .build(),
        }
    }

    /// Takes one request from the client's budget; `false` when it is spent.
    /// Requests whose address is unknown (tests without a socket) are not limited.
    pub fn allow(&self, client: Option<IpAddr>) -> bool {
        let Some(client) = client else { return true };
        let used = self.used.get_with(client, || Arc::new(AtomicU32::new(0)));
        used.fetch_add(1, Ordering::Relaxed) < self.per_window
    }

    /// Seconds a refused client should wait.
    pub fn retry_after(&self) -> u64 {
        self.window.as_secs().max(1)
    }
}

/// Views waiting to be written, and the per-client budget.
#[derive(Debug)]
pub struct ViewCounter {
    pending: Mutex<HashMap<PublicationId, u64>>,
    budget: PerClientLimit,
}

impl Default for ViewCounter {
    fn default() -> Self {
        Self {
            pending: Mutex::default(),
            budget: PerClientLimit::new(BEACONS_PER_WINDOW, WINDOW),
        }
    }
}

impl ViewCounter {
    /// Takes one beacon from the client's budget; `false` when it is spent.
    pub fn allow(&self, client: Option<IpAddr>) -> bool {
        self.budget.allow(client)
    }

    pub fn count(&self, publication: PublicationId) {
        *self
            .pending
            .lock()
            .expect("view counter lock poisoned")
            .entry(publication)
            .or_default() += 1;
    }

    fn take(&self) -> HashMap<PublicationId, u64> {
        std::mem::take(&mut *self.pending.lock().expect("view counter lock poisoned"))
    }

    fn put_back(&self, views: HashMap<PublicationId, u64>) {
        let mut pending = self.pending.lock().expect("view counter lock poisoned");
        for (publication, count) in views {
            *pending.entry(publication).or_default() += count;
        }
    }

    /// Writes the pending counts; keeps them for the next flush if the store fails.
    pub async fn flush(&self, store: &dyn StateStore) {
        let views = self.take();
        if views.is_empty() {
            return;
        }
        let batch: Vec<_> = views.iter().map(|(p, c)| (*p, *c)).collect();
        if let Err(error) = store.add_views(&batch).await {
            tracing::warn!(error = %error, "cannot write view counts; keeping them for later");
            self.put_back(views);
        }
    }

    /// Flushes every few seconds until `shutdown`, then once more.
    pub async fn run(self: Arc<Self>, store: Arc<dyn StateStore>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(FLUSH_EVERY) => self.flush(store.as_ref()).await,
            }
        }
        self.flush(store.as_ref()).await;
    }
}

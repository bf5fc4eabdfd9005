//! Carrying committed events to the projectors.
//!
//! Embedded mode: [`LocalBus`], an in-process broadcast fed by the SQLite store
//! after each commit, in commit order. A projector that lags behind reads what it
//! missed from the log, so the bus may drop nothing that matters.

use std::sync::Arc;

use tokio::sync::broadcast;

pub mod jetstream;

use crate::store::RecordedEvent;
use crate::store::sql::CommitHook;

/// The in-process bus of the embedded mode.
#[derive(Debug, Clone)]
pub struct LocalBus {
    sender: broadcast::Sender<Arc<RecordedEvent>>,
}

impl LocalBus {
    pub fn new(capacity: usize) -> Self {
        Self {
            sender: broadcast::channel(capacity).0,
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<RecordedEvent>> {
        self.sender.subscribe()
    }
}

impl CommitHook for LocalBus {
    fn committed(&self, events: &[RecordedEvent]) {
        for event in events {
            // No subscriber yet is fine: projectors catch up from the log at start.
            let _ = self.sender.send(Arc::new(event.clone()));
        }
    }
}

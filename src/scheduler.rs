//! Puts scheduled publications live when their time comes, without a request
//! having to trigger it.
//!
//! Every instance runs one. The feed already shows a scheduled publication from
//! its `publish_at` (the read model knows the time); what the scheduler records
//! is the `PublicationWentLive` event the notifier waits for. Optimistic
//! concurrency on the stream makes exactly one instance record it.

use std::sync::Arc;
use std::time::Duration;

use panneau_domain::{Actor, Command, PublicationError};
use tokio_util::sync::CancellationToken;

use crate::commands::{CommandError, CommandHandler, Context};
use crate::store::EventStore;

/// How often the table of scheduled publications is polled.
pub const POLL: Duration = Duration::from_millis(500);

pub async fn run(log: Arc<dyn EventStore>, commands: CommandHandler, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(POLL) => {}
        }
        let now = crate::now();
        let due = match log.due(now, 100).await {
            Ok(due) => due,
            Err(error) => {
                tracing::warn!(error = %error, "scheduler cannot read due publications");
                continue;
            }
        };
        for id in due {
            let context = Context {
                actor: Actor::System {
                    component: "scheduler".into(),
                },
                request_id: None,
                now,
            };
            match commands
                .execute(id, Command::GoLive, None, &context, None, None)
                .await
            {
                Ok(_) => tracing::info!(publication = %id, "scheduled publication went live"),
                // Another instance got there first, or it was retracted meanwhile.
                Err(CommandError::Refused(
                    PublicationError::AlreadyLive
                    | PublicationError::AlreadyRetracted
                    | PublicationError::NotDue,
                ))
                | Err(CommandError::VersionMismatch { .. }) => {}
                Err(error) => {
                    tracing::warn!(publication = %id, error = %error, "cannot put a scheduled publication live")
                }
            }
        }
    }
}

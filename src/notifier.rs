//! Notifications: one job per notifying publication, created at most once, and
//! the fan-out that reaches every subscribed device once.
//!
//! - [`on_event`] is the notification projector: a publication that goes live
//!   with `notify` gets its job (the job's primary key makes replays and
//!   redeliveries harmless); a retraction cancels an unfinished job; amendments
//!   never notify. The feed replay of the ops tooling never comes here.
//! - [`FanOut`] runs jobs on every instance: a lease (conditional UPDATE) gives a
//!   job to one instance; the audience is streamed in batches (keyset pagination,
//!   memory bounded whatever its size); each batch's devices are claimed in the
//!   database before anything is sent, and the checkpoint is saved after, so a
//!   crash resumes where it stopped without notifying anyone twice. The
//!   database work for the slices before and after overlaps with the sending.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use panneau_domain::{
    Envelope, Platform, Priority, Publication, PublicationEvent, Status, StreamId, Timestamp,
    evolve,
};
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::metrics::{Metrics, PlatformLabels, PushLabels, StatusLabels};
use crate::push::{Backoff, Gateways, PushMessage, RateLimiter, SendOutcome};
use crate::store::{
    DeviceStore, EventStore, JobStatus, NewJob, NotificationJob, NotificationStore, Progress,
    RecordedEvent, StoreError, Target,
};

/// Settings of the notifier.
#[derive(Debug, Clone)]
pub struct NotifierSettings {
    /// The push carries only ids, no text.
    pub privacy: bool,
    /// How long a push service may keep an undelivered notification.
    pub ttl: Duration,
    /// A normal publication whose job could not start within this is dropped.
    pub stale_after: Duration,
    /// The same for urgent publications.
    pub urgent_stale_after: Duration,
    /// Messages per second, all platforms together (FCM's default quota is
    /// 600,000 per minute per project).
    pub rate_per_second: u32,
    /// Sends in flight at once.
    pub concurrency: usize,
    /// Devices read from the audience at once.
    pub batch: u32,
    /// How long a job stays with a worker that stopped reporting.
    pub lease: Duration,
    pub backoff: Backoff,
}

impl Default for NotifierSettings {
    fn default() -> Self {
        Self {
            privacy: false,
            ttl: Duration::from_secs(24 * 3600),
            stale_after: Duration::from_secs(2 * 3600),
            urgent_stale_after: Duration::from_secs(24 * 3600),
            rate_per_second: 9_000,
            concurrency: 256,
            batch: 1_000,
            lease: Duration::from_secs(60),
            backoff: Backoff::default(),
        }
    }
}

/// The longest excerpt of a body put in a notification.
const EXCERPT_CHARS: usize = 200;
/// How long a claim of devices whose outcome is unknown is retried before the
/// job is left to its lease (and those devices to the at-most-once rule).
const CLAIM_RETRY_FOR: Duration = Duration::from_secs(60);

fn excerpt(body: &str) -> String {
    if body.chars().count() <= EXCERPT_CHARS {
        return body.to_owned();
    }
    let mut text: String = body.chars().take(EXCERPT_CHARS - 1).collect();
    text.push('…');
    text
}

/// Applies one event to the notification jobs.
///
/// # Errors
/// `StoreError` when the log or the job table cannot be reached (retry later).
pub async fn on_event(
    log: &dyn EventStore,
    jobs: &dyn NotificationStore,
    envelope: &Envelope<PublicationEvent>,
) -> Result<(), StoreError> {
    if let PublicationEvent::Retracted(e) = &envelope.payload {
        return jobs.cancel_job(e.id, crate::now()).await;
    }
    if let Some(job) = job_of(log, envelope).await?
        && jobs.create_job(&job, crate::now()).await?
    {
        tracing::info!(publication = %job.publication, communes = job.communes.len(), "notification job created");
    }
    Ok(())
}

/// The notification job an event calls for: a publication going live with
/// `notify` (at once, or when its scheduled time comes, with its content as it
/// is then). Scheduling, amendments, retractions and `notify: false`
/// publications call for none.
///
/// # Errors
/// `StoreError` when the log cannot be read.
pub async fn job_of(
    log: &dyn EventStore,
    envelope: &Envelope<PublicationEvent>,
) -> Result<Option<NewJob>, StoreError> {
    match &envelope.payload {
        PublicationEvent::Published(e) if e.notify => Ok(Some(NewJob {
            publication: e.id,
            communes: e.content.communes.iter().copied().collect(),
            priority: e.content.priority,
            title: e.content.title.as_str().to_owned(),
            body: excerpt(e.content.body.as_str()),
            published_at: e.published_at,
        })),
        PublicationEvent::WentLive(e) => {
            // The state as this event leaves it, whether or not the log holds
            // the event yet (an import asks before appending it).
            let events = log.read_stream(&StreamId::publication(e.id)).await?;
            let before = events
                .iter()
                .filter(|r| r.envelope.stream_version < envelope.stream_version)
                .fold(Publication::Absent, |state, r| {
                    evolve(state, &r.envelope.payload)
                });
            let state = evolve(before, &envelope.payload);
            Ok(state.state().and_then(|state| match state.status {
                Status::Live { published_at } if state.notify => Some(NewJob {
                    publication: e.id,
                    communes: state.content.communes.iter().copied().collect(),
                    priority: state.content.priority,
                    title: state.content.title.as_str().to_owned(),
                    body: excerpt(state.content.body.as_str()),
                    published_at,
                }),
                _ => None,
            }))
        }
        PublicationEvent::Published(_)
        | PublicationEvent::Scheduled(_)
        | PublicationEvent::Amended(_)
        | PublicationEvent::Retracted(_) => Ok(None),
    }
}

/// The name under which the embedded notifier saves its position in the log.
const EMBEDDED_CONSUMER: &str = "notifier";

/// The embedded notification projector: the local log from where it stopped,
/// then the in-process bus.
pub async fn run_embedded(
    log: Arc<dyn EventStore>,
    jobs: Arc<dyn NotificationStore>,
    mut bus: broadcast::Receiver<Arc<RecordedEvent>>,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let mut position = loop {
        match jobs.consumer_position(EMBEDDED_CONSUMER).await {
            Ok(position) => break position,
            Err(error) => {
                tracing::warn!(error = %error, "notifier cannot read its position; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    let mut catching_up = true;
    loop {
        if catching_up {
            let mut events = log.read_after(position);
            let mut failed = false;
            while let Some(event) = events.next().await {
                match event {
                    Ok(event) => {
                        if let Err(error) =
                            on_event(log.as_ref(), jobs.as_ref(), &event.envelope).await
                        {
                            tracing::warn!(error = %error, "notifier will retry");
                            failed = true;
                            break;
                        }
                        position = event.position;
                        wake.notify_one();
                    }
                    Err(error) => {
                        tracing::warn!(error = %error, "notifier cannot read the log");
                        failed = true;
                        break;
                    }
                }
            }
            drop(events);
            if let Err(error) = jobs
                .save_consumer_position(EMBEDDED_CONSUMER, position)
                .await
            {
                tracing::warn!(error = %error, "notifier cannot save its position");
            }
            if failed {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
            catching_up = false;
        }
        let received = tokio::select! {
            () = shutdown.cancelled() => return,
            received = bus.recv() => received,
        };
        match received {
            Ok(event) if event.position <= position => {}
            Ok(event) if event.position == position + 1 => {
                match on_event(log.as_ref(), jobs.as_ref(), &event.envelope).await {
                    Ok(()) => {
                        position = event.position;
                        wake.notify_one();
                        if let Err(error) = jobs
                            .save_consumer_position(EMBEDDED_CONSUMER, position)
                            .await
                        {
                            tracing::warn!(error = %error, "notifier cannot save its position");
                        }
                    }
                    Err(error) => {
                        tracing::warn!(error = %error, "notifier will catch up from the log");
                        catching_up = true;
                    }
                }
            }
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => catching_up = true,
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Store operations the fan-out needs.
pub trait FanOutStore: NotificationStore + DeviceStore {}
impl<T: NotificationStore + DeviceStore> FanOutStore for T {}

/// Runs notification jobs.
pub struct FanOut {
    pub store: Arc<dyn FanOutStore>,
    pub metrics: Arc<Metrics>,
    pub gateways: Gateways,
    pub settings: NotifierSettings,
    pub rate: Arc<RateLimiter>,
    /// This worker's identity in job leases.
    pub owner: Uuid,
}

impl std::fmt::Debug for FanOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FanOut")
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

fn in_future(duration: Duration) -> Timestamp {
    crate::now().plus_micros(i64::try_from(duration.as_micros()).unwrap_or(i64::MAX))
}

enum Ended {
    Finished,
    LeaseLost,
}

/// Where a job reads its audience next.
struct Cursor {
    index: usize,
    after: Option<Uuid>,
    /// Devices read and not yet handed out.
    batch: std::vec::IntoIter<Target>,
    /// The position last checkpointed (commune, last device).
    recorded: (usize, Option<Uuid>),
}

/// Devices claimed for sending, all of one commune.
struct Slice {
    commune_index: usize,
    targets: Vec<Target>,
    /// Those not claimed before: the others were sent to before a crash.
    fresh: Vec<Uuid>,
}

enum Taken {
    Slice(Slice),
    End,
    LeaseLost,
    ShuttingDown,
}

#[derive(Default)]
struct Timing {
    audience: Duration,
    claim: Duration,
    send: Duration,
    checkpoint: Duration,
}

impl FanOut {
    /// Takes and runs jobs until `shutdown`; `wake` says a job may be waiting.
    pub async fn run(self, wake: Arc<Notify>, shutdown: CancellationToken) {
        loop {
            let claimed = self
                .store
                .claim_job(self.owner, in_future(self.settings.lease), crate::now())
                .await;
            match claimed {
                Ok(Some(job)) => {
                    let publication = job.job.publication;
                    let span = tracing::info_span!("fan-out", %publication);
                    self.metrics.push_jobs_in_progress.inc();
                    let ended = self.run_job(job, &shutdown).instrument(span).await;
                    self.metrics.push_jobs_in_progress.dec();
                    match ended {
                        Ok(Ended::Finished) => {}
                        Ok(Ended::LeaseLost) => {
                            tracing::info!(%publication, "job left to another worker")
                        }
                        Err(error) => {
                            tracing::warn!(%publication, error = %error, "fan-out interrupted; it will resume")
                        }
                    }
                    continue;
                }
                Ok(None) => {}
                Err(error) => tracing::warn!(error = %error, "cannot look for notification jobs"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = wake.notified() => {}
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    async fn run_job(
        &self,
        job: NotificationJob,
        shutdown: &CancellationToken,
    ) -> Result<Ended, StoreError> {
        let publication = job.job.publication;
        let limit = match job.job.priority {
            Priority::Urgent => self.settings.urgent_stale_after,
            Priority::Normal => self.settings.stale_after,
        };
        let age = Duration::from_micros(job.job.published_at.micros_until(crate::now()));
        let has_begun = job.commune_index > 0 || job.last_device.is_some();
        if !has_begun && age > limit {
            tracing::warn!(%publication, age_s = age.as_secs(), "notification job too old to start; dropped");
            self.store
                .finish_job(publication, JobStatus::Expired, crate::now())
                .await?;
            self.metrics
                .push_jobs
                .get_or_create(&StatusLabels { status: "expired" })
                .inc();
            return Ok(Ended::Finished);
        }
        let message = PushMessage {
            publication,
            title: job.job.title.clone(),
            body: job.job.body.clone(),
            urgent: job.job.priority == Priority::Urgent,
            privacy: self.settings.privacy,
            ttl: self.settings.ttl,
        };
        let communes = &job.job.communes;
        let started = std::time::Instant::now();
        let mut total = job.sent;
        // Where the time goes, reported when the job ends. The parts overlap:
        // their sum exceeds the job's time.
        let mut timing = Timing::default();
        let mut cursor = Cursor {
            index: job.commune_index,
            after: job.last_device,
            batch: Vec::new().into_iter(),
            recorded: (job.commune_index, job.last_device),
        };
        // While a slice is being sent, the one before it is checkpointed and
        // the one after it read and claimed: the database's round trips and
        // commits no longer stop the sending. A crash loses at most the slice
        // being sent and the one claimed after it (nobody gets one twice).
        let mut checkpoint: Option<Progress> = None;
        let mut next = self
            .take_slice(publication, communes, &mut cursor, &mut timing, shutdown)
            .await?;
        while let Taken::Slice(slice) = next {
            let to_send: Vec<&Target> = slice
                .targets
                .iter()
                .filter(|t| slice.fresh.contains(&t.device))
                .collect();
            let sending = async {
                let clock = std::time::Instant::now();
                let progress = self.send_batch(&to_send, &message).await;
                (progress, clock.elapsed())
            };
            let ahead = async {
                if let Some(progress) = checkpoint.take() {
                    if self.checkpoint(publication, &progress, &mut timing).await? {
                        cursor.recorded = (progress.commune_index, progress.last_device);
                    } else {
                        return Ok(Taken::LeaseLost);
                    }
                }
                self.take_slice(publication, communes, &mut cursor, &mut timing, shutdown)
                    .await
            };
            let ((mut progress, sent_in), taken) = tokio::join!(sending, ahead);
            timing.send += sent_in;
            total += progress.sent;
            progress.commune_index = slice.commune_index;
            progress.last_device = slice.targets.last().map(|t| t.device);
            checkpoint = Some(progress);
            next = taken?;
        }
        if let Some(progress) = checkpoint
            && !self.checkpoint(publication, &progress, &mut timing).await?
        {
            return Ok(Ended::LeaseLost);
        }
        match next {
            Taken::Slice(_) | Taken::End => {}
            Taken::LeaseLost => return Ok(Ended::LeaseLost),
            Taken::ShuttingDown => {
                // Hand the job over now rather than when the lease runs out.
                self.store.release_job(publication, self.owner).await?;
                return Ok(Ended::LeaseLost);
            }
        }
        self.store
            .finish_job(publication, JobStatus::Done, crate::now())
            .await?;
        self.metrics
            .push_jobs
            .get_or_create(&StatusLabels { status: "done" })
            .inc();
        let ms = |d: Duration| d.as_millis() as u64;
        tracing::info!(
            %publication,
            sent = total,
            seconds = started.elapsed().as_secs_f64(),
            audience_ms = ms(timing.audience),
            claim_ms = ms(timing.claim),
            send_ms = ms(timing.send),
            checkpoint_ms = ms(timing.checkpoint),
            "notification job done"
        );
        Ok(Ended::Finished)
    }

    /// The next slice of devices, claimed: read from the audience a batch at a
    /// time, past the communes without any device.
    async fn take_slice(
        &self,
        publication: panneau_domain::PublicationId,
        communes: &[panneau_domain::InseeCode],
        cursor: &mut Cursor,
        timing: &mut Timing,
        shutdown: &CancellationToken,
    ) -> Result<Taken, StoreError> {
        loop {
            let targets: Vec<Target> = cursor
                .batch
                .by_ref()
                .take(self.settings.concurrency.max(1))
                .collect();
            if !targets.is_empty() {
                if shutdown.is_cancelled() {
                    return Ok(Taken::ShuttingDown);
                }
                let ids: Vec<Uuid> = targets.iter().map(|t| t.device).collect();
                let clock = std::time::Instant::now();
                let Ok(fresh) = self.claim(publication, &ids).await? else {
                    return Ok(Taken::LeaseLost);
                };
                timing.claim += clock.elapsed();
                return Ok(Taken::Slice(Slice {
                    commune_index: cursor.index,
                    targets,
                    fresh,
                }));
            }
            if cursor.index >= communes.len() {
                return Ok(Taken::End);
            }
            let clock = std::time::Instant::now();
            let batch = self
                .store
                .audience(communes, cursor.index, cursor.after, self.settings.batch)
                .await?;
            timing.audience += clock.elapsed();
            if let Some(last) = batch.last() {
                cursor.after = Some(last.device);
                cursor.batch = batch.into_iter();
            } else {
                cursor.index += 1;
                cursor.after = None;
                // Keeps the lease while communes without devices go by,
                // leaving the checkpoint where it was: a slice before them
                // may still be being sent.
                let (commune_index, last_device) = cursor.recorded;
                let unchanged = Progress {
                    commune_index,
                    last_device,
                    ..Progress::default()
                };
                if !self.checkpoint(publication, &unchanged, timing).await? {
                    return Ok(Taken::LeaseLost);
                }
            }
        }
    }

    /// Saves the position and the counts, renewing the lease; false when the
    /// lease was lost.
    async fn checkpoint(
        &self,
        publication: panneau_domain::PublicationId,
        progress: &Progress,
        timing: &mut Timing,
    ) -> Result<bool, StoreError> {
        let clock = std::time::Instant::now();
        let lease = in_future(self.settings.lease);
        let held = self
            .store
            .record_progress(publication, self.owner, progress, lease)
            .await?
            .is_ok();
        timing.checkpoint += clock.elapsed();
        Ok(held)
    }

    /// Claims a slice of devices. A claim whose outcome is unknown (the
    /// database went away before answering) is retried with the same claim id
    /// for a while, so its devices are still sent to: giving up at once would
    /// leave them claimed and never notified.
    async fn claim(
        &self,
        publication: panneau_domain::PublicationId,
        ids: &[Uuid],
    ) -> Result<Result<Vec<Uuid>, crate::store::LeaseLost>, StoreError> {
        let claim = Uuid::now_v7();
        let mut delay = Duration::from_millis(200);
        let deadline = std::time::Instant::now() + CLAIM_RETRY_FOR;
        loop {
            let lease = in_future(self.settings.lease);
            match self
                .store
                .claim_deliveries(publication, self.owner, claim, ids, lease)
                .await
            {
                Err(error) if error.is_unavailable() && std::time::Instant::now() < deadline => {
                    tracing::warn!(error = %error, %publication, "claim outcome unknown; retrying it");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                other => return other,
            }
        }
    }

    async fn send_batch(&self, targets: &[&Target], message: &PushMessage) -> Progress {
        let owned: Vec<Target> = targets.iter().map(|t| (*t).clone()).collect();
        let outcomes: Vec<(Uuid, Platform, SendOutcome)> = futures_util::stream::iter(owned)
            .map(|target| async move {
                (
                    target.device,
                    target.platform,
                    self.send_one(&target, message).await,
                )
            })
            .buffer_unordered(self.settings.concurrency)
            .collect()
            .await;
        let mut progress = Progress::default();
        for (device, platform, outcome) in outcomes {
            let label = match &outcome {
                SendOutcome::Delivered => "delivered",
                SendOutcome::InvalidToken { .. } => "invalid_token",
                SendOutcome::Retry { .. } | SendOutcome::Failed { .. } => "failed",
            };
            let labels = PushLabels {
                platform: platform.as_str(),
                outcome: label,
            };
            self.metrics.push_sends.get_or_create(&labels).inc();
            match outcome {
                SendOutcome::Delivered => progress.sent += 1,
                SendOutcome::InvalidToken { registered_before } => {
                    match self
                        .store
                        .disable_device(device, registered_before, crate::now())
                        .await
                    {
                        Ok(true) => {
                            progress.disabled += 1;
                            let labels = PlatformLabels {
                                platform: platform.as_str(),
                            };
                            self.metrics
                                .push_tokens_disabled
                                .get_or_create(&labels)
                                .inc();
                        }
                        Ok(false) => progress.failed += 1,
                        Err(error) => {
                            tracing::warn!(error = %error, "cannot disable a dead token");
                            progress.failed += 1;
                        }
                    }
                }
                SendOutcome::Retry { .. } | SendOutcome::Failed { .. } => progress.failed += 1,
            }
        }
        progress
    }

    /// Sends to one device, retrying what the service asks to retry.
    async fn send_one(&self, target: &Target, message: &PushMessage) -> SendOutcome {
        let Some(gateway) = self.gateways.for_platform(target.platform) else {
            return SendOutcome::Failed {
                reason: format!("no {} gateway configured", target.platform.as_str()),
            };
        };
        let mut attempt = 0;
        loop {
            self.rate.acquire().await;
            let outcome = gateway.send(target, message).await;
            match outcome {
                SendOutcome::Retry { after, reason }
                    if attempt < self.settings.backoff.max_attempts =>
                {
                    attempt += 1;
                    let labels = PushLabels {
                        platform: target.platform.as_str(),
                        outcome: "retried",
                    };
                    self.metrics.push_sends.get_or_create(&labels).inc();
                    let delay = self.settings.backoff.delay(attempt, after);
                    tracing::debug!(
                        attempt,
                        delay_ms = delay.as_millis() as u64,
                        reason,
                        "push will be retried"
                    );
                    tokio::time::sleep(delay).await;
                }
                SendOutcome::Retry { reason, .. } => {
                    return SendOutcome::Failed {
                        reason: format!("gave up after {attempt} retries: {reason}"),
                    };
                }
                other => return other,
            }
        }
    }
}

//! The event store contract, checked against each implementation.

use futures_util::StreamExt;
use panneau::store::sql::{PoolSettings, SqlStore};
use panneau::store::{Append, EventStore, IdempotencyRecord, StoreError};
use panneau_domain::{
    Actor, Attachments, Body, Category, CommuneSet, Content, Envelope, EventId, InseeCode,
    Priority, PublicationEvent, PublicationId, PublicationPublished, PublicationRetracted,
    PublisherId, StreamId, Title, TokenId, VisibilityWindow,
};
use uuid::Uuid;

pub(crate) fn published(id: PublicationId) -> PublicationEvent {
    PublicationEvent::Published(PublicationPublished {
        id,
        publisher: PublisherId::new(Uuid::from_u128(1)),
        author: TokenId::new(Uuid::from_u128(2)),
        content: Content {
            communes: CommuneSet::new(vec![InseeCode::parse("35238").unwrap()]).unwrap(),
            title: Title::parse("Titre").unwrap(),
            body: Body::parse("Texte").unwrap(),
            category: Category::Info,
            priority: Priority::Normal,
            window: VisibilityWindow::default(),
            attachments: Attachments::default(),
        },
        notify: true,
        published_at: panneau::now(),
    })
}

pub(crate) fn envelope(
    id: PublicationId,
    version: u64,
    payload: PublicationEvent,
) -> Envelope<PublicationEvent> {
    Envelope {
        event_id: EventId::new(Uuid::now_v7()),
        stream_id: StreamId::publication(id),
        stream_version: version,
        event_type: payload.event_type(),
        schema_version: payload.schema_version(),
        occurred_at: panneau::now(),
        recorded_at: panneau::now(),
        actor: Actor::System {
            component: "test".into(),
        },
        request_id: None,
        payload,
    }
}

pub(crate) fn append(
    id: PublicationId,
    expected: u64,
    events: Vec<Envelope<PublicationEvent>>,
) -> Append {
    Append {
        stream: StreamId::publication(id),
        expected_version: expected,
        events,
        owner: Some(PublisherId::new(Uuid::from_u128(1))),
        idempotency: None,
    }
}

pub(crate) fn new_id() -> PublicationId {
    PublicationId::new(Uuid::now_v7()).unwrap()
}

/// The contract every event store keeps.
pub(crate) async fn event_store_contract(store: &dyn EventStore) {
    // Two writers that read version 1 both try version 2: exactly one wins.
    let id = new_id();
    store
        .append(append(id, 0, vec![envelope(id, 1, published(id))]))
        .await
        .unwrap();
    let retract = |v| {
        envelope(
            id,
            v,
            PublicationEvent::Retracted(PublicationRetracted {
                id,
                at: panneau::now(),
            }),
        )
    };
    let (a, b) = tokio::join!(
        store.append(append(id, 1, vec![retract(2)])),
        store.append(append(id, 1, vec![retract(2)]))
    );
    let outcomes = [a.is_ok(), b.is_ok()];
    assert_eq!(
        outcomes.iter().filter(|ok| **ok).count(),
        1,
        "one writer wins"
    );
    assert!(matches!(
        a.err().or(b.err()),
        Some(StoreError::VersionConflict)
    ));

    // Re-sending an append that did commit (same event ids) is a success, not a conflict.
    let id2 = new_id();
    let first = append(id2, 0, vec![envelope(id2, 1, published(id2))]);
    let recorded = store.append(first.clone()).await.unwrap();
    let again = store.append(first).await.unwrap();
    assert_eq!(again, recorded);

    // The idempotency record commits with the events, and a second use is reported.
    let id3 = new_id();
    let record = IdempotencyRecord {
        publisher: PublisherId::new(Uuid::from_u128(1)),
        key: format!("key-{id3}"),
        request_hash: [7; 32],
        stream: StreamId::publication(id3),
        status: 201,
        response: b"{}".to_vec(),
        created_at: panneau::now(),
    };
    let mut with_key = append(id3, 0, vec![envelope(id3, 1, published(id3))]);
    with_key.idempotency = Some(record.clone());
    store.append(with_key).await.unwrap();
    let id4 = new_id();
    let mut reused = append(id4, 0, vec![envelope(id4, 1, published(id4))]);
    reused.idempotency = Some(IdempotencyRecord {
        stream: StreamId::publication(id4),
        ..record.clone()
    });
    match store.append(reused).await {
        Err(StoreError::IdempotencyKeyUsed(existing)) => assert_eq!(existing.request_hash, [7; 32]),
        other => panic!("expected IdempotencyKeyUsed, got {other:?}"),
    }
    assert!(
        store
            .read_stream(&StreamId::publication(id4))
            .await
            .unwrap()
            .is_empty(),
        "nothing of the refused append was written"
    );

    // Streams read back in version order; the whole log streams in position order.
    let stream = store.read_stream(&StreamId::publication(id)).await.unwrap();
    assert_eq!(
        stream
            .iter()
            .map(|e| e.envelope.stream_version)
            .collect::<Vec<_>>(),
        [1, 2]
    );
    let all: Vec<_> = store.read_after(0).map(|e| e.unwrap()).collect().await;
    assert_eq!(all.len(), 4);
    assert!(all.windows(2).all(|w| w[0].position < w[1].position));
    let tail: Vec<_> = store
        .read_after(all[1].position)
        .map(|e| e.unwrap())
        .collect()
        .await;
    assert_eq!(tail.len(), 2);
    // Read stream after stream: every event once, each stream whole and in
    // version order, even a stream continued after others began.
    let retract2 = PublicationEvent::Retracted(PublicationRetracted {
        id: id2,
        at: panneau::now(),
    });
    store
        .append(append(id2, 1, vec![envelope(id2, 2, retract2)]))
        .await
        .unwrap();
    let all: Vec<_> = store.read_after(0).map(|e| e.unwrap()).collect().await;
    let [.., before, last] = all.as_slice() else {
        panic!("{all:?}")
    };
    assert_ne!(before.envelope.stream_id, last.envelope.stream_id);
    let by_stream: Vec<_> = store.read_by_stream().map(|e| e.unwrap()).collect().await;
    let mut positions: Vec<_> = by_stream.iter().map(|e| e.position).collect();
    positions.sort_unstable();
    assert_eq!(
        positions,
        all.iter().map(|e| e.position).collect::<Vec<_>>()
    );
    let mut seen = Vec::new();
    for pair in by_stream.windows(2) {
        let (a, b) = (&pair[0].envelope, &pair[1].envelope);
        if a.stream_id == b.stream_id {
            assert_eq!(b.stream_version, a.stream_version + 1, "{by_stream:?}");
        } else {
            seen.push(a.stream_id.clone());
            assert!(!seen.contains(&b.stream_id), "a stream read in two parts");
        }
    }
    assert_eq!(
        store
            .publications_of(PublisherId::new(Uuid::from_u128(1)), 10)
            .await
            .unwrap()
            .len(),
        3
    );
}

#[tokio::test]
async fn the_sqlite_store_keeps_the_event_store_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(dir.path()).await;
    event_store_contract(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_database_slow_to_open_is_waited_for_at_start() {
    use sqlx::Connection;
    let dir = tempfile::tempdir().unwrap();
    let url = crate::helpers::database_url(dir.path());
    // Another process holds the file in an exclusive transaction (rollback
    // journal): opening it waits for the lock longer than the pool's
    // acquire timeout, as on a disk busy with other writes.
    let mut holder = sqlx::sqlite::SqliteConnection::connect(&format!("{url}?mode=rwc"))
        .await
        .unwrap();
    sqlx::raw_sql("BEGIN EXCLUSIVE; CREATE TABLE held (a INTEGER)")
        .execute(&mut holder)
        .await
        .unwrap();
    let settings = PoolSettings {
        acquire_timeout: std::time::Duration::from_millis(500),
        ..PoolSettings::default()
    };
    let opening = tokio::spawn(async move { SqlStore::connect(&url, &settings).await });
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert!(!opening.is_finished(), "the start waits for the database");
    sqlx::raw_sql("COMMIT").execute(&mut holder).await.unwrap();
    holder.close().await.unwrap();
    let store = opening
        .await
        .unwrap()
        .expect("the database opens once free");
    store.migrate().await.unwrap();
    event_store_contract(&store).await;
}

#[tokio::test]
async fn a_mariadb_server_without_the_outbox_trigger_is_refused() {
    let database = crate::infra::TestDatabase::create(&crate::infra::shared_mariadb_url()).await;
    let store = SqlStore::connect(&database.url(), &PoolSettings::default())
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let mut connection = sqlx_connection(&database.url()).await;
    sqlx::query("DROP TRIGGER events_to_outbox")
        .execute(&mut connection)
        .await
        .unwrap();
    let error = store.migrate().await.unwrap_err();
    let mut refused = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        refused.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    assert!(refused.contains("events_to_outbox"), "{refused}");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_panneau"))
        .arg("migrate")
        .env_remove("PANNEAU_CONFIG")
        .env("PANNEAU_DATABASE_URL", database.url())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("events_to_outbox is missing"), "{stderr}");
    store.close().await;
}

#[tokio::test]
async fn overdue_outbox_streams_are_listed_page_by_page_with_their_latest_waiting_version() {
    let database = crate::infra::TestDatabase::create(&crate::infra::shared_mariadb_url()).await;
    let store = SqlStore::connect(&database.url(), &PoolSettings::default())
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let (one, two, three) = (new_id(), new_id(), new_id());
    for id in [one, two, three] {
        store
            .append(append(id, 0, vec![envelope(id, 1, published(id))]))
            .await
            .unwrap();
    }
    let retraction = PublicationEvent::Retracted(PublicationRetracted {
        id: two,
        at: panneau::now(),
    });
    store
        .append(append(two, 1, vec![envelope(two, 2, retraction)]))
        .await
        .unwrap();
    // Rows not yet overdue are not listed.
    let recent = store
        .overdue_streams(std::time::Duration::from_secs(60), "", 10)
        .await
        .unwrap();
    assert!(recent.is_empty(), "{recent:?}");
    // A published row is not either; that a relay had it acknowledged shows
    // (the overlay takes rows waiting then for relays that are behind).
    let before = panneau::now();
    assert!(
        !store
            .published_after(before.plus_micros(-60_000_000))
            .await
            .unwrap()
    );
    let published_one = store
        .read_stream(&StreamId::publication(one))
        .await
        .unwrap();
    store
        .mark_published(&[published_one[0].envelope.event_id.as_uuid()])
        .await
        .unwrap();
    assert!(store.published_after(before.plus_micros(-1)).await.unwrap());
    assert!(!store.published_after(panneau::now()).await.unwrap());
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let mut expected = [
        (StreamId::publication(two).to_string(), 2),
        (StreamId::publication(three).to_string(), 1),
    ];
    expected.sort();
    let first = store
        .overdue_streams(std::time::Duration::from_millis(10), "", 1)
        .await
        .unwrap();
    assert_eq!(first, expected[..1]);
    let second = store
        .overdue_streams(std::time::Duration::from_millis(10), &first[0].0, 1)
        .await
        .unwrap();
    assert_eq!(second, expected[1..]);
    let after = store
        .overdue_streams(std::time::Duration::from_millis(10), &second[0].0, 1)
        .await
        .unwrap();
    assert!(after.is_empty());
    store.close().await;
}

async fn sqlx_connection(url: &str) -> sqlx::mysql::MySqlConnection {
    use sqlx::Connection;
    sqlx::mysql::MySqlConnection::connect(url).await.unwrap()
}

#[tokio::test]
async fn a_claim_retried_after_a_lost_answer_still_gets_its_devices_and_no_other_claim_does() {
    use panneau::store::{NewJob, NotificationStore};
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(dir.path()).await;
    let publication = panneau_domain::PublicationId::new(Uuid::now_v7()).unwrap();
    let now = panneau::now();
    let job = NewJob {
        publication,
        communes: vec![panneau_domain::InseeCode::parse("35238").unwrap()],
        priority: panneau_domain::Priority::Normal,
        title: "Coupure d'eau".into(),
        body: "Mardi".into(),
        published_at: now,
    };
    assert!(store.create_job(&job, now).await.unwrap());
    let owner = Uuid::now_v7();
    let lease = now.plus_micros(60_000_000);
    store.claim_job(owner, lease, now).await.unwrap().unwrap();
    let devices = [Uuid::now_v7(), Uuid::now_v7()];

    let first = Uuid::now_v7();
    let claimed = store
        .claim_deliveries(publication, owner, first, &devices, lease)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claimed.len(), 2);
    // The answer was lost; the same claim again: still ours to send.
    let mut again = store
        .claim_deliveries(publication, owner, first, &devices, lease)
        .await
        .unwrap()
        .unwrap();
    again.sort();
    let mut expected = devices.to_vec();
    expected.sort();
    assert_eq!(again, expected);
    // Any other claim (a later attempt, after a crash) gets none of them.
    let other = store
        .claim_deliveries(publication, owner, Uuid::now_v7(), &devices, lease)
        .await
        .unwrap()
        .unwrap();
    assert!(other.is_empty());
    store.close().await;
}

/// A migrated SQLite store in `dir`.
async fn sqlite_store(dir: &std::path::Path) -> SqlStore {
    let store = SqlStore::connect(&crate::helpers::database_url(dir), &PoolSettings::default())
        .await
        .unwrap();
    store.migrate().await.unwrap();
    store
}

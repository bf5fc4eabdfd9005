//! Cluster mode against real servers: MariaDB, NATS JetStream, several instances,
//! and the incidents reads must survive.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use panneau::app::Application;
use panneau::bus::jetstream::{self as js, DUPLICATE_WINDOW};
use panneau::store::EventStore;
use panneau::store::sql::{PoolSettings, SqlStore};
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_problem, communes, departments, notice, spawn_cluster_app};
use crate::infra::{Instance, NatsServer, PrivateMariaDb, TestDatabase, shared_mariadb_url};

const WAIT: Duration = Duration::from_secs(15);

/// Two instances sharing a fresh database and a NATS server of their own
/// (bind the database: dropping it deletes it).
async fn two_instances() -> (TestDatabase, NatsServer, TestApp, TestApp) {
    let database = TestDatabase::create(&shared_mariadb_url()).await;
    let nats = NatsServer::start();
    let a = spawn_cluster_app(&database.url(), &nats.url()).await;
    let b = spawn_cluster_app(&database.url(), &nats.url()).await;
    (database, nats, a, b)
}

async fn feed_of(app: &TestApp, commune: &str) -> Vec<String> {
    app.feed_ids(commune).await
}

#[tokio::test]
async fn the_mariadb_store_keeps_the_event_store_contract() {
    let database = TestDatabase::create(&shared_mariadb_url()).await;
    let store = SqlStore::connect(&database.url(), &PoolSettings::default())
        .await
        .unwrap();
    store.migrate().await.unwrap();
    // Migrations are idempotent: a second instance starting runs them again.
    store.migrate().await.unwrap();
    crate::store::event_store_contract(&store).await;
    let (backlog, _) = store.outbox_backlog().await.unwrap();
    assert_eq!(
        backlog, 5,
        "every event has an outbox row, committed with it"
    );
    store.close().await;
}

#[tokio::test]
async fn a_publication_made_through_one_instance_is_served_by_another() {
    let (_database, _nats, a, b) = two_instances().await;
    let token = a
        .publisher(
            "Mairie de Rennes",
            communes(&["35238", "35051"]),
            panneau_domain::Role::Editor,
        )
        .await;
    let id = a.publish_ok(&token, &notice(&["35238", "35051"])).await;
    for app in [&a, &b] {
        for commune in ["35238", "35051"] {
            assert!(
                app.eventually(WAIT, || async {
                    feed_of(app, commune).await == vec![id.clone()]
                })
                .await
            );
        }
    }
    // An amendment through B reaches A; a retraction through A leaves B's feeds.
    let amended = b
        .amend(
            &token,
            &id,
            Some("\"1\""),
            &json!({"title": "Coupure reportée"}),
        )
        .await;
    assert_eq!(amended.status(), 200);
    assert!(
        a.eventually(WAIT, || async {
            let p: Value = a
                .get(&format!("/v1/publications/{id}"))
                .await
                .json()
                .await
                .unwrap();
            p["title"] == "Coupure reportée"
        })
        .await
    );
    assert_eq!(a.retract(&token, &id).await.status(), 204);
    assert!(
        b.eventually(WAIT, || async { feed_of(&b, "35051").await.is_empty() })
            .await
    );
    // The publication's record is written after the boards it leaves.
    let path = format!("/v1/publications/{id}");
    assert!(
        b.eventually(WAIT, || async { b.get(&path).await.status() == 410 })
            .await
    );
    assert_problem(b.get(&path).await, 410).await;
}

#[tokio::test]
async fn broker_topology_is_created_once_and_kept_as_configured() {
    let database = TestDatabase::create(&shared_mariadb_url()).await;
    let nats = NatsServer::start();
    let _a = spawn_cluster_app(&database.url(), &nats.url()).await;
    let client = js::connect(&nats.url()).await.unwrap();
    let context = async_nats::jetstream::new(client);
    // Running it again (another instance starting) changes nothing.
    js::ensure_topology(&context, 1).await.unwrap();
    let mut stream = context.get_stream(js::STREAM).await.unwrap();
    let config = stream.info().await.unwrap().config.clone();
    assert_eq!(config.subjects, vec![js::SUBJECTS.to_owned()]);
    assert!(config.deny_delete && config.deny_purge);
    assert_eq!(config.duplicate_window, DUPLICATE_WINDOW);
    assert_eq!(
        config.storage,
        async_nats::jetstream::stream::StorageType::File
    );
    assert_eq!(config.num_replicas, 1);
    assert!(context.get_key_value(js::FEEDS_BUCKET).await.is_ok());
    let consumer: async_nats::jetstream::consumer::PullConsumer =
        stream.get_consumer(js::FEED_CONSUMER).await.unwrap();
    let mut consumer = consumer;
    let info = consumer.info().await.unwrap();
    assert_eq!(
        info.config.ack_policy,
        async_nats::jetstream::consumer::AckPolicy::Explicit
    );
    assert_eq!(info.config.filter_subject, js::SUBJECTS);
}

#[tokio::test]
async fn an_old_nats_server_is_refused_with_a_clear_message() {
    let debian = std::path::PathBuf::from("/usr/sbin/nats-server");
    assert!(
        debian.exists(),
        "this test needs Debian's nats-server 2.9 (scripts/ensure-tools installs it)"
    );
    let nats = NatsServer::start_old(debian);
    let database = TestDatabase::create(&shared_mariadb_url()).await;
    let mut config = panneau::config::Config::defaults();
    config.http_addr = "127.0.0.1:0".parse().unwrap();
    config.ops_addr = "127.0.0.1:0".parse().unwrap();
    config.database_url = Some(database.url().into());
    config.nats_url = Some(nats.url());
    let error = Application::build(config)
        .await
        .expect_err("an old server must be refused");
    let message = format!("{error:#}");
    assert!(
        message.contains("2.9.10") && message.contains("2.12.6"),
        "{message}"
    );
}

#[tokio::test]
async fn reads_survive_a_database_outage_and_commands_get_a_clear_503() {
    let mut db = PrivateMariaDb::start();
    let database = TestDatabase::create(&db.server_url()).await;
    let nats = NatsServer::start();
    let app = spawn_cluster_app(&database.url(), &nats.url()).await;
    let token = app
        .publisher(
            "Préfecture",
            departments(&["35"]),
            panneau_domain::Role::Admin,
        )
        .await;
    let first = app.publish_ok(&token, &notice(&["35238"])).await;
    let second = app.publish_ok(&token, &notice(&["35051"])).await;
    assert!(
        app.eventually(WAIT, || async {
            feed_of(&app, "35238").await == vec![first.clone()]
        })
        .await
    );
    // 35051's feed is not read before the outage: it must come from the feed
    // store, not the cache. (Reading the publication itself tells it was projected.)
    let projected = app
        .eventually(WAIT, || async {
            app.get(&format!("/v1/publications/{second}"))
                .await
                .status()
                == 200
        })
        .await;
    assert!(projected);

    db.kill();
    for (commune, expected) in [("35238", &first), ("35051", &second)] {
        let response = app.get(&format!("/v1/communes/{commune}/feed")).await;
        assert_eq!(response.status(), 200, "{commune} during the outage");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["publications"][0]["id"], expected.as_str());
    }
    assert_eq!(
        app.get(&format!("/v1/publications/{first}")).await.status(),
        200
    );
    let refused = app.publish(&token, &notice(&["35047"])).await;
    assert!(refused.headers().contains_key("retry-after"));
    assert_problem(refused, 503).await;
    let ready = app
        .eventually(WAIT, || async {
            let r = app
                .client
                .get(format!("{}/readyz", app.ops_address))
                .send()
                .await
                .unwrap();
            let status = r.status();
            let body: Value = r.json().await.unwrap();
            status == 200 && body["database"] == "down" && body["read_model"] == "up"
        })
        .await;
    assert!(ready, "/readyz says the database is down and stays 200");

    db.resume();
    let deadline = tokio::time::Instant::now() + WAIT;
    let third = loop {
        let response = app.publish(&token, &notice(&["35047"])).await;
        if response.status() == 201 {
            break response.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "commands work again once the database returns"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        app.eventually(WAIT, || async {
            feed_of(&app, "35047").await == vec![third.clone()]
        })
        .await
    );
    // Nothing half-written: exactly the three acknowledged publications are in the log.
    let store = SqlStore::connect(&database.url(), &PoolSettings::default())
        .await
        .unwrap();
    let mut all = Vec::new();
    let mut events = panneau::store::EventStore::read_after(&store, 0);
    while let Some(event) = futures_util::StreamExt::next(&mut events).await {
        all.push(event.unwrap().envelope.payload.publication_id().to_string());
    }
    all.sort();
    let mut expected = vec![first, second, third];
    expected.sort();
    assert_eq!(all, expected);
}

#[tokio::test]
async fn commands_are_accepted_while_nats_is_down_and_every_feed_converges_after() {
    let (_database, mut nats, a, b) = two_instances().await;
    let token = a
        .publisher(
            "Mairie",
            communes(&["35238", "35051"]),
            panneau_domain::Role::Editor,
        )
        .await;
    let before = a.publish_ok(&token, &notice(&["35238"])).await;
    for app in [&a, &b] {
        assert!(
            app.eventually(WAIT, || async {
                feed_of(app, "35238").await == vec![before.clone()]
            })
            .await
        );
    }

    nats.kill();
    let mut during = Vec::new();
    for _ in 0..3 {
        during.push(a.publish_ok(&token, &notice(&["35051"])).await);
    }
    // Cached feeds keep being served by both instances.
    for app in [&a, &b] {
        assert_eq!(feed_of(app, "35238").await, vec![before.clone()]);
    }

    nats.resume();
    during.reverse();
    for app in [&a, &b] {
        let converged = app
            .eventually(Duration::from_secs(30), || async {
                feed_of(app, "35051").await == during
            })
            .await;
        assert!(converged, "the outbox drained and every feed converged");
    }
}

/// A feed page: its publication ids and its `next` cursor.
async fn page(app: &TestApp, commune: &str, cursor: Option<&str>) -> (Vec<String>, Option<String>) {
    let path = match cursor {
        Some(cursor) => format!("/v1/communes/{commune}/feed?cursor={cursor}"),
        None => format!("/v1/communes/{commune}/feed"),
    };
    let response = app.get(&path).await;
    assert_eq!(response.status(), 200, "{path}");
    let body: Value = response.json().await.unwrap();
    let ids = body["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_owned())
        .collect();
    (ids, body["next"].as_str().map(str::to_owned))
}

/// Every page of a feed, in order.
async fn whole_feed(app: &TestApp, commune: &str) -> Vec<String> {
    let (mut ids, mut next) = page(app, commune, None).await;
    while let Some(cursor) = next {
        let (more, after) = page(app, commune, Some(&cursor)).await;
        ids.extend(more);
        next = after;
    }
    ids
}

#[tokio::test]
async fn a_publication_the_broker_took_but_no_projector_applied_is_shown_once_the_broker_is_gone() {
    let (_database, mut nats, a, b) = two_instances().await;
    let token = a
        .publisher("Mairie", communes(&["35238"]), panneau_domain::Role::Editor)
        .await;
    let before = a.publish_ok(&token, &notice(&["35238"])).await;
    for app in [&a, &b] {
        assert!(
            app.eventually(WAIT, || async {
                feed_of(app, "35238").await == [before.clone()]
            })
            .await,
            "both instances serve the feed before the fault"
        );
    }

    // The feed bucket refuses writes (full, discarding new messages) while
    // the event stream still takes events: the relay publishes the next
    // command's event, no projector can apply it.
    let context = async_nats::jetstream::new(js::connect(&nats.url()).await.unwrap());
    let bucket = format!("KV_{}", js::FEEDS_BUCKET);
    let mut stream = context.get_stream(&bucket).await.unwrap();
    let info = stream.info().await.unwrap().clone();
    let mut full = info.config.clone();
    full.max_bytes = i64::try_from(info.state.bytes).unwrap();
    full.discard = async_nats::jetstream::stream::DiscardPolicy::New;
    context.update_stream(&full).await.unwrap();
    let taken = a.publish_ok(&token, &notice(&["35238"])).await;
    // Long after the relay published it: no row waits in the outbox.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for app in [&a, &b] {
        assert_eq!(
            feed_of(app, "35238").await,
            std::slice::from_ref(&before),
            "no projector applied it"
        );
    }

    // The broker goes away before any projector could apply it: every
    // instance reads it from the log.
    nats.kill();
    for app in [&a, &b] {
        assert!(
            app.eventually(Duration::from_secs(5), || async {
                feed_of(app, "35238").await == [taken.clone(), before.clone()]
            })
            .await,
            "the publication the broker took is shown while the broker is away"
        );
    }
}

/// Rows waiting for a relay that is merely behind are not taken for the
/// broker being away while it acknowledges other rows: the publication is
/// shown once a relay publishes it, not folded from the log a second after
/// its commit (which, under a burst of commands, slowed the relays down
/// further).
#[tokio::test]
async fn rows_waiting_for_a_relay_that_is_behind_are_not_taken_for_the_broker_away() {
    let database = TestDatabase::create(&shared_mariadb_url()).await;
    let nats = NatsServer::start();
    let a = spawn_cluster_app(&database.url(), &nats.url()).await;
    let token = a
        .publisher("Mairie", communes(&["35051"]), panneau_domain::Role::Editor)
        .await;
    // Committed through a store of its own, which no relay serves first:
    // every relay leaves its row for RELAY_GRACE (3 s), as it would the row
    // of an instance that stopped.
    let store = SqlStore::connect(&database.url(), &PoolSettings::default())
        .await
        .unwrap();
    let id = crate::store::new_id();
    let event = crate::store::envelope(id, 1, crate::store::published(id));
    store
        .append(crate::store::append(id, 0, vec![event]))
        .await
        .unwrap();
    let committed = std::time::Instant::now();
    // Meanwhile the broker takes a command through A every 200 ms, which A's
    // relay publishes at once.
    let mut feed = feed_of(&a, "35238").await;
    while committed.elapsed() < Duration::from_millis(2500) {
        assert!(
            !feed.contains(&id.to_string()),
            "shown {:?} after its commit, before any relay published it",
            committed.elapsed()
        );
        a.publish_ok(&token, &notice(&["35051"])).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        feed = feed_of(&a, "35238").await;
    }
    // A relay publishes it after the grace, the projector applies it.
    assert!(
        a.eventually(WAIT, || async {
            feed_of(&a, "35238").await.contains(&id.to_string())
        })
        .await,
        "shown once a relay published it"
    );
    store.close().await;
}

#[tokio::test]
async fn while_the_broker_is_down_feeds_show_what_the_log_holds_on_every_instance() {
    let (_database, mut nats, a, b) = two_instances().await;
    let token = a
        .publisher("Mairie", communes(&["35238"]), panneau_domain::Role::Editor)
        .await;
    // More than a page, newest first.
    let mut before = Vec::new();
    for _ in 0..22 {
        before.insert(0, a.publish_ok(&token, &notice(&["35238"])).await);
    }
    for app in [&a, &b] {
        assert!(
            app.eventually(WAIT, || async { whole_feed(app, "35238").await == before })
                .await,
            "both instances serve the feed before the outage"
        );
    }

    nats.kill();
    let mut during = Vec::new();
    for _ in 0..3 {
        during.insert(0, a.publish_ok(&token, &notice(&["35238"])).await);
    }
    let retracted = before[0].clone();
    assert_eq!(a.retract(&token, &retracted).await.status(), 204);
    let mut expected = during.clone();
    expected.extend(before.iter().skip(1).cloned());

    // Read from the log by both instances, the one that took the commands
    // and the other, within a couple of seconds of the commands.
    for app in [&a, &b] {
        assert!(
            app.eventually(Duration::from_secs(5), || async {
                feed_of(app, "35238").await == expected[..20]
            })
            .await,
            "the first page shows the publications of the outage and not the retracted one"
        );
        // The later pages too: the instance keeps the last document its
        // watch delivered before the outage, and lays the log over it.
        let (first, next) = page(app, "35238", None).await;
        assert_eq!(first, expected[..20]);
        let (second, next) = page(app, "35238", next.as_deref()).await;
        assert_eq!(second, expected[20..]);
        assert_eq!(next, None, "the last page");
    }
    // So do the publications themselves, on the instance that did not take
    // the commands.
    let new = b.get(&format!("/v1/publications/{}", during[0])).await;
    assert_eq!(new.status(), 200);
    assert_eq!(new.json::<Value>().await.unwrap()["id"], during[0].as_str());
    assert_problem(b.get(&format!("/v1/publications/{retracted}")).await, 410).await;
    assert!(
        a.metrics_text()
            .await
            .contains("panneau_feed_overlay_publications 4"),
        "four publications laid over the feeds"
    );

    nats.resume();
    for app in [&a, &b] {
        assert!(
            app.eventually(Duration::from_secs(30), || async {
                whole_feed(app, "35238").await == expected
                    && app
                        .metrics_text()
                        .await
                        .contains("panneau_feed_overlay_publications 0")
            })
            .await,
            "the store caught up, and the overlay was lifted"
        );
    }
}

#[tokio::test]
async fn an_instance_killed_during_a_burst_loses_no_acknowledged_publication() {
    let database = TestDatabase::create(&shared_mariadb_url()).await;
    let nats = NatsServer::start();
    let logs = tempfile::tempdir().unwrap();
    let mut a = Instance::start(&database.url(), &nats.url(), logs.path());
    let b = Instance::start(&database.url(), &nats.url(), logs.path());
    let reader = spawn_cluster_app(&database.url(), &nats.url()).await;
    let token = reader
        .publisher(
            "Préfecture",
            departments(&["35"]),
            panneau_domain::Role::Admin,
        )
        .await;
    let codes: Vec<String> = panneau::app::COMMUNES
        .iter()
        .filter(|c| c.department == "35")
        .take(60)
        .map(|c| c.code.as_str().to_owned())
        .collect();

    let client = crate::helpers::http_client();
    let url = a.url("/v1/publications");
    let mut burst = tokio::task::JoinSet::new();
    for code in codes.clone() {
        let (client, url, token) = (client.clone(), url.clone(), token.clone());
        burst.spawn(async move {
            let response = client
                .post(url)
                .bearer_auth(token)
                .json(&notice(&[code.as_str()]))
                .timeout(Duration::from_secs(10))
                .send()
                .await;
            let id = match response {
                Ok(r) if r.status() == 201 => r
                    .json::<Value>()
                    .await
                    .ok()
                    .and_then(|v| v["id"].as_str().map(str::to_owned)),
                _ => None,
            };
            (code, id)
        });
        tokio::time::sleep(Duration::from_millis(5)).await;
        if burst.len() == 25 {
            a.kill();
        }
    }
    let mut acknowledged: HashMap<String, String> = HashMap::new();
    while let Some(result) = burst.join_next().await {
        if let (code, Some(id)) = result.unwrap() {
            acknowledged.insert(code, id);
        }
    }
    assert!(
        !acknowledged.is_empty(),
        "some commands were acknowledged before the kill"
    );
    assert!(
        acknowledged.len() < codes.len(),
        "the instance died during the burst"
    );

    // Every acknowledged publication reaches the feeds served by the survivor, once.
    let survivor = |path: &str| {
        let client = client.clone();
        let url = b.url(path);
        async move {
            client
                .get(url)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut missing: HashSet<String> = acknowledged.keys().cloned().collect();
    while !missing.is_empty() && tokio::time::Instant::now() < deadline {
        for code in missing.clone() {
            let feed = survivor(&format!("/v1/communes/{code}/feed")).await;
            let ids: Vec<&str> = feed["publications"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["id"].as_str().unwrap())
                .collect();
            assert!(ids.len() <= 1, "a duplicate in the feed of {code}: {ids:?}");
            if ids == [acknowledged[&code].as_str()] {
                missing.remove(&code);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        missing.is_empty(),
        "acknowledged but never shown: {missing:?}\n{}",
        b.log()
    );
}

async fn loads(app: &TestApp) -> u64 {
    app.metrics_text()
        .await
        .lines()
        .find_map(|l| l.strip_prefix("panneau_feed_store_loads_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the metric is exposed")
}

#[tokio::test]
async fn concurrent_misses_for_one_feed_cost_one_load_from_the_store() {
    let database = TestDatabase::create(&shared_mariadb_url()).await;
    let nats = NatsServer::start();
    let writer = spawn_cluster_app(&database.url(), &nats.url()).await;
    let reader = spawn_cluster_app(&database.url(), &nats.url()).await;
    let token = writer
        .publisher(
            "Préfecture",
            departments(&["35"]),
            panneau_domain::Role::Admin,
        )
        .await;
    let id = writer.publish_ok(&token, &notice(&["35238"])).await;
    assert!(
        reader
            .eventually(WAIT, || async {
                reader.get(&format!("/v1/publications/{id}")).await.status() == 200
            })
            .await
    );
    let before = loads(&reader).await;
    let requests = (0..50).map(|_| reader.get("/v1/communes/35238/feed"));
    for response in futures_util::future::join_all(requests).await {
        assert_eq!(response.status(), 200);
    }
    assert_eq!(
        loads(&reader).await,
        before + 1,
        "fifty concurrent readers, one load"
    );
}

#[tokio::test]
async fn a_fan_out_killed_halfway_resumes_elsewhere_and_notifies_nobody_twice() {
    use panneau::store::{DeviceStore, NewDevice, NotificationStore, StateStore};
    let database = TestDatabase::create(&shared_mariadb_url()).await;
    let nats = NatsServer::start();
    let fake = crate::fake_push::FakePush::start(true).await;
    let keys = tempfile::tempdir().unwrap();
    let account = fake.service_account(keys.path());
    let store = SqlStore::connect(&database.url(), &PoolSettings::default())
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let token = "pnn_fanout_test".to_owned();
    store
        .create_publisher(
            "Mairie",
            &panneau::store::NewToken {
                hash: panneau::tokens::TokenHasher::default().hash(&token),
                role: panneau_domain::Role::Editor,
                scope: communes(&["35238", "35051"]),
            },
            panneau::now(),
        )
        .await
        .unwrap();
    // Slow devices (300 ms each at the provider), some on both communes.
    for n in 0..120 {
        let communes: Vec<_> = if n % 3 == 0 {
            vec!["35238", "35051"]
        } else {
            vec!["35238"]
        };
        let device = NewDevice {
            platform: panneau_domain::Platform::Fcm,
            token: panneau_domain::PushToken::parse(format!("slow-{n}")).unwrap(),
            locale: panneau_domain::Locale::parse("fr").unwrap(),
            communes: communes
                .iter()
                .map(|c| panneau_domain::InseeCode::parse(c).unwrap())
                .collect(),
            secret_hash: [0; 32],
        };
        store
            .register_device(&device, panneau::now())
            .await
            .unwrap();
    }
    let concurrency = 4;
    let settings = [
        ("PANNEAU_FCM_CREDENTIALS", account.display().to_string()),
        ("PANNEAU_FCM_ENDPOINT", fake.url.clone()),
        ("PANNEAU_PUSH_CONCURRENCY", concurrency.to_string()),
        ("PANNEAU_PUSH_LEASE_SECONDS", "3".to_owned()),
    ];
    let logs = tempfile::tempdir().unwrap();
    let mut first =
        Instance::start_with(&database.url(), Some(&nats.url()), logs.path(), &settings);
    let response = crate::helpers::http_client()
        .post(first.url("/v1/publications"))
        .bearer_auth(&token)
        .json(&notice(&["35238", "35051"]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let id = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let deadline = tokio::time::Instant::now() + WAIT;
    while fake.accepted() < 30 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the fan-out did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.kill();
    let sent_before = fake.accepted();
    assert!(sent_before < 120, "killed halfway ({sent_before} sent)");

    let _second = Instance::start_with(&database.url(), Some(&nats.url()), logs.path(), &settings);
    let publication = panneau_domain::PublicationId::parse(&id).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let job = loop {
        let job = store
            .job(publication)
            .await
            .unwrap()
            .expect("the job exists");
        if job.status == panneau::store::JobStatus::Done {
            break job;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the fan-out never completed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let deliveries = fake.deliveries();
    assert!(
        deliveries.values().all(|n| *n == 1),
        "a device was notified twice"
    );
    // At most the slice being sent when the instance died and the one claimed
    // after it are lost (at most once, ADR 5).
    assert!(
        deliveries.len() >= 120 - 2 * concurrency,
        "{} of 120 reached",
        deliveries.len()
    );
    assert!(job.sent >= (120 - 2 * concurrency) as u64);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_without_push_gateways_leaves_the_fan_out_to_one_that_has_them() {
    use panneau::store::{JobStatus, NotificationStore};
    let database = TestDatabase::create(&shared_mariadb_url()).await;
    let nats = NatsServer::start();
    let fake = crate::fake_push::FakePush::start(true).await;
    let silent = spawn_cluster_app(&database.url(), &nats.url()).await;
    let token = silent
        .publisher("Mairie", communes(&["35238"]), panneau_domain::Role::Editor)
        .await;
    let device = silent
        .client
        .post(silent.url("/v1/devices"))
        .json(&json!({"platform": "fcm", "token": "fcm-mixed-device", "locale": "fr", "communes": ["35238"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(device.status(), 201);
    let id = silent.publish_ok(&token, &notice(&["35238"])).await;
    let publication = panneau_domain::PublicationId::parse(&id).unwrap();
    let store = SqlStore::connect(&database.url(), &PoolSettings::default())
        .await
        .unwrap();

    // The job is recorded; the instance that could reach nobody leaves it be,
    // where it used to claim it and count the device failed.
    assert!(
        silent
            .eventually(WAIT, || async {
                store.job(publication).await.unwrap().is_some()
            })
            .await,
        "the notifier records the job"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let job = store.job(publication).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Pending);
    assert_eq!((job.sent, job.failed), (0, 0));

    let _sender =
        crate::push::app_with(&fake, Some(&database.url()), Some(&nats.url()), |_| {}).await;
    assert!(
        silent
            .eventually(WAIT, || async {
                store.job(publication).await.unwrap().unwrap().status == JobStatus::Done
            })
            .await,
        "the instance with a gateway runs the job"
    );
    let job = store.job(publication).await.unwrap().unwrap();
    assert_eq!((job.sent, job.failed), (1, 0));
    assert_eq!(fake.accepted(), 1);
    store.close().await;
}

#[tokio::test]
async fn an_embedded_export_imported_into_the_cluster_is_served_there_and_never_notified() {
    use crate::helpers::{panneau_cli, spawn_app, succeeded};

    let source = spawn_app().await;
    let token = source.town_hall().await;
    let both = source
        .publish_ok(&token, &notice(&["35238", "35051"]))
        .await;
    let rennes = source.publish_ok(&token, &notice(&["35238"])).await;
    let file = source.dir.path().join("export.jsonl");
    let file = file.to_str().unwrap();
    succeeded(&panneau_cli(&source.database_url, &["export", file]));

    let database = TestDatabase::create(&shared_mariadb_url()).await;
    let imported = succeeded(&panneau_cli(&database.url(), &["import", file]));
    assert!(
        imported.contains("imported 1 publishers, 1 tokens, 2 events"),
        "{imported}"
    );
    let nats = NatsServer::start();
    let app = spawn_cluster_app(&database.url(), &nats.url()).await;
    for (commune, expected) in [
        ("35238", vec![rennes.clone(), both.clone()]),
        ("35051", vec![both.clone()]),
    ] {
        assert!(
            app.eventually(WAIT, || async { feed_of(&app, commune).await == expected })
                .await,
            "the cluster serves the imported feed of {commune}"
        );
    }
    let store = SqlStore::connect(&database.url(), &PoolSettings::default())
        .await
        .unwrap();
    for id in [&both, &rennes] {
        let id = panneau_domain::PublicationId::parse(id).unwrap();
        let job = panneau::store::NotificationStore::job(&store, id)
            .await
            .unwrap()
            .expect("an imported publication has its job, already settled");
        assert_eq!(job.status, panneau::store::JobStatus::Imported);
    }
    store.close().await;
    // The imported token publishes in the cluster.
    let fresh = app.publish_ok(&token, &notice(&["35051"])).await;
    assert!(
        app.eventually(WAIT, || async {
            feed_of(&app, "35051").await == vec![fresh.clone(), both.clone()]
        })
        .await
    );
}

/// Compare-and-set on the KV bucket: a moved key is a `Conflict` (retried at
/// once by the projector), never an outage (retried after a delay), whatever
/// error code the server answers it with; `get_latest` reads what was written.
#[tokio::test]
async fn a_compare_and_set_on_a_moved_feed_document_is_a_conflict() {
    use panneau::readmodel::kv::KvFeedStore;
    use panneau::readmodel::{FeedStore, ReadModelError};

    let nats = NatsServer::start();
    let client = js::connect(&nats.url()).await.unwrap();
    let context = async_nats::jetstream::new(client);
    let kv = context
        .create_key_value(js::bucket_config(panneau::readmodel::Model::Feeds, 7, 1))
        .await
        .unwrap();
    let store = KvFeedStore::new(kv);
    assert!(store.get_latest("feed.35238").await.unwrap().is_none());
    let first = store
        .put("feed.35238", "a".into(), None)
        .await
        .expect("created");
    assert!(matches!(
        store.put("feed.35238", "b".into(), None).await,
        Err(ReadModelError::Conflict)
    ));
    let second = store
        .put("feed.35238", "c".into(), Some(first))
        .await
        .expect("updated at its revision");
    assert!(matches!(
        store.put("feed.35238", "d".into(), Some(first)).await,
        Err(ReadModelError::Conflict)
    ));
    let latest = store.get_latest("feed.35238").await.unwrap().unwrap();
    assert_eq!(
        (latest.value.as_ref(), latest.revision),
        (&b"c"[..], second)
    );
    assert_eq!(store.get("feed.35238").await.unwrap(), Some(latest.clone()));

    // Without the JetStream API (no metadata leader), the latest revision is
    // confirmed by writing a replica's answer back with compare-and-set: the
    // same document at a new revision, which `get_latest` then reads.
    let confirmed = store
        .confirmed_by_rewrite("feed.35238")
        .await
        .unwrap()
        .expect("the key exists");
    assert_eq!(confirmed.value, latest.value);
    assert!(confirmed.revision > latest.revision);
    assert_eq!(
        store.get_latest("feed.35238").await.unwrap(),
        Some(confirmed.clone())
    );
    // A write made since the read is not overwritten: a stale revision is a
    // conflict, as for any compare-and-set.
    assert!(matches!(
        store
            .put("feed.35238", "e".into(), Some(latest.revision))
            .await,
        Err(ReadModelError::Conflict)
    ));
    // An absence cannot be confirmed that way: nothing is written.
    assert!(matches!(
        store.confirmed_by_rewrite("feed.75056").await,
        Err(ReadModelError::Unavailable(_))
    ));
    assert!(store.get_latest("feed.75056").await.unwrap().is_none());
}

//! `panneau replay`: a broken feed read model rebuilt from the MariaDB log into
//! a new generation while reads and writes go on, then switched to at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::json;

use crate::fake_push::FakePush;
use crate::helpers::{TestApp, communes, notice, spawn_cluster_app};
use crate::infra::{NatsServer, TestDatabase, keep_output, shared_mariadb_url};

const WAIT: Duration = Duration::from_secs(20);

/// Runs `panneau replay ARGS` against the cluster's database and broker.
async fn replay(database: &str, nats: &str, args: &[&str]) -> (bool, String) {
    let (database, nats) = (database.to_owned(), nats.to_owned());
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_panneau"))
            .arg("replay")
            .args(&args)
            .env_remove("PANNEAU_CONFIG")
            .env("PANNEAU_DATABASE_URL", database)
            .env("PANNEAU_NATS_URL", nats)
            .output()
            .expect("the panneau binary runs");
        let text = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        keep_output("panneau-replay", &text);
        (output.status.success(), text)
    })
    .await
    .unwrap()
}

async fn shows(app: &TestApp, commune: &str, ids: &[String]) -> bool {
    let feed = app.feed_ids(commune).await;
    ids.iter().all(|id| feed.contains(id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_rebuilds_a_broken_feed_while_reads_continue_and_sends_no_push() {
    let database = TestDatabase::create(&shared_mariadb_url()).await;
    let nats = NatsServer::start();
    let fake = FakePush::start(true).await;
    let a = crate::push::app_with(&fake, Some(&database.url()), Some(&nats.url()), |_| {}).await;
    let b = spawn_cluster_app(&database.url(), &nats.url()).await;
    let token = a
        .publisher(
            "Mairie",
            communes(&["35238", "35051", "29019"]),
            panneau_domain::Role::Editor,
        )
        .await;
    let device = a
        .client
        .post(a.url("/v1/devices"))
        .json(&json!({"platform": "fcm", "token": "fcm-replay-device", "locale": "fr", "communes": ["35238"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(device.status(), 201);

    // A history: publications, an amendment, a retraction, one notification.
    let notified = a.publish_ok(&token, &notice(&["35238"])).await;
    let quiet = |communes: &[&str]| {
        let mut body = notice(communes);
        body["notify"] = json!(false);
        body
    };
    let mut rennes = vec![notified.clone()];
    let mut cesson = Vec::new();
    for _ in 0..10 {
        rennes.push(a.publish_ok(&token, &quiet(&["35238", "35051"])).await);
        cesson.push(rennes.last().unwrap().clone());
    }
    let brest = a.publish_ok(&token, &quiet(&["29019"])).await;
    let amended = a
        .amend(
            &token,
            &brest,
            Some("\"1\""),
            &json!({"title": "Marché déplacé"}),
        )
        .await;
    assert_eq!(amended.status(), 200);
    let retracted = a.publish_ok(&token, &quiet(&["35051"])).await;
    assert_eq!(a.retract(&token, &retracted).await.status(), 204);
    assert!(
        b.eventually(WAIT, || async {
            shows(&b, "35238", &rennes).await && shows(&b, "35051", &cesson).await
        })
        .await
    );
    assert!(
        a.eventually(WAIT, || async { fake.accepted() == 1 }).await,
        "the one notifying publication reached the device"
    );

    // The projection breaks: a feed document vanishes from the live bucket.
    let client = panneau::bus::jetstream::connect(&nats.url()).await.unwrap();
    let context = async_nats::jetstream::new(client);
    let live = context
        .get_key_value(panneau::bus::jetstream::FEEDS_BUCKET)
        .await
        .unwrap();
    live.delete("feed.35051").await.unwrap();
    assert!(
        b.eventually(WAIT, || async { b.feed_ids("35051").await.is_empty() })
            .await,
        "the broken document is what readers get"
    );
    let (ok, output) = replay(&database.url(), &nats.url(), &["feeds", "--verify"]).await;
    assert!(!ok, "verify reports the broken document: {output}");
    assert!(
        output.contains("feed.35051") && output.contains("1 of"),
        "{output}"
    );

    // Readers hammer both instances during the replay; a town hall publishes.
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for (app, commune) in [(&a, "35238"), (&b, "29019"), (&b, "35238"), (&a, "35051")] {
        let (client, url) = (
            app.client.clone(),
            app.url(&format!("/v1/communes/{commune}/feed")),
        );
        let (stop, reads) = (stop.clone(), reads.clone());
        readers.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match client.get(&url).send().await {
                    Ok(r) if r.status() == 200 => {}
                    Ok(r) => failures.push(r.status().to_string()),
                    Err(e) => failures.push(e.to_string()),
                }
                reads.fetch_add(1, Ordering::Relaxed);
            }
            failures
        }));
    }
    let writer = {
        let (a_client, url, token) = (a.client.clone(), a.url("/v1/publications"), token.clone());
        let body = quiet(&["35051"]);
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..5 {
                let r = a_client
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 201);
                ids.push(
                    r.json::<serde_json::Value>().await.unwrap()["id"]
                        .as_str()
                        .unwrap()
                        .to_owned(),
                );
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            ids
        })
    };
    let (ok, output) = replay(&database.url(), &nats.url(), &["feeds"]).await;
    assert!(ok, "replay: {output}");
    assert!(
        output.contains("into")
            && output.contains("feed generation 2")
            && output.contains("events/s"),
        "{output}"
    );
    let written = writer.await.unwrap();
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        let failures = reader.await.unwrap();
        assert!(
            failures.is_empty(),
            "a read failed during the replay: {failures:?}"
        );
    }
    assert!(
        reads.load(Ordering::Relaxed) > 20,
        "reads went on during the replay"
    );

    // Both instances now serve the rebuilt generation: the broken feed is whole
    // again, with what was published during the replay.
    let meta = context.get_key_value("PANNEAU_META").await.unwrap();
    let pointer = meta.get("feeds.generation").await.unwrap().unwrap();
    assert_eq!(&pointer[..], b"2");
    let mut expected = cesson.clone();
    expected.extend(written);
    for app in [&a, &b] {
        assert!(
            app.eventually(WAIT, || async { shows(app, "35051", &expected).await })
                .await,
            "the rebuilt feed shows every publication"
        );
        assert!(!app.feed_ids("35051").await.contains(&retracted));
    }
    let (ok, output) = replay(&database.url(), &nats.url(), &["--verify"]).await;
    assert!(ok, "the rebuilt model equals the log: {output}");
    assert!(output.contains("documents match the event log"), "{output}");

    // Writes after the switch land in the new generation.
    let after = a.publish_ok(&token, &quiet(&["29019"])).await;
    assert!(
        b.eventually(WAIT, || async {
            shows(&b, "29019", &[after.clone(), brest.clone()]).await
        })
        .await
    );
    let (ok, output) = replay(&database.url(), &nats.url(), &["--verify"]).await;
    assert!(ok, "{output}");

    // The replay sent nothing.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(fake.accepted(), 1, "a replay never notifies");
}

#[tokio::test]
async fn replay_needs_the_cluster_mode_and_a_projection() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_panneau"))
            .arg("replay")
            .args(args)
            .env_remove("PANNEAU_CONFIG")
            .env_remove("PANNEAU_NATS_URL")
            .env(
                "PANNEAU_DATABASE_URL",
                crate::helpers::database_url(dir.path()),
            )
            .output()
            .unwrap()
    };
    let embedded = run(&["feeds"]);
    assert!(!embedded.status.success());
    assert!(
        String::from_utf8_lossy(&embedded.stderr)
            .contains("embedded mode rebuilds its read models"),
        "{}",
        String::from_utf8_lossy(&embedded.stderr)
    );
    let unknown = run(&["gossip"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("feeds"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_rebuilds_broken_statistics_and_leaves_the_feeds_alone() {
    let database = TestDatabase::create(&shared_mariadb_url()).await;
    let nats = NatsServer::start();
    let a = spawn_cluster_app(&database.url(), &nats.url()).await;
    let b = spawn_cluster_app(&database.url(), &nats.url()).await;
    let town = a
        .publisher(
            "Mairie",
            communes(&["35238", "35051"]),
            panneau_domain::Role::Editor,
        )
        .await;
    let other = a
        .publisher("École", communes(&["29019"]), panneau_domain::Role::Editor)
        .await;

    // Three publications (one urgent alert), one amended into a school notice,
    // one retracted; another publisher's one is not counted for the town hall.
    let mut urgent = notice(&["35238", "35051"]);
    urgent["priority"] = json!("urgent");
    urgent["category"] = json!("alert");
    a.publish_ok(&town, &urgent).await;
    let amended = a.publish_ok(&town, &notice(&["35238"])).await;
    assert_eq!(
        a.amend(
            &town,
            &amended,
            Some("\"1\""),
            &json!({"category": "school"})
        )
        .await
        .status(),
        200
    );
    let retracted = a.publish_ok(&town, &notice(&["35051"])).await;
    assert_eq!(a.retract(&town, &retracted).await.status(), 204);
    a.publish_ok(&other, &notice(&["29019"])).await;

    let expected = |publications: u64, live: u64, notices: u64| {
        move |s: &serde_json::Value| {
            s["publications"] == publications
                && s["live"] == live
                && s["retracted"] == 1
                && s["urgent"] == 1
                && s["amendments"] == 1
                && s["commune_notices"] == notices
                && s["by_category"]["school"] == 1
                && s["by_category"]["alert"] == 1
        }
    };
    assert!(
        b.eventually(WAIT, || async {
            expected(3, 2, 4)(&b.publisher_stats(&town).await)
        })
        .await,
        "instance B serves the statistics: {}",
        b.publisher_stats(&town).await
    );
    assert!(
        a.eventually(WAIT, || async {
            a.publisher_stats(&other).await["publications"] == 1
        })
        .await,
        "each publisher sees its own figures only"
    );
    let unauthenticated = a.get("/v1/publisher/stats").await;
    assert_eq!(unauthenticated.status(), 401);

    // The statistics break: every publisher's document vanishes.
    let client = panneau::bus::jetstream::connect(&nats.url()).await.unwrap();
    let context = async_nats::jetstream::new(client);
    let live = context
        .get_key_value(panneau::bus::jetstream::STATS_BUCKET)
        .await
        .unwrap();
    let mut keys = live.keys().await.unwrap();
    let mut deleted = 0;
    while let Some(key) = futures_util::StreamExt::next(&mut keys).await {
        let key = key.unwrap();
        if key.starts_with("stats.") {
            live.delete(&key).await.unwrap();
            deleted += 1;
        }
    }
    // Four publications of two publishers: one document per publisher and
    // shard, so two to four of them.
    assert!((2..=4).contains(&deleted), "{deleted} statistics documents");
    assert!(
        a.eventually(WAIT, || async {
            a.publisher_stats(&town).await["publications"] == 0
        })
        .await,
        "the broken model is what the publisher API serves"
    );
    let (ok, output) = replay(&database.url(), &nats.url(), &["stats", "--verify"]).await;
    assert!(!ok, "verify reports the broken documents: {output}");
    assert!(
        output.contains("stats.") && output.contains(&format!("{deleted} of")),
        "{output}"
    );
    let (ok, output) = replay(&database.url(), &nats.url(), &["feeds", "--verify"]).await;
    assert!(ok, "the feeds were not broken: {output}");

    let (ok, output) = replay(&database.url(), &nats.url(), &["stats"]).await;
    assert!(ok, "replay: {output}");
    assert!(output.contains("stats generation 2"), "{output}");
    for app in [&a, &b] {
        assert!(
            app.eventually(WAIT, || async {
                expected(3, 2, 4)(&app.publisher_stats(&town).await)
            })
            .await,
            "both instances serve the rebuilt statistics: {}",
            app.publisher_stats(&town).await
        );
    }
    let meta = context.get_key_value("PANNEAU_META").await.unwrap();
    assert_eq!(
        &meta.get("stats.generation").await.unwrap().unwrap()[..],
        b"2"
    );
    assert!(
        meta.get("feeds.generation").await.unwrap().is_none(),
        "the feeds were not replayed"
    );

    // The live projector writes into the new generation.
    a.publish_ok(&town, &notice(&["35238"])).await;
    assert!(
        b.eventually(WAIT, || async {
            expected(4, 3, 5)(&b.publisher_stats(&town).await)
        })
        .await,
        "{}",
        b.publisher_stats(&town).await
    );
    let (ok, output) = replay(&database.url(), &nats.url(), &["--verify"]).await;
    assert!(ok, "{output}");
    assert!(
        output.contains("feed generation 1") && output.contains("stats generation 2"),
        "{output}"
    );
}

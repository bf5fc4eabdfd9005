//! The ops listener.

use serde_json::Value;

use crate::helpers::spawn_app;

#[tokio::test]
async fn health_and_readiness_answer_on_the_ops_listener() {
    let app = spawn_app().await;
    let healthz = app
        .client
        .get(format!("{}/healthz", app.ops_address))
        .send()
        .await
        .unwrap();
    assert_eq!(healthz.status(), 200);
    let readyz = app
        .client
        .get(format!("{}/readyz", app.ops_address))
        .send()
        .await
        .unwrap();
    assert_eq!(readyz.status(), 200);
    let body: Value = readyz.json().await.unwrap();
    assert_eq!(body["database"], "up");
    assert_eq!(body["bus"], "up");
    assert_eq!(body["read_model"], "up");
    // Not on the public listener.
    assert_eq!(app.get("/healthz").await.status(), 404);
}

#[tokio::test]
async fn the_openapi_document_describes_the_api() {
    let app = spawn_app().await;
    let doc: Value = app.get("/openapi.json").await.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/v1/communes",
        "/v1/communes/{code}",
        "/v1/communes/{code}/feed",
        "/v1/publications",
        "/v1/publications/{id}",
        "/v1/publications/{id}/history",
        "/v1/publications/{id}/views",
        "/v1/publisher/publications",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} is documented");
    }
}

/// One sample of the OpenMetrics text, by its exact name and labels.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| {
            line.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|value| value.split_whitespace().next())
        .and_then(|value| value.parse().ok())
}

#[tokio::test]
async fn metrics_show_the_figures_a_workload_caused() {
    use serde_json::json;

    use crate::fake_push::FakePush;
    use crate::helpers::{Tweak, notice, spawn_tweaked};
    let fake = FakePush::start(true).await;
    let keys = tempfile::tempdir().unwrap().keep();
    let account = fake.service_account(&keys);
    let endpoint = fake.url.clone();
    let tweak: Tweak = std::sync::Arc::new(move |config| {
        config.fcm_credentials = Some(account.clone());
        config.fcm_endpoint = endpoint.clone();
    });
    let app = spawn_tweaked(None, None, tweak).await;
    for token in ["metrics-device-1", "unregistered-2"] {
        let response = app
            .client
            .post(app.url("/v1/devices"))
            .json(&json!({"platform": "fcm", "token": token, "communes": ["35238"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
    }
    let token = app.town_hall().await;
    let id = app.publish_ok(&token, &notice(&["35238"])).await;
    assert_eq!(app.publish(&token, &notice(&["29019"])).await.status(), 403);
    for _ in 0..3 {
        app.feed_ids("35051").await;
    }
    // A method of the client's own invention counts as OTHER, on no route.
    let brewed = app
        .client
        .request(
            reqwest::Method::from_bytes(b"BREW").unwrap(),
            app.url("/coffee/pot-7"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(brewed.status(), 404);
    let scrape = || async {
        let response = app
            .client
            .get(format!("{}/metrics", app.ops_address))
            .send()
            .await
            .unwrap();
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/openmetrics-text")
        );
        response.text().await.unwrap()
    };
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    let text = loop {
        let text = scrape().await;
        if sample(&text, "panneau_push_jobs_total{status=\"done\"}") == Some(1.0) {
            break text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the job never finished:\n{text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let expect = |series: &str, value: f64| {
        assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
    };
    expect(
        "panneau_http_requests_total{route=\"/v1/publications\",method=\"POST\",status=\"201\"}",
        1.0,
    );
    expect(
        "panneau_http_requests_total{route=\"/v1/publications\",method=\"POST\",status=\"403\"}",
        1.0,
    );
    expect(
        "panneau_http_requests_total{route=\"/v1/devices\",method=\"POST\",status=\"201\"}",
        2.0,
    );
    expect(
        "panneau_commands_total{command=\"publish\",outcome=\"accepted\"}",
        1.0,
    );
    expect(
        "panneau_commands_total{command=\"publish\",outcome=\"refused\"}",
        1.0,
    );
    expect(
        "panneau_push_sends_total{platform=\"fcm\",outcome=\"delivered\"}",
        1.0,
    );
    expect(
        "panneau_push_sends_total{platform=\"fcm\",outcome=\"invalid_token\"}",
        1.0,
    );
    expect(
        "panneau_http_requests_total{route=\"unmatched\",method=\"OTHER\",status=\"404\"}",
        1.0,
    );
    expect("panneau_push_tokens_disabled_total{platform=\"fcm\"}", 1.0);
    expect("panneau_push_jobs_in_progress", 0.0);
    expect("panneau_dependency_up{dependency=\"database\"}", 1.0);
    expect("panneau_dependency_up{dependency=\"read_model\"}", 1.0);
    assert!(sample(&text, "panneau_feed_cache_hits_total").unwrap() >= 2.0);
    assert!(sample(&text, "panneau_feed_cache_misses_total").unwrap() >= 1.0);
    assert!(sample(&text, "panneau_feed_cache_entries").unwrap() >= 1.0);
    assert!(text.contains("panneau_http_request_duration_seconds_bucket{"));
    assert!(text.contains("panneau_build_info{version=\""));
    // Labels are bounded: no commune code, publication id or token in them.
    for unbounded in [
        "35238",
        "35051",
        id.as_str(),
        token.as_str(),
        "metrics-device-1",
        "BREW",
        "pot-7",
    ] {
        assert!(
            !text.contains(unbounded),
            "{unbounded} appears in the metrics"
        );
    }
}

#[tokio::test]
async fn a_server_error_reaches_sentry_once_with_its_request_id_and_nothing_personal() {
    use crate::infra::{FakeSentry, Instance};
    use panneau::store::StateStore;
    let sentry = FakeSentry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let database = crate::helpers::database_url(dir.path());
    let instance = Instance::start_with(
        &database,
        None,
        dir.path(),
        &[
            ("PANNEAU_SENTRY_DSN", sentry.dsn()),
            ("PANNEAU_ENVIRONMENT", "sentry-test".to_owned()),
        ],
    );
    let store = panneau::store::sql::SqlStore::connect(&database, &Default::default())
        .await
        .unwrap();
    let token = "pnn_s3cr3t_sentry_test_token".to_owned();
    store
        .create_publisher(
            "Mairie",
            &panneau::store::NewToken {
                hash: panneau::tokens::TokenHasher::default().hash(&token),
                role: panneau_domain::Role::Editor,
                scope: crate::helpers::communes(&["35238"]),
            },
            panneau::now(),
        )
        .await
        .unwrap();
    let client = crate::helpers::http_client();
    let published = client
        .post(instance.url("/v1/publications"))
        .bearer_auth(&token)
        .json(&crate::helpers::notice(&["35238"]))
        .send()
        .await
        .unwrap();
    assert_eq!(published.status(), 201);
    let id = published.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // A stored event that no longer decodes: a bug the operator must hear about.
    let pool = sqlx::SqlitePool::connect(&database).await.unwrap();
    sqlx::query("UPDATE events SET envelope = X'09' WHERE stream_id = ?")
        .bind(format!("publication-{id}"))
        .execute(&pool)
        .await
        .unwrap();
    let failed = client
        .get(instance.url(&format!("/v1/publications/{id}/history")))
        .bearer_auth(&token)
        .header("X-Request-Id", "req-sentry-1")
        .send()
        .await
        .unwrap();
    assert_eq!(failed.status(), 500);
    let body = failed.text().await.unwrap();
    assert!(
        !body.contains("decode") && !body.contains("format"),
        "a 500 body reveals nothing: {body}"
    );
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while sentry.received().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing reached Sentry"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let received = sentry.received();
    let events: Vec<&String> = received
        .iter()
        .filter(|e| e.contains("req-sentry-1"))
        .collect();
    assert_eq!(events.len(), 1, "reported once: {received:?}");
    let event = events[0];
    assert!(event.contains("panneau@"), "release: {event}");
    assert!(event.contains("sentry-test"), "environment: {event}");
    assert!(
        event.contains("/v1/publications/{id}/history"),
        "route: {event}"
    );
    assert!(
        !event.contains(&token) && !event.contains("pnn_"),
        "no token: {event}"
    );
    assert!(
        !event.contains("127.0.0.1:") || !event.contains("\"ip_address\""),
        "no client address: {event}"
    );
    drop(instance);
}

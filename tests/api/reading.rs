//! What the mobile apps read: feeds with validators, compression and caching rules.

use std::io::Read;
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{assert_problem, notice, spawn_app};

#[tokio::test]
async fn a_known_commune_with_nothing_published_has_an_empty_feed() {
    let app = spawn_app().await;
    let response = app.get("/v1/communes/35238/feed").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["publications"], json!([]));
    assert_eq!(body["next"], Value::Null);
    assert_eq!(body["commune"]["code"], "35238");
    assert_eq!(body["commune"]["name"], "Rennes");
    assert_eq!(body["commune"]["department"], "35");
}

#[tokio::test]
async fn a_second_get_with_the_etag_is_not_modified() {
    let app = spawn_app().await;
    let token = app.town_hall().await;
    app.publish_ok(&token, &notice(&["35238"])).await;
    assert!(
        app.eventually(Duration::from_secs(2), || async {
            app.feed_ids("35238").await.len() == 1
        })
        .await
    );
    let first = app.get("/v1/communes/35238/feed").await;
    let etag = first.headers()["etag"].to_str().unwrap().to_owned();
    let cache_control = first.headers()["cache-control"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        cache_control.starts_with("public, max-age="),
        "{cache_control}"
    );
    assert!(cache_control.contains("stale-while-revalidate="));
    assert!(cache_control.contains("stale-if-error="));
    assert_eq!(first.headers()["vary"], "Accept-Encoding");
    let second = app
        .get_with("/v1/communes/35238/feed", &[("If-None-Match", &etag)])
        .await;
    assert_eq!(second.status(), 304);
    assert_eq!(second.headers()["etag"].to_str().unwrap(), etag);
    assert!(second.bytes().await.unwrap().is_empty());
    // A change gives a new ETag, and the old one no longer matches.
    app.publish_ok(&token, &notice(&["35238"])).await;
    assert!(
        app.eventually(Duration::from_secs(2), || async {
            app.get_with("/v1/communes/35238/feed", &[("If-None-Match", &etag)])
                .await
                .status()
                == 200
        })
        .await
    );
}

#[tokio::test]
async fn brotli_and_gzip_are_served_when_asked_and_decode_to_the_same_feed() {
    let app = spawn_app().await;
    let token = app.town_hall().await;
    app.publish_ok(&token, &notice(&["35238"])).await;
    assert!(
        app.eventually(Duration::from_secs(2), || async {
            app.feed_ids("35238").await.len() == 1
        })
        .await
    );
    let plain = app
        .get("/v1/communes/35238/feed")
        .await
        .bytes()
        .await
        .unwrap();

    let br = app
        .get_with(
            "/v1/communes/35238/feed",
            &[("Accept-Encoding", "gzip, deflate, br")],
        )
        .await;
    assert_eq!(br.headers()["content-encoding"], "br");
    assert_eq!(br.headers()["vary"], "Accept-Encoding");
    let br_etag = br.headers()["etag"].to_str().unwrap().to_owned();
    let mut decoded = Vec::new();
    brotli::Decompressor::new(&br.bytes().await.unwrap()[..], 4096)
        .read_to_end(&mut decoded)
        .unwrap();
    assert_eq!(decoded, plain);

    let gz = app
        .get_with("/v1/communes/35238/feed", &[("Accept-Encoding", "gzip")])
        .await;
    assert_eq!(gz.headers()["content-encoding"], "gzip");
    let gz_etag = gz.headers()["etag"].to_str().unwrap().to_owned();
    let mut decoded = Vec::new();
    flate2::read::GzDecoder::new(&gz.bytes().await.unwrap()[..])
        .read_to_end(&mut decoded)
        .unwrap();
    assert_eq!(decoded, plain);

    assert_ne!(br_etag, gz_etag, "each encoding has its own entity tag");
    let revalidated = app
        .get_with(
            "/v1/communes/35238/feed",
            &[("Accept-Encoding", "br"), ("If-None-Match", &br_etag)],
        )
        .await;
    assert_eq!(revalidated.status(), 304);
}

#[tokio::test]
async fn feeds_page_older_items_with_a_cursor() {
    let app = spawn_app().await;
    let token = app.town_hall().await;
    let mut ids = Vec::new();
    for _ in 0..23 {
        ids.push(app.publish_ok(&token, &notice(&["35051"])).await);
    }
    ids.reverse();
    assert!(
        app.eventually(Duration::from_secs(3), || async {
            app.feed_ids("35051").await.len() == 20
        })
        .await
    );
    let first: Value = app
        .get("/v1/communes/35051/feed")
        .await
        .json()
        .await
        .unwrap();
    let next = first["next"].as_str().unwrap().to_owned();
    let page: Value = app
        .get(&format!("/v1/communes/35051/feed?cursor={next}"))
        .await
        .json()
        .await
        .unwrap();
    let mut seen: Vec<String> = first["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_owned())
        .collect();
    seen.extend(
        page["publications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap().to_owned()),
    );
    assert_eq!(seen, ids);
    assert_eq!(page["next"], Value::Null);
    assert_problem(app.get("/v1/communes/35051/feed?cursor=garbage").await, 400).await;
}

#[tokio::test]
async fn a_publication_shows_only_within_its_visibility_window() {
    let app = spawn_app().await;
    let token = app.town_hall().await;
    let mut later = notice(&["35238"]);
    later["visible_from"] = json!(panneau::now().plus_micros(1_500_000).to_rfc3339());
    later["visible_until"] = json!(panneau::now().plus_micros(3_000_000).to_rfc3339());
    let id = app.publish_ok(&token, &later).await;
    assert!(app.feed_ids("35238").await.is_empty());
    assert!(
        app.eventually(Duration::from_secs(3), || async {
            app.feed_ids("35238").await == vec![id.clone()]
        })
        .await
    );
    assert!(
        app.eventually(Duration::from_secs(4), || async {
            app.feed_ids("35238").await.is_empty()
        })
        .await
    );
}

#[tokio::test]
async fn every_response_carries_a_request_id_and_echoes_the_clients() {
    let app = spawn_app().await;
    let response = app
        .get_with("/v1/communes/35238", &[("X-Request-Id", "app-ios-7f3a")])
        .await;
    assert_eq!(response.headers()["x-request-id"], "app-ios-7f3a");
    let feed = app
        .get_with(
            "/v1/communes/35238/feed",
            &[("X-Request-Id", "app-android-12")],
        )
        .await;
    assert_eq!(feed.headers()["x-request-id"], "app-android-12");
    let generated = app.get("/v1/communes/99999").await;
    let generated = generated.headers()["x-request-id"].to_str().unwrap();
    let uuid = uuid::Uuid::parse_str(generated).expect("a generated request id is a UUID");
    assert_eq!(uuid.get_version_num(), 7, "{generated}");
    assert_eq!(
        generated,
        uuid.hyphenated().to_string(),
        "lower-case, hyphenated"
    );
    let weird = app
        .get_with("/v1/communes/35238", &[("X-Request-Id", "   ")])
        .await;
    assert_ne!(weird.headers()["x-request-id"], "   ");
}

#[tokio::test]
async fn the_view_beacon_is_rate_limited_per_client() {
    let app = spawn_app().await;
    let token = app.town_hall().await;
    let id = app.publish_ok(&token, &notice(&["35238"])).await;
    assert!(
        app.eventually(Duration::from_secs(2), || async {
            app.feed_ids("35238").await.len() == 1
        })
        .await
    );
    let url = app.url(&format!("/v1/publications/{id}/views"));
    let mut statuses = Vec::new();
    for _ in 0..125 {
        statuses.push(
            app.client
                .post(&url)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert!(statuses[..120].iter().all(|s| *s == 202));
    assert_eq!(statuses[124], 429);
    let limited = app.client.post(&url).send().await.unwrap();
    assert!(limited.headers().contains_key("retry-after"));
    assert_problem(limited, 429).await;
}

/// The first page of a cached feed is answered before the router (`api::fast`),
/// a page not cached yet through it: both answer alike, the same status, body
/// and headers but the request id and the date, for every encoding and for
/// 304, and both are counted under the feed's route.
#[tokio::test]
async fn a_cached_feed_is_answered_as_one_not_cached_yet() {
    let answer = |response: reqwest::Response| async move {
        let status = response.status();
        let mut headers: Vec<(String, String)> = response
            .headers()
            .iter()
            .filter(|(name, _)| !matches!(name.as_str(), "x-request-id" | "date"))
            .map(|(name, value)| (name.to_string(), value.to_str().unwrap().to_owned()))
            .collect();
        headers.sort();
        (status, headers, response.bytes().await.unwrap())
    };
    let app = spawn_app().await;
    let token = app.town_hall().await;
    let id = app.publish_ok(&token, &notice(&["35238", "35051"])).await;
    // Waited for without reading a feed: none is cached before the loop.
    assert!(
        app.eventually(Duration::from_secs(2), || async {
            app.get(&format!("/v1/publications/{id}")).await.status() == 200
        })
        .await
    );
    for (commune, encoding) in [("35238", "identity"), ("35051", "gzip")] {
        let path = format!("/v1/communes/{commune}/feed");
        let headers = [("Accept-Encoding", encoding)];
        let first = answer(app.get_with(&path, &headers).await).await;
        let second = answer(app.get_with(&path, &headers).await).await;
        assert_eq!(first.0, 200);
        assert!(
            first.2.len() > 100,
            "{commune}: the feed holds the publication"
        );
        assert_eq!(first, second, "{commune}, {encoding}");
    }
    // Counted under the route, whichever way they were answered.
    let metrics = app.metrics_text().await;
    let series = "panneau_http_requests_total{route=\"/v1/communes/{code}/feed\",method=\"GET\",status=\"200\"} 4";
    assert!(
        metrics.lines().any(|line| line == series),
        "{series} in\n{metrics}"
    );
    // 304 both ways, on an instance where that (empty, so identical) feed is
    // not cached yet.
    let path = "/v1/communes/29019/feed";
    let etag = app.get(path).await.headers()["etag"]
        .to_str()
        .unwrap()
        .to_owned();
    let other = spawn_app().await;
    let brotli = [("Accept-Encoding", "br")];
    let first = answer(other.get_with("/v1/communes/35047/feed", &brotli).await).await;
    let second = answer(other.get_with("/v1/communes/35047/feed", &brotli).await).await;
    assert_eq!(first.0, 200);
    assert_eq!(first, second);
    let headers = [("If-None-Match", etag.as_str())];
    let first = answer(other.get_with(path, &headers).await).await;
    let second = answer(other.get_with(path, &headers).await).await;
    assert_eq!(first.0, 304);
    assert_eq!(first, second);
    // Each answer counted once, under the same series either way.
    let metrics = other.metrics_text().await;
    for series in [
        "panneau_http_requests_total{route=\"/v1/communes/{code}/feed\",method=\"GET\",status=\"200\"} 2",
        "panneau_http_requests_total{route=\"/v1/communes/{code}/feed\",method=\"GET\",status=\"304\"} 2",
        "panneau_http_request_duration_seconds_count{route=\"/v1/communes/{code}/feed\",method=\"GET\"} 4",
    ] {
        assert!(
            metrics.lines().any(|line| line == series),
            "{series} in\n{metrics}"
        );
    }
    // Requests the shortcut does not take still go to the router.
    assert_problem(other.get("/v1/communes/3523/feed").await, 400).await;
    assert_problem(other.get("/v1/communes/99999/feed").await, 404).await;
    let paged = other.get(&format!("{path}?cursor=nonsense")).await;
    assert_problem(paged, 400).await;
}

/// The apps speak HTTP/2 where they can: many requests on one connection,
/// answered from the cache, from the router, and after waiting for a body.
#[tokio::test]
async fn http2_clients_read_and_publish_over_one_connection_like_http1_clients() {
    let app = spawn_app().await;
    let token = app.town_hall().await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    // A command: its handler waits for the body, so it runs as a task.
    let published = h2
        .post(app.url("/v1/publications"))
        .bearer_auth(&token)
        .json(&notice(&["35238"]))
        .send()
        .await
        .unwrap();
    assert_eq!(published.version(), reqwest::Version::HTTP_2);
    assert_eq!(published.status(), 201);
    assert!(
        app.eventually(Duration::from_secs(2), || async {
            app.feed_ids("35238").await.len() == 1
        })
        .await
    );
    let over_http1 = app
        .get_with("/v1/communes/35238/feed", &[("Accept-Encoding", "gzip")])
        .await;
    let etag = over_http1.headers()["etag"].clone();
    let expected = over_http1.bytes().await.unwrap();
    // Cached first pages, all at once on the one connection.
    let reads = (0..64).map(|_| {
        h2.get(app.url("/v1/communes/35238/feed"))
            .header("Accept-Encoding", "gzip")
            .send()
    });
    for response in futures_util::future::join_all(reads).await {
        let response = response.unwrap();
        assert_eq!(response.version(), reqwest::Version::HTTP_2);
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-encoding"], "gzip");
        assert_eq!(response.headers()["etag"], etag);
        assert_eq!(response.bytes().await.unwrap(), expected);
    }
    // What the router answers: a problem, on the same connection.
    let unknown = h2
        .get(app.url("/v1/communes/99999/feed"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.version(), reqwest::Version::HTTP_2);
    assert_problem(unknown, 404).await;
}

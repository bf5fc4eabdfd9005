//! A town hall publishes, amends, retracts; what residents read follows.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{assert_problem, communes, departments, notice, spawn_app};

#[tokio::test]
async fn a_publication_to_two_communes_is_in_both_feeds_at_once() {
    let app = spawn_app().await;
    let token = app.town_hall().await;
    let response = app.publish(&token, &notice(&["35238", "35051"])).await;
    assert_eq!(response.status(), 201);
    let id = response.headers()["location"]
        .to_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(response.headers()["etag"], "\"1\"");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, json!({"id": id, "version": 1}));
    // Read-your-writes: the answer comes after the projection... within moments.
    for commune in ["35238", "35051"] {
        let shown = app
            .eventually(Duration::from_secs(2), || async {
                app.feed_ids(commune).await == vec![id.clone()]
            })
            .await;
        assert!(shown, "{commune} does not show the publication");
    }
    let publication: Value = app
        .get(&format!("/v1/publications/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(publication["title"], "Coupure d'eau rue des Lilas");
    assert_eq!(publication["communes"], json!(["35051", "35238"]));
    assert_eq!(publication["version"], 1);
    assert_eq!(publication["attachments"], json!([]));
    assert!(publication["published_at"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn urgent_alerts_come_first_then_newest_first() {
    let app = spawn_app().await;
    let token = app.town_hall().await;
    let old = app.publish_ok(&token, &notice(&["35238"])).await;
    let mut alert = notice(&["35238"]);
    alert["priority"] = json!("urgent");
    alert["category"] = json!("alert");
    let urgent = app.publish_ok(&token, &alert).await;
    let new = app.publish_ok(&token, &notice(&["35238"])).await;
    let expected = vec![urgent, new, old];
    assert!(
        app.eventually(Duration::from_secs(2), || async {
            app.feed_ids("35238").await == expected
        })
        .await
    );
}

#[tokio::test]
async fn an_amendment_needs_the_current_version() {
    let app = spawn_app().await;
    let token = app.town_hall().await;
    let id = app.publish_ok(&token, &notice(&["35238", "35051"])).await;
    let change = json!({"title": "Coupure d'eau reportée à jeudi"});

    let missing = app.amend(&token, &id, None, &change).await;
    assert_problem(missing, 428).await;

    let ok = app.amend(&token, &id, Some("\"1\""), &change).await;
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.headers()["etag"], "\"2\"");
    assert_eq!(
        ok.json::<Value>().await.unwrap(),
        json!({"id": id, "version": 2})
    );

    let stale = app
        .amend(&token, &id, Some("\"1\""), &json!({"title": "Autre titre"}))
        .await;
    let problem = assert_problem(stale, 412).await;
    assert!(problem["detail"].as_str().unwrap().contains("version 2"));

    let shown = app
        .eventually(Duration::from_secs(2), || async {
            let p: Value = app
                .get(&format!("/v1/publications/{id}"))
                .await
                .json()
                .await
                .unwrap();
            p["title"] == "Coupure d'eau reportée à jeudi" && p["version"] == 2
        })
        .await;
    assert!(shown);
}

#[tokio::test]
async fn amending_the_communes_moves_the_publication_between_feeds() {
    let app = spawn_app().await;
    let token = app.town_hall().await;
    let id = app.publish_ok(&token, &notice(&["35238"])).await;
    let ok = app
        .amend(&token, &id, Some("\"1\""), &json!({"communes": ["35051"]}))
        .await;
    assert_eq!(ok.status(), 200);
    assert!(
        app.eventually(Duration::from_secs(2), || async {
            app.feed_ids("35238").await.is_empty()
                && app.feed_ids("35051").await == vec![id.clone()]
        })
        .await
    );
}

#[tokio::test]
async fn a_retraction_removes_it_from_every_feed() {
    let app = spawn_app().await;
    let token = app.town_hall().await;
    let id = app.publish_ok(&token, &notice(&["35238", "35051"])).await;
    let kept = app.publish_ok(&token, &notice(&["35238"])).await;
    let response = app.retract(&token, &id).await;
    assert_eq!(response.status(), 204);
    assert!(
        app.eventually(Duration::from_secs(2), || async {
            app.feed_ids("35238").await == vec![kept.clone()]
                && app.feed_ids("35051").await.is_empty()
        })
        .await
    );
    assert_problem(app.get(&format!("/v1/publications/{id}")).await, 410).await;
    assert_problem(app.retract(&token, &id).await, 410).await;
    assert_problem(
        app.amend(&token, &id, Some("\"2\""), &json!({"title": "x"}))
            .await,
        410,
    )
    .await;
}

#[tokio::test]
async fn everything_is_still_there_after_a_restart() {
    let mut app = spawn_app().await;
    let token = app.town_hall().await;
    let kept = app.publish_ok(&token, &notice(&["35238", "35051"])).await;
    let retracted = app.publish_ok(&token, &notice(&["35238"])).await;
    assert_eq!(
        app.amend(&token, &kept, Some("\"1\""), &json!({"priority": "urgent"}))
            .await
            .status(),
        200
    );
    assert_eq!(app.retract(&token, &retracted).await.status(), 204);
    app.restart().await;
    assert_eq!(app.feed_ids("35238").await, vec![kept.clone()]);
    assert_eq!(app.feed_ids("35051").await, vec![kept.clone()]);
    let publication: Value = app
        .get(&format!("/v1/publications/{kept}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(publication["priority"], "urgent");
    assert_eq!(publication["version"], 2);
    // The token survives too, and the history is complete.
    let history: Value = app
        .client
        .get(app.url(&format!("/v1/publications/{kept}/history")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(history["events"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn a_scheduled_publication_appears_when_its_time_comes_and_not_before() {
    let app = spawn_app().await;
    let token = app.town_hall().await;
    let at = panneau::now().plus_micros(2_000_000);
    let mut body = notice(&["35238"]);
    body["publish_at"] = json!(at.to_rfc3339());
    let id = app.publish_ok(&token, &body).await;
    // Read it once before its time, so a cached feed has to expire by itself.
    assert!(app.feed_ids("35238").await.is_empty());
    assert_problem(app.get(&format!("/v1/publications/{id}")).await, 404).await;
    let shown = app
        .eventually(Duration::from_secs(5), || async {
            app.feed_ids("35238").await == vec![id.clone()]
        })
        .await;
    assert!(shown, "the scheduled publication never appeared");
    assert!(panneau::now() >= at, "it appeared before its time");
    // The scheduler records that it went live (what the notifier waits for).
    let went_live = app
        .eventually(Duration::from_secs(5), || async {
            let history: Value = app
                .client
                .get(app.url(&format!("/v1/publications/{id}/history")))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            history["events"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["type"] == "PublicationWentLive")
        })
        .await;
    assert!(went_live);
}

#[tokio::test]
async fn the_same_idempotency_key_and_body_get_the_same_answer() {
    let app = spawn_app().await;
    let token = app.town_hall().await;
    let body = notice(&["35238"]);
    let send = |body: Value| {
        let request = app
            .client
            .post(app.url("/v1/publications"))
            .bearer_auth(&token)
            .header("Idempotency-Key", "mairie-rennes-2026-11-28-001")
            .json(&body);
        async move { request.send().await.unwrap() }
    };
    let first = send(body.clone()).await;
    assert_eq!(first.status(), 201);
    let location = first.headers()["location"].clone();
    let first: Value = first.json().await.unwrap();
    // Concurrent and sequential retries: one publication only.
    let (a, b) = tokio::join!(send(body.clone()), send(body.clone()));
    for retry in [a, b] {
        assert_eq!(retry.status(), 201);
        assert_eq!(retry.headers()["location"], location);
        assert_eq!(retry.json::<Value>().await.unwrap(), first);
    }
    let mut other = body.clone();
    other["title"] = json!("Autre chose");
    let problem = assert_problem(send(other).await, 422).await;
    assert_eq!(
        problem["type"],
        "urn:panneau:problem:idempotency-key-reused"
    );
    assert!(
        app.eventually(Duration::from_secs(2), || async {
            app.feed_ids("35238").await.len() == 1
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(app.feed_ids("35238").await.len(), 1);
}

#[tokio::test]
async fn concurrent_first_uses_of_one_key_publish_once() {
    let app = spawn_app().await;
    let token = app.town_hall().await;
    let body = notice(&["35238"]);
    let requests = (0..8).map(|_| {
        let request = app
            .client
            .post(app.url("/v1/publications"))
            .bearer_auth(&token)
            .header("Idempotency-Key", "same-key")
            .json(&body);
        async move { request.send().await.unwrap() }
    });
    let responses = futures_util::future::join_all(requests).await;
    let mut ids = Vec::new();
    for response in responses {
        assert_eq!(response.status(), 201);
        ids.push(response.json::<Value>().await.unwrap()["id"].clone());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "one key, one publication");
}

#[tokio::test]
async fn publishing_outside_the_scope_is_forbidden_and_recorded() {
    let app = spawn_app().await;
    let rennes = app.town_hall().await;
    let brest = app
        .publisher(
            "Mairie de Brest",
            communes(&["29019"]),
            panneau_domain::Role::Admin,
        )
        .await;
    let problem = assert_problem(
        app.publish(&rennes, &notice(&["35238", "29019"])).await,
        403,
    )
    .await;
    assert!(problem["detail"].as_str().unwrap().contains("29019"));

    let id = app.publish_ok(&rennes, &notice(&["35238"])).await;
    assert_problem(
        app.amend(&brest, &id, Some("\"1\""), &json!({"title": "Piraté"}))
            .await,
        403,
    )
    .await;
    assert_problem(app.retract(&brest, &id).await, 403).await;
    // Brest may not read Rennes' audit trail either, and that is recorded too.
    let history = app
        .client
        .get(app.url(&format!("/v1/publications/{id}/history")))
        .bearer_auth(&brest)
        .send()
        .await
        .unwrap();
    assert_problem(history, 403).await;

    let history: Value = app
        .client
        .get(app.url(&format!("/v1/publications/{id}/history")))
        .bearer_auth(&rennes)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let actions: Vec<&str> = history["refusals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["amend", "retract", "history"]);
    assert_eq!(
        history["events"].as_array().unwrap().len(),
        1,
        "nothing was changed"
    );
}

#[tokio::test]
async fn a_prefecture_publishes_to_a_whole_department_in_one_publication() {
    let app = spawn_app().await;
    let prefecture = app
        .publisher(
            "Préfecture d'Ille-et-Vilaine",
            departments(&["35"]),
            panneau_domain::Role::Admin,
        )
        .await;
    let all: Vec<String> = panneau::app::COMMUNES
        .iter()
        .filter(|c| c.department == "35")
        .map(|c| c.code.as_str().to_owned())
        .collect();
    assert!(all.len() > 300);
    let codes: Vec<&str> = all.iter().map(String::as_str).collect();
    let mut alert = notice(&codes);
    alert["priority"] = json!("urgent");
    alert["category"] = json!("weather");
    let id = app.publish_ok(&prefecture, &alert).await;
    for commune in [codes[0], codes[codes.len() / 2], codes[codes.len() - 1]] {
        assert!(
            app.eventually(Duration::from_secs(5), || async {
                app.feed_ids(commune).await == vec![id.clone()]
            })
            .await
        );
    }
    assert_problem(app.publish(&prefecture, &notice(&["29019"])).await, 403).await;
}

#[tokio::test]
async fn an_editor_changes_only_what_their_token_published() {
    let app = spawn_app().await;
    use panneau_domain::Role::{Admin, Editor};
    let tokens = app
        .colleagues(communes(&["35238"]), &[Editor, Editor, Admin])
        .await;
    let (author, colleague, admin) = (&tokens[0], &tokens[1], &tokens[2]);
    let first = app.publish_ok(author, &notice(&["35238"])).await;
    let second = app.publish_ok(author, &notice(&["35238"])).await;
    let problem = assert_problem(app.retract(colleague, &first).await, 403).await;
    assert!(problem["detail"].as_str().unwrap().contains("admin"));
    assert_eq!(app.retract(author, &first).await.status(), 204);
    assert_eq!(app.retract(admin, &second).await.status(), 204);
}

#[tokio::test]
async fn the_history_says_who_did_what_and_when() {
    let app = spawn_app().await;
    let token = app.town_hall().await;
    let id = app.publish_ok(&token, &notice(&["35238"])).await;
    let response = app
        .client
        .patch(app.url(&format!("/v1/publications/{id}")))
        .bearer_auth(&token)
        .header("If-Match", "\"1\"")
        .header("X-Request-Id", "secretariat-42")
        .json(&json!({"visible_until": "2099-01-01T00:00:00Z"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(app.retract(&token, &id).await.status(), 204);
    let history: Value = app
        .client
        .get(app.url(&format!("/v1/publications/{id}/history")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let events = history["events"].as_array().unwrap();
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "PublicationPublished",
            "PublicationAmended",
            "PublicationRetracted"
        ]
    );
    let versions: Vec<u64> = events
        .iter()
        .map(|e| e["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [1, 2, 3]);
    assert_eq!(events[1]["request_id"], "secretariat-42");
    assert_eq!(events[1]["actor"]["kind"], "publisher");
    assert_eq!(
        events[1]["data"]["changes"]["visible_until"],
        "2099-01-01T00:00:00Z"
    );
    assert!(events[0]["occurred_at"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn the_publisher_sees_its_own_publications_with_their_figures() {
    let app = spawn_app().await;
    let token = app.town_hall().await;
    let other = app
        .publisher(
            "Mairie de Brest",
            communes(&["29019"]),
            panneau_domain::Role::Editor,
        )
        .await;
    let id = app.publish_ok(&token, &notice(&["35238"])).await;
    app.publish_ok(&other, &notice(&["29019"])).await;
    assert!(
        app.eventually(Duration::from_secs(2), || async {
            !app.feed_ids("35238").await.is_empty()
        })
        .await
    );
    for _ in 0..3 {
        let response = app
            .client
            .post(app.url(&format!("/v1/publications/{id}/views")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
    }
    let counted = app
        .eventually(Duration::from_secs(10), || async {
            let list: Value = app
                .client
                .get(app.url("/v1/publisher/publications"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let publications = list["publications"].as_array().unwrap();
            publications.len() == 1
                && publications[0]["id"] == id.as_str()
                && publications[0]["views"] == 3
        })
        .await;
    assert!(
        counted,
        "views are counted per publication, for its publisher only"
    );
}

#[tokio::test]
async fn concurrent_amendments_of_one_version_let_exactly_one_through() {
    let app = spawn_app().await;
    let token = app.town_hall().await;
    let id = app.publish_ok(&token, &notice(&["35238"])).await;
    let (first, second) = (json!({"title": "Premier"}), json!({"title": "Second"}));
    let (a, b) = tokio::join!(
        app.amend(&token, &id, Some("\"1\""), &first),
        app.amend(&token, &id, Some("\"1\""), &second)
    );
    let mut statuses = [a.status().as_u16(), b.status().as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 412]);
}

#[tokio::test]
async fn a_publisher_sees_its_own_statistics_folded_from_its_events() {
    let app = spawn_app().await;
    let town = app.town_hall().await;
    let school = app
        .publisher(
            "École Jules Ferry",
            communes(&["35238"]),
            panneau_domain::Role::Editor,
        )
        .await;
    let empty = app.publisher_stats(&town).await;
    assert_eq!(empty["publications"], 0);
    assert_eq!(empty["by_category"], json!({}));

    let mut urgent = notice(&["35238", "35051"]);
    urgent["priority"] = json!("urgent");
    urgent["category"] = json!("alert");
    app.publish_ok(&town, &urgent).await;
    let amended = app.publish_ok(&town, &notice(&["35238"])).await;
    let response = app
        .amend(
            &town,
            &amended,
            Some("\"1\""),
            &json!({"category": "event"}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let later = {
        let mut body = notice(&["35051"]);
        body["publish_at"] = json!("2099-01-01T08:00:00Z");
        body
    };
    let scheduled = app.publish_ok(&town, &later).await;
    assert_eq!(app.retract(&town, &scheduled).await.status(), 204);
    app.publish_ok(&school, &notice(&["35238"])).await;

    assert!(
        app.eventually(Duration::from_secs(5), || async {
            app.publisher_stats(&town).await["publications"] == 3
        })
        .await
    );
    let figures = app.publisher_stats(&town).await;
    assert_eq!(
        figures,
        json!({
            "publications": 3, "scheduled": 0, "live": 2, "retracted": 1, "urgent": 1,
            "amendments": 1, "commune_notices": 4,
            "by_category": {"alert": 1, "event": 1, "roadworks": 1}
        })
    );
    assert_eq!(app.publisher_stats(&school).await["publications"], 1);
    let anonymous = app.get("/v1/publisher/stats").await;
    assert_problem(anonymous, 401).await;
}

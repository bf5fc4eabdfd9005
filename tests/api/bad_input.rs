//! Bad input gets a precise 4xx problem, never a 500, never a partial write.

use serde_json::{Value, json};

use crate::helpers::{assert_problem, fields, notice, spawn_app};

async fn post_raw(
    app: &crate::helpers::TestApp,
    token: &str,
    content_type: &str,
    body: Vec<u8>,
) -> reqwest::Response {
    app.client
        .post(app.url("/v1/publications"))
        .bearer_auth(token)
        .header("Content-Type", content_type)
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn every_limit_of_a_publication_is_a_precise_validation_error() {
    let app = spawn_app().await;
    let token = app.town_hall().await;
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        ("unknown field", json!({"colour": "red"}), 400, ""),
        ("wrong type", json!({"title": 42}), 400, "title"),
        ("empty title", json!({"title": ""}), 400, "title"),
        ("blank title", json!({"title": "   "}), 400, "title"),
        (
            "long title",
            json!({"title": "é".repeat(141)}),
            400,
            "title",
        ),
        ("long body", json!({"body": "x".repeat(8001)}), 400, "body"),
        ("empty body", json!({"body": ""}), 400, "body"),
        (
            "unknown category",
            json!({"category": "party"}),
            400,
            "category",
        ),
        (
            "unknown priority",
            json!({"priority": "high"}),
            400,
            "priority",
        ),
        ("no commune", json!({"communes": []}), 400, "communes"),
        (
            "malformed commune",
            json!({"communes": ["3523"]}),
            400,
            "communes[0]",
        ),
        (
            "duplicate commune",
            json!({"communes": ["35238", "35238"]}),
            400,
            "communes",
        ),
        (
            "unknown commune",
            json!({"communes": ["35999"]}),
            422,
            "communes",
        ),
        (
            "http attachment",
            json!({"attachments": [{"url": "http://a.fr/x.pdf", "name": "x", "content_type": "application/pdf"}]}),
            400,
            "attachments[0].url",
        ),
        (
            "attachment field",
            json!({"attachments": [{"url": "https://a.fr/x.pdf", "name": "x", "content_type": "application/pdf", "size": 3}]}),
            400,
            "attachments[0].size",
        ),
        (
            "eleven attachments",
            json!({"attachments": vec![json!({"url": "https://a.fr/x.pdf", "name": "x", "content_type": "application/pdf"}); 11]}),
            400,
            "attachments",
        ),
        (
            "window backwards",
            json!({"visible_from": "2030-01-02T00:00:00Z", "visible_until": "2030-01-01T00:00:00Z"}),
            400,
            "visible_until",
        ),
        (
            "window over",
            json!({"visible_until": "2020-01-01T00:00:00Z"}),
            422,
            "visible_until",
        ),
        (
            "not a date",
            json!({"visible_until": "demain"}),
            400,
            "visible_until",
        ),
        ("null title", json!({"title": null}), 400, "title"),
    ];
    for (name, change, status, field) in cases {
        let mut body = notice(&["35238"]);
        for (k, v) in change.as_object().unwrap() {
            body[k] = v.clone();
        }
        let problem = assert_problem(app.publish(&token, &body).await, status).await;
        if !field.is_empty() {
            assert_eq!(
                fields(&problem),
                vec![field.to_owned()],
                "{name}: {problem}"
            );
        }
    }
    let missing = {
        let mut body = notice(&["35238"]);
        body.as_object_mut().unwrap().remove("title");
        body
    };
    let problem = assert_problem(app.publish(&token, &missing).await, 400).await;
    assert!(
        problem["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("title")
    );
    // Nothing of all that was written.
    assert!(app.feed_ids("35238").await.is_empty());
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
    assert_eq!(list["publications"], json!([]));
}

#[tokio::test]
async fn bodies_that_are_not_json_are_refused_precisely() {
    let app = spawn_app().await;
    let token = app.town_hall().await;
    let valid = serde_json::to_vec(&notice(&["35238"])).unwrap();
    assert_problem(
        post_raw(&app, &token, "text/plain", valid.clone()).await,
        415,
    )
    .await;
    assert_problem(
        post_raw(
            &app,
            &token,
            "application/x-www-form-urlencoded",
            b"a=b".to_vec(),
        )
        .await,
        415,
    )
    .await;
    assert_problem(
        post_raw(
            &app,
            &token,
            "application/json",
            b"{\"title\": \"\xff\xfe\"}".to_vec(),
        )
        .await,
        400,
    )
    .await;
    assert_problem(
        post_raw(&app, &token, "application/json", b"{\"title\": ".to_vec()).await,
        400,
    )
    .await;
    assert_problem(
        post_raw(&app, &token, "application/json", b"[]".to_vec()).await,
        400,
    )
    .await;
    assert_problem(
        post_raw(&app, &token, "application/json", Vec::new()).await,
        400,
    )
    .await;
    let huge = json!({"communes": ["35238"], "title": "t", "body": "x".repeat(70_000), "category": "info"});
    assert_problem(
        post_raw(
            &app,
            &token,
            "application/json",
            serde_json::to_vec(&huge).unwrap(),
        )
        .await,
        413,
    )
    .await;
    // The charset parameter is fine.
    let ok = post_raw(&app, &token, "application/json; charset=utf-8", valid).await;
    assert_eq!(ok.status(), 201);
}

#[tokio::test]
async fn malformed_codes_and_ids_are_400_and_unknown_ones_404() {
    let app = spawn_app().await;
    for path in [
        "/v1/communes/3523",
        "/v1/communes/abcde/feed",
        "/v1/communes/20001",
        "/v1/publications/not-a-uuid",
        "/v1/publications/0b5e7a4e-3f2c-4d9b-8a1e-6c5d4b3a2f10",
    ] {
        assert_problem(app.get(path).await, 400).await;
    }
    assert_problem(app.get("/v1/communes/35999").await, 404).await;
    assert_problem(app.get("/v1/communes/35999/feed").await, 404).await;
    assert_problem(
        app.get("/v1/publications/01936f5e-8f3a-7c3b-9a6e-3f1d2c4b5a69")
            .await,
        404,
    )
    .await;
    assert_problem(app.get("/v1/nothing/here").await, 404).await;
    let wrong_method = app
        .client
        .put(app.url("/v1/communes/35238"))
        .send()
        .await
        .unwrap();
    assert_problem(wrong_method, 405).await;
}

#[tokio::test]
async fn the_publisher_api_needs_a_valid_token() {
    let app = spawn_app().await;
    let body = notice(&["35238"]);
    let none = app
        .client
        .post(app.url("/v1/publications"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(
        none.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    assert_problem(none, 401).await;
    assert_problem(app.publish("pnn_not_a_real_token", &body).await, 401).await;
    let basic = app
        .client
        .post(app.url("/v1/publications"))
        .header("Authorization", "Basic dXNlcjpwdw==")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_problem(basic, 401).await;
    let list = app
        .client
        .get(app.url("/v1/publisher/publications"))
        .send()
        .await
        .unwrap();
    assert_problem(list, 401).await;
}

#[tokio::test]
async fn amendments_are_checked_like_publications() {
    let app = spawn_app().await;
    let token = app.town_hall().await;
    let id = app.publish_ok(&token, &notice(&["35238"])).await;
    for (body, status) in [
        (json!({}), 400),
        (json!({"title": ""}), 400),
        (json!({"title": null}), 400),
        (json!({"nope": 1}), 400),
        (json!({"communes": ["35999"]}), 422),
        (json!({"priority": "normal"}), 422),
        (json!({"publish_at": "2099-01-01T00:00:00Z"}), 409),
    ] {
        assert_problem(app.amend(&token, &id, Some("\"1\""), &body).await, status).await;
    }
    assert_problem(
        app.amend(&token, &id, Some("one"), &json!({"title": "x"}))
            .await,
        400,
    )
    .await;
    assert_problem(
        app.amend(
            &token,
            "01936f5e-8f3a-7c3b-9a6e-3f1d2c4b5a69",
            Some("\"1\""),
            &json!({"title": "x"}),
        )
        .await,
        404,
    )
    .await;
    let unchanged: Value = app
        .get(&format!("/v1/publications/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(unchanged["version"], 1);
    // Clearing an optional bound with null works.
    let response = app
        .amend(
            &token,
            &id,
            Some("\"1\""),
            &json!({"visible_until": "2099-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let response = app
        .amend(&token, &id, Some("\"2\""), &json!({"visible_until": null}))
        .await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn idempotency_keys_must_be_sensible() {
    let app = spawn_app().await;
    let token = app.town_hall().await;
    let response = app
        .client
        .post(app.url("/v1/publications"))
        .bearer_auth(&token)
        .header("Idempotency-Key", "x".repeat(300))
        .json(&notice(&["35238"]))
        .send()
        .await
        .unwrap();
    assert_eq!(
        fields(&assert_problem(response, 400).await),
        ["Idempotency-Key"]
    );
}

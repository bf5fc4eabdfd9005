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

//! Finding a commune.

use serde_json::Value;

use crate::helpers::{assert_problem, spawn_app};

async fn codes(app: &crate::helpers::TestApp, query: &str) -> Vec<String> {
    let response = app
        .client
        .get(app.url("/v1/communes"))
        .query(&[("q", query)])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{query}");
    let body: Value = response.json().await.unwrap();
    body["communes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["code"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn every_way_of_asking_for_saint_etienne_finds_it_first() {
    let app = spawn_app().await;
    for query in [
        "st etienne",
        "saint-étienne",
        "Saint Etienne",
        "ST-ÉTIENNE",
        "42000",
        "42218",
    ] {
        assert_eq!(codes(&app, query).await[0], "42218", "{query}");
    }
}

#[tokio::test]
async fn a_postal_code_prefix_finds_the_communes_it_serves() {
    let app = spawn_app().await;
    let found = codes(&app, "3500").await;
    assert_eq!(found[0], "35238", "Rennes has 35000");
    let all = codes(&app, "35").await;
    assert_eq!(all.len(), 20, "the default limit");
}

#[tokio::test]
async fn search_answers_have_the_contract_shape_and_limits() {
    let app = spawn_app().await;
    let body: Value = app
        .get("/v1/communes?q=rennes&limit=1")
        .await
        .json()
        .await
        .unwrap();
    let rennes = &body["communes"][0];
    assert_eq!(rennes["code"], "35238");
    assert_eq!(rennes["name"], "Rennes");
    assert_eq!(rennes["department"], "35");
    assert!(
        rennes["postcodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == "35000")
    );
    assert!(rennes["population"].as_u64().unwrap() > 200_000);
    let fifty: Value = app
        .get("/v1/communes?q=saint&limit=50")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(fifty["communes"].as_array().unwrap().len(), 50);
    for bad in [
        "/v1/communes",
        "/v1/communes?q=",
        "/v1/communes?q=%20",
        "/v1/communes?q=a&limit=51",
        "/v1/communes?q=a&limit=0",
        "/v1/communes?q=a&limit=x",
    ] {
        assert_problem(app.get(bad).await, 400).await;
    }
    let nothing: Value = app.get("/v1/communes?q=zzzzzz").await.json().await.unwrap();
    assert_eq!(nothing["communes"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn a_commune_is_found_by_its_code() {
    let app = spawn_app().await;
    let corsica: Value = app.get("/v1/communes/2A004").await.json().await.unwrap();
    assert_eq!(corsica["name"], "Ajaccio");
    assert_eq!(corsica["department"], "2A");
    assert_eq!(panneau::app::COMMUNES.len(), 34_969);
}

//! The OpenAPI document and Swagger UI.

use serde_json::Value;

use crate::helpers::spawn_app;

const SPEC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/coordinator.yaml");

#[test]
fn openapi_coordinator_yaml_matches_the_code() {
    let generated = tcc_coordinator::api::openapi_yaml();
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(SPEC, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(SPEC).unwrap_or_default();
    assert!(
        committed == generated,
        "openapi/coordinator.yaml is out of date with the code; regenerate it with \
         `UPDATE_OPENAPI=1 cargo test --test api openapi` and commit the result"
    );
}

#[tokio::test]
async fn swagger_ui_and_the_live_spec_are_served() {
    let app = spawn_app().await;

    let docs = app.get("/docs").await;
    assert_eq!(docs.status(), 200);
    assert!(docs.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(docs.text().await.unwrap().contains("swagger-ui"));
    let slash = app.get("/docs/").await;
    assert_eq!(slash.status(), 200, "/docs/ as people type it");
    assert!(slash.text().await.unwrap().contains("swagger-ui"));

    let spec: Value = app.get("/openapi.json").await.json().await.unwrap();
    assert_eq!(spec["openapi"], "3.0.0");
    assert!(
        spec["paths"]["/reservations/{id}/confirm"]["post"].is_object(),
        "{spec:#}"
    );

    let yaml = app.get("/openapi.yaml").await.text().await.unwrap();
    assert_eq!(yaml, tcc_coordinator::api::openapi_yaml());
    app.stop().await;
}

//! The choreography example (`examples/choreography/`): an order, its payment and its stock,
//! three services built on the participant kit, driven by the real coordinator.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::{is_settled, spawn_app};

#[allow(dead_code)]
#[path = "../../examples/choreography/services.rs"]
pub mod services;

use services::{OrderState, Shop};
use tcc_client::NewReservation;

const TTL: Duration = Duration::from_secs(60);

fn json(reservation: NewReservation) -> Value {
    serde_json::to_value(reservation).unwrap()
}

fn held(shop: &Shop) -> (u64, u32) {
    (
        shop.payments.books().held.values().sum(),
        shop.stock.books().held.values().sum(),
    )
}

#[tokio::test]
async fn choreography_an_order_its_payment_and_its_stock_confirm_together() {
    let app = spawn_app().await;
    let shop = Shop::open([0; 3], TTL, None).await.unwrap();

    let id = app
        .create(&json(shop.reservation("A-17", "alice", 1_200, 2)))
        .await;
    app.wait_for(&id, |_, b| b["state"] == "reserved").await;
    assert_eq!(shop.orders.state("A-17"), Some(OrderState::Pending));
    assert_eq!(held(&shop), (1_200, 2));
    let confirm = app.post(&format!("/reservations/{id}/confirm")).await;
    let (status, _) = app.wait_for(&id, is_settled).await;

    assert_eq!(confirm.status(), 202);
    assert_eq!(status, 303);
    assert_eq!(shop.orders.state("A-17"), Some(OrderState::Placed));
    assert_eq!(shop.payments.books().charged["alice"], 1_200);
    assert_eq!(shop.payments.books().balance["alice"], 3_800);
    assert_eq!(shop.stock.books().sold["apple"], 2);
    assert_eq!(shop.stock.books().available["apple"], 8);
    assert_eq!(held(&shop), (0, 0));
    for service in &shop.services {
        let holds = service.participant.holds().await;
        assert_eq!(holds.len(), 1);
        assert_eq!(holds[0].state, tcc_participant::HoldState::Confirmed);
        assert_eq!(
            holds[0].idempotency_key.split('/').next(),
            Some(id.as_str())
        );
    }
    shop.close().await.unwrap();
    app.stop().await;
}

#[tokio::test]
async fn choreography_a_declined_payment_releases_the_order_and_the_stock() {
    let app = spawn_app().await;
    let shop = Shop::open([0; 3], TTL, None).await.unwrap();

    let id = app
        .create(&json(shop.reservation("B-2", "bob", 1_200, 2)))
        .await;
    let (status, body) = app.wait_for(&id, is_settled).await;
    let released = || async {
        (shop.orders.state("B-2") != Some(OrderState::Pending) && held(&shop) == (0, 0))
            .then_some(())
    };
    crate::helpers::eventually("the order and the stock are released", released).await;

    assert_eq!(status, 410);
    assert_eq!(body["reason"], "try_failed");
    assert_eq!(body["participants"][1]["state"], "try_failed");
    assert!(
        body["participants"][1]["last_error"]
            .as_str()
            .unwrap()
            .contains("409"),
        "{body:#}"
    );
    assert_eq!(
        shop.orders.state("B-2").unwrap_or(OrderState::Dropped),
        OrderState::Dropped
    );
    assert_eq!(shop.stock.books().available["apple"], 10);
    assert_eq!(shop.payments.books().balance["bob"], 300);
    assert!(
        shop.services[1].participant.holds().await.is_empty(),
        "payment held nothing"
    );
    shop.close().await.unwrap();
    app.stop().await;
}

#[tokio::test]
async fn choreography_a_stock_confirm_answering_503_twice_is_retried_until_it_confirms() {
    let app = spawn_app().await;
    let shop = Shop::open([0; 3], TTL, None).await.unwrap();
    shop.stock
        .failing_confirms
        .store(2, std::sync::atomic::Ordering::SeqCst);

    let id = app
        .create(&json(shop.reservation("C-3", "alice", 500, 1)))
        .await;
    app.wait_for(&id, |_, b| b["state"] == "reserved").await;
    app.post(&format!("/reservations/{id}/confirm")).await;
    let (status, _) = app.wait_for(&id, is_settled).await;
    let history: Value = app.get_json(&format!("/reservations/{id}/events")).await;
    let stock_confirms: Vec<&str> = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["verb"] == "confirm" && e["participant_name"] == "stock")
        .map(|e| e["result"].as_str().unwrap())
        .collect();

    assert_eq!(status, 303);
    assert_eq!(stock_confirms.len(), 3, "{history:#}");
    assert!(
        stock_confirms[..2].iter().all(|r| r.starts_with("503")),
        "{stock_confirms:?}"
    );
    assert_eq!(shop.stock.books().sold["apple"], 1);
    assert_eq!(shop.orders.state("C-3"), Some(OrderState::Placed));
    assert_eq!(shop.payments.books().charged["alice"], 500);
    shop.close().await.unwrap();
    app.stop().await;
}

#[tokio::test]
async fn choreography_a_participant_restarted_with_durable_holds_confirms_what_it_held() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let mut shop = Shop::open([0; 3], TTL, Some(dir.path())).await.unwrap();
    let id = app
        .create(&json(shop.reservation("D-4", "alice", 700, 3)))
        .await;
    app.wait_for(&id, |_, b| b["state"] == "reserved").await;

    shop.restart_stock().await.unwrap();
    assert_eq!(
        shop.stock.books().held["apple"],
        3,
        "rebuilt from the kept holds"
    );
    assert_eq!(shop.stock.books().available["apple"], 7);
    app.post(&format!("/reservations/{id}/confirm")).await;
    let (status, _) = app.wait_for(&id, is_settled).await;

    assert_eq!(status, 303);
    assert_eq!(shop.stock.books().sold["apple"], 3);
    assert_eq!(shop.stock.books().held["apple"], 0);
    assert_eq!(shop.stock.books().available["apple"], 7);
    shop.close().await.unwrap();
    app.stop().await;
}

#[tokio::test]
async fn choreography_the_orders_service_checks_out_through_tcc_client() {
    let app = spawn_app().await;
    let shop = Shop::open_for(&app.base, [0; 3], TTL, None).await.unwrap();
    let checkout = |body: Value| {
        let (http, url) = (app.http.clone(), shop.checkout_url());
        async move {
            let answer = http.post(url).json(&body).send().await.unwrap();
            (
                answer.status().as_u16(),
                answer.json::<Value>().await.unwrap(),
            )
        }
    };

    let (status, placed) = checkout(serde_json::json!(
        {"order": "E-5", "account": "alice", "total_cents": 800, "apples": 1}
    ))
    .await;
    assert_eq!(
        (status, &placed["state"]),
        (201, &Value::from("placed")),
        "{placed}"
    );
    let transaction = app
        .get_json(&format!(
            "/transactions/{}",
            placed["transaction"].as_str().unwrap()
        ))
        .await;
    assert_eq!(transaction["metadata"]["order"], "E-5");
    assert_eq!(shop.orders.state("E-5"), Some(OrderState::Placed));
    assert_eq!(shop.payments.books().charged["alice"], 800);

    // bob has 300 cents: the payment refuses its try and the checkout is dropped, saying why.
    let (status, dropped) = checkout(serde_json::json!(
        {"order": "E-6", "account": "bob", "total_cents": 800, "apples": 1}
    ))
    .await;
    assert_eq!(
        (status, &dropped["state"]),
        (409, &Value::from("dropped")),
        "{dropped}"
    );
    assert!(
        dropped["why"].as_str().unwrap().contains("payment"),
        "{dropped}"
    );
    let released = || async { (held(&shop) == (0, 0)).then_some(()) };
    crate::helpers::eventually("the dropped order's holds released", released).await;
    assert_eq!(shop.orders.state("E-6"), Some(OrderState::Dropped));
    shop.close().await.unwrap();
    app.stop().await;
}

//! The choreography example's three services (built on the participant kit) and the real
//! coordinator binary, killed with SIGKILL in the middle of a confirm.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::helpers::{client, create, decide, wait_for};
use crate::Binary;

#[allow(dead_code)]
#[path = "../../examples/choreography/services.rs"]
mod services;

use services::{OrderState, Shop};

#[tokio::test]
async fn choreography_the_coordinator_killed_mid_confirm_finishes_it_after_a_restart() {
    // Arrange: stock keeps answering 503 to its confirm, so the coordinator is still
    // confirming (order and payment done, stock retried) when it is killed.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let coordinator = Binary::start(&data);
    let http = client();
    let shop = Shop::open([0; 3], Duration::from_secs(60), None)
        .await
        .unwrap();
    shop.stock
        .failing_confirms
        .store(u32::MAX, Ordering::SeqCst);
    let id = create(
        &http,
        &coordinator.base,
        &serde_json::to_value(shop.reservation("K-9", "alice", 900, 2)).unwrap(),
    )
    .await;
    wait_for(&http, &coordinator.base, &id, |_, b| {
        b["state"] == "reserved"
    })
    .await;
    assert_eq!(
        decide(&http, &coordinator.base, &id, "confirm")
            .await
            .status(),
        202
    );
    wait_for(&http, &coordinator.base, &id, |_, b| {
        b["participants"][2]["attempts"].as_u64() >= Some(1)
            && b["participants"][0]["state"] == "confirmed"
            && b["participants"][1]["state"] == "confirmed"
    })
    .await;

    // Act
    coordinator.kill_9();
    shop.stock.failing_confirms.store(0, Ordering::SeqCst);
    let restarted = Binary::start(&data);

    // Assert: the decision survived; every service confirmed exactly once.
    wait_for(&http, &restarted.base, &id, |s, _| s == 303).await;
    assert_eq!(shop.orders.state("K-9"), Some(OrderState::Placed));
    assert_eq!(shop.payments.books().charged["alice"], 900);
    assert_eq!(shop.payments.books().balance["alice"], 4_100);
    assert_eq!(shop.stock.books().sold["apple"], 2);
    assert_eq!(shop.stock.books().held["apple"], 0);
    for service in &shop.services {
        let holds = service.participant.holds().await;
        assert_eq!(holds.len(), 1);
        assert_eq!(holds[0].state, tcc_participant::HoldState::Confirmed);
    }
    shop.close().await.unwrap();
}

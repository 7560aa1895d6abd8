use serde_json::{json, Value};
use tcc_coordinator::{App, Config};
use tcc_participant::fake::{Answer, FakeParticipant, Verb};

#[tokio::test]
async fn stock_is_confirmed_even_when_it_answers_503_twice() {
    let app = App::build(Config::ephemeral()).await.unwrap(); // free port, temporary log
    let base_url = app.base_url().to_owned();
    let stop = app.stop_handle();
    let server = tokio::spawn(app.run_until_stopped());
    let stock = FakeParticipant::start().await.unwrap(); // free port, holds in memory
    stock.script(Verb::Confirm, [Answer::status(503), Answer::status(503)]);

    // What the code under test does: reserve stock through the coordinator, then confirm.
    // `Prefer: wait=10` answers once the tries (then the confirms) are done.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let try_stock =
        json!({"name": "stock", "try": {"url": stock.try_url(), "body": {"sku": "apple"}}});
    let created: Value = http
        .post(format!("{base_url}/reservations"))
        .header("Prefer", "wait=10")
        .json(&json!({"participants": [try_stock]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(created["state"], "reserved");
    let id = created["id"].as_str().unwrap();
    let confirmed = http
        .post(format!("{base_url}/reservations/{id}/confirm"))
        .header("Prefer", "wait=10")
        .send()
        .await
        .unwrap();
    assert_eq!(confirmed.status(), 303); // confirmed: the transaction is at its Location

    let confirms: Vec<_> = stock
        .calls_of(Verb::Confirm)
        .iter()
        .map(|c| c.status)
        .collect();
    assert_eq!(confirms, [Some(503), Some(503), Some(204)]);
    stock.stop().await.unwrap();
    stop.stop();
    server.await.unwrap().unwrap();
}

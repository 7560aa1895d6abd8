use std::time::Duration;

use serde_json::json;
use tcc_client::{Client, NewParticipant, NewReservation, Outcome, State};
use tcc_coordinator::{App, Config};
use tcc_participant::fake::{Answer, FakeParticipant, Verb};

#[tokio::test]
async fn stock_is_confirmed_even_when_it_answers_503_twice() {
    let app = App::build(Config::ephemeral()).await.unwrap(); // free port, temporary log
    let coordinator = Client::new(app.base_url())
        .unwrap()
        .wait(Duration::from_secs(10));
    let stop = app.stop_handle();
    let server = tokio::spawn(app.run_until_stopped());
    let stock = FakeParticipant::start().await.unwrap(); // free port, holds in memory
    stock.script(Verb::Confirm, [Answer::status(503), Answer::status(503)]);

    // What the code under test does: reserve stock through the coordinator, then confirm.
    // `wait` sends `Prefer: wait=10`: answers come once the tries (then the confirms) are done.
    let stock_try = NewParticipant::try_at(stock.try_url(), json!({"sku": "apple"}));
    let order = NewReservation::new().participant(stock_try.named("stock"));
    let created = coordinator.create(&order).await.unwrap().open().unwrap();
    assert_eq!(created.state, State::Reserved);
    let confirmed = coordinator.confirm(&created.id).await.unwrap();
    assert!(matches!(confirmed, Outcome::Confirmed(_))); // the 303, followed to the transaction

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

//! An order reserves stock through the coordinator, then confirms.
//! `cargo run -p tcc-client --example checkout -- http://127.0.0.1:8080 http://127.0.0.1:8081/holds`
use std::time::Duration;

use serde_json::json;
use tcc_client::{Client, Error, NewParticipant, NewReservation, Outcome};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let coordinator_url = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:8080".into());
    let stock_url = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:8081/holds".into());

    // Prefer: wait=10: a create answers once the tries did, a confirm once the confirms did.
    let coordinator = Client::new(&coordinator_url)?.wait(Duration::from_secs(10));
    let stock = NewParticipant::try_at(stock_url, json!({"sku": "apple", "quantity": 1}));
    let order = NewReservation::new()
        .timeout(Duration::from_secs(30))
        .participant(stock.named("stock"))
        .metadata("order", "A-42");
    // The order's id as Idempotency-Key: sent again after a crash or a timeout, it is still
    // one reservation.
    let outcome = match coordinator.create_with_key("order-A-42", &order).await {
        Ok(Outcome::Open(reservation)) => coordinator.confirm(&reservation.id).await?,
        Ok(ended) => ended,
        Err(Error::Problem(problem)) if problem.kind() == "invalid-request" => {
            eprintln!("refused: {} (field {:?})", problem.detail, problem.field);
            return Err(Error::Problem(problem));
        }
        Err(other) => return Err(other),
    };
    match outcome {
        Outcome::Confirmed(transaction) => println!("confirmed: transaction {}", transaction.id),
        Outcome::Open(reservation) => println!("{:?}: {}", reservation.state, reservation.activity),
        Outcome::Cancelled(gone) => println!("cancelled: {}", gone.detail),
    }
    Ok(())
}

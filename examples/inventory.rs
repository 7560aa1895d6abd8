//! An example participant built on the participant kit (`participant/`, crate
//! tcc-participant): an inventory that holds stock. The stock itself is the `Stock` resource
//! of the choreography example (`examples/choreography/services.rs`, about 90 lines: reserve,
//! confirm, release, restore); the kit serves `openapi/participant.yaml` for it:
//!
//! - `POST /holds` `{"sku": "apple", "quantity": 2}` tries: `201` with the link in `Location`
//!   and `{"uri", "expires"}`; the same `Idempotency-Key` and body gets the same hold (`200`).
//!   Not enough stock: `409`.
//! - `PUT /holds/{id}` confirms (the stock is sold), `DELETE /holds/{id}` cancels (the stock
//!   is back); `GET /holds/{id}` shows a hold.
//! - `GET /stock` shows what is available, held and sold.
//!
//! Holds expire on their own after `--hold-ttl-secs` (default 60), never later than the
//! reservation's deadline plus 30 s. With `--data-dir`, holds (and so the stock) survive a
//! restart.
//!
//! Run: `cargo run --example inventory -- --listen 127.0.0.1:8081`

#[allow(dead_code)]
#[path = "choreography/services.rs"]
mod services;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use poem::web::Json;
use poem::{get, handler, EndpointExt, Route};
use services::{Service, Stock, StockBooks};

#[derive(Parser)]
struct Args {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    /// How long a hold lives unless confirmed, in seconds.
    #[arg(long, default_value_t = 60)]
    hold_ttl_secs: u64,
    /// Keep holds on disk here (sled), so that they survive a restart.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[handler]
fn stock(stock: poem::web::Data<&Stock>) -> Json<StockBooks> {
    Json(stock.books().clone())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().init();
    let args = Args::parse();
    let inventory = Stock::new(&[("apple", 10), ("pear", 5)]);
    let ttl = Duration::from_secs(args.hold_ttl_secs);
    let participant = services::participant(inventory.clone(), ttl, args.data_dir.as_deref())?;
    let app = Route::new()
        .nest("/", participant.endpoint())
        .at("/stock", get(stock))
        .data(inventory);
    let service = Service::serve(participant, app, args.listen).await?;
    println!(
        "inventory participant on {} (tries: POST {}; holds expire after {} s)",
        service.url,
        service.holds_url(),
        args.hold_ttl_secs
    );
    tokio::signal::ctrl_c().await?;
    service.stop().await?;
    Ok(())
}

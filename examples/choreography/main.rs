//! A choreography of three services built on the participant kit, driven by tcc-coordinator:
//! an order, its payment and its stock change together or not at all.
//!
//! ```sh
//! cargo run --example choreography            # orders :8091, payments :8092, stock :8093
//! cargo run --release                         # the coordinator, in a second terminal
//! curl -i -X POST localhost:8080/reservations -H 'content-type: application/json' -d '{
//!   "timeout_ms": 30000,
//!   "participants": [
//!     {"name": "order",   "try": {"url": "http://127.0.0.1:8091/holds", "body": {"order": "A-17", "total_cents": 1200}}},
//!     {"name": "payment", "try": {"url": "http://127.0.0.1:8092/holds", "body": {"account": "alice", "amount_cents": 1200}}},
//!     {"name": "stock",   "try": {"url": "http://127.0.0.1:8093/holds", "body": {"sku": "apple", "quantity": 2}}}
//!   ]}'
//! curl -X POST localhost:8080/reservations/{id}/confirm
//! curl localhost:8093/books                   # balances, holds, sales
//! ```
//!
//! Or let the orders service do it, as a real one would: `POST /checkout` starts the
//! reservation with tcc-client (the order's id as its `Idempotency-Key`) and confirms it once
//! every try held (`201` placed, `409` dropped with the reason):
//!
//! ```sh
//! curl -X POST localhost:8091/checkout -H 'content-type: application/json' \
//!   -d '{"order": "A-18", "account": "alice", "total_cents": 700, "apples": 1}'
//! ```
//!
//! Ask for more than alice has (`"amount_cents": 99999`) and payment refuses the try: the
//! coordinator releases the order and the stock. With `--data-dir DIR` each service keeps its
//! holds on disk and finds them after a restart.

#[allow(dead_code)]
mod services;

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use services::Shop;

#[derive(Parser)]
struct Args {
    /// Keep each service's holds on disk under this directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// How long holds live unless confirmed, in seconds.
    #[arg(long, default_value_t = 60)]
    hold_ttl_secs: u64,
    /// The coordinator the orders service's checkouts go to.
    #[arg(long, default_value = services::COORDINATOR)]
    coordinator: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().init();
    let args = Args::parse();
    let ttl = Duration::from_secs(args.hold_ttl_secs);
    let ports = [8091, 8092, 8093];
    let shop = Shop::open_for(&args.coordinator, ports, ttl, args.data_dir.as_deref()).await?;
    for (name, url) in ["orders", "payments", "stock"].iter().zip(shop.try_urls()) {
        println!("{name}: tries at POST {url}");
    }
    println!(
        "orders: checkouts at POST {} (through the coordinator at {})",
        shop.checkout_url(),
        args.coordinator
    );
    tokio::signal::ctrl_c().await?;
    shop.close().await?;
    Ok(())
}

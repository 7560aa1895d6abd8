//! A complete participant service on the kit: seats that can be held, confirmed and released.
//! Run it with `cargo run -p tcc-participant --example seats -- 127.0.0.1:0 /tmp/seats.port`.

use std::time::Duration;

use poem::listener::{Acceptor, Listener, TcpListener};
use poem::{Route, Server};
use tcc_participant::{Participant, Refusal, Resource, SledStore, TryContext, Unavailable};

/// The seats this service sells.
struct Seats;

/// The try's JSON body (one that does not parse is answered 422 naming the field), and what
/// is kept with the hold to confirm or release it later.
#[derive(serde::Serialize, serde::Deserialize)]
struct Booking {
    seat: String,
}

impl Resource for Seats {
    type Request = Booking;
    type Hold = Booking;

    async fn reserve(&self, booking: Booking, ctx: &TryContext) -> Result<Booking, Refusal> {
        // ctx: hold_id(), idempotency_key(), reservation(), deadline(), expires()
        tracing::info!(seat = %booking.seat, hold = %ctx.hold_id(), "holding");
        if booking.seat == "7C" {
            // 409: the coordinator cancels the reservation and shows this reason.
            return Err(Refusal::refused("seat 7C is taken"));
        }
        Ok(booking)
    }

    async fn confirm(&self, booking: &Booking) -> Result<(), Unavailable> {
        tracing::info!(seat = %booking.seat, "sold"); // Err(Unavailable): 503, asked again
        Ok(())
    }

    async fn release(&self, booking: &Booking) -> Result<(), Unavailable> {
        tracing::info!(seat = %booking.seat, "released"); // on cancel and on expiry
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().init();
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:8082".into());
    let port_file = args.next();

    let seats = Participant::builder(Seats)
        .hold_ttl(Duration::from_secs(60)) // released unless confirmed in time
        .store(SledStore::open("seats-holds")?) // holds survive a restart (default: memory)
        .start()?;
    let docs = seats.openapi("seats", "1.0").swagger_ui();
    let app = Route::new()
        .nest("/", seats.endpoint()) // POST /holds, PUT/DELETE/GET /holds/{id}
        .nest("/docs", docs); // Swagger UI; add your own routes beside

    let listener = TcpListener::bind(listen).into_acceptor().await?;
    let addr = listener.local_addr()[0].clone();
    let port = addr.as_socket_addr().map(|a| a.port()).unwrap_or_default();
    if let Some(file) = port_file {
        std::fs::write(file, port.to_string())?; // for test suites that start it on port 0
    }
    println!("seats participant on http://127.0.0.1:{port}/holds (Swagger UI: /docs)");
    Server::new_with_acceptor(listener)
        .run_with_graceful_shutdown(app, async { tokio::signal::ctrl_c().await.unwrap() }, None)
        .await?;
    Ok(())
}

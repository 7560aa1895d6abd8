//! Three services built on the participant kit (tcc-participant): orders, payments and
//! stock. Each is one `Resource` (reserve, confirm, release, and `restore` to rebuild its
//! in-memory books from the holds the kit kept); the kit does the rest.
//!
//! The orders service also takes checkouts (`POST /checkout`): it starts the reservation
//! over the three with tcc-client and confirms it once every try held.
//!
//! Shared by `examples/choreography/main.rs`, `examples/inventory.rs` (the stock service on
//! its own) and the choreography tests.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use poem::http::StatusCode;
use poem::web::{Data, Json};
use poem::{get, handler, post, Endpoint, EndpointExt, IntoResponse, Route};
use serde::{Deserialize, Serialize};
use tcc_client::{NewParticipant, NewReservation, Outcome};
use tcc_participant::{
    HoldState, Participant, Refusal, Resource, Serving, SledStore, StoreError, TryContext,
    Unavailable,
};

/// Stock: `{"sku": "apple", "quantity": 2}` holds two apples.
#[derive(Clone, Default)]
pub struct Stock {
    books: Arc<Mutex<StockBooks>>,
    /// How many of the next confirms answer "not now" (503), to show retries.
    pub failing_confirms: Arc<AtomicU32>,
}

/// What the stock service shows at `GET /stock`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StockBooks {
    pub available: BTreeMap<String, u32>,
    pub held: BTreeMap<String, u32>,
    pub sold: BTreeMap<String, u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Take {
    pub sku: String,
    pub quantity: u32,
}

impl Stock {
    pub fn new(available: &[(&str, u32)]) -> Self {
        let stock = Self::default();
        stock.books().available = available
            .iter()
            .map(|(s, n)| ((*s).to_owned(), *n))
            .collect();
        stock
    }

    pub fn books(&self) -> std::sync::MutexGuard<'_, StockBooks> {
        self.books.lock().expect("poisoned")
    }
}

fn add(books: &mut BTreeMap<String, u32>, sku: &str, n: u32) {
    *books.entry(sku.to_owned()).or_default() += n;
}

fn take(books: &mut BTreeMap<String, u32>, sku: &str, n: u32) {
    let left = books.entry(sku.to_owned()).or_default();
    *left = left.saturating_sub(n);
}

impl Resource for Stock {
    type Request = Take;
    type Hold = Take;

    async fn reserve(&self, t: Take, _: &TryContext) -> Result<Take, Refusal> {
        let mut books = self.books();
        let available = books.available.get(&t.sku).copied().unwrap_or(0);
        if t.quantity == 0 || available < t.quantity {
            return Err(Refusal::refused(format!(
                "{} {} wanted, {available} available",
                t.quantity, t.sku
            )));
        }
        take(&mut books.available, &t.sku, t.quantity);
        add(&mut books.held, &t.sku, t.quantity);
        Ok(t)
    }

    async fn confirm(&self, t: &Take) -> Result<(), Unavailable> {
        let busy = self
            .failing_confirms
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if busy.is_ok() {
            return Err(Unavailable("the stock ledger is busy".into()));
        }
        let mut books = self.books();
        take(&mut books.held, &t.sku, t.quantity);
        add(&mut books.sold, &t.sku, t.quantity);
        Ok(())
    }

    async fn release(&self, t: &Take) -> Result<(), Unavailable> {
        let mut books = self.books();
        take(&mut books.held, &t.sku, t.quantity);
        add(&mut books.available, &t.sku, t.quantity);
        Ok(())
    }

    fn restore(&self, holds: Vec<(HoldState, Take)>) {
        let mut books = self.books();
        for (state, t) in holds {
            match state {
                HoldState::Held => {
                    take(&mut books.available, &t.sku, t.quantity);
                    add(&mut books.held, &t.sku, t.quantity);
                }
                HoldState::Confirmed => {
                    take(&mut books.available, &t.sku, t.quantity);
                    add(&mut books.sold, &t.sku, t.quantity);
                }
                HoldState::Cancelled | HoldState::Expired => {}
            }
        }
    }
}

/// Payments: `{"account": "alice", "amount_cents": 1200}` holds money on an account.
#[derive(Clone, Default)]
pub struct Payments {
    books: Arc<Mutex<PaymentBooks>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PaymentBooks {
    /// What each account can still spend.
    pub balance: BTreeMap<String, u64>,
    pub held: BTreeMap<String, u64>,
    pub charged: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Charge {
    pub account: String,
    pub amount_cents: u64,
}

impl Payments {
    pub fn new(balances: &[(&str, u64)]) -> Self {
        let payments = Self::default();
        payments.books().balance = balances
            .iter()
            .map(|(a, n)| ((*a).to_owned(), *n))
            .collect();
        payments
    }

    pub fn books(&self) -> std::sync::MutexGuard<'_, PaymentBooks> {
        self.books.lock().expect("poisoned")
    }
}

fn move_cents(from: &mut BTreeMap<String, u64>, to: &mut BTreeMap<String, u64>, c: &Charge) {
    let left = from.entry(c.account.clone()).or_default();
    *left = left.saturating_sub(c.amount_cents);
    *to.entry(c.account.clone()).or_default() += c.amount_cents;
}

impl Resource for Payments {
    type Request = Charge;
    type Hold = Charge;

    async fn reserve(&self, c: Charge, _: &TryContext) -> Result<Charge, Refusal> {
        let books = &mut *self.books();
        let balance = books.balance.get(&c.account).copied().unwrap_or(0);
        if balance < c.amount_cents {
            return Err(Refusal::refused(format!(
                "card declined: {} has {balance} cents, {} asked",
                c.account, c.amount_cents
            )));
        }
        move_cents(&mut books.balance, &mut books.held, &c);
        Ok(c)
    }

    async fn confirm(&self, c: &Charge) -> Result<(), Unavailable> {
        let books = &mut *self.books();
        move_cents(&mut books.held, &mut books.charged, c);
        Ok(())
    }

    async fn release(&self, c: &Charge) -> Result<(), Unavailable> {
        let books = &mut *self.books();
        move_cents(&mut books.held, &mut books.balance, c);
        Ok(())
    }

    fn restore(&self, holds: Vec<(HoldState, Charge)>) {
        let books = &mut *self.books();
        for (state, c) in holds {
            match state {
                HoldState::Held => move_cents(&mut books.balance, &mut books.held, &c),
                HoldState::Confirmed => move_cents(&mut books.balance, &mut books.charged, &c),
                HoldState::Cancelled | HoldState::Expired => {}
            }
        }
    }
}

/// Orders: `{"order": "A-17", "total_cents": 1200}` records an order as pending; confirmed,
/// it is placed; released, it is dropped.
#[derive(Clone, Default)]
pub struct Orders {
    books: Arc<Mutex<BTreeMap<String, OrderState>>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderState {
    Pending,
    Placed,
    Dropped,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewOrder {
    pub order: String,
    pub total_cents: u64,
}

impl Orders {
    pub fn state(&self, order: &str) -> Option<OrderState> {
        self.books.lock().expect("poisoned").get(order).copied()
    }

    fn set(&self, order: &str, state: OrderState) {
        self.books
            .lock()
            .expect("poisoned")
            .insert(order.to_owned(), state);
    }
}

impl Resource for Orders {
    type Request = NewOrder;
    type Hold = NewOrder;

    async fn reserve(&self, o: NewOrder, _: &TryContext) -> Result<NewOrder, Refusal> {
        match self.state(&o.order) {
            Some(OrderState::Pending | OrderState::Placed) => Err(Refusal::refused(format!(
                "order {} exists already",
                o.order
            ))),
            _ => {
                self.set(&o.order, OrderState::Pending);
                Ok(o)
            }
        }
    }

    async fn confirm(&self, o: &NewOrder) -> Result<(), Unavailable> {
        self.set(&o.order, OrderState::Placed);
        Ok(())
    }

    async fn release(&self, o: &NewOrder) -> Result<(), Unavailable> {
        self.set(&o.order, OrderState::Dropped);
        Ok(())
    }

    fn restore(&self, holds: Vec<(HoldState, NewOrder)>) {
        for (state, o) in holds {
            let state = match state {
                HoldState::Held => OrderState::Pending,
                HoldState::Confirmed => OrderState::Placed,
                HoldState::Cancelled | HoldState::Expired => OrderState::Dropped,
            };
            self.set(&o.order, state);
        }
    }
}

/// Starts a participant for `resource`, its holds on sled under `data_dir` when given.
///
/// # Errors
/// When the store cannot be opened.
pub fn participant<R: Resource>(
    resource: R,
    hold_ttl: Duration,
    data_dir: Option<&Path>,
) -> Result<Participant, StoreError> {
    let builder = Participant::builder(resource).hold_ttl(hold_ttl);
    match data_dir {
        Some(dir) => builder.store(SledStore::open(dir)?).start(),
        None => builder.start(),
    }
}

/// A participant service, serving until stopped.
pub struct Service {
    pub url: String,
    pub participant: Participant,
    serving: Serving,
}

impl Service {
    /// Serves `app` (the participant's endpoint and whatever else) on `listen`.
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub async fn serve(
        participant: Participant,
        app: impl Endpoint + 'static,
        listen: SocketAddr,
    ) -> std::io::Result<Self> {
        let serving = Serving::start(app, listen).await?;
        Ok(Self {
            url: serving.url(),
            participant,
            serving,
        })
    }

    /// Where tries go.
    pub fn holds_url(&self) -> String {
        format!("{}/holds", self.url)
    }

    /// Stops serving and expiring, letting go of the store.
    ///
    /// # Errors
    /// When the server failed.
    pub async fn stop(self) -> std::io::Result<()> {
        self.serving.stop().await?;
        self.participant.shutdown().await;
        Ok(())
    }
}

/// The three services of the shop, each on its own port, sharing one view of the books.
pub struct Shop {
    pub orders: Orders,
    pub payments: Payments,
    pub stock: Stock,
    /// Orders, payments, stock.
    pub services: Vec<Service>,
    hold_ttl: Duration,
    data_dir: Option<PathBuf>,
    desk: CheckoutDesk,
}

/// Where a checkout reaches the coordinator, and the three services' try URLs.
#[derive(Clone)]
struct CheckoutDesk {
    coordinator: tcc_client::Client,
    try_urls: Arc<OnceLock<Vec<String>>>,
}

/// A checkout: an order, paid from an account, of some apples.
#[derive(Debug, Clone, Deserialize)]
pub struct Checkout {
    pub order: String,
    pub account: String,
    pub total_cents: u64,
    pub apples: u32,
}

/// `POST /checkout` on the orders service: 201 placed, 409 dropped (with the reason), 202
/// still under way, 503 when the coordinator cannot be reached.
#[handler]
async fn checkout(desk: Data<&CheckoutDesk>, Json(order): Json<Checkout>) -> poem::Response {
    let urls = desk.try_urls.get().map(Vec::as_slice).unwrap_or_default();
    let (status, answer) = match place(&desk.coordinator, urls, &order).await {
        Ok(Outcome::Confirmed(transaction)) => (
            StatusCode::CREATED,
            serde_json::json!({"order": order.order, "state": "placed", "transaction": transaction.id}),
        ),
        Ok(Outcome::Cancelled(gone)) => {
            // The participant that refused says why; else the coordinator's words.
            let why = gone
                .participants
                .iter()
                .find_map(|p| Some(format!("{}: {}", p.name, p.last_error.as_ref()?)))
                .unwrap_or(gone.detail);
            (
                StatusCode::CONFLICT,
                serde_json::json!({"order": order.order, "state": "dropped", "why": why}),
            )
        }
        Ok(Outcome::Open(reservation)) => (
            StatusCode::ACCEPTED,
            serde_json::json!({"order": order.order, "state": reservation.state, "reservation": reservation.id}),
        ),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"order": order.order, "error": e.to_string()}),
        ),
    };
    (status, Json(answer)).into_response()
}

/// Places `order` through the coordinator: one reservation over the order, its payment and
/// its stock, created under the order's id as `Idempotency-Key` (a checkout sent twice is
/// one reservation), confirmed once every try held. `coordinator` should wait
/// ([`tcc_client::Client::wait`]) so that the tries have answered when the create does.
///
/// # Errors
/// When the coordinator cannot be reached or refuses the request.
pub async fn place(
    coordinator: &tcc_client::Client,
    try_urls: &[String],
    order: &Checkout,
) -> Result<Outcome, tcc_client::Error> {
    let reservation = order_reservation(try_urls, order);
    let key = format!("order-{}", order.order);
    match coordinator.create_with_key(&key, &reservation).await? {
        Outcome::Open(reserved) if reserved.state == tcc_client::State::Reserved => {
            coordinator.confirm(&reserved.id).await
        }
        other => Ok(other),
    }
}

/// The reservation for one order: the order, its payment, its stock.
fn order_reservation(urls: &[String], o: &Checkout) -> NewReservation {
    let url = |i: usize| urls.get(i).cloned().unwrap_or_default();
    NewReservation::new()
        .timeout(Duration::from_secs(30))
        .participant(
            NewParticipant::try_at(
                url(0),
                serde_json::json!({"order": o.order, "total_cents": o.total_cents}),
            )
            .named("order"),
        )
        .participant(
            NewParticipant::try_at(
                url(1),
                serde_json::json!({"account": o.account, "amount_cents": o.total_cents}),
            )
            .named("payment"),
        )
        .participant(
            NewParticipant::try_at(
                url(2),
                serde_json::json!({"sku": "apple", "quantity": o.apples}),
            )
            .named("stock"),
        )
        .metadata("order", o.order.clone())
}

/// Where the example's services expect the coordinator.
pub const COORDINATOR: &str = "http://127.0.0.1:8080";

/// What the stock starts with.
pub const STOCK: [(&str, u32); 2] = [("apple", 10), ("pear", 5)];
/// What the accounts start with, in cents.
pub const BALANCES: [(&str, u64); 2] = [("alice", 5_000), ("bob", 300)];

#[derive(Clone)]
struct Books {
    payments: Payments,
    stock: Stock,
}

/// `GET /books`: balances, holds and sales, as each service sees them.
#[handler]
fn show_books(books: Data<&Books>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "payments": &*books.payments.books(),
        "stock": &*books.stock.books(),
    }))
}

impl Shop {
    /// Starts the three services on `ports` (0: any free port) on loopback, their holds on
    /// sled under `data_dir/{orders,payments,stock}` when given; checkouts go to the
    /// coordinator at [`COORDINATOR`].
    ///
    /// # Errors
    /// When a port cannot be bound or a store opened.
    pub async fn open(
        ports: [u16; 3],
        hold_ttl: Duration,
        data_dir: Option<&Path>,
    ) -> Result<Self, Box<dyn std::error::Error>> {
        Self::open_for(COORDINATOR, ports, hold_ttl, data_dir).await
    }

    /// As [`Shop::open`], checkouts going to the coordinator at `coordinator`.
    ///
    /// # Errors
    /// When a port cannot be bound, a store opened, or `coordinator` is not a URL.
    pub async fn open_for(
        coordinator: &str,
        ports: [u16; 3],
        hold_ttl: Duration,
        data_dir: Option<&Path>,
    ) -> Result<Self, Box<dyn std::error::Error>> {
        let coordinator = tcc_client::Client::new(coordinator)?.wait(Duration::from_secs(10));
        let mut shop = Self {
            orders: Orders::default(),
            payments: Payments::new(&BALANCES),
            stock: Stock::new(&STOCK),
            services: Vec::new(),
            hold_ttl,
            data_dir: data_dir.map(Path::to_path_buf),
            desk: CheckoutDesk {
                coordinator,
                try_urls: Arc::new(OnceLock::new()),
            },
        };
        for (index, port) in ports.into_iter().enumerate() {
            let service = shop.serve(index, ([127, 0, 0, 1], port).into()).await?;
            shop.services.push(service);
        }
        let _ = shop.desk.try_urls.set(shop.try_urls());
        Ok(shop)
    }

    async fn serve(
        &self,
        index: usize,
        listen: SocketAddr,
    ) -> Result<Service, Box<dyn std::error::Error>> {
        let name = ["orders", "payments", "stock"][index];
        let dir = self.data_dir.as_ref().map(|d| d.join(name));
        let (ttl, dir) = (self.hold_ttl, dir.as_deref());
        let participant = match index {
            0 => participant(self.orders.clone(), ttl, dir)?,
            1 => participant(self.payments.clone(), ttl, dir)?,
            _ => participant(self.stock.clone(), ttl, dir)?,
        };
        let mut routes = Route::new()
            .nest("/", participant.endpoint())
            .at("/books", get(show_books));
        if index == 0 {
            routes = routes.at("/checkout", post(checkout));
        }
        let app = routes
            .data(Books {
                payments: self.payments.clone(),
                stock: self.stock.clone(),
            })
            .data(self.desk.clone());
        Ok(Service::serve(participant, app, listen).await?)
    }

    /// Stops the stock service and starts it again on the same port with fresh books,
    /// which it rebuilds from the holds its store kept.
    ///
    /// # Errors
    /// When the port cannot be bound again or the store opened.
    pub async fn restart_stock(&mut self) -> Result<(), Box<dyn std::error::Error>> {
        let old = self.services.pop().expect("the stock service runs");
        let listen: SocketAddr = old.url.trim_start_matches("http://").parse()?;
        old.stop().await?;
        self.stock = Stock::new(&STOCK);
        let service = self.serve(2, listen).await?;
        self.services.push(service);
        Ok(())
    }

    /// Where each service takes tries: orders, payments, stock.
    pub fn try_urls(&self) -> Vec<String> {
        self.services.iter().map(Service::holds_url).collect()
    }

    /// The reservation for one order: the order, its payment, its stock.
    pub fn reservation(
        &self,
        order: &str,
        account: &str,
        cents: u64,
        apples: u32,
    ) -> NewReservation {
        let wanted = Checkout {
            order: order.to_owned(),
            account: account.to_owned(),
            total_cents: cents,
            apples,
        };
        order_reservation(&self.try_urls(), &wanted)
    }

    /// The orders service's checkout URL.
    pub fn checkout_url(&self) -> String {
        format!("{}/checkout", self.services[0].url)
    }

    /// Stops the three services.
    ///
    /// # Errors
    /// When a server failed.
    pub async fn close(self) -> std::io::Result<()> {
        for service in self.services {
            service.stop().await?;
        }
        Ok(())
    }
}

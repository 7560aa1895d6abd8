//! The participant kit (`participant/`, crate tcc-participant): each guarantee it gives a
//! service, over real HTTP against a kit served on a loopback port.

mod contract;
mod fake;
mod guarantees;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use poem::{Endpoint, EndpointExt, Route};
use serde::{Deserialize, Serialize};
use tcc_participant::{Participant, Refusal, Resource, Serving, TryContext, Unavailable};
use tokio::sync::Semaphore;

/// What the shelf was asked to do.
#[derive(Debug, Default)]
pub struct Counts {
    pub reserves: AtomicUsize,
    pub confirms: AtomicUsize,
    pub releases: AtomicUsize,
}

impl Counts {
    pub fn reserves(&self) -> usize {
        self.reserves.load(Ordering::SeqCst)
    }
    pub fn confirms(&self) -> usize {
        self.confirms.load(Ordering::SeqCst)
    }
    pub fn releases(&self) -> usize {
        self.releases.load(Ordering::SeqCst)
    }
}

/// A test resource that counts its calls; its reserve can be held at a gate.
#[derive(Clone, Default)]
pub struct Shelf {
    pub counts: Arc<Counts>,
    /// When set, each reserve waits for a permit.
    pub gate: Option<Arc<Semaphore>>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Take {
    pub sku: String,
    pub quantity: u32,
}

impl Resource for Shelf {
    type Request = Take;
    type Hold = Take;

    async fn reserve(&self, take: Take, _: &TryContext) -> Result<Take, Refusal> {
        self.counts.reserves.fetch_add(1, Ordering::SeqCst);
        if let Some(gate) = &self.gate {
            gate.acquire().await.expect("the gate stays open").forget();
        }
        if take.sku == "unobtainium" {
            return Err(Refusal::refused("out of unobtainium"));
        }
        Ok(take)
    }

    async fn confirm(&self, _: &Take) -> Result<(), Unavailable> {
        self.counts.confirms.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn release(&self, _: &Take) -> Result<(), Unavailable> {
        self.counts.releases.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// A participant served on a free loopback port, counting the requests that reached it.
pub struct Served {
    pub url: String,
    pub participant: Participant,
    pub arrivals: Arc<AtomicUsize>,
    serving: Serving,
}

impl Served {
    pub async fn start(participant: Participant) -> Self {
        let arrivals = Arc::new(AtomicUsize::new(0));
        let counted = arrivals.clone();
        let app = Route::new()
            .nest("/", participant.endpoint())
            .around(move |next, req| {
                counted.fetch_add(1, Ordering::SeqCst);
                async move { Ok(next.get_response(req).await) }
            });
        let serving = Serving::start(app, ([127, 0, 0, 1], 0).into())
            .await
            .unwrap();
        Self {
            url: serving.url(),
            participant,
            arrivals,
            serving,
        }
    }

    /// Stops serving and the expiry loop, and lets go of the store.
    pub async fn stop(self) {
        self.serving.stop().await.unwrap();
        self.participant.shutdown().await;
    }

    pub fn holds_url(&self) -> String {
        format!("{}/holds", self.url)
    }
}

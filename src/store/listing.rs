//! Listing reservations newest first, filtered: what a page holds and where the next one
//! starts, the same for both stores. Each store only feeds records, newest first, to a
//! [`Page`] until it says the page is complete.
//!
//! A filter on participant host or text cannot use an index, so one page examines at most
//! [`ListQuery::max_scan`] records: a page may then hold fewer than `limit` reservations (or
//! none) and still point to the next one, and a client keeps following `next`.

use chrono::{DateTime, Utc};

use crate::domain::{Participant, Reservation, ReservationId, State};

/// Records one listing page examines at most, unless the query says otherwise.
pub const MAX_SCAN: usize = 10_000;

/// Which reservations a listing shows, newest first.
#[derive(Debug, Clone)]
pub struct ListQuery {
    /// Only reservations strictly older than this one (the cursor of the previous page).
    pub before: Option<ReservationId>,
    /// Most reservations on the page.
    pub limit: usize,
    /// Only reservations in this state.
    pub state: Option<State>,
    /// Only reservations with a participant whose `host[:port]` contains this
    /// (case-insensitive).
    pub participant_host: Option<String>,
    /// Only reservations whose id contains this (the dashboard shows ids whole; their last
    /// characters are the random part), or with a metadata value whose JSON text contains it
    /// (case-insensitive).
    pub text: Option<String>,
    /// Only reservations created at or after this instant.
    pub created_after: Option<DateTime<Utc>>,
    /// Only reservations created before this instant.
    pub created_before: Option<DateTime<Utc>>,
    /// Records examined at most for this page.
    pub max_scan: usize,
}

/// How far an id's own instant may be from its reservation's `created_at` (both are taken
/// as it is created): a time range's bounds on ids are widened by this much, and the
/// reservations themselves decide.
const ID_CLOCK_MARGIN: chrono::Duration = chrono::Duration::seconds(1);

impl ListQuery {
    /// The newest `limit` reservations, unfiltered.
    #[must_use]
    pub fn newest(limit: usize) -> Self {
        Self {
            before: None,
            limit,
            state: None,
            participant_host: None,
            text: None,
            created_after: None,
            created_before: None,
            max_scan: MAX_SCAN,
        }
    }

    /// Where a scan newest first starts: the cursor, or the first id made after the end of
    /// the time range, whichever is older.
    #[must_use]
    pub fn start_before(&self) -> Option<ReservationId> {
        let by_time = self
            .created_before
            .map(|t| ReservationId::first_made_at(t + ID_CLOCK_MARGIN));
        match (self.before, by_time) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether more than the state is filtered (PostgreSQL filters the state itself).
    #[must_use]
    pub fn filters_content(&self) -> bool {
        self.participant_host.is_some()
            || self.text.is_some()
            || self.created_after.is_some()
            || self.created_before.is_some()
    }

    /// Whether `r` belongs on the page.
    #[must_use]
    pub fn matches(&self, r: &Reservation) -> bool {
        if self.state.is_some_and(|s| r.state() != s) {
            return false;
        }
        if self.created_after.is_some_and(|t| r.created_at() < t)
            || self.created_before.is_some_and(|t| r.created_at() >= t)
        {
            return false;
        }
        if let Some(host) = &self.participant_host {
            if !r.participants().iter().any(|p| is_on_host(p, host)) {
                return false;
            }
        }
        if let Some(text) = &self.text {
            let text = text.to_lowercase();
            let found = r.id().to_string().contains(&text)
                || r.metadata().values().any(|v| {
                    serde_json::to_string(v).is_ok_and(|j| j.to_lowercase().contains(&text))
                });
            if !found {
                return false;
            }
        }
        true
    }
}

/// Whether the participant's try URL or link has a `host[:port]` containing `host`
/// (case-insensitive): `stock` matches `stock.internal:8080`.
#[must_use]
pub fn is_on_host(p: &Participant, host: &str) -> bool {
    let host = host.to_lowercase();
    let urls = [p.try_request().map(|t| &t.url), p.link().map(|l| &l.uri)];
    urls.into_iter().flatten().any(|u| {
        let u = u.as_url();
        let at = match (u.host_str(), u.port()) {
            (Some(h), Some(port)) => format!("{h}:{port}"),
            (Some(h), None) => h.to_owned(),
            (None, _) => String::new(),
        };
        at.to_lowercase().contains(&host)
    })
}

/// One page being filled from records offered newest first.
#[derive(Debug)]
pub struct Page<'q> {
    query: &'q ListQuery,
    items: Vec<Reservation>,
    scanned: usize,
}

/// What a store does after offering a record.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Offer the next older record.
    More,
    /// The page is complete: more may follow, older than this id.
    Done(ReservationId),
    /// Nothing older can match (the time range starts after it): the page is the last.
    End,
}

impl<'q> Page<'q> {
    #[must_use]
    pub fn new(query: &'q ListQuery) -> Self {
        Self {
            query,
            items: Vec::with_capacity(query.limit.min(1024)),
            scanned: 0,
        }
    }

    /// Takes the next older record.
    pub fn offer(&mut self, r: Reservation) -> Next {
        self.scanned += 1;
        let id = r.id();
        let too_old = |after: DateTime<Utc>| {
            id.created_at()
                .is_some_and(|made| made < after - ID_CLOCK_MARGIN)
        };
        if self.query.created_after.is_some_and(too_old) {
            return Next::End;
        }
        if self.query.matches(&r) {
            if self.items.len() == self.query.limit {
                // One more matches: the page is full and a next one has something.
                return Next::Done(self.items.last().map_or(id, Reservation::id));
            }
            self.items.push(r);
        }
        if self.scanned >= self.query.max_scan {
            return Next::Done(id);
        }
        Next::More
    }

    /// The page, and the cursor of the next one (`None`: nothing older matches).
    #[must_use]
    pub fn finish(self, next: Option<ReservationId>) -> (Vec<Reservation>, Option<ReservationId>) {
        (self.items, next)
    }
}

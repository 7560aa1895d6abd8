//! The rules of the participant contract (`openapi/participant.yaml`), each checked by
//! calls a coordinator could make, in an order where each rule needs only holds of its own.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use url::Url;

use crate::call::{asks_again, media_type, Caller, Exchange, Link};
use crate::report::{Report, RuleResult, Verdict};
use crate::{Expiry, Options};

/// Leeway for the clocks of the checker and the service.
const CLOCK_LEEWAY: Duration = Duration::from_secs(1);
/// The deadline sent with every try but the expiry rule's: far enough that no hold expires
/// while the checker runs.
const FAR_DEADLINE: Duration = Duration::from_secs(600);

/// A rule of the participant contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rule {
    TryAnswersLink,
    LinkAgrees,
    ExpiresInFuture,
    TryRepeat,
    KeyReuse,
    ConfirmIdempotent,
    CancelIdempotent,
    CancelAfterConfirm,
    ConfirmAfterCancel,
    UnknownLink,
    ConfirmCancelRace,
    HoldExpires,
}

impl Rule {
    /// Every rule, in the order they are checked and reported.
    pub const ALL: [Rule; 12] = [
        Rule::TryAnswersLink,
        Rule::LinkAgrees,
        Rule::ExpiresInFuture,
        Rule::TryRepeat,
        Rule::KeyReuse,
        Rule::ConfirmIdempotent,
        Rule::CancelAfterConfirm,
        Rule::CancelIdempotent,
        Rule::ConfirmAfterCancel,
        Rule::UnknownLink,
        Rule::ConfirmCancelRace,
        Rule::HoldExpires,
    ];

    /// The rule's name, as reports and `--junit` show it.
    #[must_use]
    pub fn id(self) -> &'static str {
        match self {
            Rule::TryAnswersLink => "try-answers-link",
            Rule::LinkAgrees => "link-agrees",
            Rule::ExpiresInFuture => "expires-in-future",
            Rule::TryRepeat => "try-repeat-same-link",
            Rule::KeyReuse => "key-reuse-refused",
            Rule::ConfirmIdempotent => "confirm-idempotent",
            Rule::CancelIdempotent => "cancel-idempotent",
            Rule::CancelAfterConfirm => "cancel-after-confirm-refused",
            Rule::ConfirmAfterCancel => "confirm-after-cancel-gone",
            Rule::UnknownLink => "unknown-link-404",
            Rule::ConfirmCancelRace => "confirm-cancel-race",
            Rule::HoldExpires => "hold-expires",
        }
    }

    /// What the rule asks, in one sentence.
    #[must_use]
    pub fn asks(self) -> &'static str {
        match self {
            Rule::TryAnswersLink => "a try answers 201 (or 200) with the link in a JSON body's `uri` or in `Location`",
            Rule::LinkAgrees => "`Location` and the body's `uri` name the same link",
            Rule::ExpiresInFuture => "the body's `expires` is an RFC 3339 time after the try was sent",
            Rule::TryRepeat => "a try repeated with the same Idempotency-Key and body gets the same link, one after the other and several at once",
            Rule::KeyReuse => "the same Idempotency-Key with another body is refused with a 4xx (not 408 or 429)",
            Rule::ConfirmIdempotent => "PUT confirms (200 or 204) and a repeated PUT answers the same",
            Rule::CancelIdempotent => "DELETE cancels (200 or 204); a repeated DELETE answers 200, 204, 404 or 410",
            Rule::CancelAfterConfirm => "DELETE on a confirmed link is refused with 409",
            Rule::ConfirmAfterCancel => "PUT on a cancelled link answers 404 or 410",
            Rule::UnknownLink => "PUT and DELETE on a link the service never made answer 404 or 410",
            Rule::ConfirmCancelRace => "a PUT racing a DELETE on one hold ends as if one came first: exactly one of them wins",
            Rule::HoldExpires => "`expires` is no later than TCC-Deadline plus the service's margin, and once that has passed a PUT answers 404 or 410",
        }
    }
}

/// One run against one participant.
struct Run {
    caller: Caller,
    options: Options,
    /// Every link a try answered with, to cancel at the end.
    made: Mutex<Vec<Url>>,
    /// Links this run settled itself (a final answer to its PUT or DELETE).
    settled: Mutex<HashSet<Url>>,
}

/// How a confirm and a cancel of one hold ended, as (PUT, DELETE) classes.
type Outcome = (String, String);

/// The run's first try: its key, when it was sent, and what came back.
struct FirstTry {
    key: String,
    sent_at: DateTime<Utc>,
    exchange: Exchange,
}

/// Runs every rule against the participant `options` name.
///
/// # Errors
/// When no HTTP client can be made (the TLS set-up fails).
pub async fn check(options: Options) -> Result<Report, String> {
    let started = Instant::now();
    let run = Arc::new(Run {
        caller: Caller::new(&options)?,
        options,
        made: Mutex::new(Vec::new()),
        settled: Mutex::new(HashSet::new()),
    });
    // The first try, before anything else: a service that does not answer at all is not
    // checked (exit 2), it is not there.
    let key = new_key();
    let sent_at = Utc::now();
    let first = run.try_hold(&key, &run.options.body, far()).await;
    if let Err(why) = &first.answer {
        return Err(format!(
            "nothing answered a try at {} ({why}; sent {} times over {:.0} s): is the service running and listening there?",
            run.options.try_url,
            first.attempts,
            run.options.patience.as_secs_f64()
        ));
    }
    let expiry = run.options.expiry.map(|expiry| {
        let run = run.clone();
        tokio::spawn(async move {
            let at = Instant::now();
            (run.hold_expires(expiry).await, at.elapsed())
        })
    });
    let first = FirstTry {
        key,
        sent_at,
        exchange: first,
    };
    let mut results = run.clone().sequence(first).await;
    let expiry = match expiry {
        Some(task) => {
            let (verdict, took) = task.await.expect("the expiry rule does not panic");
            RuleResult::new(Rule::HoldExpires, verdict, took)
        }
        None => RuleResult::new(
            Rule::HoldExpires,
            Verdict::Skipped("opt-in: give --expiry-margin, the margin the service keeps a hold past TCC-Deadline".into()),
            Duration::ZERO,
        ),
    };
    results.push(expiry);
    let left_behind = run.clean_up().await;
    Ok(Report {
        try_url: run.options.try_url.clone(),
        results,
        left_behind,
        took: started.elapsed(),
    })
}

impl Run {
    /// Every rule but the expiry rule, one after the other.
    async fn sequence(self: Arc<Self>, first: FirstTry) -> Vec<RuleResult> {
        let mut results = Vec::new();
        let mut clock = Instant::now();
        let mut judge = |rule: Rule, verdict: Verdict, results: &mut Vec<RuleResult>| {
            results.push(RuleResult::new(rule, verdict, clock.elapsed()));
            clock = Instant::now();
        };

        let FirstTry {
            key,
            sent_at,
            exchange: first,
        } = first;
        let link = Link::of(&self.options.try_url, &first);
        judge(
            Rule::TryAnswersLink,
            try_answers_link(&first, &link),
            &mut results,
        );
        let Ok(link) = link else {
            for rule in &Rule::ALL[1..Rule::ALL.len() - 1] {
                let why = "needs a link from a try: see try-answers-link".to_owned();
                judge(*rule, Verdict::Skipped(why), &mut results);
            }
            return results;
        };
        judge(
            Rule::LinkAgrees,
            self.link_agrees(&first, &link),
            &mut results,
        );
        judge(
            Rule::ExpiresInFuture,
            expires_in_future(&first, &link, sent_at),
            &mut results,
        );
        judge(
            Rule::TryRepeat,
            self.try_repeat(&key, &link).await,
            &mut results,
        );
        judge(
            Rule::KeyReuse,
            self.key_reuse(&key, &first).await,
            &mut results,
        );

        let (verdict, confirmed) = self.confirm_idempotent(&link.url).await;
        judge(Rule::ConfirmIdempotent, verdict, &mut results);
        let after_confirm = self.cancel(&link.url).await;
        // A service may not cancel explicitly at all (405 to DELETE: its holds expire on their
        // own); a held hold's DELETE tells.
        let (verdict, cancelled, explicit) = self.cancel_idempotent().await;
        judge(
            Rule::CancelAfterConfirm,
            cancel_after_confirm(&after_confirm, explicit),
            &mut results,
        );
        judge(Rule::CancelIdempotent, verdict, &mut results);
        let (verdict, after_cancel) = match &cancelled {
            Some((cancel, link)) => {
                let after = self.confirm(link).await;
                (confirm_after_cancel(&after), Some((cancel.clone(), after)))
            }
            None => (
                Verdict::Skipped("needs a cancelled hold: see cancel-idempotent".into()),
                None,
            ),
        };
        judge(Rule::ConfirmAfterCancel, verdict, &mut results);
        judge(
            Rule::UnknownLink,
            self.unknown_link(&link.url, explicit).await,
            &mut results,
        );

        // How this service answers the two orders, one after the other: a race must end as one.
        let mut serial = Vec::new();
        if let Some(put) = &confirmed {
            serial.push((class(put), class(&after_confirm)));
        }
        if let Some((cancel, put)) = &after_cancel {
            serial.push((class(put), class(cancel)));
        }
        judge(
            Rule::ConfirmCancelRace,
            self.race(&serial).await,
            &mut results,
        );
        results
    }

    /// A try that records the link it answered with, to cancel at the end.
    async fn try_hold(
        &self,
        key: &str,
        body: &serde_json::Value,
        deadline: DateTime<Utc>,
    ) -> Exchange {
        let exchange = self
            .caller
            .try_hold(&self.options.try_url, key, body, deadline)
            .await;
        if let Ok(link) = Link::of(&self.options.try_url, &exchange) {
            let mut made = self.made.lock().expect("not poisoned");
            if !made.contains(&link.url) {
                made.push(link.url);
            }
        }
        exchange
    }

    async fn confirm(&self, link: &Url) -> Exchange {
        let exchange = self.caller.confirm(link).await;
        self.note_settled(link, &exchange);
        exchange
    }

    async fn cancel(&self, link: &Url) -> Exchange {
        let exchange = self.caller.cancel(link).await;
        self.note_settled(link, &exchange);
        exchange
    }

    fn note_settled(&self, link: &Url, exchange: &Exchange) {
        if exchange.status().is_some_and(|s| s.is_success()) {
            self.settled
                .lock()
                .expect("not poisoned")
                .insert(link.clone());
        }
    }

    /// A hold of its own for a rule: the link, or the rule's verdict when none could be made.
    async fn new_hold(&self) -> Result<Url, Verdict> {
        let exchange = self.try_hold(&new_key(), &self.options.body, far()).await;
        Link::of(&self.options.try_url, &exchange)
            .map(|link| link.url)
            .map_err(|why| {
                Verdict::broken(
                    format!(
                        "could not make a hold for this rule: {why} (the checker makes many holds \
                         from --body: give a body the service can hold that many times, or fewer --races)"
                    ),
                    vec![exchange],
                )
            })
    }

    fn link_agrees(&self, first: &Exchange, link: &Link) -> Verdict {
        let (Some(location), Some(uri)) = (&link.location, &link.body_uri) else {
            return Verdict::held("only one of `Location` and `uri` is given: nothing to compare");
        };
        let base = &self.options.try_url;
        match (base.join(location), base.join(uri)) {
            (Ok(a), Ok(b)) if a == b => Verdict::Held(None),
            (Ok(a), Ok(b)) => Verdict::broken(
                format!("`Location` names {a} but the body's `uri` names {b} (the coordinator uses `uri`)"),
                vec![first.clone()],
            ),
            _ => Verdict::broken(
                format!("`Location` ({location}) or `uri` ({uri}) is not a URL"),
                vec![first.clone()],
            ),
        }
    }

    async fn try_repeat(&self, key: &str, link: &Link) -> Verdict {
        let again = self.try_hold(key, &self.options.body, far()).await;
        match Link::of(&self.options.try_url, &again) {
            Ok(second) if second.url == link.url && is_try_success(&again) => {}
            Ok(second) if second.url != link.url => {
                return Verdict::broken(
                    format!(
                        "the repeat got another link ({}, the first try got {}): a second hold",
                        second.url, link.url
                    ),
                    vec![again],
                );
            }
            Ok(_) => {
                return Verdict::broken(
                    format!(
                        "the repeat answered {}: a repeat answers 200 or 201",
                        again.outcome()
                    ),
                    vec![again],
                );
            }
            Err(why) => {
                return Verdict::broken(format!("the repeat got no link: {why}"), vec![again]);
            }
        }
        // Several at once, with a key nobody used: each arrives while the others still run.
        let key = new_key();
        let tries = (0..self.options.concurrent_repeats)
            .map(|_| self.try_hold(&key, &self.options.body, far()));
        let answers = futures_util::future::join_all(tries).await;
        let mut links: Vec<Url> = Vec::new();
        for answer in &answers {
            match Link::of(&self.options.try_url, answer) {
                Ok(link) if is_try_success(answer) => {
                    if !links.contains(&link.url) {
                        links.push(link.url);
                    }
                }
                Ok(_) | Err(_) => {
                    return Verdict::broken(
                        format!(
                            "of {} tries sent at once with one key, one answered {}",
                            answers.len(),
                            answer.outcome()
                        ),
                        vec![answer.clone()],
                    );
                }
            }
        }
        if links.len() > 1 {
            let shown: Vec<Exchange> = answers
                .iter()
                .filter(|a| Link::of(&self.options.try_url, a).is_ok())
                .take(2)
                .cloned()
                .collect();
            return Verdict::broken(
                format!(
                    "{} tries sent at once with one key and body got {} different links: {} holds",
                    answers.len(),
                    links.len(),
                    links.len()
                ),
                distinct_links(&self.options.try_url, shown),
            );
        }
        Verdict::held(format!(
            "one repeat after the first, then {} at once with another key: one link each",
            answers.len()
        ))
    }

    async fn key_reuse(&self, key: &str, first: &Exchange) -> Verdict {
        let other = self
            .options
            .other_body
            .clone()
            .unwrap_or_else(|| another_body(&self.options.body));
        let reused = self.try_hold(key, &other, far()).await;
        let said = reused.answer.as_ref().map(reason).unwrap_or_default();
        match reused.status() {
            Some(s) if s.is_client_error() && !asks_again(s) => Verdict::held(format!(
                "{other} refused with {s} (\"{said}\"); if that is about the body itself, \
                 not the reused key, give --other-body a body the service would hold"
            )),
            Some(s) if s.is_success() => Verdict::broken(
                format!("the key's first try had another body, yet this one answered {s}: it must be refused (422)"),
                vec![first.clone(), reused],
            ),
            _ => Verdict::broken(
                format!("answered {}: a reused key with another body is refused with a 4xx other than 408 and 429", reused.outcome()),
                vec![first.clone(), reused],
            ),
        }
    }

    /// PUT twice; the first PUT's exchange when it had a final answer.
    async fn confirm_idempotent(&self, link: &Url) -> (Verdict, Option<Exchange>) {
        let first = self.confirm(link).await;
        if !is_decision_success(&first) {
            let verdict = Verdict::broken(
                format!(
                    "PUT on a held link answered {}: a confirm answers 200 or 204",
                    first.outcome()
                ),
                vec![first.clone()],
            );
            return (verdict, first.status().map(|_| first));
        }
        let again = self.confirm(link).await;
        let verdict = if is_decision_success(&again) {
            Verdict::Held(None)
        } else {
            Verdict::broken(
                format!(
                    "the repeated PUT answered {}: confirm is idempotent (200 or 204 again)",
                    again.outcome()
                ),
                vec![first.clone(), again],
            )
        };
        (verdict, Some(first))
    }

    /// DELETE twice on a new hold: the verdict, the first DELETE and the link when it
    /// cancelled, and whether the service cancels explicitly at all (not 405).
    async fn cancel_idempotent(&self) -> (Verdict, Option<(Exchange, Url)>, bool) {
        let link = match self.new_hold().await {
            Ok(link) => link,
            Err(verdict) => return (verdict, None, true),
        };
        let first = self.cancel(&link).await;
        if first.status() == Some(StatusCode::METHOD_NOT_ALLOWED) {
            let why =
                "the service does not cancel explicitly (405 to DELETE): its holds expire on \
                       their own; check that with --expiry-margin";
            return (Verdict::Skipped(why.into()), None, false);
        }
        if !is_decision_success(&first) {
            let verdict = Verdict::broken(
                format!(
                    "DELETE on a held link answered {}: a cancel answers 200 or 204",
                    first.outcome()
                ),
                vec![first],
            );
            return (verdict, None, true);
        }
        let again = self.cancel(&link).await;
        let fine = again
            .status()
            .is_some_and(|s| s.is_success() || s == StatusCode::NOT_FOUND || s == StatusCode::GONE);
        let verdict = if fine {
            Verdict::Held(None)
        } else {
            Verdict::broken(
                format!(
                    "the repeated DELETE answered {}: cancel is idempotent (200, 204, 404 or 410)",
                    again.outcome()
                ),
                vec![first.clone(), again],
            )
        };
        (verdict, Some((first, link)), true)
    }

    /// PUT and DELETE on a made-up link; a service that does not cancel explicitly may
    /// answer the DELETE 405.
    async fn unknown_link(&self, link: &Url, explicit: bool) -> Verdict {
        let mut unknown = link.clone();
        let made_up = format!("tcc-check-unknown-{}", uuid::Uuid::new_v4().simple());
        match unknown.path_segments_mut() {
            Ok(mut segments) => {
                segments.pop_if_empty().pop().push(&made_up);
            }
            Err(()) => return Verdict::Skipped(format!("the link {link} has no path to change")),
        }
        let put = self.caller.confirm(&unknown).await;
        let delete = self.caller.cancel(&unknown).await;
        let mut broken = Vec::new();
        if !is_gone(&put) {
            broken.push(put.clone());
        }
        if !is_gone(&delete)
            && (explicit || delete.status() != Some(StatusCode::METHOD_NOT_ALLOWED))
        {
            broken.push(delete.clone());
        }
        if broken.is_empty() {
            Verdict::Held(None)
        } else {
            let answers: Vec<String> = broken
                .iter()
                .map(|e| format!("{} answered {}", e.method, e.outcome()))
                .collect();
            Verdict::broken(
                format!(
                    "on a link the service never made, {}",
                    answers.join(" and ")
                ),
                broken,
            )
        }
    }

    /// PUT and DELETE at once on `races` holds; each must end as one of `serial`.
    async fn race(&self, serial: &[Outcome]) -> Verdict {
        let mut confirms_won = 0;
        let mut cancels_won = 0;
        for _ in 0..self.options.races {
            let link = match self.new_hold().await {
                Ok(link) => link,
                Err(verdict) => return verdict,
            };
            let (put, delete) = tokio::join!(self.confirm(&link), self.cancel(&link));
            let outcome = (class(&put), class(&delete));
            if !serial.contains(&outcome) {
                let orders: Vec<String> = serial
                    .iter()
                    .map(|(p, d)| format!("PUT {p} and DELETE {d}"))
                    .collect();
                let both = put.status().is_some_and(|s| s.is_success())
                    && delete.status().is_some_and(|s| s.is_success());
                return Verdict::broken(
                    format!(
                        "{link}: PUT answered {} and DELETE answered {}{}; one after the other this service answers {}",
                        put.outcome(),
                        delete.outcome(),
                        if both { ": both won" } else { "" },
                        if orders.is_empty() { "nothing final".to_owned() } else { orders.join(", or ") },
                    ),
                    vec![put, delete],
                );
            }
            if put.status().is_some_and(|s| s.is_success()) {
                confirms_won += 1;
            } else {
                cancels_won += 1;
            }
        }
        Verdict::held(format!(
            "{} holds raced: the confirm won {confirms_won}, the cancel {cancels_won}",
            self.options.races
        ))
    }

    /// The opt-in rule: a hold made with a near deadline is gone once the margin has passed.
    async fn hold_expires(&self, expiry: Expiry) -> Verdict {
        let deadline = Utc::now() + expiry.deadline_in;
        let answer = self
            .try_hold(&new_key(), &self.options.body, deadline)
            .await;
        let link = match Link::of(&self.options.try_url, &answer) {
            Ok(link) => link,
            Err(why) => {
                return Verdict::broken(
                    format!("could not make a hold for this rule: {why}"),
                    vec![answer],
                );
            }
        };
        let latest = deadline + expiry.margin;
        if let Some(expires) = link
            .expires
            .as_deref()
            .and_then(|e| DateTime::parse_from_rfc3339(e).ok())
        {
            if expires.with_timezone(&Utc) > latest + CLOCK_LEEWAY {
                return Verdict::broken(
                    format!(
                        "`expires` is {expires}, later than TCC-Deadline ({}) plus the margin of {}",
                        deadline.to_rfc3339(),
                        humantime::format_duration(expiry.margin)
                    ),
                    vec![answer],
                );
            }
        }
        let wait = (latest + CLOCK_LEEWAY - Utc::now())
            .to_std()
            .unwrap_or_default();
        tokio::time::sleep(wait).await;
        let put = self.confirm(&link.url).await;
        if is_gone(&put) {
            Verdict::held(format!(
                "the hold was gone {} after its deadline",
                humantime::format_duration(expiry.margin + CLOCK_LEEWAY)
            ))
        } else {
            Verdict::broken(
                format!(
                    "{} after TCC-Deadline (the margin of {} and a second), PUT answered {}: the hold outlived its deadline",
                    humantime::format_duration(expiry.margin + CLOCK_LEEWAY),
                    humantime::format_duration(expiry.margin),
                    put.outcome()
                ),
                vec![answer, put],
            )
        }
    }

    /// Cancels every hold this run made and did not settle; says which could not be.
    async fn clean_up(&self) -> Vec<String> {
        let made = self.made.lock().expect("not poisoned").clone();
        let settled = self.settled.lock().expect("not poisoned").clone();
        let mut left = Vec::new();
        for link in made.into_iter().filter(|l| !settled.contains(l)) {
            let answer = self.caller.cancel(&link).await;
            let done = answer.status().is_some_and(|s| {
                s.is_success()
                    || s == StatusCode::NOT_FOUND
                    || s == StatusCode::GONE
                    || s == StatusCode::CONFLICT
                    || s == StatusCode::METHOD_NOT_ALLOWED
            });
            if !done {
                left.push(format!("{link}: DELETE answered {}", answer.outcome()));
            }
        }
        left
    }
}

/// What an answer says of itself: a problem's `detail` (or `title`), else its first line;
/// at most 160 characters.
fn reason(answer: &crate::call::Answer) -> String {
    let json: Option<serde_json::Value> = serde_json::from_str(&answer.body).ok();
    let said = json
        .as_ref()
        .and_then(|j| j.get("detail").or_else(|| j.get("title")))
        .and_then(serde_json::Value::as_str)
        .unwrap_or_else(|| answer.body.lines().next().unwrap_or(""));
    said.chars().take(160).collect()
}

fn try_answers_link(first: &Exchange, link: &Result<Link, String>) -> Verdict {
    if let Err(why) = link {
        return Verdict::broken(why.clone(), vec![first.clone()]);
    }
    if !is_try_success(first) {
        return Verdict::broken(
            format!(
                "a first try answered {}: a try answers 201 (or 200)",
                first.outcome()
            ),
            vec![first.clone()],
        );
    }
    let has_body = first.answer.as_ref().is_ok_and(|a| !a.body.is_empty());
    if has_body {
        let media = media_type(first);
        let json = media.as_deref().is_some_and(|m| {
            m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
        });
        if !json {
            return Verdict::broken(
                format!(
                    "the link's body is sent as {}: it must be application/json",
                    media.unwrap_or_else(|| "no Content-Type".into())
                ),
                vec![first.clone()],
            );
        }
    }
    Verdict::Held(None)
}

fn expires_in_future(first: &Exchange, link: &Link, sent_at: DateTime<Utc>) -> Verdict {
    let Some(written) = &link.expires else {
        return Verdict::held(
            "no `expires` given: the coordinator assumes the link lives until its deadline",
        );
    };
    match DateTime::parse_from_rfc3339(written) {
        Ok(expires) if expires.with_timezone(&Utc) + CLOCK_LEEWAY > sent_at => Verdict::Held(None),
        Ok(_) => Verdict::broken(
            format!(
                "`expires` is {written}, before the try was sent ({})",
                sent_at.to_rfc3339()
            ),
            vec![first.clone()],
        ),
        Err(e) => Verdict::broken(
            format!("`expires` ({written}) is not an RFC 3339 time: {e}"),
            vec![first.clone()],
        ),
    }
}

fn cancel_after_confirm(delete: &Exchange, explicit: bool) -> Verdict {
    if delete.status() == Some(StatusCode::CONFLICT) {
        Verdict::Held(None)
    } else if !explicit && delete.status() == Some(StatusCode::METHOD_NOT_ALLOWED) {
        Verdict::held("405: the service does not cancel explicitly, so a confirm stays")
    } else {
        Verdict::broken(
            format!(
                "DELETE on a confirmed link answered {}: a confirm is never undone (409)",
                delete.outcome()
            ),
            vec![delete.clone()],
        )
    }
}

fn confirm_after_cancel(put: &Exchange) -> Verdict {
    if is_gone(put) {
        Verdict::Held(None)
    } else {
        Verdict::broken(
            format!(
                "PUT on a cancelled link answered {}: it is gone (404 or 410)",
                put.outcome()
            ),
            vec![put.clone()],
        )
    }
}

fn is_try_success(exchange: &Exchange) -> bool {
    matches!(
        exchange.status(),
        Some(StatusCode::OK | StatusCode::CREATED)
    )
}

fn is_decision_success(exchange: &Exchange) -> bool {
    matches!(
        exchange.status(),
        Some(StatusCode::OK | StatusCode::NO_CONTENT)
    )
}

fn is_gone(exchange: &Exchange) -> bool {
    matches!(
        exchange.status(),
        Some(StatusCode::NOT_FOUND | StatusCode::GONE)
    )
}

/// An answer's class for comparing a race with the two orders: `2xx`, `404/410` or the code.
fn class(exchange: &Exchange) -> String {
    match exchange.status() {
        None => "no answer".into(),
        Some(s) if s.is_success() => "2xx".into(),
        Some(StatusCode::NOT_FOUND | StatusCode::GONE) => "404/410".into(),
        Some(s) => s.as_u16().to_string(),
    }
}

/// `{uuid}/1`, the shape of the coordinator's keys.
fn new_key() -> String {
    format!("{}/1", uuid::Uuid::now_v7())
}

fn far() -> DateTime<Utc> {
    Utc::now() + FAR_DEADLINE
}

/// The sample body with one value changed (the first number grows by one, else the first
/// string gets `-other`, else the first boolean flips), so that a service that refuses
/// unknown members still reads it; one member more when it has none of those.
fn another_body(body: &serde_json::Value) -> serde_json::Value {
    let mut other = body.clone();
    if (0..3).any(|kind| change_first(&mut other, kind)) {
        return other;
    }
    let mark = serde_json::Value::String("another body".into());
    match other {
        serde_json::Value::Object(mut members) => {
            members.insert("tcc-participant-check".into(), mark);
            serde_json::Value::Object(members)
        }
        serde_json::Value::Array(mut items) => {
            items.push(mark);
            serde_json::Value::Array(items)
        }
        scalar => serde_json::json!({ "tcc-participant-check": mark, "body": scalar }),
    }
}

/// Changes the first value of `kind` (0 numbers, 1 strings, 2 booleans), depth first;
/// whether there was one.
fn change_first(value: &mut serde_json::Value, kind: u8) -> bool {
    use serde_json::Value;
    let replacement = match (kind, &*value) {
        (0, Value::Number(n)) => n
            .as_u64()
            .map(|u| Value::from(u.saturating_add(1)))
            .or_else(|| n.as_i64().map(|i| Value::from(i.saturating_add(1))))
            .or_else(|| n.as_f64().map(|f| Value::from(f + 1.0))),
        (1, Value::String(text)) => Some(Value::from(format!("{text}-other"))),
        (2, Value::Bool(b)) => Some(Value::from(!b)),
        _ => None,
    };
    if let Some(replacement) = replacement {
        *value = replacement;
        return true;
    }
    match value {
        Value::Object(members) => members.values_mut().any(|m| change_first(m, kind)),
        Value::Array(items) => items.iter_mut().any(|i| change_first(i, kind)),
        _ => false,
    }
}

/// Of the exchanges given, those with links different from each other's.
fn distinct_links(try_url: &Url, exchanges: Vec<Exchange>) -> Vec<Exchange> {
    let mut seen = Vec::new();
    exchanges
        .into_iter()
        .filter(|e| {
            let url = Link::of(try_url, e).map(|l| l.url).ok();
            if seen.contains(&url) {
                false
            } else {
                seen.push(url);
                true
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    #[test]
    fn another_body_differs_from_every_kind_of_sample() {
        for body in [
            serde_json::json!({"sku": "apple"}),
            serde_json::json!([1]),
            serde_json::json!("x"),
            serde_json::json!({}),
            serde_json::json!(null),
        ] {
            assert_ne!(another_body(&body), body);
        }
    }

    #[test]
    fn another_body_changes_a_value_rather_than_adding_a_member() {
        use serde_json::json;
        let changed = |body: Value| another_body(&body);
        assert_eq!(
            changed(json!({"sku": "apple", "quantity": 2})),
            json!({"sku": "apple", "quantity": 3})
        );
        assert_eq!(changed(json!({"seat": "7C"})), json!({"seat": "7C-other"}));
        assert_eq!(
            changed(json!({"items": [{"gift": true}]})),
            json!({"items": [{"gift": false}]})
        );
        assert_eq!(
            changed(json!({})),
            json!({"tcc-participant-check": "another body"})
        );
    }

    #[test]
    fn every_rule_has_its_own_name() {
        let names: HashSet<&str> = Rule::ALL.iter().map(|r| r.id()).collect();
        assert_eq!(names.len(), Rule::ALL.len());
    }
}

//! The checker: once everything healed and settled, compares what the participants recorded
//! and what the clients were told with each reservation's final state.
//!
//! Each rule below is a guarantee of `DESIGN.md`; a broken one is a violation, printed with
//! the reservation, the link and what was seen.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::clients::{Answer, Op};
use crate::participants::{Hold, HoldState};

/// One participant of a final reservation, as the coordinator showed it.
#[derive(Debug, Clone)]
pub struct FinalParticipant {
    pub name: String,
    pub uri: Option<String>,
    pub state: String,
}

/// A reservation's final state (from its completion callback or read at the end).
#[derive(Debug, Clone)]
pub struct Final {
    pub state: String,
    pub reason: Option<String>,
    pub participants: Vec<FinalParticipant>,
    /// When its completion callback first arrived: an upper bound of when it finished.
    pub finished_by: Option<DateTime<Utc>>,
}

impl Final {
    /// From a representation (a callback body, a 200 or a 410 body).
    pub fn of(body: &Value, finished_by: Option<DateTime<Utc>>) -> Option<Self> {
        let participants = body["participants"]
            .as_array()?
            .iter()
            .map(|p| FinalParticipant {
                name: p["name"].as_str().unwrap_or_default().to_owned(),
                uri: p["uri"].as_str().map(str::to_owned),
                // A transaction record lists confirmed participants only.
                state: p["state"].as_str().unwrap_or("confirmed").to_owned(),
            })
            .collect();
        Some(Self {
            state: body["state"].as_str()?.to_owned(),
            reason: body["reason"].as_str().map(str::to_owned),
            participants,
            finished_by,
        })
    }

    pub fn is_final(&self) -> bool {
        matches!(self.state.as_str(), "confirmed" | "cancelled" | "conflict")
    }

    fn participant(&self, hold: &Hold) -> Option<&FinalParticipant> {
        self.participants
            .iter()
            .find(|p| p.uri.as_deref() == Some(hold.uri.as_str()) || p.name == hold.tag)
    }

    /// A confirm was accepted (202): confirmed, or ended by participants' answers.
    fn after_confirm_accepted(&self) -> bool {
        match self.state.as_str() {
            "confirmed" | "conflict" => true,
            "cancelled" => self.reason.as_deref() == Some("participants_expired"),
            _ => false,
        }
    }
}

/// What the soak knows at the end.
pub struct Evidence<'a> {
    pub finals: &'a HashMap<String, Final>,
    /// Reservations with no final state, and why.
    pub unknown: &'a HashMap<String, String>,
    /// Every hold of every participant service (service name, hold).
    pub holds: &'a [(String, Hold)],
    pub answers: &'a [Answer],
    pub retention: Duration,
}

/// Every broken rule, one sentence each.
pub fn check(e: &Evidence<'_>) -> Vec<String> {
    let mut violations = Vec::new();
    let mut by_uri: HashMap<&str, &str> = HashMap::new();
    for (id, f) in e.finals {
        for p in &f.participants {
            if let Some(uri) = &p.uri {
                by_uri.insert(uri, id);
            }
        }
        check_final(id, f, &mut violations);
    }
    for (id, why) in e.unknown {
        violations.push(format!("reservation {id} never settled: {why}"));
    }
    let atomikos_confirmed: HashSet<&str> = e
        .answers
        .iter()
        .filter(|a| a.op == Op::AtomikosConfirm)
        .flat_map(|a| a.links.iter().map(String::as_str))
        .collect();
    let holds_by_uri: HashMap<&str, &Hold> =
        e.holds.iter().map(|(_, h)| (h.uri.as_str(), h)).collect();
    for (service, hold) in e.holds {
        let reservation = by_uri
            .get(hold.uri.as_str())
            .copied()
            .or(hold.reservation.as_deref());
        check_hold(
            service,
            hold,
            reservation,
            e,
            &atomikos_confirmed,
            &mut violations,
        );
    }
    for answer in e.answers {
        check_answer(answer, e, &holds_by_uri, &mut violations);
    }
    violations
}

fn check_final(id: &str, f: &Final, violations: &mut Vec<String>) {
    let states: Vec<&str> = f.participants.iter().map(|p| p.state.as_str()).collect();
    match f.state.as_str() {
        "confirmed" if states.iter().any(|s| *s != "confirmed") => violations.push(format!(
            "reservation {id} is confirmed but its participants are {states:?}"
        )),
        "cancelled" if states.contains(&"confirmed") => violations.push(format!(
            "reservation {id} is cancelled but a participant confirmed: {states:?}"
        )),
        "conflict" if !states.iter().any(|s| *s == "refused" || *s == "gone") => {
            violations.push(format!(
            "reservation {id} is a conflict though no participant refused or was gone: {states:?}"
        ))
        }
        _ => {}
    }
}

fn check_hold(
    service: &str,
    hold: &Hold,
    reservation: Option<&str>,
    e: &Evidence<'_>,
    atomikos_confirmed: &HashSet<&str>,
    violations: &mut Vec<String>,
) {
    let uri = &hold.uri;
    if hold.puts > 0 && hold.deletes > 0 {
        violations.push(format!(
            "{service}: link {uri} received both PUT ({}) and DELETE ({}) (reservation {})",
            hold.puts,
            hold.deletes,
            reservation.unwrap_or("unknown")
        ));
    }
    let Some(id) = reservation else {
        // A hold the client tried itself and never handed over in a reservation that is
        // still known: confirmed only through the Atomikos API.
        if hold.state == HoldState::Confirmed && !atomikos_confirmed.contains(uri.as_str()) {
            violations.push(format!(
                "{service}: link {uri} is confirmed but no reservation holds it"
            ));
        }
        return;
    };
    let Some(f) = e.finals.get(id) else {
        if !e.unknown.contains_key(id) {
            violations.push(format!(
                "{service}: hold {uri} was made for reservation {id}, which has no final state"
            ));
        }
        return;
    };
    if let (Some(finished), Some(last)) = (f.finished_by, hold.calls.last()) {
        let limit = finished
            + chrono::Duration::from_std(e.retention).unwrap()
            + chrono::Duration::seconds(2);
        if *last > limit {
            violations.push(format!(
                "{service}: link {uri} was called at {last} though reservation {id} ended by \
                 {finished} and its retention of {:?} was over",
                e.retention
            ));
        }
    }
    let participant = f.participant(hold);
    let shown = participant.map_or("absent", |p| p.state.as_str());
    let fine = match (f.state.as_str(), hold.state) {
        ("confirmed", state) => state == HoldState::Confirmed,
        (_, HoldState::Confirmed) => shown == "confirmed",
        ("cancelled", HoldState::Held) => {
            // Left to expire on its own: a try whose link was never learned, or a cancel that
            // kept failing until the link's expiry.
            matches!(shown, "abandoned" | "expired" | "absent")
        }
        ("conflict", HoldState::Held) => matches!(shown, "refused" | "abandoned" | "expired"),
        _ => shown != "confirmed",
    };
    if !fine {
        violations.push(format!(
            "{service}: hold {uri} is {:?} but reservation {id} is {} ({}) and shows it as {shown}",
            hold.state,
            f.state,
            f.reason.as_deref().unwrap_or("-")
        ));
    }
    if shown == "refused" && !hold.refused {
        violations.push(format!(
            "{service}: reservation {id} shows {uri} as refused, but it never answered 409"
        ));
    }
}

fn check_answer(
    a: &Answer,
    e: &Evidence<'_>,
    holds: &HashMap<&str, &Hold>,
    violations: &mut Vec<String>,
) {
    let Some(status) = a.status else {
        return; // no answer: nothing was promised
    };
    let said = |what: &str| {
        format!(
            "client {} got {status} to {:?} at {}: {what}",
            a.client, a.op, a.at
        )
    };
    if status >= 500 && status != 503 {
        violations.push(said(&format!("a server error: {}", a.body)));
        return;
    }
    let hold_confirmed =
        |uri: &String| holds.get(uri.as_str()).map(|h| h.state) == Some(HoldState::Confirmed);
    match a.op {
        Op::AtomikosConfirm | Op::AtomikosCancel => {
            let confirmed: Vec<bool> = a.links.iter().map(hold_confirmed).collect();
            let contradicted = match (a.op, status) {
                (Op::AtomikosConfirm, 204) => confirmed.iter().any(|c| !c),
                (Op::AtomikosConfirm, 404) | (Op::AtomikosCancel, 204) => {
                    confirmed.iter().any(|c| *c)
                }
                (Op::AtomikosConfirm, 409) => a.body["participantLinks"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|l| {
                        let uri = l["uri"].as_str().unwrap_or_default().to_owned();
                        (l["state"] == "confirmed") != hold_confirmed(&uri)
                    }),
                (_, 202 | 204 | 404 | 409 | 503) => false,
                _ => {
                    violations.push(said(&format!("an unexpected answer: {}", a.body)));
                    return;
                }
            };
            if contradicted {
                violations.push(said(&format!(
                    "the links ended confirmed = {confirmed:?}: {}",
                    a.body
                )));
            }
            return;
        }
        Op::AbandonedCreate => return,
        _ => {}
    }
    // A link that expired while a create was repeated after a lost answer: the client's
    // mistake, refused without storing anything.
    if status == 422
        && a.body["field"]
            .as_str()
            .is_some_and(|f| f.ends_with("expires"))
    {
        return;
    }
    let Some(id) = &a.reservation else {
        if a.op == Op::Create && status != 503 {
            violations.push(said(&format!(
                "no reservation id in the answer: {}",
                a.body
            )));
        }
        return;
    };
    if status == 503 {
        return;
    }
    let Some(f) = e.finals.get(id) else {
        if !e.unknown.contains_key(id) {
            violations.push(said(&format!("reservation {id} has no final state")));
        }
        return;
    };
    let body_state = a.body["state"].as_str().unwrap_or_default();
    let consistent = match (a.op, status) {
        (Op::Create, 200 | 202) | (Op::Join, 409) => true,
        (_, 303) => f.state == "confirmed",
        // A 410 while cancelling (a confirm after the deadline) promises a cancel.
        (_, 410) => match body_state {
            "cancelling" | "cancelled" => f.state == "cancelled",
            _ => true,
        },
        // Nothing the clients send is invalid.
        (Op::Create | Op::Join, _) if status >= 400 => false,
        (Op::Confirm, 202) => f.after_confirm_accepted(),
        (Op::Cancel | Op::Delete, 202) => f.state == "cancelled",
        (Op::Cancel | Op::Delete, 409) => f.after_confirm_accepted(),
        (Op::Get, 200) if body_state == "conflict" => f.state == "conflict",
        (Op::Join, 202) => a.links.iter().all(|named| {
            f.participants
                .iter()
                .any(|p| p.uri.as_ref() == Some(named) || &p.name == named)
        }),
        _ => true,
    };
    if !consistent {
        violations.push(said(&format!(
            "reservation {id} ended {} ({}): {}",
            f.state,
            f.reason.as_deref().unwrap_or("-"),
            a.body
        )));
    }
}

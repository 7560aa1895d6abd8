//! The reservation's rules with explicit instants: deadlines, events, activity lines.
use super::*;
use crate::domain::{CallVerb, ParticipantEvent, ParticipantLink, TryRequest, HISTORY_LIMIT};

fn at(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
}

fn link(uri: &str, expires: DateTime<Utc>) -> NewParticipant {
    NewParticipant {
        name: uri.to_owned(),
        source: ParticipantSource::Link(ParticipantLink {
            uri: ParticipantUrl::parse(uri).unwrap(),
            expires,
        }),
    }
}

fn try_(url: &str) -> NewParticipant {
    NewParticipant {
        name: url.to_owned(),
        source: ParticipantSource::Try(TryRequest {
            url: ParticipantUrl::parse(url).unwrap(),
            body: serde_json::Value::Null,
            headers: vec![],
        }),
    }
}

const MARGIN: Duration = Duration::from_secs(5);

/// A reservation created at `at(0)` with a 30 s timeout.
fn reservation(participants: Vec<NewParticipant>) -> Reservation {
    Reservation::new(
        ReservationId::new(),
        at(0),
        Duration::from_secs(30),
        participants,
        serde_json::Map::new(),
        MARGIN,
    )
}

#[test]
fn the_deadline_is_the_timeout_when_links_live_longer() {
    let r = reservation(vec![link("http://a/1", at(600))]);
    assert_eq!(r.expires_at, at(30));
    assert_eq!(r.state(), State::Reserved);
}

#[test]
fn an_early_link_expiry_moves_the_deadline_earlier_by_the_margin() {
    let r = reservation(vec![
        link("http://a/1", at(20)),
        link("http://b/1", at(600)),
    ]);
    assert_eq!(r.expires_at, at(15));
    assert_eq!(r.deadline_event(), Event::TooCloseToExpiry);
}

#[test]
fn a_join_only_moves_the_deadline_earlier() {
    let mut r = reservation(vec![]);
    r.join(link("http://a/1", at(900)), MARGIN).unwrap();
    assert_eq!(r.expires_at, at(30));
    r.join(link("http://b/1", at(10)), MARGIN).unwrap();
    assert_eq!(r.expires_at, at(5));
}

#[test]
fn the_same_link_twice_is_one_participant() {
    let r = reservation(vec![link("http://a/1", at(60)), link("http://a/1", at(60))]);
    assert_eq!(r.participants.len(), 1);
}

#[test]
fn a_try_makes_the_reservation_trying_and_a_joined_try_takes_it_back_there() {
    let r = reservation(vec![link("http://a/1", at(60)), try_("http://b/holds")]);
    assert_eq!(r.state(), State::Trying);

    let mut r2 = reservation(vec![]);
    assert_eq!(r2.state(), State::Reserved);
    r2.join(try_("http://b/holds"), MARGIN).unwrap();
    assert_eq!(r2.state(), State::Trying);
}

#[test]
fn a_decision_restarts_attempt_counts_and_a_terminal_state_records_its_time() {
    let mut r = reservation(vec![link("http://a/1", at(60))]);
    r.participants[0].attempts = 3;
    assert_eq!(r.apply(Event::Confirm, at(1)), Ok(true));
    assert_eq!(r.participants[0].attempts, 0);
    assert_eq!(r.decided_at, Some(at(1)));
    assert_eq!(r.apply(Event::Confirm, at(2)), Ok(false));
    assert_eq!(r.apply(Event::Cancel, at(2)), Err(Refusal::Conflict));
    assert_eq!(r.apply(Event::AllConfirmed, at(3)), Ok(true));
    assert_eq!(r.finished_at, Some(at(3)));
}

#[test]
fn a_finished_reservation_is_kept_for_its_retention_and_a_conflict_until_forgotten() {
    let hour = Duration::from_secs(3600);
    let mut r = reservation(vec![link("http://a/1", at(600))]);
    assert_eq!(r.purge_at(hour, 2 * hour), None);
    r.apply(Event::Confirm, at(1)).unwrap();
    r.apply(Event::AllConfirmed, at(2)).unwrap();
    assert_eq!(r.purge_at(hour, 2 * hour), Some(at(2 + 7200)));
    assert!(!r.is_past_retention(at(2 + 3599), hour));
    assert!(r.is_past_retention(at(2 + 3600), hour));

    let mut conflict = r.clone();
    conflict.status = Status::Conflict;
    assert_eq!(conflict.purge_at(hour, hour), None);
    assert!(!conflict.is_past_retention(at(1_000_000), hour));
}

#[test]
fn only_an_undecided_reservation_past_its_deadline_expires() {
    let mut r = reservation(vec![link("http://a/1", at(600))]);
    assert!(!r.expire_if_due(at(29)));
    assert!(r.expire_if_due(at(30)));
    assert_eq!(
        (r.state(), r.reason()),
        (State::Cancelling, Some(Reason::Expired))
    );
    assert!(!r.expire_if_due(at(31)), "once decided, nothing more");

    let mut confirming = reservation(vec![link("http://a/1", at(600))]);
    confirming.apply(Event::Confirm, at(1)).unwrap();
    assert!(!confirming.expire_if_due(at(100)));
    assert_eq!(confirming.state(), State::Confirming);
}

#[test]
fn a_phase_finishes_only_once_every_participant_is_settled() {
    let mut r = reservation(vec![
        link("http://a/1", at(600)),
        link("http://b/1", at(600)),
    ]);
    r.apply(Event::Confirm, at(1)).unwrap();
    r.participants[0].apply(ParticipantEvent::Confirmed, at(2));
    assert!(!r.finish_phase(at(2)));
    r.participants[1].apply(ParticipantEvent::Gone, at(3));
    assert!(r.finish_phase(at(3)));
    assert_eq!(r.state(), State::Conflict);

    let mut gone = reservation(vec![link("http://a/1", at(600))]);
    gone.apply(Event::Confirm, at(1)).unwrap();
    gone.participants[0].apply(ParticipantEvent::Gone, at(2));
    assert!(gone.finish_phase(at(2)));
    assert_eq!(
        (gone.state(), gone.reason()),
        (State::Cancelled, Some(Reason::ParticipantsExpired))
    );
}

#[test]
fn the_eta_of_a_trying_reservation_never_passes_its_deadline() {
    let r = Reservation::new(
        ReservationId::new(),
        at(0),
        Duration::from_secs(2),
        vec![try_("http://b/holds")],
        serde_json::Map::new(),
        MARGIN,
    );
    assert_eq!(r.eta(at(0), Duration::from_secs(5)), Some(at(2)));
    assert_eq!(r.activity(at(0)), "trying: 0 of 1 participant reserved");
    assert_eq!(r.poll_after(at(0)), Some(Duration::from_secs(1)));
}

#[test]
fn the_history_keeps_the_latest_entries_and_counts_the_dropped() {
    let mut r = reservation(vec![link("http://a/1", at(60))]);
    assert_eq!(r.history.len(), 1, "created");
    for n in 0..150 {
        r.note_call(
            at(n),
            0,
            CallVerb::Confirm,
            format!("attempt {n}"),
            Duration::ZERO,
        );
    }
    assert_eq!(r.history.len(), HISTORY_LIMIT);
    assert_eq!(r.history_dropped, 51);
    assert!(matches!(
        &r.history.last().unwrap().what,
        Happening::Called { result, .. } if result == "attempt 149"
    ));
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    fn events() -> impl Strategy<Value = Vec<Event>> {
        prop::collection::vec(prop::sample::select(Event::ALL.to_vec()), 0..48)
    }

    proptest! {
        #[test]
        fn random_event_sequences_keep_every_invariant(events in events()) {
            let mut r = reservation(vec![link("http://a/1", at(60)), try_("http://b/holds")]);
            let mut confirmed_once = false;
            let mut cancelled_once = false;
            for (i, event) in events.into_iter().enumerate() {
                let before = r.clone();
                let result = r.apply(event, at(i64::try_from(i).unwrap()));

                if result.is_err() {
                    prop_assert_eq!(&r, &before, "a refused event changes nothing");
                }
                if before.state().is_terminal() && r.state() != before.state() {
                    prop_assert!(
                        before.state() == State::Conflict && r.state() == State::Forgotten,
                        "{} left for {}", before.state(), r.state()
                    );
                }
                confirmed_once |= r.state() == State::Confirming;
                cancelled_once |= r.state() == State::Cancelling;
                prop_assert!(
                    !(confirmed_once && cancelled_once),
                    "both confirming and cancelling were decided"
                );
                prop_assert_eq!(
                    r.reason().is_some(),
                    matches!(r.state(), State::Cancelling | State::Cancelled),
                    "a reason exactly while cancelling or cancelled: {:?}", r
                );
                prop_assert_eq!(r.finished_at.is_some(), r.state().is_terminal());
                prop_assert_eq!(
                    r.decided_at.is_some(),
                    !matches!(r.state(), State::Trying | State::Reserved)
                );
            }
        }
    }
}

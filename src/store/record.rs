//! Versioned log records, separate from the domain types.
//!
//! Version 1: one byte `1`, then JSON. Version 2: one byte `2`, the record's revision (8
//! bytes, big-endian, so a conditional write can compare it without decoding), then the same
//! JSON. Version 3 (written by the embedded log): one byte `3`, the revision, then the same
//! fields in postcard's compact binary form, in the order the structs declare them, with the
//! free-form JSON (metadata, try bodies) as JSON text; encoding it costs a fraction of JSON's.
//! The PostgreSQL log still writes version 2, so that instances of the previous release
//! sharing the database can read what a newer one wrote during a rolling upgrade.
//! Instants are milliseconds since the Unix epoch; states and reasons are their API names.
//! Add a `ReservationV2` (and keep decoding these) rather than changing these structs, and
//! only ever add fields at the end.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::domain::{
    CallVerb, Callback, Happening, HistoryEntry, OperatorAction, Participant, ParticipantLink,
    ParticipantState, ParticipantUrl, Reason, Reservation, ReservationId, State, StoredParticipant,
    StoredReservation, TraceContext, TryRequest,
};

/// `[1]` then the JSON of a [`ReservationV1`].
const VERSION_1: u8 = 1;
/// `[2]`, the revision (8 bytes, big-endian), then the JSON of a [`ReservationV1`].
const VERSION_2: u8 = 2;
/// `[3]`, the revision (8 bytes, big-endian), then the postcard of a [`ReservationV1`].
const VERSION_3: u8 = 3;
/// `[4]`, the revision (8 bytes, big-endian), the length (8 bytes, big-endian) and CRC-32
/// (4 bytes, little-endian) of a version 3 record kept in a file of its own (the embedded
/// log's large records, see `embedded::spill`), and the file's name's nonce (8 bytes).
const VERSION_SPILLED: u8 = 4;

/// The value that points to a record kept in a file of its own.
pub(super) fn spilled(revision: u64, record: &[u8], nonce: u64) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(29);
    bytes.push(VERSION_SPILLED);
    bytes.extend_from_slice(&revision.to_be_bytes());
    bytes.extend_from_slice(&(record.len() as u64).to_be_bytes());
    bytes.extend_from_slice(&crc32fast::hash(record).to_le_bytes());
    bytes.extend_from_slice(&nonce.to_be_bytes());
    bytes
}

/// What a pointer to a record file says; `None` for a record kept inline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Spilled {
    pub revision: u64,
    pub len: u64,
    pub crc: u32,
    pub nonce: u64,
}

pub(super) fn spilled_header(value: &[u8]) -> Option<Spilled> {
    match value {
        [VERSION_SPILLED, rest @ ..] if rest.len() == 28 => Some(Spilled {
            revision: u64::from_be_bytes(rest[..8].try_into().ok()?),
            len: u64::from_be_bytes(rest[8..16].try_into().ok()?),
            crc: u32::from_le_bytes(rest[16..20].try_into().ok()?),
            nonce: u64::from_be_bytes(rest[20..].try_into().ok()?),
        }),
        _ => None,
    }
}

/// How a record's body is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Format {
    /// Version 2, JSON: what every release since revisions were introduced reads.
    Json,
    /// Version 3, postcard.
    Binary,
}

// The fields borrow from the reservation when a record is written (no copy of its strings);
// a decoded record owns them.
#[derive(Serialize, Deserialize)]
pub(super) struct ReservationV1<'a> {
    state: Cow<'a, str>,
    reason: Option<Cow<'a, str>>,
    created_at: i64,
    timeout_at: i64,
    expires_at: i64,
    decided_at: Option<i64>,
    finished_at: Option<i64>,
    participants: Vec<ParticipantV1<'a>>,
    #[serde(with = "json_text")]
    metadata: Cow<'a, serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    idempotency_key: Option<Cow<'a, str>>,
    /// `{trace-id}-{flags}` (W3C Trace Context); absent in records written before it existed.
    #[serde(default)]
    trace: Option<String>,
    /// The reservation's history, oldest first; absent in records written before it existed.
    #[serde(default)]
    history: Vec<HistoryV1<'a>>,
    #[serde(default)]
    history_dropped: u64,
    #[serde(default)]
    callback: Option<CallbackV1<'a>>,
}

#[derive(Serialize, Deserialize)]
struct CallbackV1<'a> {
    url: Cow<'a, str>,
    attempts: u32,
    last_error: Option<Cow<'a, str>>,
    delivered_at: Option<i64>,
}

/// One history entry: `kind` is `created`, `changed`, `called` or `acted` (written since
/// 2026-12-05: the action in `verb`, the operator's name in `result`), with the fields of its
/// kind.
#[derive(Serialize, Deserialize)]
struct HistoryV1<'a> {
    at: i64,
    kind: Cow<'a, str>,
    #[serde(default)]
    state: Option<Cow<'a, str>>,
    #[serde(default)]
    from: Option<Cow<'a, str>>,
    #[serde(default)]
    reason: Option<Cow<'a, str>>,
    #[serde(default)]
    participant: Option<usize>,
    #[serde(default)]
    verb: Option<Cow<'a, str>>,
    #[serde(default)]
    result: Option<Cow<'a, str>>,
    #[serde(default)]
    took_ms: Option<u64>,
    #[serde(default)]
    retry_at: Option<i64>,
}

fn encode_history(h: &HistoryEntry) -> HistoryV1<'_> {
    let mut v = HistoryV1 {
        at: h.at.timestamp_millis(),
        kind: Cow::Borrowed(""),
        state: None,
        from: None,
        reason: None,
        participant: None,
        verb: None,
        result: None,
        took_ms: None,
        retry_at: None,
    };
    match &h.what {
        Happening::Created { state } => {
            v.kind = "created".into();
            v.state = Some(state.as_str().into());
        }
        Happening::Changed { from, to, reason } => {
            v.kind = "changed".into();
            v.from = Some(from.as_str().into());
            v.state = Some(to.as_str().into());
            v.reason = reason.map(|r| r.as_str().into());
        }
        Happening::Called {
            participant,
            verb,
            result,
            took_ms,
            retry_at,
        } => {
            v.kind = "called".into();
            v.participant = Some(*participant);
            v.verb = Some(verb.as_str().into());
            v.result = Some(result.as_str().into());
            v.took_ms = Some(*took_ms);
            v.retry_at = retry_at.map(|t| t.timestamp_millis());
        }
        // The same fields, so that the format stays as it is: the action in `verb`, the
        // operator's name in `result`.
        Happening::Acted {
            by,
            action,
            participant,
        } => {
            v.kind = "acted".into();
            v.participant = *participant;
            v.verb = Some(action.as_str().into());
            v.result = Some(by.as_str().into());
        }
    }
    v
}

fn decode_history(
    h: HistoryV1<'_>,
    corrupt: &impl Fn(String) -> StoreError,
) -> Result<HistoryEntry, StoreError> {
    let time = |ms: i64| {
        DateTime::<Utc>::from_timestamp_millis(ms)
            .ok_or_else(|| corrupt(format!("bad instant {ms}")))
    };
    let state = |s: Option<Cow<'_, str>>| {
        let s = s.unwrap_or_default();
        parse_named(&s, &State::ALL, |x| x.as_str())
            .ok_or_else(|| corrupt(format!("unknown state {s} in the history")))
    };
    let what = match h.kind.as_ref() {
        "created" => Happening::Created {
            state: state(h.state)?,
        },
        "changed" => Happening::Changed {
            from: state(h.from)?,
            to: state(h.state)?,
            reason: h
                .reason
                .map(|x| {
                    parse_named(&x, &Reason::ALL, |s| s.as_str())
                        .ok_or_else(|| corrupt(format!("unknown reason {x} in the history")))
                })
                .transpose()?,
        },
        "called" => Happening::Called {
            participant: h.participant.unwrap_or_default(),
            verb: {
                let verb = h.verb.unwrap_or_default();
                parse_named(&verb, &CallVerb::ALL, CallVerb::as_str)
                    .ok_or_else(|| corrupt(format!("unknown call {verb:?} in the history")))?
            },
            result: h.result.unwrap_or_default().into_owned(),
            took_ms: h.took_ms.unwrap_or_default(),
            retry_at: h.retry_at.map(time).transpose()?,
        },
        "acted" => Happening::Acted {
            action: {
                let action = h.verb.unwrap_or_default();
                parse_named(&action, &OperatorAction::ALL, |a| a.as_str()).ok_or_else(|| {
                    corrupt(format!("unknown operator action {action:?} in the history"))
                })?
            },
            by: h.result.unwrap_or_default().into_owned(),
            participant: h.participant,
        },
        other => return Err(corrupt(format!("unknown history entry `{other}`"))),
    };
    Ok(HistoryEntry {
        at: time(h.at)?,
        what,
    })
}

#[derive(Serialize, Deserialize)]
struct ParticipantV1<'a> {
    name: Cow<'a, str>,
    #[serde(rename = "try")]
    try_request: Option<TryV1<'a>>,
    link: Option<LinkV1<'a>>,
    state: Cow<'a, str>,
    attempts: u32,
    last_error: Option<Cow<'a, str>>,
    next_attempt_at: Option<i64>,
    settled_at: Option<i64>,
}

#[derive(Serialize, Deserialize)]
struct TryV1<'a> {
    url: Cow<'a, str>,
    body: TryBodyV1<'a>,
    headers: Cow<'a, [(String, String)]>,
}

/// A try's body as `json_text` writes it, from the JSON text the participant keeps once
/// written (the same text at every save of the reservation) when there is one.
struct TryBodyV1<'a> {
    value: Cow<'a, serde_json::Value>,
    text: Option<&'a str>,
}

impl Serialize for TryBodyV1<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.text {
            Some(text) if !s.is_human_readable() => s.serialize_str(text),
            _ => json_text::serialize(&self.value, s),
        }
    }
}

impl<'de> Deserialize<'de> for TryBodyV1<'_> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self {
            value: Cow::Owned(json_text::deserialize(d)?),
            text: None,
        })
    }
}

#[derive(Serialize, Deserialize)]
struct LinkV1<'a> {
    uri: Cow<'a, str>,
    expires: i64,
}

/// Free-form JSON inside a record: as itself in a JSON record, as JSON text in a binary one
/// (whose decoder cannot take a value of unknown shape).
mod json_text {
    use serde::de::{DeserializeOwned, Error as _};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<T: Serialize, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            value.serialize(s)
        } else {
            let text = serde_json::to_string(value).map_err(serde::ser::Error::custom)?;
            s.serialize_str(&text)
        }
    }

    pub fn deserialize<'de, T: DeserializeOwned, D: Deserializer<'de>>(
        d: D,
    ) -> Result<T, D::Error> {
        if d.is_human_readable() {
            T::deserialize(d)
        } else {
            let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
            serde_json::from_str(&text).map_err(D::Error::custom)
        }
    }
}

pub(super) fn encode(r: &Reservation, format: Format) -> Vec<u8> {
    let record = ReservationV1 {
        state: r.state().as_str().into(),
        reason: r.reason().map(|x| x.as_str().into()),
        created_at: r.created_at().timestamp_millis(),
        timeout_at: r.timeout_at().timestamp_millis(),
        expires_at: r.expires_at().timestamp_millis(),
        decided_at: r.decided_at().map(|t| t.timestamp_millis()),
        finished_at: r.finished_at().map(|t| t.timestamp_millis()),
        participants: r.participants().iter().map(encode_participant).collect(),
        metadata: Cow::Borrowed(r.metadata()),
        idempotency_key: r.idempotency_key().map(Cow::Borrowed),
        trace: r.trace().map(|t| t.to_stored()),
        history: r.history().iter().map(encode_history).collect(),
        history_dropped: r.history_dropped(),
        callback: r.callback().as_ref().map(|c| CallbackV1 {
            url: c.url.as_str().into(),
            attempts: c.attempts,
            last_error: c.last_error.as_deref().map(Cow::Borrowed),
            delivered_at: c.delivered_at.map(|t| t.timestamp_millis()),
        }),
    };
    let mut bytes = Vec::with_capacity(512);
    match format {
        Format::Json => {
            bytes.push(VERSION_2);
            bytes.extend_from_slice(&r.revision().to_be_bytes());
            serde_json::to_writer(&mut bytes, &record).expect("a record always serialises");
        }
        Format::Binary => {
            bytes.push(VERSION_3);
            bytes.extend_from_slice(&r.revision().to_be_bytes());
            bytes = postcard::to_extend(&record, bytes).expect("a record always serialises");
        }
    }
    bytes
}

/// The revision a record was written at, read from its header without decoding the rest
/// (version 1 records, written before revisions, are revision 0).
pub(super) fn revision_of(bytes: &[u8]) -> Option<u64> {
    match bytes {
        [VERSION_1, ..] => Some(0),
        [VERSION_2 | VERSION_3 | VERSION_SPILLED, rest @ ..] => {
            Some(u64::from_be_bytes(rest.get(..8)?.try_into().ok()?))
        }
        _ => None,
    }
}

fn encode_participant(p: &Participant) -> ParticipantV1<'_> {
    ParticipantV1 {
        name: p.name().into(),
        try_request: p.try_request().map(|t| TryV1 {
            url: t.url.as_str().into(),
            body: TryBodyV1 {
                value: Cow::Borrowed(&t.body),
                text: p.try_body_json(),
            },
            headers: Cow::Borrowed(&t.headers),
        }),
        link: p.link().map(|l| LinkV1 {
            uri: l.uri.as_str().into(),
            expires: l.expires.timestamp_millis(),
        }),
        state: p.state().as_str().into(),
        attempts: p.attempts(),
        last_error: p.last_error().map(Cow::Borrowed),
        next_attempt_at: p.next_attempt_at().map(|t| t.timestamp_millis()),
        settled_at: p.settled_at().map(|t| t.timestamp_millis()),
    }
}

pub(super) fn decode(id: ReservationId, bytes: &[u8]) -> Result<Reservation, StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt {
        key: id.to_string(),
        detail,
    };
    let (version, rest) = bytes
        .split_first()
        .ok_or_else(|| corrupt("empty record".into()))?;
    let (revision, body) = match *version {
        VERSION_1 => (0, rest),
        VERSION_2 | VERSION_3 if rest.len() >= 8 => {
            let (revision, body) = rest.split_at(8);
            let revision: [u8; 8] = revision.try_into().expect("8 bytes");
            (u64::from_be_bytes(revision), body)
        }
        _ => return Err(corrupt(format!("unknown record version {version}"))),
    };
    let r: ReservationV1<'_> = if *version == VERSION_3 {
        postcard::from_bytes(body).map_err(|e| corrupt(e.to_string()))?
    } else {
        serde_json::from_slice(body).map_err(|e| corrupt(e.to_string()))?
    };
    let time = |ms: i64| {
        DateTime::<Utc>::from_timestamp_millis(ms)
            .ok_or_else(|| corrupt(format!("bad instant {ms}")))
    };
    let opt_time = |ms: Option<i64>| ms.map(time).transpose();
    let participants = r
        .participants
        .into_iter()
        .map(|p| {
            Participant::restore(StoredParticipant {
                name: p.name.into_owned(),
                try_request: p
                    .try_request
                    .map(|t| {
                        Ok::<_, StoreError>(TryRequest {
                            url: ParticipantUrl::parse(&t.url)
                                .map_err(|e| corrupt(e.to_string()))?,
                            body: t.body.value.into_owned(),
                            headers: t.headers.into_owned(),
                        })
                    })
                    .transpose()?,
                link: p
                    .link
                    .map(|l| {
                        Ok::<_, StoreError>(ParticipantLink {
                            uri: ParticipantUrl::parse(&l.uri)
                                .map_err(|e| corrupt(e.to_string()))?,
                            expires: time(l.expires)?,
                        })
                    })
                    .transpose()?,
                state: parse_named(&p.state, &ParticipantState::ALL, |s| s.as_str())
                    .ok_or_else(|| corrupt(format!("unknown participant state {}", p.state)))?,
                attempts: p.attempts,
                last_error: p.last_error.map(Cow::into_owned),
                next_attempt_at: opt_time(p.next_attempt_at)?,
                settled_at: opt_time(p.settled_at)?,
            })
            .map_err(corrupt)
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Reservation::restore(StoredReservation {
        id,
        state: parse_named(&r.state, &State::ALL, |s| s.as_str())
            .ok_or_else(|| corrupt(format!("unknown state {}", r.state)))?,
        reason: r
            .reason
            .map(|x| {
                parse_named(&x, &Reason::ALL, |s| s.as_str())
                    .ok_or_else(|| corrupt(format!("unknown reason {x}")))
            })
            .transpose()?,
        created_at: time(r.created_at)?,
        timeout_at: time(r.timeout_at)?,
        expires_at: time(r.expires_at)?,
        decided_at: opt_time(r.decided_at)?,
        finished_at: opt_time(r.finished_at)?,
        participants,
        metadata: r.metadata.into_owned(),
        idempotency_key: r.idempotency_key.map(Cow::into_owned),
        trace: r.trace.as_deref().and_then(TraceContext::from_stored),
        history: r
            .history
            .into_iter()
            .map(|h| decode_history(h, &corrupt))
            .collect::<Result<_, _>>()?,
        history_dropped: r.history_dropped,
        callback: r
            .callback
            .map(|c| {
                Ok::<_, StoreError>(Callback {
                    url: ParticipantUrl::parse(&c.url).map_err(|e| corrupt(e.to_string()))?,
                    attempts: c.attempts,
                    last_error: c.last_error.map(Cow::into_owned),
                    delivered_at: opt_time(c.delivered_at)?,
                })
            })
            .transpose()?,
        revision,
        owner: None,
    })
    .map_err(corrupt)
}

fn parse_named<T: Copy>(text: &str, all: &[T], name: impl Fn(T) -> &'static str) -> Option<T> {
    all.iter().copied().find(|x| name(*x) == text)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::domain::{NewParticipant, ParticipantSource};

    #[test]
    fn a_reservation_survives_encoding_unchanged() {
        let now = DateTime::from_timestamp_millis(1_800_000_000_123).unwrap();
        let mut r = Reservation::new(
            ReservationId::new(),
            now,
            Duration::from_secs(30),
            vec![
                NewParticipant {
                    name: "stock".into(),
                    source: ParticipantSource::Link(ParticipantLink {
                        uri: ParticipantUrl::parse("http://stock/holds/1").unwrap(),
                        expires: now + chrono::Duration::seconds(60),
                    }),
                },
                NewParticipant {
                    name: "payments".into(),
                    source: ParticipantSource::Try(TryRequest {
                        url: ParticipantUrl::parse("https://pay/holds").unwrap(),
                        body: serde_json::json!({"amount": 10}),
                        headers: vec![("Authorization".into(), "Bearer x".into())],
                    }),
                },
            ],
            serde_json::json!({"order": "A-17"})
                .as_object()
                .unwrap()
                .clone(),
            Duration::from_secs(5),
        );
        r.set_idempotency_key("order-A-17".into());
        r.participant_mut(1)
            .record_attempt(now, None, Some("503".into()), Some(now));
        r.note_call(
            now,
            1,
            crate::domain::CallVerb::Try,
            "503".into(),
            Duration::from_millis(12),
        );
        r.apply(crate::domain::Event::Cancel, now).unwrap();
        r.set_trace(crate::domain::TraceContext::new([7; 16]).unwrap());
        // More calls than the history keeps: the oldest are dropped, and counted.
        for n in 0..crate::domain::HISTORY_LIMIT {
            let verb = crate::domain::CallVerb::Cancel;
            r.note_call(now, 0, verb, format!("attempt {n}"), Duration::ZERO);
        }
        assert!(r.history_dropped() > 0);
        r.set_callback(crate::domain::Callback {
            url: ParticipantUrl::parse("http://orders/callbacks/17").unwrap(),
            attempts: 2,
            last_error: Some("503 Service Unavailable".into()),
            delivered_at: Some(now),
        });
        for format in [Format::Json, Format::Binary] {
            let decoded = decode(r.id(), &encode(&r, format)).unwrap();
            assert_eq!(decoded, r, "{format:?}");
        }
    }

    /// An operator's cancel and retry read back from the log as they were written (a restart
    /// keeps who acted, and the reason `operator`).
    #[test]
    fn an_operators_actions_survive_encoding() {
        let now = DateTime::from_timestamp_millis(1_800_000_000_123).unwrap();
        let mut r = Reservation::new(
            ReservationId::new(),
            now,
            Duration::from_secs(30),
            vec![NewParticipant {
                name: "stock".into(),
                source: ParticipantSource::Link(ParticipantLink {
                    uri: ParticipantUrl::parse("http://stock/holds/1").unwrap(),
                    expires: now + chrono::Duration::seconds(60),
                }),
            }],
            serde_json::Map::new(),
            Duration::from_secs(5),
        );
        r.apply(crate::domain::Event::OperatorCancel, now).unwrap();
        for (action, participant) in [
            (OperatorAction::Cancel, None),
            (OperatorAction::RetryNow, Some(0)),
        ] {
            r.note(
                now,
                Happening::Acted {
                    by: "alice".into(),
                    action,
                    participant,
                },
            );
        }
        for format in [Format::Json, Format::Binary] {
            let decoded = decode(r.id(), &encode(&r, format)).unwrap();
            assert_eq!(decoded.reason(), Some(Reason::Operator), "{format:?}");
            assert_eq!(decoded, r, "{format:?}");
        }
    }

    /// A record as the coordinator of 2026-11 wrote it (format 2: the version byte, the
    /// revision, the JSON): a cancelled reservation with a link, a try given up, its history
    /// and a delivered callback. Every later coordinator must read it back as this.
    const WRITTEN_2026_11: &str = r#"{"state":"cancelled","reason":"client","created_at":1800000000123,"timeout_at":1800000030123,"expires_at":1800000030123,"decided_at":1800000000123,"finished_at":1800000000123,"participants":[{"name":"stock","try":null,"link":{"uri":"http://stock/holds/1","expires":1800000060123},"state":"cancelled","attempts":1,"last_error":null,"next_attempt_at":null,"settled_at":1800000000123},{"name":"payments","try":{"url":"https://pay/holds","body":{"amount":10},"headers":[["Authorization","Bearer x"]]},"link":null,"state":"abandoned","attempts":1,"last_error":"gave up","next_attempt_at":null,"settled_at":1800000000123}],"metadata":{"order":"A-17"},"idempotency_key":"order-A-17","trace":"07070707070707070707070707070707-00","history":[{"at":1800000000123,"kind":"created","state":"trying"},{"at":1800000000123,"kind":"called","participant":1,"verb":"try","result":"503","took_ms":12,"retry_at":1800000000123},{"at":1800000000123,"kind":"changed","state":"cancelling","from":"trying","reason":"client"},{"at":1800000000123,"kind":"called","participant":1,"verb":"try (again, to learn the link)","result":"gave up","took_ms":7},{"at":1800000000123,"kind":"called","participant":0,"verb":"cancel","result":"cancelled","took_ms":3},{"at":1800000000123,"kind":"changed","state":"cancelled","from":"cancelling","reason":"client"}],"callback":{"url":"http://orders/callbacks/17","attempts":2,"last_error":"503 Service Unavailable","delivered_at":1800000000123}}"#;

    #[test]
    fn a_record_written_by_the_2026_11_coordinator_reads_back() {
        use crate::domain::{Happening, ParticipantState, Reason, State};
        let mut bytes = vec![2, 0, 0, 0, 0, 0, 0, 0, 7];
        bytes.extend_from_slice(WRITTEN_2026_11.as_bytes());
        let id: ReservationId = "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b".parse().unwrap();
        let at = DateTime::from_timestamp_millis(1_800_000_000_123).unwrap();

        let r = decode(id, &bytes).unwrap();

        assert_eq!((r.id(), r.revision()), (id, 7));
        assert_eq!(
            (r.state(), r.reason()),
            (State::Cancelled, Some(Reason::Client))
        );
        assert_eq!(
            (r.created_at(), r.decided_at(), r.finished_at()),
            (at, Some(at), Some(at))
        );
        assert_eq!(r.expires_at(), at + chrono::Duration::seconds(30));
        let states: Vec<_> = r
            .participants()
            .iter()
            .map(|p| (p.name(), p.state()))
            .collect();
        assert_eq!(
            states,
            [
                ("stock", ParticipantState::Cancelled),
                ("payments", ParticipantState::Abandoned)
            ]
        );
        let link = r.participants()[0].link().unwrap();
        assert_eq!(link.uri.as_str(), "http://stock/holds/1");
        let tried = r.participants()[1].try_request().unwrap();
        assert_eq!(tried.url.as_str(), "https://pay/holds");
        assert_eq!(
            tried.headers,
            [("Authorization".to_owned(), "Bearer x".to_owned())]
        );
        assert_eq!(r.metadata()["order"], "A-17");
        assert_eq!(r.idempotency_key(), Some("order-A-17"));
        assert_eq!(r.trace(), crate::domain::TraceContext::new([7; 16]));
        let verbs: Vec<_> = r
            .history()
            .iter()
            .filter_map(|h| match &h.what {
                Happening::Called { verb, .. } => Some(verb.to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(verbs, ["try", "try (again, to learn the link)", "cancel"]);
        assert_eq!(r.history().len(), 6);
        let callback = r.callback().unwrap();
        assert_eq!((callback.attempts, callback.delivered_at), (2, Some(at)));
        // And it is written back the same way, in either format.
        assert_eq!(decode(id, &encode(&r, Format::Json)).unwrap(), r);
        assert_eq!(decode(id, &encode(&r, Format::Binary)).unwrap(), r);
    }

    /// The same reservation as the 2026-12 coordinator writes it in format 3 (postcard).
    /// Every later coordinator must read these bytes back; a change to the structs that
    /// breaks this test breaks every embedded log written since.
    const WRITTEN_2026_12_HEX: &str = concat!(
        "0300000000000000070963616e63656c6c65640106636c69656e74f6c1e285e368d696e685e368d696e685e3",
        "6801f6c1e285e36801f6c1e285e368020573746f636b000114687474703a2f2f73746f636b2f686f6c64732f",
        "31b6ebe985e3680963616e63656c6c656401000001f6c1e285e368087061796d656e7473011168747470733a",
        "2f2f7061792f686f6c64730d7b22616d6f756e74223a31307d010d417574686f72697a6174696f6e08426561",
        "726572207800096162616e646f6e6564010107676176652075700001f6c1e285e368107b226f72646572223a",
        "22412d3137227d010a6f726465722d412d313701233037303730373037303730373037303730373037303730",
        "3730373037303730372d303006f6c1e285e36807637265617465640106747279696e6700000000000000f6c1",
        "e285e3680663616c6c6564000000010101037472790103353033010c01f6c1e285e368f6c1e285e368076368",
        "616e676564010a63616e63656c6c696e670106747279696e670106636c69656e740000000000f6c1e285e368",
        "0663616c6c65640000000101011e7472792028616761696e2c20746f206c6561726e20746865206c696e6b29",
        "010767617665207570010700f6c1e285e3680663616c6c65640000000100010663616e63656c010963616e63",
        "656c6c6564010300f6c1e285e368076368616e676564010963616e63656c6c6564010a63616e63656c6c696e",
        "670106636c69656e74000000000000011a687474703a2f2f6f72646572732f63616c6c6261636b732f313702",
        "0117353033205365727669636520556e617661696c61626c6501f6c1e285e368",
    );

    #[test]
    fn a_binary_record_written_by_the_2026_12_coordinator_reads_back() {
        let mut json = vec![2, 0, 0, 0, 0, 0, 0, 0, 7];
        json.extend_from_slice(WRITTEN_2026_11.as_bytes());
        let id: ReservationId = "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b".parse().unwrap();
        let expected = decode(id, &json).unwrap();
        let written = encode(&expected, Format::Binary);
        let hex: String = written.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, WRITTEN_2026_12_HEX, "the binary format changed");
        let bytes: Vec<u8> = (0..WRITTEN_2026_12_HEX.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&WRITTEN_2026_12_HEX[i..i + 2], 16).unwrap())
            .collect();
        assert_eq!(decode(id, &bytes).unwrap(), expected);
        assert!(
            bytes.len() * 2 < json.len(),
            "{} bytes against {} as JSON",
            bytes.len(),
            json.len()
        );
    }

    #[test]
    fn a_record_with_a_reserved_participant_without_its_link_is_refused() {
        let broken = WRITTEN_2026_11.replacen(
            r#""link":null,"state":"abandoned""#,
            r#""link":null,"state":"reserved""#,
            1,
        );
        let mut bytes = vec![2, 0, 0, 0, 0, 0, 0, 0, 7];
        bytes.extend_from_slice(broken.as_bytes());
        let error = decode(ReservationId::new(), &bytes).unwrap_err();
        assert!(
            error.to_string().contains("reserved without a link"),
            "{error}"
        );
    }

    #[test]
    fn a_record_of_a_cancelled_reservation_without_its_reason_is_refused() {
        let broken = WRITTEN_2026_11.replacen(r#""reason":"client""#, r#""reason":null"#, 1);
        let mut bytes = vec![2, 0, 0, 0, 0, 0, 0, 0, 7];
        bytes.extend_from_slice(broken.as_bytes());
        let error = decode(ReservationId::new(), &bytes).unwrap_err();
        assert!(error.to_string().contains("without a reason"), "{error}");
    }

    #[test]
    fn an_unknown_record_version_is_refused() {
        let id = ReservationId::new();
        assert!(matches!(
            decode(id, &[9, b'{', b'}']),
            Err(StoreError::Corrupt { .. })
        ));
    }
}

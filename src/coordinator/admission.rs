//! Admission and validation: whether a client's write is taken now (recovery finished, the
//! log not saturated) and whether what it asks for is allowed (participant count, link
//! expiry, the outgoing call policy). Nothing here writes.

use chrono::{DateTime, Utc};

use super::{Coordinator, CoordinatorError};
use crate::domain::{NewParticipant, ParticipantSource, ParticipantUrl};

impl Coordinator {
    /// Admits a client's write: refused while recovery reads the log back (so that recovery
    /// sees the log as the previous run left it, and counts it exactly), and when the log is
    /// saturated.
    pub(super) fn admit(&self) -> Result<crate::store::Admission, CoordinatorError> {
        if !self.is_ready() {
            return Err(CoordinatorError::Recovering);
        }
        Ok(self.inner.store.admit()?)
    }

    /// Refuses a participant the coordinator must not call (the outgoing call policy);
    /// `field` names its URL in the request.
    pub(super) async fn check_policy(
        &self,
        p: &NewParticipant,
        field: &str,
    ) -> Result<(), CoordinatorError> {
        let url = match &p.source {
            ParticipantSource::Link(link) => &link.uri,
            ParticipantSource::Try(t) => &t.url,
        };
        self.check_url(url, field).await
    }

    /// Refuses a URL the coordinator must not call; `field` names it in the request.
    pub(super) async fn check_url(
        &self,
        url: &ParticipantUrl,
        field: &str,
    ) -> Result<(), CoordinatorError> {
        self.inner
            .client
            .policy()
            .check(url)
            .await
            .map_err(|e| invalid(field, format!("({url}) is refused: {e}")))
    }

    pub(super) fn check_participant_count(&self, count: usize) -> Result<(), CoordinatorError> {
        let max = self.inner.limits.max_participants;
        if count > max {
            return Err(too_many("participants", max));
        }
        Ok(())
    }
}

pub(super) fn invalid(field: &str, message: impl Into<String>) -> CoordinatorError {
    CoordinatorError::Invalid {
        field: field.to_owned(),
        message: message.into(),
    }
}

pub(super) fn too_many(field: &str, max: usize) -> CoordinatorError {
    invalid(
        field,
        format!("at most {max} participants per reservation (the configured maximum)"),
    )
}

/// The JSON path of a participant's URL under `at` (`participants[0]` → `participants[0].link.uri`).
pub(super) fn source_field(p: &NewParticipant, at: &str) -> String {
    let dot = if at.is_empty() { "" } else { "." };
    match &p.source {
        ParticipantSource::Link(_) => format!("{at}{dot}link.uri"),
        ParticipantSource::Try(_) => format!("{at}{dot}try.url"),
    }
}

pub(super) fn check_link_expiry(
    p: &NewParticipant,
    now: DateTime<Utc>,
    at: &str,
) -> Result<(), CoordinatorError> {
    let dot = if at.is_empty() { "" } else { "." };
    match &p.source {
        ParticipantSource::Link(link) if link.expires <= now => Err(invalid(
            &format!("{at}{dot}link.expires"),
            "is in the past: the participant has already cancelled this link",
        )),
        _ => Ok(()),
    }
}

//! Admission and validation: whether a client's write is taken now (recovery finished, the
//! log not saturated) and whether what it asks for is allowed (participant count, link
//! expiry, the outgoing call policy). Nothing here writes.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{Coordinator, CoordinatorError, Field, ParticipantPart};
use crate::domain::{NewParticipant, ParticipantSource, ParticipantUrl};

/// How long a write that arrives during recovery waits for it before it is answered 503.
pub const RECOVERY_WAIT: Duration = Duration::from_secs(5);

impl Coordinator {
    /// Admits a client's write: held while recovery reads the log back (so that recovery
    /// sees the log as the previous run left it, and counts it exactly), at most
    /// [`RECOVERY_WAIT`], then refused; refused when the log is saturated. A coordinator just
    /// built on an empty or small log (a test suite's) so answers its first write as
    /// documented, however soon it comes.
    pub(super) async fn admit(&self) -> Result<crate::store::Admission, CoordinatorError> {
        if !self.is_ready() && !self.wait_ready(RECOVERY_WAIT).await {
            return Err(CoordinatorError::Recovering);
        }
        Ok(self.inner.store.admit()?)
    }

    /// Runs a client's write once admitted ([`Coordinator::admit`]). With the embedded log the
    /// caller waits for it at most `--store-timeout`: a slow disk gets the caller a 503
    /// ([`CoordinatorError::SlowLog`]) while the write goes on to its end (durable, then its
    /// driver, deadline and waiters) as a task of its own, as it does when the caller goes
    /// away: a write half done is never left behind. It runs in the caller's task until then
    /// (no hand-off to another thread on the way of every request).
    pub(super) async fn client_write<T, F>(
        &self,
        work: impl FnOnce(Coordinator, crate::store::Admission) -> F,
    ) -> Result<T, CoordinatorError>
    where
        F: Future<Output = Result<T, CoordinatorError>> + Send + 'static,
        T: Send + 'static,
    {
        let admitted = self.admit().await?;
        let work = Box::pin(work(self.clone(), admitted));
        let Some(limit) = self.inner.store.client_wait() else {
            return work.await;
        };
        let write = Finishing {
            work: Some(work),
            tasks: self.inner.tasks.clone(),
        };
        tokio::time::timeout(limit, write)
            .await
            .unwrap_or(Err(CoordinatorError::SlowLog(limit)))
    }

    /// Refuses a participant the coordinator must not call (the outgoing call policy);
    /// `index` is its place in the request (`None`: the one participant of a join).
    pub(super) async fn check_policy(
        &self,
        p: &NewParticipant,
        index: Option<usize>,
    ) -> Result<(), CoordinatorError> {
        let (url, part) = match &p.source {
            ParticipantSource::Link(link) => (&link.uri, ParticipantPart::LinkUri),
            ParticipantSource::Try(t) => (&t.url, ParticipantPart::TryUrl),
        };
        self.check_url(url, Field::Participant { index, part })
            .await
    }

    /// Refuses a URL the coordinator must not call; `field` names it in the request.
    pub(super) async fn check_url(
        &self,
        url: &ParticipantUrl,
        field: Field,
    ) -> Result<(), CoordinatorError> {
        self.inner
            .client
            .check(url)
            .await
            .map_err(|e| invalid(field, format!("({url}) is refused: {e}")))
    }

    pub(super) fn check_participant_count(&self, count: usize) -> Result<(), CoordinatorError> {
        let max = self.inner.limits.max_participants;
        if count > max {
            return Err(too_many(max));
        }
        Ok(())
    }
}

pub(super) fn invalid(field: Field, message: impl Into<String>) -> CoordinatorError {
    CoordinatorError::Invalid {
        field,
        message: message.into(),
    }
}

pub(super) fn too_many(max: usize) -> CoordinatorError {
    invalid(
        Field::Participants,
        format!("at most {max} participants per reservation (the configured maximum)"),
    )
}

/// Refuses a link that has already expired; `index` is the participant's place in the
/// request (`None`: the one participant of a join).
pub(super) fn check_link_expiry(
    p: &NewParticipant,
    now: DateTime<Utc>,
    index: Option<usize>,
) -> Result<(), CoordinatorError> {
    match &p.source {
        ParticipantSource::Link(link) if link.expires <= now => Err(invalid(
            Field::Participant {
                index,
                part: ParticipantPart::LinkExpires,
            },
            "is in the past: the participant has already cancelled this link",
        )),
        _ => Ok(()),
    }
}

/// A client's write, polled where it was started; dropped before its end (the caller gave
/// up waiting, or went away), it is finished as a task of its own.
struct Finishing<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    work: Option<Pin<Box<F>>>,
    tasks: tokio_util::task::TaskTracker,
}

impl<F> Future for Finishing<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let work = self
            .work
            .as_mut()
            .expect("a finished write is not polled again");
        let done = std::task::ready!(work.as_mut().poll(cx));
        self.work = None;
        Poll::Ready(done)
    }
}

impl<F> Drop for Finishing<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn drop(&mut self) {
        if let (Some(work), Ok(runtime)) = (self.work.take(), tokio::runtime::Handle::try_current())
        {
            self.tasks.spawn_on(work, &runtime);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::oneshot;

    use super::Finishing;

    /// A write that waits for `gate`, then says it finished on `done`.
    fn write(
        gate: oneshot::Receiver<()>,
        done: oneshot::Sender<u32>,
    ) -> Finishing<impl std::future::Future<Output = u32> + Send> {
        Finishing {
            work: Some(Box::pin(async move {
                gate.await.expect("the gate opens");
                done.send(7).expect("the test listens");
                7
            })),
            tasks: tokio_util::task::TaskTracker::new(),
        }
    }

    #[tokio::test]
    async fn a_write_its_caller_waits_for_answers_in_place() {
        let (open, gate) = oneshot::channel();
        let (done, _finished) = oneshot::channel();
        open.send(()).unwrap();
        assert_eq!(write(gate, done).await, 7);
    }

    #[tokio::test]
    async fn a_write_its_caller_stops_waiting_for_is_finished_as_a_task() {
        let (open, gate) = oneshot::channel();
        let (done, finished) = oneshot::channel();
        let waited = tokio::time::timeout(Duration::from_millis(10), write(gate, done)).await;
        assert!(waited.is_err(), "the gate was closed: the caller gave up");
        open.send(())
            .expect("the abandoned write still waits at its gate");
        let result = tokio::time::timeout(Duration::from_secs(30), finished).await;
        assert_eq!(result.expect("finished in time").expect("finished"), 7);
    }
}

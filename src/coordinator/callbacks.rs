//! Completion callbacks: `POST` the final representation until it is acknowledged.

use super::drivers::Slot;
use super::{Coordinator, CoordinatorError};
use crate::domain::{Reservation, SpanParent};
use crate::telemetry::ActiveSpan;

impl Coordinator {
    /// `POST`s the final representation to the callback until it answers 2xx (or the
    /// coordinator stops: recovery resumes it at the next start).
    pub(super) async fn deliver_callback(
        &self,
        r: &Reservation,
        phase: Option<SpanParent>,
        slot: &mut Slot<'_>,
    ) -> Result<(), CoordinatorError> {
        let Some(callback) = &r.callback() else {
            return Ok(());
        };
        let body = (self.inner.render)(r, self.now());
        let mut schedule = self.inner.retry.schedule();
        loop {
            if self.inner.shutdown.is_cancelled() {
                return Ok(());
            }
            let span = self.call_span(phase, None, None, &callback.url);
            let traceparent = span.as_ref().map(ActiveSpan::traceparent);
            let call =
                self.inner
                    .client
                    .callback(&callback.url, body.clone(), traceparent.as_deref());
            let outcome = self.calling(span, call).await;
            let (delivered, error, delay) = match outcome {
                Ok(()) => (true, None, None),
                Err(hint) => {
                    let delay = schedule.next_delay(hint.retry_after);
                    tracing::warn!(reservation_id = %r.id(), url = %callback.url, error = %hint.error,
                        ?delay, "completion callback failed; retrying");
                    (false, Some(hint.error), Some(delay))
                }
            };
            self.update(r.id(), |r, now| {
                r.note_callback(now, delivered, error.clone());
            })
            .await?;
            slot.release();
            match delay {
                Some(delay) if self.pause(delay, None).await => {}
                _ => return Ok(()),
            }
        }
    }
}

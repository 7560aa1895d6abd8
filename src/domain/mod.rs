//! The reservation model: ids, participant links, the state machine and deadline arithmetic.
//!
//! Pure: no async, no I/O, no clock reads. Every instant is passed in by the caller, so each
//! rule here is tested with explicit times.

mod history;
mod id;
mod limits;
mod link;
mod participant;
mod reservation;
mod state;
mod trace;

pub use history::{CallVerb, Happening, HistoryEntry, OperatorAction, HISTORY_LIMIT};
pub use id::{ParseIdError, ReservationId};
pub use limits::Limits;
pub use link::{ParseUrlError, ParticipantLink, ParticipantUrl};
pub use participant::{
    participant_transition, NewParticipant, Participant, ParticipantEvent, ParticipantSource,
    ParticipantState, SharedTry, StoredParticipant, TryRequest,
};
pub use reservation::{deadline_for, Callback, Reservation, StoredReservation};
pub use state::{transition, Event, Reason, Refusal, State, Status};
pub use trace::{SpanParent, TraceContext};

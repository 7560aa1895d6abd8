//! The reservation model: ids, participant links, the state machine and deadline arithmetic.
//!
//! Pure: no async, no I/O, no clock reads. Every instant is passed in by the caller, so each
//! rule here is tested with explicit times.

mod id;
mod link;
mod reservation;
mod state;
mod trace;

pub use id::{ParseIdError, ReservationId};
pub use link::{ParseUrlError, ParticipantLink, ParticipantUrl};
pub use reservation::{
    deadline_for, NewParticipant, Participant, ParticipantSource, ParticipantState, Reservation,
    TryRequest,
};
pub use state::{transition, Event, Reason, Refusal, State};
pub use trace::TraceContext;

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

/// A reservation's id: a UUIDv7, so ids sort by creation time (newest last in the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReservationId(Uuid);

impl ReservationId {
    /// A fresh, time-ordered id.
    #[must_use]
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// The 16 big-endian bytes of the id: the store's key, sorted by creation time.
    #[must_use]
    pub fn to_bytes(self) -> [u8; 16] {
        *self.0.as_bytes()
    }

    /// Rebuilds an id from the store's key bytes.
    #[must_use]
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(Uuid::from_bytes(bytes))
    }

    /// When the id was made (UUIDv7 carries its creation time, to the millisecond).
    #[must_use]
    pub fn created_at(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        let (secs, nanos) = self.0.get_timestamp()?.to_unix();
        chrono::DateTime::from_timestamp(i64::try_from(secs).ok()?, nanos)
    }

    /// The smallest id made at `at` (to the millisecond): every id made earlier sorts before
    /// it, so it bounds a range of the log by time.
    #[must_use]
    pub fn first_made_at(at: chrono::DateTime<chrono::Utc>) -> Self {
        let millis = u64::try_from(at.timestamp_millis()).unwrap_or(0);
        Self(uuid::Builder::from_unix_timestamp_millis(millis, &[0; 10]).into_uuid())
    }

    /// The id as a [`Uuid`].
    #[must_use]
    pub fn as_uuid(&self) -> &Uuid {
        &self.0
    }
}

impl Default for ReservationId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for ReservationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// The text is not a reservation id.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a reservation id (a UUID)")]
pub struct ParseIdError(String);

impl FromStr for ReservationId {
    type Err = ParseIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s)
            .map(Self)
            .map_err(|_| ParseIdError(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_id_made_at_an_instant_sorts_after_every_earlier_one() {
        let id = ReservationId::new();
        let made = id.created_at().unwrap();
        assert!(ReservationId::first_made_at(made) <= id);
        assert!(ReservationId::first_made_at(made + chrono::Duration::milliseconds(1)) > id);
    }

    #[test]
    fn ids_round_trip_through_text_and_bytes() {
        let id = ReservationId::new();
        assert_eq!(id.to_string().parse::<ReservationId>().unwrap(), id);
        assert_eq!(ReservationId::from_bytes(id.to_bytes()), id);
    }

    #[test]
    fn later_ids_sort_after_earlier_ones() {
        let first = ReservationId::new();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let second = ReservationId::new();
        assert!(first.to_bytes() < second.to_bytes());
    }

    #[test]
    fn text_that_is_not_a_uuid_is_refused() {
        assert!("17".parse::<ReservationId>().is_err());
    }
}

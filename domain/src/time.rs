//! Instants as the domain sees them: UTC, microsecond precision, no clock.
//!
//! The domain never reads the time; callers pass `now` in. In human-readable
//! formats (JSON) a timestamp is an RFC 3339 string; in binary formats (stored
//! events) it is the number of microseconds since the Unix epoch, which keeps the
//! stored form independent of any date library.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// An instant in UTC, in microseconds since 1970-01-01T00:00:00Z.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

/// Earliest accepted instant (year 1970) and latest (year 9999): anything outside
/// is a typo, and keeping the range small keeps arithmetic on it overflow-free.
const MIN_MICROS: i64 = 0;
const MAX_MICROS: i64 = 253_402_300_799_999_999;

impl Timestamp {
    /// The instant `micros` microseconds after the Unix epoch, clamped to years 1970–9999.
    pub fn from_unix_micros(micros: i64) -> Self {
        Self(micros.clamp(MIN_MICROS, MAX_MICROS))
    }

    pub fn as_unix_micros(self) -> i64 {
        self.0
    }

    /// Parses an RFC 3339 date-time with any offset, and normalises it to UTC.
    ///
    /// # Errors
    /// `InvalidTimestamp` when the text is not RFC 3339 or lies outside years 1970–9999.
    pub fn parse_rfc3339(text: &str) -> Result<Self, InvalidTimestamp> {
        let parsed = OffsetDateTime::parse(text, &Rfc3339).map_err(|_| InvalidTimestamp)?;
        let micros = parsed.unix_timestamp_nanos() / 1_000;
        let micros = i64::try_from(micros).map_err(|_| InvalidTimestamp)?;
        if (MIN_MICROS..=MAX_MICROS).contains(&micros) {
            Ok(Self(micros))
        } else {
            Err(InvalidTimestamp)
        }
    }

    /// The RFC 3339 form in UTC (`2026-11-28T09:30:00Z`, with a fraction only when needed).
    pub fn to_rfc3339(self) -> String {
        let odt = OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1_000)
            .expect("the range of Timestamp is within the range of OffsetDateTime");
        odt.format(&Rfc3339)
            .expect("every in-range UTC instant formats as RFC 3339")
    }

    /// This instant moved by `micros` (saturating at the ends of the range).
    pub fn plus_micros(self, micros: i64) -> Self {
        Self::from_unix_micros(self.0.saturating_add(micros))
    }

    /// Microseconds from `self` until `later`; zero when `later` is not later.
    pub fn micros_until(self, later: Timestamp) -> u64 {
        u64::try_from(later.0 - self.0).unwrap_or(0)
    }
}

/// The text is not an RFC 3339 date-time between years 1970 and 9999.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("expected an RFC 3339 date-time such as 2026-11-28T09:30:00Z")]
pub struct InvalidTimestamp;

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.serialize_str(&self.to_rfc3339())
        } else {
            serializer.serialize_i64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let text = String::deserialize(deserializer)?;
            Timestamp::parse_rfc3339(&text).map_err(de::Error::custom)
        } else {
            let micros = i64::deserialize(deserializer)?;
            if (MIN_MICROS..=MAX_MICROS).contains(&micros) {
                Ok(Timestamp(micros))
            } else {
                Err(de::Error::custom("timestamp out of range"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips_in_utc() {
        let t = Timestamp::parse_rfc3339("2026-11-28T10:30:00+01:00").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-28T09:30:00Z");
        assert_eq!(Timestamp::parse_rfc3339(&t.to_rfc3339()), Ok(t));
    }

    #[test]
    fn fractions_are_kept_to_the_microsecond() {
        let t = Timestamp::parse_rfc3339("2026-11-28T09:30:00.123456Z").unwrap();
        assert_eq!(t.as_unix_micros() % 1_000_000, 123_456);
        assert_eq!(t.to_rfc3339(), "2026-11-28T09:30:00.123456Z");
    }

    #[test]
    fn text_that_is_not_rfc3339_is_rejected() {
        for bad in [
            "",
            "2026-11-28",
            "28/11/2026 09:30",
            "2026-11-28T09:30:00",
            "0999-01-01T00:00:00Z",
        ] {
            assert_eq!(
                Timestamp::parse_rfc3339(bad),
                Err(InvalidTimestamp),
                "{bad}"
            );
        }
    }

    #[test]
    fn json_uses_rfc3339() {
        let t = Timestamp::from_unix_micros(0);
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            "\"1970-01-01T00:00:00Z\""
        );
    }
}

//! Wall-clock time as the journal, plans and branch expiries write it.

use std::time::Duration;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Now, UTC, RFC 3339 with sub-second precision.
pub fn now_rfc3339() -> String {
    format_rfc3339(OffsetDateTime::now_utc())
}

pub fn format_rfc3339(at: OffsetDateTime) -> String {
    at.format(&Rfc3339)
        .unwrap_or_else(|_| at.unix_timestamp().to_string())
}

/// `now + after`, truncated to whole seconds: Neon wants `expires_at` with second precision.
pub fn rfc3339_seconds_from_now(after: Duration) -> String {
    let at = OffsetDateTime::now_utc() + after;
    format_rfc3339(at.replace_nanosecond(0).unwrap_or(at))
}

pub fn parse_rfc3339(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text, &Rfc3339).ok()
}

/// A compact UTC stamp for names: `20261126t102233z`.
pub fn compact_stamp() -> String {
    let now = OffsetDateTime::now_utc();
    format!(
        "{:04}{:02}{:02}t{:02}{:02}{:02}z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    )
}

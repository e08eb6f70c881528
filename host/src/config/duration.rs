//! Durations as written in the manifest: a number and a unit, `"500ms"`,
//! `"30s"`, `"5m"`, `"1h 30m"` (the `humantime` syntax, which covers EMQX's
//! `"15s"` style). A bare number is refused: `30` could mean seconds or
//! milliseconds, and guessing wrong is a silent factor of 1000.

use std::time::Duration;

/// Parses a duration, or says why it is not one.
pub(super) fn parse(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| e.to_string())
}

/// The hint shown under a duration that does not parse.
pub(super) const HINT: &str = "write a number and a unit, e.g. \"500ms\", \"30s\", \"5m\"";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_from_nanoseconds_to_hours_parse() {
        assert_eq!(parse("10ms"), Ok(Duration::from_millis(10)));
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse(" 5m "), Ok(Duration::from_secs(300)));
        assert_eq!(parse("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("250us"), Ok(Duration::from_micros(250)));
    }

    #[test]
    fn numbers_without_a_unit_and_unknown_units_are_refused() {
        assert!(parse("30").is_err());
        assert!(parse("30 parsecs").unwrap_err().contains("parsecs"));
        assert!(parse("").is_err());
        assert!(parse("soon").is_err());
    }
}

//! Time for windows: the injected clock, event time read from a payload,
//! and the watermark.
//!
//! Nothing here reads the system clock except [`SystemClock`]; the window
//! operator takes a [`Clock`] so tests drive time by hand.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// Where "now" comes from, in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync {
    /// The current time.
    fn now_ms(&self) -> i64;
}

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or_default()
    }
}

/// A clock that moves only when told (tests, golden files, benchmarks).
#[derive(Clone, Debug, Default)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    /// A clock showing `now_ms`.
    pub fn new(now_ms: i64) -> Self {
        ManualClock(Arc::new(AtomicI64::new(now_ms)))
    }

    /// Sets the time.
    pub fn set(&self, now_ms: i64) {
        self.0.store(now_ms, Ordering::SeqCst);
    }

    /// Moves the time forward.
    pub fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// How an event-time field is written.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum TimeFormat {
    /// Milliseconds since the Unix epoch (a number).
    Ms,
    /// Seconds since the Unix epoch (a number; fractions keep their ms).
    S,
    /// An RFC 3339 string: `2024-05-01T12:00:00.250Z`, `…+08:00`.
    Rfc3339,
}

/// Reads an event time (ms) from a JSON value written in `format`.
pub fn parse_event_time(value: &serde_json::Value, format: TimeFormat) -> Result<i64, String> {
    match format {
        TimeFormat::Ms => value
            .as_i64()
            .or_else(|| value.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
            .ok_or_else(|| format!("is {value}, not a number of milliseconds")),
        TimeFormat::S => value
            .as_f64()
            .filter(|f| f.is_finite())
            .map(|s| (s * 1000.0).round() as i64)
            .ok_or_else(|| format!("is {value}, not a number of seconds")),
        TimeFormat::Rfc3339 => match value.as_str() {
            Some(text) => parse_rfc3339(text),
            None => Err(format!("is {value}, not an RFC 3339 string")),
        },
    }
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)` (`t` or a space may
/// separate date and time) into ms since the epoch.
pub fn parse_rfc3339(text: &str) -> Result<i64, String> {
    let bad = || format!("\"{text}\" is not an RFC 3339 time (like 2024-05-01T12:00:00Z)");
    let b = text.as_bytes();
    if b.len() < 20 {
        return Err(bad());
    }
    let num = |range: std::ops::Range<usize>| -> Result<i64, String> {
        let s = text.get(range).ok_or_else(bad)?;
        if !s.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        s.parse::<i64>().map_err(|_| bad())
    };
    if b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err(bad());
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return Err(bad());
    }
    let mut at = 19;
    let mut millis = 0;
    if b[at] == b'.' {
        let start = at + 1;
        let mut end = start;
        while end < b.len() && b[end].is_ascii_digit() {
            end += 1;
        }
        if end == start {
            return Err(bad());
        }
        // Milliseconds: the first three digits, padded.
        let digits = &text[start..end.min(start + 3)];
        millis = digits.parse::<i64>().map_err(|_| bad())? * 10_i64.pow(3 - digits.len() as u32);
        at = end;
    }
    let offset_minutes = match &text[at..] {
        "Z" | "z" => 0,
        rest if rest.len() == 6
            && matches!(rest.as_bytes()[0], b'+' | b'-')
            && rest.as_bytes()[3] == b':' =>
        {
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            let (h, m) = (num(at + 1..at + 3)?, num(at + 4..at + 6)?);
            if h > 23 || m > 59 {
                return Err(bad());
            }
            sign * (h * 60 + m)
        }
        _ => return Err(bad()),
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second.min(59) - offset_minutes * 60;
    Ok(seconds * 1000 + millis)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The watermark of one window step: "no event older than this is still
/// expected".
///
/// In processing time it is the clock. In event time it is the largest
/// event time seen minus the bounded out-of-orderness; when no event has
/// arrived for `idle_timeout` (processing time), event time is assumed to
/// go on at the clock's pace from the last event, so an idle stream does
/// not hold its last windows open for ever. It never goes back.
#[derive(Clone, Debug)]
pub struct Watermark {
    event_time: bool,
    bound_ms: i64,
    idle_timeout_ms: Option<i64>,
    max_event_ms: Option<i64>,
    last_arrival_ms: i64,
    current: i64,
}

impl Watermark {
    /// A watermark in processing time (`event_time = false`) or event time.
    pub fn new(event_time: bool, bound_ms: i64, idle_timeout_ms: Option<i64>) -> Self {
        Watermark {
            event_time,
            bound_ms,
            idle_timeout_ms,
            max_event_ms: None,
            last_arrival_ms: 0,
            current: i64::MIN,
        }
    }

    /// Notes an event of time `event_ms` arriving at `now_ms`.
    pub fn observe(&mut self, event_ms: i64, now_ms: i64) {
        self.max_event_ms = Some(self.max_event_ms.map_or(event_ms, |m| m.max(event_ms)));
        self.last_arrival_ms = now_ms;
    }

    /// The watermark at `now_ms` (and remembers it: it never goes back).
    pub fn advance(&mut self, now_ms: i64) -> i64 {
        let candidate = if !self.event_time {
            now_ms
        } else if let Some(max) = self.max_event_ms {
            let mut wm = max.saturating_sub(self.bound_ms);
            if let Some(idle) = self.idle_timeout_ms {
                let quiet = now_ms.saturating_sub(self.last_arrival_ms);
                if quiet >= idle {
                    wm = wm.saturating_add(quiet);
                }
            }
            wm
        } else {
            i64::MIN
        };
        self.current = self.current.max(candidate);
        self.current
    }

    /// The watermark as last advanced.
    pub fn current(&self) -> i64 {
        self.current
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn event_times_in_every_format() {
        assert_eq!(
            parse_event_time(&json!(1_700_000_000_123_i64), TimeFormat::Ms),
            Ok(1_700_000_000_123)
        );
        assert_eq!(
            parse_event_time(&json!(1_700_000_000.5), TimeFormat::S),
            Ok(1_700_000_000_500)
        );
        assert_eq!(
            parse_event_time(&json!(1_700_000_000), TimeFormat::S),
            Ok(1_700_000_000_000)
        );
        assert_eq!(
            parse_event_time(&json!("2023-11-14T22:13:20Z"), TimeFormat::Rfc3339),
            Ok(1_700_000_000_000)
        );
        assert_eq!(
            parse_event_time(&json!("2023-11-15T06:13:20.25+08:00"), TimeFormat::Rfc3339),
            Ok(1_700_000_000_250)
        );
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(
            parse_rfc3339("2024-02-29 23:59:59.999-00:30"),
            Ok(1_709_251_199_999 + 1_800_000)
        );
        assert!(parse_event_time(&json!("12"), TimeFormat::Ms).is_err());
        assert!(parse_rfc3339("2023-02-29T00:00:00Z").is_err());
        assert!(parse_rfc3339("2023-11-14T22:13:20").is_err());
        assert!(parse_rfc3339("2023-11-14T22:13:20+0800").is_err());
    }

    #[test]
    fn the_watermark_trails_the_largest_event_and_never_goes_back() {
        let mut wm = Watermark::new(true, 2_000, None);
        assert_eq!(wm.advance(0), i64::MIN);
        wm.observe(10_000, 0);
        assert_eq!(wm.advance(0), 8_000);
        wm.observe(9_000, 1);
        assert_eq!(wm.advance(1), 8_000);
        wm.observe(15_000, 2);
        assert_eq!(wm.advance(2), 13_000);
    }

    #[test]
    fn an_idle_stream_moves_the_watermark_with_the_clock() {
        let mut wm = Watermark::new(true, 2_000, Some(5_000));
        wm.observe(10_000, 100);
        assert_eq!(wm.advance(5_099), 8_000, "not idle yet");
        assert_eq!(wm.advance(5_100), 13_000, "idle: 5 s of clock added");
        assert_eq!(wm.advance(7_100), 15_000);
        wm.observe(11_000, 7_200);
        assert_eq!(wm.advance(7_200), 15_000, "never goes back");
    }

    #[test]
    fn processing_time_is_the_clock() {
        let mut wm = Watermark::new(false, 0, None);
        assert_eq!(wm.advance(42), 42);
    }
}

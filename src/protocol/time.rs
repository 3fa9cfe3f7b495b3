//! Timestamps on the wire (PROTOCOL.md sections 1, 4 `message:read` and 8).
//!
//! The server keeps times as Unix milliseconds and only meets text at the edges: it prints
//! exactly what JavaScript's `Date.prototype.toISOString` prints, so clients can compare
//! strings, and it parses the RFC 3339 date-times clients send as `seenDate`. Both are
//! written by hand on std alone, using Howard Hinnant's `days_from_civil` /
//! `civil_from_days`, because formatting is on the hot path (every message sent) and the
//! accepted input is narrower than what general date libraries take.

use std::time::{SystemTime, UNIX_EPOCH};

const MS_PER_DAY: i64 = 86_400_000;

/// Earliest printable instant, 0000-01-01T00:00:00.000Z: `toISOString` switches to six-digit
/// signed years outside 0..=9999, a form the protocol never uses.
const MIN_MS: i64 = days_from_civil(0, 1, 1) * MS_PER_DAY;
/// Latest printable instant, 9999-12-31T23:59:59.999Z.
const MAX_MS: i64 = days_from_civil(10_000, 1, 1) * MS_PER_DAY - 1;

/// Milliseconds since the Unix epoch, from the system clock.
pub fn now_millis() -> i64 {
    // A clock before 1970 is a broken host; reporting it as negative keeps the arithmetic
    // honest rather than panicking.
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
    }
}

/// RFC 3339 UTC with exactly three fraction digits and 'Z' — what JS Date.prototype.toISOString prints, e.g. "2026-11-25T19:07:21.123Z". Only years 0..=9999 need to be supported (clamp outside that range).
pub fn format_millis(ms: i64) -> String {
    let ms = ms.clamp(MIN_MS, MAX_MS);
    let days = ms.div_euclid(MS_PER_DAY);
    let ms_of_day = ms.rem_euclid(MS_PER_DAY);
    let (year, month, day) = civil_from_days(days);
    // After the clamp every field is non-negative and fits its width.
    let ms_of_day = ms_of_day as u32;

    let mut out = String::with_capacity(24);
    push_digits(&mut out, year as u32, 4);
    out.push('-');
    push_digits(&mut out, month, 2);
    out.push('-');
    push_digits(&mut out, day, 2);
    out.push('T');
    push_digits(&mut out, ms_of_day / 3_600_000, 2);
    out.push(':');
    push_digits(&mut out, ms_of_day / 60_000 % 60, 2);
    out.push(':');
    push_digits(&mut out, ms_of_day / 1000 % 60, 2);
    out.push('.');
    push_digits(&mut out, ms_of_day % 1000, 3);
    out.push('Z');
    out
}

/// Parse an RFC 3339 date-time into ms since epoch. Accepts 'T' or 't' separator, 'Z' or 'z' or a numeric offset like +05:30 / -00:00, any number of fraction digits (>=1 when a '.' is present; digits past milliseconds are truncated, not rounded). Rejects: a space separator, leap second ":60", out-of-range fields (month 13, Feb 30, Feb 29 in non-leap years, hour 24, minute 60, offset hours > 23), missing parts, trailing garbage, non-ASCII. Returns None when invalid.
pub fn parse_rfc3339_millis(s: &str) -> Option<i64> {
    // Working on bytes rejects non-ASCII for free: no multi-byte sequence matches a digit
    // or any of the separators.
    let mut p = Parser(s.as_bytes());

    let year = p.digits(4)?;
    p.expect(b'-')?;
    let month = p.digits(2)?;
    p.expect(b'-')?;
    let day = p.digits(2)?;
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }

    p.expect_any(b"Tt")?;
    let hour = p.digits(2)?;
    p.expect(b':')?;
    let minute = p.digits(2)?;
    p.expect(b':')?;
    let second = p.digits(2)?;
    // 60 would be a leap second, which Unix time cannot represent.
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }

    let mut millis = 0;
    if p.eat(b'.') {
        let mut count = 0;
        while let Some(d) = p.digit() {
            // Truncate, not round: a time must never move past the instant the client meant.
            if count < 3 {
                millis = millis * 10 + d;
            }
            count += 1;
        }
        if count == 0 {
            return None;
        }
        for _ in count..3 {
            millis *= 10;
        }
    }

    let offset_minutes = match p.next()? {
        b'Z' | b'z' => 0,
        sign @ (b'+' | b'-') => {
            let hours = p.digits(2)?;
            p.expect(b':')?;
            let minutes = p.digits(2)?;
            if hours > 23 || minutes > 59 {
                return None;
            }
            let total = i64::from(hours * 60 + minutes);
            if sign == b'-' {
                -total
            } else {
                total
            }
        }
        _ => return None,
    };
    if !p.0.is_empty() {
        return None;
    }

    let days = days_from_civil(i64::from(year), month, day);
    let local_ms = days * MS_PER_DAY
        + i64::from(hour) * 3_600_000
        + i64::from(minute) * 60_000
        + i64::from(second) * 1000
        + i64::from(millis);
    // The offset is how far local time is ahead of UTC, so it comes off.
    Some(local_ms - offset_minutes * 60_000)
}

/// Appends `value` as exactly `width` decimal digits, zero-padded.
fn push_digits(out: &mut String, value: u32, width: u32) {
    let mut scale = 10u32.pow(width - 1);
    while scale > 0 {
        out.push(char::from(b'0' + (value / scale % 10) as u8));
        scale /= 10;
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Hinnant's `days_from_civil`).
const fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    // Counting years from March puts the leap day last, so month lengths need no table.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => {
            29
        }
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// A cursor over the input bytes; every method consumes only on success.
struct Parser<'a>(&'a [u8]);

impl Parser<'_> {
    fn next(&mut self) -> Option<u8> {
        let (&first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(first)
    }

    fn eat(&mut self, byte: u8) -> bool {
        self.expect(byte).is_some()
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        self.expect_any(&[byte])
    }

    fn expect_any(&mut self, allowed: &[u8]) -> Option<()> {
        match self.0.split_first() {
            Some((first, rest)) if allowed.contains(first) => {
                self.0 = rest;
                Some(())
            }
            _ => None,
        }
    }

    fn digit(&mut self) -> Option<u32> {
        match self.0.split_first() {
            Some((&d @ b'0'..=b'9', rest)) => {
                self.0 = rest;
                Some(u32::from(d - b'0'))
            }
            _ => None,
        }
    }

    /// Exactly `count` digits, as RFC 3339 fixes the width of every field.
    fn digits(&mut self, count: usize) -> Option<u32> {
        (0..count).try_fold(0, |acc, _| Some(acc * 10 + self.digit()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values checked against JavaScript's `new Date(ms).toISOString()`.
    const KNOWN: &[(i64, &str)] = &[
        (0, "1970-01-01T00:00:00.000Z"),
        (1_764_097_641_123, "2025-11-25T19:07:21.123Z"),
        (1_795_633_641_123, "2026-11-25T19:07:21.123Z"),
        (951_782_400_000, "2000-02-29T00:00:00.000Z"),
        (1_234_567_890_123, "2009-02-13T23:31:30.123Z"),
        (946_684_799_999, "1999-12-31T23:59:59.999Z"),
        (4_102_444_800_000, "2100-01-01T00:00:00.000Z"),
        (-1, "1969-12-31T23:59:59.999Z"),
        (-86_400_000, "1969-12-31T00:00:00.000Z"),
        (-2_208_988_800_001, "1899-12-31T23:59:59.999Z"),
        (-62_167_219_200_000, "0000-01-01T00:00:00.000Z"),
        (253_402_300_799_999, "9999-12-31T23:59:59.999Z"),
    ];

    #[test]
    fn formats_known_values() {
        for &(ms, text) in KNOWN {
            assert_eq!(format_millis(ms), text, "{ms}");
            assert_eq!(format_millis(ms).len(), 24);
        }
    }

    #[test]
    fn parses_known_values() {
        for &(ms, text) in KNOWN {
            assert_eq!(parse_rfc3339_millis(text), Some(ms), "{text}");
        }
    }

    #[test]
    fn round_trips_across_days_and_leap_years() {
        // A prime step visits every month, weekday and leap-year rule over 0..=9999.
        let mut ms = MIN_MS;
        while ms <= MAX_MS {
            assert_eq!(parse_rfc3339_millis(&format_millis(ms)), Some(ms), "{ms}");
            ms += 7_777_777_777;
        }
    }

    #[test]
    fn clamps_outside_four_digit_years() {
        assert_eq!(format_millis(i64::MIN), "0000-01-01T00:00:00.000Z");
        assert_eq!(format_millis(MIN_MS - 1), "0000-01-01T00:00:00.000Z");
        assert_eq!(format_millis(i64::MAX), "9999-12-31T23:59:59.999Z");
        assert_eq!(format_millis(MAX_MS + 1), "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn now_is_recent() {
        // 2020-01-01 and 2200-01-01: a sanity bound, not a clock test.
        assert!((1_577_836_800_000..7_258_118_400_000).contains(&now_millis()));
    }

    #[test]
    fn offsets_shift_to_utc() {
        let utc = parse_rfc3339_millis("2026-11-25T19:07:21.123Z").unwrap();
        let hour = 3_600_000;
        assert_eq!(
            parse_rfc3339_millis("2026-11-25T19:07:21.123+01:00"),
            Some(utc - hour)
        );
        assert_eq!(
            parse_rfc3339_millis("2026-11-25T19:07:21.123-01:00"),
            Some(utc + hour)
        );
        assert_eq!(
            parse_rfc3339_millis("2026-11-26T00:37:21.123+05:30"),
            Some(utc)
        );
        assert_eq!(
            parse_rfc3339_millis("2026-11-25T19:07:21.123-00:00"),
            Some(utc)
        );
        assert_eq!(
            parse_rfc3339_millis("2026-11-25T19:07:21.123+00:00"),
            Some(utc)
        );
        assert_eq!(
            parse_rfc3339_millis("2026-11-25T19:07:21.123+23:59"),
            Some(utc - 23 * hour - 59 * 60_000)
        );
        // An offset can carry the instant across the epoch.
        assert_eq!(
            parse_rfc3339_millis("1970-01-01T00:00:00+00:01"),
            Some(-60_000)
        );
    }

    #[test]
    fn lower_case_separator_and_zulu() {
        let utc = Some(1_795_633_641_123);
        assert_eq!(parse_rfc3339_millis("2026-11-25t19:07:21.123z"), utc);
        assert_eq!(parse_rfc3339_millis("2026-11-25t19:07:21.123Z"), utc);
        assert_eq!(parse_rfc3339_millis("2026-11-25T19:07:21.123z"), utc);
    }

    #[test]
    fn fractions_of_any_length_truncate_to_millis() {
        let base = 1_795_633_641_000;
        let cases = [
            ("", 0),
            (".1", 100),
            (".12", 120),
            (".123", 123),
            (".1239", 123),
            (".999999999999999999999999", 999),
            (".000999", 0),
        ];
        for (fraction, ms) in cases {
            let text = format!("2026-11-25T19:07:21{fraction}Z");
            assert_eq!(parse_rfc3339_millis(&text), Some(base + ms), "{text}");
        }
        assert_eq!(
            parse_rfc3339_millis("2026-11-25T19:07:00.1239Z"),
            Some(1_795_633_620_123)
        );
    }

    #[test]
    fn rejects_invalid_input() {
        let bad = [
            // separators
            "2026-11-25 19:07:21Z",
            "2026-11-25_19:07:21Z",
            "2026/11/25T19:07:21Z",
            // leap second and out-of-range fields
            "2016-12-31T23:59:60Z",
            "2026-13-01T00:00:00Z",
            "2026-00-01T00:00:00Z",
            "2026-01-00T00:00:00Z",
            "2026-01-32T00:00:00Z",
            "2026-04-31T00:00:00Z",
            "2024-02-30T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "1900-02-29T00:00:00Z",
            "2026-11-25T24:00:00Z",
            "2026-11-25T19:60:00Z",
            "2026-11-25T19:07:21+24:00",
            "2026-11-25T19:07:21+05:60",
            // missing parts
            "",
            "2026-11-25",
            "2026-11-25T",
            "2026-11-25T19:07",
            "2026-11-25T19:07:21",
            "2026-11-25T19:07:21.Z",
            "2026-11-25T19:07:21.123",
            "2026-11-25T19:07:21+05",
            "2026-11-25T19:07:21+0530",
            "2026-11-25T19:07:21+5:30",
            "26-11-25T19:07:21Z",
            "2026-1-25T19:07:21Z",
            "2026-11-25T9:07:21Z",
            // trailing garbage and extra digits
            "2026-11-25T19:07:21Zx",
            "2026-11-25T19:07:21Z ",
            "2026-11-25T19:07:21+05:30:00",
            "12026-11-25T19:07:21Z",
            " 2026-11-25T19:07:21Z",
            "+2026-11-25T19:07:21Z",
            // non-ASCII, including digits that are not ASCII digits
            "2026-11-25T19:07:21.123Ｚ",
            "２026-11-25T19:07:21Z",
            "2026-11-25T19:07:21.1２3Z",
            "2026-11-25T19:07:21.123\u{2212}01:00",
        ];
        for text in bad {
            assert_eq!(parse_rfc3339_millis(text), None, "{text:?}");
        }
    }

    #[test]
    fn accepts_the_edges_of_each_range() {
        assert!(parse_rfc3339_millis("2024-02-29T00:00:00Z").is_some());
        assert!(parse_rfc3339_millis("2000-02-29T00:00:00Z").is_some());
        assert!(parse_rfc3339_millis("2026-12-31T23:59:59.999Z").is_some());
        assert!(parse_rfc3339_millis("2026-11-25T19:07:21-23:59").is_some());
    }
}

//! Timestamps on arbitrary input: parsing never panics, whatever parses formats to the
//! 24-character `toISOString` form, which parses back to the same instant when it lies in
//! the printable years 0..=9999; and formatting any i64 gives a string that parses back to
//! that instant clamped into those years.
#![no_main]

use chat_server::protocol::time::{format_millis, parse_rfc3339_millis};
use libfuzzer_sys::fuzz_target;

fn is_iso_string(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 24
        && b.iter().enumerate().all(|(i, &c)| match i {
            4 | 7 => c == b'-',
            10 => c == b'T',
            13 | 16 => c == b':',
            19 => c == b'.',
            23 => c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

fuzz_target!(|data: &[u8]| {
    let first = parse_rfc3339_millis("0000-01-01T00:00:00.000Z").unwrap();
    let last = parse_rfc3339_millis("9999-12-31T23:59:59.999Z").unwrap();

    if let Ok(text) = std::str::from_utf8(data) {
        if let Some(ms) = parse_rfc3339_millis(text) {
            let formatted = format_millis(ms);
            assert!(is_iso_string(&formatted), "{formatted}");
            if (first..=last).contains(&ms) {
                assert_eq!(parse_rfc3339_millis(&formatted), Some(ms), "{text}");
            }
        }
    }

    if let Ok(bytes) = <[u8; 8]>::try_from(data.get(..8).unwrap_or_default()) {
        let ms = i64::from_le_bytes(bytes);
        let formatted = format_millis(ms);
        assert!(is_iso_string(&formatted), "{ms} gave {formatted}");
        assert_eq!(
            parse_rfc3339_millis(&formatted),
            Some(ms.clamp(first, last))
        );
    }
});

//! Query strings: strict percent-decoding into (name, value) pairs, and typed parameters.
//!
//! A leaf: it knows nothing of the server, so the HTTP API, the plain handshake and the
//! Socket.IO handshake all decode their query strings the same way.

use crate::protocol::ChatError;

/// Decodes a query string into (name, value) pairs.
pub fn query_pairs(query: &str) -> Result<Vec<(String, String)>, ChatError> {
    query
        .split('&')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (name, value) = part.split_once('=').unwrap_or((part, ""));
            let name = percent_decode_strict(&name.replace('+', " "));
            let value = percent_decode_strict(&value.replace('+', " "));
            match (name, value) {
                (Some(n), Some(v)) => Ok((n, v)),
                _ => Err(ChatError::bad_request(
                    "the query string is not valid percent-encoding",
                )),
            }
        })
        .collect()
}

pub fn query_value<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// A request parameter of the HTTP API. Given twice it is a `bad_request`, like a JSON
/// array where one value belongs: taking either copy would be a guess.
pub fn query_param<'a>(
    pairs: &'a [(String, String)],
    name: &str,
) -> Result<Option<&'a str>, ChatError> {
    let mut values = pairs.iter().filter(|(n, _)| n == name);
    match (values.next(), values.next()) {
        (Some(_), Some(_)) => Err(ChatError::bad_request(format!(
            "{name} is given more than once"
        ))),
        (first, _) => Ok(first.map(|(_, v)| v.as_str())),
    }
}

pub fn query_number(pairs: &[(String, String)], name: &str) -> Result<Option<u64>, ChatError> {
    query_param(pairs, name)?
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                ChatError::bad_request(format!("{name} must be a whole number, got {v:?}"))
            })
        })
        .transpose()
}

/// Percent-decodes strictly: every `%` must start a valid escape and the result must be
/// UTF-8; `None` otherwise.
pub fn percent_decode_strict(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_percent_decoding() {
        assert_eq!(
            percent_decode_strict("alice-bob").as_deref(),
            Some("alice-bob")
        );
        assert_eq!(percent_decode_strict("a%40b").as_deref(), Some("a@b"));
        assert_eq!(percent_decode_strict("%zz"), None);
        assert_eq!(percent_decode_strict("%4"), None);
        assert_eq!(percent_decode_strict("%ff"), None);
    }

    #[test]
    fn query_numbers() {
        let pairs = query_pairs("limit=5&before=&cursor=c1.x").unwrap();
        assert_eq!(query_number(&pairs, "limit").unwrap(), Some(5));
        assert!(query_number(&pairs, "before").is_err());
        assert_eq!(query_number(&pairs, "other").unwrap(), None);
        assert_eq!(query_value(&pairs, "cursor"), Some("c1.x"));
        assert!(query_pairs("limit=%zz").is_err());
        let repeated = query_pairs("limit=5&cursor=a&limit=5&cursor=b").unwrap();
        assert!(query_number(&repeated, "limit").is_err());
        assert!(query_param(&repeated, "cursor").is_err());
        assert!(query_param(&repeated, "before").unwrap().is_none());
    }
}

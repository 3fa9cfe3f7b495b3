//! Reading `GET /metrics`: a strict Prometheus text parser and a scrape helper.

use std::collections::HashMap;

use super::Server;

/// Parses a Prometheus text page strictly enough to catch a malformed line: `# HELP name
/// text`, `# TYPE name kind`, blank lines, and samples `name{label="value",...} number`.
/// Returns every sample by its series (`name{labels}` as printed).
pub fn parse_prometheus(text: &str) -> HashMap<String, f64> {
    let name_ok = |name: &str| {
        !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    let mut samples = HashMap::new();
    let mut typed = HashMap::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix("# ") {
            let mut parts = comment.splitn(3, ' ');
            let (keyword, name, rest) = (parts.next(), parts.next(), parts.next());
            let name = name.unwrap_or_else(|| panic!("bad comment line {line:?}"));
            assert!(name_ok(name), "bad metric name in {line:?}");
            match keyword {
                Some("HELP") => assert!(rest.is_some_and(|t| !t.is_empty()), "{line:?}"),
                Some("TYPE") => {
                    let kind = rest.unwrap_or_default();
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                        "bad type in {line:?}"
                    );
                    typed.insert(name.to_owned(), kind.to_owned());
                }
                _ => panic!("unknown comment {line:?}"),
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value in {line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("value not numeric in {line:?}")),
        };
        let name = match series.split_once('{') {
            Some((name, labels)) => {
                let labels = labels
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed labels in {line:?}"));
                for label in labels.split(',') {
                    let (key, quoted) = label
                        .split_once('=')
                        .unwrap_or_else(|| panic!("bad label in {line:?}"));
                    assert!(name_ok(key), "bad label name in {line:?}");
                    assert!(
                        quoted.len() >= 2 && quoted.starts_with('"') && quoted.ends_with('"'),
                        "unquoted label value in {line:?}"
                    );
                }
                name
            }
            None => series,
        };
        assert!(name_ok(name), "bad metric name in {line:?}");
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .filter(|base| typed.get(*base).is_some_and(|k| k == "histogram"))
            .unwrap_or(name);
        assert!(
            typed.contains_key(family),
            "sample before its TYPE: {line:?}"
        );
        samples.insert(series.to_owned(), value);
    }
    samples
}

/// One scrape of `/metrics`, parsed.
pub async fn scrape(server: &Server) -> HashMap<String, f64> {
    let (status, body) = server.get("/metrics", None).await;
    assert_eq!(status, 200);
    parse_prometheus(body.as_str().expect("a text page"))
}

/// The value of a series (`name` or `name{labels}` as printed); panics when absent.
pub fn value(samples: &HashMap<String, f64>, series: &str) -> f64 {
    *samples
        .get(series)
        .unwrap_or_else(|| panic!("{series} missing from {samples:?}"))
}

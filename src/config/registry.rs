//! The key registry: every setting's dotted name, how its value is parsed and where it is
//! stored in a [`Config`].
//!
//! One table rather than serde on the structs, because each key is named in three places
//! (the file, an environment variable, errors) and must parse both typed TOML and plain
//! text from the environment or a flag with the same rules and the same one-line message.
//! The environment variable is derived from the name, so the two cannot drift apart, and
//! `config.toml.example` is tested against this table.

use std::net::SocketAddr;
use std::path::PathBuf;

use toml::Value;

use super::{Config, ConfigError, LogFormat, WebhookConfig, WebhookEvent};

/// A set of keys, with the keys that once existed. The server has one, [`REGISTRY`]; tests
/// build others to exercise the sources on shapes the real settings do not have yet.
pub(super) struct Registry {
    /// Every setting.
    pub(super) keys: &'static [Key],
    /// Settings that no longer exist, so that an old file or environment fails with a
    /// pointer to the new key instead of being silently ignored.
    pub(super) replaced: &'static [Replaced],
    /// Arrays of tables (`[[webhooks]]`): a list of like things, each with its own keys.
    pub(super) arrays: &'static [Array],
}

/// What a dotted name is, as the file walker needs to know it.
pub(super) enum Entry<'r> {
    /// A setting.
    Key(&'r Key),
    /// A table that holds settings, directly or in further tables (`limits`, `a.b`).
    Section,
    /// A setting that was renamed or redefined.
    Replaced(&'r Replaced),
    /// An array of tables (`[[webhooks]]`).
    Array(&'r Array),
    /// Nothing this server knows.
    Unknown,
}

impl Registry {
    /// What `name` (a full dotted name, such as `limits.max_frame_bytes`) is.
    pub(super) fn lookup(&self, name: &str) -> Entry<'_> {
        if let Some(replaced) = self.replaced.iter().find(|r| r.old == name) {
            return Entry::Replaced(replaced);
        }
        if let Some(key) = self.key(name) {
            return Entry::Key(key);
        }
        if let Some(array) = self.arrays.iter().find(|a| a.name == name) {
            return Entry::Array(array);
        }
        // A section exists because something lives under it; replaced keys count, so
        // that their pointer is shown even once their whole section is gone.
        let mut names = self.keys.iter().map(|k| k.name);
        let mut old = self.replaced.iter().map(|r| r.old);
        let under = |n: &str| n.strip_prefix(name).is_some_and(|r| r.starts_with('.'));
        if names.any(under) || old.any(under) {
            Entry::Section
        } else {
            Entry::Unknown
        }
    }

    /// The setting named exactly `name`.
    pub(super) fn key(&self, name: &str) -> Option<&Key> {
        self.keys.iter().find(|k| k.name == name)
    }
}

/// One setting: its dotted key and how to store a raw value into a `Config`.
pub(super) struct Key {
    /// The dotted name: its place in the file, the source of its environment variable.
    pub(super) name: &'static str,
    /// Parses a raw value and stores it; the error says what was expected and got.
    pub(super) set: fn(&mut Config, Raw<'_>) -> Result<(), String>,
}

impl Key {
    /// Parses and stores `raw`; an error names the key and `source` (`in FILE`,
    /// `from CHAT_X`, `from --flag`).
    pub(super) fn apply(
        &self,
        cfg: &mut Config,
        raw: Raw<'_>,
        source: &str,
    ) -> Result<(), ConfigError> {
        (self.set)(cfg, raw).map_err(|m| ConfigError(format!("{}: {m} ({source})", self.name)))
    }
}

/// An array of tables: each element is a table of the same keys, added to a `Vec` in
/// [`Config`]. The environment cannot spell a list of tables, so its variables
/// (`CHAT_WEBHOOK_URL`, from [`Array::env_prefix`]) configure a single element.
pub(super) struct Array {
    /// The array's name in the file (`webhooks`).
    pub(super) name: &'static str,
    /// The singular that prefixes its variables (`webhook` → `CHAT_WEBHOOK_URL`).
    pub(super) env_prefix: &'static str,
    /// Appends an element with every key at its default.
    pub(super) push: fn(&mut Config),
    /// How many elements there are.
    pub(super) len: fn(&Config) -> usize,
    /// The keys of one element.
    pub(super) keys: &'static [ItemKey],
}

/// One key of an array's elements.
pub(super) struct ItemKey {
    /// The key's name inside the element (`url`).
    pub(super) name: &'static str,
    /// Parses a raw value and stores it in the element at the index.
    pub(super) set: fn(&mut Config, usize, Raw<'_>) -> Result<(), String>,
}

impl Array {
    /// The variable of one of its keys: `url` → `CHAT_WEBHOOK_URL`.
    pub(super) fn env_var(&self, key: &ItemKey) -> String {
        env_var(&format!("{}.{}", self.env_prefix, key.name))
    }

    /// Parses and stores `raw` into element `index`; an error names the element's key
    /// (`webhooks[1].url`) and `source`.
    pub(super) fn apply(
        &self,
        key: &ItemKey,
        cfg: &mut Config,
        index: usize,
        raw: Raw<'_>,
        source: &str,
    ) -> Result<(), ConfigError> {
        (key.set)(cfg, index, raw).map_err(|m| {
            ConfigError(format!(
                "{}[{index}].{}: {m} ({source})",
                self.name, key.name
            ))
        })
    }
}

/// A key that was renamed or redefined.
pub(super) struct Replaced {
    /// The name that is no longer accepted.
    pub(super) old: &'static str,
    /// The key to use instead.
    pub(super) new: &'static str,
    /// What changed besides the name.
    pub(super) why: &'static str,
}

/// `limits.max_frame_bytes` → `CHAT_LIMITS_MAX_FRAME_BYTES`.
pub(super) fn env_var(key: &str) -> String {
    format!("CHAT_{}", key.replace('.', "_").to_ascii_uppercase())
}

/// A value before conversion: typed from the file, text from the environment or a flag.
#[derive(Clone, Copy)]
pub(super) enum Raw<'a> {
    Toml(&'a Value),
    Text(&'a str),
}

impl<'a> Raw<'a> {
    /// The value as quoted in error messages.
    pub(super) fn show(self) -> String {
        match self {
            Raw::Text(s) => format!("{s:?}"),
            Raw::Toml(Value::String(s)) => format!("{s:?}"),
            Raw::Toml(Value::Integer(i)) => i.to_string(),
            Raw::Toml(Value::Float(f)) => f.to_string(),
            Raw::Toml(Value::Boolean(b)) => b.to_string(),
            Raw::Toml(Value::Datetime(_)) => "a date-time".to_owned(),
            Raw::Toml(Value::Array(_)) => "an array".to_owned(),
            Raw::Toml(Value::Table(_)) => "a table".to_owned(),
        }
    }

    fn as_str(self) -> Option<&'a str> {
        match self {
            Raw::Text(s) => Some(s),
            Raw::Toml(Value::String(s)) => Some(s),
            Raw::Toml(_) => None,
        }
    }
}

/// `key!("limits.send_burst", positive_int, |c| c.limits.send_burst)`: a key whose value
/// `parse` turns into the field's type.
macro_rules! key {
    ($name:literal, $parse:expr, |$c:ident| $field:expr) => {
        Key {
            name: $name,
            set: |$c, raw| {
                $field = $parse(raw)?;
                Ok(())
            },
        }
    };
}
#[cfg(test)]
pub(super) use key;

/// `item_key!("url", http_url, |h| h.url)`: a key of a `[[webhooks]]` element.
macro_rules! webhook_key {
    ($name:literal, $parse:expr, |$h:ident| $field:expr) => {
        ItemKey {
            name: $name,
            set: |c, i, raw| {
                let $h: &mut WebhookConfig = &mut c.webhooks[i];
                $field = $parse(raw)?;
                Ok(())
            },
        }
    };
}

/// The server's settings.
pub(super) static REGISTRY: Registry = Registry {
    keys: KEYS,
    replaced: REPLACED,
    arrays: ARRAYS,
};

const ARRAYS: &[Array] = &[Array {
    name: "webhooks",
    env_prefix: "webhook",
    push: |c| c.webhooks.push(WebhookConfig::default()),
    len: |c| c.webhooks.len(),
    keys: &[
        webhook_key!("url", http_url, |h| h.url),
        webhook_key!("secret", non_empty_str, |h| h.secret),
        webhook_key!("events", webhook_events, |h| h.events),
        webhook_key!("offline_only", boolean, |h| h.offline_only),
        webhook_key!("timeout_secs", positive_int, |h| h.timeout_secs),
        webhook_key!("initial_backoff_ms", positive_int, |h| h.initial_backoff_ms),
        webhook_key!("max_backoff_secs", positive_int, |h| h.max_backoff_secs),
        webhook_key!("give_up_after_secs", positive_int, |h| h.give_up_after_secs),
    ],
}];

const REPLACED: &[Replaced] = &[Replaced {
    old: "storage.cache_rooms",
    new: "memory.recent_cache_bytes",
    why: "a budget in bytes, not rooms",
}];

/// Every setting; the single source of truth for file keys and environment variables.
const KEYS: &[Key] = &[
    key!("data", |r| non_empty_str(r).map(PathBuf::from), |c| c
        .data_dir),
    key!("bind", socket_addr, |c| c.bind),
    key!("jwt_secret", |r| non_empty_str(r).map(Some), |c| c
        .jwt_secret),
    key!("log_format", log_format, |c| c.log_format),
    key!("limits.max_message_bytes", positive_int, |c| c
        .limits
        .max_message_bytes),
    key!("limits.max_frame_bytes", positive_int, |c| c
        .limits
        .max_frame_bytes),
    key!("limits.max_outbound_bytes", positive_int, |c| c
        .limits
        .max_outbound_bytes),
    key!("limits.max_connections", positive_int, |c| c
        .limits
        .max_connections),
    key!("limits.max_connections_per_user", positive_int, |c| c
        .limits
        .max_connections_per_user),
    key!("limits.max_pending_upgrades", positive_int, |c| c
        .limits
        .max_pending_upgrades),
    key!("limits.send_rate_per_sec", positive_rate, |c| c
        .limits
        .send_rate_per_sec),
    key!("limits.send_burst", positive_int, |c| c.limits.send_burst),
    key!("limits.request_rate_per_sec", positive_rate, |c| c
        .limits
        .request_rate_per_sec),
    key!("limits.request_burst", positive_int, |c| c
        .limits
        .request_burst),
    key!("limits.ping_after_secs", positive_int, |c| c
        .limits
        .ping_after_secs),
    key!("limits.idle_timeout_secs", positive_int, |c| c
        .limits
        .idle_timeout_secs),
    key!("limits.max_http_body_bytes", positive_int, |c| c
        .limits
        .max_http_body_bytes),
    key!("limits.request_timeout_secs", positive_int, |c| c
        .limits
        .request_timeout_secs),
    // Blocking users (issue 16, item 4).
    key!("limits.max_blocks_per_user", positive_int, |c| c
        .limits
        .max_blocks_per_user),
    key!("limits.edit_window_secs", non_negative_int, |c| c
        .limits
        .edit_window_secs),
    key!("storage.max_batch", positive_int, |c| c.storage.max_batch),
    key!("memory.redb_cache_bytes", byte_size, |c| c
        .memory
        .redb_cache_bytes),
    key!("memory.recent_cache_bytes", byte_size, |c| c
        .memory
        .recent_cache_bytes),
    key!("memory.outbound_total_bytes", byte_size, |c| c
        .memory
        .outbound_total_bytes),
    key!("memory.outbound_cut_floor_bytes", byte_size, |c| c
        .memory
        .outbound_cut_floor_bytes),
    // Stalled outbound queues (issue 11, the 30-minute soak).
    key!("memory.outbound_stall_secs", positive_int, |c| c
        .memory
        .outbound_stall_secs),
    key!("memory.rate_limit_users", positive_int, |c| c
        .memory
        .rate_limit_users),
    key!("memory.webhook_window_events", positive_int, |c| c
        .memory
        .webhook_window_events),
    // Delivered-mark hints (issue 16).
    key!("memory.mark_hint_rooms", positive_int, |c| c
        .memory
        .mark_hint_rooms),
    key!("cors.allowed_origins", origins, |c| c.cors.allowed_origins),
    // Retention (issue 14).
    key!("retention.max_age_days", retention_days, |c| c
        .retention
        .max_age_days),
    // The admin API and online backups.
    key!("admin_secret", |r| non_empty_str(r).map(Some), |c| c
        .admin_secret),
    key!(
        "backup.dir",
        |r| non_empty_str(r).map(|d| Some(PathBuf::from(d))),
        |c| c.backup.dir
    ),
    key!("backup.keep", positive_int, |c| c.backup.keep),
    key!("memory.backup_buffer_bytes", byte_size, |c| c
        .memory
        .backup_buffer_bytes),
    key!("memory.export_buffer_bytes", byte_size, |c| c
        .memory
        .export_buffer_bytes),
    // Cluster mode (issue 17): the PostgreSQL store, then the fan-out over NATS.
    key!(
        "cluster.postgres_url",
        |r| non_empty_str(r).map(Some),
        |c| c.cluster.postgres_url
    ),
    key!("cluster.postgres_pool_size", positive_int, |c| c
        .cluster
        .postgres_pool_size),
    key!("cluster.nats_url", |r| nats_urls(r).map(Some), |c| c
        .cluster
        .nats_url),
    key!("cluster.node_name", |r| non_empty_str(r).map(Some), |c| c
        .cluster
        .node_name),
    key!("cluster.queue_events", positive_int, |c| c
        .cluster
        .queue_events),
    key!("cluster.fanout_tasks", positive_int, |c| c
        .cluster
        .fanout_tasks),
    key!("cluster.subscription_messages", positive_int, |c| c
        .cluster
        .subscription_messages),
    key!("cluster.tracked_rooms_per_user", positive_int, |c| c
        .cluster
        .tracked_rooms_per_user),
    key!("cluster.presence_pending_users", positive_int, |c| c
        .cluster
        .presence_pending_users),
];

/// One or more NATS server addresses, comma-separated (`nats://host:4222`, or `host:4222`),
/// each checked here so that a typo fails at start rather than in the first reconnect.
fn nats_urls(raw: Raw<'_>) -> Result<String, String> {
    let text = non_empty_str(raw)?;
    for url in text.split(',').map(str::trim) {
        if url.is_empty() {
            return Err(format!("an empty address in {text:?}"));
        }
        url.parse::<async_nats::ServerAddr>()
            .map_err(|e| format!("expected nats://host:port, got {url:?}: {e}"))?;
    }
    Ok(text)
}

/// Days of retention: 0 (off) up to [`super::MAX_RETENTION_DAYS`].
fn retention_days(raw: Raw<'_>) -> Result<u64, String> {
    let n = match raw {
        Raw::Text(s) => s.parse::<u64>().ok(),
        Raw::Toml(Value::Integer(i)) => u64::try_from(*i).ok(),
        Raw::Toml(_) => None,
    };
    match n {
        Some(n) if n <= super::MAX_RETENTION_DAYS => Ok(n),
        _ => Err(format!(
            "expected 0 (keep forever) to {} days, got {}",
            super::MAX_RETENTION_DAYS,
            raw.show()
        )),
    }
}

fn non_empty_str(raw: Raw<'_>) -> Result<String, String> {
    match raw.as_str() {
        Some(s) if !s.is_empty() => Ok(s.to_owned()),
        // The value is not echoed: this key may be the secret.
        _ => Err("expected a non-empty string".to_owned()),
    }
}

fn socket_addr(raw: Raw<'_>) -> Result<SocketAddr, String> {
    raw.as_str().and_then(|s| s.parse().ok()).ok_or_else(|| {
        format!(
            "expected an address like 127.0.0.1:8080, got {}",
            raw.show()
        )
    })
}

fn log_format(raw: Raw<'_>) -> Result<LogFormat, String> {
    match raw.as_str() {
        Some("pretty") => Ok(LogFormat::Pretty),
        Some("json") => Ok(LogFormat::Json),
        _ => Err(format!(
            "expected \"pretty\" or \"json\", got {}",
            raw.show()
        )),
    }
}

pub(super) fn positive_int<T: TryFrom<u64>>(raw: Raw<'_>) -> Result<T, String> {
    let n = match raw {
        Raw::Text(s) => s.parse::<u64>().ok(),
        Raw::Toml(Value::Integer(i)) => u64::try_from(*i).ok(),
        Raw::Toml(_) => None,
    };
    match n {
        Some(n) if n > 0 => T::try_from(n).map_err(|_| format!("{} is too large", raw.show())),
        _ => Err(format!("expected a positive integer, got {}", raw.show())),
    }
}

/// A whole number, 0 included (for settings where 0 means "off").
fn non_negative_int(raw: Raw<'_>) -> Result<u64, String> {
    let n = match raw {
        Raw::Text(s) => s.parse::<u64>().ok(),
        Raw::Toml(Value::Integer(i)) => u64::try_from(*i).ok(),
        Raw::Toml(_) => None,
    };
    n.ok_or_else(|| format!("expected a whole number (0 or more), got {}", raw.show()))
}

/// A positive byte count: an integer, or a string with a binary unit such as `"64MiB"`.
fn byte_size(raw: Raw<'_>) -> Result<usize, String> {
    let n = match raw {
        Raw::Toml(Value::Integer(i)) => u64::try_from(*i).ok(),
        _ => raw.as_str().and_then(parse_bytes),
    };
    match n {
        Some(n) if n > 0 => usize::try_from(n).map_err(|_| format!("{} is too large", raw.show())),
        _ => Err(format!(
            "expected a positive number of bytes such as 33554432 or \"32MiB\", got {}",
            raw.show()
        )),
    }
}

/// "33554432", "512KiB", "64MiB", "1GiB" (powers of 1024); `None` for anything else.
fn parse_bytes(s: &str) -> Option<u64> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let scale: u64 = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return None,
    };
    if digits.is_empty() {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(scale)
}

fn positive_rate(raw: Raw<'_>) -> Result<f64, String> {
    let n = match raw {
        Raw::Text(s) => s.parse::<f64>().ok(),
        Raw::Toml(Value::Float(f)) => Some(*f),
        // Whole numbers are natural for a rate; TOML would otherwise demand `20.0`.
        Raw::Toml(Value::Integer(i)) => Some(*i as f64),
        Raw::Toml(_) => None,
    };
    n.filter(|n| n.is_finite() && *n > 0.0)
        .ok_or_else(|| format!("expected a positive number, got {}", raw.show()))
}

fn boolean(raw: Raw<'_>) -> Result<bool, String> {
    match raw {
        Raw::Toml(Value::Boolean(b)) => Ok(*b),
        Raw::Text("true") => Ok(true),
        Raw::Text("false") => Ok(false),
        _ => Err(format!("expected true or false, got {}", raw.show())),
    }
}

/// Only `http` and `https`, with a host: a webhook never goes anywhere else.
fn http_url(raw: Raw<'_>) -> Result<String, String> {
    let expected = || {
        format!(
            "expected an http:// or https:// URL with a host, got {}",
            raw.show()
        )
    };
    let text = raw.as_str().ok_or_else(expected)?;
    let uri: http::Uri = text.parse().map_err(|_| expected())?;
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
    if !scheme_ok || uri.host().is_none_or(str::is_empty) {
        return Err(expected());
    }
    Ok(text.to_owned())
}

/// A list of event names: a TOML array, or comma-separated text from the environment.
fn webhook_events(raw: Raw<'_>) -> Result<Vec<WebhookEvent>, String> {
    let names: Vec<&str> = match raw {
        Raw::Text(s) => s
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .collect(),
        Raw::Toml(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| format!("expected an array of event names, got {}", raw.show()))
            })
            .collect::<Result<_, _>>()?,
        Raw::Toml(_) => {
            return Err(format!(
                "expected an array of event names, got {}",
                raw.show()
            ))
        }
    };
    let mut events = Vec::with_capacity(names.len());
    for name in names {
        let event = match name {
            "message.created" => WebhookEvent::MessageCreated,
            "message.seen" => WebhookEvent::MessageSeen,
            "user.erased" => WebhookEvent::UserErased,
            other => {
                return Err(format!(
                    "unknown event {other:?}; known: \"message.created\", \"message.seen\", \
                     \"user.erased\""
                ))
            }
        };
        if !events.contains(&event) {
            events.push(event);
        }
    }
    Ok(events)
}

fn origins(raw: Raw<'_>) -> Result<Vec<String>, String> {
    let expected = || format!("expected an array of origin strings, got {}", raw.show());
    match raw {
        // The environment has no arrays, so a comma-separated list stands in for one.
        Raw::Text(s) => Ok(s
            .split(',')
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .map(str::to_owned)
            .collect()),
        Raw::Toml(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned).ok_or_else(expected))
            .collect(),
        Raw::Toml(_) => Err(expected()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{error, file, load};
    use super::*;

    #[test]
    fn bad_value_names_key_and_source() {
        let e = error(load(None, &[("CHAT_LIMITS_MAX_FRAME_BYTES", "abc")]));
        assert_eq!(
            e,
            "config error: limits.max_frame_bytes: expected a positive integer, got \"abc\" \
             (from CHAT_LIMITS_MAX_FRAME_BYTES)"
        );
        let e = error(load(None, &[("CHAT_BIND", "nowhere")]));
        assert!(
            e.starts_with("config error: bind: ") && e.ends_with("(from CHAT_BIND)"),
            "{e}"
        );
        let e = error(load(None, &[("CHAT_LIMITS_SEND_BURST", "5000000000")]));
        assert!(e.contains("limits.send_burst"), "{e}");
        let e = error(load(None, &[("CHAT_LIMITS_REQUEST_RATE_PER_SEC", "inf")]));
        assert!(e.contains("limits.request_rate_per_sec"), "{e}");
        let e = error(load(None, &[("CHAT_LOG_FORMAT", "xml")]));
        assert!(e.contains("log_format"), "{e}");
    }

    #[test]
    fn retention_takes_zero_to_a_century_of_days() {
        assert_eq!(load(None, &[]).unwrap().retention.max_age_days, 0);
        let f = file("[retention]\nmax_age_days = 36500\n");
        assert_eq!(load(Some(&f), &[]).unwrap().retention.max_age_days, 36_500);
        let c = load(None, &[("CHAT_RETENTION_MAX_AGE_DAYS", "30")]).unwrap();
        assert_eq!(c.retention.max_age_days, 30);
        for bad in ["36501", "-1", "30d"] {
            let e = error(load(None, &[("CHAT_RETENTION_MAX_AGE_DAYS", bad)]));
            assert!(
                e.starts_with("config error: retention.max_age_days: "),
                "{e}"
            );
        }
        let f = file("[retention]\nmax_age_days = \"30\"\n");
        assert!(error(load(Some(&f), &[])).contains("retention.max_age_days"));
    }

    #[test]
    fn zero_limit_is_refused() {
        let f = file("[storage]\nmax_batch = 0\n");
        let e = error(load(Some(&f), &[]));
        assert!(e.starts_with("config error: storage.max_batch: "), "{e}");
        let e = error(load(None, &[("CHAT_MEMORY_REDB_CACHE_BYTES", "0MiB")]));
        assert!(
            e.starts_with("config error: memory.redb_cache_bytes: "),
            "{e}"
        );
        let e = error(load(None, &[("CHAT_LIMITS_SEND_RATE_PER_SEC", "0")]));
        assert!(
            e.starts_with("config error: limits.send_rate_per_sec: "),
            "{e}"
        );
        let f = file("[limits]\nping_after_secs = -5\n");
        assert!(error(load(Some(&f), &[])).contains("limits.ping_after_secs"));
    }

    #[test]
    fn byte_sizes_take_integers_or_binary_units() {
        let f = file(
            "[memory]\nredb_cache_bytes = 1000\nrecent_cache_bytes = \"512KiB\"\n\
             outbound_total_bytes = \"1GiB\"\nrate_limit_users = 7\n",
        );
        let c = load(Some(&f), &[]).unwrap();
        assert_eq!(c.memory.redb_cache_bytes, 1000);
        assert_eq!(c.memory.recent_cache_bytes, 512 << 10);
        assert_eq!(c.memory.outbound_total_bytes, 1 << 30);
        assert_eq!(c.memory.rate_limit_users, 7);
        let c = load(
            None,
            &[
                ("CHAT_MEMORY_REDB_CACHE_BYTES", "64MiB"),
                ("CHAT_MEMORY_OUTBOUND_TOTAL_BYTES", "4096"),
            ],
        )
        .unwrap();
        assert_eq!(c.memory.redb_cache_bytes, 64 << 20);
        assert_eq!(c.memory.outbound_total_bytes, 4096);
        for bad in [
            "64 MiB",
            "64MB",
            "MiB",
            "-1",
            "1.5GiB",
            "99999999999999999999GiB",
        ] {
            let e = error(load(None, &[("CHAT_MEMORY_RECENT_CACHE_BYTES", bad)]));
            assert!(
                e.starts_with(
                    "config error: memory.recent_cache_bytes: expected a positive number of bytes"
                ),
                "{bad}: {e}"
            );
        }
        let f = file("[memory]\nredb_cache_bytes = 1.5\n");
        assert!(error(load(Some(&f), &[])).contains("memory.redb_cache_bytes"));
    }

    /// The walker relies on these: a name is either a key or a section, never both, and
    /// distinct names give distinct environment variables.
    #[test]
    fn the_registry_is_consistent() {
        let names: Vec<&str> = REGISTRY
            .keys
            .iter()
            .map(|k| k.name)
            .chain(REGISTRY.replaced.iter().map(|r| r.old))
            .chain(REGISTRY.arrays.iter().map(|a| a.name))
            .collect();
        let item_vars = REGISTRY
            .arrays
            .iter()
            .flat_map(|a| a.keys.iter().map(|k| a.env_var(k)));
        let mut vars: Vec<String> = names.iter().map(|n| env_var(n)).chain(item_vars).collect();
        vars.sort();
        vars.dedup();
        let item_keys: usize = REGISTRY.arrays.iter().map(|a| a.keys.len()).sum();
        assert_eq!(
            vars.len(),
            names.len() + item_keys,
            "two names share a variable"
        );
        for name in &names {
            assert!(
                name.split('.').all(|part| !part.is_empty()
                    && part.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')),
                "{name}"
            );
            assert!(
                !names.iter().any(|n| n.starts_with(&format!("{name}."))),
                "{name} is both a key and a section"
            );
        }
        for r in REGISTRY.replaced {
            assert!(REGISTRY.key(r.old).is_none(), "{} is still a key", r.old);
            assert!(REGISTRY.key(r.new).is_some(), "{} is no key", r.new);
        }
    }
}

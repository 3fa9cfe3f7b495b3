//! Server configuration from command-line flags, `CHAT_*` environment variables and an
//! optional TOML file, merged with the precedence flag > environment > file > default.
//!
//! Every setting has one dotted key (`limits.max_frame_bytes`) that is its name in the file,
//! derives its environment variable (`CHAT_LIMITS_MAX_FRAME_BYTES`) and appears in error
//! messages, so an operator can always tell which setting and which source a complaint is
//! about. Errors are one line because they are printed at startup, before logging exists.
//! Empty environment variables count as unset, as is usual for container setups.

use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use toml::Value;

use crate::protocol::room::is_valid_user_id;

/// What the process was asked to do.
#[derive(Debug)]
pub enum Command {
    /// Run the server.
    Serve(Config),
    /// Print a token for `user_id`, signed with the secret `config` resolves to.
    Token {
        /// Settings, needed for the secret and the data directory it may live in.
        config: Config,
        /// The token's `sub`; already checked to be a valid user id.
        user_id: String,
        /// The token's `name` claim, already trimmed and checked for length.
        name: Option<String>,
        /// How long the token is valid from now.
        ttl: Duration,
    },
}

/// A configuration problem, displayed as one line naming the key or flag and the source.
#[derive(Debug)]
pub struct ConfigError(String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "config error: {}", self.0)
    }
}

impl std::error::Error for ConfigError {}

/// All settings of the server, after merging every source.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory holding the database and the generated JWT secret (key `data`).
    pub data_dir: PathBuf,
    /// Address the HTTP/WebSocket listener binds to (key `bind`).
    pub bind: SocketAddr,
    /// HS256 signing secret (key `jwt_secret`); `None` means use the generated one kept in
    /// the data directory.
    pub jwt_secret: Option<String>,
    /// Log output format (key `log_format`).
    pub log_format: LogFormat,
    /// Resource limits (section `[limits]`).
    pub limits: Limits,
    /// Storage tuning (section `[storage]`).
    pub storage: StorageConfig,
    /// Memory budgets (section `[memory]`).
    pub memory: MemoryConfig,
    /// Cross-origin settings for the HTTP API and Socket.IO (section `[cors]`).
    pub cors: CorsConfig,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines for a terminal.
    Pretty,
    /// One JSON object per line for log collectors.
    Json,
}

/// Limits that protect the server from heavy or misbehaving clients (PROTOCOL.md section 6).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest accepted message text, in bytes.
    pub max_message_bytes: usize,
    /// Largest WebSocket message (fragments reassembled) or long-polling body, in bytes.
    pub max_frame_bytes: usize,
    /// Bound on one connection's queued outbound bytes before it is dropped as too slow.
    pub max_outbound_bytes: usize,
    /// Global cap on open connections.
    pub max_connections: usize,
    /// Cap on open connections per user.
    pub max_connections_per_user: usize,
    /// Cap on HTTP requests and upgrades in progress at once.
    pub max_pending_upgrades: usize,
    /// Sustained rate of new messages per user, per second.
    pub send_rate_per_sec: f64,
    /// Burst of new messages a user may send above the sustained rate.
    pub send_burst: u32,
    /// Sustained rate of reads, typing and requests per user, per second.
    pub request_rate_per_sec: f64,
    /// Burst of reads, typing and requests above the sustained rate.
    pub request_burst: u32,
    /// Seconds without client traffic before the server sends a ping.
    pub ping_after_secs: u64,
    /// Further seconds of silence after the ping before the connection is dropped.
    pub idle_timeout_secs: u64,
    /// Largest accepted HTTP request body, in bytes.
    pub max_http_body_bytes: usize,
    /// Seconds an HTTP request may take before it is abandoned.
    pub request_timeout_secs: u64,
}

/// Storage tuning.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// Most writes committed in one transaction.
    pub max_batch: usize,
}

/// Byte (or entry) budgets for everything in the process that grows with use, so that an
/// operator can size a box: the README's memory table says what each one costs.
#[derive(Debug, Clone)]
pub struct MemoryConfig {
    /// redb's page cache (reads and the write buffer together); redb's own default is 1 GiB.
    pub redb_cache_bytes: usize,
    /// The latest-50 cache of recently active rooms, serialized bytes plus overhead.
    pub recent_cache_bytes: usize,
    /// Outbound bytes queued across all connections; past it the largest queues are cut.
    pub outbound_total_bytes: usize,
    /// Users whose rate-limit buckets are remembered at once (full buckets are dropped).
    pub rate_limit_users: usize,
}

/// Cross-origin resource sharing for the HTTP API and Socket.IO's long-polling.
#[derive(Debug, Clone, Default)]
pub struct CorsConfig {
    /// Origins allowed to call the HTTP API from a browser; empty allows none, `*` any.
    pub allowed_origins: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./db"),
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            jwt_secret: None,
            log_format: LogFormat::Pretty,
            limits: Limits::default(),
            storage: StorageConfig::default(),
            memory: MemoryConfig::default(),
            cors: CorsConfig::default(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 8192,
            max_frame_bytes: 65536,
            max_outbound_bytes: 4 * 1024 * 1024,
            max_connections: 20000,
            max_connections_per_user: 32,
            max_pending_upgrades: 1024,
            send_rate_per_sec: 20.0,
            send_burst: 50,
            request_rate_per_sec: 50.0,
            request_burst: 100,
            ping_after_secs: 30,
            idle_timeout_secs: 60,
            max_http_body_bytes: 65536,
            request_timeout_secs: 30,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig { max_batch: 1024 }
    }
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            redb_cache_bytes: crate::store::redb::DEFAULT_CACHE_BYTES,
            recent_cache_bytes: 32 * 1024 * 1024,
            outbound_total_bytes: 32 * 1024 * 1024,
            rate_limit_users: 50_000,
        }
    }
}

/// Parses the process's args and env; on error prints one clear line (naming the key or
/// flag) to stderr and exits with status 2 (clap's own usage errors already exit 2;
/// --help/--version exit 0).
pub fn load() -> Command {
    // `parse` lets clap print help, version and usage errors itself with its exit codes.
    let cli = Cli::parse();
    // A non-UTF-8 value is kept (lossily) so that it fails loudly rather than being ignored.
    let env = |name: &str| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned());
    match resolve(cli, &env) {
        Ok(command) => command,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    }
}

/// Testable core: args (including argv[0]), env lookup → Command or ConfigError.
pub fn load_from(
    args: Vec<OsString>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Command, ConfigError> {
    let cli = Cli::try_parse_from(args).map_err(|e| {
        // clap renders a multi-line report; its first line carries the actual complaint.
        let text = e.to_string();
        let first = text.lines().next().unwrap_or_default();
        ConfigError(first.trim_start_matches("error: ").to_owned())
    })?;
    resolve(cli, env)
}

#[derive(Parser, Debug)]
#[command(
    name = "chat-server",
    version,
    about = "A self-hosted direct-message chat server over WebSockets",
    // Lets the serve flags appear without `serve`, making it the default subcommand.
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand, Debug)]
enum Sub {
    /// Run the server (the default when no subcommand is given).
    Serve(ServeArgs),
    /// Print a token for USER_ID signed with the server's secret.
    Token(TokenArgs),
}

/// Flags every subcommand takes because they decide where the secret comes from.
#[derive(Args, Debug)]
struct SharedArgs {
    /// Data directory [env: CHAT_DATA] [default: ./db]
    #[arg(long, value_name = "DIR")]
    data: Option<String>,
    /// TOML config file [env: CHAT_CONFIG]; no file is read unless one is named
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// HS256 signing secret [env: CHAT_JWT_SECRET]; generated into the data dir if unset
    #[arg(long, value_name = "S")]
    jwt_secret: Option<String>,
}

#[derive(Args, Debug)]
struct ServeArgs {
    #[command(flatten)]
    shared: SharedArgs,
    /// Listen address [env: CHAT_BIND] [default: 127.0.0.1:8080]
    #[arg(long, value_name = "ADDR")]
    bind: Option<String>,
    /// Log format [env: CHAT_LOG_FORMAT] [default: pretty]
    #[arg(long, value_name = "FORMAT", value_parser = ["pretty", "json"])]
    log_format: Option<String>,
}

#[derive(Args, Debug)]
struct TokenArgs {
    /// The user id to put in `sub`
    user_id: String,
    /// Display name to put in the `name` claim
    #[arg(long, value_name = "N")]
    name: Option<String>,
    /// Validity: 90s, 15m, 24h, 7d or plain seconds
    #[arg(long, value_name = "DURATION", default_value = "24h")]
    ttl: String,
    #[command(flatten)]
    shared: SharedArgs,
}

fn resolve(cli: Cli, env: &dyn Fn(&str) -> Option<String>) -> Result<Command, ConfigError> {
    match cli.command.unwrap_or(Sub::Serve(cli.serve)) {
        Sub::Serve(args) => {
            let flags = [
                ("bind", "--bind", args.bind),
                ("log_format", "--log-format", args.log_format),
            ];
            Ok(Command::Serve(build(args.shared, flags, env)?))
        }
        Sub::Token(args) => {
            if !is_valid_user_id(&args.user_id) {
                return Err(ConfigError(format!(
                    "USER_ID: {:?} is not a valid user id (1 to 64 of A-Z a-z 0-9 _ . @ + -)",
                    args.user_id
                )));
            }
            let ttl = parse_duration(&args.ttl).ok_or_else(|| {
                ConfigError(format!(
                    "--ttl: expected a positive duration like 90s, 15m, 24h, 7d or plain seconds, got {:?}",
                    args.ttl
                ))
            })?;
            // Checked here because a bad name would otherwise be silently replaced by the id.
            let name = match args.name {
                Some(name) => {
                    let trimmed = name.trim();
                    let len = trimmed.chars().count();
                    if !(1..=100).contains(&len) {
                        return Err(ConfigError(format!(
                            "--name: expected 1 to 100 characters after trimming, got {len}"
                        )));
                    }
                    Some(trimmed.to_owned())
                }
                None => None,
            };
            Ok(Command::Token {
                config: build(args.shared, [], env)?,
                user_id: args.user_id,
                name,
                ttl,
            })
        }
    }
}

/// Layers default, file, environment and flags (in that order, so later ones win) and
/// checks the result.
fn build<const N: usize>(
    shared: SharedArgs,
    extra_flags: [(&str, &str, Option<String>); N],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let mut cfg = Config::default();

    let file = shared
        .config
        .or_else(|| non_empty(env("CHAT_CONFIG")).map(PathBuf::from));
    if let Some(path) = file {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(&path)
            .map_err(|e| ConfigError(format!("cannot read config file {origin}: {e}")))?;
        apply_file(&mut cfg, &text, &origin)?;
    }

    for r in REPLACED {
        let var = env_var(r.old);
        if non_empty(env(&var)).is_some() {
            return Err(ConfigError(format!(
                "{var} was replaced by {} ({})",
                env_var(r.new),
                r.why
            )));
        }
    }
    for key in KEYS {
        let var = env_var(key.name);
        if let Some(value) = non_empty(env(&var)) {
            set(&mut cfg, key, Raw::Text(&value), &format!("from {var}"))?;
        }
    }

    let shared_flags = [
        ("data", "--data", shared.data),
        ("jwt_secret", "--jwt-secret", shared.jwt_secret),
    ];
    for (name, flag, value) in shared_flags.into_iter().chain(extra_flags) {
        if let Some(value) = value {
            let key = KEYS
                .iter()
                .find(|k| k.name == name)
                .expect("flag maps to a key");
            set(&mut cfg, key, Raw::Text(&value), &format!("from {flag}"))?;
        }
    }

    validate(&cfg)?;
    Ok(cfg)
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}

/// `limits.max_frame_bytes` → `CHAT_LIMITS_MAX_FRAME_BYTES`.
fn env_var(key: &str) -> String {
    format!("CHAT_{}", key.replace('.', "_").to_ascii_uppercase())
}

/// Checks that relate several settings; single values are checked as they are set.
fn validate(cfg: &Config) -> Result<(), ConfigError> {
    let l = &cfg.limits;
    if l.max_message_bytes > l.max_frame_bytes {
        return Err(ConfigError(format!(
            "limits.max_message_bytes ({}) must not exceed limits.max_frame_bytes ({})",
            l.max_message_bytes, l.max_frame_bytes
        )));
    }
    Ok(())
}

/// Applies a TOML document; `origin` names the file in errors.
fn apply_file(cfg: &mut Config, text: &str, origin: &str) -> Result<(), ConfigError> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let at = e
            .span()
            .map(|span| {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.chars().rev().take_while(|&c| c != '\n').count() + 1;
                format!(" at line {line}, column {column}")
            })
            .unwrap_or_default();
        let message = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
        ConfigError(format!("{origin} is not valid TOML{at}: {message}"))
    })?;
    let source = format!("in {origin}");
    for (name, value) in &table {
        let is_section = KEYS.iter().any(|k| {
            k.name
                .strip_prefix(name.as_str())
                .is_some_and(|r| r.starts_with('.'))
        });
        if !is_section {
            set_from_file(cfg, name, value, origin, &source)?;
            continue;
        }
        let Value::Table(section) = value else {
            return Err(ConfigError(format!(
                "{name}: expected a table, got {} ({source})",
                Raw::Toml(value).show()
            )));
        };
        for (sub, value) in section {
            set_from_file(cfg, &format!("{name}.{sub}"), value, origin, &source)?;
        }
    }
    Ok(())
}

fn set_from_file(
    cfg: &mut Config,
    name: &str,
    value: &Value,
    origin: &str,
    source: &str,
) -> Result<(), ConfigError> {
    if let Some(r) = REPLACED.iter().find(|r| r.old == name) {
        return Err(ConfigError(format!(
            "`{name}` in {origin} was replaced by `{}` ({})",
            r.new, r.why
        )));
    }
    let key = KEYS
        .iter()
        .find(|k| k.name == name)
        .ok_or_else(|| ConfigError(format!("unknown key `{name}` in {origin}")))?;
    set(cfg, key, Raw::Toml(value), source)
}

fn set(cfg: &mut Config, key: &Key, raw: Raw<'_>, source: &str) -> Result<(), ConfigError> {
    (key.set)(cfg, raw).map_err(|m| ConfigError(format!("{}: {m} ({source})", key.name)))
}

/// A value before conversion: typed from the file, text from the environment or a flag.
#[derive(Clone, Copy)]
enum Raw<'a> {
    Toml(&'a Value),
    Text(&'a str),
}

impl<'a> Raw<'a> {
    /// The value as quoted in error messages.
    fn show(self) -> String {
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

/// One setting: its dotted key and how to store a raw value into a `Config`.
struct Key {
    name: &'static str,
    set: fn(&mut Config, Raw<'_>) -> Result<(), String>,
}

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

/// Keys that no longer exist, with what replaced them, so that an old config file or
/// environment fails with a pointer to the new key instead of being silently ignored.
const REPLACED: &[Replaced] = &[Replaced {
    old: "storage.cache_rooms",
    new: "memory.recent_cache_bytes",
    why: "a budget in bytes, not rooms",
}];

/// A key that was renamed or redefined.
struct Replaced {
    old: &'static str,
    new: &'static str,
    /// What changed besides the name.
    why: &'static str,
}

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
    key!("memory.rate_limit_users", positive_int, |c| c
        .memory
        .rate_limit_users),
    key!("cors.allowed_origins", origins, |c| c.cors.allowed_origins),
];

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

fn positive_int<T: TryFrom<u64>>(raw: Raw<'_>) -> Result<T, String> {
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

/// "90s", "15m", "24h", "7d" or plain seconds; `None` for anything else, zero or overflow.
fn parse_duration(s: &str) -> Option<Duration> {
    let (digits, unit) = match s.as_bytes().last()? {
        b if b.is_ascii_digit() => (s, 1),
        b's' => (&s[..s.len() - 1], 1),
        b'm' => (&s[..s.len() - 1], 60),
        b'h' => (&s[..s.len() - 1], 3600),
        b'd' => (&s[..s.len() - 1], 86400),
        _ => return None,
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs = digits.parse::<u64>().ok()?.checked_mul(unit)?;
    (secs > 0).then(|| Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io::Write;

    fn run(args: &[&str], env: &[(&str, &str)]) -> Result<Command, ConfigError> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let args = std::iter::once("chat-server")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect();
        load_from(args, &|k| env.get(k).cloned())
    }

    fn serve(args: &[&str], env: &[(&str, &str)]) -> Config {
        match run(args, env).unwrap() {
            Command::Serve(c) => c,
            other => panic!("expected serve, got {other:?}"),
        }
    }

    fn error(args: &[&str], env: &[(&str, &str)]) -> String {
        let e = run(args, env).unwrap_err().to_string();
        assert!(!e.contains('\n'), "not one line: {e}");
        assert!(e.starts_with("config error: "), "{e}");
        e
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    fn path(f: &tempfile::NamedTempFile) -> &str {
        f.path().to_str().unwrap()
    }

    #[test]
    fn defaults() {
        let c = serve(&[], &[]);
        assert_eq!(c.data_dir, PathBuf::from("./db"));
        assert_eq!(c.bind, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.jwt_secret, None);
        assert_eq!(c.log_format, LogFormat::Pretty);
        assert_eq!(c.limits.max_message_bytes, 8192);
        assert_eq!(c.limits.max_frame_bytes, 65536);
        assert_eq!(c.limits.max_outbound_bytes, 4194304);
        assert_eq!(c.limits.max_connections, 20000);
        assert_eq!(c.limits.max_connections_per_user, 32);
        assert_eq!(c.limits.max_pending_upgrades, 1024);
        assert_eq!(c.limits.send_rate_per_sec, 20.0);
        assert_eq!(c.limits.send_burst, 50);
        assert_eq!(c.limits.request_rate_per_sec, 50.0);
        assert_eq!(c.limits.request_burst, 100);
        assert_eq!(c.limits.ping_after_secs, 30);
        assert_eq!(c.limits.idle_timeout_secs, 60);
        assert_eq!(c.limits.max_http_body_bytes, 65536);
        assert_eq!(c.limits.request_timeout_secs, 30);
        assert_eq!(c.storage.max_batch, 1024);
        assert_eq!(c.memory.redb_cache_bytes, 16 << 20);
        assert_eq!(c.memory.recent_cache_bytes, 32 << 20);
        assert_eq!(c.memory.outbound_total_bytes, 32 << 20);
        assert_eq!(c.memory.rate_limit_users, 50_000);
        assert!(c.cors.allowed_origins.is_empty());
    }

    #[test]
    fn serve_is_the_default_subcommand() {
        let c = serve(&["--data", "/x"], &[]);
        assert_eq!(c.data_dir, PathBuf::from("/x"));
        let c = serve(&["serve", "--data", "/y", "--log-format", "json"], &[]);
        assert_eq!(c.data_dir, PathBuf::from("/y"));
        assert_eq!(c.log_format, LogFormat::Json);
    }

    #[test]
    fn precedence_flag_env_file_default() {
        let f = file(
            "data = \"/file\"\nbind = \"127.0.0.1:1\"\njwt_secret = \"file\"\n\
             [limits]\nmax_frame_bytes = 10000\n",
        );
        let p = path(&f);
        let env = [
            ("CHAT_CONFIG", p),
            ("CHAT_DATA", "/env"),
            ("CHAT_BIND", "127.0.0.1:2"),
            ("CHAT_JWT_SECRET", "env"),
            ("CHAT_LIMITS_MAX_FRAME_BYTES", "20000"),
        ];
        let flags = [
            "--data",
            "/flag",
            "--bind",
            "127.0.0.1:3",
            "--jwt-secret",
            "flag",
        ];

        // Flags beat the environment.
        let c = serve(&flags, &env);
        assert_eq!(c.data_dir, PathBuf::from("/flag"));
        assert_eq!(c.bind.port(), 3);
        assert_eq!(c.jwt_secret.as_deref(), Some("flag"));
        // There is no flag for limits, so the environment wins there.
        assert_eq!(c.limits.max_frame_bytes, 20000);

        // The environment beats the file.
        let c = serve(&[], &env);
        assert_eq!(c.data_dir, PathBuf::from("/env"));
        assert_eq!(c.bind.port(), 2);
        assert_eq!(c.jwt_secret.as_deref(), Some("env"));
        assert_eq!(c.limits.max_frame_bytes, 20000);

        // The file beats the defaults; --config names it as well as CHAT_CONFIG does.
        let c = serve(&["--config", p], &[]);
        assert_eq!(c.data_dir, PathBuf::from("/file"));
        assert_eq!(c.bind.port(), 1);
        assert_eq!(c.jwt_secret.as_deref(), Some("file"));
        assert_eq!(c.limits.max_frame_bytes, 10000);
        // Keys the file leaves out keep their defaults.
        assert_eq!(c.limits.max_message_bytes, 8192);
    }

    #[test]
    fn config_flag_beats_config_env_and_empty_env_is_unset() {
        let a = file("data = \"/a\"\n");
        let c = serve(
            &["--config", path(&a)],
            &[("CHAT_CONFIG", "/nonexistent.toml"), ("CHAT_DATA", "")],
        );
        assert_eq!(c.data_dir, PathBuf::from("/a"));
    }

    #[test]
    fn env_covers_every_section() {
        let c = serve(
            &[],
            &[
                ("CHAT_LOG_FORMAT", "json"),
                ("CHAT_LIMITS_SEND_RATE_PER_SEC", "2.5"),
                ("CHAT_STORAGE_MAX_BATCH", "7"),
                ("CHAT_MEMORY_RATE_LIMIT_USERS", "9"),
                (
                    "CHAT_CORS_ALLOWED_ORIGINS",
                    "https://a.example, https://b.example,",
                ),
            ],
        );
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.limits.send_rate_per_sec, 2.5);
        assert_eq!(c.storage.max_batch, 7);
        assert_eq!(c.memory.rate_limit_users, 9);
        assert_eq!(
            c.cors.allowed_origins,
            ["https://a.example", "https://b.example"]
        );
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        let f = file("[limits]\nmax_frame_byte = 1\n");
        let e = error(&["--config", path(&f)], &[]);
        assert_eq!(
            e,
            format!(
                "config error: unknown key `limits.max_frame_byte` in {}",
                path(&f)
            )
        );
        let f = file("[limit]\nmax_frame_bytes = 1\n");
        let e = error(&["--config", path(&f)], &[]);
        assert!(e.contains("unknown key `limit`"), "{e}");
    }

    #[test]
    fn bad_type_names_key() {
        let f = file("[limits]\nmax_frame_bytes = \"big\"\n");
        let e = error(&["--config", path(&f)], &[]);
        assert!(
            e.starts_with("config error: limits.max_frame_bytes: expected a positive integer"),
            "{e}"
        );
        assert!(e.contains(path(&f)), "{e}");
        let f = file("limits = 3\n");
        assert!(error(&["--config", path(&f)], &[]).contains("limits: expected a table"));
        let f = file("[cors]\nallowed_origins = \"x\"\n");
        assert!(error(&["--config", path(&f)], &[]).contains("cors.allowed_origins: expected"));
    }

    #[test]
    fn bad_value_names_key_and_source() {
        let e = error(&[], &[("CHAT_LIMITS_MAX_FRAME_BYTES", "abc")]);
        assert_eq!(
            e,
            "config error: limits.max_frame_bytes: expected a positive integer, got \"abc\" \
             (from CHAT_LIMITS_MAX_FRAME_BYTES)"
        );
        let e = error(&["--bind", "nowhere"], &[]);
        assert!(
            e.starts_with("config error: bind: ") && e.ends_with("(from --bind)"),
            "{e}"
        );
        let e = error(&[], &[("CHAT_LIMITS_SEND_BURST", "5000000000")]);
        assert!(e.contains("limits.send_burst"), "{e}");
        let e = error(&[], &[("CHAT_LIMITS_REQUEST_RATE_PER_SEC", "inf")]);
        assert!(e.contains("limits.request_rate_per_sec"), "{e}");
        let e = error(&[], &[("CHAT_LOG_FORMAT", "xml")]);
        assert!(e.contains("log_format"), "{e}");
    }

    #[test]
    fn zero_limit_is_refused() {
        let f = file("[storage]\nmax_batch = 0\n");
        let e = error(&["--config", path(&f)], &[]);
        assert!(e.starts_with("config error: storage.max_batch: "), "{e}");
        let e = error(&[], &[("CHAT_MEMORY_REDB_CACHE_BYTES", "0MiB")]);
        assert!(
            e.starts_with("config error: memory.redb_cache_bytes: "),
            "{e}"
        );
        let e = error(&[], &[("CHAT_LIMITS_SEND_RATE_PER_SEC", "0")]);
        assert!(
            e.starts_with("config error: limits.send_rate_per_sec: "),
            "{e}"
        );
        let f = file("[limits]\nping_after_secs = -5\n");
        assert!(error(&["--config", path(&f)], &[]).contains("limits.ping_after_secs"));
    }

    #[test]
    fn byte_sizes_take_integers_or_binary_units() {
        let f = file(
            "[memory]\nredb_cache_bytes = 1000\nrecent_cache_bytes = \"512KiB\"\n\
             outbound_total_bytes = \"1GiB\"\nrate_limit_users = 7\n",
        );
        let c = serve(&["--config", path(&f)], &[]);
        assert_eq!(c.memory.redb_cache_bytes, 1000);
        assert_eq!(c.memory.recent_cache_bytes, 512 << 10);
        assert_eq!(c.memory.outbound_total_bytes, 1 << 30);
        assert_eq!(c.memory.rate_limit_users, 7);
        let c = serve(
            &[],
            &[
                ("CHAT_MEMORY_REDB_CACHE_BYTES", "64MiB"),
                ("CHAT_MEMORY_OUTBOUND_TOTAL_BYTES", "4096"),
            ],
        );
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
            let e = error(&[], &[("CHAT_MEMORY_RECENT_CACHE_BYTES", bad)]);
            assert!(
                e.starts_with(
                    "config error: memory.recent_cache_bytes: expected a positive number of bytes"
                ),
                "{bad}: {e}"
            );
        }
        let f = file("[memory]\nredb_cache_bytes = 1.5\n");
        assert!(error(&["--config", path(&f)], &[]).contains("memory.redb_cache_bytes"));
    }

    #[test]
    fn the_replaced_room_count_names_its_successor() {
        let f = file("[storage]\ncache_rooms = 4096\n");
        let e = error(&["--config", path(&f)], &[]);
        assert_eq!(
            e,
            format!(
                "config error: `storage.cache_rooms` in {} was replaced by \
                 `memory.recent_cache_bytes` (a budget in bytes, not rooms)",
                path(&f)
            )
        );
        let e = error(&[], &[("CHAT_STORAGE_CACHE_ROOMS", "4096")]);
        assert_eq!(
            e,
            "config error: CHAT_STORAGE_CACHE_ROOMS was replaced by \
             CHAT_MEMORY_RECENT_CACHE_BYTES (a budget in bytes, not rooms)"
        );
    }

    #[test]
    fn message_may_not_exceed_frame() {
        let e = error(&[], &[("CHAT_LIMITS_MAX_FRAME_BYTES", "100")]);
        assert!(e.contains("limits.max_message_bytes (8192)"), "{e}");
        assert!(e.contains("limits.max_frame_bytes (100)"), "{e}");
    }

    #[test]
    fn missing_file_names_file() {
        let e = error(&[], &[("CHAT_CONFIG", "/definitely/not/here.toml")]);
        assert!(e.contains("/definitely/not/here.toml"), "{e}");
    }

    #[test]
    fn bad_toml_names_file_and_position() {
        let f = file("bind = \"127.0.0.1:1\"\n[limits\n");
        let e = error(&["--config", path(&f)], &[]);
        assert!(e.contains(path(&f)) && e.contains("not valid TOML"), "{e}");
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn token_subcommand() {
        let Command::Token {
            config,
            user_id,
            name,
            ttl,
        } = run(
            &[
                "token",
                "alice",
                "--name",
                "  Alice ",
                "--ttl",
                "7d",
                "--jwt-secret",
                "s",
            ],
            &[("CHAT_DATA", "/env")],
        )
        .unwrap()
        else {
            panic!("expected token");
        };
        assert_eq!(user_id, "alice");
        assert_eq!(name.as_deref(), Some("Alice"));
        assert_eq!(ttl, Duration::from_secs(7 * 86400));
        assert_eq!(config.jwt_secret.as_deref(), Some("s"));
        assert_eq!(config.data_dir, PathBuf::from("/env"));

        let Command::Token { ttl, name, .. } = run(&["token", "bob"], &[]).unwrap() else {
            panic!("expected token");
        };
        assert_eq!(ttl, Duration::from_secs(24 * 3600));
        assert_eq!(name, None);

        assert!(error(&["token", "bob", "--ttl", "soon"], &[]).contains("--ttl"));
        assert!(error(&["token", "a b"], &[]).contains("USER_ID"));
        assert!(error(&["token", "bob", "--name", "   "], &[]).contains("--name"));
        // Serve-only flags are not accepted by `token`.
        assert!(run(&["token", "bob", "--bind", "127.0.0.1:1"], &[]).is_err());
    }

    #[test]
    fn durations() {
        let d = |s| parse_duration(s).map(|d| d.as_secs());
        assert_eq!(d("90s"), Some(90));
        assert_eq!(d("15m"), Some(900));
        assert_eq!(d("24h"), Some(86400));
        assert_eq!(d("7d"), Some(604800));
        assert_eq!(d("3600"), Some(3600));
        for bad in [
            "",
            "s",
            "0",
            "0h",
            "1w",
            "-5",
            "+5",
            "1.5h",
            " 5",
            "5 s",
            "99999999999999999999d",
        ] {
            assert_eq!(d(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn example_file_lists_every_key_with_its_default() {
        let example = include_str!("../config.toml.example");
        let mut c = Config::default();
        apply_file(&mut c, example, "config.toml.example").unwrap();
        assert_eq!(format!("{c:?}"), format!("{:?}", Config::default()));

        // Uncommenting every `# key = value` line must give the defaults and every key.
        let uncommented: String = example
            .lines()
            .map(|line| match line.strip_prefix("# ") {
                Some(rest)
                    if rest.split_once(" = ").is_some_and(|(k, _)| {
                        !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                    }) =>
                {
                    format!("{rest}\n")
                }
                _ => format!("{line}\n"),
            })
            .collect();
        for key in KEYS {
            let leaf = key.name.rsplit('.').next().unwrap();
            assert!(
                uncommented.contains(&format!("\n{leaf} = ")),
                "{} missing",
                key.name
            );
            assert!(
                example.contains(&env_var(key.name)),
                "{} env missing",
                key.name
            );
        }
        let mut c = Config::default();
        apply_file(&mut c, &uncommented, "uncommented example").unwrap();
        c.jwt_secret = None;
        assert_eq!(format!("{c:?}"), format!("{:?}", Config::default()));
    }
}

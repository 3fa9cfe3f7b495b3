//! Server settings: the structs the rest of the server reads, their defaults, and [`load`],
//! which fills them from an optional TOML file, `CHAT_*` environment variables and
//! command-line flags, with the precedence flag > environment > file > default.
//!
//! Every setting has one dotted key (`limits.max_frame_bytes`) that is its name in the file,
//! derives its environment variable (`CHAT_LIMITS_MAX_FRAME_BYTES`) and appears in error
//! messages, so an operator can always tell which setting and which source a complaint is
//! about. Errors are one line because they are printed at startup, before logging exists.
//!
//! - `registry.rs`: the key table: names, parsers, where each value is stored.
//! - `source.rs`: the file (walked recursively, to any depth, and arrays of tables such as
//!   `[[webhooks]]` element by element), the environment, flags.
//!
//! The command line itself (subcommands, which flag sets which key) is [`crate::cli`]'s.

mod registry;
mod source;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

pub use source::Flag;

/// A configuration problem, displayed as one line naming the key or flag and the source.
#[derive(Debug)]
pub struct ConfigError(String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "config error: {}", self.0)
    }
}

impl ConfigError {
    /// A complaint about the command line, worded like the others: it names the flag or
    /// argument.
    pub(crate) fn new(message: impl Into<String>) -> ConfigError {
        ConfigError(message.into())
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
    /// Where events are posted (array `[[webhooks]]`, or one hook from `CHAT_WEBHOOK_*`).
    pub webhooks: Vec<WebhookConfig>,

    /// How long messages are kept (section `[retention]`).
    pub retention: RetentionConfig,
    /// The admin API's bearer secret (key `admin_secret`); `None` means use the generated
    /// one kept in the data directory.
    pub admin_secret: Option<String>,
    /// Online backups (section `[backup]`).
    pub backup: BackupConfig,

    /// Cluster mode (section `[cluster]`, issue 17): without it, one node on its own.
    pub cluster: ClusterConfig,
}

/// Cluster mode: nodes that store in one PostgreSQL database and fan events out to each
/// other over NATS. Without `postgres_url` the server stores in redb in its data
/// directory and no PostgreSQL code runs; without `nats_url` the in-process hub is alone
/// and no NATS connection is opened.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The database every node stores in, as a `postgres://` URL.
    pub postgres_url: Option<String>,
    /// Most read connections to it this node holds open; the writer has one more.
    pub postgres_pool_size: usize,
    /// The NATS servers (key `cluster.nats_url`, comma-separated).
    pub nats_url: Option<String>,
    /// This node's name in logs, in its NATS connection and in its presence rows (key
    /// `cluster.node_name`), unique per node; `None` is the host name and the port,
    /// unique per machine.
    pub node_name: Option<String>,
    /// Events published here waiting for each fan-out task (key `cluster.queue_events`);
    /// past it, they are dropped and their rooms caught up from the store. What NATS
    /// brings waits in a queue of `queue_events / fanout_tasks` per task, and past it in
    /// NATS.
    pub queue_events: usize,
    /// Tasks the fan-out work is shared over, each owning the users whose id hashes to it
    /// (key `cluster.fanout_tasks`): how many store reads for other nodes' messages may
    /// be in flight at once.
    pub fanout_tasks: usize,
    /// Messages each local user's NATS subscription buffers (key
    /// `cluster.subscription_messages`); past it NATS reports a slow consumer, and the
    /// node catches up from the store.
    pub subscription_messages: usize,
    /// Rooms per local user whose last delivered message id is remembered, to find gaps
    /// (key `cluster.tracked_rooms_per_user`); the least recently active go first.
    pub tracked_rooms_per_user: usize,
    /// Users whose presence changed here and is not yet written to PostgreSQL (key
    /// `cluster.presence_pending_users`); past it, the node rewrites its whole list.
    pub presence_pending_users: usize,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            postgres_url: None,
            postgres_pool_size: 16,
            nats_url: None,
            node_name: None,
            queue_events: 8192,
            fanout_tasks: 8,
            subscription_messages: 1024,
            tracked_rooms_per_user: 256,
            presence_pending_users: 65_536,
        }
    }
}

/// The longest retention that can be set: a century, far past any policy, and small
/// enough that the cutoff in milliseconds cannot overflow.
pub const MAX_RETENTION_DAYS: u64 = 36_500;

/// How long messages are kept.
#[derive(Debug, Clone, Default)]
pub struct RetentionConfig {
    /// Messages older than this many days are deleted; 0 keeps them forever.
    pub max_age_days: u64,
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
    /// Most users one user may block; bounds the block list a `blocks` reply carries.
    pub max_blocks_per_user: usize,
    /// Seconds after sending during which the sender may edit a message; 0 turns editing
    /// off.
    pub edit_window_secs: u64,
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
    /// A connection holding fewer queued bytes than this is never cut for the total.
    pub outbound_cut_floor_bytes: usize,
    /// ... unless its queue has not moved for this many seconds: a client that stopped
    /// reading.
    pub outbound_stall_secs: u64,
    /// Users whose rate-limit buckets are remembered at once (full buckets are dropped).
    pub rate_limit_users: usize,
    /// Webhook events each hook holds in memory at once; the rest wait in the outbox on disk.
    pub webhook_window_events: usize,
    /// What an online backup holds in memory while it copies: the backup file's page
    /// cache and its uncommitted rows, half each.
    pub backup_buffer_bytes: usize,
    /// What an online export (`GET /admin/export`) holds in memory: dump lines read from
    /// the store but not yet sent to the client.
    pub export_buffer_bytes: usize,
    /// Rooms whose newest id and delivered marks the writer keeps for the
    /// `message:received` handler (`writer::MarkHints`); a miss reads the store.
    pub mark_hint_rooms: usize,
}

/// One webhook: where events are posted, how they are signed, which ones, and how long
/// delivery is retried.
#[derive(Clone)]
pub struct WebhookConfig {
    /// An `http://` or `https://` URL; it also names the hook's rows in the outbox.
    pub url: String,
    /// The HMAC-SHA256 key of the `webhook-signature` header.
    pub secret: String,
    /// The event types posted.
    pub events: Vec<WebhookEvent>,
    /// Post `message.*` events only when their recipient had no open connection at commit.
    pub offline_only: bool,
    /// Seconds one attempt may take, connecting included.
    pub timeout_secs: u64,
    /// The first retry's delay; each next one doubles, up to `max_backoff_secs`.
    pub initial_backoff_ms: u64,
    /// The longest delay between two attempts.
    pub max_backoff_secs: u64,
    /// Seconds after its commit an undelivered event moves to the dead letters.
    pub give_up_after_secs: u64,
}

/// The events a webhook can subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookEvent {
    /// A new message was stored (`message.created`).
    MessageCreated,
    /// A message was marked seen by its recipient (`message.seen`).
    MessageSeen,
    /// A user was erased through the admin API (`user.erased`).
    UserErased,
}

impl WebhookEvent {
    /// The `type` field of the body, and the name in `events`.
    pub fn name(self) -> &'static str {
        match self {
            WebhookEvent::MessageCreated => "message.created",
            WebhookEvent::MessageSeen => "message.seen",
            WebhookEvent::UserErased => "user.erased",
        }
    }
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            url: String::new(),
            secret: String::new(),
            events: vec![WebhookEvent::MessageCreated],
            offline_only: true,
            timeout_secs: 10,
            initial_backoff_ms: 1000,
            max_backoff_secs: 600,
            give_up_after_secs: 24 * 60 * 60,
        }
    }
}

// By hand, so that the secret never reaches a log line.
impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &self.url)
            .field("secret", &"<redacted>")
            .field("events", &self.events)
            .field("offline_only", &self.offline_only)
            .field("timeout_secs", &self.timeout_secs)
            .field("initial_backoff_ms", &self.initial_backoff_ms)
            .field("max_backoff_secs", &self.max_backoff_secs)
            .field("give_up_after_secs", &self.give_up_after_secs)
            .finish()
    }
}

/// Cross-origin resource sharing for the HTTP API and Socket.IO's long-polling.
#[derive(Debug, Clone, Default)]
pub struct CorsConfig {
    /// Origins allowed to call the HTTP API from a browser; empty allows none, `*` any.
    pub allowed_origins: Vec<String>,
}

/// Where `POST /admin/backup` writes, and how many backups it keeps.
#[derive(Debug, Clone)]
pub struct BackupConfig {
    /// Directory of the backup files (key `backup.dir`); `None` is `<data>/backups`.
    pub dir: Option<PathBuf>,
    /// Backups kept; the oldest beyond this are deleted after each new one (key
    /// `backup.keep`), so the directory cannot fill the disk.
    pub keep: usize,
}

impl Default for BackupConfig {
    fn default() -> Self {
        BackupConfig { dir: None, keep: 7 }
    }
}

impl Config {
    /// The backups directory: `backup.dir`, else `<data>/backups`.
    pub fn backup_dir(&self) -> PathBuf {
        self.backup
            .dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("backups"))
    }
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
            webhooks: Vec::new(),

            retention: RetentionConfig::default(),

            admin_secret: None,
            backup: BackupConfig::default(),

            cluster: ClusterConfig::default(),
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
            max_blocks_per_user: 1000,
            edit_window_secs: 900,
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
            outbound_cut_floor_bytes: 256 * 1024,
            outbound_stall_secs: 10,
            rate_limit_users: 50_000,
            webhook_window_events: 256,

            backup_buffer_bytes: 16 * 1024 * 1024,
            export_buffer_bytes: 1024 * 1024,
            mark_hint_rooms: 50_000,
        }
    }
}

/// Resolves the settings: `file` (else the one `CHAT_CONFIG` names), then the environment,
/// then `flags`, over the defaults; then checks the settings that relate to each other.
pub fn load(
    file: Option<PathBuf>,
    flags: &[Flag],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let cfg = source::resolve(&registry::REGISTRY, file, flags, env)?;
    validate(&cfg)?;
    Ok(cfg)
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
    for (i, hook) in cfg.webhooks.iter().enumerate() {
        for (key, value) in [("url", &hook.url), ("secret", &hook.secret)] {
            if value.is_empty() {
                return Err(ConfigError(format!(
                    "webhooks[{i}].{key} is required (CHAT_WEBHOOK_{} for a single hook)",
                    key.to_ascii_uppercase()
                )));
            }
        }
        if hook.events.is_empty() {
            return Err(ConfigError(format!(
                "webhooks[{i}].events must name at least one event"
            )));
        }
        // The URL names the hook's rows in the outbox, so two hooks may not share one.
        if let Some(j) = cfg.webhooks[..i].iter().position(|h| h.url == hook.url) {
            return Err(ConfigError(format!(
                "webhooks[{i}].url is the same as webhooks[{j}].url ({})",
                hook.url
            )));
        }
        if hook.initial_backoff_ms > hook.max_backoff_secs.saturating_mul(1000) {
            return Err(ConfigError(format!(
                "webhooks[{i}].initial_backoff_ms ({}) must not exceed \
                 webhooks[{i}].max_backoff_secs ({}) in milliseconds",
                hook.initial_backoff_ms, hook.max_backoff_secs
            )));
        }
    }

    // One secret for both would let anyone who can mint user tokens run the admin API.
    if cfg.admin_secret.is_some() && cfg.admin_secret == cfg.jwt_secret {
        return Err(ConfigError(
            "admin_secret must differ from jwt_secret".to_owned(),
        ));
    }
    Ok(())
}

/// Helpers for the tests of this module and its children.
#[cfg(test)]
mod testing {
    use std::collections::HashMap;
    use std::io::Write;

    use super::{Config, ConfigError};

    /// An environment lookup over `pairs`.
    pub(super) fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    /// [`super::load`] with no flags: `file`, if any, then `pairs` as the environment.
    pub(super) fn load(
        file: Option<&tempfile::NamedTempFile>,
        pairs: &[(&str, &str)],
    ) -> Result<Config, ConfigError> {
        super::load(file.map(|f| f.path().to_owned()), &[], &env(pairs))
    }

    /// The error's text, checked to be one line with the usual prefix.
    pub(super) fn error(result: Result<Config, ConfigError>) -> String {
        let e = result.unwrap_err().to_string();
        assert!(!e.contains('\n'), "not one line: {e}");
        assert!(e.starts_with("config error: "), "{e}");
        e
    }

    /// A temporary file holding `text`.
    pub(super) fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    pub(super) fn path(f: &tempfile::NamedTempFile) -> &str {
        f.path().to_str().unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::registry::{env_var, REGISTRY};
    use super::testing::{env, error, file, load, path};
    use super::*;

    #[test]
    fn defaults() {
        let c = load(None, &[]).unwrap();
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
        assert_eq!(c.limits.edit_window_secs, 900);
        assert_eq!(c.storage.max_batch, 1024);
        assert_eq!(c.memory.redb_cache_bytes, 16 << 20);
        assert_eq!(c.memory.recent_cache_bytes, 32 << 20);
        assert_eq!(c.memory.outbound_total_bytes, 32 << 20);
        assert_eq!(c.memory.outbound_stall_secs, 10);
        assert_eq!(c.memory.rate_limit_users, 50_000);
        assert!(c.cors.allowed_origins.is_empty());
    }

    #[test]
    fn precedence_flag_env_file_default() {
        let f = file(
            "data = \"/file\"\nbind = \"127.0.0.1:1\"\njwt_secret = \"file\"\n\
             [limits]\nmax_frame_bytes = 10000\n",
        );
        let p = path(&f);
        let env = env(&[
            ("CHAT_CONFIG", p),
            ("CHAT_DATA", "/env"),
            ("CHAT_BIND", "127.0.0.1:2"),
            ("CHAT_JWT_SECRET", "env"),
            ("CHAT_LIMITS_MAX_FRAME_BYTES", "20000"),
        ]);
        let flags = [
            ("data", "/flag"),
            ("bind", "127.0.0.1:3"),
            ("jwt_secret", "flag"),
        ]
        .map(|(key, value)| Flag {
            key,
            name: "--some-flag",
            value: value.to_owned(),
        });

        // Flags beat the environment.
        let c = super::load(None, &flags, &env).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/flag"));
        assert_eq!(c.bind.port(), 3);
        assert_eq!(c.jwt_secret.as_deref(), Some("flag"));
        // There is no flag for limits, so the environment wins there.
        assert_eq!(c.limits.max_frame_bytes, 20000);

        // The environment beats the file.
        let c = super::load(None, &[], &env).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/env"));
        assert_eq!(c.bind.port(), 2);
        assert_eq!(c.jwt_secret.as_deref(), Some("env"));
        assert_eq!(c.limits.max_frame_bytes, 20000);

        // The file beats the defaults; it can be given directly as well as by CHAT_CONFIG.
        let c = load(Some(&f), &[]).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/file"));
        assert_eq!(c.bind.port(), 1);
        assert_eq!(c.jwt_secret.as_deref(), Some("file"));
        assert_eq!(c.limits.max_frame_bytes, 10000);
        // Keys the file leaves out keep their defaults.
        assert_eq!(c.limits.max_message_bytes, 8192);
    }

    #[test]
    fn a_named_file_beats_config_env_and_empty_env_is_unset() {
        let a = file("data = \"/a\"\n");
        let c = load(
            Some(&a),
            &[("CHAT_CONFIG", "/nonexistent.toml"), ("CHAT_DATA", "")],
        )
        .unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/a"));
    }

    #[test]
    fn env_covers_every_section() {
        let c = load(
            None,
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
        )
        .unwrap();
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
    fn message_may_not_exceed_frame() {
        let e = error(load(None, &[("CHAT_LIMITS_MAX_FRAME_BYTES", "100")]));
        assert!(e.contains("limits.max_message_bytes (8192)"), "{e}");
        assert!(e.contains("limits.max_frame_bytes (100)"), "{e}");
    }

    #[test]
    fn missing_file_names_file() {
        let e = error(load(None, &[("CHAT_CONFIG", "/definitely/not/here.toml")]));
        assert!(e.contains("/definitely/not/here.toml"), "{e}");
    }

    #[test]
    fn the_admin_secret_must_differ_from_the_jwt_secret() {
        let e = error(load(
            None,
            &[("CHAT_JWT_SECRET", "same"), ("CHAT_ADMIN_SECRET", "same")],
        ));
        assert!(e.contains("admin_secret must differ"), "{e}");
        let c = load(None, &[("CHAT_BACKUP_KEEP", "3")]).unwrap();
        assert_eq!(c.backup.keep, 3);
        assert_eq!(c.backup_dir(), PathBuf::from("./db/backups"));
        let c = load(None, &[("CHAT_BACKUP_DIR", "/b")]).unwrap();
        assert_eq!(c.backup_dir(), PathBuf::from("/b"));
    }

    #[test]
    fn cluster_mode_is_off_by_default_and_nats_urls_are_checked_at_load() {
        let c = load(None, &[]).unwrap();
        assert_eq!(c.cluster.nats_url, None);
        let urls = "nats://10.0.0.1:4222, nats://10.0.0.2:4222";
        let c = load(None, &[("CHAT_CLUSTER_NATS_URL", urls)]).unwrap();
        assert_eq!(c.cluster.nats_url.as_deref(), Some(urls));
        let f = file("[cluster]\nnats_url = \"nats://h:4222\"\nnode_name = \"n1\"\n");
        let c = load(Some(&f), &[]).unwrap();
        assert_eq!(c.cluster.node_name.as_deref(), Some("n1"));
        for bad in [
            "nats://h:port",
            "nats://h:4222,",
            "nats://h:4222, ,nats://g:4222",
        ] {
            let e = error(load(None, &[("CHAT_CLUSTER_NATS_URL", bad)]));
            assert!(e.contains("cluster.nats_url"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn example_file_lists_every_key_with_its_default() {
        let example = include_str!("../../config.toml.example");
        let mut c = Config::default();
        source::apply_file(&mut c, &REGISTRY, example, "config.toml.example").unwrap();
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
        for key in REGISTRY.keys {
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
        source::apply_file(&mut c, &REGISTRY, &uncommented, "uncommented example").unwrap();
        c.jwt_secret = None;
        c.admin_secret = None;
        c.backup.dir = None;
        c.cluster.postgres_url = None;
        c.cluster.nats_url = None;
        c.cluster.node_name = None;
        assert_eq!(format!("{c:?}"), format!("{:?}", Config::default()));

        // The webhook block, uncommented, is one hook at the defaults, naming every key
        // and its variable.
        let block = example
            .split_once("# [[webhooks]]\n")
            .expect("a [[webhooks]] block")
            .1;
        let hook: String = block
            .lines()
            .filter_map(|line| line.strip_prefix("#   "))
            .map(|line| format!("{line}\n"))
            .collect();
        let mut c = Config::default();
        let text = format!("[[webhooks]]\n{hook}");
        source::apply_file(&mut c, &REGISTRY, &text, "webhook example").unwrap();
        let example_hook = WebhookConfig {
            url: c.webhooks[0].url.clone(),
            secret: c.webhooks[0].secret.clone(),
            ..WebhookConfig::default()
        };
        assert_eq!(format!("{:?}", c.webhooks[0]), format!("{example_hook:?}"));
        for array in REGISTRY.arrays {
            for key in array.keys {
                assert!(
                    hook.contains(&format!("{} = ", key.name)),
                    "{} missing",
                    key.name
                );
                assert!(
                    example.contains(&array.env_var(key)),
                    "{} env missing",
                    key.name
                );
            }
        }
    }
}

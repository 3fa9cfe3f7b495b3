//! `chat-server`: parse the command line, then serve, mint a token, or run an admin
//! command (`admin-token`, `backup`, `restore`, `verify`, `compact`, `erase-user`).

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use chat_server::admin::{client, erase, offline};
use chat_server::app::App;
use chat_server::auth::{resolve_admin_secret, resolve_secret, AdminSecret, Auth};
use chat_server::chat::{Chat, ChatLimits};
use chat_server::cli::{self, Command};
use chat_server::config::{Config, LogFormat};
use chat_server::duties::{Duties, Work};
use chat_server::fanout::hub::Hub;
use chat_server::fanout::nats::{self, NatsBroker, NatsOptions};
use chat_server::fanout::Broker;
use chat_server::ops;
use chat_server::protocol::room::is_valid_user_id;
use chat_server::server;
use chat_server::store::postgres::{Leader, PgStore, PresenceBoard};
use chat_server::store::redb::{ReadOnlyStore, RedbStore};
use chat_server::store::{Maintenance, ReadStore, WriteStore};
use chat_server::webhook::{self, Hooks};
use chat_server::writer::{Writer, WriterConfig};

/// mimalloc rather than glibc malloc: every `message:sent` allocates and frees several
/// KiB-sized strings across threads, and under load glibc's arena bookkeeping
/// (`_int_malloc`, `malloc_consolidate`, `unlink_chunk`) took ~18% of the server's CPU.
/// The `system-alloc` feature turns it off for heap profiling only.
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let command = cli::load();
    match command {
        Command::Serve(config) => serve(config),
        Command::Token {
            config,
            user_id,
            name,
            ttl,
        } => mint_token(&config, &user_id, name.as_deref(), ttl),
        Command::Export { config, user } => export(&config, user.as_deref()),
        Command::Import { config } => import(&config),
        Command::AdminToken(config) => admin_token(&config),
        Command::Backup(config) => backup(&config),
        Command::Restore {
            config,
            backup,
            force,
        } => restore(&config, &backup, force),
        Command::Verify(config) => verify(&config),
        Command::Compact(config) => compact(&config),
        Command::EraseUser { config, user_id } => erase_user(&config, &user_id),
    }
}

/// Writes the store as JSON lines to stdout; the counts go to stderr. In cluster mode the
/// store is the PostgreSQL database, read while the nodes run.
fn export(config: &Config, user: Option<&str>) -> ExitCode {
    let out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    let written = match &config.cluster.postgres_url {
        Some(url) => match PgStore::open(url, 1) {
            Ok(store) => ops::export::write_dump(&store, user, out),
            Err(e) => return fail(format_args!("cannot open the PostgreSQL store: {e}")),
        },
        None => match ReadOnlyStore::open(&config.data_dir) {
            Ok(store) => ops::export::write_dump(&store, user, out),
            Err(e) => return fail(format_args!("cannot open the store: {e}")),
        },
    };
    match written {
        Ok(n) => {
            eprintln!(
                "exported {} profiles, {} blocks, {} erased users, {} rooms, {} messages",
                n.profiles, n.blocks, n.erased, n.rooms, n.messages
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// The admin secret `config` resolves to, generated into the data dir if there is none.
fn admin_secret(config: &Config) -> Result<String, ExitCode> {
    resolve_admin_secret(config.admin_secret.as_deref(), &config.data_dir)
        .map(|secret| String::from_utf8_lossy(&secret).into_owned())
        .map_err(|e| fail(format_args!("cannot read or create the admin secret: {e}")))
}

fn admin_token(config: &Config) -> ExitCode {
    match admin_secret(config) {
        Ok(secret) => print_line(&secret),
        Err(code) => code,
    }
}

fn backup(config: &Config) -> ExitCode {
    let secret = match admin_secret(config) {
        Ok(secret) => secret,
        Err(code) => return code,
    };
    match client::post(config.bind, "/admin/backup", &secret) {
        Ok((200, body)) => print_line(&body),
        Ok((status, body)) => fail(format_args!(
            "the server refused the backup ({status}): {body}"
        )),
        Err(e) => fail(format_args!(
            "cannot reach the server at {}: {e}",
            config.bind
        )),
    }
}

fn restore(config: &Config, backup: &std::path::Path, force: bool) -> ExitCode {
    if let Some(url) = &config.cluster.postgres_url {
        return restore_into_postgres(url, backup, force);
    }
    match offline::restore(backup, &config.data_dir, force) {
        Ok(found) => print_line(&format!(
            "restored {} into {}: {}",
            backup.display(),
            config.data_dir.display(),
            offline::describe(&found)
        )),
        Err(e) => fail(e),
    }
}

/// Cluster mode's restore: loads a backup (a dump, `chat-*.jsonl`) into the empty
/// database, as `import` does; the load's line checks are its verification.
fn restore_into_postgres(url: &str, backup: &std::path::Path, force: bool) -> ExitCode {
    if force {
        return fail(
            "--force replaces the embedded store's file; in cluster mode restore loads into an \
             empty database only (empty or recreate it with PostgreSQL's tools first)",
        );
    }
    let input = match std::fs::File::open(backup) {
        Ok(file) => std::io::BufReader::with_capacity(1 << 16, file),
        Err(e) => return fail(format_args!("cannot read {}: {e}", backup.display())),
    };
    let store = match PgStore::open(url, 1) {
        Ok(store) => store,
        Err(e) => return fail(format_args!("cannot open the PostgreSQL store: {e}")),
    };
    let loaded = match store.loader() {
        Ok(loader) => ops::import::load(loader, input),
        Err(e) => return fail(format_args!("restore refused, nothing stored: {e}")),
    };
    match loaded {
        Ok(n) => print_line(&format!(
            "restored {} into the PostgreSQL database: {} profiles, {} blocks, {} erased \
             users, {} rooms, {} messages",
            backup.display(),
            n.profiles,
            n.blocks,
            n.erased,
            n.rooms,
            n.messages
        )),
        Err(e) => fail(format_args!(
            "restore refused, nothing stored: {}: {e}",
            backup.display()
        )),
    }
}

/// Builds a new store from JSON lines on stdin; the counts go to stderr. In cluster mode
/// the new store is the PostgreSQL database, which must be empty.
fn import(config: &Config) -> ExitCode {
    let input = std::io::BufReader::with_capacity(1 << 16, std::io::stdin().lock());
    let (imported, into) = match &config.cluster.postgres_url {
        Some(url) => {
            let store = match PgStore::open(url, 1) {
                Ok(store) => store,
                Err(e) => return fail(format_args!("cannot open the PostgreSQL store: {e}")),
            };
            let loaded = match store.loader() {
                Ok(loader) => ops::import::load(loader, input),
                Err(e) => return fail(format_args!("import refused, nothing stored: {e}")),
            };
            (loaded, "the PostgreSQL database".to_owned())
        }
        None => (
            ops::import::import(&config.data_dir, input),
            config.data_dir.display().to_string(),
        ),
    };
    match imported {
        Ok(n) => {
            eprintln!(
                "imported {} profiles, {} blocks, {} erased users, {} rooms, {} messages into {into}",
                n.profiles, n.blocks, n.erased, n.rooms, n.messages,
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(format_args!("import refused, nothing stored: {e}")),
    }
}

/// Verifies the store: the redb file (server stopped) or, in cluster mode, the PostgreSQL
/// database while the nodes run.
fn verify(config: &Config) -> ExitCode {
    let verified = match &config.cluster.postgres_url {
        Some(url) => PgStore::open(url, 1)
            .and_then(|store| store.verify())
            .map_err(|e| format!("cannot verify the PostgreSQL store: {e}")),
        None => offline::verify(&config.data_dir)
            .map_err(|e| format!("cannot verify {}: {e}", config.data_dir.display())),
    };
    match verified {
        Ok(found) if found.ok() => print_line(&format!("ok: {}", offline::describe(&found))),
        Ok(found) => fail(format_args!(
            "{} problems: {}",
            found.problem_count,
            offline::describe(&found)
        )),
        Err(e) => fail(e),
    }
}

/// Compacts the redb file (server stopped). In cluster mode the data is in PostgreSQL,
/// which reclaims its own space: refused before anything is opened.
fn compact(config: &Config) -> ExitCode {
    if config.cluster.postgres_url.is_some() {
        return fail(
            "`compact` works on the embedded store's file, but cluster.postgres_url is set: \
             the data is in PostgreSQL, which reclaims its own space (VACUUM, autovacuum)",
        );
    }
    match offline::compact(&config.data_dir) {
        Ok((before, after)) => print_line(&format!(
            "compacted {}: {before} bytes before, {after} bytes after",
            config.data_dir.display()
        )),
        Err(e) => fail(format_args!(
            "cannot compact {}: {e}",
            config.data_dir.display()
        )),
    }
}

/// Erases a user from the redb file (server stopped) or, in cluster mode, from the
/// PostgreSQL database while the nodes run.
fn erase_user(config: &Config, user_id: &str) -> ExitCode {
    let erased = match &config.cluster.postgres_url {
        Some(url) => erase::erase_in_database(url, &config.webhooks, user_id)
            .map_err(|e| format!("cannot erase {user_id} in the PostgreSQL store: {e}")),
        None => erase::erase_offline(&config.data_dir, &config.webhooks, user_id).map_err(|e| {
            format!(
                "cannot erase {user_id} in {}: {e}",
                config.data_dir.display()
            )
        }),
    };
    match erased {
        Ok(report) => print_line(&serde_json::to_string(&report).expect("a plain report")),
        Err(e) => fail(e),
    }
}

/// Prints one line, without `println!`'s panic on a closed pipe.
fn print_line(text: &str) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("chat-server: {message}");
    ExitCode::FAILURE
}

fn mint_token(
    config: &Config,
    user_id: &str,
    name: Option<&str>,
    ttl: std::time::Duration,
) -> ExitCode {
    if !is_valid_user_id(user_id) {
        eprintln!(
            "chat-server: {user_id:?} is not a valid user id (1 to 64 of A-Z a-z 0-9 _ . @ + -)"
        );
        return ExitCode::from(2);
    }
    let secret = match resolve_secret(config.jwt_secret.as_deref(), &config.data_dir) {
        Ok(secret) => secret,
        Err(e) => return fail(format_args!("cannot read or create the JWT secret: {e}")),
    };
    let token = Auth::new(&secret).mint(user_id, name, ttl);
    // Written by hand rather than with `println!`, which panics on a closed pipe.
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{token}").and_then(|()| out.flush()).is_err() {
        return ExitCode::FAILURE;
    }
    // The link is a convenience: a reader that takes only the token (`| head -1`) may
    // already have closed the pipe.
    let _ = writeln!(out, "http://{}/#token={token}", config.bind);
    ExitCode::SUCCESS
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn serve(config: Config) -> ExitCode {
    init_tracing(config.log_format);
    match server::raise_open_file_limit() {
        Ok(open_files) => tracing::debug!(open_files, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => return fail(format_args!("cannot start the runtime: {e}")),
    };
    runtime.block_on(async move {
        let secret = match resolve_secret(config.jwt_secret.as_deref(), &config.data_dir) {
            Ok(secret) => secret,
            Err(e) => return fail(format_args!("cannot read or create the JWT secret: {e}")),
        };
        let admin = match resolve_admin_secret(config.admin_secret.as_deref(), &config.data_dir) {
            // Else anyone who can mint user tokens could run the admin API.
            Ok(admin) if admin == secret => {
                return fail("the admin secret must differ from the JWT secret")
            }
            Ok(secret) => AdminSecret::new(secret),
            Err(e) => return fail(format_args!("cannot read or create the admin secret: {e}")),
        };
        // The composition root: the one place that picks the storage backend.
        let store = match open_store(&config) {
            Ok(store) => store,
            Err(e) => return fail(e),
        };
        let listener = match tokio::net::TcpListener::bind(config.bind).await {
            Ok(listener) => listener,
            Err(e) => return fail(format_args!("cannot listen on {}: {e}", config.bind)),
        };
        if let Err(e) = chat_server::metrics::install() {
            return fail(format_args!("cannot set up metrics: {e}"));
        }
        let hub = Hub::with_stall_cut(
            config.memory.outbound_total_bytes,
            config.memory.outbound_cut_floor_bytes,
            std::time::Duration::from_secs(config.memory.outbound_stall_secs),
        );
        // Cluster mode's presence (issue 17): this node's users, listed in PostgreSQL for
        // the other nodes' `offline_only` webhooks. Kept until the server stops.
        let _presence = match &config.cluster.postgres_url {
            None => None,
            Some(url) => match PresenceBoard::start(
                url,
                node_name(&config, &listener),
                hub.clone(),
                config.cluster.presence_pending_users,
            )
            .await
            {
                Ok(board) => Some(board),
                Err(e) => return fail(e),
            },
        };
        // Cluster mode's fan-out (issue 17): NATS between nodes, else the hub alone. The
        // writer's latest-50 cache stays on: it checks each room's change counter, so a
        // room another node wrote is reloaded (`crate::snapshot`).
        let broker: Arc<dyn Broker> =
            match cluster_broker(&config, &listener, &hub, &store.read).await {
                Ok(Some(nats)) => nats,
                Ok(None) => hub.clone(),
                Err(e) => return fail(e),
            };
        let hooks = Arc::new(Hooks::new(&config.webhooks));
        let writer = Writer::spawn(
            store.write,
            broker.clone(),
            hooks.clone(),
            WriterConfig {
                recent_cache_bytes: config.memory.recent_cache_bytes,
                max_batch: config.storage.max_batch,
                // Off in cluster mode: other nodes change the same rooms (`writer::hints`).
                mark_hint_rooms: if config.cluster.postgres_url.is_some() {
                    0
                } else {
                    config.memory.mark_hint_rooms
                },
            },
        );
        webhook::count(&hooks, store.read.as_ref()).await;
        // Webhook delivery and retention sweeps (off unless `retention.max_age_days` is
        // set): here, or in cluster mode on whichever node holds the duties lock.
        let leader = match config.cluster.postgres_url.as_deref().map(Leader::new) {
            None => None,
            Some(Ok(leader)) => Some(leader),
            Some(Err(e)) => return fail(e),
        };
        let duties = Duties::spawn(
            Work {
                hooks,
                store: store.read.clone(),
                writer: writer.writer(),
                webhook_window: config.memory.webhook_window_events,
                retention_days: config.retention.max_age_days,
            },
            leader,
        );

        let maintenance = store.maintenance;
        let chat = Arc::new(Chat::new(
            store.read,
            writer.writer(),
            broker,
            hub,
            ChatLimits::from(&config),
            &secret,
        ));
        let addr = listener.local_addr().map_or(config.bind, |a| a);
        let data_dir = config.data_dir.display().to_string();
        let app = App::new(chat, Auth::new(&secret), config, admin, maintenance);
        tracing::info!(%addr, data = %data_dir, "chat-server listening");
        // One plain line on stdout for scripts and tests that wait for the port.
        println!("listening on http://{addr}");
        server::run(listener, app, shutdown_signal()).await;
        // Stopped before the writer, so that a sweep in progress ends here (its deleted
        // batches are committed; the next start sweeps the rest) rather than failing.
        duties.stop().await;
        writer.shutdown().await;
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
}

/// The storage backend, as each part of the server sees it.
struct Store {
    read: Arc<dyn ReadStore>,
    write: Arc<dyn WriteStore>,
    maintenance: Arc<dyn Maintenance>,
}

impl Store {
    fn new<S: ReadStore + WriteStore + Maintenance + 'static>(store: S) -> Store {
        let store = Arc::new(store);
        Store {
            read: store.clone(),
            write: store.clone(),
            maintenance: store,
        }
    }
}

/// redb in the data directory, or, in cluster mode (`cluster.postgres_url`), PostgreSQL.
fn open_store(config: &Config) -> Result<Store, String> {
    if let Some(url) = &config.cluster.postgres_url {
        return PgStore::open(url, config.cluster.postgres_pool_size)
            .map(Store::new)
            .map_err(|e| format!("cannot open the PostgreSQL store: {e}"));
    }
    RedbStore::open_with_cache(&config.data_dir, config.memory.redb_cache_bytes)
        .map(Store::new)
        .map_err(|e| format!("cannot open {}: {e}", config.data_dir.display()))
}

/// The NATS broker when `[cluster] nats_url` is set, connected and feeding `hub`.
async fn cluster_broker(
    config: &Config,
    listener: &tokio::net::TcpListener,
    hub: &Arc<Hub>,
    store: &Arc<dyn ReadStore>,
) -> Result<Option<Arc<dyn Broker>>, String> {
    let Some(url) = &config.cluster.nats_url else {
        return Ok(None);
    };
    let node_name = node_name(config, listener);
    let options = NatsOptions {
        url: url.clone(),
        node_name: node_name.clone(),
        queue_events: config.cluster.queue_events,
        fanout_tasks: config.cluster.fanout_tasks,
        subscription_messages: config.cluster.subscription_messages,
        tracked_rooms_per_user: config.cluster.tracked_rooms_per_user,
    };
    let broker = NatsBroker::connect(options, hub.clone(), store.clone())
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(node = %node_name, nats = %url, "cluster fan-out over NATS");
    Ok(Some(broker))
}

/// `cluster.node_name`, or the host name and the port this node listens on.
fn node_name(config: &Config, listener: &tokio::net::TcpListener) -> String {
    let port = listener
        .local_addr()
        .map_or(config.bind.port(), |a| a.port());
    config
        .cluster
        .node_name
        .clone()
        .unwrap_or_else(|| nats::default_node_name(port))
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

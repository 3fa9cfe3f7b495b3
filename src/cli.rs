//! The command line: which subcommand, its arguments, and which flag sets which setting,
//! turned into a [`Command`] for `main` to carry out.
//!
//! Each subcommand is an `Args` struct with an `into_command` that checks its own
//! arguments and resolves the settings through [`config::load`]; a new one is a variant
//! in `Sub` and in [`Command`], its struct, and an arm in `main`. Every subcommand
//! flattens `SharedArgs`, so each finds the data directory and the secret the same way.
//! Errors are [`ConfigError`]s: one line naming the flag or argument, exit status 2.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::{self, Config, ConfigError, Flag};
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
    /// Write the store (`config.data_dir`'s, or in cluster mode the PostgreSQL database)
    /// as JSON lines to stdout.
    Export {
        config: Config,
        /// Only this user's profile, rooms and messages (a data-access request).
        user: Option<String>,
    },
    /// Build a new store in `config.data_dir` from JSON lines on stdin.
    Import { config: Config },

    /// Print the admin API's secret that `config` resolves to.
    AdminToken(Config),
    /// Ask the server at `config.bind` for a backup, with the admin secret.
    Backup(Config),
    /// Install the backup file as the store of `config.data_dir`.
    Restore {
        /// Settings, for the data directory.
        config: Config,
        /// The backup file.
        backup: PathBuf,
        /// Replace the store of a data directory that is not empty.
        force: bool,
    },
    /// Check the store of `config.data_dir`, offline, or in cluster mode the PostgreSQL
    /// database.
    Verify(Config),
    /// Compact the store of `config.data_dir`, offline.
    Compact(Config),
    /// Erase a user from the store of `config.data_dir`, offline (issue 14, item 5).
    EraseUser {
        /// Settings, for the data directory.
        config: Config,
        /// The user to erase; already checked to be a valid user id.
        user_id: String,
    },
}

/// Parses the process's args and env; on error prints one clear line (naming the key or
/// flag) to stderr and exits with status 2 (clap's own usage errors already exit 2;
/// --help/--version exit 0).
pub fn load() -> Command {
    // `parse` lets clap print help, version and usage errors itself with its exit codes.
    let cli = Cli::parse();
    // A non-UTF-8 value is kept (lossily) so that it fails loudly rather than being ignored.
    let env = |name: &str| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned());
    match cli.into_command(&env) {
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
        ConfigError::new(first.trim_start_matches("error: "))
    })?;
    cli.into_command(env)
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

impl Cli {
    fn into_command(self, env: &dyn Fn(&str) -> Option<String>) -> Result<Command, ConfigError> {
        match self.command.unwrap_or(Sub::Serve(self.serve)) {
            Sub::Serve(args) => args.into_command(env),
            Sub::Token(args) => args.into_command(env),
            Sub::Export(args) => args.into_command(env),
            Sub::Import(args) => Ok(Command::Import {
                config: args.shared.config([], env)?,
            }),

            Sub::AdminToken(args) => Ok(Command::AdminToken(args.config([], env)?)),
            Sub::Backup(args) => args.into_command(env),
            Sub::Restore(args) => Ok(Command::Restore {
                config: args.shared.config([], env)?,
                backup: args.backup,
                force: args.force,
            }),
            Sub::Verify(args) => Ok(Command::Verify(args.config([], env)?)),
            Sub::Compact(args) => Ok(Command::Compact(args.config([], env)?)),
            Sub::EraseUser(args) => {
                check_user_id(&args.user_id)?;
                Ok(Command::EraseUser {
                    config: args.shared.config([], env)?,
                    user_id: args.user_id,
                })
            }
        }
    }
}

#[derive(Subcommand, Debug)]
enum Sub {
    /// Run the server (the default when no subcommand is given).
    Serve(ServeArgs),
    /// Print a token for USER_ID signed with the server's secret.
    Token(TokenArgs),
    /// Write the store as JSON lines to stdout (the embedded store: with the server
    /// stopped; cluster mode: from PostgreSQL, while the nodes run).
    Export(ExportArgs),
    /// Build a new store in an empty data directory from JSON lines on stdin.
    Import(ImportArgs),

    /// Print the admin API's secret (generated into the data dir if unset).
    AdminToken(AdminArgs),
    /// Take a backup through the running server's admin API and print its report.
    Backup(BackupArgs),
    /// Install a backup file as the store of the data dir (stopped server; verified first);
    /// in cluster mode, load a backup dump into the empty PostgreSQL database.
    Restore(RestoreArgs),
    /// Check the store of the data dir (stopped server), or in cluster mode the PostgreSQL
    /// database (nodes running); exit status 0 when it is sound.
    Verify(SharedArgs),
    /// Compact the store of the data dir (stopped server) and print its size before/after.
    Compact(SharedArgs),
    /// Erase USER_ID from the store of the data dir (stopped server; a running one: use
    /// DELETE /admin/users/USER_ID) and print what changed.
    EraseUser(EraseUserArgs),
}

#[derive(Args, Debug)]
struct EraseUserArgs {
    /// The user to erase
    user_id: String,
    #[command(flatten)]
    shared: SharedArgs,
}

/// The flags of the commands that use the admin secret.
#[derive(Args, Debug)]
struct AdminArgs {
    #[command(flatten)]
    shared: SharedArgs,
    /// Admin API secret [env: CHAT_ADMIN_SECRET]; generated into the data dir if unset
    #[arg(long, value_name = "S")]
    admin_secret: Option<String>,
}

impl AdminArgs {
    fn config(
        self,
        more: impl IntoIterator<Item = Option<Flag>>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let admin = flag("admin_secret", "--admin-secret", self.admin_secret);
        self.shared.config(std::iter::once(admin).chain(more), env)
    }
}

#[derive(Args, Debug)]
struct BackupArgs {
    #[command(flatten)]
    admin: AdminArgs,
    /// The running server's address [env: CHAT_BIND] [default: 127.0.0.1:8080]
    #[arg(long, value_name = "ADDR")]
    bind: Option<String>,
}

impl BackupArgs {
    fn into_command(self, env: &dyn Fn(&str) -> Option<String>) -> Result<Command, ConfigError> {
        let bind = flag("bind", "--bind", self.bind);
        Ok(Command::Backup(self.admin.config([bind], env)?))
    }
}

#[derive(Args, Debug)]
struct RestoreArgs {
    /// The backup file (a chat-*.redb from the backups directory; chat-*.jsonl in cluster mode)
    backup: PathBuf,
    /// Replace the store of a data dir that is not empty
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    shared: SharedArgs,
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

impl SharedArgs {
    /// The settings, with these flags and a subcommand's `more` over the other sources.
    fn config(
        self,
        more: impl IntoIterator<Item = Option<Flag>>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let flags: Vec<Flag> = [
            flag("data", "--data", self.data),
            flag("jwt_secret", "--jwt-secret", self.jwt_secret),
        ]
        .into_iter()
        .chain(more)
        .flatten()
        .collect();
        config::load(self.config, &flags, env)
    }
}

/// The flag `name`, setting `key`, if it was given.
fn flag(key: &'static str, name: &'static str, value: Option<String>) -> Option<Flag> {
    value.map(|value| Flag { key, name, value })
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

impl ServeArgs {
    fn into_command(self, env: &dyn Fn(&str) -> Option<String>) -> Result<Command, ConfigError> {
        let flags = [
            flag("bind", "--bind", self.bind),
            flag("log_format", "--log-format", self.log_format),
        ];
        Ok(Command::Serve(self.shared.config(flags, env)?))
    }
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

impl TokenArgs {
    fn into_command(self, env: &dyn Fn(&str) -> Option<String>) -> Result<Command, ConfigError> {
        check_user_id(&self.user_id)?;
        let ttl = parse_duration(&self.ttl).ok_or_else(|| {
            ConfigError::new(format!(
                "--ttl: expected a positive duration like 90s, 15m, 24h, 7d or plain seconds, got {:?}",
                self.ttl
            ))
        })?;
        // Checked here because a bad name would otherwise be silently replaced by the id.
        let name = match self.name {
            Some(name) => {
                let trimmed = name.trim();
                let len = trimmed.chars().count();
                if !(1..=100).contains(&len) {
                    return Err(ConfigError::new(format!(
                        "--name: expected 1 to 100 characters after trimming, got {len}"
                    )));
                }
                Some(trimmed.to_owned())
            }
            None => None,
        };
        Ok(Command::Token {
            config: self.shared.config([], env)?,
            user_id: self.user_id,
            name,
            ttl,
        })
    }
}

#[derive(Args, Debug)]
struct ExportArgs {
    /// Export only this user's profile, rooms and their messages
    #[arg(long, value_name = "ID")]
    user: Option<String>,
    #[command(flatten)]
    shared: SharedArgs,
}

impl ExportArgs {
    fn into_command(self, env: &dyn Fn(&str) -> Option<String>) -> Result<Command, ConfigError> {
        if let Some(user) = &self.user {
            if !is_valid_user_id(user) {
                return Err(ConfigError::new(format!(
                    "--user: {user:?} is not a valid user id (1 to 64 of A-Z a-z 0-9 _ . @ + -)"
                )));
            }
        }
        Ok(Command::Export {
            config: self.shared.config([], env)?,
            user: self.user,
        })
    }
}

#[derive(Args, Debug)]
struct ImportArgs {
    #[command(flatten)]
    shared: SharedArgs,
}

/// The USER_ID argument of `token` and `erase-user`.
fn check_user_id(user_id: &str) -> Result<(), ConfigError> {
    if is_valid_user_id(user_id) {
        Ok(())
    } else {
        Err(ConfigError::new(format!(
            "USER_ID: {user_id:?} is not a valid user id (1 to 64 of A-Z a-z 0-9 _ . @ + -)"
        )))
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
    use crate::config::LogFormat;
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

    #[test]
    fn serve_is_the_default_subcommand() {
        let c = serve(&["--data", "/x"], &[]);
        assert_eq!(c.data_dir, PathBuf::from("/x"));
        let c = serve(&["serve", "--data", "/y", "--log-format", "json"], &[]);
        assert_eq!(c.data_dir, PathBuf::from("/y"));
        assert_eq!(c.log_format, LogFormat::Json);
    }

    #[test]
    fn each_flag_sets_its_key_over_the_environment() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"data = \"/file\"\n[limits]\nmax_frame_bytes = 10000\n")
            .unwrap();
        let p = f.path().to_str().unwrap();
        let env = [
            ("CHAT_CONFIG", "/nonexistent.toml"),
            ("CHAT_DATA", "/env"),
            ("CHAT_BIND", "127.0.0.1:2"),
            ("CHAT_JWT_SECRET", "env"),
            ("CHAT_LOG_FORMAT", "pretty"),
        ];
        let c = serve(
            &[
                "--config",
                p,
                "--data",
                "/flag",
                "--bind",
                "127.0.0.1:3",
                "--jwt-secret",
                "flag",
                "--log-format",
                "json",
            ],
            &env,
        );
        assert_eq!(c.limits.max_frame_bytes, 10000);
        assert_eq!(c.data_dir, PathBuf::from("/flag"));
        assert_eq!(c.bind.port(), 3);
        assert_eq!(c.jwt_secret.as_deref(), Some("flag"));
        assert_eq!(c.log_format, LogFormat::Json);
    }

    #[test]
    fn a_bad_flag_is_one_line_naming_it() {
        let e = error(&["--bind", "nowhere"], &[]);
        assert!(
            e.starts_with("config error: bind: ") && e.ends_with("(from --bind)"),
            "{e}"
        );
        // clap's own complaint, cut to its first line.
        let e = error(&["--log-format", "xml"], &[]);
        assert!(e.contains("--log-format"), "{e}");
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
    fn export_and_import_subcommands() {
        let Command::Export { config, user } =
            run(&["export", "--data", "/d", "--user", "a-b"], &[]).unwrap()
        else {
            panic!("expected export");
        };
        assert_eq!(config.data_dir, PathBuf::from("/d"));
        assert_eq!(user.as_deref(), Some("a-b"));
        let Command::Export { user, .. } = run(&["export"], &[("CHAT_DATA", "/e")]).unwrap() else {
            panic!("expected export");
        };
        assert_eq!(user, None);
        assert!(error(&["export", "--user", "a b"], &[]).contains("--user"));
        let Command::Import { config } = run(&["import", "--data", "/i"], &[]).unwrap() else {
            panic!("expected import");
        };
        assert_eq!(config.data_dir, PathBuf::from("/i"));
        // Serve-only flags are not accepted by either.
        assert!(run(&["import", "--bind", "127.0.0.1:1"], &[]).is_err());
        assert!(run(&["export", "--bind", "127.0.0.1:1"], &[]).is_err());
    }

    #[test]
    fn admin_subcommands() {
        let Command::AdminToken(c) = run(&["admin-token", "--data", "/d"], &[]).unwrap() else {
            panic!("expected admin-token");
        };
        assert_eq!((c.data_dir, c.admin_secret), (PathBuf::from("/d"), None));
        let env = [("CHAT_ADMIN_SECRET", "env"), ("CHAT_BIND", "127.0.0.1:5")];
        let Command::Backup(c) = run(&["backup", "--admin-secret", "flag"], &env).unwrap() else {
            panic!("expected backup");
        };
        assert_eq!(c.admin_secret.as_deref(), Some("flag"));
        assert_eq!(c.bind.port(), 5);
        let Command::Backup(c) = run(&["backup", "--bind", "127.0.0.1:6"], &env).unwrap() else {
            panic!("expected backup");
        };
        assert_eq!((c.admin_secret.as_deref(), c.bind.port()), (Some("env"), 6));
        let Command::Restore {
            config,
            backup,
            force,
        } = run(&["restore", "/b/x.redb", "--data", "/d", "--force"], &[]).unwrap()
        else {
            panic!("expected restore");
        };
        assert_eq!(
            (config.data_dir, backup, force),
            (PathBuf::from("/d"), PathBuf::from("/b/x.redb"), true)
        );
        assert!(matches!(
            run(&["verify", "--data", "/d"], &[]).unwrap(),
            Command::Verify(_)
        ));
        assert!(matches!(
            run(&["compact", "--data", "/d"], &[]).unwrap(),
            Command::Compact(_)
        ));
        // A restore names its backup.
        assert!(run(&["restore", "--data", "/d"], &[]).is_err());
    }

    #[test]
    fn erase_user_takes_a_valid_user_id() {
        let Command::EraseUser { config, user_id } =
            run(&["erase-user", "alice", "--data", "/d"], &[]).unwrap()
        else {
            panic!("expected erase-user");
        };
        assert_eq!(
            (config.data_dir, user_id.as_str()),
            (PathBuf::from("/d"), "alice")
        );
        let bad = run(&["erase-user", "a/b", "--data", "/d"], &[]).unwrap_err();
        assert!(bad.to_string().contains("USER_ID"), "{bad}");
        assert!(run(&["erase-user", "--data", "/d"], &[]).is_err());
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
}

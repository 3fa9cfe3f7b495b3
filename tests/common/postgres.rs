//! A throwaway PostgreSQL for one test: `initdb` in a temp dir, a postmaster on a free
//! loopback port with its socket in that dir, stopped and deleted on drop. Never the
//! system's service on 5432.
//!
//! One source for both kinds of test: the integration tests use it as `common::postgres`,
//! and the store's unit tests (the conformance suite against PostgreSQL) include this same
//! file with `#[path]`, so it uses only std, libc and tempfile.
//!
//! initdb refuses to run as root, and CI runs as root: then every PostgreSQL command runs
//! as the `postgres` user (created by Debian's package) through `runuser`, on a temp dir
//! handed to that user.
#![allow(dead_code)] // each test crate uses a different part of the harness

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The database user and database the tests connect as.
const USER: &str = "chat";

pub struct TestPostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    /// Set when running as root: commands run as this user.
    run_as: Option<&'static str>,
}

impl TestPostgres {
    /// Creates and starts a new cluster; panics (failing the test) with PostgreSQL's own
    /// output when it cannot.
    pub fn start() -> TestPostgres {
        Self::start_trying(free_port())
    }

    /// [`TestPostgres::start`] on `port` or, when another process holds it, on another
    /// free port.
    pub fn start_trying(port: u16) -> TestPostgres {
        let bin = bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("chat-pg-")
            .tempdir()
            .expect("temp dir");
        // SAFETY: geteuid has no preconditions and cannot fail.
        let run_as = (unsafe { libc::geteuid() } == 0).then_some("postgres");
        if run_as.is_some() {
            hand_to_postgres(dir.path());
        }
        let mut pg = TestPostgres {
            dir,
            bin,
            port,
            run_as,
        };
        let data = pg.data_dir();
        pg.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                USER,
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                // The tests' clusters are thrown away; only the server's commits must be
                // durable, not initdb's files.
                "--no-sync",
            ],
        );
        // The port was free when picked, but another process may bind it before the
        // postmaster does: then it is tried again on another.
        let mut attempts = 1;
        loop {
            match pg.try_start() {
                Ok(()) => break,
                Err(e) if attempts < BIND_ATTEMPTS && e.contains(IN_USE) => {
                    attempts += 1;
                    pg.port = free_port();
                    let _ = std::fs::remove_file(pg.log_file());
                }
                Err(e) => panic!("{e}"),
            }
        }
        pg
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://` URL of the test database.
    pub fn url(&self) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{USER}", self.port)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Starts the postmaster (again, after a stop or a crash: it recovers from its WAL)
    /// and waits until it accepts connections.
    pub fn start_again(&self) {
        self.try_start().unwrap_or_else(|e| panic!("{e}"));
    }

    fn log_file(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// [`TestPostgres::start_again`], with `pg_ctl`'s failure (and the server log) as
    /// the error.
    fn try_start(&self) -> Result<(), String> {
        let options = format!(
            "-k {} -p {} -c listen_addresses=127.0.0.1 -c max_connections=200",
            self.dir.path().display(),
            self.port
        );
        let log = self.log_file();
        self.try_run(
            "pg_ctl",
            &[
                "-D",
                self.data_dir().to_str().unwrap(),
                "-o",
                &options,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "-t",
                "60",
                "start",
            ],
        )?;
        // The first start creates the database the tests use.
        let created = self.psql_in(
            "postgres",
            "SELECT 1 FROM pg_database WHERE datname = 'chat'",
        );
        if created.trim().is_empty() {
            self.psql_in("postgres", "CREATE DATABASE chat");
        }
        Ok(())
    }

    /// Creates an empty database in this cluster and returns its `postgres://` URL, so
    /// that servers sharing one cluster start from nothing, each on its own data.
    pub fn create_database(&self, name: &str) -> String {
        self.psql(&format!("CREATE DATABASE {name}"));
        format!("postgres://{USER}@127.0.0.1:{}/{name}", self.port)
    }

    /// Stops and deletes this cluster when the test process exits, however it exits:
    /// for a cluster kept in a static, which is never dropped. A watchdog in its own
    /// session (so a Ctrl-C to the test's process group does not take it first) blocks
    /// on a pipe whose only writer is this process; the kernel closes it at exit, even
    /// after `kill -9`, and the watchdog stops the postmaster and removes the temp dir.
    pub fn stop_at_exit(&self) {
        let mut stop = self.command("pg_ctl");
        stop.args(["-D", self.data_dir().to_str().unwrap()]).args([
            "-m",
            "immediate",
            "-w",
            "stop",
        ]);
        // Never waited for: it must outlive this process, and exits only after it.
        #[allow(clippy::zombie_processes)]
        let watchdog = Command::new("setsid")
            .args([
                "sh",
                "-c",
                r#"cat >/dev/null; "$@" >/dev/null 2>&1; rm -rf "$PG_DIR""#,
            ])
            .arg("sh")
            .arg(stop.get_program())
            .args(stop.get_args())
            .env("PG_DIR", self.dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the PostgreSQL watchdog");
        // The write end must stay open until the process exits; the pipe is close-on-exec,
        // so the servers the tests spawn do not inherit it.
        std::mem::forget(watchdog.stdin);
    }

    /// `pg_ctl stop -m immediate`: every backend is killed at once, as in a crash; the
    /// next start replays the WAL.
    pub fn stop_immediate(&self) {
        self.run(
            "pg_ctl",
            &[
                "-D",
                self.data_dir().to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }

    /// SIGSTOP to the postmaster and every backend: the database hangs, as a machine that
    /// stopped answering, where a stopped server would refuse connections at once.
    pub fn freeze(&self) {
        self.signal_all(libc::SIGSTOP);
    }

    /// SIGCONT after [`TestPostgres::freeze`].
    pub fn thaw(&self) {
        self.signal_all(libc::SIGCONT);
    }

    fn signal_all(&self, signal: libc::c_int) {
        let pid_file = std::fs::read_to_string(self.data_dir().join("postmaster.pid"))
            .expect("a running postmaster");
        let postmaster: libc::pid_t = pid_file.lines().next().unwrap().trim().parse().unwrap();
        let mut pids = vec![postmaster];
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<libc::pid_t>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // The parent pid is the second field after the command's closing parenthesis.
            let after_name = &stat[stat.rfind(')').unwrap() + 1..];
            let parent = after_name
                .split_whitespace()
                .nth(1)
                .and_then(|p| p.parse().ok());
            if parent == Some(postmaster) {
                pids.push(pid);
            }
        }
        for pid in pids {
            // SAFETY: kill has no memory preconditions; these are this test's own processes.
            unsafe { libc::kill(pid, signal) };
        }
    }

    /// Runs SQL in the test database through `psql` and returns its unaligned output.
    pub fn psql(&self, sql: &str) -> String {
        self.psql_in(USER, sql)
    }

    fn psql_in(&self, database: &str, sql: &str) -> String {
        let socket = self.dir.path().to_str().unwrap().to_owned();
        let port = self.port.to_string();
        self.run(
            "psql",
            &[
                "-h",
                &socket,
                "-p",
                &port,
                "-U",
                USER,
                "-d",
                database,
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ],
        )
    }

    /// A PostgreSQL program, to run as `postgres` under root.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        match self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(path);
                c
            }
            None => Command::new(path),
        }
    }

    /// Runs a PostgreSQL program (as `postgres` under root) and returns its stdout.
    fn run(&self, program: &str, args: &[&str]) -> String {
        self.try_run(program, args)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`TestPostgres::run`], with a failure's output and the server log as the error.
    fn try_run(&self, program: &str, args: &[&str]) -> Result<String, String> {
        let mut command = self.command(program);
        let out = command
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
        if !out.status.success() {
            let log = std::fs::read_to_string(self.log_file()).unwrap_or_default();
            return Err(format!(
                "{program} {args:?} failed: {}\n{}\n{}\nserver log:\n{log}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .args(["-D", self.data_dir().to_str().unwrap()])
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The directory of PostgreSQL's server programs: `$PG_BIN` if set, else the newest
/// Debian `/usr/lib/postgresql/<version>/bin`, else `pg_config --bindir`.
fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        return PathBuf::from(dir);
    }
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .max();
    if let Some((_, bin)) = newest {
        return bin;
    }
    let out = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .expect("no PostgreSQL found: install Debian's postgresql (scripts/test does)");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// How many ports a new cluster tries before giving up.
const BIND_ATTEMPTS: u32 = 5;

/// What the postmaster logs when another process took its port.
const IN_USE: &str = "Address already in use";

/// A port nothing listens on now (the postmaster binds it a moment later).
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().unwrap().port()
}

/// Gives the temp dir to the `postgres` user, which initdb and the postmaster run as.
fn hand_to_postgres(dir: &Path) {
    let status = Command::new("chown")
        .args(["postgres:postgres"])
        .arg(dir)
        .status()
        .expect("run chown");
    assert!(
        status.success(),
        "cannot chown {} to postgres",
        dir.display()
    );
}

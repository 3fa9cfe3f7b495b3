//! The process under test: a `chat-server` (or the bare relay) started by the bench on
//! 127.0.0.1:0 with a temporary data directory, or a loopback address given by the user.
//!
//! A started server gets the bench's JWT secret and generous rate limits through the
//! environment, so the figures measure the server, not its abuse limits.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// How to start a process that prints `listening on http://ADDR` first.
#[derive(Clone)]
pub struct Launch {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// `taskset -c` list to pin the process to.
    pub cpus: Option<String>,
}

impl Launch {
    /// `chat-server --data DIR --bind 127.0.0.1:0` with the bench's secret and limits.
    pub fn server(program: &Path, data_dir: &Path, secret: &str, cpus: Option<String>) -> Launch {
        let open = u64::from(nofile_hard_limit()).to_string();
        let generous = "1000000".to_string();
        Launch {
            program: program.to_path_buf(),
            args: vec![
                "--data".into(),
                data_dir.display().to_string(),
                "--bind".into(),
                "127.0.0.1:0".into(),
            ],
            env: vec![
                ("CHAT_JWT_SECRET".into(), secret.into()),
                ("RUST_LOG".into(), "warn".into()),
                ("CHAT_LIMITS_SEND_RATE_PER_SEC".into(), generous.clone()),
                ("CHAT_LIMITS_SEND_BURST".into(), generous.clone()),
                ("CHAT_LIMITS_REQUEST_RATE_PER_SEC".into(), generous.clone()),
                ("CHAT_LIMITS_REQUEST_BURST".into(), generous),
                ("CHAT_LIMITS_MAX_CONNECTIONS".into(), open),
            ],
            cpus,
        }
    }
}

/// A running process under test, killed on drop.
pub struct Target {
    pub addr: SocketAddr,
    child: Child,
    /// Kept open so the process never writes to a closed pipe.
    _stdout: BufReader<ChildStdout>,
    /// Removed on drop when the bench created it.
    temp_dir: Option<PathBuf>,
}

impl Target {
    /// Starts `launch` and waits for its listening line.
    pub fn start(launch: &Launch, temp_dir: Option<PathBuf>) -> Result<Target, String> {
        let mut command = match &launch.cpus {
            Some(cpus) => {
                let mut c = Command::new("taskset");
                c.args(["-c", cpus]).arg(&launch.program);
                c
            }
            None => Command::new(&launch.program),
        };
        die_with_parent(&mut command);
        let mut child = command
            .args(&launch.args)
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", launch.program.display()))?;
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        stdout
            .read_line(&mut line)
            .map_err(|e| format!("reading the listening line: {e}"))?;
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .and_then(|a| a.parse::<SocketAddr>().ok())
            .ok_or_else(|| format!("unexpected first line {line:?}"))?;
        Ok(Target {
            addr,
            child,
            _stdout: stdout,
            temp_dir,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident set size of the process, in bytes.
    pub fn rss_bytes(&self) -> u64 {
        rss_bytes(self.pid())
    }

    /// SIGTERM, then waits for the process to exit.
    pub fn stop(mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = &self.temp_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// `VmRSS` of a process, in bytes (0 when unreadable).
pub fn rss_bytes(pid: u32) -> u64 {
    proc_kib(&format!("/proc/{pid}/status"), "VmRSS:").map_or(0, |kib| kib * 1024)
}

/// The `key: N kB` line of a `/proc` file such as `/proc/meminfo`, in KiB.
pub fn proc_kib(path: &str, key: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok().and_then(|text| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    })
}

/// CPU time (user + system) a process has used so far, in seconds (0 when unreadable).
pub fn cpu_secs(pid: u32) -> f64 {
    ticks_to_secs(proc_ticks(pid).map_or(0, |t| t.own))
}

/// What `/proc/PID/stat` says about a process's CPU time, in clock ticks.
pub struct ProcTicks {
    pub parent: u32,
    /// User + system time of the process itself.
    pub own: u64,
    /// User + system time of its children that exited and were waited for.
    pub children: u64,
}

pub fn proc_ticks(pid: u32) -> Option<ProcTicks> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the `(comm)`: state is field 3, ppid 4, utime 14, stime 15, cutime 16,
    // cstime 17.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
    Some(ProcTicks {
        parent: u32::try_from(field(4)?).ok()?,
        own: field(14)? + field(15)?,
        children: field(16)? + field(17)?,
    })
}

pub fn ticks_to_secs(ticks: u64) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
    ticks as f64 / per_sec as f64
}

/// The peak resident set size of a process (`VmHWM`), in bytes (0 when unreadable).
pub fn peak_rss_bytes(pid: u32) -> u64 {
    proc_kib(&format!("/proc/{pid}/status"), "VmHWM:").map_or(0, |kib| kib * 1024)
}

/// Makes the kernel SIGKILL the process `command` starts when the bench exits, however
/// it exits (Ctrl-C, a crash, `kill -9`), so no server outlives the run. The signal comes
/// when the *thread* that spawned it ends: the bench starts its processes from the main
/// thread.
pub fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches only the child being set up.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A fresh directory under the system temp dir.
pub fn temp_dir(label: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "chat-bench-{}-{label}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a temp dir");
    dir
}

/// Polls `/healthz` every 2 ms until it answers 200; an error after 30 s.
pub fn wait_healthy(addr: SocketAddr) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !healthz_ok(addr) {
        if Instant::now() > deadline {
            return Err(format!("{addr} never answered /healthz"));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

/// True once `GET /healthz` answers 200.
pub fn healthz_ok(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 200")
}

/// The value of an unlabelled metric in `GET /metrics` (Prometheus text format).
pub fn metric(addr: SocketAddr, name: &str) -> Result<f64, String> {
    metric_series(addr, name)?
        .into_iter()
        .find_map(|(labels, value)| labels.is_empty().then_some(value))
        .ok_or_else(|| format!("/metrics has no {name}"))
}

/// Every series of a metric in `GET /metrics`: its labels (`{kind="x"}`, or empty) and
/// its value.
pub fn metric_series(addr: SocketAddr, name: &str) -> Result<Vec<(String, f64)>, String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("/metrics: {e}"))?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut body = String::new();
    stream
        .write_all(request.as_bytes())
        .and_then(|()| stream.read_to_string(&mut body))
        .map_err(|e| format!("/metrics: {e}"))?;
    Ok(body
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (labels, value) = rest.rsplit_once(' ')?;
            (labels.is_empty() || labels.starts_with('{'))
                .then(|| Some((labels.to_owned(), value.trim().parse().ok()?)))?
        })
        .collect())
}

/// The hard open-file limit of this process.
pub fn nofile_hard_limit() -> u32 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    limit.rlim_max.min(u64::from(u32::MAX) as libc::rlim_t) as u32
}

/// Pins this process to the given CPUs (`"1"` or `"0,1"`).
pub fn pin_self(cpus: &str) -> Result<(), String> {
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET and sched_setaffinity only
    // touch the set we own.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for cpu in cpus.split(',') {
            let cpu: usize = cpu
                .trim()
                .parse()
                .map_err(|_| format!("bad cpu {cpu:?} in {cpus:?}"))?;
            libc::CPU_SET(cpu, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) != 0 {
            return Err(format!("sched_setaffinity({cpus}) failed"));
        }
    }
    Ok(())
}

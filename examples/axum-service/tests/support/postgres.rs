//! A throwaway PostgreSQL server per test, on a free loopback port, stopped on drop:
//! `initdb` and `pg_ctl` from Debian's `postgresql` package, never the machine's own
//! server on 5432.
//!
//! Debian keeps the binaries in `/usr/lib/postgresql/<version>/bin`, off `PATH`, and they
//! refuse to run as root: as root (as the tests and CI run here) they run as the
//! `postgres` user through `runuser`, in a temporary directory that user owns, which
//! also holds the Unix socket. Every wait has a deadline, so a broken install fails a
//! test with the server's log instead of hanging it.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use cache_tests::free_port;

/// How long `initdb`, a start or a stop may take before the harness gives up.
const DEADLINE: Duration = Duration::from_secs(60);
/// How many fresh ports to try when another process grabs the chosen one first.
const BIND_ATTEMPTS: u32 = 5;
/// The role the service connects as (a superuser, made by `initdb`).
const USER: &str = "service";
const NOT_INSTALLED: &str = "PostgreSQL's initdb not found in /usr/lib/postgresql/*/bin, $PG_BIN or on PATH; install it (Debian: apt-get install postgresql) or run .ci/run, which installs it";

/// A PostgreSQL server on `127.0.0.1` with a password-protected role, in a temporary
/// directory removed on drop.
pub struct PostgresServer {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    password: String,
    /// Runs the binaries as `postgres` through `runuser` (we are root).
    as_postgres: bool,
    paused: bool,
}

impl std::fmt::Debug for PostgresServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresServer")
            .field("port", &self.port)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl PostgresServer {
    /// `initdb`, then a server on a free loopback port, ready for connections.
    ///
    /// Panics when PostgreSQL is not installed or does not come up within the deadline.
    pub fn start() -> Self {
        let bin = bin_dir();
        let as_postgres = running_as_root();
        let mut server = PostgresServer {
            dir: unique_temp_dir(),
            bin,
            port: 0,
            password: uuid::Uuid::new_v4().simple().to_string(),
            as_postgres,
            paused: false,
        };
        if as_postgres {
            let (uid, gid) = (postgres_id("-u"), postgres_id("-g"));
            std::os::unix::fs::chown(&server.dir, Some(uid), Some(gid))
                .unwrap_or_else(|e| panic!("chown {} to postgres: {e}", server.dir.display()));
        }
        server.initdb();
        let mut last = String::new();
        for _ in 0..BIND_ATTEMPTS {
            server.port = free_port();
            match server.pg_ctl_start() {
                Ok(()) => return server,
                Err(log) if log.contains("could not bind") || log.contains("already in use") => {
                    last = log;
                }
                Err(log) => panic!("postgres did not start on port {}:\n{log}", server.port),
            }
        }
        panic!("postgres could not bind a port {BIND_ATTEMPTS} times; last log:\n{last}");
    }

    /// `postgres://service:<password>@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!(
            "postgres://{USER}:{}@127.0.0.1:{}/postgres",
            self.password, self.port
        )
    }

    /// The role's password, to check that it never shows.
    #[allow(dead_code)] // the bench includes this file too, and does not look
    pub fn password(&self) -> &str {
        &self.password
    }

    /// Freezes the postmaster and every backend (SIGSTOP): connections stay open, nothing
    /// answers, new connections are not accepted. [`resume`](Self::resume) undoes it.
    pub fn pause(&mut self) {
        let main = self.postmaster_pid().expect("the server is not running");
        // The postmaster first, so it forks nothing new while its children are listed.
        signal("-STOP", &[main]);
        signal("-STOP", &children(main));
        self.paused = true;
    }

    /// Resumes a server frozen by [`pause`](Self::pause) (SIGCONT).
    pub fn resume(&mut self) {
        if let Some(main) = self.postmaster_pid() {
            signal("-CONT", &children(main));
            signal("-CONT", &[main]);
        }
        self.paused = false;
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    fn command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        let mut cmd = if self.as_postgres {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(program);
            cmd
        } else {
            Command::new(program)
        };
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Runs `cmd` with its output in `out` (a file, never a pipe a detached server
    /// could hold open), killing it at the deadline; the output on failure.
    fn run(&self, mut cmd: Command, name: &str) -> Result<(), String> {
        let out = self.dir.join(format!("{name}.out"));
        let file = fs::File::create(&out).expect("create a command's output file");
        cmd.stdout(file.try_clone().expect("dup")).stderr(file);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {name}: {e}"));
        let deadline = Instant::now() + DEADLINE;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for a child") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{name} ran past {DEADLINE:?}:\n{}", read(&out)));
            }
            sleep(Duration::from_millis(20));
        };
        if status.success() {
            Ok(())
        } else {
            Err(format!("{name} failed ({status}):\n{}", read(&out)))
        }
    }

    fn initdb(&self) {
        let pwfile = self.dir.join("pwfile");
        fs::write(&pwfile, &self.password).expect("write the password file");
        if self.as_postgres {
            let (uid, gid) = (postgres_id("-u"), postgres_id("-g"));
            std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid))
                .expect("chown the password file");
        }
        let mut cmd = self.command("initdb");
        cmd.arg("-D")
            .arg(self.data())
            .args([
                "-U",
                USER,
                "-A",
                "scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
            ])
            .args(["--no-sync", "--no-instructions"])
            .arg(format!("--pwfile={}", pwfile.display()));
        let ran = self.run(cmd, "initdb");
        let _ = fs::remove_file(&pwfile);
        if let Err(out) = ran {
            panic!("initdb in {}: {out}", self.dir.display());
        }
    }

    /// Starts the server and waits until it accepts connections; the log on failure.
    fn pg_ctl_start(&self) -> Result<(), String> {
        let _ = fs::remove_file(self.log());
        let options = format!(
            "-p {} -k '{}' -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            self.port,
            self.dir.display()
        );
        let mut cmd = self.command("pg_ctl");
        cmd.arg("start")
            .args(["-w", "-t", "30", "-D"])
            .arg(self.data())
            .arg("-l")
            .arg(self.log())
            .arg("-o")
            .arg(options);
        self.run(cmd, "pg_ctl-start")
            .map_err(|out| format!("{out}\nserver log:\n{}", read(&self.log())))
    }

    /// The postmaster's pid, from its pid file (absent once it stopped).
    fn postmaster_pid(&self) -> Option<u32> {
        let text = fs::read_to_string(self.data().join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        if let Some(main) = self.postmaster_pid() {
            if self.paused {
                self.resume();
            }
            let mut cmd = self.command("pg_ctl");
            cmd.args(["stop", "-m", "immediate", "-w", "-t", "10", "-D"])
                .arg(self.data());
            if self.run(cmd, "pg_ctl-stop").is_err() {
                let mut pids = children(main);
                pids.push(main);
                signal("-KILL", &pids);
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// `$PG_BIN`, else the newest `/usr/lib/postgresql/<version>/bin` with an `initdb`, else
/// the directory of an `initdb` on `PATH`.
fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return bin;
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .find(|dir| dir.join("initdb").exists())
        .unwrap_or_else(|| panic!("{NOT_INSTALLED}"))
}

/// Whether this process is root: `/proc/self` belongs to the effective user.
fn running_as_root() -> bool {
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// The `postgres` user's uid (`-u`) or gid (`-g`).
fn postgres_id(which: &str) -> u32 {
    let out = Command::new("id")
        .args([which, "postgres"])
        .output()
        .expect("run `id`");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("no `postgres` user; Debian's postgresql package creates it"))
}

/// The processes whose parent is `parent`, from `/proc`.
fn children(parent: u32) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|s| s.parse::<u32>().ok());
        if ppid == Some(parent) {
            pids.push(pid);
        }
    }
    pids
}

fn signal(signal: &str, pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    // A process that exited meanwhile makes `kill` fail for it alone; nothing to do.
    let _ = Command::new("kill")
        .arg(signal)
        .args(pids.iter().map(u32::to_string))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A directory of this process's own: a leftover of a dead process that had the same pid
/// is emptied first.
fn unique_temp_dir() -> PathBuf {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("axum-service-pg-{}-{n}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| format!("(nothing at {}: {e})", path.display()))
}

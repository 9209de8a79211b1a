//! Real PostgreSQL and Redis servers for tests (QUALITY.md: Debian's `postgresql` 15 and
//! `redis-server` 7), started on 127.0.0.1 with their data in a temporary directory and
//! stopped by their guards' `Drop`, also when a test fails.
//!
//! Shared by the Rust tests of every crate: include it by path,
//! `#[path = "../../tests/support/store_servers.rs"] mod store_servers;`
//! (`./test.sh` installs the packages when they are missing).
//!
//! PostgreSQL refuses to run as root: as root, `initdb` and `pg_ctl` run as the `postgres`
//! user through `runuser`, on a data directory chowned to it; the Unix socket goes to the
//! temporary directory, TCP to a free port on 127.0.0.1, logins over TCP need the password
//! (SCRAM). One cluster serves a whole test; [`PgServer::create_database`] gives each part of
//! it a database of its own. Servers are tuned for tests (no fsync).
//!
//! TLS: [`PgServer::start_tls`] and [`RedisServer::start_tls`] take a certificate and key in
//! PEM (the tests make them with rcgen, so this file needs no crate of its own) and serve
//! TLS: PostgreSQL with `ssl=on` (plain connections still allowed, as a server with TLS
//! turned on does by default), Redis on its TLS port only (`--port 0`, no client
//! certificates).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The superuser's password in test clusters (what the tests check never leaks).
pub const PG_PASSWORD: &str = "pg-test-Secr3t-9f2c";

fn is_root() -> bool {
    // `id -u` spares every test crate a libc dependency.
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.trim_ascii() == b"0")
        .unwrap_or(false)
}

fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("free port: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("free port: {e}"))
}

fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The directory of PostgreSQL's server programs (`initdb`, `pg_ctl`, `psql`): Debian keeps
/// them in `/usr/lib/postgresql/<major>/bin`; the newest is taken.
pub fn pg_bin_dir() -> Result<PathBuf, String> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| {
            format!("/usr/lib/postgresql: {e}; install PostgreSQL: apt-get install -y postgresql")
        })?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let major = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((major, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).ok_or_else(|| {
        "no initdb under /usr/lib/postgresql/*/bin; apt-get install -y postgresql".to_owned()
    })
}

/// A server certificate and its key, in PEM.
#[derive(Clone, Debug)]
pub struct TlsPem {
    /// The certificate (chain), PEM.
    pub cert: String,
    /// Its private key, PEM.
    pub key: String,
}

/// A PostgreSQL cluster of a test; stopped (by PID if `pg_ctl` cannot) when dropped.
pub struct PgServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    data: PathBuf,
    run: PathBuf,
    port: u16,
    as_postgres: bool,
    running: bool,
    /// `-c ssl=on ...` when started with TLS.
    tls_options: String,
}

impl PgServer {
    /// `initdb` and start a cluster on a free port (tried on three ports when one is taken
    /// meanwhile).
    pub fn start() -> Result<Self, String> {
        Self::start_with(None)
    }

    /// As [`Self::start`], serving TLS with `pem` (`ssl=on`, `ssl_cert_file`,
    /// `ssl_key_file`; the key file owned by the server's user, mode 0600, as it insists).
    pub fn start_tls(pem: &TlsPem) -> Result<Self, String> {
        Self::start_with(Some(pem))
    }

    fn start_with(tls: Option<&TlsPem>) -> Result<Self, String> {
        let bin = pg_bin_dir()?;
        let dir = tempfile::Builder::new()
            .prefix("gate-pg-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let as_postgres = is_root();
        let run = dir.path().join("run");
        let data = dir.path().join("data");
        std::fs::create_dir(&run).map_err(|e| format!("{}: {e}", run.display()))?;
        std::fs::create_dir(&data).map_err(|e| format!("{}: {e}", data.display()))?;
        let pwfile = run.join("pwfile");
        std::fs::write(&pwfile, PG_PASSWORD).map_err(|e| format!("pwfile: {e}"))?;
        let mut tls_options = String::new();
        if let Some(pem) = tls {
            use std::os::unix::fs::PermissionsExt;
            let cert = run.join("server.crt");
            let key = run.join("server.key");
            std::fs::write(&cert, &pem.cert).map_err(|e| format!("server.crt: {e}"))?;
            std::fs::write(&key, &pem.key).map_err(|e| format!("server.key: {e}"))?;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| format!("chmod server.key: {e}"))?;
            tls_options = format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                cert.display(),
                key.display()
            );
        }
        if as_postgres {
            use std::os::unix::fs::PermissionsExt;
            // The postgres user must reach its directories inside root's temporary one.
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
                .map_err(|e| format!("chmod: {e}"))?;
            let chown = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&run)
                .arg(&data)
                .output()
                .map_err(|e| format!("chown: {e}"))?;
            if !chown.status.success() {
                return Err(format!("chown postgres: {}", output_text(&chown)));
            }
        }
        let mut server = Self {
            dir,
            bin,
            data,
            run,
            port: 0,
            as_postgres,
            running: false,
            tls_options,
        };
        let initdb = server.pg_command("initdb", |cmd| {
            cmd.arg("-D")
                .arg(&server.data)
                .args(["-U", "postgres", "-E", "UTF8", "--no-sync"])
                .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
                .arg(format!("--pwfile={}", pwfile.display()));
        })?;
        if !initdb.status.success() {
            return Err(format!("initdb failed: {}", output_text(&initdb)));
        }
        let mut last = String::new();
        for _ in 0..3 {
            server.port = free_port()?;
            match server.pg_ctl_start() {
                Ok(()) => return Ok(server),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn pg_command(&self, program: &str, args: impl FnOnce(&mut Command)) -> Result<Output, String> {
        let path = self.bin.join(program);
        let mut cmd = if self.as_postgres {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(&path);
            cmd
        } else {
            Command::new(&path)
        };
        args(&mut cmd);
        cmd.stdin(Stdio::null())
            .output()
            .map_err(|e| format!("{program}: {e}"))
    }

    fn pg_ctl_start(&mut self) -> Result<(), String> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off \
             -c synchronous_commit=off -c max_connections=50{}",
            self.port,
            self.run.display(),
            self.tls_options
        );
        let log = self.run.join("postgres.log");
        let out = self.pg_command("pg_ctl", |cmd| {
            cmd.arg("-D")
                .arg(&self.data)
                .arg("-l")
                .arg(&log)
                .args(["-w", "-t", "30", "-o"])
                .arg(&options)
                .arg("start");
        })?;
        if !out.status.success() {
            let log_text = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(format!(
                "pg_ctl start failed: {}\n{log_text}",
                output_text(&out)
            ));
        }
        self.running = true;
        Ok(())
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The TCP address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `postgres://postgres:<password>@127.0.0.1:<port>/<database>`.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://postgres:{PG_PASSWORD}@127.0.0.1:{}/{database}",
            self.port
        )
    }

    /// Runs `sql` on `database` with psql (over TCP, with the password); returns its
    /// unaligned, tuples-only output.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-X",
                "-q",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
            ])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                database,
            ])
            .args(["-c", sql])
            .env("PGPASSWORD", PG_PASSWORD)
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("psql: {e}"))?;
        if !out.status.success() {
            return Err(format!("psql {sql:?}: {}", output_text(&out)));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Creates database `name`; returns its URL.
    pub fn create_database(&self, name: &str) -> Result<String, String> {
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""))?;
        Ok(self.url(name))
    }

    /// Stops the server (fast shutdown: clients are disconnected); the data stays.
    pub fn stop(&mut self) -> Result<(), String> {
        let out = self.pg_command("pg_ctl", |cmd| {
            cmd.arg("-D")
                .arg(&self.data)
                .args(["-m", "fast", "-w", "-t", "30", "stop"]);
        })?;
        if !out.status.success() {
            return Err(format!("pg_ctl stop failed: {}", output_text(&out)));
        }
        self.running = false;
        Ok(())
    }

    /// Starts the stopped server again on the same port.
    pub fn restart(&mut self) -> Result<(), String> {
        self.pg_ctl_start()
    }

    /// The postmaster's PID, from `postmaster.pid` (bench/pgusage.sh sums its CPU).
    pub fn postmaster_pid(&self) -> Option<u32> {
        self.pid()
    }

    /// The postmaster's PID, from `postmaster.pid`.
    fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.data.join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    /// The server log so far (for a failing test's message).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.run.join("postgres.log")).unwrap_or_default()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if !self.running {
            return;
        }
        let stopped = self
            .pg_command("pg_ctl", |cmd| {
                cmd.arg("-D")
                    .arg(&self.data)
                    .args(["-m", "immediate", "-w", "-t", "10", "stop"]);
            })
            .is_ok_and(|out| out.status.success());
        if !stopped {
            if let Some(pid) = self.pid() {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
    }
}

/// A Redis server of a test (no persistence); killed when dropped.
pub struct RedisServer {
    _dir: tempfile::TempDir,
    child: Child,
    port: u16,
    /// Serving TLS only (on `port`), with these files in the temp dir.
    tls: bool,
}

impl RedisServer {
    /// Starts `redis-server` on a free port of 127.0.0.1 and waits (at most 10 s) until it
    /// answers `PING`.
    pub fn start() -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("gate-redis-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let port = free_port()?;
        let child = Self::spawn(dir.path(), port, false)?;
        let mut server = Self {
            _dir: dir,
            child,
            port,
            tls: false,
        };
        server.wait_ready()?;
        Ok(server)
    }

    /// Starts `redis-server` serving TLS only (`--tls-port` on a free port, `--port 0`) with
    /// `pem`, trusting `ca_pem` (`--tls-ca-cert-file`; clients need no certificate:
    /// `--tls-auth-clients no`), with `requirepass` when `password` is given; waits (at most
    /// 10 s) until `redis-cli --tls` gets `PONG`.
    pub fn start_tls(pem: &TlsPem, ca_pem: &str, password: Option<&str>) -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("gate-redis-tls-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        for (name, text) in [
            ("server.crt", pem.cert.as_str()),
            ("server.key", pem.key.as_str()),
            ("ca.crt", ca_pem),
            ("password", password.unwrap_or("")),
        ] {
            std::fs::write(dir.path().join(name), text).map_err(|e| format!("{name}: {e}"))?;
        }
        let port = free_port()?;
        let child = Self::spawn(dir.path(), port, true)?;
        let mut server = Self {
            _dir: dir,
            child,
            port,
            tls: true,
        };
        server.wait_ready()?;
        Ok(server)
    }

    fn spawn(dir: &std::path::Path, port: u16, tls: bool) -> Result<Child, String> {
        let mut cmd = Command::new("redis-server");
        if tls {
            let file = |name: &str| dir.join(name).display().to_string();
            cmd.args(["--port", "0", "--tls-port", &port.to_string()])
                .args(["--tls-cert-file", &file("server.crt")])
                .args(["--tls-key-file", &file("server.key")])
                .args(["--tls-ca-cert-file", &file("ca.crt")])
                .args(["--tls-auth-clients", "no"]);
            let password = std::fs::read_to_string(dir.join("password")).unwrap_or_default();
            if !password.is_empty() {
                cmd.args(["--requirepass", &password]);
            }
        } else {
            cmd.args(["--port", &port.to_string()]);
        }
        cmd.args(["--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .arg("--dir")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("redis-server: {e}; apt-get install -y redis-server"))
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.command("PING") {
                Ok(answer) if answer == "+PONG" => return Ok(()),
                _ if Instant::now() >= deadline => {
                    return Err("redis-server did not answer PING within 10 s".to_owned())
                }
                _ => {
                    if let Ok(Some(status)) = self.child.try_wait() {
                        return Err(format!("redis-server exited: {status}"));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }

    /// Stops the server (by its PID); its data is gone (no persistence).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port (empty: no persistence) and waits until it answers.
    pub fn restart(&mut self) -> Result<(), String> {
        self.stop();
        self.child = Self::spawn(self._dir.path(), self.port, self.tls)?;
        self.wait_ready()
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Sends one inline command; returns the first line of the answer (through `redis-cli
    /// --tls` on a TLS server, where the answer is its text, `PONG` given as `+PONG`).
    pub fn command(&self, command: &str) -> Result<String, String> {
        if self.tls {
            let dir = self._dir.path();
            let password = std::fs::read_to_string(dir.join("password")).unwrap_or_default();
            let mut cli = Command::new("redis-cli");
            cli.args(["--tls", "--cacert"])
                .arg(dir.join("ca.crt"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string()]);
            if !password.is_empty() {
                cli.env("REDISCLI_AUTH", password);
            }
            let out = cli
                .args(command.split_whitespace())
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("redis-cli: {e}"))?;
            let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if !out.status.success() || text.contains("Could not connect") {
                return Err(format!("redis-cli: {text}{}", output_text(&out)));
            }
            return Ok(if text == "PONG" {
                "+PONG".to_owned()
            } else {
                text
            });
        }
        let mut stream = TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], self.port)),
            Duration::from_secs(2),
        )
        .map_err(|e| format!("connect: {e}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        stream
            .write_all(format!("{command}\r\n").as_bytes())
            .map_err(|e| format!("write: {e}"))?;
        let mut answer = Vec::new();
        let mut byte = [0u8; 1];
        while !answer.ends_with(b"\r\n") {
            if stream.read(&mut byte).map_err(|e| format!("read: {e}"))? == 0 {
                break;
            }
            answer.push(byte[0]);
        }
        Ok(String::from_utf8_lossy(&answer).trim_end().to_owned())
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! Servers of a test's own, which it may stop and start without disturbing the shared ones.
//!
//! [`PrivateClickHouse`] runs `scripts/chdb_server.py` from the venv that `scripts/services`
//! installs; [`PrivatePostgres`] is a cluster made with `initdb` in a temporary directory
//! (as the `postgres` OS user when the tests run as root, since PostgreSQL refuses root),
//! with `wal_level = logical` and SCRAM passwords over TCP. Both listen on free loopback
//! ports, keep their data across [`stop`](PrivateClickHouse::stop) and
//! [`start`](PrivateClickHouse::start), and are killed and removed when dropped.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use crate::tls::TestCertificates;
use crate::{random_name, ChServer, PgServer};

/// How long a private server may take to start or stop.
const WAIT: Duration = Duration::from_secs(90);

/// A free TCP port on the loopback interface (free when asked; not reserved).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a free port")
}

/// A fresh, empty directory under the system's temporary directory.
fn temp_dir(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(random_name(prefix));
    std::fs::create_dir_all(&dir).expect("create a temporary directory");
    dir
}

/// Sends `signal` (a name such as `TERM`) to a process; false when it is gone.
fn signal(pid: u32, signal: &str) -> bool {
    std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether this process runs as root (the owner of `/proc/self` is the effective user).
fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A ClickHouse server of one test.
pub struct PrivateClickHouse {
    dir: PathBuf,
    pub http_port: u16,
    pub tcp_port: u16,
    child: Option<Child>,
}

impl PrivateClickHouse {
    /// The Python of the venv `scripts/services` installs chdb-core into.
    pub fn python() -> PathBuf {
        let cache = std::env::var_os("FERRY_CACHE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                    .join(".cache/ferry")
            });
        cache.join("chdb-core-26.9.0/bin/python")
    }

    /// Starts a server on free ports with an empty data directory, and waits for `/ping`.
    pub async fn start() -> PrivateClickHouse {
        let mut ch = PrivateClickHouse {
            dir: temp_dir("ferry-ch"),
            http_port: free_port(),
            tcp_port: free_port(),
            child: None,
        };
        ch.start_again().await;
        ch
    }

    /// Where and how to reach it.
    pub fn server(&self) -> ChServer {
        ChServer {
            host: "127.0.0.1".into(),
            http_port: self.http_port,
        }
    }

    /// The server's log (stdout and stderr of every start).
    pub fn log(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts the server again on the same ports and data, and waits for `/ping`.
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "the private ClickHouse runs already");
        let python = Self::python();
        assert!(
            python.exists(),
            "no chdb-core venv at {} (run scripts/services start)",
            python.display()
        );
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/chdb_server.py");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .expect("open the ClickHouse log");
        let child = Command::new(python)
            .arg(script)
            .arg("--data-dir")
            .arg(self.dir.join("server"))
            .args(["--http-port", &self.http_port.to_string()])
            .args(["--tcp-port", &self.tcp_port.to_string()])
            .args(["--listen-host", "127.0.0.1"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn chdb_server.py");
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        loop {
            if ping(self.http_port).await {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                panic!(
                    "the private ClickHouse exited during start ({status}); see {}",
                    self.log().display()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the private ClickHouse did not answer /ping within {WAIT:?}; see {}",
                self.log().display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the server (SIGTERM, then SIGKILL if it lingers) and waits until its ports are
    /// closed. The data stays.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = child.id() {
            signal(pid, "TERM");
        }
        if tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .is_err()
        {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
        self.wait_closed().await;
    }

    /// Kills the server with SIGKILL, as a crash would. The data stays.
    pub async fn kill(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = child.start_kill();
        let _ = child.wait().await;
        self.wait_closed().await;
    }

    async fn wait_closed(&self) {
        let deadline = Instant::now() + WAIT;
        while tokio::net::TcpStream::connect(("127.0.0.1", self.http_port))
            .await
            .is_ok()
        {
            assert!(
                Instant::now() < deadline,
                "port {} still open",
                self.http_port
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for PrivateClickHouse {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let pid = child.id();
            let _ = child.start_kill();
            if let Some(pid) = pid {
                wait_gone(pid);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits (a few seconds at most) until a process has exited; a zombie counts as exited.
fn wait_gone(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let alive = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| !rest.starts_with('Z'))
        });
        if !alive {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `GET /ping` answered with `Ok.`.
async fn ping(port: u16) -> bool {
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(b"GET /ping HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await?;
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).await?;
        Ok::<bool, std::io::Error>(String::from_utf8_lossy(&answer).contains("Ok."))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(5), attempt).await,
        Ok(Ok(true))
    )
}

/// How [`PrivatePostgres::stop`] shuts the server down (`pg_ctl stop -m …`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Disconnects clients, checkpoints, stops.
    Fast,
    /// Stops at once, as a crash would; the next start recovers from the WAL.
    Immediate,
}

/// The role of a [`PrivatePostgres::start_with_tls`] cluster that must use TLS over TCP.
pub const TLS_ONLY_USER: &str = "tls_only";

/// A PostgreSQL cluster of one test.
pub struct PrivatePostgres {
    dir: PathBuf,
    bindir: PathBuf,
    pub port: u16,
    pub password: String,
    running: bool,
}

impl PrivatePostgres {
    /// PostgreSQL's bin directory: `FERRY_PG_BINDIR`, else the newest under
    /// `/usr/lib/postgresql`.
    pub fn bindir() -> PathBuf {
        if let Some(d) = std::env::var_os("FERRY_PG_BINDIR") {
            return PathBuf::from(d);
        }
        let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter_map(|e| {
                        let version = e.file_name().to_str()?.parse::<u32>().ok()?;
                        let bin = e.path().join("bin");
                        bin.join("initdb").exists().then_some((version, bin))
                    })
                    .collect()
            })
            .unwrap_or_default();
        found.sort();
        found
            .pop()
            .map(|(_, bin)| bin)
            .expect("no PostgreSQL under /usr/lib/postgresql (run scripts/services start)")
    }

    /// Creates a cluster on a free port and starts it.
    pub async fn start() -> PrivatePostgres {
        let mut pg = Self::initialised().await;
        pg.start_again().await;
        pg
    }

    /// A new cluster on a free port, not started yet.
    async fn initialised() -> PrivatePostgres {
        let mut pg = PrivatePostgres {
            dir: temp_dir("ferry-pg"),
            bindir: Self::bindir(),
            port: free_port(),
            password: "ferry".into(),
            running: false,
        };
        pg.init().await;
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The server's log.
    pub fn log(&self) -> PathBuf {
        self.dir.join("pg.log")
    }

    /// Where and how to reach it, as its superuser `postgres`.
    pub fn server(&self) -> PgServer {
        PgServer {
            host: "127.0.0.1".into(),
            port: self.port,
            user: "postgres".into(),
            password: self.password.clone(),
        }
    }

    /// Creates a cluster that also speaks TLS, and starts it.
    ///
    /// The server's certificate is issued by a test authority ([`PrivatePostgres::root_cert`])
    /// for the name `localhost` only, so connecting to `127.0.0.1` fails a host-name check. A
    /// superuser [`TLS_ONLY_USER`] (same password as `postgres`) may connect over TCP only
    /// with TLS; `postgres` itself may still connect in plain text, for the test's own use.
    pub async fn start_with_tls() -> PrivatePostgres {
        let mut pg = Self::initialised().await;
        pg.enable_tls();
        pg.start_again().await;
        let client = pg.server().connect("postgres").await;
        client
            .batch_execute(&format!(
                "CREATE ROLE {TLS_ONLY_USER} SUPERUSER LOGIN PASSWORD '{}'",
                pg.password
            ))
            .await
            .expect("create the TLS-only role");
        pg
    }

    /// The certificates of a [`PrivatePostgres::start_with_tls`] cluster.
    pub fn certificates(&self) -> TestCertificates {
        TestCertificates::issued_in(&self.dir.join("tls"))
    }

    /// Issues the certificates and turns TLS on (before the first start).
    fn enable_tls(&mut self) {
        let tls = self.dir.join("tls");
        let certs = TestCertificates::issue(&tls);
        use std::os::unix::fs::PermissionsExt;
        let key = certs.server_key();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
            .expect("chmod the server key");
        self.give(&tls);
        self.give(&key);
        self.give(&certs.server_cert());

        let data = self.data();
        let conf = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).expect("read postgresql.conf");
        text.push_str(&format!(
            "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
            certs.server_cert().display(),
            key.display()
        ));
        std::fs::write(&conf, text).expect("write postgresql.conf");
        // First match wins: the TLS-only role is sorted out before the general lines.
        let hba = data.join("pg_hba.conf");
        let general = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
        let mut text = String::from("# written by ferry-testkit\n");
        for db in ["all", "replication"] {
            text.push_str(&format!(
                "hostssl {db} {TLS_ONLY_USER} 127.0.0.1/32 scram-sha-256\n\
                 hostnossl {db} {TLS_ONLY_USER} 127.0.0.1/32 reject\n"
            ));
        }
        text.push_str(&general);
        std::fs::write(&hba, text).expect("write pg_hba.conf");
    }

    pub fn is_running(&self) -> bool {
        self.running
    }

    /// A command run as the cluster's OS user, from `/`.
    fn as_pg(&self, program: &str) -> Command {
        let path = self.bindir.join(program);
        let mut c = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        };
        c.current_dir("/").stdin(Stdio::null());
        c
    }

    /// Hands a path to the cluster's OS user.
    fn give(&self, path: &Path) {
        if is_root() {
            let status = std::process::Command::new("chown")
                .args(["postgres:"])
                .arg(path)
                .status()
                .expect("run chown");
            assert!(status.success(), "chown postgres {}", path.display());
        }
    }

    async fn run(&self, what: &str, cmd: &mut Command) {
        let out = cmd.output().await.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            out.status.success(),
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    async fn init(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o755))
            .expect("chmod the cluster directory");
        self.give(&self.dir);
        let pwfile = self.dir.join("pwfile");
        std::fs::write(&pwfile, format!("{}\n", self.password)).expect("write pwfile");
        self.give(&pwfile);
        let data = self.data();
        self.run(
            "initdb",
            self.as_pg("initdb")
                .arg("-D")
                .arg(&data)
                .args(["-U", "postgres", "--auth-local=peer"])
                .args([
                    "--auth-host=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C.UTF-8",
                ])
                .arg(format!("--pwfile={}", pwfile.display()))
                .arg("--no-sync"),
        )
        .await;
        let _ = std::fs::remove_file(&pwfile);
        let sockets = self.dir.join("run");
        std::fs::create_dir_all(&sockets).expect("create the socket directory");
        self.give(&sockets);
        let conf = format!(
            "\n# written by ferry-testkit\n\
             listen_addresses = '127.0.0.1'\n\
             port = {}\n\
             unix_socket_directories = '{}'\n\
             max_connections = 100\n\
             wal_level = logical\n\
             max_replication_slots = 8\n\
             max_wal_senders = 8\n\
             password_encryption = 'scram-sha-256'\n\
             shared_buffers = '128MB'\n",
            self.port,
            sockets.display()
        );
        let path = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&path).expect("read postgresql.conf");
        text.push_str(&conf);
        std::fs::write(&path, text).expect("write postgresql.conf");
    }

    /// Starts the server (again), on the same port and data, and waits until it accepts
    /// connections.
    pub async fn start_again(&mut self) {
        assert!(!self.running, "the private PostgreSQL runs already");
        let log = self.log();
        if !log.exists() {
            std::fs::write(&log, "").expect("create the PostgreSQL log");
            self.give(&log);
        }
        self.run(
            "pg_ctl start",
            self.as_pg("pg_ctl")
                .arg("start")
                .arg("-D")
                .arg(self.data())
                .arg("-l")
                .arg(&log)
                .args(["-w", "-t", "90", "-s"]),
        )
        .await;
        self.running = true;
        let deadline = Instant::now() + WAIT;
        let server = self.server();
        loop {
            match tokio_postgres::connect(&server.conn_str("postgres"), tokio_postgres::NoTls).await
            {
                Ok(_) => return,
                Err(e) => assert!(
                    Instant::now() < deadline,
                    "the private PostgreSQL does not accept connections: {e}; see {}",
                    log.display()
                ),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the server; the data stays.
    pub async fn stop(&mut self, mode: StopMode) {
        if !self.running {
            return;
        }
        let mode = match mode {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        };
        self.run(
            "pg_ctl stop",
            self.as_pg("pg_ctl")
                .arg("stop")
                .arg("-D")
                .arg(self.data())
                .args(["-m", mode, "-w", "-t", "90", "-s"]),
        )
        .await;
        self.running = false;
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if self.running {
            let path = self.bindir.join("pg_ctl");
            let mut c = if is_root() {
                let mut c = std::process::Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(path);
                c
            } else {
                std::process::Command::new(path)
            };
            let _ = c
                .current_dir("/")
                .arg("stop")
                .arg("-D")
                .arg(self.data())
                .args(["-m", "immediate", "-w", "-s"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

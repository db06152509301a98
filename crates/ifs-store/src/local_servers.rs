//! Real backing servers for tests, each started on a free loopback port: redis-server and
//! DynamoDB Local. There is no skipping: a test that needs a server it cannot start fails, saying
//! how to get it. Each server runs under a watchdog shell that ends it when the test process ends,
//! however it ends (a panic, `process::exit`, a kill), so no server outlives its tests.

// Test support: a panic is how a case reports failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::missing_panics_doc)]

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long a server may take to start answering, or to go away.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A port nobody listens on right now (the server started on it may still race another process;
/// loopback ports are plenty).
#[must_use]
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A server process under its watchdog, listening on `port`.
#[derive(Debug)]
struct Watched {
    watchdog: Child,
    port: u16,
}

impl Watched {
    /// Runs `command` (a shell command line) in `dir`. The watchdog shell stops it when this
    /// process is gone, when the server itself ends, or when the watchdog gets SIGTERM.
    fn spawn(command: &str, dir: &Path, port: u16, hint: &str) -> Self {
        let script = format!(
            "{command} & server=$!; trap 'kill $server 2>/dev/null; exit 0' TERM; \
             while kill -0 {parent} 2>/dev/null && kill -0 $server 2>/dev/null; do sleep 1; done; \
             kill $server 2>/dev/null",
            parent = std::process::id()
        );
        let watchdog = Command::new("sh")
            .args(["-c", &script])
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start a shell for the server ({e})"));
        let mut watched = Self { watchdog, port };
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(_)) = watched.watchdog.try_wait() {
                panic!("the server on port {port} exited at once: {hint}");
            }
            assert!(started.elapsed() < START_TIMEOUT, "the server on port {port} did not start: {hint}");
            std::thread::sleep(Duration::from_millis(50));
        }
        watched
    }

    /// Stops the server (no goodbye to its clients) and waits until its port is free.
    fn stop(mut self) {
        // SIGTERM to the watchdog only; its trap ends the server.
        let _ = Command::new("kill").arg(self.watchdog.id().to_string()).status();
        let _ = self.watchdog.wait();
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() && started.elapsed() < START_TIMEOUT {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A `redis-server` of its own, in memory only, stopped when dropped.
#[derive(Debug)]
pub struct RedisServer {
    process: Option<Watched>,
    port: u16,
    /// For a server that speaks only TLS: where its certificates are.
    tls: Option<tempfile::TempDir>,
}

impl RedisServer {
    /// Starts one on a free port and waits until it answers `PING`.
    #[must_use]
    pub fn start() -> Self {
        let mut server = Self { process: None, port: free_port(), tls: None };
        server.restart();
        server
    }

    /// Starts one that speaks only TLS, as ElastiCache Serverless does, with a certificate for
    /// 127.0.0.1 from a certificate authority of its own ([`ca_file`](Self::ca_file)), made
    /// with the `openssl` command.
    #[must_use]
    pub fn start_tls() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let script = "set -e
            openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
              -subj /CN=ifs-guide-test-ca -keyout ca.key -out ca.pem
            openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
              -subj /CN=127.0.0.1 -keyout server.key -out server.csr
            printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' > server.ext
            openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
              -extfile server.ext -out server.pem";
        let made = Command::new("sh")
            .args(["-c", script])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        assert!(
            made.is_ok_and(|status| status.success()),
            "cannot make test certificates: is openssl installed? `make test` installs it"
        );
        let mut server = Self { process: None, port: free_port(), tls: Some(dir) };
        server.restart();
        server
    }

    /// `redis://127.0.0.1:<port>`, or `rediss://…` for a TLS server.
    #[must_use]
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The PEM file of the authority that signed a TLS server's certificate.
    #[must_use]
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.tls.as_ref().map(|dir| dir.path().join("ca.pem"))
    }

    /// Stops the server, as a crash would.
    pub fn stop(&mut self) {
        if let Some(process) = self.process.take() {
            process.stop();
        }
    }

    /// Starts it again on the same port, empty, and waits until it answers.
    pub fn restart(&mut self) {
        self.stop();
        let ports = match &self.tls {
            Some(dir) => format!(
                "--port 0 --tls-port {} --tls-cert-file '{dir}/server.pem' --tls-key-file '{dir}/server.key' \
                 --tls-auth-clients no",
                self.port,
                dir = dir.path().display()
            ),
            None => format!("--port {}", self.port),
        };
        let command = format!("redis-server {ports} --bind 127.0.0.1 --save '' --appendonly no");
        let hint = "is redis-server installed? `make test` installs it (apt-get install redis-server)";
        self.process = Some(Watched::spawn(&command, &std::env::temp_dir(), self.port, hint));
        if self.tls.is_some() {
            // Accepting connections is as far as a plain-text probe can see.
            return;
        }
        let started = Instant::now();
        while !self.answers_ping() {
            assert!(started.elapsed() < START_TIMEOUT, "redis-server on port {} does not answer", self.port);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn answers_ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else { return false };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut reply = [0_u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Where `make test` installs DynamoDB Local (`infra/install-dynamodb-local.sh`);
/// `DYNAMODB_LOCAL_DIR` overrides it.
fn dynamodb_local_dir() -> PathBuf {
    let dir = std::env::var_os("DYNAMODB_LOCAL_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.cache/dynamodb-local"),
        PathBuf::from,
    );
    assert!(
        dir.join("DynamoDBLocal.jar").is_file(),
        "no DynamoDB Local in {}: `make test` installs it (infra/install-dynamodb-local.sh)",
        dir.display()
    );
    dir
}

/// DynamoDB Local on `port`, in memory or keeping its tables in `disk`.
fn start_dynamodb_local(port: u16, disk: Option<&Path>) -> Watched {
    let storage = match disk {
        // One database file whatever the credentials and region, so a restart finds it.
        Some(dir) => format!("-sharedDb -dbPath '{}'", dir.display()),
        None => "-inMemory".to_owned(),
    };
    let command =
        format!("java -Djava.library.path=DynamoDBLocal_lib -jar DynamoDBLocal.jar {storage} -port {port}");
    Watched::spawn(&command, &dynamodb_local_dir(), port, "DynamoDB Local needs java 17 or newer")
}

/// DynamoDB Local on a port of its own, stopped when dropped.
#[derive(Debug)]
pub struct DynamoDbLocal {
    process: Option<Watched>,
    port: u16,
    disk: Option<PathBuf>,
}

impl DynamoDbLocal {
    /// Starts one in memory and waits until it accepts connections.
    #[must_use]
    pub fn start() -> Self {
        let mut server = Self { process: None, port: free_port(), disk: None };
        server.restart();
        server
    }

    /// Starts one that keeps its tables in `dir`, so that they survive [`stop`](Self::stop)
    /// and [`restart`](Self::restart) as they would survive an outage of the real service.
    #[must_use]
    pub fn start_on_disk(dir: &Path) -> Self {
        let mut server = Self { process: None, port: free_port(), disk: Some(dir.to_owned()) };
        server.restart();
        server
    }

    /// One server for every test of this process that asks for it; each uses tables of its own.
    /// (It is never dropped; its watchdog ends it with the process.)
    pub fn shared() -> &'static Self {
        static SHARED: OnceLock<DynamoDbLocal> = OnceLock::new();
        SHARED.get_or_init(Self::start)
    }

    /// `http://127.0.0.1:<port>`, for `DYNAMODB_ENDPOINT`.
    #[must_use]
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stops the server, as a crash would.
    pub fn stop(&mut self) {
        if let Some(process) = self.process.take() {
            process.stop();
        }
    }

    /// Starts it again on the same port — empty unless it keeps its tables on disk — and waits
    /// until it accepts connections.
    pub fn restart(&mut self) {
        self.stop();
        self.process = Some(start_dynamodb_local(self.port, self.disk.as_deref()));
    }
}

impl Drop for DynamoDbLocal {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A table name no other test of this run uses.
#[must_use]
pub fn unique_table() -> String {
    format!("ifs-guide-test-{}", ifs_domain::UserId::generate())
}

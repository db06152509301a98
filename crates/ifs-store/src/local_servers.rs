//! Real backing servers for tests, each started on a free loopback port and stopped when dropped:
//! redis-server and DynamoDB Local. There is no skipping: a test that needs a server it cannot
//! start fails, saying how to get it.

// Test support: a panic is how a case reports failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::missing_panics_doc)]

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long a server may take to start answering.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A port nobody listens on right now (the server started on it may still race another process;
/// loopback ports are plenty).
#[must_use]
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A `redis-server` of its own, in memory only.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
}

impl RedisServer {
    /// Starts one on a free port and waits until it answers `PING`.
    #[must_use]
    pub fn start() -> Self {
        let mut server = Self { child: None, port: free_port() };
        server.restart();
        server
    }

    /// `redis://127.0.0.1:<port>`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops the server (as a crash would: no goodbye to clients).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty, and waits until it answers.
    pub fn restart(&mut self) {
        self.stop();
        let port = self.port.to_string();
        let child = Command::new("redis-server")
            .args(["--port", &port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .current_dir(std::env::temp_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}): `make test` installs it, or `apt-get install redis-server`")
            });
        self.child = Some(child);
        let started = Instant::now();
        while !self.answers_ping() {
            assert!(started.elapsed() < START_TIMEOUT, "redis-server on port {} did not start", self.port);
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
    std::env::var_os("DYNAMODB_LOCAL_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.cache/dynamodb-local"),
        PathBuf::from,
    )
}

/// DynamoDB Local, in memory, on a port of its own, stopped when dropped.
#[derive(Debug)]
pub struct DynamoDbLocal {
    child: Option<Child>,
    port: u16,
}

/// The command that runs DynamoDB Local on `port`, in its directory.
fn dynamodb_local_command(port: u16) -> String {
    let dir = dynamodb_local_dir();
    assert!(
        dir.join("DynamoDBLocal.jar").is_file(),
        "no DynamoDB Local in {}: `make test` installs it (infra/install-dynamodb-local.sh)",
        dir.display()
    );
    format!(
        "cd '{}' && exec java -Djava.library.path=DynamoDBLocal_lib -jar DynamoDBLocal.jar -inMemory -port {port}",
        dir.display()
    )
}

fn wait_until_listening(port: u16) {
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < START_TIMEOUT, "DynamoDB Local on port {port} did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl DynamoDbLocal {
    /// Starts one and waits until it accepts connections.
    #[must_use]
    pub fn start() -> Self {
        let mut server = Self { child: None, port: free_port() };
        server.restart();
        server
    }

    /// One server for every test of this process that asks for it; each uses tables of its own.
    /// A static is never dropped, so a watchdog shell ends this server when the process ends.
    pub fn shared() -> &'static SharedDynamoDbLocal {
        static SHARED: OnceLock<SharedDynamoDbLocal> = OnceLock::new();
        SHARED.get_or_init(|| {
            let port = free_port();
            let script = format!(
                "{} & server=$!; while kill -0 {parent} 2>/dev/null && kill -0 $server 2>/dev/null; \
                 do sleep 1; done; kill $server 2>/dev/null",
                dynamodb_local_command(port).replace("&& exec ", "&& "),
                parent = std::process::id()
            );
            let watchdog = Command::new("sh")
                .args(["-c", &script])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start DynamoDB Local ({e}); it needs java 17+"));
            wait_until_listening(port);
            SharedDynamoDbLocal { port, _watchdog: watchdog }
        })
    }

    /// `http://127.0.0.1:<port>`, for `DYNAMODB_ENDPOINT`.
    #[must_use]
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stops the server, as a crash would.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty, and waits until it accepts connections.
    pub fn restart(&mut self) {
        self.stop();
        // `exec` makes java the child itself, so that stopping the child stops the server.
        let child = Command::new("sh")
            .args(["-c", &dynamodb_local_command(self.port)])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start DynamoDB Local ({e}); it needs java 17+"));
        self.child = Some(child);
        wait_until_listening(self.port);
    }
}

impl Drop for DynamoDbLocal {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The DynamoDB Local that a whole test process shares.
#[derive(Debug)]
pub struct SharedDynamoDbLocal {
    port: u16,
    /// Ends with the test process, and ends the server then.
    _watchdog: Child,
}

impl SharedDynamoDbLocal {
    /// `http://127.0.0.1:<port>`, for `DYNAMODB_ENDPOINT`.
    #[must_use]
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// A table name no other test of this run uses.
#[must_use]
pub fn unique_table() -> String {
    format!("ifs-guide-test-{}", uuid_like())
}

fn uuid_like() -> String {
    ifs_domain::UserId::generate().to_string()
}

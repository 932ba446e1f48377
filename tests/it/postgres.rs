//! A real PostgreSQL server for the tests, started once per test run on a free loopback port, and a
//! fresh database for each test that asks (`database().await`).
//!
//! The server binaries come from `MESHGATE_PG_BINDIR` (set by `scripts/test.sh`, which installs
//! them if the system has none), else from the system's `/usr/lib/postgresql/*/bin`. As root the
//! server runs as `nobody` (initdb refuses root). The server does not sync to disk (`fsync=off`):
//! the tests are about meshgate's protocol, not the disk's durability. It serves TLS with a
//! certificate of the tests' CA to clients that ask. A watchdog stops it when the test process ends
//! and removes its files.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The unprivileged account the server runs as when the tests run as root.
const NOBODY: u32 = 65534;

pub struct Server {
    pub port: u16,
}

/// The folder of the server's binaries (its `pg_dump` and `pg_restore` too).
pub fn bindir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MESHGATE_PG_BINDIR") {
        return dir.into();
    }
    let mut system: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|bin| bin.join("initdb").is_file())
        .collect();
    system.sort();
    system.pop().unwrap_or_else(|| {
        panic!("no PostgreSQL server binaries: run ./scripts/test.sh, which installs them, or set MESHGATE_PG_BINDIR")
    })
}

/// The server, started on first use.
pub fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(start)
}

fn start() -> Server {
    let bin = bindir();
    let root = std::env::temp_dir().join(format!("meshgate-pg-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir(&root).unwrap();
    let as_root = std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false);
    let user = |command: &mut Command| {
        if as_root {
            command.uid(NOBODY).gid(NOBODY);
        }
    };
    if as_root {
        std::os::unix::fs::chown(&root, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    let data = root.join("data");
    let mut initdb = Command::new(bin.join("initdb"));
    initdb.args(["-D", data.to_str().unwrap(), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]);
    initdb.stdout(Stdio::null()).stderr(Stdio::piped());
    user(&mut initdb);
    let made = initdb.output().expect("initdb runs");
    assert!(made.status.success(), "initdb failed: {}", String::from_utf8_lossy(&made.stderr));

    // TLS on, with a certificate of the tests' CA for `localhost` and `127.0.0.1`: a client that
    // asks for it gets it; one that does not connects in plain text.
    let tls = crate::pki::pki().write_leaf(&root, "postgres", 5432);
    if as_root {
        for file in [&tls.cert_file, &tls.key_file] {
            std::os::unix::fs::chown(file, Some(NOBODY), Some(NOBODY)).unwrap();
        }
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut postgres = Command::new(bin.join("postgres"));
    postgres
        .args(["-D", data.to_str().unwrap(), "-p", &port.to_string()])
        .args(["-c", "ssl=on", "-c", &format!("ssl_cert_file={}", tls.cert_file.display())])
        .args(["-c", &format!("ssl_key_file={}", tls.key_file.display())])
        .args(["-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=", "-c", "fsync=off"])
        .args(["-c", "max_connections=300", "-c", "shared_buffers=64MB"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // The shared-log benchmark counts the database's statements per delivery where the server has
    // pg_stat_statements (Debian's has it beside the server; it runs without where it is missing).
    let library = |dir: &str| bin.parent().is_some_and(|p| p.join(dir).join("pg_stat_statements.so").exists());
    if library("lib") || library("lib/postgresql") {
        postgres.args(["-c", "shared_preload_libraries=pg_stat_statements"]);
    }
    user(&mut postgres);
    let mut child = postgres.spawn().expect("postgres starts");
    watch_over(child.id(), &root);
    // Ready when it says so; what it says afterwards goes to a file beside its data.
    let (ready, said_ready) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    let log = root.join("postgres.log");
    std::thread::spawn(move || {
        forward(stderr, &log, ready);
        let _ = child.wait();
    });
    assert!(
        said_ready.recv().unwrap_or(false),
        "PostgreSQL did not start; see {}",
        root.join("postgres.log").display()
    );
    Server { port }
}

/// Copies the server's output to `log`, saying when it is ready (or that it ended first).
fn forward(stderr: impl std::io::Read, log: &Path, ready: std::sync::mpsc::Sender<bool>) {
    use std::io::Write;
    let mut file = std::fs::File::create(log).ok();
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        if let Some(file) = file.as_mut() {
            let _ = writeln!(file, "{line}");
        }
        if line.contains("ready to accept connections") {
            let _ = ready.send(true);
        }
    }
    let _ = ready.send(false);
}

/// Stops the server (fast shutdown) once this test process is gone, however it ended, and removes
/// its cluster (a few hundred MiB per test run) when it has stopped.
fn watch_over(server: u32, root: &Path) {
    let script = r#"while kill -0 "$1" 2>/dev/null; do sleep 1; done; kill -INT "$2"
while kill -0 "$2" 2>/dev/null; do sleep 0.2; done; rm -rf "$3""#;
    let mut watchdog = Command::new("sh")
        .args(["-c", script, "watchdog", &std::process::id().to_string(), &server.to_string()])
        .arg(root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("the server's watchdog starts");
    // It outlives this process; reaped here if it ends first.
    std::thread::spawn(move || watchdog.wait());
}

/// A new, empty database on the server; its connection URL.
pub async fn database() -> String {
    let server = server();
    let name = format!("t_{}", uuid::Uuid::now_v7().simple());
    let admin = format!("postgres://postgres@127.0.0.1:{}/postgres", server.port);
    let (client, connection) = tokio_postgres::connect(&admin, tokio_postgres::NoTls).await.unwrap();
    let driver = tokio::spawn(connection);
    client.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
    drop(client);
    let _ = driver.await;
    format!("postgres://postgres@127.0.0.1:{}/{name}", server.port)
}

//! A build's log on the node: one file per attempt, written by the script and its hooks (stdout
//! and stderr through one pipe each, so they interleave as written) and by the agent's own notes
//! (`meshgate: …` lines). It counts what it holds, for the live log, and when output last came,
//! for hang detection.
//!
//! A chatty build writes a line at a time, hundreds of thousands of them: nothing wakes at each
//! one. The count and the time of the last output are atomics the others read when they wake;
//! the change signal fires once per [`SIGNAL_BYTES`] written, and at the first write after a
//! reader asked for it ([`Log::wake_at_next_write`]).

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};

/// How much a pipe read takes at once.
const READ_BYTES: usize = 64 * 1024;
/// The change signal fires at least once per this many bytes written.
pub const SIGNAL_BYTES: u64 = 64 * 1024;

struct Shared {
    file: Mutex<File>,
    len: AtomicU64,
    /// Nanoseconds from `start` to the last write.
    last_write: AtomicU64,
    start: Instant,
    /// The length at the last signal.
    signalled: AtomicU64,
    /// A reader waits for the next write, however small.
    wake_next: AtomicBool,
    changes: watch::Sender<u64>,
}

/// The attempt's log file, shared by every writer of the build.
#[derive(Clone)]
pub struct Log {
    path: PathBuf,
    shared: Arc<Shared>,
}

impl Log {
    /// A new, empty log at `path`.
    pub fn create(path: &Path) -> io::Result<Log> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = File::create(path)?;
        let shared = Shared {
            file: Mutex::new(file),
            len: AtomicU64::new(0),
            last_write: AtomicU64::new(0),
            start: Instant::now(),
            signalled: AtomicU64::new(0),
            wake_next: AtomicBool::new(false),
            changes: watch::channel(0).0,
        };
        Ok(Log { path: path.to_owned(), shared: Arc::new(shared) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Signals of change: once per [`SIGNAL_BYTES`] written, and at the first write after
    /// [`Log::wake_at_next_write`]. Its value is the length at the signal.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.shared.changes.subscribe()
    }

    /// The next write signals a change, however small.
    pub fn wake_at_next_write(&self) {
        self.shared.wake_next.store(true, Ordering::SeqCst);
    }

    pub fn len(&self) -> u64 {
        self.shared.len.load(Ordering::SeqCst)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// When output last came (the log's creation, before any).
    pub fn last_write(&self) -> tokio::time::Instant {
        let at = self.shared.start + Duration::from_nanos(self.shared.last_write.load(Ordering::SeqCst));
        tokio::time::Instant::from_std(at)
    }

    fn append(&self, bytes: &[u8]) -> io::Result<()> {
        let shared = &self.shared;
        let mut file = shared.file.lock().map_err(|_| io::Error::other("log lock poisoned"))?;
        file.write_all(bytes)?;
        let len = shared.len.fetch_add(bytes.len() as u64, Ordering::SeqCst) + bytes.len() as u64;
        shared.last_write.store(shared.start.elapsed().as_nanos() as u64, Ordering::SeqCst);
        let asked = shared.wake_next.swap(false, Ordering::SeqCst);
        if asked || len - shared.signalled.load(Ordering::SeqCst) >= SIGNAL_BYTES {
            shared.signalled.store(len, Ordering::SeqCst);
            shared.changes.send_replace(len);
        }
        Ok(())
    }

    /// The agent's own line in the log (`meshgate: …`), so the log tells what happened to the
    /// script as well as what it said.
    pub fn note(&self, line: &str) {
        let line = format!("meshgate: {line}\n");
        if let Err(e) = self.append(line.as_bytes()) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot write to a build log");
        }
    }

    /// A pipe for one process's stdout and stderr, read into the log on a thread of its own.
    pub fn capture(&self) -> io::Result<Capture> {
        let (mut reader, writer) = io::pipe()?;
        let stdout = Stdio::from(writer.try_clone()?);
        let stderr = Stdio::from(writer);
        let (done_tx, done) = oneshot::channel();
        let log = self.clone();
        std::thread::Builder::new().name("meshgate-output".into()).spawn(move || {
            let mut buffer = vec![0u8; READ_BYTES];
            loop {
                match reader.read(&mut buffer) {
                    Ok(0) => break,
                    Ok(n) => {
                        if let Err(e) = log.append(&buffer[..n]) {
                            tracing::warn!(error = %e, "cannot write to a build log; output lost");
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read a build's output");
                        break;
                    }
                }
            }
            let _ = done_tx.send(());
        })?;
        Ok(Capture { stdout, stderr, done })
    }
}

/// One process's output pipe: hand `stdout` and `stderr` to the command; [`Capture::finish`]
/// once the process group is gone.
pub struct Capture {
    pub stdout: Stdio,
    pub stderr: Stdio,
    done: oneshot::Receiver<()>,
}

impl Capture {
    /// The pipes for the command, and what waits for the end of the output.
    pub fn split(self) -> (Stdio, Stdio, Drained) {
        (self.stdout, self.stderr, Drained(self.done))
    }
}

/// Waits for the end of a process's output.
pub struct Drained(oneshot::Receiver<()>);

impl Drained {
    /// Waits until everything the process wrote is in the log (its pipe closed), at most `limit`:
    /// a process that escaped the group (a new session) may hold the pipe open; its later output
    /// still reaches the log, but the build does not wait for it.
    pub async fn finish(self, limit: Duration) -> bool {
        tokio::time::timeout(limit, self.0).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::process::Command;

    #[tokio::test]
    async fn stdout_and_stderr_reach_one_log_in_order_with_the_agents_notes_and_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::create(&dir.path().join("logs/b-1.log")).unwrap();
        let mut written = log.changes();
        let created = log.last_write();
        log.wake_at_next_write();
        log.note("before_build hook started");
        assert!(written.has_changed().unwrap(), "the write a reader waited for signals");
        written.borrow_and_update();
        let (stdout, stderr, drained) = log.capture().unwrap().split();
        let mut child = Command::new("sh")
            .args(["-c", "echo out; echo err >&2; echo out again"])
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap();
        assert!(child.wait().await.unwrap().success());
        assert!(drained.finish(Duration::from_secs(10)).await);
        let text = std::fs::read_to_string(log.path()).unwrap();
        assert_eq!(text, "meshgate: before_build hook started\nout\nerr\nout again\n");
        assert_eq!(log.len(), text.len() as u64);
        assert!(log.last_write() > created);
        // Small writes nobody waited for signal nothing; a big one does.
        assert!(!written.has_changed().unwrap());
        log.note(&"x".repeat(SIGNAL_BYTES as usize));
        assert!(written.has_changed().unwrap());
        assert_eq!(*written.borrow_and_update(), log.len());
    }
}

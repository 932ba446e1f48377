//! A build's log on the node: one file per attempt, written by the script and its hooks (stdout
//! and stderr through one pipe each, so they interleave as written) and by the agent's own notes
//! (`meshgate: …` lines). It counts what it holds, for the live log, and when output last came,
//! for hang detection.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, watch};

/// How much a pipe read takes at once.
const READ_BYTES: usize = 64 * 1024;

/// The attempt's log file, shared by every writer of the build.
#[derive(Clone)]
pub struct Log {
    path: PathBuf,
    file: Arc<Mutex<File>>,
    /// Bytes written so far; changes whenever output arrives.
    written: Arc<watch::Sender<u64>>,
}

impl Log {
    /// A new, empty log at `path`.
    pub fn create(path: &Path) -> io::Result<Log> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = File::create(path)?;
        Ok(Log { path: path.to_owned(), file: Arc::new(Mutex::new(file)), written: Arc::new(watch::channel(0).0) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes written so far, and every change to come.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.written.subscribe()
    }

    pub fn len(&self) -> u64 {
        *self.written.borrow()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn append(&self, bytes: &[u8]) -> io::Result<()> {
        let mut file = self.file.lock().map_err(|_| io::Error::other("log lock poisoned"))?;
        file.write_all(bytes)?;
        self.written.send_modify(|n| *n += bytes.len() as u64);
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
        let mut written = log.watch();
        log.note("before_build hook started");
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
        assert!(written.has_changed().unwrap());
        assert_eq!(*written.borrow_and_update(), text.len() as u64);
    }
}

//! The tailer: hands this gateway's followers every committed event, in position order, whichever
//! gateway appended it.
//!
//! This gateway's own commits arrive from its writer and are passed on as they are. Another
//! gateway's commits are read from the log: after a `meshgate_events` notification from another
//! gateway's writer (this one's own notifications are passed over: its commits come from its
//! writer), or after `poll` without one (a notification is a hint and may be lost with a
//! connection). Reads always start from the tailer's cursor, so nothing is skipped and nothing is
//! handed on twice. They take only the event types the followers fold (`followed`) up to a head
//! known to be committed (a notification's, this gateway's own, or the head row's after a poll),
//! so the cursor moves past the others without shipping them.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_postgres::AsyncMessage;

use super::{pg_failed, read_followed, read_head, Readers, Target};
use crate::store::{Committed, StoreError, StoredEvent};

/// Positions read from the log per query while catching up.
const PAGE: u64 = 2048;

pub struct Tailer {
    pub target: Arc<Target>,
    pub readers: Arc<Readers>,
    pub head: Arc<watch::Sender<u64>>,
    pub feed: broadcast::Sender<Committed>,
    /// The last position handed on.
    pub cursor: u64,
    pub poll: Duration,
    /// This gateway's commits, from its writer.
    pub local: mpsc::UnboundedReceiver<Arc<[StoredEvent]>>,
    /// The server process of this gateway's writer (0: none yet).
    pub writer_pid: Arc<AtomicI32>,
    /// The event types the followers fold (`None`: all).
    pub followed: Option<Vec<&'static str>>,
}

pub async fn run(mut tailer: Tailer) {
    let (hints, mut hinted) = watch::channel(0u64);
    let listener = tokio::spawn(listen(Arc::clone(&tailer.target), hints, Arc::clone(&tailer.writer_pid), tailer.poll));
    let mut poll = tokio::time::interval(tailer.poll);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            local = tailer.local.recv() => match local {
                Some(batch) => tailer.pass_on(batch).await,
                None => break,
            },
            Ok(()) = hinted.changed() => {
                let hint = *hinted.borrow_and_update();
                // Not past this gateway's head: handed on already, or a commit of its own writer
                // on its way here (whose gap, if any, is read from the log then).
                let head = *tailer.head.borrow();
                if hint > tailer.cursor && hint > head {
                    // An unreadable payload says nothing of the head: the head row does.
                    tailer.read_log((hint != u64::MAX).then_some(hint)).await;
                }
            }
            _ = poll.tick() => tailer.read_log(None).await,
        }
    }
    listener.abort();
}

impl Tailer {
    /// A batch this gateway committed: handed on at once if it follows the cursor. Otherwise
    /// another gateway committed before it, and a read of the log takes both.
    async fn pass_on(&mut self, batch: Arc<[StoredEvent]>) {
        let (Some(first), Some(last)) = (batch.first().map(|e| e.position), batch.last().map(|e| e.position)) else {
            return;
        };
        if first > self.cursor + 1 {
            self.read_log(Some(last)).await;
            return;
        }
        let fresh = batch.partition_point(|e| e.position <= self.cursor);
        match batch.get(fresh) {
            Some(next) if next.position == self.cursor + 1 => {
                let rest: Arc<[StoredEvent]> = if fresh == 0 { batch } else { batch[fresh..].into() };
                if let Some(last) = rest.last().map(|e| e.position) {
                    self.publish(Committed { after: self.cursor, through: last, events: rest });
                }
            }
            Some(_) => self.read_log(Some(last)).await,
            None => {}
        }
    }

    /// Reads and hands on what was committed after the cursor (the events the followers fold), up
    /// to `upto`, a head some commit reached (`None`: the head row's, read first). Every position
    /// up to it is committed, so the read's snapshot holds them all.
    async fn read_log(&mut self, upto: Option<u64>) {
        let upto = match upto {
            Some(upto) => upto.max(*self.head.borrow()),
            None => match read_head(&self.readers).await {
                Ok(head) => head,
                Err(e) => return Self::cannot_read(&e),
            },
        };
        while self.cursor < upto {
            let through = upto.min(self.cursor + PAGE);
            match read_followed(&self.readers, self.cursor, through, self.followed.as_deref()).await {
                Ok(page) => self.publish(Committed { after: self.cursor, through, events: page.into() }),
                Err(e) => return Self::cannot_read(&e),
            }
        }
    }

    fn cannot_read(e: &StoreError) {
        tracing::warn!(error = %crate::report::chain(e), "cannot read new events from the log; trying again");
    }

    fn publish(&mut self, commit: Committed) {
        let through = commit.through;
        self.cursor = through;
        self.head.send_if_modified(|h| (through > *h).then(|| *h = through).is_some());
        // Nobody listening is fine: followers read the log when they start.
        let _ = self.feed.send(commit);
    }
}

/// Listens for `meshgate_events` notifications and turns each from another writer than
/// `writer_pid` into a hint; reconnects after `retry` when the connection is lost.
async fn listen(target: Arc<Target>, hints: watch::Sender<u64>, writer_pid: Arc<AtomicI32>, retry: Duration) {
    loop {
        if let Err(e) = listen_once(&target, &hints, &writer_pid).await {
            tracing::debug!(error = %crate::report::chain(&e), "listening for new events stopped; polling meanwhile");
        }
        if hints.is_closed() {
            return;
        }
        tokio::time::sleep(retry).await;
    }
}

async fn listen_once(target: &Target, hints: &watch::Sender<u64>, writer_pid: &AtomicI32) -> Result<(), StoreError> {
    let (client, mut connection) = target.connect_raw().await?;
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    let listened = client.batch_execute("LISTEN meshgate_events");
    tokio::pin!(listened);
    let mut listening = false;
    loop {
        tokio::select! {
            done = &mut listened, if !listening => {
                done.map_err(|e| pg_failed("cannot listen for new events", e))?;
                listening = true;
                // What was committed before the LISTEN took effect, the next poll reads.
            }
            message = messages.next() => match message {
                // This gateway's own commit: its writer hands it on.
                Some(Ok(AsyncMessage::Notification(n))) if n.process_id() == writer_pid.load(Ordering::Relaxed) => {}
                Some(Ok(AsyncMessage::Notification(n))) => {
                    // The payload is the head the commit reached.
                    let reached = n.payload().parse::<u64>().unwrap_or(u64::MAX);
                    hints.send_if_modified(|h| (reached > *h).then(|| *h = reached).is_some());
                    if hints.is_closed() {
                        return Ok(());
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(pg_failed("the connection listening for new events failed", e)),
                None => return Ok(()),
            },
        }
    }
}

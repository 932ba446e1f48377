//! Following the log for this gateway's followers: a subscription to the log stream says that
//! something was appended (by any gateway), a poll covers a subscription that is down, and either
//! way the follower reads the log from where it stands. Word from the subscription is a hint, never
//! the data: what followers get is always read in order, from the cursor on.

use std::sync::Arc;
use std::time::Duration;

use eventstore::{StreamPosition, SubscribeToStreamOptions};
use tokio::sync::{broadcast, mpsc};

use super::{Inner, PAGE};
use crate::store::Committed;

pub(crate) async fn run(inner: Arc<Inner>, feed: broadcast::Sender<Committed>, mut cursor: u64, poll: Duration) {
    let (hint, mut hints) = mpsc::channel(1);
    let _listener = Stop(tokio::spawn(listen(Arc::clone(&inner), hint)));
    let mut ticks = tokio::time::interval(poll);
    let mut head = inner.head.subscribe();
    loop {
        loop {
            match inner.read_log(cursor, PAGE).await {
                Ok(page) if page.is_empty() => break,
                Ok(page) => {
                    let last = page.last().map_or(cursor, |e| e.position);
                    let _ = feed.send(Committed { after: cursor, through: last, events: page.into() });
                    cursor = last;
                    inner.head.send_if_modified(|h| std::mem::replace(h, (*h).max(last)) < last);
                }
                Err(e) => {
                    tracing::warn!(error = %crate::report::chain(&e), "cannot follow the event log; trying again");
                    break;
                }
            }
        }
        tokio::select! {
            _ = ticks.tick() => {}
            Some(()) = hints.recv() => {}
            // This gateway's own appends.
            Ok(()) = head.changed() => {}
        }
    }
}

/// Ends the listener with the follower.
struct Stop(tokio::task::JoinHandle<()>);

impl Drop for Stop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Says when the log stream gets an event, resubscribing whenever the subscription drops.
async fn listen(inner: Arc<Inner>, hint: mpsc::Sender<()>) {
    loop {
        let options = SubscribeToStreamOptions::default().start_from(StreamPosition::End);
        let mut subscription = inner.client.subscribe_to_stream(inner.log.as_str(), &options).await;
        loop {
            match subscription.next().await {
                Ok(_) => {
                    let _ = hint.try_send(());
                }
                Err(e) => {
                    tracing::debug!(error = %e, "the subscription to the event log dropped; subscribing again");
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

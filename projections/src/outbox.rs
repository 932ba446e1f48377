//! `outbox`: per notification key (sink, build, milestone), the milestone and where its delivery
//! stands. The outbound dispatcher asks it what is due for a sink; every attempt it makes comes
//! back as an event.
//!
//! It is sized by the work in flight, not by history: a milestone is kept only for the configured
//! sinks that send it ([`OutboxConfig`]), and only while it is younger than the dedupe window
//! (measured on the log's own clock, the newest event's time), since an older one is never sent.
//! A sink added later does not send older milestones; a resend request makes a key due again
//! whatever its age.
//!
//! The read model saves it row by row ([`Outbox::changed`]): its entries and the messages it keeps
//! for editing each change by the row, so a save costs what changed since the last one, not the
//! window's worth of milestones. The triggers of builds in flight are not saved: they are the
//! triggers of the queued and running builds the read model restores.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Duration, Utc};
use meshgate_domain::notification::{evolve, NotificationState};
use meshgate_domain::notify::{notification_key, Milestone};
use meshgate_domain::{Event, Recorded};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::unsaved::Unsaved;
use crate::Projection;

/// A milestone worth telling a sink about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MilestoneRecord {
    pub build_id: Uuid,
    pub milestone: Milestone,
    #[serde(with = "meshgate_domain::rfc3339")]
    pub at: DateTime<Utc>,
}

/// A configured sink, as the outbox needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkSpec {
    pub name: String,
    /// The milestones it sends (one retry stands for every retry).
    pub wants: Vec<Milestone>,
}

impl SinkSpec {
    pub fn wants(&self, milestone: Milestone) -> bool {
        self.wants.iter().any(|w| w.same_kind(milestone))
    }
}

/// What the outbox keeps milestones for, and how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxConfig {
    pub sinks: Vec<SinkSpec>,
    /// Sinks that speak only of some triggers' builds: sink → trigger → the milestones it sends
    /// for that trigger's builds (YouTrack commands, configured per trigger).
    pub by_trigger: BTreeMap<String, BTreeMap<String, Vec<Milestone>>>,
    /// `[outbound] dedupe_window_seconds`.
    pub window: Duration,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig { sinks: Vec::new(), by_trigger: BTreeMap::new(), window: Duration::hours(1) }
    }
}

/// One notification key the outbox follows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub key: String,
    pub sink: String,
    pub record: MilestoneRecord,
    pub state: NotificationState,
}

/// Serialized, it is what the frozen logs' expectations hold (fixtures/logs); the read model saves
/// it by rows instead.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Outbox {
    #[serde(skip)]
    config: OutboxConfig,
    /// By the position of the milestone (or of the resend request) and the sink, so notifications
    /// go out in log order.
    #[serde(serialize_with = "pairs")]
    entries: BTreeMap<(u64, String), Entry>,
    /// Notification key → its entry.
    keys: HashMap<String, (u64, String)>,
    /// `sink/build` → the message later states of the build edit in place, and when it was last
    /// used.
    message_refs: HashMap<String, (String, DateTime<Utc>)>,
    /// The newest event time applied: the outbox's clock.
    latest: Option<DateTime<Utc>>,
    /// The trigger of each build in flight, for the sinks that speak only of some triggers.
    triggers: HashMap<Uuid, String>,
    #[serde(skip)]
    unsaved: Unsaved<OutboxKey>,
}

/// A row of the outbox as the read model saves it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum OutboxKey {
    Entry(u64, String),
    MessageRef(String),
}

/// A saved row of the outbox, changed since the last save: its value now, none if it is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboxRow {
    /// A followed notification, under the position of its milestone and its sink.
    Entry { position: u64, sink: String, entry: Option<Entry> },
    /// The message kept for editing, under `sink/build`, and when it was last used.
    MessageRef { key: String, message: Option<(String, DateTime<Utc>)> },
}

/// What a save writes of the outbox: the rows changed, its clock, and the mark for
/// [`Outbox::saved`].
#[derive(Debug, Clone, Default)]
pub struct OutboxChanges {
    pub rows: Vec<OutboxRow>,
    pub latest: Option<DateTime<Utc>>,
    pub mark: u64,
}

impl Outbox {
    pub fn new(config: OutboxConfig) -> Self {
        Outbox { config, ..Outbox::default() }
    }

    /// The same state under another configuration (loaded from the read model at start).
    pub fn with_config(mut self, config: OutboxConfig) -> Self {
        self.config = config;
        self
    }

    /// The outbox the read model saved, from its rows and the triggers of the builds in flight
    /// (nothing unsaved).
    pub fn restore(
        rows: impl IntoIterator<Item = OutboxRow>,
        latest: Option<DateTime<Utc>>,
        in_flight: impl IntoIterator<Item = (Uuid, String)>,
    ) -> Self {
        let mut outbox = Outbox { latest, triggers: in_flight.into_iter().collect(), ..Outbox::default() };
        for row in rows {
            match row {
                OutboxRow::Entry { position, sink, entry: Some(entry) } => {
                    outbox.keys.insert(entry.key.clone(), (position, sink.clone()));
                    outbox.entries.insert((position, sink), entry);
                }
                OutboxRow::MessageRef { key, message: Some(message) } => {
                    outbox.message_refs.insert(key, message);
                }
                _ => {}
            }
        }
        outbox
    }

    /// The rows changed since the last save.
    pub fn changed(&self) -> OutboxChanges {
        let row = |key: &OutboxKey| match key {
            OutboxKey::Entry(position, sink) => OutboxRow::Entry {
                position: *position,
                sink: sink.clone(),
                entry: self.entries.get(&(*position, sink.clone())).cloned(),
            },
            OutboxKey::MessageRef(key) => {
                OutboxRow::MessageRef { key: key.clone(), message: self.message_refs.get(key).cloned() }
            }
        };
        OutboxChanges { rows: self.unsaved.keys().map(row).collect(), latest: self.latest, mark: self.unsaved.mark() }
    }

    /// The rows [`Outbox::changed`] gave with `mark` are saved.
    pub fn saved(&mut self, mark: u64) {
        self.unsaved.saved(mark);
    }

    /// Milestones a sink still has to send at `now`, oldest first: recorded within the window (or
    /// asked again), not delivered or abandoned, and not waiting for a later retry.
    pub fn due(&self, sink: &str, now: DateTime<Utc>) -> Vec<MilestoneRecord> {
        let horizon = now - self.config.window;
        self.entries
            .values()
            .filter(|e| e.sink == sink && e.record.at >= horizon && e.state.is_due(now))
            .map(|e| e.record)
            .collect()
    }

    /// The earliest retry a sink is waiting for, if any.
    pub fn next_retry(&self, sink: &str) -> Option<DateTime<Utc>> {
        self.entries.values().filter(|e| e.sink == sink).filter_map(|e| e.state.next_attempt_at()).min()
    }

    /// The message a sink posted first for a build, if it keeps one.
    pub fn message_ref(&self, sink: &str, build_id: Uuid) -> Option<&str> {
        self.message_refs.get(&format!("{sink}/{build_id}")).map(|(r, _)| r.as_str())
    }

    /// The build whose message on `sink` is `message_ref`, while the outbox keeps it.
    pub fn build_of_message(&self, sink: &str, message_ref: &str) -> Option<Uuid> {
        self.message_refs.iter().find_map(|(key, (r, _))| {
            let (of_sink, build) = key.split_once('/')?;
            (of_sink == sink && r == message_ref).then(|| Uuid::parse_str(build).ok()).flatten()
        })
    }

    pub fn key(&self, key: &str) -> Option<&NotificationState> {
        self.keys.get(key).and_then(|at| self.entries.get(at)).map(|e| &e.state)
    }

    /// How many keys the outbox follows (its size is the work in flight).
    /// How many notifications of `sink` are neither delivered nor abandoned, and when the oldest
    /// of their milestones was recorded.
    pub fn pending(&self, sink: &str) -> (usize, Option<DateTime<Utc>>) {
        let open = self
            .entries
            .values()
            .filter(|e| e.sink == sink)
            .filter(|e| matches!(e.state, NotificationState::Pending | NotificationState::Attempting { .. }));
        open.fold((0, None), |(n, oldest): (usize, Option<DateTime<Utc>>), e| {
            (n + 1, Some(oldest.map_or(e.record.at, |o| o.min(e.record.at))))
        })
    }

    /// How many notifications of `sink` were given up on (within the window the outbox keeps).
    pub fn abandoned_count(&self, sink: &str) -> usize {
        self.entries
            .values()
            .filter(|e| e.sink == sink && matches!(e.state, NotificationState::Abandoned { .. }))
            .count()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn of_build<'a>(&'a self, sink: &'a str, build_id: Uuid) -> impl Iterator<Item = &'a NotificationState> + 'a {
        self.entries.values().filter(move |e| e.sink == sink && e.record.build_id == build_id).map(|e| &e.state)
    }

    fn abandoned(&self, sink: &str, build_id: Uuid) -> bool {
        self.of_build(sink, build_id).any(|s| matches!(s, NotificationState::Abandoned { .. }))
    }

    fn failing(&self, sink: &str, build_id: Uuid) -> bool {
        self.of_build(sink, build_id).any(|s| !s.is_delivered() && s.attempts() > 0)
    }

    /// Why on-call should be paged about a build, if they should: the tracker's comment (or
    /// command) was abandoned while chat also failed for the build, or every chat sink abandoned
    /// it.
    pub fn page_reason(&self, build_id: Uuid, chat_sinks: &[String], trackers: &[String]) -> Option<&'static str> {
        let tracker_abandoned = trackers.iter().any(|t| self.abandoned(t, build_id));
        let chat_failed = chat_sinks.is_empty() || chat_sinks.iter().any(|s| self.failing(s, build_id));
        if tracker_abandoned && chat_failed {
            return Some("tracker comment abandoned and chat failing");
        }
        if !chat_sinks.is_empty() && chat_sinks.iter().all(|s| self.abandoned(s, build_id)) {
            return Some("every chat sink abandoned");
        }
        None
    }

    /// Whether a page was abandoned within the window (the pager itself is failing).
    pub fn pager_failing(&self, pager: &str) -> bool {
        self.entries.values().any(|e| e.sink == pager && matches!(e.state, NotificationState::Abandoned { .. }))
    }

    fn follow(&mut self, position: u64, sink: &str, record: MilestoneRecord, state: NotificationState) {
        let key = notification_key(sink, record.build_id, record.milestone);
        let at = (position, sink.to_owned());
        if let Some(old) = self.keys.insert(key.clone(), at.clone()) {
            self.entries.remove(&old);
            self.unsaved.touch(OutboxKey::Entry(old.0, old.1));
        }
        self.unsaved.touch(OutboxKey::Entry(at.0, at.1.clone()));
        self.entries.insert(at, Entry { key, sink: sink.to_owned(), record, state });
    }

    /// Forgets what the window has passed by: milestones never sent any more, and message ids of
    /// builds quiet for that long.
    fn prune(&mut self, now: DateTime<Utc>) {
        let horizon = now - self.config.window;
        let old: Vec<(u64, String)> =
            self.entries.iter().filter(|(_, e)| e.record.at < horizon).map(|(at, _)| at.clone()).collect();
        for at in old {
            if let Some(entry) = self.entries.remove(&at) {
                self.keys.remove(&entry.key);
            }
            self.unsaved.touch(OutboxKey::Entry(at.0, at.1));
        }
        let unsaved = &mut self.unsaved;
        self.message_refs.retain(|key, (_, used)| {
            let keep = *used >= horizon;
            if !keep {
                unsaved.touch(OutboxKey::MessageRef(key.clone()));
            }
            keep
        });
    }
}

impl Projection for Outbox {
    const NAME: &'static str = "outbox";
    // 3: entries saved as pairs (a JSON object cannot have them as keys). 4: retries. 5: the
    // triggers of builds in flight, rebuilds. 6: pauses and resumes told to chat. 7: saved row by
    // row, not whole.
    const VERSION: u32 = 7;

    fn wants(event_type: &str) -> bool {
        matches!(
            event_type,
            "BuildRequested"
                | "BuildClaimed"
                | "BuildSucceeded"
                | "BuildFailed"
                | "BuildRequeued"
                | "BuildRetryScheduled"
                | "BuildCancelled"
                | "BuildRebuilt"
                | "LaneUnservable"
                | "LaneServable"
                | "QueuePaused"
                | "QueueResumed"
                | "NotificationAttempted"
                | "NotificationDelivered"
                | "NotificationAbandoned"
                | "NotificationResendRequested"
                | "PageRequested"
        )
    }

    fn apply(&mut self, recorded: &Recorded) {
        let at = recorded.recorded_at;
        if self.latest.is_none_or(|latest| at > latest) {
            self.latest = Some(at);
            // Pruning walks every entry: do it once a second of log time at most.
            if self.entries.first_key_value().is_some_and(|(_, e)| e.record.at < at - self.config.window) {
                self.prune(at);
            }
        }
        if let Event::BuildRequested(e) = &recorded.event {
            self.triggers.insert(e.build_id, e.trigger.clone());
        }
        if let Some((build_id, milestone)) = Milestone::of(&recorded.event) {
            let record = MilestoneRecord { build_id, milestone, at };
            let trigger = self.triggers.get(&build_id);
            let by_trigger = &self.config.by_trigger;
            let sinks: Vec<String> = self
                .config
                .sinks
                .iter()
                .filter(|s| s.wants(milestone))
                .filter(|s| match by_trigger.get(&s.name) {
                    None => true,
                    Some(only) => trigger
                        .and_then(|t| only.get(t))
                        .is_some_and(|wanted| wanted.iter().any(|w| w.same_kind(milestone))),
                })
                .map(|s| s.name.clone())
                .collect();
            // A build's trigger is needed until it has finished.
            if matches!(milestone, Milestone::Succeeded | Milestone::Failed | Milestone::Cancelled) {
                self.triggers.remove(&build_id);
            }
            for sink in sinks {
                // A milestone reached again (a second requeue) is the same key: it stays as it is.
                if !self.keys.contains_key(&notification_key(&sink, build_id, milestone)) {
                    self.follow(recorded.position, &sink, record, NotificationState::Pending);
                }
            }
            return;
        }
        let (key, position) = match &recorded.event {
            Event::NotificationAttempted(e) => (&e.key, self.keys.get(&e.key).cloned()),
            Event::NotificationDelivered(e) => {
                if let Some(message) = &e.message_ref {
                    let key = format!("{}/{}", e.sink, e.build_id);
                    self.message_refs.entry(key.clone()).or_insert_with(|| (message.clone(), at)).1 = at;
                    self.unsaved.touch(OutboxKey::MessageRef(key));
                }
                (&e.key, self.keys.get(&e.key).cloned())
            }
            Event::NotificationAbandoned(e) => (&e.key, self.keys.get(&e.key).cloned()),
            Event::NotificationResendRequested(e) => {
                // Due again for its sink, from now, whatever the milestone's age.
                let state = self.key(&e.key).cloned().unwrap_or_default();
                let record = MilestoneRecord { build_id: e.build_id, milestone: e.milestone, at };
                self.follow(recorded.position, &e.sink, record, evolve(state, &recorded.event));
                return;
            }
            _ => return,
        };
        // A key the outbox no longer follows (past the window, or of a sink since removed) stays so.
        let Some(at) = position else { return };
        if let Some(entry) = self.entries.get_mut(&at) {
            debug_assert_eq!(&entry.key, key);
            entry.state = evolve(std::mem::take(&mut entry.state), &recorded.event);
            self.unsaved.touch(OutboxKey::Entry(at.0, at.1));
        }
    }
}

/// A map whose keys are not strings, as a list of `[key, value]` pairs (JSON objects only take
/// string keys).
fn pairs<K: Serialize, V: Serialize, S: serde::Serializer>(
    map: &BTreeMap<K, V>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(map.iter())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_787_562_900 + s, 0).unwrap()
    }

    fn recorded(position: u64, at: i64, event: Event) -> Recorded {
        Recorded { position, stream: String::new(), version: 0, event, correlation_id: Uuid::nil(), recorded_at: t(at) }
    }

    fn cancelled(build: u128) -> Event {
        Event::BuildCancelled(meshgate_domain::event::BuildCancelled {
            build_id: Uuid::from_u128(build),
            reason: "x".into(),
            cancelled_at: t(0),
            report: None,
        })
    }

    /// Saves the rows changed into `table` as the read model does, and marks them saved.
    fn save(outbox: &mut Outbox, table: &mut BTreeMap<String, OutboxRow>) {
        let changes = outbox.changed();
        for row in changes.rows {
            let (key, present) = match &row {
                OutboxRow::Entry { position, sink, entry } => (format!("e/{position}/{sink}"), entry.is_some()),
                OutboxRow::MessageRef { key, message } => (format!("m/{key}"), message.is_some()),
            };
            if present {
                table.insert(key, row);
            } else {
                table.remove(&key);
            }
        }
        outbox.saved(changes.mark);
    }

    #[test]
    fn an_outbox_saved_row_by_row_is_read_back_as_it_was() {
        let mut outbox = Outbox::new(config());
        let mut table = BTreeMap::new();
        for (position, build) in [(1, 7), (2, 8)] {
            outbox.apply(&recorded(position, position as i64, cancelled(build)));
        }
        assert_eq!(outbox.len(), 2);
        save(&mut outbox, &mut table);
        assert_eq!(table.len(), 2);
        assert!(outbox.changed().rows.is_empty(), "nothing changed since the save");
        // A later milestone, then the window passes the first two: their rows go.
        outbox.apply(&recorded(3, 200, cancelled(9)));
        assert_eq!(outbox.len(), 1);
        save(&mut outbox, &mut table);
        assert_eq!(table.len(), 1);
        let in_flight = outbox.triggers.clone();
        let back = Outbox::restore(table.values().cloned(), outbox.changed().latest, in_flight).with_config(config());
        assert_eq!(back, outbox);
    }

    fn config() -> OutboxConfig {
        OutboxConfig {
            sinks: vec![
                SinkSpec { name: "team".into(), wants: vec![Milestone::Cancelled] },
                SinkSpec { name: "tracker".into(), wants: vec![Milestone::Failed] },
            ],
            by_trigger: BTreeMap::new(),
            window: Duration::seconds(60),
        }
    }

    #[test]
    fn milestones_are_kept_only_for_the_sinks_that_send_them_and_only_within_the_window() {
        let mut outbox = Outbox::new(config());
        outbox.apply(&recorded(1, 0, cancelled(1)));
        assert_eq!(outbox.len(), 1, "one sink wants cancellations");
        assert_eq!(outbox.due("team", t(10)).len(), 1);
        assert!(outbox.due("tracker", t(10)).is_empty());
        // Two sinks wanting one milestone each follow their own key.
        let mut both = Outbox::new(OutboxConfig {
            sinks: vec![
                SinkSpec { name: "a".into(), wants: vec![Milestone::Cancelled] },
                SinkSpec { name: "b".into(), wants: vec![Milestone::Cancelled] },
            ],
            by_trigger: BTreeMap::new(),
            window: Duration::seconds(60),
        });
        both.apply(&recorded(1, 0, cancelled(1)));
        assert_eq!((both.due("a", t(1)).len(), both.due("b", t(1)).len()), (1, 1));
        // A minute later (on the log's clock) it is no longer followed.
        outbox.apply(&recorded(2, 61, cancelled(2)));
        assert_eq!(outbox.len(), 1);
        assert_eq!(outbox.due("team", t(61))[0].build_id, Uuid::from_u128(2));
        // With no sinks, nothing is kept at all.
        let mut quiet = Outbox::new(OutboxConfig::default());
        (0..1000).for_each(|n| quiet.apply(&recorded(n + 1, 0, cancelled(n as u128))));
        assert!(quiet.is_empty());
    }
}

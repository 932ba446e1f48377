//! Prometheus metrics: their names, the process's recorder, and the counters and histograms
//! recorded where things happen (a handful of atomic operations each). The gauges read from the
//! projections and the listener Prometheus scrapes are the `scrape` module's.
//!
//! The recorder is the process's (one per process: several gateways in one test process share it).

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const DELIVERIES: &str = "meshgate_webhook_deliveries_total";
pub const WEBHOOK_SECONDS: &str = "meshgate_webhook_request_duration_seconds";
pub const COMMIT_SECONDS: &str = "meshgate_store_commit_duration_seconds";
pub const COMMIT_EVENTS: &str = "meshgate_store_commit_events";
pub const BUILDS: &str = "meshgate_builds";
pub const BUILD_SECONDS: &str = "meshgate_build_duration_seconds";
pub const QUEUE_WAIT_SECONDS: &str = "meshgate_queue_wait_seconds";
pub const ATTEMPTS: &str = "meshgate_notification_attempts_total";
pub const OUTBOX_PENDING: &str = "meshgate_outbox_pending";
pub const OUTBOX_OLDEST_SECONDS: &str = "meshgate_outbox_oldest_pending_seconds";
pub const PAGES: &str = "meshgate_pages_total";
pub const PROJECTION_LAG: &str = "meshgate_projection_lag_events";
pub const LOG_POSITION: &str = "meshgate_log_position";
pub const NODES: &str = "meshgate_nodes";
pub const LOG_CHUNKS: &str = "meshgate_log_chunks_total";
pub const LOG_CHUNK_BYTES: &str = "meshgate_log_chunk_bytes_total";
pub const ARTIFACTS: &str = "meshgate_artifacts_stored_total";
pub const ARTIFACT_BYTES: &str = "meshgate_artifact_bytes_total";
pub const RETRIES: &str = "meshgate_build_retries_total";
pub const CHAT_ACTIONS: &str = "meshgate_chat_actions_total";
pub const LANE_UNSERVABLE: &str = "meshgate_lane_unservable";
pub const QUEUE_OLDEST_SECONDS: &str = "meshgate_queue_oldest_seconds";

/// Request and commit times: 100 µs to 10 s.
const SECONDS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];
/// Builds and queue waits: a second to three hours.
const LONG_SECONDS: &[f64] = &[1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 10800.0];
/// Events per commit.
const EVENTS: &[f64] = &[1.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0];

/// The process's recorder, installed on first use (`None` if another one was installed first).
pub fn handle() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let built = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(BUILD_SECONDS.into()), LONG_SECONDS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(QUEUE_WAIT_SECONDS.into()), LONG_SECONDS))
                .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS))
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(COMMIT_EVENTS.into()), EVENTS));
            let handle = match built.map(|b| b.install_recorder()) {
                Ok(Ok(handle)) => handle,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot install the metrics recorder; /metrics is empty");
                    return None;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot set the metrics' buckets; /metrics is empty");
                    return None;
                }
            };
            describe();
            Some(handle)
        })
        .as_ref()
}

fn describe() {
    describe_counter!(DELIVERIES, "Webhook deliveries answered, by outcome (accepted ones by what they did).");
    describe_histogram!(WEBHOOK_SECONDS, Unit::Seconds, "Time from a webhook's arrival to its answer.");
    describe_histogram!(COMMIT_SECONDS, Unit::Seconds, "Time of one commit of the event log (group commit).");
    describe_histogram!(COMMIT_EVENTS, Unit::Count, "Events appended by one commit of the event log.");
    describe_gauge!(BUILDS, "Builds in flight, by lane and state (queued, running).");
    describe_histogram!(BUILD_SECONDS, Unit::Seconds, "Build durations as nodes report them, by lane and outcome.");
    describe_histogram!(QUEUE_WAIT_SECONDS, Unit::Seconds, "Time from a build's request to its claim, by lane.");
    describe_counter!(ATTEMPTS, "Notification tries, by sink and outcome (delivered, retry, abandoned).");
    describe_counter!(LOG_CHUNKS, "Live log chunks nodes sent while their builds ran.");
    describe_counter!(LOG_CHUNK_BYTES, Unit::Bytes, "Bytes of live log stored from chunks.");
    describe_counter!(ARTIFACTS, "Artifacts stored.");
    describe_counter!(ARTIFACT_BYTES, Unit::Bytes, "Bytes of artifacts stored.");
    describe_counter!(RETRIES, "Builds queued again because a failure matched a node's retry rule, by lane.");
    describe_gauge!(OUTBOX_PENDING, "Notifications neither delivered nor abandoned, by sink.");
    describe_gauge!(OUTBOX_OLDEST_SECONDS, Unit::Seconds, "Age of the oldest pending notification, by sink.");
    describe_counter!(PAGES, "Pages requested (chat and tracker both failed for a build).");
    describe_gauge!(PROJECTION_LAG, "Events committed that the projections have not applied yet.");
    describe_gauge!(NODES, "Build nodes the log knows, by state (idle, busy, draining, lost).");
    describe_counter!(
        CHAT_ACTIONS,
        "Actions from chat, by chat (slack, matrix) and outcome (what they did, or why they were refused or ignored)."
    );
    describe_gauge!(LANE_UNSERVABLE, "1 while a lane has queued builds and no live node could claim them, by lane.");
    describe_gauge!(
        QUEUE_OLDEST_SECONDS,
        Unit::Seconds,
        "How long the lane's oldest queued build has waited, by lane."
    );
    describe_gauge!(LOG_POSITION, "The event log's head: the position of the last committed event.");
}

/// Counts one webhook answer (nothing is kept while no metrics listener installed the recorder).
pub fn delivery(outcome: &'static str, elapsed: Duration) {
    counter!(DELIVERIES, "outcome" => outcome).increment(1);
    histogram!(WEBHOOK_SECONDS).record(elapsed.as_secs_f64());
}

/// Records one commit of the event log.
pub fn commit(elapsed: Duration, events: usize) {
    histogram!(COMMIT_SECONDS).record(elapsed.as_secs_f64());
    histogram!(COMMIT_EVENTS).record(events as f64);
}

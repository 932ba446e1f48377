//! What Prometheus scrapes: `GET /metrics` on a listener of its own (`[metrics] listen`, loopback
//! by default, no auth), with the gauges read from the projections and the log's head at that
//! moment, so nothing is computed between scrapes. Counters and histograms are [`crate::metrics`]'.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use metrics::gauge;
use tokio::sync::watch;

use crate::metrics::{
    BUILDS, LANE_UNSERVABLE, LOG_POSITION, NODES, OUTBOX_OLDEST_SECONDS, OUTBOX_PENDING, PROJECTION_LAG,
    QUEUE_OLDEST_SECONDS,
};
use crate::projector::Projections;
use crate::store::EventStore;

/// What the gauges are read from.
pub struct Gauges {
    pub store: Arc<dyn EventStore>,
    pub projections: Projections,
    /// The configured lanes.
    pub lanes: Vec<meshgate_projections::LaneRule>,
    /// The nodes heard asking for work.
    pub polls: Arc<crate::polls::Polls>,
    /// The outbound sinks, by name.
    pub sinks: Vec<String>,
}

/// Sets the gauges, then renders every metric of the process.
pub fn render(from: &Gauges) -> String {
    let Some(handle) = crate::metrics::handle() else { return String::new() };
    let head = *from.store.head().borrow();
    gauge!(LOG_POSITION).set(head as f64);
    gauge!(PROJECTION_LAG, "projection" => "all").set(head.saturating_sub(from.projections.position()) as f64);
    let now = chrono::Utc::now();
    from.projections.read(|p| {
        let live = |n: &meshgate_projections::NodeView| !n.running.is_empty() || from.polls.alive(&n.node_id);
        for rule in &from.lanes {
            let lane = &rule.name;
            let (queued, running) = p.queue.in_lane(lane);
            gauge!(BUILDS, "lane" => lane.clone(), "state" => "queued").set(queued as f64);
            gauge!(BUILDS, "lane" => lane.clone(), "state" => "running").set(running as f64);
            let unservable = meshgate_projections::unservable(rule, &p.queue, p.nodes.all(), live);
            gauge!(LANE_UNSERVABLE, "lane" => lane.clone()).set(if unservable { 1.0 } else { 0.0 });
            let oldest = p.queue.oldest_in(lane).and_then(|e| p.builds.get(e.build_id)).map(|b| b.requested_at);
            let age = oldest.map_or(0.0, |at| (now - at).num_milliseconds().max(0) as f64 / 1000.0);
            gauge!(QUEUE_OLDEST_SECONDS, "lane" => lane.clone()).set(age);
        }
        for state in ["idle", "busy", "draining", "lost"] {
            let n = p.nodes.all().filter(|node| node.state() == state).count();
            gauge!(NODES, "state" => state).set(n as f64);
        }
        for sink in &from.sinks {
            let (pending, oldest) = p.outbox.pending(sink);
            let age = oldest.map_or(0.0, |at| (now - at).num_milliseconds().max(0) as f64 / 1000.0);
            gauge!(OUTBOX_PENDING, "sink" => sink.clone()).set(pending as f64);
            gauge!(OUTBOX_OLDEST_SECONDS, "sink" => sink.clone()).set(age);
        }
    });
    handle.render()
}

/// The metrics listener; a port that cannot be bound is logged and leaves the gateway serving
/// without it (metrics are never a reason not to take webhooks).
pub async fn bind(listen: SocketAddr) -> Option<tokio::net::TcpListener> {
    match tokio::net::TcpListener::bind(listen).await {
        Ok(listener) => {
            // Installed only when it is served (and kept up by `serve`): nothing records before.
            crate::metrics::handle();
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "metrics at http://{addr}/metrics");
            }
            Some(listener)
        }
        Err(e) => {
            tracing::warn!(%listen, error = %e, "cannot listen for metrics; /metrics is off");
            None
        }
    }
}

/// `GET /metrics` until `stopping` turns true.
pub async fn serve(listener: tokio::net::TcpListener, gauges: Arc<Gauges>, mut stopping: watch::Receiver<bool>) {
    let router = axum::Router::new().route("/metrics", axum::routing::get(scrape)).with_state(gauges);
    let stopped = async move {
        let _ = stopping.wait_for(|s| *s).await;
    };
    let serving = axum::serve(listener, router).with_graceful_shutdown(stopped);
    tokio::select! {
        served = serving => if let Err(e) = served {
            tracing::warn!(error = %e, "the metrics listener stopped");
        },
        () = upkeep() => {}
    }
}

/// How often the recorder folds the samples histograms took since into their buckets.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Keeps the recorder up: a histogram holds every sample recorded until a scrape or an upkeep
/// folds them into its buckets, so a gateway nobody scraped held one per delivery and commit for
/// ever (docs/benchmarks.md, "Memory after a burst"). Never ends.
async fn upkeep() {
    let mut every = tokio::time::interval(UPKEEP_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if let Some(handle) = crate::metrics::handle() {
            handle.run_upkeep();
        }
    }
}

async fn scrape(State(gauges): State<Arc<Gauges>>) -> impl IntoResponse {
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4")], render(&gauges))
}

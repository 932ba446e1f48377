//! `POST /api/v1/nodes/claim`: a node's long poll for a build it may run. The node is recorded as
//! it presents itself (labels, slots, Xcodes); a pure scheduler over the `queue` projection picks
//! the build; the claim is an append at the build's exact version (with the lane's stream, in a
//! lane with a cap).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use meshgate_domain::event::{LaneClaimed, NodeSeen};
use meshgate_domain::node_api::{ClaimAnswer, ClaimRequest, ClaimedBuild, NodeLimits};
use meshgate_domain::stream::{lane_stream, node_stream};
use meshgate_domain::trigger::is_simple_name;
use meshgate_domain::xcode::{Version, Xcode};
use meshgate_domain::{BuildCommand, BuildState, Event, ExpectedVersion};
use meshgate_projections::NodeAsk;
use uuid::Uuid;

use super::{bad_request, command_failed, NodeApi};
use crate::builds::CommandError;
use crate::http::openapi::ErrorBody;
use crate::http::ApiError;
use crate::store::{NewEvent, StoreError, StreamAppend};

/// Longest wait a claim may ask for.
const MAX_CLAIM_WAIT: Duration = Duration::from_secs(300);
/// Most Xcodes a node may present.
const MAX_XCODES: usize = 32;

/// A node's Xcodes as it presents them: at most 32, versions that are numbers, paths of at most
/// 1024 bytes without control characters.
fn check_xcodes(xcodes: &[Xcode]) -> Result<(), ApiError> {
    if xcodes.len() > MAX_XCODES {
        return Err(bad_request("xcodes", format!("a node presents at most {MAX_XCODES} Xcodes")));
    }
    for xcode in xcodes {
        Version::parse(&xcode.version).map_err(|e| bad_request("xcodes", e.to_string()))?;
        if xcode.path.is_empty() || xcode.path.len() > 1024 || xcode.path.chars().any(char::is_control) {
            return Err(bad_request("xcodes", "an Xcode's path must be 1-1024 bytes without control characters"));
        }
    }
    Ok(())
}

/// `POST /api/v1/nodes/claim`: answers as soon as a build this node may run is claimed for it, or
/// 204 when the wait is over.
#[utoipa::path(post, path = "/api/v1/nodes/claim", tag = "nodes", security(("node" = [])), request_body = ClaimRequest,
    responses(
        (status = 200, description = "A build claimed for this node", body = ClaimAnswer),
        (status = 204, description = "Nothing to run within the wait"),
        (status = 400, description = "The request is wrong", body = ErrorBody),
        (status = 401, description = "Missing or invalid node token", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 503, description = "The log is unavailable", body = ErrorBody),
    ))]
pub async fn claim(State(app): State<Arc<NodeApi>>, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    let request = app.request(&headers, &body, |r: &ClaimRequest| &r.node_id)?;
    if let Some(label) = request.labels.iter().find(|l| !is_simple_name(l)) {
        return Err(bad_request("labels", format!("label `{label}` must be 1-64 of [A-Za-z0-9._-]")));
    }
    if !(1..=256).contains(&request.slots) {
        return Err(bad_request("slots", "slots must be between 1 and 256"));
    }
    check_xcodes(&request.xcodes)?;
    record_node(&app, &request).await?;
    app.polls.polled(&request.node_id);
    let wait = request.wait_seconds.map_or(app.settings.claim_wait, Duration::from_secs).min(MAX_CLAIM_WAIT);
    let deadline = tokio::time::Instant::now() + wait;
    let ask =
        NodeAsk { node_id: &request.node_id, labels: &request.labels, slots: request.slots, xcodes: &request.xcodes };
    let mut changes = app.projections.changes();
    let mut stopping = app.stopping.clone();
    loop {
        // Decide on projections that include everything committed so far (our own claims too).
        let head = *app.store.head().borrow();
        app.projections.caught_up_to(head, Duration::from_secs(2)).await;
        {
            // One claim at a time per gateway: lane caps and node slots are read, then written.
            let _turn = app.claim_lock.lock().await;
            // A draining node gets no new builds; its running ones finish.
            let candidate = app.projections.read(|p| {
                let draining = p.nodes.get(&request.node_id).is_some_and(|n| n.draining);
                let next =
                    p.queue.next_unpaused(&app.lanes, &ask, |lane| p.paused.of(lane).is_some()).filter(|_| !draining);
                next.map(|e| (e.build_id, e.lane.clone(), e.attempt))
            });
            if let Some((build_id, lane, attempt)) = candidate {
                let lease_expires_at = Utc::now() + app.settings.lease;
                let command = BuildCommand::Claim { node_id: request.node_id.clone(), lease_expires_at };
                let capped = app.lanes.iter().any(|l| l.name == lane && l.max_running.is_some());
                let claimed = if capped {
                    // With several gateways, the lane's cap holds through its stream (ADR 0004).
                    match lane_guard(&app, &lane, build_id, &request.node_id, attempt).await {
                        Ok(Some(guard)) => app.builds.claim_guarded(build_id, Uuid::now_v7(), &command, guard).await,
                        Ok(None) if tokio::time::Instant::now() < deadline => continue,
                        Ok(None) => break,
                        Err(e) => return Err(ApiError::unavailable(&e)),
                    }
                } else {
                    app.builds.execute(build_id, Uuid::now_v7(), &command).await
                };
                match claimed {
                    Ok(executed) => {
                        app.projections.caught_up_to(executed.last_position, Duration::from_secs(2)).await;
                        let attempt = match executed.state {
                            BuildState::Running { attempt, .. } => attempt,
                            _ => 0,
                        };
                        let build = app.projections.read(|p| p.builds.get(build_id).cloned());
                        let Some(build) = build else {
                            // Claimed, but not yet in the projections: the lease runs out and the
                            // reaper queues it again.
                            return Err(ApiError::unavailable(&"the claimed build is not in the projections yet"));
                        };
                        let waited = (Utc::now() - build.requested_at).num_milliseconds().max(0) as f64 / 1000.0;
                        metrics::histogram!(crate::metrics::QUEUE_WAIT_SECONDS, "lane" => build.lane.clone())
                            .record(waited);
                        tracing::info!(%build_id, node_id = %request.node_id, attempt, "build claimed");
                        let xcode = build
                            .xcode
                            .clone()
                            .or_else(|| app.lanes.iter().find(|l| l.name == build.lane).and_then(|l| l.xcode.clone()));
                        let body = ClaimAnswer {
                            build: ClaimedBuild {
                                build_id,
                                issue_id: build.issue_id,
                                summary: build.summary,
                                project: build.project,
                                trigger: build.trigger,
                                script: build.script,
                                lane: build.lane,
                                git_ref: build.git_ref,
                                xcode,
                            },
                            attempt,
                            lease_expires_at,
                            lease_seconds: app.settings.lease.num_seconds(),
                            limits: NodeLimits {
                                max_log_bytes: app.logs.max_bytes(),
                                max_artifact_bytes: app.artifacts.max_bytes(),
                            },
                        };
                        return Ok((StatusCode::OK, Json(body)).into_response());
                    }
                    // Another gateway (or a lagging view) got there first: look again.
                    Err(CommandError::Refused { .. } | CommandError::Store(StoreError::Contention { .. })) => {
                        if tokio::time::Instant::now() >= deadline {
                            break;
                        }
                        continue;
                    }
                    Err(e) => return Err(command_failed(e)),
                }
            }
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { break },
            _ = tokio::time::sleep_until(deadline) => break,
            _ = stopping.wait_for(|s| *s) => break,
        }
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Records how a node presents itself (`NodeSeen`) when it is new to the log or its labels,
/// slots or Xcodes changed.
async fn record_node(app: &NodeApi, request: &ClaimRequest) -> Result<(), ApiError> {
    let mut labels = request.labels.clone();
    labels.sort();
    labels.dedup();
    let slots = request.slots as u32;
    let xcodes = request.xcodes.clone();
    let known =
        app.projections.read(|p| p.nodes.get(&request.node_id).map(|n| (n.labels.clone(), n.slots, n.xcodes.clone())));
    if known.as_ref() == Some(&(labels.clone(), slots, xcodes.clone())) {
        return Ok(());
    }
    let event = Event::NodeSeen(NodeSeen { node_id: request.node_id.clone(), labels, slots, xcodes });
    let append = StreamAppend {
        stream: node_stream(&request.node_id),
        expected: ExpectedVersion::Any,
        events: vec![NewEvent::from_domain(&event, Uuid::now_v7(), None, Utc::now())],
    };
    let appended = app.store.append(vec![append]).await.map_err(|e| ApiError::unavailable(&e))?;
    app.projections.caught_up_to(appended.last_position, Duration::from_secs(2)).await;
    Ok(())
}

/// The append that records a claim in a capped lane on the lane's stream, at the version the
/// projections have seen; `None` if they have not yet seen the lane's last claim (decide again).
async fn lane_guard(
    app: &NodeApi,
    lane: &str,
    build_id: Uuid,
    node_id: &str,
    attempt: u32,
) -> Result<Option<StreamAppend>, StoreError> {
    let stream = lane_stream(lane);
    let last = app.store.read_last(&stream).await?;
    if let Some(last) = &last {
        if app.projections.position() < last.position {
            app.projections.caught_up_to(last.position, Duration::from_secs(2)).await;
            return Ok(None);
        }
    }
    let event =
        Event::LaneClaimed(LaneClaimed { lane: lane.to_owned(), build_id, node_id: node_id.to_owned(), attempt });
    Ok(Some(StreamAppend {
        stream,
        expected: ExpectedVersion::from_current(last.map(|e| e.version)),
        events: vec![NewEvent::from_domain(&event, Uuid::now_v7(), None, Utc::now())],
    }))
}

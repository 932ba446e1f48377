//! The latest deliveries and what became of each, folded from a window of the log's tail (the
//! dashboard's "Recent deliveries"): a delivery is its `WebhookReceived`, and its outcome the
//! `WebhookIgnored`, `WebhookRouted` or `BuildRequestFolded` of the same correlation id that follows
//! it, or the `BuildCancelled` of a build it routed to when it left a trigger's state. Not kept:
//! computed when asked from the events given, so it costs the window, not the log.

use chrono::{DateTime, Utc};
use meshgate_domain::event::LEFT_TRIGGER_STATE;
use meshgate_domain::{Event, Recorded};
use serde::Serialize;
use uuid::Uuid;

/// One delivery as the window shows it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Delivery {
    pub correlation_id: Uuid,
    /// When the gateway recorded it.
    pub received_at: DateTime<Utc>,
    pub issue_id: String,
    /// The sender's `event` (`issueUpdated`).
    pub event_type: String,
    /// `received` (no decision in the window), `ignored`, `enqueued`, `folded` or `cancelled`.
    pub outcome: &'static str,
    /// Why it was ignored, folded or cancelled (`no_trigger_matched`, `duplicate_delivery`,
    /// `left_trigger_state`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// The builds it started (enqueued), folded into or cancelled.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub build_ids: Vec<Uuid>,
}

/// The last `limit` deliveries received among `window` (events in log order), newest first.
pub fn recent_deliveries<'a>(window: impl IntoIterator<Item = &'a Recorded>, limit: usize) -> Vec<Delivery> {
    let mut found: Vec<Delivery> = Vec::new();
    for recorded in window {
        let (correlation_id, outcome, reason, builds) = match &recorded.event {
            Event::WebhookReceived(e) => {
                found.push(Delivery {
                    correlation_id: e.correlation_id,
                    received_at: recorded.recorded_at,
                    issue_id: e.issue_id.clone(),
                    event_type: e.event_type.clone(),
                    outcome: "received",
                    reason: None,
                    build_ids: Vec::new(),
                });
                continue;
            }
            Event::WebhookIgnored(e) => (e.correlation_id, "ignored", Some(e.reason.as_str()), Vec::new()),
            Event::WebhookRouted(e) => (e.correlation_id, "enqueued", None, e.build_ids.clone()),
            Event::BuildRequestFolded(e) => (e.correlation_id, "folded", Some(e.reason.as_str()), vec![e.build_id]),
            // A delivery that only left a trigger's state routes to the builds it cancels; one that
            // also started builds routes to those, and stays enqueued.
            Event::BuildCancelled(e) => {
                let routed_here = |d: &&mut Delivery| {
                    d.correlation_id == recorded.correlation_id && d.build_ids.contains(&e.build_id)
                };
                if let Some(delivery) = found.iter_mut().rev().find(routed_here) {
                    delivery.outcome = "cancelled";
                    delivery.reason = (e.reason == LEFT_TRIGGER_STATE).then_some(LEFT_TRIGGER_STATE);
                }
                continue;
            }
            _ => continue,
        };
        // Its delivery is among the latest received (a decision follows its delivery closely).
        if let Some(delivery) = found.iter_mut().rev().find(|d| d.correlation_id == correlation_id) {
            delivery.outcome = outcome;
            delivery.reason = reason;
            delivery.build_ids = builds;
        }
    }
    found.into_iter().rev().take(limit).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshgate_domain::event::{
        Body, BuildCancelled, BuildRequestFolded, FoldReason, IgnoreReason, WebhookIgnored, WebhookReceived,
        WebhookRouted,
    };

    fn at(position: u64, event: Event) -> Recorded {
        Recorded {
            position,
            stream: String::new(),
            version: 0,
            event,
            correlation_id: Uuid::from_u128(u128::from(position)),
            recorded_at: DateTime::from_timestamp(1_787_562_900 + position as i64, 0).unwrap(),
        }
    }

    fn received(position: u64, delivery: u128, issue: &str) -> Recorded {
        at(
            position,
            Event::WebhookReceived(WebhookReceived {
                correlation_id: Uuid::from_u128(delivery),
                event_type: "issueUpdated".into(),
                issue_id: issue.into(),
                project: "MOB".into(),
                fingerprint: String::new(),
                body: Body::new("{}"),
                received_at: DateTime::from_timestamp(1_787_562_900, 0).unwrap(),
            }),
        )
    }

    #[test]
    fn each_delivery_has_the_outcome_of_its_correlation_newest_first() {
        let (one, two, three, four) = (1u128, 2u128, 3u128, 4u128);
        let build = Uuid::from_u128(99);
        let window = vec![
            // A decision whose delivery is before the window: nothing to attach it to.
            at(
                1,
                Event::WebhookIgnored(WebhookIgnored {
                    correlation_id: Uuid::from_u128(0),
                    issue_id: "MOB-0".into(),
                    reason: IgnoreReason::BotAuthored,
                }),
            ),
            received(2, one, "MOB-1"),
            received(3, two, "MOB-2"),
            at(
                4,
                Event::WebhookRouted(WebhookRouted {
                    correlation_id: Uuid::from_u128(one),
                    issue_id: "MOB-1".into(),
                    build_ids: vec![build],
                }),
            ),
            at(
                5,
                Event::WebhookIgnored(WebhookIgnored {
                    correlation_id: Uuid::from_u128(two),
                    issue_id: "MOB-2".into(),
                    reason: IgnoreReason::NoTriggerMatched,
                }),
            ),
            received(6, three, "MOB-1"),
            at(
                7,
                Event::BuildRequestFolded(BuildRequestFolded {
                    build_id: build,
                    correlation_id: Uuid::from_u128(three),
                    reason: FoldReason::DuplicateDelivery,
                    folded_at: DateTime::from_timestamp(1_787_562_907, 0).unwrap(),
                    transition_at: None,
                }),
            ),
            received(8, four, "MOB-4"),
        ];
        let all = recent_deliveries(&window, 10);
        let seen: Vec<(&str, &str, Option<&str>, &[Uuid])> =
            all.iter().map(|d| (d.issue_id.as_str(), d.outcome, d.reason, d.build_ids.as_slice())).collect();
        assert_eq!(
            seen,
            [
                ("MOB-4", "received", None, &[][..]),
                ("MOB-1", "folded", Some("duplicate_delivery"), &[build][..]),
                ("MOB-2", "ignored", Some("no_trigger_matched"), &[][..]),
                ("MOB-1", "enqueued", None, &[build][..]),
            ]
        );
        assert_eq!(all[0].received_at, window[7].recorded_at);
        assert_eq!(recent_deliveries(&window, 2).len(), 2);
        assert_eq!(recent_deliveries(&window, 2)[1].issue_id, "MOB-1");
    }

    #[test]
    fn a_delivery_that_left_a_trigger_state_cancelled_its_build_unless_it_started_others() {
        let (left, moved) = (1u128, 2u128);
        let (old, other, new) = (Uuid::from_u128(97), Uuid::from_u128(98), Uuid::from_u128(99));
        let routed = |position, delivery, builds: Vec<Uuid>| {
            at(
                position,
                Event::WebhookRouted(WebhookRouted {
                    correlation_id: Uuid::from_u128(delivery),
                    issue_id: "MOB-1".into(),
                    build_ids: builds,
                }),
            )
        };
        // Its envelope carries the delivery's correlation id, as every event a delivery causes.
        let cancelled = |position, delivery, build_id| Recorded {
            correlation_id: Uuid::from_u128(delivery),
            ..at(
                position,
                Event::BuildCancelled(BuildCancelled {
                    build_id,
                    reason: LEFT_TRIGGER_STATE.into(),
                    cancelled_at: DateTime::from_timestamp(1_787_562_907, 0).unwrap(),
                    report: None,
                }),
            )
        };
        let window = vec![
            received(1, left, "MOB-1"),
            routed(2, left, vec![old]),
            cancelled(3, left, old),
            // Out of one trigger's state into another's: the new build is what it routed to.
            received(4, moved, "MOB-1"),
            routed(5, moved, vec![new]),
            cancelled(6, moved, other),
            // Someone else's cancel of a build a delivery routed to is not that delivery's.
            cancelled(7, 3, new),
        ];
        let all = recent_deliveries(&window, 10);
        let seen: Vec<(&str, Option<&str>, &[Uuid])> =
            all.iter().map(|d| (d.outcome, d.reason, d.build_ids.as_slice())).collect();
        assert_eq!(seen, [("enqueued", None, &[new][..]), ("cancelled", Some(LEFT_TRIGGER_STATE), &[old][..])]);
    }
}

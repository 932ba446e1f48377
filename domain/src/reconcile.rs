//! Reconciliation with YouTrack: which transitions in its activity stream a trigger watches, so
//! that a sweep can build those the webhook never brought (the sender does not retry). Pure: the
//! shell reads the pages and issues; this says what they mean. docs/youtrack-rest.md records the
//! requests and fields relied on; ADR 0008 how a sweep and a webhook recognise one transition.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde_json::Value;

use crate::trigger::{IntentKey, Trigger};

/// One change of a custom field, as `GET /api/activitiesPage?categories=CustomFieldCategory` gives
/// it (a `CustomFieldActivityItem`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activity {
    pub id: String,
    /// When the change happened, on YouTrack's clock.
    pub at: DateTime<Utc>,
    pub author: Option<String>,
    /// The issue's readable id (`target.idReadable`).
    pub issue_id: String,
    /// The issue's project key (`target.project.shortName`).
    pub project: String,
    /// The field's name (`field.name`).
    pub field: String,
    /// Names of the values the change set and cleared.
    pub added: Vec<String>,
    pub removed: Vec<String>,
}

/// One page of activities and where the next one starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivityPage {
    pub activities: Vec<Activity>,
    pub after_cursor: Option<String>,
    pub has_after: bool,
}

/// An issue as YouTrack shows it now (`GET /api/issues/{id}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssueNow {
    pub id: String,
    pub summary: Option<String>,
    /// Each custom field's name and the names of its values.
    pub fields: Vec<(String, Vec<String>)>,
}

impl IssueNow {
    /// The names of a field's current values (empty if the issue has no such field or it is empty).
    pub fn values(&self, field: &str) -> Vec<&str> {
        self.fields.iter().filter(|(name, _)| name == field).flat_map(|(_, v)| v.iter().map(String::as_str)).collect()
    }
}

/// An answer that is not what the REST API documents. Messages name the part that is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestError {
    #[error("youtrack's answer is not json: {0}")]
    NotJson(String),
    #[error("youtrack's answer has no `{0}`, or not of the documented type")]
    Missing(&'static str),
}

/// Reads an `ActivityCursorPage`. Activities without an issue, a field or a time are not changes a
/// trigger can watch and are left out; a page without `activities` is refused.
pub fn parse_page(text: &str) -> Result<ActivityPage, RestError> {
    let value: Value = serde_json::from_str(text).map_err(|e| RestError::NotJson(e.to_string()))?;
    let items = value["activities"].as_array().ok_or(RestError::Missing("activities"))?;
    let activities = items.iter().filter_map(parse_activity).collect();
    Ok(ActivityPage {
        activities,
        after_cursor: value["afterCursor"].as_str().map(str::to_owned),
        has_after: value["hasAfter"].as_bool().unwrap_or(false),
    })
}

fn parse_activity(item: &Value) -> Option<Activity> {
    let issue_id = item["target"]["idReadable"].as_str()?.to_owned();
    let project = item["target"]["project"]["shortName"]
        .as_str()
        .map(str::to_owned)
        .or_else(|| issue_id.rsplit_once('-').map(|(p, _)| p.to_owned()))?;
    Some(Activity {
        id: item["id"].as_str().unwrap_or_default().to_owned(),
        at: DateTime::from_timestamp_millis(item["timestamp"].as_i64()?)?,
        author: item["author"]["login"].as_str().map(str::to_owned),
        issue_id,
        project,
        field: item["field"]["name"].as_str()?.to_owned(),
        added: names(&item["added"]),
        removed: names(&item["removed"]),
    })
}

/// Value names of `added`, `removed` or a custom field's `value`: one value, a list, or null.
fn names(value: &Value) -> Vec<String> {
    match value {
        Value::Array(items) => items.iter().flat_map(names).collect(),
        Value::Object(map) => map.get("name").and_then(Value::as_str).map(str::to_owned).into_iter().collect(),
        Value::String(text) => vec![text.clone()],
        _ => Vec::new(),
    }
}

/// Reads an issue with `fields=idReadable,summary,customFields(name,value(name))`.
pub fn parse_issue(text: &str) -> Result<IssueNow, RestError> {
    let value: Value = serde_json::from_str(text).map_err(|e| RestError::NotJson(e.to_string()))?;
    let id = value["idReadable"].as_str().ok_or(RestError::Missing("idReadable"))?.to_owned();
    let fields = value["customFields"]
        .as_array()
        .ok_or(RestError::Missing("customFields"))?
        .iter()
        .filter_map(|f| Some((f["name"].as_str()?.to_owned(), names(&f["value"]))))
        .collect();
    Ok(IssueNow { id, summary: value["summary"].as_str().map(str::to_owned), fields })
}

/// A transition a sweep should make sure was built: the latest activity a trigger watches, for one
/// intent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate<'a> {
    pub trigger: &'a Trigger,
    pub intent: IntentKey,
    pub activity: &'a Activity,
}

/// The activities a trigger watches, by the author not being the bot, keeping per intent only the
/// latest (a build for it serves the earlier ones too, as coalescing would have), in time order.
pub fn candidates<'a>(
    activities: &'a [Activity],
    triggers: &'a [Trigger],
    bot_login: Option<&str>,
) -> Vec<Candidate<'a>> {
    let mut latest: BTreeMap<IntentKey, Candidate<'a>> = BTreeMap::new();
    for activity in activities {
        if let (Some(bot), Some(author)) = (bot_login, activity.author.as_deref()) {
            if author.eq_ignore_ascii_case(bot) {
                continue;
            }
        }
        let removed: Vec<&str> = activity.removed.iter().map(String::as_str).collect();
        let added: Vec<&str> = activity.added.iter().map(String::as_str).collect();
        for trigger in triggers {
            if trigger.matches_change(&activity.project, &activity.field, &removed, &added) {
                let intent = trigger.intent_for(&activity.issue_id);
                let later = latest.get(&intent).is_none_or(|c| c.activity.at <= activity.at);
                if later {
                    latest.insert(intent.clone(), Candidate { trigger, intent, activity });
                }
            }
        }
    }
    let mut found: Vec<Candidate<'a>> = latest.into_values().collect();
    found.sort_by(|a, b| (a.activity.at, &a.intent).cmp(&(b.activity.at, &b.intent)));
    found
}

/// The YouTrack query naming the triggers' projects (`project: MOB, APP`), or none when a trigger
/// watches every project.
pub fn issue_query(triggers: &[Trigger]) -> Option<String> {
    if triggers.iter().any(|t| t.projects.is_empty()) {
        return None;
    }
    let mut projects: Vec<&str> = triggers.iter().flat_map(|t| t.projects.iter().map(String::as_str)).collect();
    projects.sort_unstable();
    projects.dedup();
    Some(format!("project: {}", projects.join(", ")))
}

/// How the last sweep ended, for where the next one starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LastSweep {
    pub window_end: DateTime<Utc>,
    /// It stopped at its cap of activities.
    pub cut_short: bool,
}

/// Where a sweep starts when not told: where the last sweep ended (less `overlap`, for changes
/// YouTrack recorded late; exactly there if it stopped at its cap, or dense activity would be read
/// again and again), else the last event the log holds less `overlap` (the gateway was up then),
/// else `lookback` ago; never before `lookback` ago.
pub fn window_start(
    last_sweep: Option<LastSweep>,
    last_recorded: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    lookback: Duration,
    overlap: Duration,
) -> DateTime<Utc> {
    let earliest = now - lookback;
    let from = match (last_sweep, last_recorded) {
        (Some(LastSweep { window_end, cut_short: true }), _) => Some(window_end),
        (Some(LastSweep { window_end, cut_short: false }), _) => Some(window_end - overlap),
        (None, Some(recorded)) => Some(recorded - overlap),
        (None, None) => None,
    };
    from.map_or(earliest, |from| from.max(earliest).min(now))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trigger::tests::trigger;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_787_562_900 + s, 0).unwrap()
    }

    fn activity(issue: &str, at: i64, author: &str, from: &str, to: &str) -> Activity {
        Activity {
            id: format!("{issue}.{at}"),
            at: t(at),
            author: Some(author.into()),
            issue_id: issue.into(),
            project: issue.split('-').next().unwrap().into(),
            field: "State".into(),
            added: vec![to.into()],
            removed: vec![from.into()],
        }
    }

    #[test]
    fn a_page_reads_as_youtrack_documents_it() {
        let page = parse_page(include_str!("../../fixtures/youtrack/rest/activitiesPage-state-changes.json")).unwrap();
        assert!(page.has_after);
        assert_eq!(page.after_cursor.as_deref(), Some("0000000000000002"));
        let first = &page.activities[0];
        assert_eq!((first.issue_id.as_str(), first.project.as_str(), first.field.as_str()), ("MOB-7", "MOB", "State"));
        assert_eq!((first.removed.clone(), first.added.clone()), (vec!["Open".into()], vec!["Building".into()]));
        assert_eq!(first.author.as_deref(), Some("omar.haddad"));
        assert_eq!(first.at, DateTime::from_timestamp_millis(1_787_562_927_412).unwrap());
        // A change of a multi-value field and a first value (nothing removed) read too.
        assert!(page.activities.iter().any(|a| a.removed.is_empty()));
        assert!(matches!(parse_page("{\"$type\": \"CursorPage\"}"), Err(RestError::Missing("activities"))));
        assert!(matches!(parse_page("<html>"), Err(RestError::NotJson(_))));
    }

    #[test]
    fn an_issue_reads_with_its_current_values() {
        let issue = parse_issue(include_str!("../../fixtures/youtrack/rest/issue-MOB-7.json")).unwrap();
        assert_eq!(issue.id, "MOB-7");
        assert_eq!(issue.values("State"), ["Building"]);
        assert_eq!(issue.values("Assignee"), ["Omar Haddad"]);
        assert!(issue.values("Fix versions").is_empty(), "an empty multi-value field");
        assert!(issue.values("Nope").is_empty());
    }

    #[test]
    fn only_the_latest_watched_transition_per_intent_is_a_candidate_and_the_bots_are_not() {
        let triggers = vec![trigger()];
        let activities = vec![
            activity("MOB-1", 10, "jane", "Open", "Building"),
            activity("MOB-1", 30, "jane", "Building", "Open"),
            activity("MOB-1", 40, "jane", "Open", "Building"),
            activity("MOB-2", 20, "meshgate-bot", "Open", "Building"),
            activity("WEB-1", 20, "jane", "Open", "Building"),
            activity("MOB-3", 5, "jane", "Open", "Building"),
        ];
        let found = candidates(&activities, &triggers, Some("MESHGATE-BOT"));
        let seen: Vec<(&str, DateTime<Utc>)> =
            found.iter().map(|c| (c.activity.issue_id.as_str(), c.activity.at)).collect();
        assert_eq!(seen, [("MOB-3", t(5)), ("MOB-1", t(40))]);
        assert_eq!(found[1].intent, IntentKey::new("MOB-1", "ios-build"));
    }

    #[test]
    fn the_query_names_the_triggers_projects_unless_one_watches_all() {
        let mut app = trigger();
        app.projects = vec!["APP".into(), "MOB".into()];
        assert_eq!(issue_query(&[trigger(), app.clone()]).as_deref(), Some("project: APP, MOB"));
        app.projects.clear();
        assert_eq!(issue_query(&[trigger(), app]), None);
    }

    #[test]
    fn a_sweep_continues_from_the_last_one_with_an_overlap_but_never_past_the_lookback() {
        let (lookback, overlap) = (Duration::hours(24), Duration::minutes(2));
        let now = t(100_000);
        let ended = |s, cut_short| Some(LastSweep { window_end: t(s), cut_short });
        assert_eq!(window_start(ended(99_000, false), Some(t(99_500)), now, lookback, overlap), t(99_000 - 120));
        assert_eq!(window_start(ended(99_000, true), Some(t(99_500)), now, lookback, overlap), t(99_000));
        assert_eq!(window_start(None, Some(t(99_500)), now, lookback, overlap), t(99_500 - 120));
        assert_eq!(window_start(None, None, now, lookback, overlap), now - lookback);
        assert_eq!(window_start(ended(0, false), None, now, lookback, overlap), now - lookback);
    }
}

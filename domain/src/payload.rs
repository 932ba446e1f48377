//! Parsing the bodies YouTrack's Webhook Triggers app sends.
//!
//! Both payload shapes are accepted: the current one (`project.key`) and the legacy one of app
//! versions 1.0.0–1.0.3 (`numberInProject`, `project.id`, `project.shortName`). Unknown event types
//! parse to [`EventKind::Unknown`] so that new sender versions are recorded and ignored, never
//! refused. Required fields with the wrong type are errors that name the field.

use serde::{Deserialize, Serialize};
use serde_json::{Number, Value};

use crate::event::Body;
use crate::json::{Json, Object};
use crate::Fingerprint;

/// The `event` field of a delivery.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventKind {
    IssueCreated,
    IssueUpdated,
    IssueDeleted,
    CommentAdded,
    CommentUpdated,
    CommentDeleted,
    WorkItemAdded,
    WorkItemUpdated,
    WorkItemDeleted,
    IssueAttachmentAdded,
    IssueAttachmentDeleted,
    /// An event type this version does not know; accepted and recorded as ignored.
    Unknown(String),
}

impl EventKind {
    const KNOWN: [(&'static str, EventKind); 11] = [
        ("issueCreated", EventKind::IssueCreated),
        ("issueUpdated", EventKind::IssueUpdated),
        ("issueDeleted", EventKind::IssueDeleted),
        ("commentAdded", EventKind::CommentAdded),
        ("commentUpdated", EventKind::CommentUpdated),
        ("commentDeleted", EventKind::CommentDeleted),
        ("workItemAdded", EventKind::WorkItemAdded),
        ("workItemUpdated", EventKind::WorkItemUpdated),
        ("workItemDeleted", EventKind::WorkItemDeleted),
        ("issueAttachmentAdded", EventKind::IssueAttachmentAdded),
        ("issueAttachmentDeleted", EventKind::IssueAttachmentDeleted),
    ];

    pub fn parse(name: &str) -> Self {
        Self::KNOWN
            .iter()
            .find(|(known, _)| *known == name)
            .map(|(_, kind)| kind.clone())
            .unwrap_or_else(|| EventKind::Unknown(name.to_owned()))
    }

    /// The sender's name for this event type.
    pub fn as_str(&self) -> &str {
        match self {
            EventKind::Unknown(name) => name,
            known => Self::KNOWN.iter().find(|(_, kind)| kind == known).map(|(name, _)| *name).unwrap_or("unknown"),
        }
    }
}

/// A YouTrack user as the sender renders it; any part may be null or missing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub login: Option<String>,
    pub full_name: Option<String>,
    pub email: Option<String>,
}

/// One `oldValue` / `value` of a `changedFields` entry, in any of the shapes the sender produces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FieldValue {
    /// A previously empty value.
    Null,
    /// Built-in fields (`summary`, `description`) and string custom fields.
    Text {
        text: String,
    },
    /// Dates (ms epoch) and number fields.
    Number {
        number: Number,
    },
    Bool {
        value: bool,
    },
    /// State, enum, priority and version values.
    Named {
        name: String,
        presentation: Option<String>,
    },
    User {
        user: User,
    },
    Period {
        minutes: Option<i64>,
        presentation: Option<String>,
    },
    /// Multi-value fields.
    List {
        items: Vec<FieldValue>,
    },
    /// A shape this version does not know, kept as sent.
    Other {
        value: Value,
    },
}

impl FieldValue {
    fn parse(value: &Json<'_>) -> Self {
        match value {
            Json::Null => FieldValue::Null,
            Json::Bool(value) => FieldValue::Bool { value: *value },
            Json::Number(number) => FieldValue::Number { number: number.clone() },
            Json::String(text) => FieldValue::Text { text: text.as_ref().to_owned() },
            Json::Array(items) => FieldValue::List { items: items.iter().map(FieldValue::parse).collect() },
            Json::Object(map) => {
                if map.contains_key("minutes") {
                    FieldValue::Period {
                        minutes: map.get("minutes").and_then(Json::as_i64),
                        presentation: opt_string(map, "presentation"),
                    }
                } else if map.contains_key("login") {
                    FieldValue::User { user: parse_user(value).unwrap_or_default() }
                } else if let Some(name) = map.get("name").and_then(Json::as_str) {
                    FieldValue::Named { name: name.to_owned(), presentation: opt_string(map, "presentation") }
                } else {
                    FieldValue::Other { value: value.to_value() }
                }
            }
        }
    }

    /// The names a trigger's `from` / `to` lists are compared with: a named value's `name`, a text
    /// value, a user's login, and the names of every item of a multi-value field.
    pub fn names(&self) -> Vec<&str> {
        match self {
            FieldValue::Named { name, .. } => vec![name.as_str()],
            FieldValue::Text { text } => vec![text.as_str()],
            FieldValue::User { user } => user.login.as_deref().into_iter().collect(),
            FieldValue::List { items } => items.iter().flat_map(FieldValue::names).collect(),
            _ => Vec::new(),
        }
    }
}

/// One entry of `changedFields`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangedField {
    pub name: String,
    pub old_value: FieldValue,
    pub value: FieldValue,
}

/// A parsed delivery: what the gateway needs from a body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub event: EventKind,
    /// The readable issue id, such as `GW-42`.
    pub issue_id: String,
    /// The project key (legacy shape: `project.shortName`).
    pub project: String,
    pub summary: Option<String>,
    pub timestamp: Option<String>,
    /// `updated` of `issueUpdated`: when the change happened on YouTrack's clock (ms since the
    /// epoch). The same instant as the change's activity in YouTrack's REST API, so a transition
    /// found by reconciliation and its webhook are recognised as one (ADR 0008).
    pub updated: Option<i64>,
    /// `updatedBy` of `issueUpdated`.
    pub updated_by: Option<User>,
    pub changed_fields: Vec<ChangedField>,
    /// Authors of the comments, work items and attachments carried, and the reporter.
    pub authors: Vec<User>,
}

impl Delivery {
    /// Every login that authored this delivery's change.
    pub fn author_logins(&self) -> impl Iterator<Item = &str> {
        self.updated_by.iter().chain(&self.authors).filter_map(|u| u.login.as_deref())
    }
}

/// Why a body was refused. Messages are lower-case and name the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("body is not valid json: {0}")]
    InvalidJson(String),
    #[error("body must be a json object")]
    NotAnObject,
    #[error("missing required field `{field}`")]
    Missing { field: String },
    #[error("field `{field}` must be {expected}")]
    WrongType { field: String, expected: &'static str },
    #[error("field `{field}` is invalid: {reason}")]
    Invalid { field: String, reason: &'static str },
}

impl PayloadError {
    /// The field the error is about, if it is about one.
    pub fn field(&self) -> Option<&str> {
        match self {
            PayloadError::Missing { field }
            | PayloadError::WrongType { field, .. }
            | PayloadError::Invalid { field, .. } => Some(field),
            PayloadError::InvalidJson(_) | PayloadError::NotAnObject => None,
        }
    }
}

/// Longest issue id accepted; YouTrack ids are a project key, a dash and a number.
const MAX_ISSUE_ID_LEN: usize = 64;

/// Parses a body already read as JSON.
pub fn parse(body: &Value) -> Result<Delivery, PayloadError> {
    parse_json(&Json::borrow(body))
}

/// A body read: the text (known to be JSON now), its fingerprint and the delivery it is.
#[derive(Debug, Clone)]
pub struct Read {
    pub body: Body,
    pub fingerprint: Fingerprint,
    pub delivery: Delivery,
}

/// Reads a received body for the log: [`parse_bytes`], keeping the text as a [`Body`].
pub fn read(text: &str) -> Result<Read, PayloadError> {
    let (fingerprint, delivery) = parse_bytes(text.as_bytes())?;
    Ok(Read { body: Body::read(text.to_owned()), fingerprint, delivery })
}

/// Parses raw bytes: JSON first, then the delivery and its fingerprint, from one reading.
pub fn parse_bytes(body: &[u8]) -> Result<(Fingerprint, Delivery), PayloadError> {
    let json = Json::from_slice(body).map_err(|e| PayloadError::InvalidJson(e.to_string()))?;
    let delivery = parse_json(&json)?;
    Ok((Fingerprint::of_json(&json), delivery))
}

fn parse_json(body: &Json<'_>) -> Result<Delivery, PayloadError> {
    let map = body.as_object().ok_or(PayloadError::NotAnObject)?;
    let event = EventKind::parse(required_str(map, "event")?);
    let issue_id = required_str(map, "id")?;
    validate_issue_id(issue_id)?;
    let project = parse_project(map)?;

    let changed_fields = match map.get("changedFields") {
        None | Some(Json::Null) => Vec::new(),
        Some(Json::Array(entries)) => {
            entries.iter().enumerate().map(|(i, entry)| parse_changed_field(i, entry)).collect::<Result<_, _>>()?
        }
        Some(_) => return Err(wrong("changedFields", "an array")),
    };

    let mut authors = Vec::new();
    for list in ["comments", "workItems", "attachments"] {
        if let Some(Json::Array(items)) = map.get(list) {
            authors.extend(items.iter().filter_map(|item| item.get("author")).filter_map(parse_user));
        }
    }
    authors.extend(map.get("reporter").and_then(parse_user));

    Ok(Delivery {
        event,
        issue_id: issue_id.to_owned(),
        project,
        summary: opt_string(map, "summary"),
        timestamp: opt_string(map, "timestamp"),
        // Lenient: a body with an odd `updated` is still a delivery, only without a change time.
        updated: map.get("updated").and_then(Json::as_i64),
        updated_by: map.get("updatedBy").and_then(parse_user),
        changed_fields,
        authors,
    })
}

fn wrong(field: &str, expected: &'static str) -> PayloadError {
    PayloadError::WrongType { field: field.to_owned(), expected }
}

fn required_str<'a>(map: &'a Object<'_>, field: &str) -> Result<&'a str, PayloadError> {
    match map.get(field) {
        None | Some(Json::Null) => Err(PayloadError::Missing { field: field.to_owned() }),
        Some(Json::String(s)) => Ok(s),
        Some(_) => Err(wrong(field, "a string")),
    }
}

fn opt_string(map: &Object<'_>, field: &str) -> Option<String> {
    map.get(field).and_then(Json::as_str).map(str::to_owned)
}

fn validate_issue_id(id: &str) -> Result<(), PayloadError> {
    let invalid = |reason| Err(PayloadError::Invalid { field: "id".to_owned(), reason });
    if id.is_empty() {
        return invalid("must not be empty");
    }
    if id.len() > MAX_ISSUE_ID_LEN {
        return invalid("is longer than 64 characters");
    }
    if !id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) {
        return invalid("may hold only letters, digits, `-`, `_` and `.`");
    }
    Ok(())
}

/// Current shape: `project.key`; legacy shape: `project.shortName`.
fn parse_project(map: &Object<'_>) -> Result<String, PayloadError> {
    let project = match map.get("project") {
        None | Some(Json::Null) => return Err(PayloadError::Missing { field: "project".to_owned() }),
        Some(Json::Object(project)) => project,
        Some(_) => return Err(wrong("project", "an object")),
    };
    for field in ["key", "shortName"] {
        match project.get(field) {
            None | Some(Json::Null) => continue,
            Some(Json::String(key)) if !key.is_empty() => {
                if key.len() > MAX_ISSUE_ID_LEN
                    || !key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
                {
                    return Err(PayloadError::Invalid {
                        field: format!("project.{field}"),
                        reason: "may hold only letters, digits, `-`, `_` and `.`",
                    });
                }
                return Ok(key.as_ref().to_owned());
            }
            Some(_) => return Err(wrong(&format!("project.{field}"), "a non-empty string")),
        }
    }
    Err(PayloadError::Missing { field: "project.key".to_owned() })
}

fn parse_changed_field(index: usize, entry: &Json<'_>) -> Result<ChangedField, PayloadError> {
    let entry = entry.as_object().ok_or_else(|| wrong(&format!("changedFields[{index}]"), "an object"))?;
    let name = match entry.get("name") {
        Some(Json::String(name)) => name.as_ref().to_owned(),
        None | Some(Json::Null) => return Err(PayloadError::Missing { field: format!("changedFields[{index}].name") }),
        Some(_) => return Err(wrong(&format!("changedFields[{index}].name"), "a string")),
    };
    let value_of = |key| entry.get(key).map(FieldValue::parse).unwrap_or(FieldValue::Null);
    Ok(ChangedField { name, old_value: value_of("oldValue"), value: value_of("value") })
}

fn parse_user(value: &Json<'_>) -> Option<User> {
    let map = value.as_object()?;
    Some(User {
        login: opt_string(map, "login"),
        full_name: opt_string(map, "fullName"),
        email: opt_string(map, "email"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> Value {
        json!({"event": "issueUpdated", "timestamp": "t", "id": "GW-42", "summary": "s",
               "project": {"key": "GW", "name": "Gateway", "shortName": "GW"}})
    }

    #[test]
    fn every_known_event_name_round_trips() {
        for (name, kind) in EventKind::KNOWN {
            assert_eq!(EventKind::parse(name), kind);
            assert_eq!(kind.as_str(), name);
        }
        assert_eq!(EventKind::parse("issueMerged"), EventKind::Unknown("issueMerged".into()));
        assert_eq!(EventKind::parse("issueMerged").as_str(), "issueMerged");
    }

    #[test]
    fn the_legacy_shape_takes_the_project_from_short_name() {
        let body = json!({"event": "issueCreated", "id": "GW-7", "numberInProject": 7,
                          "project": {"id": "0-3", "name": "Gateway", "shortName": "GW"}});
        assert_eq!(parse(&body).unwrap().project, "GW");
    }

    #[test]
    fn wrong_types_in_required_fields_name_the_field() {
        let cases = [
            ("event", json!(3), "event"),
            ("id", json!({"a": 1}), "id"),
            ("project", json!("GW"), "project"),
            ("changedFields", json!({}), "changedFields"),
        ];
        for (key, value, field) in cases {
            let mut body = base();
            body[key] = value;
            assert_eq!(parse(&body).unwrap_err().field(), Some(field), "{key}");
        }
        let mut body = base();
        body["project"] = json!({"key": 12});
        assert_eq!(parse(&body).unwrap_err().field(), Some("project.key"));
        let mut body = base();
        body["changedFields"] = json!([{"name": 1}]);
        assert_eq!(parse(&body).unwrap_err().field(), Some("changedFields[0].name"));
    }

    #[test]
    fn every_value_shape_parses() {
        let mut body = base();
        body["changedFields"] = json!([
            {"name": "summary", "oldValue": "a", "value": "b"},
            {"name": "State", "oldValue": {"name": "Open", "presentation": "Open"},
             "value": {"name": "Building", "presentation": "Building"}},
            {"name": "Assignee", "oldValue": null, "value": {"login": "jane", "fullName": null}},
            {"name": "Estimation", "oldValue": null, "value": {"minutes": 90, "presentation": "1h 30m"}},
            {"name": "Due", "oldValue": 1787562927412u64, "value": 1.5},
            {"name": "Fix versions", "oldValue": [], "value": [{"name": "1.0"}, {"name": "1.1"}]},
            {"name": "Flag", "value": true},
            {"name": "Odd", "oldValue": {"weird": 1}, "value": null}
        ]);
        let delivery = parse(&body).unwrap();
        let values: Vec<_> = delivery.changed_fields.iter().map(|f| &f.value).collect();
        assert!(matches!(values[0], FieldValue::Text { .. }));
        assert_eq!(values[1].names(), ["Building"]);
        assert_eq!(values[2].names(), ["jane"]);
        assert!(matches!(values[3], FieldValue::Period { minutes: Some(90), .. }));
        assert!(matches!(values[4], FieldValue::Number { .. }));
        assert_eq!(values[5].names(), ["1.0", "1.1"]);
        assert!(matches!(values[6], FieldValue::Bool { value: true }));
        assert!(matches!(delivery.changed_fields[7].old_value, FieldValue::Other { .. }));
    }

    #[test]
    fn authors_come_from_comments_work_items_attachments_and_the_reporter() {
        let mut body = base();
        body["event"] = json!("commentAdded");
        body["comments"] = json!([{"text": "x", "author": {"login": "bot"}}]);
        body["reporter"] = json!({"login": "jane"});
        let delivery = parse(&body).unwrap();
        assert_eq!(delivery.author_logins().collect::<Vec<_>>(), ["bot", "jane"]);
    }

    #[test]
    fn issue_ids_with_odd_characters_are_refused() {
        let mut body = base();
        body["id"] = json!("GW-1; rm -rf /");
        assert_eq!(parse(&body).unwrap_err().field(), Some("id"));
    }
}

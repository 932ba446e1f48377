//! A stand-in for YouTrack's REST API, as reconciliation and the self-test use it: the activity
//! stream (`/api/activitiesPage` with cursors, `/api/activities`), an issue's current values
//! (`/api/issues/{id}`), the token's account (`/api/users/me`), new comments
//! (`POST /api/issues/{id}/comments`), commands (`POST /api/commands`, which change the issue's
//! `State` and refuse a state the workflow does not have with 400 and YouTrack's
//! `error_description`; `POST /api/commands/assist`, which applies nothing) and issue searches
//! (`GET /api/issues?query=project: {P}`), built from the realistic bodies in `fixtures/youtrack/rest/`,
//! over HTTPS. It filters by the window and `issueQuery`, refuses a
//! wrong token with 401 and a request without the documented parameters with 400, and can be
//! scripted to answer 429, 5xx or malformed JSON.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use meshgate::tls::TlsListener;
use serde_json::{json, Value};

use crate::helpers::fixtures;
use crate::pki::pki;

/// The bot's permanent token the stand-in accepts.
pub const TOKEN: &str = "perm:bWVzaGdhdGUtYm90.c2VsZnRlc3Q=.cmVjb25jaWxpYXRpb24tdG9rZW4";

/// A scripted answer to the next request: status, `Retry-After`, body.
#[derive(Clone)]
pub struct Failure(pub u16, pub Option<&'static str>, pub &'static str);

#[derive(Default)]
struct Data {
    activities: Vec<Value>,
    /// Issue id → its current `State`.
    states: HashMap<String, String>,
    failures: VecDeque<Failure>,
    /// Failures for the next request to a path starting with the prefix, once each.
    failures_at: Vec<(String, Failure)>,
    /// Paths asked, in order.
    asked: Vec<String>,
    token: String,
    comments: Option<tokio::sync::mpsc::UnboundedSender<Value>>,
    commands: Option<tokio::sync::mpsc::UnboundedSender<Value>>,
}

/// The states the stand-in's workflow has: a command naming another is refused.
pub const STATES: [&str; 5] = ["Open", "Building", "Ready for QA", "Build failed", "Fixed"];

#[derive(Clone)]
pub struct YouTrack {
    pub addr: SocketAddr,
    data: Arc<Mutex<Data>>,
    comments: Arc<tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<Value>>>,
    commands: Arc<tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<Value>>>,
}

fn fixture(name: &str) -> Value {
    let text = std::fs::read_to_string(fixtures().join("youtrack/rest").join(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

impl YouTrack {
    pub async fn start() -> YouTrack {
        YouTrack::start_with_token(TOKEN).await
    }

    /// A YouTrack whose bot has this permanent token.
    pub async fn start_with_token(token: &str) -> YouTrack {
        let (tx, comments) = tokio::sync::mpsc::unbounded_channel();
        let (applied, commands) = tokio::sync::mpsc::unbounded_channel();
        let data = Data { token: token.to_owned(), comments: Some(tx), commands: Some(applied), ..Data::default() };
        let data = Arc::new(Mutex::new(data));
        let router = axum::Router::new()
            .route("/api/activitiesPage", get(activities_page))
            .route("/api/activities", get(activities))
            .route("/api/issues", get(search))
            .route("/api/issues/{id}", get(issue))
            .route("/api/commands", post(command))
            .route("/api/commands/assist", post(assist))
            .route("/api/issues/{id}/comments", post(comment))
            .route("/api/users/me", get(me))
            .with_state(Arc::clone(&data));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let listener = TlsListener::new(listener, pki().server(2)).unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        YouTrack {
            addr,
            data,
            comments: Arc::new(tokio::sync::Mutex::new(comments)),
            commands: Arc::new(tokio::sync::Mutex::new(commands)),
        }
    }

    /// The next command applied or refused: its body, and the status it was answered with.
    pub async fn next_command(&self) -> Value {
        let mut commands = self.commands.lock().await;
        tokio::time::timeout(std::time::Duration::from_secs(30), commands.recv())
            .await
            .expect("a command in time")
            .unwrap()
    }

    /// The issue's state now.
    pub fn state(&self, issue: &str) -> Option<String> {
        self.data.lock().unwrap().states.get(issue).cloned()
    }

    /// The next comment posted: `{"issue", "text", "usesMarkdown"}` (a bounded wait on a channel).
    pub async fn next_comment(&self) -> Value {
        let mut comments = self.comments.lock().await;
        tokio::time::timeout(std::time::Duration::from_secs(30), comments.recv())
            .await
            .expect("a comment in time")
            .unwrap()
    }

    /// Accepts `token` only from now on (the bot's token was rotated in YouTrack).
    pub fn accept_only(&self, token: &str) {
        self.data.lock().unwrap().token = token.to_owned();
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// A change of `State` from `from` to `to` on `issue`, by `author`, at `at_ms`; the issue's
    /// current state becomes `to`.
    pub fn transition(&self, issue: &str, at_ms: i64, author: &str, from: &str, to: &str) {
        self.change(issue, at_ms, author, "State", from, to);
        self.set_state(issue, to);
    }

    /// A change of any field, leaving the issue's state as it is.
    pub fn change(&self, issue: &str, at_ms: i64, author: &str, field: &str, from: &str, to: &str) {
        let mut activity = fixture("activitiesPage-state-changes.json")["activities"][0].clone();
        let mut data = self.data.lock().unwrap();
        activity["id"] = json!(format!("2-{}.0-{}", data.activities.len(), at_ms));
        activity["timestamp"] = json!(at_ms);
        activity["author"]["login"] = json!(author);
        activity["target"]["idReadable"] = json!(issue);
        activity["target"]["project"]["shortName"] = json!(issue.split('-').next().unwrap());
        activity["field"]["name"] = json!(field);
        activity["added"][0]["name"] = json!(to);
        activity["removed"][0]["name"] = json!(from);
        data.activities.push(activity);
        data.states.entry(issue.to_owned()).or_insert_with(|| from.to_owned());
    }

    pub fn set_state(&self, issue: &str, state: &str) {
        self.data.lock().unwrap().states.insert(issue.to_owned(), state.to_owned());
    }

    /// The next requests get these answers, in order.
    pub fn fail_next(&self, failures: &[Failure]) {
        self.data.lock().unwrap().failures.extend(failures.iter().cloned());
    }

    /// The next request to a path starting with `prefix` gets this answer.
    pub fn fail_at(&self, prefix: &str, failure: Failure) {
        self.data.lock().unwrap().failures_at.push((prefix.to_owned(), failure));
    }

    /// How many requests asked for a path starting with `prefix`.
    pub fn asked(&self, prefix: &str) -> usize {
        self.data.lock().unwrap().asked.iter().filter(|p| p.starts_with(prefix)).count()
    }
}

type Shared = State<Arc<Mutex<Data>>>;

/// The checks every request passes first: a scripted failure, then the bearer token.
fn gate(data: &Arc<Mutex<Data>>, headers: &HeaderMap, path: String) -> Option<Response> {
    let mut data = data.lock().unwrap();
    let at_path = data.failures_at.iter().position(|(prefix, _)| path.starts_with(prefix.as_str()));
    data.asked.push(path);
    let scripted = match at_path {
        Some(i) => Some(data.failures_at.remove(i).1),
        None => data.failures.pop_front(),
    };
    if let Some(Failure(status, retry_after, body)) = scripted {
        let mut response = (StatusCode::from_u16(status).unwrap(), body).into_response();
        if let Some(value) = retry_after {
            response.headers_mut().insert("retry-after", value.parse().unwrap());
        }
        return Some(response);
    }
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(&format!("Bearer {}", data.token)) {
        return Some((StatusCode::UNAUTHORIZED, axum::Json(fixture("error-401-unauthorized.json"))).into_response());
    }
    None
}

fn bad_request(description: &str) -> Response {
    let body = json!({"error": "bad_request", "error_description": description});
    (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
}

/// The activities of the query's window, categories and projects, oldest first.
/// Refusals name what YouTrack would say is wrong.
fn select(data: &Data, query: &HashMap<String, String>) -> Result<Vec<Value>, &'static str> {
    if query.get("categories").map(String::as_str) != Some("CustomFieldCategory") {
        return Err("categories is required");
    }
    let fields = query.get("fields").cloned().unwrap_or_default();
    for part in [
        "id",
        "timestamp",
        "author(login)",
        "target(idReadable,project(shortName))",
        "field(name)",
        "added(name)",
        "removed(name)",
    ] {
        if !fields.contains(part) {
            return Err("fields must name what is read");
        }
    }
    let ms = |key: &str| query.get(key).map(|v| v.parse::<i64>().map_err(|_| "start and end are ms"));
    let start = ms("start").transpose()?.unwrap_or(i64::MIN);
    let end = ms("end").transpose()?.unwrap_or(i64::MAX);
    // `project: MOB, APP`
    let projects: Option<Vec<String>> = query
        .get("issueQuery")
        .map(|q| q.trim_start_matches("project:").split(',').map(|p| p.trim().to_owned()).collect());
    let mut selected: Vec<Value> = data
        .activities
        .iter()
        .filter(|a| (start..=end).contains(&a["timestamp"].as_i64().unwrap()))
        .filter(|a| {
            let project = a["target"]["project"]["shortName"].as_str().unwrap();
            projects.as_ref().is_none_or(|ps| ps.iter().any(|p| p == project))
        })
        .cloned()
        .collect();
    selected.sort_by_key(|a| a["timestamp"].as_i64());
    Ok(selected)
}

async fn activities_page(
    State(data): Shared,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Some(refused) = gate(&data, &headers, "/api/activitiesPage".into()) {
        return refused;
    }
    let data = data.lock().unwrap();
    let selected = match select(&data, &query) {
        Ok(selected) => selected,
        Err(why) => return bad_request(why),
    };
    let top: usize = query.get("$top").and_then(|t| t.parse().ok()).unwrap_or(42);
    let from: usize = query.get("cursor").and_then(|c| c.parse().ok()).unwrap_or(0);
    let to = (from + top).min(selected.len());
    let mut page = fixture("activitiesPage-state-changes.json");
    page["activities"] = json!(selected[from.min(to)..to]);
    page["afterCursor"] = json!(format!("{to:016}"));
    page["beforeCursor"] = json!(format!("{from:016}"));
    page["hasAfter"] = json!(to < selected.len());
    page["hasBefore"] = json!(from > 0);
    axum::Json(page).into_response()
}

async fn activities(State(data): Shared, headers: HeaderMap, Query(query): Query<HashMap<String, String>>) -> Response {
    if let Some(refused) = gate(&data, &headers, "/api/activities".into()) {
        return refused;
    }
    let data = data.lock().unwrap();
    match select(&data, &query) {
        Ok(selected) => axum::Json(selected).into_response(),
        Err(why) => bad_request(why),
    }
}

async fn issue(State(data): Shared, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Some(refused) = gate(&data, &headers, format!("/api/issues/{id}")) {
        return refused;
    }
    let Some(state) = data.lock().unwrap().states.get(&id).cloned() else {
        return (StatusCode::NOT_FOUND, axum::Json(fixture("error-404-not-found.json"))).into_response();
    };
    let mut issue = fixture("issue-MOB-7.json");
    issue["idReadable"] = json!(id);
    issue["summary"] = json!(format!("Summary of {id}"));
    for field in issue["customFields"].as_array_mut().unwrap() {
        if field["name"] == "State" {
            field["value"]["name"] = json!(state);
        }
    }
    axum::Json(issue).into_response()
}

async fn comment(
    State(data): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    if let Some(refused) = gate(&data, &headers, format!("/api/issues/{id}/comments")) {
        return refused;
    }
    if body["text"].as_str().is_none_or(str::is_empty) {
        return bad_request("text is required");
    }
    let sender = data.lock().unwrap().comments.clone();
    let _ = sender.unwrap().send(
        json!({"issue": id, "text": body["text"], "usesMarkdown": body["usesMarkdown"], "fields": query.get("fields")}),
    );
    axum::Json(fixture("comment-created-200.json")).into_response()
}

async fn me(State(data): Shared, headers: HeaderMap) -> Response {
    if let Some(refused) = gate(&data, &headers, "/api/users/me".into()) {
        return refused;
    }
    axum::Json(fixture("users-me.json")).into_response()
}

/// `State X` or `State {X with spaces}` at the start of a command, and what follows.
fn state_in(query: &str) -> Option<(String, &str)> {
    let rest = query.strip_prefix("State ")?;
    match rest.strip_prefix('{') {
        Some(braced) => braced.split_once('}').map(|(state, rest)| (state.to_owned(), rest.trim_start())),
        None => {
            let (state, rest) = rest.split_once(' ').unwrap_or((rest, ""));
            Some((state.to_owned(), rest))
        }
    }
}

/// What YouTrack would say of a command, or why it cannot apply it.
fn read_command(query: &str) -> Result<Option<String>, String> {
    let Some((state, rest)) = state_in(query) else { return Err(format!("Unknown command: {query}")) };
    if !STATES.contains(&state.as_str()) {
        return Err(format!("Unknown state: {state}"));
    }
    // `Fixed in build {…}`: a build field that takes any value here.
    if !(rest.is_empty() || rest.starts_with("Fixed in build ")) {
        return Err(format!("Unknown command: {rest}"));
    }
    Ok(Some(state))
}

async fn command(State(data): Shared, headers: HeaderMap, axum::Json(body): axum::Json<Value>) -> Response {
    let record = |status: u16| {
        let sender = data.lock().unwrap().commands.clone();
        let _ = sender.unwrap().send(json!({"status": status, "body": body.clone()}));
    };
    if let Some(refused) = gate(&data, &headers, "/api/commands".into()) {
        record(refused.status().as_u16());
        return refused;
    }
    let issues: Vec<String> = body["issues"]
        .as_array()
        .map(|i| i.iter().filter_map(|i| i["idReadable"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    let (Some(query), false) = (body["query"].as_str(), issues.is_empty()) else {
        record(400);
        return bad_request("query and issues are required");
    };
    match read_command(query) {
        Ok(state) => {
            for issue in &issues {
                if let Some(state) = &state {
                    data.lock().unwrap().states.insert(issue.clone(), state.clone());
                }
            }
            record(200);
            StatusCode::OK.into_response()
        }
        Err(why) => {
            record(400);
            bad_request(&why)
        }
    }
}

async fn assist(State(data): Shared, headers: HeaderMap, axum::Json(body): axum::Json<Value>) -> Response {
    if let Some(refused) = gate(&data, &headers, "/api/commands/assist".into()) {
        return refused;
    }
    let query = body["query"].as_str().unwrap_or_default();
    let command = match read_command(query) {
        Ok(_) => json!({"description": format!("Apply `{query}`"), "error": false, "$type": "ParsedCommand"}),
        Err(why) => json!({"description": why, "error": true, "$type": "ParsedCommand"}),
    };
    axum::Json(json!({"commands": [command], "$type": "CommandList"})).into_response()
}

async fn search(State(data): Shared, headers: HeaderMap, Query(query): Query<HashMap<String, String>>) -> Response {
    if let Some(refused) = gate(&data, &headers, "/api/issues".into()) {
        return refused;
    }
    let wanted = query.get("query").and_then(|q| q.strip_prefix("project: {")).and_then(|q| q.strip_suffix('}'));
    let data = data.lock().unwrap();
    let mut found: Vec<&String> =
        data.states.keys().filter(|id| wanted.is_some_and(|p| id.split('-').next() == Some(p))).collect();
    found.sort();
    let top: usize = query.get("$top").and_then(|t| t.parse().ok()).unwrap_or(42);
    let issues: Vec<Value> =
        found.into_iter().take(top).map(|id| json!({"idReadable": id, "$type": "Issue"})).collect();
    axum::Json(issues).into_response()
}

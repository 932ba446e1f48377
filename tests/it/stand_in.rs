//! Local stand-ins for the HTTPS services the gateway talks to (Slack, Teams, Discord, YouTrack,
//! PagerDuty, OpenClaw): each answers from a script of replies (then 200) and reports every
//! request it gets on a channel. They serve HTTPS only, with a certificate of the tests' CA.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use meshgate::tls::{ServerTls, TlsListener};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::pki::pki;

#[derive(Debug)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
    pub headers: HeaderMap,
    pub body: Value,
}

/// One scripted answer: a status, an optional `Retry-After` and an optional body.
#[derive(Clone)]
pub struct Reply(pub u16, pub Option<&'static str>, pub Option<String>);

pub fn reply(status: u16, retry_after: Option<&'static str>) -> Reply {
    Reply(status, retry_after, None)
}

pub fn reply_with(status: u16, retry_after: Option<&'static str>, body: &str) -> Reply {
    Reply(status, retry_after, Some(body.to_owned()))
}

type Script = Arc<Mutex<VecDeque<Reply>>>;

pub struct StandIn {
    pub addr: SocketAddr,
    pub received: mpsc::UnboundedReceiver<Received>,
}

/// A stand-in with a certificate the tests' CA signed.
pub async fn stand_in(script: Vec<Reply>) -> StandIn {
    stand_in_with(script, pki().server(1)).await
}

/// A stand-in presenting `tls`.
pub async fn stand_in_with(script: Vec<Reply>, tls: Arc<ServerTls>) -> StandIn {
    let (tx, received) = mpsc::unbounded_channel();
    let script: Script = Arc::new(Mutex::new(script.into()));
    async fn answer(
        State((script, tx)): State<(Script, mpsc::UnboundedSender<Received>)>,
        request: Request,
    ) -> impl IntoResponse {
        let method = request.method().to_string();
        let path = request.uri().to_string();
        let headers = request.headers().clone();
        let authorization = headers.get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let bytes = axum::body::to_bytes(request.into_body(), 1 << 20).await.unwrap_or_default();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let _ = tx.send(Received { method, path, authorization, headers, body });
        let Reply(status, retry_after, body) = script.lock().unwrap().pop_front().unwrap_or(Reply(200, None, None));
        let mut headers = HeaderMap::new();
        if let Some(value) = retry_after {
            headers.insert("retry-after", value.parse().unwrap());
        }
        let body = body.unwrap_or_else(|| if status < 300 { "ok" } else { "error" }.to_owned());
        (StatusCode::from_u16(status).unwrap(), headers, body)
    }
    let router = axum::Router::new().fallback(answer).with_state((script, tx));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let listener = TlsListener::new(listener, tls).unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    StandIn { addr, received }
}

impl StandIn {
    /// An HTTPS URL on this stand-in.
    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    pub async fn next(&mut self) -> Received {
        tokio::time::timeout(Duration::from_secs(30), self.received.recv()).await.expect("a request in time").unwrap()
    }
}

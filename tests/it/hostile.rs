//! Clients that do not play by the rules, on the public listener.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

/// Sends `head` and `body` on a fresh connection, then reads the answer, as most HTTP clients do.
/// If the gateway closed the connection on unread data, the rest of the body meets a reset
/// (a broken pipe) and such a client never reads the answer.
async fn exchange(addr: std::net::SocketAddr, head: &str, body: &[u8]) -> std::io::Result<String> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut read, mut write) = stream.into_split();
    let sent = [head.as_bytes(), body].concat();
    // The write half is kept open until the answer is read: a half-closed connection is a closed
    // one to the server.
    let writer = tokio::spawn(async move {
        // The body arrives over about half a second, as from a client on a real network.
        for chunk in sent.chunks(64 << 10) {
            write.write_all(chunk).await?;
            tokio::time::sleep(std::time::Duration::from_millis(15)).await;
        }
        Ok::<_, std::io::Error>(write)
    });
    // Most HTTP clients give up on a request they could not finish sending (a broken pipe) and
    // never read the answer.
    let write = writer.await.unwrap()?;
    let mut answer = Vec::new();
    let read = read.read_to_end(&mut answer).await;
    drop(write);
    read?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_too_large_gets_its_413_and_not_a_reset() {
    let app = spawn_app().await;
    let body = vec![b' '; 2 << 20];
    for _ in 0..3 {
        let head = format!(
            "POST /youtrack/webhook HTTP/1.1\r\nHost: gateway\r\nX-YouTrack-Token: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            app.webhook_token,
            body.len()
        );
        let answer = exchange(app.addr, &head, &body).await.expect("an answer, not a reset");
        assert!(answer.starts_with("HTTP/1.1 413"), "{} bytes: {:?}", answer.len(), &answer[..answer.len().min(200)]);
        assert!(answer.contains("payload_too_large"), "{answer}");
    }
    // The same without a length said up front (chunked): the 413 after the limit, read too.
    let head = format!(
        "POST /youtrack/webhook HTTP/1.1\r\nHost: gateway\r\nX-YouTrack-Token: {}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        app.webhook_token
    );
    let mut chunked = Vec::new();
    for chunk in body.chunks(32 << 10) {
        chunked.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        chunked.extend_from_slice(chunk);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let answer = exchange(app.addr, &head, &chunked).await.expect("an answer, not a reset");
    assert!(answer.starts_with("HTTP/1.1 413"), "{} bytes: {:?}", answer.len(), &answer[..answer.len().min(200)]);
    // Refused with a wrong token, the body still arriving: the 401 is read too.
    let head = format!(
        "POST /youtrack/webhook HTTP/1.1\r\nHost: gateway\r\nX-YouTrack-Token: wrong\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        512 << 10
    );
    let answer = exchange(app.addr, &head, &vec![b' '; 512 << 10]).await.expect("an answer, not a reset");
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert_eq!(read_everything(app.store().as_ref()).await.len(), 0, "nothing was recorded");
}

/// Expands `{{fill:C:N}}` (N copies of C) and `{{token}}`.
fn expand(text: &str, token: &str) -> String {
    let mut out = text.replace("{{token}}", token);
    while let Some(start) = out.find("{{fill:") {
        let end = start + out[start..].find("}}").unwrap();
        let spec = &out[start + 7..end];
        let (fill, n) = spec.rsplit_once(':').unwrap();
        let filled = fill.repeat(n.parse().unwrap());
        out.replace_range(start..end + 2, &filled);
    }
    out
}

fn body_of(spec: &serde_json::Value, token: &str) -> Vec<u8> {
    if let Some(text) = spec["text"].as_str() {
        return expand(text, token).into_bytes();
    }
    if let Some(hex) = spec["hex"].as_str() {
        return (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
    }
    if let Some([unit, times]) = spec["repeat"].as_array().map(Vec::as_slice) {
        return unit.as_str().unwrap().repeat(times.as_u64().unwrap() as usize).into_bytes();
    }
    if let Some(chunks) = spec["chunked"].as_array() {
        let mut out = Vec::new();
        for chunk in chunks {
            let chunk = expand(chunk.as_str().unwrap(), token);
            out.extend(format!("{:x}\r\n{chunk}\r\n", chunk.len()).bytes());
        }
        out.extend(b"0\r\n\r\n");
        return out;
    }
    panic!("unknown body {spec}")
}

/// The status of the first answer on a connection (0: closed without one).
async fn status_of(addr: std::net::SocketAddr, request: Vec<u8>) -> u16 {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        let _ = write.write_all(&request).await;
        write
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let read_head = async {
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
            if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), read_head).await.expect("an answer within 10 s");
    drop(writer.await);
    let head = String::from_utf8_lossy(&answer);
    head.strip_prefix("HTTP/1.1 ")
        .or(head.strip_prefix("HTTP/1.0 "))
        .and_then(|r| r.get(..3))
        .map_or(0, |s| s.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hostile_or_broken_request_of_the_table_gets_its_status_and_records_nothing() {
    let app = spawn_app().await;
    let table: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("hostile/webhook.json")).unwrap()).unwrap();
    let cases = table["cases"].as_array().unwrap();
    assert!(cases.len() >= 30);
    let mut wrong = Vec::new();
    let mut recorded = 0;
    for case in cases {
        recorded += usize::from(case["recorded"].as_bool().unwrap_or(false));
        let body = body_of(&case["body"], &app.webhook_token);
        let mut head = expand(case["head"].as_str().unwrap(), &app.webhook_token);
        if !case["body"]["no_length"].as_bool().unwrap_or(false) && !head.contains("Transfer-Encoding") {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let status = status_of(app.addr, [head.into_bytes(), body].concat()).await;
        let expected = case["status"].as_u64().unwrap() as u16;
        if status != expected {
            wrong.push(format!("{}: {status}, expected {expected}", case["name"]));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    let received = read_everything(app.store().as_ref()).await;
    let deliveries = received.iter().filter(|e| e.event_type == "WebhookReceived").count();
    assert_eq!(deliveries, recorded, "a refused request was recorded");
    // Nothing is left busy: a good delivery is answered as ever.
    let answer = app.post(&fixture("mob-issueUpdated-state-building.json")).await;
    assert_eq!(answer.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_bad_tokens_are_slowed_down_and_a_correct_token_never_is() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), vec![ios_trigger()]);
    config.webhook.max_bad_tokens_per_minute = 5;
    let app = spawn_with(dir, config).await;
    let wrong = || {
        app.client
            .post(app.url("/youtrack/webhook"))
            .header("X-YouTrack-Token", "guess")
            .header("Content-Type", "application/json")
            .body("{}")
            .send()
    };
    for _ in 0..5 {
        assert_eq!(wrong().await.unwrap().status(), 401);
    }
    let slowed = wrong().await.unwrap();
    assert_eq!(slowed.status(), 429);
    let wait: u64 = slowed.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    assert_eq!(slowed.json::<serde_json::Value>().await.unwrap()["error"], "too_many_bad_tokens");
    // The same address with the right token: answered at once, as ever.
    let answer = app.post(&fixture("mob-issueUpdated-state-building.json")).await;
    assert_eq!(answer.status(), 200);
    assert_eq!(wrong().await.unwrap().status(), 429);
}

/// The admin API and the dashboard's sign-in count their own bad tokens per address: past the
/// limit a refusal is a 429, and the right token is still answered at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_bad_tokens_on_the_api_and_the_sign_in_are_slowed_down_too() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), vec![ios_trigger()]);
    config.webhook.max_bad_tokens_per_minute = 4;
    let app = spawn_with(dir, config).await;
    let builds = |token: &str| app.client.get(app.url("/api/v1/builds")).bearer_auth(token).send();
    for _ in 0..3 {
        assert_eq!(builds("guess").await.unwrap().status(), 401);
    }
    let sign_in = app.client.post(app.url("/ui/login")).form(&[("token", "guess")]).send().await.unwrap();
    assert_eq!(sign_in.status(), 401, "the fourth bad token, at the sign-in");
    let slowed = builds("guess").await.unwrap();
    assert_eq!(slowed.status(), 429);
    assert!(slowed.headers().contains_key("retry-after"));
    assert_eq!(slowed.json::<serde_json::Value>().await.unwrap()["error"], "too_many_bad_tokens");
    let sign_in = app.client.post(app.url("/ui/login")).form(&[("token", "guess")]).send().await.unwrap();
    assert_eq!(sign_in.status(), 429);
    assert_eq!(builds(&app.admin_token).await.unwrap().status(), 200);
    // The webhook counts apart: its first bad token is still a 401.
    let webhook = app
        .client
        .post(app.url("/youtrack/webhook"))
        .header("X-YouTrack-Token", "guess")
        .header("Content-Type", "application/json")
        .body("{}")
        .send();
    assert_eq!(webhook.await.unwrap().status(), 401);
}

/// A connection to the gateway, over TLS when it serves HTTPS (trusting the tests' CA).
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

async fn connect(addr: std::net::SocketAddr, tls: bool) -> Box<dyn Io> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    if !tls {
        return Box::new(tcp);
    }
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(&crate::pki::pki().ca_file).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    Box::new(connector.connect(name, tcp).await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_slow_and_stalled_clients_do_not_keep_a_delivery_waiting() {
    hostile_clients(false).await;
}

/// As deployed: over HTTPS, where a connection that never sends its hello is closed at the same
/// bound as one that never sends its head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_slow_and_stalled_clients_do_not_keep_a_delivery_waiting_over_https() {
    hostile_clients(true).await;
}

async fn hostile_clients(tls: bool) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), vec![ios_trigger()]);
    config.server.header_timeout_seconds = 2;
    config.server.body_timeout_seconds = 2;
    if tls {
        let files = crate::pki::pki().write_leaf(dir.path(), "gateway", 30);
        config.server.tls_cert_file = Some(files.cert_file);
        config.server.tls_key_file = Some(files.key_file);
    }
    let app = spawn_with(dir, config).await;

    // 1,000 connections that send nothing, 20 that send their head a byte at a time, 20 whose
    // body stops halfway.
    let mut idle = Vec::new();
    for _ in 0..1000 {
        idle.push(tokio::net::TcpStream::connect(app.addr).await.unwrap());
    }
    let head = format!(
        "POST /youtrack/webhook HTTP/1.1\r\nHost: gateway\r\nX-YouTrack-Token: {}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n",
        app.webhook_token
    );
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut stream = connect(app.addr, tls).await;
        let head = head.clone().into_bytes();
        slow.push(tokio::spawn(async move {
            for byte in head {
                if stream.write_all(&[byte]).await.is_err() {
                    return true;
                }
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            false
        }));
    }
    let mut stalled = Vec::new();
    for _ in 0..20 {
        let mut stream = connect(app.addr, tls).await;
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(b"{\"event\":").await.unwrap();
        stalled.push(stream);
    }

    // A delivery meanwhile is answered as ever.
    let started = std::time::Instant::now();
    let answer = app.post(&fixture("mob-issueUpdated-state-building.json")).await;
    assert_eq!(answer.status(), 200);
    let scheme = if tls { "https" } else { "http" };
    eprintln!("{scheme}: a delivery beside 1,040 hostile connections answered in {:?}", started.elapsed());

    // The gateway closes what sends nothing, answers a stalled body 408, and drops the slow heads.
    let mut buf = [0u8; 512];
    let read = tokio::time::timeout(std::time::Duration::from_secs(7), idle[0].read(&mut buf));
    let closed = read.await.expect("an idle connection closed within the header timeout + 5 s").unwrap_or(0);
    assert_eq!(closed, 0, "an idle connection is closed after the header timeout");
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), stalled[0].read(&mut buf));
    let n = read.await.expect("a stalled body answered within 10 s").unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"), "{}", String::from_utf8_lossy(&buf[..n]));
    let cut = tokio::time::timeout(std::time::Duration::from_secs(10), slow.remove(0)).await;
    assert!(cut.expect("a slow head cut off within 10 s").unwrap(), "a head sent a byte every half second is cut off");
    assert_eq!(
        read_everything(app.store().as_ref()).await.iter().filter(|e| e.event_type == "WebhookReceived").count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authorization_header_sent_twice_is_refused_even_when_one_is_right() {
    let app = spawn_app().await;
    let right = format!("Bearer {}", app.admin_token);
    let one = app.client.get(app.url("/api/v1/builds")).header("authorization", &right).send().await.unwrap();
    assert_eq!(one.status(), 200);
    let twice = app
        .client
        .get(app.url("/api/v1/builds"))
        .header("authorization", &right)
        .header("authorization", "Bearer guess")
        .send()
        .await
        .unwrap();
    assert_eq!(twice.status(), 401);
}

/// Reads one answer (head, and a body of `content-length` bytes) from a kept-alive connection.
async fn read_answer(stream: &mut Box<dyn Io>) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await.expect("the connection is open");
        assert!(n > 0, "the connection was closed before its answer: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if got.len() >= end + 4 + length {
                return text;
            }
        }
    }
}

/// A load balancer keeps its connections to the gateway open between deliveries: the gateway
/// lets a silent one go only after `idle_timeout_seconds` (not the header timeout), and cleanly,
/// so the balancer, whose own idle timeout is shorter, is always the one to close it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_alive_connection_outlives_the_header_timeout_and_closes_cleanly_when_idle() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), vec![ios_trigger()]);
    config.server.header_timeout_seconds = 1;
    config.server.idle_timeout_seconds = 3;
    let files = crate::pki::pki().write_leaf(dir.path(), "gateway", 30);
    config.server.tls_cert_file = Some(files.cert_file);
    config.server.tls_key_file = Some(files.key_file);
    let app = spawn_with(dir, config).await;

    let mut stream = connect(app.addr, true).await;
    let ask = b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n";
    stream.write_all(ask).await.unwrap();
    assert!(read_answer(&mut stream).await.starts_with("HTTP/1.1 200"));
    // Silent for longer than the header timeout, as between two deliveries: still open.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    stream.write_all(ask).await.unwrap();
    assert!(read_answer(&mut stream).await.starts_with("HTTP/1.1 200"), "a kept-alive connection is reused");

    // Then left silent: closed after the idle timeout, with a close_notify (a read ends, no error).
    let silent = std::time::Instant::now();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(&mut buf)).await;
    let read = read.expect("an idle connection is closed within the idle timeout + 7 s");
    assert_eq!(read.expect("closed cleanly (close_notify), not cut"), 0);
    assert!(
        silent.elapsed() >= std::time::Duration::from_secs(2),
        "closed after {:?}, before the idle timeout",
        silent.elapsed()
    );
}

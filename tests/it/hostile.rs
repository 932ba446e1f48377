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
    // Refused with a wrong token, the body still arriving: the 401 is read too.
    let head = format!(
        "POST /youtrack/webhook HTTP/1.1\r\nHost: gateway\r\nX-YouTrack-Token: wrong\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        512 << 10
    );
    let answer = exchange(app.addr, &head, &vec![b' '; 512 << 10]).await.expect("an answer, not a reset");
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert_eq!(read_everything(app.store().as_ref()).await.len(), 0, "nothing was recorded");
}

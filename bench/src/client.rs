//! The benchmark's load generator: HTTP/1.1 keep-alive over one TCP connection per client, with
//! requests written from a template and answers read with `httparse`. It does the least a client
//! can do, so that the two cores go to the gateway being measured rather than to the generator.

use std::net::SocketAddr;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One keep-alive connection posting JSON bodies to one path.
pub struct LoadClient {
    stream: TcpStream,
    head: String,
    request: Vec<u8>,
    buffer: Vec<u8>,
}

impl LoadClient {
    /// Connects; every request carries the given extra headers (`Name: value` lines).
    pub async fn connect(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr).await.with_context(|| format!("cannot connect to {addr}"))?;
        stream.set_nodelay(true)?;
        let mut head = format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n");
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        Ok(LoadClient { stream, head, request: Vec::with_capacity(4096), buffer: Vec::with_capacity(4096) })
    }

    /// Posts one body and reads the whole answer; returns its status.
    pub async fn post(&mut self, body: &[u8]) -> anyhow::Result<u16> {
        self.request.clear();
        self.request.extend_from_slice(self.head.as_bytes());
        self.request.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
        self.request.extend_from_slice(body);
        self.stream.write_all(&self.request).await?;
        self.buffer.clear();
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut response = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(head_len) = response.parse(&self.buffer)? {
                let status = response.code.unwrap_or(0);
                let length = response
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse::<usize>().ok())
                    .context("answer without Content-Length")?;
                while self.buffer.len() < head_len + length {
                    self.read_more().await?;
                }
                if self.buffer.len() > head_len + length {
                    bail!("the server answered more than was asked");
                }
                return Ok(status);
            }
            self.read_more().await?;
        }
    }

    async fn read_more(&mut self) -> anyhow::Result<()> {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("the server closed the connection");
        }
        self.buffer.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

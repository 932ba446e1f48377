//! A lingering close: a request refused before its body was read takes in what is still arriving
//! (up to a bound) before it is answered. A connection closed with bytes it has not read is reset,
//! and the reset can overtake the answer: the client would see the connection drop instead of the
//! refusal.

use axum::body::Body;

/// The most of a refused node upload's body (an artifact, a log) taken in before the refusal is
/// answered; past it the connection is closed.
pub const NODE_UPLOAD: usize = 1 << 20;

/// Longest a refused body is read for.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(2);

/// Reads and discards `body` up to `bound` bytes or [`DRAIN_TIME`]; whether it all arrived.
pub async fn drain(body: Body, bound: usize) -> bool {
    let mut body = body.into_data_stream();
    let mut taken = 0usize;
    let reading = async {
        use futures_util::StreamExt;
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(chunk) => {
                    taken += chunk.len();
                    if taken > bound {
                        return false;
                    }
                }
                Err(_) => return false,
            }
        }
        true
    };
    tokio::time::timeout(DRAIN_TIME, reading).await.unwrap_or(false)
}

//! `console`: each build's timeline lines on the gateway's standard output, for the demo and for
//! debugging a configuration next to real sinks.

use std::io::Write;

use super::exchange::Answer;
use super::Message;
use meshgate_domain::notify::chat_line;

pub struct Console {
    /// Put before every line when several sinks share the terminal (the sink's name).
    pub prefix: Option<String>,
}

impl Console {
    pub async fn send(&self, message: &Message<'_>) -> Answer {
        let line = chat_line(message.facts, message.milestone);
        let line = match &self.prefix {
            Some(prefix) => format!("[{prefix}] {line}"),
            None => line,
        };
        let mut out = std::io::stdout().lock();
        match writeln!(out, "{line}").and_then(|()| out.flush()) {
            Ok(()) => Answer::written("written to standard output"),
            Err(e) => Answer::unsent(format!("cannot write to standard output: {e}")),
        }
    }
}

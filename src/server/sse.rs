//! Server-sent events over a chunked HTTP response: `data: {json}\n\n` per event and
//! `data: [DONE]` at the end, as OpenAI streams. A failed write means the client is gone.

use serde_json::Value as Json;

use super::http::{end_chunks, start_chunked, write_chunk, Conn};

/// An open event stream on a connection.
pub struct EventStream<'c> {
    conn: &'c mut Conn,
    failed: bool,
}

impl<'c> EventStream<'c> {
    /// Sends the `200 text/event-stream` head; `None` when the client is already gone.
    pub fn start(conn: &'c mut Conn) -> Option<Self> {
        let extra = [("Cache-Control", "no-cache".to_string())];
        start_chunked(conn.writer(), 200, "text/event-stream; charset=utf-8", &extra).ok()?;
        Some(Self { conn, failed: false })
    }

    /// Sends one `data:` event; false once the client is gone.
    pub fn send(&mut self, data: &Json) -> bool {
        self.raw(&format!("data: {data}\n\n"))
    }

    fn raw(&mut self, event: &str) -> bool {
        if !self.failed && write_chunk(self.conn.writer(), event.as_bytes()).is_err() {
            self.failed = true;
        }
        !self.failed
    }

    /// Sends `data: [DONE]` and ends the body; false when the client is gone.
    pub fn done(mut self) -> bool {
        self.raw("data: [DONE]\n\n") && end_chunks(self.conn.writer()).is_ok()
    }

    /// True when the client closed the connection (or a write failed).
    pub fn client_gone(&mut self) -> bool {
        self.failed || self.conn.client_gone()
    }
}

//! A small HTTP/1.1 server side on `std::net`: one request at a time per connection,
//! keep-alive, `Content-Length` bodies with a size limit, deadlines against slow clients,
//! fixed-length and chunked responses, and a cheap check for a client that went away.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::error::ApiError;

/// Limits applied while reading a request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request line + headers.
    pub max_header_bytes: usize,
    /// Largest body (413 beyond, without reading it).
    pub max_body_bytes: usize,
    /// How long a kept-alive connection may stay silent before it is closed.
    pub idle_timeout: Duration,
    /// How long the whole request (headers and body) may take once its first byte came.
    pub request_timeout: Duration,
}

/// One parsed request.
#[derive(Debug, Clone)]
pub struct Request {
    /// `GET`, `POST`...
    pub method: String,
    /// The path, without the query string.
    pub path: String,
    /// Header names (lower-case) and values.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// False when the client asked to close (or spoke HTTP/1.0 without keep-alive).
    pub keep_alive: bool,
}

impl Request {
    /// The first value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// Why no request could be read.
#[derive(Debug)]
pub enum ReadError {
    /// The connection closed or stayed idle between requests: close quietly.
    Closed,
    /// The request is malformed, too large or too slow: answer this, then close.
    Reject(ApiError),
}

/// A client connection: a buffered reader and a writer on the same socket.
pub struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    /// Wraps an accepted socket.
    pub fn new(stream: TcpStream, write_timeout: Duration) -> io::Result<Self> {
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(write_timeout))?;
        let writer = stream.try_clone()?;
        Ok(Self {
            reader: BufReader::with_capacity(16 * 1024, stream),
            writer,
        })
    }

    /// The writing half.
    pub fn writer(&mut self) -> &mut TcpStream {
        &mut self.writer
    }

    /// True when the peer closed the connection (or it failed). Data the client already
    /// sent (a pipelined request) means it is still there.
    pub fn client_gone(&mut self) -> bool {
        if !self.reader.buffer().is_empty() {
            return false;
        }
        let socket = self.reader.get_ref();
        if socket.set_nonblocking(true).is_err() {
            return true;
        }
        let mut byte = [0u8; 1];
        let gone = match socket.peek(&mut byte) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => false,
            Err(_) => true,
        };
        socket.set_nonblocking(false).is_err() || gone
    }

    /// Half-closes the writing side, then reads and drops what the client still sends, for
    /// at most `time` and `limit` bytes (a lingering close).
    pub fn drain(&mut self, time: Duration, limit: usize) {
        let _ = self.writer.shutdown(std::net::Shutdown::Write);
        let deadline = Instant::now() + time;
        let mut scratch = [0u8; 16 * 1024];
        let mut total = 0;
        while total < limit && self.until(deadline).is_ok() {
            match self.reader.read(&mut scratch) {
                Ok(0) => return,
                Ok(n) => total += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    /// Sets the socket's read timeout to what is left until `deadline`.
    fn until(&mut self, deadline: Instant) -> Result<(), ReadError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timeout());
        }
        self.reader
            .get_ref()
            .set_read_timeout(Some(left))
            .map_err(|_| ReadError::Closed)
    }

    /// Reads the next request. Waits up to `idle_timeout` for its first byte, then up to
    /// `request_timeout` for the rest.
    pub fn read_request(&mut self, limits: &Limits) -> Result<Request, ReadError> {
        self.reader
            .get_ref()
            .set_read_timeout(Some(limits.idle_timeout))
            .map_err(|_| ReadError::Closed)?;
        match self.reader.fill_buf() {
            Ok([]) | Err(_) => return Err(ReadError::Closed),
            Ok(_) => {}
        }
        let deadline = Instant::now() + limits.request_timeout;
        let mut head = Vec::new();
        loop {
            self.until(deadline)?;
            let available = match self.reader.fill_buf() {
                Ok([]) => return Err(ReadError::Closed),
                Ok(b) => b,
                Err(e) if is_timeout(&e) => return Err(timeout()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Err(ReadError::Closed),
            };
            let end = find_head_end(&head, available);
            let take = end.unwrap_or(available.len());
            head.extend_from_slice(&available[..take]);
            self.reader.consume(take);
            if head.len() > limits.max_header_bytes {
                return Err(ReadError::Reject(ApiError::status(
                    431,
                    "The request headers are too large",
                )));
            }
            if end.is_some() {
                break;
            }
        }
        let mut request = parse_head(&head).map_err(ReadError::Reject)?;
        if request
            .header("transfer-encoding")
            .is_some_and(|t| !t.eq_ignore_ascii_case("identity"))
        {
            return Err(ReadError::Reject(ApiError::status(
                411,
                "Chunked request bodies are not supported: send Content-Length",
            )));
        }
        let length = match request.header("content-length") {
            None => 0,
            Some(v) => v
                .trim()
                .parse::<usize>()
                .map_err(|_| ReadError::Reject(ApiError::status(400, "Invalid Content-Length header")))?,
        };
        if length > limits.max_body_bytes {
            return Err(ReadError::Reject(ApiError::too_large(limits.max_body_bytes)));
        }
        let expects_continue = request
            .header("expect")
            .is_some_and(|e| e.eq_ignore_ascii_case("100-continue"));
        if expects_continue && length > 0 {
            // curl waits for this before sending larger bodies.
            if self.writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").is_err() {
                return Err(ReadError::Closed);
            }
        }
        let mut body = vec![0u8; length];
        let mut filled = 0;
        while filled < length {
            self.until(deadline)?;
            match self.reader.read(&mut body[filled..]) {
                Ok(0) => return Err(ReadError::Closed),
                Ok(n) => filled += n,
                Err(e) if is_timeout(&e) => return Err(timeout()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(ReadError::Closed),
            }
        }
        request.body = body;
        Ok(request)
    }
}

fn timeout() -> ReadError {
    ReadError::Reject(ApiError::status(408, "The request took too long to arrive"))
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

/// Where the blank line ending the head is, as a count of bytes of `new` to take.
fn find_head_end(head: &[u8], new: &[u8]) -> Option<usize> {
    // Look at the last 3 bytes already read plus the new ones.
    let tail_start = head.len().saturating_sub(3);
    let tail = &head[tail_start..];
    let mut window: Vec<u8> = Vec::with_capacity(tail.len() + new.len());
    window.extend_from_slice(tail);
    window.extend_from_slice(new);
    let find = |pat: &[u8]| window.windows(pat.len()).position(|w| w == pat).map(|p| p + pat.len());
    let end = match (find(b"\r\n\r\n"), find(b"\n\n")) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b)?,
    };
    Some(end.saturating_sub(tail.len()).max(1).min(new.len()))
}

fn parse_head(head: &[u8]) -> Result<Request, ApiError> {
    let bad = |m: &str| ApiError::status(400, format!("Malformed HTTP request: {m}"));
    let text = std::str::from_utf8(head).map_err(|_| bad("the head is not UTF-8"))?;
    let mut lines = text.split('\n').map(|l| l.trim_end_matches('\r'));
    let start = lines.next().unwrap_or_default();
    let mut parts = start.split(' ').filter(|p| !p.is_empty());
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad("the request line is not `METHOD PATH HTTP/1.x`"));
    };
    if !version.starts_with("HTTP/1.") || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(bad("unsupported method or version"));
    }
    let mut headers = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').ok_or_else(|| bad("a header line has no `:`"))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let connection = headers
        .iter()
        .find(|(n, _)| n == "connection")
        .map(|(_, v)| v.to_ascii_lowercase());
    let keep_alive = match connection.as_deref() {
        Some(c) if c.contains("close") => false,
        Some(c) if c.contains("keep-alive") => true,
        _ => version == "HTTP/1.1",
    };
    let path = target.split('?').next().unwrap_or_default().to_string();
    Ok(Request {
        method: method.to_string(),
        path,
        headers,
        body: Vec::new(),
        keep_alive,
    })
}

/// The reason phrase of a status.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

fn head(status: u16, content_type: &str, extra: &[(&str, String)], keep_alive: bool) -> String {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nConnection: {}\r\n",
        reason(status),
        if keep_alive { "keep-alive" } else { "close" }
    );
    for (name, value) in extra {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head
}

/// Writes a 200 JSON response; false when the client is gone.
pub fn write_json(w: &mut impl Write, body: &serde_json::Value, keep_alive: bool) -> bool {
    write_response(w, 200, "application/json", &[], body.to_string().as_bytes(), keep_alive).is_ok()
}

/// Writes a whole response with a `Content-Length`.
pub fn write_response(
    w: &mut impl Write,
    status: u16,
    content_type: &str,
    extra: &[(&str, String)],
    body: &[u8],
    keep_alive: bool,
) -> io::Result<()> {
    let mut out = head(status, content_type, extra, keep_alive).into_bytes();
    out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(body);
    w.write_all(&out)?;
    w.flush()
}

/// Writes a JSON error response (with `Retry-After` when the error has one).
pub fn write_error(w: &mut impl Write, error: &ApiError, keep_alive: bool) -> io::Result<()> {
    let mut extra = Vec::new();
    if let Some(secs) = error.retry_after {
        extra.push(("Retry-After", secs.to_string()));
    }
    let body = error.body().to_string();
    write_response(w, error.status, "application/json", &extra, body.as_bytes(), keep_alive)
}

/// Starts a chunked response (the body follows as [`write_chunk`]s, then [`end_chunks`]).
pub fn start_chunked(w: &mut impl Write, status: u16, content_type: &str, extra: &[(&str, String)]) -> io::Result<()> {
    let mut out = head(status, content_type, extra, true);
    out.push_str("Transfer-Encoding: chunked\r\n\r\n");
    w.write_all(out.as_bytes())?;
    w.flush()
}

/// Writes one chunk of a chunked body (nothing for empty data).
pub fn write_chunk(w: &mut impl Write, data: &[u8]) -> io::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    w.write_all(&out)?;
    w.flush()
}

/// Ends a chunked body.
pub fn end_chunks(w: &mut impl Write) -> io::Result<()> {
    w.write_all(b"0\r\n\r\n")?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_heads_and_finds_their_end() {
        let r = parse_head(b"POST /v1/models?x=1 HTTP/1.1\r\nContent-Length: 2\r\nConnection: close\r\n\r\n").unwrap();
        assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/v1/models"));
        assert_eq!(r.header("content-length"), Some("2"));
        assert!(!r.keep_alive);
        assert!(parse_head(b"GET / HTTP/1.0\r\n\r\n").is_ok_and(|r| !r.keep_alive));
        assert!(parse_head(b"garbage\r\n\r\n").is_err());
        assert!(parse_head(b"GET / HTTP/1.1\r\nno colon\r\n\r\n").is_err());
        assert_eq!(find_head_end(b"", b"GET / HTTP/1.1\r\n\r\nBODY"), Some(18));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n\r", b"\nBODY"), Some(1));
        assert_eq!(find_head_end(b"", b"GET / HTTP/1.1\r\n"), None);
    }

    #[test]
    fn chunks_are_framed() {
        let mut out = Vec::new();
        write_chunk(&mut out, b"hello").unwrap();
        write_chunk(&mut out, b"").unwrap();
        end_chunks(&mut out).unwrap();
        assert_eq!(out, b"5\r\nhello\r\n0\r\n\r\n");
    }
}

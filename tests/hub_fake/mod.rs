//! A fake Hugging Face hub on 127.0.0.1 (random port) for the hub tests: it speaks the
//! endpoints the client uses (`HEAD`/`GET /{owner}/{name}/resolve/{revision}/{file}` with
//! `X-Repo-Commit`, `ETag`, `X-Linked-Etag`, `X-Linked-Size`, `X-Error-Code`, an LFS redirect
//! to `/cdn/{sha256}`, and `Range`), logs every request, and injects faults on demand.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use sha2::{Digest, Sha256};

/// The token the fake hub accepts for gated repos.
pub const GOOD_TOKEN: &str = "hf_good";

/// One file of a fake repo.
#[derive(Debug, Clone)]
pub struct FakeFile {
    pub name: String,
    pub data: Vec<u8>,
    /// Served like an LFS file: sha256 etag, redirect to the CDN.
    pub lfs: bool,
}

impl FakeFile {
    pub fn new(name: &str, data: impl Into<Vec<u8>>, lfs: bool) -> Self {
        Self {
            name: name.to_string(),
            data: data.into(),
            lfs,
        }
    }

    pub fn sha256(&self) -> String {
        format!("{:x}", Sha256::digest(&self.data))
    }

    /// The blob name: sha256 for LFS files, a 40-hex "git" hash otherwise.
    pub fn etag(&self) -> String {
        if self.lfs {
            self.sha256()
        } else {
            // git's blob hash, as the hub's ETag of a small file.
            use sha1::Digest as _;
            let mut h = sha1::Sha1::new();
            h.update(format!("blob {}\0", self.data.len()).as_bytes());
            h.update(&self.data);
            format!("{:x}", h.finalize())
        }
    }
}

/// A fake model repo.
#[derive(Debug, Clone)]
pub struct FakeRepo {
    pub id: String,
    pub commit: String,
    /// Branches and tags: (name, commit). The commit itself always resolves.
    pub refs: Vec<(String, String)>,
    pub files: Vec<FakeFile>,
    pub gated: bool,
}

impl FakeRepo {
    pub fn new(id: &str, commit_seed: u8, files: Vec<FakeFile>) -> Self {
        let commit = format!("{:02x}", commit_seed).repeat(20);
        Self {
            id: id.to_string(),
            refs: vec![("main".into(), commit.clone())],
            commit,
            files,
            gated: false,
        }
    }

    pub fn file(&self, name: &str) -> &FakeFile {
        self.files.iter().find(|f| f.name == name).unwrap()
    }

    fn resolve(&self, revision: &str) -> Option<&str> {
        if revision == self.commit {
            return Some(&self.commit);
        }
        self.refs.iter().find(|(r, _)| r == revision).map(|(_, c)| c.as_str())
    }
}

/// Switchable faults. Each applies to the requests that arrive while it is set.
#[derive(Debug, Default)]
pub struct Faults {
    /// The next requests are answered with these statuses (and `Retry-After` seconds).
    pub statuses: VecDeque<(u16, Option<u64>)>,
    /// Accept connections, read the request, never answer.
    pub stall: bool,
    /// The next GET body of this file is cut after this many bytes.
    pub truncate_once: Option<(String, usize)>,
    /// The next GET body of this file stalls after this many bytes.
    pub stall_body_once: Option<(String, usize)>,
    /// GET bodies of this file have one byte flipped.
    pub corrupt: Option<String>,
    /// HEAD answers carry this etag instead of the real one.
    pub etag_override: Option<String>,
    /// LFS redirects point at this host (e.g. `localhost`: another origin, same server).
    pub cdn_host: Option<String>,
    /// Renamed repos: requests for the old id get a relative 307 to the new one.
    pub renamed: Vec<(String, String)>,
    /// GET bodies of this file come without Content-Length and never end (junk after it).
    pub endless: Option<String>,
    /// GET bodies of this file come one byte every 50 ms.
    pub trickle: Option<String>,
}

/// One logged request.
#[derive(Debug, Clone)]
pub struct Logged {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
    pub auth: Option<String>,
}

#[derive(Default)]
struct State {
    repos: Vec<FakeRepo>,
    faults: Faults,
    log: Vec<Logged>,
}

/// The running fake hub; stops when dropped.
pub struct FakeHub {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl FakeHub {
    pub fn start(repos: Vec<FakeRepo>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            repos,
            ..Default::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (state.clone(), stop.clone());
        let accept = thread::spawn(move || {
            for stream in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let (s, st) = (s.clone(), st.clone());
                thread::spawn(move || handle(stream, &s, &st, addr));
            }
        });
        Self {
            addr,
            state,
            stop,
            accept: Some(accept),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn faults(&self, f: impl FnOnce(&mut Faults)) {
        f(&mut self.state.lock().unwrap().faults);
    }

    pub fn repos(&self, f: impl FnOnce(&mut Vec<FakeRepo>)) {
        f(&mut self.state.lock().unwrap().repos);
    }

    pub fn log(&self) -> Vec<Logged> {
        self.state.lock().unwrap().log.clone()
    }

    /// The `Range` header of every request for LFS content (the `/cdn/` redirect target), in order.
    pub fn cdn_ranges(&self) -> Vec<Option<String>> {
        self.log()
            .into_iter()
            .filter(|l| l.path.starts_with("/cdn/"))
            .map(|l| l.range)
            .collect()
    }

    /// Requests with this method whose path contains `needle`.
    pub fn count(&self, method: &str, needle: &str) -> usize {
        self.log()
            .iter()
            .filter(|l| l.method == method && l.path.contains(needle))
            .count()
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn read_request(stream: &mut TcpStream) -> Option<Request> {
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).ok()? == 0 || buf.len() > 16384 {
            return None;
        }
        buf.push(byte[0]);
    }
    let text = String::from_utf8(buf).ok()?;
    let mut lines = text.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, path) = (first.next()?.to_string(), first.next()?.to_string());
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Some(Request { method, path, headers })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Content-Length to announce (defaults to the body length).
    length: Option<usize>,
    /// Send only this many body bytes, then close or stall.
    cut: Option<(usize, bool)>,
    /// No Content-Length, then the body followed by junk until the client goes.
    endless: bool,
    /// One byte every 50 ms.
    trickle: bool,
}

impl Reply {
    fn new(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            length: None,
            cut: None,
            endless: false,
            trickle: false,
        }
    }
    fn header(mut self, k: &str, v: impl ToString) -> Self {
        self.headers.push((k.to_string(), v.to_string()));
        self
    }
    fn error(status: u16, code: Option<&str>, message: &str) -> Self {
        let mut r = Reply::new(status).header("X-Error-Message", message);
        if let Some(code) = code {
            r = r.header("X-Error-Code", code);
        }
        r.body = format!("{{\"error\": \"{message}\"}}").into_bytes();
        r
    }
}

fn handle(mut stream: TcpStream, state: &Mutex<State>, stop: &AtomicBool, addr: SocketAddr) {
    let Some(req) = read_request(&mut stream) else {
        return;
    };
    let reply = {
        let mut st = state.lock().unwrap();
        st.log.push(Logged {
            method: req.method.clone(),
            path: req.path.clone(),
            range: req.header("Range").map(str::to_string),
            auth: req.header("Authorization").map(str::to_string),
        });
        if st.faults.stall {
            None
        } else if let Some((status, after)) = st.faults.statuses.pop_front() {
            let mut r = Reply::error(status, None, "injected fault");
            if let Some(s) = after {
                r = r.header("Retry-After", s);
            }
            Some(r)
        } else {
            Some(route(&req, &mut st, addr))
        }
    };
    let Some(reply) = reply else {
        return wait_for_stop(stop);
    };
    send(&mut stream, &req, reply, stop);
}

fn wait_for_stop(stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        thread::sleep(Duration::from_millis(20));
    }
}

fn send(stream: &mut TcpStream, req: &Request, reply: Reply, stop: &AtomicBool) {
    let length = reply.length.unwrap_or(reply.body.len());
    let mut head = match reply.endless && req.method == "GET" {
        true => format!("HTTP/1.1 {} X\r\nConnection: close\r\n", reply.status),
        false => format!(
            "HTTP/1.1 {} X\r\nContent-Length: {length}\r\nConnection: close\r\n",
            reply.status
        ),
    };
    for (k, v) in &reply.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes());
    if req.method == "HEAD" {
        return;
    }
    if reply.endless {
        // The body, then junk for as long as the client reads (at most 1 GiB).
        let _ = stream.write_all(&reply.body);
        let junk = vec![0x5au8; 1 << 16];
        for _ in 0..(1 << 14) {
            if stop.load(Ordering::SeqCst) || stream.write_all(&junk).is_err() {
                return;
            }
        }
        return;
    }
    if reply.trickle {
        for byte in &reply.body {
            if stop.load(Ordering::SeqCst) || stream.write_all(std::slice::from_ref(byte)).is_err() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        return;
    }
    match reply.cut {
        None => {
            let _ = stream.write_all(&reply.body);
        }
        Some((n, stall)) => {
            let _ = stream.write_all(&reply.body[..n.min(reply.body.len())]);
            let _ = stream.flush();
            if stall {
                wait_for_stop(stop);
            }
        }
    }
    let _ = stream.flush();
    let _ = stream.shutdown(Shutdown::Write);
}

/// `GET /api/models/{owner}/{name}/revision/{revision}`: the repo's files as `siblings`.
fn listing(rest: &str, st: &State) -> Reply {
    let parts: Vec<&str> = rest.splitn(4, '/').collect();
    let repo = match parts.as_slice() {
        [owner, name, "revision", _] => st.repos.iter().find(|r| r.id == format!("{owner}/{name}")),
        _ => None,
    };
    let Some(repo) = repo else {
        return Reply::error(404, Some("RepoNotFound"), "Repository not found");
    };
    let siblings: Vec<String> = repo
        .files
        .iter()
        .map(|f| format!("{{\"rfilename\": \"{}\"}}", f.name))
        .collect();
    let mut r = Reply::new(200);
    r.body = format!("{{\"id\": \"{}\", \"siblings\": [{}]}}", repo.id, siblings.join(", ")).into_bytes();
    r
}

fn route(req: &Request, st: &mut State, addr: SocketAddr) -> Reply {
    if let Some(sha) = req.path.strip_prefix("/cdn/") {
        let file = st
            .repos
            .iter()
            .flat_map(|r| &r.files)
            .find(|f| f.lfs && f.sha256() == sha)
            .cloned();
        return match file {
            Some(f) => body(req, &f, &mut st.faults),
            None => Reply::error(404, None, "no such blob"),
        };
    }
    if let Some(rest) = req.path.strip_prefix("/api/models/") {
        return listing(rest, st);
    }
    let parts: Vec<&str> = req.path.trim_start_matches('/').splitn(5, '/').collect();
    if parts.len() != 5 || parts[2] != "resolve" {
        return Reply::error(404, None, "not found");
    }
    let (id, revision, name) = (
        format!("{}/{}", parts[0], parts[1]),
        percent_decode(parts[3]),
        percent_decode(parts[4]),
    );
    if let Some((_, new)) = st.faults.renamed.iter().find(|(old, _)| *old == id) {
        let rest = req.path.trim_start_matches('/').splitn(3, '/').nth(2).unwrap_or("");
        return Reply::new(307).header("Location", format!("/{new}/{rest}"));
    }
    let auth = req.header("Authorization");
    let Some(repo) = st.repos.iter().find(|r| r.id == id).cloned() else {
        let status = if auth.is_some() { 404 } else { 401 };
        return Reply::error(status, Some("RepoNotFound"), "Repository not found");
    };
    if repo.gated && auth != Some(&format!("Bearer {GOOD_TOKEN}")) {
        let status = if auth.is_some() { 403 } else { 401 };
        let msg = format!("Access to model {id} is restricted. You must have access to it and be authenticated to access it. Please log in.");
        return Reply::error(status, Some("GatedRepo"), &msg);
    }
    let Some(commit) = repo.resolve(&revision).map(str::to_string) else {
        return Reply::error(404, Some("RevisionNotFound"), "Invalid rev id");
    };
    let Some(file) = repo.files.iter().find(|f| f.name == name).cloned() else {
        return Reply::error(404, Some("EntryNotFound"), "Entry not found").header("X-Repo-Commit", &commit);
    };
    let etag = st.faults.etag_override.clone().unwrap_or_else(|| file.etag());
    if file.lfs {
        let cdn = match &st.faults.cdn_host {
            Some(host) => format!("{host}:{}", addr.port()),
            None => addr.to_string(),
        };
        let mut r = Reply::new(302)
            .header("Location", format!("http://{cdn}/cdn/{}", file.sha256()))
            .header("X-Repo-Commit", &commit)
            .header("X-Linked-Etag", format!("\"{etag}\""))
            .header("X-Linked-Size", file.data.len())
            .header("ETag", "\"0123456789abcdef0123456789abcdef01234567\"");
        r.length = Some(0);
        return r;
    }
    let mut r = body(req, &file, &mut st.faults);
    if r.status < 300 {
        r.headers.retain(|(k, _)| k != "ETag");
        r = r.header("ETag", format!("\"{etag}\"")).header("X-Repo-Commit", &commit);
    }
    r
}

/// The file's bytes, honouring `Range: bytes=N-` and the body faults.
fn body(req: &Request, file: &FakeFile, faults: &mut Faults) -> Reply {
    let mut data = file.data.clone();
    if faults.corrupt.as_deref() == Some(&file.name) && req.method == "GET" {
        let i = data.len() / 2;
        data[i] ^= 0x55;
    }
    let len = data.len();
    let start = req
        .header("Range")
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.trim_end_matches('-').parse::<usize>().ok());
    let mut reply = match start {
        Some(s) if s >= len => return Reply::error(416, None, "range not satisfiable"),
        Some(s) => Reply::new(206).header("Content-Range", format!("bytes {s}-{}/{len}", len - 1)),
        None => Reply::new(200),
    };
    reply.body = data[start.unwrap_or(0)..].to_vec();
    reply = reply.header("ETag", format!("\"{}\"", file.etag()));
    if req.method == "GET" {
        reply.endless = faults.endless.as_deref() == Some(&file.name);
        reply.trickle = faults.trickle.as_deref() == Some(&file.name);
        if let Some((_, n)) = faults.truncate_once.take_if(|(f, _)| *f == file.name) {
            reply.cut = Some((n, false));
        } else if let Some((_, n)) = faults.stall_body_once.take_if(|(f, _)| *f == file.name) {
            reply.cut = Some((n, true));
        }
    }
    reply
}

/// Deterministic pseudo-random bytes.
pub fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 33) as u8
        })
        .collect()
}

/// Every entry under `dir`, relative, sorted (symlinks not followed).
pub fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            out.push(p.strip_prefix(dir).unwrap().to_path_buf());
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

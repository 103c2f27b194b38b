//! `llama32 serve` on a tiny fixture as a child process, for the tests that talk to it over
//! sockets: started on a free port, its stderr log collected, killed on drop.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use super::fixture;

/// A running server; killed on drop.
pub struct Server {
    pub child: Child,
    /// `host:port` it listens on.
    pub addr: String,
    /// Its stderr lines before the ready line.
    pub startup: Vec<String>,
    /// Its stderr lines after the ready line.
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Serves `tied-bf16-llama3` as model `tiny` in f32, with `extra` arguments.
pub fn start(extra: &[&str]) -> Server {
    start_model(&fixture("tied-bf16-llama3"), extra)
}

/// Serves the checkpoint in `dir` as model `tiny` in f32, with `extra` arguments.
pub fn start_model(dir: &std::path::Path, extra: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_llama32"))
        .args(["serve", "--model", dir.to_str().unwrap(), "--served-model-name", "tiny"])
        .args(["--dtype", "f32", "--port", "0"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut startup = Vec::new();
    let addr = loop {
        let line = lines.next().expect("the server exited before it was ready").unwrap();
        if let Some(addr) = line.strip_prefix("ready on http://") {
            break addr.to_string();
        }
        startup.push(line);
    };
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    Server {
        child,
        addr,
        startup,
        log,
    }
}

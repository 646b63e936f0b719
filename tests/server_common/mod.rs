//! Starts `rg-server` on a free loopback port and talks HTTP/1.1 to it over a plain
//! `TcpStream` (one request per connection, `Connection: close`): status, headers, bodies
//! (Content-Length or chunked), and server-sent events read as they arrive. Every wait is
//! bounded.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const TINY_Q8: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/models/tiny-fortunes-q8_0.gguf"
);
pub const TINY_F32: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/tiny-fortunes-f32.gguf");

/// `max_tokens` of a stream meant to outlive the test that reads it (greedy on the tiny
/// model never meets EOS; even alone on a fast core it runs for minutes). A server that
/// accepts it needs [`ENDLESS_ARGS`].
pub const ENDLESS: u64 = 1_000_000;
pub const ENDLESS_ARGS: [&str; 2] = ["--max-tokens", "1000000"];

/// Longest wait for anything (start-up, a response, an exit).
pub const PATIENCE: Duration = Duration::from_secs(60);

pub struct Server {
    child: Child,
    pub addr: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// `rg-server -m TINY_Q8 --port 0 -t 2 ARGS...`, ready (`/health` 200).
    pub fn start(args: &[&str]) -> Server {
        Server::start_model(TINY_Q8, args)
    }

    pub fn start_model(model: &str, args: &[&str]) -> Server {
        let server = Server::spawn(model, args);
        server.wait_healthy();
        server
    }

    /// Started and bound, not necessarily loaded.
    pub fn spawn(model: &str, args: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_rg-server"))
            .args(["-m", model, "--port", "0", "-t", "2"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start rg-server");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(addr) = line.strip_prefix("rg-server listening on http://") {
                        let _ = tx.send(addr.to_string());
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        let addr = match rx.recv_timeout(PATIENCE) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!("no 'listening' line; log: {:?}", log.lock().unwrap());
            }
        };
        Server { child, addr, log }
    }

    pub fn wait_healthy(&self) {
        let t0 = Instant::now();
        loop {
            if let Ok(r) = self.try_request("GET", "/health", &[], None) {
                if r.status == 200 {
                    return;
                }
            }
            assert!(t0.elapsed() < PATIENCE, "not healthy: {:?}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Waits (bounded) for a log line containing `what`.
    pub fn wait_log(&self, what: &str) -> String {
        let t0 = Instant::now();
        loop {
            if let Some(l) = self.log().into_iter().find(|l| l.contains(what)) {
                return l;
            }
            assert!(
                t0.elapsed() < PATIENCE,
                "no log line with {what:?}: {:?}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn connect(&self) -> std::io::Result<TcpStream> {
        let s = TcpStream::connect(&self.addr)?;
        s.set_read_timeout(Some(PATIENCE))?;
        s.set_write_timeout(Some(PATIENCE))?;
        Ok(s)
    }

    pub fn try_request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> std::io::Result<Response> {
        let mut s = self.connect()?;
        send_request(&mut s, &self.addr, method, path, headers, body)?;
        read_response(BufReader::new(s))
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Response {
        self.try_request(method, path, headers, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}; log: {:?}", self.log()))
    }

    pub fn get(&self, path: &str) -> Response {
        self.request("GET", path, &[], None)
    }

    pub fn post(&self, path: &str, body: &Value) -> Response {
        self.request("POST", path, &[], Some(body.to_string().as_bytes()))
    }

    /// POST that must answer 200; returns the JSON.
    pub fn post_ok(&self, path: &str, body: &Value) -> Value {
        let r = self.post(path, body);
        assert_eq!(r.status, 200, "{path} {body}: {}", r.text());
        r.json()
    }

    /// A POST whose answer is read as server-sent events, as they come.
    pub fn stream(&self, path: &str, body: &Value) -> EventStream {
        let mut s = self.connect().expect("connect");
        let bytes = body.to_string();
        send_request(
            &mut s,
            &self.addr,
            "POST",
            path,
            &[],
            Some(bytes.as_bytes()),
        )
        .unwrap();
        let mut reader = BufReader::new(s);
        let (status, headers) = read_head(&mut reader).unwrap();
        EventStream {
            status,
            headers,
            body: BodyReader::new(reader, None, true),
        }
    }

    /// `/metrics` as name (with labels) -> value.
    pub fn metrics(&self) -> HashMap<String, f64> {
        metrics_of(&self.get("/metrics").text())
    }

    pub fn metric(&self, name: &str) -> f64 {
        *self
            .metrics()
            .get(name)
            .unwrap_or_else(|| panic!("no metric {name}"))
    }

    /// Polls (bounded) until `metric` equals `want`.
    pub fn wait_metric(&self, name: &str, want: f64) {
        let t0 = Instant::now();
        loop {
            let got = self.metric(name);
            if got == want {
                return;
            }
            assert!(t0.elapsed() < PATIENCE, "{name} stays {got}, want {want}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -TERM failed");
    }

    /// Waits (bounded) for the process to exit.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let t0 = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                t0.elapsed() < PATIENCE,
                "rg-server did not exit; log: {:?}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn metrics_of(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn send_request(
    s: &mut TcpStream,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> std::io::Result<()> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    if let Some(b) = body {
        s.write_all(b)?;
    }
    s.flush()
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        header_of(&self.headers, name)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// Asserts an OpenAI error object with `status`, whose `param` is `param`; returns the
    /// message.
    pub fn expect_error(&self, status: u16, param: Option<&str>) -> String {
        assert_eq!(self.status, status, "{}", self.text());
        assert_eq!(self.header("content-type"), Some("application/json"));
        let v = self.json();
        let e = &v["error"];
        for field in ["message", "type", "param", "code"] {
            assert!(e.get(field).is_some(), "error without '{field}': {v}");
        }
        let message = e["message"]
            .as_str()
            .expect("message is a string")
            .to_string();
        assert!(!message.is_empty());
        assert!(e["type"].as_str().is_some_and(|t| !t.is_empty()));
        assert_eq!(e["param"].as_str(), param, "{v}");
        message
    }
}

fn header_of<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn read_head<R: BufRead>(r: &mut R) -> std::io::Result<(u16, Vec<(String, String)>)> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            break;
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    Ok((status, headers))
}

fn read_response<R: BufRead>(mut r: R) -> std::io::Result<Response> {
    let (status, headers) = read_head(&mut r)?;
    let chunked = header_of(&headers, "transfer-encoding").is_some_and(|v| v.contains("chunked"));
    let length = header_of(&headers, "content-length").and_then(|v| v.parse().ok());
    let mut body = Vec::new();
    BodyReader::new(r, length, chunked).read_to_end(&mut body)?;
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// A response body: Content-Length, chunked, or up to the end of the connection.
pub struct BodyReader<R> {
    inner: R,
    chunked: bool,
    /// Bytes left in the current chunk (or the whole body).
    left: Option<usize>,
    done: bool,
}

impl<R: BufRead> BodyReader<R> {
    fn new(inner: R, length: Option<usize>, chunked: bool) -> BodyReader<R> {
        BodyReader {
            inner,
            chunked,
            left: if chunked { Some(0) } else { length },
            done: false,
        }
    }
}

impl<R: BufRead> Read for BodyReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        if self.chunked && self.left == Some(0) {
            let mut line = String::new();
            self.inner.read_line(&mut line)?;
            if line.trim().is_empty() {
                // The CRLF after the previous chunk.
                line.clear();
                self.inner.read_line(&mut line)?;
            }
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| std::io::Error::other(format!("bad chunk size {line:?}")))?;
            if size == 0 {
                self.done = true;
                return Ok(0);
            }
            self.left = Some(size);
        }
        let want = match self.left {
            Some(0) if !self.chunked => {
                self.done = true;
                return Ok(0);
            }
            Some(n) => n.min(buf.len()),
            None => buf.len(),
        };
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            self.done = true;
        }
        if let Some(left) = &mut self.left {
            *left -= n;
        }
        Ok(n)
    }
}

/// Server-sent events of a streamed response.
pub struct EventStream {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    body: BodyReader<BufReader<TcpStream>>,
}

impl EventStream {
    pub fn header(&self, name: &str) -> Option<&str> {
        header_of(&self.headers, name)
    }

    /// The `data:` payload of the next event; `None` at the end of the stream.
    pub fn next_data(&mut self) -> Option<String> {
        let mut event = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            match self.body.read(&mut byte) {
                Ok(0) | Err(_) => {
                    return None;
                }
                Ok(_) => event.push(byte[0]),
            }
            if event.ends_with(b"\n\n") {
                let text = String::from_utf8(event).expect("UTF-8 event");
                let data: Vec<&str> = text
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(str::trim_start)
                    .collect();
                return Some(data.join("\n"));
            }
        }
    }

    /// Every remaining payload, up to the end of the stream.
    pub fn rest(&mut self) -> Vec<String> {
        std::iter::from_fn(|| self.next_data()).collect()
    }

    /// The body read so far as raw text (for errors answered without streaming).
    pub fn body_text(&mut self) -> String {
        let mut s = String::new();
        let _ = self.body.read_to_string(&mut s);
        s
    }
}

/// A chat request with one user message.
pub fn chat(content: &str, extra: Value) -> Value {
    let mut v = serde_json::json!({
        "model": "tiny",
        "messages": [{"role": "user", "content": content}],
    });
    merge(&mut v, extra);
    v
}

/// `base` with the fields of `extra` (an object) set.
pub fn merge(base: &mut Value, extra: Value) {
    if let Value::Object(m) = extra {
        for (k, v) in m {
            base[k] = v;
        }
    }
}

/// The text of choice `i` of a chat or completion answer.
pub fn answer_text(v: &Value, i: usize) -> String {
    let c = &v["choices"][i];
    c["message"]["content"]
        .as_str()
        .or_else(|| c["text"].as_str())
        .unwrap_or_else(|| panic!("no text in {v}"))
        .to_string()
}

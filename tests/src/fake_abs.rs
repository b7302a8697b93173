//! A real HTTP server that plays ABS for the tests: it answers the attack-list poll with
//! whatever the test scripts (a snapshot, an error status, garbage, a slow or huge answer),
//! accepts detection reports, and records every request.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the next polls get.
#[derive(Clone, Debug)]
pub enum Answer {
    /// 200 with this JSON body.
    Json(String),
    /// This status, empty body.
    Status(u16),
    /// 200 with this (broken) body.
    Garbage(String),
    /// 200 after this delay.
    Slow(Duration, String),
    /// 200 with a body of this many bytes of JSON-ish filler.
    Huge(usize),
}

/// A request the fake received.
#[derive(Clone, Debug)]
pub struct Seen {
    /// Request line.
    pub line: String,
    /// Lower-cased header lines.
    pub headers: Vec<String>,
    /// Body.
    pub body: String,
}

/// The running fake.
pub struct FakeAbs {
    /// Where it listens.
    pub addr: SocketAddr,
    answer: Arc<Mutex<Answer>>,
    /// Requests received.
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl FakeAbs {
    /// Starts on `listener` with an empty attack list.
    pub fn start(listener: TcpListener) -> Self {
        let addr = listener.local_addr().expect("bound");
        let answer = Arc::new(Mutex::new(Answer::Json(r#"{"attacklist":{}}"#.into())));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (a, s) = (answer.clone(), seen.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (a, s) = (a.clone(), s.clone());
                std::thread::spawn(move || {
                    let _ = handle(stream, &a, &s);
                });
            }
        });
        Self { addr, answer, seen }
    }

    /// Scripts the answer to the next polls.
    pub fn set(&self, a: Answer) {
        if let Ok(mut x) = self.answer.lock() {
            *x = a;
        }
    }

    /// Requests whose request line contains `what`.
    pub fn requests(&self, what: &str) -> Vec<Seen> {
        self.seen
            .lock()
            .map(|v| {
                v.iter()
                    .filter(|s| s.line.contains(what))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn handle(
    stream: TcpStream,
    answer: &Mutex<Answer>,
    seen: &Mutex<Vec<Seen>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            reader.read_line(&mut h)?;
            if h.trim().is_empty() {
                break;
            }
            headers.push(h.trim().to_ascii_lowercase());
        }
        let len: usize = headers
            .iter()
            .find_map(|h| {
                h.strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap_or(0))
            })
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        reader.read_exact(&mut body)?;
        if let Ok(mut s) = seen.lock() {
            s.push(Seen {
                line: line.trim().to_owned(),
                headers,
                body: String::from_utf8_lossy(&body).into_owned(),
            });
        }
        let a = if line.starts_with("POST") {
            Answer::Json("{}".into())
        } else {
            answer
                .lock()
                .map(|a| a.clone())
                .unwrap_or(Answer::Status(500))
        };
        let (status, body) = match a {
            Answer::Json(b) | Answer::Garbage(b) => (200, b),
            Answer::Status(c) => (c, String::new()),
            Answer::Slow(d, b) => {
                std::thread::sleep(d);
                (200, b)
            }
            Answer::Huge(n) => (
                200,
                format!("{{\"attacklist\":{{\"ips\":[\"{}\"]}}}}", "9".repeat(n)),
            ),
        };
        let resp = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        out.write_all(resp.as_bytes())?;
    }
}

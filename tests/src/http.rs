//! A minimal HTTP/1.1 client for the admin API tests: one request per
//! connection (`Connection: close`), every wait bounded by [`crate::WAIT`].
//! Hand-written (like `raw`) so the tests need no HTTP client crate and can
//! send what a well-behaved client would not.

use std::net::SocketAddr;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::within;

/// A response, read whole.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the body when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response {} is not JSON ({e}): {:?}",
                self.status,
                self.text()
            )
        })
    }
}

/// Sends one request; `body` is sent as `application/json` when given.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Response {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if let Some(b) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    } else if method != "GET" && method != "HEAD" {
        head.push_str("Content-Length: 0\r\n");
    }
    head.push_str("\r\n");
    let what = format!("HTTP {method} {path}");
    within(&what, async {
        let mut s = TcpStream::connect(addr)
            .await
            .expect("connect to admin API");
        s.write_all(head.as_bytes()).await.expect("write request");
        if let Some(b) = body {
            s.write_all(b.as_bytes()).await.expect("write body");
        }
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.expect("read response");
        parse(&raw)
    })
    .await
}

fn parse(raw: &[u8]) -> Response {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of response head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_string()))
        .collect();
    let rest = &raw[split + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    Response {
        status,
        headers,
        body,
    }
}

fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    // Each round consumes one chunk: bounded by the input length.
    while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&rest[..eol]).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .unwrap_or_else(|_| panic!("bad chunk size {size_text:?}"));
        if size == 0 {
            break;
        }
        let start = eol + 2;
        out.extend_from_slice(&rest[start..start + size]);
        rest = &rest[start + size + 2..];
    }
    out
}

/// The admin API of one broker, with its token.
#[derive(Debug, Clone)]
pub struct Admin {
    pub addr: SocketAddr,
    pub token: String,
}

impl Admin {
    /// The admin API of a harness broker.
    pub fn of(b: &crate::TestBroker) -> Admin {
        Admin {
            addr: b.admin_addr.expect("the admin API is on"),
            token: b.admin_token.clone().expect("admin token"),
        }
    }

    /// The admin API of a broker process (its printed token, or the one in
    /// `MIDGE_ADMIN_TOKEN`).
    pub fn of_process(p: &crate::process::BrokerProcess) -> Admin {
        let token = p
            .admin_token
            .clone()
            .or_else(|| std::env::var("MIDGE_ADMIN_TOKEN").ok())
            .expect("an admin token: printed by the broker or in MIDGE_ADMIN_TOKEN");
        Admin {
            addr: p.admin_addr,
            token,
        }
    }

    pub async fn call(&self, method: &str, path: &str, body: Option<&str>) -> Response {
        request(self.addr, method, path, Some(&self.token), body).await
    }

    /// GET, asserting 200; the JSON body.
    pub async fn get(&self, path: &str) -> Value {
        let r = self.call("GET", path, None).await;
        assert_eq!(r.status, 200, "GET {path}: {}", r.text());
        r.json()
    }

    /// A request with a JSON body: (status, JSON body or Null when empty).
    pub async fn send(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let text = body.map(|b| b.to_string());
        let r = self.call(method, path, text.as_deref()).await;
        let v = if r.body.is_empty() {
            Value::Null
        } else {
            r.json()
        };
        (r.status, v)
    }
}

/// `/` and the other reserved characters percent-encoded, for a topic in a path.
pub fn encode_segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Prometheus text -> (name with labels as written, value), comments left out.
pub fn samples(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (k, v) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad line {l:?}"));
            let v: f64 = v.parse().unwrap_or_else(|_| panic!("bad value in {l:?}"));
            (k.to_string(), v)
        })
        .collect()
}

/// The value of sample `key` (e.g. `midge_publish_received_total{qos="1"}`).
pub fn sample(text: &str, key: &str) -> f64 {
    samples(text)
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no sample {key} in:\n{text}"))
}

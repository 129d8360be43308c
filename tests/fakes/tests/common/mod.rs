//! Helpers shared by the socket tests: a fake on a free port and raw HTTP/1.1 requests.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use llmesh_fakes::{Fake, start};

/// How long a request that should complete may take.
pub const LONG: Duration = Duration::from_secs(3);

pub async fn fake() -> SocketAddr {
    start(
        "127.0.0.1:0".parse().unwrap(),
        Fake::new(Duration::from_secs(5)),
    )
    .await
    .unwrap()
}

/// One HTTP/1.1 request on a fresh connection; returns the raw response read until the server
/// closes, or whatever arrived within `wait`, and whether the read ended in an error.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
    wait: Duration,
) -> (String, bool) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: fake\r\nconnection: close\r\ncontent-type: application/json\r\n{headers}content-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let mut broken = false;
    let _ = tokio::time::timeout(wait, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(_) => {
                    broken = true;
                    break;
                }
            }
        }
    })
    .await;
    (String::from_utf8_lossy(&out).into_owned(), broken)
}

pub fn status(resp: &str) -> u16 {
    resp[9..12].parse().unwrap()
}

pub fn header<'a>(resp: &'a str, name: &str) -> Option<&'a str> {
    resp.split("\r\n\r\n").next()?.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The body of a raw response (after the headers), de-chunked when it is chunked.
pub fn body(resp: &str) -> String {
    let raw = resp.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let chunked = header(resp, "transfer-encoding").is_some_and(|v| v.contains("chunked"));
    if !chunked {
        return raw.to_string();
    }
    let mut out = String::new();
    let mut rest = raw;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            out.push_str(&after[..after.len().min(n)]);
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].strip_prefix("\r\n").unwrap_or(&after[n..]);
    }
    out
}

/// The JSON body of a raw response.
pub fn json(resp: &str) -> Value {
    serde_json::from_str(&body(resp)).unwrap_or_else(|e| panic!("{e}: {resp}"))
}

/// POSTs `body` and returns the raw response.
pub async fn post(addr: SocketAddr, path: &str, headers: &str, body: &str) -> String {
    send(addr, "POST", path, headers, body, LONG).await.0
}

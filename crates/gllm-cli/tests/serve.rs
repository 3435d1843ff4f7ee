//! `gllm serve` as a user starts it: the binary on port 0 (the built-in tiny
//! model, so it starts in a moment), its address read from the log, plain
//! HTTP/1.1 requests over TCP.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// One request with `connection: close`; returns the status line and body.
fn http(addr: &str, method: &str, path: &str, body: &str) -> (String, String) {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    write!(
        tcp,
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reply = String::new();
    tcp.read_to_string(&mut reply).unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn gllm_serve_listens_on_the_port_it_prints_and_answers() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gllm"))
        .args(["serve", "--port", "0", "--parallel", "2", "--queue", "3", "--ctx", "128"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let child = Killed(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let addr = loop {
        let line = rx.recv_timeout(Duration::from_secs(120)).unwrap_or_else(|e| panic!("{e}: {seen:#?}"));
        if let Some(rest) = line.split_once(" on http://").map(|(_, r)| r) {
            break rest.split('/').next().unwrap().to_string();
        }
        seen.push(line);
    };
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    assert!(seen.iter().any(|l| l.contains("2 slot(s) ×") && l.contains("queue 3")), "{seen:#?}");

    let (status, body) = http(&addr, "GET", "/health", "");
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    assert_eq!(body, r#"{"busy":0,"queue_capacity":3,"queued":0,"slots":2,"status":"ok"}"#);
    // A fixed seed: with OpenAI's default temperature (1) and a fresh seed
    // per request, the tiny model sometimes samples the end token first.
    let request = r#"{"prompt": "hello", "max_tokens": 3, "seed": 11}"#;
    let (status, body) = http(&addr, "POST", "/v1/completions", request);
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    assert!(
        body.contains(r#""object":"text_completion""#) && body.contains(r#""completion_tokens":3"#),
        "{body}"
    );
    let (status, body) = http(&addr, "POST", "/v1/completions", r#"{"prompt": "hello", "max_tokens": 500}"#);
    assert_eq!(status, "HTTP/1.1 400 Bad Request", "{body}");
    assert!(body.contains("context_length_exceeded"), "{body}");
    // One log line per request (the slot logs just after answering, so the
    // order may vary).
    let lines: Vec<String> = (0..2).map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap()).collect();
    assert!(lines.iter().all(|l| l.starts_with("cmpl-")), "{lines:#?}");
    assert!(lines.iter().any(|l| l.contains("completion=3") && l.contains("ttft=")), "{lines:#?}");
    assert!(lines.iter().any(|l| l.contains("400 invalid_request_error")), "{lines:#?}");
    drop(child);
}

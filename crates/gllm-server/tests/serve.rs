//! `gllm serve` with SmolLM2-135M-Instruct on a free loopback port: the
//! official `openai` Python client, bad requests, stop strings and seeds, a
//! full queue, and clients that go away.

mod common;

use common::{client, error_of, turn, SseReader, TestServer};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn the_openai_python_client_gets_paris_streamed_and_not() {
    let _t = turn();
    let s = TestServer::start(2, 8, 512);
    let script = common::root().join("tools/openai_check.py");
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string());
    let out = Command::new(&python)
        .arg(&script)
        .arg(s.url("/v1"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e} (scripts/test.sh installs `openai`)"));
    let log = s.log().join("\n");
    assert!(
        out.status.success(),
        "{} failed:\n{}{}\nserver log:\n{log}",
        script.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{}", String::from_utf8_lossy(&out.stdout).trim());
    println!("{log}");
    // One line per request: 2 chat + 2 completions generated, 1 rejected.
    let lines = s.log();
    assert_eq!(lines.len(), 5, "{log}");
    let generated: Vec<&String> = lines.iter().filter(|l| l.contains("ttft=")).collect();
    assert_eq!(generated.len(), 4, "{log}");
    for l in generated {
        for field in ["prompt=", "completion=", "decode=", "tok/s", "finish="] {
            assert!(l.contains(field), "`{field}` missing from the log line {l}");
        }
    }
}

/// What is wrong, path, body, status, `param`, `code`, words of the message.
type Case<'a> = (&'a str, &'a str, String, u16, Option<&'a str>, Option<&'a str>, &'a str);

#[test]
fn bad_requests_get_openai_style_errors_and_the_server_stays_up() {
    let _t = turn();
    let s = TestServer::start(1, 4, 256);
    let chat = "/v1/chat/completions";
    let long = "lorem ipsum ".repeat(300);
    let user = |content: &str| json!({"messages": [{"role": "user", "content": content}]});
    let with = |mut v: Value, k: &str, x: Value| {
        v[k] = x;
        v.to_string()
    };
    let cases: Vec<Case> = vec![
        ("malformed JSON", chat, r#"{"messages": [{"role": "user""#.into(), 400, None, None, "not valid JSON"),
        ("not an object", chat, "[1, 2]".into(), 400, None, None, "must be a JSON object"),
        ("max_tokens of the wrong type", chat, with(user("hi"), "max_tokens", json!("ten")), 400, Some("max_tokens"), None, "invalid type"),
        ("negative max_tokens", chat, with(user("hi"), "max_tokens", json!(-5)), 400, Some("max_tokens"), None, "invalid value"),
        ("temperature of the wrong type", chat, with(user("hi"), "temperature", json!("hot")), 400, Some("temperature"), None, "invalid type"),
        ("content of the wrong type", chat, json!({"messages": [{"role": "user", "content": 42}]}).to_string(), 400, Some("messages[0].content"), None, "expected a string or an array of content parts"),
        ("stop of the wrong type", chat, with(user("hi"), "stop", json!(7)), 400, Some("stop"), None, "expected a string or an array of strings"),
        ("stream of the wrong type", chat, with(user("hi"), "stream", json!("yes")), 400, Some("stream"), None, "invalid type"),
        ("empty messages", chat, json!({"messages": []}).to_string(), 400, Some("messages"), None, "must not be empty"),
        ("no messages", chat, json!({"model": "x"}).to_string(), 400, Some("messages"), None, "missing field"),
        ("no prompt", "/v1/completions", json!({"model": "x"}).to_string(), 400, Some("prompt"), None, "missing field"),
        ("max_tokens beyond the context", chat, with(user("hi"), "max_tokens", json!(5000)), 400, Some("max_tokens"), Some("context_length_exceeded"), "context holds 256"),
        ("max_tokens 0", chat, with(user("hi"), "max_tokens", json!(0)), 400, Some("max_tokens"), None, "at least 1"),
        ("a chat prompt longer than the context", chat, user(&long).to_string(), 400, Some("messages"), Some("context_length_exceeded"), "context holds 256"),
        ("a prompt longer than the context", "/v1/completions", json!({"prompt": long}).to_string(), 400, Some("prompt"), Some("context_length_exceeded"), "no room"),
        ("a token outside the vocabulary", "/v1/completions", json!({"prompt": [1, 99999999]}).to_string(), 400, Some("prompt"), None, "outside the vocabulary"),
        ("n = 2", chat, with(user("hi"), "n", json!(2)), 400, Some("n"), None, "one choice"),
        ("temperature 3", chat, with(user("hi"), "temperature", json!(3.0)), 400, Some("temperature"), None, "between 0 and 2"),
        ("five stop strings", chat, with(user("hi"), "stop", json!(["a", "b", "c", "d", "e"])), 400, Some("stop"), None, "at most 4"),
        ("an image part", chat, json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}).to_string(), 400, Some("messages[0].content[0]"), None, "only text"),
        ("an unknown URL", "/v1/embeddings", "{}".into(), 404, None, Some("unknown_url"), "unknown request URL"),
    ];
    for (what, path, body, status, param, code, words) in &cases {
        let (got, v) = s.post(path, body);
        assert_eq!(got, *status, "{what}: {v}");
        let e = error_of(&v);
        assert_eq!(e["param"].as_str(), *param, "{what}: {v}");
        assert_eq!(e["code"].as_str(), *code, "{what}: {v}");
        let message = e["message"].as_str().unwrap();
        assert!(message.contains(words), "{what}: `{words}` not in {message:?}");
        if *status == 400 {
            assert_eq!(e["type"], "invalid_request_error", "{what}: {v}");
        }
        println!("{what}: {got} {v}");
    }
    let r = client().get(s.url("/v1/chat/completions")).send().unwrap();
    assert_eq!(r.status().as_u16(), 405);
    assert_eq!(error_of(&r.json().unwrap())["code"], "method_not_allowed");
    let huge = user(&"x".repeat(3 << 20)).to_string();
    let (status, v) = s.post(chat, &huge);
    assert_eq!(status, 413, "{v}");
    assert_eq!(error_of(&v)["type"], "invalid_request_error");
    println!("a 3 MB body: {status} {v}");
    // Only requests to the two endpoints are logged: one line each.
    let posts = cases.iter().filter(|c| c.3 == 400).count() + 1;
    assert_eq!(s.log().len(), posts, "{:#?}", s.log());
    // Still up, and nothing was left queued or generating.
    let (status, v) = s.post("/v1/completions", r#"{"prompt": "Hello", "max_tokens": 3, "temperature": 0}"#);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 3);
    assert_eq!(s.health(), json!({"status": "ok", "slots": 1, "busy": 0, "queued": 0, "queue_capacity": 4}));
}

#[test]
fn stop_strings_end_the_answer_and_seeds_repeat_it() {
    let _t = turn();
    let s = TestServer::start(1, 4, 512);
    let ask = |extra: Value| {
        let mut body = json!({
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "temperature": 0,
            "max_tokens": 40,
        });
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (status, v) = s.post("/v1/chat/completions", &body.to_string());
        assert_eq!(status, 200, "{v}");
        let c = &v["choices"][0];
        (
            c["message"]["content"].as_str().unwrap().to_string(),
            c["finish_reason"].as_str().unwrap().to_string(),
        )
    };
    let (full, _) = ask(json!({}));
    let at = full.find("Paris").unwrap_or_else(|| panic!("no Paris in {full:?}"));
    let (cut, finish) = ask(json!({"stop": ["Paris", "zzz"]}));
    assert_eq!((cut.as_str(), finish.as_str()), (&full[..at], "stop"));
    let (cut, finish) = ask(json!({"stop": "aris"}));
    assert_eq!((cut.as_str(), finish.as_str()), (&full[..at + 1], "stop"));

    let sample = |seed: u64| {
        let body = json!({"prompt": "Once upon a time", "temperature": 1.0, "top_p": 0.95, "max_tokens": 16, "seed": seed});
        let (status, v) = s.post("/v1/completions", &body.to_string());
        assert_eq!(status, 200, "{v}");
        v["choices"][0]["text"].as_str().unwrap().to_string()
    };
    let a = sample(7);
    assert_eq!(a, sample(7), "the same seed gave different text");
    assert_ne!(a, sample(8), "seeds 7 and 8 gave the same 16 sampled tokens");
}

/// A long streamed completion that keeps going (through end-of-turn tokens).
fn long_stream(s: &TestServer, max_tokens: usize) -> SseReader {
    let body = json!({
        "prompt": "Write a long story about a lighthouse keeper.",
        "max_tokens": max_tokens,
        "ignore_eos": true,
        "temperature": 0,
        "stream": true,
    });
    let r = client().post(s.url("/v1/completions")).json(&body).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    SseReader::new(r)
}

#[test]
fn a_full_queue_gets_503_with_a_json_error() {
    let _t = turn();
    let s = TestServer::start(1, 1, 1024);
    let mut running = long_stream(&s, 900);
    let first: Value = serde_json::from_str(&running.next_data().unwrap()).unwrap();
    assert_eq!(first["object"], "text_completion");
    s.wait_health(Duration::from_secs(10), |h| h["busy"] == 1);
    let url = s.url("/v1/completions");
    let queued = std::thread::spawn(move || {
        // Seeded: at the default temperature a fresh seed can sample the end token first.
        let r =
            client().post(url).json(&json!({"prompt": "Hi", "max_tokens": 2, "seed": 11})).send().unwrap();
        (r.status().as_u16(), r.json::<Value>().unwrap())
    });
    s.wait_health(Duration::from_secs(10), |h| h["queued"] == 1);
    let r = client()
        .post(s.url("/v1/completions"))
        .json(&json!({"prompt": "Hi", "max_tokens": 2}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let v: Value = r.json().unwrap();
    let e = error_of(&v);
    assert_eq!((e["type"].as_str(), e["code"].as_str()), (Some("server_error"), Some("queue_full")), "{v}");
    println!("503: {v}");
    // The running stream goes away: the queued request is served.
    drop(running);
    let (status, v) = queued.join().unwrap();
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 2);
}

#[test]
fn a_client_that_disconnects_mid_stream_frees_its_slot_at_once() {
    let _t = turn();
    let s = TestServer::start(1, 4, 1024);
    let mut stream = long_stream(&s, 900);
    let mut texts = 0;
    while texts < 5 {
        let d = stream.next_data().unwrap();
        let v: Value = serde_json::from_str(&d).unwrap();
        assert!(v["choices"][0]["finish_reason"].is_null(), "{v}");
        texts += 1;
    }
    drop(stream);
    let gone = Instant::now();
    let freed = s.wait_health(Duration::from_secs(5), |h| h["busy"] == 0);
    let (status, v) = s.post(
        "/v1/completions",
        r#"{"prompt": "The capital of France is", "max_tokens": 4, "temperature": 0}"#,
    );
    let served = gone.elapsed();
    assert_eq!(status, 200, "{v}");
    println!("slot free {freed:?} after the disconnect; follow-up served {served:?} after it");
    // The abandoned stream had ~895 tokens to go: tens of seconds here.
    assert!(served < Duration::from_secs(5), "the follow-up took {served:?}");
    let log = s.log();
    assert!(log.iter().any(|l| l.contains("cancelled: the client went away")), "{log:#?}");
}

#[test]
fn a_client_that_disconnects_while_waiting_for_a_whole_answer_frees_its_slot() {
    let _t = turn();
    let s = TestServer::start(1, 4, 1024);
    // Raw TCP, so that closing the socket is certain.
    let body = json!({"prompt": "Write a long story.", "max_tokens": 900, "ignore_eos": true}).to_string();
    let mut tcp = std::net::TcpStream::connect(s.addr).unwrap();
    write!(
        tcp,
        "POST /v1/completions HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        s.addr,
        body.len()
    )
    .unwrap();
    s.wait_health(Duration::from_secs(10), |h| h["busy"] == 1);
    std::thread::sleep(Duration::from_millis(300));
    drop(tcp);
    let freed = s.wait_health(Duration::from_secs(5), |h| h["busy"] == 0);
    println!("slot free {freed:?} after the disconnect");
    assert!(s.log().iter().any(|l| l.contains("cancelled: the client went away")), "{:#?}", s.log());
}

#[test]
fn models_and_health_describe_the_server() {
    let _t = turn();
    let s = TestServer::start(3, 5, 300);
    let v: Value = client().get(s.url("/v1/models")).send().unwrap().json().unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], "SmolLM2-135M-Instruct.Q4_1");
    assert_eq!(v["data"][0]["context_length"], 300);
    assert_eq!(s.health(), json!({"status": "ok", "slots": 3, "busy": 0, "queued": 0, "queue_capacity": 5}));
    // Three slots on this machine's cores: each engine gets cores / 3, at least 1.
    let cores = gllm_kernels::device::DeviceProfile::detect().unwrap().physical_cores;
    assert_eq!(s.server.threads_per_slot(), (cores / 3).max(1));
    // A raw request with no content type still works (curl -d sends a form type).
    let mut tcp = std::net::TcpStream::connect(s.addr).unwrap();
    let body = r#"{"prompt": "Hi", "max_tokens": 1}"#;
    write!(
        tcp,
        "POST /v1/completions HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reply = String::new();
    tcp.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
}

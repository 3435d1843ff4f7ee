//! A bounded load test on loopback: `CLIENTS` concurrent clients each send
//! `REQUESTS` short completions (half of the clients stream), one after the
//! other. Every answer must be a well-formed completion or a 503 with a JSON
//! error; the server must stay up and log one line per request. Prints
//! throughput and latency percentiles.
//!
//! Defaults fit CI on two cores (64 × 4, 4 tokens each, `--parallel 2`);
//! the environment changes them, e.g. for the README's numbers:
//!
//! ```sh
//! GLLM_LOAD_PARALLEL=4 cargo test --release -p gllm-server --test load -- --nocapture
//! ```

mod common;

use common::{client, error_of, SseReader, TestServer};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

enum Answer {
    Done { latency: Duration, tokens: usize },
    Busy { latency: Duration },
}

/// One request; panics on anything but a well-formed completion or a 503.
fn request(url: &str, c: &reqwest::blocking::Client, stream: bool, max_tokens: usize) -> Answer {
    let body = json!({
        "model": "any",
        "prompt": "The capital of France is",
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
        "stream_options": {"include_usage": true},
    });
    let t0 = Instant::now();
    let r = c.post(url).json(&body).send().expect("the server answers");
    match r.status().as_u16() {
        503 => {
            let v: Value = r.json().expect("a JSON error body");
            assert_eq!(error_of(&v)["code"], "queue_full", "{v}");
            Answer::Busy { latency: t0.elapsed() }
        }
        200 if stream => {
            assert_eq!(r.headers()["content-type"], "text/event-stream");
            let mut events = SseReader::new(r);
            let (mut text, mut finish, mut usage) = (String::new(), None, None);
            loop {
                let d = events.next_data().expect("the stream ends with [DONE]");
                if d == "[DONE]" {
                    break;
                }
                let v: Value = serde_json::from_str(&d).unwrap_or_else(|e| panic!("{e}: {d}"));
                assert_eq!(v["object"], "text_completion", "{v}");
                assert!(finish.is_none() || !v["usage"].is_null(), "a text chunk after the finish: {v}");
                if let Some(c) = v["choices"].as_array().and_then(|c| c.first()) {
                    text.push_str(c["text"].as_str().expect("text in every chunk"));
                    if let Some(f) = c["finish_reason"].as_str() {
                        finish = Some(f.to_string());
                    }
                }
                if !v["usage"].is_null() {
                    usage = Some(v["usage"].clone());
                }
            }
            assert!(events.next_data().is_none(), "events after [DONE]");
            let usage = usage.expect("a usage chunk");
            let tokens = usage["completion_tokens"].as_u64().unwrap() as usize;
            assert!(finish.is_some() && (1..=max_tokens).contains(&tokens), "{finish:?} {usage}");
            assert!(!text.is_empty());
            Answer::Done { latency: t0.elapsed(), tokens }
        }
        200 => {
            let v: Value = r.json().expect("a JSON body");
            let c = &v["choices"][0];
            assert!(c["text"].as_str().is_some_and(|t| !t.is_empty()), "{v}");
            assert!(c["finish_reason"].is_string(), "{v}");
            let tokens = v["usage"]["completion_tokens"].as_u64().unwrap() as usize;
            assert!((1..=max_tokens).contains(&tokens), "{v}");
            Answer::Done { latency: t0.elapsed(), tokens }
        }
        s => panic!("status {s}: {}", r.text().unwrap_or_default()),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

#[test]
fn many_clients_get_answers_or_503s_and_the_server_stays_up() {
    let parallel = env("GLLM_LOAD_PARALLEL", 2);
    let queue = env("GLLM_LOAD_QUEUE", 16);
    let clients = env("GLLM_LOAD_CLIENTS", 64);
    let requests = env("GLLM_LOAD_REQUESTS", 4);
    let max_tokens = env("GLLM_LOAD_MAX_TOKENS", 4);
    let s = TestServer::start(parallel, queue, 256);
    let url = Arc::new(s.url("/v1/completions"));
    // Warm-up: compiles the prefill for this prompt length once.
    assert!(matches!(request(&url, &client(), false, 1), Answer::Done { .. }));
    let warm_log = s.log().len();

    let t0 = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|i| {
            let url = url.clone();
            std::thread::spawn(move || {
                let c = client();
                (0..requests).map(|_| request(&url, &c, i % 2 == 1, max_tokens)).collect::<Vec<Answer>>()
            })
        })
        .collect();
    let answers: Vec<Answer> = threads.into_iter().flat_map(|t| t.join().expect("a client failed")).collect();
    let wall = t0.elapsed();

    let mut done: Vec<Duration> = Vec::new();
    let mut busy: Vec<Duration> = Vec::new();
    let mut tokens = 0;
    for a in &answers {
        match a {
            Answer::Done { latency, tokens: n } => {
                done.push(*latency);
                tokens += n;
            }
            Answer::Busy { latency } => busy.push(*latency),
        }
    }
    done.sort();
    busy.sort();
    let secs = wall.as_secs_f64();
    println!(
        "load: --parallel {parallel} (queue {queue}, {} thread(s) per slot), {clients} clients × {requests} requests, max_tokens {max_tokens}",
        s.server.threads_per_slot()
    );
    println!(
        "  {} completed, {} got 503 in {secs:.2} s: {:.2} completions/s, {:.1} generated tokens/s",
        done.len(),
        busy.len(),
        done.len() as f64 / secs,
        tokens as f64 / secs
    );
    println!(
        "  latency of completed requests: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; of 503s: p50 {:.1} ms, p99 {:.1} ms",
        percentile(&done, 50.0),
        percentile(&done, 99.0),
        percentile(&done, 100.0),
        percentile(&busy, 50.0),
        percentile(&busy, 99.0)
    );
    assert_eq!(answers.len(), clients * requests);
    assert!(done.len() >= parallel, "only {} completed", done.len());
    // The server is up, goes idle (a slot logs and counts itself free just
    // after its client has the answer), and logged one line per request.
    s.wait_health(Duration::from_secs(5), |h| h["busy"] == 0 && h["queued"] == 0);
    let log = s.log();
    assert_eq!(log.len() - warm_log, clients * requests, "one log line per request");
    let sample: Vec<&String> = log.iter().rev().filter(|l| l.contains("ttft=")).take(2).collect();
    println!("  log sample:\n    {}", sample.iter().map(|l| l.as_str()).collect::<Vec<_>>().join("\n    "));
}

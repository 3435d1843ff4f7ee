//! Test support: SmolLM2 loaded once, servers on free loopback ports with
//! their log captured, and small HTTP helpers.

#![allow(dead_code)]

use gllm::engine::EngineOptions;
use gllm::model::{LoadOptions, Model, WeightStorage};
use gllm_kernels::device::DeviceProfile;
use gllm_server::{Server, ServerOptions};
use serde_json::Value;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// SmolLM2 with f32 weights: these tests check the server (answers,
/// stop strings, seeds, streaming) on the question the f32 path answers
/// ("Paris"); with int8 activations (the default, as in llama.cpp) this
/// 135M Q4_1 model answers it in French nonsense — see docs/quantised.md.
pub fn model() -> Arc<Model> {
    static MODEL: OnceLock<Arc<Model>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let path = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
            assert!(path.exists(), "{} is missing: run scripts/fetch-smollm2.sh", path.display());
            let f32_weights = LoadOptions { weights: WeightStorage::F32 };
            Arc::new(Model::load_with(&path, &f32_weights, &|_, _| {}).unwrap_or_else(|e| panic!("{e}")))
        })
        .clone()
}

/// The tests take turns: the machine has two cores, and timings (a freed
/// slot, a full queue) mean nothing while another test's server computes.
pub fn turn() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A server on 127.0.0.1, port 0, on its own runtime thread; stopped on drop.
pub struct TestServer {
    pub addr: SocketAddr,
    pub server: Server,
    log: Arc<Mutex<Vec<String>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    pub fn start(parallel: usize, queue: usize, context: usize) -> TestServer {
        let mut opts = EngineOptions::new(DeviceProfile::detect().unwrap());
        opts.max_context = context;
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        let options = ServerOptions {
            parallel,
            queue,
            model_id: None,
            log: Some(Arc::new(move |line: &str| sink.lock().unwrap().push(line.to_string()))),
        };
        let server = Server::new(model(), opts, options).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (bound, addr) = std::sync::mpsc::channel();
        let s = server.clone();
        let thread = std::thread::spawn(move || {
            let rt =
                tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                bound.send(listener.local_addr().unwrap()).unwrap();
                s.serve(listener, async move {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
            });
        });
        let addr = addr.recv().unwrap();
        TestServer { addr, server, log, stop: Some(stop), thread: Some(thread) }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    pub fn health(&self) -> Value {
        reqwest::blocking::get(self.url("/health")).unwrap().json().unwrap()
    }

    /// Waits (at most `limit`) until `/health` satisfies `ok`; returns how long it took.
    pub fn wait_health(&self, limit: Duration, ok: impl Fn(&Value) -> bool) -> Duration {
        let t0 = Instant::now();
        loop {
            let h = self.health();
            if ok(&h) {
                return t0.elapsed();
            }
            assert!(t0.elapsed() < limit, "/health still {h} after {limit:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// POSTs a JSON body (given as text, so it can be malformed); returns
    /// the status and the body parsed as JSON.
    pub fn post(&self, path: &str, body: &str) -> (u16, Value) {
        let r = client()
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().unwrap();
        let json =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{status} body is not JSON ({e}): {text}"));
        (status, json)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(300)).build().unwrap()
}

/// Reads a server-sent-event body as it arrives: each `data:` payload.
pub struct SseReader {
    body: reqwest::blocking::Response,
    buf: Vec<u8>,
}

impl SseReader {
    pub fn new(body: reqwest::blocking::Response) -> SseReader {
        SseReader { body, buf: Vec::new() }
    }

    /// The next `data:` payload (comments skipped), or `None` at the end of the body.
    pub fn next_data(&mut self) -> Option<String> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let event: Vec<u8> = self.buf.drain(..end + 2).collect();
                let text = String::from_utf8(event).expect("UTF-8 events");
                let data: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
                if data.is_empty() {
                    continue; // a keep-alive comment
                }
                return Some(data.join("\n"));
            }
            let mut chunk = [0u8; 4096];
            let n = self.body.read(&mut chunk).expect("reading the event stream");
            if n == 0 {
                assert!(self.buf.iter().all(|b| b.is_ascii_whitespace()), "a partial event at the end");
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// The `error` object of an OpenAI-style error body, checked for shape.
pub fn error_of(body: &Value) -> &Value {
    let e = &body["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "no error message in {body}");
    assert!(e["type"].is_string(), "no error type in {body}");
    assert!(e.get("param").is_some() && e.get("code").is_some(), "param/code missing in {body}");
    e
}

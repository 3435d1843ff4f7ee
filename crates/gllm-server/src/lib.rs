//! `gllm serve`: an OpenAI-compatible HTTP server over gllm's engine.
//!
//! ```text
//!   POST /v1/chat/completions   messages → chat template → tokens   ┐
//!   POST /v1/completions        prompt → tokens                     ├─> checks (400) ─> admit (503) ─> queue ─> slot
//!   GET  /v1/models, /health                                        ┘
//!   stream: true  → server-sent events, `data: {chunk}` … `data: [DONE]`
//! ```
//!
//! A crate of its own, not a module of `gllm`: the HTTP stack (tokio, hyper,
//! axum) is large and only the server needs it, so the library that loads
//! and runs models — and everything that depends on it, its tests and
//! benches — builds without it, and `gllm-cli` stays a thin layer of
//! argument parsing over this crate. The design (slots, queue, cancellation,
//! threads) is in `docs/server.md`.

pub mod api;
pub mod error;
pub mod slots;
pub mod stop;

use api::{parse, Prepared, Request};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use error::ApiError;
use gllm::engine::{Engine, EngineError, EngineOptions};
use gllm::model::Model;
use serde_json::{json, Value};
use slots::{Event, Job, Outcome, Slots};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

/// Where the one-line-per-request log goes.
pub type LogSink = Arc<dyn Fn(&str) + Send + Sync>;

/// How the server runs.
#[derive(Clone)]
pub struct ServerOptions {
    /// Sequences generated at once, each in its own slot (KV cache).
    pub parallel: usize,
    /// Requests that may wait for a slot; beyond that they get a 503.
    pub queue: usize,
    /// The name `/v1/models` lists and responses carry (default: the model
    /// file's name without its extension).
    pub model_id: Option<String>,
    /// Default: standard error.
    pub log: Option<LogSink>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions { parallel: 1, queue: 32, model_id: None, log: None }
    }
}

/// Threads for each slot's engine: the thread budget shared out, at least one.
pub fn threads_per_slot(threads: usize, parallel: usize) -> usize {
    (threads / parallel.max(1)).max(1)
}

struct Inner {
    model: Arc<Model>,
    model_id: String,
    slots: Slots,
    context: usize,
    threads_per_slot: usize,
    log: LogSink,
    next_id: AtomicU64,
    /// Makes ids differ between runs of the server.
    id_base: u64,
}

/// The server's state; cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct Server(Arc<Inner>);

/// Which endpoint a request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Completion,
}

impl Server {
    /// Compiles the engine once (with `opts.threads()` shared out among the
    /// slots), forks it into `parallel` slots and starts their threads.
    pub fn new(
        model: Arc<Model>,
        mut opts: EngineOptions,
        server: ServerOptions,
    ) -> Result<Server, EngineError> {
        let parallel = server.parallel.max(1);
        let threads = threads_per_slot(opts.threads(), parallel);
        opts.profile.physical_cores = threads;
        let first = Engine::new(model.config.clone(), model.weights.clone(), opts)?;
        let context = first.max_context();
        let mut engines: Vec<Engine> = (1..parallel).map(|_| first.fork()).collect();
        engines.insert(0, first);
        let log = server.log.unwrap_or_else(|| Arc::new(|line: &str| eprintln!("{line}")));
        let model_id = server.model_id.unwrap_or_else(|| {
            let stem = model.info.path.file_stem().map(|s| s.to_string_lossy().into_owned());
            stem.filter(|s| !s.is_empty()).unwrap_or_else(|| model.info.name.clone())
        });
        let slots = Slots::start(model.clone(), engines, server.queue, log.clone());
        let id_base = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() << 20;
        Ok(Server(Arc::new(Inner {
            model,
            model_id,
            slots,
            context,
            threads_per_slot: threads,
            log,
            next_id: AtomicU64::new(0),
            id_base,
        })))
    }

    pub fn model_id(&self) -> &str {
        &self.0.model_id
    }

    /// KV-cache positions per slot: prompt plus completion must fit.
    pub fn context(&self) -> usize {
        self.0.context
    }

    pub fn parallel(&self) -> usize {
        self.0.slots.parallel()
    }

    pub fn queue_capacity(&self) -> usize {
        self.0.slots.queue_capacity()
    }

    pub fn threads_per_slot(&self) -> usize {
        self.0.threads_per_slot
    }

    /// The routes, for embedding in another axum app or for tests.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/completions", post(completion))
            .route("/v1/models", get(models))
            .route("/health", get(health))
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .with_state(self.clone())
    }

    /// Serves on `listener` until `shutdown` completes.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(listener, self.router()).with_graceful_shutdown(shutdown).await
    }

    /// Binds `host:port` (port 0: any free port), calls `on_bound` with the
    /// address, and serves until Ctrl-C. Blocks; runs its own tokio runtime.
    pub fn run(self, host: &str, port: u16, on_bound: impl FnOnce(SocketAddr)) -> std::io::Result<()> {
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind((host, port)).await?;
            on_bound(listener.local_addr()?);
            let log = self.0.log.clone();
            tokio::select! {
                r = self.serve(listener, std::future::pending()) => r,
                _ = interrupted() => {
                    log("interrupted: shutting down");
                    Ok(())
                }
            }
        })
    }

    fn new_id(&self, kind: Kind) -> String {
        let n = self.0.next_id.fetch_add(1, Ordering::Relaxed);
        let prefix = match kind {
            Kind::Chat => "chatcmpl",
            Kind::Completion => "cmpl",
        };
        format!("{prefix}-{:x}", self.0.id_base + n)
    }

    fn log(&self, line: &str) {
        (self.0.log)(line)
    }

    async fn handle(&self, kind: Kind, body: Result<Bytes, BytesRejection>) -> Response {
        let received = Instant::now();
        let id = self.new_id(kind);
        let inner = &self.0;
        let prepared = body
            .map_err(|r| ApiError::invalid(r.body_text(), None).with_status(r.status()))
            .and_then(|b| parse::<Request>(&b))
            .and_then(|r| match kind {
                Kind::Chat => r.prepare_chat(&inner.model, inner.context),
                Kind::Completion => r.prepare_completion(&inner.model, inner.context),
            });
        let p = match prepared {
            Ok(p) => p,
            Err(e) => {
                self.log(&format!("{id} {} {e}", label(kind, false)));
                return e.into_response();
            }
        };
        let Some(permit) = inner.slots.admit() else {
            let e = ApiError::busy(inner.slots.parallel(), inner.slots.queue_capacity());
            self.log(&format!("{id} {} {e}", label(kind, p.stream)));
            return e.into_response();
        };
        let (tx, rx) = unbounded_channel();
        let reply = Reply {
            kind,
            id: id.clone(),
            model: inner.model_id.clone(),
            created: SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs(),
        };
        let Prepared { prompt, max_tokens, sampling, stops, ignore_eos, stream, include_usage } = p;
        inner.slots.submit(Job {
            id,
            label: label(kind, stream),
            prompt,
            max_tokens,
            sampling,
            stops,
            ignore_eos,
            events: tx,
            received,
            permit,
        });
        if stream {
            reply.stream(rx, include_usage).into_response()
        } else {
            reply.collect(rx).await
        }
    }
}

/// Completes at Ctrl-C; never, if the signal cannot be watched.
async fn interrupted() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

fn label(kind: Kind, stream: bool) -> &'static str {
    match (kind, stream) {
        (Kind::Chat, false) => "chat",
        (Kind::Chat, true) => "chat stream",
        (Kind::Completion, false) => "completion",
        (Kind::Completion, true) => "completion stream",
    }
}

/// What every response and chunk of one request carries.
struct Reply {
    kind: Kind,
    id: String,
    model: String,
    created: u64,
}

fn usage(o: &Outcome) -> Value {
    json!({
        "prompt_tokens": o.prompt_tokens,
        "completion_tokens": o.completion_tokens,
        "total_tokens": o.prompt_tokens + o.completion_tokens,
    })
}

impl Reply {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.kind, chunk) {
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Completion, _) => "text_completion",
        }
    }

    fn envelope(&self, chunk: bool, choices: Value) -> Value {
        json!({
            "id": self.id,
            "object": self.object(chunk),
            "created": self.created,
            "model": self.model,
            "choices": choices,
        })
    }

    /// The whole answer at once.
    async fn collect(self, mut rx: UnboundedReceiver<Event>) -> Response {
        let mut text = String::new();
        loop {
            match rx.recv().await {
                Some(Event::Text(t)) => text.push_str(&t),
                Some(Event::Done(o)) => {
                    let choice = match self.kind {
                        Kind::Chat => json!({
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "logprobs": null,
                            "finish_reason": o.finish.as_str(),
                        }),
                        Kind::Completion => json!({
                            "index": 0,
                            "text": text,
                            "logprobs": null,
                            "finish_reason": o.finish.as_str(),
                        }),
                    };
                    let mut body = self.envelope(false, json!([choice]));
                    body["usage"] = usage(&o);
                    return Json(body).into_response();
                }
                Some(Event::Failed(m)) => return ApiError::internal(m).into_response(),
                None => return ApiError::internal("the generation ended without a result").into_response(),
            }
        }
    }

    /// One chunk: a piece of text, or the end (`finish`).
    fn chunk(&self, text: Option<&str>, finish: Option<&str>, first: bool) -> SseEvent {
        let choice = match self.kind {
            Kind::Chat => {
                let mut delta = json!({});
                if first {
                    delta["role"] = json!("assistant");
                }
                if let Some(t) = text {
                    delta["content"] = json!(t);
                }
                json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
            }
            Kind::Completion => {
                json!({"index": 0, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": finish})
            }
        };
        data(&self.envelope(true, json!([choice])))
    }

    /// Server-sent events: (chat: a first chunk with the role), a chunk per
    /// piece of text, a last chunk with `finish_reason`, the usage chunk if
    /// `stream_options.include_usage`, then `[DONE]`. Dropping the stream (the
    /// client went away) drops `rx`, which stops the slot.
    fn stream(
        self,
        rx: UnboundedReceiver<Event>,
        include_usage: bool,
    ) -> Sse<impl futures_util::Stream<Item = Result<SseEvent, Infallible>>> {
        let mut first = VecDeque::new();
        if self.kind == Kind::Chat {
            first.push_back(self.chunk(Some(""), None, true));
        }
        let state = (self, rx, first, false);
        let events =
            futures_util::stream::unfold(state, move |(reply, mut rx, mut out, mut ended)| async move {
                loop {
                    if let Some(ev) = out.pop_front() {
                        return Some((Ok(ev), (reply, rx, out, ended)));
                    }
                    if ended {
                        return None;
                    }
                    match rx.recv().await {
                        Some(Event::Text(t)) => out.push_back(reply.chunk(Some(&t), None, false)),
                        Some(Event::Done(o)) => {
                            out.push_back(reply.chunk(None, Some(o.finish.as_str()), false));
                            if include_usage {
                                let mut u = reply.envelope(true, json!([]));
                                u["usage"] = usage(&o);
                                out.push_back(data(&u));
                            }
                            ended = true;
                        }
                        Some(Event::Failed(m)) => {
                            out.push_back(data(&ApiError::internal(m).body()));
                            ended = true;
                        }
                        None => {
                            out.push_back(data(
                                &ApiError::internal("the generation ended without a result").body(),
                            ));
                            ended = true;
                        }
                    }
                    if ended {
                        out.push_back(SseEvent::default().data("[DONE]"));
                    }
                }
            });
        Sse::new(events).keep_alive(KeepAlive::default())
    }
}

fn data(v: &Value) -> SseEvent {
    SseEvent::default().data(v.to_string())
}

async fn chat(State(s): State<Server>, body: Result<Bytes, BytesRejection>) -> Response {
    s.handle(Kind::Chat, body).await
}

async fn completion(State(s): State<Server>, body: Result<Bytes, BytesRejection>) -> Response {
    s.handle(Kind::Completion, body).await
}

async fn models(State(s): State<Server>) -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{
            "id": s.0.model_id,
            "object": "model",
            "created": 0,
            "owned_by": "gllm",
            "context_length": s.0.context,
        }],
    }))
}

async fn health(State(s): State<Server>) -> Json<Value> {
    let st = s.0.slots.status();
    Json(json!({
        "status": "ok",
        "slots": st.slots,
        "busy": st.busy,
        "queued": st.queued,
        "queue_capacity": st.queue_capacity,
    }))
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::invalid(format!("unknown request URL: {method} {}", uri.path()), None)
        .with_status(StatusCode::NOT_FOUND)
        .with_code("unknown_url")
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::invalid(format!("method {method} is not allowed for {}", uri.path()), None)
        .with_status(StatusCode::METHOD_NOT_ALLOWED)
        .with_code("method_not_allowed")
}

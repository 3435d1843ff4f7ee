//! Generation slots: `parallel` worker threads, each owning one forked
//! [`Engine`] (its own KV cache; compiled parts and packed weights shared),
//! fed from one bounded queue.
//!
//! ```text
//!   handler ──admit()──> Permit (or 503) ──submit(Job)──> queue ──> slot thread: prefill, decode…
//!      ▲                                                                  │ Event::Text per token
//!      └──────────────── tokio mpsc (unbounded) ◄─────────────────────────┘ Event::Done / Failed
//! ```
//!
//! Admission counts requests that are queued or generating; at
//! `parallel + queue` the next is refused. A [`Permit`] travels with its job
//! and gives the place back when dropped, however the job ends.
//!
//! Cancellation: the handler (or the SSE body) owns the receiving end of the
//! job's event channel. A client that goes away drops it; the slot sees the
//! failed send (or the closed channel) at the next token — or between
//! prefill chunks, or before starting a queued job — and stops at once.

use crate::stop::StopMatcher;
use crate::LogSink;
use gllm::engine::Engine;
use gllm::generate::{generate_from, StopReason};
use gllm::model::Model;
use gllm::sampling::{Sampler, SamplingParams};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Instant;
use tokio::sync::mpsc::UnboundedSender;

/// What a slot sends back while it works on a job.
#[derive(Debug)]
pub enum Event {
    /// Text safe to show (whole characters, stop strings left out).
    Text(String),
    /// The end of a generation.
    Done(Outcome),
    /// The engine failed; the message says why.
    Failed(String),
}

/// Why generation ended, as OpenAI's `finish_reason` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// An end-of-turn token or a stop string.
    Stop,
    /// `max_tokens`, or the context is full.
    Length,
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    pub finish: Finish,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// One request for a slot.
pub struct Job {
    /// `chatcmpl-…` / `cmpl-…`, for the log.
    pub id: String,
    /// What the log calls the request (`chat stream`, `completion`).
    pub label: &'static str,
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stops: Vec<String>,
    /// Keep generating through end-of-turn tokens (vLLM's `ignore_eos`).
    pub ignore_eos: bool,
    pub events: UnboundedSender<Event>,
    /// When the request arrived (for time to first token).
    pub received: Instant,
    pub permit: Permit,
}

/// Request counters, shared by the handlers, the slots and the permits.
#[derive(Debug, Default)]
struct Counters {
    /// Queued or generating: what admission limits.
    admitted: AtomicUsize,
    queued: AtomicUsize,
    busy: AtomicUsize,
}

/// A place in the server (a slot or the queue); given back when dropped.
#[derive(Debug)]
pub struct Permit(Arc<Counters>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.admitted.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What `/health` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    pub slots: usize,
    pub busy: usize,
    pub queued: usize,
    pub queue_capacity: usize,
}

/// The slots and their queue.
pub struct Slots {
    parallel: usize,
    queue: usize,
    counters: Arc<Counters>,
    /// Dropped with `Slots`: the slot threads then finish their job and exit.
    jobs: Mutex<mpsc::Sender<Job>>,
}

impl Slots {
    /// Starts one thread per engine; `queue` requests may wait beyond them.
    pub fn start(model: Arc<Model>, engines: Vec<Engine>, queue: usize, log: LogSink) -> Slots {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let counters = Arc::new(Counters::default());
        let parallel = engines.len();
        for (slot, engine) in engines.into_iter().enumerate() {
            let (rx, model, counters, log) = (rx.clone(), model.clone(), counters.clone(), log.clone());
            std::thread::Builder::new()
                .name(format!("gllm-slot-{slot}"))
                .spawn(move || slot_loop(slot, engine, &model, &rx, &counters, &log))
                .expect("spawning a slot thread");
        }
        Slots { parallel, queue, counters, jobs: Mutex::new(tx) }
    }

    pub fn parallel(&self) -> usize {
        self.parallel
    }

    pub fn queue_capacity(&self) -> usize {
        self.queue
    }

    /// A place for one more request, or `None` when every slot is busy and
    /// the queue is full.
    pub fn admit(&self) -> Option<Permit> {
        let limit = self.parallel + self.queue;
        self.counters
            .admitted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < limit).then_some(n + 1))
            .ok()
            .map(|_| Permit(self.counters.clone()))
    }

    /// Queues an admitted job.
    pub fn submit(&self, job: Job) {
        self.counters.queued.fetch_add(1, Ordering::AcqRel);
        let tx = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(mpsc::SendError(job)) = tx.send(job) {
            // No slot thread is left (they only exit when `Slots` is dropped).
            self.counters.queued.fetch_sub(1, Ordering::AcqRel);
            let _ = job.events.send(Event::Failed("the server is shutting down".into()));
        }
    }

    pub fn status(&self) -> Status {
        Status {
            slots: self.parallel,
            busy: self.counters.busy.load(Ordering::Acquire),
            queued: self.counters.queued.load(Ordering::Acquire),
            queue_capacity: self.queue,
        }
    }
}

fn slot_loop(
    slot: usize,
    mut engine: Engine,
    model: &Model,
    jobs: &Mutex<mpsc::Receiver<Job>>,
    counters: &Counters,
    log: &LogSink,
) {
    loop {
        let job = {
            let rx = jobs.lock().unwrap_or_else(|e| e.into_inner());
            match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        counters.queued.fetch_sub(1, Ordering::AcqRel);
        if job.events.is_closed() {
            log(&format!(
                "{} {} slot={slot} cancelled while queued ({:.1} ms)",
                job.id,
                job.label,
                ms(job.received.elapsed())
            ));
            continue;
        }
        counters.busy.fetch_add(1, Ordering::AcqRel);
        let (id, label, events) = (job.id.clone(), job.label, job.events.clone());
        let run = std::panic::catch_unwind(AssertUnwindSafe(|| run_job(slot, &mut engine, model, job, log)));
        if run.is_err() {
            log(&format!("{id} {label} slot={slot} panicked; the slot goes on with the next request"));
            let _ = events.send(Event::Failed("internal error while generating".into()));
        }
        counters.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Prefill (in chunks, checking for a departed client between them), then
/// token by token, sending text as it is decoded.
fn run_job(slot: usize, engine: &mut Engine, model: &Model, job: Job, log: &LogSink) {
    let started = Instant::now();
    let queued = started - job.received;
    let tok = &model.tokenizer;
    engine.reset();
    let mut first_token: Option<Instant> = None;
    let mut gone = false;
    let mut stop_string = false;
    let mut decoder = tok.streaming_decoder();
    let mut stops = StopMatcher::new(job.stops.clone());
    let events = &job.events;
    let result = (|| {
        let mut logits = Vec::new();
        for chunk in job.prompt.chunks(engine.options().prefill_chunk.max(1)) {
            if events.is_closed() {
                gone = true;
                return Ok(None);
            }
            logits = engine.forward(chunk, false)?;
        }
        let prompt_done = Instant::now();
        let mut sampler = Sampler::new(job.sampling);
        let is_stop = |t: u32| !job.ignore_eos && tok.is_end_of_generation(t);
        let mut on_token = |t: u32| {
            first_token.get_or_insert_with(Instant::now);
            let (text, hit) = stops.push(&decoder.push(t));
            if (!text.is_empty() && events.send(Event::Text(text)).is_err()) || events.is_closed() {
                gone = true;
                return false;
            }
            stop_string = hit;
            !hit
        };
        let r = generate_from(engine, logits, job.max_tokens, &mut sampler, &is_stop, &mut on_token)?;
        Ok::<_, gllm::engine::EngineError>(Some((r, prompt_done)))
    })();
    let total = job.received.elapsed();
    let ttft = first_token.map_or(String::from("-"), |t| format!("{:.1}ms", ms(t - job.received)));
    let prefix = format!(
        "{} {} slot={slot} prompt={} queued={:.1}ms ttft={ttft} total={:.1}ms",
        job.id,
        job.label,
        job.prompt.len(),
        ms(queued),
        ms(total)
    );
    match result {
        Ok(Some(((tokens, reason, stats), prompt_done))) if !gone => {
            let finish = match reason {
                StopReason::StopToken(_) => Finish::Stop,
                StopReason::Caller => Finish::Stop, // a stop string
                StopReason::Length | StopReason::ContextFull => Finish::Length,
            };
            if !stop_string {
                let (text, _) = stops.push(&decoder.finish());
                let text = text + &stops.finish();
                if !text.is_empty() {
                    let _ = events.send(Event::Text(text));
                }
            }
            let outcome =
                Outcome { finish, prompt_tokens: job.prompt.len(), completion_tokens: tokens.len() };
            let _ = events.send(Event::Done(outcome));
            let prompt_rate = job.prompt.len() as f64 / (prompt_done - started).as_secs_f64().max(1e-9);
            log(&format!(
                "{prefix} completion={} prefill={prompt_rate:.0}tok/s decode={:.1}tok/s finish={}",
                tokens.len(),
                stats.decode_tokens_per_second(),
                finish.as_str()
            ));
        }
        // Prefill or decoding stopped because the client went away.
        Ok(_) => log(&format!("{prefix} cancelled: the client went away")),
        Err(e) => {
            log(&format!("{prefix} failed: {e}"));
            let _ = events.send(Event::Failed(e.to_string()));
        }
    }
}

//! The OpenAI request bodies, and their checks: everything a request can
//! get wrong is found here, before it takes a place in the queue, and
//! answered with a 400 naming the field.
//!
//! Fields this server does not implement (`frequency_penalty`, `logit_bias`,
//! `user`, `tools`, …) are accepted and ignored, as other local servers do,
//! except `n` > 1, which would change the shape of the answer.

use crate::error::ApiError;
use gllm::model::Model;
use gllm::sampling::SamplingParams;
use gllm::ChatMessage;
use serde::de::DeserializeOwned;
use serde::Deserialize;

/// A request to `/v1/chat/completions` (which needs `messages`) or
/// `/v1/completions` (which needs `prompt`). One struct for both, without
/// `#[serde(flatten)]`, so that a field of the wrong type is reported by its
/// path.
#[derive(Debug, Default, Deserialize)]
pub struct Request {
    pub messages: Option<Vec<Message>>,
    pub prompt: Option<Prompt>,
    /// Any name is accepted: the server has one model.
    pub model: Option<String>,
    pub max_tokens: Option<u32>,
    /// The newer name of `max_tokens` (chat).
    pub max_completion_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// Not in OpenAI's API; llama.cpp's server and vLLM take it.
    pub top_k: Option<u32>,
    pub seed: Option<i64>,
    pub stop: Option<Stop>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub n: Option<u32>,
    /// Not in OpenAI's API (vLLM's): generate through end-of-turn tokens.
    pub ignore_eos: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "expected a string or an array of strings")]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
pub struct Message {
    pub role: String,
    /// `null` is allowed (an assistant turn that only called tools).
    pub content: Option<Content>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "expected a string or an array of content parts")]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

/// One part of a multi-part message: only `{"type": "text", "text": …}`.
#[derive(Debug, Deserialize)]
pub struct Part {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "expected a string, an array of strings or an array of token ids")]
pub enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

/// A checked request, ready for a slot.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stops: Vec<String>,
    pub ignore_eos: bool,
    pub stream: bool,
    pub include_usage: bool,
}

/// Parses a JSON body into `T`: malformed JSON, a body that is not an
/// object, or a field of the wrong type is a 400, naming the field
/// (`messages[0].content`) where there is one.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("the request body is not valid JSON: {e}"), None))?;
    if !value.is_object() {
        return Err(ApiError::invalid("the request body must be a JSON object", None));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let param = (path != ".").then_some(path);
        let at = param.as_deref().map(|p| format!(" at `{p}`")).unwrap_or_default();
        ApiError::invalid(format!("invalid request{at}: {inner}"), param.as_deref())
    })
}

/// A random seed for requests that give none.
fn fresh_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos(),
    );
    h.finish()
}

/// Checks the shared fields against the prompt and the context.
fn prepare(c: &Request, prompt: Vec<u32>, ctx: usize, chat: bool) -> Result<Prepared, ApiError> {
    if let Some(n) = c.n {
        if n != 1 {
            return Err(ApiError::invalid(
                format!("n = {n}: this server returns one choice (n = 1)"),
                Some("n"),
            ));
        }
    }
    let temperature = c.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(
            format!("temperature = {temperature}: it must be between 0 and 2"),
            Some("temperature"),
        ));
    }
    let top_p = c.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid(format!("top_p = {top_p}: it must be in (0, 1]"), Some("top_p")));
    }
    let stops = match &c.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s.clone()],
        Some(Stop::Many(v)) if v.len() > 4 => {
            return Err(ApiError::invalid(
                format!("{} stop sequences: at most 4 are allowed", v.len()),
                Some("stop"),
            ))
        }
        Some(Stop::Many(v)) => v.clone(),
    };
    let n = prompt.len();
    if n == 0 {
        let param = if chat { "messages" } else { "prompt" };
        return Err(ApiError::invalid("the prompt is empty (0 tokens)", Some(param)));
    }
    let (field, asked) = match (c.max_completion_tokens, c.max_tokens) {
        (Some(m), _) => ("max_completion_tokens", Some(m as usize)),
        (None, m) => ("max_tokens", m.map(|m| m as usize)),
    };
    if n >= ctx {
        return Err(ApiError::invalid(
            format!(
                "this model's context holds {ctx} tokens; the prompt has {n}, which leaves no room for a completion"
            ),
            Some(if chat { "messages" } else { "prompt" }),
        )
        .with_code("context_length_exceeded"));
    }
    let max_tokens = match asked {
        Some(0) => return Err(ApiError::invalid(format!("{field} must be at least 1"), Some(field))),
        Some(m) if n + m > ctx => {
            return Err(ApiError::invalid(
                format!(
                    "this model's context holds {ctx} tokens; {n} in the prompt plus {field} = {m} is {}",
                    n + m
                ),
                Some(field),
            )
            .with_code("context_length_exceeded"))
        }
        Some(m) => m,
        None => ctx - n,
    };
    let include_usage = c.stream_options.as_ref().and_then(|o| o.include_usage).unwrap_or(false);
    Ok(Prepared {
        prompt,
        max_tokens,
        sampling: SamplingParams {
            temperature,
            top_k: c.top_k.unwrap_or(0) as usize,
            top_p,
            seed: c.seed.map_or_else(fresh_seed, |s| s as u64),
        },
        stops,
        ignore_eos: c.ignore_eos.unwrap_or(false),
        stream: c.stream.unwrap_or(false),
        include_usage,
    })
}

impl Request {
    /// A chat request: renders the messages with the model's chat template
    /// and checks the rest.
    pub fn prepare_chat(&self, model: &Model, ctx: usize) -> Result<Prepared, ApiError> {
        let Some(messages_in) = &self.messages else {
            return Err(ApiError::invalid("missing field `messages`", Some("messages")));
        };
        if messages_in.is_empty() {
            return Err(ApiError::invalid("messages must not be empty", Some("messages")));
        }
        let tok = &model.tokenizer;
        if tok.chat_template().is_none() {
            return Err(ApiError::invalid(
                "this model has no chat template; use /v1/completions",
                Some("messages"),
            ));
        }
        let mut messages = Vec::with_capacity(messages_in.len());
        for (i, m) in messages_in.iter().enumerate() {
            let content = match &m.content {
                None => String::new(),
                Some(Content::Text(t)) => t.clone(),
                Some(Content::Parts(parts)) => {
                    let mut text = String::new();
                    for (j, p) in parts.iter().enumerate() {
                        match (p.kind.as_str(), &p.text) {
                            ("text", Some(t)) => text.push_str(t),
                            _ => {
                                return Err(ApiError::invalid(
                                    format!(
                                        "content part of type `{}`: only text parts are supported",
                                        p.kind
                                    ),
                                    Some(&format!("messages[{i}].content[{j}]")),
                                ))
                            }
                        }
                    }
                    text
                }
            };
            messages.push(ChatMessage::new(m.role.clone(), content));
        }
        let text = tok.apply_chat_template(&messages, true).map_err(|e| {
            ApiError::invalid(format!("the chat template rejected the messages: {e}"), Some("messages"))
        })?;
        prepare(self, tok.encode(&text, false, true), ctx, true)
    }

    /// A text-completion request: tokenizes the prompt and checks the rest.
    pub fn prepare_completion(&self, model: &Model, ctx: usize) -> Result<Prepared, ApiError> {
        let Some(prompt) = &self.prompt else {
            return Err(ApiError::invalid("missing field `prompt`", Some("prompt")));
        };
        let tok = &model.tokenizer;
        let one = |what: &str, n: usize| {
            ApiError::invalid(
                format!("{n} prompts: this server takes one {what} per request"),
                Some("prompt"),
            )
        };
        let ids = match prompt {
            Prompt::Text(t) => tok.encode(t, true, true),
            Prompt::Texts(v) if v.len() == 1 => tok.encode(&v[0], true, true),
            Prompt::Texts(v) => return Err(one("string", v.len())),
            Prompt::Tokens(ids) => ids.clone(),
            Prompt::TokenLists(v) if v.len() == 1 => v[0].clone(),
            Prompt::TokenLists(v) => return Err(one("token list", v.len())),
        };
        let vocab = model.config.vocab_size;
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(ApiError::invalid(
                format!("token id {bad} is outside the vocabulary of {vocab}"),
                Some("prompt"),
            ));
        }
        prepare(self, ids, ctx, false)
    }
}

//! Chat templates: turning a conversation into the prompt text a chat model
//! was trained on.
//!
//! Models ship their prompt format as a Jinja template
//! (`tokenizer.chat_template`), written for Python's `jinja2` as Hugging Face
//! `transformers` runs it. This module renders it with `minijinja` configured
//! the same way: `trim_blocks` and `lstrip_blocks` on, the trailing newline of
//! the template dropped, `break`/`continue` allowed, Python string and dict
//! methods (`.strip()`, `.startswith()`, `.items()`, ...) through
//! `minijinja-contrib`'s pycompat layer, `tojson`, and the
//! `raise_exception(message)` function templates use to reject a conversation.

use std::collections::BTreeMap;

use minijinja::{Environment, Error, ErrorKind, Value};

use super::TokenizerError;

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// "system", "user", "assistant" (templates may accept others, e.g. "tool").
    pub role: String,
    /// The text of the turn.
    pub content: String,
}

impl ChatMessage {
    /// A message from its role and content; saves the `to_string`s at call sites.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> ChatMessage {
        ChatMessage { role: role.into(), content: content.into() }
    }
}

/// The name the template is stored under in its environment.
const NAME: &str = "chat_template";

/// A parsed chat template, ready to render many conversations. Parse once per
/// model; [`render_chat`] is the one-shot form.
pub struct ChatTemplate {
    env: Environment<'static>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").finish_non_exhaustive()
    }
}

/// A minijinja error as a [`TokenizerError`], with its detail and line, so the
/// message says what in the template went wrong and where.
fn template_error(e: &Error) -> TokenizerError {
    let mut msg = e.to_string();
    if let Some(detail) = e.detail() {
        if !msg.contains(detail) {
            msg.push_str(": ");
            msg.push_str(detail);
        }
    }
    if let Some(line) = e.line() {
        msg.push_str(&format!(" (template line {line})"));
    }
    TokenizerError::Template(msg)
}

impl ChatTemplate {
    /// Parses `source`; a syntax error is reported here, not at render time.
    pub fn new(source: &str) -> Result<ChatTemplate, TokenizerError> {
        let mut env = Environment::new();
        let syntax = env
            .syntax()
            .to_builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .keep_trailing_newline(false)
            .build()
            .map_err(|e| template_error(&e))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |message: String| -> Result<Value, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, format!("raise_exception: {message}")))
        });
        env.add_template_owned(NAME, source.to_string()).map_err(|e| template_error(&e))?;
        Ok(ChatTemplate { env })
    }

    /// Renders `messages`. `add_generation_prompt` appends the opening of an
    /// assistant turn (so the model answers rather than continuing the user);
    /// `bos_token`/`eos_token` are the texts templates may splice in.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<String, TokenizerError> {
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| {
                let mut map = BTreeMap::new();
                map.insert("role", Value::from(m.role.as_str()));
                map.insert("content", Value::from(m.content.as_str()));
                Value::from(map)
            })
            .collect();
        let mut ctx = BTreeMap::new();
        ctx.insert("messages", Value::from(messages));
        ctx.insert("add_generation_prompt", Value::from(add_generation_prompt));
        ctx.insert("bos_token", Value::from(bos_token));
        ctx.insert("eos_token", Value::from(eos_token));
        let template = self.env.get_template(NAME).map_err(|e| template_error(&e))?;
        template.render(Value::from(ctx)).map_err(|e| template_error(&e))
    }
}

/// Parses `template` and renders `messages` with it in one go; see
/// [`ChatTemplate::render`] for the arguments.
pub fn render_chat(
    template: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    bos_token: &str,
    eos_token: &str,
) -> Result<String, TokenizerError> {
    ChatTemplate::new(template)?.render(messages, add_generation_prompt, bos_token, eos_token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_with_python_methods_and_whitespace_control() {
        let t = "{% for m in messages %}\n  {% if m.role == 'system' %}{{ bos_token }}{% endif %}\n<|{{ m.role }}|>{{ m.content.strip() }}{{ eos_token }}\n{% endfor %}\n{% if add_generation_prompt %}<|assistant|>{% endif %}\n";
        let out = render_chat(
            t,
            &[ChatMessage::new("system", " be brief "), ChatMessage::new("user", "hi")],
            true,
            "<s>",
            "</s>",
        )
        .unwrap();
        assert_eq!(out, "<s><|system|>be brief</s>\n<|user|>hi</s>\n<|assistant|>");
    }

    #[test]
    fn errors_name_the_problem() {
        let e = ChatTemplate::new("{% for m in messages %}{{ m.role }").unwrap_err();
        assert!(matches!(e, TokenizerError::Template(_)), "{e}");
        let e = render_chat(
            "{% if messages[0].role != 'system' %}{{ raise_exception('System first!') }}{% endif %}",
            &[ChatMessage::new("user", "x")],
            false,
            "",
            "",
        )
        .unwrap_err();
        assert!(e.to_string().contains("System first!"), "{e}");
        let e = render_chat("{{ messages | nosuchfilter }}", &[], false, "", "").unwrap_err();
        assert!(e.to_string().contains("nosuchfilter"), "{e}");
    }

    #[test]
    fn loop_controls_and_tojson() {
        let t = "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}{{ m.content | tojson }}{% endfor %}";
        let out =
            render_chat(t, &[ChatMessage::new("user", "a\"b"), ChatMessage::new("user", "c")], false, "", "")
                .unwrap();
        assert_eq!(out, "\"a\\\"b\"");
    }
}

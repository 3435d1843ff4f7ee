//! The one error type of the tokenizer module.

/// Everything that can go wrong building a [`Tokenizer`](super::Tokenizer),
/// decoding checked ids, or rendering a chat template. Each variant names the
/// offending input so a bad model file can be diagnosed from the message alone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenizerError {
    /// `tokenizer.ggml.model` is not a tokenizer this module implements.
    #[error("unsupported tokenizer model {0:?} (only \"gpt2\", byte-level BPE, is supported)")]
    UnsupportedModel(String),
    /// `tokenizer.ggml.pre` names a pre-tokenizer this module does not know.
    #[error("unknown pre-tokenizer {0:?} (supported: {supported})", supported = super::pretokenize::SUPPORTED_PRE.join(", "))]
    UnknownPreTokenizer(String),
    /// The vocabulary is empty, or too large for `u32` token ids.
    #[error("vocabulary has {0} tokens (must be between 1 and 2^32 - 1)")]
    BadVocabularySize(usize),
    /// `token_types` is neither empty nor one entry per token.
    #[error("token_types has {types} entries but the vocabulary has {tokens} tokens")]
    TokenTypesLength { types: usize, tokens: usize },
    /// A token type outside the GGUF enumeration (0..=6).
    #[error("token {id} has token type {value}, not one of 0..=6")]
    BadTokenType { id: u32, value: i32 },
    /// A merge rule that is not two tokens separated by a space.
    #[error("merge #{index} {merge:?} is not two tokens separated by a space")]
    BadMerge { index: usize, merge: String },
    /// A merge rule naming (or producing) a string that is not a token.
    #[error("merge #{index} {merge:?} needs token {token:?}, which is not in the vocabulary")]
    MergeTokenMissing { index: usize, merge: String, token: String },
    /// A special token id (BOS, EOS, ...) that is not a valid id.
    #[error("{name} token id {id} is out of range (vocabulary has {vocab_size} tokens)")]
    SpecialIdOutOfRange { name: &'static str, id: u32, vocab_size: usize },
    /// `add_bos`/`add_eos` is set but the corresponding id is not.
    #[error("{flag} is set but the spec has no {name} token id")]
    MissingSpecialId { flag: &'static str, name: &'static str },
    /// A token id given to a checked decode that is not in the vocabulary.
    #[error("token id {id} is out of range (vocabulary has {vocab_size} tokens)")]
    IdOutOfRange { id: u32, vocab_size: usize },
    /// A pre-tokenizer regex failed to compile (a bug in this module's tables).
    #[error("pre-tokenizer {pre:?}: regex {pattern:?} does not compile: {message}")]
    Regex { pre: String, pattern: String, message: String },
    /// The model file carries no chat template.
    #[error("the model has no chat template (tokenizer.chat_template)")]
    NoChatTemplate,
    /// The chat template does not parse or fails while rendering
    /// (including `raise_exception` called by the template itself).
    #[error("chat template: {0}")]
    Template(String),
}

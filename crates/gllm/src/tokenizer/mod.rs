//! Text ↔ token ids for the models gllm runs, and their chat templates.
//!
//! # What it does
//! A [`Tokenizer`] is built from a [`TokenizerSpec`], the plain data a model
//! file carries about its tokenizer (the GGUF `tokenizer.ggml.*` keys), so
//! this module knows no file format: the GGUF reader fills the spec, tests
//! fill it from JSON or by hand. It implements byte-level BPE (GGUF model
//! `"gpt2"`), used by GPT-2, SmolLM, StarCoder, LLaMA 3, Qwen 2 and most
//! current models:
//!
//! 1. with `parse_special`, control tokens (`<|im_start|>`...) found in the
//!    text become their ids (leftmost, then longest match); user-defined
//!    tokens always do (`special.rs`);
//! 2. the rest is cut into words by the pre-tokenizer that
//!    `tokenizer.ggml.pre` names (`pretokenize.rs`);
//! 3. each word's bytes are merged by rank (`bpe.rs`); the vocabulary spells
//!    bytes with GPT-2's byte ↔ character table (`bytes.rs`).
//!
//! Decoding maps ids back to bytes, so `decode(encode(s)) == s` for any `s`
//! whose bytes all have tokens (true of every byte-level vocabulary);
//! [`StreamDecoder`] does it token by token without splitting characters.
//! [`ChatTemplate`] renders the model's Jinja chat template.
//!
//! # Why hand-written rather than Hugging Face `tokenizers`
//! The reference is Hugging Face `tokenizers` (the integration test checks id
//! for id against it), and its crate was the first choice. It was not taken
//! because (a) it does not fit: the GGUF semantics are llama.cpp's, not
//! tokenizer.json's, and would have to be rebuilt around it anyway (the
//! `tokenizer.ggml.pre` name → regex table, GGUF token types where control and
//! user-defined tokens match and decode differently, `ignore_merges` by family,
//! end-of-generation detection), leaving it only the merge loop; and (b) its
//! cost: `tokenizers 0.22.2` with `default-features = false, features =
//! ["fancy-regex"]` is 73 crates (rayon, serde, derive_builder, esaxx-rs,
//! spm_precompiled, unicode-normalization-alignments, ...) whose from-scratch
//! dev build took 3 min 58 s wall, 160 s CPU, on this project's 2-core machine
//! (niced, beside other builds): over the 2-minute budget. Here the only new
//! dependencies are `fancy-regex` (on `regex-automata`; for the look-ahead in
//! the pre-tokenizer regexes) and `minijinja` + `minijinja-contrib` (chat
//! templates), all pure Rust. The merge loop is a
//! heap-ordered linked list with a word cache; a 10 000-word text encodes in
//! milliseconds.

mod bpe;
mod bytes;
mod chat;
mod error;
mod pretokenize;
mod special;
mod stream;

use std::collections::HashMap;

pub use chat::{render_chat, ChatMessage, ChatTemplate};
pub use error::TokenizerError;
pub use stream::StreamDecoder;

use bpe::Bpe;
use pretokenize::PreTokenizer;
use special::{Segment, SpecialMatcher};

/// What a model file says about its tokenizer (GGUF `tokenizer.ggml.*` keys),
/// as plain data: the tokenizer depends on no file format.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenizerSpec {
    /// `tokenizer.ggml.model`: `"gpt2"` (byte-level BPE) is the one supported.
    pub model: String,
    /// `tokenizer.ggml.pre`: which pre-tokenizer cuts words (`"smollm"`,
    /// `"llama-bpe"`, `"gpt2"`, `"default"`...). `None` means `"default"`.
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`: the vocabulary, id = index.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.merges`: `"left right"` rules, highest priority first.
    pub merges: Vec<String>,
    /// `tokenizer.ggml.token_type`: one per token (see [`TokenType`]), or
    /// empty for "all normal".
    pub token_types: Vec<i32>,
    /// Beginning-of-sequence id.
    pub bos: Option<u32>,
    /// End-of-sequence id.
    pub eos: Option<u32>,
    /// End-of-turn id, where the model has one distinct from EOS.
    pub eot: Option<u32>,
    /// Padding id.
    pub pad: Option<u32>,
    /// Unknown-token id, used for bytes the vocabulary cannot spell.
    pub unk: Option<u32>,
    /// Whether `encode(.., add_special = true, ..)` prepends BOS.
    pub add_bos: bool,
    /// Whether `encode(.., add_special = true, ..)` appends EOS.
    pub add_eos: bool,
    /// `tokenizer.chat_template`: the Jinja prompt format, if any.
    pub chat_template: Option<String>,
}

/// GGUF token types (`tokenizer.ggml.token_type`); they decide which tokens
/// are matched as whole strings in text and how a token decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenType {
    /// 0: not stated; treated as normal.
    Undefined,
    /// 1: an ordinary BPE token, spelled in the byte-level alphabet.
    Normal,
    /// 2: the unknown token.
    Unknown,
    /// 3: a control token such as `<|im_start|>`: matched in text only with
    /// `parse_special`, decoded as its literal text.
    Control,
    /// 4: a user-defined token: always matched in text, decoded literally.
    UserDefined,
    /// 5: an unused slot.
    Unused,
    /// 6: a byte token (`<0x0A>`) of SentencePiece-style vocabularies.
    Byte,
}

impl TokenType {
    /// The type of a GGUF `token_type` value, or `None` outside 0..=6.
    pub fn from_gguf(value: i32) -> Option<TokenType> {
        Some(match value {
            0 => TokenType::Undefined,
            1 => TokenType::Normal,
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => return None,
        })
    }

    /// Whether tokens of this type are spelled in the byte-level alphabet
    /// (the others are their own literal text).
    fn is_byte_level(self) -> bool {
        matches!(self, TokenType::Undefined | TokenType::Normal | TokenType::Byte)
    }
}

/// Texts of the control tokens that end a turn in the chat formats in use
/// (ChatML, LLaMA 3, Phi, Gemma, DeepSeek...): generation stops on them even
/// when the file names a different EOS, as llama.cpp does.
const END_OF_TURN_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|eom_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "<|end▁of▁sentence|>",
    "<｜end▁of▁sentence｜>",
    "<|return|>",
    "<|call|>",
];

/// A byte-level BPE tokenizer with its special tokens and chat template.
/// Immutable after [`Tokenizer::new`] and `Send + Sync`: share one per model.
pub struct Tokenizer {
    tokens: Vec<String>,
    types: Vec<TokenType>,
    /// The bytes each id decodes to.
    token_bytes: Vec<Box<[u8]>>,
    /// Token text → id (the last id wins for a duplicated text, as in llama.cpp
    /// and Hugging Face).
    by_text: HashMap<String, u32>,
    pre: PreTokenizer,
    bpe: Bpe,
    special: SpecialMatcher,
    /// Sorted ids that end generation.
    end_of_generation: Vec<u32>,
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    pad: Option<u32>,
    unk: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    chat_template: Option<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.tokens.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("eot", &self.eot)
            .field("add_bos", &self.add_bos)
            .field("add_eos", &self.add_eos)
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// Checks `spec` and builds the tokenizer. Every inconsistency of the spec
    /// (unsupported model or pre-tokenizer, bad token types, a merge naming a
    /// missing token, a special id out of range, `add_bos` without BOS) is an
    /// error here, so encoding and decoding never fail later.
    pub fn new(spec: TokenizerSpec) -> Result<Tokenizer, TokenizerError> {
        if spec.model != "gpt2" {
            return Err(TokenizerError::UnsupportedModel(spec.model));
        }
        let pre = PreTokenizer::by_name(spec.pre.as_deref())?;
        let n = spec.tokens.len();
        if n == 0 || u32::try_from(n).is_err() {
            return Err(TokenizerError::BadVocabularySize(n));
        }
        let types = if spec.token_types.is_empty() {
            vec![TokenType::Normal; n]
        } else if spec.token_types.len() != n {
            return Err(TokenizerError::TokenTypesLength { types: spec.token_types.len(), tokens: n });
        } else {
            spec.token_types
                .iter()
                .enumerate()
                .map(|(id, &value)| {
                    TokenType::from_gguf(value).ok_or(TokenizerError::BadTokenType { id: id as u32, value })
                })
                .collect::<Result<Vec<_>, _>>()?
        };
        for (name, id) in
            [("bos", spec.bos), ("eos", spec.eos), ("eot", spec.eot), ("pad", spec.pad), ("unk", spec.unk)]
        {
            if let Some(id) = id {
                if id as usize >= n {
                    return Err(TokenizerError::SpecialIdOutOfRange { name, id, vocab_size: n });
                }
            }
        }
        if spec.add_bos && spec.bos.is_none() {
            return Err(TokenizerError::MissingSpecialId { flag: "add_bos", name: "bos" });
        }
        if spec.add_eos && spec.eos.is_none() {
            return Err(TokenizerError::MissingSpecialId { flag: "add_eos", name: "eos" });
        }

        let mut by_text: HashMap<String, u32> = HashMap::with_capacity(n);
        for (id, text) in spec.tokens.iter().enumerate() {
            by_text.insert(text.clone(), id as u32);
        }

        let token_bytes: Vec<Box<[u8]>> = spec
            .tokens
            .iter()
            .zip(&types)
            .map(|(text, ty)| {
                let raw = || text.as_bytes().to_vec();
                let b = if ty.is_byte_level() {
                    bytes::decode_byte_level(text).unwrap_or_else(raw)
                } else {
                    raw()
                };
                b.into_boxed_slice()
            })
            .collect();

        let mut merges = Vec::with_capacity(spec.merges.len());
        for (index, merge) in spec.merges.iter().enumerate() {
            // The separator is the first space after the first character, so a
            // left side that is itself a space (non-byte-level vocabularies)
            // still parses.
            let split = merge.char_indices().nth(1).and_then(|(i, _)| merge[i..].find(' ').map(|j| i + j));
            let Some(at) = split else {
                return Err(TokenizerError::BadMerge { index, merge: merge.clone() });
            };
            let (left, right) = (&merge[..at], &merge[at + 1..]);
            let id_of = |token: &str| {
                by_text.get(token).copied().ok_or_else(|| TokenizerError::MergeTokenMissing {
                    index,
                    merge: merge.clone(),
                    token: token.to_string(),
                })
            };
            let l = id_of(left)?;
            let r = id_of(right)?;
            let m = id_of(&format!("{left}{right}"))?;
            merges.push((l, r, m));
        }

        let mut byte_ids = [None; 256];
        for (b, slot) in byte_ids.iter_mut().enumerate() {
            *slot = by_text.get(bytes::byte_to_char(b as u8).encode_utf8(&mut [0; 4]) as &str).copied();
        }
        let whole_words = pre.ignore_merges.then(|| {
            let mut m = HashMap::new();
            for (id, (b, ty)) in token_bytes.iter().zip(&types).enumerate() {
                if ty.is_byte_level() {
                    m.insert(b.clone(), id as u32);
                }
            }
            m
        });
        let bpe = Bpe::new(merges, byte_ids, spec.unk, whole_words);

        let special = SpecialMatcher::new(spec.tokens.iter().zip(&types).enumerate().filter_map(
            |(id, (t, ty))| match ty {
                TokenType::Control | TokenType::Unknown => Some((t.clone(), id as u32, true)),
                TokenType::UserDefined => Some((t.clone(), id as u32, false)),
                _ => None,
            },
        ));

        let mut end_of_generation: Vec<u32> = [spec.eos, spec.eot].into_iter().flatten().collect();
        for text in END_OF_TURN_TEXTS {
            if let Some(&id) = by_text.get(*text) {
                end_of_generation.push(id);
            }
        }
        end_of_generation.sort_unstable();
        end_of_generation.dedup();

        Ok(Tokenizer {
            tokens: spec.tokens,
            types,
            token_bytes,
            by_text,
            pre,
            bpe,
            special,
            end_of_generation,
            bos: spec.bos,
            eos: spec.eos,
            eot: spec.eot,
            pad: spec.pad,
            unk: spec.unk,
            add_bos: spec.add_bos,
            add_eos: spec.add_eos,
            chat_template: spec.chat_template,
        })
    }

    /// Text → ids. `add_special` adds BOS/EOS as the spec's `add_bos`/`add_eos`
    /// say (for a fresh prompt, not for text appended to one); `parse_special`
    /// turns control-token strings in `text` (`<|im_start|>`) into their ids,
    /// which is right for rendered chat templates and wrong for untrusted user
    /// text (a user could then forge turns).
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_special && self.add_bos {
            out.extend(self.bos);
        }
        let mut segments = Vec::new();
        self.special.split(text, parse_special, &mut segments);
        for seg in segments {
            match seg {
                Segment::Token(id) => out.push(id),
                Segment::Text(t) => {
                    self.pre.for_each_word(t, |w| self.bpe.encode_word(w.as_bytes(), &mut out))
                }
            }
        }
        if add_special && self.add_eos {
            out.extend(self.eos);
        }
        out
    }

    /// Ids → text: normal tokens give back their bytes, control tokens their
    /// literal text (so a rendered prompt round-trips). Ids outside the
    /// vocabulary are skipped ([`Tokenizer::try_decode`] reports them); bytes
    /// that do not form valid UTF-8 (a cut in the middle of a character)
    /// become U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            if let Some(b) = self.token_bytes(id) {
                bytes.extend_from_slice(b);
            }
        }
        String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }

    /// Like [`Tokenizer::decode`], but an id outside the vocabulary is an error
    /// instead of being skipped.
    pub fn try_decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= self.tokens.len()) {
            return Err(TokenizerError::IdOutOfRange { id, vocab_size: self.tokens.len() });
        }
        Ok(self.decode(ids))
    }

    /// A decoder for generated ids that only ever emits whole characters.
    pub fn streaming_decoder(&self) -> StreamDecoder<'_> {
        StreamDecoder::new(self)
    }

    /// The vocabulary's spelling of `id` (byte-level alphabet for normal
    /// tokens: a space is `Ġ`), or `None` outside the vocabulary.
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// The bytes `id` decodes to, or `None` outside the vocabulary.
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        self.token_bytes.get(id as usize).map(|b| &b[..])
    }

    /// The GGUF type of `id`, or `None` outside the vocabulary.
    pub fn token_type(&self, id: u32) -> Option<TokenType> {
        self.types.get(id as usize).copied()
    }

    /// The id whose vocabulary spelling is exactly `text` (e.g. `"<|im_end|>"`).
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.by_text.get(text).copied()
    }

    /// Number of ids; the model's logits have this many entries.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// Beginning-of-sequence id.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// End-of-sequence id.
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// End-of-turn id, where distinct from EOS.
    pub fn eot(&self) -> Option<u32> {
        self.eot
    }

    /// Padding id.
    pub fn pad(&self) -> Option<u32> {
        self.pad
    }

    /// Unknown-token id.
    pub fn unk(&self) -> Option<u32> {
        self.unk
    }

    /// Whether `encode(.., add_special = true, ..)` prepends BOS.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Whether `encode(.., add_special = true, ..)` appends EOS.
    pub fn add_eos(&self) -> bool {
        self.add_eos
    }

    /// Whether generation should stop at `id`: EOS, EOT, or a token whose text
    /// ends a turn in a known chat format (`<|im_end|>`, `<|eot_id|>`,
    /// `<|endoftext|>`...), since instruct models often close a turn with one
    /// of those rather than with the file's EOS.
    pub fn is_end_of_generation(&self, id: u32) -> bool {
        self.end_of_generation.binary_search(&id).is_ok()
    }

    /// All ids for which [`Tokenizer::is_end_of_generation`] holds, sorted.
    pub fn end_of_generation_ids(&self) -> &[u32] {
        &self.end_of_generation
    }

    /// The model's chat template source, if the file has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Renders `messages` with the model's own chat template and its BOS/EOS
    /// texts: the prompt to [`encode`](Tokenizer::encode) with `parse_special`.
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        let template = self.chat_template.as_deref().ok_or(TokenizerError::NoChatTemplate)?;
        let text_of = |id: Option<u32>| id.and_then(|i| self.token_text(i)).unwrap_or("");
        render_chat(template, messages, add_generation_prompt, text_of(self.bos), text_of(self.eos))
    }
}

#[cfg(test)]
mod tests;

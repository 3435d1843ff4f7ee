//! Incremental decoding for token-by-token generation.
//!
//! A byte-level token can end in the middle of a UTF-8 character (an emoji is
//! often two or three tokens), so printing each token's bytes as they come
//! would print broken characters. [`StreamDecoder`] keeps the incomplete tail
//! and hands out only whole characters.

use super::Tokenizer;

/// Turns generated ids into text as they arrive. Made by
/// [`Tokenizer::streaming_decoder`]; one per generation stream.
#[derive(Debug, Clone)]
pub struct StreamDecoder<'a> {
    tokenizer: &'a Tokenizer,
    /// Bytes of an incomplete UTF-8 sequence waiting for the next token.
    pending: Vec<u8>,
}

impl<'a> StreamDecoder<'a> {
    pub(crate) fn new(tokenizer: &'a Tokenizer) -> StreamDecoder<'a> {
        StreamDecoder { tokenizer, pending: Vec::new() }
    }

    /// Adds one token and returns the text it completes: every whole UTF-8
    /// character now available, possibly empty (a partial character is kept
    /// for the next call). Bytes that can never become valid UTF-8 come out as
    /// U+FFFD right away, so a bad sequence does not stall the stream. An id
    /// outside the vocabulary adds nothing.
    pub fn push(&mut self, id: u32) -> String {
        if let Some(bytes) = self.tokenizer.token_bytes(id) {
            self.pending.extend_from_slice(bytes);
        }
        let mut text = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    text.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    // `valid` is valid UTF-8 by the error's contract.
                    text.push_str(&String::from_utf8_lossy(valid));
                    match e.error_len() {
                        Some(bad) => {
                            text.push(char::REPLACEMENT_CHARACTER);
                            rest = &after[bad..];
                        }
                        None => {
                            // Incomplete character at the end: wait for more.
                            rest = after;
                            break;
                        }
                    }
                }
            }
        }
        let keep = rest.len();
        let drop = self.pending.len() - keep;
        self.pending.drain(..drop);
        text
    }

    /// Whether bytes of an unfinished character are waiting.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Ends the stream: whatever incomplete character is left comes out as
    /// U+FFFD (empty if nothing is pending).
    pub fn finish(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        text
    }
}

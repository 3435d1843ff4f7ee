//! Pre-tokenizers: how text is cut into words before BPE merges run.
//!
//! BPE never merges across a word boundary, so the cut decides the ids as much
//! as the merges do, and each model family was trained with its own cut. A
//! GGUF file names it in `tokenizer.ggml.pre`; the table below maps each name
//! to the regexes of the model's original `tokenizer.json` (the same ones
//! llama.cpp uses). The regexes run one after the other, each splitting every
//! piece the previous one produced into matched and unmatched pieces (both
//! kept, as Hugging Face's `Split(behavior = Isolated)` does), so a lookahead
//! such as `\s+(?!\S)` sees the end of its piece, not the rest of the text.

use fancy_regex::Regex;

use super::TokenizerError;

/// GPT-2's byte-level regex as Hugging Face's `ByteLevel(use_regex = true)`
/// runs it (with the trailing `\s+` that catches whitespace the lookahead
/// alternative leaves behind).
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// LLaMA 3's regex, with `(?i:'s|...)` spelled out as ASCII case pairs so that
/// Unicode case folding (`ſ` for `s`, the Kelvin sign for `k`) cannot differ
/// between regex engines.
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+";

/// Qwen 2's regex: LLaMA 3's with single digits.
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+";

/// Every digit on its own (Hugging Face's `Digits(individual_digits = true)`,
/// whose test is `char::is_numeric`, i.e. `\p{N}`).
const EACH_DIGIT: &str = r"\p{N}";

/// The names `tokenizer.ggml.pre` may take here, for error messages.
pub(crate) const SUPPORTED_PRE: &[&str] = &[
    "default",
    "gpt2",
    "gpt-2",
    "phi-2",
    "mpt",
    "olmo",
    "smollm",
    "starcoder",
    "refact",
    "codeshell",
    "command-r",
    "exaone",
    "minerva-7b",
    "llama3",
    "llama-v3",
    "llama-bpe",
    "falcon3",
    "dbrx",
    "smaug-bpe",
    "qwen2",
    "deepseek-r1-qwen",
    "stablelm2",
    "megrez",
];

/// A compiled pre-tokenizer: the regex cascade plus the one BPE switch that
/// comes with the family.
pub(crate) struct PreTokenizer {
    steps: Vec<Regex>,
    /// LLaMA 3 (`ignore_merges` in its tokenizer.json): a word that is itself a
    /// token is emitted as that token without running merges.
    pub(crate) ignore_merges: bool,
}

impl PreTokenizer {
    /// The pre-tokenizer named `pre`; `None` means the file predates the key
    /// and gets llama.cpp's `default`.
    pub(crate) fn by_name(pre: Option<&str>) -> Result<PreTokenizer, TokenizerError> {
        let name = pre.unwrap_or("default");
        let (patterns, ignore_merges): (&[&str], bool) = match name {
            // llama.cpp's fallback for BPE files without a known pre-tokenizer.
            "default" => (&[r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", "[0-9][0-9][0-9]"], false),
            "gpt2" | "gpt-2" | "phi-2" | "mpt" | "olmo" => (&[GPT2], false),
            "smollm" | "starcoder" | "refact" | "codeshell" | "command-r" | "exaone" | "minerva-7b" => {
                (&[EACH_DIGIT, GPT2], false)
            }
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" => (&[LLAMA3], true),
            "dbrx" | "smaug-bpe" => (&[LLAMA3], false),
            "qwen2" | "deepseek-r1-qwen" | "stablelm2" | "megrez" => (&[QWEN2], false),
            other => return Err(TokenizerError::UnknownPreTokenizer(other.to_string())),
        };
        let steps = patterns
            .iter()
            .map(|p| {
                Regex::new(p).map_err(|e| TokenizerError::Regex {
                    pre: name.to_string(),
                    pattern: p.to_string(),
                    message: e.to_string(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(PreTokenizer { steps, ignore_merges })
    }

    /// Calls `word` with every word of `text`, in order; the words cover the
    /// text exactly (no byte dropped or repeated).
    pub(crate) fn for_each_word<'t>(&self, text: &'t str, mut word: impl FnMut(&'t str)) {
        if text.is_empty() {
            return;
        }
        let mut pieces: Vec<(usize, usize)> = vec![(0, text.len())];
        let mut next: Vec<(usize, usize)> = Vec::new();
        for re in &self.steps {
            next.clear();
            for &(start, end) in &pieces {
                split_isolated(re, text, start, end, &mut next);
            }
            std::mem::swap(&mut pieces, &mut next);
        }
        for (start, end) in pieces {
            word(&text[start..end]);
        }
    }
}

/// Appends to `out` the pieces of `text[start..end]`: each match of `re`, and
/// each non-empty stretch between matches. If the regex engine gives up (its
/// backtracking limit), the rest of the piece stays one piece: the ids may then
/// differ from the reference, but no text is lost and nothing panics.
fn split_isolated(re: &Regex, text: &str, start: usize, end: usize, out: &mut Vec<(usize, usize)>) {
    let piece = &text[start..end];
    let mut last = 0;
    for m in re.find_iter(piece) {
        let Ok(m) = m else { break };
        if m.start() == m.end() {
            continue;
        }
        if m.start() > last {
            out.push((start + last, start + m.start()));
        }
        out.push((start + m.start(), start + m.end()));
        last = m.end();
    }
    if last < piece.len() {
        out.push((start + last, end));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(pre: &str, text: &str) -> Vec<String> {
        let p = PreTokenizer::by_name(Some(pre)).unwrap();
        let mut v = Vec::new();
        p.for_each_word(text, |w| v.push(w.to_string()));
        v
    }

    #[test]
    fn every_named_pre_tokenizer_compiles() {
        for name in SUPPORTED_PRE {
            PreTokenizer::by_name(Some(name)).unwrap();
        }
        PreTokenizer::by_name(None).unwrap();
        assert!(matches!(
            PreTokenizer::by_name(Some("klingon")),
            Err(TokenizerError::UnknownPreTokenizer(n)) if n == "klingon"
        ));
    }

    #[test]
    fn gpt2_cut() {
        assert_eq!(words("gpt2", "Hello world  "), ["Hello", " world", "  "]);
        assert_eq!(words("gpt2", "a   b"), ["a", "  ", " b"]);
        assert_eq!(words("gpt2", "\n\nhi"), ["\n", "\n", "hi"]);
        assert_eq!(words("gpt2", "I'm 42!!"), ["I", "'m", " 42", "!!"]);
    }

    #[test]
    fn smollm_isolates_digits_first() {
        assert_eq!(words("smollm", "x 123"), ["x", " ", "1", "2", "3"]);
        assert_eq!(words("smollm", "v2.0"), ["v", "2", ".", "0"]);
    }

    #[test]
    fn llama3_groups_three_digits() {
        assert_eq!(words("llama-bpe", "12345 ok\n\n"), ["123", "45", " ok", "\n\n"]);
        assert_eq!(words("llama-bpe", "IT'S"), ["IT", "'S"]);
    }

    #[test]
    fn words_cover_the_text() {
        let text = "  mixed\t\r\n123 ünïcödé 😀\u{200d}🔥 'LL '' end  ";
        for name in SUPPORTED_PRE {
            assert_eq!(words(name, text).concat(), text, "pre {name}");
        }
    }
}

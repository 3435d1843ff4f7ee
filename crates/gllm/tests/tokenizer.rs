//! The tokenizer against the reference: SmolLM2-135M-Instruct's own tokenizer
//! (read from its GGUF file) run by Hugging Face `tokenizers` in Python.
//!
//! `tools/tokenizer_reference.py` writes the GGUF tokenizer fields and the
//! reference ids of every string in `tests/data/tokenizer_strings.json`; this
//! test builds a [`TokenizerSpec`] from those fields (so it does not depend on
//! the crate's GGUF reader) and compares. Nothing is skipped: without Python,
//! its packages or the model file the test fails and says what to do.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

use gllm::tokenizer::{ChatMessage, ChatTemplate, Tokenizer, TokenizerSpec};
use serde_json::Value;

const MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The reference document, produced once per test binary.
fn reference() -> &'static Value {
    static REF: OnceLock<Value> = OnceLock::new();
    REF.get_or_init(|| {
        let root = repo_root();
        let model = root.join(MODEL);
        assert!(
            model.is_file(),
            "the test model {} is missing: run scripts/fetch-smollm2.sh",
            model.display()
        );
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tokenizer_reference.json");
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string());
        let run = Command::new(&python)
            .arg(root.join("tools/tokenizer_reference.py"))
            .arg("--model")
            .arg(&model)
            .arg("--strings")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tokenizer_strings.json"))
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run {python} ({e}): install Python 3 and `pip install gguf tokenizers numpy`")
            });
        assert!(
            run.status.success(),
            "tools/tokenizer_reference.py failed ({}):\n{}\n(needs `pip install gguf tokenizers numpy` and the \
             model: run scripts/fetch-smollm2.sh)",
            run.status,
            String::from_utf8_lossy(&run.stderr)
        );
        let text = std::fs::read_to_string(&out).expect("reference JSON written");
        serde_json::from_str(&text).expect("reference JSON parses")
    })
}

fn opt_u32(v: &Value) -> Option<u32> {
    v.as_u64().map(|n| u32::try_from(n).expect("id fits u32"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().expect("array").iter().map(|s| s.as_str().expect("string").to_string()).collect()
}

fn spec() -> TokenizerSpec {
    let s = &reference()["spec"];
    TokenizerSpec {
        model: s["model"].as_str().expect("model").to_string(),
        pre: s["pre"].as_str().map(str::to_string),
        tokens: strings(&s["tokens"]),
        merges: strings(&s["merges"]),
        token_types: s["token_types"]
            .as_array()
            .expect("token_types")
            .iter()
            .map(|t| i32::try_from(t.as_i64().expect("int")).expect("i32"))
            .collect(),
        bos: opt_u32(&s["bos"]),
        eos: opt_u32(&s["eos"]),
        eot: opt_u32(&s["eot"]),
        pad: opt_u32(&s["pad"]),
        unk: opt_u32(&s["unk"]),
        add_bos: s["add_bos"].as_bool().expect("add_bos"),
        add_eos: s["add_eos"].as_bool().expect("add_eos"),
        chat_template: s["chat_template"].as_str().map(str::to_string),
    }
}

fn tokenizer() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| Tokenizer::new(spec()).expect("SmolLM2's tokenizer builds"))
}

/// (text, reference ids) of every fixture string.
fn cases() -> Vec<(String, Vec<u32>)> {
    let cases = reference()["cases"].as_array().expect("cases");
    assert!(cases.len() >= 40, "fixture has {} strings", cases.len());
    cases
        .iter()
        .map(|c| {
            let ids = c["ids"].as_array().expect("ids").iter().map(|i| opt_u32(i).expect("id")).collect();
            (c["text"].as_str().expect("text").to_string(), ids)
        })
        .collect()
}

#[test]
fn spec_is_smollm2() {
    let t = tokenizer();
    assert_eq!(t.vocab_size(), 49152);
    assert_eq!((t.bos(), t.eos()), (Some(1), Some(2)));
    assert!(!t.add_bos());
    assert_eq!(spec().pre.as_deref(), Some("smollm"));
    assert!(t.chat_template().is_some_and(|c| c.contains("You are a helpful AI assistant named SmolLM")));
}

#[test]
fn ids_match_the_reference() {
    let t = tokenizer();
    let mut failures = Vec::new();
    for (text, want) in cases() {
        let got = t.encode(&text, false, true);
        if got != want {
            let show =
                |ids: &[u32]| ids.iter().map(|&i| format!("{i}:{:?}", t.decode(&[i]))).collect::<Vec<_>>();
            failures.push(format!("{text:?}\n  want {:?}\n  got  {:?}", show(&want), show(&got)));
        }
    }
    assert!(failures.is_empty(), "{} strings differ:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn decode_inverts_encode() {
    let t = tokenizer();
    for (text, _) in cases() {
        for parse_special in [true, false] {
            let ids = t.encode(&text, true, parse_special);
            assert_eq!(t.decode(&ids), text, "parse_special={parse_special}");
        }
    }
}

#[test]
fn streaming_decode_concatenates_to_the_text() {
    let t = tokenizer();
    for (text, ids) in cases() {
        let mut d = t.streaming_decoder();
        let mut joined = String::new();
        for &id in &ids {
            let chunk = d.push(id);
            // A String is valid UTF-8 by construction; what must not happen is
            // a replacement character standing for a split multi-byte char.
            assert!(!chunk.contains('\u{FFFD}') || text.contains('\u{FFFD}'), "{text:?}: chunk {chunk:?}");
            joined.push_str(&chunk);
        }
        assert!(!d.has_pending(), "{text:?}: bytes left pending");
        joined.push_str(&d.finish());
        assert_eq!(joined, text);
    }
}

#[test]
fn end_of_generation_tokens() {
    let t = tokenizer();
    let im_end = t.token_id("<|im_end|>").expect("<|im_end|> in vocab");
    assert!(t.is_end_of_generation(im_end));
    assert!(t.is_end_of_generation(2));
    assert!(t.is_end_of_generation(t.token_id("<|endoftext|>").expect("<|endoftext|>")));
    assert!(!t.is_end_of_generation(t.token_id("<|im_start|>").expect("<|im_start|>")));
    assert!(!t.is_end_of_generation(t.encode("Hello", false, false)[0]));
}

#[test]
fn chat_template_matches_jinja2_and_chatml() {
    let t = tokenizer();
    let messages = [
        ChatMessage::new("user", "What is 2+2?"),
        ChatMessage::new("assistant", "2+2 = 4."),
        ChatMessage::new("user", "And in French?  Answer briefly.\n"),
    ];
    let rendered = t.apply_chat_template(&messages, true).expect("renders");
    let expected = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
                    <|im_start|>user\nWhat is 2+2?<|im_end|>\n\
                    <|im_start|>assistant\n2+2 = 4.<|im_end|>\n\
                    <|im_start|>user\nAnd in French?  Answer briefly.\n<|im_end|>\n\
                    <|im_start|>assistant\n";
    assert_eq!(rendered, expected);
    let without = t.apply_chat_template(&messages, false).expect("renders");
    assert_eq!(without, expected.strip_suffix("<|im_start|>assistant\n").expect("suffix"));
    // A system message replaces the default one.
    let own =
        t.apply_chat_template(&[ChatMessage::new("system", "Be terse."), messages[0].clone()], true).unwrap();
    assert!(own.starts_with("<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\n"), "{own:?}");

    match &reference()["chat"] {
        Value::Null => {
            eprintln!("note: jinja2 is not installed; checked against the hand-written ChatML only")
        }
        chat => {
            let sent: Vec<ChatMessage> = chat["messages"]
                .as_array()
                .expect("messages")
                .iter()
                .map(|m| ChatMessage::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
                .collect();
            assert_eq!(sent, messages, "the script's conversation changed");
            let template = ChatTemplate::new(t.chat_template().unwrap()).unwrap();
            let bos = chat["bos_token"].as_str().unwrap();
            let eos = chat["eos_token"].as_str().unwrap();
            assert_eq!(template.render(&sent, true, bos, eos).unwrap(), chat["with_generation_prompt"]);
            assert_eq!(template.render(&sent, false, bos, eos).unwrap(), chat["without_generation_prompt"]);
        }
    }

    let ids = t.encode(&rendered, t.add_bos(), true);
    assert_eq!(ids[0], t.token_id("<|im_start|>").unwrap());
    assert_eq!(t.decode(&ids), rendered);
}

#[test]
fn encodes_ten_thousand_words_fast() {
    // Fresh tokenizer: a cold word cache.
    let t = Tokenizer::new(spec()).unwrap();
    let syllables = ["ka", "lo", "mi", "ne", "ru", "ta", "shi", "von", "der", "ell", "qu", "ix", "é", "中"];
    let mut state = 7u64;
    let mut rnd = |n: usize| {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) as usize % n
    };
    let mut text = String::new();
    for w in 0..10_000 {
        for _ in 0..1 + rnd(4) {
            text.push_str(syllables[rnd(syllables.len())]);
        }
        text.push_str(match w % 17 {
            0 => ". ",
            5 => ", ",
            9 => "  \n",
            13 => " 1234 ",
            _ => " ",
        });
    }
    let start = Instant::now();
    let ids = t.encode(&text, false, true);
    let cold = start.elapsed();
    let start = Instant::now();
    let again = t.encode(&text, false, true);
    let warm = start.elapsed();
    assert_eq!(ids, again);
    assert_eq!(t.decode(&ids), text);
    eprintln!(
        "encode: 10000 words, {} bytes -> {} ids: cold cache {:?}, warm cache {:?}",
        text.len(),
        ids.len(),
        cold,
        warm
    );
    // Generous for a loaded 2-core machine at the test profile's opt-level 1;
    // the point is to catch an accidental quadratic path.
    assert!(cold.as_secs_f64() < 2.0, "10 000 words took {cold:?}");
}

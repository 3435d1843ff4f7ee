//! Unit tests on a tiny hand-made vocabulary (the real-model check is
//! `tests/tokenizer.rs`).

use super::bytes::byte_to_char;
use super::*;

const ENDOFTEXT: u32 = 0;
const IM_START: u32 = 1;
const IM_END: u32 = 2;
const TOOL: u32 = 3;
/// Ids 4..260 are the 256 byte tokens, in byte order.
const BYTE0: u32 = 4;

fn byte(b: u8) -> u32 {
    BYTE0 + u32::from(b)
}

/// A vocabulary with three control tokens, one user-defined token, the 256
/// byte tokens and the tokens `merges` produce (appended in order).
fn spec_with(merges: &[&str]) -> TokenizerSpec {
    let mut tokens: Vec<String> =
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool>"].iter().map(|s| s.to_string()).collect();
    let mut types = vec![3, 3, 3, 4];
    for b in 0..=255u8 {
        tokens.push(byte_to_char(b).to_string());
        types.push(1);
    }
    for m in merges {
        let merged = m.replace(' ', "");
        if !tokens.contains(&merged) {
            tokens.push(merged);
            types.push(1);
        }
    }
    TokenizerSpec {
        model: "gpt2".into(),
        pre: Some("smollm".into()),
        tokens,
        merges: merges.iter().map(|s| s.to_string()).collect(),
        token_types: types,
        bos: Some(IM_START),
        eos: Some(ENDOFTEXT),
        ..TokenizerSpec::default()
    }
}

const MERGES: &[&str] = &["h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld"];

fn tok() -> Tokenizer {
    Tokenizer::new(spec_with(MERGES)).unwrap()
}

fn id(t: &Tokenizer, text: &str) -> u32 {
    t.token_id(text).unwrap()
}

#[test]
fn merges_whole_words() {
    let t = tok();
    assert_eq!(t.encode("hello world", false, false), [id(&t, "hello"), id(&t, "Ġworld")]);
    assert_eq!(t.decode(&t.encode("hello world", false, false)), "hello world");
    // Digits are isolated by the smollm pre-tokenizer, then byte tokens.
    assert_eq!(t.encode("x12", false, false), [byte(b'x'), byte(b'1'), byte(b'2')]);
    assert_eq!(t.encode("", true, true), Vec::<u32>::new());
}

#[test]
fn merge_order_decides() {
    // "ab"+"c" ranks before "b"+"c": "abc" is one token.
    let t = Tokenizer::new(spec_with(&["a b", "ab c", "b c"])).unwrap();
    assert_eq!(t.encode("abc", false, false), [id(&t, "abc")]);
    // "b c" ranks first: "a" + "bc", and no rule joins those.
    let t = Tokenizer::new(spec_with(&["b c", "a b", "ab c"])).unwrap();
    assert_eq!(t.encode("abc", false, false), [byte(b'a'), id(&t, "bc")]);
}

#[test]
fn special_tokens_only_when_asked_user_defined_always() {
    let t = tok();
    let text = "<|im_start|>hello<|im_end|><tool>";
    let parsed = t.encode(text, false, true);
    assert_eq!(parsed, [IM_START, id(&t, "hello"), IM_END, TOOL]);
    let plain = t.encode(text, false, false);
    assert!(!plain.contains(&IM_START) && !plain.contains(&IM_END));
    assert_eq!(plain.last(), Some(&TOOL));
    // Both round-trip: control tokens decode as their text.
    assert_eq!(t.decode(&parsed), text);
    assert_eq!(t.decode(&plain), text);
    // Not a token: plain bytes.
    assert_eq!(t.decode(&t.encode("<|im_start", false, true)), "<|im_start");
}

#[test]
fn bos_and_eos_follow_the_spec() {
    let mut spec = spec_with(MERGES);
    spec.add_bos = true;
    spec.add_eos = true;
    let t = Tokenizer::new(spec).unwrap();
    assert_eq!(t.encode("hello", true, false), [IM_START, id(&t, "hello"), ENDOFTEXT]);
    assert_eq!(t.encode("hello", false, false), [id(&t, "hello")]);
    assert!(t.add_bos() && t.add_eos());
    assert_eq!(
        (t.bos(), t.eos(), t.eot(), t.pad(), t.unk()),
        (Some(IM_START), Some(ENDOFTEXT), None, None, None)
    );
}

#[test]
fn bytes_without_a_token() {
    // Drop the token of 'z' (rename it so nothing else changes).
    let mut spec = spec_with(MERGES);
    let z = byte(b'z') as usize;
    spec.tokens[z] = "<no-z>".into();
    spec.token_types[z] = 5;
    let t = Tokenizer::new(spec.clone()).unwrap();
    // No unk token: the byte is dropped (as Hugging Face's BPE does), no panic.
    assert_eq!(t.encode("hezz", false, false), [id(&t, "he")]);
    spec.unk = Some(ENDOFTEXT);
    let t = Tokenizer::new(spec).unwrap();
    assert_eq!(t.encode("hezz", false, false), [id(&t, "he"), ENDOFTEXT, ENDOFTEXT]);
}

#[test]
fn decode_edges() {
    let t = tok();
    let big = t.vocab_size() as u32;
    assert_eq!(t.decode(&[byte(b'a'), big, u32::MAX, byte(b'b')]), "ab");
    assert_eq!(
        t.try_decode(&[byte(b'a'), big]),
        Err(TokenizerError::IdOutOfRange { id: big, vocab_size: t.vocab_size() })
    );
    // Half a character decodes lossily, never panics.
    assert_eq!(t.decode(&[byte(0xC3)]), "\u{FFFD}");
    assert_eq!(t.token_text(IM_END), Some("<|im_end|>"));
    assert_eq!(t.token_text(big), None);
    assert_eq!(t.token_type(TOOL), Some(TokenType::UserDefined));
    assert_eq!(t.token_bytes(byte(b' ')), Some(&b" "[..]));
}

#[test]
fn end_of_generation() {
    let t = tok();
    assert!(t.is_end_of_generation(IM_END));
    assert!(t.is_end_of_generation(ENDOFTEXT));
    assert!(!t.is_end_of_generation(IM_START));
    assert!(!t.is_end_of_generation(byte(b'a')));
    assert!(!t.is_end_of_generation(u32::MAX));
    assert_eq!(t.end_of_generation_ids(), [ENDOFTEXT, IM_END]);
}

#[test]
fn streaming_emits_whole_characters_only() {
    let t = tok();
    let text = "hé 😀!";
    let ids: Vec<u32> = text.bytes().map(byte).collect();
    let mut d = t.streaming_decoder();
    let chunks: Vec<String> = ids.iter().map(|&i| d.push(i)).collect();
    assert!(!d.has_pending());
    assert_eq!(d.finish(), "");
    assert_eq!(chunks.concat(), text);
    // The emoji's four bytes give three empty chunks, then the emoji.
    assert_eq!(chunks[4..8], ["", "", "", "😀"]);
    // An invalid byte comes out at once as U+FFFD; a dangling lead at finish.
    let mut d = t.streaming_decoder();
    assert_eq!(d.push(byte(0xFF)), "\u{FFFD}");
    assert_eq!(d.push(byte(0xF0)), "");
    assert_eq!(d.push(byte(b'a')), "\u{FFFD}a");
    assert_eq!(d.push(byte(0xE2)), "");
    assert!(d.has_pending());
    assert_eq!(d.finish(), "\u{FFFD}");
}

#[test]
fn spec_errors_are_errors() {
    let err = |f: &dyn Fn(&mut TokenizerSpec)| {
        let mut s = spec_with(MERGES);
        f(&mut s);
        Tokenizer::new(s).unwrap_err()
    };
    let e = err(&|s| s.model = "llama".into());
    assert_eq!(e, TokenizerError::UnsupportedModel("llama".into()));
    assert!(e.to_string().contains("unsupported tokenizer model \"llama\""), "{e}");
    let e = err(&|s| s.pre = Some("martian".into()));
    assert!(e.to_string().contains("unknown pre-tokenizer \"martian\""), "{e}");
    assert!(e.to_string().contains("smollm"), "{e}");
    assert!(
        matches!(err(&|s| s.merges.push("he xyz".into())), TokenizerError::MergeTokenMissing { token, .. } if token == "xyz")
    );
    assert!(
        matches!(err(&|s| s.merges.push("qq e".into())), TokenizerError::MergeTokenMissing { token, .. } if token == "qq")
    );
    // Both sides exist, the result does not.
    assert!(
        matches!(err(&|s| s.merges.push("q q".into())), TokenizerError::MergeTokenMissing { token, .. } if token == "qq")
    );
    assert!(matches!(err(&|s| s.merges.push("nospace".into())), TokenizerError::BadMerge { index: 9, .. }));
    assert!(matches!(err(&|s| s.merges.push(String::new())), TokenizerError::BadMerge { .. }));
    let n = spec_with(MERGES).tokens.len();
    assert_eq!(
        err(&|s| s.eos = Some(n as u32)),
        TokenizerError::SpecialIdOutOfRange { name: "eos", id: n as u32, vocab_size: n }
    );
    assert!(matches!(
        err(&|s| s.unk = Some(u32::MAX)),
        TokenizerError::SpecialIdOutOfRange { name: "unk", .. }
    ));
    assert!(matches!(
        err(&|s| s.token_types.pop().map(drop).unwrap_or(())),
        TokenizerError::TokenTypesLength { .. }
    ));
    assert_eq!(err(&|s| s.token_types[7] = 9), TokenizerError::BadTokenType { id: 7, value: 9 });
    assert!(matches!(
        err(&|s| {
            s.bos = None;
            s.add_bos = true;
        }),
        TokenizerError::MissingSpecialId { flag: "add_bos", .. }
    ));
    assert!(matches!(
        err(&|s| {
            s.tokens.clear();
            s.token_types.clear();
            s.merges.clear();
            s.bos = None;
            s.eos = None;
        }),
        TokenizerError::BadVocabularySize(0)
    ));
}

#[test]
fn no_pre_means_default_and_empty_types_mean_normal() {
    let mut spec = spec_with(MERGES);
    spec.pre = None;
    spec.token_types.clear();
    let t = Tokenizer::new(spec).unwrap();
    // Without types nothing is a control token: "<|im_end|>" is plain text...
    assert!(!t.encode("<|im_end|>", false, true).contains(&IM_END));
    // ...but still ends generation by its text.
    assert!(t.is_end_of_generation(IM_END));
    assert_eq!(t.decode(&t.encode("hello, 1234 world!!", false, true)), "hello, 1234 world!!");
}

#[test]
fn chat_template_from_the_spec() {
    let mut spec = spec_with(MERGES);
    spec.chat_template = Some(
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
            .into(),
    );
    let t = Tokenizer::new(spec).unwrap();
    let prompt = t.apply_chat_template(&[ChatMessage::new("user", "hello")], true).unwrap();
    assert_eq!(prompt, "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n");
    let ids = t.encode(&prompt, false, true);
    assert_eq!(ids[0], IM_START);
    assert_eq!(t.decode(&ids), prompt);
    assert_eq!(tok().apply_chat_template(&[], false), Err(TokenizerError::NoChatTemplate));
}

#[test]
fn tokenizer_is_shareable() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Tokenizer>();
    assert_send_sync::<ChatTemplate>();
}

/// A small deterministic generator (no dependency for a test).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

#[test]
fn random_text_round_trips_and_random_ids_never_panic() {
    let t = tok();
    let pool: Vec<char> =
        "ab hello world\t\n\r 0123456789 .,!?'s'LL é中😀\u{200d}\u{a0}<|im_end|><tool>".chars().collect();
    let mut rng = Lcg(42);
    for _ in 0..300 {
        let len = (rng.next() % 40) as usize;
        let s: String = (0..len).map(|_| pool[(rng.next() as usize) % pool.len()]).collect();
        for parse_special in [false, true] {
            let ids = t.encode(&s, true, parse_special);
            assert_eq!(t.decode(&ids), s, "{s:?}");
        }
        let ids: Vec<u32> = (0..len).map(|_| (rng.next() % (t.vocab_size() as u64 + 3)) as u32).collect();
        let whole = t.decode(&ids);
        let mut d = t.streaming_decoder();
        let mut streamed: String = ids.iter().map(|&i| d.push(i)).collect();
        streamed.push_str(&d.finish());
        assert_eq!(streamed, whole, "{ids:?}");
    }
}

//! Finding control and user-defined token strings in text.
//!
//! Tokens such as `<|im_start|>` must become their own id, never BPE pieces of
//! `<`, `|`, `im`, ... So before pre-tokenizing, the text is cut at their
//! occurrences, leftmost first and, among tokens starting at the same byte,
//! longest first (Hugging Face's added-vocabulary rule). The candidates are
//! bucketed by first byte, which keeps the scan linear in practice: only a
//! handful of special strings share a first byte.

/// A stretch of input text: plain text to pre-tokenize, or a special token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Segment<'t> {
    Text(&'t str),
    Token(u32),
}

/// One special string: its id and whether it is only recognised when the
/// caller asks to parse special tokens.
struct Entry {
    text: Box<[u8]>,
    id: u32,
    needs_parse_special: bool,
}

/// Special strings bucketed by first byte, each bucket longest first.
pub(crate) struct SpecialMatcher {
    buckets: Vec<Vec<Entry>>,
    any_always: bool,
}

impl SpecialMatcher {
    /// `entries`: (text, id, needs_parse_special). Empty strings are ignored.
    pub(crate) fn new(entries: impl IntoIterator<Item = (String, u32, bool)>) -> SpecialMatcher {
        let mut buckets: Vec<Vec<Entry>> = (0..256).map(|_| Vec::new()).collect();
        let mut any_always = false;
        for (text, id, needs_parse_special) in entries {
            let Some(&first) = text.as_bytes().first() else { continue };
            any_always |= !needs_parse_special;
            buckets[first as usize].push(Entry { text: text.into_bytes().into(), id, needs_parse_special });
        }
        for b in &mut buckets {
            // Longest first; ties keep the lower id first (stable sort).
            b.sort_by_key(|e| std::cmp::Reverse(e.text.len()));
        }
        SpecialMatcher { buckets, any_always }
    }

    /// Cuts `text` into plain-text and special-token segments. With
    /// `parse_special` false only the always-recognised (user-defined) tokens
    /// are matched.
    pub(crate) fn split<'t>(&self, text: &'t str, parse_special: bool, out: &mut Vec<Segment<'t>>) {
        if !parse_special && !self.any_always {
            if !text.is_empty() {
                out.push(Segment::Text(text));
            }
            return;
        }
        let bytes = text.as_bytes();
        let mut plain_start = 0;
        let mut i = 0;
        while i < bytes.len() {
            let found = self.buckets[bytes[i] as usize]
                .iter()
                .find(|e| (parse_special || !e.needs_parse_special) && bytes[i..].starts_with(&e.text));
            match found {
                Some(e) => {
                    // A special string is valid UTF-8 starting with the byte at
                    // `i`, so `i` and `i + len` are char boundaries.
                    if plain_start < i {
                        out.push(Segment::Text(&text[plain_start..i]));
                    }
                    out.push(Segment::Token(e.id));
                    i += e.text.len();
                    plain_start = i;
                }
                None => i += 1,
            }
        }
        if plain_start < bytes.len() {
            out.push(Segment::Text(&text[plain_start..]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftmost_longest() {
        let m = SpecialMatcher::new([
            ("<a>".to_string(), 1, true),
            ("<a><b>".to_string(), 2, true),
            ("<b>".to_string(), 3, true),
            ("@".to_string(), 4, false),
        ]);
        let mut out = Vec::new();
        m.split("x<a><b>y<a>@<b", true, &mut out);
        use Segment::*;
        assert_eq!(out, [Text("x"), Token(2), Text("y"), Token(1), Token(4), Text("<b")]);
        out.clear();
        m.split("x<a>@é", false, &mut out);
        assert_eq!(out, [Text("x<a>"), Token(4), Text("é")]);
        out.clear();
        m.split("", true, &mut out);
        assert!(out.is_empty());
    }
}

//! The merge loop of byte-level BPE.
//!
//! A word starts as one symbol per byte (the token of that byte's character).
//! Then, repeatedly, the adjacent pair whose merge rule has the lowest rank is
//! merged, the leftmost one among equal ranks; this is the order Hugging Face
//! `tokenizers` and llama.cpp apply, and it decides the ids whenever merges
//! overlap ("a a a"). The symbols form a linked list over a vector and the
//! candidate pairs sit in a binary heap keyed by (rank, position), so a word
//! of n bytes costs O(n log n), not the O(n²) of rescanning for the best pair:
//! long runs of spaces, digits-free hex blobs or minified code stay cheap.
//!
//! Stale heap entries (a pair whose side was merged meanwhile) are dropped when
//! popped: the pair at that position is looked up again, and since a rank
//! names exactly one (left, right) pair, an equal rank means the same pair.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Mutex;

/// A small multiplicative hasher for the integer keys of the merge table (the
/// default SipHash costs more than the whole merge step it guards).
#[derive(Default)]
pub(crate) struct IntHasher(u64);

impl Hasher for IntHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

/// Hash map keyed by packed (left, right) token ids.
type PairMap = HashMap<u64, (u32, u32), BuildHasherDefault<IntHasher>>;

/// Packs a pair of ids into one key.
fn pair_key(left: u32, right: u32) -> u64 {
    (u64::from(left) << 32) | u64::from(right)
}

/// Word bytes → their ids.
type WordCache = HashMap<Box<[u8]>, Box<[u32]>>;

/// Words longer than this (bytes) are not cached: they are rare and would let
/// one pathological input fill the cache.
const CACHE_MAX_WORD: usize = 64;
/// Entries kept before the cache is emptied and starts over.
const CACHE_MAX_ENTRIES: usize = 1 << 16;

/// The merge rules and byte tokens of one vocabulary, plus a word cache.
pub(crate) struct Bpe {
    /// (left, right) → (rank, merged id).
    merges: PairMap,
    /// The token of each byte's character, if the vocabulary has it.
    byte_ids: [Option<u32>; 256],
    /// Substitute for a byte with no token; without it such bytes are dropped
    /// (as Hugging Face's BPE without `unk_token` does).
    unk: Option<u32>,
    /// Whole-word tokens looked up before merging (`ignore_merges`), by bytes.
    whole_words: Option<HashMap<Box<[u8]>, u32>>,
    /// Results of recent words: most text repeats its words a lot.
    cache: Mutex<WordCache>,
}

/// One symbol of the word being merged.
#[derive(Clone, Copy)]
struct Symbol {
    id: u32,
    prev: u32,
    next: u32,
    alive: bool,
}

/// Words at least this long are merged in chunks (positions are u32).
const MAX_MERGE_LEN: usize = 1 << 30;

/// "No neighbour" in [`Symbol::prev`]/[`Symbol::next`].
const NIL: u32 = u32::MAX;

impl Bpe {
    /// `merges`: (left id, right id, merged id) in rank order; a pair listed
    /// twice keeps its first (lowest) rank.
    pub(crate) fn new(
        merges: impl IntoIterator<Item = (u32, u32, u32)>,
        byte_ids: [Option<u32>; 256],
        unk: Option<u32>,
        whole_words: Option<HashMap<Box<[u8]>, u32>>,
    ) -> Bpe {
        let mut map = PairMap::default();
        for (rank, (left, right, merged)) in merges.into_iter().enumerate() {
            let rank = u32::try_from(rank).unwrap_or(u32::MAX);
            map.entry(pair_key(left, right)).or_insert((rank, merged));
        }
        Bpe { merges: map, byte_ids, unk, whole_words, cache: Mutex::new(HashMap::new()) }
    }

    /// Appends the ids of one pre-tokenized word.
    pub(crate) fn encode_word(&self, word: &[u8], out: &mut Vec<u32>) {
        if word.is_empty() {
            return;
        }
        if let Some(&id) = self.whole_words.as_ref().and_then(|w| w.get(word)) {
            out.push(id);
            return;
        }
        let cacheable = word.len() <= CACHE_MAX_WORD;
        if cacheable {
            if let Ok(cache) = self.cache.lock() {
                if let Some(ids) = cache.get(word) {
                    out.extend_from_slice(ids);
                    return;
                }
            }
        }
        let start = out.len();
        self.merge(word, out);
        if cacheable {
            if let Ok(mut cache) = self.cache.lock() {
                if cache.len() >= CACHE_MAX_ENTRIES {
                    cache.clear();
                }
                cache.insert(word.into(), out[start..].into());
            }
        }
    }

    /// The rank and result of merging `left` then `right`, if a rule exists.
    fn rule(&self, left: u32, right: u32) -> Option<(u32, u32)> {
        self.merges.get(&pair_key(left, right)).copied()
    }

    /// Runs the merge loop on `word` and appends the resulting ids.
    fn merge(&self, word: &[u8], out: &mut Vec<u32>) {
        if word.len() >= MAX_MERGE_LEN {
            // Positions are u32; a word this long (1 GiB of one regex class)
            // is merged in pieces rather than risk index wrap-around.
            for chunk in word.chunks(MAX_MERGE_LEN / 2) {
                self.merge(chunk, out);
            }
            return;
        }
        let mut syms: Vec<Symbol> = Vec::with_capacity(word.len());
        for &b in word {
            if let Some(id) = self.byte_ids[b as usize].or(self.unk) {
                syms.push(Symbol { id, prev: NIL, next: NIL, alive: true });
            }
        }
        let n = syms.len();
        if n < 2 {
            out.extend(syms.iter().map(|s| s.id));
            return;
        }
        // Indices fit u32: `merge` splits words of MAX_MERGE_LEN bytes or more.
        for (i, s) in syms.iter_mut().enumerate() {
            s.prev = if i == 0 { NIL } else { (i - 1) as u32 };
            s.next = if i + 1 == n { NIL } else { (i + 1) as u32 };
        }
        let mut heap: BinaryHeap<Reverse<(u32, u32)>> = BinaryHeap::with_capacity(n);
        for i in 0..n - 1 {
            if let Some((rank, _)) = self.rule(syms[i].id, syms[i + 1].id) {
                heap.push(Reverse((rank, i as u32)));
            }
        }
        while let Some(Reverse((rank, pos))) = heap.pop() {
            let left = syms[pos as usize];
            if !left.alive || left.next == NIL {
                continue;
            }
            let right = syms[left.next as usize];
            let Some((now_rank, merged)) = self.rule(left.id, right.id) else { continue };
            if now_rank != rank {
                continue;
            }
            // Merge `right` into `left`.
            syms[left.next as usize].alive = false;
            let l = &mut syms[pos as usize];
            l.id = merged;
            l.next = right.next;
            if right.next != NIL {
                syms[right.next as usize].prev = pos;
            }
            if left.prev != NIL {
                if let Some((r, _)) = self.rule(syms[left.prev as usize].id, merged) {
                    heap.push(Reverse((r, left.prev)));
                }
            }
            if right.next != NIL {
                if let Some((r, _)) = self.rule(merged, syms[right.next as usize].id) {
                    heap.push(Reverse((r, pos)));
                }
            }
        }
        // Symbol 0 is never the right side of a merge, so it heads the list.
        let mut i = 0u32;
        while i != NIL {
            let s = syms[i as usize];
            out.push(s.id);
            i = s.next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Byte tokens: id = byte value.
    fn identity_bytes() -> [Option<u32>; 256] {
        let mut t = [None; 256];
        for (b, slot) in t.iter_mut().enumerate() {
            *slot = Some(b as u32);
        }
        t
    }

    #[test]
    fn lowest_rank_first_then_leftmost() {
        // 300 = "ab", 301 = "bc", 302 = "abc" (via ab + c)
        let bpe = Bpe::new([(97, 98, 300), (98, 99, 301), (300, 99, 302)], identity_bytes(), None, None);
        let mut out = Vec::new();
        bpe.encode_word(b"abc", &mut out);
        assert_eq!(out, [302]);
        // Reversed ranks: "bc" first, then "a" + "bc" has no rule.
        let bpe = Bpe::new([(98, 99, 301), (97, 98, 300), (300, 99, 302)], identity_bytes(), None, None);
        out.clear();
        bpe.encode_word(b"abc", &mut out);
        assert_eq!(out, [97, 301]);
        // Overlapping equal pairs merge leftmost first: "aaa" -> "aa" "a".
        let bpe = Bpe::new([(97, 97, 400)], identity_bytes(), None, None);
        out.clear();
        bpe.encode_word(b"aaa", &mut out);
        assert_eq!(out, [400, 97]);
        out.clear();
        bpe.encode_word(b"aaaa", &mut out);
        assert_eq!(out, [400, 400]);
    }

    #[test]
    fn long_words_are_not_quadratic() {
        let bpe = Bpe::new([(32, 32, 500), (500, 500, 501)], identity_bytes(), None, None);
        let word = vec![b' '; 200_000];
        let mut out = Vec::new();
        bpe.encode_word(&word, &mut out);
        assert_eq!(out.len(), 50_000);
        assert!(out.iter().all(|&i| i == 501));
    }
}

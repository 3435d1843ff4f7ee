//! Compiled code built once per key and shared: the engine's parts per
//! token count, its LM heads per row count.
//!
//! ```text
//!   key ──[first use: build() → Arc<V>]──> cache ──[later uses: the same Arc]
//! ```
//!
//! Building happens under the cache's lock, so two threads asking for the
//! same key compile it once; a failed build is not cached (the next call
//! tries again and gets the error again).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

/// A map from keys to compiled values, filled on first use.
#[derive(Debug)]
pub struct CompileCache<K, V> {
    entries: Mutex<HashMap<K, Arc<V>>>,
}

impl<K, V> Default for CompileCache<K, V> {
    fn default() -> Self {
        CompileCache { entries: Mutex::new(HashMap::new()) }
    }
}

impl<K: Eq + Hash, V> CompileCache<K, V> {
    pub fn new() -> Self {
        CompileCache::default()
    }

    /// The value for `key`, built by `build` on first use; the bool says
    /// whether this call built it (so a caller can count compilations).
    pub fn get_or_build<E>(&self, key: K, build: impl FnOnce() -> Result<V, E>) -> Result<(Arc<V>, bool), E> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = entries.get(&key) {
            return Ok((v.clone(), false));
        }
        let v = Arc::new(build()?);
        entries.insert(key, v.clone());
        Ok((v, true))
    }

    /// How many values are cached.
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_once_per_key_and_does_not_cache_failures() {
        let cache: CompileCache<usize, String> = CompileCache::new();
        let (a, built) = cache.get_or_build(1, || Ok::<_, ()>("one".to_string())).unwrap();
        assert!(built);
        let (b, built) = cache.get_or_build(1, || -> Result<String, ()> { panic!("built twice") }).unwrap();
        assert!(!built && Arc::ptr_eq(&a, &b));
        assert_eq!(cache.get_or_build(2, || Err::<String, _>("no")).unwrap_err(), "no");
        assert_eq!(cache.len(), 1);
        assert!(cache.get_or_build(2, || Ok::<_, ()>("two".to_string())).unwrap().1);
    }
}

//! The key/value cache: per layer, the rotated keys and the values of every
//! position processed so far, preallocated for the whole context.

use thiserror::Error;

/// The cache cannot take more positions.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("the context is full: {len} positions cached, {adding} more do not fit in {capacity} (raise --ctx, up to the model's context length)")]
pub struct ContextFull {
    pub len: usize,
    pub adding: usize,
    pub capacity: usize,
}

/// Keys and values of `len` positions for each layer, `[capacity, kv_dim]` each.
#[derive(Debug)]
pub struct KvCache {
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    kv_dim: usize,
    capacity: usize,
    len: usize,
}

impl KvCache {
    /// Allocates `layers` × `capacity` positions of `kv_dim` keys and values.
    pub fn new(layers: usize, kv_dim: usize, capacity: usize) -> KvCache {
        KvCache {
            keys: (0..layers).map(|_| vec![0.0; capacity * kv_dim]).collect(),
            values: (0..layers).map(|_| vec![0.0; capacity * kv_dim]).collect(),
            kv_dim,
            capacity,
            len: 0,
        }
    }

    /// Positions cached (the same for every layer once a step completes).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets every position (a new conversation).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Drops positions from `len` on (e.g. to re-run the end of a prompt).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Checks that `adding` more positions fit.
    pub fn check_room(&self, adding: usize) -> Result<(), ContextFull> {
        if self.len + adding > self.capacity {
            return Err(ContextFull { len: self.len, adding, capacity: self.capacity });
        }
        Ok(())
    }

    /// Writes the keys and values of positions `len..len + k.len()/kv_dim`
    /// of `layer` (callers check room first, then [`KvCache::advance`]).
    pub fn write(&mut self, layer: usize, k: &[f32], v: &[f32]) {
        let start = self.len * self.kv_dim;
        self.keys[layer][start..start + k.len()].copy_from_slice(k);
        self.values[layer][start..start + v.len()].copy_from_slice(v);
    }

    /// Marks `n` more positions as cached (after every layer wrote them).
    pub fn advance(&mut self, n: usize) {
        self.len += n;
    }

    /// The whole key and value buffers of `layer` (`[capacity, kv_dim]`).
    pub fn layer(&self, layer: usize) -> (&[f32], &[f32]) {
        (&self.keys[layer], &self.values[layer])
    }

    /// Bytes held.
    pub fn size_bytes(&self) -> usize {
        2 * self.keys.len() * self.capacity * self.kv_dim * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_written_where_the_cache_ends() {
        let mut c = KvCache::new(2, 3, 4);
        c.check_room(2).unwrap();
        c.write(1, &[1.0; 6], &[2.0; 6]);
        c.advance(2);
        c.write(1, &[3.0; 3], &[4.0; 3]);
        c.advance(1);
        let (k, v) = c.layer(1);
        assert_eq!(&k[..9], &[1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 3.0, 3.0, 3.0]);
        assert_eq!(&v[6..9], &[4.0; 3]);
        assert_eq!(c.check_room(2), Err(ContextFull { len: 3, adding: 2, capacity: 4 }));
        assert!(c.check_room(1).is_ok());
        c.truncate(1);
        assert_eq!(c.len(), 1);
        c.clear();
        assert!(c.is_empty());
    }
}

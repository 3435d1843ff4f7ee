// Byte-level mutations for the fuzz targets' property-test equivalents
// (included by path from both crates' fuzz test files).

/// `base` with each `(at, value, how)` applied: overwrite, insert or delete
/// the byte at `at` (modulo the length).
pub fn mutated(base: &[u8], edits: &[(usize, u8, u8)]) -> Vec<u8> {
    let mut bytes = base.to_vec();
    for &(at, value, how) in edits {
        if bytes.is_empty() {
            bytes.push(value);
            continue;
        }
        let i = at % bytes.len();
        match how % 3 {
            0 => bytes[i] = value,
            1 => bytes.insert(i, value),
            _ => {
                bytes.remove(i);
            }
        }
    }
    bytes
}

//! A small, fast hasher for the dispatch table's name index.
//!
//! Keys are message names chosen by the program itself (not attacker-chosen
//! map keys built up from input), so the DoS resistance of SipHash buys
//! nothing there and costs more than the `match` on names it replaces. This
//! is the multiply-rotate scheme of rustc's `FxHasher`, over 8-byte words.

use std::hash::{BuildHasherDefault, Hasher};

pub(crate) type BuildNameHasher = BuildHasherDefault<NameHasher>;

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

#[derive(Default, Clone, Copy)]
pub(crate) struct NameHasher {
    hash: u64,
}

impl NameHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for NameHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    #[inline]
    fn write_u8(&mut self, byte: u8) {
        self.add(u64::from(byte));
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.hash
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn distinct_names_hash_apart_and_lookups_work() {
        let names = [
            "a",
            "ab",
            "orders.created",
            "orders.created2",
            "orders.creat",
        ];
        let map: HashMap<&str, usize, BuildNameHasher> =
            names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        for (i, name) in names.iter().enumerate() {
            assert_eq!(map.get(*name), Some(&i));
        }
        assert_eq!(map.get("orders"), None);
    }
}

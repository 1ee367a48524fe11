//! A fast, seedable, portable byte generator (xoshiro256** seeded by
//! splitmix64), so the model, the working memory and the client payloads
//! are incompressible yet byte-identical on every host and every run.

/// xoshiro256**: ~1 ns per 8 bytes, which keeps generating a 200 MiB model
/// well under a second, and its output does not compress.
#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
}

/// splitmix64 step: spreads any seed (even 0) over the whole state.
fn splitmix64(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Rng {
    /// A generator for one purpose: `domain` keeps the streams derived from
    /// the same user seed (model, memory, payloads) unrelated.
    pub fn new(seed: u64, domain: u64) -> Rng {
        let mut x = seed ^ domain.wrapping_mul(0xa076_1d64_78bd_642f);
        Rng {
            s: [
                splitmix64(&mut x),
                splitmix64(&mut x),
                splitmix64(&mut x),
                splitmix64(&mut x),
            ],
        }
    }

    /// A generator keyed by a digest (e.g. a hash of the state and a
    /// request), for state transitions.
    pub fn from_digest(digest: &[u8; 32]) -> Rng {
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&digest[i * 8..i * 8 + 8]);
            u64::from_le_bytes(b)
        };
        let mut x = word(0) ^ word(1) ^ word(2) ^ word(3);
        let mut s = [0u64; 4];
        for (i, slot) in s.iter_mut().enumerate() {
            *slot = word(i) ^ splitmix64(&mut x);
        }
        Rng { s }
    }

    /// The next 64 pseudo-random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Fills `buf` (little-endian words, so the bytes are host-independent).
    pub fn fill_bytes(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for chunk in &mut chunks {
            chunk.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            let word = self.next_u64().to_le_bytes();
            rest.copy_from_slice(&word[..rest.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_bytes_other_domain_other_bytes() {
        let mut a = vec![0u8; 1001];
        let mut b = vec![0u8; 1001];
        let mut c = vec![0u8; 1001];
        Rng::new(7, 1).fill_bytes(&mut a);
        Rng::new(7, 1).fill_bytes(&mut b);
        Rng::new(7, 2).fill_bytes(&mut c);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn output_is_pinned() {
        // Guards against an accidental change of the generator: answers
        // recorded by one build must be reproducible by another.
        let mut r = Rng::new(0, 0);
        assert_eq!(r.next_u64(), 11_091_344_671_253_066_420);
    }
}

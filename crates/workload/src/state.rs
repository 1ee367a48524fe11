//! The service state and its one transition: process a request. The state
//! after any sequence of requests, and every answer, is a pure function of
//! the configuration and the order of the requests — what replay needs.

use crate::model::{steps_for, Model};
use crate::protocol::Answer;
use crate::rng::Rng;
use sha2::{Digest, Sha256};

/// Stream domain of the initial working memory (see [`Rng::new`]).
const MEMORY_DOMAIN: u64 = 2;

/// What the service is made of; the CLI's sizes in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceConfig {
    /// Model size: memory that is written once, at start.
    pub model_bytes: usize,
    /// Nominal CPU budget per request (see [`crate::model::STEPS_PER_MS`]).
    pub cpu_us: u64,
    /// Working memory rewritten by every request.
    pub dirty_bytes: usize,
    /// Working set: `dirty_bytes` windows of it are rewritten in turn, so
    /// the memory dirtied between two dumps grows with the requests served
    /// (up to this size). 0 or at most `dirty_bytes`: one window, the
    /// whole working memory every request.
    pub working_bytes: usize,
    /// Seed of the model and of the initial working memory.
    pub seed: u64,
}

/// Model, working memory, request counter; one per service, behind a mutex
/// so requests are applied one at a time.
pub struct ServiceState {
    model: Model,
    steps: u64,
    memory: Vec<u8>,
    memory_digest: [u8; 32],
    counter: u64,
    /// Bytes rewritten per request.
    window: usize,
    /// Windows in the working set (1: the whole memory every request).
    windows: usize,
}

impl ServiceState {
    /// A fresh service: generates the model and the working memory.
    pub fn new(config: &ServiceConfig) -> ServiceState {
        let model = Model::generate(config.model_bytes, config.seed);
        let window = config.dirty_bytes;
        let windows = config.working_bytes.checked_div(window).unwrap_or(1).max(1);
        let mut memory = vec![0u8; window * windows];
        Rng::new(config.seed, MEMORY_DOMAIN).fill_bytes(&mut memory);
        let memory_digest = Sha256::digest(&memory).into();
        ServiceState {
            model,
            steps: steps_for(config.cpu_us),
            memory,
            memory_digest,
            counter: 0,
            window,
            windows,
        }
    }

    /// Requests processed so far.
    pub fn counter(&self) -> u64 {
        self.counter
    }

    /// SHA-256 of the current working memory.
    pub fn memory_digest(&self) -> [u8; 32] {
        self.memory_digest
    }

    /// The model (for the startup cost measurement).
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Sampling steps per request.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Applies one request: CPU work over the model, a rewrite of the whole
    /// working memory keyed by (old memory, request, work result, counter),
    /// counter + 1; answers (counter, SHA-256 of the payload, SHA-256 of
    /// the new memory).
    pub fn process(&mut self, payload: &[u8]) -> Answer {
        let request_digest: [u8; 32] = Sha256::digest(payload).into();
        let inference = self.model.infer(&request_digest, self.steps);
        self.counter += 1;
        let key: [u8; 32] = Sha256::new()
            .chain_update(self.memory_digest)
            .chain_update(request_digest)
            .chain_update(inference)
            .chain_update(self.counter.to_be_bytes())
            .finalize()
            .into();
        if self.windows == 1 {
            rewrite(&mut self.memory, &key);
            self.memory_digest = Sha256::digest(&self.memory).into();
        } else {
            // The next window in turn; the digest chains the rewritten
            // windows (hashing the whole working set per request would
            // cost more than the request).
            let at = ((self.counter - 1) % self.windows as u64) as usize * self.window;
            let window = &mut self.memory[at..at + self.window];
            rewrite(window, &key);
            self.memory_digest = Sha256::new()
                .chain_update(self.memory_digest)
                .chain_update(&*window)
                .finalize()
                .into();
        }
        Answer {
            counter: self.counter,
            request_digest,
            state_digest: self.memory_digest,
        }
    }
}

/// Rewrites every word as a function of itself and a keyed stream, so the
/// whole working memory is dirtied and stays incompressible.
fn rewrite(memory: &mut [u8], key: &[u8; 32]) {
    let mut rng = Rng::from_digest(key);
    let mut chunks = memory.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let new = u64::from_le_bytes(word).rotate_left(17) ^ rng.next_u64();
        chunk.copy_from_slice(&new.to_le_bytes());
    }
    for byte in chunks.into_remainder() {
        *byte = byte.rotate_left(3) ^ rng.next_u64() as u8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ServiceConfig {
        ServiceConfig {
            model_bytes: 1 << 20,
            cpu_us: 20,
            dirty_bytes: 16 << 10,
            working_bytes: 0,
            seed: 42,
        }
    }

    fn requests() -> Vec<Vec<u8>> {
        (0..6u8).map(|i| vec![i; 100 + i as usize]).collect()
    }

    #[test]
    fn same_requests_same_order_same_answers() {
        let mut a = ServiceState::new(&config());
        let mut b = ServiceState::new(&config());
        for r in requests() {
            assert_eq!(a.process(&r).to_bytes(), b.process(&r).to_bytes());
        }
        assert_eq!(a.memory, b.memory);
        assert_eq!(a.counter(), 6);
    }

    #[test]
    fn another_order_gives_another_state() {
        let mut a = ServiceState::new(&config());
        let mut b = ServiceState::new(&config());
        let reqs = requests();
        for r in &reqs {
            a.process(r);
        }
        for r in reqs.iter().rev() {
            b.process(r);
        }
        assert_eq!(a.counter(), b.counter());
        assert_ne!(a.memory_digest(), b.memory_digest());
    }

    #[test]
    fn answer_fields() {
        let mut s = ServiceState::new(&config());
        let before = s.memory.clone();
        let answer = s.process(b"hello");
        assert_eq!(answer.counter, 1);
        assert_eq!(
            answer.request_digest,
            <[u8; 32]>::from(Sha256::digest(b"hello"))
        );
        assert_eq!(
            answer.state_digest,
            <[u8; 32]>::from(Sha256::digest(&s.memory))
        );
        // The whole working memory is rewritten, not a part of it.
        let changed = before
            .chunks(4096)
            .zip(s.memory.chunks(4096))
            .all(|(x, y)| x != y);
        assert!(changed);
    }

    #[test]
    fn answers_are_pinned() {
        // Answers recorded by one build must be reproducible by another
        // (a journal outlives a binary): changing the transition or the
        // generator must be a deliberate act that updates this value.
        let mut s = ServiceState::new(&config());
        let answer = s.process(b"pinned");
        assert_eq!(hex(&answer.state_digest), PINNED);
    }

    const PINNED: &str = "0e3e0dd3ac0b639d3d023f143755561f891cf3548898f9dd1c2dff20da96ba32";

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn seed_changes_answers() {
        let mut a = ServiceState::new(&config());
        let mut b = ServiceState::new(&ServiceConfig {
            seed: 43,
            ..config()
        });
        assert_ne!(a.process(b"x").state_digest, b.process(b"x").state_digest);
    }

    #[test]
    fn odd_sizes_and_empty_payloads() {
        let mut s = ServiceState::new(&ServiceConfig {
            model_bytes: 0,
            cpu_us: 0,
            dirty_bytes: 13,
            working_bytes: 0,
            seed: 0,
        });
        assert_eq!(s.process(b"").counter, 1);
        assert_eq!(s.process(b"").counter, 2);
    }

    #[test]
    fn a_working_set_is_rewritten_window_by_window() {
        let cfg = ServiceConfig {
            working_bytes: 4 * (16 << 10),
            ..config()
        };
        let mut s = ServiceState::new(&cfg);
        let window = 16 << 10;
        let before = s.memory.clone();
        let changed = |a: &[u8], b: &[u8]| -> Vec<usize> {
            (0..4)
                .filter(|w| a[w * window..(w + 1) * window] != b[w * window..(w + 1) * window])
                .collect()
        };
        s.process(b"one");
        assert_eq!(changed(&before, &s.memory), vec![0]);
        s.process(b"two");
        s.process(b"three");
        assert_eq!(changed(&before, &s.memory), vec![0, 1, 2]);
        // Still deterministic.
        let mut t = ServiceState::new(&cfg);
        for r in [&b"one"[..], b"two", b"three"] {
            t.process(r);
        }
        assert_eq!(t.memory_digest(), s.memory_digest());
    }
}

//! The checking client: C connections, each sending N deterministic
//! requests on a fixed schedule and verifying every answer. It never
//! retries: under migration the promise is that clients notice nothing, so
//! any error, short answer or wrong answer is a failure.

use crate::protocol::{encode_request, read_full, Answer, ANSWER_LEN};
use crate::rng::Rng;
use sha2::{Digest, Sha256};
use std::fmt;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// What the client sends, where, how often.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Service (or proxy) address.
    pub addr: String,
    /// Request i of a connection is sent at start + i·interval, or when the
    /// answer to i−1 arrives if that is later (a steady input rate).
    pub interval: Duration,
    /// Requests per connection.
    pub requests: u64,
    /// Payload size of every request.
    pub request_bytes: usize,
    /// Seed of the payloads.
    pub seed: u64,
    /// Concurrent connections.
    pub connections: u64,
    /// Longest wait for a connect or an answer before failing.
    pub timeout: Duration,
}

/// What went wrong on one connection.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The address does not resolve.
    #[error("cannot resolve {addr}: {reason}")]
    Resolve {
        /// The address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// Connecting failed.
    #[error("connection {conn}: connect failed: {source}")]
    Connect {
        /// Connection index.
        conn: u64,
        /// Why.
        source: io::Error,
    },
    /// Sending or receiving failed (a timeout included).
    #[error("connection {conn}, request {index}: {what} failed: {source}")]
    Io {
        /// Connection index.
        conn: u64,
        /// Request index.
        index: u64,
        /// "send" or "receive".
        what: &'static str,
        /// Why.
        source: io::Error,
    },
    /// The answer was not 72 bytes.
    #[error("connection {conn}, request {index}: connection closed after {got} of {ANSWER_LEN} answer bytes")]
    Short {
        /// Connection index.
        conn: u64,
        /// Request index.
        index: u64,
        /// Bytes received.
        got: usize,
    },
    /// The answer is not about this request.
    #[error("connection {conn}, request {index}: answer carries the digest of another request (counter {counter})")]
    WrongDigest {
        /// Connection index.
        conn: u64,
        /// Request index.
        index: u64,
        /// Its counter.
        counter: u64,
    },
    /// The counter did not increase.
    #[error("connection {conn}, request {index}: counter {counter} is not above the previous {previous}")]
    Counter {
        /// Connection index.
        conn: u64,
        /// Request index.
        index: u64,
        /// Its counter.
        counter: u64,
        /// The previous answer's counter on this connection (0 at first).
        previous: u64,
    },
}

/// The outcome of a run; its `Display` is the one machine-readable line.
#[derive(Debug, Default)]
pub struct Summary {
    /// Answers received and checked.
    pub requests: u64,
    /// Connection failures, one per failed connection.
    pub errors: Vec<ClientError>,
    /// Largest counter seen.
    pub max_counter: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Longest request-to-answer time (what a migration's hold costs a
    /// client).
    pub max_latency: Duration,
    /// Sum of request-to-answer times (for the mean).
    pub total_latency: Duration,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mean_us = match self.requests {
            0 => 0,
            n => self.total_latency.as_micros() / u128::from(n),
        };
        write!(
            f,
            "requests={} errors={} max_counter={} elapsed_ms={} max_latency_us={} mean_latency_us={}",
            self.requests,
            self.errors.len(),
            self.max_counter,
            self.elapsed.as_millis(),
            self.max_latency.as_micros(),
            mean_us,
        )
    }
}

/// Per-connection tallies, merged into the [`Summary`].
#[derive(Default)]
struct Tally {
    requests: u64,
    max_counter: u64,
    max_latency: Duration,
    total_latency: Duration,
}

/// Payload of request `index` on connection `conn`: the same bytes on
/// every run with the same seed.
pub fn payload(seed: u64, conn: u64, index: u64, len: usize) -> Vec<u8> {
    let key: [u8; 32] = Sha256::new()
        .chain_update(b"replaymig-workload payload")
        .chain_update(seed.to_be_bytes())
        .chain_update(conn.to_be_bytes())
        .chain_update(index.to_be_bytes())
        .finalize()
        .into();
    let mut bytes = vec![0u8; len];
    Rng::from_digest(&key).fill_bytes(&mut bytes);
    bytes
}

/// Checks one answer against the request's digest and the connection's
/// previous counter.
fn check(
    answer: &Answer,
    digest: &[u8; 32],
    previous: u64,
    conn: u64,
    index: u64,
) -> Result<(), ClientError> {
    if &answer.request_digest != digest {
        return Err(ClientError::WrongDigest {
            conn,
            index,
            counter: answer.counter,
        });
    }
    if answer.counter <= previous {
        return Err(ClientError::Counter {
            conn,
            index,
            counter: answer.counter,
            previous,
        });
    }
    Ok(())
}

/// Runs all connections to completion (or to the first failure, after
/// which the others stop before their next request).
pub fn run(config: &ClientConfig) -> Summary {
    let start = Instant::now();
    let mut summary = Summary::default();
    let addr = match resolve(&config.addr) {
        Ok(addr) => addr,
        Err(e) => {
            summary.errors.push(e);
            return summary;
        }
    };
    let abort = AtomicBool::new(false);
    let results: Vec<(Tally, Option<ClientError>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..config.connections)
            .map(|conn| {
                let abort = &abort;
                scope.spawn(move || {
                    let mut tally = Tally::default();
                    let result = run_connection(config, addr, conn, abort, &mut tally);
                    if result.is_err() {
                        abort.store(true, Ordering::Relaxed);
                    }
                    (tally, result.err())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client connection thread panicked"))
            .collect()
    });
    for (tally, error) in results {
        summary.requests += tally.requests;
        summary.max_counter = summary.max_counter.max(tally.max_counter);
        summary.max_latency = summary.max_latency.max(tally.max_latency);
        summary.total_latency += tally.total_latency;
        summary.errors.extend(error);
    }
    summary.elapsed = start.elapsed();
    summary
}

/// The first address `addr` resolves to.
fn resolve(addr: &str) -> Result<SocketAddr, ClientError> {
    let err = |reason: String| ClientError::Resolve {
        addr: addr.to_string(),
        reason,
    };
    addr.to_socket_addrs()
        .map_err(|e| err(e.to_string()))?
        .next()
        .ok_or_else(|| err("no address".to_string()))
}

/// One connection's requests, each checked before the next is sent.
fn run_connection(
    config: &ClientConfig,
    addr: SocketAddr,
    conn: u64,
    abort: &AtomicBool,
    tally: &mut Tally,
) -> Result<(), ClientError> {
    let mut stream = TcpStream::connect_timeout(&addr, config.timeout)
        .map_err(|source| ClientError::Connect { conn, source })?;
    let io_err = |index, what, source| ClientError::Io {
        conn,
        index,
        what,
        source,
    };
    stream
        .set_nodelay(true)
        .and_then(|()| stream.set_read_timeout(Some(config.timeout)))
        .and_then(|()| stream.set_write_timeout(Some(config.timeout)))
        .map_err(|e| io_err(0, "socket setup", e))?;
    let start = Instant::now();
    let mut previous = 0;
    for index in 0..config.requests {
        if abort.load(Ordering::Relaxed) {
            break;
        }
        let due = start
            + config
                .interval
                .saturating_mul(index.try_into().unwrap_or(u32::MAX));
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let body = payload(config.seed, conn, index, config.request_bytes);
        let digest: [u8; 32] = Sha256::digest(&body).into();
        let frame = encode_request(&body);
        let sent = Instant::now();
        stream
            .write_all(&frame)
            .map_err(|e| io_err(index, "send", e))?;
        let mut bytes = [0u8; ANSWER_LEN];
        let got = read_full(&mut stream, &mut bytes).map_err(|e| io_err(index, "receive", e))?;
        if got < ANSWER_LEN {
            return Err(ClientError::Short { conn, index, got });
        }
        let latency = sent.elapsed();
        let answer = Answer::from_bytes(&bytes);
        check(&answer, &digest, previous, conn, index)?;
        previous = answer.counter;
        tally.requests += 1;
        tally.max_counter = tally.max_counter.max(answer.counter);
        tally.max_latency = tally.max_latency.max(latency);
        tally.total_latency += latency;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_deterministic_and_distinct() {
        assert_eq!(payload(1, 0, 0, 100), payload(1, 0, 0, 100));
        assert_ne!(payload(1, 0, 0, 100), payload(1, 1, 0, 100));
        assert_ne!(payload(1, 0, 0, 100), payload(1, 0, 1, 100));
        assert_ne!(payload(1, 0, 0, 100), payload(2, 0, 0, 100));
        assert!(payload(1, 0, 0, 0).is_empty());
    }

    #[test]
    fn checks_catch_wrong_digest_and_stale_counter() {
        let answer = Answer {
            counter: 5,
            request_digest: [1; 32],
            state_digest: [0; 32],
        };
        assert!(check(&answer, &[1; 32], 4, 0, 0).is_ok());
        assert!(matches!(
            check(&answer, &[2; 32], 4, 0, 0),
            Err(ClientError::WrongDigest { .. })
        ));
        assert!(matches!(
            check(&answer, &[1; 32], 5, 0, 0),
            Err(ClientError::Counter { previous: 5, .. })
        ));
    }

    #[test]
    fn summary_line_format() {
        let summary = Summary {
            requests: 4,
            max_counter: 9,
            elapsed: Duration::from_millis(12),
            max_latency: Duration::from_micros(300),
            total_latency: Duration::from_micros(800),
            ..Summary::default()
        };
        assert_eq!(
            summary.to_string(),
            "requests=4 errors=0 max_counter=9 elapsed_ms=12 max_latency_us=300 mean_latency_us=200"
        );
    }
}

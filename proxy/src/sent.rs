//! The input a relayed connection sent into its tunnel lately, kept so the
//! connection can move to a new owner without the old one in the path.
//!
//! Why it is needed: when the owner hands the service over, it knows how
//! many of the tunnel's bytes it journaled (`consumed`); the bytes after
//! that were in flight (socket buffers, its read buffer) and are dropped
//! with the old tunnel. The relaying proxy sends them again to the new
//! owner from here. It keeps the last [`SENT_KEPT`] bytes only, and the
//! tunnels' socket buffers are bounded so that what can be in flight fits
//! (see the node's `dial`); a move that would need more is refused, never
//! guessed.

use bytes::Bytes;
use std::collections::VecDeque;

/// Input bytes a relayed connection keeps of what it sent last.
pub const SENT_KEPT: usize = 512 * 1024;

/// The socket buffer each end of a tunnel asks for: the dialing side's
/// send buffer and the owner's receive buffer. Linux doubles the value
/// (bookkeeping included), so input in flight between the two — both
/// buffers and the owner's read buffer — stays well within
/// [`SENT_KEPT`].
pub const TUNNEL_SOCKET_BUFFER: usize = 64 * 1024;

const _: () = assert!(4 * TUNNEL_SOCKET_BUFFER + 64 * 1024 <= SENT_KEPT);

/// Bounds a tunnel's socket buffer in the direction client input flows:
/// `dialing` (the relaying side: its send buffer) or not (the owner: its
/// receive buffer). See [`TUNNEL_SOCKET_BUFFER`].
pub fn bound_tunnel_buffer(stream: &tokio::net::TcpStream, dialing: bool) -> std::io::Result<()> {
    use nix::sys::socket::{setsockopt, sockopt};
    let size = TUNNEL_SOCKET_BUFFER;
    if dialing {
        setsockopt(stream, sockopt::SndBuf, &size)?;
    } else {
        setsockopt(stream, sockopt::RcvBuf, &size)?;
    }
    Ok(())
}

/// The tail of what one tunnel carried from the client, in tunnel offsets
/// (0 = the tunnel's first byte).
#[derive(Debug)]
pub(crate) struct SentInput {
    kept: VecDeque<u8>,
    /// Bytes written into the tunnel so far.
    total: u64,
    /// The client's end of input was passed on (the tunnel half-closed).
    ended: bool,
    cap: usize,
}

/// Why the input after an owner's `consumed` offset cannot be sent again.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResendError {
    /// The owner says it took more than was ever sent.
    #[error("the owner took {consumed} input bytes, but only {sent} were sent")]
    BeyondSent {
        /// What the owner took.
        consumed: u64,
        /// What was sent.
        sent: u64,
    },
    /// What follows the owner's offset is no longer kept.
    #[error("{missing} input bytes after the owner's offset {consumed} are no longer kept")]
    NotKept {
        /// What the owner took.
        consumed: u64,
        /// How many of the bytes to send again are gone.
        missing: u64,
    },
    /// The client's end of input went into the tunnel: where it falls
    /// relative to the owner's offset cannot be told from a byte count.
    #[error("the client's end of input was already passed on")]
    Ended,
}

impl SentInput {
    /// Nothing sent yet; keeps up to `cap` bytes.
    pub fn new(cap: usize) -> Self {
        SentInput {
            kept: VecDeque::new(),
            total: 0,
            ended: false,
            cap,
        }
    }

    /// A new tunnel whose first bytes are `resent` (already written to it).
    pub fn starting_with(cap: usize, resent: &[u8]) -> Self {
        let mut sent = SentInput::new(cap);
        sent.push(resent);
        sent
    }

    /// Records bytes written into the tunnel.
    pub fn push(&mut self, chunk: &[u8]) {
        self.total += chunk.len() as u64;
        if chunk.len() >= self.cap {
            self.kept.clear();
            self.kept.extend(&chunk[chunk.len() - self.cap..]);
            return;
        }
        let over = (self.kept.len() + chunk.len()).saturating_sub(self.cap);
        self.kept.drain(..over);
        self.kept.extend(chunk);
    }

    /// Records that the client's end of input went into the tunnel.
    pub fn end(&mut self) {
        self.ended = true;
    }

    /// The bytes after offset `consumed` (what the owner did not take), to
    /// send again to the next owner.
    pub fn after(&self, consumed: u64) -> Result<Bytes, ResendError> {
        if self.ended {
            return Err(ResendError::Ended);
        }
        if consumed > self.total {
            return Err(ResendError::BeyondSent {
                consumed,
                sent: self.total,
            });
        }
        let wanted = self.total - consumed;
        let kept = self.kept.len() as u64;
        if wanted > kept {
            return Err(ResendError::NotKept {
                consumed,
                missing: wanted - kept,
            });
        }
        let skip = (kept - wanted) as usize;
        Ok(self.kept.range(skip..).copied().collect::<Vec<u8>>().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resends_exactly_the_bytes_after_the_owners_offset() {
        let mut sent = SentInput::new(8);
        sent.push(b"abc");
        sent.push(b"defg");
        assert_eq!(&sent.after(7).unwrap()[..], b"");
        assert_eq!(&sent.after(2).unwrap()[..], b"cdefg");
        assert_eq!(&sent.after(0).unwrap()[..], b"abcdefg");
        assert_eq!(
            sent.after(9),
            Err(ResendError::BeyondSent {
                consumed: 9,
                sent: 7
            })
        );
    }

    #[test]
    fn keeps_only_the_last_bytes_and_refuses_what_fell_out() {
        let mut sent = SentInput::new(4);
        sent.push(b"abc");
        sent.push(b"def");
        assert_eq!(&sent.after(2).unwrap()[..], b"cdef");
        assert_eq!(
            sent.after(1),
            Err(ResendError::NotKept {
                consumed: 1,
                missing: 1
            })
        );
        sent.push(b"0123456789");
        assert_eq!(&sent.after(12).unwrap()[..], b"6789");
        assert!(sent.after(11).is_err());
    }

    #[test]
    fn a_passed_on_end_of_input_refuses_any_resend() {
        let mut sent = SentInput::starting_with(16, b"xy");
        sent.end();
        assert_eq!(sent.after(2), Err(ResendError::Ended));
    }
}

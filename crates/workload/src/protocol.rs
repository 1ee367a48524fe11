//! The wire format. Request: u32 big-endian length + payload. Answer: a
//! fixed 72 bytes (u64 big-endian counter, SHA-256 of the request payload,
//! SHA-256 of the working memory after it), so an L4 journal can count
//! answers by bytes and a client can check every one.

use std::io::{self, Read};

/// Largest accepted request payload; a longer frame closes the connection
/// (it is garbage, not a request, and must not make the server allocate).
pub const MAX_FRAME: usize = 16 << 20;

/// Size of every answer.
pub const ANSWER_LEN: usize = 8 + 32 + 32;

/// Why a request frame could not be read; each closes its connection.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix exceeds [`MAX_FRAME`].
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Announced length.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// The peer closed in the middle of a frame.
    #[error("connection closed after {got} of {expected} bytes of a {what}")]
    Truncated {
        /// "length prefix" or "payload".
        what: &'static str,
        /// Bytes that were due.
        expected: usize,
        /// Bytes that came.
        got: usize,
    },
    /// A socket error.
    #[error("read failed: {0}")]
    Io(#[from] io::Error),
}

/// One answer, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    /// Service-wide request count including this request.
    pub counter: u64,
    /// SHA-256 of the request payload.
    pub request_digest: [u8; 32],
    /// SHA-256 of the working memory after this request.
    pub state_digest: [u8; 32],
}

impl Answer {
    /// The wire bytes.
    pub fn to_bytes(&self) -> [u8; ANSWER_LEN] {
        let mut out = [0u8; ANSWER_LEN];
        out[..8].copy_from_slice(&self.counter.to_be_bytes());
        out[8..40].copy_from_slice(&self.request_digest);
        out[40..].copy_from_slice(&self.state_digest);
        out
    }

    /// Decodes the wire bytes (any 72 bytes decode; checking is the
    /// client's job).
    pub fn from_bytes(bytes: &[u8; ANSWER_LEN]) -> Answer {
        let mut counter = [0u8; 8];
        counter.copy_from_slice(&bytes[..8]);
        let mut request_digest = [0u8; 32];
        request_digest.copy_from_slice(&bytes[8..40]);
        let mut state_digest = [0u8; 32];
        state_digest.copy_from_slice(&bytes[40..]);
        Answer {
            counter: u64::from_be_bytes(counter),
            request_digest,
            state_digest,
        }
    }
}

/// A whole request frame in one buffer, so it goes out in one write.
pub fn encode_request(payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("payload longer than u32::MAX");
    let mut frame = Vec::with_capacity(4 + payload.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// Reads one request payload; `Ok(None)` on a clean close between frames.
pub fn read_request(reader: &mut impl Read, max: usize) -> Result<Option<Vec<u8>>, FrameError> {
    let mut header = [0u8; 4];
    match read_full(reader, &mut header)? {
        0 => return Ok(None),
        4 => {}
        got => {
            return Err(FrameError::Truncated {
                what: "length prefix",
                expected: 4,
                got,
            })
        }
    }
    let len = u32::from_be_bytes(header);
    if len as u64 > max as u64 {
        return Err(FrameError::TooLarge {
            len: len.into(),
            max,
        });
    }
    let mut payload = vec![0u8; len as usize];
    let got = read_full(reader, &mut payload)?;
    if got < payload.len() {
        return Err(FrameError::Truncated {
            what: "payload",
            expected: payload.len(),
            got,
        });
    }
    Ok(Some(payload))
}

/// Fills `buf` unless the peer closes first; returns the bytes read.
pub fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match reader.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_roundtrip() {
        let a = Answer {
            counter: 0x0102_0304_0506_0708,
            request_digest: [7; 32],
            state_digest: [9; 32],
        };
        let bytes = a.to_bytes();
        assert_eq!(&bytes[..8], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(Answer::from_bytes(&bytes), a);
    }

    #[test]
    fn frames_roundtrip_and_eof_is_clean() {
        let mut wire = encode_request(b"abc");
        wire.extend(encode_request(b""));
        let mut r = &wire[..];
        assert_eq!(read_request(&mut r, 10).unwrap(), Some(b"abc".to_vec()));
        assert_eq!(read_request(&mut r, 10).unwrap(), Some(Vec::new()));
        assert_eq!(read_request(&mut r, 10).unwrap(), None);
    }

    #[test]
    fn oversized_frame_is_rejected_before_allocating() {
        let mut r = &[0xff, 0xff, 0xff, 0xff][..];
        match read_request(&mut r, MAX_FRAME) {
            Err(FrameError::TooLarge { len, .. }) => assert_eq!(len, u32::MAX as u64),
            other => panic!("unexpected {other:?}"),
        }
        let mut r = &encode_request(&[0; 11])[..];
        assert!(matches!(
            read_request(&mut r, 10),
            Err(FrameError::TooLarge { len: 11, max: 10 })
        ));
    }

    #[test]
    fn truncated_frames_are_errors() {
        let mut r = &[0u8, 0][..];
        assert!(matches!(
            read_request(&mut r, 10),
            Err(FrameError::Truncated { got: 2, .. })
        ));
        let mut r = &[0u8, 0, 0, 5, 1, 2][..];
        assert!(matches!(
            read_request(&mut r, 10),
            Err(FrameError::Truncated {
                what: "payload",
                expected: 5,
                got: 2
            })
        ));
    }
}

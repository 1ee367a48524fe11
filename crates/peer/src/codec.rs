//! Frames: tokio-util's length-delimited codec (4-byte big-endian length,
//! bounded by [`MAX_FRAME_BYTES`] so a hostile length never allocates),
//! each frame `[u8 version][bincode(Message)]`.

use crate::message::Message;
use bincode::Options;
use bytes::{BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

/// Version byte written by this build; a frame with another is refused.
pub const PROTOCOL_VERSION: u8 = 2;

/// Largest frame accepted or sent (snapshot chunks are sized below it).
pub const MAX_FRAME_BYTES: usize = 8 << 20;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The socket failed (or the length prefix exceeded the maximum).
    #[error("peer link I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The peer speaks another protocol version.
    #[error("peer speaks protocol version {got}, this node speaks {PROTOCOL_VERSION}")]
    Version {
        /// The version byte received.
        got: u8,
    },
    /// The frame does not hold a message.
    #[error("malformed peer frame: {0}")]
    Malformed(String),
    /// A message too large to send in one frame.
    #[error("message of {0} bytes exceeds the peer frame limit")]
    TooLarge(usize),
}

/// Encodes and decodes [`Message`] frames.
pub struct PeerCodec {
    frames: LengthDelimitedCodec,
    /// Bytes of the frames encoded and decoded so far (length prefix
    /// included): what this link put on and took off the wire.
    pub(crate) wire: WireBytes,
}

/// Bytes a link has carried each way, framing included.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WireBytes {
    /// Written to the peer.
    pub sent: u64,
    /// Read from the peer.
    pub received: u64,
}

/// The length prefix of every frame.
const LENGTH_PREFIX_BYTES: u64 = 4;

impl Default for PeerCodec {
    fn default() -> Self {
        PeerCodec {
            frames: LengthDelimitedCodec::builder()
                .max_frame_length(MAX_FRAME_BYTES)
                .new_codec(),
            wire: WireBytes::default(),
        }
    }
}

/// bincode with a size limit, so a forged length inside a frame cannot
/// make the decoder allocate more than the frame holds.
fn options() -> impl Options {
    bincode::DefaultOptions::new()
        .with_limit(MAX_FRAME_BYTES as u64)
        .with_fixint_encoding()
        .reject_trailing_bytes()
}

impl Decoder for PeerCodec {
    type Item = Message;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, FrameError> {
        let Some(frame) = self.frames.decode(src)? else {
            return Ok(None);
        };
        self.wire.received += LENGTH_PREFIX_BYTES + frame.len() as u64;
        let (&version, body) = frame
            .split_first()
            .ok_or_else(|| FrameError::Malformed("empty frame".into()))?;
        if version != PROTOCOL_VERSION {
            return Err(FrameError::Version { got: version });
        }
        options()
            .deserialize(body)
            .map(Some)
            .map_err(|e| FrameError::Malformed(e.to_string()))
    }
}

impl Encoder<Message> for PeerCodec {
    type Error = FrameError;

    fn encode(&mut self, msg: Message, dst: &mut BytesMut) -> Result<(), FrameError> {
        let body = options()
            .serialize(&msg)
            .map_err(|e| FrameError::Malformed(e.to_string()))?;
        if body.len() + 1 > MAX_FRAME_BYTES {
            return Err(FrameError::TooLarge(body.len()));
        }
        let mut frame = BytesMut::with_capacity(body.len() + 1);
        frame.put_u8(PROTOCOL_VERSION);
        frame.put_slice(&body);
        self.wire.sent += LENGTH_PREFIX_BYTES + frame.len() as u64;
        self.frames.encode(frame.freeze(), dst)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let mut codec = PeerCodec::default();
        let mut buf = BytesMut::new();
        codec.encode(Message::Ping(7), &mut buf).unwrap();
        let framed = buf.len() as u64;
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(Message::Ping(7)));
        // Both ways counted, length prefix included.
        assert_eq!(
            codec.wire,
            WireBytes {
                sent: framed,
                received: framed
            }
        );

        // Wrong version.
        let mut buf = BytesMut::from(&[0, 0, 0, 2, 9, 0][..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(FrameError::Version { got: 9 })
        ));
        // Garbage body.
        let mut buf = BytesMut::from(&[0, 0, 0, 3, PROTOCOL_VERSION, 0xff, 0xff][..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(FrameError::Malformed(_))
        ));
        // A length prefix past the limit is refused before any allocation.
        let mut buf = BytesMut::from(&[0x7f, 0xff, 0xff, 0xff, 1][..]);
        assert!(matches!(codec.decode(&mut buf), Err(FrameError::Io(_))));
        // An incomplete frame waits for more bytes.
        let mut buf = BytesMut::from(&[0, 0, 0, 9, PROTOCOL_VERSION][..]);
        assert!(codec.decode(&mut buf).unwrap().is_none());
    }
}

//! The frame the extension writes to the agent socket: a 4-byte header then
//! an encoded `sonde.v1.ExtMessage`. One frame per SOCK_SEQPACKET message, so
//! the transport keeps the boundaries and the header only has to say what
//! follows and in which version.

use thiserror::Error;

/// First two header bytes.
pub const MAGIC: [u8; 2] = *b"SN";
/// Frame format version written by this code.
pub const VERSION: u8 = 1;
/// Header length in bytes.
pub const HEADER_LEN: usize = 4;
/// Largest frame the agent accepts and the extension writes. Chosen to fit
/// the default Unix socket send buffer (`net.core.wmem_default`, 208 KiB).
pub const MAX_FRAME_BYTES: usize = 192 * 1024;

/// What the frame's payload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A protobuf-encoded `sonde.v1.ExtMessage`.
    ExtMessage = 1,
    /// A request as the extension captured it, not yet encoded: the agent
    /// turns it into a `RequestRecord` (`sonde-capture`'s `raw` module).
    Raw = 2,
}

/// Why a frame was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame of {0} bytes is shorter than its {HEADER_LEN}-byte header")]
    Short(usize),
    #[error("frame of {0} bytes exceeds the {MAX_FRAME_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("bad magic {0:02x?}, not a Sonde frame")]
    BadMagic([u8; 2]),
    #[error("unsupported frame version {0} (this build reads {VERSION})")]
    Version(u8),
    #[error("unknown payload kind {0}")]
    Kind(u8),
}

/// Writes the header for a payload of `kind` into `out` (cleared first).
/// The caller appends the payload.
pub fn start(out: &mut Vec<u8>, kind: Kind) {
    out.clear();
    out.extend_from_slice(&[MAGIC[0], MAGIC[1], VERSION, kind as u8]);
}

/// Checks a received frame and returns its kind and payload.
pub fn decode(frame: &[u8]) -> Result<(Kind, &[u8]), FrameError> {
    if frame.len() > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge(frame.len()));
    }
    if frame.len() < HEADER_LEN {
        return Err(FrameError::Short(frame.len()));
    }
    if frame[..2] != MAGIC {
        return Err(FrameError::BadMagic([frame[0], frame[1]]));
    }
    if frame[2] != VERSION {
        return Err(FrameError::Version(frame[2]));
    }
    let kind = match frame[3] {
        1 => Kind::ExtMessage,
        2 => Kind::Raw,
        k => return Err(FrameError::Kind(k)),
    };
    Ok((kind, &frame[HEADER_LEN..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut buf = Vec::new();
        start(&mut buf, Kind::ExtMessage);
        buf.extend_from_slice(b"payload");
        assert_eq!(decode(&buf), Ok((Kind::ExtMessage, &b"payload"[..])));
    }

    #[test]
    fn refuses_garbage() {
        assert_eq!(decode(b"SN"), Err(FrameError::Short(2)));
        assert_eq!(decode(b"XX\x01\x01"), Err(FrameError::BadMagic(*b"XX")));
        assert_eq!(decode(b"SN\x02\x01"), Err(FrameError::Version(2)));
        assert_eq!(decode(b"SN\x01\x09"), Err(FrameError::Kind(9)));
        let big = vec![0u8; MAX_FRAME_BYTES + 1];
        assert_eq!(decode(&big), Err(FrameError::TooLarge(MAX_FRAME_BYTES + 1)));
    }

    #[test]
    fn never_panics_on_any_short_input() {
        // Every input up to 3 bytes of every value: exhaustive for the header.
        for len in 0..4usize {
            for v in 0..(1u32 << (8 * len as u32)).min(1 << 24) {
                let bytes = v.to_le_bytes();
                let _ = decode(&bytes[..len]);
            }
        }
    }
}

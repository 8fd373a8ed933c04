//! WebSocket (RFC 6455) for the live results: the handshake's accept key, the frames a server
//! sends (unmasked text, ping, pong, close) and a strict parser of what a client sends.
//!
//! The results stream only talks: a client's frames are pings, pongs and a close. The parser
//! still reads every frame shape, bounded, so the connection can answer a data frame with the
//! close code it deserves instead of misreading the bytes after it. Strict where the RFC says
//! MUST: a client's frames are masked, reserved bits are clear, control frames are final and at
//! most 125 bytes, a length uses its shortest encoding, a close carries a valid code and UTF-8.

use base64::Engine as _;

/// The GUID a server appends to the client's key (RFC 6455 §1.3).
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// A control frame's payload limit (§5.5).
pub const CONTROL_MAX: usize = 125;
/// The longest frame header: 2 bytes, a 64-bit length, a 4-byte mask.
pub const HEADER_MAX: usize = 14;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl Opcode {
    fn bits(self) -> u8 {
        match self {
            Opcode::Continuation => 0x0,
            Opcode::Text => 0x1,
            Opcode::Binary => 0x2,
            Opcode::Close => 0x8,
            Opcode::Ping => 0x9,
            Opcode::Pong => 0xA,
        }
    }

    fn from_bits(b: u8) -> Option<Self> {
        Some(match b {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            _ => return None,
        })
    }

    pub fn is_control(self) -> bool {
        matches!(self, Opcode::Close | Opcode::Ping | Opcode::Pong)
    }
}

/// Close codes the server sends (§7.4.1).
pub mod close_code {
    /// The stream ended as it should (an official result was sent, or the server stops).
    pub const NORMAL: u16 = 1000;
    /// The server is going away (shutdown).
    pub const GOING_AWAY: u16 = 1001;
    /// A frame broke the protocol.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A data frame: this stream takes none.
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// A frame longer than the server accepts.
    pub const TOO_BIG: u16 = 1009;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("Sec-WebSocket-Key is not the base64 of 16 bytes")]
    BadKey,
}

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`: base64(SHA-1(key ‖ GUID)). The key
/// must be the base64 of 16 bytes (§4.1), which is what proves the client speaks WebSocket.
pub fn accept_key(client_key: &str) -> Result<String, HandshakeError> {
    let key = client_key.trim();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(key)
        .map_err(|_| HandshakeError::BadKey)?;
    if raw.len() != 16 {
        return Err(HandshakeError::BadKey);
    }
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key.as_bytes());
    ctx.update(GUID);
    Ok(base64::engine::general_purpose::STANDARD.encode(ctx.finish()))
}

/// A server frame: final, unmasked.
pub fn encode(opcode: Opcode, payload: &[u8]) -> Vec<u8> {
    assert!(
        !opcode.is_control() || payload.len() <= CONTROL_MAX,
        "a control frame carries at most 125 bytes"
    );
    let mut out = Vec::with_capacity(payload.len() + 10);
    put_header(&mut out, true, opcode, payload.len(), None);
    out.extend_from_slice(payload);
    out
}

/// A server close frame with `code` and a reason (cut to fit a control frame).
pub fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let mut cut = reason.len().min(CONTROL_MAX - 2);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(&reason.as_bytes()[..cut]);
    encode(Opcode::Close, &payload)
}

/// A client frame, masked with `mask` (what a client sends; tests and fuzz checks use it).
pub fn encode_masked(opcode: Opcode, fin: bool, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + HEADER_MAX);
    put_header(&mut out, fin, opcode, payload.len(), Some(mask));
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

fn put_header(out: &mut Vec<u8>, fin: bool, opcode: Opcode, len: usize, mask: Option<[u8; 4]>) {
    out.push(if fin { 0x80 } else { 0 } | opcode.bits());
    let masked = if mask.is_some() { 0x80 } else { 0 };
    if len < 126 {
        out.push(masked | len as u8);
    } else if let Ok(short) = u16::try_from(len) {
        out.push(masked | 126);
        out.extend_from_slice(&short.to_be_bytes());
    } else {
        out.push(masked | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    if let Some(mask) = mask {
        out.extend_from_slice(&mask);
    }
}

/// A client frame, unmasked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub opcode: Opcode,
    pub mask: [u8; 4],
    pub payload: Vec<u8>,
}

impl Frame {
    /// A close frame's code, if it carries one (a close may be empty).
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == Opcode::Close && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("reserved bits set (no extension was agreed)")]
    ReservedBits,
    #[error("unknown opcode {0:#x}")]
    UnknownOpcode(u8),
    #[error("a client frame must be masked")]
    Unmasked,
    #[error("a control frame must be final and at most 125 bytes")]
    BadControl,
    #[error("length {0} not in its shortest encoding")]
    LongLength(u64),
    #[error("frame of {len} bytes over the limit of {max}")]
    TooBig { len: u64, max: usize },
    #[error("close frame with a 1-byte payload, a reserved code or a reason not in UTF-8")]
    BadClose,
}

impl FrameError {
    /// The close code the server answers this error with.
    pub fn close_code(&self) -> u16 {
        match self {
            FrameError::TooBig { .. } => close_code::TOO_BIG,
            _ => close_code::PROTOCOL_ERROR,
        }
    }
}

/// Reads one client frame from the start of `buf`: `Ok(None)` while more bytes are needed,
/// else the frame and how many bytes it took. A payload over `max_payload` is refused from its
/// header alone, before any of it is buffered.
pub fn parse(buf: &[u8], max_payload: usize) -> Result<Option<(Frame, usize)>, FrameError> {
    let [b0, b1, ..] = *buf else { return Ok(None) };
    if b0 & 0x70 != 0 {
        return Err(FrameError::ReservedBits);
    }
    let fin = b0 & 0x80 != 0;
    let opcode = Opcode::from_bits(b0 & 0x0F).ok_or(FrameError::UnknownOpcode(b0 & 0x0F))?;
    if b1 & 0x80 == 0 {
        return Err(FrameError::Unmasked);
    }
    let (len, mut at) = match b1 & 0x7F {
        126 => {
            let Some(b) = buf.get(2..4) else {
                return Ok(None);
            };
            let len = u64::from(u16::from_be_bytes([b[0], b[1]]));
            if len < 126 {
                return Err(FrameError::LongLength(len));
            }
            (len, 4)
        }
        127 => {
            let Some(b) = buf.get(2..10) else {
                return Ok(None);
            };
            let len = u64::from_be_bytes(b.try_into().expect("8 bytes"));
            if len <= u64::from(u16::MAX) || len >> 63 != 0 {
                return Err(FrameError::LongLength(len));
            }
            (len, 10)
        }
        short => (u64::from(short), 2),
    };
    if opcode.is_control() && (!fin || len > CONTROL_MAX as u64) {
        return Err(FrameError::BadControl);
    }
    if len > max_payload as u64 {
        return Err(FrameError::TooBig {
            len,
            max: max_payload,
        });
    }
    let Some(mask) = buf.get(at..at + 4) else {
        return Ok(None);
    };
    let mask: [u8; 4] = mask.try_into().expect("4 bytes");
    at += 4;
    let len = len as usize; // ≤ max_payload
    let Some(body) = buf.get(at..at + len) else {
        return Ok(None);
    };
    let payload: Vec<u8> = body
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ mask[i % 4])
        .collect();
    let frame = Frame {
        fin,
        opcode,
        mask,
        payload,
    };
    if opcode == Opcode::Close && !valid_close(&frame.payload) {
        return Err(FrameError::BadClose);
    }
    debug_assert!(at + len <= buf.len());
    Ok(Some((frame, at + len)))
}

/// An empty close, or a code a peer may send (§7.4) and a UTF-8 reason.
fn valid_close(payload: &[u8]) -> bool {
    match payload {
        [] => true,
        [_] => false,
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            let allowed = matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999);
            allowed && std::str::from_utf8(reason).is_ok()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accept_key_of_the_rfc_example() {
        // RFC 6455 §1.3.
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ==").as_deref(),
            Ok("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        );
        assert_eq!(accept_key("c2hvcnQ="), Err(HandshakeError::BadKey));
        assert_eq!(accept_key("not base64!"), Err(HandshakeError::BadKey));
    }

    #[test]
    fn server_frames_of_each_length_encoding() {
        assert_eq!(encode(Opcode::Text, b"Hello"), b"\x81\x05Hello");
        let mid = encode(Opcode::Text, &[b'x'; 300]);
        assert_eq!(&mid[..4], &[0x81, 126, 0x01, 0x2C]);
        let big = encode(Opcode::Binary, &vec![0; 70_000]);
        assert_eq!(&big[..10], &[0x82, 127, 0, 0, 0, 0, 0, 0x01, 0x11, 0x70]);
        assert_eq!(close_frame(1000, ""), vec![0x88, 2, 0x03, 0xE8]);
        assert_eq!(close_frame(1001, &"é".repeat(100)).len(), 2 + 2 + 122);
    }

    #[test]
    fn the_rfc_masked_example_parses() {
        // RFC 6455 §5.7: a single-frame masked text message "Hello".
        let bytes = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let (f, used) = parse(&bytes, 1024).unwrap().unwrap();
        assert_eq!(
            (f.opcode, f.fin, &f.payload[..], used),
            (Opcode::Text, true, &b"Hello"[..], 11)
        );
        for cut in 0..bytes.len() {
            assert_eq!(parse(&bytes[..cut], 1024), Ok(None), "{cut} bytes");
        }
    }

    #[test]
    fn what_a_client_must_not_send() {
        let m = [1, 2, 3, 4];
        assert_eq!(parse(b"\x81\x05Hello", 64), Err(FrameError::Unmasked));
        assert_eq!(
            parse(&[0xC1, 0x80, 0, 0, 0, 0], 64),
            Err(FrameError::ReservedBits)
        );
        assert_eq!(
            parse(&[0x83, 0x80, 0, 0, 0, 0], 64),
            Err(FrameError::UnknownOpcode(3))
        );
        assert_eq!(
            parse(&encode_masked(Opcode::Ping, false, b"", m), 64),
            Err(FrameError::BadControl)
        );
        assert_eq!(
            parse(&encode_masked(Opcode::Ping, true, &[0; 126], m), 4096),
            Err(FrameError::BadControl)
        );
        assert_eq!(
            parse(&[0x82, 0xFE, 0, 5], 64),
            Err(FrameError::LongLength(5))
        );
        assert_eq!(
            parse(&encode_masked(Opcode::Binary, true, &[0; 65], m), 64),
            Err(FrameError::TooBig { len: 65, max: 64 })
        );
        assert_eq!(
            parse(&[0x82, 0xFF, 0, 0, 0, 1, 0, 0, 0, 0], 64)
                .unwrap_err()
                .close_code(),
            close_code::TOO_BIG
        );
        assert_eq!(
            parse(&encode_masked(Opcode::Close, true, &[3], m), 64),
            Err(FrameError::BadClose)
        );
        assert_eq!(
            parse(
                &encode_masked(Opcode::Close, true, &1005u16.to_be_bytes(), m),
                64
            ),
            Err(FrameError::BadClose)
        );
        let bad_utf8 = [0x03, 0xE8, 0xFF];
        assert_eq!(
            parse(&encode_masked(Opcode::Close, true, &bad_utf8, m), 64),
            Err(FrameError::BadClose)
        );
        let (f, _) = parse(
            &encode_masked(Opcode::Close, true, &[0x03, 0xE8, b'o', b'k'], m),
            64,
        )
        .unwrap()
        .unwrap();
        assert_eq!(f.close_code(), Some(1000));
    }

    proptest! {
        /// A client frame round-trips, whatever its split into reads.
        #[test]
        fn client_frames_round_trip(
            op in prop::sample::select(vec![Opcode::Text, Opcode::Binary, Opcode::Continuation, Opcode::Ping, Opcode::Pong]),
            fin in any::<bool>(),
            payload in prop::collection::vec(any::<u8>(), 0..70_000),
            mask in any::<[u8; 4]>(),
            cut in any::<prop::sample::Index>(),
        ) {
            let fin = fin || op.is_control();
            let payload = if op.is_control() { payload[..payload.len().min(CONTROL_MAX)].to_vec() } else { payload };
            let bytes = encode_masked(op, fin, &payload, mask);
            let cut = cut.index(bytes.len());
            prop_assert_eq!(parse(&bytes[..cut], 1 << 20), Ok(None));
            let (f, used) = parse(&bytes, 1 << 20).unwrap().unwrap();
            prop_assert_eq!(used, bytes.len());
            prop_assert_eq!(f, Frame { fin, opcode: op, mask, payload });
        }
    }
}

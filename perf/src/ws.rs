//! The client side of a results WebSocket (RFC 6455) for `votes-sse`: the upgrade request, the
//! check of the server's `101`, an incremental parser of the server's frames (unmasked, as a
//! server must send them) and the masked frames a client sends back (pong, close).

use votes_core::ws::Opcode;

/// The client's handshake key: any 16 bytes, base64 (RFC 6455 §4.1); a fixed one is fine for
/// a load generator, the server checks only its form.
pub const KEY: &str = "dm90ZXMtc3NlIGNsaWVudA==";

/// Bound on one server frame's payload (a results event is a few KiB).
pub const FRAME_MAX: usize = 256 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WsError {
    #[error("websocket: the server's frame is masked")]
    Masked,
    #[error("websocket: reserved bits set")]
    Reserved,
    #[error("websocket: unknown opcode {0:#x}")]
    Opcode(u8),
    #[error("websocket: fragmented frame (the results stream sends whole messages)")]
    Fragmented,
    #[error("websocket: frame larger than {FRAME_MAX} bytes")]
    TooLarge,
    #[error("websocket: 101 without the expected Sec-WebSocket-Accept")]
    Accept,
}

/// The upgrade request for `path` on `authority`.
pub fn upgrade_request(path: &str, authority: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n\r\n"
    )
    .into_bytes()
}

/// Whether a `101` head (its bytes) carries the accept value of [`KEY`].
pub fn check_accept(head: &[u8]) -> Result<(), WsError> {
    let expected = votes_core::ws::accept_key(KEY).expect("KEY is a valid key");
    let text = String::from_utf8_lossy(head);
    let found = text.split("\r\n").any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("sec-websocket-accept") && value.trim() == expected
        })
    });
    if found { Ok(()) } else { Err(WsError::Accept) }
}

/// One whole server frame: its opcode and where its payload lies in the parsed buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFrame {
    pub opcode: Opcode,
    pub payload: std::ops::Range<usize>,
}

/// Parses the frame at the start of `buf`: `Ok(None)` while incomplete, else the frame and the
/// bytes it used.
pub fn parse_server_frame(buf: &[u8]) -> Result<Option<(ServerFrame, usize)>, WsError> {
    let (Some(&b0), Some(&b1)) = (buf.first(), buf.get(1)) else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(WsError::Reserved);
    }
    if b1 & 0x80 != 0 {
        return Err(WsError::Masked);
    }
    let opcode = match b0 & 0x0f {
        0x1 => Opcode::Text,
        0x2 => Opcode::Binary,
        0x8 => Opcode::Close,
        0x9 => Opcode::Ping,
        0xa => Opcode::Pong,
        0x0 => return Err(WsError::Fragmented),
        other => return Err(WsError::Opcode(other)),
    };
    if b0 & 0x80 == 0 {
        return Err(WsError::Fragmented);
    }
    let (len, at) = match b1 & 0x7f {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => (u64::from_be_bytes(b.try_into().expect("8 bytes")), 10),
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    let len = usize::try_from(len).map_err(|_| WsError::TooLarge)?;
    if len > FRAME_MAX {
        return Err(WsError::TooLarge);
    }
    if buf.len() < at + len {
        return Ok(None);
    }
    Ok(Some((
        ServerFrame {
            opcode,
            payload: at..at + len,
        },
        at + len,
    )))
}

/// A masked client frame (pong, close); the mask need not be secret here (RFC 6455 §10.3 is
/// about browsers running untrusted scripts).
pub fn client_frame(opcode: Opcode, payload: &[u8]) -> Vec<u8> {
    votes_core::ws::encode_masked(opcode, true, payload, [0x5a, 0x17, 0xc3, 0x8e])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_server_frames_in_pieces() {
        let text = votes_core::ws::encode(Opcode::Text, &[b'x'; 300]);
        let ping = votes_core::ws::encode(Opcode::Ping, b"");
        let mut stream = text.clone();
        stream.extend_from_slice(&ping);
        for cut in 0..text.len() {
            assert_eq!(parse_server_frame(&stream[..cut]), Ok(None), "cut {cut}");
        }
        let (f, used) = parse_server_frame(&stream).unwrap().unwrap();
        assert_eq!((f.opcode, used), (Opcode::Text, text.len()));
        assert_eq!(&stream[f.payload], &[b'x'; 300][..]);
        let (f, used) = parse_server_frame(&stream[text.len()..]).unwrap().unwrap();
        assert_eq!((f.opcode, used), (Opcode::Ping, 2));
    }

    #[test]
    fn refuses_what_a_server_must_not_send() {
        let masked = votes_core::ws::encode_masked(Opcode::Text, true, b"a", [1, 2, 3, 4]);
        assert_eq!(parse_server_frame(&masked), Err(WsError::Masked));
        let unfinished = votes_core::ws::encode_masked(Opcode::Text, false, b"a", [0; 4]);
        assert!(parse_server_frame(&unfinished).is_err());
        assert_eq!(parse_server_frame(&[0x83, 0]), Err(WsError::Opcode(3)));
        assert_eq!(parse_server_frame(&[0xc1, 0]), Err(WsError::Reserved));
        let mut huge = vec![0x81, 127];
        huge.extend_from_slice(&(FRAME_MAX as u64 + 1).to_be_bytes());
        assert_eq!(parse_server_frame(&huge), Err(WsError::TooLarge));
    }

    #[test]
    fn checks_the_accept_value() {
        let accept = votes_core::ws::accept_key(KEY).unwrap();
        let head =
            format!("HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: {accept}\r\n\r\n");
        assert_eq!(check_accept(head.as_bytes()), Ok(()));
        assert_eq!(
            check_accept(b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: x\r\n\r\n"),
            Err(WsError::Accept)
        );
    }
}

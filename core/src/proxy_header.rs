//! The PROXY protocol v2 header (HAProxy's specification, section 2.2): the bytes a load
//! balancer writes before a TCP connection's own first byte to say whose connection it is.
//! Behind a balancer every voter has the balancer's address; the header's source address is
//! what the rate limits and the logs must see. Sans-IO and strict: the 16-byte fixed part says
//! how long the rest is ([`header_len`]), so a reader takes exactly the header and not one byte
//! of what follows, then [`parse`] checks the whole of it. Only version 2 (binary), TCP over
//! IPv4 or IPv6; `LOCAL` (the balancer's own health checks) and `UNSPEC` carry no address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// The first 12 bytes of every v2 header.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Signature, version and command, family and protocol, length of the rest.
pub const FIXED_LEN: usize = 16;
/// The longest address block accepted (addresses and TLVs). Balancers send 12 or 36 bytes of
/// addresses and a few TLVs (ALPN, authority, a connection id); 512 leaves room for those.
pub const ADDRESS_BLOCK_MAX: usize = 512;

const VERSION_2: u8 = 0x2;
const CMD_LOCAL: u8 = 0x0;
const CMD_PROXY: u8 = 0x1;
const UNSPEC: u8 = 0x00;
const TCP_V4: u8 = 0x11;
const TCP_V6: u8 = 0x21;
const V4_ADDRESSES: usize = 12;
const V6_ADDRESSES: usize = 36;
const TLV_HEAD: usize = 3;

/// Whose connection this is, as the header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proxied {
    /// The balancer's own connection (`LOCAL`, or `PROXY` with `UNSPEC`): the socket's peer is
    /// the client.
    Local,
    /// A client's connection relayed by the balancer.
    Client {
        source: SocketAddr,
        destination: SocketAddr,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("not a PROXY protocol v2 header (no signature)")]
    Signature,
    #[error("PROXY protocol version {0} (only 2 is spoken)")]
    Version(u8),
    #[error("unknown PROXY command {0:#x}")]
    Command(u8),
    #[error("unsupported address family and protocol {0:#04x} (TCP over IPv4 or IPv6 only)")]
    Family(u8),
    #[error("an address block of {0} bytes is longer than {ADDRESS_BLOCK_MAX}")]
    TooLong(usize),
    #[error("an address block of {len} bytes cannot hold the addresses of family {family:#04x}")]
    TooShort { len: usize, family: u8 },
    #[error("the header is {got} bytes, its fixed part says {want}")]
    Length { got: usize, want: usize },
    #[error("a TLV runs past the end of the header")]
    Tlv,
}

/// The whole header's length, from its first [`FIXED_LEN`] bytes (fewer is a caller's bug).
pub fn header_len(fixed: &[u8]) -> Result<usize, ProxyHeaderError> {
    assert!(
        fixed.len() >= FIXED_LEN,
        "the fixed part is {FIXED_LEN} bytes"
    );
    if fixed[..12] != SIGNATURE {
        return Err(ProxyHeaderError::Signature);
    }
    let version = fixed[12] >> 4;
    if version != VERSION_2 {
        return Err(ProxyHeaderError::Version(version));
    }
    let command = fixed[12] & 0x0f;
    if command != CMD_LOCAL && command != CMD_PROXY {
        return Err(ProxyHeaderError::Command(command));
    }
    let rest = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    if rest > ADDRESS_BLOCK_MAX {
        return Err(ProxyHeaderError::TooLong(rest));
    }
    Ok(FIXED_LEN + rest)
}

/// Checks a whole header (exactly [`header_len`] bytes) and says whose connection it is.
pub fn parse(header: &[u8]) -> Result<Proxied, ProxyHeaderError> {
    if header.len() < FIXED_LEN {
        return Err(ProxyHeaderError::Length {
            got: header.len(),
            want: FIXED_LEN,
        });
    }
    let want = header_len(header)?;
    if header.len() != want {
        return Err(ProxyHeaderError::Length {
            got: header.len(),
            want,
        });
    }
    let command = header[12] & 0x0f;
    let family = header[13];
    let block = &header[FIXED_LEN..];
    let addresses_of = |len: usize| {
        block.get(..len).ok_or(ProxyHeaderError::TooShort {
            len: block.len(),
            family,
        })
    };
    let (addresses, proxied) = match family {
        UNSPEC => (0, None),
        TCP_V4 => {
            let a = addresses_of(V4_ADDRESSES)?;
            let ip = |i: usize| Ipv4Addr::new(a[i], a[i + 1], a[i + 2], a[i + 3]);
            let port = |i: usize| u16::from_be_bytes([a[i], a[i + 1]]);
            let source = SocketAddr::V4(SocketAddrV4::new(ip(0), port(8)));
            let destination = SocketAddr::V4(SocketAddrV4::new(ip(4), port(10)));
            (V4_ADDRESSES, Some((source, destination)))
        }
        TCP_V6 => {
            let a = addresses_of(V6_ADDRESSES)?;
            let ip = |i: usize| {
                let mut o = [0u8; 16];
                o.copy_from_slice(&a[i..i + 16]);
                Ipv6Addr::from(o)
            };
            let port = |i: usize| u16::from_be_bytes([a[i], a[i + 1]]);
            let source = SocketAddr::V6(SocketAddrV6::new(ip(0), port(32), 0, 0));
            let destination = SocketAddr::V6(SocketAddrV6::new(ip(16), port(34), 0, 0));
            (V6_ADDRESSES, Some((source, destination)))
        }
        other => return Err(ProxyHeaderError::Family(other)),
    };
    // The rest is TLVs (type, 16-bit length, value): they must tile it exactly. UNSPEC's block
    // is opaque by the specification.
    if family != UNSPEC {
        let mut tlvs = &block[addresses..];
        while !tlvs.is_empty() {
            let head = tlvs.get(..TLV_HEAD).ok_or(ProxyHeaderError::Tlv)?;
            let len = usize::from(u16::from_be_bytes([head[1], head[2]]));
            tlvs = tlvs.get(TLV_HEAD + len..).ok_or(ProxyHeaderError::Tlv)?;
        }
    }
    Ok(match (command, proxied) {
        (CMD_PROXY, Some((source, destination))) => Proxied::Client {
            source,
            destination,
        },
        _ => Proxied::Local,
    })
}

/// A v2 header for a client's TCP connection from `source` to `destination` (both of one
/// family), without TLVs: what a balancer sends, for tests and tools.
pub fn encode(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut out = SIGNATURE.to_vec();
    out.push((VERSION_2 << 4) | CMD_PROXY);
    // Both addresses, then both ports: the layout of either family's address block.
    let (family, len, addresses) = match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => (TCP_V4, V4_ADDRESSES, [s.octets(), d.octets()].concat()),
        (IpAddr::V6(s), IpAddr::V6(d)) => (TCP_V6, V6_ADDRESSES, [s.octets(), d.octets()].concat()),
        _ => panic!("a PROXY header's two addresses are of one family"),
    };
    out.push(family);
    out.extend_from_slice(&(len as u16).to_be_bytes());
    out.extend_from_slice(&addresses);
    out.extend_from_slice(&source.port().to_be_bytes());
    out.extend_from_slice(&destination.port().to_be_bytes());
    out
}

/// The balancer's own connection (`LOCAL`): health checks.
pub fn encode_local() -> Vec<u8> {
    let mut out = SIGNATURE.to_vec();
    out.extend_from_slice(&[(VERSION_2 << 4) | CMD_LOCAL, UNSPEC, 0, 0]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_client_header_round_trips_over_both_families() {
        for (s, d) in [
            ("203.0.113.7:51234", "10.0.0.5:8080"),
            ("[2001:db8::7]:51234", "[2001:db8::1]:443"),
        ] {
            let h = encode(addr(s), addr(d));
            assert_eq!(header_len(&h[..FIXED_LEN]), Ok(h.len()));
            assert_eq!(
                parse(&h),
                Ok(Proxied::Client {
                    source: addr(s),
                    destination: addr(d)
                })
            );
        }
        let local = encode_local();
        assert_eq!(header_len(&local), Ok(FIXED_LEN));
        assert_eq!(parse(&local), Ok(Proxied::Local));
    }

    #[test]
    fn tlvs_are_skipped_and_must_tile_the_block() {
        let mut h = encode(addr("198.51.100.1:1000"), addr("10.0.0.1:80"));
        // ALPN "h2" (type 0x01) and a NOOP (0x04) of length 0.
        let tlvs = [0x01, 0x00, 0x02, b'h', b'2', 0x04, 0x00, 0x00];
        h.extend_from_slice(&tlvs);
        let len = (V4_ADDRESSES + tlvs.len()) as u16;
        h[14..16].copy_from_slice(&len.to_be_bytes());
        assert!(matches!(parse(&h), Ok(Proxied::Client { .. })));
        // A TLV that claims more than is left.
        h[FIXED_LEN + V4_ADDRESSES + 2] = 9;
        assert_eq!(parse(&h), Err(ProxyHeaderError::Tlv));
    }

    #[test]
    fn anything_else_is_refused_with_its_reason() {
        let good = encode(addr("198.51.100.1:1000"), addr("10.0.0.1:80"));
        let with = |i: usize, b: u8| {
            let mut h = good.clone();
            h[i] = b;
            h
        };
        assert_eq!(
            header_len(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"),
            Err(ProxyHeaderError::Signature),
            "version 1 (text) is not spoken"
        );
        assert_eq!(parse(&with(12, 0x11)), Err(ProxyHeaderError::Version(1)));
        assert_eq!(parse(&with(12, 0x2f)), Err(ProxyHeaderError::Command(0xf)));
        assert_eq!(
            parse(&with(13, 0x12)),
            Err(ProxyHeaderError::Family(0x12)),
            "UDP"
        );
        assert_eq!(
            parse(&with(13, 0x31)),
            Err(ProxyHeaderError::Family(0x31)),
            "UNIX"
        );
        assert_eq!(
            parse(&with(13, TCP_V6)),
            Err(ProxyHeaderError::TooShort {
                len: V4_ADDRESSES,
                family: TCP_V6
            })
        );
        let mut long = good.clone();
        long[14..16].copy_from_slice(&513u16.to_be_bytes());
        assert_eq!(header_len(&long), Err(ProxyHeaderError::TooLong(513)));
        assert_eq!(
            parse(&good[..good.len() - 1]),
            Err(ProxyHeaderError::Length {
                got: good.len() - 1,
                want: good.len()
            })
        );
        assert!(parse(&good[..5]).is_err());
    }
}

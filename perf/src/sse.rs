//! A minimal, incremental reader of a Server-Sent Events stream over HTTP/1.1, small enough that
//! `votes-sse` can hold tens of thousands of subscriptions in one process: the response
//! [`head`](parse_head), the body's framing ([`BodyDecoder`]: chunked, `Content-Length` or
//! until EOF) and the event stream itself ([`SseParser`], the WHATWG `text/event-stream`
//! rules: `event`, `data`, `id`, `retry` fields, comments, CRLF / LF / CR line ends). Each
//! takes bytes as they arrive, in pieces of any size, and keeps only what it has not consumed.

/// Bound on a response head (status line and headers).
pub const HEAD_MAX: usize = 16 * 1024;
/// Bound on one SSE line or event's data, and on a chunk-size line.
pub const EVENT_MAX: usize = 256 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    #[error("response head larger than {HEAD_MAX} bytes")]
    HeadTooLarge,
    #[error("malformed response head: {0}")]
    Head(&'static str),
    #[error("malformed chunked body: {0}")]
    Chunked(&'static str),
    #[error("event or line larger than {EVENT_MAX} bytes")]
    EventTooLarge,
}

/// What `votes-sse` needs of a response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    /// `Content-Type` starts with `text/event-stream`.
    pub event_stream: bool,
    pub framing: Framing,
}

/// How the body's end is found (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Chunked,
    Length(u64),
    /// Until the connection closes.
    Eof,
}

/// Parses a response head at the start of `buf`: `Ok(None)` while it is incomplete, else the
/// head and its length in bytes (the body starts there).
pub fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, SseError> {
    let Some(end) = find_head_end(buf) else {
        return if buf.len() > HEAD_MAX {
            Err(SseError::HeadTooLarge)
        } else {
            Ok(None)
        };
    };
    if end > HEAD_MAX {
        return Err(SseError::HeadTooLarge);
    }
    let text = std::str::from_utf8(&buf[..end]).map_err(|_| SseError::Head("not UTF-8"))?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let status_line = lines.next().ok_or(SseError::Head("no status line"))?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(SseError::Head("not an HTTP/1.x status line"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .filter(|s| (100..1000).contains(s))
        .ok_or(SseError::Head("bad status code"))?;
    let mut event_stream = false;
    let mut chunked = false;
    let mut length = None;
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line
            .split_once(':')
            .ok_or(SseError::Head("header without a colon"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-type") {
            event_stream = value
                .get(..17)
                .is_some_and(|v| v.eq_ignore_ascii_case("text/event-stream"));
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("chunked"));
        } else if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<u64>()
                    .map_err(|_| SseError::Head("bad Content-Length"))?,
            );
        }
    }
    let framing = match (chunked, length) {
        (true, _) => Framing::Chunked,
        (false, Some(n)) => Framing::Length(n),
        (false, None) => Framing::Eof,
    };
    Ok(Some((
        Head {
            status,
            event_stream,
            framing,
        },
        end,
    )))
}

/// The length of the head including its blank line (`\r\n\r\n`, or bare `\n\n`).
fn find_head_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(p) = buf[i..].iter().position(|&b| b == b'\n') {
        let nl = i + p;
        let rest = &buf[nl + 1..];
        if rest.starts_with(b"\r\n") {
            return Some(nl + 3);
        }
        if rest.starts_with(b"\n") {
            return Some(nl + 2);
        }
        i = nl + 1;
    }
    None
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Reading a chunk-size line.
    Size,
    /// This many payload bytes of the current chunk are still to come.
    Data(u64),
    /// The CRLF after a chunk's payload.
    DataEnd,
    /// Trailer lines after the last (empty) chunk, up to a blank line.
    Trailer,
}

/// Removes the body's framing: payload bytes are appended to the caller's buffer.
#[derive(Debug, Clone)]
pub struct BodyDecoder {
    framing: Framing,
    chunk: Chunk,
    /// `Framing::Length`: bytes still to come.
    left: u64,
    done: bool,
}

impl BodyDecoder {
    pub fn new(framing: Framing) -> Self {
        let left = match framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        Self {
            framing,
            chunk: Chunk::Size,
            left,
            done: matches!(framing, Framing::Length(0)),
        }
    }

    /// The body has ended (the last chunk, or `Content-Length` bytes, have been read).
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Decodes what it can of `input`, appending the payload to `out`; returns how many bytes
    /// of `input` it consumed (an incomplete chunk-size line is left for the next call).
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, SseError> {
        if self.done {
            return Ok(0);
        }
        match self.framing {
            Framing::Eof => {
                out.extend_from_slice(input);
                Ok(input.len())
            }
            Framing::Length(_) => {
                let n = usize::try_from(self.left)
                    .unwrap_or(usize::MAX)
                    .min(input.len());
                out.extend_from_slice(&input[..n]);
                self.left -= n as u64;
                self.done = self.left == 0;
                Ok(n)
            }
            Framing::Chunked => self.decode_chunked(input, out),
        }
    }

    fn decode_chunked(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, SseError> {
        let mut pos = 0;
        while pos < input.len() && !self.done {
            let rest = &input[pos..];
            match self.chunk {
                Chunk::Size => {
                    let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
                        if rest.len() > 1024 {
                            return Err(SseError::Chunked("chunk-size line too long"));
                        }
                        break;
                    };
                    let line = &rest[..nl];
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    let digits = line
                        .iter()
                        .position(|&b| b == b';' || b == b' ' || b == b'\t')
                        .map_or(line, |i| &line[..i]);
                    if digits.is_empty() || digits.len() > 15 {
                        return Err(SseError::Chunked("bad chunk size"));
                    }
                    let size = std::str::from_utf8(digits)
                        .ok()
                        .and_then(|s| u64::from_str_radix(s, 16).ok())
                        .ok_or(SseError::Chunked("bad chunk size"))?;
                    pos += nl + 1;
                    self.chunk = if size == 0 {
                        Chunk::Trailer
                    } else {
                        Chunk::Data(size)
                    };
                }
                Chunk::Data(left) => {
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(rest.len());
                    out.extend_from_slice(&rest[..n]);
                    pos += n;
                    let left = left - n as u64;
                    self.chunk = if left == 0 {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left)
                    };
                }
                Chunk::DataEnd => {
                    if rest.starts_with(b"\r\n") {
                        pos += 2;
                    } else if rest.starts_with(b"\n") {
                        pos += 1;
                    } else if rest == b"\r" {
                        break;
                    } else {
                        return Err(SseError::Chunked("no CRLF after a chunk"));
                    }
                    self.chunk = Chunk::Size;
                }
                Chunk::Trailer => {
                    let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
                        if rest.len() > HEAD_MAX {
                            return Err(SseError::Chunked("trailer too long"));
                        }
                        break;
                    };
                    let line = &rest[..nl];
                    pos += nl + 1;
                    if line.is_empty() || line == b"\r" {
                        self.done = true;
                    }
                }
            }
        }
        Ok(pos)
    }
}

/// One item of an event stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SseItem<'a> {
    /// A dispatched event: its type (`message` when no `event:` field was given), its data
    /// (the `data:` lines joined by `\n`) and the last event id seen so far.
    Event {
        event: &'a [u8],
        data: &'a [u8],
        id: &'a [u8],
    },
    /// A comment line (`: heartbeat`), without the colon.
    Comment(&'a [u8]),
    /// A valid `retry:` field, in milliseconds.
    Retry(u64),
}

/// The incremental `text/event-stream` parser.
#[derive(Debug, Clone, Default)]
pub struct SseParser {
    /// Decoded body bytes not yet parsed (at most an incomplete line).
    pending: Vec<u8>,
    /// The event being built.
    event: Vec<u8>,
    data: Vec<u8>,
    last_id: Vec<u8>,
    /// The previous piece ended in CR: a leading LF of the next one belongs to that line end.
    skip_lf: bool,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// The buffer a [`BodyDecoder`] appends to; call [`SseParser::process`] afterwards.
    pub fn pending_mut(&mut self) -> &mut Vec<u8> {
        &mut self.pending
    }

    /// The last event id received (sent back as `Last-Event-ID` on a reconnection).
    pub fn last_event_id(&self) -> &[u8] {
        &self.last_id
    }

    /// Appends `bytes` and parses every complete line.
    pub fn feed(&mut self, bytes: &[u8], on: impl FnMut(SseItem<'_>)) -> Result<(), SseError> {
        self.pending.extend_from_slice(bytes);
        self.process(on)
    }

    /// Parses every complete line of the pending bytes, calling `on` for each item.
    pub fn process(&mut self, mut on: impl FnMut(SseItem<'_>)) -> Result<(), SseError> {
        let mut pending = std::mem::take(&mut self.pending);
        let mut pos = 0;
        if self.skip_lf && !pending.is_empty() {
            if pending[0] == b'\n' {
                pos = 1;
            }
            self.skip_lf = false;
        }
        let mut result = Ok(());
        while let Some(p) = pending[pos..]
            .iter()
            .position(|&b| b == b'\n' || b == b'\r')
        {
            let end = pos + p;
            let next = if pending[end] == b'\r' {
                match pending.get(end + 1) {
                    Some(b'\n') => end + 2,
                    Some(_) => end + 1,
                    None => {
                        self.skip_lf = true;
                        end + 1
                    }
                }
            } else {
                end + 1
            };
            if let Err(e) = self.line(&pending[pos..end], &mut on) {
                result = Err(e);
                break;
            }
            pos = next;
        }
        pending.drain(..pos);
        if result.is_ok() && pending.len() > EVENT_MAX {
            result = Err(SseError::EventTooLarge);
        }
        // Keep the buffer small between events: a subscriber mostly waits.
        if pending.capacity() > 16 * 1024 && pending.len() < 1024 {
            pending.shrink_to(1024);
        }
        self.pending = pending;
        result
    }

    fn line(&mut self, line: &[u8], on: &mut impl FnMut(SseItem<'_>)) -> Result<(), SseError> {
        if line.is_empty() {
            if !self.data.is_empty() {
                self.data.pop(); // the LF after the last data line
                let event: &[u8] = if self.event.is_empty() {
                    b"message"
                } else {
                    &self.event
                };
                on(SseItem::Event {
                    event,
                    data: &self.data,
                    id: &self.last_id,
                });
            }
            self.data.clear();
            self.event.clear();
            if self.data.capacity() > 16 * 1024 {
                self.data.shrink_to(1024);
            }
            return Ok(());
        }
        if let Some(comment) = line.strip_prefix(b":") {
            on(SseItem::Comment(comment));
            return Ok(());
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"event" => {
                self.event.clear();
                self.event.extend_from_slice(value);
            }
            b"data" => {
                if self.data.len() + value.len() + 1 > EVENT_MAX {
                    return Err(SseError::EventTooLarge);
                }
                self.data.extend_from_slice(value);
                self.data.push(b'\n');
            }
            b"id" if !value.contains(&0) => {
                self.last_id.clear();
                self.last_id.extend_from_slice(value);
            }
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                if let Some(ms) = std::str::from_utf8(value).ok().and_then(|s| s.parse().ok()) {
                    on(SseItem::Retry(ms));
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// What `votes-sse` reads of a `tally` or `final` event's data (the results JSON of
/// docs/design.md §4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub struct TallyData {
    pub total: u64,
    #[serde(rename = "final", default)]
    pub is_final: bool,
    /// Milliseconds since the Unix epoch at which the node saw these totals.
    #[serde(default)]
    pub as_of: Option<u64>,
}

impl TallyData {
    pub fn parse(data: &[u8]) -> Option<Self> {
        serde_json::from_slice(data).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Eq)]
    enum Owned {
        Event(String, String, String),
        Comment(String),
        Retry(u64),
    }

    fn s(b: &[u8]) -> String {
        String::from_utf8(b.to_vec()).unwrap()
    }

    /// Feeds `stream` in pieces of `step` bytes and returns every item.
    fn parse_in_pieces(stream: &[u8], step: usize) -> Vec<Owned> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for piece in stream.chunks(step) {
            let mut items = Vec::new();
            p.feed(piece, |item| {
                items.push(match item {
                    SseItem::Event { event, data, id } => Owned::Event(s(event), s(data), s(id)),
                    SseItem::Comment(c) => Owned::Comment(s(c)),
                    SseItem::Retry(ms) => Owned::Retry(ms),
                })
            })
            .unwrap();
            out.extend(items);
        }
        out
    }

    const STREAM: &[u8] =
        b"retry: 2000\n\nid: 7\nevent: tally\ndata: {\"total\":8}\n\n: heartbeat\r\n\
        data: a\r\ndata:b\r\n\r\nid: 9\revent: final\rdata: {\"total\":9,\"final\":true}\r\r\
        event: ignored-without-data\n\nid\ndata\n\n";

    #[test]
    fn parses_fields_comments_and_every_line_end_in_any_piece_size() {
        let want = vec![
            Owned::Retry(2000),
            Owned::Event("tally".into(), r#"{"total":8}"#.into(), "7".into()),
            Owned::Comment(" heartbeat".into()),
            Owned::Event("message".into(), "a\nb".into(), "7".into()),
            Owned::Event(
                "final".into(),
                r#"{"total":9,"final":true}"#.into(),
                "9".into(),
            ),
            Owned::Event("message".into(), "".into(), "".into()),
        ];
        for step in [1, 2, 3, 5, 7, 64, STREAM.len()] {
            assert_eq!(parse_in_pieces(STREAM, step), want, "pieces of {step}");
        }
    }

    #[test]
    fn a_cr_at_the_end_of_a_piece_does_not_make_an_empty_line_of_the_next_lf() {
        let mut p = SseParser::new();
        let mut n = 0;
        p.feed(b"data: x\r", |_| n += 1).unwrap();
        p.feed(b"\n", |_| n += 1).unwrap();
        assert_eq!(n, 0, "one line end, no event yet");
        p.feed(b"\r\n", |_| n += 1).unwrap();
        assert_eq!(n, 1);
    }

    #[test]
    fn bounds_lines_and_events() {
        let mut p = SseParser::new();
        let long = vec![b'x'; EVENT_MAX + 10];
        assert_eq!(p.feed(&long, |_| {}), Err(SseError::EventTooLarge));
        let mut p = SseParser::new();
        let line = [b"data: ".as_slice(), &vec![b'x'; 1000], b"\n"].concat();
        let mut r = Ok(());
        for _ in 0..(EVENT_MAX / 1000 + 2) {
            r = p.feed(&line, |_| {});
            if r.is_err() {
                break;
            }
        }
        assert_eq!(r, Err(SseError::EventTooLarge));
    }

    #[test]
    fn parses_heads() {
        let head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n\
            transfer-encoding: chunked\r\ncache-control: no-store\r\n\r\nbody";
        let (h, n) = parse_head(head).unwrap().unwrap();
        assert_eq!(
            h,
            Head {
                status: 200,
                event_stream: true,
                framing: Framing::Chunked
            }
        );
        assert_eq!(&head[n..], b"body");
        for cut in 0..n {
            assert_eq!(parse_head(&head[..cut]), Ok(None), "cut at {cut}");
        }
        let (h, _) = parse_head(b"HTTP/1.1 404 Not Found\r\nContent-Length: 12\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            (h.status, h.event_stream, h.framing),
            (404, false, Framing::Length(12))
        );
        let (h, _) = parse_head(b"HTTP/1.0 200 OK\nContent-Type: text/event-stream\n\n")
            .unwrap()
            .unwrap();
        assert_eq!((h.status, h.framing), (200, Framing::Eof));
        assert!(parse_head(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 abc\r\n\r\n").is_err());
        assert_eq!(
            parse_head(&vec![b'a'; HEAD_MAX + 1]),
            Err(SseError::HeadTooLarge)
        );
    }

    #[test]
    fn decodes_chunked_bodies_in_any_piece_size() {
        let body = b"7\r\nretry: \r\n5;ext=1\r\n2000\n\r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-trailer: 1\r\n\r\n";
        for step in 1..=body.len() {
            let mut d = BodyDecoder::new(Framing::Chunked);
            let (mut raw, mut out) = (Vec::new(), Vec::new());
            for piece in body.chunks(step) {
                raw.extend_from_slice(piece);
                let n = d.decode(&raw, &mut out).unwrap();
                raw.drain(..n);
            }
            assert!(d.is_done(), "pieces of {step}");
            assert!(raw.is_empty());
            assert_eq!(out, b"retry: 2000\nabcdefghijklmnopqrstuvwxyz");
        }
        let mut d = BodyDecoder::new(Framing::Chunked);
        assert!(d.decode(b"zz\r\n", &mut Vec::new()).is_err());
        let mut d = BodyDecoder::new(Framing::Chunked);
        assert!(d.decode(b"1\r\nab", &mut Vec::new()).is_err());
    }

    #[test]
    fn decodes_length_and_eof_bodies() {
        let mut d = BodyDecoder::new(Framing::Length(5));
        let mut out = Vec::new();
        assert_eq!(d.decode(b"abc", &mut out), Ok(3));
        assert_eq!(d.decode(b"defg", &mut out), Ok(2));
        assert!(d.is_done());
        assert_eq!(out, b"abcde");
        let mut d = BodyDecoder::new(Framing::Eof);
        assert_eq!(d.decode(b"xyz", &mut out), Ok(3));
        assert!(!d.is_done());
    }

    #[test]
    fn reads_the_total_of_a_tally() {
        let t = TallyData::parse(
            br#"{"election":"e","state":"open","totals":{"total":3,"b":5},"total":8,"final":false,"as_of":1764000000000}"#,
        );
        assert_eq!(
            t,
            Some(TallyData {
                total: 8,
                is_final: false,
                as_of: Some(1764000000000),
            })
        );
        assert_eq!(
            TallyData::parse(br#"{"total":9,"final":true}"#).map(|t| t.is_final),
            Some(true)
        );
        assert_eq!(TallyData::parse(b"not json"), None);
    }
}

//! The chunked transfer coding, incrementally: bytes in, payload out, with
//! no buffering beyond one size line or trailer section.

/// Longest chunk-size line (size, extensions) accepted.
pub const MAX_LINE: usize = 1024;
/// Largest trailer section accepted.
pub const MAX_TRAILERS: usize = 8 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a size line.
    Size,
    /// `n` payload bytes to go.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataCr,
    DataLf,
    /// After the last chunk: trailer lines until an empty one.
    Trailers,
    /// Finished.
    Done,
}

/// Why a chunked body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked body: {0}")]
pub struct ChunkError(pub String);

/// The size on a chunk-size line (its CRLF already taken off): a hex
/// number of at most 15 digits (so no size overflows, and none is near
/// `u64::MAX`), optional whitespace before extensions (RFC 9112 §7.1.1
/// BWS), and no control character but HTAB anywhere on the line.
fn chunk_size(line: &[u8]) -> Result<u64, ChunkError> {
    let shown = || String::from_utf8_lossy(line).into_owned();
    if !line.first().is_some_and(u8::is_ascii_hexdigit) {
        return Err(ChunkError(format!("bad chunk size line {:?}", shown())));
    }
    if line.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(ChunkError(format!("a control character in the chunk size line {:?}", shown())));
    }
    let mut with_crlf = Vec::with_capacity(line.len() + 2);
    with_crlf.extend_from_slice(line);
    with_crlf.extend_from_slice(b"\r\n");
    match httparse::parse_chunk_size(&with_crlf) {
        // httparse takes up to 16 digits: a size near u64::MAX would pass.
        Ok(httparse::Status::Complete((n, size))) if n == with_crlf.len() && size >> 60 == 0 => Ok(size),
        _ => Err(ChunkError(format!("bad chunk size line {:?} (at most 15 hex digits)", shown()))),
    }
}

/// An incremental decoder.
#[derive(Debug, Clone)]
pub struct Decoder {
    state: State,
    line: Vec<u8>,
    trailer_bytes: usize,
    /// Payload bytes decoded so far.
    pub total: u64,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder { state: State::Size, line: Vec::new(), trailer_bytes: 0, total: 0 }
    }
}

impl Decoder {
    /// A decoder at the start of a body.
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// Whether the final chunk and trailers were read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decode from `input`, appending payload bytes to `out`; returns how
    /// many input bytes were used (all of them unless the body ended).
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                State::Done => break,
                State::Size | State::Trailers => {
                    let b = input[i];
                    i += 1;
                    if b != b'\n' {
                        self.line.push(b);
                        let limit = if self.state == State::Size { MAX_LINE } else { MAX_TRAILERS };
                        if self.line.len() > limit {
                            return Err(ChunkError(format!("a line over {limit} bytes")));
                        }
                        continue;
                    }
                    if self.line.pop() != Some(b'\r') {
                        return Err(ChunkError("a line not ended by CRLF".into()));
                    }
                    let line = std::mem::take(&mut self.line);
                    if self.state == State::Trailers {
                        self.trailer_bytes += line.len() + 2;
                        if self.trailer_bytes > MAX_TRAILERS {
                            return Err(ChunkError(format!("trailers over {MAX_TRAILERS} bytes")));
                        }
                        if line.is_empty() {
                            self.state = State::Done;
                        }
                        continue;
                    }
                    let size = chunk_size(&line)?;
                    self.state = if size == 0 { State::Trailers } else { State::Data(size) };
                }
                State::Data(left) => {
                    let n = (input.len() - i).min(usize::try_from(left).unwrap_or(usize::MAX));
                    out.extend_from_slice(&input[i..i + n]);
                    i += n;
                    self.total += n as u64;
                    let left = left - n as u64;
                    self.state = if left == 0 { State::DataCr } else { State::Data(left) };
                }
                State::DataCr | State::DataLf => {
                    let want = if self.state == State::DataCr { b'\r' } else { b'\n' };
                    if input[i] != want {
                        return Err(ChunkError("chunk data not followed by CRLF".into()));
                    }
                    i += 1;
                    self.state = if self.state == State::DataCr { State::DataLf } else { State::Size };
                }
            }
        }
        Ok(i)
    }
}

/// Append `data` as one chunk (nothing for empty data).
pub fn encode_chunk(data: &[u8], out: &mut Vec<u8>) {
    if data.is_empty() {
        return;
    }
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Append the last chunk (no trailers).
pub fn encode_end(out: &mut Vec<u8>) {
    out.extend_from_slice(b"0\r\n\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8]) -> Result<(Vec<u8>, usize, bool), ChunkError> {
        let mut d = Decoder::new();
        let mut out = Vec::new();
        let n = d.decode(input, &mut out)?;
        Ok((out, n, d.is_done()))
    }

    #[test]
    fn decodes_extensions_trailers_and_stops_at_the_end() {
        let body = b"5 ;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        let (out, n, done) = decode_all(body).unwrap();
        assert_eq!((out.as_slice(), done), (&b"hello world"[..], true));
        assert_eq!(&body[n..], b"NEXT", "the next message's bytes are left");
    }

    #[test]
    fn refuses_malformed_bodies() {
        for bad in [
            &b"zz\r\n"[..],
            b"5\r\nhelloX",
            b"5\nhello\r\n",
            b"-1\r\n",
            b"11111111111111111\r\n",
            b"ffffffffffffffff\r\n",
            b"5;a=\rb\r\nhello\r\n",
            b";x\r\n",
            b"\r\n",
        ] {
            assert!(decode_all(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let long = [b"1".repeat(MAX_LINE + 1).as_slice(), b"\r\n"].concat();
        assert!(decode_all(&long).is_err());
    }
}

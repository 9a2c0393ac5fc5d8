//! A body in transit: how much of it is left ([`Framing`]) and moving its
//! bytes from one buffer to the other, re-framed as chunked when asked.

use super::chunked::{self, Decoder};
use super::head::Body;

/// How much of a body is left.
#[derive(Debug)]
pub(super) enum Framing {
    None,
    Length(u64),
    Chunked(Box<Decoder>),
    UntilClose,
}

impl Framing {
    pub fn of(b: Body) -> Framing {
        match b {
            Body::None | Body::Length(0) => Framing::None,
            Body::Length(n) => Framing::Length(n),
            Body::Chunked => Framing::Chunked(Box::default()),
            Body::UntilClose => Framing::UntilClose,
        }
    }

    pub fn done(&self) -> bool {
        match self {
            Framing::None => true,
            Framing::Length(n) => *n == 0,
            Framing::Chunked(d) => d.is_done(),
            Framing::UntilClose => false,
        }
    }
}

/// Move body bytes from `input` to `out` under `framing`, re-encoding as
/// chunked when `chunk_out`; returns payload bytes moved.
pub(super) fn transfer(
    framing: &mut Framing,
    input: &mut Vec<u8>,
    out: &mut Vec<u8>,
    chunk_out: bool,
) -> Result<u64, String> {
    if input.is_empty() {
        return Ok(0);
    }
    let put = |data: &[u8], out: &mut Vec<u8>| {
        if chunk_out {
            chunked::encode_chunk(data, out);
        } else {
            out.extend_from_slice(data);
        }
    };
    let moved = match framing {
        Framing::None => 0,
        Framing::Length(n) => {
            let k = (*n).min(input.len() as u64) as usize;
            put(&input[..k], out);
            input.drain(..k);
            *n -= k as u64;
            k as u64
        }
        Framing::Chunked(d) => {
            let mut payload = Vec::new();
            let used = d.decode(input, &mut payload).map_err(|e| e.to_string())?;
            input.drain(..used);
            put(&payload, out);
            payload.len() as u64
        }
        Framing::UntilClose => {
            let k = input.len();
            put(input, out);
            input.clear();
            k as u64
        }
    };
    Ok(moved)
}

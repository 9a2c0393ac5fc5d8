//! Property tests of the HTTP parsers: untrusted bytes never panic, and
//! chunked bodies decode the same however they are split.

use molt_runtime::http::chunked::{Decoder, encode_chunk, encode_end};
use molt_runtime::http::head::{Limits, parse_request, parse_response};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn heads_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let _ = parse_request(&bytes, &Limits::default());
        let _ = parse_response(&bytes, &Limits::default(), "GET");
    }

    #[test]
    fn head_like_text_never_panics(lines in proptest::collection::vec("[ -~]{0,40}", 0..12)) {
        let text = format!("GET / HTTP/1.1\r\n{}\r\n\r\n", lines.join("\r\n"));
        let _ = parse_request(text.as_bytes(), &Limits::default());
    }

    #[test]
    fn chunked_decodes_the_same_however_split(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..300), 0..8),
        splits in proptest::collection::vec(1usize..64, 1..32),
    ) {
        let mut wire = Vec::new();
        for c in &chunks {
            encode_chunk(c, &mut wire);
        }
        encode_end(&mut wire);
        let want: Vec<u8> = chunks.concat();
        let mut d = Decoder::new();
        let (mut out, mut at, mut k) = (Vec::new(), 0, 0);
        while at < wire.len() {
            let step = splits[k % splits.len()].min(wire.len() - at);
            k += 1;
            let used = d.decode(&wire[at..at + step], &mut out).unwrap();
            prop_assert_eq!(used, step);
            at += step;
        }
        prop_assert!(d.is_done());
        prop_assert_eq!(out, want);
    }

    #[test]
    fn chunked_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let mut d = Decoder::new();
        let mut out = Vec::new();
        if let Ok(n) = d.decode(&bytes, &mut out) {
            prop_assert!(n <= bytes.len());
            prop_assert!(out.len() <= bytes.len());
        }
    }
}

//! Fuzzes the incremental aws-chunked decoder (`ember_storage::s3::chunked`).
//!
//! The first input byte picks a mode:
//!
//! - raw (half the inputs): a decoder (signed, signed with trailer or unsigned-trailer; with or
//!   without a decoded length, a small maximum chunk size, a trailing checksum) is fed the rest
//!   of the input in pieces whose sizes the input chooses. Every step consumes between 1 and
//!   all of its input and returns payload from inside what it consumed; payload never exceeds
//!   what was fed; errors are sticky; a finished body has the announced length, a matching
//!   checksum trailer and at most `MAX_TRAILERS` distinct trailers. The same body decoded in one
//!   piece gives the same result (split invariance).
//! - round trip: input-chosen data, chunk size and trailers (plus an optional checksum
//!   trailer) are encoded with `encode_aws_chunked`, signed or not, and decoded in
//!   input-chosen pieces: the data and trailers come back. Then one byte of the body is
//!   flipped: a signed body that still decodes must give the same data and trailers.
#![no_main]

use ember_storage::s3::checksum::ChecksumAlgorithm;
use ember_storage::s3::chunked::{
    encode_aws_chunked, AwsChunkedDecoder, ChunkSignatureChain, MAX_TRAILERS,
};
use ember_storage::s3::sigv4::{hex_decode_32, SigningKey, SERVICE};
use ember_storage::s3::AuthError;
use libfuzzer_sys::arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;

const SK: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
const DATE: &str = "20130524T000000Z";
const SCOPE: &str = "20130524/us-east-1/s3/aws4_request";
const SEED: &str = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9";

const ALGORITHMS: [ChecksumAlgorithm; 5] = [
    ChecksumAlgorithm::Crc32,
    ChecksumAlgorithm::Crc32c,
    ChecksumAlgorithm::Crc64Nvme,
    ChecksumAlgorithm::Sha1,
    ChecksumAlgorithm::Sha256,
];

fn chain() -> ChunkSignatureChain {
    ChunkSignatureChain::new(
        SigningKey::derive(SK, "20130524", "us-east-1", SERVICE),
        DATE,
        SCOPE,
        hex_decode_32(SEED.as_bytes()).unwrap(),
    )
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Signed,
    SignedTrailer,
    UnsignedTrailer,
}

#[derive(Clone, Copy, Debug)]
struct Config {
    mode: Mode,
    decoded_length: Option<u64>,
    max_chunk: Option<u64>,
    checksum: Option<ChecksumAlgorithm>,
}

impl Config {
    fn decoder(&self) -> AwsChunkedDecoder {
        let mut d = match self.mode {
            Mode::Signed => AwsChunkedDecoder::signed(chain(), false),
            Mode::SignedTrailer => AwsChunkedDecoder::signed(chain(), true),
            Mode::UnsignedTrailer => AwsChunkedDecoder::unsigned_trailer(),
        };
        if let Some(n) = self.decoded_length {
            d = d.with_decoded_length(n);
        }
        if let Some(n) = self.max_chunk {
            d = d.with_max_chunk_size(n);
        }
        if let Some(a) = self.checksum {
            d = d.with_trailer_checksum(a);
        }
        d
    }
}

type Decoded = Result<(Vec<u8>, Vec<(String, String)>), AuthError>;

/// Feeds `body` in pieces of the given sizes (cycled; 0 means "the rest"), checking every step.
fn decode_in_pieces(cfg: &Config, body: &[u8], sizes: &[usize]) -> Decoded {
    let mut dec = cfg.decoder();
    let mut out = Vec::new();
    let mut fed = 0usize;
    let mut pos = 0usize;
    let mut i = 0usize;
    let mut failure = None;
    'pieces: while pos < body.len() {
        let size = sizes.get(i % sizes.len().max(1)).copied().unwrap_or(0);
        i += 1;
        let n = if size == 0 {
            body.len() - pos
        } else {
            size.min(body.len() - pos)
        };
        let mut piece = &body[pos..pos + n];
        pos += n;
        fed += n;
        while !piece.is_empty() {
            match dec.feed(piece) {
                Ok(step) => {
                    assert!(
                        (1..=piece.len()).contains(&step.consumed),
                        "consumed {} of {}",
                        step.consumed,
                        piece.len()
                    );
                    if !step.data.is_empty() {
                        let start = step.data.as_ptr() as usize - piece.as_ptr() as usize;
                        assert!(
                            step.data.as_ptr() >= piece.as_ptr()
                                && start + step.data.len() <= step.consumed,
                            "payload lies outside the consumed input"
                        );
                    }
                    out.extend_from_slice(step.data);
                    piece = &piece[step.consumed..];
                }
                Err(e) => {
                    failure = Some(e);
                    break 'pieces;
                }
            }
        }
        assert!(out.len() <= fed, "more payload than input");
        assert_eq!(dec.decoded_len(), out.len() as u64);
    }
    if let Some(e) = failure {
        // Sticky.
        assert_eq!(dec.feed(b"0\r\n").unwrap_err(), e);
        assert_eq!(dec.finish().unwrap_err(), e);
        assert!(!dec.is_done());
        return Err(e);
    }
    let trailers = dec.finish()?.to_vec();
    assert!(dec.is_done());
    assert_eq!(dec.trailers(), &trailers[..]);
    assert!(dec.feed(b"\r\n").is_err(), "data after the end is refused");
    assert!(trailers.len() <= MAX_TRAILERS);
    for (i, (n, _)) in trailers.iter().enumerate() {
        assert_eq!(*n, n.to_ascii_lowercase());
        assert!(n != "x-amz-trailer-signature");
        assert!(
            trailers[..i].iter().all(|(m, _)| m != n),
            "repeated trailer {n}"
        );
    }
    if let Some(len) = cfg.decoded_length {
        assert_eq!(out.len() as u64, len);
    }
    if let Some(alg) = cfg.checksum {
        let (_, claimed) = trailers
            .iter()
            .find(|(n, _)| n == alg.header_name())
            .expect("the announced checksum trailer is present");
        let mut h = alg.hasher();
        h.update(&out);
        h.verify(claimed)
            .expect("the checksum trailer matches the payload");
    }
    Ok((out, trailers))
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    if selector % 4 < 2 {
        raw(rest);
    } else {
        let _ = round_trip(&mut Unstructured::new(rest));
    }
});

fn raw(data: &[u8]) {
    let [flags, len_hi, len_lo, max, n_sizes, rest @ ..] = data else {
        return;
    };
    let n_sizes = usize::from(n_sizes % 16).min(rest.len());
    let (sizes, body) = rest.split_at(n_sizes);
    let sizes: Vec<usize> = sizes.iter().map(|&b| usize::from(b)).collect();
    let cfg = Config {
        mode: [
            Mode::Signed,
            Mode::SignedTrailer,
            Mode::UnsignedTrailer,
            Mode::UnsignedTrailer,
        ][usize::from(flags & 3)],
        decoded_length: (flags & 4 != 0).then(|| u64::from(u16::from_be_bytes([*len_hi, *len_lo]))),
        max_chunk: (flags & 8 != 0).then_some(u64::from(*max)),
        checksum: ALGORITHMS.get(usize::from(flags >> 4 & 7)).copied(),
    };
    let pieces = decode_in_pieces(&cfg, body, &sizes);
    let whole = decode_in_pieces(&cfg, body, &[0]);
    assert_eq!(pieces, whole, "the result depends on how the body is split");
}

type R<T> = libfuzzer_sys::arbitrary::Result<T>;

const NAME_CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_";

fn round_trip(u: &mut Unstructured<'_>) -> R<()> {
    let mode = *u.choose(&[Mode::Signed, Mode::SignedTrailer, Mode::UnsignedTrailer])?;
    let base_len = u.int_in_range(0..=256usize)?;
    let base = u.bytes(base_len.min(u.len()))?.to_vec();
    let payload = base.repeat(u.int_in_range(1..=8)?);
    let chunk_size = if u.ratio(1, 4)? {
        u.arbitrary::<u32>()? as usize
    } else {
        // At most 16 chunks, to keep the signing cost per input low.
        u.int_in_range(0..=payload.len() + 2)?
            .max(payload.len().div_ceil(16))
    };

    // Trailers: distinct valid names, values without LF (a line ends at the first LF).
    let mut trailers: Vec<(String, String)> = Vec::new();
    let with_trailers = match mode {
        Mode::Signed => false,
        Mode::SignedTrailer => true,
        Mode::UnsignedTrailer => u.arbitrary()?,
    };
    let checksum = if with_trailers && u.arbitrary()? {
        Some(*u.choose(&ALGORITHMS)?)
    } else {
        None
    };
    if with_trailers {
        for _ in 0..u.int_in_range(0..=4)? {
            let mut name = String::new();
            for _ in 0..u.int_in_range(1..=12)? {
                name.push(char::from(*u.choose(NAME_CHARS)?));
            }
            if u.ratio(1, 4)? {
                name = format!("x-amz-meta-{name}");
            }
            let len = u.int_in_range(0..=40)?;
            let value: String = String::from_utf8_lossy(u.bytes(len.min(u.len()))?)
                .chars()
                .filter(|&c| c != '\n')
                .collect();
            let clash = |n: &str| n.eq_ignore_ascii_case(&name);
            if !clash("x-amz-trailer-signature")
                && !checksum.is_some_and(|a: ChecksumAlgorithm| clash(a.header_name()))
                && !trailers.iter().any(|(n, _)| clash(n))
            {
                trailers.push((name, value));
            }
        }
        if let Some(alg) = checksum {
            let mut h = alg.hasher();
            h.update(&payload);
            let name = if u.arbitrary()? {
                alg.header_name().to_ascii_uppercase()
            } else {
                alg.header_name().to_owned()
            };
            let at = u.int_in_range(0..=trailers.len())?;
            trailers.insert(at, (name, h.finalize_base64()));
        }
    }
    let trailer_refs: Vec<(&str, &str)> = trailers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let expected_trailers: Vec<(String, String)> = trailers
        .iter()
        .map(|(n, v)| {
            (
                n.to_ascii_lowercase(),
                v.trim_matches([' ', '\t']).to_owned(),
            )
        })
        .collect();

    let mut client_chain = chain();
    let body = encode_aws_chunked(
        (mode != Mode::UnsignedTrailer).then_some(&mut client_chain),
        &payload,
        chunk_size,
        with_trailers.then_some(&trailer_refs[..]),
    );
    let cfg = Config {
        mode,
        decoded_length: u.arbitrary::<bool>()?.then_some(payload.len() as u64),
        max_chunk: u
            .arbitrary::<bool>()?
            .then_some(chunk_size.clamp(1, payload.len().max(1)) as u64),
        checksum,
    };
    let mut sizes = Vec::new();
    for _ in 0..u.int_in_range(0..=8)? {
        sizes.push(if u.ratio(1, 8)? {
            u.int_in_range(0..=body.len())?
        } else {
            u.int_in_range(1..=64)?
        });
    }
    let (out, got_trailers) = decode_in_pieces(&cfg, &body, &sizes)
        .unwrap_or_else(|e| panic!("own encoding refused: {e:?} ({cfg:?}, chunk {chunk_size})"));
    assert!(out == payload, "payload changed in the round trip");
    assert_eq!(got_trailers, expected_trailers);

    // One flipped byte: a signed body that still decodes is the same body.
    if !body.is_empty() {
        let mut bad = body.clone();
        let at = u.choose_index(bad.len())?;
        bad[at] ^= u.int_in_range(1..=255)?;
        if let Ok((out, got_trailers)) = decode_in_pieces(&cfg, &bad, &sizes) {
            if mode != Mode::UnsignedTrailer {
                assert!(
                    out == payload,
                    "a flipped byte changed signed data (at {at})"
                );
                assert_eq!(got_trailers, expected_trailers, "flipped byte at {at}");
            }
        }
    }
    Ok(())
}

//! aws-chunked tests: AWS's published chunked-upload example (seed 4f232c43..., chunks of
//! 65536 and 1024 bytes of 'a'), the trailer example's chunk chain, the AWS CRT signer's
//! trailing-header vector, and malformed bodies.

use super::*;
use crate::s3::sigv4::tests::{chunked_example_seed, trailer_example_seed};
use crate::s3::sigv4::{SigningKey, SERVICE};

const SK: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
const SCOPE: &str = "20130524/us-east-1/s3/aws4_request";
const DATE: &str = "20130524T000000Z";

fn key() -> SigningKey {
    SigningKey::derive(SK, "20130524", "us-east-1", SERVICE)
}

fn sig(hex: &str) -> [u8; 32] {
    hex_decode_32(hex.as_bytes()).unwrap()
}

fn sha(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

const SEED: &str = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9";
const CHUNK1: &str = "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648";
const CHUNK2: &str = "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497";
const FINAL: &str = "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9";

/// The published example body, assembled from the published signatures.
fn example_body() -> Vec<u8> {
    let mut body = Vec::new();
    for (size, s) in [(65_536usize, CHUNK1), (1024, CHUNK2), (0, FINAL)] {
        body.extend_from_slice(format!("{size:x};chunk-signature={s}\r\n").as_bytes());
        body.extend(std::iter::repeat_n(b'a', size));
        body.extend_from_slice(b"\r\n");
    }
    body
}

fn decode_all(
    dec: &mut AwsChunkedDecoder,
    body: &[u8],
    piece: usize,
) -> Result<Vec<u8>, AuthError> {
    let mut out = Vec::new();
    for p in body.chunks(piece.max(1)) {
        dec.decode(p, &mut out)?;
    }
    dec.finish()?;
    Ok(out)
}

#[test]
fn published_chunk_signatures() {
    let mut chain = ChunkSignatureChain::new(key(), DATE, SCOPE, sig(SEED));
    let a64k = vec![b'a'; 65_536];
    assert_eq!(
        chain.chunk_string_to_sign(&sha(&a64k)),
        "AWS4-HMAC-SHA256-PAYLOAD\n20130524T000000Z\n20130524/us-east-1/s3/aws4_request\n\
         4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9\n\
         e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n\
         bf718b6f653bebc184e1479f1935b8da974d701b893afcf49e701f3e2f9f9c5a"
    );
    assert_eq!(hex_encode(&chain.sign_chunk(&sha(&a64k))), CHUNK1);
    assert_eq!(hex_encode(&chain.sign_chunk(&sha(&[b'a'; 1024]))), CHUNK2);
    assert_eq!(hex_encode(&chain.sign_chunk(&sha(b""))), FINAL);
}

#[test]
fn published_example_body_decodes_at_any_split() {
    let body = example_body();
    // The example's Content-Length.
    assert_eq!(body.len(), 66_824);
    let seed = chunked_example_seed();
    for piece in [1, 2, 7, 85, 86, 87, 4096, 65_536, 65_623, body.len()] {
        let mut dec = seed.chunked_decoder().unwrap().with_decoded_length(66_560);
        let out = decode_all(&mut dec, &body, piece).unwrap();
        assert_eq!(out.len(), 66_560, "piece {piece}");
        assert!(out.iter().all(|&b| b == b'a'));
        assert!(dec.is_done());
        assert_eq!(dec.decoded_len(), 66_560);
    }
    // The encoder produces the same bytes from the seed.
    let mut chain = seed.chunk_signature_chain();
    assert_eq!(
        encode_aws_chunked(Some(&mut chain), &[b'a'; 66_560], 65_536, None),
        body
    );
}

#[test]
fn zero_copy_feed_returns_slices_of_the_input() {
    let body = example_body();
    let mut dec = chunked_example_seed().chunked_decoder().unwrap();
    let step = dec.feed(&body).unwrap();
    let header_len = "10000;chunk-signature=".len() + 64 + 2;
    assert_eq!(step.consumed, header_len + 65_536);
    assert_eq!(step.data.as_ptr(), body[header_len..].as_ptr());
    assert_eq!(step.data.len(), 65_536);
}

#[test]
fn tampered_example_bodies_fail() {
    let seed = chunked_example_seed();
    let body = example_body();
    // Replace one byte by another hex digit (so the framing stays valid).
    let flip = |at: usize| {
        let mut b = body.clone();
        b[at] = if b[at] == b'0' { b'1' } else { b'0' };
        let mut dec = seed.chunked_decoder().unwrap();
        decode_all(&mut dec, &b, 1000).unwrap_err()
    };
    // A data byte of either chunk, a signature digit, the size.
    assert_eq!(flip(90), AuthError::SignatureDoesNotMatch);
    assert_eq!(flip(65_626 + 86 + 10), AuthError::SignatureDoesNotMatch);
    assert_eq!(flip(30), AuthError::SignatureDoesNotMatch);
    assert_eq!(flip(body.len() - 10), AuthError::SignatureDoesNotMatch);
    assert_eq!(flip(0).code(), "SignatureDoesNotMatch"); // "10000" -> "00000": final chunk, wrong sig

    // Chunks swapped: the chain fails.
    let mut dec = seed.chunked_decoder().unwrap();
    let first_len = 88 + 65_536 + 2;
    let mut swapped = body[first_len..first_len + 1112].to_vec();
    swapped.extend_from_slice(&body[..first_len]);
    swapped.extend_from_slice(&body[first_len + 1112..]);
    assert_eq!(
        decode_all(&mut dec, &swapped, 4096).unwrap_err(),
        AuthError::SignatureDoesNotMatch
    );

    // Truncated anywhere: IncompleteBody at the end (or a signature error first).
    for cut in [
        0,
        1,
        50,
        88,
        60_000,
        first_len,
        body.len() - 90,
        body.len() - 3,
    ] {
        let mut dec = seed.chunked_decoder().unwrap();
        let err = decode_all(&mut dec, &body[..cut], 512).unwrap_err();
        assert_eq!(err.code(), "IncompleteBody", "cut {cut}");
    }
    // Decoded length mismatch.
    let mut dec = seed.chunked_decoder().unwrap().with_decoded_length(66_561);
    assert_eq!(
        decode_all(&mut dec, &body, 4096).unwrap_err().code(),
        "IncompleteBody"
    );
    let mut dec = seed.chunked_decoder().unwrap().with_decoded_length(1024);
    assert_eq!(
        decode_all(&mut dec, &body, 4096).unwrap_err().code(),
        "IncompleteBody"
    );
    // Data after the end.
    let mut longer = body.clone();
    longer.extend_from_slice(b"0\r\n");
    let mut dec = seed.chunked_decoder().unwrap();
    assert_eq!(
        decode_all(&mut dec, &longer, 4096).unwrap_err().code(),
        "InvalidRequest"
    );
    // Errors are sticky.
    assert_eq!(dec.feed(b"x").unwrap_err().code(), "InvalidRequest");
    assert_eq!(dec.finish().unwrap_err().code(), "InvalidRequest");
}

#[test]
fn published_trailer_example_chain() {
    // sigv4-streaming-trailers: seed 106e2a8a..., then these chunk signatures.
    let seed = trailer_example_seed();
    assert_eq!(
        hex_encode(&seed.seed_signature()),
        "106e2a8a18243abcf37539882f36619c00e2dfc72633413f02d3b74544bfeb8e"
    );
    let mut chain = seed.chunk_signature_chain();
    assert_eq!(
        hex_encode(&chain.sign_chunk(&sha(&[b'a'; 65_536]))),
        "b474d8862b1487a5145d686f57f013e54db672cee1c953b3010fb58501ef5aa2"
    );
    assert_eq!(
        hex_encode(&chain.sign_chunk(&sha(&[b'a'; 1024]))),
        "1c1344b170168f8e65b41376b44b20fe354e373826ccbbe2c1d40a8cae51e5c7"
    );
    assert_eq!(
        hex_encode(&chain.sign_chunk(&sha(b""))),
        "2ca2aba2005185cf7159c6277faf83795951dd77a3a99e6e65d5c9f85863f992"
    );
    // The trailer's string to sign as the example shows it (hash of the trailer line + "\n").
    assert_eq!(
        chain.trailer_string_to_sign(&canonical_trailers(&[(
            "x-amz-checksum-crc32c",
            "sOO8/Q=="
        )])),
        "AWS4-HMAC-SHA256-TRAILER\n20130524T000000Z\n20130524/us-east-1/s3/aws4_request\n\
         2ca2aba2005185cf7159c6277faf83795951dd77a3a99e6e65d5c9f85863f992\n\
         1e376db7e1a34a8ef1c4bcee131a2d60a1cb62503747488624e10995f448d774"
    );

    // The whole body, with a trailer signature computed by our signer (the example's printed
    // one, 63bddb24..., does not follow from its own inputs), has the example's length.
    let mut signer = seed.chunk_signature_chain();
    let body = encode_aws_chunked(
        Some(&mut signer),
        &[b'a'; 66_560],
        65_536,
        Some(&[("x-amz-checksum-crc32c", "sOO8/Q==")]),
    );
    assert_eq!(body.len(), 66_946);
    for piece in [1, 33, 4096, body.len()] {
        let mut dec = seed
            .chunked_decoder()
            .unwrap()
            .with_decoded_length(66_560)
            .with_trailer_checksum(ChecksumAlgorithm::Crc32c);
        let out = decode_all(&mut dec, &body, piece).unwrap();
        assert_eq!(out.len(), 66_560);
        assert_eq!(
            dec.trailers(),
            &[("x-amz-checksum-crc32c".to_owned(), "sOO8/Q==".to_owned())]
        );
    }
    // A forged checksum (signature left as is) fails the trailer signature.
    let forged = String::from_utf8_lossy(&body)
        .replace("sOO8/Q==", "AAAAAA==")
        .into_bytes();
    let mut dec = seed.chunked_decoder().unwrap();
    assert_eq!(
        decode_all(&mut dec, &forged, 4096).unwrap_err(),
        AuthError::SignatureDoesNotMatch
    );
    // The trailer signature removed.
    let cut = String::from_utf8_lossy(&body);
    let start = cut.find("x-amz-trailer-signature").unwrap();
    let mut stripped = body[..start].to_vec();
    stripped.extend_from_slice(b"\r\n");
    let mut dec = seed.chunked_decoder().unwrap();
    assert_eq!(
        decode_all(&mut dec, &stripped, 4096).unwrap_err().code(),
        "MalformedTrailerError"
    );
    // Without the closing empty line (some clients stop after the signature line).
    let mut dec = seed
        .chunked_decoder()
        .unwrap()
        .with_trailer_checksum(ChecksumAlgorithm::Crc32c);
    decode_all(&mut dec, &body[..body.len() - 2], 4096).unwrap();
}

#[test]
fn crt_trailing_headers_vector() {
    // aws-c-auth / aws-crt-swift chunk-signer test: trailers first/second/third after the
    // published chain's final chunk signature.
    let mut chain = ChunkSignatureChain::new(key(), DATE, SCOPE, sig(FINAL));
    let trailers = [("first", "1st"), ("second", "2nd"), ("third", "3rd")];
    assert_eq!(
        canonical_trailers(&trailers),
        b"first:1st\nsecond:2nd\nthird:3rd\n"
    );
    assert_eq!(
        hex_encode(&chain.sign_trailer(&canonical_trailers(&trailers))),
        "df5735bd9f3295cd9386572292562fefc93ba94e80a0a1ddcbd652c4e0a75e6c"
    );
    // Order and case of the trailers as sent do not matter.
    let mut chain = ChunkSignatureChain::new(key(), DATE, SCOPE, sig(FINAL));
    chain
        .verify_trailer(
            &canonical_trailers(&[("Third", " 3rd"), ("first", "1st"), ("SECOND", "2nd ")]),
            &sig("df5735bd9f3295cd9386572292562fefc93ba94e80a0a1ddcbd652c4e0a75e6c"),
        )
        .unwrap();
}

#[test]
fn unsigned_trailer_bodies() {
    let data: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    let mut crc = ChecksumAlgorithm::Crc32.hasher();
    crc.update(&data);
    let value = crc.finalize_base64();
    let body = encode_aws_chunked(None, &data, 1024, Some(&[("x-amz-checksum-crc32", &value)]));
    assert!(body.starts_with(b"400\r\n"));
    for piece in [1, 5, 1029, body.len()] {
        let mut dec = AwsChunkedDecoder::unsigned_trailer()
            .with_decoded_length(5000)
            .with_trailer_checksum(ChecksumAlgorithm::Crc32);
        assert_eq!(decode_all(&mut dec, &body, piece).unwrap(), data);
    }
    // Wrong checksum, missing checksum, other algorithm.
    let wrong = encode_aws_chunked(
        None,
        &data,
        1024,
        Some(&[("x-amz-checksum-crc32", "AAAAAA==")]),
    );
    let mut dec =
        AwsChunkedDecoder::unsigned_trailer().with_trailer_checksum(ChecksumAlgorithm::Crc32);
    assert_eq!(
        decode_all(&mut dec, &wrong, 4096).unwrap_err(),
        AuthError::BadDigest(
            "The CRC32 you specified did not match the calculated checksum.".to_owned()
        )
    );
    let none = encode_aws_chunked(None, &data, 1024, Some(&[]));
    let mut dec =
        AwsChunkedDecoder::unsigned_trailer().with_trailer_checksum(ChecksumAlgorithm::Crc32);
    assert_eq!(
        decode_all(&mut dec, &none, 4096).unwrap_err().code(),
        "MalformedTrailerError"
    );
    let mut dec =
        AwsChunkedDecoder::unsigned_trailer().with_trailer_checksum(ChecksumAlgorithm::Sha256);
    assert_eq!(
        decode_all(&mut dec, &body, 4096).unwrap_err().code(),
        "MalformedTrailerError"
    );
    // Without checksum checking, the trailers are just returned.
    let mut dec = AwsChunkedDecoder::unsigned_trailer();
    decode_all(&mut dec, &body, 4096).unwrap();
    assert_eq!(dec.trailers()[0].0, "x-amz-checksum-crc32");
    // Chunk extensions are ignored in the unsigned form; a signature line is not accepted.
    let mut dec = AwsChunkedDecoder::unsigned_trailer();
    assert_eq!(
        decode_all(
            &mut dec,
            b"3;foo=bar\r\nabc\r\n0\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n",
            3
        )
        .unwrap(),
        b"abc"
    );
    let mut dec = AwsChunkedDecoder::unsigned_trailer();
    let with_sig = format!("0\r\nx-amz-trailer-signature:{FINAL}\r\n\r\n");
    assert_eq!(
        decode_all(&mut dec, with_sig.as_bytes(), 7)
            .unwrap_err()
            .code(),
        "MalformedTrailerError"
    );
}

#[test]
fn malformed_framing() {
    let fresh = || {
        AwsChunkedDecoder::signed(
            ChunkSignatureChain::new(key(), DATE, SCOPE, sig(SEED)),
            false,
        )
    };
    let long_line = "1".repeat(MAX_LINE + 10);
    let cases: Vec<(String, &str)> = vec![
        (
            format!("ffffffffffffffff;chunk-signature={CHUNK1}\r\n"),
            "InvalidRequest",
        ),
        (
            format!("10000000000000000;chunk-signature={CHUNK1}\r\n"),
            "InvalidRequest",
        ),
        (format!("zz;chunk-signature={CHUNK1}\r\n"), "InvalidRequest"),
        (format!(";chunk-signature={CHUNK1}\r\n"), "InvalidRequest"),
        (format!("-1;chunk-signature={CHUNK1}\r\n"), "InvalidRequest"),
        (
            format!(" 10;chunk-signature={CHUNK1}\r\n"),
            "InvalidRequest",
        ),
        ("10000\r\n".to_owned(), "InvalidRequest"),
        ("10000;chunk-signature=\r\n".to_owned(), "InvalidRequest"),
        ("10000;chunk-signature=abc\r\n".to_owned(), "InvalidRequest"),
        (
            format!("10000;chunk-signature={}\r\n", "g".repeat(64)),
            "InvalidRequest",
        ),
        (
            format!("10000;chunk-signature={CHUNK1}\n"),
            "InvalidRequest",
        ),
        (
            format!("10000;chunk-signature={CHUNK1}\r\r\n"),
            "InvalidRequest",
        ),
        (long_line.clone(), "InvalidRequest"),
        (format!("{long_line}\r\n"), "InvalidRequest"),
        (
            format!("1;chunk-signature={CHUNK1}\r\nab\r\n"),
            "SignatureDoesNotMatch",
        ),
        (
            format!("0;chunk-signature={FINAL}\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n"),
            "SignatureDoesNotMatch",
        ),
        ("\u{0}\u{ff}garbage".to_owned(), "IncompleteBody"),
        ("".to_owned(), "IncompleteBody"),
    ];
    for (body, code) in cases {
        for piece in [1, 3, 64, body.len().max(1)] {
            let mut dec = fresh();
            let err = decode_all(&mut dec, body.as_bytes(), piece).unwrap_err();
            assert_eq!(err.code(), code, "{body:?} piece {piece}: {err:?}");
        }
    }
    // Chunk data not followed by CRLF.
    let mut signer = ChunkSignatureChain::new(key(), DATE, SCOPE, sig(SEED));
    let s = hex_encode(&signer.sign_chunk(&sha(b"abc")));
    let body = format!("3;chunk-signature={s}\r\nabcXY");
    let mut dec = fresh();
    assert_eq!(
        decode_all(&mut dec, body.as_bytes(), 2).unwrap_err().code(),
        "InvalidRequest"
    );
    // A chunk larger than the configured maximum.
    let mut dec = fresh().with_max_chunk_size(1024);
    let body = format!("401;chunk-signature={CHUNK1}\r\n");
    assert_eq!(
        decode_all(&mut dec, body.as_bytes(), 100)
            .unwrap_err()
            .code(),
        "InvalidRequest"
    );
    // Non-trailer mode: a trailer line after the final chunk is refused.
    let mut signer = ChunkSignatureChain::new(key(), DATE, SCOPE, sig(SEED));
    let s = hex_encode(&signer.sign_chunk(&sha(b"")));
    let body = format!("0;chunk-signature={s}\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n");
    let mut dec = fresh();
    assert_eq!(
        decode_all(&mut dec, body.as_bytes(), 5).unwrap_err().code(),
        "InvalidRequest"
    );
    // ... but the empty body with its final chunk is fine, with or without the last CRLF.
    for end in ["\r\n", ""] {
        let body = format!("0;chunk-signature={s}\r\n{end}");
        let mut dec = fresh();
        assert_eq!(decode_all(&mut dec, body.as_bytes(), 5).unwrap(), b"");
    }
}

#[test]
fn malformed_trailers() {
    let body_with = |trailer_lines: &str| format!("0\r\n{trailer_lines}\r\n");
    for (lines, ok) in [
        ("x-amz-checksum-crc32:AAAAAA==\r\n", true),
        ("x-amz-checksum-crc32 : AAAAAA== \r\n", true),
        ("no-colon\r\n", false),
        (":value\r\n", false),
        ("bad name:value\r\n", false),
        ("a:1\r\na:2\r\n", false),
        ("\u{ff}:x\r\n", false),
    ] {
        let mut dec = AwsChunkedDecoder::unsigned_trailer();
        let r = decode_all(&mut dec, body_with(lines).as_bytes(), 4);
        assert_eq!(r.is_ok(), ok, "{lines:?}: {r:?}");
        if let Err(e) = r {
            assert_eq!(e.code(), "MalformedTrailerError");
        }
    }
    let many: String = (0..=MAX_TRAILERS).map(|i| format!("h{i}:v\r\n")).collect();
    let mut dec = AwsChunkedDecoder::unsigned_trailer();
    assert_eq!(
        decode_all(&mut dec, body_with(&many).as_bytes(), 64)
            .unwrap_err()
            .code(),
        "MalformedTrailerError"
    );
    // Invalid UTF-8 in a trailer.
    let mut dec = AwsChunkedDecoder::unsigned_trailer();
    assert_eq!(
        decode_all(&mut dec, b"0\r\nx-amz-meta:\xff\xfe\r\n\r\n", 4)
            .unwrap_err()
            .code(),
        "MalformedTrailerError"
    );
}

#[test]
fn random_bodies_never_panic() {
    let mut state = 0x1234_5678_9abc_def0u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let alphabet: &[u8] = b"0123456789abcdefABCDEF;chunk-signature=\r\n:x-amz-trailer\xff ";
    for round in 0..2000 {
        let len = (next() % 300) as usize;
        let body: Vec<u8> = (0..len)
            .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
            .collect();
        let mut dec = match round % 3 {
            0 => AwsChunkedDecoder::unsigned_trailer()
                .with_trailer_checksum(ChecksumAlgorithm::Crc64Nvme),
            1 => AwsChunkedDecoder::signed(
                ChunkSignatureChain::new(key(), DATE, SCOPE, sig(SEED)),
                true,
            ),
            _ => AwsChunkedDecoder::signed(
                ChunkSignatureChain::new(key(), DATE, SCOPE, sig(SEED)),
                false,
            )
            .with_decoded_length(10),
        };
        let piece = 1 + (next() % 20) as usize;
        let _ = decode_all(&mut dec, &body, piece);
    }
}

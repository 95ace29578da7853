//! aws-chunked request bodies (`Content-Encoding: aws-chunked`), which S3 clients send with
//! `x-amz-content-sha256` set to one of the `STREAMING-*` values:
//!
//! ```text
//! <hex-size>;chunk-signature=<sig>\r\n<data>\r\n     (signed variants)
//! <hex-size>\r\n<data>\r\n                           (STREAMING-UNSIGNED-PAYLOAD-TRAILER)
//! ...
//! 0;chunk-signature=<sig>\r\n                        (final chunk, then)
//! \r\n                                               (no trailers), or
//! x-amz-checksum-crc32:<b64>\r\n                     (trailers, one per line)
//! x-amz-trailer-signature:<sig>\r\n                  (signed-trailer variant only)
//! \r\n
//! ```
//!
//! Each chunk signature signs `AWS4-HMAC-SHA256-PAYLOAD\n<date>\n<scope>\n<previous
//! signature>\n<sha256("")>\n<sha256(chunk)>`, the first chunk chaining from the request's seed
//! signature; the trailer signature signs `AWS4-HMAC-SHA256-TRAILER\n<date>\n<scope>\n<previous
//! signature>\n<sha256(trailers)>` where the trailers are `name:value\n` lines sorted by name.
//!
//! [`AwsChunkedDecoder`] is incremental: bytes go in as they arrive, payload bytes come out as
//! slices of the input (no copy, no buffering beyond one header line of at most
//! [`MAX_LINE`] bytes). A chunk's signature can only be checked once its last byte has
//! arrived, so the consumer writes data somewhere provisional and commits only when
//! [`AwsChunkedDecoder::finish`] returns `Ok`.

use std::borrow::Cow;

use sha2::{Digest, Sha256};

use super::checksum::{ChecksumAlgorithm, Checksummer};
use super::error::AuthError;
use super::sigv4::{hex_decode_32, hex_encode, signatures_equal, SigningKey, EMPTY_SHA256};

/// Longest chunk-header or trailer line accepted, CRLF included.
pub const MAX_LINE: usize = 4096;
/// Default largest chunk (SDKs use 64 KiB to 1 MiB; the data streams through either way).
pub const DEFAULT_MAX_CHUNK_SIZE: u64 = 64 << 20;
/// Most trailing headers accepted.
pub const MAX_TRAILERS: usize = 16;

const EMPTY_HASH: [u8; 32] = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

// ---------------------------------------------------------------------------------------------
// Signature chain
// ---------------------------------------------------------------------------------------------

/// The chain of chunk signatures of one streaming upload.
#[derive(Debug, Clone)]
pub struct ChunkSignatureChain {
    key: SigningKey,
    amz_date: String,
    scope: String,
    previous: [u8; 32],
}

impl ChunkSignatureChain {
    /// `amz_date` is the request's `X-Amz-Date`, `scope` its credential scope and
    /// `seed_signature` the verified request signature.
    pub fn new(key: SigningKey, amz_date: &str, scope: &str, seed_signature: [u8; 32]) -> Self {
        ChunkSignatureChain {
            key,
            amz_date: amz_date.to_owned(),
            scope: scope.to_owned(),
            previous: seed_signature,
        }
    }

    /// The signature the next one chains from.
    pub fn previous_signature(&self) -> [u8; 32] {
        self.previous
    }

    /// The string to sign of a chunk whose data hashes to `chunk_sha256`.
    pub fn chunk_string_to_sign(&self, chunk_sha256: &[u8; 32]) -> String {
        format!(
            "AWS4-HMAC-SHA256-PAYLOAD\n{}\n{}\n{}\n{EMPTY_SHA256}\n{}",
            self.amz_date,
            self.scope,
            hex_encode(&self.previous),
            hex_encode(chunk_sha256)
        )
    }

    /// Signs the next chunk and advances the chain (client side).
    pub fn sign_chunk(&mut self, chunk_sha256: &[u8; 32]) -> [u8; 32] {
        let sig = self
            .key
            .sign(self.chunk_string_to_sign(chunk_sha256).as_bytes());
        self.previous = sig;
        sig
    }

    /// Checks the next chunk's signature; the chain advances only on success.
    pub fn verify_chunk(
        &mut self,
        chunk_sha256: &[u8; 32],
        claimed: &[u8; 32],
    ) -> Result<(), AuthError> {
        let sig = self
            .key
            .sign(self.chunk_string_to_sign(chunk_sha256).as_bytes());
        if !signatures_equal(&sig, claimed) {
            return Err(AuthError::SignatureDoesNotMatch);
        }
        self.previous = sig;
        Ok(())
    }

    /// The string to sign of the trailers (`canonical` as built by [`canonical_trailers`]).
    pub fn trailer_string_to_sign(&self, canonical: &[u8]) -> String {
        format!(
            "AWS4-HMAC-SHA256-TRAILER\n{}\n{}\n{}\n{}",
            self.amz_date,
            self.scope,
            hex_encode(&self.previous),
            hex_encode(&Sha256::digest(canonical))
        )
    }

    /// Signs the trailers (client side).
    pub fn sign_trailer(&mut self, canonical: &[u8]) -> [u8; 32] {
        let sig = self
            .key
            .sign(self.trailer_string_to_sign(canonical).as_bytes());
        self.previous = sig;
        sig
    }

    /// Checks the trailer signature.
    pub fn verify_trailer(
        &mut self,
        canonical: &[u8],
        claimed: &[u8; 32],
    ) -> Result<(), AuthError> {
        let sig = self
            .key
            .sign(self.trailer_string_to_sign(canonical).as_bytes());
        if !signatures_equal(&sig, claimed) {
            return Err(AuthError::SignatureDoesNotMatch);
        }
        self.previous = sig;
        Ok(())
    }
}

/// The signed form of trailing headers: `name:value\n` per trailer, names lowercased, sorted by
/// name (what the AWS CRT signer produces).
pub fn canonical_trailers<N: AsRef<str>, V: AsRef<str>>(trailers: &[(N, V)]) -> Vec<u8> {
    let mut lines: Vec<(String, &str)> = trailers
        .iter()
        .map(|(n, v)| {
            (
                n.as_ref().trim().to_ascii_lowercase(),
                v.as_ref().trim_matches([' ', '\t']),
            )
        })
        .collect();
    lines.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = Vec::new();
    for (n, v) in lines {
        out.extend_from_slice(n.as_bytes());
        out.push(b':');
        out.extend_from_slice(v.as_bytes());
        out.push(b'\n');
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Decoder
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
enum Mode {
    Signed {
        chain: ChunkSignatureChain,
        trailer: bool,
    },
    UnsignedTrailer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a chunk-header line.
    Header,
    /// Inside a chunk's data.
    Data {
        remaining: u64,
    },
    /// Expecting the CRLF after a chunk's data; `seen` bytes of it matched.
    DataEnd {
        seen: u8,
    },
    /// After the final chunk: trailer lines up to an empty line.
    Trailers,
    Done,
}

/// One step of [`AwsChunkedDecoder::feed`]: `consumed` input bytes were used and `data` (a
/// slice of the input) is payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step<'a> {
    pub consumed: usize,
    pub data: &'a [u8],
}

/// Incremental aws-chunked decoder; see the module documentation.
#[derive(Debug)]
pub struct AwsChunkedDecoder {
    mode: Mode,
    state: State,
    failed: Option<AuthError>,
    line: Vec<u8>,
    chunk_hash: Sha256,
    pending_signature: [u8; 32],
    decoded: u64,
    expected_len: Option<u64>,
    max_chunk: u64,
    checksum: Option<Checksummer>,
    trailers: Vec<(String, String)>,
    trailer_signature: Option<[u8; 32]>,
}

fn framing(msg: &'static str) -> AuthError {
    AuthError::InvalidRequest(Cow::Borrowed(msg))
}

impl AwsChunkedDecoder {
    fn with_mode(mode: Mode) -> Self {
        AwsChunkedDecoder {
            mode,
            state: State::Header,
            failed: None,
            line: Vec::new(),
            chunk_hash: Sha256::new(),
            pending_signature: [0; 32],
            decoded: 0,
            expected_len: None,
            max_chunk: DEFAULT_MAX_CHUNK_SIZE,
            checksum: None,
            trailers: Vec::new(),
            trailer_signature: None,
        }
    }

    /// `STREAMING-AWS4-HMAC-SHA256-PAYLOAD` (`trailer` false) or `...-PAYLOAD-TRAILER` (true).
    pub fn signed(chain: ChunkSignatureChain, trailer: bool) -> Self {
        Self::with_mode(Mode::Signed { chain, trailer })
    }

    /// `STREAMING-UNSIGNED-PAYLOAD-TRAILER`: no chunk signatures.
    pub fn unsigned_trailer() -> Self {
        Self::with_mode(Mode::UnsignedTrailer)
    }

    /// The payload must be exactly this long (`x-amz-decoded-content-length`).
    pub fn with_decoded_length(mut self, len: u64) -> Self {
        self.expected_len = Some(len);
        self
    }

    /// Largest chunk accepted (default [`DEFAULT_MAX_CHUNK_SIZE`]).
    pub fn with_max_chunk_size(mut self, max: u64) -> Self {
        self.max_chunk = max;
        self
    }

    /// Requires a trailing `x-amz-checksum-<alg>` (as announced by `x-amz-trailer`) and checks
    /// it against the decoded payload.
    pub fn with_trailer_checksum(mut self, algorithm: ChecksumAlgorithm) -> Self {
        self.checksum = Some(algorithm.hasher());
        self
    }

    /// Payload bytes decoded so far.
    pub fn decoded_len(&self) -> u64 {
        self.decoded
    }

    /// Whether the final chunk and the trailers have been read and verified.
    pub fn is_done(&self) -> bool {
        self.state == State::Done && self.failed.is_none()
    }

    /// The trailers received (the trailer signature excluded), names lowercased.
    pub fn trailers(&self) -> &[(String, String)] {
        &self.trailers
    }

    /// Decodes as much of `input` as yields one piece of payload. Call again with the rest
    /// (`&input[step.consumed..]`) until it is empty; every call with non-empty input consumes
    /// at least one byte or fails. Errors are sticky.
    pub fn feed<'a>(&mut self, input: &'a [u8]) -> Result<Step<'a>, AuthError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        self.feed_inner(input)
            .inspect_err(|e| self.failed = Some(e.clone()))
    }

    /// Decodes all of `input`, appending the payload to `out`.
    pub fn decode(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), AuthError> {
        while !input.is_empty() {
            let step = self.feed(input)?;
            out.extend_from_slice(step.data);
            input = &input[step.consumed..];
        }
        Ok(())
    }

    /// Call at the end of the body: `Ok` with the trailers when the body was complete and every
    /// signature and checksum verified. A body that stops right after the final chunk or its
    /// trailer lines, without the closing empty line, is accepted.
    pub fn finish(&mut self) -> Result<&[(String, String)], AuthError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        match self.state {
            State::Done => {}
            State::Trailers if self.line.is_empty() => {
                if let Err(e) = self.end_trailers() {
                    self.failed = Some(e.clone());
                    return Err(e);
                }
                self.state = State::Done;
            }
            _ => {
                let e = AuthError::incomplete("The aws-chunked body ended before its final chunk.");
                self.failed = Some(e.clone());
                return Err(e);
            }
        }
        Ok(&self.trailers)
    }

    fn feed_inner<'a>(&mut self, input: &'a [u8]) -> Result<Step<'a>, AuthError> {
        let mut pos = 0;
        while pos < input.len() {
            match self.state {
                State::Data { remaining } => {
                    let avail = (input.len() - pos) as u64;
                    let n = remaining.min(avail) as usize;
                    let data = &input[pos..pos + n];
                    self.take_data(data);
                    let remaining = remaining - n as u64;
                    if remaining == 0 {
                        self.end_chunk_data()?;
                        self.state = State::DataEnd { seen: 0 };
                    } else {
                        self.state = State::Data { remaining };
                    }
                    return Ok(Step {
                        consumed: pos + n,
                        data,
                    });
                }
                State::DataEnd { seen } => {
                    if input[pos] != b"\r\n"[usize::from(seen)] {
                        return Err(framing(
                            "Chunk data is not followed by CRLF in the aws-chunked body.",
                        ));
                    }
                    pos += 1;
                    self.state = if seen == 1 {
                        State::Header
                    } else {
                        State::DataEnd { seen: 1 }
                    };
                }
                State::Header | State::Trailers => {
                    let rest = &input[pos..];
                    let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
                        if self.line.len() + rest.len() > MAX_LINE {
                            return Err(framing("A line of the aws-chunked body is too long."));
                        }
                        self.line.extend_from_slice(rest);
                        pos = input.len();
                        continue;
                    };
                    if self.line.len() + nl + 1 > MAX_LINE {
                        return Err(framing("A line of the aws-chunked body is too long."));
                    }
                    self.line.extend_from_slice(&rest[..=nl]);
                    pos += nl + 1;
                    let line = std::mem::take(&mut self.line);
                    let result = match line.strip_suffix(b"\r\n") {
                        None => Err(framing(
                            "A line of the aws-chunked body does not end with CRLF.",
                        )),
                        Some(content) if self.state == State::Header => self.chunk_header(content),
                        Some(content) => self.trailer_line(content),
                    };
                    // Keep the allocation for the next line.
                    self.line = line;
                    self.line.clear();
                    result?;
                }
                State::Done => {
                    return Err(framing(
                        "Unexpected data after the end of the aws-chunked body.",
                    ));
                }
            }
        }
        Ok(Step {
            consumed: pos,
            data: &[],
        })
    }

    fn take_data(&mut self, data: &[u8]) {
        self.decoded += data.len() as u64;
        if matches!(self.mode, Mode::Signed { .. }) {
            self.chunk_hash.update(data);
        }
        if let Some(c) = &mut self.checksum {
            c.update(data);
        }
    }

    fn end_chunk_data(&mut self) -> Result<(), AuthError> {
        if let Mode::Signed { chain, .. } = &mut self.mode {
            let hash: [u8; 32] = std::mem::take(&mut self.chunk_hash).finalize().into();
            chain.verify_chunk(&hash, &self.pending_signature)?;
        }
        Ok(())
    }

    fn chunk_header(&mut self, line: &[u8]) -> Result<(), AuthError> {
        let (size_hex, extension) = match line.iter().position(|&b| b == b';') {
            Some(i) => (&line[..i], Some(&line[i + 1..])),
            None => (line, None),
        };
        if size_hex.is_empty() || size_hex.len() > 16 || !size_hex.iter().all(u8::is_ascii_hexdigit)
        {
            return Err(framing("Invalid chunk size in the aws-chunked body."));
        }
        let size = size_hex.iter().fold(0u64, |acc, &b| {
            acc << 4 | u64::from((b as char).to_digit(16).unwrap_or(0))
        });
        if let Mode::Signed { .. } = self.mode {
            let sig = extension
                .and_then(|e| e.strip_prefix(b"chunk-signature="))
                .and_then(hex_decode_32)
                .ok_or(framing(
                    "Missing or malformed chunk-signature in the aws-chunked body.",
                ))?;
            self.pending_signature = sig;
        }
        if size > self.max_chunk {
            return Err(framing("Chunk size in the aws-chunked body is too large."));
        }
        if let Some(expected) = self.expected_len {
            if self.decoded.saturating_add(size) > expected {
                return Err(AuthError::incomplete(
                    "The aws-chunked body is longer than x-amz-decoded-content-length.",
                ));
            }
        }
        if size > 0 {
            self.chunk_hash = Sha256::new();
            self.state = State::Data { remaining: size };
            return Ok(());
        }
        // The final, empty chunk.
        if let Mode::Signed { chain, .. } = &mut self.mode {
            chain.verify_chunk(&EMPTY_HASH, &self.pending_signature)?;
        }
        if let Some(expected) = self.expected_len {
            if self.decoded != expected {
                return Err(AuthError::incomplete(
                    "You did not provide the number of bytes specified by the x-amz-decoded-content-length HTTP header.",
                ));
            }
        }
        self.state = State::Trailers;
        Ok(())
    }

    fn trailer_line(&mut self, line: &[u8]) -> Result<(), AuthError> {
        if line.is_empty() {
            self.end_trailers()?;
            self.state = State::Done;
            return Ok(());
        }
        let (signed, with_trailer) = match &self.mode {
            Mode::Signed { trailer, .. } => (true, *trailer),
            Mode::UnsignedTrailer => (false, true),
        };
        if !with_trailer {
            return Err(framing(
                "The final chunk of the aws-chunked body is not followed by CRLF.",
            ));
        }
        let text = std::str::from_utf8(line)
            .map_err(|_| AuthError::malformed_trailer("A trailing header is not valid UTF-8."))?;
        let (name, value) = text.split_once(':').ok_or(AuthError::malformed_trailer(
            "A trailing header has no ':'.",
        ))?;
        let name = name.trim_matches([' ', '\t']).to_ascii_lowercase();
        let value = value.trim_matches([' ', '\t']);
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(AuthError::malformed_trailer(
                "A trailing header has an invalid name.",
            ));
        }
        if name == "x-amz-trailer-signature" {
            let sig = hex_decode_32(value.as_bytes())
                .filter(|_| signed && self.trailer_signature.is_none())
                .ok_or(AuthError::malformed_trailer(
                    "Unexpected or malformed x-amz-trailer-signature.",
                ))?;
            self.trailer_signature = Some(sig);
            return Ok(());
        }
        if self.trailers.len() >= MAX_TRAILERS || self.trailers.iter().any(|(n, _)| *n == name) {
            return Err(AuthError::malformed_trailer(
                "Too many or repeated trailing headers.",
            ));
        }
        self.trailers.push((name, value.to_owned()));
        Ok(())
    }

    fn end_trailers(&mut self) -> Result<(), AuthError> {
        if let Mode::Signed {
            chain,
            trailer: true,
        } = &mut self.mode
        {
            let claimed = self.trailer_signature.ok_or(AuthError::malformed_trailer(
                "The signed trailer is missing x-amz-trailer-signature.",
            ))?;
            chain.verify_trailer(&canonical_trailers(&self.trailers), &claimed)?;
        }
        if let Some(hasher) = self.checksum.take() {
            let name = hasher.algorithm().header_name();
            let claimed = self
                .trailers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
                .ok_or_else(|| {
                    AuthError::MalformedTrailer(format!("The trailing {name} is missing.").into())
                })?;
            hasher.verify(claimed)?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Encoder (client side: tests, tools)
// ---------------------------------------------------------------------------------------------

/// Encodes a payload as an aws-chunked body in `chunk_size` pieces (client side). With a chain
/// the chunks (and trailers, if any) are signed; without, the unsigned-trailer form is used.
/// Returns the body; `chain` ends at the last signature.
pub fn encode_aws_chunked(
    mut chain: Option<&mut ChunkSignatureChain>,
    payload: &[u8],
    chunk_size: usize,
    trailers: Option<&[(&str, &str)]>,
) -> Vec<u8> {
    let chunk_size = chunk_size.max(1);
    let mut out = Vec::with_capacity(payload.len() + 128);
    let mut chunks: Vec<&[u8]> = payload.chunks(chunk_size).collect();
    chunks.push(&[]);
    for chunk in chunks {
        out.extend_from_slice(format!("{:x}", chunk.len()).as_bytes());
        if let Some(chain) = chain.as_deref_mut() {
            let sig = chain.sign_chunk(&Sha256::digest(chunk).into());
            out.extend_from_slice(b";chunk-signature=");
            out.extend_from_slice(hex_encode(&sig).as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        if !chunk.is_empty() {
            out.extend_from_slice(chunk);
            out.extend_from_slice(b"\r\n");
        }
    }
    if let Some(trailers) = trailers {
        for (n, v) in trailers {
            out.extend_from_slice(format!("{n}:{v}\r\n").as_bytes());
        }
        if let Some(chain) = chain {
            let sig = chain.sign_trailer(&canonical_trailers(trailers));
            out.extend_from_slice(
                format!("x-amz-trailer-signature:{}\r\n", hex_encode(&sig)).as_bytes(),
            );
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

#[cfg(test)]
mod tests;

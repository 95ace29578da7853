//! The additional checksums S3 clients send, as `x-amz-checksum-<alg>` headers or as trailers
//! of an aws-chunked body: CRC32, CRC32C, CRC64NVME, SHA1 and SHA256, each the base64 of the
//! big-endian digest. Recent AWS SDKs (and boto3) send a CRC32 trailer by default.
//!
//! [`Checksummer`] is incremental, so a body is checked as it streams.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use crc::{Crc, CRC_32_ISCSI, CRC_64_NVME};
use sha1::Sha1;
use sha2::{Digest, Sha256};

use super::error::AuthError;

static CRC32C: Crc<u32> = Crc::<u32>::new(&CRC_32_ISCSI);
static CRC64NVME: Crc<u64> = Crc::<u64>::new(&CRC_64_NVME);

/// One of S3's checksum algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChecksumAlgorithm {
    Crc32,
    Crc32c,
    Crc64Nvme,
    Sha1,
    Sha256,
}

const ALL: [ChecksumAlgorithm; 5] = [
    ChecksumAlgorithm::Crc32,
    ChecksumAlgorithm::Crc32c,
    ChecksumAlgorithm::Crc64Nvme,
    ChecksumAlgorithm::Sha1,
    ChecksumAlgorithm::Sha256,
];

impl ChecksumAlgorithm {
    /// From a header or trailer name such as `x-amz-checksum-crc32` (any case).
    pub fn from_header_name(name: &str) -> Option<Self> {
        ALL.into_iter()
            .find(|a| a.header_name().eq_ignore_ascii_case(name.trim()))
    }

    /// From an algorithm name such as `CRC32` (`x-amz-sdk-checksum-algorithm`,
    /// `x-amz-checksum-algorithm`; any case).
    pub fn from_name(name: &str) -> Option<Self> {
        ALL.into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(name.trim()))
    }

    /// `x-amz-checksum-crc32`, ...
    pub fn header_name(self) -> &'static str {
        match self {
            ChecksumAlgorithm::Crc32 => "x-amz-checksum-crc32",
            ChecksumAlgorithm::Crc32c => "x-amz-checksum-crc32c",
            ChecksumAlgorithm::Crc64Nvme => "x-amz-checksum-crc64nvme",
            ChecksumAlgorithm::Sha1 => "x-amz-checksum-sha1",
            ChecksumAlgorithm::Sha256 => "x-amz-checksum-sha256",
        }
    }

    /// `CRC32`, ...
    pub fn name(self) -> &'static str {
        match self {
            ChecksumAlgorithm::Crc32 => "CRC32",
            ChecksumAlgorithm::Crc32c => "CRC32C",
            ChecksumAlgorithm::Crc64Nvme => "CRC64NVME",
            ChecksumAlgorithm::Sha1 => "SHA1",
            ChecksumAlgorithm::Sha256 => "SHA256",
        }
    }

    /// Length of the raw digest in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            ChecksumAlgorithm::Crc32 | ChecksumAlgorithm::Crc32c => 4,
            ChecksumAlgorithm::Crc64Nvme => 8,
            ChecksumAlgorithm::Sha1 => 20,
            ChecksumAlgorithm::Sha256 => 32,
        }
    }

    /// A fresh incremental hasher.
    pub fn hasher(self) -> Checksummer {
        Checksummer(match self {
            ChecksumAlgorithm::Crc32 => Inner::Crc32(crc32fast::Hasher::new()),
            ChecksumAlgorithm::Crc32c => Inner::Crc32c(CRC32C.digest()),
            ChecksumAlgorithm::Crc64Nvme => Inner::Crc64Nvme(CRC64NVME.digest()),
            ChecksumAlgorithm::Sha1 => Inner::Sha1(Sha1::new()),
            ChecksumAlgorithm::Sha256 => Inner::Sha256(Sha256::new()),
        })
    }
}

#[derive(Clone)]
enum Inner {
    Crc32(crc32fast::Hasher),
    Crc32c(crc::Digest<'static, u32>),
    Crc64Nvme(crc::Digest<'static, u64>),
    Sha1(Sha1),
    Sha256(Sha256),
}

/// Incremental checksum of a body.
#[derive(Clone)]
pub struct Checksummer(Inner);

impl std::fmt::Debug for Checksummer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Checksummer({})", self.algorithm().name())
    }
}

impl Checksummer {
    pub fn algorithm(&self) -> ChecksumAlgorithm {
        match self.0 {
            Inner::Crc32(_) => ChecksumAlgorithm::Crc32,
            Inner::Crc32c(_) => ChecksumAlgorithm::Crc32c,
            Inner::Crc64Nvme(_) => ChecksumAlgorithm::Crc64Nvme,
            Inner::Sha1(_) => ChecksumAlgorithm::Sha1,
            Inner::Sha256(_) => ChecksumAlgorithm::Sha256,
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match &mut self.0 {
            Inner::Crc32(h) => h.update(data),
            Inner::Crc32c(h) => h.update(data),
            Inner::Crc64Nvme(h) => h.update(data),
            Inner::Sha1(h) => h.update(data),
            Inner::Sha256(h) => h.update(data),
        }
    }

    /// The raw big-endian digest.
    pub fn finalize(self) -> Vec<u8> {
        match self.0 {
            Inner::Crc32(h) => h.finalize().to_be_bytes().to_vec(),
            Inner::Crc32c(h) => h.finalize().to_be_bytes().to_vec(),
            Inner::Crc64Nvme(h) => h.finalize().to_be_bytes().to_vec(),
            Inner::Sha1(h) => h.finalize().to_vec(),
            Inner::Sha256(h) => h.finalize().to_vec(),
        }
    }

    /// The digest as S3 prints it (base64).
    pub fn finalize_base64(self) -> String {
        STANDARD.encode(self.finalize())
    }

    /// Compares with a value a client sent (`x-amz-checksum-*`): `InvalidRequest` when the
    /// value is not base64 of the right length, `BadDigest` when it differs.
    pub fn verify(self, claimed_base64: &str) -> Result<(), AuthError> {
        let alg = self.algorithm();
        let claimed = STANDARD
            .decode(claimed_base64.trim())
            .ok()
            .filter(|d| d.len() == alg.digest_len())
            .ok_or_else(|| {
                AuthError::InvalidRequest(
                    format!("Value for {} header is invalid.", alg.header_name()).into(),
                )
            })?;
        if claimed == self.finalize() {
            Ok(())
        } else {
            Err(AuthError::BadDigest(format!(
                "The {} you specified did not match the calculated checksum.",
                alg.name()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(alg: ChecksumAlgorithm, data: &[u8]) -> String {
        let mut h = alg.hasher();
        // Feed in uneven pieces to exercise the incremental path.
        for piece in data.chunks(7) {
            h.update(piece);
        }
        h.finalize_base64()
    }

    #[test]
    fn catalogue_check_values() {
        // The CRC catalogue's check inputs: "123456789".
        let mut h = ChecksumAlgorithm::Crc32.hasher();
        h.update(b"123456789");
        assert_eq!(h.finalize(), 0xcbf4_3926u32.to_be_bytes());
        let mut h = ChecksumAlgorithm::Crc32c.hasher();
        h.update(b"123456789");
        assert_eq!(h.finalize(), 0xe306_9283u32.to_be_bytes());
        let mut h = ChecksumAlgorithm::Crc64Nvme.hasher();
        h.update(b"123456789");
        assert_eq!(h.finalize(), 0xae8b_1486_0a79_9888u64.to_be_bytes());
    }

    #[test]
    fn s3_trailer_example_value() {
        // AWS's trailer example: 66560 bytes of 'a' carry x-amz-checksum-crc32c:sOO8/Q==.
        let data = vec![b'a'; 66_560];
        assert_eq!(b64(ChecksumAlgorithm::Crc32c, &data), "sOO8/Q==");
        assert_eq!(b64(ChecksumAlgorithm::Crc32, &data), "sK4Y7A==");
        assert_eq!(
            b64(ChecksumAlgorithm::Sha256, b""),
            "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
        );
        assert_eq!(
            b64(ChecksumAlgorithm::Sha1, b""),
            "2jmj7l5rSw0yVb/vlWAYkK/YBwk="
        );
    }

    #[test]
    fn names_and_verify() {
        assert_eq!(
            ChecksumAlgorithm::from_header_name("X-Amz-Checksum-CRC32C"),
            Some(ChecksumAlgorithm::Crc32c)
        );
        assert_eq!(
            ChecksumAlgorithm::from_name("crc64nvme"),
            Some(ChecksumAlgorithm::Crc64Nvme)
        );
        assert_eq!(ChecksumAlgorithm::from_name("md5"), None);
        let mut h = ChecksumAlgorithm::Crc32c.hasher();
        h.update(&vec![b'a'; 66_560]);
        assert!(h.clone().verify("sOO8/Q==").is_ok());
        assert_eq!(
            h.clone().verify("AAAAAA==").unwrap_err().code(),
            "BadDigest"
        );
        assert_eq!(
            h.clone().verify("not base64!").unwrap_err().code(),
            "InvalidRequest"
        );
        assert_eq!(
            h.verify("AAAAAAAAAAA=").unwrap_err().code(),
            "InvalidRequest"
        );
    }
}

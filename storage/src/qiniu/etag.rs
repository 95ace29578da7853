//! qetag, the content hash Qiniu returns as `hash`: the data is cut into 4 MiB blocks and each
//! block SHA-1 hashed. One block (or an empty file): `0x16` followed by that block's SHA-1.
//! More blocks: `0x96` followed by the SHA-1 of the concatenated block SHA-1s. The 21 bytes are
//! URL-safe base64 encoded (28 characters).
//!
//! [`QEtag`] is incremental and holds one block's hasher plus one running hash, whatever the
//! file size.

use sha1::{Digest, Sha1};

use super::urlsafe_b64_encode;

/// Qiniu's block size.
pub const BLOCK_SIZE: usize = 4 << 20;

/// Incremental qetag.
#[derive(Debug, Clone, Default)]
pub struct QEtag {
    block: Sha1,
    in_block: usize,
    blocks: u64,
    first: [u8; 20],
    outer: Sha1,
}

impl QEtag {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next bytes of the file.
    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let n = (BLOCK_SIZE - self.in_block).min(data.len());
            self.block.update(&data[..n]);
            self.in_block += n;
            data = &data[n..];
            if self.in_block == BLOCK_SIZE {
                self.end_block();
            }
        }
    }

    fn end_block(&mut self) {
        let digest: [u8; 20] = std::mem::take(&mut self.block).finalize().into();
        self.push_block_sha1(digest);
        self.in_block = 0;
    }

    fn push_block_sha1(&mut self, digest: [u8; 20]) {
        if self.blocks == 0 {
            self.first = digest;
        }
        self.outer.update(digest);
        self.blocks += 1;
    }

    /// The 21 raw bytes.
    pub fn finalize_raw(mut self) -> [u8; 21] {
        if self.in_block > 0 || self.blocks == 0 {
            self.end_block();
        }
        let mut out = [0u8; 21];
        if self.blocks == 1 {
            out[0] = 0x16;
            out[1..].copy_from_slice(&self.first);
        } else {
            out[0] = 0x96;
            out[1..].copy_from_slice(&self.outer.finalize());
        }
        out
    }

    /// The qetag string.
    pub fn finalize(self) -> String {
        urlsafe_b64_encode(&self.finalize_raw())
    }
}

/// qetag of a whole buffer.
pub fn qetag(data: &[u8]) -> String {
    let mut h = QEtag::new();
    h.update(data);
    h.finalize()
}

/// qetag from the SHA-1s of a file's 4 MiB blocks, in order (resumable uploads keep these per
/// block; an empty list is the empty file).
pub fn qetag_from_block_sha1s(blocks: &[[u8; 20]]) -> String {
    match blocks {
        [] => qetag(b""),
        [only] => {
            let mut out = [0u8; 21];
            out[0] = 0x16;
            out[1..].copy_from_slice(only);
            urlsafe_b64_encode(&out)
        }
        many => {
            let mut outer = Sha1::new();
            for b in many {
                outer.update(b);
            }
            let mut out = [0u8; 21];
            out[0] = 0x96;
            out[1..].copy_from_slice(&outer.finalize());
            urlsafe_b64_encode(&out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values computed once from the published algorithm with Python's hashlib
    // (4 MiB blocks, 0x16 / 0x96 prefix, urlsafe_b64encode); not a runtime dependency.
    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| ((i * 31 + 7) % 251) as u8).collect()
    }

    #[test]
    fn known_values() {
        assert_eq!(qetag(b""), "Fto5o-5ea0sNMlW_75VgGJCv2AcJ");
        assert_eq!(qetag(b"hello world"), "FiqubDXJT8-0FdvpX0CLnOke6Ebt");
        assert_eq!(
            qetag(&vec![b'a'; BLOCK_SIZE]),
            "FuwQ-vpd56Izwiom1JHzCIdrQa4_"
        );
        assert_eq!(
            qetag(&vec![b'a'; BLOCK_SIZE + 1]),
            "lieGn00gWdbfwEIHaUpzu4drHeun"
        );
        assert_eq!(
            qetag(&pattern(9 * 1024 * 1024 + 123)),
            "lq6JKsBMQ7xRrxM3f2_Rts741wXu"
        );
    }

    #[test]
    fn incremental_matches_one_shot_at_any_split() {
        let data = pattern(BLOCK_SIZE * 2 + 5);
        let whole = qetag(&data);
        for piece in [
            1usize,
            4095,
            65_536,
            BLOCK_SIZE - 1,
            BLOCK_SIZE,
            BLOCK_SIZE + 3,
        ] {
            let mut h = QEtag::new();
            for c in data.chunks(piece) {
                h.update(c);
            }
            h.update(b"");
            assert_eq!(h.finalize(), whole, "piece {piece}");
        }
    }

    #[test]
    fn from_block_sha1s() {
        let data = pattern(BLOCK_SIZE * 2 + 5);
        let blocks: Vec<[u8; 20]> = data
            .chunks(BLOCK_SIZE)
            .map(|b| Sha1::digest(b).into())
            .collect();
        assert_eq!(qetag_from_block_sha1s(&blocks), qetag(&data));
        assert_eq!(
            qetag_from_block_sha1s(&blocks[..1]),
            qetag(&data[..BLOCK_SIZE])
        );
        assert_eq!(qetag_from_block_sha1s(&[]), "Fto5o-5ea0sNMlW_75VgGJCv2AcJ");
        assert_eq!(qetag(&data).len(), 28);
    }
}

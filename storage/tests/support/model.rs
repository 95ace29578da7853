//! The model tests' shared helpers (storage/tests/fs_backend.rs and s3_gateway.rs drive
//! a backend with the same pseudo-random operations and compare it with the in-memory model):
//! a deterministic generator, bodies, digests, listing queries, keys and prefixes.

#![allow(dead_code)]

use bytes::Bytes;
use futures::StreamExt;
use md5::{Digest, Md5};
use std::time::UNIX_EPOCH;

use ember_storage::backend::{ByteStream, ListQuery, PartInfo};

/// splitmix64: deterministic and good enough to drive the model test.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// `data`, then an error: a client that went away.
pub fn failing_body(data: Vec<u8>) -> ByteStream {
    Box::pin(futures::stream::iter(vec![
        Ok(Bytes::from(data)),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "client went away",
        )),
    ]))
}

pub async fn read_all(mut s: ByteStream) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(chunk) = s.next().await {
        out.extend_from_slice(&chunk.expect("body chunk"));
    }
    out
}

pub fn md5_hex(data: &[u8]) -> String {
    Md5::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn md5_raw(data: &[u8]) -> [u8; 16] {
    Md5::digest(data).into()
}

pub fn parts(v: Vec<PartInfo>) -> Vec<PartInfo> {
    v.into_iter()
        .map(|mut p| {
            p.last_modified = UNIX_EPOCH;
            p
        })
        .collect()
}

pub fn q(prefix: &str, delimiter: Option<&str>, after: Option<&str>, max_keys: usize) -> ListQuery {
    ListQuery {
        prefix: prefix.into(),
        delimiter: delimiter.map(Into::into),
        after: after.map(Into::into),
        max_keys,
        metadata: true,
    }
}

pub const INVALID_KEYS: &[&str] = &["", "..", "a/../b", "./x", "a/.", "nul\0byte", "tab\tkey"];

pub fn random_key(rng: &mut Rng, pool: &[String]) -> String {
    match rng.below(100) {
        0..=79 => rng.pick(pool).clone(),
        80..=94 => {
            let segs = ["a", "b", "/", "文", "é", "x y", ".", "-", "b/"];
            (0..1 + rng.below(6)).map(|_| *rng.pick(&segs)).collect()
        }
        95..=97 => rng.pick(INVALID_KEYS).to_string(),
        _ => "z".repeat(1025),
    }
}

pub fn random_prefix(rng: &mut Rng, pool: &[String]) -> String {
    match rng.below(10) {
        0..=5 => rng
            .pick(&[
                "", "", "a", "a/", "b", "b/", "/", "文", "dir/", "dir/sub/", "zzz", "a/b", "é",
            ])
            .to_string(),
        _ => {
            let k = rng.pick(pool).clone();
            let cut: Vec<usize> = k.char_indices().map(|(i, _)| i).chain([k.len()]).collect();
            k[..*rng.pick(&cut)].to_owned()
        }
    }
}

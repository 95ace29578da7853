//! MD5 (RFC 1321) for the ETag of a PUT, the slowest stage of a large upload: every body byte
//! goes through it on one thread (see [`super::Md5HandOff`]), while SHA-256 and SHA-1 have
//! SHA-NI. The `md-5` crate (used everywhere else) computes the same digests; this one exists
//! only for speed and is checked against it in the tests.
//!
//! MD5 is a chain: each of a block's 64 steps needs the previous step's result `b`, so its
//! speed is the length of that dependency chain per step. The step is
//! `a = b + rotl(a + M[g] + K[i] + f(b, c, d), s)`; `a + M[g] + K[i]` does not depend on `b`
//! and can be computed while the previous step runs, so `f(b, c, d)` should be added last.
//! Left alone, LLVM folds the constant `K[i]` into the last addition instead, one more
//! addition on the chain; [`settled`] stops that. Also, in round 2 the `c & !d` half of
//! `g = (b & d) | (c & !d)` does not depend on `b` and the halves never share a bit, so it is
//! added early as well.
//!
//! Measured on the development VM (AMD EPYC, Zen 3), CPU time for 1 GiB in 1 MiB updates:
//! 1.58 s here, 1.95 s with `md-5` 0.11, 2.08 s with `md-5` 0.10 (1.98 s with its `asm`
//! feature). Without [`settled`], this code takes 1.89 s.

/// `K[i]`: the integer part of `abs(sin(i + 1)) * 2^32` (checked in the tests).
const K: [u32; 64] = [
    0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a, 0xa8304613, 0xfd469501,
    0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be, 0x6b901122, 0xfd987193, 0xa679438e, 0x49b40821,
    0xf61e2562, 0xc040b340, 0x265e5a51, 0xe9b6c7aa, 0xd62f105d, 0x02441453, 0xd8a1e681, 0xe7d3fbc8,
    0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed, 0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a,
    0xfffa3942, 0x8771f681, 0x6d9d6122, 0xfde5380c, 0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70,
    0x289b7ec6, 0xeaa127fa, 0xd4ef3085, 0x04881d05, 0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665,
    0xf4292244, 0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92, 0xffeff47d, 0x85845dd1,
    0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1, 0xf7537e82, 0xbd3af235, 0x2ad7d2bb, 0xeb86d391,
];

const INIT: [u32; 4] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];

/// `x`, computed: the compiler may not move later operations into the expression that made
/// it (an empty `asm!` block that "might" change the register). No instruction is emitted.
#[inline(always)]
fn settled(#[allow(unused_mut)] mut x: u32) -> u32 {
    // SAFETY (both): the template is a comment: no instruction runs, no memory, stack or
    // flags are touched; `x` stays in its register unchanged.
    #[cfg(any(target_arch = "x86_64", target_arch = "x86"))]
    unsafe {
        std::arch::asm!("/* {0:e} */", inout(reg) x, options(pure, nomem, nostack, preserves_flags));
    }
    #[cfg(target_arch = "aarch64")]
    unsafe {
        std::arch::asm!("/* {0:w} */", inout(reg) x, options(pure, nomem, nostack, preserves_flags));
    }
    x
}

/// The end of a step: `early` does not depend on the previous step, `late` does.
#[inline(always)]
fn step(early: u32, late: u32, s: u32, b: u32) -> u32 {
    settled(early)
        .wrapping_add(late)
        .rotate_left(s)
        .wrapping_add(b)
}

/// Runs the block function over `blocks` (64 bytes each).
fn compress(state: &mut [u32; 4], blocks: &[u8]) {
    let [mut a, mut b, mut c, mut d] = *state;
    for block in blocks.chunks_exact(64) {
        let mut m = [0u32; 16];
        for (w, bytes) in m.iter_mut().zip(block.chunks_exact(4)) {
            *w = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        }
        let (a0, b0, c0, d0) = (a, b, c, d);
        // Round 1, f = (b & c) | (!b & d), written with one operation fewer.
        macro_rules! r1 {
            ($a:ident, $b:ident, $c:ident, $d:ident, $g:expr, $i:expr, $s:expr) => {
                $a = step(
                    $a.wrapping_add(m[$g]).wrapping_add(K[$i]),
                    (($c ^ $d) & $b) ^ $d,
                    $s,
                    $b,
                );
            };
        }
        // Round 2, g = (b & d) + (c & !d): only the first half depends on b.
        macro_rules! r2 {
            ($a:ident, $b:ident, $c:ident, $d:ident, $g:expr, $i:expr, $s:expr) => {
                $a = step(
                    $a.wrapping_add(m[$g])
                        .wrapping_add(K[$i])
                        .wrapping_add($c & !$d),
                    $b & $d,
                    $s,
                    $b,
                );
            };
        }
        // Round 3, h = b ^ c ^ d.
        macro_rules! r3 {
            ($a:ident, $b:ident, $c:ident, $d:ident, $g:expr, $i:expr, $s:expr) => {
                $a = step(
                    $a.wrapping_add(m[$g]).wrapping_add(K[$i]),
                    ($c ^ $d) ^ $b,
                    $s,
                    $b,
                );
            };
        }
        // Round 4, i = c ^ (b | !d).
        macro_rules! r4 {
            ($a:ident, $b:ident, $c:ident, $d:ident, $g:expr, $i:expr, $s:expr) => {
                $a = step(
                    $a.wrapping_add(m[$g]).wrapping_add(K[$i]),
                    ($b | !$d) ^ $c,
                    $s,
                    $b,
                );
            };
        }
        r1!(a, b, c, d, 0, 0, 7);
        r1!(d, a, b, c, 1, 1, 12);
        r1!(c, d, a, b, 2, 2, 17);
        r1!(b, c, d, a, 3, 3, 22);
        r1!(a, b, c, d, 4, 4, 7);
        r1!(d, a, b, c, 5, 5, 12);
        r1!(c, d, a, b, 6, 6, 17);
        r1!(b, c, d, a, 7, 7, 22);
        r1!(a, b, c, d, 8, 8, 7);
        r1!(d, a, b, c, 9, 9, 12);
        r1!(c, d, a, b, 10, 10, 17);
        r1!(b, c, d, a, 11, 11, 22);
        r1!(a, b, c, d, 12, 12, 7);
        r1!(d, a, b, c, 13, 13, 12);
        r1!(c, d, a, b, 14, 14, 17);
        r1!(b, c, d, a, 15, 15, 22);

        r2!(a, b, c, d, 1, 16, 5);
        r2!(d, a, b, c, 6, 17, 9);
        r2!(c, d, a, b, 11, 18, 14);
        r2!(b, c, d, a, 0, 19, 20);
        r2!(a, b, c, d, 5, 20, 5);
        r2!(d, a, b, c, 10, 21, 9);
        r2!(c, d, a, b, 15, 22, 14);
        r2!(b, c, d, a, 4, 23, 20);
        r2!(a, b, c, d, 9, 24, 5);
        r2!(d, a, b, c, 14, 25, 9);
        r2!(c, d, a, b, 3, 26, 14);
        r2!(b, c, d, a, 8, 27, 20);
        r2!(a, b, c, d, 13, 28, 5);
        r2!(d, a, b, c, 2, 29, 9);
        r2!(c, d, a, b, 7, 30, 14);
        r2!(b, c, d, a, 12, 31, 20);

        r3!(a, b, c, d, 5, 32, 4);
        r3!(d, a, b, c, 8, 33, 11);
        r3!(c, d, a, b, 11, 34, 16);
        r3!(b, c, d, a, 14, 35, 23);
        r3!(a, b, c, d, 1, 36, 4);
        r3!(d, a, b, c, 4, 37, 11);
        r3!(c, d, a, b, 7, 38, 16);
        r3!(b, c, d, a, 10, 39, 23);
        r3!(a, b, c, d, 13, 40, 4);
        r3!(d, a, b, c, 0, 41, 11);
        r3!(c, d, a, b, 3, 42, 16);
        r3!(b, c, d, a, 6, 43, 23);
        r3!(a, b, c, d, 9, 44, 4);
        r3!(d, a, b, c, 12, 45, 11);
        r3!(c, d, a, b, 15, 46, 16);
        r3!(b, c, d, a, 2, 47, 23);

        r4!(a, b, c, d, 0, 48, 6);
        r4!(d, a, b, c, 7, 49, 10);
        r4!(c, d, a, b, 14, 50, 15);
        r4!(b, c, d, a, 5, 51, 21);
        r4!(a, b, c, d, 12, 52, 6);
        r4!(d, a, b, c, 3, 53, 10);
        r4!(c, d, a, b, 10, 54, 15);
        r4!(b, c, d, a, 1, 55, 21);
        r4!(a, b, c, d, 8, 56, 6);
        r4!(d, a, b, c, 15, 57, 10);
        r4!(c, d, a, b, 6, 58, 15);
        r4!(b, c, d, a, 13, 59, 21);
        r4!(a, b, c, d, 4, 60, 6);
        r4!(d, a, b, c, 11, 61, 10);
        r4!(c, d, a, b, 2, 62, 15);
        r4!(b, c, d, a, 9, 63, 21);

        a = a.wrapping_add(a0);
        b = b.wrapping_add(b0);
        c = c.wrapping_add(c0);
        d = d.wrapping_add(d0);
    }
    *state = [a, b, c, d];
}

/// Incremental MD5.
#[derive(Clone)]
pub(super) struct Md5 {
    state: [u32; 4],
    /// Bytes hashed so far.
    len: u64,
    /// The start of an incomplete block.
    buf: [u8; 64],
    buffered: usize,
}

impl Md5 {
    pub(super) fn new() -> Md5 {
        Md5 {
            state: INIT,
            len: 0,
            buf: [0; 64],
            buffered: 0,
        }
    }

    pub(super) fn update(&mut self, mut data: &[u8]) {
        self.len = self.len.wrapping_add(data.len() as u64);
        if self.buffered > 0 {
            let n = (64 - self.buffered).min(data.len());
            self.buf[self.buffered..self.buffered + n].copy_from_slice(&data[..n]);
            self.buffered += n;
            data = &data[n..];
            if self.buffered < 64 {
                return;
            }
            compress(&mut self.state, &self.buf);
            self.buffered = 0;
        }
        let whole = data.len() - data.len() % 64;
        compress(&mut self.state, &data[..whole]);
        let rest = &data[whole..];
        self.buf[..rest.len()].copy_from_slice(rest);
        self.buffered = rest.len();
    }

    pub(super) fn finalize(mut self) -> [u8; 16] {
        let bits = self.len.wrapping_mul(8);
        // 0x80, zeros up to 56 mod 64, the length in bits (little-endian).
        let pad = if self.buffered < 56 {
            56 - self.buffered
        } else {
            120 - self.buffered
        };
        let mut tail = [0u8; 72];
        tail[0] = 0x80;
        tail[pad..pad + 8].copy_from_slice(&bits.to_le_bytes());
        self.update(&tail[..pad + 8]);
        debug_assert_eq!(self.buffered, 0);
        let mut out = [0u8; 16];
        for (o, w) in out.chunks_exact_mut(4).zip(self.state) {
            o.copy_from_slice(&w.to_le_bytes());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::md5::Digest;

    fn hex(d: [u8; 16]) -> String {
        d.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn digest(data: &[u8]) -> [u8; 16] {
        let mut h = Md5::new();
        h.update(data);
        h.finalize()
    }

    #[test]
    fn rfc_1321_test_suite() {
        for (input, want) in [
            ("", "d41d8cd98f00b204e9800998ecf8427e"),
            ("a", "0cc175b9c0f1b6a831c399e269772661"),
            ("abc", "900150983cd24fb0d6963f7d28e17f72"),
            ("message digest", "f96b697d7cb7938d525a2f31aaf161d0"),
            (
                "abcdefghijklmnopqrstuvwxyz",
                "c3fcd3d76192e4007dfb496cca67e13b",
            ),
            (
                "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
                "d174ab98d277d9f5a5611c2c9f419d9f",
            ),
            (
                "12345678901234567890123456789012345678901234567890123456789012345678901234567890",
                "57edf4a22be3c955ac49da2e2107b67a",
            ),
        ] {
            assert_eq!(hex(digest(input.as_bytes())), want, "{input:?}");
        }
    }

    #[test]
    fn k_is_the_sine_table() {
        for (i, k) in K.iter().enumerate() {
            let want = ((i as f64 + 1.0).sin().abs() * 4_294_967_296.0) as u32;
            assert_eq!(*k, want, "K[{i}]");
        }
    }

    #[test]
    fn same_as_the_md5_crate_for_every_length_and_split() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 151 + 17) as u8).collect();
        // Every length around the padding boundaries and block multiples, every split point
        // of a few of them (updates of any size must give the same digest).
        for len in (0..=200).chain([255, 256, 257, 511, 512, 513, 1000]) {
            let want: [u8; 16] = ::md5::Md5::digest(&data[..len]).into();
            assert_eq!(digest(&data[..len]), want, "len {len}");
            if matches!(len, 63 | 64 | 65 | 127 | 128 | 200 | 1000) {
                for split in 0..=len {
                    let mut h = Md5::new();
                    h.update(&data[..split]);
                    h.update(&data[split..len]);
                    assert_eq!(h.finalize(), want, "len {len} split {split}");
                }
            }
        }
        // Many small updates, then a large one.
        let big: Vec<u8> = (0..(3u32 << 20) + 5)
            .map(|i| (i * 31 + i / 997) as u8)
            .collect();
        let mut h = Md5::new();
        let mut rest = &big[..];
        for n in [1, 2, 3, 5, 7, 11, 13, 61, 64, 65, 4096] {
            h.update(&rest[..n]);
            rest = &rest[n..];
        }
        h.update(rest);
        assert_eq!(h.finalize(), <[u8; 16]>::from(::md5::Md5::digest(&big)));
    }
}

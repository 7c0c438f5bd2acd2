//! 512-bit vectors of stream words: the one abstraction the SC kernel is written
//! against, with an AVX-512 implementation and a portable one that gives the same bits.
//!
//! The kernel is generic over [`Lanes`]; every method is `#[inline(always)]` so that,
//! instantiated inside a `#[target_feature(enable = "avx512f,avx512vpopcntdq")]` entry
//! point, the intrinsics inline into one tight loop.

/// Bitwise logic on a word or a vector of words, so that a counter's merge of partial
/// counts is written once for both.
pub(crate) trait Bits: Copy {
    /// `self & other`.
    fn and(self, other: Self) -> Self;
    /// `self | other`.
    fn or(self, other: Self) -> Self;
    /// `self ^ other`.
    fn xor(self, other: Self) -> Self;
}

impl Bits for u64 {
    #[inline(always)]
    fn and(self, other: Self) -> Self {
        self & other
    }
    #[inline(always)]
    fn or(self, other: Self) -> Self {
        self | other
    }
    #[inline(always)]
    fn xor(self, other: Self) -> Self {
        self ^ other
    }
}

/// `WORDS` u64 words (4 or 8) processed together.
pub(crate) trait Lanes: Bits {
    /// Words per vector.
    const WORDS: usize;
    /// All zero bits.
    fn zero() -> Self;
    /// Loads `WORDS` words from `ptr`.
    ///
    /// # Safety
    /// `ptr..ptr+WORDS` must be readable.
    unsafe fn load(ptr: *const u64) -> Self;
    /// Word `l ^ distance` in each word `l`, for a power of two `distance <
    /// WORDS`: folds a vector's words onto each other in registers.
    fn swap_words(self, distance: usize) -> Self;
    /// `self | (a & b)`: one `vpternlogq`.
    fn or_and(self, a: Self, b: Self) -> Self;
    /// Adds the per-lane popcount of `a & b` to each u64 lane of `self`.
    fn add_popcount_and(self, a: Self, b: Self) -> Self;
    /// The words, zero-extended to eight.
    fn to_array(self) -> [u64; 8];
}

/// Portable lanes: plain arrays, any CPU.
#[derive(Clone, Copy)]
pub(crate) struct Portable([u64; 8]);

impl Bits for Portable {
    #[inline(always)]
    fn and(self, o: Self) -> Self {
        Portable(std::array::from_fn(|i| self.0[i] & o.0[i]))
    }
    #[inline(always)]
    fn or(self, o: Self) -> Self {
        Portable(std::array::from_fn(|i| self.0[i] | o.0[i]))
    }
    #[inline(always)]
    fn xor(self, o: Self) -> Self {
        Portable(std::array::from_fn(|i| self.0[i] ^ o.0[i]))
    }
}

impl Lanes for Portable {
    const WORDS: usize = 8;
    #[inline(always)]
    fn zero() -> Self {
        Portable([0; 8])
    }
    #[inline(always)]
    unsafe fn load(ptr: *const u64) -> Self {
        Portable(std::ptr::read_unaligned(ptr as *const [u64; 8]))
    }
    #[inline(always)]
    fn swap_words(self, distance: usize) -> Self {
        Portable(std::array::from_fn(|i| self.0[i ^ distance]))
    }
    #[inline(always)]
    fn or_and(self, a: Self, b: Self) -> Self {
        Portable(std::array::from_fn(|i| self.0[i] | (a.0[i] & b.0[i])))
    }
    #[inline(always)]
    fn add_popcount_and(self, a: Self, b: Self) -> Self {
        Portable(std::array::from_fn(|i| {
            self.0[i] + u64::from((a.0[i] & b.0[i]).count_ones())
        }))
    }
    #[inline(always)]
    fn to_array(self) -> [u64; 8] {
        self.0
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use avx2::Avx2;
#[cfg(target_arch = "x86_64")]
pub(crate) use avx512::Avx512;

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Bits, Lanes};
    use std::arch::x86_64::*;

    /// AVX2 lanes: 256 bits (four words), so that a tile's accumulators fit the 16
    /// ymm registers. Only constructed inside functions compiled with `avx2` and called
    /// after run-time detection.
    #[derive(Clone, Copy)]
    pub(crate) struct Avx2(__m256i);

    impl Bits for Avx2 {
        #[inline(always)]
        fn and(self, o: Self) -> Self {
            Avx2(unsafe { _mm256_and_si256(self.0, o.0) })
        }
        #[inline(always)]
        fn or(self, o: Self) -> Self {
            Avx2(unsafe { _mm256_or_si256(self.0, o.0) })
        }
        #[inline(always)]
        fn xor(self, o: Self) -> Self {
            Avx2(unsafe { _mm256_xor_si256(self.0, o.0) })
        }
    }

    impl Lanes for Avx2 {
        const WORDS: usize = 4;

        #[inline(always)]
        fn zero() -> Self {
            Avx2(unsafe { _mm256_setzero_si256() })
        }
        #[inline(always)]
        unsafe fn load(ptr: *const u64) -> Self {
            Avx2(_mm256_loadu_si256(ptr as *const __m256i))
        }
        #[inline(always)]
        fn swap_words(self, distance: usize) -> Self {
            // Words [2, 3, 0, 1] across the 128-bit halves, or the 32-bit halves of
            // [1, 0, 3, 2] inside them (two bits per element, lowest first).
            Avx2(unsafe {
                match distance {
                    2 => _mm256_permute4x64_epi64::<0b01_00_11_10>(self.0),
                    _ => _mm256_shuffle_epi32::<0b01_00_11_10>(self.0),
                }
            })
        }
        #[inline(always)]
        fn or_and(self, a: Self, b: Self) -> Self {
            self.or(a.and(b))
        }
        /// Per-u64-lane popcount: nibble lookup with `vpshufb`, byte sums per lane with
        /// `vpsadbw`.
        #[inline(always)]
        fn add_popcount_and(self, a: Self, b: Self) -> Self {
            unsafe {
                let x = _mm256_and_si256(a.0, b.0);
                let table = _mm256_setr_epi8(
                    0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1, 2,
                    2, 3, 2, 3, 3, 4,
                );
                let nibble = _mm256_set1_epi8(0x0F);
                let lo = _mm256_shuffle_epi8(table, _mm256_and_si256(x, nibble));
                let hi =
                    _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16::<4>(x), nibble));
                let sums = _mm256_sad_epu8(_mm256_add_epi8(lo, hi), _mm256_setzero_si256());
                Avx2(_mm256_add_epi64(self.0, sums))
            }
        }
        #[inline(always)]
        fn to_array(self) -> [u64; 8] {
            let mut out = [0u64; 8];
            unsafe { _mm256_storeu_si256(out.as_mut_ptr() as *mut __m256i, self.0) };
            out
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Bits, Lanes};
    use std::arch::x86_64::*;

    /// AVX-512 lanes. Only constructed inside functions compiled with
    /// `avx512f,avx512vpopcntdq` and called after run-time detection.
    #[derive(Clone, Copy)]
    pub(crate) struct Avx512(__m512i);

    impl Bits for Avx512 {
        #[inline(always)]
        fn and(self, o: Self) -> Self {
            Avx512(unsafe { _mm512_and_si512(self.0, o.0) })
        }
        #[inline(always)]
        fn or(self, o: Self) -> Self {
            Avx512(unsafe { _mm512_or_si512(self.0, o.0) })
        }
        #[inline(always)]
        fn xor(self, o: Self) -> Self {
            Avx512(unsafe { _mm512_xor_si512(self.0, o.0) })
        }
    }

    impl Lanes for Avx512 {
        const WORDS: usize = 8;
        #[inline(always)]
        fn zero() -> Self {
            Avx512(unsafe { _mm512_setzero_si512() })
        }
        #[inline(always)]
        unsafe fn load(ptr: *const u64) -> Self {
            Avx512(_mm512_loadu_si512(ptr as *const __m512i))
        }
        #[inline(always)]
        fn swap_words(self, distance: usize) -> Self {
            // `vpermq` by an index vector: word l takes word `l ^ distance`.
            let index: [u64; 8] = std::array::from_fn(|l| (l ^ distance) as u64);
            Avx512(unsafe {
                _mm512_permutexvar_epi64(
                    _mm512_loadu_si512(index.as_ptr() as *const __m512i),
                    self.0,
                )
            })
        }
        #[inline(always)]
        fn or_and(self, a: Self, b: Self) -> Self {
            // Truth table of A | (B & C) with A = self: 0xF8.
            Avx512(unsafe { _mm512_ternarylogic_epi64::<0xF8>(self.0, a.0, b.0) })
        }
        #[inline(always)]
        fn add_popcount_and(self, a: Self, b: Self) -> Self {
            Avx512(unsafe {
                _mm512_add_epi64(self.0, _mm512_popcnt_epi64(_mm512_and_si512(a.0, b.0)))
            })
        }
        #[inline(always)]
        fn to_array(self) -> [u64; 8] {
            let mut out = [0u64; 8];
            unsafe { _mm512_storeu_si512(out.as_mut_ptr() as *mut __m512i, self.0) };
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every instruction set's `swap_words` moves word `l ^ distance` into word `l`.
    #[test]
    fn swap_words_pairs_the_words_at_each_distance() {
        let words: [u64; 8] = std::array::from_fn(|l| 0x0101_0101_0101_0101 * (l as u64 + 1));
        fn check<V: Lanes>(words: &[u64; 8]) {
            let v = unsafe { V::load(words.as_ptr()) };
            let mut distance = V::WORDS / 2;
            while distance > 0 {
                let got = v.swap_words(distance).to_array();
                for l in 0..V::WORDS {
                    assert_eq!(got[l], words[l ^ distance], "word {l}, distance {distance}");
                }
                distance /= 2;
            }
        }
        check::<Portable>(&words);
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                check::<Avx2>(&words);
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                check::<Avx512>(&words);
            }
        }
    }
}

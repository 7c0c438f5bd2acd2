//! Output buffers for parallel kernels.

use std::mem::MaybeUninit;

use rayon::prelude::*;

/// `len` zeros (`T::default()`), written in parallel by rayon's pool: the buffer for an
/// op's output of activation size. `vec![0; len]` zeroes a block reused from the heap
/// on the calling thread, which is the thread that runs candle's graph, while the pool
/// waits: on an SC `inject` step of TinyConv, the split conv's two output buffers alone
/// were 4 ms of such serial zeroing per step.
pub fn zeros<T: Default + Copy + Send>(len: usize) -> Vec<T> {
    let chunk = chunk_len::<T>();
    let mut values = Vec::with_capacity(len);
    values.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk)
        .for_each(|chunk| chunk.fill(MaybeUninit::new(T::default())));
    // SAFETY: the first `len` elements of the capacity were initialised just above.
    unsafe { values.set_len(len) };
    values
}

/// A copy of `src`, written in parallel by rayon's pool, for the reason [`zeros`] gives.
pub fn copied<T: Copy + Send + Sync>(src: &[T]) -> Vec<T> {
    let chunk = chunk_len::<T>();
    let mut values = Vec::with_capacity(src.len());
    values.spare_capacity_mut()[..src.len()]
        .par_chunks_mut(chunk)
        .zip(src.par_chunks(chunk))
        .for_each(|(dst, src)| {
            for (d, &s) in dst.iter_mut().zip(src) {
                d.write(s);
            }
        });
    // SAFETY: the first `src.len()` elements of the capacity were initialised above.
    unsafe { values.set_len(src.len()) };
    values
}

/// Elements per parallel task: 256 KiB of them.
fn chunk_len<T>() -> usize {
    ((1 << 18) / size_of::<T>().max(1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeros_are_zeros_of_the_length_asked() {
        for len in [0, 1, (1 << 16) - 1, 1 << 16, 3 * (1 << 16) + 17] {
            let v = zeros::<f32>(len);
            assert_eq!(v.len(), len);
            assert!(v.iter().all(|&x| x.to_bits() == 0), "len {len}");
            let w = zeros::<u64>(len);
            assert_eq!(w.len(), len);
            assert!(w.iter().all(|&x| x == 0), "len {len}");
        }
    }

    #[test]
    fn copies_equal_their_source() {
        for len in [0, 1, (1 << 16) - 1, 1 << 16, 3 * (1 << 16) + 17] {
            let src: Vec<u32> = (0..len as u32)
                .map(|i| i.wrapping_mul(2_654_435_761))
                .collect();
            assert_eq!(copied(&src), src, "len {len}");
        }
    }
}

//! The fast, bit-exact SC conv kernel.
//!
//! Layout: the streams of one image are a padded, channels-last tensor
//! `[Hp][Wp][pixel words]` and the weights `[O][polarity][KH][KW][pixel words]`, so
//! that one row of a receptive field (KW pixels) is one contiguous run of words lining
//! up with the matching weight run: an implicit im2col, without copies. The kernel
//! walks these runs 8 words (512 cycles·channels) at a time and keeps, for a tile of
//! MR output pixels × NR output channels × 2 polarities, one [`Counter`] each in
//! registers, so every activation vector is used 2·NR times and every weight vector MR
//! times. Weight runs are padded with zero words to a multiple of 8 words, so that the
//! kernel only ever loads whole vectors: the activation words it reads past a run's
//! end meet zero weights. Images are processed in chunks; rayon splits each chunk's
//! output pixels.

use std::ops::Range;

use rayon::prelude::*;

use super::counter::{Binary, Counter, CycleFold, Popcount, Thermometer};
#[cfg(target_arch = "x86_64")]
use super::lanes::{Avx2, Avx512};
use super::lanes::{Lanes, Portable};
use super::quantize::{split_unipolar, stream_int};
use super::spec::{Accumulation, ScSpec};
use super::stream::{Operand, StreamGenerator, StreamLayout, WEIGHT_SEED_BASE};
use candle_core::CpuStorage;

use crate::buffer::zeros;
use crate::geometry::ConvGeometry;

/// The instruction set the SC kernel runs on. All give the same bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Isa {
    /// `std::arch` AVX-512 (F + VPOPCNTDQ, and POPCNT for the final counts), chosen at
    /// run time where the CPU has it.
    Avx512,
    /// `std::arch` AVX2 (and POPCNT), for x86-64 CPUs without AVX-512.
    Avx2,
    /// Plain Rust on `[u64; 8]` lanes; any CPU.
    Portable,
}

impl Isa {
    /// The fastest instruction set this CPU supports.
    pub fn best() -> Self {
        [Isa::Avx512, Isa::Avx2]
            .into_iter()
            .find(Isa::is_supported)
            .unwrap_or(Isa::Portable)
    }

    /// Whether this CPU can run `self`.
    pub fn is_supported(&self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512vpopcntdq")
                    && std::arch::is_x86_feature_detected!("popcnt")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("popcnt")
            }
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx512 | Isa::Avx2 => false,
        }
    }
}

/// A 4-D f32 tensor in memory with arbitrary strides (in elements).
#[derive(Debug, Clone, Copy)]
pub struct Strided4<'a> {
    /// The storage.
    pub data: &'a [f32],
    /// Offset of element (0, 0, 0, 0).
    pub offset: usize,
    /// Strides of the four dimensions.
    pub strides: [usize; 4],
}

impl Strided4<'_> {
    #[inline]
    fn get(&self, i: [usize; 4]) -> f32 {
        let s = self.strides;
        self.data[self.offset + i[0] * s[0] + i[1] * s[1] + i[2] * s[2] + i[3] * s[3]]
    }
}

/// Most words of activation streams held at once (2 MiB); larger batches are
/// processed in chunks of images. The streams of a TinyConv batch of 512 took 50 MiB
/// at once, the peak of a checkpointed training step's forward, and still 3 MiB of a
/// batch of 32 at 8 MiB chunks; an image chunk reuses the weight streams, so smaller
/// chunks cost little.
const ACT_CHUNK_WORDS: usize = 1 << 18;

/// Most words of weight streams held at once (8 MiB); a layer with more runs in groups
/// of output channels, each group's streams made when it runs (VGG-16's 512-channel
/// layers held 36 MiB at once, the peak of a checkpointed training step's forward).
const WEIGHT_CHUNK_WORDS: usize = 1 << 20;
/// Output pixels per parallel task.
const PIXELS_PER_TASK: usize = 32;
/// Output channels are padded to a multiple of this (the largest NR).
const MAX_NR: usize = 2;
/// Weight runs are padded to a multiple of this many words (the widest vector).
const RUN_ALIGN: usize = 8;

/// Words in one padded receptive-field row of the weights.
fn padded_run(geo: &ConvGeometry, layout: StreamLayout) -> usize {
    (geo.kernel.1 * layout.pixel_words(geo.in_channels)).next_multiple_of(RUN_ALIGN)
}

/// Everything one tile of the kernel reads.
struct KernelArgs<'a> {
    act: &'a [u64],
    weights: &'a [u64],
    fold: CycleFold,
    out_channels: usize,
    kernel_rows: usize,
    /// Words in one receptive-field row of the weights: KW · pixel words, padded with
    /// zeros to a multiple of [`RUN_ALIGN`].
    run: usize,
    /// Words between two padded input rows.
    row_stride: usize,
    /// Words of one padded image.
    image_words: usize,
    pixel_words: usize,
    out_size: (usize, usize),
    stride: (usize, usize),
}

impl KernelArgs<'_> {
    /// Word offset of the receptive field of output pixel `g` (counted over the chunk).
    #[inline(always)]
    fn field_start(&self, g: usize) -> usize {
        let per_image = self.out_size.0 * self.out_size.1;
        let (img, p) = (g / per_image, g % per_image);
        let (oy, ox) = (p / self.out_size.1, p % self.out_size.1);
        img * self.image_words
            + oy * self.stride.0 * self.row_stride
            + ox * self.stride.1 * self.pixel_words
    }
}

/// Computes the P and N counts of output pixels `g0..g0 + pixels` (counted over the
/// chunk) into `out`.
///
/// # Safety
/// `k.act` and `k.weights` must hold the streams `k` describes, `out` the chunk's
/// counts, and no other task may write these pixels; the CPU must support the
/// instruction set `V` stands for (see [`Isa::is_supported`]).
#[inline(always)]
unsafe fn pixel_block<V: Lanes, C: Counter<V>, const MR: usize, const NR: usize>(
    k: &KernelArgs,
    g0: usize,
    pixels: usize,
    out: &ChunkOut,
) {
    let o_count = k.out_channels;
    let w_pol = k.kernel_rows * k.run;
    let w_chan = 2 * w_pol;
    // Receptive fields and output indices once per task: the divisions in
    // `field_start` and `ChunkOut::index` are not free.
    let mut fields = [k.act.as_ptr(); PIXELS_PER_TASK];
    let mut outputs = [0; PIXELS_PER_TASK];
    for m in 0..pixels {
        fields[m] = k.act.as_ptr().add(k.field_start(g0 + m));
        outputs[m] = out.index(g0 + m, 0);
    }
    for o0 in (0..o_count).step_by(NR) {
        let wbase = k.weights.as_ptr().add(o0 * w_chan);
        for m0 in (0..pixels).step_by(MR) {
            // Pointers walk the tile's rows: activations by the padded input's row
            // stride, weights by one run (the weight rows are contiguous).
            let mut arow: [*const u64; MR] =
                std::array::from_fn(|m| fields[(m0 + m).min(pixels - 1)]);
            let mut wrow: [*const u64; NR] = std::array::from_fn(|r| wbase.add(r * w_chan));
            let mut acc = [[[C::new(); 2]; NR]; MR];
            for _ in 0..k.kernel_rows {
                let mut v = 0;
                while v < k.run {
                    accumulate::<V, C, MR, NR>(&mut acc, &arow, &wrow, w_pol, v);
                    v += V::WORDS;
                }
                arow = arow.map(|a| a.add(k.row_stride));
                wrow = wrow.map(|w| w.add(k.run));
            }
            for (m, acc_m) in acc.iter().enumerate().take(pixels - m0) {
                let at = outputs[m0 + m] + o0 * out.per_image;
                for (r, acc_r) in acc_m.iter().enumerate().take(o_count - o0) {
                    out.write(
                        at + r * out.per_image,
                        [acc_r[0].count(&k.fold), acc_r[1].count(&k.fold)],
                    );
                }
            }
        }
    }
}

/// Adds the vector at word offset `v` of each run to the tile's accumulators; channel
/// `r`'s negative weights start `w_pol` words after its positive ones, `wrow[r]`.
#[inline(always)]
unsafe fn accumulate<V: Lanes, C: Counter<V>, const MR: usize, const NR: usize>(
    acc: &mut [[[C; 2]; NR]; MR],
    arow: &[*const u64; MR],
    wrow: &[*const u64; NR],
    w_pol: usize,
    v: usize,
) {
    // Plain loops, not closures: closures would not inherit the entry point's target
    // features, and the intrinsics inside them might not inline.
    let mut a = [V::zero(); MR];
    for m in 0..MR {
        a[m] = V::load(arow[m].add(v));
    }
    for (r, w) in wrow.iter().enumerate() {
        let wp = V::load(w.add(v));
        let wn = V::load(w.add(w_pol + v));
        for m in 0..MR {
            acc[m][r][0].add(a[m], wp);
            acc[m][r][1].add(a[m], wn);
        }
    }
}

/// What the kernel makes of each output's P and N counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Output {
    /// `(P − N) / B`, f32.
    Value,
    /// P, then N, u32: two planes of the output's shape.
    Counts,
}

/// Where the kernel's tasks write a chunk of images' outputs, NCHW: each task its own
/// output pixels, all channels.
struct ChunkOut {
    sink: Sink,
    /// Output pixels per image and channel.
    per_image: usize,
    out_channels: usize,
}

#[derive(Clone, Copy)]
enum Sink {
    /// [`Output::Value`], with 1/B: B is a power of two, so multiplying by it gives
    /// the bits of dividing by B, without a division per output.
    Value { out: *mut f32, inv_len: f32 },
    /// [`Output::Counts`]: P and N at the same index of their planes.
    Counts { pos: *mut u32, neg: *mut u32 },
}

// SAFETY: the pointers are only written through `write`, by tasks that own disjoint
// output pixels (see `conv`).
unsafe impl Sync for ChunkOut {}

impl ChunkOut {
    /// Element index of output pixel `g` (counted over the chunk), channel `o`.
    #[inline(always)]
    fn index(&self, g: usize, o: usize) -> usize {
        let (image, p) = (g / self.per_image, g % self.per_image);
        (image * self.out_channels + o) * self.per_image + p
    }

    /// Writes the output of counts `[P, N]` at element `i`.
    ///
    /// # Safety
    /// `i` must be inside the chunk and belong to the calling task's pixels.
    #[inline(always)]
    unsafe fn write(&self, i: usize, [p, n]: [u32; 2]) {
        match self.sink {
            Sink::Value { out, inv_len } => *out.add(i) = (p as f32 - n as f32) * inv_len,
            Sink::Counts { pos, neg } => {
                *pos.add(i) = p;
                *neg.add(i) = n;
            }
        }
    }
}

type BlockFn = unsafe fn(&KernelArgs, usize, usize, &ChunkOut);

unsafe fn block_portable<C: Counter<Portable>, const MR: usize, const NR: usize>(
    k: &KernelArgs,
    g0: usize,
    pixels: usize,
    out: &ChunkOut,
) {
    pixel_block::<Portable, C, MR, NR>(k, g0, pixels, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vpopcntdq,popcnt")]
unsafe fn block_avx512<C: Counter<Avx512>, const MR: usize, const NR: usize>(
    k: &KernelArgs,
    g0: usize,
    pixels: usize,
    out: &ChunkOut,
) {
    pixel_block::<Avx512, C, MR, NR>(k, g0, pixels, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,popcnt")]
unsafe fn block_avx2<C: Counter<Avx2>, const MR: usize, const NR: usize>(
    k: &KernelArgs,
    g0: usize,
    pixels: usize,
    out: &ChunkOut,
) {
    pixel_block::<Avx2, C, MR, NR>(k, g0, pixels, out)
}

/// The counter and tile shape (MR pixels × NR channels) of each accumulation, given
/// as `[exact, or1, or2, or3-4, or5-7, or8-16]` shapes so that each instruction set's
/// accumulators fill about half of its vector registers (32 zmm, 16 ymm).
macro_rules! select_block {
    ($entry:ident, $V:ty, $acc:expr, [$e:tt, $o1:tt, $o2:tt, $o34:tt, $o57:tt, $o8:tt]) => {
        match $acc {
            Accumulation::Exact => select_block!(@ $entry, Popcount<$V>, $e),
            Accumulation::Or(1) => select_block!(@ $entry, Thermometer<$V, 1>, $o1),
            Accumulation::Or(2) => select_block!(@ $entry, Thermometer<$V, 2>, $o2),
            Accumulation::Or(3) => select_block!(@ $entry, Thermometer<$V, 3>, $o34),
            Accumulation::Or(4) => select_block!(@ $entry, Thermometer<$V, 4>, $o34),
            Accumulation::Or(5..=7) => select_block!(@ $entry, Binary<$V, 4>, $o57),
            Accumulation::Or(8..=15) => select_block!(@ $entry, Binary<$V, 5>, $o8),
            Accumulation::Or(_) => select_block!(@ $entry, Binary<$V, 6>, $o8),
        }
    };
    (@ $entry:ident, $C:ty, ($mr:literal, $nr:literal)) => {
        $entry::<$C, $mr, $nr> as BlockFn
    };
}

fn select(isa: Isa, acc: Accumulation) -> BlockFn {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if isa.is_supported() => {
            select_block!(
                block_avx512,
                Avx512,
                acc,
                [(4, 2), (4, 2), (2, 2), (1, 2), (1, 2), (1, 1)]
            )
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if isa.is_supported() => {
            select_block!(
                block_avx2,
                Avx2,
                acc,
                [(2, 2), (2, 2), (2, 1), (1, 1), (1, 1), (1, 1)]
            )
        }
        _ => select_block!(
            block_portable,
            Portable,
            acc,
            [(2, 1), (2, 1), (1, 1), (1, 1), (1, 1), (1, 1)]
        ),
    }
}

/// Words of one output channel's weight streams.
fn channel_words(geo: &ConvGeometry, layout: StreamLayout) -> usize {
    2 * geo.kernel.0 * padded_run(geo, layout)
}

/// The weight streams of output `channels`, `[channels padded to MAX_NR][polarity]
/// [KH][padded run of KW·pixel words]`.
fn weight_streams(
    geo: &ConvGeometry,
    weight: Strided4,
    channels: Range<usize>,
    gen: &StreamGenerator,
    layout: StreamLayout,
) -> Vec<u64> {
    let (kh, kw) = geo.kernel;
    let c_count = geo.in_channels;
    let pw = layout.pixel_words(c_count);
    let run = padded_run(geo, layout);
    let channel_words = channel_words(geo, layout);
    let o_pad = channels.len().div_ceil(MAX_NR) * MAX_NR;
    let mut words = vec![0u64; o_pad * channel_words];
    words
        .par_chunks_mut(channel_words)
        .zip(channels)
        .for_each(|(dst, o)| {
            let mut buf = [0u64; 4];
            for c in 0..c_count {
                for i in 0..kh {
                    for j in 0..kw {
                        let (vp, vn) = split_unipolar(weight.get([o, c, i, j]), layout.len);
                        let seed_index = WEIGHT_SEED_BASE + (c * kh + i) * kw + j;
                        let element = (((o * c_count + c) * kh + i) * kw + j) as u64;
                        for (pol, v) in [vp, vn].into_iter().enumerate() {
                            if v == 0 {
                                continue;
                            }
                            let stream =
                                gen.stream(v, seed_index, Operand::Weight, element, &mut buf);
                            let at = (pol * kh + i) * run + j * pw;
                            layout.place(&mut dst[at..at + pw], c, stream);
                        }
                    }
                }
            }
        });
    words
}

/// Activation streams of image `n` into `dst` (`[Hp][Wp][pixel words]`, zeroed).
fn image_streams(
    geo: &ConvGeometry,
    input: Strided4,
    n: usize,
    gen: &StreamGenerator,
    layout: StreamLayout,
    dst: &mut [u64],
) {
    let (h, w) = geo.in_size;
    let (ph, pw_) = geo.params.padding;
    let (hp, wp) = geo.padded_size();
    let c_count = geo.in_channels;
    let pw = layout.pixel_words(c_count);
    let mut buf = [0u64; 4];
    for c in 0..c_count {
        for y in 0..h {
            for x in 0..w {
                let v = stream_int(input.get([n, c, y, x]), layout.len);
                if v == 0 {
                    continue;
                }
                let (yp, xp) = (y + ph, x + pw_);
                let seed_index = (c * hp + yp) * wp + xp;
                let element = (((n * c_count + c) * h + y) * w + x) as u64;
                let stream = gen.stream(v, seed_index, Operand::Input, element, &mut buf);
                let at = (yp * wp + xp) * pw;
                layout.place(&mut dst[at..at + pw], c, stream);
            }
        }
    }
}

/// Runs the SC conv `geo` of `spec` on `isa` (falling back to portable code if the CPU
/// lacks it) and returns its `output`, NCHW.
pub(crate) fn conv(
    geo: &ConvGeometry,
    input: Strided4,
    weight: Strided4,
    spec: &ScSpec,
    isa: Isa,
    output: Output,
) -> CpuStorage {
    conv_in_chunks(geo, input, weight, spec, isa, output, Chunks::DEFAULT)
}

/// How much of the streams [`conv_in_chunks`] holds at once.
#[derive(Debug, Clone, Copy)]
struct Chunks {
    /// Most words of activation streams (at least one image's).
    act_words: usize,
    /// Most words of weight streams (at least [`MAX_NR`] channels').
    weight_words: usize,
}

impl Chunks {
    /// [`ACT_CHUNK_WORDS`] and [`WEIGHT_CHUNK_WORDS`].
    const DEFAULT: Self = Self {
        act_words: ACT_CHUNK_WORDS,
        weight_words: WEIGHT_CHUNK_WORDS,
    };
}

/// [`conv`] in chunks of images and groups of output channels, as `chunks` says.
fn conv_in_chunks(
    geo: &ConvGeometry,
    input: Strided4,
    weight: Strided4,
    spec: &ScSpec,
    isa: Isa,
    output: Output,
    chunks: Chunks,
) -> CpuStorage {
    let layout = StreamLayout {
        len: spec.stream_len(),
    };
    let gen = StreamGenerator::new(spec);
    let pw = layout.pixel_words(geo.in_channels);
    let (hp, wp) = geo.padded_size();
    let group = (chunks.weight_words / channel_words(geo, layout)).max(MAX_NR) / MAX_NR * MAX_NR;
    let groups: Vec<Range<usize>> = (0..geo.out_channels)
        .step_by(group)
        .map(|o0| o0..(o0 + group).min(geo.out_channels))
        .collect();
    // One group's streams are made once; several groups' as each group runs.
    let whole = match groups.as_slice() {
        [all] => Some(weight_streams(geo, weight, all.clone(), &gen, layout)),
        _ => None,
    };
    let fold = CycleFold {
        len: layout.len,
        words: layout.words(),
        n: match spec.acc {
            Accumulation::Or(n) => u32::from(n),
            Accumulation::Exact => u32::MAX,
        },
    };
    let block = select(isa, spec.acc);
    let o_count = geo.out_channels;
    let per_image = geo.out_pixels();
    let image_words = hp * wp * pw;
    let len = geo.batch * per_image * o_count;
    // Every element is written once by the kernel's tasks below, so the buffers start
    // uninitialised: zeroing them would be a serial pass as long as the output.
    let mut values: Vec<f32> = Vec::new();
    let mut counts: Vec<u32> = Vec::new();
    let base = match output {
        Output::Value => {
            values.reserve_exact(len);
            Sink::Value {
                out: values.spare_capacity_mut().as_mut_ptr().cast(),
                inv_len: 1.0 / layout.len as f32,
            }
        }
        Output::Counts => {
            counts.reserve_exact(2 * len);
            let pos: *mut u32 = counts.spare_capacity_mut().as_mut_ptr().cast();
            Sink::Counts {
                pos,
                // SAFETY: the capacity holds both planes.
                neg: unsafe { pos.add(len) },
            }
        }
    };
    let chunk_images = (chunks.act_words / image_words).clamp(1, geo.batch);
    // RUN_ALIGN slack words: the last run's padding may read past the last image.
    let mut act = zeros::<u64>(chunk_images * image_words + RUN_ALIGN);
    for first in (0..geo.batch).step_by(chunk_images) {
        let images = chunk_images.min(geo.batch - first);
        act.par_chunks_mut(image_words)
            .take(images)
            .enumerate()
            .for_each(|(i, dst)| {
                if first > 0 {
                    // The previous chunk's streams.
                    dst.fill(0);
                }
                image_streams(geo, input, first + i, &gen, layout, dst)
            });
        for channels in &groups {
            let made;
            let weights = match &whole {
                Some(w) => w,
                None => {
                    made = weight_streams(geo, weight, channels.clone(), &gen, layout);
                    &made
                }
            };
            let k = KernelArgs {
                act: &act,
                weights,
                fold,
                out_channels: channels.len(),
                kernel_rows: geo.kernel.0,
                run: padded_run(geo, layout),
                row_stride: wp * pw,
                image_words,
                pixel_words: pw,
                out_size: geo.out_size(),
                stride: geo.params.stride,
            };
            let offset = (first * o_count + channels.start) * per_image;
            // SAFETY: `offset` is inside the output, which the capacity reserved above
            // holds.
            let sink = unsafe {
                match base {
                    Sink::Value { out, inv_len } => Sink::Value {
                        out: out.add(offset),
                        inv_len,
                    },
                    Sink::Counts { pos, neg } => Sink::Counts {
                        pos: pos.add(offset),
                        neg: neg.add(offset),
                    },
                }
            };
            let out = ChunkOut {
                sink,
                per_image,
                out_channels: o_count,
            };
            let pixels = images * per_image;
            (0..pixels.div_ceil(PIXELS_PER_TASK))
                .into_par_iter()
                // SAFETY: `k` describes `act` and `weights` as built above, `out` this
                // chunk's outputs from the group's first channel on (the kernel writes
                // `k.out_channels` of them per pixel), and each task writes only its
                // own pixels; `select` only returns an instruction set's entry when the
                // CPU supports it.
                .for_each(|t| unsafe {
                    let g0 = t * PIXELS_PER_TASK;
                    block(&k, g0, PIXELS_PER_TASK.min(pixels - g0), &out)
                });
        }
    }
    // SAFETY: the chunks' tasks wrote every output pixel of every channel (of both
    // planes for counts).
    unsafe {
        match output {
            Output::Value => {
                values.set_len(len);
                CpuStorage::F32(values)
            }
            Output::Counts => {
                counts.set_len(2 * len);
                CpuStorage::U32(counts)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::Conv2dParams;

    /// Images processed in several chunks, which reuse one activation buffer, and
    /// output channels in groups (two, two and one) give the outputs of one pass: B <
    /// 64 (streams ORed into shared words) and B = 64, inputs with zeros (whose streams
    /// are skipped, not written).
    #[test]
    fn chunks_give_the_outputs_of_one_pass() {
        let (batch, c, o, h) = (5, 3, 5, 6);
        let input: Vec<f32> = (0..batch * c * h * h)
            .map(|i| {
                if i % 3 == 0 {
                    0.0
                } else {
                    ((i * 37) % 101) as f32 / 101.0
                }
            })
            .collect();
        let weight: Vec<f32> = (0..o * c * 9)
            .map(|i| ((i * 53) % 97) as f32 / 97.0 - 0.5)
            .collect();
        let geo = ConvGeometry::conv2d(&[batch, c, h, h], &[o, c, 3, 3], Conv2dParams::new(1, 1))
            .expect("geometry");
        let strided = |data, dims: [usize; 4]| Strided4 {
            data,
            offset: 0,
            strides: [dims[1] * dims[2] * dims[3], dims[2] * dims[3], dims[3], 1],
        };
        let (x, w) = (
            strided(&input, [batch, c, h, h]),
            strided(&weight, [o, c, 3, 3]),
        );
        for spec in ["sc:len=16,acc=or2", "sc:len=64,acc=or1"] {
            let crate::HwSpec::Sc(spec) = spec.parse().expect("spec") else {
                unreachable!()
            };
            let image_words = {
                let (hp, wp) = geo.padded_size();
                hp * wp
                    * StreamLayout {
                        len: spec.stream_len(),
                    }
                    .pixel_words(c)
            };
            for output in [Output::Value, Output::Counts] {
                let run =
                    |chunks| match conv_in_chunks(&geo, x, w, &spec, Isa::best(), output, chunks) {
                        CpuStorage::F32(v) => v.iter().map(|v| v.to_bits()).collect(),
                        CpuStorage::U32(v) => v,
                        _ => unreachable!("the kernel returns f32 or u32"),
                    };
                let whole = run(Chunks::DEFAULT);
                for (act_words, weight_words) in [
                    (2 * image_words, WEIGHT_CHUNK_WORDS),
                    (ACT_CHUNK_WORDS, 1),
                    (2 * image_words, 1),
                ] {
                    let chunks = Chunks {
                        act_words,
                        weight_words,
                    };
                    assert_eq!(run(chunks), whole, "{spec} {output:?} {chunks:?}");
                }
            }
        }
    }
}

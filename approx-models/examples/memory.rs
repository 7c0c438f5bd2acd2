//! Peak memory of one `accurate` training step (forward, backward, Adam) on
//! `sc:len=64,acc=or2`, TinyConv and VGG-16 on CIFAR-shaped inputs, without and with
//! gradient checkpointing (one block per hardware layer), and the largest batch whose
//! step fits in 4 GiB each way.
//!
//! ```sh
//! cargo run --release -p approx-models --example memory [-- MODEL...]
//! ```
//!
//! MODEL: `tinyconv`, `vgg16` (both by default).
//!
//! Two measures of a step's memory: the resident set (what the OS counts, and what a
//! memory budget must hold: the bytes in use plus the allocator's free blocks among
//! them, which glibc keeps from step to step), and the bytes in use at once (heap
//! allocations counted by this program's allocator, plus the checkpoint links' mapped
//! codes): what the step needs, whatever the heap's fragmentation.
//!
//! Every measurement runs in a fresh child process (this program with `--child MODEL
//! SEGMENTS BATCH`), so peaks do not mix. Each child runs two steps and measures the
//! second, as every step of a training run after the first sees it: the step's memory
//! is its peak resident set minus the resident set before it (model, Adam's moments,
//! data), with the first step's freed heap given back to the OS in between. (A first
//! step also pages in Adam's moments, zero pages until then: two more copies of the
//! parameters, whatever the checkpointing.) The 4 GiB budget holds the process's peak
//! over both steps. The largest batch is predicted from the step memory at two
//! batches and then found by runs around the prediction (see `largest_fitting_batch`):
//! only a batch that was run and fitted is reported.

use std::alloc::{GlobalAlloc, Layout, System};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use approx_models::{build, HwMap, ModelKind};
use approx_train::alloc::release_free_memory;
use approx_train::io::{peak_rss_bytes, reset_peak_rss, rss_bytes};
use approx_train::mode::ExecMode;
use approx_train::model::Model;
use approx_train::optim::{Optimizer, OptimizerKind};
use approx_train::packed::mapped_bytes;
use approx_train::trainer::{on_large_stack, train_step};
use candle_core::{Device, Tensor};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

const BUDGET: f64 = 4.0 * (1u64 << 30) as f64;
const MIB: f64 = (1u64 << 20) as f64;
/// Where the search for the largest batch stops: a VGG-16 step at 2,048 images takes
/// minutes here, a TinyConv step at 16,384 about one.
fn max_batch(kind: ModelKind) -> usize {
    match kind {
        ModelKind::TinyConv => 16_384,
        _ => 2048,
    }
}

/// The system allocator, counting the bytes it has handed out and not taken back.
struct Counting;

/// Heap bytes in use now.
static IN_USE: AtomicUsize = AtomicUsize::new(0);
/// The most bytes in use at once (heap and mapped codes) since the last reset.
static PEAK_IN_USE: AtomicUsize = AtomicUsize::new(0);

#[global_allocator]
static ALLOCATOR: Counting = Counting;

impl Counting {
    fn allocated(size: usize) {
        let heap = IN_USE.fetch_add(size, Ordering::Relaxed) + size;
        PEAK_IN_USE.fetch_max(heap + mapped_bytes(), Ordering::Relaxed);
    }

    fn freed(size: usize) {
        IN_USE.fetch_sub(size, Ordering::Relaxed);
    }

    /// Bytes in use now, and the peak restarts from them.
    fn reset_peak() -> usize {
        let now = IN_USE.load(Ordering::Relaxed) + mapped_bytes();
        PEAK_IN_USE.store(now, Ordering::Relaxed);
        now
    }
}

// SAFETY: every call is passed on to the system allocator unchanged; the counters
// only observe sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            Self::allocated(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            Self::allocated(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) };
        Self::freed(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            Self::freed(layout.size());
            Self::allocated(new_size);
        }
        p
    }
}

/// Runs two steps and prints, in bytes, the resident set before the second, the peak
/// during it, the process's peak over both, and the bytes in use before the second
/// step and at its peak.
fn child(kind: ModelKind, segments: usize, batch: usize) -> Result<()> {
    on_large_stack(|| -> Result<()> {
        let hw = HwMap::All("sc:len=64,acc=or2".parse()?);
        let mut net = build(kind, (3, 32, 32), 10, &hw, ExecMode::Accurate, 0)?;
        net.set_checkpoint_segments(segments);
        let x = Tensor::rand(0f32, 1f32, (batch, 3, 32, 32), &Device::Cpu)?;
        let y = Tensor::from_vec(
            (0..batch as u32).map(|i| i % 10).collect::<Vec<_>>(),
            batch,
            &Device::Cpu,
        )?;
        let params = net.named_vars().into_iter().map(|(_, v)| v).collect();
        let mut opt = Optimizer::new(OptimizerKind::Adam { weight_decay: 0.0 }, params, 1e-3)?;
        // The first step makes the training state resident (Adam's moments are
        // untouched zero pages until then); the measured step is the second, on top
        // of that state, with the first step's freed blocks given back to the OS.
        train_step(&net, &mut opt, &x, &y, 0.1, None)?;
        let first_peak = peak_rss_bytes().ok_or("no VmHWM")?;
        release_free_memory();
        let before = rss_bytes().ok_or("no /proc/self/status")?;
        // Reset the peak where the OS can; otherwise the first step's peak stays in
        // the maximum.
        reset_peak_rss();
        let in_use = Counting::reset_peak();
        train_step(&net, &mut opt, &x, &y, 0.1, None)?;
        let peak = peak_rss_bytes().ok_or("no VmHWM")?;
        let peak_in_use = PEAK_IN_USE.load(Ordering::Relaxed);
        println!(
            "{before} {peak} {} {in_use} {peak_in_use}",
            peak.max(first_peak)
        );
        Ok(())
    })
}

/// What a child measured, in bytes.
struct Measurement {
    /// The resident set before the measured step (model, optimizer state, data).
    before: f64,
    /// The peak resident set during the measured step.
    step_peak: f64,
    /// The process's peak over both steps (what a memory budget must hold).
    process_peak: f64,
    /// Bytes in use before the measured step.
    in_use_before: f64,
    /// The most bytes in use at once during the measured step.
    in_use_peak: f64,
}

impl Measurement {
    /// The step's own memory: its peak above the state before it.
    fn step(&self) -> f64 {
        self.step_peak - self.before
    }

    /// The step's own bytes in use at its peak.
    fn step_in_use(&self) -> f64 {
        self.in_use_peak - self.in_use_before
    }
}

/// The measurement of a step in a fresh process.
fn measure(kind: ModelKind, segments: usize, batch: usize) -> Result<Measurement> {
    let out = Command::new(std::env::current_exe()?)
        .args([
            "--child",
            kind.name(),
            &segments.to_string(),
            &batch.to_string(),
        ])
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "child {kind} {segments} {batch}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let text = String::from_utf8(out.stdout)?;
    let values: Vec<f64> = text
        .split_whitespace()
        .map(str::parse)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| format!("child printed `{text}`: {e}"))?;
    match values[..] {
        [before, step_peak, process_peak, in_use_before, in_use_peak] => Ok(Measurement {
            before,
            step_peak,
            process_peak,
            in_use_before,
            in_use_peak,
        }),
        _ => Err(format!("child printed `{text}`").into()),
    }
}

/// The largest batch (up to [`max_batch`]) whose step peaks within the budget, starting from
/// the linear prediction `guess`, and its peak. A batch that overshoots is scaled down
/// by the measured overshoot (at least 2 %) and measured again; a batch that fits is
/// confirmed by the next one up (+5 %) overshooting, or by reaching [`max_batch`]. Peak memory
/// is not linear in the batch (allocator blocks, the kernels' transient buffers), so
/// the prediction alone can be far off.
fn largest_fitting_batch(kind: ModelKind, segments: usize, guess: usize) -> Result<(usize, f64)> {
    let mut fits: Option<(usize, f64)> = None;
    let mut over = usize::MAX;
    let mut batch = guess.max(1);
    for _ in 0..8 {
        let peak = measure(kind, segments, batch)?.process_peak;
        if peak <= BUDGET {
            fits = Some((batch, peak));
            let next = (batch + batch.div_ceil(20)).min(max_batch(kind));
            if next == batch || next >= over {
                break;
            }
            batch = next;
        } else {
            over = batch;
            let floor = fits.map_or(1, |(b, _)| b + 1);
            if floor >= over {
                break;
            }
            // At least 2 % down: a peak just over the budget would otherwise step
            // down one image per run (minutes each at these batches).
            let scaled = (batch as f64 * BUDGET / peak) as usize;
            batch = scaled
                .min(batch - batch.div_ceil(50))
                .clamp(floor, over - 1);
        }
    }
    fits.ok_or_else(|| format!("{kind} with {segments} segments: no batch fits in 4 GiB").into())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--child") {
        let kind: ModelKind = args.get(1).ok_or("model")?.parse()?;
        let segments: usize = args.get(2).ok_or("segments")?.parse()?;
        let batch: usize = args.get(3).ok_or("batch")?.parse()?;
        return child(kind, segments, batch);
    }
    let models = [(ModelKind::TinyConv, 4), (ModelKind::Vgg16, 14)];
    for name in &args {
        if !models.iter().any(|(kind, _)| kind.name() == name) {
            return Err(format!("unknown model `{name}`: tinyconv or vgg16").into());
        }
    }
    println!(
        "{:<9} {:>9} {:>6} {:>9} {:>13} {:>9} {:>13} {:>15}",
        "model",
        "segments",
        "batch",
        "step MiB",
        "step in use",
        "peak MiB",
        "max batch 4G",
        "peak there MiB"
    );
    let chosen = models
        .into_iter()
        .filter(|(kind, _)| args.is_empty() || args.iter().any(|a| a == kind.name()));
    for (kind, layers) in chosen {
        let mut step_at = Vec::new();
        for segments in [0, layers] {
            let (b1, b2) = (16, 32);
            let (m1, m2) = (measure(kind, segments, b1)?, measure(kind, segments, b2)?);
            let (s1, s2) = (m1.step(), m2.step());
            let per_image = ((s2 - s1) / (b2 - b1) as f64).max(1.0);
            let fixed = m2.process_peak - per_image * b2 as f64;
            let (max_batch, peak_there) = largest_fitting_batch(
                kind,
                segments,
                (((BUDGET - fixed) / per_image) as usize).clamp(b2, max_batch(kind)),
            )?;
            println!(
                "{:<9} {:>9} {:>6} {:>9.1} {:>13.1} {:>9.0} {:>13} {:>15.0}",
                kind.name(),
                segments,
                b2,
                s2 / MIB,
                m2.step_in_use() / MIB,
                m2.process_peak / MIB,
                max_batch,
                peak_there / MIB
            );
            step_at.push((s2, m2.step_in_use(), max_batch));
        }
        println!(
            "{}: checkpointing takes {:.2}x less step memory at batch 32 ({:.2}x fewer bytes in \
             use) and fits {:.2}x the batch",
            kind.name(),
            step_at[0].0 / step_at[1].0,
            step_at[0].1 / step_at[1].1,
            step_at[1].2 as f64 / step_at[0].2 as f64
        );
    }
    Ok(())
}

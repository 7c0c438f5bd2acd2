//! The training loop: phases of execution modes, periodic calibration, optimizer and
//! learning-rate schedule, per-epoch evaluation and metrics, and a checkpoint written
//! atomically every epoch (and on a stop request) from which a run resumes to the
//! same result as one that never stopped.
//!
//! Every random choice is keyed by the run's seed and the epoch, batch or step (data
//! order, augmentation, injected and analog noise), so a resumed run draws exactly
//! what the uninterrupted run would have.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Result, Tensor, D};
use serde::{Deserialize, Serialize};

use crate::calibration::Calibration;
use crate::data::{Augment, Batches, Dataset};
use crate::io::{peak_rss_bytes, write_safetensors};
use crate::mode::ExecMode;
use crate::model::Model;
use crate::optim::{clip_grad_norm, Optimizer, OptimizerKind};
use crate::recompute::Recompute;
use crate::schedule::{LrSchedule, Phases};

/// Everything that defines a training run.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    /// Epochs.
    pub epochs: usize,
    /// Images per batch.
    pub batch: usize,
    /// Seed of data order, augmentation and noise.
    pub seed: u64,
    /// Execution mode of each part of the run.
    pub phases: Phases,
    /// Update rule.
    pub optimizer: OptimizerKind,
    /// Initial learning rate.
    pub lr: f64,
    /// Learning rate over the run (over each phase when `tune_lr` is set).
    pub lr_schedule: LrSchedule,
    /// When set, every phase after the first starts a fresh optimizer with this
    /// learning rate and its own schedule (REX-SC's final accurate epochs: new Adam,
    /// lr 3e-3).
    pub tune_lr: Option<f64>,
    /// Label smoothing ε: target 1 − ε for the true class, ε/(C − 1) for the others.
    pub label_smoothing: f64,
    /// Clip the global gradient norm to this value.
    pub clip_grad: Option<f64>,
    /// Clamp hardware-layer weights into this range after every epoch (REX-SC: SC
    /// weights to `[−1, 0.999]`).
    pub weight_clamp: Option<(f32, f32)>,
    /// Steps between calibrations in `inject` epochs; `None`: REX-SC's
    /// `max(steps per epoch / 5, 100)`. Calibrations also run at the first step of
    /// every `inject` epoch, so that short epochs calibrate too.
    pub calibrate_every: Option<u64>,
    /// Mode of the per-epoch evaluation (normally `accurate`); `None` skips it.
    pub eval_mode: Option<ExecMode>,
    /// Training augmentation.
    pub augment: Augment,
    /// Stop after this many steps (checkpointing first), e.g. for smoke tests.
    pub max_steps: Option<u64>,
    /// Checkpoint file, written every epoch and on a stop request.
    pub checkpoint: Option<PathBuf>,
}

impl TrainConfig {
    /// Steps between calibrations in `inject` epochs over `images` training images:
    /// [`TrainConfig::calibrate_every`], or REX-SC's `max(steps per epoch / 5, 100)`.
    pub fn calibration_period(&self, images: usize) -> u64 {
        let steps = images.div_ceil(self.batch.max(1)) as u64;
        self.calibrate_every.unwrap_or((steps / 5).max(100)).max(1)
    }

    /// The toolkit's default recipe (what `approx finetune` and `approx pretrain` use):
    /// Adam with weight decay 1e-4, cosine decay to 1 % of `lr`, label smoothing 0.1,
    /// gradient clipping at 5, no augmentation, no evaluation, no checkpoint file.
    pub fn recipe(batch: usize, seed: u64, epochs: usize, phases: Phases, lr: f64) -> Self {
        Self {
            epochs,
            batch,
            seed,
            phases,
            optimizer: OptimizerKind::Adam { weight_decay: 1e-4 },
            lr,
            lr_schedule: LrSchedule::Cosine { end: lr * 0.01 },
            tune_lr: None,
            label_smoothing: 0.1,
            clip_grad: Some(5.0),
            weight_clamp: None,
            calibrate_every: None,
            eval_mode: None,
            augment: Augment::default(),
            max_steps: None,
            checkpoint: None,
        }
    }

    /// A short description of what must match for a checkpoint to resume this run.
    fn fingerprint(&self) -> String {
        format!(
            "epochs={} batch={} seed={} phases={} optimizer={} lr={} lr_schedule={:?} tune_lr={:?} smoothing={} clip={:?} clamp={:?} calibrate_every={:?} augment={:?}",
            self.epochs, self.batch, self.seed, self.phases, self.optimizer, self.lr, self.lr_schedule, self.tune_lr,
            self.label_smoothing, self.clip_grad, self.weight_clamp, self.calibrate_every, self.augment
        )
    }
}

/// Metrics of one epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// Epoch index, from 0.
    pub epoch: usize,
    /// The training mode of the epoch.
    pub mode: ExecMode,
    /// Mean training loss.
    pub loss: f64,
    /// Training accuracy (fraction) in the training mode.
    pub train_accuracy: f64,
    /// Evaluation accuracy (fraction) in the evaluation mode, if evaluated.
    pub eval_accuracy: Option<f64>,
    /// Training images per second.
    pub samples_per_second: f64,
    /// Wall time of the epoch (training and evaluation), seconds.
    pub seconds: f64,
    /// Peak resident memory of the process so far, bytes.
    pub peak_rss_bytes: Option<u64>,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainOutcome {
    /// Metrics of every completed epoch (including those before a resume).
    pub history: Vec<EpochRecord>,
    /// Steps taken in total.
    pub steps: u64,
    /// Whether the run stopped early (stop request or `max_steps`).
    pub stopped: bool,
}

/// Progress events for a front end.
#[derive(Debug, Clone)]
pub enum Event {
    /// A training step finished.
    Step {
        /// Epoch index.
        epoch: usize,
        /// Batch index within the epoch.
        batch: usize,
        /// Batches in the epoch.
        batches: usize,
        /// The step's loss.
        loss: f64,
    },
    /// An evaluation batch of an epoch is about to run.
    Evaluating {
        /// Epoch index.
        epoch: usize,
        /// Batch index within the evaluation.
        batch: usize,
        /// Batches in the evaluation.
        batches: usize,
    },
    /// An epoch finished.
    Epoch(EpochRecord),
}

/// The resumable state of a run, stored in the checkpoint's metadata.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TrainState {
    fingerprint: String,
    epoch: usize,
    next_batch: usize,
    step: u64,
    optimizer_steps: u64,
    optimizer_phase: usize,
    calibrations: Vec<(String, Option<Calibration>)>,
    history: Vec<EpochRecord>,
    epoch_loss: f64,
    epoch_correct: f64,
    epoch_seen: usize,
}

const STATE_KEY: &str = "approx.trainer";

/// Checkpoint tensor name prefix of each hardware layer's fixed-pattern error.
const PATTERN_PREFIX: &str = "fixed_pattern.";

/// Mean cross-entropy of `logits` `[N, C]` against `labels` `[N]` (u32) with label
/// smoothing `eps` (REX-SC's LabelSmoothLoss), and the number of correct argmaxes.
pub fn loss_and_correct(logits: &Tensor, labels: &Tensor, eps: f64) -> Result<(Tensor, f64)> {
    let (n, classes) = logits.dims2()?;
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let onehot = labels
        .to_dtype(DType::I64)?
        .unsqueeze(1)?
        .broadcast_eq(&Tensor::arange(0i64, classes as i64, logits.device())?.unsqueeze(0)?)?
        .to_dtype(DType::F32)?;
    let other = if classes > 1 {
        eps / (classes - 1) as f64
    } else {
        0.0
    };
    let target = ((onehot * (1.0 - eps - other))? + other)?;
    let loss = ((target * logp)?.sum_all()? * (-1.0 / n as f64))?;
    let correct = logits
        .argmax(D::Minus1)?
        .eq(labels)?
        .to_dtype(DType::F32)?
        .sum_all()?
        .to_scalar::<f32>()?;
    Ok((loss, f64::from(correct)))
}

/// What one training step measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepResult {
    /// The batch's mean loss (before the update).
    pub loss: f64,
    /// Images of the batch whose argmax was the label (a count, as f64).
    pub correct: f64,
}

/// One training step of `model` on images `x` with labels `y`: forward, loss with
/// label smoothing `eps`, backward (the checkpointed blocks' gradients merged in),
/// gradients clipped to global norm `clip` if given, and the optimizer's update.
///
/// The forward graph (every activation kept for backward) is dropped before the
/// update, so that it and the update's buffers (the next weights of each parameter)
/// are never in memory together.
///
/// A model with checkpointed blocks, unclipped, has each block's parameters updated
/// as soon as that block's backward ends, on a second thread while the backward goes
/// on ([`crate::recompute::Recompute::set_sink`]): the same update (each parameter's
/// rule reads only its own gradient and state), without every parameter's gradient
/// in memory at the backward's peak (59 MB on VGG-16). Clipping needs the global norm
/// of all gradients first, so a clipped step updates after the backward.
pub fn train_step(
    model: &dyn Model,
    optimizer: &mut Optimizer,
    x: &Tensor,
    y: &Tensor,
    eps: f64,
    clip: Option<f64>,
) -> Result<StepResult> {
    if let (None, Some(blocks)) = (clip, model.checkpointed_blocks()) {
        return step_updating_blocks(model, blocks, optimizer, x, y, eps);
    }
    let (mut grads, result) = forward_backward(model, x, y, eps)?;
    model.merge_recomputed_grads(&mut grads)?;
    if let Some(max) = clip {
        clip_grad_norm(optimizer.params(), &mut grads, max)?;
    }
    optimizer.step(&grads)?;
    Ok(result)
}

/// The forward, loss and backward of a step; the graph is dropped on return.
fn forward_backward(
    model: &dyn Model,
    x: &Tensor,
    y: &Tensor,
    eps: f64,
) -> Result<(GradStore, StepResult)> {
    let logits = model.forward(x, true)?;
    let (loss, correct) = loss_and_correct(&logits, y, eps)?;
    let grads = loss.backward()?;
    let loss = f64::from(loss.to_scalar::<f32>()?);
    Ok((grads, StepResult { loss, correct }))
}

/// [`train_step`] for a model with checkpointed `blocks`, unclipped: each block's
/// parameter gradients go through a rendezvous channel to a thread that applies them
/// while the backward goes on; the rest of the gradients are applied after it.
fn step_updating_blocks(
    model: &dyn Model,
    blocks: &Recompute,
    optimizer: &mut Optimizer,
    x: &Tensor,
    y: &Tensor,
    eps: f64,
) -> Result<StepResult> {
    optimizer.begin_step();
    let (sink, parts) = mpsc::sync_channel::<GradStore>(0);
    blocks.set_sink(Some(sink));
    let (outcome, updates) = std::thread::scope(|scope| {
        let updater = scope.spawn(|| -> Result<()> {
            for grads in parts {
                optimizer.apply(&grads)?;
            }
            Ok(())
        });
        let outcome = forward_backward(model, x, y, eps);
        // Dropping the sender ends the updater's loop.
        blocks.set_sink(None);
        (outcome, updater.join())
    });
    let updates = updates.map_err(|_| {
        candle_core::Error::Msg("the thread updating checkpointed blocks panicked".into())
    })?;
    // The updater's error first: it is why a block's gradients could not be sent.
    updates?;
    let (grads, result) = outcome?;
    optimizer.apply(&grads)?;
    Ok(result)
}

/// Accuracy (fraction) of `model` on `data` with every hardware layer in `mode`
/// (restored afterwards), in batches of `batch`.
pub fn evaluate(model: &dyn Model, data: &Dataset, mode: ExecMode, batch: usize) -> Result<f64> {
    evaluate_with_progress(model, data, mode, batch, &mut |_, _| {})
}

/// [`evaluate`], calling `on_batch(batch, batches)` before each batch (for progress
/// bars: bit-accurate evaluation of a test set takes seconds to minutes).
pub fn evaluate_with_progress(
    model: &dyn Model,
    data: &Dataset,
    mode: ExecMode,
    batch: usize,
    on_batch: &mut dyn FnMut(usize, usize),
) -> Result<f64> {
    let before: Vec<ExecMode> = model.hw_layers().iter().map(|l| l.mode()).collect();
    model.set_mode(mode);
    let mut correct = 0f64;
    let result = (|| -> Result<()> {
        let batches = Batches::new(data, batch, false, Augment::default(), 0, 0);
        let count = batches.batches();
        for (i, b) in batches.enumerate() {
            on_batch(i, count);
            let (x, y) = b?;
            let logits = model.predict(&x)?;
            correct += f64::from(
                logits
                    .argmax(D::Minus1)?
                    .eq(&y)?
                    .to_dtype(DType::F32)?
                    .sum_all()?
                    .to_scalar::<f32>()?,
            );
        }
        Ok(())
    })();
    for (l, m) in model.hw_layers().iter().zip(before) {
        l.set_mode(m);
    }
    result?;
    Ok(correct / data.len().max(1) as f64)
}

/// Runs `f` on a thread with a 1 GiB stack (candle's backward recurses once per node;
/// deep graphs overflow the default 8 MiB) and returns its result. Sets the allocator
/// up for training first ([`crate::alloc::keep_freed_memory`]).
pub fn on_large_stack<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    crate::alloc::keep_freed_memory();
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("train".into())
            .stack_size(1 << 30)
            .spawn_scoped(s, f)
            .expect("spawning the training thread")
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Trains `model` on `train` per `config`, evaluating on `eval` after every epoch.
/// Resumes from `config.checkpoint` when `resume` and the file exists. Stops cleanly
/// (checkpoint written) when `stop` becomes true; calls `on_event` for progress.
pub fn train(
    model: &dyn Model,
    train: &Dataset,
    eval: Option<&Dataset>,
    config: &TrainConfig,
    resume: bool,
    stop: &AtomicBool,
    on_event: &mut dyn FnMut(Event),
) -> Result<TrainOutcome> {
    let fail = |m: String| candle_core::Error::Msg(m);
    if config.batch == 0 || config.epochs == 0 {
        return Err(fail("epochs and batch must be at least 1".into()));
    }
    let phases = config.phases.epochs(config.epochs).map_err(fail)?;
    let batches = train.len().div_ceil(config.batch);
    let params: Vec<candle_core::Var> = model.named_vars().into_iter().map(|(_, v)| v).collect();
    let mut state = TrainState {
        fingerprint: config.fingerprint(),
        epoch: 0,
        next_batch: 0,
        step: 0,
        optimizer_steps: 0,
        optimizer_phase: 0,
        calibrations: Vec::new(),
        history: Vec::new(),
        epoch_loss: 0.0,
        epoch_correct: 0.0,
        epoch_seen: 0,
    };
    let mut optimizer = Optimizer::new(config.optimizer, params.clone(), config.lr)?;
    if let (true, Some(path)) = (resume, &config.checkpoint) {
        if path.exists() {
            state = load_checkpoint(path, model, &mut optimizer, &state.fingerprint)?;
            tracing::info!(
                "resumed from `{}` at epoch {} batch {}",
                path.display(),
                state.epoch,
                state.next_batch
            );
        }
    }
    let phase_of = |epoch: usize| -> (usize, ExecMode, usize, usize) {
        let mut start = 0;
        for (i, &(mode, n)) in phases.iter().enumerate() {
            if epoch < start + n {
                return (i, mode, start, n);
            }
            start += n;
        }
        let last = phases.len() - 1;
        (
            last,
            phases[last].0,
            config.epochs - phases[last].1,
            phases[last].1,
        )
    };
    let period = config.calibration_period(train.len());
    let mut stopped = false;
    'epochs: while state.epoch < config.epochs {
        let epoch = state.epoch;
        let (phase, mode, phase_start, phase_len) = phase_of(epoch);
        if phase != state.optimizer_phase {
            if let Some(tune) = config.tune_lr {
                optimizer = Optimizer::new(config.optimizer, params.clone(), tune)?;
            }
            state.optimizer_phase = phase;
        }
        model.set_mode(mode);
        let started = Instant::now();
        let mut data = Batches::new(
            train,
            config.batch,
            true,
            config.augment,
            config.seed,
            epoch as u64,
        );
        data.skip_to(state.next_batch);
        for b in state.next_batch..batches {
            let (mut x, mut y) = data.get(b)?;
            let calibrate = mode == ExecMode::Inject && (b as u64).is_multiple_of(period);
            if calibrate {
                // REX-SC calibrates on the first half of the batch and trains on it.
                let half = x.dim(0)?.div_ceil(2);
                x = x.narrow(0, 0, half)?;
                y = y.narrow(0, 0, half)?;
                for l in model.hw_layers() {
                    l.request_calibration();
                }
            }
            model.set_step(state.step);
            let (lr0, t, total) = match config.tune_lr {
                Some(tune) if phase > 0 => (
                    tune,
                    (epoch - phase_start) * batches + b,
                    phase_len * batches,
                ),
                _ if config.tune_lr.is_some() => {
                    (config.lr, epoch * batches + b, phase_len * batches)
                }
                _ => (config.lr, epoch * batches + b, config.epochs * batches),
            };
            optimizer.set_learning_rate(config.lr_schedule.rate(lr0, t as u64, total as u64));
            let StepResult { loss, correct } = train_step(
                model,
                &mut optimizer,
                &x,
                &y,
                config.label_smoothing,
                config.clip_grad,
            )?;
            if !loss.is_finite() {
                return Err(fail(format!(
                    "loss became {loss} at epoch {epoch}, batch {b}: lower the learning rate"
                )));
            }
            state.epoch_loss += loss * y.dim(0)? as f64;
            state.epoch_correct += correct;
            state.epoch_seen += y.dim(0)?;
            state.step += 1;
            state.next_batch = b + 1;
            on_event(Event::Step {
                epoch,
                batch: b,
                batches,
                loss,
            });
            let at_limit = config.max_steps.is_some_and(|m| state.step >= m);
            if stop.load(Ordering::SeqCst) || at_limit {
                stopped = true;
                break 'epochs;
            }
        }
        if let Some((lo, hi)) = config.weight_clamp {
            for l in model.hw_layers() {
                l.clamp_weight(lo, hi)?;
            }
        }
        let eval_accuracy = match (config.eval_mode, eval) {
            (Some(m), Some(data)) => Some(evaluate_with_progress(
                model,
                data,
                m,
                config.batch,
                &mut |batch, batches| {
                    on_event(Event::Evaluating {
                        epoch,
                        batch,
                        batches,
                    })
                },
            )?),
            _ => None,
        };
        let seen = state.epoch_seen.max(1) as f64;
        let seconds = started.elapsed().as_secs_f64();
        let record = EpochRecord {
            epoch,
            mode,
            loss: state.epoch_loss / seen,
            train_accuracy: state.epoch_correct / seen,
            eval_accuracy,
            samples_per_second: state.epoch_seen as f64 / seconds.max(1e-9),
            seconds,
            peak_rss_bytes: peak_rss_bytes(),
        };
        on_event(Event::Epoch(record.clone()));
        state.history.push(record);
        state.epoch += 1;
        state.next_batch = 0;
        state.epoch_loss = 0.0;
        state.epoch_correct = 0.0;
        state.epoch_seen = 0;
        if let Some(path) = &config.checkpoint {
            save_checkpoint(path, model, &optimizer, &mut state)?;
        }
    }
    if stopped {
        if let Some(path) = &config.checkpoint {
            save_checkpoint(path, model, &optimizer, &mut state)?;
        }
    }
    Ok(TrainOutcome {
        history: state.history,
        steps: state.step,
        stopped,
    })
}

fn save_checkpoint(
    path: &Path,
    model: &dyn Model,
    optimizer: &Optimizer,
    state: &mut TrainState,
) -> Result<()> {
    state.calibrations = model
        .hw_layers()
        .iter()
        .map(|l| (l.name().to_string(), l.calibration()))
        .collect();
    let (optim, steps) = optimizer.state();
    state.optimizer_steps = steps;
    let vars = model.named_vars();
    let mut tensors: Vec<(String, Tensor)> = vars
        .iter()
        .map(|(n, v)| (format!("model.{n}"), v.as_tensor().clone()))
        .collect();
    tensors.extend(optim.into_iter().map(|(n, t)| (format!("optim.{n}"), t)));
    tensors.extend(
        model
            .hw_layers()
            .iter()
            .filter_map(|l| Some((format!("{PATTERN_PREFIX}{}", l.name()), l.fixed_pattern()?))),
    );
    let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let meta = HashMap::from([(
        STATE_KEY.to_string(),
        serde_json::to_string(state).map_err(|e| candle_core::Error::Msg(e.to_string()))?,
    )]);
    write_safetensors(path, &refs, meta)
}

fn load_checkpoint(
    path: &Path,
    model: &dyn Model,
    optimizer: &mut Optimizer,
    fingerprint: &str,
) -> Result<TrainState> {
    let fail = |m: String| candle_core::Error::Msg(format!("checkpoint `{}`: {m}", path.display()));
    let file = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
    // Mapped rather than read, so that a corrupt or foreign file of any size costs no
    // memory before its header is checked. SAFETY: the mapping is read-only; the file
    // must not be truncated by another process while it is mapped.
    let bytes = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| fail(e.to_string()))?;
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| fail(e.to_string()))?;
    let file = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| fail(e.to_string()))?;
    let json = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get(STATE_KEY))
        .ok_or_else(|| {
            fail(format!(
                "no `{STATE_KEY}` metadata: not a training checkpoint"
            ))
        })?;
    let state: TrainState = serde_json::from_str(json).map_err(|e| fail(e.to_string()))?;
    if state.fingerprint != fingerprint {
        return Err(fail(format!(
            "written by a run with other settings; resume with the same options or start afresh.\n  checkpoint: {}\n  this run:   {fingerprint}",
            state.fingerprint
        )));
    }
    let get = |name: &str| -> Option<Tensor> {
        let view = file.tensor(name).ok()?;
        if view.dtype() != safetensors::Dtype::F32 {
            return None;
        }
        let data: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Tensor::from_vec(data, view.shape(), &Device::Cpu).ok()
    };
    for (name, var) in model.named_vars() {
        let t = get(&format!("model.{name}"))
            .ok_or_else(|| fail(format!("tensor `model.{name}` is missing or not f32")))?;
        if t.dims() != var.dims() {
            return Err(fail(format!(
                "tensor `model.{name}` has shape {:?}, the model {:?}",
                t.dims(),
                var.dims()
            )));
        }
        var.set(&t)?;
    }
    optimizer
        .load_state(state.optimizer_steps, |n| get(&format!("optim.{n}")))
        .map_err(|e| fail(e.to_string()))?;
    for l in model.hw_layers() {
        let cal = state
            .calibrations
            .iter()
            .find(|(n, _)| n == l.name())
            .and_then(|(_, c)| *c);
        l.set_calibration(cal);
        l.set_fixed_pattern(get(&format!("{PATTERN_PREFIX}{}", l.name())));
    }
    Ok(state)
}

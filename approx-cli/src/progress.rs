//! Progress bars with rate and ETA for the long steps (training epochs and
//! evaluations). They draw on stderr only when it is a terminal and `--quiet` is
//! off; otherwise the same summaries go to the log (`-v`).

use std::sync::atomic::{AtomicBool, Ordering};

use approx_train::data::Dataset;
use approx_train::mode::ExecMode;
use approx_train::model::Model;
use approx_train::trainer::{evaluate_with_progress, EpochRecord, Event};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Set by `--quiet`: no bars at all.
static HIDDEN: AtomicBool = AtomicBool::new(false);

/// Turns every progress bar off (for `--quiet`).
pub fn hide() {
    HIDDEN.store(true, Ordering::Relaxed);
}

/// A bar of `len` batches labelled `label`.
fn bar(label: String, len: usize) -> ProgressBar {
    let target = if HIDDEN.load(Ordering::Relaxed) {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    };
    let style = ProgressStyle::with_template(
        "{prefix:>22} [{bar:30}] {pos}/{len} batches, {rate}, ETA {eta} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .with_key(
        "rate",
        |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{:.1}/s", state.per_sec());
        },
    )
    .progress_chars("=> ");
    let pb = ProgressBar::with_draw_target(Some(len as u64), target)
        .with_style(style)
        .with_prefix(label);
    pb.tick();
    pb
}

/// Leaves `pb` on screen as one summary line, or logs the summary when no bar shows.
fn finish(pb: &ProgressBar, summary: String) {
    if pb.is_hidden() {
        tracing::info!("{} {summary}", pb.prefix());
        return;
    }
    if let Ok(style) = ProgressStyle::with_template("{prefix:>22} {msg}") {
        pb.set_style(style);
    }
    pb.finish_with_message(summary);
}

/// Follows a training run's events: a bar per epoch (and per evaluation), then the
/// epoch's summary line.
pub struct TrainProgress {
    phase: &'static str,
    bar: Option<ProgressBar>,
    evaluating: bool,
}

impl TrainProgress {
    /// Progress of the training phase `phase` (e.g. `pretrain`).
    pub fn new(phase: &'static str) -> Self {
        Self {
            phase,
            bar: None,
            evaluating: false,
        }
    }

    /// Updates the bars for `event`.
    pub fn on_event(&mut self, event: Event) {
        match event {
            Event::Step {
                epoch,
                batch,
                batches,
                loss,
            } => {
                if self.bar.is_none() || self.evaluating {
                    self.replace(format!("{} epoch {}", self.phase, epoch + 1), batches);
                    self.evaluating = false;
                }
                if let Some(pb) = &self.bar {
                    pb.set_position(batch as u64 + 1);
                    pb.set_message(format!("loss {loss:.4}"));
                }
                tracing::debug!(
                    "{} epoch {} step {}/{batches}: loss {loss:.4}",
                    self.phase,
                    epoch + 1,
                    batch + 1
                );
            }
            Event::Evaluating {
                epoch,
                batch,
                batches,
            } => {
                if !self.evaluating {
                    self.replace(format!("evaluate epoch {}", epoch + 1), batches);
                    self.evaluating = true;
                }
                if let Some(pb) = &self.bar {
                    pb.set_position(batch as u64);
                }
            }
            Event::Epoch(record) => {
                let pb = self.bar.take().unwrap_or_else(|| {
                    bar(format!("{} epoch {}", self.phase, record.epoch + 1), 0)
                });
                pb.set_prefix(format!("{} epoch {}", self.phase, record.epoch + 1));
                finish(&pb, summary(&record));
                self.evaluating = false;
            }
        }
    }

    fn replace(&mut self, label: String, len: usize) {
        if let Some(old) = self.bar.take() {
            old.finish_and_clear();
        }
        self.bar = Some(bar(label, len));
    }
}

/// One epoch as a line: mode, loss, accuracies, rate, time.
fn summary(r: &EpochRecord) -> String {
    format!(
        "{}: loss {:.4}, train {:.2} %{}, {:.0} images/s, {:.1} s",
        r.mode,
        r.loss,
        100.0 * r.train_accuracy,
        r.eval_accuracy
            .map_or(String::new(), |a| format!(", eval {:.2} %", 100.0 * a)),
        r.samples_per_second,
        r.seconds
    )
}

/// Accuracy of `model` on `data` in `mode` with a bar labelled `label`.
pub fn evaluate(
    label: &str,
    model: &dyn Model,
    data: &Dataset,
    mode: ExecMode,
    batch: usize,
) -> candle_core::Result<f64> {
    let mut pb: Option<ProgressBar> = None;
    let accuracy = evaluate_with_progress(model, data, mode, batch, &mut |i, n| {
        pb.get_or_insert_with(|| bar(label.to_string(), n))
            .set_position(i as u64);
    })?;
    if let Some(pb) = pb {
        pb.set_position(pb.length().unwrap_or(0));
        finish(&pb, format!("{:.2} % ({mode})", 100.0 * accuracy));
    }
    Ok(accuracy)
}

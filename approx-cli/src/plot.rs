//! The PNG figures of a fine-tune: learning curves (loss and accuracy per epoch) and
//! the calibrated error profile of every hardware layer (bias and std of the
//! bit-accurate output against the approximation's value). Drawn with an embedded
//! font, so they need no system font libraries, and written atomically.

use std::path::Path;
use std::sync::Once;

use anyhow::{anyhow, Result};
use approx_hw::HwSpec;
use approx_train::calibration::Calibration;
use approx_train::io::write_atomic;
use approx_train::trainer::EpochRecord;
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

/// Width and height of every figure, pixels.
const SIZE: (u32, u32) = (1200, 500);
const FONT: &str = "sans-serif";

/// A hardware layer's calibration, for [`error_profile`].
pub struct LayerProfile {
    /// Layer name (`conv1`).
    pub name: String,
    /// The layer's hardware.
    pub hw: HwSpec,
    /// The calibration the last `inject` epoch fitted, if any.
    pub calibration: Option<Calibration>,
    /// Root mean square over the output units of the calibrated fixed-pattern error,
    /// in layer-output units, if the calibration has one.
    pub fixed_pattern_rms: Option<f64>,
}

/// What the learning curves show.
pub struct Curves<'a> {
    /// Float pretraining epochs (may be empty when weights were loaded).
    pub pretrain: &'a [EpochRecord],
    /// Fine-tuning epochs (their `eval_accuracy` is the bit-accurate test accuracy).
    pub finetune: &'a [EpochRecord],
    /// Float test accuracy of the pretrained model (fraction).
    pub float_accuracy: f64,
    /// Bit-accurate test accuracy before fine-tuning (fraction).
    pub hw_accuracy_before: f64,
}

/// Renders into an RGB buffer with `draw` and writes it to `path` as a PNG.
fn render(
    path: &Path,
    (width, height): (u32, u32),
    draw: impl FnOnce(&DrawingArea<BitMapBackend, Shift>) -> Result<()>,
) -> Result<()> {
    static FONTS: Once = Once::new();
    FONTS.call_once(|| {
        if register_font(FONT, FontStyle::Normal, dejavu::sans::regular()).is_err() {
            tracing::warn!("cannot load the embedded font; plot labels will be missing");
        }
    });
    let mut rgb = vec![0u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        draw(&root)?;
        root.present().map_err(plot_err)?;
    }
    let image = image::RgbImage::from_raw(width, height, rgb)
        .ok_or_else(|| anyhow!("plot buffer has the wrong size"))?;
    let mut png = std::io::Cursor::new(Vec::new());
    image.write_to(&mut png, image::ImageFormat::Png)?;
    write_atomic(path, png.get_ref())?;
    Ok(())
}

fn plot_err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("drawing a plot: {e}")
}

/// Draws the learning curves to `path`: loss per epoch (left) and accuracy per epoch
/// (right: training accuracy, bit-accurate test accuracy, float test accuracy).
pub fn learning_curves(path: &Path, c: &Curves) -> Result<()> {
    let p = c.pretrain.len();
    let epochs = (p + c.finetune.len()).max(1) as f64;
    let pretrain_loss: Vec<(f64, f64)> = c
        .pretrain
        .iter()
        .enumerate()
        .map(|(i, r)| ((i + 1) as f64, r.loss))
        .collect();
    let finetune_loss: Vec<(f64, f64)> = c
        .finetune
        .iter()
        .enumerate()
        .map(|(i, r)| ((p + i + 1) as f64, r.loss))
        .collect();
    let train_acc: Vec<(f64, f64)> = c
        .pretrain
        .iter()
        .chain(c.finetune)
        .enumerate()
        .map(|(i, r)| ((i + 1) as f64, 100.0 * r.train_accuracy))
        .collect();
    let hw_acc: Vec<(f64, f64)> = std::iter::once((p as f64, 100.0 * c.hw_accuracy_before))
        .chain(
            c.finetune
                .iter()
                .enumerate()
                .filter_map(|(i, r)| r.eval_accuracy.map(|a| ((p + i + 1) as f64, 100.0 * a))),
        )
        .collect();
    let max_loss = pretrain_loss
        .iter()
        .chain(&finetune_loss)
        .map(|v| v.1)
        .fold(0.1f64, f64::max);
    let phases = format!(
        "fine-tune ({})",
        c.finetune
            .iter()
            .map(|r| r.mode.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    render(path, SIZE, |root| {
        let (left, right) = root.split_horizontally(SIZE.0 / 2);
        let (blue, red) = (BLUE.stroke_width(2), RED.stroke_width(2));
        let mut chart = epoch_chart(
            &left,
            "Training loss",
            epochs,
            0f64..max_loss * 1.1,
            "cross-entropy loss (nats)",
        )?;
        if !pretrain_loss.is_empty() {
            chart
                .draw_series(LineSeries::new(pretrain_loss, blue).point_size(4))
                .map_err(plot_err)?
                .label("pretrain (float)")
                .legend(legend_line(blue));
        }
        chart
            .draw_series(LineSeries::new(finetune_loss, red).point_size(4))
            .map_err(plot_err)?
            .label(phases)
            .legend(legend_line(red));
        draw_legend(&mut chart, SeriesLabelPosition::UpperRight)?;

        let mut chart = epoch_chart(&right, "Accuracy", epochs, 0f64..100f64, "accuracy (%)")?;
        let green = GREEN.mix(0.9).stroke_width(2);
        let float = 100.0 * c.float_accuracy;
        chart
            .draw_series(LineSeries::new(train_acc, blue).point_size(4))
            .map_err(plot_err)?
            .label("training accuracy (training mode)")
            .legend(legend_line(blue));
        chart
            .draw_series(LineSeries::new(hw_acc, red).point_size(5))
            .map_err(plot_err)?
            .label("test accuracy, bit-accurate hardware")
            .legend(legend_line(red));
        chart
            .draw_series(DashedLineSeries::new(
                vec![(0.0, float), (epochs + 0.5, float)],
                8,
                6,
                green,
            ))
            .map_err(plot_err)?
            .label("test accuracy, float model")
            .legend(legend_line(green));
        if p > 0 {
            chart
                .draw_series(DashedLineSeries::new(
                    vec![(p as f64, 0.0), (p as f64, 100.0)],
                    4,
                    4,
                    BLACK.mix(0.4).stroke_width(1),
                ))
                .map_err(plot_err)?;
        }
        draw_legend(&mut chart, SeriesLabelPosition::LowerLeft)
    })
}

/// The value axes of the learning curves.
type EpochChart<'a, 'b> =
    ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// A chart on `area` with epochs 0..=`epochs` across and `y` up, captioned and with
/// its grid and axis descriptions drawn.
fn epoch_chart<'a, 'b>(
    area: &'a DrawingArea<BitMapBackend<'b>, Shift>,
    caption: &str,
    epochs: f64,
    y: std::ops::Range<f64>,
    y_desc: &str,
) -> Result<EpochChart<'a, 'b>> {
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, 24))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d(0f64..epochs + 0.5, y)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .x_labels(epochs as usize + 2)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .x_desc("epoch")
        .y_desc(y_desc)
        .axis_desc_style((FONT, 18))
        .draw()
        .map_err(plot_err)?;
    Ok(chart)
}

/// The legend mark of a line series in `style`.
fn legend_line(style: ShapeStyle) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style)
}

/// Draws the legend of `chart` at `position`.
fn draw_legend<'a, 'b: 'a>(
    chart: &mut EpochChart<'a, 'b>,
    position: SeriesLabelPosition,
) -> Result<()> {
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, 16))
        .draw()
        .map_err(plot_err)
}

/// Draws each layer's calibrated error model to `path`: `bias(x)` and the band
/// `bias(x) ± std(x)` over the range of approximation values the fit saw, with the
/// size of the fixed-pattern error (which the std leaves out) in the legend.
pub fn error_profile(path: &Path, layers: &[LayerProfile]) -> Result<()> {
    let cols = layers.len().clamp(1, 3);
    let rows = layers.len().div_ceil(cols).max(1);
    let size = (400 * cols as u32, 320 * rows as u32 + 40);
    render(path, size, |root| {
        let body = root
            .titled(
                "Calibrated error: bit-accurate minus approximate output",
                (FONT, 24),
            )
            .map_err(plot_err)?;
        for (area, layer) in body.split_evenly((rows, cols)).iter().zip(layers) {
            profile_panel(area, layer)?;
        }
        Ok(())
    })
}

fn profile_panel(area: &DrawingArea<BitMapBackend, Shift>, layer: &LayerProfile) -> Result<()> {
    let title = format!("{} ({})", layer.name, layer.hw);
    let Some(cal) = layer.calibration.filter(|c| c.range[1] > c.range[0]) else {
        area.titled(&title, (FONT, 16))
            .map_err(plot_err)?
            .draw_text(
                "not calibrated (no inject epoch)",
                &(FONT, 16).into_text_style(area),
                (20, 60),
            )
            .map_err(plot_err)?;
        return Ok(());
    };
    let [lo, hi] = cal.range;
    let xs: Vec<f64> = (0..=100)
        .map(|i| lo + (hi - lo) * i as f64 / 100.0)
        .collect();
    let bias: Vec<(f64, f64)> = xs.iter().map(|&x| (x, cal.bias(x))).collect();
    let upper: Vec<(f64, f64)> = xs.iter().map(|&x| (x, cal.bias(x) + cal.std(x))).collect();
    let lower: Vec<(f64, f64)> = xs.iter().map(|&x| (x, cal.bias(x) - cal.std(x))).collect();
    let (ymin, ymax) = upper
        .iter()
        .chain(&lower)
        .fold((0f64, 0f64), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let pad = ((ymax - ymin) * 0.1).max(1e-6);
    let x_desc = match layer.hw {
        HwSpec::Sc(_) => "approximate unit output f_n(s), per polarity",
        _ => "approximate layer output",
    };
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 16))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(lo..hi, ymin - pad..ymax + pad)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .x_desc(x_desc)
        .y_desc("error")
        .axis_desc_style((FONT, 14))
        .label_style((FONT, 12))
        .draw()
        .map_err(plot_err)?;
    let band: Vec<(f64, f64)> = upper.iter().chain(lower.iter().rev()).copied().collect();
    chart
        .draw_series(std::iter::once(Polygon::new(band, RED.mix(0.2))))
        .map_err(plot_err)?
        .label("bias ± std")
        .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 20, y + 5)], RED.mix(0.2).filled()));
    chart
        .draw_series(LineSeries::new(bias, BLUE.stroke_width(2)))
        .map_err(plot_err)?
        .label("bias")
        .legend(legend_line(BLUE.stroke_width(2)));
    if let Some(rms) = layer.fixed_pattern_rms {
        // A legend line only: the pattern is per unit, not a function of x.
        chart
            .draw_series(std::iter::empty::<PathElement<(f64, f64)>>())
            .map_err(plot_err)?
            .label(format!("fixed pattern: rms {rms:.3} per output"))
            .legend(legend_line(WHITE.stroke_width(1)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, 13))
        .draw()
        .map_err(plot_err)?;
    Ok(())
}

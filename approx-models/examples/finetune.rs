//! Fine-tuning through the library API: load a float TinyConv, evaluate it
//! bit-accurately on SC hardware, fine-tune it with the accelerated schedule, evaluate
//! again, save.
//!
//! ```sh
//! cargo run --release -p approx-cli -- finetune --epochs 1 --schedule accurate:1   # writes approx-out/pretrained.safetensors
//! cargo run --release -p approx-models --example finetune -- approx-out/pretrained.safetensors
//! ```

use std::path::Path;
use std::sync::atomic::AtomicBool;

use approx_models::{load, save, HwMap, ModelKind};
use approx_train::data::read_idx_pair;
use approx_train::mode::ExecMode;
use approx_train::trainer::{evaluate, on_large_stack, train, TrainConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let weights = std::env::args()
        .nth(1)
        .ok_or("usage: finetune WEIGHTS.safetensors")?;
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/fashion-mnist-subset");
    let idx = |split: &str| {
        read_idx_pair(
            &data.join(format!("{split}-images-idx3-ubyte.gz")),
            &data.join(format!("{split}-labels-idx1-ubyte.gz")),
            10,
        )
    };
    let (train_set, test_set) = (idx("train")?, idx("t10k")?);

    let hw = HwMap::All("sc:len=32,acc=or2".parse()?);
    let model = load(
        ModelKind::TinyConv,
        Path::new(&weights),
        train_set.shape,
        10,
        &hw,
        ExecMode::Accurate,
        false,
    )?;
    on_large_stack(|| -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        println!(
            "float {:.2} %",
            100.0 * evaluate(&model, &test_set, ExecMode::Float, 100)?
        );
        println!(
            "on {hw} before: {:.2} %",
            100.0 * evaluate(&model, &test_set, ExecMode::Accurate, 100)?
        );
        let config = TrainConfig::recipe(64, 0, 3, "inject:2,accurate:1".parse()?, 1e-3);
        train(
            &model,
            &train_set,
            None,
            &config,
            false,
            &AtomicBool::new(false),
            &mut |_| {},
        )?;
        println!(
            "on {hw} after: {:.2} %",
            100.0 * evaluate(&model, &test_set, ExecMode::Accurate, 100)?
        );
        save(&model, Path::new("finetuned.safetensors"), &hw)?;
        Ok(())
    })
    .map_err(|e| e as Box<dyn std::error::Error>)
}

//! `--data`: the embedded Fashion-MNIST subset, or a full data set from a folder.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use approx_train::data::{idx_pair_from_bytes, read_cifar10, read_idx_pair, Dataset};

/// The embedded subset: the first 6,000 training and 1,000 test images of
/// Fashion-MNIST (MIT; see `data/fashion-mnist-subset/README.md`).
const SUBSET_TRAIN_IMAGES: &[u8] =
    include_bytes!("../../../data/fashion-mnist-subset/train-images-idx3-ubyte.gz");
const SUBSET_TRAIN_LABELS: &[u8] =
    include_bytes!("../../../data/fashion-mnist-subset/train-labels-idx1-ubyte.gz");
const SUBSET_TEST_IMAGES: &[u8] =
    include_bytes!("../../../data/fashion-mnist-subset/t10k-images-idx3-ubyte.gz");
const SUBSET_TEST_LABELS: &[u8] =
    include_bytes!("../../../data/fashion-mnist-subset/t10k-labels-idx1-ubyte.gz");

/// Where the data comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum DataSource {
    /// The embedded Fashion-MNIST subset.
    Embedded,
    /// Full MNIST IDX files (raw or .gz) in a folder.
    Mnist(PathBuf),
    /// Full Fashion-MNIST IDX files in a folder.
    FashionMnist(PathBuf),
    /// CIFAR-10 binary batches in a folder.
    Cifar10(PathBuf),
}

/// The `--data` help text.
pub const DATA_HELP: &str = "Data set: `fashion-mnist-subset` (embedded, the default), `fashion-mnist:DIR`, `mnist:DIR` (IDX files, raw or .gz; scripts/fetch-data.sh fetches them) or `cifar10:DIR` (binary batches)";

impl std::str::FromStr for DataSource {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s == "fashion-mnist-subset" {
            return Ok(DataSource::Embedded);
        }
        let (kind, dir) = s.split_once(':').ok_or_else(|| format!("bad --data `{s}`: expected fashion-mnist-subset, fashion-mnist:DIR, mnist:DIR or cifar10:DIR"))?;
        let dir = PathBuf::from(dir);
        match kind {
            "mnist" => Ok(DataSource::Mnist(dir)),
            "fashion-mnist" => Ok(DataSource::FashionMnist(dir)),
            "cifar10" => Ok(DataSource::Cifar10(dir)),
            other => Err(format!("unknown data set `{other}` in --data `{s}`: expected fashion-mnist, mnist or cifar10")),
        }
    }
}

impl std::fmt::Display for DataSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DataSource::Embedded => f.write_str("fashion-mnist-subset"),
            DataSource::Mnist(d) => write!(f, "mnist:{}", d.display()),
            DataSource::FashionMnist(d) => write!(f, "fashion-mnist:{}", d.display()),
            DataSource::Cifar10(d) => write!(f, "cifar10:{}", d.display()),
        }
    }
}

/// The IDX file `stem` in `dir`, raw or gzipped.
fn idx_file(dir: &Path, stem: &str) -> Result<PathBuf> {
    for name in [format!("{stem}.gz"), stem.to_string()] {
        let p = dir.join(&name);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "no `{stem}` or `{stem}.gz` in `{}` (scripts/fetch-data.sh fetches the full sets)",
        dir.display()
    )
}

impl DataSource {
    /// The training and test sets.
    pub fn load(&self) -> Result<(Dataset, Dataset)> {
        let sets: Result<(Dataset, Dataset)> = Ok(match self {
            DataSource::Embedded => {
                let name = |n: &str| PathBuf::from(format!("<embedded>/{n}"));
                let train = idx_pair_from_bytes(
                    (&name("train-images"), SUBSET_TRAIN_IMAGES),
                    (&name("train-labels"), SUBSET_TRAIN_LABELS),
                    10,
                )?;
                let test = idx_pair_from_bytes(
                    (&name("t10k-images"), SUBSET_TEST_IMAGES),
                    (&name("t10k-labels"), SUBSET_TEST_LABELS),
                    10,
                )?;
                (train, test)
            }
            DataSource::Mnist(dir) | DataSource::FashionMnist(dir) => {
                let pair = |split: &str| -> Result<Dataset> {
                    let images = idx_file(dir, &format!("{split}-images-idx3-ubyte"))?;
                    let labels = idx_file(dir, &format!("{split}-labels-idx1-ubyte"))?;
                    Ok(read_idx_pair(&images, &labels, 10)?)
                };
                (pair("train")?, pair("t10k")?)
            }
            DataSource::Cifar10(dir) => {
                let train: Vec<PathBuf> = (1..=5)
                    .map(|i| dir.join(format!("data_batch_{i}.bin")))
                    .collect();
                let refs: Vec<&Path> = train.iter().map(PathBuf::as_path).collect();
                let test = dir.join("test_batch.bin");
                (read_cifar10(&refs)?, read_cifar10(&[&test])?)
            }
        });
        sets.with_context(|| format!("loading --data {self}"))
    }
}

/// Data options shared by the training and evaluation commands.
#[derive(Debug, Clone, clap::Args)]
pub struct DataArgs {
    #[arg(long, default_value = "fashion-mnist-subset", help = DATA_HELP)]
    pub data: DataSource,
    /// Use only the first N training images (e.g. for a quick trial).
    #[arg(long)]
    pub train_images: Option<usize>,
    /// Use only the first N test images.
    #[arg(long)]
    pub test_images: Option<usize>,
}

impl DataArgs {
    /// The training and test sets, cut to the requested sizes.
    pub fn load(&self) -> Result<(Dataset, Dataset)> {
        let (mut train, mut test) = self.data.load()?;
        if let Some(n) = self.train_images {
            train = train.take(n);
        }
        if let Some(n) = self.test_images {
            test = test.take(n);
        }
        if train.is_empty() || test.is_empty() {
            bail!("--data {}: no images left to train or test on", self.data);
        }
        tracing::info!(
            "data {}: {} training, {} test images of {:?}",
            self.data,
            train.len(),
            test.len(),
            train.shape
        );
        Ok((train, test))
    }
}

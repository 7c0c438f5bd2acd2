//! Image classification data sets in memory, their file formats, and batching with
//! seeded shuffling and augmentation.

mod augment;
mod cifar;
mod idx;
mod loader;

pub use augment::Augment;
pub use cifar::read_cifar10;
pub use idx::{idx_pair_from_bytes, read_idx_images, read_idx_labels, read_idx_pair, Images};
pub use loader::Batches;

use std::fmt;
use std::path::{Path, PathBuf};

/// Largest number of images a loader accepts (far above any image data set that
/// fits in memory here), so that a corrupt header cannot ask for an absurd
/// allocation.
pub const MAX_IMAGES: usize = 10_000_000;
/// Largest image side, in pixels.
pub const MAX_SIDE: usize = 4096;
/// Largest amount of pixel data one file may hold, in bytes (one byte per pixel in
/// IDX and CIFAR files; in memory a [`Dataset`] holds 4 bytes per pixel): 1 GiB, 20x
/// full MNIST. Data sets are held in memory whole, so a larger one would not fit most
/// machines; to raise the limit, change this constant.
pub const MAX_PIXEL_BYTES: u64 = 1 << 30;

/// What went wrong reading a data file: always names the file.
#[derive(Debug, thiserror::Error)]
#[error("data file `{}`: {message}", path.display())]
pub struct DataError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub message: String,
}

impl DataError {
    pub(crate) fn new(path: &Path, message: impl Into<String>) -> Self {
        Self {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}

/// A labelled image data set, pixels as f32 in `[0, 1]`, images NCHW-contiguous.
#[derive(Clone, PartialEq)]
pub struct Dataset {
    /// Pixel values, `len · C · H · W`.
    pub images: Vec<f32>,
    /// Class of each image.
    pub labels: Vec<u8>,
    /// Channels, height, width of one image.
    pub shape: (usize, usize, usize),
    /// Number of classes.
    pub classes: usize,
}

impl fmt::Debug for Dataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Dataset {{ {} images {:?}, {} classes }}",
            self.len(),
            self.shape,
            self.classes
        )
    }
}

impl Dataset {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Values per image.
    pub fn image_len(&self) -> usize {
        self.shape.0 * self.shape.1 * self.shape.2
    }

    /// The first `n` images (all if fewer).
    pub fn take(&self, n: usize) -> Dataset {
        let n = n.min(self.len());
        Dataset {
            images: self.images[..n * self.image_len()].to_vec(),
            labels: self.labels[..n].to_vec(),
            ..self.clone()
        }
    }
}

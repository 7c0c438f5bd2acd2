//! Batches of a data set for one epoch: a seeded permutation and per-batch seeded
//! augmentation, so that a run resumed at any batch sees the same data as one that
//! never stopped.

use candle_core::{Device, Result, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::{Augment, Dataset};
use approx_hw::rng::mix;

/// The batches of one epoch, in order: `(images [B, C, H, W] f32, labels [B] u32)`.
/// The last batch may be smaller.
pub struct Batches<'a> {
    data: &'a Dataset,
    order: Vec<usize>,
    batch: usize,
    next: usize,
    augment: Augment,
    key: u64,
}

impl<'a> Batches<'a> {
    /// The batches of epoch `epoch` of a run seeded with `seed`: shuffled when
    /// `shuffle`, augmented with `augment`.
    pub fn new(
        data: &'a Dataset,
        batch: usize,
        shuffle: bool,
        augment: Augment,
        seed: u64,
        epoch: u64,
    ) -> Self {
        let key = mix(mix(seed) ^ epoch);
        let mut order: Vec<usize> = (0..data.len()).collect();
        if shuffle {
            order.shuffle(&mut ChaCha8Rng::seed_from_u64(key));
        }
        Self {
            data,
            order,
            batch: batch.max(1),
            next: 0,
            augment,
            key,
        }
    }

    /// Batches in the epoch.
    pub fn batches(&self) -> usize {
        self.order.len().div_ceil(self.batch)
    }

    /// Continues from batch `index` (for a resumed run).
    pub fn skip_to(&mut self, index: usize) {
        self.next = index;
    }

    /// The batch at `index` (its augmentation seeded by the index).
    pub fn get(&self, index: usize) -> Result<(Tensor, Tensor)> {
        let d = self.data;
        let ids = &self.order[(index * self.batch).min(self.order.len())
            ..((index + 1) * self.batch).min(self.order.len())];
        let len = d.image_len();
        let mut images = Vec::with_capacity(ids.len() * len);
        let mut rng = ChaCha8Rng::seed_from_u64(mix(self.key ^ mix(index as u64 + 1)));
        for &i in ids {
            let start = images.len();
            images.extend_from_slice(&d.images[i * len..(i + 1) * len]);
            if !self.augment.is_identity() {
                self.augment.apply(&mut images[start..], d.shape, &mut rng);
            }
        }
        let labels: Vec<u32> = ids.iter().map(|&i| u32::from(d.labels[i])).collect();
        let (c, h, w) = d.shape;
        Ok((
            Tensor::from_vec(images, (ids.len(), c, h, w), &Device::Cpu)?,
            Tensor::from_vec(labels, ids.len(), &Device::Cpu)?,
        ))
    }
}

impl Iterator for Batches<'_> {
    type Item = Result<(Tensor, Tensor)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.batches() {
            return None;
        }
        self.next += 1;
        Some(self.get(self.next - 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Dataset {
        Dataset {
            images: (0..10 * 4).map(|i| i as f32).collect(),
            labels: (0..10).collect(),
            shape: (1, 2, 2),
            classes: 10,
        }
    }

    #[test]
    fn epochs_are_seeded_permutations_and_resumable() {
        let data = tiny();
        let labels = |b: Batches| -> Vec<u32> {
            b.flat_map(|r| r.unwrap().1.to_vec1::<u32>().unwrap())
                .collect()
        };
        let a = labels(Batches::new(&data, 3, true, Augment::default(), 7, 0));
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..10).collect::<Vec<u32>>());
        assert_eq!(
            a,
            labels(Batches::new(&data, 3, true, Augment::default(), 7, 0))
        );
        assert_ne!(
            a,
            labels(Batches::new(&data, 3, true, Augment::default(), 7, 1))
        );
        let mut resumed = Batches::new(
            &data,
            3,
            true,
            Augment {
                crop_padding: 1,
                hflip: true,
            },
            7,
            0,
        );
        let full: Vec<Vec<f32>> = Batches::new(
            &data,
            3,
            true,
            Augment {
                crop_padding: 1,
                hflip: true,
            },
            7,
            0,
        )
        .map(|b| b.unwrap().0.flatten_all().unwrap().to_vec1().unwrap())
        .collect();
        resumed.skip_to(2);
        let tail: Vec<Vec<f32>> = resumed
            .map(|b| b.unwrap().0.flatten_all().unwrap().to_vec1().unwrap())
            .collect();
        assert_eq!(tail, full[2..].to_vec());
        assert_eq!(full.len(), 4);
        assert_eq!(full[3].len(), 4);
    }
}

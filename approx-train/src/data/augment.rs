//! Training-time augmentation: random crop with zero padding and horizontal flip, as
//! the paper's CIFAR recipe uses.

use rand::Rng;

/// Augmentation applied to each training image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Augment {
    /// Random crop of the original size from the image padded by this many zero pixels
    /// on each side (0: no crop).
    pub crop_padding: usize,
    /// Flip horizontally with probability 1/2.
    pub hflip: bool,
}

impl Augment {
    /// Whether this does nothing.
    pub fn is_identity(&self) -> bool {
        self.crop_padding == 0 && !self.hflip
    }

    /// Augments one CHW image in place, drawing from `rng`.
    pub fn apply(&self, image: &mut [f32], (c, h, w): (usize, usize, usize), rng: &mut impl Rng) {
        let p = self.crop_padding as i64;
        let (dy, dx) = if p > 0 {
            (
                rng.random_range(-p..=p) as isize,
                rng.random_range(-p..=p) as isize,
            )
        } else {
            (0, 0)
        };
        let flip = self.hflip && rng.random_bool(0.5);
        if dy == 0 && dx == 0 && !flip {
            return;
        }
        let src = image.to_vec();
        for ch in 0..c {
            for y in 0..h {
                for x in 0..w {
                    let sx = if flip { w - 1 - x } else { x } as isize + dx;
                    let sy = y as isize + dy;
                    image[(ch * h + y) * w + x] =
                        if (0..h as isize).contains(&sy) && (0..w as isize).contains(&sx) {
                            src[(ch * h + sy as usize) * w + sx as usize]
                        } else {
                            0.0
                        };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn flip_and_crop_move_pixels() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let flip = Augment {
            crop_padding: 0,
            hflip: true,
        };
        let mut seen_flip = false;
        for _ in 0..8 {
            let mut img = vec![1.0, 2.0, 3.0, 4.0];
            flip.apply(&mut img, (1, 2, 2), &mut rng);
            assert!(img == vec![1.0, 2.0, 3.0, 4.0] || img == vec![2.0, 1.0, 4.0, 3.0]);
            seen_flip |= img[0] == 2.0;
        }
        assert!(seen_flip);
        let crop = Augment {
            crop_padding: 1,
            hflip: false,
        };
        for _ in 0..8 {
            let mut img = vec![1.0; 9];
            crop.apply(&mut img, (1, 3, 3), &mut rng);
            // Shifting by at most one pixel keeps the centre and zero-fills an edge.
            assert_eq!(img[4], 1.0);
            assert!(img.iter().filter(|&&v| v == 1.0).count() >= 4);
        }
    }
}

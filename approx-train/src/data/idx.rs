//! The IDX format of MNIST and Fashion-MNIST (`train-images-idx3-ubyte` etc.), raw or
//! gzip-compressed (detected by the gzip magic bytes).

use std::io::Read;
use std::path::Path;

use super::{DataError, Dataset, MAX_IMAGES, MAX_SIDE};

/// IDX magic of unsigned-byte tensors of rank 3 (images) and rank 1 (labels).
const IMAGES_MAGIC: u32 = 0x0000_0803;
const LABELS_MAGIC: u32 = 0x0000_0801;

/// Reads a file, gunzipping it when it starts with the gzip magic; refuses files
/// whose (decompressed) size exceeds `limit` bytes.
fn read_maybe_gz(path: &Path, limit: u64) -> Result<Vec<u8>, DataError> {
    let raw = std::fs::read(path).map_err(|e| DataError::new(path, e.to_string()))?;
    maybe_gunzip(path, raw, limit)
}

/// `raw`, gunzipped when it starts with the gzip magic (errors name `path`).
fn maybe_gunzip(path: &Path, raw: Vec<u8>, limit: u64) -> Result<Vec<u8>, DataError> {
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .take(limit + 1)
            .read_to_end(&mut out)
            .map_err(|e| DataError::new(path, format!("bad gzip data: {e}")))?;
        if out.len() as u64 > limit {
            return Err(DataError::new(
                path,
                format!("decompresses to more than {limit} bytes"),
            ));
        }
        Ok(out)
    } else {
        Ok(raw)
    }
}

fn header(path: &Path, bytes: &[u8], magic: u32, rank: usize) -> Result<Vec<usize>, DataError> {
    let need = 4 + 4 * rank;
    if bytes.len() < need {
        return Err(DataError::new(
            path,
            format!(
                "{} bytes is too short for an IDX header of rank {rank}",
                bytes.len()
            ),
        ));
    }
    let word = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    if word(0) != magic {
        return Err(DataError::new(
            path,
            format!("IDX magic is {:#010x}, expected {magic:#010x}", word(0)),
        ));
    }
    let dims: Vec<usize> = (0..rank).map(|i| word(4 + 4 * i) as usize).collect();
    let count: Option<usize> = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    match count {
        Some(c) if bytes.len() - need == c => Ok(dims),
        Some(c) => Err(DataError::new(
            path,
            format!(
                "header {dims:?} asks for {c} data bytes, the file has {}",
                bytes.len() - need
            ),
        )),
        None => Err(DataError::new(path, format!("header {dims:?} overflows"))),
    }
}

/// Pixels in `[0, 1]` and the (channels, height, width) of one image.
pub type Images = (Vec<f32>, (usize, usize, usize));

/// Largest decompressed image file, in bytes.
const MAX_IMAGE_BYTES: u64 = (MAX_IMAGES * 28 * 28 * 4) as u64;

/// Reads an IDX image file (rank 3, u8) as `[0, 1]` floats with one channel.
pub fn read_idx_images(path: &Path) -> Result<Images, DataError> {
    images_from(path, read_maybe_gz(path, MAX_IMAGE_BYTES)?)
}

fn images_from(path: &Path, bytes: Vec<u8>) -> Result<Images, DataError> {
    let dims = header(path, &bytes, IMAGES_MAGIC, 3)?;
    if dims[0] > MAX_IMAGES || dims[1] > MAX_SIDE || dims[2] > MAX_SIDE {
        return Err(DataError::new(path, format!("header {dims:?} exceeds the limits of {MAX_IMAGES} images of {MAX_SIDE}x{MAX_SIDE}")));
    }
    let images = bytes[16..].iter().map(|&b| f32::from(b) / 255.0).collect();
    Ok((images, (1, dims[1], dims[2])))
}

/// Reads an IDX label file (rank 1, u8).
pub fn read_idx_labels(path: &Path) -> Result<Vec<u8>, DataError> {
    labels_from(path, read_maybe_gz(path, MAX_IMAGES as u64 + 8)?)
}

fn labels_from(path: &Path, bytes: Vec<u8>) -> Result<Vec<u8>, DataError> {
    header(path, &bytes, LABELS_MAGIC, 1)?;
    Ok(bytes[8..].to_vec())
}

/// Reads an image file and its label file as a data set of `classes` classes,
/// checking that they agree in length and that every label is below `classes`.
pub fn read_idx_pair(images: &Path, labels: &Path, classes: usize) -> Result<Dataset, DataError> {
    pair(
        images,
        read_idx_images(images)?,
        labels,
        read_idx_labels(labels)?,
        classes,
    )
}

/// [`read_idx_pair`] on file contents already in memory (raw or gzip), e.g. data
/// compiled into a binary; `images` and `labels` name them in errors.
pub fn idx_pair_from_bytes(
    images: (&Path, &[u8]),
    labels: (&Path, &[u8]),
    classes: usize,
) -> Result<Dataset, DataError> {
    let pixels = images_from(
        images.0,
        maybe_gunzip(images.0, images.1.to_vec(), MAX_IMAGE_BYTES)?,
    )?;
    let label_data = labels_from(
        labels.0,
        maybe_gunzip(labels.0, labels.1.to_vec(), MAX_IMAGES as u64 + 8)?,
    )?;
    pair(images.0, pixels, labels.0, label_data, classes)
}

fn pair(
    images: &Path,
    (pixels, shape): Images,
    labels: &Path,
    label_data: Vec<u8>,
    classes: usize,
) -> Result<Dataset, DataError> {
    let n = pixels.len() / (shape.1 * shape.2).max(1);
    if label_data.len() != n {
        return Err(DataError::new(
            labels,
            format!(
                "has {} labels for the {n} images of `{}`",
                label_data.len(),
                images.display()
            ),
        ));
    }
    if let Some((i, l)) = label_data
        .iter()
        .enumerate()
        .find(|(_, &l)| usize::from(l) >= classes)
    {
        return Err(DataError::new(
            labels,
            format!("label {l} of image {i} is not below {classes}"),
        ));
    }
    Ok(Dataset {
        images: pixels,
        labels: label_data,
        shape,
        classes,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// Bytes of an IDX image file with `n` images of `h` x `w`.
    pub(crate) fn idx_images(n: usize, h: usize, w: usize, pixel: impl Fn(usize) -> u8) -> Vec<u8> {
        let mut b = IMAGES_MAGIC.to_be_bytes().to_vec();
        for d in [n, h, w] {
            b.extend((d as u32).to_be_bytes());
        }
        b.extend((0..n * h * w).map(pixel));
        b
    }

    pub(crate) fn idx_labels(labels: &[u8]) -> Vec<u8> {
        let mut b = LABELS_MAGIC.to_be_bytes().to_vec();
        b.extend((labels.len() as u32).to_be_bytes());
        b.extend_from_slice(labels);
        b
    }

    #[test]
    fn reads_raw_and_gzip_and_refuses_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("img");
        std::fs::write(&img, idx_images(3, 2, 2, |i| (i * 20) as u8)).unwrap();
        let lab = dir.path().join("lab.gz");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&idx_labels(&[1, 0, 9])).unwrap();
        std::fs::write(&lab, gz.finish().unwrap()).unwrap();
        let ds = read_idx_pair(&img, &lab, 10).unwrap();
        assert_eq!(ds.len(), 3);
        assert_eq!(ds.shape, (1, 2, 2));
        assert_eq!(ds.labels, vec![1, 0, 9]);
        assert_eq!(ds.images[1], 20.0 / 255.0);

        let err = read_idx_pair(&img, &lab, 9).unwrap_err().to_string();
        assert!(err.contains("label 9 of image 2"), "{err}");
        let mut truncated = idx_images(3, 2, 2, |_| 0);
        truncated.pop();
        std::fs::write(&img, &truncated).unwrap();
        let err = read_idx_images(&img).unwrap_err().to_string();
        assert!(
            err.contains("asks for 12 data bytes, the file has 11") && err.contains("img"),
            "{err}"
        );
        std::fs::write(&img, idx_labels(&[1; 20])).unwrap();
        assert!(read_idx_images(&img)
            .unwrap_err()
            .to_string()
            .contains("magic"));
        let mut huge = IMAGES_MAGIC.to_be_bytes().to_vec();
        for d in [u32::MAX, u32::MAX, u32::MAX] {
            huge.extend(d.to_be_bytes());
        }
        std::fs::write(&img, &huge).unwrap();
        assert!(read_idx_images(&img).is_err());
        std::fs::write(&img, [0x1f, 0x8b, 0, 1]).unwrap();
        assert!(read_idx_images(&img)
            .unwrap_err()
            .to_string()
            .contains("gzip"));
        let short = idx_labels(&[1, 2]);
        std::fs::write(&lab, short).unwrap();
        std::fs::write(&img, idx_images(3, 2, 2, |_| 0)).unwrap();
        assert!(read_idx_pair(&img, &lab, 10)
            .unwrap_err()
            .to_string()
            .contains("2 labels for the 3 images"));
    }
}

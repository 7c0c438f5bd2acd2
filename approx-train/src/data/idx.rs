//! The IDX format of MNIST and Fashion-MNIST (`train-images-idx3-ubyte` etc.), raw or
//! gzip-compressed (detected by the gzip magic bytes).
//!
//! The header is read first and checked against the limits of [`super`]; the data is
//! then read up to the size the header announces, so neither a corrupt header nor a
//! gzip bomb can make a loader allocate more than the limits allow.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use super::{DataError, Dataset, MAX_IMAGES, MAX_PIXEL_BYTES, MAX_SIDE};

/// IDX magic of unsigned-byte tensors of rank 3 (images) and rank 1 (labels).
const IMAGES_MAGIC: u32 = 0x0000_0803;
const LABELS_MAGIC: u32 = 0x0000_0801;

/// An IDX file's dimensions and data bytes.
struct Idx {
    dims: Vec<usize>,
    data: Vec<u8>,
}

/// Reads an IDX tensor of `rank` with `magic` from `source` (raw or gzip), refusing
/// headers whose dimensions `fits` rejects before reading any data. Errors name `path`.
fn read_idx(
    path: &Path,
    mut source: impl BufRead,
    magic: u32,
    rank: usize,
    fits: impl Fn(&[usize]) -> Result<(), String>,
) -> Result<Idx, DataError> {
    let gzip = source
        .fill_buf()
        .map_err(|e| DataError::new(path, e.to_string()))?
        .starts_with(&[0x1f, 0x8b]);
    let mut reader: Box<dyn Read + '_> = if gzip {
        Box::new(flate2::bufread::GzDecoder::new(source))
    } else {
        Box::new(source)
    };
    let read_error = |e: std::io::Error| {
        if gzip {
            DataError::new(path, format!("bad gzip data: {e}"))
        } else {
            DataError::new(path, e.to_string())
        }
    };
    let mut head = vec![0u8; 4 + 4 * rank];
    let got = read_up_to(&mut reader, &mut head).map_err(read_error)?;
    if got < head.len() {
        return Err(DataError::new(
            path,
            format!("{got} bytes is too short for an IDX header of rank {rank}"),
        ));
    }
    let word = |i: usize| u32::from_be_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
    if word(0) != magic {
        return Err(DataError::new(
            path,
            format!("IDX magic is {:#010x}, expected {magic:#010x}", word(0)),
        ));
    }
    let dims: Vec<usize> = (0..rank).map(|i| word(4 + 4 * i) as usize).collect();
    fits(&dims).map_err(|m| DataError::new(path, format!("header {dims:?} {m}")))?;
    let count = dims
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
        .filter(|&c| c <= MAX_PIXEL_BYTES)
        .ok_or_else(|| {
            DataError::new(
                path,
                format!(
                    "header {dims:?} asks for more than the limit of {MAX_PIXEL_BYTES} data bytes"
                ),
            )
        })?;
    let mut data = Vec::with_capacity(count as usize);
    reader
        .take(count + 1)
        .read_to_end(&mut data)
        .map_err(read_error)?;
    match (data.len() as u64).cmp(&count) {
        std::cmp::Ordering::Equal => Ok(Idx { dims, data }),
        std::cmp::Ordering::Less => Err(DataError::new(
            path,
            format!(
                "header {dims:?} asks for {count} data bytes, the file has {}",
                data.len()
            ),
        )),
        std::cmp::Ordering::Greater => Err(DataError::new(
            path,
            format!("has more than the {count} data bytes its header {dims:?} asks for"),
        )),
    }
}

/// Fills `buf` as far as `reader` goes; the number of bytes read.
fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

fn open(path: &Path) -> Result<BufReader<std::fs::File>, DataError> {
    std::fs::File::open(path)
        .map(BufReader::new)
        .map_err(|e| DataError::new(path, e.to_string()))
}

/// Pixels in `[0, 1]` and the (channels, height, width) of one image.
pub type Images = (Vec<f32>, (usize, usize, usize));

/// Reads an IDX image file (rank 3, u8) as `[0, 1]` floats with one channel.
pub fn read_idx_images(path: &Path) -> Result<Images, DataError> {
    images_from(path, open(path)?)
}

fn images_from(path: &Path, source: impl BufRead) -> Result<Images, DataError> {
    let idx = read_idx(path, source, IMAGES_MAGIC, 3, |dims| {
        if dims[0] > MAX_IMAGES || dims[1] > MAX_SIDE || dims[2] > MAX_SIDE {
            Err(format!(
                "exceeds the limits of {MAX_IMAGES} images of {MAX_SIDE}x{MAX_SIDE}"
            ))
        } else {
            Ok(())
        }
    })?;
    let images = idx.data.iter().map(|&b| f32::from(b) / 255.0).collect();
    Ok((images, (1, idx.dims[1], idx.dims[2])))
}

/// Reads an IDX label file (rank 1, u8).
pub fn read_idx_labels(path: &Path) -> Result<Vec<u8>, DataError> {
    labels_from(path, open(path)?)
}

fn labels_from(path: &Path, source: impl BufRead) -> Result<Vec<u8>, DataError> {
    let idx = read_idx(path, source, LABELS_MAGIC, 1, |dims| {
        if dims[0] > MAX_IMAGES {
            Err(format!("exceeds the limit of {MAX_IMAGES} labels"))
        } else {
            Ok(())
        }
    })?;
    Ok(idx.data)
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
    let pixels = images_from(images.0, images.1)?;
    let label_data = labels_from(labels.0, labels.1)?;
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

    /// Absurd headers and oversized data are refused before the data is read: a
    /// header asking for 2^40 pixels in a 16-byte file, a 1 TiB (sparse) raw file and
    /// a gzip stream that inflates far past what its header announces.
    #[test]
    fn absurd_sizes_are_refused_before_reading_the_data() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("img");
        let mut header = IMAGES_MAGIC.to_be_bytes().to_vec();
        for d in [1u32 << 20, 1 << 10, 1 << 10] {
            header.extend(d.to_be_bytes());
        }
        std::fs::write(&img, &header).unwrap();
        let err = read_idx_images(&img).unwrap_err().to_string();
        assert!(
            err.contains("img")
                && err.contains(
                    "[1048576, 1024, 1024] asks for more than the limit of 1073741824 data bytes"
                ),
            "{err}"
        );

        let sparse = dir.path().join("sparse");
        std::fs::write(&sparse, idx_images(1, 2, 2, |_| 7)).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&sparse)
            .unwrap()
            .set_len(1 << 40)
            .unwrap();
        let err = read_idx_images(&sparse).unwrap_err().to_string();
        assert!(
            err.contains("has more than the 4 data bytes its header [1, 2, 2] asks for"),
            "{err}"
        );

        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&idx_images(1, 2, 2, |_| 7)).unwrap();
        for _ in 0..64 {
            gz.write_all(&[0u8; 1 << 20]).unwrap();
        }
        let bomb = dir.path().join("bomb.gz");
        std::fs::write(&bomb, gz.finish().unwrap()).unwrap();
        assert!(std::fs::metadata(&bomb).unwrap().len() < 1 << 20);
        let err = read_idx_images(&bomb).unwrap_err().to_string();
        assert!(
            err.contains("bomb.gz") && err.contains("has more than the 4 data bytes"),
            "{err}"
        );

        let mut labels = LABELS_MAGIC.to_be_bytes().to_vec();
        labels.extend(u32::MAX.to_be_bytes());
        std::fs::write(&img, &labels).unwrap();
        let err = read_idx_labels(&img).unwrap_err().to_string();
        assert!(
            err.contains("exceeds the limit of 10000000 labels"),
            "{err}"
        );
    }
}

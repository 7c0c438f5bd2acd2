//! The CIFAR-10 binary format: records of one label byte and 3x32x32 pixel bytes
//! (`data_batch_1.bin` .. `data_batch_5.bin`, `test_batch.bin`).

use std::path::Path;

use super::{DataError, Dataset, MAX_PIXEL_BYTES};

const RECORD: usize = 1 + 3 * 32 * 32;

/// Reads and concatenates CIFAR-10 binary batch files.
pub fn read_cifar10(paths: &[&Path]) -> Result<Dataset, DataError> {
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for &path in paths {
        let meta = std::fs::metadata(path).map_err(|e| DataError::new(path, e.to_string()))?;
        if meta.len() % RECORD as u64 != 0 {
            return Err(DataError::new(
                path,
                format!(
                    "{} bytes is not a whole number of {RECORD}-byte CIFAR-10 records",
                    meta.len()
                ),
            ));
        }
        if images.len() as u64 + meta.len() > MAX_PIXEL_BYTES {
            return Err(DataError::new(
                path,
                format!(
                    "{} bytes would take the data set past the limit of {MAX_PIXEL_BYTES} bytes",
                    meta.len()
                ),
            ));
        }
        let bytes = std::fs::read(path).map_err(|e| DataError::new(path, e.to_string()))?;
        for (i, rec) in bytes.chunks_exact(RECORD).enumerate() {
            if rec[0] >= 10 {
                return Err(DataError::new(
                    path,
                    format!("record {i} has label {}, expected 0..=9", rec[0]),
                ));
            }
            labels.push(rec[0]);
            images.extend(rec[1..].iter().map(|&b| f32::from(b) / 255.0));
        }
    }
    Ok(Dataset {
        images,
        labels,
        shape: (3, 32, 32),
        classes: 10,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_records_and_refuses_partial_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data_batch_1.bin");
        let mut bytes = Vec::new();
        for label in [3u8, 7] {
            bytes.push(label);
            bytes.extend((0..3072).map(|i| (i % 256) as u8));
        }
        std::fs::write(&path, &bytes).unwrap();
        let ds = read_cifar10(&[&path, &path]).unwrap();
        assert_eq!(ds.labels, vec![3, 7, 3, 7]);
        assert_eq!(ds.images.len(), 4 * 3072);
        assert_eq!(ds.images[1], 1.0 / 255.0);
        bytes.pop();
        std::fs::write(&path, &bytes).unwrap();
        assert!(read_cifar10(&[&path])
            .unwrap_err()
            .to_string()
            .contains("whole number"));
        bytes.push(0);
        bytes[0] = 10;
        std::fs::write(&path, &bytes).unwrap();
        assert!(read_cifar10(&[&path])
            .unwrap_err()
            .to_string()
            .contains("record 0 has label 10"));
    }

    /// A batch file past the size limit (a sparse 1 TiB file here) is refused from
    /// its size alone, before it is read.
    #[test]
    fn oversized_files_are_refused_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data_batch_1.bin");
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(RECORD as u64 * (1 << 30)).unwrap();
        let err = read_cifar10(&[&path]).unwrap_err().to_string();
        assert!(
            err.contains("data_batch_1.bin") && err.contains("past the limit of 1073741824 bytes"),
            "{err}"
        );
    }
}

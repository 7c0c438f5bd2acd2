//! Product tables: what a layer looks up for every (activation, weight) code pair.
//!
//! # User tables (`lut=PATH`)
//!
//! A table holds 256 x 256 integers, row-major: entry `i·256 + j` is the product of
//! activation byte `i` and weight byte `j`. With `signed=true` the bytes are
//! two's-complement codes, ordered `[0..127, −128..−1]` as EvoApproxLib and
//! TorchApprox index signed tables (so entry `255·256 + 1` is the product of −1 and 1);
//! with `signed=false` they are unsigned codes and the weight's sign is applied outside
//! the multiplier (sign-magnitude). Accepted files:
//!
//! - raw little-endian `i32`, exactly 262,144 bytes;
//! - raw little-endian 16-bit, exactly 131,072 bytes: `u16` for unsigned tables, `i16`
//!   for signed ones;
//! - text (`.txt`, `.csv` or `.tsv`): 65,536 integers separated by whitespace or
//!   commas; lines starting with `#` are comments.
//!
//! Entries must lie in `±2^24` (`0..=2^24` for unsigned tables); a layer refuses a
//! fan-in whose worst-case sum (fan-in times the largest entry) could overflow its
//! exact i32 accumulator.

use std::path::Path;

use super::design::Design;
use super::spec::{MultSpec, Multiplier};
use crate::{HwError, Result};

/// The largest magnitude a table entry may have.
pub const MAX_ENTRY: i32 = 1 << 24;

/// Largest text table file accepted, in bytes.
const MAX_TEXT_BYTES: u64 = 16 << 20;

/// The products of every activation code with every weight code, laid out for the
/// kernels: one row of 256 entries per weight code, indexed by the activation byte.
#[derive(Debug, Clone)]
pub struct MulTable {
    /// `rows · 256` entries: row [`Self::weight_row`], column [`Self::act_index`].
    entries: Vec<i32>,
    signed: bool,
    max_abs: i32,
}

impl MulTable {
    /// The table of `spec`'s multiplier (reads the file for `lut=PATH`).
    pub fn for_spec(spec: &MultSpec) -> Result<Self> {
        let user = match &spec.multiplier {
            Multiplier::Design(design) => {
                return Ok(Self::from_design(*design, spec.signed));
            }
            Multiplier::Lut(path) => read_table(path, spec.signed)?,
        };
        Ok(Self::from_user(&user, spec.signed))
    }

    /// The table of a built-in unsigned design, wrapped in sign-magnitude for signed
    /// operands.
    pub fn from_design(design: Design, signed: bool) -> Self {
        let user: Vec<i32> = (0..65536usize)
            .map(|idx| {
                let (i, j) = ((idx >> 8) as u8, idx as u8);
                if signed {
                    let (a, w) = (i as i8, j as i8);
                    let magnitude = design.product(a.unsigned_abs(), w.unsigned_abs()) as i32;
                    magnitude * i32::from(a.signum()) * i32::from(w.signum())
                } else {
                    design.product(i, j) as i32
                }
            })
            .collect();
        Self::from_user(&user, signed)
    }

    /// Rearranges a user-order table (`i·256 + j`, activation byte `i`, weight byte
    /// `j`) into kernel order.
    fn from_user(user: &[i32], signed: bool) -> Self {
        let rows = if signed { 256 } else { 511 };
        let mut entries = vec![0; rows * 256];
        for row in 0..rows {
            let (weight_byte, sign) = if signed {
                (row, 1)
            } else {
                let w = row as i32 - 255;
                (w.unsigned_abs() as usize, w.signum())
            };
            for a in 0..256 {
                entries[row * 256 + a] = sign * user[a * 256 + weight_byte];
            }
        }
        let max_abs = entries.iter().map(|e| e.abs()).max().unwrap_or(0);
        Self {
            entries,
            signed,
            max_abs,
        }
    }

    /// The entries, row-major in rows of 256.
    pub fn entries(&self) -> &[i32] {
        &self.entries
    }

    /// The row of weight code `w`: its two's-complement byte when signed, `w + 255`
    /// otherwise.
    #[inline]
    pub fn weight_row(&self, w: i32) -> usize {
        if self.signed {
            usize::from(w as u8)
        } else {
            (w + 255) as usize
        }
    }

    /// The column of activation code `a`: its byte (two's complement when signed).
    #[inline]
    pub fn act_index(&self, a: i32) -> u8 {
        a as u8
    }

    /// The product of activation code `a` and weight code `w`.
    pub fn product(&self, a: i32, w: i32) -> i32 {
        self.entries[self.weight_row(w) * 256 + usize::from(self.act_index(a))]
    }

    /// The mean ratio of table product to exact product over all pairs of non-zero
    /// codes with magnitudes up to `qmax` (signed: both signs): 1 plus the design's
    /// mean relative bias over the codes a layer uses. The `mult` error model's gain.
    pub fn mean_gain(&self, qmax: i32) -> f64 {
        let lo = if self.signed { -qmax } else { 0 };
        let (mut sum, mut count) = (0f64, 0u32);
        for a in (lo..=qmax).filter(|&a| a != 0) {
            for w in (-qmax..=qmax).filter(|&w| w != 0) {
                sum += f64::from(self.product(a, w)) / f64::from(a * w);
                count += 1;
            }
        }
        sum / f64::from(count)
    }

    /// The largest magnitude of any entry.
    pub fn max_abs(&self) -> i32 {
        self.max_abs
    }
}

fn lut_error(path: &Path, message: impl Into<String>) -> HwError {
    HwError::Lut {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Reads a user table file in user order and checks its size and range.
pub fn read_table(path: &Path, signed: bool) -> Result<Vec<i32>> {
    let meta = std::fs::metadata(path).map_err(|e| lut_error(path, e.to_string()))?;
    let is_text = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "txt" | "csv" | "tsv"));
    if is_text && meta.len() > MAX_TEXT_BYTES {
        return Err(lut_error(
            path,
            format!(
                "text table of {} bytes is larger than the {MAX_TEXT_BYTES}-byte limit",
                meta.len()
            ),
        ));
    }
    if !is_text && meta.len() != 262_144 && meta.len() != 131_072 {
        return Err(lut_error(
            path,
            format!(
                "raw table has {} bytes; expected 262144 (256x256 i32) or 131072 (256x256 16-bit); name text tables .txt, .csv or .tsv",
                meta.len()
            ),
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| lut_error(path, e.to_string()))?;
    let entries: Vec<i32> = if is_text {
        parse_text(path, &bytes)?
    } else if bytes.len() == 262_144 {
        bytes
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    } else if bytes.len() == 131_072 {
        bytes
            .chunks_exact(2)
            .map(|c| {
                if signed {
                    i32::from(i16::from_le_bytes([c[0], c[1]]))
                } else {
                    i32::from(u16::from_le_bytes([c[0], c[1]]))
                }
            })
            .collect()
    } else {
        return Err(lut_error(path, "the file changed size while being read"));
    };
    let low = if signed { -MAX_ENTRY } else { 0 };
    if let Some((idx, v)) = entries
        .iter()
        .enumerate()
        .find(|(_, v)| !(low..=MAX_ENTRY).contains(*v))
    {
        return Err(lut_error(
            path,
            format!(
                "entry ({}, {}) is {v}, outside the allowed {low}..={MAX_ENTRY} for a{} table",
                idx / 256,
                idx % 256,
                if signed { " signed" } else { "n unsigned" }
            ),
        ));
    }
    Ok(entries)
}

fn parse_text(path: &Path, bytes: &[u8]) -> Result<Vec<i32>> {
    let text = std::str::from_utf8(bytes).map_err(|e| lut_error(path, e.to_string()))?;
    let mut entries = Vec::with_capacity(65536);
    for (line_no, line) in text.lines().enumerate() {
        if line.trim_start().starts_with('#') {
            continue;
        }
        for token in line
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|t| !t.is_empty())
        {
            let value: i32 = token.parse().map_err(|_| {
                lut_error(
                    path,
                    format!("line {}: `{token}` is not an integer", line_no + 1),
                )
            })?;
            if entries.len() == 65536 {
                return Err(lut_error(
                    path,
                    format!("line {}: more than 65536 entries", line_no + 1),
                ));
            }
            entries.push(value);
        }
    }
    if entries.len() != 65536 {
        return Err(lut_error(
            path,
            format!("has {} entries; expected 65536 (256x256)", entries.len()),
        ));
    }
    Ok(entries)
}

/// Writes a user-order table as raw little-endian i32 (the format [`read_table`]
/// takes), e.g. to export a built-in design for another simulator.
pub fn write_raw_i32(entries: &[i32]) -> Vec<u8> {
    entries.iter().flat_map(|e| e.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_wrapper_applies_signs() {
        let t = MulTable::from_design(Design::Mitchell, true);
        assert_eq!(t.product(3, 3), 8);
        assert_eq!(t.product(-3, 3), -8);
        assert_eq!(t.product(-3, -3), 8);
        assert_eq!(t.product(0, -7), 0);
        let u = MulTable::from_design(Design::Mitchell, false);
        assert_eq!(u.product(3, -3), -8);
        assert_eq!(u.product(255, 255), 65024);
        let exact = MulTable::from_design(Design::Exact, true);
        assert_eq!(exact.mean_gain(127), 1.0);
        // Over the unsigned 8-bit range the gain is 1 + the bias of table d.1.
        let gain = MulTable::from_design(Design::Mitchell, false).mean_gain(255);
        assert!((gain - (1.0 - 0.0379)).abs() < 5e-5, "{gain}");
    }

    fn user_order(design: Design, signed: bool) -> Vec<i32> {
        let t = MulTable::from_design(design, signed);
        (0..65536)
            .map(|idx| {
                let (i, j) = ((idx >> 8) as u8, idx as u8);
                if signed {
                    t.product(i32::from(i as i8), i32::from(j as i8))
                } else {
                    t.product(i32::from(i), i32::from(j))
                }
            })
            .collect()
    }

    #[test]
    fn file_round_trips_in_every_format() {
        let dir = tempfile::tempdir().unwrap();
        for signed in [true, false] {
            let user = user_order(Design::Drum(4), signed);
            let raw = dir.path().join("t.bin");
            std::fs::write(&raw, write_raw_i32(&user)).unwrap();
            assert_eq!(read_table(&raw, signed).unwrap(), user);
            let half = dir.path().join("t16.bin");
            let bytes: Vec<u8> = user
                .iter()
                .flat_map(|&e| {
                    if signed {
                        (e as i16).to_le_bytes()
                    } else {
                        (e as u16).to_le_bytes()
                    }
                })
                .collect();
            std::fs::write(&half, bytes).unwrap();
            assert_eq!(read_table(&half, signed).unwrap(), user);
            let text = dir.path().join("t.txt");
            let mut s = String::from("# drum4\n");
            for row in user.chunks(256) {
                let line: Vec<String> = row.iter().map(i32::to_string).collect();
                s.push_str(&line.join(" "));
                s.push('\n');
            }
            std::fs::write(&text, s).unwrap();
            assert_eq!(read_table(&text, signed).unwrap(), user);
        }
    }

    #[test]
    fn bad_tables_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short.bin");
        std::fs::write(&short, vec![0u8; 1000]).unwrap();
        let err = read_table(&short, true).unwrap_err().to_string();
        assert!(
            err.contains("short.bin") && err.contains("1000 bytes"),
            "{err}"
        );

        let long = dir.path().join("long.txt");
        std::fs::write(&long, "1 ".repeat(65537)).unwrap();
        let err = read_table(&long, true).unwrap_err().to_string();
        assert!(err.contains("more than 65536"), "{err}");

        let few = dir.path().join("few.csv");
        std::fs::write(&few, "1,2,3").unwrap();
        let err = read_table(&few, true).unwrap_err().to_string();
        assert!(err.contains("has 3 entries"), "{err}");

        let mut big = vec![0i32; 65536];
        big[257] = MAX_ENTRY + 1;
        let range = dir.path().join("range.bin");
        std::fs::write(&range, write_raw_i32(&big)).unwrap();
        let err = read_table(&range, true).unwrap_err().to_string();
        assert!(err.contains("entry (1, 1)"), "{err}");
        big[257] = -1;
        std::fs::write(&range, write_raw_i32(&big)).unwrap();
        assert!(read_table(&range, true).is_ok());
        let err = read_table(&range, false).unwrap_err().to_string();
        assert!(err.contains("unsigned"), "{err}");

        let missing = dir.path().join("missing.bin");
        let err = read_table(&missing, true).unwrap_err().to_string();
        assert!(err.contains("missing.bin"), "{err}");

        let junk = dir.path().join("junk.txt");
        std::fs::write(&junk, "1 2 x").unwrap();
        let err = read_table(&junk, true).unwrap_err().to_string();
        assert!(err.contains("`x` is not an integer"), "{err}");
    }
}

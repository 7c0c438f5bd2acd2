//! The error type of the hardware models.

use crate::spec::SpecError;

/// Errors of the hardware models: a bad spec, shapes that do not fit together, an
/// unsupported dtype, or a layer too large to simulate.
#[derive(Debug, thiserror::Error)]
pub enum HwError {
    /// The hardware spec string is invalid.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// Input and weight shapes do not fit the layer.
    #[error("{0}")]
    Shape(String),
    /// A tensor has a dtype the kernel does not take.
    #[error("{0}")]
    DType(String),
    /// The layer is larger than the simulator's limits.
    #[error("{0}")]
    TooLarge(String),
    /// A multiplier table file is unreadable, has the wrong size or an entry out of
    /// range.
    #[error("LUT file `{}`: {message}", path.display())]
    Lut {
        /// The table file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// An error from candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result with [`HwError`].
pub type Result<T> = std::result::Result<T, HwError>;

/// Inside a candle op, a hardware error becomes a candle error (its own, unwrapped,
/// or the message).
impl From<HwError> for candle_core::Error {
    fn from(e: HwError) -> Self {
        match e {
            HwError::Candle(e) => e,
            other => candle_core::Error::Msg(other.to_string()),
        }
    }
}

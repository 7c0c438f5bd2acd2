//! Training for approximate hardware over candle autograd: approximate layers with an
//! execution mode (float, approx-fn, inject, accurate), error-injection calibration,
//! gradient checkpointing, schedules and the trainer. Built on `approx-hw`.
//!
//! A linear layer on SC hardware (OR-1 accumulation): its `accurate` forward is the bit-accurate
//! simulation, its gradient that of the differentiable approximation.
//!
//! ```
//! use approx_hw::Layer;
//! use approx_train::{layer::HwLayer, mode::ExecMode, schedule::Phases};
//! use candle_core::{Device, Tensor, Var};
//!
//! let dev = Device::Cpu;
//! let w = Var::from_tensor(&(Tensor::ones((4, 8), candle_core::DType::F32, &dev)? * 0.25)?)?;
//! let fc = HwLayer::new("fc", Layer::Linear, w.clone(), None, "sc:len=32,acc=or1".parse()?, ExecMode::Accurate)?;
//! let x = Var::from_tensor(&(Tensor::ones((2, 8), candle_core::DType::F32, &dev)? * 0.5)?)?;
//! let y = fc.forward(x.as_tensor())?;
//! // Eight products of 0.5 · 0.25 ORed into one stream: below the exact sum of 1.
//! let sum = y.flatten_all()?.to_vec1::<f32>()?[0];
//! assert!(sum > 0.5 && sum < 1.0, "{sum}");
//! let grads = y.sum_all()?.backward()?;
//! assert!(grads.get(&w).is_some());
//!
//! // The paper's CIFAR recipe: 80 % error injection, then 20 % bit-accurate epochs.
//! let phases: Phases = "inject:0.8,accurate:0.2".parse()?;
//! assert_eq!(phases.epochs(10)?, vec![(ExecMode::Inject, 8), (ExecMode::Accurate, 2)]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod alloc;
pub mod calibration;
pub mod conv;
pub mod data;
pub mod fixed_pattern;
pub mod io;
pub mod layer;
mod microkernel;
pub mod mode;
pub mod model;
pub mod optim;
pub mod packed;
pub mod polarity;
pub mod recompute;
pub mod schedule;
pub mod split_conv;
pub mod ste;
pub mod storage;
pub mod surrogate;
pub mod tiled;
pub mod trainer;

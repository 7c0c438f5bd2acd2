//! Training for approximate hardware over candle autograd: approximate layers with an
//! execution mode (float, approx-fn, inject, accurate), error-injection calibration,
//! gradient checkpointing, schedules and the trainer. Built on `approx-hw`.

pub mod calibration;
pub mod conv;
pub mod data;
pub mod io;
pub mod layer;
pub mod mode;
pub mod model;
pub mod optim;
pub mod recompute;
pub mod schedule;
pub mod ste;
pub mod storage;
pub mod surrogate;
pub mod trainer;

//! Optimizers with their state as named tensors (so a checkpoint can hold them):
//! Adam with coupled L2 weight decay (REX-SC's `torch.optim.Adam`), AdamW with
//! decoupled decay, and SGD with momentum, Nesterov and weight decay.

use std::fmt;
use std::str::FromStr;

use candle_core::backprop::GradStore;
use candle_core::{DType, Result, Tensor, Var};
use rayon::prelude::*;

use crate::storage::read_f32;

/// Which update rule, with its hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum OptimizerKind {
    /// Adam; `weight_decay` is added to the gradient (L2), as PyTorch's `Adam`.
    Adam {
        /// Weight decay (L2 coefficient).
        weight_decay: f64,
    },
    /// AdamW: decay applied to the weights directly, scaled by the learning rate.
    AdamW {
        /// Decoupled weight decay.
        weight_decay: f64,
    },
    /// SGD with momentum (0 for plain SGD), optional Nesterov, L2 weight decay.
    Sgd {
        /// Momentum factor.
        momentum: f64,
        /// Nesterov momentum.
        nesterov: bool,
        /// Weight decay (L2 coefficient).
        weight_decay: f64,
    },
}

impl FromStr for OptimizerKind {
    type Err = String;

    /// `adam`, `adamw`, `sgd` (momentum 0.9), each with an optional `:wd=X`, and for
    /// SGD `:momentum=X` and `:nesterov`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let mut parts = s.split(':');
        let name = parts.next().unwrap_or_default();
        let (mut wd, mut momentum, mut nesterov) = (None, 0.9, false);
        for part in parts {
            let bad = || {
                format!(
                    "bad optimizer option `{part}` in `{s}`: expected wd=X, momentum=X or nesterov"
                )
            };
            match part.split_once('=') {
                Some(("wd", v)) => wd = Some(v.parse::<f64>().map_err(|_| bad())?),
                Some(("momentum", v)) => momentum = v.parse::<f64>().map_err(|_| bad())?,
                None if part == "nesterov" => nesterov = true,
                _ => return Err(bad()),
            }
        }
        match name {
            "adam" => Ok(OptimizerKind::Adam {
                weight_decay: wd.unwrap_or(0.0),
            }),
            "adamw" => Ok(OptimizerKind::AdamW {
                weight_decay: wd.unwrap_or(0.01),
            }),
            "sgd" => Ok(OptimizerKind::Sgd {
                momentum,
                nesterov,
                weight_decay: wd.unwrap_or(0.0),
            }),
            other => Err(format!(
                "unknown optimizer `{other}`: expected adam, adamw or sgd"
            )),
        }
    }
}

impl fmt::Display for OptimizerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            OptimizerKind::Adam { weight_decay } => write!(f, "adam:wd={weight_decay}"),
            OptimizerKind::AdamW { weight_decay } => write!(f, "adamw:wd={weight_decay}"),
            OptimizerKind::Sgd {
                momentum,
                nesterov,
                weight_decay,
            } => {
                write!(f, "sgd:momentum={momentum}:wd={weight_decay}")?;
                if nesterov {
                    f.write_str(":nesterov")?;
                }
                Ok(())
            }
        }
    }
}

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPS: f64 = 1e-8;

/// An optimizer over a fixed list of parameters. Parameters without a gradient in a
/// step (e.g. batch-norm running statistics) are left untouched.
pub struct Optimizer {
    kind: OptimizerKind,
    params: Vec<Var>,
    /// First moment (Adam) or momentum buffer (SGD) per parameter, in the
    /// parameter's element order: plain vectors, updated in place.
    m: Vec<Vec<f32>>,
    /// Second moment per parameter (Adam only).
    v: Vec<Vec<f32>>,
    /// Which parameters the current step has updated (see [`Optimizer::apply`]).
    updated: Vec<bool>,
    steps: u64,
    lr: f64,
}

impl Optimizer {
    /// A fresh optimizer for `params` with learning rate `lr`.
    pub fn new(kind: OptimizerKind, params: Vec<Var>, lr: f64) -> Result<Self> {
        for (i, p) in params.iter().enumerate() {
            if p.dtype() != DType::F32 {
                return Err(candle_core::Error::Msg(format!(
                    "parameter {i} ({:?}) is {:?}: the optimizer takes f32",
                    p.dims(),
                    p.dtype()
                )));
            }
        }
        let zeros = |p: &Var| vec![0f32; p.elem_count()];
        let m = params.iter().map(zeros).collect();
        let v = params.iter().map(zeros).collect();
        Ok(Self {
            kind,
            updated: vec![false; params.len()],
            params,
            m,
            v,
            steps: 0,
            lr,
        })
    }

    /// The parameters it updates, in order.
    pub fn params(&self) -> &[Var] {
        &self.params
    }

    /// The current learning rate.
    pub fn learning_rate(&self) -> f64 {
        self.lr
    }

    /// Sets the learning rate (schedules call this every step).
    pub fn set_learning_rate(&mut self, lr: f64) {
        self.lr = lr;
    }

    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// One update from `grads`: [`Optimizer::begin_step`], then
    /// [`Optimizer::apply`].
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.begin_step();
        self.apply(grads)
    }

    /// Starts a step whose gradients come in parts (see [`Optimizer::apply`]).
    pub fn begin_step(&mut self) {
        self.steps += 1;
        self.updated.fill(false);
    }

    /// Updates the parameters that have a gradient in `grads`, as part of the step
    /// begun last. A step's gradients may come in several stores, each parameter's in
    /// one (a checkpointed block's as soon as its backward ends, so that they are
    /// never all in memory at once); the result is the same as one update from their
    /// union. A parameter with a gradient in two stores of a step is an error: its
    /// gradient would be the sum.
    pub fn apply(&mut self, grads: &GradStore) -> Result<()> {
        let t = self.steps as i32;
        let lr = self.lr;
        for (i, p) in self.params.iter().enumerate() {
            let Some(g) = grads.get(p) else { continue };
            if std::mem::replace(&mut self.updated[i], true) {
                return Err(candle_core::Error::Msg(format!(
                    "parameter {i} ({:?}) got gradients from two parts of one step",
                    p.dims()
                )));
            }
            let update = Update {
                kind: self.kind,
                lr,
                t,
                first: self.steps == 1,
            };
            let (p_values, g_values) = (read_f32(p.as_tensor()), read_f32(g));
            let op = "the optimizer";
            let next = update.run(
                &p_values.values(op)?,
                &g_values.values(op)?,
                &mut self.m[i],
                &mut self.v[i],
            );
            drop(p_values);
            p.set(&Tensor::from_vec(next, p.shape(), p.device())?)?;
        }
        Ok(())
    }

    /// The state as named tensors (`m.{i}`, `v.{i}`) and the step count, for a
    /// checkpoint.
    pub fn state(&self) -> (Vec<(String, Tensor)>, u64) {
        let mut named = Vec::new();
        for (i, p) in self.params.iter().enumerate() {
            for (name, values) in [("m", &self.m[i]), ("v", &self.v[i])] {
                // The shapes are the parameters' own: this cannot fail.
                if let Ok(t) = Tensor::from_vec(values.clone(), p.shape(), p.device()) {
                    named.push((format!("{name}.{i}"), t));
                }
            }
        }
        (named, self.steps)
    }

    /// Restores the state written by [`Self::state`]; `get` looks a tensor up by name.
    pub fn load_state(
        &mut self,
        steps: u64,
        mut get: impl FnMut(&str) -> Option<Tensor>,
    ) -> Result<()> {
        for (i, p) in self.params.iter().enumerate() {
            for (name, slot) in [
                (format!("m.{i}"), &mut self.m[i]),
                (format!("v.{i}"), &mut self.v[i]),
            ] {
                let t = get(&name).ok_or_else(|| {
                    candle_core::Error::Msg(format!(
                        "optimizer state `{name}` missing from the checkpoint"
                    ))
                })?;
                if t.dims() != p.dims() {
                    return Err(candle_core::Error::Msg(format!(
                        "optimizer state `{name}` has shape {:?}, the parameter {:?}",
                        t.dims(),
                        p.dims()
                    )));
                }
                *slot = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            }
        }
        self.steps = steps;
        Ok(())
    }
}

/// Elements per parallel work unit of an update.
const UPDATE_CHUNK: usize = 1 << 14;

/// One parameter's update rule at one step, run in one pass over its elements.
///
/// Each element goes through the same f32 operations, in the same order, as the
/// update written with candle's tensor ops (`m·β1 + g·(1 − β1)`, scalars applied as
/// candle's `affine(mul, add)`, which adds its zero too), so the weights are those
/// bit for bit (tested against that form); but the moments are updated in place and
/// the only new buffer is the next weights, where the tensor form allocated a
/// parameter-sized tensor per operation (a dozen on Adam).
#[derive(Debug, Clone, Copy)]
struct Update {
    kind: OptimizerKind,
    lr: f64,
    /// The step number, from 1 (Adam's bias correction).
    t: i32,
    /// The first step (SGD's momentum buffer starts at the gradient).
    first: bool,
}

/// `v·mul + add` in f32, as candle's `affine`.
#[inline(always)]
fn affine(v: f32, mul: f32, add: f32) -> f32 {
    v * mul + add
}

impl Update {
    /// The next weights for weights `p` and gradient `g`; updates the moments `m`
    /// and `v` in place.
    fn run(&self, p: &[f32], g: &[f32], m: &mut [f32], v: &mut [f32]) -> Vec<f32> {
        let mut next = vec![0f32; p.len()];
        next.par_chunks_mut(UPDATE_CHUNK)
            .zip(p.par_chunks(UPDATE_CHUNK).zip(g.par_chunks(UPDATE_CHUNK)))
            .zip(
                m.par_chunks_mut(UPDATE_CHUNK)
                    .zip(v.par_chunks_mut(UPDATE_CHUNK)),
            )
            .for_each(|((next, (p, g)), (m, v))| self.run_chunk(p, g, m, v, next));
        next
    }

    fn run_chunk(&self, p: &[f32], g: &[f32], m: &mut [f32], v: &mut [f32], next: &mut [f32]) {
        let lr = self.lr as f32;
        match self.kind {
            OptimizerKind::Adam { weight_decay } | OptimizerKind::AdamW { weight_decay } => {
                let decoupled = matches!(self.kind, OptimizerKind::AdamW { .. });
                let coupled_decay =
                    (!decoupled && weight_decay != 0.0).then_some(weight_decay as f32);
                let decay =
                    (decoupled && weight_decay != 0.0).then_some((self.lr * weight_decay) as f32);
                let (b1, c1) = (BETA1 as f32, (1.0 - BETA1) as f32);
                let (b2, c2) = (BETA2 as f32, (1.0 - BETA2) as f32);
                let m_scale = (1.0 / (1.0 - BETA1.powi(self.t))) as f32;
                let v_scale = (1.0 / (1.0 - BETA2.powi(self.t))) as f32;
                let eps = EPS as f32;
                for i in 0..p.len() {
                    let g = match coupled_decay {
                        Some(wd) => g[i] + affine(p[i], wd, 0.0),
                        None => g[i],
                    };
                    m[i] = affine(m[i], b1, 0.0) + affine(g, c1, 0.0);
                    v[i] = affine(v[i], b2, 0.0) + affine(g * g, c2, 0.0);
                    let m_hat = affine(m[i], m_scale, 0.0);
                    let v_hat = affine(v[i], v_scale, 0.0);
                    let step = m_hat / affine(v_hat.sqrt(), 1.0, eps);
                    let mut w = p[i] - affine(step, lr, 0.0);
                    if let Some(decay) = decay {
                        w -= affine(p[i], decay, 0.0);
                    }
                    next[i] = w;
                }
            }
            OptimizerKind::Sgd {
                momentum,
                nesterov,
                weight_decay,
            } => {
                let mu = momentum as f32;
                for i in 0..p.len() {
                    let g = if weight_decay != 0.0 {
                        g[i] + affine(p[i], weight_decay as f32, 0.0)
                    } else {
                        g[i]
                    };
                    let direction = if momentum != 0.0 {
                        m[i] = if self.first {
                            g
                        } else {
                            affine(m[i], mu, 0.0) + g
                        };
                        if nesterov {
                            g + affine(m[i], mu, 0.0)
                        } else {
                            m[i]
                        }
                    } else {
                        g
                    };
                    next[i] = p[i] - affine(direction, lr, 0.0);
                }
            }
        }
    }
}

/// Scales all gradients so that their global L2 norm is at most `max_norm`; returns
/// the norm before clipping.
pub fn clip_grad_norm(params: &[Var], grads: &mut GradStore, max_norm: f64) -> Result<f64> {
    let mut sq = 0f64;
    for p in params {
        if let Some(g) = grads.get(p) {
            sq += f64::from(g.sqr()?.sum_all()?.to_scalar::<f32>()?);
        }
    }
    let norm = sq.sqrt();
    if norm > max_norm && norm > 0.0 {
        let scale = max_norm / norm;
        for p in params {
            if let Some(g) = grads.get(p) {
                let scaled = (g * scale)?;
                grads.insert(p, scaled);
            }
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Minimises (w − 3)² and checks each optimizer gets there.
    #[test]
    fn every_optimizer_minimises_a_quadratic() {
        for (kind, lr) in [
            ("adam", 0.1),
            ("adamw:wd=0", 0.1),
            ("sgd:momentum=0.9", 0.05),
            ("sgd:momentum=0.9:nesterov", 0.05),
            ("sgd:momentum=0", 0.2),
        ] {
            let w = Var::from_slice(&[0f32], 1, &Device::Cpu).unwrap();
            let mut opt = Optimizer::new(kind.parse().unwrap(), vec![w.clone()], lr).unwrap();
            for _ in 0..300 {
                let loss = (w.as_tensor() - 3.0)
                    .unwrap()
                    .sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap();
                opt.step(&loss.backward().unwrap()).unwrap();
            }
            let v = w.to_vec1::<f32>().unwrap()[0];
            assert!((v - 3.0).abs() < 1e-2, "{kind}: {v}");
        }
    }

    #[test]
    fn adam_matches_a_hand_computed_first_step() {
        // First Adam step moves by lr·sign(g) (bias-corrected m/√v = g/|g|).
        let w = Var::from_slice(&[1f32, -2.0], 2, &Device::Cpu).unwrap();
        let mut opt = Optimizer::new(
            OptimizerKind::Adam { weight_decay: 0.0 },
            vec![w.clone()],
            0.01,
        )
        .unwrap();
        let loss = (w.as_tensor() * &Tensor::new(&[3f32, -5.0], &Device::Cpu).unwrap())
            .unwrap()
            .sum_all()
            .unwrap();
        opt.step(&loss.backward().unwrap()).unwrap();
        let v = w.to_vec1::<f32>().unwrap();
        assert!(
            (v[0] - 0.99).abs() < 1e-6 && (v[1] + 1.99).abs() < 1e-6,
            "{v:?}"
        );
    }

    /// The update written with candle's tensor ops, one tensor per operation: the
    /// obviously-correct form the one-pass update must equal bit for bit.
    fn reference_step(
        kind: OptimizerKind,
        lr: f64,
        t: i32,
        p: &Tensor,
        g: &Tensor,
        m: &mut Tensor,
        v: &mut Tensor,
    ) -> Tensor {
        let mut g = g.clone();
        match kind {
            OptimizerKind::Adam { weight_decay } | OptimizerKind::AdamW { weight_decay } => {
                let decoupled = matches!(kind, OptimizerKind::AdamW { .. });
                if !decoupled && weight_decay != 0.0 {
                    g = (g + (p * weight_decay).unwrap()).unwrap();
                }
                *m = ((&*m * BETA1).unwrap() + (&g * (1.0 - BETA1)).unwrap()).unwrap();
                *v =
                    ((&*v * BETA2).unwrap() + (g.sqr().unwrap() * (1.0 - BETA2)).unwrap()).unwrap();
                let m_hat = (&*m / (1.0 - BETA1.powi(t))).unwrap();
                let v_hat = (&*v / (1.0 - BETA2.powi(t))).unwrap();
                let update = (m_hat / (v_hat.sqrt().unwrap() + EPS).unwrap()).unwrap();
                let mut next = (p - (update * lr).unwrap()).unwrap();
                if decoupled && weight_decay != 0.0 {
                    next = (next - (p * (lr * weight_decay)).unwrap()).unwrap();
                }
                next
            }
            OptimizerKind::Sgd {
                momentum,
                nesterov,
                weight_decay,
            } => {
                if weight_decay != 0.0 {
                    g = (g + (p * weight_decay).unwrap()).unwrap();
                }
                let direction = if momentum != 0.0 {
                    *m = if t == 1 {
                        g.clone()
                    } else {
                        ((&*m * momentum).unwrap() + &g).unwrap()
                    };
                    if nesterov {
                        (g + (&*m * momentum).unwrap()).unwrap()
                    } else {
                        m.clone()
                    }
                } else {
                    g
                };
                (p - (direction * lr).unwrap()).unwrap()
            }
        }
    }

    #[test]
    fn one_pass_updates_equal_the_tensor_op_form_bit_for_bit() {
        let dev = Device::Cpu;
        for kind in [
            "adam",
            "adam:wd=0.0001",
            "adamw",
            "adamw:wd=0",
            "sgd:momentum=0.9",
            "sgd:momentum=0.9:nesterov:wd=0.001",
            "sgd:momentum=0",
        ] {
            let kind: OptimizerKind = kind.parse().unwrap();
            // Large enough for several parallel chunks, with zeros of both signs.
            let n = 3 * UPDATE_CHUNK + 17;
            let w = Var::from_tensor(&Tensor::randn(0f32, 1.0, n, &dev).unwrap()).unwrap();
            let mut want_w = w.as_tensor().copy().unwrap();
            let (mut m, mut v) = (want_w.zeros_like().unwrap(), want_w.zeros_like().unwrap());
            let mut opt = Optimizer::new(kind, vec![w.clone()], 3e-3).unwrap();
            for t in 1..=4 {
                let mut g = Tensor::randn(0f32, 1.0, n, &dev)
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                g[0] = 0.0;
                g[1] = -0.0;
                let g = Tensor::from_vec(g, n, &dev).unwrap();
                want_w = reference_step(kind, 3e-3, t, &want_w, &g, &mut m, &mut v);
                let mut grads = GradStore::default();
                grads.insert(&w, g);
                opt.step(&grads).unwrap();
                let got = w.to_vec1::<f32>().unwrap();
                let want = want_w.to_vec1::<f32>().unwrap();
                let same = got
                    .iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{kind} step {t}");
            }
        }
    }

    #[test]
    fn gradients_of_one_parameter_in_two_parts_of_a_step_are_an_error() {
        let w = Var::from_slice(&[1f32, 2.0], 2, &Device::Cpu).unwrap();
        let mut opt = Optimizer::new("adam".parse().unwrap(), vec![w.clone()], 0.1).unwrap();
        let mut grads = GradStore::default();
        grads.insert(&w, Tensor::new(&[1f32, 1.0], &Device::Cpu).unwrap());
        opt.begin_step();
        opt.apply(&grads).unwrap();
        let err = opt.apply(&grads).unwrap_err().to_string();
        assert!(err.contains("two parts of one step"), "{err}");
    }

    #[test]
    fn clipping_bounds_the_global_norm() {
        let w = Var::from_slice(&[0f32, 0.0], 2, &Device::Cpu).unwrap();
        let loss = (w.as_tensor() * &Tensor::new(&[3f32, 4.0], &Device::Cpu).unwrap())
            .unwrap()
            .sum_all()
            .unwrap();
        let mut grads = loss.backward().unwrap();
        let norm = clip_grad_norm(std::slice::from_ref(&w), &mut grads, 1.0).unwrap();
        assert!((norm - 5.0).abs() < 1e-6);
        let g = grads.get(&w).unwrap().to_vec1::<f32>().unwrap();
        assert!((g[0] - 0.6).abs() < 1e-6 && (g[1] - 0.8).abs() < 1e-6);
    }

    #[test]
    fn names_parse_and_print() {
        assert_eq!(
            "adam:wd=0.0001".parse::<OptimizerKind>().unwrap(),
            OptimizerKind::Adam { weight_decay: 1e-4 }
        );
        assert!("rmsprop"
            .parse::<OptimizerKind>()
            .unwrap_err()
            .contains("rmsprop"));
        assert!("sgd:wd=x"
            .parse::<OptimizerKind>()
            .unwrap_err()
            .contains("wd=x"));
        let k: OptimizerKind = "sgd:momentum=0.5:nesterov".parse().unwrap();
        assert_eq!(k.to_string().parse::<OptimizerKind>().unwrap(), k);
    }
}

//! Optimizers with their state as named tensors (so a checkpoint can hold them):
//! Adam with coupled L2 weight decay (REX-SC's `torch.optim.Adam`), AdamW with
//! decoupled decay, and SGD with momentum, Nesterov and weight decay.

use std::fmt;
use std::str::FromStr;

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};

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
    /// First moment (Adam) or momentum buffer (SGD) per parameter.
    m: Vec<Tensor>,
    /// Second moment per parameter (Adam only).
    v: Vec<Tensor>,
    steps: u64,
    lr: f64,
}

impl Optimizer {
    /// A fresh optimizer for `params` with learning rate `lr`.
    pub fn new(kind: OptimizerKind, params: Vec<Var>, lr: f64) -> Result<Self> {
        let zeros = |p: &Var| p.zeros_like();
        let m = params.iter().map(zeros).collect::<Result<Vec<_>>>()?;
        let v = params.iter().map(zeros).collect::<Result<Vec<_>>>()?;
        Ok(Self {
            kind,
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

    /// One update from `grads`.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.steps += 1;
        let t = self.steps as i32;
        let lr = self.lr;
        for (i, p) in self.params.iter().enumerate() {
            let Some(g) = grads.get(p) else { continue };
            let mut g = g.detach();
            match self.kind {
                OptimizerKind::Adam { weight_decay } | OptimizerKind::AdamW { weight_decay } => {
                    let decoupled = matches!(self.kind, OptimizerKind::AdamW { .. });
                    if !decoupled && weight_decay != 0.0 {
                        g = (g + (p.as_tensor() * weight_decay)?)?;
                    }
                    self.m[i] = ((&self.m[i] * BETA1)? + (&g * (1.0 - BETA1))?)?;
                    self.v[i] = ((&self.v[i] * BETA2)? + (g.sqr()? * (1.0 - BETA2))?)?;
                    let m_hat = (&self.m[i] / (1.0 - BETA1.powi(t)))?;
                    let v_hat = (&self.v[i] / (1.0 - BETA2.powi(t)))?;
                    let update = (m_hat / (v_hat.sqrt()? + EPS)?)?;
                    let mut next = (p.as_tensor() - (update * lr)?)?;
                    if decoupled && weight_decay != 0.0 {
                        next = (next - (p.as_tensor() * (lr * weight_decay))?)?;
                    }
                    p.set(&next)?;
                }
                OptimizerKind::Sgd {
                    momentum,
                    nesterov,
                    weight_decay,
                } => {
                    if weight_decay != 0.0 {
                        g = (g + (p.as_tensor() * weight_decay)?)?;
                    }
                    let direction = if momentum != 0.0 {
                        self.m[i] = if self.steps == 1 {
                            g.clone()
                        } else {
                            ((&self.m[i] * momentum)? + &g)?
                        };
                        if nesterov {
                            (g + (&self.m[i] * momentum)?)?
                        } else {
                            self.m[i].clone()
                        }
                    } else {
                        g
                    };
                    p.set(&(p.as_tensor() - (direction * lr)?)?)?;
                }
            }
        }
        Ok(())
    }

    /// The state as named tensors (`m.{i}`, `v.{i}`) and the step count, for a
    /// checkpoint.
    pub fn state(&self) -> (Vec<(String, Tensor)>, u64) {
        let mut named = Vec::new();
        for (i, (m, v)) in self.m.iter().zip(&self.v).enumerate() {
            named.push((format!("m.{i}"), m.clone()));
            named.push((format!("v.{i}"), v.clone()));
        }
        (named, self.steps)
    }

    /// Restores the state written by [`Self::state`]; `get` looks a tensor up by name.
    pub fn load_state(
        &mut self,
        steps: u64,
        mut get: impl FnMut(&str) -> Option<Tensor>,
    ) -> Result<()> {
        for i in 0..self.params.len() {
            for (name, slot) in [
                (format!("m.{i}"), &mut self.m[i]),
                (format!("v.{i}"), &mut self.v[i]),
            ] {
                let t = get(&name).ok_or_else(|| {
                    candle_core::Error::Msg(format!(
                        "optimizer state `{name}` missing from the checkpoint"
                    ))
                })?;
                if t.dims() != slot.dims() {
                    return Err(candle_core::Error::Msg(format!(
                        "optimizer state `{name}` has shape {:?}, the parameter {:?}",
                        t.dims(),
                        slot.dims()
                    )));
                }
                *slot = t;
            }
        }
        self.steps = steps;
        Ok(())
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

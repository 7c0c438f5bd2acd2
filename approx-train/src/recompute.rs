//! Gradient checkpointing of whole blocks: a block's forward runs without keeping its
//! intermediate activations; backward recomputes them from the block's input and runs
//! a nested backward. Parameter gradients leave the nested backward through a side
//! channel and are merged into the step's gradients with [`Recompute::merge_into`],
//! or, with a sink set ([`Recompute::set_sink`]), are sent to the optimizer as soon as
//! the block's backward ends, so that the whole model's gradients are never in memory
//! at once.

use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex};

use crate::storage::{f32_values, read_f32};
use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, CustomOp1, Device, Layout, Result, Shape, Tensor, Var};

/// Which run of a block's forward this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// The step's forward: side effects (batch-norm running statistics) happen here.
    Forward,
    /// The recomputation in backward: the same values, no side effects.
    Recompute,
}

/// A block's forward: input to output, building its graph on the given input.
pub type BlockFn = Arc<dyn Fn(&Tensor, Pass) -> Result<Tensor> + Send + Sync>;

/// Where a recomputed block's parameter gradients go: the sink while one is set,
/// else the side store that [`Recompute::merge_into`] empties.
#[derive(Default)]
struct Outlet {
    side: Vec<GradStore>,
    sink: Option<SyncSender<GradStore>>,
}

/// The gradient side channel shared by a model's checkpointed blocks.
#[derive(Clone, Default)]
pub struct Recompute {
    outlet: Arc<Mutex<Outlet>>,
}

impl std::fmt::Debug for Recompute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Recompute")
    }
}

impl Recompute {
    /// Runs `block` on `x` keeping only `x` and the output for backward; `params` are
    /// the block's parameters, whose gradients go through the side channel.
    pub fn block(&self, x: &Tensor, params: Vec<Var>, block: BlockFn) -> Result<Tensor> {
        // The op is recorded only on a tracked input; data is wrapped in a Var, but
        // its gradient is never computed (a first conv's input gradient is as costly
        // as its weight gradient).
        let data = !x.track_op();
        let x = if data {
            Var::from_tensor(x)?.as_tensor().clone()
        } else {
            x.clone()
        };
        x.apply_op1(Checkpoint {
            block,
            params,
            data,
            outlet: self.outlet.clone(),
        })
    }

    /// Sends each recomputed block's parameter gradients to `sink` from now on (a
    /// rendezvous channel makes the backward wait until the receiver takes them), or,
    /// with `None`, keeps them for [`Recompute::merge_into`] again.
    pub fn set_sink(&self, sink: Option<SyncSender<GradStore>>) {
        lock(&self.outlet).sink = sink;
    }

    /// Adds the parameter gradients of every recomputed block since the last call into
    /// `grads` (none of those that went to a sink).
    pub fn merge_into(&self, grads: &mut GradStore) -> Result<()> {
        let side = std::mem::take(&mut lock(&self.outlet).side);
        for store in side {
            for id in store.get_ids().copied().collect::<Vec<_>>() {
                let Some(g) = store.get_id(id) else { continue };
                let sum = match grads.get_id(id) {
                    Some(existing) => (existing + g)?,
                    None => g.clone(),
                };
                grads.insert_id(id, sum);
            }
        }
        Ok(())
    }
}

fn lock(outlet: &Mutex<Outlet>) -> std::sync::MutexGuard<'_, Outlet> {
    outlet.lock().unwrap_or_else(|e| e.into_inner())
}

struct Checkpoint {
    block: BlockFn,
    params: Vec<Var>,
    /// The block's input is data: no gradient flows back into it.
    data: bool,
    outlet: Arc<Mutex<Outlet>>,
}

impl CustomOp1 for Checkpoint {
    fn name(&self) -> &'static str {
        "checkpoint"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        // A graph-free copy: the block's intermediate tensors die with this call.
        let data = f32_values(storage, layout, "a checkpointed block")?.into_owned();
        let x = Tensor::from_vec(data, layout.shape(), &Device::Cpu)?;
        let y = (self.block)(&x, Pass::Forward)?.detach();
        let shape = y.shape().clone();
        Ok((CpuStorage::F32(y.flatten_all()?.to_vec1::<f32>()?), shape))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let x = if self.data {
            arg.detach()
        } else {
            Var::from_tensor(&arg.detach())?.as_tensor().clone()
        };
        let y = (self.block)(&x, Pass::Recompute)?;
        let grads = y
            .apply_op1(InnerProduct {
                with: grad.detach(),
            })?
            .backward()?;
        let mut keep = GradStore::default();
        for p in &self.params {
            if let Some(g) = grads.get(p) {
                keep.insert(p, g.detach());
            }
        }
        let dx = grads.get(&x).map(Tensor::detach);
        // The nested graph goes before a sink's receiver updates the parameters.
        drop((grads, y));
        let sink = lock(&self.outlet).sink.clone();
        match sink {
            Some(sink) => sink.send(keep).map_err(|_| {
                candle_core::Error::Msg(
                    "the optimizer stopped taking a checkpointed block's gradients".into(),
                )
            })?,
            None => lock(&self.outlet).side.push(keep),
        }
        Ok(dx)
    }
}

/// `⟨y, with⟩` as a scalar, whose gradient with respect to `y` is `with`: the nested
/// backward of a block starts from the outer gradient itself. The plain `(y · g).sum()`
/// keeps the product for the whole backward and adds the product's and `y`'s
/// gradients, each a block output's size, at the step's peak.
struct InnerProduct {
    with: Tensor,
}

impl CustomOp1 for InnerProduct {
    fn name(&self) -> &'static str {
        "inner-product"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let op = "a checkpointed block's gradient seed";
        if layout.shape() != self.with.shape() {
            return Err(candle_core::Error::ShapeMismatchBinaryOp {
                lhs: layout.shape().clone(),
                rhs: self.with.shape().clone(),
                op: "inner-product",
            });
        }
        let with = read_f32(&self.with);
        let dot = f32_values(storage, layout, op)?
            .iter()
            .zip(with.values(op)?.iter())
            .map(|(&a, &b)| f64::from(a) * f64::from(b))
            .sum::<f64>();
        Ok((CpuStorage::F32(vec![dot as f32]), Shape::from(())))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        // `backward()` seeds the scalar with 1: pass the tensor on without a product.
        if grad.to_scalar::<f32>()? == 1.0 {
            return Ok(Some(self.with.clone()));
        }
        self.with.broadcast_mul(grad).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpointed_gradients_equal_plain_ones() {
        let dev = Device::Cpu;
        let w1 = Var::from_vec(
            (0..12).map(|i| i as f32 * 0.1 - 0.5).collect(),
            (3, 4),
            &dev,
        )
        .unwrap();
        let w2 = Var::from_vec(
            (0..8).map(|i| 0.3 - i as f32 * 0.07).collect(),
            (4, 2),
            &dev,
        )
        .unwrap();
        let x = Tensor::from_vec(
            (0..15).map(|i| (i as f32 * 0.37).sin()).collect(),
            (5, 3),
            &dev,
        )
        .unwrap();
        let block = |w: Var| -> BlockFn { Arc::new(move |t: &Tensor, _| t.matmul(&w)?.tanh()) };
        let plain = block(w2.clone())(
            &block(w1.clone())(&x, Pass::Forward).unwrap(),
            Pass::Forward,
        )
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap();
        let g_plain = plain.backward().unwrap();
        let rc = Recompute::default();
        let h = rc.block(&x, vec![w1.clone()], block(w1.clone())).unwrap();
        let y = rc.block(&h, vec![w2.clone()], block(w2.clone())).unwrap();
        let mut g = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        rc.merge_into(&mut g).unwrap();
        for w in [&w1, &w2] {
            assert_eq!(
                g.get(w)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap(),
                g_plain
                    .get(w)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            );
        }
    }
}

//! Gradient checkpointing of whole blocks: a block's forward runs without keeping its
//! intermediate activations; backward recomputes them from the block's input and
//! takes their gradients, through a nested candle backward or by running the block's
//! ops' backwards itself ([`Recomputed`]). Parameter gradients leave the block's
//! backward through a side channel and are merged into the step's gradients with [`Recompute::merge_into`],
//! or, with a sink set ([`Recompute::set_sink`]), are sent to the optimizer as soon as
//! the block's backward ends, so that the whole model's gradients are never in memory
//! at once.
//!
//! Between the blocks of a chain ([`Recompute::chain`]) the activations do not pass
//! through candle's graph. Each block's output is kept as a variable of its own (a
//! [`Link`]) that the next block reads in its forward and recomputes from in its
//! backward, and the gradient with respect to it goes back through the same link; the
//! graph only carries one-element tokens that order the blocks' backwards. Through
//! the graph, the recomputation would need a tracked copy of the block's input, and
//! candle would accumulate the input's gradient into a zeroed tensor of its size: two
//! more boundary-sized tensors at the step's peak. A link's value is also dropped as
//! soon as the block reading it has run its backward, not at the end of the step.
//!
//! A link keeps its value [`Packed`]: as 8- or 16-bit codes when it lies on a hardware
//! grid (an SC layer's `(P − N) / B`), which is a quarter or half of f32. The next
//! block's forward gets the f32 value itself, handed over and dropped by its first
//! op; its backward unpacks the same bits again.

use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex};

use crate::packed::Packed;
use crate::storage::{f32_values, read_f32};
use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Result, Shape, Tensor, Var};

/// A block's forward in the step: its output from its input (handed over, so that
/// the block's first op can drop it). Nothing differentiates it; side effects such as
/// batch-norm running statistics happen here.
pub type ForwardFn = Arc<dyn Fn(Tensor) -> Result<Tensor> + Send + Sync>;

/// A block's recomputation in backward, from its input, its seed (the gradient of the
/// block's output, handed over so that the recomputation can drop it as soon as it
/// has used it) and whether the input's gradient is wanted, with no side effects: the
/// gradients of `⟨output, seed⟩` ([`Recomputed`]). An input whose gradient is wanted
/// is the recomputation's to overwrite (with that gradient, say): it is the previous
/// block's output or a copy of a tracked input, and nothing reads it afterwards.
pub type BackwardFn = Arc<dyn Fn(BlockInput, Tensor, bool) -> Result<Recomputed> + Send + Sync>;

/// A checkpointed block's input in its backward: the previous block's output as its
/// link kept it, or a tensor.
pub enum BlockInput {
    /// A link's value.
    Packed(Packed),
    /// A tensor (data, or a tracked input's copy).
    Tensor(Tensor),
}

impl BlockInput {
    /// The input's values as a tensor: from packed codes a variable unpacked anew at
    /// each call (a reader that goes plane by plane can use the codes instead); else
    /// the input itself.
    pub fn values(&self) -> Result<Tensor> {
        match self {
            BlockInput::Packed(p) => Ok(p.unpack()?.as_tensor().clone()),
            BlockInput::Tensor(t) => Ok(t.clone()),
        }
    }

    /// The input's values, as [`BlockInput::values`], for their last use.
    pub fn into_values(self) -> Result<Tensor> {
        match self {
            BlockInput::Tensor(t) => Ok(t),
            packed => packed.values(),
        }
    }
}

/// What a block's recomputation ([`BackwardFn`]) gives.
pub enum Recomputed {
    /// `⟨output, seed⟩` as a scalar on a graph over the input and the parameters,
    /// whose gradients candle's backward takes. [`inner_product`] makes it from the
    /// output; a block whose last op can take the seed itself need not materialise
    /// its output at all.
    Scalar {
        /// The scalar.
        value: Tensor,
        /// The input as the scalar's graph tracks it ([`tracked`]).
        input: Tensor,
    },
    /// The gradients themselves, computed outside candle's graph by a block that runs
    /// its own ops' backwards in turn: each intermediate tensor is dropped as soon as
    /// it has been used, and no gradient is accumulated into a zeroed tensor (candle's
    /// backward keeps every node of the graph until it ends, and adds each gradient
    /// to zeros of its size).
    Gradients(Gradients),
}

/// Gradients computed outside candle's graph (see [`Recomputed::Gradients`]).
pub struct Gradients {
    /// The input's gradient (`None` when it was not asked for).
    pub input: Option<Tensor>,
    /// Each parameter's gradient.
    pub params: Vec<(Var, Tensor)>,
}

/// `⟨y, seed⟩` as a scalar whose gradient with respect to `y` is `seed` (see
/// [`Recomputed::Scalar`]).
pub fn inner_product(y: &Tensor, seed: &Tensor) -> Result<Tensor> {
    y.apply_op1(InnerProduct {
        with: seed.detach(),
    })
}

/// The input `x` of a block's recomputation for a graph on it: a variable when its
/// gradient is wanted, so that candle's backward gives it one (`x` itself when it is
/// one, as a linked input is; else a copy); else `x`.
pub fn tracked(x: &Tensor, input_grad: bool) -> Result<Tensor> {
    match input_grad && !x.is_variable() {
        true => Ok(Var::from_tensor(x)?.as_tensor().clone()),
        false => Ok(x.clone()),
    }
}

/// One checkpointed block of a [`Recompute::chain`].
pub struct Block {
    /// The block's trained parameters, whose gradients go through the side channel.
    pub params: Vec<Var>,
    /// The block's forward in the step.
    pub forward: ForwardFn,
    /// The block's recomputation in backward.
    pub backward: BackwardFn,
}

/// The activation between two blocks of a chain, outside candle's graph: the first
/// block's output value, packed, until the second block's backward takes it (unpacked
/// to a variable, which the recomputation tracks without a copy), and once that
/// backward has run, the gradient with respect to it.
#[derive(Clone, Default)]
struct Link(Arc<Mutex<LinkState>>);

#[derive(Default)]
struct LinkState {
    /// The value kept for the second block's backward.
    value: Option<Packed>,
    /// The value as f32 for the second block's forward, which takes it.
    handover: Option<Tensor>,
    grad: Option<Tensor>,
}

impl Link {
    fn lock(&self) -> std::sync::MutexGuard<'_, LinkState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the value from the first block's output `y`.
    fn set(&self, y: Tensor) -> Result<()> {
        let value = Packed::pack(&y)?;
        let handover = match &value {
            // The copy in a block of its own, after the block's transient buffers
            // are gone, serves both passes (kept as it came, the kernel's output
            // buffer sat among those buffers and fragmented the heap: VGG-16's
            // checkpointed step at batch 32 took 101 instead of 91 MiB resident).
            Packed::F32(v) => v.as_tensor().clone(),
            _ => y,
        };
        let mut state = self.lock();
        state.value = Some(value);
        state.handover = Some(handover);
        Ok(())
    }

    /// The value for the second block's forward (taken: the forward drops it when it
    /// is done with it).
    fn forward_input(&self) -> Result<Tensor> {
        let mut state = self.lock();
        if let Some(x) = state.handover.take() {
            return Ok(x);
        }
        let value = state.value.as_ref().ok_or_else(unread)?;
        Ok(value.unpack()?.as_tensor().clone())
    }

    /// The value for the second block's backward (taken: the link gives it up).
    fn backward_input(&self) -> Result<Packed> {
        let mut state = self.lock();
        state.handover = None;
        state.value.take().ok_or_else(unread)
    }
}

fn unread() -> candle_core::Error {
    candle_core::Error::Msg("a checkpointed block ran before the block it reads".into())
}

/// The one-element tensor that stands for a linked activation in candle's graph.
fn token() -> (CpuStorage, Shape) {
    (CpuStorage::F32(vec![0.0]), Shape::from(1))
}

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
    /// Runs `blocks` one after another on `x`, keeping only each block's input for
    /// backward (see the module docs); returns the last block's output.
    pub fn chain(&self, x: &Tensor, blocks: Vec<Block>) -> Result<Tensor> {
        // The op is recorded only on a tracked input: on data, the first block's op
        // takes a variable token and holds the data itself (without a copy), whose
        // gradient is never computed (a first conv's input gradient is as costly as
        // its weight gradient).
        let mut data = (!x.track_op()).then(|| x.clone());
        let mut h = match data {
            Some(_) => Var::from_vec(vec![0f32], 1, &Device::Cpu)?
                .as_tensor()
                .clone(),
            None => x.clone(),
        };
        let mut input: Option<Link> = None;
        let count = blocks.len();
        for (i, block) in blocks.into_iter().enumerate() {
            let output = (i + 1 < count).then(Link::default);
            h = h.apply_op1(Checkpoint {
                forward: block.forward,
                backward: block.backward,
                params: block.params,
                data: data.take(),
                input: input.take(),
                output: output.clone(),
                outlet: self.outlet.clone(),
            })?;
            input = output;
        }
        Ok(h)
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
    forward: ForwardFn,
    backward: BackwardFn,
    params: Vec<Var>,
    /// The block's input when it is data (the op's argument is then a token): no
    /// gradient flows back into it.
    data: Option<Tensor>,
    /// Where the block's input is, when it is the previous block's output (the op's
    /// argument is then a token).
    input: Option<Link>,
    /// Where the block's output goes, when another block follows (the op then returns
    /// a token).
    output: Option<Link>,
    outlet: Arc<Mutex<Outlet>>,
}

impl CustomOp1 for Checkpoint {
    fn name(&self) -> &'static str {
        "checkpoint"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        // A graph-free input: the block's intermediate tensors die with this call.
        let x = match (&self.input, &self.data) {
            (Some(link), _) => link.forward_input()?.detach(),
            (None, Some(data)) => data.clone(),
            (None, None) => {
                let data = f32_values(storage, layout, "a checkpointed block")?.into_owned();
                Tensor::from_vec(data, layout.shape(), &Device::Cpu)?
            }
        };
        let y = (self.forward)(x)?.detach();
        match &self.output {
            Some(link) => {
                link.set(y)?;
                Ok(token())
            }
            None => {
                let shape = y.shape().clone();
                Ok((CpuStorage::F32(y.flatten_all()?.to_vec1::<f32>()?), shape))
            }
        }
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad = match &self.output {
            Some(link) => link.lock().grad.take().ok_or_else(|| {
                candle_core::Error::Msg(
                    "a checkpointed block's backward ran before the next block's".into(),
                )
            })?,
            None => grad.detach(),
        };
        // The input, and whether its gradient is wanted (then the recomputation may
        // overwrite it: the link's value is given up, a tracked input copied).
        let (x, input_grad) = match (&self.input, &self.data) {
            (Some(link), _) => (BlockInput::Packed(link.backward_input()?), true),
            (None, Some(data)) => (BlockInput::Tensor(data.clone()), false),
            (None, None) => {
                let copy = Var::from_tensor(&arg.detach())?;
                (BlockInput::Tensor(copy.as_tensor().clone()), true)
            }
        };
        // The nested graph is gone before a sink's receiver updates the parameters:
        // the recomputation owns the input.
        let (keep, dx) = match (self.backward)(x, grad, input_grad)? {
            Recomputed::Scalar { value, input } => {
                let grads = value.backward()?;
                let mut keep = GradStore::default();
                for p in &self.params {
                    if let Some(g) = grads.get(p) {
                        keep.insert(p, g.detach());
                    }
                }
                let dx = grads.get(&input).map(Tensor::detach);
                (keep, dx)
            }
            Recomputed::Gradients(Gradients { input, params }) => {
                let mut keep = GradStore::default();
                for (p, g) in params {
                    keep.insert(&p, g);
                }
                (keep, input)
            }
        };
        let sink = lock(&self.outlet).sink.clone();
        match sink {
            Some(sink) => sink.send(keep).map_err(|_| {
                candle_core::Error::Msg(
                    "the optimizer stopped taking a checkpointed block's gradients".into(),
                )
            })?,
            None => lock(&self.outlet).side.push(keep),
        }
        let Some(link) = &self.input else {
            // Data's token gets none (candle's backward may give data a gradient
            // anyway: it fills in every argument of an op).
            return Ok(dx.filter(|_| input_grad));
        };
        // The input is the previous block's output: its value is no longer needed, its
        // gradient goes to that block's backward, and the token gets a zero.
        let dx = dx.ok_or_else(|| {
            candle_core::Error::Msg("a checkpointed block's input received no gradient".into())
        })?;
        link.lock().grad = Some(dx);
        Ok(Some(Tensor::zeros(1, DType::F32, &Device::Cpu)?))
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

    fn flat(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    /// A link keeps an output on a hardware grid as one-byte codes, hands the output
    /// itself to the next block's forward, and gives that block's backward the same
    /// bits again; an output off the grid is kept as f32, once for both.
    #[test]
    fn links_keep_grid_values_packed() {
        let grid = Tensor::from_vec(
            (0..24).map(|i| (i % 9 - 4) as f32 / 64.0).collect(),
            (2, 3, 4),
            &Device::Cpu,
        )
        .unwrap();
        let link = Link::default();
        link.set(grid.clone()).unwrap();
        assert!(matches!(&link.lock().value, Some(Packed::Codes(c)) if c.width() == 1));
        let handed = link.forward_input().unwrap();
        assert_eq!(handed.id(), grid.id());
        let back = BlockInput::Packed(link.backward_input().unwrap());
        for _ in 0..2 {
            let values = back.values().unwrap();
            assert_eq!(values.dims(), [2, 3, 4]);
            assert_eq!(flat(&values), flat(&grid));
        }
        assert!(link.backward_input().is_err());

        let off = (&grid + 1e-3).unwrap();
        link.set(off.clone()).unwrap();
        let kept = match &link.lock().value {
            Some(Packed::F32(kept)) => kept.as_tensor().id(),
            _ => panic!("an off-grid output should stay f32"),
        };
        let handed = link.forward_input().unwrap();
        assert_eq!(handed.id(), kept);
        assert_eq!(flat(&handed), flat(&off));
    }

    /// A chain of three blocks (two links) gives the plain graph's parameter
    /// gradients, bit for bit, on data and on a tracked input (whose gradient also
    /// matches); the middle block starts with a parameter-free op and returns its
    /// gradients itself ([`Recomputed::Gradients`]), the others a scalar.
    #[test]
    fn checkpointed_gradients_equal_plain_ones() {
        let dev = Device::Cpu;
        let weight = |rows: usize, cols: usize, k: f32| {
            Var::from_vec(
                (0..rows * cols)
                    .map(|i| (i as f32 * k).cos() * 0.6)
                    .collect(),
                (rows, cols),
                &dev,
            )
            .unwrap()
        };
        let ws = [weight(3, 4, 0.3), weight(4, 4, 0.7), weight(4, 2, 1.1)];
        let data = Tensor::from_vec(
            (0..15).map(|i| (i as f32 * 0.37).sin()).collect(),
            (5, 3),
            &dev,
        )
        .unwrap();
        let forward = |i: usize| -> ForwardFn {
            let w = ws[i].clone();
            Arc::new(move |t: Tensor| {
                let t = if i == 1 { t.tanh()? } else { t };
                t.matmul(&w)?.tanh()
            })
        };
        let backward = |i: usize| -> BackwardFn {
            let (w, run) = (ws[i].clone(), forward(i));
            Arc::new(move |t: BlockInput, seed: Tensor, input_grad: bool| {
                let input = tracked(&t.into_values()?, input_grad)?;
                let value = inner_product(&run(input.clone())?, &seed)?;
                if i != 1 {
                    return Ok(Recomputed::Scalar { value, input });
                }
                let grads = value.backward()?;
                Ok(Recomputed::Gradients(Gradients {
                    input: grads.get(&input).cloned(),
                    params: vec![(w.clone(), grads.get(&w).cloned().unwrap())],
                }))
            })
        };
        for tracked in [false, true] {
            let x = if tracked {
                Var::from_tensor(&data).unwrap().as_tensor().clone()
            } else {
                data.clone()
            };
            let mut h = x.clone();
            for i in 0..3 {
                h = forward(i)(h).unwrap();
            }
            let g_plain = h.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            let rc = Recompute::default();
            let blocks = (0..3)
                .map(|i| Block {
                    params: vec![ws[i].clone()],
                    forward: forward(i),
                    backward: backward(i),
                })
                .collect();
            let y = rc.chain(&x, blocks).unwrap();
            let mut g = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            rc.merge_into(&mut g).unwrap();
            for w in &ws {
                assert_eq!(flat(g.get(w).unwrap()), flat(g_plain.get(w).unwrap()));
            }
            match tracked {
                true => assert_eq!(flat(g.get(&x).unwrap()), flat(g_plain.get(&x).unwrap())),
                false => assert!(g.get(&x).is_none()),
            }
        }
    }
}

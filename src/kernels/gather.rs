//! An embedding lookup, the rows of a table gathered by id, as one candle custom op on the CPU.
//!
//! Why our own: candle's `index_select` hands its table gradient back to candle's backward pass,
//! which scatters it into a zero table and then adds that into another zero table (two fills and
//! two passes over the table per step), and the reshape to the output's shape is one more edge
//! (a zero fill and an addition over the activations). Here the output has its final shape, and
//! the table's gradient, scattered once, goes straight to the tape.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

/// `table (rows, dim)` → `(ids.shape, dim)`: the rows the ids name (checked by the caller).
pub(crate) struct Gather {
    ids: Arc<[u32]>,
    shape: Vec<usize>,
}

/// `g (ids.shape, dim)` → `(rows, dim)`: each gradient row added into its id's row.
struct ScatterAdd {
    ids: Arc<[u32]>,
    rows: usize,
    dim: usize,
}

fn table<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<(&'a [f32], usize, usize)> {
    let (rows, dim) = l.shape().dims2()?;
    Ok((super::cpu_f32(s, l, "embedding table")?, rows, dim))
}

impl CustomOp1 for Gather {
    fn name(&self) -> &'static str {
        "embedding_gather"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (t, rows, dim) = table(s, l)?;
        let mut out = Vec::with_capacity(self.ids.len() * dim);
        for &i in self.ids.iter() {
            let i = i as usize;
            if i >= rows {
                candle_core::bail!("embedding: id {i} for a table of {rows} rows")
            }
            out.extend_from_slice(&t[i * dim..(i + 1) * dim]);
        }
        let mut shape = self.shape.clone();
        shape.push(dim);
        Ok((CpuStorage::F32(out), Shape::from(shape)))
    }
    fn bwd(&self, t: &Tensor, _y: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        if !crate::tape::wanted(t) {
            return Ok(None);
        }
        let op = ScatterAdd {
            ids: self.ids.clone(),
            rows: t.dims()[0],
            dim: t.dims()[1],
        };
        let gt = g.contiguous()?.apply_op1_no_bwd(&op)?;
        crate::tape::route(t, Some(gt))
    }
}

impl CustomOp1 for ScatterAdd {
    fn name(&self) -> &'static str {
        "embedding_scatter_add"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = super::cpu_f32(s, l, "embedding output gradient")?;
        let (n, dim) = (self.ids.len(), self.dim);
        if g.len() != n * dim {
            candle_core::bail!(
                "embedding gradient: {} values for {n} ids of {dim} values",
                g.len()
            )
        }
        let mut out = vec![0f32; self.rows * dim];
        for (&i, row) in self.ids.iter().zip(g.chunks_exact(dim)) {
            let i = i as usize;
            if i >= self.rows {
                candle_core::bail!("embedding: id {i} for a table of {} rows", self.rows)
            }
            for (o, &v) in out[i * dim..(i + 1) * dim].iter_mut().zip(row) {
                *o += v;
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((self.rows, dim))))
    }
}

/// The rows of `table (rows, dim)` named by `ids` (each below `rows`, checked by the caller), as
/// `(shape..., dim)`; `None` where our kernels do not take the table.
pub(crate) fn gather(
    table: &Tensor,
    ids: Vec<u32>,
    shape: &[usize],
) -> candle_core::Result<Option<Tensor>> {
    if !super::takes(table) || table.rank() != 2 || table.dims()[1] == 0 {
        return Ok(None);
    }
    let op = Gather {
        ids: ids.into(),
        shape: shape.to_vec(),
    };
    Ok(Some(table.contiguous()?.apply_op1(op)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GradientTape;
    use crate::kernels::{fixed_randn, max_rel};
    use crate::tape::Variable;
    use candle_core::Device;

    #[test]
    fn gather_matches_index_select_and_its_gradient() {
        let dev = Device::Cpu;
        let t = Variable::new("t", &fixed_randn(1.0, (7, 5), &dev).unwrap(), true).unwrap();
        // Repeated ids add their gradients.
        let ids = vec![3u32, 0, 6, 3, 3, 1];
        let ours = gather(t.as_tensor(), ids.clone(), &[2, 3])
            .unwrap()
            .unwrap();
        let idx = Tensor::new(ids.as_slice(), &dev).unwrap();
        let theirs = t
            .as_tensor()
            .index_select(&idx, 0)
            .unwrap()
            .reshape((2, 3, 5))
            .unwrap();
        assert_eq!(ours.dims(), &[2, 3, 5]);
        assert!(max_rel(&ours, &theirs) < 1e-7);
        let r = fixed_randn(1.0, (2, 3, 5), &dev).unwrap();
        let g1 = GradientTape::gradient(&(&ours * &r).unwrap(), std::slice::from_ref(&t)).unwrap();
        let g2 =
            GradientTape::gradient(&(&theirs * &r).unwrap(), std::slice::from_ref(&t)).unwrap();
        assert!(max_rel(&g1[0], &g2[0]) < 1e-6);
        // No ids (an empty batch): an empty output, and a zero gradient.
        let none = gather(t.as_tensor(), Vec::new(), &[0, 3]).unwrap().unwrap();
        assert_eq!(none.dims(), &[0, 3, 5]);
        let g = GradientTape::gradient(&none.sum_all().unwrap(), std::slice::from_ref(&t)).unwrap();
        assert_eq!(
            g[0].abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            0.0
        );
        // An id past the table is an error, not a read out of bounds.
        let e = gather(t.as_tensor(), vec![7], &[1])
            .err()
            .map(|e| e.to_string());
        assert!(e.unwrap_or_default().contains("id 7"));
    }
}

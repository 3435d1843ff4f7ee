//! Packing: B (or Bᵀ) into NR-column panels, A into MR-row panels, weights
//! packed once (`PackedB`), and how a prepared weight is held (`PreparedB`).

use super::*;

/// B packed once (e.g. a weight at load time) in the kernel's panel layout.
#[derive(Debug, Clone)]
pub struct PackedB {
    pub(super) k: usize,
    pub(super) n: usize,
    pub(super) kc: usize,
    pub(super) nr: usize,
    /// For each KC block (in order), NR-wide panels of `kc_len × NR`, zero-padded.
    pub(super) data: Vec<f32>,
    /// Offset of each KC block in `data`.
    pub(super) block_offsets: Vec<usize>,
}

impl PackedB {
    pub fn k(&self) -> usize {
        self.k
    }

    pub fn n(&self) -> usize {
        self.n
    }

    /// Bytes of packed panels (with their zero padding).
    pub fn size_bytes(&self) -> usize {
        self.data.len() * 4
    }

    /// The blocking the panels were packed for.
    pub(crate) fn kc_nr(&self) -> (usize, usize) {
        (self.kc, self.nr)
    }
}

/// A GEMM's weight operand made ready once: f32 panels, or quantised
/// records read in their stored format (see [`crate::codegen::quant_gemv`]).
#[derive(Debug, Clone)]
pub enum PreparedB {
    Packed(PackedB),
    Quant(crate::codegen::quant_gemv::QuantPanels),
}

impl PreparedB {
    /// Bytes held.
    pub fn size_bytes(&self) -> usize {
        match self {
            PreparedB::Packed(p) => p.size_bytes(),
            PreparedB::Quant(q) => q.size_bytes(),
        }
    }

    /// B's rows (the reduction depth).
    pub fn k(&self) -> usize {
        match self {
            PreparedB::Packed(p) => p.k,
            PreparedB::Quant(q) => q.cols(),
        }
    }

    /// B's columns.
    pub fn n(&self) -> usize {
        match self {
            PreparedB::Packed(p) => p.n,
            PreparedB::Quant(q) => q.rows(),
        }
    }
}

/// B as it lies in memory: k × n row by row, or (`transposed`) Bᵀ, n × k
/// row by row, so B[kk][col] = data[col·ld + kk] (attention's K).
#[derive(Clone, Copy)]
pub(super) struct BView<'a> {
    pub(super) rows: RowsRef<'a>,
    pub(super) transposed: bool,
}

impl BView<'_> {
    /// B rows `pc..pc+kb`, columns `jc..jc+nb` into NR-column panels.
    pub(super) fn pack_block(&self, dst: &mut [f32], pc: usize, kb: usize, jc: usize, nb: usize, nr: usize) {
        let RowsRef { data, ld } = self.rows;
        if self.transposed {
            pack_line_panels(dst, data, ld, jc, nb, pc, kb, nr);
        } else {
            pack_b_block(dst, data, ld, pc, kb, jc, nb, nr);
        }
    }
}

pub(super) enum BSource<'a> {
    /// Packed block by block as the loops reach it.
    View(BView<'a>),
    Packed(&'a PackedB),
}

/// Lines `ic..ic+mb` of `a` (each contiguous, `lda` apart), depth
/// `pc..pc+kb`, into panels of `mr` lines, k-major (`panel[k·mr + r]`), the
/// last panel zero-padded. Packs A (lines are rows, panels of MR) and B
/// given as Bᵀ (lines are B's columns, panels of NR).
#[allow(clippy::too_many_arguments)]
pub(super) fn pack_line_panels(
    dst: &mut [f32],
    a: &[f32],
    lda: usize,
    ic: usize,
    mb: usize,
    pc: usize,
    kb: usize,
    mr: usize,
) {
    for (p, i0) in (0..mb).step_by(mr).enumerate() {
        let panel = &mut dst[p * mr * kb..(p + 1) * mr * kb];
        let rows = mr.min(mb - i0);
        for r in 0..mr {
            // Row r of the block: every MR-th value of the panel from r.
            let dst = panel[r..].iter_mut().step_by(mr);
            if r < rows {
                let src = &a[(ic + i0 + r) * lda + pc..(ic + i0 + r) * lda + pc + kb];
                dst.zip(src).for_each(|(d, &v)| *d = v);
            } else {
                dst.for_each(|d| *d = 0.0);
            }
        }
    }
}

/// B rows `pc..pc+kb`, columns `jc..jc+nb` into NR-column panels, k-major
/// (`panel[k·NR + c]`), the last panel zero-padded.
#[allow(clippy::too_many_arguments)]
pub(super) fn pack_b_block(
    dst: &mut [f32],
    b: &[f32],
    ldb: usize,
    pc: usize,
    kb: usize,
    jc: usize,
    nb: usize,
    nr: usize,
) {
    for (p, j0) in (0..nb).step_by(nr).enumerate() {
        let panel = &mut dst[p * nr * kb..(p + 1) * nr * kb];
        let cols = nr.min(nb - j0);
        for kk in 0..kb {
            let src = &b[(pc + kk) * ldb + jc + j0..(pc + kk) * ldb + jc + j0 + cols];
            let row = &mut panel[kk * nr..(kk + 1) * nr];
            row[..cols].copy_from_slice(src);
            row[cols..].fill(0.0);
        }
    }
}

impl GemmKernel {
    /// Packs `b[k×n]` (row-major) once, for [`GemmKernel::gemm_prepacked`].
    pub fn pack_b(&self, b: &[f32], k: usize, n: usize) -> Result<PackedB, CodegenError> {
        check_length(Buffer::B, b.len(), k * n)?;
        Ok(self.pack_view(BView { rows: RowsRef { data: b, ld: n }, transposed: false }, k, n))
    }

    /// Packs a k × n B given as a view, once, for [`BSource::Packed`].
    pub(super) fn pack_view(&self, b: BView, k: usize, n: usize) -> PackedB {
        self.pack_view_cols(b, k, (0, n))
    }

    /// Packs columns `n0..n1` of a k-deep B given as a view; the result's
    /// column 0 is B's column `n0`.
    pub(super) fn pack_view_cols(&self, b: BView, k: usize, (n0, n1): (usize, usize)) -> PackedB {
        let (kc, nr) = (self.blocking.kc, self.blocking.nr);
        let n = n1 - n0;
        let mut data = Vec::new();
        let mut block_offsets = Vec::new();
        for pc in (0..k).step_by(kc.max(1)) {
            let kb = kc.min(k - pc);
            block_offsets.push(data.len());
            let start = data.len();
            data.resize(start + n.div_ceil(nr) * nr * kb, 0.0);
            b.pack_block(&mut data[start..], pc, kb, n0, n, nr);
        }
        PackedB { k, n, kc, nr, data, block_offsets }
    }

    /// Packs a k × n B given as its columns (Bᵀ lines): `lines(j0, count,
    /// out)` writes columns `j0..j0 + count`, k values each, into `out`.
    /// Parallel over NR-column panels; each panel's lines are fetched once.
    pub(crate) fn pack_b_lines(
        &self,
        k: usize,
        n: usize,
        threads: usize,
        lines: &(dyn Fn(usize, usize, &mut [f32]) + Sync),
    ) -> PackedB {
        let (kc, nr) = (self.blocking.kc, self.blocking.nr);
        let panels = n.div_ceil(nr);
        let mut block_offsets = Vec::new();
        let mut len = 0;
        for pc in (0..k).step_by(kc.max(1)) {
            block_offsets.push(len);
            len += panels * nr * kc.min(k - pc);
        }
        let mut data = vec![0.0f32; len];
        let base = data.as_mut_ptr() as usize;
        let parts = threads.max(1).min(panels.max(1));
        let per = panels.div_ceil(parts);
        let offsets = &block_offsets;
        let fill = |t: usize| -> Result<(), std::convert::Infallible> {
            let mut tmp = vec![0.0f32; nr * k];
            for p in t * per..((t + 1) * per).min(panels) {
                let count = nr.min(n - p * nr);
                lines(p * nr, count, &mut tmp[..count * k]);
                for (bi, pc) in (0..k).step_by(kc.max(1)).enumerate() {
                    let kb = kc.min(k - pc);
                    let at = offsets[bi] + p * nr * kb;
                    // SAFETY: panel p of block bi is `nr·kb` values at `at`,
                    // inside `data`; parts own disjoint panels.
                    let dst = unsafe { std::slice::from_raw_parts_mut((base as *mut f32).add(at), nr * kb) };
                    pack_line_panels(dst, &tmp, k, 0, count, pc, kb, nr);
                }
            }
            Ok(())
        };
        let _ = for_each_part(parts, fill);
        PackedB { k, n, kc, nr, data, block_offsets }
    }
}

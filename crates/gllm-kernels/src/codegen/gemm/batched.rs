//! Batched GEMMs on strided views: stacked, shared B, interleaved heads, Bᵀ
//! (attention's scores and context).

use super::*;

impl GemmKernel {
    /// A batched GEMM as the graph describes it (attention): for each batch
    /// element `i`, `C_i = A_i · B_{i / b_shared_by}` (B transposed when
    /// `transpose_b`), each operand Stacked (`[batch, rows, cols]`) or
    /// Interleaved (`[rows, batch·cols]`). Extras are one row of N, an M×N
    /// matrix shared by every batch element (a mask), or one M×N matrix per
    /// element.
    ///
    /// Each batch element runs on views of the operands (no copies); batch
    /// elements are split across threads.
    pub fn gemm_batched(
        &self,
        a: &[f32],
        b: &[f32],
        c: &mut [f32],
        p: &crate::graph::MatMulParams,
        extras: &[&[f32]],
        threads: usize,
    ) -> Result<(), CodegenError> {
        use crate::graph::BatchLayout;
        let (m, n, k, batch) = (p.m, p.n, p.k, p.batch);
        if batch == 0 || p.b_shared_by == 0 || batch % p.b_shared_by != 0 {
            return Err(CodegenError::BadArguments(BadArguments::BatchSharing {
                batch,
                shared_by: p.b_shared_by,
            }));
        }
        let b_batch = batch / p.b_shared_by;
        check_length(Buffer::A, a.len(), batch * m * k)?;
        check_length(Buffer::B, b.len(), b_batch * k * n)?;
        check_length(Buffer::C, c.len(), batch * m * n)?;
        // Each extra operand is a tensor of C's shape or a row broadcast
        // over it (C's row is `batch·n` wide when heads are interleaved), or
        // one m × n matrix shared by every batch element.
        #[derive(Clone, Copy)]
        enum Extra {
            LikeC,
            Row,
            SharedMatrix,
        }
        let interleaved_c = p.c_layout == BatchLayout::Interleaved && batch > 1;
        let row_len = if interleaved_c { batch * n } else { n };
        self.check_extra_count(extras.len())?;
        let kinds: Vec<Extra> = extras
            .iter()
            .enumerate()
            .map(|(i, e)| match e.len() {
                l if l == row_len => Ok(Extra::Row),
                l if l == batch * m * n => Ok(Extra::LikeC),
                l if l == m * n && !interleaved_c => Ok(Extra::SharedMatrix),
                got => Err(CodegenError::BadArguments(BadArguments::BatchedExtraLength {
                    index: i,
                    got,
                    row_len,
                    batch,
                    m,
                    n,
                })),
            })
            .collect::<Result<_, _>>()?;
        // Views of batch element i: (offset, row stride) of a `rows × cols`
        // element of an operand holding `count` of them.
        let view = |layout: BatchLayout, count: usize, i: usize, rows: usize, cols: usize| match layout {
            BatchLayout::Stacked => (i * rows * cols, cols),
            BatchLayout::Interleaved => (i * cols, count * cols),
        };
        if m == 0 || n == 0 {
            return Ok(());
        }
        // With k = 0 the operands are empty and never read.
        fn from(v: &[f32], off: usize) -> &[f32] {
            v.get(off..).unwrap_or(&[])
        }
        let c_addr = c.as_mut_ptr() as usize;
        // B element bi as rows (of Bᵀ when transposed).
        let b_view = |bi: usize| {
            let (rows, cols) = if p.transpose_b { (n, k) } else { (k, n) };
            let (off, ld) = view(p.b_layout, b_batch, bi, rows, cols);
            BView { rows: RowsRef { data: from(b, off), ld }, transposed: p.transpose_b }
        };
        // A B shared by several batch elements (grouped-query attention's K
        // and V) is packed once for all of them.
        let shared: Vec<PackedB> = if p.b_shared_by > 1 {
            (0..b_batch).map(|bi| self.pack_view(b_view(bi), k, n)).collect()
        } else {
            Vec::new()
        };
        let work = |i: usize| -> Result<(), CodegenError> {
            let (a_off, lda) = view(p.a_layout, batch, i, m, k);
            let bi = i / p.b_shared_by;
            let b_src = match shared.get(bi) {
                Some(packed) => BSource::Packed(packed),
                None => BSource::View(b_view(bi)),
            };
            let (c_off, ldc) = view(p.c_layout, batch, i, m, n);
            // (address, row stride) of batch element i's part of each extra.
            let ex: Vec<(usize, usize)> = extras
                .iter()
                .zip(&kinds)
                .map(|(e, kind)| match kind {
                    Extra::LikeC => {
                        let (off, ld) = view(p.c_layout, batch, i, m, n);
                        (e[off..].as_ptr() as usize, ld)
                    }
                    Extra::Row if interleaved_c => (e[i * n..].as_ptr() as usize, 0),
                    Extra::Row => (e.as_ptr() as usize, 0),
                    Extra::SharedMatrix => (e.as_ptr() as usize, n),
                })
                .collect();
            let c = OutC { ptr: (c_addr as *mut f32).wrapping_add(c_off), ld: ldc };
            // SAFETY: element i's A, B and C views, and the extras' views
            // (like C's; a row of n at i·n of a batch·n row; a whole m × n
            // matrix), lie in the checked lengths
            // (offset + (rows − 1)·ld + cols ≤ len in both layouts); batch
            // elements write disjoint elements of C (each (i, r, col) maps to
            // a distinct index in either layout), A and B are not C.
            unsafe { self.run(RowsRef { data: from(a, a_off), ld: lda }, b_src, c, (m, n, k), &ex, 1) }
        };
        let threads = threads.max(1).min(batch);
        let per = batch.div_ceil(threads);
        for_each_part(threads, |t| (t * per..((t + 1) * per).min(batch)).try_for_each(&work))
    }
}

//! The BLIS loop nest for one GEMM: NC columns, KC deep, MC rows, then
//! MR × NR tiles through the microkernel, with edge tiles and epilogues.

use super::*;

/// One KC step of the tile loop.
#[derive(Clone, Copy)]
pub(super) struct TileStep {
    pub(super) kb: usize,
    /// Add to C (not the first KC block).
    pub(super) accumulate: usize,
    /// The last KC block: apply the epilogue.
    pub(super) last: bool,
}

/// Rows of a matrix operand: row r starts at `data[r·ld]`, elements contiguous.
#[derive(Clone, Copy)]
pub(super) struct RowsRef<'a> {
    pub(super) data: &'a [f32],
    pub(super) ld: usize,
}

/// Where C is written: row r starts at `ptr + r·ld`, elements contiguous.
/// A raw pointer because threads (and batch elements of interleaved
/// layouts) write disjoint parts of one buffer.
#[derive(Clone, Copy)]
pub(super) struct OutC {
    pub(super) ptr: *mut f32,
    pub(super) ld: usize,
}

impl GemmKernel {
    /// The GEMM on operand views, split over up to `threads` threads.
    ///
    /// # Safety
    /// `a` holds m rows of k elements at its row stride, `b` k × n, and C is
    /// valid for writes of m rows of n elements at its row stride, not
    /// overlapping A or B; `extras` lie in their operands' shapes.
    pub(super) unsafe fn run(
        &self,
        a: RowsRef,
        b: BSource,
        c: OutC,
        (m, n, k): (usize, usize, usize),
        extras: &[(usize, usize)],
        threads: usize,
    ) -> Result<(), CodegenError> {
        if m == 0 || n == 0 {
            return Ok(());
        }
        // Builds the row-count and GEMV variants on first use.
        self.variants()?;
        if k == 0 {
            for r in 0..m {
                // SAFETY: row r of C (caller's contract).
                unsafe { std::slice::from_raw_parts_mut(c.ptr.add(r * c.ld), n).fill(0.0) };
            }
            if let Some(e) = &self.epilogue {
                // SAFETY: C is m × n at its stride, extras checked against m and n.
                unsafe { self.edge_epilogue(e, c, extras, (0, m), (0, n)) };
            }
            return Ok(());
        }
        let bl = &self.blocking;
        let threads = threads.max(1);
        // Split columns (NR multiples) across threads when wide enough, else rows.
        let col_split = n >= threads * bl.nr * 2 || m < threads * bl.mr;
        let parts: Vec<(usize, usize, usize, usize)> = if threads == 1 {
            vec![(0, m, 0, n)]
        } else if col_split {
            let per = n.div_ceil(threads).div_ceil(bl.nr) * bl.nr;
            (0..threads).map(|t| (0, m, t * per, ((t + 1) * per).min(n))).filter(|p| p.2 < p.3).collect()
        } else {
            let per = m.div_ceil(threads).div_ceil(bl.mr) * bl.mr;
            (0..threads).map(|t| (t * per, ((t + 1) * per).min(m), 0, n)).filter(|p| p.0 < p.1).collect()
        };
        let c_addr = c.ptr as usize;
        let ldc = c.ld;
        let work = |&(m0, m1, n0, n1): &(usize, usize, usize, usize)| {
            let c = OutC { ptr: c_addr as *mut f32, ld: ldc };
            // SAFETY: parts cover disjoint row or column ranges of C, so no
            // two threads write the same element; the rest is the caller's.
            unsafe { self.block(a, &b, c, k, (m0, m1), (n0, n1), extras) };
            Ok::<(), std::convert::Infallible>(())
        };
        // Infallible: the parts cannot fail.
        let _ = for_each_part(parts.len(), |i| work(&parts[i]));
        Ok(())
    }

    /// The BLIS loop nest over rows `m0..m1` and columns `n0..n1` of C.
    ///
    /// # Safety
    /// As [`GemmKernel::run`], for this part of C.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn block(
        &self,
        a: RowsRef,
        b: &BSource,
        c: OutC,
        k: usize,
        (m0, m1): (usize, usize),
        (n0, n1): (usize, usize),
        extras: &[(usize, usize)],
    ) {
        let bl = &self.blocking;
        let (mr, nr) = (bl.mr, bl.nr);
        let mut a_pack = vec![0.0f32; bl.mc.div_ceil(mr) * mr * bl.kc];
        let mut b_pack = Vec::new();
        let mut edge = vec![0.0f32; mr * nr];
        for jc in (n0..n1).step_by(bl.nc) {
            let nb = bl.nc.min(n1 - jc);
            for (bi, pc) in (0..k).step_by(bl.kc).enumerate() {
                let kb = bl.kc.min(k - pc);
                let b_panels: &[f32] = match b {
                    BSource::View(v) => {
                        b_pack.resize(nb.div_ceil(nr) * nr * kb, 0.0);
                        v.pack_block(&mut b_pack, pc, kb, jc, nb, nr);
                        &b_pack
                    }
                    BSource::Packed(p) => {
                        // Panels of the prepacked block starting at column jc.
                        let off = p.block_offsets[bi] + (jc / nr) * nr * kb;
                        &p.data[off..]
                    }
                };
                let accumulate = usize::from(pc > 0);
                let last = pc + kb == k;
                for ic in (m0..m1).step_by(bl.mc) {
                    let mb = bl.mc.min(m1 - ic);
                    pack_line_panels(&mut a_pack, a.data, a.ld, ic, mb, pc, kb, mr);
                    let step = TileStep { kb, accumulate, last };
                    // SAFETY: rows ic..ic+mb, columns jc..jc+nb lie in this part of C.
                    unsafe { self.tiles(&a_pack, b_panels, c, step, (ic, mb), (jc, nb), extras, &mut edge) };
                }
            }
        }
        // SAFETY: this part's rows and columns lie in C and the extras.
        unsafe { self.finish_edge_tiles(c, extras, (m0, m1), (n0, n1)) };
    }

    /// All MR×NR tiles of one packed A block (rows `row0..row0+mb`) against
    /// the packed B panels of columns `col0..col0+nb`, for one KC step.
    ///
    /// # Safety
    /// Rows `row0..row0+mb`, columns `col0..col0+nb` of C are valid for
    /// writes (and reads when accumulating), and lie in the extras' shapes.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn tiles(
        &self,
        a_pack: &[f32],
        b_panels: &[f32],
        c: OutC,
        step: TileStep,
        (row0, mb): (usize, usize),
        (col0, nb): (usize, usize),
        extras: &[(usize, usize)],
        edge: &mut [f32],
    ) {
        let (mr, nr) = (self.blocking.mr, self.blocking.nr);
        let TileStep { kb, accumulate, last } = step;
        let micro: MicroFn = unsafe_micro(&self.micro);
        for jr in (0..nb).step_by(nr) {
            let nw = nr.min(nb - jr);
            let bp = &b_panels[(jr / nr) * nr * kb..];
            for ir in (0..mb).step_by(mr) {
                let mh = mr.min(mb - ir);
                let ap = &a_pack[(ir / mr) * mr * kb..];
                let row = row0 + ir;
                let col = col0 + jr;
                // SAFETY (pointer arithmetic): (row, col) lies in C (caller).
                let tile = unsafe { c.ptr.add(row * c.ld + col) };
                let ldc = c.ld;
                if mh == mr && nw == nr {
                    match (&self.epilogue, last) {
                        (Some(e), true) => {
                            let args = epi_args(e, extras, accumulate, row, col);
                            let f: EpiMicroFn = unsafe_epi_micro(&e.micro);
                            // SAFETY: as below; the extras cover C's shape
                            // (checked), offset to this tile.
                            unsafe { f(ap.as_ptr(), bp.as_ptr(), tile, ldc, kb, &args) };
                        }
                        // SAFETY: full tile: rows row..row+MR and columns
                        // col..col+NR of C exist (caller); panels hold kb·MR
                        // and kb·NR values.
                        _ => unsafe { micro(ap.as_ptr(), bp.as_ptr(), tile, ldc, kb, accumulate) },
                    }
                } else if nw == nr && !(self.epilogue.is_some() && last) {
                    // Partial row tile, full columns: the row-count variant
                    // writes its mh rows straight into C.
                    let rows = &self
                        .variants
                        .get()
                        .and_then(|v| v.as_ref().ok())
                        .expect("variants built by run")
                        .rows;
                    let f: MicroFn = unsafe_micro(&rows[mh - 1]);
                    // SAFETY: rows row..row+mh and columns col..col+NR of C
                    // exist; the kernel touches only those rows.
                    unsafe { f(ap.as_ptr(), bp.as_ptr(), tile, ldc, kb, accumulate) };
                } else {
                    // Edge tile: the full tile into a buffer (padding is
                    // zeros), then the valid part (its epilogue runs later).
                    // SAFETY: `edge` is MR×NR with ldc = NR.
                    unsafe { micro(ap.as_ptr(), bp.as_ptr(), edge.as_mut_ptr(), nr, kb, 0) };
                    for r in 0..mh {
                        // SAFETY: row + r, columns col..col+nw lie in C (caller).
                        let dst = unsafe { std::slice::from_raw_parts_mut(tile.add(r * ldc), nw) };
                        let src = &edge[r * nr..r * nr + nw];
                        if accumulate == 1 {
                            dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
                        } else {
                            dst.copy_from_slice(src);
                        }
                    }
                }
            }
        }
    }

    /// Applies the epilogue (if any) to the edge tiles of rows `m0..m1`,
    /// columns `n0..n1` of C: `tiles` stored them raw.
    ///
    /// # Safety
    /// The region must lie in C and in the extras' shapes.
    pub(super) unsafe fn finish_edge_tiles(
        &self,
        c: OutC,
        extras: &[(usize, usize)],
        (m0, m1): (usize, usize),
        (n0, n1): (usize, usize),
    ) {
        let Some(e) = &self.epilogue else { return };
        let full_m = m0 + (m1 - m0) / self.blocking.mr * self.blocking.mr;
        let full_n = n0 + (n1 - n0) / self.blocking.nr * self.blocking.nr;
        // SAFETY: both regions lie inside the caller's region.
        unsafe {
            self.edge_epilogue(e, c, extras, (full_m, m1), (n0, n1));
            self.edge_epilogue(e, c, extras, (m0, full_m), (full_n, n1));
        }
    }

    /// Runs the epilogue's loop kernel in place over rows `r0..r1`, columns
    /// `c0..c1` of C.
    ///
    /// # Safety
    /// The region must lie in C and in the extras' shapes.
    pub(super) unsafe fn edge_epilogue(
        &self,
        e: &CompiledEpilogue,
        c: OutC,
        extras: &[(usize, usize)],
        (r0, r1): (usize, usize),
        (c0, c1): (usize, usize),
    ) {
        use crate::codegen::loops::{KernelArgs, MAX_STREAMS};
        if r0 >= r1 || c0 >= c1 {
            return;
        }
        let mut args = KernelArgs {
            ptrs: [std::ptr::null_mut(); MAX_STREAMS],
            strides: [0; MAX_STREAMS],
            len: c1 - c0,
            rows: r1 - r0,
            pool: std::ptr::null(),
        };
        // SAFETY (pointer arithmetic): inside C and the extras by the caller's contract.
        let origin = unsafe { c.ptr.add(r0 * c.ld + c0) };
        args.ptrs[0] = origin;
        args.strides[0] = (c.ld * 4) as isize;
        for (j, &(ptr, ld)) in extras.iter().enumerate() {
            args.ptrs[1 + j] = (ptr + (r0 * ld + c0) * 4) as *mut f32;
            args.strides[1 + j] = (ld * 4) as isize;
        }
        let out = 1 + extras.len();
        args.ptrs[out] = origin;
        args.strides[out] = (c.ld * 4) as isize;
        // SAFETY: the region is valid for reads and writes (caller); the
        // kernel writes each C element after reading it (in place).
        unsafe { e.edges.call(args) };
    }
}

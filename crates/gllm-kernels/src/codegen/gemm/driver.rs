//! The BLIS loop nest ([`nest`]) shared by every f32 GEMM — plain, several
//! on one A, tile-fused — then MR × NR tiles through the microkernel, with
//! edge tiles and epilogues.

use super::*;
use std::borrow::Cow;

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

// SAFETY: an OutC is only an address and a stride; every write through it
// happens in an `unsafe fn` whose contract gives each thread a disjoint part.
unsafe impl Send for OutC {}
// SAFETY: as for Send: sharing the address shares no access by itself.
unsafe impl Sync for OutC {}

/// Where the nest reads B's panels for one member: packed per (KC, NC)
/// block as the loops reach it, or a packed B whose column `col0` is C's.
pub(super) enum NestPanels<'a> {
    Stream(BView<'a>),
    Packed { b: Cow<'a, PackedB>, col0: usize },
}

/// Where the nest's A rows come from.
#[derive(Clone, Copy)]
pub(super) enum NestA<'a> {
    /// A itself.
    Rows(RowsRef<'a>),
    /// A row op's output (tile-level fusion): `producer` runs on each MC
    /// block of rows of `a` (m × k, contiguous) into a scratch block that
    /// the A packing reads; the whole intermediate never exists.
    Produced { a: &'a [f32], producer: &'a TileProducer<'a> },
}

/// One GEMM computed by the nest from the shared A.
pub(super) struct NestMember<'a> {
    pub(super) gemm: &'a GemmKernel,
    pub(super) panels: NestPanels<'a>,
    pub(super) c: OutC,
    pub(super) extras: &'a [(usize, usize)],
    /// The columns of C this call computes.
    pub(super) cols: (usize, usize),
}

/// The one BLIS loop nest, serving a plain GEMM (one member), GEMMs sharing
/// A (Q/K/V, gate/up) and tile-level fusion (a producer making A), over rows
/// `m0..m1` of every member's C:
///
/// ```text
/// for ic in rows, MC at a time          A block (produced here under fusion)
///   for pc in 0..k, KC at a time        pack A's mb × kb block once (L2)
///     for each member
///       for jc in its columns, NC at a time   B's kb × nb panels (streamed)
///         MR × NR tiles: jr, then ir          one B micro-panel in L1
/// ```
///
/// Rows are outermost so that a producer runs once per row block and needs
/// no whole intermediate, and every member reuses one packed A. Against
/// BLIS's columns-first order (jc → pc → ic) this streams B once per row
/// block instead of keeping a KC × NC panel in L3; each streamed B value
/// meets MC rows of A (≥ 2·MC flops per 4 bytes), far above what this
/// machine's memory needs to keep the FMA units fed. A B that would have to
/// be re-packed per row block is packed whole first ([`GemmKernel::nest_panels`]).
/// All members share one [`GemmBlocking`] (the callers check).
///
/// # Safety
/// Each member's C is valid for writes (and reads) of rows `m0..m1` and its
/// columns at its row stride, not overlapping A, B or another member's
/// written region; its extras lie in their shapes; A holds rows `m0..m1` of
/// `k` values at its stride.
pub(super) unsafe fn nest(
    a: NestA,
    k: usize,
    members: &[NestMember],
    (m0, m1): (usize, usize),
) -> Result<(), CodegenError> {
    let Some(first) = members.first() else { return Ok(()) };
    let bl = first.gemm.blocking;
    let (mr, nr, mc, kc, nc) = (bl.mr, bl.nr, bl.mc, bl.kc, bl.nc);
    if m0 >= m1 {
        return Ok(());
    }
    if k == 0 {
        // An empty sum: C is zero, then the epilogue (bias, residual, …).
        for member in members {
            let (c, (n0, n1)) = (member.c, member.cols);
            for r in m0..m1 {
                // SAFETY: row r, columns n0..n1 of this member's C (caller).
                unsafe { std::slice::from_raw_parts_mut(c.ptr.add(r * c.ld + n0), n1 - n0).fill(0.0) };
            }
            if let Some(e) = &member.gemm.epilogue {
                // SAFETY: the region lies in C and the extras (caller).
                unsafe { member.gemm.edge_epilogue(e, c, member.extras, (m0, m1), (n0, n1)) };
            }
        }
        return Ok(());
    }
    let mut scratch = match a {
        NestA::Produced { .. } => vec![0.0f32; mc.min(m1 - m0) * k],
        NestA::Rows(_) => Vec::new(),
    };
    let mut a_pack = vec![0.0f32; mc.div_ceil(mr) * mr * kc];
    let mut b_pack = Vec::new();
    let mut edge = vec![0.0f32; mr * nr];
    for ic in (m0..m1).step_by(mc) {
        let mb = mc.min(m1 - ic);
        let (src, src_row) = match a {
            NestA::Rows(rows) => (rows, ic),
            NestA::Produced { a, producer } => {
                let mut ins: Vec<&[f32]> = vec![&a[ic * k..(ic + mb) * k]];
                ins.extend_from_slice(producer.inputs);
                producer.kernel.run(&ins, &mut [&mut scratch[..mb * k]], mb, k, 1)?;
                (RowsRef { data: &scratch, ld: k }, 0)
            }
        };
        for (bi, pc) in (0..k).step_by(kc).enumerate() {
            let kb = kc.min(k - pc);
            pack_line_panels(&mut a_pack, src.data, src.ld, src_row, mb, pc, kb, mr);
            let step = TileStep { kb, accumulate: usize::from(pc > 0), last: pc + kb == k };
            for member in members {
                let (n0, n1) = member.cols;
                for jc in (n0..n1).step_by(nc) {
                    let nb = nc.min(n1 - jc);
                    let panels: &[f32] = match &member.panels {
                        NestPanels::Stream(v) => {
                            b_pack.resize(nb.div_ceil(nr) * nr * kb, 0.0);
                            v.pack_block(&mut b_pack, pc, kb, jc, nb, nr);
                            &b_pack
                        }
                        NestPanels::Packed { b, col0 } => {
                            &b.data[b.block_offsets[bi] + ((jc - col0) / nr) * nr * kb..]
                        }
                    };
                    // SAFETY: rows ic..ic+mb and columns jc..jc+nb lie in
                    // this call's part of the member's C (caller).
                    unsafe {
                        member.gemm.tiles(
                            &a_pack,
                            panels,
                            member.c,
                            step,
                            (ic, mb),
                            (jc, nb),
                            member.extras,
                            &mut edge,
                        )
                    };
                }
            }
        }
    }
    for member in members {
        // SAFETY: this call's rows and the member's columns lie in its C and extras.
        unsafe { member.gemm.finish_edge_tiles(member.c, member.extras, (m0, m1), member.cols) };
    }
    Ok(())
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
        let work = |&(m0, m1, n0, n1): &(usize, usize, usize, usize)| {
            let member = NestMember {
                gemm: self,
                panels: self.nest_panels(&b, k, (m0, m1), (n0, n1)),
                c,
                extras,
                cols: (n0, n1),
            };
            // SAFETY: parts cover disjoint row or column ranges of C, so no
            // two threads write the same element; the rest is the caller's.
            unsafe { nest(NestA::Rows(a), k, &[member], (m0, m1)) }
        };
        for_each_part(parts.len(), |i| work(&parts[i]))?;
        Ok(())
    }

    /// B's panels of the columns `cols` of C, for [`nest`]: the part's
    /// columns packed once when several row blocks will read them.
    pub(super) fn nest_panels<'b>(
        &self,
        b: &'b BSource<'b>,
        k: usize,
        rows: (usize, usize),
        cols: (usize, usize),
    ) -> NestPanels<'b> {
        match b {
            BSource::Packed(p) => NestPanels::Packed { b: Cow::Borrowed(p), col0: 0 },
            // One row block: each (KC, NC) block is packed as it is reached,
            // in a KC × NC buffer.
            BSource::View(v) if rows.1 - rows.0 <= self.blocking.mc => NestPanels::Stream(*v),
            // Several row blocks would re-pack every block for each of them:
            // pack this part's columns whole, once.
            BSource::View(v) => {
                NestPanels::Packed { b: Cow::Owned(self.pack_view_cols(*v, k, cols)), col0: cols.0 }
            }
        }
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

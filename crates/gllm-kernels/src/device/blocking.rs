//! BLIS-style GEMM blocking derived from a [`DeviceProfile`], in one place.
//!
//! The microkernel computes an MR × NR tile of C in registers. KC is sized so
//! a packed B micro-panel (KC × NR) takes a quarter of L2 (not half of L1d,
//! the textbook choice: measured on the Zen 5 VM, KC = 768 runs the 12×32
//! kernel at 90 % of peak where KC = 128 reached 83 % — the C-tile update per
//! KC block costs more than streaming B from L2), MC so the packed A block
//! (MC × KC) takes half of L2, NC so the packed B panel (KC × NC) takes half
//! of the L3 share. Tuning happens here and only here.

use super::DeviceProfile;
use serde::Serialize;

/// Register and cache blocking for an f32 GEMM on one profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct GemmBlocking {
    /// Rows of the register tile.
    pub mr: usize,
    /// Columns of the register tile (a multiple of the vector width).
    pub nr: usize,
    /// Depth of one packed panel (B micro-panel: a quarter of L2).
    pub kc: usize,
    /// Rows of one packed A block (L2-resident).
    pub mc: usize,
    /// Columns of one packed B panel (L3-resident).
    pub nc: usize,
    /// Accumulator registers the microkernel holds (MR × NR / lanes).
    pub accumulators: usize,
    /// Vector registers not holding accumulators: what an injected epilogue
    /// may use as scratch. The B loads and the A broadcast are dead once the
    /// k-loop ends, so their registers count (AVX2 6×16: 4; AVX-512 12×32:
    /// 8 — the 1 and 5 counted before left them idle).
    pub spare_regs: usize,
}

impl GemmBlocking {
    /// Derives the blocking from the profile's registers and caches.
    pub fn for_profile(p: &DeviceProfile) -> GemmBlocking {
        let regs = p.num_simd_regs();
        let lanes = p.f32_lanes();
        let (mr, nv) = register_tile(regs);
        let nr = nv * lanes;
        let f32_bytes = 4;
        let kc = (round_down((p.caches.l2.size_bytes / 4) / (nr * f32_bytes), 8)).clamp(64, 768);
        let mc = round_down((p.caches.l2.size_bytes / 2) / (kc * f32_bytes), mr).clamp(mr, 960);
        let nc = round_down((p.caches.l3.size_bytes / 2) / (kc * f32_bytes), nr).clamp(nr, 8192);
        let accumulators = mr * nv;
        GemmBlocking { mr, nr, kc, mc, nc, accumulators, spare_regs: regs - accumulators }
    }
}

/// Registers an injected epilogue gets when the register file can afford them.
const EPILOGUE_RESERVE: usize = 4;

/// Fewest accumulators that keep both FMA ports busy through the 4-cycle FMA
/// latency (2 × 4 = 8 in flight) with 50 % slack for load and broadcast delays.
const MIN_ACCUMULATORS: usize = 12;

/// Chooses the accumulator tile (MR rows × NV vectors): the largest one with
/// MR·NV accumulators + NV B registers + 1 broadcast register fitting the
/// register file, first trying to leave [`EPILOGUE_RESERVE`] registers free for
/// epilogues. With 32 registers that costs 4 accumulators (12×32 instead of
/// 14×32); with 16 it would leave too few accumulators, so AVX2 keeps 6×16 and
/// only simple epilogues fit. Ties go to fewer vectors per row.
fn register_tile(regs: usize) -> (usize, usize) {
    let largest = |reserve: usize| {
        let mut best = (0, 0);
        for nv in 2..=4 {
            let mr = regs.saturating_sub(1 + nv + reserve) / nv;
            if mr * nv > best.0 * best.1 {
                best = (mr, nv);
            }
        }
        best
    };
    let roomy = largest(EPILOGUE_RESERVE);
    if roomy.0 * roomy.1 >= MIN_ACCUMULATORS {
        roomy
    } else {
        largest(0)
    }
}

fn round_down(x: usize, multiple: usize) -> usize {
    x / multiple * multiple
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_tiles_match_the_classic_shapes() {
        assert_eq!(register_tile(16), (6, 2)); // AVX2 6×16
        assert_eq!(register_tile(32), (12, 2)); // AVX-512 12×32, 8 free after the k-loop
    }

    #[test]
    fn blocking_for_presets() {
        let zen5 = DeviceProfile::preset("zen5").unwrap().gemm_blocking();
        assert_eq!((zen5.mr, zen5.nr, zen5.kc, zen5.mc, zen5.nc), (12, 32, 768, 168, 5440));
        assert_eq!((zen5.accumulators, zen5.spare_regs), (24, 8));
        let hsw = DeviceProfile::preset("haswell").unwrap().gemm_blocking();
        assert_eq!((hsw.mr, hsw.nr, hsw.kc, hsw.mc, hsw.nc), (6, 16, 768, 42, 1360));
        assert_eq!((hsw.accumulators, hsw.spare_regs), (12, 4));
    }
}

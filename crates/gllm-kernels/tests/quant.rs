//! Quantised-weight kernels against their scalar references: the GEMV on
//! random blocks (random codes; scales that are zero, subnormal f16,
//! ordinary and extreme), odd row and block counts, 1..=9 activation rows,
//! 1 and 2 threads; the dequantising GEMM packer against dequantising rows.

mod support;

use gllm_kernels::codegen::gemm::GemmKernel;
use gllm_kernels::codegen::quant_gemv::QuantPanels;
use gllm_kernels::device::DeviceProfile;
use gllm_kernels::quant::{
    activation_quantisation_bound, dequantize_row, quantize_activation_block, row_dot, row_dot_quantized,
    QuantFormat, QuantMatrix, ACT_BLOCK,
};
use half::f16;
use support::Rng;

const KERNEL_FORMATS: [QuantFormat; 7] = QuantFormat::ALL;

fn is_float(format: QuantFormat) -> bool {
    matches!(format, QuantFormat::F16 | QuantFormat::Bf16)
}

/// `cols` rounded up to whole blocks of `format` (Q4_K's are 256 wide).
fn whole_blocks(format: QuantFormat, cols: usize) -> usize {
    cols.div_ceil(format.block_elems()) * format.block_elems()
}

/// An f16 scale: mostly ordinary, sometimes zero, subnormal or extreme.
fn scale(rng: &mut Rng) -> [u8; 2] {
    let v = match rng.next_u64() % 16 {
        0 => f16::ZERO,
        1 => f16::from_bits(1 + (rng.next_u64() % 1023) as u16), // subnormal
        2 => f16::from_f32(if rng.next_u64() % 2 == 0 { 60000.0 } else { -60000.0 }),
        3 => f16::from_f32(rng.uniform(-1e-4, 1e-4)),
        _ => f16::from_f32(rng.uniform(-0.05, 0.05)),
    };
    v.to_le_bytes()
}

/// `rows × cols` random stored bytes of `format`.
fn random_matrix(format: QuantFormat, rows: usize, cols: usize, rng: &mut Rng) -> Vec<u8> {
    let blocks = rows * cols / format.block_elems();
    let mut out = Vec::with_capacity(blocks * format.block_bytes());
    for _ in 0..blocks {
        if is_float(format) {
            // Ordinary, zero, subnormal and extreme values alike.
            let v = f16::from_le_bytes(scale(rng)).to_f32() * rng.uniform(-1.0, 1.0);
            match format {
                QuantFormat::F16 => out.extend_from_slice(&f16::from_f32(v).to_le_bytes()),
                _ => out.extend_from_slice(&half::bf16::from_f32(v * 1e3).to_le_bytes()),
            }
            continue;
        }
        if format == QuantFormat::Q6K {
            // Random codes and i8 scales, then `d` at the end.
            out.extend((0..208).map(|_| rng.next_u64() as u8));
            out.extend_from_slice(&scale(rng));
            continue;
        }
        // Q4_1: d, m; Q4_K: d, dmin (its 6-bit scales and codes are random bytes).
        let head = match format {
            QuantFormat::Q4_1 | QuantFormat::Q4K => 4,
            _ => 2,
        };
        out.extend_from_slice(&scale(rng));
        if head == 4 {
            out.extend_from_slice(&scale(rng));
        }
        for _ in head..format.block_bytes() {
            out.push(rng.next_u64() as u8);
        }
    }
    out
}

fn activations(n: usize, rng: &mut Rng) -> Vec<f32> {
    (0..n)
        .map(|i| match i % 97 {
            0 => 0.0,
            1 => rng.uniform(-300.0, 300.0),
            _ => rng.uniform(-2.0, 2.0),
        })
        .collect()
}

fn gemv_matches_references(
    format: QuantFormat,
    rows: usize,
    cols: usize,
    m: usize,
    threads: usize,
    seed: u64,
) {
    let mut rng = Rng(seed);
    let bytes = random_matrix(format, rows, cols, &mut rng);
    let w = QuantMatrix::new(format, rows, cols, &bytes).unwrap();
    let panels = QuantPanels::pack(&w).unwrap();
    let x = activations(m * cols, &mut rng);
    let mut y = vec![f32::NAN; m * rows];
    panels.gemv(&x, m, &mut y, threads).unwrap();
    for r in 0..m {
        let xr = &x[r * cols..(r + 1) * cols];
        if is_float(format) {
            // f32 products of exact values: only the summation rounds.
            for i in 0..rows {
                let got = f64::from(y[r * rows + i]);
                let exact = row_dot(format, w.row(i), xr);
                let mut wi = vec![0.0f32; cols];
                dequantize_row(format, w.row(i), &mut wi);
                let magnitude: f64 =
                    wi.iter().zip(xr).map(|(a, b)| (f64::from(*a) * f64::from(*b)).abs()).sum();
                // Eight lanes of cols/8 fused multiply-adds, then their sum.
                let bound = (cols / 8 + 16) as f64 * 2.0 * f64::from(f32::EPSILON) * magnitude
                    + f64::from(f32::MIN_POSITIVE);
                assert!(
                    (got - exact).abs() <= bound,
                    "{format} {rows}×{cols} m={m} y[{r},{i}] = {got} vs {exact} (bound {bound:e})"
                );
            }
            continue;
        }
        let acts: Vec<_> = xr.chunks(ACT_BLOCK).map(quantize_activation_block).collect();
        for i in 0..rows {
            let got = f64::from(y[r * rows + i]);
            let exact = row_dot_quantized(format, w.row(i), &acts);
            // f32 rounding of per-block scale products and the running sums.
            let rounding = (cols / ACT_BLOCK + 16) as f64 * 2.0 * f64::from(f32::EPSILON) * exact.magnitude
                + f64::from(f32::MIN_POSITIVE);
            assert!(
                (got - exact.value).abs() <= rounding,
                "{format} {rows}×{cols} m={m} y[{r},{i}] = {got} vs integer reference {} (bound {rounding:e})",
                exact.value
            );
            // And what the weights mean: within the activation rounding.
            let meaning = row_dot(format, w.row(i), xr);
            let bound = activation_quantisation_bound(format, w.row(i), &acts) + rounding;
            assert!(
                (got - meaning).abs() <= bound * (1.0 + 1e-6),
                "{format} y[{r},{i}] = {got} vs dequantised dot {meaning} (bound {bound:e})"
            );
        }
    }
}

#[test]
fn gemv_kernels_match_the_scalar_references() {
    let mut seed = 1;
    for format in KERNEL_FORMATS {
        // Rows: 1, primes, a multiple of the 4-row step and not; blocks per
        // row: 1 (a padded pair), odd, even, SmolLM2's 18 and 48.
        // (Q4_K: 256, 256, 256, 256, 768, 1536, 512 columns.)
        for (rows, cols) in [(1, 32), (3, 96), (7, 64), (13, 160), (16, 576), (37, 1536), (5, 32 * 11)] {
            let cols = whole_blocks(format, cols);
            for m in [1, 2, 3, 4, 5, 9] {
                seed += 1;
                gemv_matches_references(format, rows, cols, m, 1 + (seed as usize % 2), seed);
            }
        }
        // Big enough (≥ 128 KiB) to be split across threads: 2 and 3
        // threads, an uneven share, 1 and 4 activation rows.
        for (m, threads) in [(1, 2), (4, 3)] {
            seed += 1;
            gemv_matches_references(format, 301, 1536, m, threads, seed);
        }
    }
}

#[test]
fn small_gemvs_stay_on_one_thread_and_big_ones_split() {
    use gllm_kernels::fusion::parallel::{for_quantised_gemv, MIN_PARALLEL_QUANT_BYTES};
    assert_eq!(for_quantised_gemv(MIN_PARALLEL_QUANT_BYTES - 1, 2), 1);
    assert_eq!(for_quantised_gemv(MIN_PARALLEL_QUANT_BYTES, 2), 2);
    assert_eq!(for_quantised_gemv(usize::MAX, 0), 1);
}

#[test]
fn gemv_handles_empty_shapes() {
    let format = QuantFormat::Q4_1;
    let mut rng = Rng(5);
    let bytes = random_matrix(format, 3, 64, &mut rng);
    let panels = QuantPanels::pack(&QuantMatrix::new(format, 3, 64, &bytes).unwrap()).unwrap();
    panels.gemv(&[], 0, &mut [], 2).unwrap();
    let empty = QuantPanels::pack(&QuantMatrix::new(format, 0, 64, &[]).unwrap()).unwrap();
    empty.gemv(&[1.0; 64], 1, &mut [], 2).unwrap();
    let mut y = [0.0; 3];
    assert!(panels.gemv(&[1.0; 63], 1, &mut y, 1).is_err(), "a short x is an error");
    // Activations quantised for one format are refused by another's kernel
    // (the record layouts differ), and serve a second same-format matrix.
    let q8 = random_matrix(QuantFormat::Q8_0, 3, 64, &mut rng);
    let q8 = QuantPanels::pack(&QuantMatrix::new(QuantFormat::Q8_0, 3, 64, &q8).unwrap()).unwrap();
    let x = activations(64, &mut rng);
    let e = panels.gemv_quantized(&q8.quantize(&x, 1).unwrap(), &mut y, 1).unwrap_err();
    assert!(e.to_string().contains("Q8_0") && e.to_string().contains("Q4_1"), "{e}");
    let other = random_matrix(format, 3, 64, &mut rng);
    let other = QuantPanels::pack(&QuantMatrix::new(format, 3, 64, &other).unwrap()).unwrap();
    let (mut shared, mut own) = ([0.0; 3], [0.0; 3]);
    other.gemv_quantized(&panels.quantize(&x, 1).unwrap(), &mut shared, 1).unwrap();
    other.gemv(&x, 1, &mut own, 1).unwrap();
    assert_eq!(shared, own);
}

#[test]
fn bad_shapes_are_clear_errors() {
    let e = QuantMatrix::new(QuantFormat::Q4_1, 2, 48, &[0; 60]).unwrap_err();
    assert!(e.to_string().contains("not a whole number of Q4_1 blocks"), "{e}");
    let e = QuantMatrix::new(QuantFormat::Q8_0, 2, 64, &[0; 135]).unwrap_err();
    assert!(e.to_string().contains("takes 136 bytes, but 135"), "{e}");
    for format in QuantFormat::ALL {
        assert!(format.has_kernel(), "{format}: every format has a GEMV kernel");
    }
}

#[test]
fn dequantising_packer_feeds_the_gemm_exactly() {
    let profile = DeviceProfile::detect().unwrap();
    let kernel = GemmKernel::compile(&profile).unwrap();
    let mut rng = Rng(77);
    for format in KERNEL_FORMATS {
        for (rows, cols) in [(1, 32), (19, 96), (40, 640)] {
            let cols = whole_blocks(format, cols);
            let bytes = random_matrix(format, rows, cols, &mut rng);
            let w = QuantMatrix::new(format, rows, cols, &bytes).unwrap();
            let panels = QuantPanels::pack(&w).unwrap();
            // B = Wᵀ (cols × rows), dequantised row by row by the reference.
            let mut b = vec![0.0f32; cols * rows];
            let mut row = vec![0.0f32; cols];
            for i in 0..rows {
                dequantize_row(format, w.row(i), &mut row);
                for (p, &v) in row.iter().enumerate() {
                    b[p * rows + i] = v;
                }
            }
            let m = 7;
            let a = activations(m * cols, &mut rng);
            let (mut want, mut got) = (vec![0.0; m * rows], vec![0.0; m * rows]);
            kernel.gemm_prepacked(&a, &kernel.pack_b(&b, cols, rows).unwrap(), &mut want, m, 1).unwrap();
            kernel.gemm_prepacked(&a, &panels.dequantize_packed(&kernel, 2), &mut got, m, 1).unwrap();
            for (g, w) in got.iter().zip(&want) {
                assert!(g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()), "{format}: {g} vs {w}");
            }
        }
    }
}

/// `n` f32s ending exactly at a `PROT_NONE` page: a write one element past
/// the end faults (the test dies with SIGSEGV instead of corrupting memory).
struct GuardedF32 {
    base: *mut libc::c_void,
    len: usize,
    n: usize,
}

impl GuardedF32 {
    fn new(n: usize) -> GuardedF32 {
        let page = 4096;
        let data_pages = (n * 4).div_ceil(page).max(1);
        let len = (data_pages + 1) * page;
        // SAFETY: a fresh private anonymous mapping; the last page is then
        // made inaccessible. Both calls are checked.
        unsafe {
            let base = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(base, libc::MAP_FAILED);
            let guard = (base as *mut u8).add(data_pages * page);
            assert_eq!(libc::mprotect(guard.cast(), page, libc::PROT_NONE), 0);
            GuardedF32 { base, len, n }
        }
    }

    fn slice(&mut self) -> &mut [f32] {
        let page = 4096;
        let data_pages = (self.len / page) - 1;
        // SAFETY: the last n·4 bytes before the guard page are mapped
        // read-write and only borrowed through `&mut self`.
        unsafe {
            let end = (self.base as *mut u8).add(data_pages * page);
            std::slice::from_raw_parts_mut(end.sub(self.n * 4).cast::<f32>(), self.n)
        }
    }
}

impl Drop for GuardedF32 {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.base, self.len) };
    }
}

#[test]
fn gemv_writes_stay_inside_y_and_threads_agree() {
    // Every format, row counts around the 4-row step, 1–5 activation rows,
    // y ending at a guard page; then the same products from four threads at
    // once (shared kernels and panels) equal the single-threaded result.
    let mut rng = Rng(91);
    for format in KERNEL_FORMATS {
        let cols = whole_blocks(format, 64);
        for rows in [1, 2, 3, 4, 5, 7, 8, 9, 13] {
            let bytes = random_matrix(format, rows, cols, &mut rng);
            let panels = QuantPanels::pack(&QuantMatrix::new(format, rows, cols, &bytes).unwrap()).unwrap();
            for m in 1..=5 {
                let x = activations(m * cols, &mut rng);
                let mut want = vec![0.0f32; m * rows];
                panels.gemv(&x, m, &mut want, 1).unwrap();
                let mut guarded = GuardedF32::new(m * rows);
                panels.gemv(&x, m, guarded.slice(), 2).unwrap();
                assert_eq!(guarded.slice(), &want[..], "{format} {rows}×{cols} m={m}");
            }
        }
        // Concurrency: one big matrix (split across threads inside too).
        let (rows, cols) = (301, whole_blocks(format, 1536));
        let bytes = random_matrix(format, rows, cols, &mut rng);
        let panels = QuantPanels::pack(&QuantMatrix::new(format, rows, cols, &bytes).unwrap()).unwrap();
        let x = activations(2 * cols, &mut rng);
        let mut want = vec![0.0f32; 2 * rows];
        panels.gemv(&x, 2, &mut want, 1).unwrap();
        std::thread::scope(|s| {
            for t in 0..4 {
                let (panels, x, want) = (&panels, &x, &want);
                s.spawn(move || {
                    for _ in 0..5 {
                        let mut y = vec![f32::NAN; 2 * rows];
                        panels.gemv(x, 2, &mut y, 1 + t % 2).unwrap();
                        assert_eq!(&y, want, "{format}: thread {t}");
                    }
                });
            }
        });
    }
}

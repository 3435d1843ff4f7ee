//! Quantised-weight kernels against their scalar references: the GEMV on
//! random blocks (random codes; scales that are zero, subnormal f16,
//! ordinary and extreme), odd row and block counts, 1..=9 activation rows,
//! 1 and 2 threads; the dequantising GEMM packer against dequantising rows.

mod support;

use gllm_kernels::codegen::gemm::GemmKernel;
use gllm_kernels::codegen::quant_gemv::{QuantKernelIsa, QuantPanels};
use gllm_kernels::device::DeviceProfile;
use gllm_kernels::oracle::{GuardedBuffer, Placement};
use gllm_kernels::quant::{dequantize_row, QuantFormat, QuantMatrix};
use support::Rng;

const KERNEL_FORMATS: [QuantFormat; 7] = QuantFormat::ALL;

/// `cols` rounded up to whole blocks of `format` (Q4_K's are 256 wide).
fn whole_blocks(format: QuantFormat, cols: usize) -> usize {
    cols.div_ceil(format.block_elems()) * format.block_elems()
}

use gllm_kernels::oracle::quant::{
    check_gemv_at, random_activations as activations, random_stored_matrix as random_matrix,
};
use gllm_kernels::quant::ActivationPrecision;

const PRECISIONS: [ActivationPrecision; 2] = [ActivationPrecision::Int8, ActivationPrecision::Int16];

/// One kernel (encoding, weight format, activation precision) on one shape.
fn gemv_matches_references(
    (kernel_isa, format, precision): (QuantKernelIsa, QuantFormat, ActivationPrecision),
    rows: usize,
    cols: usize,
    m: usize,
    threads: usize,
    seed: u64,
) {
    let mut rng = Rng(seed);
    let bytes = random_matrix(format, rows, cols, &mut rng);
    let w = QuantMatrix::new(format, rows, cols, &bytes).unwrap();
    let panels =
        QuantPanels::pack(&w).unwrap().with_activations(precision).with_kernel_isa(kernel_isa).unwrap();
    let x = activations(m * cols, &mut rng);
    let mut y = vec![f32::NAN; m * rows];
    panels.gemv(&x, m, &mut y, threads).unwrap();
    if let Err(e) = check_gemv_at(&w, precision, &x, m, &y) {
        panic!("{kernel_isa}: {format} ({precision} activations) {rows}×{cols} m={m} threads={threads}: {e}");
    }
}

/// The kernel encodings this host runs (every one is tested where it runs;
/// an AVX2-only host cannot run the AVX-512 VNNI kernels).
fn kernel_isas() -> Vec<QuantKernelIsa> {
    QuantKernelIsa::ALL.into_iter().filter(|i| i.on_host()).collect()
}

#[test]
fn gemv_kernels_match_the_scalar_references() {
    for kernel_isa in kernel_isas() {
        gemv_kernels_in_match_the_scalar_references(kernel_isa);
    }
}

fn gemv_kernels_in_match_the_scalar_references(kernel_isa: QuantKernelIsa) {
    let mut seed = 1;
    for (format, precision) in KERNEL_FORMATS.into_iter().flat_map(|f| PRECISIONS.map(|p| (f, p))) {
        // Rows: 1, primes, a multiple of the 4-row step and not; blocks per
        // row: 1 (a padded pair), odd, even, 11 (a group and three left
        // over), SmolLM2's 18 and 48. (Q4_K, Q6_K: 1, 1, 1, 1, 3, 6 and 2
        // groups of 256.)
        for (rows, cols) in [(1, 32), (3, 96), (7, 64), (13, 160), (16, 576), (37, 1536), (5, 32 * 11)] {
            let cols = whole_blocks(format, cols);
            for m in [1, 2, 3, 4, 5, 9] {
                seed += 1;
                gemv_matches_references(
                    (kernel_isa, format, precision),
                    rows,
                    cols,
                    m,
                    1 + (seed as usize % 2),
                    seed,
                );
            }
        }
        // Big enough (≥ 128 KiB) to be split across threads: 2 and 3
        // threads, an uneven share, 1 and 4 activation rows.
        for (m, threads) in [(1, 2), (4, 3)] {
            seed += 1;
            gemv_matches_references((kernel_isa, format, precision), 301, 1536, m, threads, seed);
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
fn a_big_enough_gemv_measures_its_thread_count_once_and_agrees_with_one_thread() {
    use gllm_kernels::codegen::quant_gemv::{measured_thread_choices, THREAD_TIMING_RUNS};
    let mut rng = Rng(0x7e5);
    let (format, rows, cols) = (QuantFormat::Q8_0, 600, 608);
    let bytes = random_matrix(format, rows, cols, &mut rng);
    let panels = QuantPanels::pack(&QuantMatrix::new(format, rows, cols, &bytes).unwrap()).unwrap();
    assert!(panels.size_bytes() >= gllm_kernels::fusion::parallel::MIN_PARALLEL_QUANT_BYTES);
    let x = activations(cols, &mut rng);
    let mut want = vec![0.0f32; rows];
    panels.gemv(&x, 1, &mut want, 1).unwrap();
    let mine = |c: &[(gllm_kernels::codegen::quant_gemv::ThreadKey, _)]| {
        c.iter()
            .filter(|(k, _)| {
                let s = &k.shapes;
                s.len() == 1 && (s[0].format, s[0].rows, s[0].cols, k.threads) == (format, rows, cols, 2)
            })
            .count()
    };
    // The first calls measure (one thread and two in turn), each with the
    // same result; then the choice is recorded once.
    let calls = 2 * (THREAD_TIMING_RUNS + 1);
    for call in 0..calls {
        let mut got = vec![f32::NAN; rows];
        panels.gemv(&x, 1, &mut got, 2).unwrap();
        support::assert_within(
            &format!("measuring GEMV, call {call} "),
            &got,
            &want,
            &[],
            &gllm_kernels::oracle::Tolerance::EXACT,
        );
        let decided = mine(&measured_thread_choices());
        assert_eq!(decided, usize::from(call + 1 == calls), "after call {call} of {calls}");
    }
    let choices = measured_thread_choices();
    assert_eq!(mine(&choices), 1, "{choices:?}");
    let (_, c) = choices.iter().find(|(k, _)| (k.shapes[0].rows, k.shapes[0].cols) == (rows, cols)).unwrap();
    assert!([1, 2].contains(&c.threads) && c.one_thread_secs > 0.0 && c.many_threads_secs > 0.0, "{c:?}");
    // Later calls reuse the choice.
    let mut got = vec![f32::NAN; rows];
    panels.gemv(&x, 1, &mut got, 2).unwrap();
    assert_eq!(mine(&measured_thread_choices()), 1);
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
            let what = format!("{format}: dequantised panels vs packing the f32 matrix ");
            support::assert_within(&what, &got, &want, &[], &gllm_kernels::oracle::Tolerance::EXACT);
        }
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
                for placement in [Placement::AgainstStart, Placement::AgainstEnd] {
                    let mut guarded = GuardedBuffer::filled(m * rows, f32::NAN, placement).unwrap();
                    panels.gemv_exact_threads(&x, m, guarded.as_mut_slice(), 2).unwrap();
                    assert_eq!(guarded.as_slice(), &want[..], "{format} {rows}×{cols} m={m}");
                    assert!(guarded.canary_intact(), "{format}: wrote next to y");
                }
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
                        panels.gemv_exact_threads(x, 2, &mut y, 1 + t % 2).unwrap();
                        assert_eq!(&y, want, "{format}: thread {t}");
                    }
                });
            }
        });
    }
}

#[test]
fn a_gemv_group_equals_its_gemvs_one_by_one() {
    // Members of different formats and row counts (0, 1, not a multiple of
    // the 4-row step, big enough to split) as one fan-out on 1–3 threads:
    // every output bit-identical to the member's own one-thread GEMV (each
    // output is one thread's, in the same order), nothing written next to
    // any output.
    use gllm_kernels::codegen::quant_gemv::{gemv_group, gemv_group_exact_threads, GemvMember};
    let mut rng = Rng(0x9e0);
    let members = [
        (QuantFormat::Q4_1, 301, 576),
        (QuantFormat::Q8_0, 7, 576),
        (QuantFormat::Q4_1, 0, 576),
        (QuantFormat::F16, 97, 576),
        (QuantFormat::Q4_1, 1, 576),
        (QuantFormat::Q6K, 130, 768),
    ];
    let panels: Vec<QuantPanels> = members
        .iter()
        .map(|&(format, rows, cols)| {
            let bytes = random_matrix(format, rows, cols, &mut rng);
            QuantPanels::pack(&QuantMatrix::new(format, rows, cols, &bytes).unwrap()).unwrap()
        })
        .collect();
    for m in [1, 3, 5] {
        let xs: Vec<Vec<f32>> = members.iter().map(|&(_, _, cols)| activations(m * cols, &mut rng)).collect();
        let acts: Vec<_> = panels.iter().zip(&xs).map(|(p, x)| p.quantize(x, m).unwrap()).collect();
        let want: Vec<Vec<f32>> = panels
            .iter()
            .zip(&acts)
            .map(|(p, a)| {
                let mut y = vec![0.0f32; m * p.rows()];
                p.gemv_quantized(a, &mut y, 1).unwrap();
                y
            })
            .collect();
        for threads in [1, 2, 3] {
            for placement in [Placement::AgainstStart, Placement::AgainstEnd] {
                let mut ys: Vec<GuardedBuffer> = panels
                    .iter()
                    .map(|p| GuardedBuffer::filled(m * p.rows(), f32::NAN, placement).unwrap())
                    .collect();
                let mut group: Vec<GemvMember> = panels
                    .iter()
                    .zip(&acts)
                    .zip(ys.iter_mut())
                    .map(|((panels, acts), y)| GemvMember { panels, acts, y: y.as_mut_slice() })
                    .collect();
                gemv_group_exact_threads(&mut group, threads).unwrap();
                for (i, y) in ys.iter().enumerate() {
                    assert_eq!(y.as_slice(), &want[i][..], "member {i} m={m} threads={threads}");
                    assert!(y.canary_intact(), "member {i}: wrote next to its output");
                }
            }
        }
        // The measured path gives the same result.
        let mut ys: Vec<Vec<f32>> = panels.iter().map(|p| vec![f32::NAN; m * p.rows()]).collect();
        let mut group: Vec<GemvMember> = panels
            .iter()
            .zip(&acts)
            .zip(ys.iter_mut())
            .map(|((panels, acts), y)| GemvMember { panels, acts, y })
            .collect();
        gemv_group(&mut group, 2).unwrap();
        assert_eq!(ys, want, "m={m}");
    }
    // A member whose activations are for another format is a clear error.
    let x = activations(576, &mut rng);
    let wrong = panels[1].quantize(&x, 1).unwrap();
    let mut y = vec![0.0f32; panels[0].rows()];
    let err = gemv_group(&mut [GemvMember { panels: &panels[0], acts: &wrong, y: &mut y }], 2).unwrap_err();
    assert!(err.to_string().contains("Q8_0"), "{err}");
}

/// Every encoding computes the same exact integer block sums and then the
/// same f32 operations in the same order, so their outputs agree bit for
/// bit: a difference is a kernel bug, not rounding.
#[test]
fn every_kernel_encoding_gives_the_same_bits() {
    let isas = kernel_isas();
    let mut rng = Rng(0xb175);
    for (format, precision) in KERNEL_FORMATS.into_iter().flat_map(|f| PRECISIONS.map(|p| (f, p))) {
        for (rows, cols, m) in [(7, 64, 1), (13, 576, 3), (9, 1536, 4), (5, 32 * 11, 2)] {
            let cols = whole_blocks(format, cols);
            let bytes = random_matrix(format, rows, cols, &mut rng);
            let w = QuantMatrix::new(format, rows, cols, &bytes).unwrap();
            let x = activations(m * cols, &mut rng);
            let outputs: Vec<Vec<u32>> = isas
                .iter()
                .map(|&isa| {
                    let panels = QuantPanels::pack(&w)
                        .unwrap()
                        .with_activations(precision)
                        .with_kernel_isa(isa)
                        .unwrap();
                    let mut y = vec![f32::NAN; m * rows];
                    panels.gemv(&x, m, &mut y, 1).unwrap();
                    y.iter().map(|v| v.to_bits()).collect()
                })
                .collect();
            for (isa, y) in isas.iter().zip(&outputs).skip(1) {
                assert_eq!(
                    y, &outputs[0],
                    "{format} ({precision}) {rows}×{cols} m={m}: {isa} vs {}",
                    isas[0]
                );
            }
        }
    }
}

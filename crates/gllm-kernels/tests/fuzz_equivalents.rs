//! The compiler's fuzz targets (`fuzz/`, run on demand with cargo-fuzz; see
//! docs/reliability.md) as property tests in the normal suite, plus every
//! saved finding and seed in `fuzz/regressions/<target>/`: arbitrary
//! machine code through the symbolic executor, arbitrary graphs through
//! the validator, planner, compiler and runtime, arbitrary text through the
//! device-profile reader. Each must answer with a value or an error.

#[path = "support/fuzz_inputs.rs"]
mod fuzz_inputs;

use gllm_kernels::device::DeviceProfile;
#[path = "support/mutate.rs"]
mod mutate;

use mutate::mutated;
use proptest::prelude::*;
use std::path::PathBuf;

fn regressions(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions").join(target);
    let mut files: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n != ".gitkeep"))
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    files.sort();
    files
}

fn host() -> DeviceProfile {
    DeviceProfile::detect().unwrap()
}

#[test]
fn saved_inputs_of_every_compiler_target_still_pass() {
    let profile = host();
    let mut ran = 0;
    for (path, bytes) in regressions("graph") {
        eprintln!("graph: {}", path.display());
        fuzz_inputs::check_graph_bytes(&bytes, &profile);
        ran += 1;
    }
    for (_, bytes) in regressions("device_profile") {
        fuzz_inputs::check_profile_text(&bytes);
        ran += 1;
    }
    for (_, bytes) in regressions("trace_bytes") {
        fuzz_inputs::check_code_bytes(&bytes);
        ran += 1;
    }
    assert!(ran >= 3, "the seed inputs are missing from fuzz/regressions");
}

#[test]
fn the_profile_seed_is_this_hosts_profile_and_loads() {
    // The device_profile seed is a real profile file: it must load.
    let seeds = regressions("device_profile");
    let text = std::str::from_utf8(&seeds[0].1).unwrap();
    DeviceProfile::from_toml_str(text, "seed").unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_graphs_are_answered(bytes in proptest::collection::vec(any::<u8>(), 0..160)) {
        fuzz_inputs::check_graph_bytes(&bytes, &host());
    }

    #[test]
    fn mutated_profile_files_are_answered(edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..6)) {
        let base = host().to_toml();
        fuzz_inputs::check_profile_text(&mutated(base.as_bytes(), &edits));
    }

    #[test]
    fn arbitrary_code_is_answered(bytes in proptest::collection::vec(any::<u8>(), 1..64)) {
        fuzz_inputs::check_code_bytes(&bytes);
    }
}

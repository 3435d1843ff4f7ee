//! Test support for the Phase 0 analyser: the scalar reference ops (and some
//! operators only tests know) compiled at opt-levels 1, 2 and 3, with and
//! without `-C target-cpu=native`, as shared libraries to load and analyse.
//! Symbols are the functions' names (`gk_silu`, `gk_rms_norm`, …).

include!(concat!(env!("OUT_DIR"), "/fixtures.rs"));

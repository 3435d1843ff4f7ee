//! `gllm device`: the profile, and each kernel class's ISA with the timing
//! (or the flag) behind it.

use std::process::Command;

fn gllm(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gllm")).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn device_shows_each_class_choice_with_its_timing() {
    let (ok, out, err) = gllm(&["device"]);
    assert!(ok, "{err}");
    for class in ["loops", "matmul"] {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("timing       {class} → ")))
            .unwrap_or_else(|| panic!("no timing line for {class}:\n{out}"));
        assert!(line.contains(" µs") && line.contains("median of"), "{line}");
    }
    let (ok, out, err) = gllm(&["device", "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let classes = v["kernel_isa_timings"]["classes"].as_array().unwrap();
    assert_eq!(classes.len(), 2);
    assert!(
        classes.iter().all(|c| c["decision"]["timed"].as_array().is_some_and(|t| !t.is_empty())),
        "{out}"
    );
}

#[test]
fn a_flag_forces_a_class_and_bad_names_are_errors() {
    let (ok, out, err) = gllm(&["device", "--loops-isa", "avx2"]);
    assert!(ok, "{err}");
    assert!(out.contains("timing       loops → avx2: forced"), "{out}");
    assert!(out.lines().any(|l| l.starts_with("timing       matmul → ") && l.contains(" µs")), "{out}");
    let (ok, _, err) = gllm(&["device", "--matmul-isa", "neon"]);
    assert!(!ok);
    assert!(err.contains("unknown ISA `neon`"), "{err}");
    // A preset for another CPU is described, not timed.
    let (ok, out, err) = gllm(&["device", "--preset", "zen5"]);
    assert!(ok, "{err}");
    let host_has_avx512 = std::arch::is_x86_feature_detected!("avx512f");
    assert_eq!(out.contains("not timed (the profile is for another CPU)"), !host_has_avx512, "{out}");
}

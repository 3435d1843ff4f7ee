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

#[test]
fn device_names_the_stored_format_kernels() {
    let (ok, out, err) = gllm(&["device"]);
    assert!(ok, "{err}");
    let line = out.lines().find(|l| l.starts_with("quantised weights  read by the ")).unwrap_or_else(|| {
        panic!("no stored-format kernels line:\n{out}");
    });
    assert!(line.contains("avx2"), "every x86 host runs the AVX2 kernels: {line}");
    let (ok, out, err) = gllm(&["device", "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(["avx2", "avx512-vnni"].contains(&v["quant_kernels"].as_str().unwrap_or("")), "{out}");
}

/// `gllm bench --profile-groups` on the built-in model: a table of where a
/// generated token's time goes, every group of the compiled parts run once
/// per layer, attention once per layer, the LM head once per token.
#[test]
fn bench_profiles_where_decode_time_goes() {
    let (ok, out, err) = gllm(&["bench", "-p", "0", "-n", "4", "-r", "1", "-T", "1", "--profile-groups"]);
    assert!(ok, "{err}");
    let table: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("where tg4's time goes on 1 thread(s)"))
        .skip(3)
        .take_while(|l| l.starts_with('|'))
        .collect();
    assert!(table.len() >= 4, "no profile table:\n{out}");
    let runs = |needle: &str| -> f64 {
        let row =
            table.iter().find(|r| r.contains(needle)).unwrap_or_else(|| panic!("no {needle} row:\n{out}"));
        row.split('|').nth(3).unwrap().trim().parse().unwrap()
    };
    let layers = runs("attention over the KV cache");
    assert!(layers >= 1.0 && layers.fract() == 0.0, "attention runs once per layer per token: {layers}");
    assert_eq!(runs("head."), 1.0, "the LM head runs once per token:\n{out}");
    let total = table.last().unwrap();
    assert!(total.contains("all timed groups"), "{total}");
}

#[test]
fn the_stored_format_kernels_can_be_chosen_and_a_bad_choice_is_an_error() {
    let run = |value: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_gllm"))
            .arg("device")
            .env("GLLM_QUANT_KERNELS", value)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = run("avx2");
    assert!(ok, "{err}");
    assert!(out.contains("quantised weights  read by the avx2 stored-format kernels"), "{out}");
    let (ok, _, err) = run("avx9000");
    assert!(!ok && err.contains("GLLM_QUANT_KERNELS=\"avx9000\"") && err.contains("avx512-vnni"), "{err}");
}

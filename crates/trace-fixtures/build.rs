//! Compiles the scalar reference ops at opt-levels 1-3, each with and without
//! `-C target-cpu=native`, into shared libraries the Phase 0 tests load: the
//! analyser must cope with whatever rustc emits at any of these settings.

use std::env;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let src = manifest.join("fixtures/all_ops.rs");
    for dep in [
        "fixtures/all_ops.rs",
        "../gllm-kernels/src/scalar/ops.rs",
        "../gllm-kernels/tests/support/unseen_ops.rs",
    ] {
        println!("cargo:rerun-if-changed={}", manifest.join(dep).display());
    }
    let configs: Vec<(u8, bool)> = [1, 2, 3].iter().flat_map(|&o| [(o, false), (o, true)]).collect();
    let handles: Vec<_> = configs
        .iter()
        .map(|&(opt, native)| {
            let (rustc, src, out) = (rustc.clone(), src.clone(), out.clone());
            std::thread::spawn(move || {
                let name = format!("gk_fixture_o{opt}{}", if native { "_native" } else { "" });
                let path = out.join(format!("lib{name}.so"));
                let mut cmd = Command::new(&rustc);
                cmd.args(["--crate-type=cdylib", "--edition=2021", "--crate-name", &name])
                    .args(["-C", &format!("opt-level={opt}"), "--cfg", "gk_fixture", "-o"])
                    .arg(&path)
                    .arg(&src);
                if native {
                    cmd.args(["-C", "target-cpu=native"]);
                }
                let output = cmd.output().expect("run rustc for the trace fixtures");
                assert!(
                    output.status.success(),
                    "compiling {name} failed:\n{}",
                    String::from_utf8_lossy(&output.stderr)
                );
                (opt, native, path)
            })
        })
        .collect();
    let mut table = String::from("/// Every fixture library: (opt-level, target-cpu=native, path).\npub const FIXTURES: &[(u8, bool, &str)] = &[\n");
    for h in handles {
        let (opt, native, path) = h.join().expect("fixture build thread");
        writeln!(table, "    ({opt}, {native}, {:?}),", path.display().to_string()).unwrap();
    }
    table.push_str("];\n");
    std::fs::write(out.join("fixtures.rs"), table).unwrap();
}

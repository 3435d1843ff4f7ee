//! Prints the Phase 0 trace of every built-in operator.
use gllm_kernels::scalar::ScalarOpRegistry;
fn main() {
    let reg = ScalarOpRegistry::global();
    for op in reg.iter() {
        match op.trace() {
            Ok(t) => println!("== {} {}\n{t}", op.kind(), op.signature()),
            Err(e) => println!("== {} ERROR {e}", op.kind()),
        }
    }
}

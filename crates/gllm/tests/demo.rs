//! `gllm demo`'s tour runs on this host and every step checks its kernels
//! against the scalar references (a disagreement is an error, not a line).

use gllm_kernels::device::DeviceProfile;

#[test]
fn the_tour_runs_every_step_and_each_agrees_with_its_reference() {
    let profile = DeviceProfile::detect().unwrap();
    let mut phases = Vec::new();
    gllm::demo::run(&profile, 1 << 12, &mut |step| {
        assert!(!step.lines.is_empty(), "{} printed nothing", step.phase);
        phases.push(step.phase);
    })
    .unwrap();
    assert_eq!(phases, ["phase 0", "phase 1-2", "phase 3a", "phase 3b", "layer", "user op"]);
}

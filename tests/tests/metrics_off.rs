//! Without the `metrics` feature nothing is recorded.
//!
//! `cargo test --workspace` builds `cache-core` once, with the features every member asks
//! for together, and the example service asks for `metrics`: the workspace run can only
//! check that calls are recorded with the feature. This test builds `cache-core`'s unit
//! tests alone (no member asks for the feature then), in a target directory of its own so
//! it never waits on the workspace's, and runs the unit test that holds both halves of the
//! promise: `handle::tests::metrics_are_recorded_only_with_the_feature`, which installs a
//! recorder and fails if a call reaches it.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A first build of `cache-core`'s tests in a fresh directory takes a few minutes on a
/// 2-core machine; past this the build is stuck, and the test says so.
const DEADLINE: Duration = Duration::from_secs(20 * 60);

const TEST: &str = "handle::tests::metrics_are_recorded_only_with_the_feature";

#[test]
fn nothing_is_recorded_without_the_metrics_feature() {
    let target = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("metrics-off");
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out_file = target.join("output.txt");
    std::fs::create_dir_all(&target).unwrap();
    let log = std::fs::File::create(&out_file).unwrap();
    let mut child = Command::new(env!("CARGO"))
        .current_dir(&workspace)
        .env("CARGO_TARGET_DIR", &target)
        .args([
            "test",
            "--locked",
            "--offline",
            "-p",
            "cache-core",
            "--lib",
            "--",
        ])
        .args([TEST, "--exact", "--nocapture"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("run cargo");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "building and running {TEST} without `metrics` took over {DEADLINE:?}; its output is in {}",
                out_file.display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let output = std::fs::read_to_string(&out_file).unwrap();
    assert!(
        status.success(),
        "{TEST} failed without `metrics`:\n{output}"
    );
    // The build really was one without the feature, and the test really ran.
    assert!(
        output.contains("with the metrics feature off, recorded: []"),
        "{output}"
    );
    assert!(output.contains("1 passed"), "{output}");
}

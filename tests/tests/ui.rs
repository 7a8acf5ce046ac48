//! Compile-fail and compile-pass cases of `#[derive(Cache)]` and `cache_registry!`.
//!
//! Each `ui/<group>/<case>.rs` holds one mistake, and its `.stderr` the diagnostics a user
//! sees. Regenerate the snapshots with `TRYBUILD=overwrite cargo test --test ui` and
//! review them like code.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("ui/pass/*.rs");
    for group in [
        "namespace",
        "ttl",
        "attr",
        "form",
        "types",
        "registry",
        "local",
        "readthrough",
    ] {
        t.compile_fail(format!("ui/{group}/*.rs"));
    }
}

//! Compile-fail and compile-pass cases of `#[derive(Cache)]`, `cache_registry!`,
//! `#[cached]` and `#[invalidates]`.
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
        "cached",
        "invalidates",
    ] {
        t.compile_fail(format!("ui/{group}/*.rs"));
    }
}

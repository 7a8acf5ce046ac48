//! `ARCHITECTURE.md` stays true of `cache-core`: every source file has a row in its map,
//! and the modules are layered, with no import cycle among them (a cycle is how the
//! handle, the read-through and the manager once came to reach into each other).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

fn core_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests package lives in the workspace")
        .join("cache-core/src")
}

/// Every `.rs` file under `dir`, as paths relative to `cache-core/src`.
fn sources(dir: &Path, base: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("readable source directory") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            sources(&path, base, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path.strip_prefix(base).expect("under base").to_path_buf());
        }
    }
}

/// The top-level module a file belongs to (`backend/cluster/mod.rs` → `backend`), or
/// `None` for the crate root and files of tests only.
fn module_of(file: &Path) -> Option<String> {
    let first = file.components().next()?.as_os_str().to_str()?;
    let module = first.strip_suffix(".rs").unwrap_or(first);
    let name = file.file_stem()?.to_str()?;
    (module != "lib" && !name.ends_with("tests")).then(|| module.to_owned())
}

/// The modules `source` names as `crate::module`, outside its `#[cfg(test)]` module.
fn imports(source: &str) -> BTreeSet<String> {
    let code = source
        .split("#[cfg(test)]\nmod tests")
        .next()
        .unwrap_or(source);
    let mut found = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        // Lower case: a module, not a re-exported type.
        if name.starts_with(|c: char| c.is_ascii_lowercase()) && name != "__private" {
            found.insert(name);
        }
    }
    found
}

/// A cycle of the graph, if it has one (depth-first search).
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|n| n == node) {
            let mut found = path[start..].to_vec();
            found.push(node.to_owned());
            return Some(found);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(found) = visit(next, graph, path, done) {
                return Some(found);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_modules_of_cache_core_import_each_other_without_a_cycle() {
    let base = core_src();
    let mut files = Vec::new();
    sources(&base, &base, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let Some(module) = module_of(file) else {
            continue;
        };
        let source = fs::read_to_string(base.join(file)).expect("readable source");
        let edges = graph.entry(module.clone()).or_default();
        edges.extend(imports(&source).into_iter().filter(|m| *m != module));
    }
    assert!(
        graph.len() > 10 && graph.values().any(|e| !e.is_empty()),
        "the import graph was not read: {graph:?}"
    );
    if let Some(found) = cycle(&graph) {
        panic!(
            "cache-core's modules import each other in a circle: {}",
            found.join(" -> ")
        );
    }
}

#[test]
fn the_cycle_check_finds_a_cycle() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("cache", vec!["codec"]),
        ("manager", vec!["handle", "cache"]),
        ("handle", vec!["cache", "registry"]),
        ("registry", vec!["manager"]),
        ("codec", vec![]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.into_iter().map(str::to_owned).collect()))
    .collect();
    assert_eq!(
        cycle(&graph),
        Some(vec![
            "handle".to_owned(),
            "registry".to_owned(),
            "manager".to_owned(),
            "handle".to_owned()
        ])
    );
    assert_eq!(
        imports(
            "use crate::cache::{Cache, CacheInfo};\nuse crate::CacheError;\nfn f() { crate::manager::x() }"
        ),
        ["cache", "manager"]
            .into_iter()
            .map(str::to_owned)
            .collect()
    );
}

#[test]
fn every_source_file_of_cache_core_has_a_row_in_the_architecture_map() {
    let base = core_src();
    let map = fs::read_to_string(base.join("../../ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let mut files = Vec::new();
    sources(&base, &base, &mut files);
    let missing: Vec<String> = files
        .iter()
        .map(|f| f.to_string_lossy().replace('\\', "/"))
        .filter(|f| !map.contains(&format!("`{f}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "files of cache-core/src without a row in ARCHITECTURE.md: {missing:?}"
    );
}

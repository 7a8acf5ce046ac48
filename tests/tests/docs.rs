//! The documentation agrees with itself and with the code.
//!
//! The keys of `#[cache(...)]` are listed in one table, in the crate docs of
//! `cache-manager` (`# Declaring caches`), and `docs/caches.md` shows the same table: the
//! two must have the same rows, and every key the derive accepts (a `name: "..."` line of
//! its `ATTRIBUTES` table in `cache-derive/src/attr.rs`) must have a row. And every
//! relative link of the markdown pages must lead to a file, and its `#anchor` to a
//! heading of that file.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

/// The workspace root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests package lives in the workspace")
        .to_path_buf()
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The header row every key table starts with.
const HEADER: &str = "| key | meaning |";

/// The crate docs (`//!` lines) at the top of a Rust file, without the marker.
fn crate_docs(source: &str) -> Vec<String> {
    source
        .lines()
        .map_while(|line| line.strip_prefix("//!"))
        .map(|line| line.strip_prefix(' ').unwrap_or(line).to_owned())
        .collect()
}

/// The key table of the section `heading` of `lines`: its header, separator and rows, up
/// to the first line that is not a table row.
fn key_table(lines: &[String], heading: &str, source: &str) -> Vec<String> {
    let start = lines
        .iter()
        .position(|line| line.trim() == heading)
        .unwrap_or_else(|| panic!("{source} has no heading `{heading}`"));
    let header = lines[start + 1..]
        .iter()
        .take_while(|line| !line.starts_with('#'))
        .position(|line| line.trim() == HEADER)
        .map(|i| start + 1 + i)
        .unwrap_or_else(|| panic!("{source}: no `{HEADER}` table under `{heading}`"));
    lines[header..]
        .iter()
        .take_while(|line| line.trim_start().starts_with('|'))
        .map(|line| line.trim().to_owned())
        .collect()
}

/// The table of the crate docs of `cache-manager`: the one source of truth.
fn crate_docs_table() -> Vec<String> {
    let path = root().join("cache-manager/src/lib.rs");
    let docs = crate_docs(&read(&path));
    key_table(&docs, "# Declaring caches", "cache-manager/src/lib.rs")
}

/// The table `docs/caches.md` shows.
fn docs_page_table() -> Vec<String> {
    let lines: Vec<String> = read(&root().join("docs/caches.md"))
        .lines()
        .map(str::to_owned)
        .collect();
    key_table(&lines, "## `#[cache(...)]`", "docs/caches.md")
}

/// The key a table row documents: the first word of its first cell, e.g. `ttl` for
/// ``| `ttl = N` | ... |``.
fn row_key(row: &str) -> String {
    let cell = row
        .trim_start_matches('|')
        .split('|')
        .next()
        .unwrap_or_default();
    cell.trim()
        .trim_start_matches('`')
        .split([' ', '=', '`'])
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// The keys of a table, without its header and separator.
fn table_keys(table: &[String]) -> BTreeSet<String> {
    table.iter().skip(2).map(|row| row_key(row)).collect()
}

/// Every key name of the derive's `ATTRIBUTES` table.
fn derive_keys() -> BTreeSet<String> {
    let source = read(&root().join("cache-derive/src/attr.rs"));
    let start = source
        .find("const ATTRIBUTES")
        .expect("cache-derive/src/attr.rs has no `const ATTRIBUTES`");
    let end = start
        + source[start..]
            .find("\n];")
            .expect("the ATTRIBUTES table ends with `];`");
    let keys: BTreeSet<String> = source[start..end]
        .lines()
        .filter_map(|line| line.trim().strip_prefix("name: \""))
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_owned)
        .collect();
    assert!(
        keys.contains("namespace") && keys.contains("key"),
        "no `name: \"...\"` line found in ATTRIBUTES: {keys:?}"
    );
    keys
}

#[test]
fn the_key_table_of_the_docs_page_is_the_one_of_the_crate_docs() {
    let truth = crate_docs_table();
    let page = docs_page_table();
    let only_in = |a: &[String], b: &[String]| -> Vec<String> {
        a.iter().filter(|row| !b.contains(row)).cloned().collect()
    };
    assert_eq!(
        truth,
        page,
        "the `#[cache(...)]` table of docs/caches.md differs from the one in the crate docs \
         of cache-manager/src/lib.rs (the source of truth; copy its rows).\n\
         only in the crate docs: {:#?}\nonly in docs/caches.md: {:#?}",
        only_in(&truth, &page),
        only_in(&page, &truth)
    );
}

#[test]
fn every_key_the_derive_accepts_has_a_row_and_no_row_names_another() {
    let derive = derive_keys();
    for (table, source) in [
        (crate_docs_table(), "cache-manager/src/lib.rs"),
        (docs_page_table(), "docs/caches.md"),
    ] {
        let documented = table_keys(&table);
        let missing: Vec<_> = derive.difference(&documented).collect();
        let unknown: Vec<_> = documented.difference(&derive).collect();
        assert!(
            missing.is_empty(),
            "keys of ATTRIBUTES (cache-derive/src/attr.rs) without a row in the table of {source}: {missing:?}"
        );
        assert!(
            unknown.is_empty(),
            "rows of the table of {source} for keys the derive does not accept: {unknown:?}"
        );
    }
}

/// The markdown pages whose links are checked.
fn pages() -> Vec<PathBuf> {
    let root = root();
    let mut pages = vec![root.join("README.md"), root.join("ARCHITECTURE.md")];
    let mut docs: Vec<PathBuf> = fs::read_dir(root.join("docs"))
        .expect("read docs/")
        .map(|entry| entry.expect("a docs/ entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
}

/// The lines of a markdown page outside fenced code blocks.
fn prose(text: &str) -> Vec<&str> {
    let mut fenced = false;
    text.lines()
        .filter(|line| {
            if line.trim_start().starts_with("```") {
                fenced = !fenced;
                return false;
            }
            !fenced
        })
        .collect()
}

/// The anchor GitHub gives a heading: lowercase, punctuation other than `-` and `_`
/// dropped, spaces as `-`.
fn slug(heading: &str) -> String {
    heading
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | ' '))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Every anchor of a markdown page, with GitHub's `-1`, `-2` suffixes for repeats.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut anchors = BTreeSet::new();
    for line in prose(text) {
        let hashes = line.chars().take_while(|&c| c == '#').count();
        if hashes == 0 || hashes > 6 || !line[hashes..].starts_with(' ') {
            continue;
        }
        let base = slug(line[hashes..].trim().trim_end_matches('#').trim());
        let n = seen.entry(base.clone()).or_default();
        anchors.insert(if *n == 0 {
            base.clone()
        } else {
            format!("{base}-{n}")
        });
        *n += 1;
    }
    anchors
}

/// A line with its inline code spans removed, so code that looks like a link is not one.
fn without_code_spans(line: &str) -> String {
    line.split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 0)
        .map(|(_, part)| part)
        .collect()
}

/// Every link target of a markdown page: inline `[text](target)` and reference
/// definitions `[label]: target`.
fn link_targets(text: &str) -> Vec<String> {
    let mut targets = Vec::new();
    for line in prose(text) {
        // A reference definition's label may itself be code, as in [`CacheKey`]: target.
        if line.starts_with('[')
            && let Some((_, target)) = line.split_once("]: ")
        {
            targets.push(target.trim().to_owned());
            continue;
        }
        let line = without_code_spans(line);
        let mut rest = line.as_str();
        while let Some(at) = rest.find("](") {
            rest = &rest[at + 2..];
            let end = rest.find(')').unwrap_or(rest.len());
            targets.push(rest[..end].trim().to_owned());
            rest = &rest[end..];
        }
    }
    targets
}

#[test]
fn relative_links_of_the_markdown_pages_lead_somewhere() {
    let root = root();
    let mut broken = Vec::new();
    for page in pages() {
        let text = read(&page);
        let dir = page.parent().expect("a page lives in a directory");
        for target in link_targets(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (path, anchor) = match target.split_once('#') {
                Some((path, anchor)) => (path, Some(anchor)),
                None => (target.as_str(), None),
            };
            let file = if path.is_empty() {
                page.clone()
            } else {
                dir.join(path)
            };
            let shown = page.strip_prefix(&root).unwrap_or(&page).display();
            if !file.exists() {
                broken.push(format!("{shown}: `{target}`: no such file"));
                continue;
            }
            if let Some(anchor) = anchor
                && file.extension().is_some_and(|ext| ext == "md")
                && !anchors(&read(&file)).contains(anchor)
            {
                broken.push(format!("{shown}: `{target}`: no heading with that anchor"));
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

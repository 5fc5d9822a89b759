//! The dependency rule of docs/architecture.md: a module imports only modules earlier in the
//! data flow (the infrastructure row may be imported by all), so there is no cycle. Every
//! `crate::` path in `src/` is read, `use crate::{a, b::c}` groups included.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The modules in data-flow order, as in the architecture table.
const ORDER: &[&str] = &[
    "onnx",
    "model_io",
    "graph",
    "runtime",
    "ops",
    "loadable",
    "blocks",
    "action",
    "calibrate",
    "compensate",
    "plan",
    "search",
    "rewrite",
    "apply",
    "fidelity",
    "pipeline",
    "diffusers",
    "report",
    "commands",
    "cli",
];

/// Imported by any module: errors, signal handling, progress bars.
const INFRASTRUCTURE: &[&str] = &["error", "interrupt", "progress"];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a source file belongs to (`src/blocks/stream.rs` → `blocks`).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then(|| name.to_string())
}

/// The top-level modules named by `crate::` paths in `text`, comments left out.
fn imports(text: &str) -> BTreeSet<String> {
    let code: String = text
        .lines()
        .map(|l| match l.trim_start().starts_with("//") {
            true => "",
            false => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a, b::c, d::{e, f}}`: the first segment of each top-level item.
            let mut depth = 0;
            let mut item_start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        rest = &group[j..];
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && (c.is_alphanumeric() || c == '_') => {
                        let name: String = group[j..]
                            .chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_')
                            .collect();
                        out.insert(name);
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            out.insert(name);
        }
    }
    out
}

#[test]
fn the_parser_reads_paths_and_groups() {
    let found = imports(
        "use crate::{blocks::{self, Analysis}, plan};\n// crate::cli in a comment\nlet x = crate::graph::check(g);",
    );
    let want: BTreeSet<String> = ["blocks", "plan", "graph"].map(String::from).into();
    assert_eq!(found, want);
}

#[test]
fn modules_import_only_earlier_modules() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let rank = |m: &str| ORDER.iter().position(|o| *o == m);
    let mut broken = Vec::new();
    let mut seen = BTreeSet::new();
    for file in &files {
        let Some(module) = module_of(&src, file) else {
            continue;
        };
        seen.insert(module.clone());
        if INFRASTRUCTURE.contains(&module.as_str()) {
            continue;
        }
        let here = rank(&module).unwrap_or_else(|| {
            panic!(
                "{module} ({}) is not in ORDER: place it in the data flow",
                file.display()
            )
        });
        for imported in imports(&std::fs::read_to_string(file).unwrap()) {
            if imported == module || INFRASTRUCTURE.contains(&imported.as_str()) {
                continue;
            }
            match rank(&imported) {
                Some(there) if there < here => {}
                _ => broken.push(format!(
                    "{} ({module}) imports {imported}",
                    file.strip_prefix(&src).unwrap().display()
                )),
            }
        }
    }
    assert!(
        broken.is_empty(),
        "imports against the data flow (docs/architecture.md):\n{}",
        broken.join("\n")
    );
    // Every module of the table exists, so the rule is not checked against a stale list.
    for m in ORDER.iter().chain(INFRASTRUCTURE) {
        assert!(
            seen.contains(*m),
            "{m} is listed but src/ has no such module"
        );
    }
}

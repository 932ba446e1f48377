//! The rules of docs/ARCHITECTURE.md that a test can check, read from the document itself: the
//! shell's modules in their layers (every import points down, no file imports its way back to
//! itself) and every HTTP client built by `tls::client`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Every `.rs` file under `dir`.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// A file's code, without comments and without its unit tests (a test may reach anywhere).
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let text = text.split("#[cfg(test)]\nmod tests").next().unwrap_or_default();
    text.lines().map(|l| l.split("//").next().unwrap_or_default()).collect::<Vec<_>>().join("\n")
}

/// The module path of a file under `src/`: `src/http/nodes/claim.rs` is `http::nodes::claim`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let relative = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = relative.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib" || p == "main") {
        parts.pop();
    }
    parts
}

/// The `crate::…` paths a file's code names, each as its segments (a `{…}` group expanded).
fn crate_paths(code: &str) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        let end = after.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')).unwrap_or(after.len());
        let path: Vec<String> =
            after[..end].split("::").filter(|s| !s.is_empty()).map(str::to_owned).collect::<Vec<_>>();
        if after[end..].starts_with('{') {
            let group = &after[end + 1..after[end..].find('}').map_or(after.len(), |i| end + i)];
            for item in group.split(',') {
                let item: Vec<String> = item.trim().split("::").map(|s| s.trim().to_owned()).collect();
                let mut full = path.clone();
                full.extend(item.into_iter().filter(|s| !s.is_empty() && s != "self"));
                paths.push(full);
            }
        } else {
            paths.push(path);
        }
        rest = &after[end..];
    }
    paths
}

/// The layers of the shell, from the table under `## Layers` in docs/ARCHITECTURE.md: each row
/// names a layer's number and its modules.
fn layers() -> BTreeMap<String, u32> {
    let doc = std::fs::read_to_string(Path::new(ROOT).join("docs/ARCHITECTURE.md")).unwrap();
    let section = doc.split("\n## Layers\n").nth(1).expect("docs/ARCHITECTURE.md has a `## Layers` section");
    let mut layers = BTreeMap::new();
    for row in section.lines().take_while(|l| !l.starts_with("## ")).filter(|l| l.starts_with("| ")) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let Ok(layer) = cells[1].parse::<u32>() else { continue };
        for module in cells[2].split(',') {
            layers.insert(module.trim().trim_matches('`').to_owned(), layer);
        }
    }
    assert!(!layers.is_empty(), "no layers read from docs/ARCHITECTURE.md");
    layers
}

#[test]
fn every_import_of_the_shell_points_to_a_lower_layer() {
    let layers = layers();
    let src = Path::new(ROOT).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    let declared: BTreeSet<String> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("pub mod ").or_else(|| l.strip_prefix("mod ")))
        .map(|m| m.trim_end_matches(';').to_owned())
        .collect();
    let placed: BTreeSet<String> = layers.keys().cloned().collect();
    assert_eq!(declared, placed, "docs/ARCHITECTURE.md's layers name every module of src/lib.rs, and only those");

    let mut wrong = Vec::new();
    for file in sources(&src) {
        let module = module_of(&src, &file);
        let Some(top) = module.first() else { continue };
        for path in crate_paths(&code(&file)) {
            let Some(target) = path.first() else { continue };
            if target == top {
                continue;
            }
            let (from, to) = (layers[top], layers.get(target).copied().unwrap_or(u32::MAX));
            if to >= from {
                wrong.push(format!(
                    "{} (`{top}`, layer {from}) uses `crate::{}` (layer {to})",
                    file.display(),
                    path.join("::")
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "imports that do not point down:\n{}", wrong.join("\n"));
}

#[test]
fn no_files_of_the_shell_import_their_way_back_to_themselves() {
    let src = Path::new(ROOT).join("src");
    let files = sources(&src);
    let modules: BTreeMap<Vec<String>, usize> =
        files.iter().enumerate().map(|(i, f)| (module_of(&src, f), i)).collect();
    // The file a path names: its longest prefix that is a file's module.
    let file_of = |path: &[String]| (1..=path.len()).rev().find_map(|n| modules.get(&path[..n]).copied());
    let edges: Vec<BTreeSet<usize>> = files
        .iter()
        .enumerate()
        .map(|(i, f)| crate_paths(&code(f)).iter().filter_map(|p| file_of(p)).filter(|&j| j != i).collect())
        .collect();
    // A file is on a cycle if it reaches itself.
    let mut cycles = Vec::new();
    for start in 0..files.len() {
        let mut seen = BTreeSet::new();
        let mut pending: Vec<usize> = edges[start].iter().copied().collect();
        while let Some(next) = pending.pop() {
            if next == start {
                cycles.push(files[start].display().to_string());
                break;
            }
            if seen.insert(next) {
                pending.extend(edges[next].iter().copied());
            }
        }
    }
    assert!(cycles.is_empty(), "files on an import cycle:\n{}", cycles.join("\n"));
}

#[test]
fn the_layer_check_sees_an_import_that_points_up() {
    // The checks above read code this way: a use of a higher layer is a path they see.
    let paths = crate_paths("use crate::http::{self, api::AdminApi};\nlet x = crate::app::App::start;");
    assert_eq!(paths, [vec!["http"], vec!["http", "api", "AdminApi"], vec!["app", "App", "start"]]);
    let layers = layers();
    assert!(layers["store"] < layers["http"] && layers["http"] < layers["app"]);
}

#[test]
fn every_http_client_of_the_gateway_and_the_benchmarks_is_built_by_tls_client() {
    let mut wrong = Vec::new();
    for dir in ["src", "bench/src"] {
        for file in sources(&Path::new(ROOT).join(dir)) {
            if file.ends_with("src/tls.rs") {
                continue;
            }
            let code = code(&file);
            for made in ["reqwest::Client::new(", "reqwest::Client::default(", "reqwest::ClientBuilder::new("] {
                if code.contains(made) {
                    wrong.push(format!("{}: {made}", file.display()));
                }
            }
            // A builder is handed to `tls::client`, which adds the trust and builds it.
            let builders = code.matches("reqwest::Client::builder()").count();
            let handed = code.matches("tls::client(").count();
            if builders > handed {
                wrong.push(format!("{}: {builders} builders, {handed} handed to tls::client", file.display()));
            }
        }
    }
    assert!(wrong.is_empty(), "HTTP clients not built by tls::client:\n{}", wrong.join("\n"));
}

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The layering of `src/`, checked from the source text: the pure core imports no I/O crate and
//! nothing of the shell, no module imports a higher layer, and neither the crate's top-level
//! modules nor the relay's parts import each other in a circle.
//!
//! `cargo test --test layers -- --nocapture` prints the import graph it checked.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The crate's top-level modules, lowest layer first. A module may import its own layer (no
/// circles) and the layers below.
const LAYERS: &[&[&str]] = &[
    // The pure core: no I/O, no async, no Kafka client.
    &[
        "json_scan",
        "extract",
        "splice",
        "config",
        "clock",
        "environment",
        "whitelist",
        "tenancy",
        "pinning",
        "topic_settings",
    ],
    // Clients, observability and wire formats.
    &["kafka", "metrics", "telemetry", "headers", "background"],
    // What the bridge keeps on prod besides outputs.
    &["topics", "decision_log"],
    // The daemon's engine and the reference whitelist service.
    &["relay", "config_mapper"],
    // Commands and the admin endpoint.
    &["admin", "verify", "migrate", "explain", "cleanup", "demo", "report", "whitelist_cli"],
    &["daemon"],
];

/// Of `whitelist`, only the snapshot (`mod.rs`, `snapshot.rs`) is core; these parts are shell.
const WHITELIST_SHELL: &[&str] = &["client", "file", "lookup", "poller", "source"];

/// The relay's parts, lowest first.
const RELAY_LAYERS: &[&[&str]] = &[
    &["offsets", "health", "stop"],
    &["refusals"],
    &["producer"],
    &["commit"],
    &["error"],
    &["output"],
    &["direction"],
    &["forward", "rush_lane", "return_path"],
    &["run"],
    &["mod"],
];

/// What the core must never name.
const IO_CRATES: &[&str] = &["rdkafka", "tokio", "reqwest", "axum", "rusqlite", "moka", "prometheus", "tracing"];

fn layer_of(layers: &[&[&str]], module: &str) -> Option<usize> {
    layers.iter().position(|l| l.contains(&module))
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a file under `src/`: `relay/forward/mod.rs` → `["relay", "forward"]`.
fn module_path(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    if let Some(last) = parts.pop() {
        let stem = last.trim_end_matches(".rs");
        if stem != "mod" {
            parts.push(stem.to_owned());
        }
    }
    parts
}

/// The code of a file without comments and without its `#[cfg(test)]` tail (tests may reach
/// anywhere).
fn code(text: &str) -> String {
    let text = text.find("#[cfg(test)]").map_or(text, |i| &text[..i]);
    text.lines().map(|l| l.find("//").map_or(l, |i| &l[..i])).collect::<Vec<_>>().join("\n")
}

fn ident_at(s: &str) -> Option<&str> {
    let end = s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(s.len());
    (end > 0).then(|| &s[..end])
}

/// Every module path this code names: `crate::a::b`, and `super::x` resolved against `here`
/// (also inside `use super::{x, y::z}` groups). Two segments at most.
fn imports(code: &str, here: &[String]) -> BTreeSet<Vec<String>> {
    let mut out = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        let Some(first) = ident_at(rest) else { continue };
        let mut path = vec![first.to_owned()];
        if let Some(second) = rest[first.len()..].strip_prefix("::").and_then(ident_at) {
            path.push(second.to_owned());
        }
        out.insert(path);
    }
    for (i, _) in code.match_indices("super::") {
        // `super::super::x` is counted from its last `super::`.
        if code[..i].ends_with("super::") {
            continue;
        }
        let mut rest = &code[i..];
        let mut base: Vec<String> = here.to_vec();
        while let Some(r) = rest.strip_prefix("super::") {
            base.pop();
            rest = r;
        }
        let names: Vec<&str> = match rest.strip_prefix('{') {
            Some(group) => {
                group.split('}').next().unwrap_or("").split(',').filter_map(|s| ident_at(s.trim())).collect()
            }
            None => ident_at(rest).into_iter().collect(),
        };
        for name in names {
            if name == "self" || name.chars().next().is_some_and(char::is_uppercase) {
                // An item of the parent, not a module: the parent itself.
                out.insert(base.clone());
                continue;
            }
            let mut path = base.clone();
            path.push(name.to_owned());
            out.insert(path);
        }
    }
    out
}

struct Source {
    module: Vec<String>,
    rel: String,
    code: String,
}

fn sources() -> Vec<Source> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    files
        .into_iter()
        .filter_map(|path| {
            let rel = path.strip_prefix(src()).expect("under src").to_path_buf();
            let name = rel.to_string_lossy().into_owned();
            // The binary's own files and unit-test files are not layers of the library.
            if name == "main.rs" || name == "cli.rs" || name == "lib.rs" || name.ends_with("_tests.rs") {
                return None;
            }
            let text = std::fs::read_to_string(&path).expect("read");
            Some(Source { module: module_path(&rel), rel: name, code: code(&text) })
        })
        .collect()
}

/// A circle in `edges`, if there is one.
fn circle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_owned(), 1);
        stack.push(n.to_owned());
        for m in edges.get(n).into_iter().flatten() {
            match state.get(m.as_str()) {
                Some(1) => {
                    let from = stack.iter().position(|s| s == m).unwrap_or(0);
                    let mut c = stack[from..].to_vec();
                    c.push(m.clone());
                    return Some(c);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(m, edges, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(n.to_owned(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in edges.keys() {
        if !state.contains_key(n.as_str()) {
            if let Some(c) = visit(n, edges, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn no_circles_and_no_import_of_a_higher_layer() {
    let sources = sources();
    let mut top: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut relay: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut wrong = Vec::new();
    for s in &sources {
        let own = &s.module[0];
        let Some(own_layer) = layer_of(LAYERS, own) else {
            wrong.push(format!("{}: module {own:?} is in no layer of tests/layers.rs", s.rel));
            continue;
        };
        let core = own_layer == 0
            && !(own == "whitelist" && s.module.get(1).is_some_and(|m| WHITELIST_SHELL.contains(&m.as_str())));
        if core {
            for krate in IO_CRATES {
                if s.code.contains(&format!("{krate}::")) {
                    wrong.push(format!("{}: the pure core names {krate}", s.rel));
                }
            }
            if s.code.contains("async ") || s.code.contains(".await") {
                wrong.push(format!("{}: the pure core is async", s.rel));
            }
        }
        for import in imports(&s.code, &s.module) {
            let target = &import[0];
            if target != own {
                top.entry(own.clone()).or_default().insert(target.clone());
                match layer_of(LAYERS, target) {
                    None => wrong.push(format!("{}: imports {target:?}, which is in no layer", s.rel)),
                    Some(l) if l > own_layer => {
                        wrong.push(format!("{}: imports {target} from a higher layer", s.rel));
                    }
                    Some(_) => {}
                }
                let shell_part = import.get(1).is_some_and(|m| WHITELIST_SHELL.contains(&m.as_str()));
                if core && target == "whitelist" && shell_part {
                    wrong.push(format!("{}: the pure core imports whitelist::{}", s.rel, import[1]));
                }
            }
            if own == "relay" && target == "relay" {
                let from = s.module.get(1).map_or("mod", String::as_str);
                let Some(to) = import.get(1).map(String::as_str) else { continue };
                if from == to {
                    continue;
                }
                relay.entry(from.to_owned()).or_default().insert(to.to_owned());
                match (layer_of(RELAY_LAYERS, from), layer_of(RELAY_LAYERS, to)) {
                    (Some(a), Some(b)) if b >= a && from != "mod" => {
                        wrong.push(format!("{}: relay::{from} imports relay::{to}, not below it", s.rel));
                    }
                    (None, _) | (_, None) => {
                        wrong.push(format!("{}: relay::{from} → relay::{to}: a part in no layer", s.rel))
                    }
                    _ => {}
                }
            }
        }
    }
    println!("top-level imports:");
    for (from, to) in &top {
        println!("  {from} → {}", to.iter().cloned().collect::<Vec<_>>().join(", "));
    }
    println!("relay parts:");
    for (from, to) in &relay {
        println!("  relay::{from} → {}", to.iter().cloned().collect::<Vec<_>>().join(", "));
    }
    if let Some(c) = circle(&top) {
        wrong.push(format!("circle between top-level modules: {}", c.join(" → ")));
    }
    if let Some(c) = circle(&relay) {
        wrong.push(format!("circle between relay parts: {}", c.join(" → ")));
    }
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
}

#[test]
fn the_checker_sees_imports_and_circles() {
    let here = vec!["relay".to_owned(), "forward".to_owned(), "fan_out".to_owned()];
    let found = imports(
        "use super::{held::Holding, pinned};\nuse crate::relay::output::Writer;\nsuper::super::run::x();",
        &here,
    );
    let want: BTreeSet<Vec<String>> = [
        vec!["relay", "forward", "held"],
        vec!["relay", "forward", "pinned"],
        vec!["relay", "output"],
        vec!["relay", "run"],
    ]
    .into_iter()
    .map(|p| p.into_iter().map(str::to_owned).collect())
    .collect();
    assert_eq!(found, want);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    edges.entry("a".into()).or_default().insert("b".into());
    edges.entry("b".into()).or_default().insert("a".into());
    assert_eq!(circle(&edges), Some(vec!["a".to_owned(), "b".to_owned(), "a".to_owned()]));
    edges.remove("b");
    assert_eq!(circle(&edges), None);
}

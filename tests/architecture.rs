//! The architecture's invariants, checked rather than only written: reads
//! every source file under `src/`, resolves the paths it names (`use`
//! trees, renames, `crate`/`super`/`self`, and fully qualified paths in
//! code) with comments and string literals blanked out, and fails on a
//! forbidden dependency. `#[cfg(test)]` modules are product tests, not
//! product code, and are left out. ARCHITECTURE.md lists the same rules
//! under *Invariants*; the self-tests at the end plant each violation in a
//! snippet and check that it is caught.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

// ---------------------------------------------------------------------------
// The rules
// ---------------------------------------------------------------------------

/// Wire and transport crates: only the gRPC edge (and the adapters and
/// clients that speak the protocol) may name them.
const WIRE_CRATES: &[&str] = &["tonic", "tonic_prost", "tonic_health", "tonic_reflection", "prost", "prost_types"];

/// One forbidden dependency found in a file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Violation {
    file: String,
    line: usize,
    rule: &'static str,
    path: String,
}

/// Files allowed to construct a `tonic::Status` besides `sync_server::error`,
/// each for a reason that is not an error of the server's logic.
const STATUS_ALLOWED: &[(&str, &str)] = &[
    ("crate::client", "the client's own refusal of a token that is not header text, before any call"),
    ("crate::codec", "tonic's `Codec` must answer a malformed message with a `Status`; clients decode with it too"),
    ("bin::bench::ceiling", "the benchmark's in-memory stand-in server, which has no error layer to copy"),
];

/// What holds a store: the handle, the boundary's traits, a backend.
const STORE_HANDLES: &[&str] = &[
    "crate::store::Store",
    "crate::store::Backend",
    "crate::store::Parties",
    "crate::store::Trades",
    "crate::store::Ledger",
    "crate::store::Network",
    "crate::store::Lifecycle",
    "crate::store::sled::SledStore",
];

/// The modules of the binary crate (`main.rs` declares them); the rest of
/// `src/` is the library.
const BIN_MODULES: &[&str] = &["cli", "bench"];

fn starts(path: &[String], prefix: &[&str]) -> bool {
    path.len() >= prefix.len() && path.iter().zip(prefix).all(|(a, b)| a == b)
}

fn module_is(module: &[String], prefix: &str) -> bool {
    let prefix: Vec<&str> = prefix.split("::").collect();
    starts(module, &prefix)
}

/// Checks one resolved path named in `module` against every rule.
fn check(module: &[String], path: &[String]) -> Vec<&'static str> {
    let mut broken = Vec::new();
    let first = path.first().map(String::as_str).unwrap_or_default();
    let names_crate = |p: &str| module_is(path, p);
    let wire = WIRE_CRATES.contains(&first) || names_crate("crate::proto");
    let in_store = module_is(module, "crate::store");
    let in_domain = module_is(module, "crate::domain");
    if (in_store || in_domain) && wire {
        broken.push("store and domain know nothing of tonic, prost or the wire types");
    }
    if in_store && (names_crate("crate::sync_server") || names_crate("crate::carrier")) {
        broken.push("the store depends on no layer above it");
    }
    if in_domain
        && (first == "sled"
            || first == "tokio"
            || names_crate("crate::store")
            || names_crate("crate::sync_server")
            || names_crate("crate::carrier"))
    {
        broken.push("domain is pure: no sled, no tokio, no layer above it");
    }
    if in_domain && reads_clock(path) {
        broken.push("domain reads no clock: time is passed in as UnixMs");
    }
    if first == "sled" && !module_is(module, "crate::store::sled") {
        broken.push("only the sled backend (src/store/sled/) knows sled");
    }
    if module_is(module, "crate::sync_server::engine") && wire {
        broken.push("the engine knows nothing of tonic, prost or the wire types");
    }
    if module_is(module, "crate::carrier") && names_crate("crate::sync_server") {
        broken.push("the carrier adapter does not reach into sync_server");
    }
    if module_is(module, "crate::pki") && names_crate("crate::sync_server") {
        broken.push("pki does not reach into sync_server");
    }
    if module_is(module, "crate::sync_server::limits") && names_crate("crate::carrier") {
        broken.push("limits are defined in limits.rs, not read from the carrier adapter");
    }
    // `sync_server` itself (mod.rs) opens the store and hands it to the
    // engine; nothing else outside the store holds one.
    let may_hold_store = module_is(module, "crate::store")
        || module_is(module, "crate::sync_server::engine")
        || module.iter().map(String::as_str).eq(["crate", "sync_server"]);
    if !may_hold_store && STORE_HANDLES.iter().any(|h| names_crate(h)) {
        broken.push("the engine is the only caller of the store: services, pages and commands never hold it");
    }
    if module_is(module, "crate::sync_server")
        && !module_is(module, "crate::sync_server::engine")
        && module.len() > 2
        && names_crate("crate::store::sled")
    {
        broken.push("the gRPC services know no backend");
    }
    if constructs_status(path)
        && !module_is(module, "crate::sync_server::error")
        && !STATUS_ALLOWED.iter().any(|(m, _)| module_is(module, m))
    {
        broken.push("errors become tonic::Status only in sync_server::error");
    }
    broken
}

fn reads_clock(path: &[String]) -> bool {
    let last_two = path.len() >= 2 && path[path.len() - 1] == "now";
    last_two && matches!(path[path.len() - 2].as_str(), "SystemTime" | "Instant" | "Utc" | "Local")
}

/// `tonic::Status::<anything>`: a constructor (`new`, `unavailable`, …) or
/// a conversion (`from`). Methods on a status value are not paths.
fn constructs_status(path: &[String]) -> bool {
    path.len() >= 3 && path[0] == "tonic" && path[1] == "Status"
}

// ---------------------------------------------------------------------------
// Reading the source
// ---------------------------------------------------------------------------

/// The source with comments blanked and every string or character literal
/// replaced by an empty one; line breaks are kept so lines still count.
fn blank(source: &str) -> String {
    let chars: Vec<char> = source.chars().collect();
    let mut out = String::with_capacity(source.len());
    let mut i = 0;
    let keep_newlines = |out: &mut String, text: &[char]| {
        for c in text {
            out.push(if *c == '\n' { '\n' } else { ' ' });
        }
    };
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            let end = chars[i..].iter().position(|c| *c == '\n').map_or(chars.len(), |p| i + p);
            keep_newlines(&mut out, &chars[i..end]);
            i = end;
        } else if c == '/' && next == Some('*') {
            let (mut depth, mut j) = (1, i + 2);
            while j < chars.len() && depth > 0 {
                if chars[j] == '/' && chars.get(j + 1) == Some(&'*') {
                    depth += 1;
                    j += 2;
                } else if chars[j] == '*' && chars.get(j + 1) == Some(&'/') {
                    depth -= 1;
                    j += 2;
                } else {
                    j += 1;
                }
            }
            keep_newlines(&mut out, &chars[i..j.min(chars.len())]);
            i = j;
        } else if let Some((start, hashes)) = raw_string_start(&chars, i) {
            // r"…", r#"…"#, br"…": ends at a quote followed by as many #.
            let mut j = start;
            loop {
                if j >= chars.len() {
                    break;
                }
                if chars[j] == '"' && (0..hashes).all(|h| chars.get(j + 1 + h) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.push_str("\"\"");
            keep_newlines(&mut out, &chars[(i + 2).min(j)..j]);
            i = j;
        } else if c == '"' || (c == 'b' && next == Some('"') && !ident_char(prev(&chars, i))) {
            let mut j = if c == 'b' { i + 2 } else { i + 1 };
            while j < chars.len() && chars[j] != '"' {
                j += if chars[j] == '\\' { 2 } else { 1 };
            }
            out.push_str("\"\"");
            keep_newlines(&mut out, &chars[(i + 2).min(j)..j.min(chars.len())]);
            i = j + 1;
        } else if c == '\'' {
            // A character literal ('x', '\n', '\u{..}') or a lifetime.
            let literal_end = if next == Some('\\') {
                chars[i + 2..].iter().position(|c| *c == '\'').map(|p| i + 2 + p)
            } else if chars.get(i + 2) == Some(&'\'') {
                Some(i + 2)
            } else {
                None
            };
            match literal_end {
                Some(end) => {
                    out.push_str("' '");
                    i = end + 1;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn prev(chars: &[char], i: usize) -> char {
    if i == 0 {
        ' '
    } else {
        chars[i - 1]
    }
}

fn ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Where a raw string's body starts and how many `#` close it.
fn raw_string_start(chars: &[char], i: usize) -> Option<(usize, usize)> {
    if ident_char(prev(chars, i)) {
        return None;
    }
    let mut j = i;
    if chars.get(j) == Some(&'b') {
        j += 1;
    }
    if chars.get(j) != Some(&'r') {
        return None;
    }
    j += 1;
    let mut hashes = 0;
    while chars.get(j) == Some(&'#') {
        hashes += 1;
        j += 1;
    }
    (chars.get(j) == Some(&'"')).then_some((j + 1, hashes))
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    Colons,
    Punct(char),
}

fn tokens(code: &str) -> Vec<(Tok, usize)> {
    let chars: Vec<char> = code.chars().collect();
    let (mut out, mut line, mut i) = (Vec::new(), 1, 0);
    while i < chars.len() {
        let c = chars[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if ident_char(c) {
            let start = i;
            while i < chars.len() && ident_char(chars[i]) {
                i += 1;
            }
            let mut word: String = chars[start..i].iter().collect();
            if word == "r" && chars.get(i) == Some(&'#') {
                // A raw identifier: r#type.
                i += 1;
                let s = i;
                while i < chars.len() && ident_char(chars[i]) {
                    i += 1;
                }
                word = chars[s..i].iter().collect();
            }
            if !word.chars().next().is_some_and(|c| c.is_ascii_digit()) {
                out.push((Tok::Ident(word), line));
            }
        } else if c == ':' && chars.get(i + 1) == Some(&':') {
            out.push((Tok::Colons, line));
            i += 2;
        } else {
            out.push((Tok::Punct(c), line));
            i += 1;
        }
    }
    out
}

/// A file read as one module: its path in the crate and what it names.
struct Module {
    file: String,
    path: Vec<String>,
}

/// The crate module a file under `src/` is. The binary (`main.rs` and the
/// [`BIN_MODULES`]) is its own crate that names the library as `syncpay`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop().expect("a file name");
    let stem = last.trim_end_matches(".rs").to_owned();
    let mut path = vec!["crate".to_owned()];
    let top = parts.first().map_or(stem.as_str(), String::as_str);
    if BIN_MODULES.contains(&top) || (parts.is_empty() && stem == "main") {
        path = vec!["bin".to_owned()];
    }
    path.extend(parts);
    if !matches!(stem.as_str(), "mod" | "lib" | "main") {
        path.push(stem);
    }
    path
}

/// Every path a module's code names, resolved as far as the text allows:
/// `use` trees with their renames, then paths in code whose first segment
/// is `crate`, `super`, `self`, a child module, an imported name or an
/// external crate. Inline `mod x { … }` blocks see their parent's imports
/// (as `use super::*` would give them); `#[cfg(test)]` blocks are skipped.
fn resolved_paths(module: &Module, source: &str) -> Vec<(Vec<String>, usize, Vec<String>)> {
    let toks = tokens(&blank(source));
    // Modules this file declares (`mod x;` or `mod x { … }`), which its
    // paths may name without `self::`.
    let children: BTreeSet<String> = toks
        .windows(2)
        .filter_map(|w| match w {
            [(Tok::Ident(m), _), (Tok::Ident(name), _)] if m == "mod" => Some(name.clone()),
            _ => None,
        })
        .collect();
    let mut out = Vec::new();
    // Inline modules: (path, brace depth at which it closes, its imports,
    // whether it is test code).
    type Scope = (Vec<String>, usize, HashMap<String, Vec<String>>, bool);
    let mut scopes: Vec<Scope> = vec![(module.path.clone(), 0, HashMap::new(), false)];
    let mut depth = 0usize;
    let mut i = 0;
    let mut pending_test = false;
    let mut pending_mod: Option<(String, bool)> = None;
    while i < toks.len() {
        let (tok, line) = (&toks[i].0, toks[i].1);
        let scope = scopes.last().expect("a scope").clone();
        let (here, _, imports, in_test) = (&scope.0, scope.1, &scope.2, scope.3);
        match tok {
            Tok::Punct('#') => {
                // #[cfg(test)] marks the next item as test code.
                let attr: Vec<&Tok> = toks[i..].iter().take(7).map(|(t, _)| t).collect();
                if matches!(
                    attr.as_slice(),
                    [Tok::Punct('#'), Tok::Punct('['), Tok::Ident(cfg), Tok::Punct('('), Tok::Ident(test), Tok::Punct(')'), Tok::Punct(']')]
                        if cfg == "cfg" && test == "test"
                ) {
                    pending_test = true;
                    i += 7;
                    continue;
                }
                i += 1;
            }
            Tok::Punct('{') => {
                depth += 1;
                if let Some((name, test)) = pending_mod.take() {
                    let mut path = here.clone();
                    path.push(name);
                    scopes.push((path, depth, imports.clone(), in_test || test));
                }
                i += 1;
            }
            Tok::Punct('}') => {
                if scopes.len() > 1 && scopes.last().is_some_and(|s| s.1 == depth) {
                    scopes.pop();
                }
                depth = depth.saturating_sub(1);
                i += 1;
            }
            Tok::Punct(';') => {
                pending_mod = None;
                pending_test = false;
                i += 1;
            }
            Tok::Ident(word) if word == "mod" => {
                if let Some((Tok::Ident(name), _)) = toks.get(i + 1) {
                    pending_mod = Some((name.clone(), pending_test));
                }
                pending_test = false;
                i += 2;
            }
            Tok::Ident(word) if word == "use" => {
                let end = toks[i..].iter().position(|(t, _)| *t == Tok::Punct(';')).map_or(toks.len(), |p| i + p);
                let tree: Vec<Tok> = toks[i + 1..end].iter().map(|(t, _)| t.clone()).collect();
                let mut leaves = Vec::new();
                use_tree(&tree, &[], &mut leaves);
                let scope = scopes.last_mut().expect("a scope");
                for (raw, alias) in leaves {
                    let full = absolute(&module.path, &scope.0, &raw, &HashMap::new(), &children);
                    if !scope.3 {
                        out.push((scope.0.clone(), line, full.clone()));
                    }
                    if let Some(alias) = alias {
                        scope.2.insert(alias, full);
                    }
                }
                pending_test = false;
                i = end + 1;
            }
            Tok::Ident(_) | Tok::Colons => {
                // A path: ident (:: ident)*, or ::ident …
                let start = i;
                let mut raw = Vec::new();
                let mut j = i;
                if toks[j].0 == Tok::Colons {
                    j += 1;
                }
                while let Some((Tok::Ident(seg), _)) = toks.get(j) {
                    raw.push(seg.clone());
                    if toks.get(j + 1).map(|t| &t.0) == Some(&Tok::Colons)
                        && matches!(toks.get(j + 2).map(|t| &t.0), Some(Tok::Ident(_)))
                    {
                        j += 2;
                    } else {
                        j += 1;
                        break;
                    }
                }
                if raw.len() >= 2 || (raw.len() == 1 && imports.contains_key(&raw[0])) {
                    let full = absolute(&module.path, here, &raw, imports, &children);
                    if !in_test {
                        out.push((here.clone(), line, full));
                    }
                }
                pending_test = pending_test && raw.first().is_some_and(|w| w == "pub" || w == "crate");
                i = j.max(start + 1);
            }
            _ => i += 1,
        }
    }
    out
}

/// Flattens a `use` tree into (path, name it is imported as).
fn use_tree(tree: &[Tok], prefix: &[String], out: &mut Vec<(Vec<String>, Option<String>)>) {
    let mut i = 0;
    let mut path = prefix.to_vec();
    while i < tree.len() {
        match &tree[i] {
            Tok::Ident(w) if w == "as" => {
                if let Some(Tok::Ident(alias)) = tree.get(i + 1) {
                    if let Some(last) = out.last_mut() {
                        last.1 = (alias != "_").then(|| alias.clone());
                    }
                }
                i += 2;
                continue;
            }
            Tok::Ident(w) => {
                path.push(w.clone());
                let next = tree.get(i + 1);
                if next != Some(&Tok::Colons) {
                    let name = if w == "self" { path.iter().rev().nth(1).cloned() } else { Some(w.clone()) };
                    let full = if w == "self" { path[..path.len() - 1].to_vec() } else { path.clone() };
                    out.push((full, name));
                    path = prefix.to_vec();
                }
            }
            Tok::Colons => {}
            Tok::Punct('*') => {
                out.push((path.clone(), None));
                path = prefix.to_vec();
            }
            Tok::Punct('{') => {
                // The matching brace.
                let mut depth = 0;
                let mut end = i;
                for (k, t) in tree.iter().enumerate().skip(i) {
                    match t {
                        Tok::Punct('{') => depth += 1,
                        Tok::Punct('}') => {
                            depth -= 1;
                            if depth == 0 {
                                end = k;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                let inner = &tree[i + 1..end];
                for part in split_commas(inner) {
                    use_tree(part, &path, out);
                }
                path = prefix.to_vec();
                i = end;
            }
            Tok::Punct(',') => path = prefix.to_vec(),
            Tok::Punct(_) => {}
        }
        i += 1;
    }
}

fn split_commas(tree: &[Tok]) -> Vec<&[Tok]> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0, 0);
    for (k, t) in tree.iter().enumerate() {
        match t {
            Tok::Punct('{') => depth += 1,
            Tok::Punct('}') => depth -= 1,
            Tok::Punct(',') if depth == 0 => {
                parts.push(&tree[start..k]);
                start = k + 1;
            }
            _ => {}
        }
    }
    parts.push(&tree[start..]);
    parts
}

/// A path made absolute: `crate::…` for the crate's own modules, or the
/// external crate's name first.
fn absolute(
    file: &[String],
    here: &[String],
    raw: &[String],
    imports: &HashMap<String, Vec<String>>,
    children: &BTreeSet<String>,
) -> Vec<String> {
    let Some(first) = raw.first() else {
        return Vec::new();
    };
    let mut base: Vec<String> = match first.as_str() {
        "crate" => vec![file[0].clone()],
        "self" => here.to_vec(),
        "super" => {
            let mut p = here.to_vec();
            let mut k = 0;
            while raw.get(k).is_some_and(|s| s == "super") {
                p.pop();
                k += 1;
            }
            p.extend(raw[k..].iter().cloned());
            return p;
        }
        // The binary names the library by its crate name.
        "syncpay" => vec!["crate".to_owned()],
        // A child module of this one (`mod engine;` then `engine::Engine`).
        name if children.contains(name) => here.to_vec(),
        name => match imports.get(name) {
            Some(full) => {
                let mut p = full.clone();
                p.extend(raw[1..].iter().cloned());
                return p;
            }
            None => return raw.to_vec(),
        },
    };
    if first == "self" || children.contains(first.as_str()) {
        base.extend(raw[usize::from(first == "self")..].iter().cloned());
    } else {
        base.extend(raw[1..].iter().cloned());
    }
    base
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Files declared `#[cfg(test)] mod x;`: whole test modules.
fn test_files(src: &Path, files: &[PathBuf]) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    for file in files {
        let code = blank(&std::fs::read_to_string(file).expect("read"));
        let toks: Vec<Tok> = tokens(&code).into_iter().map(|(t, _)| t).collect();
        for w in toks.windows(10) {
            if let [Tok::Punct('#'), Tok::Punct('['), Tok::Ident(cfg), Tok::Punct('('), Tok::Ident(test), Tok::Punct(')'), Tok::Punct(']'), Tok::Ident(m), Tok::Ident(name), Tok::Punct(';')] =
                w
            {
                if cfg == "cfg" && test == "test" && m == "mod" {
                    let dir = match file.file_name().and_then(|n| n.to_str()) {
                        Some("mod.rs" | "lib.rs" | "main.rs") => file.parent().expect("dir").to_owned(),
                        _ => file.with_extension(""),
                    };
                    out.insert(dir.join(format!("{name}.rs")));
                    out.insert(dir.join(name).join("mod.rs"));
                }
            }
        }
    }
    let _ = src;
    out
}

fn violations_in(src: &Path) -> Vec<Violation> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let tests = test_files(src, &files);
    let mut out = Vec::new();
    for file in &files {
        if tests.contains(file) {
            continue;
        }
        let source = std::fs::read_to_string(file).expect("read");
        let module = Module { file: file.display().to_string(), path: module_of(src, file) };
        out.extend(violations_of(&module, &source));
    }
    out
}

fn violations_of(module: &Module, source: &str) -> Vec<Violation> {
    let mut out = BTreeSet::new();
    for (here, line, path) in resolved_paths(module, source) {
        for rule in check(&here, &path) {
            out.insert(Violation { file: module.file.clone(), line, rule, path: path.join("::") });
        }
    }
    out.into_iter().collect()
}

#[test]
fn the_source_tree_keeps_the_architectures_invariants() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let found = violations_in(&src);
    let listed: Vec<String> = found.iter().map(|v| format!("{}:{}: {} ({})", v.file, v.line, v.rule, v.path)).collect();
    assert!(found.is_empty(), "forbidden dependencies:\n{}", listed.join("\n"));
}

// ---------------------------------------------------------------------------
// The checker catches what it should (and not what it should not)
// ---------------------------------------------------------------------------

fn planted(module: &str, source: &str) -> Vec<&'static str> {
    let path: Vec<String> = module.split("::").map(str::to_owned).collect();
    let m = Module { file: format!("{module}.rs"), path };
    violations_of(&m, source).into_iter().map(|v| v.rule).collect()
}

#[test]
fn each_kind_of_violation_is_caught_however_it_is_written() {
    let cases: &[(&str, &str)] = &[
        ("crate::store::records", "use tonic::Status;"),
        ("crate::store::sled::writer", "use prost::Message as _;"),
        ("crate::store", "fn f() -> ::prost::bytes::Bytes { todo() }"),
        ("crate::store::records", "use crate::proto::Trade;"),
        ("crate::store::records", "use super::super::sync_server::metrics;"),
        ("crate::domain::trade", "use sled::Tree;"),
        ("crate::domain::trade", "fn f() { let t = std::time::SystemTime::now(); }"),
        ("crate::domain::trade", "use std::time::Instant; fn f() { Instant::now(); }"),
        ("crate::domain::trade", "use std::time::{Duration, SystemTime as Clock}; fn f() { Clock::now(); }"),
        ("crate::domain::money", "use tokio::sync::mpsc;"),
        ("crate::sync_server::engine", "fn f() { let _ = sled::Config::new(); }"),
        ("crate::carrier::relay", "use crate::sync_server::metrics;"),
        ("crate::carrier::relay", "use crate::sync_server::{convert::state_to_proto, self};"),
        ("crate::pki", "use crate::sync_server::tls::identity_uri;"),
        ("crate::sync_server::limits", "const D: usize = crate::carrier::relay::RELAY_QUEUE_DEPTH;"),
        ("crate::sync_server::auth", "use tonic::Status; fn f() -> Status { Status::unauthenticated(\"x\") }"),
        ("crate::sync_server::register_service", "fn f() { tonic::Status::new(tonic::Code::Ok, \"\"); }"),
        ("crate::carrier::relay", "use tonic as t; fn f() { t::Status::aborted(\"x\"); }"),
        ("crate::sync_server::register_service", "use crate::store::Store;"),
        ("crate::sync_server::engine::trades", "use tonic::Request;"),
        ("crate::domain", "mod inner { use crate::store::Store; }"),
        ("crate::web::console", "use crate::store::Store;"),
        ("crate::web::console", "fn f(s: &crate::store::Store) {}"),
        ("crate::sync_server::admin_service", "use crate::store::{Ledger as _, TradeRecord};"),
        ("bin::cli::admin", "use syncpay::store::sled::SledStore;"),
        ("bin::bench::rig", "fn f() { syncpay::store::Backend::verify(); }"),
        ("crate::sync_server::carrier_service", "use crate::store::sled::Durability;"),
    ];
    for (module, source) in cases {
        assert!(!planted(module, source).is_empty(), "not caught in {module}: {source}");
    }
}

#[test]
fn comments_strings_tests_and_allowed_places_are_not_violations() {
    let clean: &[(&str, &str)] = &[
        ("crate::store::records", "// use tonic::Status;\n/* sled::Tree /* nested */ tonic */ fn f() {}"),
        ("crate::store::records", "const S: &str = \"tonic::Status::new\"; const R: &str = r#\"use sled;\"#;"),
        ("crate::domain::trade", "fn f<'a>(x: &'a str) -> char { let c = '\"'; let d = '\\''; c }"),
        ("crate::domain::trade", "#[cfg(test)]\nmod tests { use std::time::Instant; fn f() { Instant::now(); } }"),
        ("crate::sync_server::error", "use tonic::Status; fn f() -> Status { Status::internal(\"x\") }"),
        ("crate::store::sled::writer", "use sled::Tree;"),
        ("crate::sync_server::engine", "use crate::store::Store;"),
        ("crate::sync_server::engine::trades", "use crate::store::{Store, Trades as _};"),
        ("crate::sync_server", "use crate::store::sled::SledStore; use crate::store::Store;"),
        ("crate::web::console", "use crate::store::{NetworkIdentity, TradeRecord};"),
        ("bin::cli::serve", "use syncpay::store::sled::Durability;"),
        ("bin::bench::ceiling", "fn f() -> tonic::Status { tonic::Status::unimplemented(\"x\") }"),
        (
            "crate::sync_server::auth",
            "use tonic::{Request, Status}; fn f(r: &Request<()>) -> Result<(), Status> { Ok(()) }",
        ),
        ("crate::domain::trade", "use std::time::Duration; fn f(d: Duration) -> u128 { d.as_millis() }"),
    ];
    for (module, source) in clean {
        assert_eq!(planted(module, source), Vec::<&str>::new(), "false alarm in {module}: {source}");
    }
    // The binary names the library `syncpay`; its own `crate` is itself.
    assert!(!planted("bin::cli::serve", "use syncpay::sync_server::tls; use sled::Db;").is_empty());
    assert_eq!(planted("bin::cli::bench", "use crate::store::Store;"), Vec::<&str>::new());
    // The benchmark is in the binary too.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    assert_eq!(module_of(&src, &src.join("bench/rig.rs")), ["bin", "bench", "rig"]);
    assert_eq!(module_of(&src, &src.join("web/console.rs")), ["crate", "web", "console"]);
    // A child module's paths are resolved through its `mod` declaration:
    // the store's `sled` folder is not the sled crate…
    assert_eq!(planted("crate::store", "mod sled; fn f() { sled::open(); }"), Vec::<&str>::new());
    // …but without such a module, `sled::` is the crate.
    assert!(!planted("crate::store", "mod disk; fn f() { sled::open(); }").is_empty());
}

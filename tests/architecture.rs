//! The modules of `posthog-track` and `posthog-derive` import each other in one direction only.
//!
//! Reads the sources (no compiler), builds the graph of which module uses which (`use` trees,
//! `crate::`, `super::`, `self::` and child-module paths in code, through the re-exports of
//! facades such as `flags/mod.rs` and `lib.rs`), and asserts it has no cycle. Nodes are the
//! top-level modules, and the submodules of `flags`, `client`, `relay`, `plan` and `testing`
//! (runtime) and of `internals` and `expand` (derive). A `pub use` is a re-export, not a use:
//! paths are followed through it to the module that defines the item.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One edge's evidence: where the use is and what it names.
#[derive(Debug, Clone)]
struct Evidence {
    file: String,
    line: usize,
    path: String,
}

type Module = Vec<String>;

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Punct(&'static str),
    Other(char),
}

/// Tokens with their line numbers; comments, strings and char literals are dropped.
fn tokenize(src: &str) -> Vec<(Tok, usize)> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let mut line = 1;
    let at = |i: usize| chars.get(i).copied().unwrap_or('\0');
    while i < chars.len() {
        let c = chars[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c == '/' && at(i + 1) == '/' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if chars[i] == '\n' {
                        line += 1;
                    }
                    i += 1;
                }
            }
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                if chars.get(i) == Some(&'\n') {
                    line += 1;
                }
                i += 1;
            }
            i += 1;
        } else if c == '\'' {
            if at(i + 1) == '\\' {
                i += 2;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if at(i + 2) == '\'' {
                i += 3;
            } else {
                // A lifetime or label.
                i += 1;
                while at(i).is_alphanumeric() || at(i) == '_' {
                    i += 1;
                }
            }
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while at(i).is_alphanumeric() || at(i) == '_' {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let raw_string = (word == "r" || word == "br") && (at(i) == '"' || at(i) == '#');
            if raw_string && (at(i) == '"' || chars[i..].iter().find(|&&c| c != '#') == Some(&'"'))
            {
                let mut hashes = 0;
                while at(i) == '#' {
                    hashes += 1;
                    i += 1;
                }
                i += 1; // the opening quote
                loop {
                    if i >= chars.len() {
                        break;
                    }
                    if chars[i] == '"' && (1..=hashes).all(|k| at(i + k) == '#') {
                        i += 1 + hashes;
                        break;
                    }
                    if chars[i] == '\n' {
                        line += 1;
                    }
                    i += 1;
                }
            } else if word == "r" && at(i) == '#' {
                // A raw identifier: `r#type`.
                i += 1;
                let start = i;
                while at(i).is_alphanumeric() || at(i) == '_' {
                    i += 1;
                }
                out.push((Tok::Ident(chars[start..i].iter().collect()), line));
            } else if word == "b" && at(i) == '\'' {
                i += 1;
                if at(i) == '\\' {
                    i += 1;
                }
                i += 2;
            } else if word == "b" && at(i) == '"' {
                // The byte string is skipped by the next turn of the loop.
            } else {
                out.push((Tok::Ident(word), line));
            }
        } else if c.is_ascii_digit() {
            while at(i).is_alphanumeric() || at(i) == '_' || at(i) == '.' && at(i + 1) != '.' {
                i += 1;
            }
        } else if c == ':' && at(i + 1) == ':' {
            out.push((Tok::Punct("::"), line));
            i += 2;
        } else {
            out.push((Tok::Other(c), line));
            i += 1;
        }
    }
    out
}

/// A source file of one crate, as a module.
struct SourceFile {
    module: Module,
    display: String,
    tokens: Vec<(Tok, usize)>,
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The crate's library modules (`src/bin/` holds other crates).
fn load_crate(src: &Path) -> Vec<SourceFile> {
    let mut paths = Vec::new();
    rust_files(src, &mut paths);
    paths
        .into_iter()
        .filter(|p| !p.strip_prefix(src).unwrap().starts_with("bin"))
        .map(|path| {
            let relative = path.strip_prefix(src).unwrap();
            let mut module: Module = relative
                .with_extension("")
                .iter()
                .map(|s| s.to_string_lossy().into_owned())
                .collect();
            if matches!(
                module.last().map(String::as_str),
                Some("mod") | Some("lib") | Some("main")
            ) {
                module.pop();
            }
            let text = std::fs::read_to_string(&path).unwrap();
            SourceFile {
                module,
                display: format!(
                    "{}/{}/{}",
                    src.parent().unwrap().file_name().unwrap().to_string_lossy(),
                    src.file_name().unwrap().to_string_lossy(),
                    relative.display()
                )
                .replace('\\', "/"),
                tokens: tokenize(&text),
            }
        })
        .collect()
}

/// One leaf of a `use` tree: its path segments (as written) and the name it binds.
#[derive(Debug)]
struct UseLeaf {
    segments: Vec<String>,
    name: Option<String>,
    line: usize,
}

/// Parses the `use` tree starting at `tokens[i]` (after the `use` keyword); returns its leaves
/// and the index after the closing `;`.
fn parse_use(tokens: &[(Tok, usize)], mut i: usize) -> (Vec<UseLeaf>, usize) {
    fn tree(
        tokens: &[(Tok, usize)],
        i: &mut usize,
        prefix: &mut Vec<String>,
        out: &mut Vec<UseLeaf>,
    ) {
        let depth = prefix.len();
        if tokens.get(*i).map(|t| &t.0) == Some(&Tok::Punct("::")) {
            prefix.push("::".to_owned());
            *i += 1;
        }
        loop {
            match tokens.get(*i).map(|t| t.0.clone()) {
                Some(Tok::Ident(name)) => {
                    let line = tokens[*i].1;
                    *i += 1;
                    if tokens.get(*i).map(|t| &t.0) == Some(&Tok::Punct("::")) {
                        prefix.push(name);
                        *i += 1;
                        continue;
                    }
                    let mut bound = name.clone();
                    if tokens.get(*i).map(|t| &t.0) == Some(&Tok::Ident("as".to_owned())) {
                        if let Some(Tok::Ident(alias)) = tokens.get(*i + 1).map(|t| t.0.clone()) {
                            bound = alias;
                        }
                        *i += 2;
                    }
                    let mut segments = prefix.clone();
                    if name == "self" {
                        bound = segments.last().cloned().unwrap_or_default();
                    } else {
                        segments.push(name);
                    }
                    out.push(UseLeaf {
                        segments,
                        name: Some(bound),
                        line,
                    });
                    break;
                }
                Some(Tok::Other('*')) => {
                    out.push(UseLeaf {
                        segments: prefix.clone(),
                        name: None,
                        line: tokens[*i].1,
                    });
                    *i += 1;
                    break;
                }
                Some(Tok::Other('{')) => {
                    *i += 1;
                    loop {
                        match tokens.get(*i).map(|t| &t.0) {
                            Some(Tok::Other('}')) => {
                                *i += 1;
                                break;
                            }
                            Some(Tok::Other(',')) => *i += 1,
                            None => break,
                            _ => tree(tokens, i, prefix, out),
                        }
                    }
                    break;
                }
                _ => break,
            }
        }
        prefix.truncate(depth);
    }
    let mut leaves = Vec::new();
    tree(tokens, &mut i, &mut Vec::new(), &mut leaves);
    while i < tokens.len() && tokens[i].0 != Tok::Other(';') {
        i += 1;
    }
    (leaves, i + 1)
}

/// `#[cfg(test)]` at `tokens[i]`: test code is not part of the module graph.
fn is_cfg_test(tokens: &[(Tok, usize)], i: usize) -> bool {
    let want = [
        Tok::Other('#'),
        Tok::Other('['),
        Tok::Ident("cfg".to_owned()),
        Tok::Other('('),
        Tok::Ident("test".to_owned()),
        Tok::Other(')'),
        Tok::Other(']'),
    ];
    tokens.len() >= i + want.len() && tokens[i..i + want.len()].iter().map(|t| &t.0).eq(&want)
}

/// The index after the item starting at `tokens[i]`: its `;`, or its balanced `{ .. }` block.
fn skip_item(tokens: &[(Tok, usize)], mut i: usize) -> usize {
    let mut depth = 0usize;
    while i < tokens.len() {
        match tokens[i].0 {
            Tok::Other('{') => depth += 1,
            Tok::Other('}') => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return i + 1;
                }
            }
            Tok::Other(';') if depth == 0 => return i + 1,
            _ => {}
        }
        i += 1;
    }
    i
}

/// Everything read from one crate's sources.
struct Crate {
    files: Vec<SourceFile>,
    modules: BTreeSet<Module>,
    /// `(module, name)` -> the absolute path a `pub use` in that module points to.
    reexports: BTreeMap<(Module, String), Vec<String>>,
}

/// A use site: the module it is written in, the path, and where.
struct UseSite {
    from: Module,
    path: Vec<String>,
    /// The name a `use` leaf binds (`None` for a glob or a path in code).
    bound: Option<String>,
    reexport: bool,
    evidence: Evidence,
}

/// Makes `segments`, written in module `here`, absolute; `None` for other crates.
fn absolute(modules: &BTreeSet<Module>, here: &[String], segments: &[String]) -> Option<Module> {
    let first = segments.first()?;
    let mut rest = &segments[1..];
    let mut base: Module = match first.as_str() {
        "crate" => Vec::new(),
        "self" => here.to_vec(),
        "super" => {
            let mut base = here.to_vec();
            base.pop();
            while rest.first().map(String::as_str) == Some("super") {
                base.pop();
                rest = &rest[1..];
            }
            base
        }
        name => {
            let mut child = here.to_vec();
            child.push(name.to_owned());
            if !modules.contains(&child) {
                return None;
            }
            child.pop();
            rest = segments;
            child
        }
    };
    base.extend(rest.iter().cloned());
    Some(base)
}

impl Crate {
    fn load(src: &Path) -> Crate {
        let files = load_crate(src);
        let modules: BTreeSet<Module> = files.iter().map(|f| f.module.clone()).collect();
        let mut krate = Crate {
            files,
            modules,
            reexports: BTreeMap::new(),
        };
        let mut reexports = BTreeMap::new();
        for site in krate.sites() {
            if let (true, Some(name)) = (site.reexport, site.bound) {
                reexports.insert((site.from, name), site.path);
            }
        }
        krate.reexports = reexports;
        krate
    }

    /// Every use site of every file, with absolute paths.
    fn sites(&self) -> Vec<UseSite> {
        let mut sites = Vec::new();
        for file in &self.files {
            let tokens = &file.tokens;
            // Inline modules (`mod tests { .. }`) open at a brace depth.
            let mut inline: Vec<(String, usize)> = Vec::new();
            let mut depth = 0usize;
            let mut i = 0;
            while i < tokens.len() {
                let here: Module = file
                    .module
                    .iter()
                    .cloned()
                    .chain(inline.iter().map(|(name, _)| name.clone()))
                    .collect();
                let ident = |k: usize| match tokens.get(k).map(|t| &t.0) {
                    Some(Tok::Ident(s)) => Some(s.as_str()),
                    _ => None,
                };
                if is_cfg_test(tokens, i) {
                    i = skip_item(tokens, i + 7);
                    continue;
                }
                match &tokens[i].0 {
                    Tok::Other('{') => {
                        depth += 1;
                        i += 1;
                    }
                    Tok::Other('}') => {
                        depth = depth.saturating_sub(1);
                        if inline.last().is_some_and(|(_, d)| *d == depth) {
                            inline.pop();
                        }
                        i += 1;
                    }
                    Tok::Ident(word) if word == "mod" => {
                        if let (Some(name), Some(Tok::Other('{'))) =
                            (ident(i + 1), tokens.get(i + 2).map(|t| &t.0))
                        {
                            inline.push((name.to_owned(), depth));
                        }
                        i += 2;
                    }
                    Tok::Ident(word) if word == "use" => {
                        let reexport = i >= 1
                            && (ident(i - 1) == Some("pub")
                                || (tokens[i - 1].0 == Tok::Other(')')
                                    && i >= 4
                                    && ident(i - 4) == Some("pub")));
                        let (leaves, next) = parse_use(tokens, i + 1);
                        for leaf in leaves {
                            let Some(path) = absolute(&self.modules, &here, &leaf.segments) else {
                                continue;
                            };
                            let written = leaf.segments.join("::");
                            sites.push(UseSite {
                                from: here.clone(),
                                path,
                                bound: leaf.name,
                                reexport,
                                evidence: Evidence {
                                    file: file.display.clone(),
                                    line: leaf.line,
                                    path: written,
                                },
                            });
                        }
                        i = next;
                    }
                    Tok::Ident(word)
                        if (i == 0 || tokens[i - 1].0 != Tok::Punct("::"))
                            && tokens.get(i + 1).map(|t| &t.0) == Some(&Tok::Punct("::")) =>
                    {
                        let mut segments = vec![word.clone()];
                        let line = tokens[i].1;
                        let mut k = i + 1;
                        while tokens.get(k).map(|t| &t.0) == Some(&Tok::Punct("::")) {
                            match tokens.get(k + 1).map(|t| &t.0) {
                                Some(Tok::Ident(s)) => segments.push(s.clone()),
                                _ => break,
                            }
                            k += 2;
                        }
                        if let Some(path) = absolute(&self.modules, &here, &segments) {
                            sites.push(UseSite {
                                from: here.clone(),
                                path,
                                bound: None,
                                reexport: false,
                                evidence: Evidence {
                                    file: file.display.clone(),
                                    line,
                                    path: segments.join("::"),
                                },
                            });
                        }
                        i = k;
                    }
                    _ => i += 1,
                }
            }
        }
        sites
    }

    /// The file module that defines what `path` names, following re-exports.
    fn resolve(&self, path: &[String], hops: usize) -> Module {
        let mut module = Vec::new();
        for (k, segment) in path.iter().enumerate() {
            let mut child = module.clone();
            child.push(segment.clone());
            if self.modules.contains(&child) {
                module = child;
                continue;
            }
            if hops < 16
                && let Some(target) = self.reexports.get(&(module.clone(), segment.clone()))
            {
                let mut target = target.clone();
                target.extend(path[k + 1..].iter().cloned());
                return self.resolve(&target, hops + 1);
            }
            break;
        }
        module
    }

    /// Edges between nodes, each with its evidence.
    fn graph(
        &self,
        node: impl Fn(&[String]) -> Option<String>,
    ) -> BTreeMap<(String, String), Vec<Evidence>> {
        let mut edges: BTreeMap<(String, String), Vec<Evidence>> = BTreeMap::new();
        for site in self.sites() {
            if site.reexport {
                continue;
            }
            let target = self.resolve(&site.path, 0);
            // Inline modules (tests) belong to their file's module.
            let from = self.resolve(&site.from, 0);
            let (Some(from), Some(to)) = (node(&from), node(&target)) else {
                continue;
            };
            if from != to {
                edges.entry((from, to)).or_default().push(site.evidence);
            }
        }
        edges
    }
}

/// The strongly connected components with more than one node (Tarjan).
fn cycles(edges: &BTreeMap<(String, String), Vec<Evidence>>) -> Vec<Vec<String>> {
    let nodes: BTreeSet<&String> = edges.keys().flat_map(|(a, b)| [a, b]).collect();
    let nodes: Vec<&String> = nodes.into_iter().collect();
    let index_of = |n: &String| nodes.iter().position(|m| *m == n).unwrap();
    let mut next: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    for (a, b) in edges.keys() {
        next[index_of(a)].push(index_of(b));
    }
    struct State {
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        counter: usize,
        components: Vec<Vec<usize>>,
    }
    fn visit(v: usize, next: &[Vec<usize>], s: &mut State) {
        s.index[v] = Some(s.counter);
        s.low[v] = s.counter;
        s.counter += 1;
        s.stack.push(v);
        s.on_stack[v] = true;
        for &w in &next[v] {
            match s.index[w] {
                None => {
                    visit(w, next, s);
                    s.low[v] = s.low[v].min(s.low[w]);
                }
                Some(iw) if s.on_stack[w] => s.low[v] = s.low[v].min(iw),
                Some(_) => {}
            }
        }
        if Some(s.low[v]) == s.index[v] {
            let mut component = Vec::new();
            loop {
                let w = s.stack.pop().unwrap();
                s.on_stack[w] = false;
                component.push(w);
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                s.components.push(component);
            }
        }
    }
    let mut state = State {
        index: vec![None; nodes.len()],
        low: vec![0; nodes.len()],
        on_stack: vec![false; nodes.len()],
        stack: Vec::new(),
        counter: 0,
        components: Vec::new(),
    };
    for v in 0..nodes.len() {
        if state.index[v].is_none() {
            visit(v, &next, &mut state);
        }
    }
    state
        .components
        .into_iter()
        .map(|c| {
            let mut names: Vec<String> = c.into_iter().map(|i| nodes[i].clone()).collect();
            names.sort();
            names
        })
        .collect()
}

/// A readable report of each cycle: its edges and the lines that make them.
fn report(edges: &BTreeMap<(String, String), Vec<Evidence>>, cycles: &[Vec<String>]) -> String {
    let mut out = String::new();
    for component in cycles {
        out.push_str(&format!("cycle among {}:\n", component.join(", ")));
        for ((a, b), evidence) in edges {
            if component.contains(a) && component.contains(b) {
                out.push_str(&format!("  {a} -> {b}\n"));
                for e in evidence.iter().take(3) {
                    out.push_str(&format!("      {}:{}  {}\n", e.file, e.line, e.path));
                }
            }
        }
    }
    out
}

fn node_at(module: &[String], split: &[&str]) -> Option<String> {
    let first = module.first()?;
    if split.contains(&first.as_str()) && module.len() >= 2 {
        Some(format!("{first}::{}", module[1]))
    } else {
        Some(first.clone())
    }
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn assert_acyclic(edges: &BTreeMap<(String, String), Vec<Evidence>>, what: &str) {
    assert!(
        !edges.is_empty(),
        "{what}: no imports found; is the scan broken?"
    );
    let found = cycles(edges);
    assert!(
        found.is_empty(),
        "{what} has import cycles:\n{}",
        report(edges, &found)
    );
}

/// Edges that close a cycle today and are being removed elsewhere: each with why. The test
/// fails when one of them is gone, so that this list only shrinks.
const PENDING: &[(&str, &str, &str)] = &[];

#[test]
fn the_runtime_modules_form_no_cycle() {
    let krate = Crate::load(&workspace().join("posthog-track/src"));
    let mut edges = krate.graph(|m| node_at(m, &["flags", "client", "relay", "plan", "testing"]));
    for (from, to, why) in PENDING {
        let key = ((*from).to_owned(), (*to).to_owned());
        assert!(
            edges.remove(&key).is_some(),
            "{from} -> {to} is gone: remove it from PENDING in tests/architecture.rs ({why})"
        );
    }
    // The scan sees what it must: the tracker's shared state holds the flags' caches.
    assert!(
        edges
            .keys()
            .any(|(a, b)| a == "shared" && b.starts_with("flags::")),
        "{edges:#?}"
    );
    assert_acyclic(&edges, "posthog-track");
}

#[test]
fn the_derive_modules_form_no_cycle_and_internals_never_import_expand() {
    let krate = Crate::load(&workspace().join("posthog-derive/src"));
    let edges = krate.graph(|m| node_at(m, &["internals", "expand"]));
    assert!(
        edges
            .keys()
            .any(|(a, b)| a.starts_with("expand") && b.starts_with("internals::")),
        "{edges:#?}"
    );
    let upward: Vec<String> = edges
        .iter()
        .filter(|((a, b), _)| a.starts_with("internals") && b.starts_with("expand"))
        .flat_map(|((a, b), evidence)| {
            evidence
                .iter()
                .map(move |e| format!("{a} -> {b}: {}:{}  {}", e.file, e.line, e.path))
        })
        .collect();
    assert!(
        upward.is_empty(),
        "internals must not import expand:\n{}",
        upward.join("\n")
    );
    assert_acyclic(&edges, "posthog-derive");
}

/// The scanner finds a cycle when there is one, through a facade's re-export and `super::`.
#[test]
fn a_cycle_is_found_and_printed() {
    let dir = std::env::temp_dir().join(format!("architecture-{}", std::process::id()));
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("flags")).unwrap();
    std::fs::write(src.join("lib.rs"), "mod flags;\nmod tracker;\n").unwrap();
    std::fs::write(
        src.join("flags/mod.rs"),
        "mod value;\nmod api;\npub use value::FlagValue;\n",
    )
    .unwrap();
    std::fs::write(
        src.join("flags/value.rs"),
        "// use crate::tracker::Tracker;\nconst S: &str = \"crate::tracker::X\";\n\
         pub fn f() { let _ = super::api::g(); }\n\
         #[cfg(test)]\nmod tests { use crate::tracker::h; }\n",
    )
    .unwrap();
    std::fs::write(
        src.join("flags/api.rs"),
        "use crate::flags::FlagValue;\npub fn g() { crate::tracker::h() }\n",
    )
    .unwrap();
    std::fs::write(src.join("tracker.rs"), "pub fn h() {}\n").unwrap();
    let krate = Crate::load(&src);
    let edges = krate.graph(|m| node_at(m, &["flags"]));
    std::fs::remove_dir_all(&dir).ok();
    let pairs: BTreeSet<(String, String)> = edges.keys().cloned().collect();
    let expected: BTreeSet<(String, String)> = [
        ("flags::api", "flags::value"),
        ("flags::api", "tracker"),
        ("flags::value", "flags::api"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_owned(), b.to_owned()))
    .collect();
    assert_eq!(
        pairs, expected,
        "comments, strings and #[cfg(test)] code are no imports"
    );
    let found = cycles(&edges);
    assert_eq!(
        found,
        [vec!["flags::api".to_owned(), "flags::value".to_owned()]]
    );
    let text = report(&edges, &found);
    assert!(text.contains("flags/value.rs:3  super::api::g"), "{text}");
}

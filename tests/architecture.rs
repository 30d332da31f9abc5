//! Rules of the architecture (DESIGN §4), checked by reading the source.

use std::path::{Path, PathBuf};

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

fn all_sources() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    sources(&root.join("src"), &mut files);
    files
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            (rel, std::fs::read_to_string(&p).unwrap())
        })
        .collect()
}

/// The code of a file without its `#[cfg(test)]` module (tests may use the real world).
fn code(text: &str) -> &str {
    text.split("#[cfg(test)]").next().unwrap()
}

#[test]
fn pure_modules_do_no_io_and_read_no_clock_or_environment() {
    const PURE: &[&str] = &[
        "src/inventory/",
        "src/shell.rs",
        "src/plan/facts.rs",
        "src/plan/mod.rs",
        "src/transport/known_hosts.rs",
        "src/output/table.rs",
    ];
    const FORBIDDEN: &[&str] = &[
        "tokio",
        "russh",
        "indicatif",
        "std::env",
        "std::fs",
        "std::net",
        "std::process",
        "SystemTime",
        "Instant",
        "File::",
        "println!",
        "eprintln!",
    ];
    for (file, text) in all_sources() {
        // An entry ending in `/` is a whole module directory.
        let pure = PURE
            .iter()
            .any(|p| file == *p || (p.ends_with('/') && file.starts_with(p)));
        if !pure {
            continue;
        }
        for word in FORBIDDEN {
            assert!(
                !code(&text).contains(word),
                "{file} is pure but uses `{word}`"
            );
        }
    }
}

#[test]
fn russh_is_named_only_in_the_ssh_transport() {
    for (file, text) in all_sources() {
        if file != "src/transport/ssh.rs" {
            assert!(!text.contains("russh"), "{file} names russh");
        }
    }
}

#[test]
fn only_the_output_module_prints() {
    for (file, text) in all_sources() {
        if file.starts_with("src/output/") {
            continue;
        }
        for word in ["println!", "print!(", "eprint!(", "dbg!("] {
            assert!(!code(&text).contains(word), "{file} prints with `{word}`");
        }
    }
}

#[test]
fn no_shell_line_is_built_with_format() {
    // Commands are `Cmd` values; a `format!` next to `sh -c` would be string-built shell.
    for (file, text) in all_sources() {
        for (i, line) in code(&text).lines().enumerate() {
            let Some(start) = line.find("format!(\"") else {
                continue;
            };
            let literal = &line[start + 9..];
            let literal = &literal[..literal.find('"').unwrap_or(literal.len())];
            let suspicious = ["&&", " | ", "sh -c", "2>&1", "; then"]
                .iter()
                .any(|op| literal.contains(op));
            assert!(
                !suspicious,
                "{file}:{}: shell built with format!: {line}",
                i + 1
            );
        }
    }
}

#[test]
fn the_top_of_src_is_a_map_not_a_heap() {
    // The layout shows the architecture: modules live in their directories, and only the
    // crate roots and a few cross-cutting files sit at the top.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(
        files.len() <= 12,
        "{} files at the top of src/: {files:?}",
        files.len()
    );
}

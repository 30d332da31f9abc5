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
    let files: Vec<(PathBuf, String)> = files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p, text)
        })
        .collect();
    let tests_only = test_modules(&files);
    files
        .into_iter()
        .map(|(p, text)| {
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            // A file that is a `#[cfg(test)] mod x;` is test code, all of it.
            let text = if tests_only.contains(&p) {
                format!("#[cfg(test)]\n{text}")
            } else {
                text
            };
            (rel, text)
        })
        .collect()
}

/// The files that are modules declared under `#[cfg(test)]` (`#[cfg(test)] mod fake;`).
fn test_modules(files: &[(PathBuf, String)]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for (path, text) in files {
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        for pair in lines.windows(2) {
            if pair[0] != "#[cfg(test)]" {
                continue;
            }
            let decl = pair[1]
                .trim_start_matches("pub(crate) ")
                .trim_start_matches("pub ");
            let Some(name) = decl.strip_prefix("mod ").and_then(|d| d.strip_suffix(';')) else {
                continue;
            };
            let dir = if path
                .file_name()
                .is_some_and(|f| f == "mod.rs" || f == "lib.rs")
            {
                path.parent().unwrap().to_path_buf()
            } else {
                path.with_extension("")
            };
            out.push(dir.join(format!("{name}.rs")));
        }
    }
    out
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
        "src/plan/",
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
fn only_the_transports_and_the_env_file_writer_read_a_secret() {
    // Every other module asks `deploy::envfile` about a secret (same content, key diff,
    // `PG*` variables, the redactor) instead of holding its value.
    for (file, text) in all_sources() {
        let allowed = file == "src/shell.rs"
            || file.starts_with("src/transport/")
            || file == "src/deploy/envfile.rs";
        assert!(
            allowed || !code(&text).contains(".expose()"),
            "{file} reads a secret's value with `.expose()`"
        );
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

#[test]
fn renderers_and_reports_import_no_command_module() {
    // Reports are data beside the events: commands build them and import `output`, so
    // `output` importing a command module back would be a cycle.
    const FORBIDDEN: &[&str] = &[
        "crate::ops",
        "crate::commands",
        "crate::cli",
        "crate::deploy",
    ];
    for (file, text) in all_sources() {
        if !file.starts_with("src/output/") {
            continue;
        }
        for (i, line) in text.lines().enumerate() {
            for word in FORBIDDEN {
                assert!(
                    !line.contains(word),
                    "{file}:{}: names `{word}`: {line}",
                    i + 1
                );
            }
        }
    }
}

#[test]
fn one_clock() {
    // The time of day is read in one place; everything else is handed it.
    for (file, text) in all_sources() {
        if file == "src/clock.rs" {
            continue;
        }
        for word in ["SystemTime::now", "UNIX_EPOCH"] {
            assert!(
                !code(&text).contains(word),
                "{file} reads the clock with `{word}`"
            );
        }
    }
}

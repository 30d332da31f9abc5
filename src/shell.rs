//! Remote commands as values.
//!
//! A [`Cmd`] is a POSIX `sh` command line built from parts: values enter only through
//! [`Cmd::arg`] and are quoted when rendered, shell syntax enters only as `&'static str`
//! literals written in this crate's source. So no value read from an inventory, a release
//! id or a path can ever change the shape of a command. [`Secret`] holds a value that must
//! never be printed; it has no way into a `Cmd` at all and travels on stdin instead.
//!
//! Pure: no I/O, no clock, no environment.

use std::fmt;

/// One piece of a command line.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    /// Shell syntax written in this crate (`&&`, `|`, `2>/dev/null`, a program name).
    Raw(&'static str),
    /// A value: always rendered quoted when it holds anything the shell would interpret.
    Arg(String),
    /// A nested command, rendered in place (used to join commands with operators).
    Nested(Cmd),
    /// `NAME=value`: a shell variable set from a value, quoted like an argument.
    Assign(&'static str, String),
}

/// A shell command line, quoted by construction.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Cmd {
    parts: Vec<Part>,
}

impl Cmd {
    /// A command starting with a program name or shell keyword written in source.
    pub fn new(program: &'static str) -> Cmd {
        Cmd {
            parts: vec![Part::Raw(program)],
        }
    }

    /// `name=value`, with `value` quoted: how a value reaches a static script.
    pub fn assign(name: &'static str, value: impl AsRef<str>) -> Cmd {
        Cmd {
            parts: vec![Part::Assign(name, value.as_ref().to_owned())],
        }
    }

    /// Runs `script`, shell text the user wrote (an inventory `command`, `shipit exec`
    /// words), in its own `sh`: the text is one quoted argument, so it cannot change the
    /// command around it.
    pub fn user_script(script: impl AsRef<str>) -> Cmd {
        Cmd::new("sh").arg("-c").arg(script)
    }

    /// Appends one value as exactly one shell word.
    pub fn arg(mut self, value: impl AsRef<str>) -> Cmd {
        self.parts.push(Part::Arg(value.as_ref().to_owned()));
        self
    }

    /// Appends each value as one shell word.
    pub fn args<I, S>(mut self, values: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        for value in values {
            self = self.arg(value);
        }
        self
    }

    /// Appends shell syntax (an operator, a redirection, a keyword) written in source.
    pub fn raw(mut self, syntax: &'static str) -> Cmd {
        self.parts.push(Part::Raw(syntax));
        self
    }

    /// Appends another command in place, e.g. after `!` or inside `if … then`.
    pub fn cmd(mut self, other: Cmd) -> Cmd {
        self.parts.push(Part::Nested(other));
        self
    }

    /// `self && next`
    pub fn and(self, next: Cmd) -> Cmd {
        self.raw("&&").cmd(next)
    }

    /// `self || next`
    pub fn or(self, next: Cmd) -> Cmd {
        self.raw("||").cmd(next)
    }

    /// `self | next`
    pub fn pipe(self, next: Cmd) -> Cmd {
        self.raw("|").cmd(next)
    }

    /// `( cmd )`: `cmd` in a subshell, so its `exit` ends only itself.
    pub fn subshell(cmd: Cmd) -> Cmd {
        Cmd::new("(").cmd(cmd).raw(")")
    }

    /// Commands run one after another (`a; b; c`), whatever each one's status.
    pub fn seq(cmds: impl IntoIterator<Item = Cmd>) -> Cmd {
        let mut out = Cmd::default();
        for (i, cmd) in cmds.into_iter().enumerate() {
            if i > 0 {
                out.parts.push(Part::Raw(";"));
            }
            out.parts.push(Part::Nested(cmd));
        }
        out
    }

    /// The command as one `sh` line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.render_into(&mut out);
        out
    }

    fn render_into(&self, out: &mut String) {
        for part in &self.parts {
            match part {
                // `;` hugs the word before it, as people write it.
                Part::Raw(";") => out.push(';'),
                Part::Raw(syntax) => push_word(out, syntax),
                Part::Arg(value) => push_word(out, &quote(value)),
                Part::Assign(name, value) => {
                    push_word(out, name);
                    out.push('=');
                    out.push_str(&quote(value));
                }
                Part::Nested(cmd) => {
                    if !out.is_empty() && !out.ends_with(' ') {
                        out.push(' ');
                    }
                    cmd.render_into(out);
                }
            }
        }
    }
}

fn push_word(out: &mut String, word: &str) {
    if !out.is_empty() && !out.ends_with(' ') {
        out.push(' ');
    }
    out.push_str(word);
}

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render())
    }
}

/// Quotes `value` as one POSIX shell word that expands to exactly `value`.
///
/// Words made only of characters no shell treats specially stay bare, so rendered commands
/// read naturally; anything else is wrapped in single quotes, inside which nothing is special
/// except the single quote itself, written as `'\''`.
pub fn quote(value: &str) -> String {
    let bare = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-./:,+@%".contains(&b))
        // `=` in the first word is an assignment, `-` leading is fine for sh itself.
        && !value.starts_with('=');
    if bare {
        return value.to_owned();
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for ch in value.chars() {
        if ch == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(ch);
        }
    }
    out.push('\'');
    out
}

/// A value that must never be shown: Debug and Display print `[REDACTED]`.
///
/// The only way to the bytes is `Secret::expose`, visible in this crate only and called
/// only by the transports, which put the value on a stdin stream or into a key parser, and
/// by the env-file writer (`deploy::envfile`), which answers every other question about a
/// secret (an architecture test keeps it so).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value itself: only for the transports and `deploy::envfile`.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NASTY: &[&str] = &[
        "plain",
        "with space",
        "it's",
        "say \"hi\"",
        "$(touch /tmp/shipit-pwned)",
        "`id`",
        "a; rm -rf /",
        "line1\nline2",
        "tab\there",
        "ünïcødé ✓ 日本",
        "",
        "-rf",
        "--option=value",
        "$HOME",
        "${PATH}",
        "*",
        "~",
        "a\\b",
        "'",
        "''",
        "\\'",
        "=x",
        "#comment",
        "!bang",
        "a|b&c>d<e",
        "(sub)",
        "{a,b}",
    ];

    #[test]
    fn every_nasty_value_arrives_as_one_unchanged_argument_in_real_sh() {
        // printf prints each argument NUL-terminated, so the split is exact.
        let cmd = Cmd::new("printf").arg("%s\\0").args(NASTY);
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(cmd.render())
            .output()
            .expect("run /bin/sh");
        assert!(out.status.success(), "sh failed: {:?}", out);
        let got: Vec<&str> = std::str::from_utf8(&out.stdout)
            .unwrap()
            .split_terminator('\0')
            .collect();
        assert_eq!(got, NASTY);
        assert!(!std::path::Path::new("/tmp/shipit-pwned").exists());
    }

    #[test]
    fn plain_words_stay_bare_and_others_are_quoted() {
        let cmd = Cmd::new("mkdir")
            .arg("-p")
            .arg("/opt/app/releases")
            .and(Cmd::new("echo").arg("it's done"));
        insta::assert_snapshot!(cmd.render(), @r"mkdir -p /opt/app/releases && echo 'it'\''s done'");
    }

    #[test]
    fn seq_and_pipe_render_like_people_write_them() {
        let cmd = Cmd::seq([
            Cmd::new("cd").arg("/opt/my app"),
            Cmd::new("tar")
                .arg("-cf")
                .arg("-")
                .arg(".")
                .pipe(Cmd::new("wc").arg("-c")),
        ]);
        insta::assert_snapshot!(cmd.render(), @"cd '/opt/my app'; tar -cf - . | wc -c");
    }

    #[test]
    fn assignment_and_user_script_quote_their_values() {
        let cmd = Cmd::seq([
            Cmd::assign("target", "/opt/my app"),
            Cmd::user_script("echo \"$target\" | tr a-z A-Z"),
        ]);
        insta::assert_snapshot!(cmd.render(), @r#"target='/opt/my app'; sh -c 'echo "$target" | tr a-z A-Z'"#);
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(
                Cmd::seq([
                    Cmd::assign("v", "a'b $x"),
                    Cmd::new("printf").arg("%s").raw("\"$v\""),
                ])
                .render(),
            )
            .output()
            .unwrap();
        assert_eq!(out.stdout, b"a'b $x");
    }

    #[test]
    fn empty_string_is_an_argument() {
        assert_eq!(quote(""), "''");
    }

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s}"), "[REDACTED]");
        assert_eq!(format!("{s:?}"), "[REDACTED]");
        assert_eq!(format!("{:?}", Some(s.clone())), "Some([REDACTED])");
        assert_eq!(s.expose(), "hunter2");
    }
}

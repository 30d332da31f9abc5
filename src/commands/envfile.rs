//! The env file on the host. The next one is staged with [`files::write`](super::files::write)
//! (content on stdin, never a command line; the temp file created empty, chmod 0600 and
//! chowned to the app user *before* any content is written), then [`activate`] renames it
//! over the live one at the switch, so no reader ever sees a partial file or loose
//! permissions.

use crate::shell::Cmd;

/// Prints the current env file (to diff keys in memory); nothing when there is none.
pub fn read(path: &str) -> Cmd {
    Cmd::seq([
        Cmd::assign("path", path),
        Cmd::new(r#"[ -f "$path" ] || exit 0; cat -- "$path""#),
    ])
}

/// Where a deploy stages the next env file (0600, owner set) until the switch.
pub fn next_path(path: &str) -> String {
    format!("{path}.shipit-next")
}

/// At the switch: keeps a copy of the live env file for rollback and renames the staged one
/// over it (atomic). Exit 0 also when nothing was staged (the content did not change).
pub fn activate(deploy_to: &str, path: &str) -> Cmd {
    Cmd::seq([
        Cmd::assign("base", deploy_to),
        Cmd::assign("path", path),
        Cmd::assign("next", next_path(path)),
        Cmd::new(
            r#"
umask 077
prev="$base/.shipit/previous/env"
mkdir -p -- "$prev" && rm -f -- "$prev/env" "$prev/absent" || exit 1
[ -f "$next" ] || exit 0
if [ -f "$path" ]; then cp -p -- "$path" "$prev/env" || exit 1; else : > "$prev/absent"; fi
mv -f -- "$next" "$path""#,
        ),
    ])
}

/// Puts back the env file [`activate`] replaced.
pub fn restore(deploy_to: &str, path: &str) -> Cmd {
    Cmd::seq([
        Cmd::assign("base", deploy_to),
        Cmd::assign("path", path),
        Cmd::new(
            r#"
prev="$base/.shipit/previous/env"
if [ -f "$prev/env" ]; then cp -p -- "$prev/env" "$path.shipit-tmp" && mv -f -- "$path.shipit-tmp" "$path"
elif [ -f "$prev/absent" ]; then rm -f -- "$path"; fi"#,
        ),
    ])
}

//! Release directories under `<deploy_to>`: receive an upload into `releases/<id>.partial`,
//! reuse an identical release, finish (REVISION, shared links, rename into place), switch
//! `current`, prune.
//!
//! A release directory is complete or absent: everything happens in `<id>.partial`, and the
//! rename to `<id>` is the commit. `current` is switched by renaming a new symlink over it,
//! so there is never a moment without `current`.

use crate::shell::Cmd;

/// Picks the host's sha256 tool into `$hash`: `openssl dgst` where the host has it (several
/// times faster than coreutils' `sha256sum` on CPUs with SHA instructions), else
/// `sha256sum`. Both print the hex digest first. `sum_of FILE` prints a file's digest;
/// `gnu_find` succeeds where `find` has `-printf` (what manifests and stat records need).
pub(crate) const HOST_TOOLS: &str = r#"
if command -v openssl >/dev/null 2>&1; then hash="openssl dgst -sha256 -r"; else hash=sha256sum; fi
sum_of() { set -- $($hash < "$1") && printf '%s\n' "$1"; }
gnu_find() { find / -maxdepth 0 -printf '' >/dev/null 2>&1; }"#;

/// Checks of the names and paths a host script deletes or replaces, so that no value (a
/// release id, a shared path, a line of a listing) can reach outside the directory the
/// script works in:
///
/// - `plain_name NAME`: a release id or `<id>.partial` as shipit makes them: letters,
///   digits, `.`, `_`, `-`, not starting with a dot (so never `.`, `..` or a path);
/// - `rel_path PATH`: relative, without empty, `.` or `..` components;
/// - `real_dirs ROOT PATH`: every parent of `ROOT/PATH` below ROOT is a directory, not a
///   symlink (an artifact's symlink `public -> /var/www` must not make `public/uploads`
///   mean `/var/www/uploads`).
///
/// A script that finds a bad value exits [`PATH_OUTSIDE`](super::exit::PATH_OUTSIDE).
pub(crate) const PATHS: &str = r#"
plain_name() { case $1 in ''|.*|*[!A-Za-z0-9._-]*) return 1 ;; esac; }
rel_path() { case /$1/ in *//*|*/./*|*/../*) return 1 ;; esac; }
real_dirs() {
  rd_dir=$1 rd_rest=$2
  while case $rd_rest in */*) true ;; *) false ;; esac; do
    rd_dir="$rd_dir/${rd_rest%%/*}" rd_rest=${rd_rest#*/}
    if [ -L "$rd_dir" ] || { [ -e "$rd_dir" ] && [ ! -d "$rd_dir" ]; }; then return 1; fi
  done
}"#;

/// `decompress() { <cmd>; }`: the scripts below run the codec's command by this name, so it
/// stays a command of quoted words rather than a string expanded unquoted.
fn decompressor(cmd: Cmd) -> Cmd {
    Cmd::new("decompress()").raw("{").cmd(cmd).raw(";").raw("}")
}

/// Receives the upload on stdin: the release's manifest (`manifest_len` bytes, compressed;
/// none when 0), then the compressed artifact. Writes the manifest to
/// `releases/<id>.partial/.shipit/manifest`, extracts the artifact into the partial
/// directory with `decompress` (`gzip -dc`, `zstd -dc`: `Codec::decompress_cmd`) under umask 022 without keeping the
/// archive's permission bits (what the manifest's modes describe), and checks the sha256 of
/// all the bytes received (fewer bytes to hash than the tar; the decompressor's own checks
/// cover the rest), in one pass. Exit [`SHA_MISMATCH`](super::exit::SHA_MISMATCH) when the
/// bytes are not the upload; the partial directory is removed on any failure. Falls through
/// on success, so [`finish`] can follow in the same script. With an empty `upload_sha256`
/// the digest is kept in `.shipit/upload-<id>.sum` for [`verify_received`] instead.
pub fn receive(
    deploy_to: &str,
    id: &str,
    upload_sha256: &str,
    decompress: Cmd,
    manifest_len: u64,
) -> Cmd {
    Cmd::seq([
        Cmd::assign("base", deploy_to),
        Cmd::assign("id", id),
        Cmd::assign("sha", upload_sha256),
        decompressor(decompress),
        Cmd::assign("mlen", manifest_len.to_string()),
        Cmd::new(HOST_TOOLS),
        Cmd::new(PATHS),
        Cmd::new(LISTING),
        Cmd::new(
            r#"
umask 022
plain_name "$id" || exit 101
# (`[ -d ]`/`[ -e ]` first: no process to start for what is already as wanted.)
{ [ -d "$base" ] || mkdir -p -- "$base"; } && cd -- "$base" || exit 1
[ -d releases ] && [ -d shared ] && [ -d .shipit ] || mkdir -p releases shared .shipit || exit 1
there() { [ -e "$1" ] || [ -L "$1" ]; }
part="releases/$id.partial"
{ ! there "$part" || rm -rf -- "$part"; } && mkdir -- "$part" || exit 1
fifo=".shipit/upload-$id.fifo"
sum=".shipit/upload-$id.sum"
{ ! there "$fifo" && ! there "$sum" || rm -f -- "$fifo" "$sum"; } && mkfifo -- "$fifo" || exit 1
$hash < "$fifo" > "$sum" &
hasher=$!
tee -- "$fifo" | {
  if [ "$mlen" -gt 0 ]; then
    mkdir -- "$part/.shipit" && head -c "$mlen" | decompress > "$part/.shipit/manifest" || exit 1
  fi
  decompress | tar -xf - -C "$part" --no-same-owner --no-same-permissions
}
status=$?
wait "$hasher"
rm -f -- "$fifo"
if [ -n "$sha" ]; then
  read -r got rest < "$sum"
  rm -f -- "$sum"
  if [ "$got" != "$sha" ]; then rm -rf -- "$part"; exit 81; fi
fi
if [ "$status" != 0 ]; then rm -rf -- "$part" "$sum"; exit "$status"; fi
if [ "$mlen" -gt 0 ] && gnu_find; then
  (cd -- "$part" && stat_list > .shipit/stat) || rm -f -- "$part/.shipit/stat"
fi
:"#,
        ),
    ])
}

/// After [`receive`] with no sha256 (a stream sent while it was still being compressed,
/// whose digest was known only at its end): compares the digest the host took with
/// `upload_sha256`, and removes the partial release on a mismatch
/// ([`SHA_MISMATCH`](super::exit::SHA_MISMATCH)).
pub fn verify_received(deploy_to: &str, id: &str, upload_sha256: &str) -> Cmd {
    Cmd::seq([
        Cmd::assign("base", deploy_to),
        Cmd::assign("id", id),
        Cmd::assign("sha", upload_sha256),
        Cmd::new(PATHS),
        Cmd::new(
            r#"
plain_name "$id" || exit 101
cd -- "$base" || exit 1
part="releases/$id.partial"
sum=".shipit/upload-$id.sum"
got=
[ -f "$sum" ] && read -r got rest < "$sum"
rm -f -- "$sum"
if [ -z "$sha" ] || [ "$got" != "$sha" ]; then rm -rf -- "$part"; exit 81; fi
:"#,
        ),
    ])
}

/// `walk FORMAT [TEST...]` prints `find -printf FORMAT` for every path below the current
/// directory but `.shipit` (those passing the TESTs), and fails when any name or symlink
/// target has a control character or a backslash: what a manifest cannot carry (see
/// [`crate::artifact::manifest`]), and what would split or forge a line of the lists below (a
/// directory named `b` + newline + `/tmp` would read as a line `/tmp`). The check is made in
/// the same pass as the listing, so nothing can slip in between. Such a tree is not
/// listed: a delta or a copy from it fails, and the whole artifact is sent.
///
/// `listing PREFIX [TRUSTED]` writes the manifest text of the tree in the current directory
/// to stdout, in the format of [`crate::artifact::manifest`] (`.shipit` left out), with GNU `find`,
/// `$hash` and awk, and the tree's stat list (see `stat_list`) to `PREFIX.stat`. PREFIX
/// names its scratch files. TRUSTED (`path<TAB>sha256` lines) gives the digests of files
/// known unchanged, which are not read again.
///
/// `stat_list` lists the regular files with inode, size, mtime and ctime: a release's
/// `.shipit/stat`, written when it is made, tells later which of its files are still as
/// they were. Any write, truncation, rename over or `touch` of a file changes its ctime,
/// which nobody can set back; so does a hard link made or removed, which is why shipit
/// refreshes the record after it links or prunes (`refresh_stat DIR`: the ctime of files
/// whose inode, size and mtime are as recorded; others leave the record).
const LISTING: &str = r#"
walk_tmp=
walk() {
  walk_fmt=$1
  shift
  # `$walk_tmp`: a scratch file in a directory of the script's own, else one made here.
  if [ -n "${walk_tmp:-}" ]; then walk_bad=$walk_tmp; else walk_bad=$(mktemp) || return 1; fi
  LC_ALL=C find . -mindepth 1 \( -path ./.shipit -prune \
    -o \( -name '*[[:cntrl:]]*' -o -name '*\\*' -o -lname '*[[:cntrl:]]*' -o -lname '*\\*' \) -fprint "$walk_bad" \
    -o "$@" -printf "$walk_fmt" \)
  walk_status=$?
  [ "$walk_status" = 0 ] && [ ! -s "$walk_bad" ]
  walk_status=$?
  [ -n "${walk_tmp:-}" ] || rm -f -- "$walk_bad"
  return "$walk_status"
}
listing() {
  walk '%P\t%y\t%m\t%s\t%l\t%i\t%T@\t%C@\n' > "$1.meta" || return 1
  awk -F '\t' 'FILENAME == ARGV[1] { t[$1] = 1; next } $2 == "f" && !($1 in t) { print "./" $1 }' \
    "${2:-/dev/null}" "$1.meta" > "$1.todo" || return 1
  # Nothing to read (every file trusted): no processes to start for it.
  if [ -s "$1.todo" ]; then
    tr '\n' '\000' < "$1.todo" | xargs -0 -r $hash > "$1.sums" || return 1
  else
    : > "$1.sums"
  fi
  awk -F '\t' -v OFS='\t' -v stat="$1.stat" '
    FILENAME == ARGV[1] { sum[$1] = $2; next }
    FILENAME == ARGV[2] { p = substr($0, 67); sub(/^\.\//, "", p); sum[p] = substr($0, 1, 64); next }
    $2 == "f" { print $1, "f", $3, $4, sum[$1]; print $1, $6, $4, $7, $8 > stat; next }
    $2 == "l" { print $1, "l", $3, "-", $5; next }
    { print $1, $2, $3, "-", "-" }' "${2:-/dev/null}" "$1.sums" "$1.meta" | LC_ALL=C sort
}
stat_list() {
  walk '%P\t%i\t%s\t%T@\t%C@\n' -type f
}
refresh_stat() {
  [ -f "$1/.shipit/stat" ] && gnu_find || return 0
  (cd -- "$1" && stat_list) > "$1/.shipit/stat.now" &&
  awk -F '\t' 'FILENAME == ARGV[1] { rec[$1 "\t" $2 "\t" $3 "\t" $4] = 1; next }
    (($1 "\t" $2 "\t" $3 "\t" $4) in rec)' "$1/.shipit/stat" "$1/.shipit/stat.now" > "$1/.shipit/stat.new" &&
  mv -f -- "$1/.shipit/stat.new" "$1/.shipit/stat"
  status=$?
  rm -f -- "$1/.shipit/stat.now" "$1/.shipit/stat.new"
  return "$status"
}"#;

/// `clone_release EDITS`, run in `$base` with `$old` (the source release, relative),
/// `$part`, `$tmp` (scratch, holding `manifest`: the source's manifest, already checked)
/// and `$svc` (the service user) set: makes `$part` a copy of `$old` holding only what the
/// manifest lists, less the `rm` paths of EDITS (a delta's edit list, or `/dev/null`), and
/// leaves the shell in `$part` with an empty `.shipit`. Writes `$tmp/clean`: the files of
/// the source whose inode, size, mtime and ctime are as its `.shipit/stat` recorded (read
/// before linking changes their ctime). Fails on a source holding names a listing cannot
/// carry, and on any path to remove that is not plain and relative, below directories of
/// the copy: nothing outside `$part` is ever removed.
///
/// The copy hard-links files unless the service user could write them (it owns the release
/// files, is root, or is unknown): then it copies, so that writing into one release can
/// never change another. Copies and new directories belong to the user running the script,
/// as an upload's would, so nobody else can change the copy while it is built.
const CLONE: &str = r#"
clone_release() {
  [ -d "$old" ] && [ ! -L "$old" ] || return 1
  (cd -- "$old" && stat_list) > "$tmp/now" || return 1
  recorded=/dev/null
  [ -f "$old/.shipit/stat" ] && recorded="$old/.shipit/stat"
  awk -F '\t' 'FILENAME == ARGV[1] { rec[$0] = 1; next } ($0 in rec) { print $1 }' \
    "$recorded" "$tmp/now" > "$tmp/clean" || return 1
  copy=""
  if [ -z "$svc" ] || [ "$svc" = "$(id -un)" ] || [ "$(id -u -- "$svc" 2>/dev/null)" = 0 ]; then copy=1; fi
  # Hard links where they work; copies where they cannot be made (another filesystem). The
  # links keep nothing else: new directories get their modes from the umask, as tar made them.
  if [ -z "$copy" ] && ! cp -RPl -- "$old" "$part" 2>/dev/null; then rm -rf -- "$part"; copy=1; fi
  if [ -n "$copy" ]; then cp -RP --preserve=mode,timestamps -- "$old" "$part" || return 1; fi
  cd -- "$part" && rm -rf .shipit && mkdir .shipit || return 1
  # What the copy holds, listed after it was made (nobody else can change it now): the
  # paths the manifest does not list with their type are the source's extras (shared links,
  # REVISION, files written into it later); they go, with the edit list's `rm` paths.
  walk '%P\t%y\n' > "$tmp/part" || return 1
  awk -F '\t' '
    function unsafe(p,   n, i, part, pre) {
      if (p == "" || ("/" p "/") ~ /\/\/|\/\.\.?\//) return 1
      n = split(p, part, "/")
      pre = part[1]
      for (i = 1; i < n; i++) { if (type[pre] != "d") return 1; pre = pre "/" part[i + 1] }
      return 0
    }
    FILENAME == ARGV[1] { listed[$1 "\t" $2] = 1; next }
    FILENAME == ARGV[2] {
      type[$1] = $2
      if ($0 in listed) next
      parent = $1; sub(/\/[^\/]*$/, "", parent)
      if (parent != $1 && (parent in extra)) { extra[$1] = 1; next }
      extra[$1] = 1; p = $1
    }
    FILENAME == ARGV[3] { if ($1 != "rm") next; p = $3 }
    unsafe(p) { bad = 1; exit }
    { print p }
    END { exit bad }' "$tmp/manifest" "$tmp/part" "$1" > "$tmp/rm" || return 1
  [ ! -s "$tmp/rm" ] || { tr '\n' '\000' < "$tmp/rm" | xargs -0 -r rm -rf --; }
}
trusted_sums() {
  awk -F '\t' -v OFS='\t' '
    FILENAME == ARGV[1] { if ($1 != "rm") touched[$3] = 1; next }
    FILENAME == ARGV[2] { clean[$1] = 1; next }
    $2 == "f" && ($1 in clean) && !($1 in touched) { print $1, $5 }' \
    "$1" "$tmp/clean" "$tmp/manifest"
}"#;

/// The manifest text of the release tree `dir` (for tests and diagnostics).
pub fn listing(dir: &str) -> Cmd {
    Cmd::seq([
        Cmd::assign("dir", dir),
        Cmd::new(HOST_TOOLS),
        Cmd::new(LISTING),
        Cmd::new(
            r#"
tmp=$(mktemp -d) || exit 1
cd -- "$dir" && listing "$tmp/l"
status=$?
rm -rf -- "$tmp"
exit "$status""#,
        ),
    ])
}

/// What a delta upload needs to know besides the stream.
pub struct DeltaArgs<'a> {
    pub deploy_to: &'a str,
    pub id: &'a str,
    /// The host's current release, which the delta was computed against.
    pub current: &'a str,
    /// sha256 of the current release's manifest, as the client read it.
    pub current_manifest: &'a str,
    /// sha256 of the new release's manifest: what the built tree must list as.
    pub manifest: &'a str,
    /// sha256 of the whole stream.
    pub upload_sha256: &'a str,
    /// The host's command that decompresses stdin to stdout (`Codec::decompress_cmd`).
    pub decompress: Cmd,
    /// Length of the compressed edit list at the start of the stream.
    pub edits_len: u64,
    /// The service user (`app.user`); empty when unknown.
    pub service_user: &'a str,
}

/// Builds `releases/<id>.partial` from the current release and a delta stream on stdin:
/// the compressed edit list (see `delta`), then a compressed tar of the new content.
///
/// The current release is cloned (`clone_release`: linked or copied, its extra paths and
/// the edits' removals dropped, never anything outside the copy), the tar applied, and the
/// whole tree then listed and hashed: only a tree whose listing has the new manifest's
/// sha256 is kept, with that listing as its manifest. Any failure (a current release
/// holding names a listing cannot carry among them) removes the partial directory and exits
/// [`DELTA_FAILED`](super::exit::DELTA_FAILED) ([`SHA_MISMATCH`](super::exit::SHA_MISMATCH)
/// for damaged bytes): the caller then sends the artifact whole. Ids that are not plain
/// names exit [`PATH_OUTSIDE`](super::exit::PATH_OUTSIDE). Falls through on success.
pub fn delta(a: &DeltaArgs<'_>) -> Cmd {
    Cmd::seq([
        Cmd::assign("base", a.deploy_to),
        Cmd::assign("id", a.id),
        Cmd::assign("cur", a.current),
        Cmd::assign("oldsum", a.current_manifest),
        Cmd::assign("want", a.manifest),
        Cmd::assign("sha", a.upload_sha256),
        decompressor(a.decompress.clone()),
        Cmd::assign("elen", a.edits_len.to_string()),
        Cmd::assign("svc", a.service_user),
        Cmd::new(HOST_TOOLS),
        Cmd::new(PATHS),
        Cmd::new(LISTING),
        Cmd::new(CLONE),
        Cmd::new(
            r#"
umask 022
plain_name "$id" || exit 101
plain_name "$cur" || exit 94
cd -- "$base" && mkdir -p .shipit || exit 1
part="releases/$id.partial"
old="releases/$cur"
tmp="$base/.shipit/delta-$id"
fail() { cd -- "$base" && rm -rf -- "$part" "$tmp"; exit "$1"; }
# Under the deploy lock: scratch dirs of runs that were killed can go.
rm -rf -- "$part" .shipit/delta-* && mkdir -- "$tmp" && mkfifo -- "$tmp/fifo" || fail 94
walk_tmp="$tmp/walk"
$hash < "$tmp/fifo" > "$tmp/sum" &
hasher=$!
tee -- "$tmp/fifo" | { head -c "$elen" | decompress > "$tmp/edits" && cat > "$tmp/tar"; }
status=$?
wait "$hasher"
read -r got rest < "$tmp/sum"
[ "$got" = "$sha" ] || fail 81
[ "$status" = 0 ] || fail 94
# The manifest the client planned with, kept aside from the app's reach.
cp -- "$old/.shipit/manifest" "$tmp/manifest" && [ "$(sum_of "$tmp/manifest")" = "$oldsum" ] || fail 94
clone_release "$tmp/edits" || fail 94
ln -s -- "../../$cur" .shipit/base || fail 94
decompress < "$tmp/tar" | tar -xf - --no-same-owner --no-same-permissions || fail 94
rm -f .shipit/base
# A file rewritten here (its own copy, unshared with the current release) goes through a
# fresh scratch name made by mktemp: a fixed name could be a symlink the artifact put there,
# and the copy would land wherever it points (a hard link of the live release).
rewrite() {
  [ -f "$1" ] && [ ! -L "$1" ] && real_dirs . "$1" || return 1
  rw_tmp=$(mktemp -- "$1.shipit-delta.XXXXXXXXXX") || return 1
  if cp -p -- "$1" "$rw_tmp" && mv -fT -- "$rw_tmp" "$1"; then return 0; fi
  rm -f -- "$rw_tmp"; return 1
}
while IFS="	" read -r op arg path; do
  rel_path "$path" || fail 94
  case $op in
    mode) rewrite "$path" && chmod "$arg" -- "$path" || fail 94 ;;
    link) if [ -n "$copy" ]; then rewrite "$path" || fail 94; fi ;;
  esac
done < "$tmp/edits"
# Trusted digests: clean files of the current release this delta did not write.
trusted_sums "$tmp/edits" > "$tmp/trusted" || fail 94
listing "$tmp/l" "$tmp/trusted" > .shipit/manifest || fail 94
[ "$(sum_of .shipit/manifest)" = "$want" ] || fail 94
mv -f -- "$tmp/l.stat" .shipit/stat || fail 94
cd -- "$base" && rm -rf -- "$tmp"
:"#,
        ),
    ])
}

/// Makes `releases/<id>.partial` a copy of `releases/<from>`, which holds the same
/// artifact (`manifest`: the sha256 of its manifest): no bytes uploaded. The source is
/// trusted no more than a delta's: it is cloned by the same rule (`clone_release`: hard
/// links only where the service user `service_user` cannot write the files, its extra paths
/// dropped), and the copy is kept only if it lists exactly as the manifest (files whose
/// stat record shows them unchanged are not read again). A source without a manifest, one
/// that differs from it (a file patched in place, names a listing cannot carry), or a host
/// without GNU `find` exits [`REUSE_UNVERIFIED`](super::exit::REUSE_UNVERIFIED), nothing
/// kept: the caller then uploads. Falls through on success.
pub fn reuse(deploy_to: &str, from: &str, id: &str, manifest: &str, service_user: &str) -> Cmd {
    Cmd::seq([
        Cmd::assign("base", deploy_to),
        Cmd::assign("from", from),
        Cmd::assign("id", id),
        Cmd::assign("want", manifest),
        Cmd::assign("svc", service_user),
        Cmd::new(HOST_TOOLS),
        Cmd::new(PATHS),
        Cmd::new(LISTING),
        Cmd::new(CLONE),
        Cmd::new(
            r#"
umask 022
plain_name "$id" || exit 101
plain_name "$from" || exit 100
gnu_find && command -v awk >/dev/null 2>&1 || exit 100
cd -- "$base" && mkdir -p .shipit || exit 1
part="releases/$id.partial"
old="releases/$from"
tmp="$base/.shipit/delta-$id"
fail() { cd -- "$base" && rm -rf -- "$part" "$tmp"; exit "$1"; }
# Under the deploy lock: scratch dirs of runs that were killed can go.
rm -rf -- "$part" .shipit/delta-* && mkdir -- "$tmp" || fail 1
walk_tmp="$tmp/walk"
[ -f "$old/.shipit/manifest" ] && cp -- "$old/.shipit/manifest" "$tmp/manifest" || fail 100
[ "$(sum_of "$tmp/manifest")" = "$want" ] || fail 100
clone_release /dev/null || fail 100
trusted_sums /dev/null > "$tmp/trusted" || fail 100
listing "$tmp/l" "$tmp/trusted" > .shipit/manifest || fail 100
[ "$(sum_of .shipit/manifest)" = "$want" ] || fail 100
mv -f -- "$tmp/l.stat" .shipit/stat || fail 1
cd -- "$base" && rm -rf -- "$tmp"
:"#,
        ),
    ])
}

/// What goes into `releases/<id>/REVISION`: the artifact sha256 first, then `git=<sha>`.
pub fn revision_text(sha256: &str, git: Option<&str>) -> String {
    match git {
        Some(git) => format!("{sha256}\ngit={git}"),
        None => sha256.to_owned(),
    }
}

/// Writes REVISION, links the shared paths and renames the partial directory into place.
/// `owner` (the app user) owns what is newly created in `shared/`; with `sudo`
/// (`ssh.sudo`: the SSH user cannot give files away) it is given through `sudo -n chown`.
pub fn finish(
    deploy_to: &str,
    id: &str,
    revision: &str,
    shared_dirs: &[String],
    shared_files: &[String],
    owner: Option<&str>,
    sudo: bool,
) -> Cmd {
    let mut steps = vec![
        Cmd::assign("base", deploy_to),
        Cmd::assign("id", id),
        Cmd::assign("revision", revision),
        Cmd::assign("owner", owner.unwrap_or("")),
        Cmd::assign("chown", if sudo { "sudo -n -- chown" } else { "chown" }),
        Cmd::new(PATHS),
        Cmd::new(
            r#"
plain_name "$id" || exit 101
cd -- "$base" || exit 1
part="releases/$id.partial"
[ -d "$part" ] || exit 1
# REVISION may be a hard link shared with the release this one was copied from.
if [ -e "$part/REVISION" ] || [ -L "$part/REVISION" ]; then rm -f -- "$part/REVISION"; fi
printf '%s\n' "$revision" > "$part/REVISION" || exit 1"#,
        ),
    ];
    if !shared_dirs.is_empty() || !shared_files.is_empty() {
        steps.push(Cmd::new(super::strict::SNIPPET));
        steps.push(Cmd::new(SEED_DIR));
    }
    for dir in shared_dirs {
        steps.push(Cmd::assign("p", dir));
        steps.push(Cmd::new(SHARED_NOT_THROUGH_LINK));
        steps.push(Cmd::new(LINK_SHARED_DIR));
    }
    for file in shared_files {
        steps.push(Cmd::assign("p", file));
        steps.push(Cmd::new(SHARED_NOT_THROUGH_LINK));
        steps.push(Cmd::new(LINK_SHARED_FILE));
    }
    steps.push(Cmd::new(
        r#"mv -T -- "$part" "releases/$id" || exit 1
exit 0"#,
    ));
    Cmd::seq(steps)
}

/// A shared path whose parent in the release is reached through a link (the artifact's own
/// `a -> storage`, or an earlier shared path's link) would be deleted and linked wherever
/// that link points, e.g. into another shared path's data: refuse it, keep nothing. The
/// inventory already refuses shared paths inside one another; this is the same rule for
/// links the inventory cannot see. (Links inside `shared/` are the operator's, e.g. to
/// another disk, and are followed.) Exit
/// [`SHARED_THROUGH_LINK`](super::exit::SHARED_THROUGH_LINK).
const SHARED_NOT_THROUGH_LINK: &str = r#"
d=$p
while case $d in */*) true ;; *) false ;; esac; do
  d=${d%/*}
  if [ -L "$part/$d" ]; then
    echo "shared path \`$p\` goes through the link \`$d\` in the release: share a path that is not below a link" >&2
    rm -rf -- "$part"
    exit 105
  fi
done"#;

/// `seed_dir`, with `$p` set: makes the directory in `shared/` that will hold `$p`, which
/// must pass [`strict`](super::strict) before and after (exit
/// [`UNSAFE_PATH`](super::exit::UNSAFE_PATH)). A directory of `shared/` the app's user owns
/// (one that was a shared dir before) would let them put a symlink at `$p` between the
/// check that it is absent and the copy, and the copy and its chown would follow it.
const SEED_DIR: &str = r#"
seed_dir() {
  sd_dir=$(dirname -- "$base/shared/$p")
  shipit_strict "$sd_dir"
  mkdir -p -- "$sd_dir" || exit 1
  shipit_strict "$sd_dir"
}"#;

/// A shared directory: seeded from the artifact on first use, then a symlink replaces the
/// artifact's copy in every release. The path is relative and below real directories of the
/// release (not through the artifact's symlinks), or nothing is removed.
const LINK_SHARED_DIR: &str = r#"
rel_path "$p" && real_dirs "$part" "$p" || exit 101
if [ ! -e "shared/$p" ]; then
  seed_dir
  if [ -d "$part/$p" ] && [ ! -L "$part/$p" ]; then cp -a -- "$part/$p" "shared/$p" || exit 1
  else mkdir -p -- "shared/$p" || exit 1; fi
  if [ -n "$owner" ]; then $chown -R -- "$owner" "shared/$p" || exit 1; fi
fi
rm -rf -- "$part/$p" && mkdir -p -- "$(dirname -- "$part/$p")" && ln -s -- "$base/shared/$p" "$part/$p" || exit 1"#;

/// A shared file: seeded from the artifact on first use; if neither has it, the deploy
/// stops rather than link a release to a file that is not there. Checked as a shared
/// directory is.
const LINK_SHARED_FILE: &str = r#"
rel_path "$p" && real_dirs "$part" "$p" || exit 101
if [ ! -e "shared/$p" ]; then
  if [ -f "$part/$p" ] && [ ! -L "$part/$p" ]; then
    seed_dir
    cp -p -- "$part/$p" "shared/$p" || exit 1
    if [ -n "$owner" ]; then $chown -h -- "$owner" "shared/$p" || exit 1; fi
  else
    echo "shared file \`$base/shared/$p\` does not exist and the artifact has none: create it on the host" >&2
    rm -rf -- "$part"
    exit 82
  fi
fi
rm -rf -- "$part/$p" && mkdir -p -- "$(dirname -- "$part/$p")" && ln -s -- "$base/shared/$p" "$part/$p" || exit 1"#;

/// Points `current` at `releases/<id>`: a new symlink renamed over the old one (atomic).
/// Exit [`RELEASE_MISSING`](super::exit::RELEASE_MISSING) if the release is not there
/// (or `id` is no release name).
pub fn switch(deploy_to: &str, id: &str) -> Cmd {
    Cmd::seq([
        Cmd::assign("base", deploy_to),
        Cmd::assign("id", id),
        Cmd::new(PATHS),
        Cmd::new(
            r#"
plain_name "$id" || exit 83
cd -- "$base" || exit 1
[ -d "releases/$id" ] && [ ! -L "releases/$id" ] || exit 83
ln -sfn -- "releases/$id" .current.tmp && mv -T -- .current.tmp current"#,
        ),
    ])
}

/// Removes `current`: how a first deploy is undone (there was no release before it).
pub fn remove_current(deploy_to: &str) -> Cmd {
    Cmd::new("rm")
        .arg("-f")
        .arg("--")
        .arg(format!("{deploy_to}/current"))
}

/// Removes old releases and stale partial directories (names from the plan, not globs).
/// Each name is checked again on the host: only plain names (see `plain_name`) of real
/// directories directly in `releases/` are removed; any other exits
/// [`PATH_OUTSIDE`](super::exit::PATH_OUTSIDE) before anything is removed. Then refreshes the
/// stat record of the current release, whose files may share inodes with the removed ones.
pub fn prune(deploy_to: &str, names: &[String]) -> Cmd {
    Cmd::seq([
        Cmd::assign("base", deploy_to),
        Cmd::new("set").arg("--").args(names),
        Cmd::new(HOST_TOOLS),
        Cmd::new(PATHS),
        Cmd::new(LISTING),
        Cmd::new(
            r#"
cd -- "$base" && [ -d releases ] && [ ! -L releases ] || exit 1
for name do plain_name "$name" || exit 101; done
for name do
  if [ -d "releases/$name" ] && [ ! -L "releases/$name" ]; then rm -rf -- "releases/$name" || exit 1; fi
done
if [ -d current ]; then refresh_stat current || rm -f current/.shipit/stat; fi"#,
        ),
    ])
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::Path;
    use std::process::{Command, Stdio};

    /// What `Codec::Gzip.decompress_cmd()` is, without depending on the artifact module.
    fn gunzip() -> Cmd {
        Cmd::new("gzip").arg("-dc")
    }

    fn sh(cmd: &Cmd, stdin: &[u8]) -> (i32, String) {
        sh_with_path(cmd, stdin, None)
    }

    fn sh_with_path(cmd: &Cmd, stdin: &[u8], path: Option<&Path>) -> (i32, String) {
        let (code, _, stderr) = run_sh(cmd, stdin, path);
        (code, stderr)
    }

    /// Runs `cmd` in the real `/bin/sh` with `stdin`, optionally with only `path` on PATH:
    /// (exit code, stdout, stderr).
    pub(crate) fn run_sh(cmd: &Cmd, stdin: &[u8], path: Option<&Path>) -> (i32, String, String) {
        use std::io::Write;
        let mut command = Command::new("/bin/sh");
        if let Some(path) = path {
            command.env("PATH", path);
        }
        let mut child = command
            .arg("-c")
            .arg(cmd.render())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        let _ = input.write_all(stdin);
        drop(input);
        let out = child.wait_with_output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn sha256(bytes: &[u8]) -> String {
        let sum = Command::new("sha256sum")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(bytes)?;
                c.wait_with_output()
            })
            .unwrap();
        String::from_utf8_lossy(&sum.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned()
    }

    /// A gzip'd tar of a few files, the sha256 of the uncompressed tar (the artifact's
    /// identity) and of the gzip'd bytes (what `receive` checks), made with the system's
    /// tools (the test must not trust shipit's own packer).
    fn artifact(dir: &Path) -> (Vec<u8>, String, String) {
        let src = dir.join("src");
        std::fs::create_dir_all(src.join("storage")).unwrap();
        std::fs::write(src.join("app.txt"), "v1\n").unwrap();
        std::fs::write(src.join("storage/seed.txt"), "seed\n").unwrap();
        std::fs::write(src.join("config.yml"), "from artifact\n").unwrap();
        let tar = Command::new("tar")
            .arg("-cf")
            .arg("-")
            .arg("-C")
            .arg(&src)
            .arg(".")
            .output()
            .unwrap()
            .stdout;
        let sha = sha256(&tar);
        let mut gz = Command::new("gzip")
            .arg("-c")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        {
            use std::io::Write;
            gz.stdin.take().unwrap().write_all(&tar).unwrap();
        }
        let bytes = gz.wait_with_output().unwrap().stdout;
        let upload_sha = sha256(&bytes);
        (bytes, sha, upload_sha)
    }

    #[test]
    fn a_shared_path_below_a_link_is_refused_and_the_shared_data_stays() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("app");
        let b = base.to_str().unwrap();
        let part = base.join("releases/r1.partial");
        std::fs::create_dir_all(part.join("storage")).unwrap();
        std::fs::create_dir_all(base.join("shared/storage")).unwrap();
        std::fs::write(base.join("shared/storage/x"), "user data\n").unwrap();
        // The artifact's own link inside the release: `a -> storage`.
        std::os::unix::fs::symlink("storage", part.join("a")).unwrap();
        let cmd = finish(
            b,
            "r1",
            "sha",
            &["storage".to_owned()],
            &["a/x".to_owned()],
            None,
            false,
        );
        let (code, _, stderr) = run_sh(&cmd, b"", None);
        assert_eq!(
            code,
            super::super::exit::SHARED_THROUGH_LINK as i32,
            "{stderr}"
        );
        assert!(stderr.contains("goes through the link `a`"), "{stderr}");
        assert_eq!(
            std::fs::read_to_string(base.join("shared/storage/x")).unwrap(),
            "user data\n"
        );
        assert!(!part.exists() && !base.join("releases/r1").exists());
    }

    #[test]
    fn receive_finish_switch_and_prune_in_real_sh() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("my app");
        let b = base.to_str().unwrap();
        let (bytes, sha, up) = artifact(dir.path());

        assert_eq!(sh(&receive(b, "r1", &up, gunzip(), 0), &bytes).0, 0);
        assert!(base.join("releases/r1.partial/app.txt").exists());
        let shared = ["storage".to_owned()];
        let files = ["config.yml".to_owned()];
        let finish1 = finish(
            b,
            "r1",
            &revision_text(&sha, Some("abc")),
            &shared,
            &files,
            None,
            false,
        );
        assert_eq!(sh(&finish1, b"").0, 0);
        assert!(!base.join("releases/r1.partial").exists());
        assert_eq!(
            std::fs::read_to_string(base.join("releases/r1/REVISION")).unwrap(),
            format!("{sha}\ngit=abc\n")
        );
        // Shared paths were seeded from the artifact and replaced by links.
        assert_eq!(
            std::fs::read_to_string(base.join("shared/storage/seed.txt")).unwrap(),
            "seed\n"
        );
        assert!(
            base.join("releases/r1/storage")
                .symlink_metadata()
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(
            std::fs::read_to_string(base.join("releases/r1/config.yml")).unwrap(),
            "from artifact\n"
        );

        assert_eq!(sh(&switch(b, "r1"), b"").0, 0);
        assert_eq!(
            std::fs::read_link(base.join("current")).unwrap(),
            Path::new("releases/r1")
        );

        // Reuse needs a manifest to check the copy against: r1 has none, nothing is kept
        // (the caller uploads). A copy that verifies is tested in `delta::host_tests`.
        let svc = "nobody";
        assert_eq!(sh(&reuse(b, "r1", "r2", &sha, svc), b"").0, 100);
        assert!(!base.join("releases/r2.partial").exists());
        assert_eq!(sh(&receive(b, "r2", &up, gunzip(), 0), &bytes).0, 0);
        let finish2 = finish(
            b,
            "r2",
            &revision_text(&sha, None),
            &shared,
            &files,
            None,
            false,
        );
        assert_eq!(sh(&finish2, b"").0, 0);
        assert_eq!(
            std::fs::read_to_string(base.join("releases/r1/REVISION")).unwrap(),
            format!("{sha}\ngit=abc\n")
        );
        assert_eq!(
            std::fs::read_to_string(base.join("releases/r2/REVISION")).unwrap(),
            format!("{sha}\n")
        );
        assert_eq!(sh(&switch(b, "r2"), b"").0, 0);
        assert_eq!(
            std::fs::read_link(base.join("current")).unwrap(),
            Path::new("releases/r2")
        );

        assert_eq!(sh(&switch(b, "nope"), b"").0, 83);
        assert_eq!(
            std::fs::read_link(base.join("current")).unwrap(),
            Path::new("releases/r2")
        );

        assert_eq!(sh(&prune(b, &["r1".to_owned()]), b"").0, 0);
        assert!(!base.join("releases/r1").exists());
        assert!(base.join("releases/r2/app.txt").exists());
    }

    #[test]
    fn receive_checks_with_sha256sum_where_the_host_has_no_openssl() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("app");
        let b = base.to_str().unwrap();
        let (bytes, _, up) = artifact(dir.path());
        // A PATH with the tools `receive` needs, and no openssl.
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        for tool in [
            "mkdir",
            "rm",
            "mkfifo",
            "sha256sum",
            "tee",
            "gzip",
            "tar",
            "cat",
        ] {
            let found = Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {tool}"))
                .output()
                .unwrap();
            let target = String::from_utf8_lossy(&found.stdout).trim().to_owned();
            std::os::unix::fs::symlink(target, bin.join(tool)).unwrap();
        }
        let wrong = "0".repeat(64);
        let cmd = receive(b, "r1", &wrong, gunzip(), 0);
        assert_eq!(sh_with_path(&cmd, &bytes, Some(&bin)).0, 81);
        let cmd = receive(b, "r1", &up, gunzip(), 0);
        assert_eq!(sh_with_path(&cmd, &bytes, Some(&bin)), (0, String::new()));
        assert!(base.join("releases/r1.partial/app.txt").exists());
    }

    #[test]
    fn a_stream_verified_after_it_ends_keeps_the_release_only_when_the_digest_matches() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("app");
        let b = base.to_str().unwrap();
        let (bytes, _, up) = artifact(dir.path());
        let wrong = "0".repeat(64);
        for (sha, code) in [(wrong.as_str(), 81), ("", 81), (up.as_str(), 0)] {
            // Received without a digest to compare with: kept, with the host's digest.
            assert_eq!(sh(&receive(b, "r1", "", gunzip(), 0), &bytes).0, 0);
            assert!(base.join("releases/r1.partial/app.txt").exists());
            assert_eq!(sh(&verify_received(b, "r1", sha), b"").0, code, "{sha}");
            assert_eq!(base.join("releases/r1.partial").exists(), code == 0);
            assert!(!base.join(".shipit/upload-r1.sum").exists());
        }
        // A stream cut short (GNU tar takes an archive without its end blocks): the
        // digest of what arrived is not the upload's, so nothing is kept.
        let truncated = &bytes[..bytes.len() / 2];
        sh(&receive(b, "r2", "", gunzip(), 0), truncated);
        assert_eq!(sh(&verify_received(b, "r2", &up), b"").0, 81);
        assert!(!base.join("releases/r2.partial").exists());
        assert!(!base.join(".shipit/upload-r2.sum").exists());
        // One that fails to extract leaves neither the partial release nor a digest.
        assert_ne!(sh(&receive(b, "r3", "", gunzip(), 0), b"not gzip").0, 0);
        assert!(!base.join("releases/r3.partial").exists());
        assert!(!base.join(".shipit/upload-r3.sum").exists());
    }

    #[test]
    fn corrupt_or_foreign_bytes_leave_no_partial() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("app");
        let b = base.to_str().unwrap();
        let (bytes, sha, up) = artifact(dir.path());
        let wrong = "0".repeat(64);
        assert_eq!(sh(&receive(b, "r1", &wrong, gunzip(), 0), &bytes).0, 81);
        assert!(!base.join("releases/r1.partial").exists());
        // What is checked is the bytes received, not the tar's identity.
        assert_eq!(sh(&receive(b, "r1", &sha, gunzip(), 0), &bytes).0, 81);
        let truncated = &bytes[..bytes.len() / 2];
        assert_ne!(sh(&receive(b, "r1", &up, gunzip(), 0), truncated).0, 0);
        assert!(!base.join("releases/r1.partial").exists());
        assert_ne!(
            sh(&receive(b, "r1", &up, gunzip(), 0), b"not gzip at all").0,
            0
        );
        assert!(!base.join("releases/r1.partial").exists());
    }

    /// A shared file is seeded into a directory of `shared/` that the app's user may own
    /// (it was once a shared dir, chowned to them): between the check that the file is
    /// absent and the copy, they can put a symlink there. Simulated by a `mkdir` that plants
    /// one right after making the directory: the seed must not be written, nor chowned,
    /// through it.
    #[test]
    fn seeding_a_shared_file_never_writes_through_a_link_planted_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("app");
        let b = base.to_str().unwrap();
        let (bytes, sha, up) = artifact(dir.path());
        assert_eq!(sh(&receive(b, "r1", &up, gunzip(), 0), &bytes).0, 0);
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "root-owned\n").unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        // The directory the app's user owns (it was a shared dir once).
        std::fs::create_dir_all(base.join("shared/storage")).unwrap();
        let out = Command::new("chown")
            .arg("nobody")
            .arg(base.join("shared/storage"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        for tool in ["rm", "cp", "ln", "mv", "dirname", "chown", "id", "stat"] {
            let found = Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {tool}"))
                .output()
                .unwrap();
            let target = String::from_utf8_lossy(&found.stdout).trim().to_owned();
            std::os::unix::fs::symlink(target, bin.join(tool)).unwrap();
        }
        let real_mkdir = String::from_utf8_lossy(
            &Command::new("sh")
                .arg("-c")
                .arg("command -v mkdir")
                .output()
                .unwrap()
                .stdout,
        )
        .trim()
        .to_owned();
        let shim = format!(
            "#!/bin/sh\n{real_mkdir} \"$@\" || exit\ncase \"$*\" in *shared/storage) ln -sfn {} {}/shared/storage/seed.txt ;; esac\n",
            victim.display(),
            b
        );
        std::fs::write(bin.join("mkdir"), shim).unwrap();
        std::fs::set_permissions(
            bin.join("mkdir"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let cmd = finish(
            b,
            "r1",
            &sha,
            &[],
            &["storage/seed.txt".to_owned()],
            Some("nobody"),
            false,
        );
        let (code, _, err) = run_sh(&cmd, b"", Some(&bin));
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "root-owned\n");
        let meta = std::fs::metadata(&victim).unwrap();
        assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 0);
        assert_eq!(code, super::super::exit::UNSAFE_PATH as i32, "{err}");
        assert!(err.contains("shared/storage"), "{err}");
        assert!(!base.join("releases/r1").exists());
    }

    #[test]
    fn a_missing_shared_file_stops_the_release() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("app");
        let b = base.to_str().unwrap();
        let (bytes, sha, up) = artifact(dir.path());
        assert_eq!(sh(&receive(b, "r1", &up, gunzip(), 0), &bytes).0, 0);
        let (code, stderr) = sh(
            &finish(b, "r1", &sha, &[], &["secrets.yml".to_owned()], None, false),
            b"",
        );
        assert_eq!(code, 82);
        assert!(
            stderr.contains("shared/secrets.yml` does not exist"),
            "{stderr}"
        );
        assert!(!base.join("releases/r1").exists());
    }
}

// Tar archives written byte by byte: raw 512-byte headers that no library normalises, for
// the tests of the artifact checker. One file for the unit tests of `src/artifact.rs`
// (`include!`), `tests/properties.rs` and `tests/e2e/harden_tar.rs` (`#[path]`); so no
// inner attributes here.

/// POSIX ustar magic and version `00`.
pub const USTAR: &[u8; 8] = b"ustar\x0000";
/// GNU tar's magic and version.
pub const GNU: &[u8; 8] = b"ustar  \0";

/// A raw header, every field as given: `name`, `prefix` (the ustar prefix field) and `link`
/// cut to their fields, `magic` the 8 bytes of magic and version at offset 257, `mode` and
/// `mtime` in octal; owner 0, checksum written.
#[allow(clippy::too_many_arguments)]
pub fn header(
    name: &[u8],
    prefix: &[u8],
    flag: u8,
    link: &[u8],
    size: u64,
    magic: &[u8; 8],
    mode: u32,
    mtime: u64,
) -> Vec<u8> {
    let mut h = vec![0u8; 512];
    let cut = |v: &[u8], n: usize| v[..v.len().min(n)].to_vec();
    let name = cut(name, 100);
    h[..name.len()].copy_from_slice(&name);
    h[100..107].copy_from_slice(format!("{mode:07o}").as_bytes());
    h[108..115].copy_from_slice(b"0000000");
    h[116..123].copy_from_slice(b"0000000");
    h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
    h[136..147].copy_from_slice(format!("{mtime:011o}").as_bytes());
    h[156] = flag;
    let link = cut(link, 100);
    h[157..157 + link.len()].copy_from_slice(&link);
    h[257..265].copy_from_slice(magic);
    let prefix = cut(prefix, 155);
    h[345..345 + prefix.len()].copy_from_slice(&prefix);
    seal(&mut h);
    h
}

/// Writes a header's checksum.
pub fn seal(h: &mut [u8]) {
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

/// `v` padded with zeros to a whole number of 512-byte blocks.
pub fn padded(mut v: Vec<u8>) -> Vec<u8> {
    v.resize(v.len().div_ceil(512) * 512, 0);
    v
}

/// The data of a pax extended header: one `<len> <key>=<value>\n` record each, `<len>`
/// counting itself.
pub fn pax_data(records: &[(&str, &[u8])]) -> Vec<u8> {
    let mut data = Vec::new();
    for (key, value) in records {
        let body = [format!(" {key}=").as_bytes(), value, b"\n"].concat();
        let mut len = body.len() + 1;
        while len.to_string().len() + body.len() != len {
            len += 1;
        }
        data.extend_from_slice(len.to_string().as_bytes());
        data.extend_from_slice(&body);
    }
    data
}

/// GNU tar's listing of `tar`: `tar --numeric-owner --quoting-style=c -tvf -` (its output,
/// whether it succeeded or not).
pub fn gnu_tv(tar: &[u8]) -> std::process::Output {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("tar")
        .args(["--numeric-owner", "--quoting-style=c", "-tvf", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let bytes = tar.to_vec();
    // A refused archive may be left unread: write on a thread of its own.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&bytes);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

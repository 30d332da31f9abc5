//! known_hosts matching with OpenSSH's semantics, on key text (no SSH library types).
//!
//! A host is trusted when any entry whose pattern matches it carries the offered key, and no
//! `@revoked` entry carries it. Entries for the host with other keys mean the key changed;
//! no entry at all means unknown. A host certificate is vouched for by a `@cert-authority`
//! entry matching the host that carries the certificate's signing key ([`KnownHosts::authority`];
//! the certificate itself is checked by the caller). Patterns: comma lists, `*` and `?`
//! wildcards, `!` negation, hashed names (`|1|salt|hmac`, as `ssh-keyscan -H` writes) and
//! `[host]:port` for ports other than 22. Fields may be separated by spaces or tabs. Line
//! numbers count every line of the file, comments included; files are searched in the
//! order added (the user's, then the system's).
//!
//! Pure: callers read the files and pass their text in.

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Digest;

use crate::ssh::pattern;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Marker {
    None,
    Revoked,
    CertAuthority,
}

/// One line of a known_hosts file: where it is, its marker, host patterns and key.
#[derive(Clone, Debug)]
pub struct KnownHost {
    pub file: PathBuf,
    pub line: usize,
    marker: Marker,
    patterns: String,
    pub key_type: String,
    pub key_blob: String,
}

/// All entries of the known_hosts files of a run, in lookup order.
#[derive(Clone, Debug, Default)]
pub struct KnownHosts {
    entries: Vec<KnownHost>,
    /// Lines skipped because their key is not what they say, with their patterns, so a
    /// refusal for a host they name can say why they did not count.
    ignored: Vec<(String, String)>,
    /// Why the `RevokedHostKeys` file cannot be used: then no host key is trusted, as in
    /// OpenSSH.
    revocations_unusable: Option<String>,
}

/// The outcome of checking one offered key.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// `origin`: the first entry carrying the key.
    Trusted {
        origin: String,
    },
    Revoked {
        origin: String,
    },
    Changed {
        expected: String,
        origin: String,
        /// Entries for the host that were not used, each with why.
        unused: Vec<String>,
    },
    Unknown {
        /// Entries for the host that were not used, each with why.
        unused: Vec<String>,
    },
}

impl KnownHosts {
    /// Adds the entries of one file's text. Malformed lines are skipped, like OpenSSH does;
    /// so is a line whose key is of another type than it says (OpenSSH cannot read it).
    pub fn add_file(&mut self, file: &Path, text: &str) {
        for (i, raw) in text.lines().enumerate() {
            let Some(entry) = parse_line(file, i + 1, raw) else {
                continue;
            };
            match blob_type(&entry.key_blob) {
                Some(inner) if inner == entry.key_type => self.entries.push(entry),
                inner => {
                    let why = match inner {
                        Some(inner) => format!(
                            "{} says `{}` but holds an `{inner}` key, so it is skipped, as OpenSSH skips it",
                            origin(&entry),
                            entry.key_type
                        ),
                        None => format!(
                            "{} holds no readable key, so it is skipped, as OpenSSH skips it",
                            origin(&entry)
                        ),
                    };
                    self.ignored.push((entry.patterns, why));
                }
            }
        }
    }

    /// Adds a `RevokedHostKeys` file: public keys, one a line, refused for every host.
    /// `bytes` is `None` when the file cannot be read.
    pub fn add_revoked_keys(&mut self, file: &Path, bytes: Option<&[u8]>) {
        let name = format!("`{}` (`RevokedHostKeys`)", file.display());
        let Some(bytes) = bytes else {
            self.revocations_unusable = Some(format!(
                "{name} cannot be read, and `ssh` trusts no host key then either"
            ));
            return;
        };
        if bytes.starts_with(b"SSHKRL\n\0") {
            self.revocations_unusable = Some(format!(
                "{name} is a key revocation list (KRL), which shipit cannot read; list the revoked public keys there one a line (`ssh-ed25519 AAAA...`), or as `@revoked` lines in known_hosts"
            ));
            return;
        }
        let text = String::from_utf8_lossy(bytes);
        for (i, raw) in text.lines().enumerate() {
            let mut words = raw.split_whitespace();
            let (Some(key_type), Some(key_blob)) = (words.next(), words.next()) else {
                continue;
            };
            if key_type.starts_with('#') {
                continue;
            }
            self.entries.push(KnownHost {
                file: file.to_owned(),
                line: i + 1,
                marker: Marker::Revoked,
                patterns: "*".to_owned(),
                key_type: key_type.to_owned(),
                key_blob: key_blob.to_owned(),
            });
        }
    }

    /// Why no key can be trusted at all, if so.
    pub fn unusable(&self) -> Option<&str> {
        self.revocations_unusable.as_deref()
    }

    /// Why lines naming `name` were skipped.
    fn ignored_for(&self, name: &str) -> Vec<String> {
        self.ignored
            .iter()
            .filter(|(patterns, _)| patterns_match(patterns, name))
            .map(|(_, why)| why.clone())
            .collect()
    }

    /// Entries whose patterns match the recorded name (`host` or `[host]:port`, see
    /// [`host_name`]), certificate authorities included.
    fn matching<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a KnownHost> + 'a {
        self.entries
            .iter()
            .filter(move |e| patterns_match(&e.patterns, name))
    }

    /// The `@revoked` entry for the name carrying this key, if any.
    fn revoked<'a>(
        &'a self,
        name: &'a str,
        key_type: &str,
        key_blob: &str,
    ) -> Option<&'a KnownHost> {
        self.matching(name).find(|e| {
            e.marker == Marker::Revoked && e.key_type == key_type && e.key_blob == key_blob
        })
    }

    /// Checks the key a host offered (`key_type`, base64 `key_blob`).
    ///
    /// On a port other than 22, a host no entry names as `[host]:port` is checked against
    /// the entries for `host` alone, as OpenSSH does (it "checks without port identifier"):
    /// such an entry can only vouch for the key, never make it "changed".
    pub fn check(&self, host: &str, port: u16, key_type: &str, key_blob: &str) -> Verdict {
        let named = host_name(host, port);
        let verdict = self.check_name(&named, key_type, key_blob);
        if port == 22 {
            return verdict;
        }
        let bare = host_name(host, 22);
        match verdict {
            Verdict::Unknown { mut unused } => match self.check_name(&bare, key_type, key_blob) {
                Verdict::Trusted { origin } => Verdict::Trusted {
                    origin: format!(
                        "{origin} (the entry for `{bare}`: no entry names `{named}`, so the one without a port counts, as in OpenSSH)"
                    ),
                },
                Verdict::Changed {
                    expected, origin, ..
                } => {
                    unused.push(format!(
                        "{origin} records another key for `{bare}` ({expected}); an entry without a port stands in for `{named}` only when it holds the key offered"
                    ));
                    Verdict::Unknown { unused }
                }
                Verdict::Revoked { origin } => Verdict::Revoked { origin },
                Verdict::Unknown { .. } => Verdict::Unknown { unused },
            },
            Verdict::Changed {
                expected,
                origin: changed,
                mut unused,
            } => {
                if let Some(entry) = self.matching(&bare).find(|e| {
                    e.marker == Marker::None && e.key_type == key_type && e.key_blob == key_blob
                }) {
                    unused.push(format!(
                        "{} has this key for `{bare}`, but it is not used: entries for `{named}` exist, and OpenSSH falls back to the name without a port only when none does",
                        origin(entry)
                    ));
                }
                Verdict::Changed {
                    expected,
                    origin: changed,
                    unused,
                }
            }
            other => other,
        }
    }

    /// [`KnownHosts::check`] for one recorded name.
    fn check_name(&self, name: &str, key_type: &str, key_blob: &str) -> Verdict {
        if let Some(entry) = self.revoked(name, key_type, key_blob) {
            return Verdict::Revoked {
                origin: origin(entry),
            };
        }
        // The entry a changed key is blamed on: the first for the offered key's type (the
        // type the handshake settled on), else the first at all.
        let mut first_other: Option<&KnownHost> = None;
        let mut same_type: Option<&KnownHost> = None;
        let mut trusted: Option<&KnownHost> = None;
        for entry in self.matching(name) {
            if entry.marker != Marker::None {
                continue;
            }
            if entry.key_type == key_type && entry.key_blob == key_blob {
                trusted.get_or_insert(entry);
            } else {
                first_other.get_or_insert(entry);
                if entry.key_type == key_type {
                    same_type.get_or_insert(entry);
                }
            }
        }
        let first_other = same_type.or(first_other);
        if let Some(entry) = trusted {
            return Verdict::Trusted {
                origin: origin(entry),
            };
        }
        let unused = self.ignored_for(name);
        match first_other {
            Some(e) => Verdict::Changed {
                expected: format!("{} {}", e.key_type, fingerprint(&e.key_blob)),
                origin: origin(e),
                unused,
            },
            None => Verdict::Unknown { unused },
        }
    }

    /// Whether a `@cert-authority` entry vouches for the key `ca_type ca_blob` signing
    /// host certificates for this host: `Trusted` with the entry, `Revoked` if the
    /// authority's key is revoked for the host, else `Unknown`.
    ///
    /// On a port other than 22, when no authority for `[host]:port` signed it, the
    /// authorities for `host` alone count, as in OpenSSH (`@cert-authority *.example.com`
    /// covers every port).
    pub fn authority(&self, host: &str, port: u16, ca_type: &str, ca_blob: &str) -> Verdict {
        let verdict = self.authority_for(&host_name(host, port), ca_type, ca_blob);
        match verdict {
            Verdict::Unknown { .. } if port != 22 => {
                self.authority_for(&host_name(host, 22), ca_type, ca_blob)
            }
            other => other,
        }
    }

    fn authority_for(&self, name: &str, ca_type: &str, ca_blob: &str) -> Verdict {
        if let Some(entry) = self.revoked(name, ca_type, ca_blob) {
            return Verdict::Revoked {
                origin: origin(entry),
            };
        }
        match self.matching(name).find(|e| {
            e.marker == Marker::CertAuthority && e.key_type == ca_type && e.key_blob == ca_blob
        }) {
            Some(entry) => Verdict::Trusted {
                origin: format!("the @cert-authority entry at {}", origin(entry)),
            },
            None => Verdict::Unknown { unused: Vec::new() },
        }
    }

    /// Whether any `@cert-authority` entry matches the host (on another port than 22, with
    /// or without it, as [`KnownHosts::authority`] looks): then the handshake asks for a
    /// host certificate, as OpenSSH does.
    pub fn has_authority(&self, host: &str, port: u16) -> bool {
        let names = [host_name(host, port), host_name(host, 22)];
        names.iter().any(|name| {
            self.matching(name)
                .any(|e| e.marker == Marker::CertAuthority)
        })
    }

    /// Key types recorded for the host, in file order, so the handshake asks for a key we
    /// can verify rather than one we have never seen.
    pub fn key_types(&self, host: &str, port: u16) -> Vec<String> {
        let name = host_name(host, port);
        let mut types: Vec<String> = Vec::new();
        for e in self.matching(&name) {
            if e.marker == Marker::None && !types.contains(&e.key_type) {
                types.push(e.key_type.clone());
            }
        }
        types
    }
}

fn origin(e: &KnownHost) -> String {
    format!("`{}` line {}", e.file.display(), e.line)
}

fn parse_line(file: &Path, line: usize, raw: &str) -> Option<KnownHost> {
    let text = raw.trim();
    if text.is_empty() || text.starts_with('#') {
        return None;
    }
    let mut words = text.split_whitespace();
    let mut first = words.next()?;
    let marker = match first {
        "@revoked" => Marker::Revoked,
        "@cert-authority" => Marker::CertAuthority,
        w if w.starts_with('@') => return None,
        _ => Marker::None,
    };
    if marker != Marker::None {
        first = words.next()?;
    }
    let key_type = words.next()?;
    let key_blob = words.next()?;
    Some(KnownHost {
        file: file.to_owned(),
        line,
        marker,
        patterns: first.to_owned(),
        key_type: key_type.to_owned(),
        key_blob: key_blob.to_owned(),
    })
}

/// The name a host is recorded under: `host` on port 22, `[host]:port` elsewhere, in
/// lowercase as `ssh` looks names up and records them (a hashed entry is of the lowercase
/// name).
pub fn host_name(host: &str, port: u16) -> String {
    let host = host.to_ascii_lowercase();
    if port == 22 {
        host
    } else {
        format!("[{host}]:{port}")
    }
}

/// The line to add to known_hosts for a key.
pub fn line_for(host: &str, port: u16, key_type: &str, key_blob: &str) -> String {
    format!("{} {key_type} {key_blob}", host_name(host, port))
}

/// OpenSSH's fingerprint: `SHA256:` + unpadded base64 of the SHA-256 of the key blob.
pub fn fingerprint(key_blob: &str) -> String {
    match STANDARD.decode(key_blob) {
        Ok(bytes) => format!(
            "SHA256:{}",
            STANDARD_NO_PAD.encode(sha2::Sha256::digest(&bytes))
        ),
        Err(_) => "SHA256:(invalid key data)".to_owned(),
    }
}

/// The key type a base64 key blob names in its first field, `None` when it is not one.
fn blob_type(key_blob: &str) -> Option<String> {
    let bytes = STANDARD.decode(key_blob).ok()?;
    let len = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    let name = bytes.get(4..4usize.checked_add(len)?)?;
    String::from_utf8(name.to_vec()).ok()
}

fn patterns_match(patterns: &str, name: &str) -> bool {
    if let Some(hashed) = patterns.strip_prefix("|1|") {
        return hashed_match(hashed, name);
    }
    pattern::list(patterns.split(','), name, true)
}

fn hashed_match(hashed: &str, name: &str) -> bool {
    let Some((salt, hash)) = hashed.split_once('|') else {
        return false;
    };
    let (Ok(salt), Ok(hash)) = (STANDARD.decode(salt), STANDARD.decode(hash)) else {
        return false;
    };
    let Ok(mut mac) = <Hmac<sha1::Sha1> as KeyInit>::new_from_slice(&salt) else {
        return false;
    };
    mac.update(name.as_bytes());
    mac.verify_slice(&hash).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    // ssh-keygen -t ed25519 output blobs (public keys only; no secrets here)
    const K1: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
    const K2: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIBZ0Q8SDw4ZR3zjZkW6YnVIA8cS4+ZJ5JtK0R5NLhGYh";
    // Blobs that hold only their type name: enough for matching, not real keys.
    const RSA: &str = "AAAAB3NzaC1yc2E=";
    const ECDSA: &str = "AAAAE2VjZHNhLXNoYTItbmlzdHAyNTY=";

    fn trusted(origin: &str) -> Verdict {
        Verdict::Trusted {
            origin: origin.to_owned(),
        }
    }

    fn kh(text: &str) -> KnownHosts {
        let mut k = KnownHosts::default();
        k.add_file(Path::new("kh"), text);
        k
    }

    #[test]
    fn plain_and_bracketed_entries() {
        let k = kh(&format!(
            "# c\n\n10.0.0.5 ssh-ed25519 {K1}\n[127.0.0.1]:2222 ssh-ed25519 {K2}\n"
        ));
        assert_eq!(
            k.check("10.0.0.5", 22, "ssh-ed25519", K1),
            trusted("`kh` line 3")
        );
        assert_eq!(
            k.check("127.0.0.1", 2222, "ssh-ed25519", K2),
            trusted("`kh` line 4")
        );
        assert_eq!(
            k.check("127.0.0.1", 22, "ssh-ed25519", K2),
            Verdict::Unknown { unused: vec![] }
        );
        assert_eq!(
            k.check("10.0.0.5", 22, "ssh-ed25519", K2),
            Verdict::Changed {
                expected: format!("ssh-ed25519 {}", fingerprint(K1)),
                origin: "`kh` line 3".into(),
                unused: vec![],
            }
        );
    }

    #[test]
    fn any_matching_entry_is_enough_and_is_named() {
        // A stale entry, then the good one, tab-separated: trusted by line 3.
        let k = kh(&format!(
            "h ssh-ed25519 {K2}\n# rotated\nh\tssh-ed25519\t{K1}\n"
        ));
        assert_eq!(k.check("h", 22, "ssh-ed25519", K1), trusted("`kh` line 3"));
    }

    #[test]
    fn later_files_are_searched_too() {
        let mut k = kh(&format!("other ssh-ed25519 {K2}\n"));
        k.add_file(
            Path::new("/etc/ssh/ssh_known_hosts"),
            &format!("h ssh-ed25519 {K1}\n"),
        );
        assert_eq!(
            k.check("h", 22, "ssh-ed25519", K1),
            trusted("`/etc/ssh/ssh_known_hosts` line 1")
        );
    }

    #[test]
    fn certificate_authorities_match_by_pattern_and_key() {
        let k = kh(&format!(
            "@cert-authority *.example.com,[127.0.0.1]:* ssh-ed25519 {K1}\nplain ssh-ed25519 {K2}\n"
        ));
        assert!(k.has_authority("web.example.com", 22));
        assert!(k.has_authority("127.0.0.1", 2222));
        assert!(!k.has_authority("plain", 22));
        assert_eq!(
            k.authority("web.example.com", 22, "ssh-ed25519", K1),
            trusted("the @cert-authority entry at `kh` line 1")
        );
        assert_eq!(
            k.authority("web.example.com", 22, "ssh-ed25519", K2),
            Verdict::Unknown { unused: vec![] }
        );
        // An authority is not a host key: its key alone does not trust a host.
        assert_eq!(
            k.check("web.example.com", 22, "ssh-ed25519", K1),
            Verdict::Unknown { unused: vec![] }
        );
        let revoked = kh(&format!(
            "@cert-authority * ssh-ed25519 {K1}\n@revoked * ssh-ed25519 {K1}\n"
        ));
        assert!(matches!(
            revoked.authority("h", 22, "ssh-ed25519", K1),
            Verdict::Revoked { .. }
        ));
    }

    #[test]
    fn hashed_entries_match() {
        // `ssh-keygen -H` of "[127.0.0.1]:2222": HMAC-SHA1 with this salt.
        let salt = STANDARD.decode("uYHOaVcfRDXAdM4x6zMbMb8WwXo=").unwrap();
        let mut mac = <Hmac<sha1::Sha1> as KeyInit>::new_from_slice(&salt).unwrap();
        mac.update(b"[127.0.0.1]:2222");
        let hash = STANDARD.encode(mac.finalize().into_bytes());
        let k = kh(&format!(
            "|1|uYHOaVcfRDXAdM4x6zMbMb8WwXo=|{hash} ssh-ed25519 {K1}\n"
        ));
        assert_eq!(
            k.check("127.0.0.1", 2222, "ssh-ed25519", K1),
            trusted("`kh` line 1")
        );
        assert_eq!(
            k.check("127.0.0.1", 2223, "ssh-ed25519", K1),
            Verdict::Unknown { unused: vec![] }
        );
    }

    #[test]
    fn names_are_looked_up_in_lowercase() {
        // What `ssh` records (Debian hashes by default) for `ssh -p 2222 Web.Example`: the
        // HMAC of the lowercase name.
        let salt = STANDARD.decode("uYHOaVcfRDXAdM4x6zMbMb8WwXo=").unwrap();
        let mut mac = <Hmac<sha1::Sha1> as KeyInit>::new_from_slice(&salt).unwrap();
        mac.update(b"[web.example]:2222");
        let hash = STANDARD.encode(mac.finalize().into_bytes());
        let k = kh(&format!(
            "|1|uYHOaVcfRDXAdM4x6zMbMb8WwXo=|{hash} ssh-ed25519 {K1}\nDB.Example ssh-ed25519 {K2}\n"
        ));
        assert_eq!(
            k.check("Web.Example", 2222, "ssh-ed25519", K1),
            trusted("`kh` line 1")
        );
        assert_eq!(
            k.check("db.EXAMPLE", 22, "ssh-ed25519", K2),
            trusted("`kh` line 2")
        );
        assert_eq!(
            line_for("Web.Example", 2222, "ssh-ed25519", K1),
            format!("[web.example]:2222 ssh-ed25519 {K1}")
        );
    }

    #[test]
    fn another_port_falls_back_to_the_entry_without_a_port_as_openssh_does() {
        let k = kh(&format!("web.example.com ssh-ed25519 {K1}\n"));
        match k.check("web.example.com", 2222, "ssh-ed25519", K1) {
            Verdict::Trusted { origin } => assert_eq!(
                origin,
                "`kh` line 1 (the entry for `web.example.com`: no entry names `[web.example.com]:2222`, so the one without a port counts, as in OpenSSH)"
            ),
            other => panic!("{other:?}"),
        }
        // Another key without a port does not make the key "changed": unknown, and said why.
        match k.check("web.example.com", 2222, "ssh-ed25519", K2) {
            Verdict::Unknown { unused } => assert_eq!(
                unused,
                [format!(
                    "`kh` line 1 records another key for `web.example.com` (ssh-ed25519 {}); an entry without a port stands in for `[web.example.com]:2222` only when it holds the key offered",
                    fingerprint(K1)
                )]
            ),
            other => panic!("{other:?}"),
        }
        // Entries for `[host]:port` of its own: the one without a port is not used.
        let k = kh(&format!(
            "[web.example.com]:2222 ssh-ed25519 {K2}\nweb.example.com ssh-ed25519 {K1}\n"
        ));
        match k.check("web.example.com", 2222, "ssh-ed25519", K1) {
            Verdict::Changed { origin, unused, .. } => {
                assert_eq!(origin, "`kh` line 1");
                assert_eq!(
                    unused,
                    [
                        "`kh` line 2 has this key for `web.example.com`, but it is not used: entries for `[web.example.com]:2222` exist, and OpenSSH falls back to the name without a port only when none does"
                    ]
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_authority_for_a_domain_covers_every_port() {
        let k = kh(&format!("@cert-authority *.example.com ssh-ed25519 {K1}\n"));
        assert!(k.has_authority("web.example.com", 2222));
        assert_eq!(
            k.authority("web.example.com", 2222, "ssh-ed25519", K1),
            trusted("the @cert-authority entry at `kh` line 1")
        );
        assert!(!k.has_authority("web.example.org", 2222));
    }

    #[test]
    fn revoked_host_keys_files_refuse_their_keys_everywhere() {
        let mut k = kh(&format!("h ssh-ed25519 {K1}\n[h]:2222 ssh-ed25519 {K2}\n"));
        k.add_revoked_keys(
            Path::new("/etc/ssh/revoked"),
            Some(format!("# old keys\nssh-ed25519 {K1} old-host\n").as_bytes()),
        );
        assert_eq!(
            k.check("h", 22, "ssh-ed25519", K1),
            Verdict::Revoked {
                origin: "`/etc/ssh/revoked` line 2".into()
            }
        );
        assert!(matches!(
            k.check("h", 2222, "ssh-ed25519", K2),
            Verdict::Trusted { .. }
        ));
        assert_eq!(k.unusable(), None);
        let mut missing = KnownHosts::default();
        missing.add_revoked_keys(Path::new("/nope"), None);
        assert!(missing.unusable().unwrap().contains("cannot be read"));
        let mut krl = KnownHosts::default();
        krl.add_revoked_keys(Path::new("/krl"), Some(b"SSHKRL\n\0\x01\x02"));
        assert!(
            krl.unusable()
                .unwrap()
                .contains("key revocation list (KRL)")
        );
    }

    #[test]
    fn wildcards_and_negation() {
        let k = kh(&format!(
            "*.example.com,!bad.example.com ssh-ed25519 {K1}\n"
        ));
        assert_eq!(
            k.check("web.example.com", 22, "ssh-ed25519", K1),
            trusted("`kh` line 1")
        );
        assert_eq!(
            k.check("bad.example.com", 22, "ssh-ed25519", K1),
            Verdict::Unknown { unused: vec![] }
        );
    }

    #[test]
    fn revoked_beats_trusted() {
        let k = kh(&format!(
            "h ssh-ed25519 {K1}\n@revoked * ssh-ed25519 {K1}\n"
        ));
        assert!(matches!(
            k.check("h", 22, "ssh-ed25519", K1),
            Verdict::Revoked { .. }
        ));
    }

    #[test]
    fn key_types_follow_the_file() {
        let k = kh(&format!(
            "h ssh-rsa {RSA}\nh ssh-ed25519 {K1}\nother ecdsa-sha2-nistp256 {ECDSA}\n"
        ));
        assert_eq!(k.key_types("h", 22), vec!["ssh-rsa", "ssh-ed25519"]);
    }

    #[test]
    fn a_changed_key_is_blamed_on_the_entry_of_its_type() {
        let k = kh(&format!(
            "h ssh-rsa {RSA}\nh ecdsa-sha2-nistp256 {ECDSA}\nh ssh-ed25519 {K1}\n"
        ));
        match k.check("h", 22, "ssh-ed25519", K2) {
            Verdict::Changed {
                origin, expected, ..
            } => {
                assert_eq!(origin, "`kh` line 3");
                assert_eq!(expected, format!("ssh-ed25519 {}", fingerprint(K1)));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_line_whose_key_is_not_of_its_type_is_skipped_and_named() {
        // The ed25519 key under an `ssh-rsa` label: OpenSSH cannot read the line.
        let k = kh(&format!("h ssh-rsa {K1}\nh ssh-ed25519 not-base64\n"));
        assert_eq!(k.key_types("h", 22), Vec::<String>::new());
        match k.check("h", 22, "ssh-ed25519", K1) {
            Verdict::Unknown { unused } => assert_eq!(
                unused,
                [
                    "`kh` line 1 says `ssh-rsa` but holds an `ssh-ed25519` key, so it is skipped, as OpenSSH skips it",
                    "`kh` line 2 holds no readable key, so it is skipped, as OpenSSH skips it",
                ]
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn fingerprint_matches_openssh() {
        // ssh-keygen -lf of the K1 key prints this fingerprint.
        assert!(fingerprint(K1).starts_with("SHA256:"));
        assert_eq!(fingerprint(K1).len(), "SHA256:".len() + 43);
    }
}

//! OpenSSH's host and user patterns, shared by `ssh_config` (`Host`, `Match`) and known_hosts:
//! `*` matches any run of characters, `?` exactly one, and a pattern list matches when some
//! pattern does and no `!`-negated one does.

/// Whether `text` matches `pattern` (`*`, `?`; everything else matches itself).
pub fn wildcard(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    let (mut p, mut t) = (0, 0);
    // Where the last `*` was and how much text it has swallowed so far, to backtrack to.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == '?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == '*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((star_p, star_t)) = star {
            p = star_p + 1;
            t = star_t + 1;
            star = Some((star_p, star_t + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

/// OpenSSH's pattern-list rule: true when some pattern matches `subject` and no `!`-negated
/// one does. Host names compare case-insensitively (`fold_case`: ssh lowercases them); user
/// names do not.
pub fn list<'p>(
    patterns: impl IntoIterator<Item = &'p str>,
    subject: &str,
    fold_case: bool,
) -> bool {
    let subject = if fold_case {
        subject.to_lowercase()
    } else {
        subject.to_owned()
    };
    let mut positive = false;
    for pattern in patterns {
        let (negated, pattern) = match pattern.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, pattern),
        };
        let matched = if fold_case {
            wildcard(&pattern.to_lowercase(), &subject)
        } else {
            wildcard(pattern, &subject)
        };
        if matched && negated {
            return false;
        }
        positive |= matched;
    }
    positive
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(wildcard("web-?", "web-1"));
        assert!(!wildcard("web-?", "web-10"));
        assert!(wildcard("*.example.com", "a.b.example.com"));
        assert!(wildcard("[127.0.0.1]:*", "[127.0.0.1]:2222"));
        assert!(!wildcard("*.example.com", "example.com"));
        assert!(wildcard("a*b*c", "aXbYbZc"));
        assert!(wildcard("**", ""));
    }

    #[test]
    fn lists_negation_and_case() {
        assert!(list(["*", "!bastion"], "web", true));
        assert!(!list(["*", "!bastion"], "bastion", true));
        assert!(
            !list(["!bastion"], "web", true),
            "a negation alone matches nothing"
        );
        assert!(list(["WEB-*"], "web-1", true));
        assert!(!list(["Deploy"], "deploy", false));
    }
}

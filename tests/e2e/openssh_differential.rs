//! Differential test against OpenSSH itself (the client installed here, 9.2 on this
//! project's machines): a generated corpus of `~/.ssh/config` cases, each resolved by
//! `ssh -G` and by shipit's own resolver (the library: `SshConfig` + `Resolver`), compared
//! field by field; then known_hosts cases, each tried by a real `ssh` login and by
//! `shipit check` against the same real sshd host.
//!
//! OpenSSH takes `~` from the password database, not `$HOME`: every `ssh` here runs in a
//! private mount namespace with the case's home bind-mounted over `/root` (the tests run as
//! root), so `~`, `%d` and relative `Include`s point at the case's files; shipit's paths,
//! under the case's real directory, are compared with that directory written as `/root`.
//!
//! Where shipit differs on purpose, the case names the difference from [`DIFFERENCES`], the
//! test checks that the difference still shows (so the list stays true) and that the README
//! says it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use shipit::ssh::config::{HostConfig, Local, SshConfig};
use shipit::ssh::reach::{Reach, Resolver};

use crate::common::*;
use crate::support::{Fleet, FleetOptions, HostCa, clean_command};

/// A deliberate difference from OpenSSH, and the README text that documents it.
struct Difference {
    id: &'static str,
    what: &'static str,
    readme: &'static str,
}

const PROXY_COMMAND: Difference = Difference {
    id: "proxy-command",
    what: "a `ProxyCommand` is refused: shipit runs no local command",
    readme: "A host behind a `ProxyCommand`, or a chain of jump hosts, is refused before anything connects",
};
const JUMP_CHAIN: Difference = Difference {
    id: "jump-chain",
    what: "a `ProxyJump` of several hops is refused: shipit tunnels through one",
    readme: "A host behind a `ProxyCommand`, or a chain of jump hosts, is refused before anything connects",
};
const JUMP_SELF: Difference = Difference {
    id: "jump-self",
    what: "a jump host whose own `ProxyJump` names itself (a `Host *` block's) is reached directly; `ssh` stops with \"jumphost loop\" (or loops)",
    readme: "a jump host whose own `ProxyJump` names itself (as a `Host *` block's does) is reached directly, where `ssh` stops with \"jumphost loop\"",
};
const MATCH_EXEC: Difference = Difference {
    id: "match-exec",
    what: "`Match exec` is never run: its block is skipped with a note",
    readme: "`exec`, and `localnetwork`, `tagged`, `version`, `sessiontype`, `command` of later OpenSSH versions, are never run: their block is skipped with a note",
};
const LATER_CRITERIA: Difference = Difference {
    id: "later-match-criteria",
    what: "`Match` criteria of later OpenSSH versions are skipped with a note; 9.2 refuses them",
    readme: "`exec`, and `localnetwork`, `tagged`, `version`, `sessiontype`, `command` of later OpenSSH versions, are never run: their block is skipped with a note",
};
const LATER_KEYWORDS: Difference = Difference {
    id: "later-keywords",
    what: "keywords of later OpenSSH versions are accepted; 9.2 refuses them",
    readme: "every keyword of OpenSSH 9.2, Debian's GSSAPI ones and those added since are accepted",
};
const APPLE_KEYWORD: Difference = Difference {
    id: "apple-usekeychain",
    what: "macOS's `UseKeychain` is accepted; OpenSSH elsewhere refuses it",
    readme: "and macOS's `UseKeychain`",
};
const REVOCATION_LIST: Difference = Difference {
    id: "krl",
    what: "a `RevokedHostKeys` file in KRL form is refused (shipit reads lists of keys only)",
    readme: "a key revocation list (KRL) there is refused: shipit cannot read one",
};
const CONNECT_TIMEOUT_ZERO: Difference = Difference {
    id: "connect-timeout-zero",
    what: "`ConnectTimeout 0` (no timeout) keeps shipit's own bound",
    readme: "`0`, OpenSSH's \"no timeout\", is ignored with a note: shipit always bounds a connection attempt",
};
const KEEPALIVE_ZERO: Difference = Difference {
    id: "keepalive-zero",
    what: "`ServerAliveInterval 0` keeps shipit's keepalives",
    readme: "`ServerAliveInterval` (`0` is ignored: shipit keeps its keepalives)",
};

/// Compared nowhere, by design, and why (each also in the README).
const NOT_COMPARED: [Difference; 5] = [
    Difference {
        id: "known-hosts-command",
        what: "`KnownHostsCommand` and `VerifyHostKeyDNS` are not used",
        readme: "`KnownHostsCommand` and `VerifyHostKeyDNS` are not used (no local command, no DNS): a key only they vouch for is unknown to shipit",
    },
    Difference {
        id: "default-user",
        what: "without `User` or `ssh.user` the target's user is root; `ssh` takes the local user (the same here: the tests run as root)",
        readme: "without a `User` (nor `ssh.user`) the target's user is `root`, where `ssh` takes the local user",
    },
    Difference {
        id: "canonical-domains",
        what: "`CanonicalizeHostname` with `CanonicalDomains` makes `ssh` look names up in DNS; shipit never does (the cases here stay off the network)",
        readme: "shipit looks no name up in DNS: `CanonicalDomains` are not tried, the name stays as written",
    },
    Difference {
        id: "default-keys",
        what: "without `IdentityFile` (and without `IdentitiesOnly yes`) shipit offers the agent's keys, then `~/.ssh/id_{ed25519,ecdsa,rsa}`; `ssh -G` lists OpenSSH's seven default files",
        readme: "otherwise ssh-agent (`$SSH_AUTH_SOCK`) and `~/.ssh/id_{ed25519,ecdsa,rsa}`",
    },
    Difference {
        id: "default-timeouts",
        what: "where the config sets no `ConnectTimeout`/`ServerAliveInterval`, shipit's inventory defaults apply (OpenSSH: none)",
        readme: "`ssh.connect_timeout` bounds TCP, handshake and auth together; keepalives every `ssh.keepalive_interval` detect a dead host",
    },
];

const ALL_DIFFERENCES: [&Difference; 10] = [
    &REVOCATION_LIST,
    &APPLE_KEYWORD,
    &PROXY_COMMAND,
    &JUMP_CHAIN,
    &JUMP_SELF,
    &MATCH_EXEC,
    &LATER_CRITERIA,
    &LATER_KEYWORDS,
    &CONNECT_TIMEOUT_ZERO,
    &KEEPALIVE_ZERO,
];

/// One config case: files under the case's `~/.ssh` (the first is `config`) and the alias
/// typed.
struct Case {
    name: String,
    files: Vec<(String, String)>,
    alias: String,
    /// The inventory's `ssh.user` and `hosts.port`: `ssh -l` and `-p`.
    login: Option<&'static str>,
    port: Option<u16>,
    differs: Option<&'static Difference>,
}

fn case(name: impl Into<String>, config: impl Into<String>, alias: &str) -> Case {
    Case {
        name: name.into(),
        files: vec![("config".to_owned(), config.into())],
        alias: alias.to_owned(),
        login: None,
        port: None,
        differs: None,
    }
}

impl Case {
    fn with(mut self, file: &str, text: &str) -> Case {
        self.files.push((file.to_owned(), text.to_owned()));
        self
    }

    fn login(mut self, user: Option<&'static str>, port: Option<u16>) -> Case {
        self.login = user;
        self.port = port;
        self
    }

    fn differs(mut self, difference: &'static Difference) -> Case {
        self.differs = Some(difference);
        self
    }
}

/// The corpus: generated combinations of patterns, aliases, `Match` forms and tokens, then
/// hand-written cases for includes, ports, times, keys, jumps and errors.
fn corpus() -> Vec<Case> {
    let mut cases = Vec::new();

    // Host patterns (case, wildcards, negation, lists) against aliases.
    let patterns = [
        "web",
        "WEB",
        "w*",
        "W*",
        "web?",
        "*",
        "!web *",
        "* !web",
        "web,db",
        "*.example.com",
        "!*.example.com *",
        "db web",
        "?eb",
    ];
    let aliases = [
        "web",
        "WEB",
        "web1",
        "db",
        "a.example.com",
        "A.Example.COM",
        "10.0.0.5",
    ];
    for pattern in patterns {
        for alias in aliases {
            cases.push(case(
                format!("Host {pattern} / {alias}"),
                format!("Host {pattern}\n  Port 2200\n  User u1\nHost *\n  User u2\n"),
                alias,
            ));
        }
    }

    // Match criteria, with a HostName set before them.
    let criteria = [
        "host web.internal",
        "host WEB.INTERNAL",
        "host web",
        "originalhost web",
        "originalhost W*",
        "!host web.internal",
        "user root",
        "user u*",
        "!user root",
        "localuser root",
        "localuser nobody",
        "all",
        "canonical",
        "!canonical",
        "final",
        "!final",
        "final host web.internal",
        "host web.internal !originalhost x",
        "host=web.internal",
        "host \"web.*,!x\"",
    ];
    for criterion in criteria {
        for alias in ["web", "WEB", "x"] {
            cases.push(case(
                format!("Match {criterion} / {alias}"),
                format!(
                    "Host web WEB\n  HostName Web.Internal\nMatch {criterion}\n  Port 2201\n  User matched\n  IdentityFile ~/.ssh/matched\nHost web.internal\n  ConnectTimeout 9\nHost *\n  IdentityFile ~/.ssh/all\n"
                ),
                alias,
            ));
        }
    }

    // Every token in UserKnownHostsFile (`ssh -G` prints it expanded), for a plain host and
    // one with everything set.
    for token in ["C", "d", "h", "i", "k", "L", "l", "n", "p", "r", "u", "%"] {
        for (alias, extra) in [
            ("plain", ""),
            (
                "full",
                "  HostName Full.Example\n  User deploy\n  Port 2222\n  HostKeyAlias Pool-A\n",
            ),
        ] {
            cases.push(case(
                format!("token %{token} / {alias}"),
                format!("Host full\n{extra}Host *\n  UserKnownHostsFile ~/.ssh/kh-%{token}-x /abs/%{token}\n"),
                alias,
            ));
        }
    }
    cases.push(case(
        "environment reference",
        "Host *\n  UserKnownHostsFile ${HOME}/kh-${PATH}\n",
        "web",
    ));
    cases.push(case(
        "unset environment variable",
        "Host *\n  UserKnownHostsFile ${NOT_SET_HERE}/kh\n",
        "web",
    ));
    cases.push(case(
        "unclosed environment reference",
        "Host *\n  UserKnownHostsFile ${HOME/kh\n",
        "web",
    ));
    cases.push(case(
        "GlobalKnownHostsFile takes no token",
        "Host *\n  GlobalKnownHostsFile ~/g /etc/kh-%h\n  UserKnownHostsFile none\n",
        "web",
    ));
    cases.push(case(
        "HostName tokens",
        "Host *.lan\n  HostName %h.corp.example\nHost lit\n  HostName 100%%.example\n",
        "db.lan",
    ));
    cases.push(case(
        "HostName bad token applies",
        "Host web\n  HostName %p.example\n",
        "web",
    ));
    cases.push(case(
        "HostName bad token elsewhere",
        "Host other\n  HostName %p.example\nHost *\n  Port 2\n",
        "web",
    ));

    // CanonicalizeHostname asks for the second pass too (no `CanonicalDomains`: no DNS).
    for (alias, config) in [
        (
            "web",
            "CanonicalizeHostname yes\nMatch canonical\n  Port 1\nHost web\n  HostName Web.X\nHost web.x\n  User final\n",
        ),
        (
            "web",
            "Host web\n  HostName Web.X\nHost web.x\n  CanonicalizeHostname always\nMatch canonical\n  Port 1\n",
        ),
        (
            "web",
            "CanonicalizeHostname no\nMatch canonical\n  Port 1\n",
        ),
        (
            "WEB",
            "Host WEB\n  CanonicalizeHostname always\nHost web\n  User lowered\n",
        ),
        ("web", "Host web\n  CanonicalizeHostname maybe\n"),
    ] {
        cases.push(case(
            format!("CanonicalizeHostname / {config:?}"),
            config,
            alias,
        ));
    }

    // Include, with globs, relative and `~` paths, inside a block, nested.
    cases.push(
        case(
            "Include glob in order",
            "Include conf.d/*\nHost *\n  User fallback\n",
            "web",
        )
        .with("conf.d/20-b", "Host web\n  Port 20\n  User twenty\n")
        .with("conf.d/10-a", "Host w*\n  Port 10\n")
        .with("conf.d/.hidden", "Port 99\n"),
    );
    cases.push(
        case(
            "Include inside a Host block",
            "Host web\n  Include inc\nHost *\n  Port 22\n",
            "web",
        )
        .with("inc", "Port 2222\nHost other\n  User leaked\n"),
    );
    cases.push(
        case(
            "Include inside a Host block, other host",
            "Host web\n  Include inc\nHost *\n  Port 22\n",
            "db",
        )
        .with("inc", "Port 2222\nHost db\n  User leaked\n"),
    );
    cases.push(
        case(
            "Include with tilde and nesting",
            "Include ~/.ssh/one missing-file\n",
            "web",
        )
        .with("one", "Include two\nHost web\n  User one\n")
        .with("two", "Host web\n  Port 2\n"),
    );
    cases.push(
        case(
            "Match final inside an include that does not apply",
            "Host other\n  Include inc\nHost web.internal\n  Port 7\nHost web\n  HostName web.internal\n",
            "web",
        )
        .with("inc", "Match final\n  User never\n"),
    );

    // Ports, times, flags.
    for (value, ok) in [
        ("ssh", true),
        ("2222", true),
        ("0", false),
        ("abc", false),
        ("65536", false),
    ] {
        let _ = ok;
        cases.push(case(
            format!("Port {value} applies"),
            format!("Host web\n  Port {value}\n"),
            "web",
        ));
        cases.push(case(
            format!("Port {value} elsewhere"),
            format!("Host other\n  Port {value}\n"),
            "web",
        ));
    }
    for value in ["5", "1m", "none", "abc", "-1"] {
        cases.push(case(
            format!("ConnectTimeout {value}"),
            format!("Host web\n  ConnectTimeout {value}\nHost *\n  ConnectTimeout 8\n"),
            "web",
        ));
    }
    cases.push(
        case("ConnectTimeout 0", "Host web\n  ConnectTimeout 0\n", "web")
            .differs(&CONNECT_TIMEOUT_ZERO),
    );
    cases.push(case(
        "ConnectTimeout 0 elsewhere",
        "Host other\n  ConnectTimeout 0\nHost *\n  ConnectTimeout 4\n",
        "web",
    ));
    cases.push(case(
        "ServerAliveInterval",
        "Host web\n  ServerAliveInterval 30\n",
        "web",
    ));
    cases.push(
        case(
            "ServerAliveInterval 0",
            "Host web\n  ServerAliveInterval 0\n",
            "web",
        )
        .differs(&KEEPALIVE_ZERO),
    );
    cases.push(case(
        "IdentitiesOnly maybe",
        "Host web\n  IdentitiesOnly maybe\n",
        "web",
    ));

    // Keys.
    cases.push(case(
        "IdentityFile accumulates and repeats count once",
        "Host web\n  IdentityFile ~/.ssh/a\n  IdentityFile /k/b\n  IdentityFile ~/.ssh/a\nHost *\n  IdentityFile ~/.ssh/a\n  IdentityFile ~/.ssh/c\n",
        "web",
    ));
    cases.push(case(
        "IdentitiesOnly without IdentityFile",
        "Host web\n  IdentitiesOnly yes\n",
        "web",
    ));
    cases.push(case(
        "IdentityFile2 is IdentityFile",
        "Host web\n  IdentityFile2 ~/.ssh/old\n",
        "web",
    ));

    // Letter case and HostKeyAlias.
    cases.push(case(
        "HostKeyAlias is lowercased",
        "Host web\n  HostKeyAlias MiXed-Alias\n  HostName DB.Example.COM\n",
        "web",
    ));
    cases.push(case(
        "IPv6 HostName kept as written",
        "Host web\n  HostName FE80::1\n",
        "web",
    ));
    cases.push(case(
        "Keywords in any case",
        "HOST web\n  PORT 2202\n",
        "web",
    ));
    cases.push(case(
        "equals sign and quotes",
        "Host=web\n  User = \"quoted\"\n  UserKnownHostsFile \"/a b/kh\" /c\n",
        "web",
    ));

    // Jumps.
    let jump_config = "Host inner\n  HostName Inner.Lan\n  User deploy\n  Port 2222\n  ProxyJump gate\nHost gate\n  HostName 192.0.2.1\n  Port 2022\n  HostKeyAlias Bastion\nHost tok\n  HostName tok.lan\n  User bob\n  ProxyJump %r@gw-%h:22\nHost gw-tok.lan\n  Port 2023\nHost spec\n  ProxyJump ssh://jumper@gate:2100\nHost none\n  ProxyJump none\nHost * !gw-*\n  ProxyJump gate\n";
    for alias in ["inner", "tok", "spec", "none", "other", "gate"] {
        cases.push(case(format!("ProxyJump / {alias}"), jump_config, alias));
    }
    cases.push(
        case(
            "ProxyJump through a jump host with a jump of its own",
            "Host web\n  ProxyJump gate\nHost gate\n  ProxyJump outer\n",
            "web",
        )
        .differs(&JUMP_CHAIN),
    );
    cases.push(case("ProxyJump chain", "Host web\n  ProxyJump a,b\n", "web").differs(&JUMP_CHAIN));
    cases.push(
        case("ProxyCommand", "Host web\n  ProxyCommand nc %h %p\n", "web").differs(&PROXY_COMMAND),
    );
    cases.push(case(
        "ProxyJump before ProxyCommand",
        "Host web\n  ProxyJump gate\n  ProxyCommand nc %h %p\n",
        "web",
    ));
    cases.push(case(
        "ProxyCommand none",
        "Host web\n  ProxyCommand none\n",
        "web",
    ));
    cases.push(case(
        "ProxyJump bad port",
        "Host other\n  ProxyJump gate:%p\n",
        "web",
    ));

    // With the system file: read after the user's, `Host *` there as defaults; an `Include`
    // in it is relative to /etc/ssh and may not start with `~`.
    cases.push(
        case(
            "system file after the user's",
            "Host web\n  Port 2300\n",
            "web",
        )
        .with(
            "/etc/ssh/ssh_config",
            "Host *\n  Port 22\n  User sysuser\n  IdentityFile ~/.ssh/sys\n",
        ),
    );
    cases.push(
        case(
            "system file Match final",
            "Host web\n  HostName Web.Lan\n",
            "web",
        )
        .with(
            "/etc/ssh/ssh_config",
            "Match final host web.lan\n  Port 2301\n",
        ),
    );
    cases.push(
        case(
            "system file Include with ~",
            "Host web\n  Port 2302\n",
            "web",
        )
        .with("/etc/ssh/ssh_config", "Include ~/.ssh/other\n")
        .with("other", "User fromtilde\n"),
    );
    cases.push(
        case("system file with a typo", "Host web\n  Port 2303\n", "web")
            .with("/etc/ssh/ssh_config", "Host *\n  SendEnvv LANG\n"),
    );

    // Odds and ends of the syntax.
    for (name, config, alias) in [
        (
            "comment after patterns",
            "Host web # the web host\n  Port 2203\n",
            "web",
        ),
        ("quoted pattern", "Host \"web\" 'db'\n  Port 2204\n", "db"),
        ("tab and equals", "Host\tweb\nPort=2205\n", "web"),
        ("User with a token", "Host web\n  User %h-x\n", "web"),
        ("User with @", "Host web\n  User a@b\n", "web"),
        (
            "Host with only a negation",
            "Host !db\n  Port 2206\n",
            "web",
        ),
        (
            "empty Include glob",
            "Include nothing-*.conf\nHost web\n  Port 2207\n",
            "web",
        ),
        (
            "absolute Include",
            "Include /nonexistent/ssh/*.conf\nHost web\n  Port 2208\n",
            "web",
        ),
        (
            "HostName is an address",
            "Host web\n  HostName 192.0.2.7\n",
            "web",
        ),
        ("alias is an IPv6 address", "Host ::1\n  Port 2209\n", "::1"),
        (
            "first HostName wins",
            "Host web\n  HostName one.example\nHost *\n  HostName two.example\n",
            "web",
        ),
        (
            "Match host after HostName with %h",
            "Host web\n  HostName %h.lan\nMatch host web.lan\n  User viahost\n",
            "web",
        ),
        (
            "Match user after User",
            "Host web\n  User deploy\nMatch user deploy\n  Port 2210\n",
            "web",
        ),
        (
            "jump host port from the hop beats its config",
            "Host web\n  ProxyJump gate:2300\nHost gate\n  Port 2301\n  User gateuser\n",
            "web",
        ),
        (
            "jump host user from the hop",
            "Host web\n  ProxyJump ops@gate\nHost gate\n  User gateuser\n",
            "web",
        ),
        (
            "jump host with IPv6 address",
            "Host web\n  ProxyJump [2001:db8::1]:2222\n",
            "web",
        ),
        (
            "IdentityFile with tokens kept raw",
            "Host web\n  IdentityFile ~/.ssh/%r@%h\n  User deploy\n",
            "web",
        ),
        (
            "UserKnownHostsFile several, then none elsewhere",
            "Host web\n  UserKnownHostsFile ~/a ~/b\nHost *\n  UserKnownHostsFile none\n",
            "web",
        ),
        (
            "GlobalKnownHostsFile none",
            "Host web\n  GlobalKnownHostsFile none\n",
            "web",
        ),
    ] {
        cases.push(case(name, config, alias));
    }

    cases.extend(random_cases(400));

    // The inventory's `ssh.user` and port, as `ssh -l` and `-p`: they beat the config, and
    // `Match user` tests the given user.
    let given = "Match user deploy\n  HostName matched.lan\nHost web\n  User cfg\n  Port 2200\n  ProxyJump %r@gate\nHost gate\n  Port 2022\n";
    for (login, port) in [
        (Some("deploy"), None),
        (Some("ops"), Some(2300)),
        (None, Some(2301)),
    ] {
        cases.push(
            case(
                format!("inventory user {login:?} port {port:?}"),
                given,
                "web",
            )
            .login(login, port),
        );
    }

    // Errors and what is not one.
    cases.push(case(
        "misspelt keyword elsewhere",
        "Host other\n  IdentitiyFile ~/k\n",
        "web",
    ));
    cases.push(case(
        "IgnoreUnknown",
        "IgnoreUnknown UseKeychain,Foo*\nHost *\n  UseKeychain yes\n  FooBar 1\n  Port 7\n",
        "web",
    ));
    cases.push(case(
        "IgnoreUnknown that does not apply",
        "Host other\n  IgnoreUnknown FooOption\nHost *\n  FooOption yes\n",
        "web",
    ));
    cases.push(case(
        "keywords OpenSSH knows and shipit does not use",
        "Host *\n  ControlMaster auto\n  ControlPath ~/.ssh/cm-%C\n  SendEnv LANG LC_*\n  ForwardAgent no\n  Protocol 2\n  GSSAPIAuthentication no\n",
        "web",
    ));
    cases.push(
        case(
            "keyword of a later OpenSSH",
            "Host *\n  ChannelTimeout session=5m\n",
            "web",
        )
        .differs(&LATER_KEYWORDS),
    );
    cases.push(case("macOS keyword", "Host *\n  UseKeychain yes\n", "web").differs(&APPLE_KEYWORD));
    cases.push(case(
        "unknown Match criterion",
        "Match hots web\n  Port 1\n",
        "web",
    ));
    cases.push(
        case(
            "Match criterion of a later OpenSSH",
            "Match localnetwork 10.0.0.0/8\n  Port 1\n",
            "web",
        )
        .differs(&LATER_CRITERIA),
    );
    cases.push(
        case("Match exec", "Match host web exec true\n  Port 1\n", "web").differs(&MATCH_EXEC),
    );
    cases.push(case(
        "Match all combined",
        "Match all host web\n  Port 1\n",
        "web",
    ));
    cases.push(case("unclosed quote", "Host web\n  User \"open\n", "web"));
    cases.push(case("keyword without a value", "Host web\n  User\n", "web"));
    cases.push(case("extra words", "Host web\n  User a b\n", "web"));
    cases
}

/// `n` configs drawn from a small grammar of blocks and settings (a fixed seed, so a failure
/// reproduces), each resolved for one of a few aliases.
fn random_cases(n: usize) -> Vec<Case> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move |len: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % len as u64) as usize
    };
    let openers = [
        "Host web",
        "Host WEB",
        "Host w* !web2",
        "Host *",
        "Host db web2",
        "Host *.lan",
        "Match host web.lan",
        "Match originalhost web*",
        "Match !host *.lan",
        "Match user deploy",
        "Match final host *.lan",
        "Match canonical",
        "Match !canonical user root",
        "Match all",
        "Host gate",
        "Host !gate *",
        "Match host \"*.lan,!x.lan\"",
        "Match originalhost WEB user root",
        "Match !final",
        "Host Web2",
        "Match localuser root !host gate",
    ];
    let settings = [
        "HostName %h.lan",
        "HostName Web.LAN",
        "HostName 192.0.2.9",
        "User deploy",
        "User root",
        "Port 2222",
        "Port ssh",
        "IdentityFile ~/.ssh/id_web",
        "IdentityFile ~/.ssh/id_%r",
        "IdentitiesOnly yes",
        "ProxyJump gate",
        "ProxyJump none",
        "ProxyJump ops@gate:2022",
        "HostKeyAlias Web-Key",
        "ConnectTimeout 7",
        "ConnectTimeout none",
        "UserKnownHostsFile ~/.ssh/kh_%h_%p",
        "UserKnownHostsFile none",
        "GlobalKnownHostsFile /etc/kh_%h",
        "ServerAliveInterval 20",
        "ForwardAgent no",
        "CanonicalizeHostname yes",
        "CanonicalizeHostname no",
        "HostName %h",
        "User %r",
        "Port 2022",
        "IdentityFile ~/.ssh/id_web",
        "IdentityFile %d/.ssh/id_web",
        "ProxyJump %h-gw",
        "ProxyJump gate,other",
        "HostKeyAlias %h",
        "UserKnownHostsFile ~/.ssh/kh_%k %d/kh_%n_%r",
        "ConnectTimeout 0",
        "IdentitiesOnly no",
    ];
    let aliases = ["web", "WEB", "web2", "db", "x.lan", "gate"];
    (0..n)
        .map(|i| {
            let mut text = String::new();
            for _ in 0..1 + next(2) {
                text.push_str(settings[next(settings.len())]);
                text.push('\n');
            }
            for _ in 0..2 + next(4) {
                text.push_str(openers[next(openers.len())]);
                text.push('\n');
                for _ in 0..1 + next(3) {
                    text.push_str("  ");
                    text.push_str(settings[next(settings.len())]);
                    text.push('\n');
                }
            }
            let alias = aliases[next(aliases.len())];
            case(format!("random #{i} / {alias}"), text, alias)
        })
        .collect()
}

/// `ssh -G` as OpenSSH sees the case's home, run in a private mount namespace with `home`
/// over `/root`: `-F ~/.ssh/config` alone, or, when the case has a system file
/// (`../etc-ssh/ssh_config`), both files as `ssh` reads them, that directory over
/// `/etc/ssh`. Keys map to their values, one per line (`identityfile` repeats).
fn ssh_g(home: &Path, args: &[&str]) -> Result<BTreeMap<String, Vec<String>>, String> {
    let system = home.parent().unwrap().join("etc-ssh");
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(
            "mount --bind \"$1\" /root || exit 1
             if [ -d \"$2\" ]; then
                 mount --bind \"$2\" /etc/ssh || exit 1
                 shift 2; exec ssh -G \"$@\"
             fi
             shift 2; exec ssh -G -F /root/.ssh/config \"$@\"",
        )
        .arg("sh")
        .arg(home)
        .arg(&system)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin:/usr/sbin:/sbin")
        .env("HOME", "/root")
        .stdin(Stdio::null())
        .output()
        .expect("run ssh -G");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
    }
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some((key, value)) = line.split_once(' ') {
            map.entry(key.to_owned())
                .or_default()
                .push(value.to_owned());
        }
    }
    Ok(map)
}

fn local_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_owned()
}

/// shipit's view: the config read as the user file, then the inventory's host (address =
/// the alias, nothing else set) resolved as `shipit check` would.
fn shipit_resolve(
    home: &Path,
    alias: &str,
    login: Option<&str>,
    port: Option<u16>,
) -> Result<(HostConfig, Reach), String> {
    let system = home.parent().unwrap().join("etc-ssh/ssh_config");
    let system = system.exists().then_some(system.as_path());
    let local = Local {
        home: home.to_owned(),
        user: "root".to_owned(),
        uid: 0,
        hostname: local_hostname(),
        // What `ssh -G` runs with.
        env: [("HOME", "/root"), ("PATH", "/usr/bin:/bin:/usr/sbin:/sbin")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
    };
    let config =
        SshConfig::load(&home.join(".ssh/config"), system, &local).map_err(|e| e.to_string())?;
    let host_config = config.resolve(alias, login).map_err(|e| e.to_string())?;
    let mut text = "[app]\nname = \"diff\"\ndeploy_to = \"/opt/diff\"\n\n".to_owned();
    if let Some(user) = login {
        text.push_str(&format!("[ssh]\nuser = {}\n\n", toml_string(user)));
    }
    text.push_str(&format!(
        "[[hosts]]\nname = \"h\"\naddress = {}\n",
        toml_string(alias)
    ));
    if let Some(port) = port {
        text.push_str(&format!("port = {port}\n"));
    }
    let env = |_: &str| None;
    let ctx = shipit::inventory::LoadContext {
        base_dir: home,
        home: Some(home),
        env: &env,
        need_secrets: false,
    };
    let inventory = shipit::inventory::parse(&text, Path::new("inventory/diff.toml"), &ctx)
        .map_err(|e| format!("{e:?}"))?;
    let resolver = Resolver {
        inventory: &inventory,
        config: Some(&config),
        local: &local,
        run_key: None,
    };
    let reach = resolver
        .resolve(&inventory.hosts[0])
        .map_err(|e| e.to_string())?;
    Ok((host_config, reach))
}

fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// One value of `ssh -G`, or "".
fn one<'a>(o: &'a BTreeMap<String, Vec<String>>, key: &str) -> &'a str {
    o.get(key)
        .and_then(|v| v.first())
        .map_or("", String::as_str)
}

/// A list value of `ssh -G` (`none` is empty), `~` made `/root`.
fn files(o: &BTreeMap<String, Vec<String>>, key: &str) -> Vec<String> {
    match one(o, key) {
        "" | "none" => Vec::new(),
        list => list.split(' ').map(tilde).collect(),
    }
}

fn tilde(path: &str) -> String {
    match path.strip_prefix('~') {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => format!("/root{rest}"),
        _ => path.to_owned(),
    }
}

/// A path of shipit's, with the case's home written as OpenSSH sees it.
fn as_root(home: &Path, path: &Path) -> String {
    path.display()
        .to_string()
        .replace(&home.display().to_string(), "/root")
}

/// `[user@]host[:port]` as `ssh -G` prints the last hop (`[...]` around numeric hosts).
fn split_hop(hop: &str) -> (Option<String>, String, Option<String>) {
    let (user, rest) = match hop.rsplit_once('@') {
        Some((u, r)) => (Some(u.to_owned()), r),
        None => (None, hop),
    };
    if let Some(inner) = rest.strip_prefix('[') {
        let (host, after) = inner.split_once(']').unwrap();
        return (
            user,
            host.to_owned(),
            after.strip_prefix(':').map(str::to_owned),
        );
    }
    match rest.split_once(':') {
        Some((h, p)) => (user, h.to_owned(), Some(p.to_owned())),
        None => (user, rest.to_owned(), None),
    }
}

/// Field-by-field comparison of one resolved host; the mismatches.
fn compare(
    home: &Path,
    alias: &str,
    o: &BTreeMap<String, Vec<String>>,
    cfg: &HostConfig,
    reach: &Reach,
) -> Vec<String> {
    let t = &reach.target;
    let mut diffs = Vec::new();
    let mut field = |name: &str, openssh: String, shipit: String| {
        if openssh != shipit {
            diffs.push(format!("{name}: ssh -G {openssh:?}, shipit {shipit:?}"));
        }
    };
    field("hostname", one(o, "hostname").to_owned(), t.address.clone());
    field("user", one(o, "user").to_owned(), t.user.clone());
    field("port", one(o, "port").to_owned(), t.port.to_string());
    field(
        "hostkeyalias",
        one(o, "hostkeyalias").to_owned(),
        t.host_key_alias.clone().unwrap_or_default(),
    );
    field(
        "identitiesonly",
        one(o, "identitiesonly").to_owned(),
        if t.identities_only { "yes" } else { "no" }.to_owned(),
    );
    let ssh_keys: Vec<String> = o.get("identityfile").cloned().unwrap_or_default();
    if !cfg.identity_files.is_empty() {
        let raw: Vec<String> = cfg.identity_files.iter().map(|s| s.value.clone()).collect();
        field("identityfile", ssh_keys.join(" "), raw.join(" "));
    } else if t.identities_only {
        let ssh: Vec<String> = ssh_keys.iter().map(|k| tilde(k)).collect();
        let ours: Vec<String> = t.identities.iter().map(|p| as_root(home, p)).collect();
        field("identityfile (defaults)", ssh.join(" "), ours.join(" "));
    }
    let mut known = files(o, "userknownhostsfile");
    known.extend(files(o, "globalknownhostsfile"));
    let ours: Vec<String> = t.known_hosts.iter().map(|p| as_root(home, p)).collect();
    field("known hosts files", known.join(" "), ours.join(" "));
    match one(o, "connecttimeout") {
        "none" | "" => {}
        secs => field(
            "connecttimeout",
            secs.to_owned(),
            t.connect_timeout.as_secs().to_string(),
        ),
    }
    if cfg.server_alive_interval.is_some() {
        field(
            "serveraliveinterval",
            one(o, "serveraliveinterval").to_owned(),
            t.keepalive_interval.as_secs().to_string(),
        );
    }
    // The jump host: the hop `ssh -G` prints, with the tokens OpenSSH's implicit
    // `ProxyCommand` fills in, resolved by `ssh -G` in turn.
    match (one(o, "proxyjump"), &t.jump) {
        ("", None) => {}
        ("", Some(j)) => diffs.push(format!("proxyjump: ssh -G none, shipit {}", j.address)),
        (hops, None) => diffs.push(format!("proxyjump: ssh -G {hops:?}, shipit none")),
        (hops, Some(j)) => {
            let expanded = hops
                .replace("%%", "\u{0}")
                .replace("%h", one(o, "hostname"))
                .replace("%p", one(o, "port"))
                .replace("%r", one(o, "user"))
                .replace("%n", alias)
                .replace('\u{0}', "%");
            let (user, host, port) = split_hop(&expanded);
            let mut args: Vec<String> = Vec::new();
            if let Some(u) = user {
                args.extend(["-l".to_owned(), u]);
            }
            if let Some(p) = port {
                args.extend(["-p".to_owned(), p]);
            }
            args.push(host.clone());
            let argv: Vec<&str> = args.iter().map(String::as_str).collect();
            match ssh_g(home, &argv) {
                Err(e) => diffs.push(format!("jump host {host}: ssh -G failed: {e}")),
                Ok(jo) => {
                    let mut jfield = |name: &str, openssh: String, shipit: String| {
                        if openssh != shipit {
                            diffs.push(format!(
                                "jump {name}: ssh -G {openssh:?}, shipit {shipit:?}"
                            ));
                        }
                    };
                    jfield(
                        "hostname",
                        one(&jo, "hostname").to_owned(),
                        j.address.clone(),
                    );
                    jfield("user", one(&jo, "user").to_owned(), j.user.clone());
                    jfield("port", one(&jo, "port").to_owned(), j.port.to_string());
                    jfield(
                        "hostkeyalias",
                        one(&jo, "hostkeyalias").to_owned(),
                        j.host_key_alias.clone().unwrap_or_default(),
                    );
                    let mut known = files(&jo, "userknownhostsfile");
                    known.extend(files(&jo, "globalknownhostsfile"));
                    let ours: Vec<String> =
                        j.known_hosts.iter().map(|p| as_root(home, p)).collect();
                    jfield("known hosts files", known.join(" "), ours.join(" "));
                }
            }
        }
    }
    diffs
}

/// The documented difference a mismatch of a generated case shows, if it is one.
fn explain(mismatch: &str) -> Option<&'static Difference> {
    if mismatch.starts_with("connecttimeout: ssh -G \"0\"") {
        Some(&CONNECT_TIMEOUT_ZERO)
    } else if mismatch.contains("jumphost loop") {
        Some(&JUMP_SELF)
    } else if mismatch.starts_with("shipit refused") && mismatch.contains("chains") {
        Some(&JUMP_CHAIN)
    } else if mismatch.starts_with("shipit refused") && mismatch.contains("sets `ProxyCommand`") {
        Some(&PROXY_COMMAND)
    } else {
        None
    }
}

/// Whitespace-insensitive: README lines wrap anywhere.
fn squeeze(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn readme() -> String {
    squeeze(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap(),
    )
}

#[test]
fn every_documented_difference_is_in_the_readme() {
    let readme = readme();
    for d in ALL_DIFFERENCES.iter().copied().chain(NOT_COMPARED.iter()) {
        assert!(
            readme.contains(&squeeze(d.readme)),
            "difference `{}` ({}) is not documented: the README should say {:?}",
            d.id,
            d.what,
            d.readme
        );
    }
}

#[test]
fn ssh_config_resolves_as_ssh_dash_g_does() {
    let cases = corpus();
    assert!(cases.len() > 200, "{}", cases.len());
    let mut failures = Vec::new();
    let mut documented = BTreeMap::<&str, usize>::new();
    let mut agreed = 0;
    let mut both_refuse = 0;
    for case in &cases {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        for (file, text) in &case.files {
            let path = match file.strip_prefix("/etc/ssh/") {
                Some(system) => dir.path().join("etc-ssh").join(system),
                None => home.join(".ssh").join(file),
            };
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, text).unwrap();
        }
        let mut args: Vec<String> = Vec::new();
        if let Some(user) = case.login {
            args.extend(["-l".to_owned(), user.to_owned()]);
        }
        if let Some(port) = case.port {
            args.extend(["-p".to_owned(), port.to_string()]);
        }
        args.push(case.alias.clone());
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let openssh = ssh_g(&home, &argv);
        let ours = shipit_resolve(&home, &case.alias, case.login, case.port);
        if openssh.is_err() && ours.is_err() {
            both_refuse += 1;
        }
        let diffs: Vec<String> = match (&openssh, &ours) {
            (Err(_), Err(_)) => Vec::new(),
            (Ok(o), Ok((cfg, reach))) => compare(&home, &case.alias, o, cfg, reach),
            (Err(e), Ok(_)) => vec![format!("ssh -G refused ({e}), shipit accepted")],
            (Ok(_), Err(e)) => vec![format!("shipit refused ({e}), ssh -G accepted")],
        };
        let verdict = if diffs.is_empty() {
            Ok(())
        } else {
            Err(diffs.join("; "))
        };
        // A generated case's mismatches may each be a documented difference.
        let explained: Option<Vec<&'static Difference>> =
            diffs.iter().map(|d| explain(d)).collect();
        match (case.differs, verdict) {
            (None, Ok(())) => agreed += 1,
            (None, Err(_)) if explained.is_some() => {
                for d in explained.unwrap() {
                    *documented.entry(d.id).or_default() += 1;
                }
            }
            (None, Err(why)) => failures.push(format!(
                "{}: {why}\n    config: {:?}",
                case.name, case.files
            )),
            (Some(d), Err(_)) => *documented.entry(d.id).or_default() += 1,
            (Some(d), Ok(())) => failures.push(format!(
                "{}: agrees with OpenSSH now: drop the documented difference `{}` from this case (and the README if it was the last)",
                case.name, d.id
            )),
        }
    }
    eprintln!(
        "{} cases: {agreed} agree ({both_refuse} of them refused by both), documented differences {documented:?}",
        cases.len()
    );
    // Most cases must resolve, not merely fail on both sides.
    assert!(
        agreed - both_refuse > cases.len() / 2,
        "{agreed} agree, {both_refuse} refused by both"
    );
    assert!(
        failures.is_empty(),
        "{} of {} cases differ from OpenSSH:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// A second ed25519 key, as known_hosts writes it: the "someone else's key" of the cases.
fn other_key(dir: &Path) -> String {
    let key = dir.join("other_host_key");
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    public
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

/// `ssh-keygen -H` of a known_hosts file: every name hashed, as Debian's `ssh` records them.
fn hashed(file: &Path) -> PathBuf {
    let out = Command::new("ssh-keygen")
        .args(["-H", "-f"])
        .arg(file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = std::fs::read_to_string(file).unwrap();
    assert!(text.starts_with("|1|"), "{text}");
    file.to_owned()
}

/// One known_hosts case: the file, the address typed, and a `HostKeyAlias` if any.
struct KnownCase {
    name: &'static str,
    known_hosts: PathBuf,
    address: &'static str,
    alias: Option<&'static str>,
    /// `RevokedHostKeys`.
    revoked: Option<PathBuf>,
}

/// Whether a real `ssh` login (strict host key checking, this file only) gets in.
fn ssh_accepts(fleet: &Fleet, c: &KnownCase) -> bool {
    let h1 = fleet.host("h1");
    let mut cmd = clean_command("ssh", &fleet.home());
    cmd.args(["-F", "/dev/null", "-i"])
        .arg(fleet.client_key())
        .args(["-o", "IdentitiesOnly=yes", "-o"])
        .arg(format!("UserKnownHostsFile={}", c.known_hosts.display()))
        .args([
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=10",
        ]);
    if let Some(alias) = c.alias {
        cmd.args(["-o", &format!("HostKeyAlias={alias}")]);
    }
    if let Some(revoked) = &c.revoked {
        cmd.args(["-o", &format!("RevokedHostKeys={}", revoked.display())]);
    }
    let out = cmd
        .args(["-p", &h1.port.to_string()])
        .arg(format!("root@{}", c.address))
        .arg("true")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    out.status.success()
}

/// Whether `shipit check` verifies the host key, reading the same file (and the same
/// `HostKeyAlias`, from `~/.ssh/config`).
fn shipit_accepts(fleet: &Fleet, c: &KnownCase) -> bool {
    let h1 = fleet.host("h1");
    let config = fleet.home().join(".ssh/config");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    let mut text = "Host *\n".to_owned();
    if let Some(a) = c.alias {
        text.push_str(&format!("  HostKeyAlias {a}\n"));
    }
    if let Some(revoked) = &c.revoked {
        text.push_str(&format!("  RevokedHostKeys {}\n", revoked.display()));
    }
    std::fs::write(&config, text).unwrap();
    let inv = write(
        fleet.dir(),
        "differential.toml",
        &format!(
            "[app]\nname = \"demo\"\ndeploy_to = \"/opt/demo\"\n\n[ssh]\nuser = \"root\"\nidentity = \"{}\"\nknown_hosts = \"{}\"\nconnect_timeout = \"10s\"\n\n[[hosts]]\nname = \"h1\"\naddress = \"{}\"\nport = {}\n",
            fleet.client_key().display(),
            c.known_hosts.display(),
            c.address,
            h1.port
        ),
    );
    let (_, report, stderr) = check_json(fleet, &inv);
    let entry = host_entry(&report, "h1");
    assert!(
        entry["reachable"] == true,
        "{}: shipit did not reach the host: {entry}\n{stderr}",
        c.name
    );
    entry["host_key_verified"] == true
}

#[test]
fn known_hosts_decisions_match_a_real_ssh_login() {
    let fleet = Fleet::start_with(FleetOptions {
        hosts: 1,
        host_key_types: vec!["ed25519", "rsa"],
        ..FleetOptions::default()
    });
    let h1 = fleet.host("h1");
    let port = h1.port;
    let key = h1.host_keys[0].clone();
    let rsa = h1.host_keys[1].clone();
    assert!(key.starts_with("ssh-ed25519 ") && rsa.starts_with("ssh-rsa "));
    let other = other_key(fleet.dir());
    let blob = key.split_whitespace().nth(1).unwrap().to_owned();
    let file = |name: &str, text: String| write(fleet.dir(), name, &text);

    // What `ssh` itself records (Debian hashes names) for a mixed-case host name.
    let recorded = fleet.dir().join("recorded_by_ssh");
    let out = clean_command("ssh", &fleet.home())
        .args(["-F", "/dev/null", "-i"])
        .arg(fleet.client_key())
        .args(["-o", "IdentitiesOnly=yes", "-o"])
        .arg(format!("UserKnownHostsFile={}", recorded.display()))
        .args([
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "StrictHostKeyChecking=accept-new",
            "-o",
            "HashKnownHosts=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "HostKeyAlgorithms=ssh-ed25519",
            "-p",
            &port.to_string(),
            "root@LocalHost",
            "true",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let recorded_text = std::fs::read_to_string(&recorded).unwrap();
    assert!(recorded_text.starts_with("|1|"), "{recorded_text}");

    let cases = [
        KnownCase {
            name: "[host]:port entry",
            known_hosts: file("k1", format!("[127.0.0.1]:{port} {key}\n")),
            address: "127.0.0.1",
            alias: None,
            revoked: None,
        },
        KnownCase {
            name: "entry without the port (OpenSSH's fallback)",
            known_hosts: file("k2", format!("127.0.0.1 {key}\n")),
            address: "127.0.0.1",
            alias: None,
            revoked: None,
        },
        KnownCase {
            name: "another key without the port",
            known_hosts: file("k3", format!("127.0.0.1 {other}\n")),
            address: "127.0.0.1",
            alias: None,
            revoked: None,
        },
        KnownCase {
            name: "[host]:port with another key beside the port-less good one",
            known_hosts: file(
                "k4",
                format!("[127.0.0.1]:{port} {other}\n127.0.0.1 {key}\n"),
            ),
            address: "127.0.0.1",
            alias: None,
            revoked: None,
        },
        KnownCase {
            name: "hashed by ssh-keygen -H",
            known_hosts: hashed(&file("k5", format!("[127.0.0.1]:{port} {key}\n"))),
            address: "127.0.0.1",
            alias: None,
            revoked: None,
        },
        KnownCase {
            name: "hashed without the port",
            known_hosts: hashed(&file("k6", format!("127.0.0.1 {key}\n"))),
            address: "127.0.0.1",
            alias: None,
            revoked: None,
        },
        KnownCase {
            name: "hashed by ssh itself for a mixed-case name",
            known_hosts: recorded.clone(),
            address: "LocalHost",
            alias: None,
            revoked: None,
        },
        KnownCase {
            name: "the same, typed in lowercase",
            known_hosts: recorded.clone(),
            address: "localhost",
            alias: None,
            revoked: None,
        },
        KnownCase {
            name: "mixed-case pattern",
            known_hosts: file("k7", format!("[LOCALHOST]:{port} {key}\n")),
            address: "LocalHost",
            alias: None,
            revoked: None,
        },
        KnownCase {
            name: "@revoked beside a good entry",
            known_hosts: file(
                "k8",
                format!("[127.0.0.1]:{port} {key}\n@revoked * {key}\n"),
            ),
            address: "127.0.0.1",
            alias: None,
            revoked: None,
        },
        KnownCase {
            name: "wildcards",
            known_hosts: file("k9", format!("[127.0.0.?]:* {key}\n")),
            address: "127.0.0.1",
            alias: None,
            revoked: None,
        },
        KnownCase {
            name: "negation of [host]:port under [*]:*",
            known_hosts: file("k10", format!("[*]:*,![127.0.0.1]:{port} {key}\n")),
            address: "127.0.0.1",
            alias: None,
            revoked: None,
        },
        KnownCase {
            name: "negation of [host]:port under a bare * (the fallback matches)",
            known_hosts: file("k11", format!("*,![127.0.0.1]:{port} {key}\n")),
            address: "127.0.0.1",
            alias: None,
            revoked: None,
        },
        KnownCase {
            name: "HostKeyAlias, recorded under the lowercase alias",
            known_hosts: file("k12", format!("pool-a {key}\n")),
            address: "127.0.0.1",
            alias: Some("Pool-A"),
            revoked: None,
        },
        KnownCase {
            name: "HostKeyAlias, recorded only under the address",
            known_hosts: file("k13", format!("[127.0.0.1]:{port} {key}\n")),
            address: "127.0.0.1",
            alias: Some("pool-a"),
            revoked: None,
        },
        KnownCase {
            name: "an ed25519 key under an ssh-rsa label",
            known_hosts: file("k14", format!("[127.0.0.1]:{port} ssh-rsa {blob}\n")),
            address: "127.0.0.1",
            alias: None,
            revoked: None,
        },
        KnownCase {
            name: "RSA on record, ed25519 changed",
            known_hosts: file(
                "k15",
                format!("[127.0.0.1]:{port} {rsa}\n[127.0.0.1]:{port} {other}\n"),
            ),
            address: "127.0.0.1",
            alias: None,
            revoked: None,
        },
        KnownCase {
            name: "only RSA on record",
            known_hosts: file("k16", format!("[127.0.0.1]:{port} {rsa}\n")),
            address: "127.0.0.1",
            alias: None,
            revoked: None,
        },
    ];
    let mut failures = Vec::new();
    for c in &cases {
        let (openssh, ours) = (ssh_accepts(&fleet, c), shipit_accepts(&fleet, c));
        eprintln!("{}: ssh {openssh}, shipit {ours}", c.name);
        if openssh != ours {
            failures.push(format!(
                "{}: ssh {}, shipit {}",
                c.name,
                if openssh { "logs in" } else { "refuses" },
                if ours { "trusts the key" } else { "refuses" },
            ));
        }
    }

    // `RevokedHostKeys`: a list of keys, a missing file, and a KRL (which shipit cannot read:
    // a documented difference, where shipit refuses what `ssh` accepts).
    let good = file("kr", format!("[127.0.0.1]:{port} {key}\n"));
    let krl = fleet.dir().join("revoked.krl");
    let other_pub = file("other.pub", format!("{other}\n"));
    let out = Command::new("ssh-keygen")
        .args(["-k", "-f"])
        .arg(&krl)
        .arg(&other_pub)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let revocations = [
        (
            "revoked by RevokedHostKeys",
            Some(file("r1", format!("# old\n{key}\n"))),
            None,
        ),
        (
            "another key revoked",
            Some(file("r2", format!("{other}\n"))),
            None,
        ),
        (
            "RevokedHostKeys missing",
            Some(fleet.dir().join("no-such-file")),
            None,
        ),
        ("RevokedHostKeys a KRL", Some(krl), Some(&REVOCATION_LIST)),
    ];
    for (name, revoked, differs) in revocations {
        let c = KnownCase {
            name,
            known_hosts: good.clone(),
            address: "127.0.0.1",
            alias: None,
            revoked,
        };
        let (openssh, ours) = (ssh_accepts(&fleet, &c), shipit_accepts(&fleet, &c));
        eprintln!("{}: ssh {openssh}, shipit {ours}", c.name);
        match differs {
            None if openssh != ours => failures.push(format!(
                "{name}: ssh {}, shipit {}",
                if openssh { "logs in" } else { "refuses" },
                if ours { "trusts the key" } else { "refuses" },
            )),
            Some(d) if openssh == ours => failures.push(format!(
                "{name}: agrees with OpenSSH now: drop the documented difference `{}`",
                d.id
            )),
            _ => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn host_certificates_decisions_match_a_real_ssh_login() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("host_ca");
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&ca)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let ca_line = std::fs::read_to_string(ca.with_extension("pub"))
        .unwrap()
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    let fleet = Fleet::start_with(FleetOptions {
        hosts: 1,
        host_ca: Some(HostCa {
            key: ca,
            principals: "127.0.0.1,web.example.com".to_owned(),
            validity: "-5m:+1h".to_owned(),
        }),
        ..FleetOptions::default()
    });
    let port = fleet.host("h1").port;
    let file = |name: &str, text: String| write(fleet.dir(), name, &text);
    let cases = [
        KnownCase {
            name: "@cert-authority for [host]:*",
            known_hosts: file("c1", format!("@cert-authority [127.0.0.1]:* {ca_line}\n")),
            address: "127.0.0.1",
            alias: None,
            revoked: None,
        },
        KnownCase {
            name: "@cert-authority for the host without a port (OpenSSH's fallback)",
            known_hosts: file("c2", format!("@cert-authority 127.0.0.1 {ca_line}\n")),
            address: "127.0.0.1",
            alias: None,
            revoked: None,
        },
        KnownCase {
            name: "@cert-authority revoked",
            known_hosts: file(
                "c3",
                format!("@cert-authority * {ca_line}\n@revoked * {ca_line}\n"),
            ),
            address: "127.0.0.1",
            alias: None,
            revoked: None,
        },
        KnownCase {
            name: "@cert-authority for another port",
            known_hosts: file(
                "c4",
                format!("@cert-authority [127.0.0.1]:{} {ca_line}\n", port + 1),
            ),
            address: "127.0.0.1",
            alias: None,
            revoked: None,
        },
        KnownCase {
            name: "@cert-authority, certificate for the alias",
            known_hosts: file("c5", format!("@cert-authority * {ca_line}\n")),
            address: "127.0.0.1",
            alias: Some("Web.Example.com"),
            revoked: None,
        },
        KnownCase {
            name: "@cert-authority, certificate not for the alias",
            known_hosts: file("c6", format!("@cert-authority * {ca_line}\n")),
            address: "127.0.0.1",
            alias: Some("db.example.com"),
            revoked: None,
        },
    ];
    let mut failures = Vec::new();
    for c in &cases {
        let (openssh, ours) = (ssh_accepts(&fleet, c), shipit_accepts(&fleet, c));
        eprintln!("{}: ssh {openssh}, shipit {ours}", c.name);
        if openssh != ours {
            failures.push(format!(
                "{}: ssh {}, shipit {}",
                c.name,
                if openssh { "logs in" } else { "refuses" },
                if ours { "trusts the key" } else { "refuses" },
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

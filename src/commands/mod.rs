//! Pure builders of remote commands, one file per remote subject. A builder returns a
//! [`Cmd`](crate::shell::Cmd) and never runs anything; tests compare the rendered text and
//! run the scripts through a real `sh`.
//!
//! Remote scripts report state by exit code (constants in [`exit`]), never by prose that the
//! caller would have to match.

pub mod compose;
pub mod envfile;
pub mod files;
pub mod guard;
pub mod history;
pub mod lock;
pub mod login;
pub mod logs;
pub mod nginx;
pub mod passed;
pub mod release;
pub mod restore;
pub mod strict;
pub mod sudo;
pub mod systemd;
pub mod task;

/// Exit codes of shipit's own remote scripts (chosen above what common tools return).
pub mod exit {
    /// The deploy lock is held by someone else; its owner.json is on stdout.
    pub const LOCK_HELD: u32 = 75;
    /// No lock is present.
    pub const NO_LOCK: u32 = 76;
    /// The file asked for does not exist.
    pub const NO_FILE: u32 = 77;
    /// The uploaded bytes do not have the expected sha256.
    pub const SHA_MISMATCH: u32 = 81;
    /// A `shared_files` entry exists neither in `shared/` nor in the artifact.
    pub const SHARED_FILE_MISSING: u32 = 82;
    /// The release to switch to does not exist (complete) on the host.
    pub const RELEASE_MISSING: u32 = 83;
    /// `nginx -t` failed; its output is on stderr.
    pub const NGINX_INVALID: u32 = 84;
    /// `systemd-analyze verify` reported problems (on stderr).
    pub const VERIFY_FAILED: u32 = 85;
    /// A unit did not become active after its restart.
    pub const NOT_ACTIVE: u32 = 86;
    /// The backup command failed.
    pub const BACKUP_FAILED: u32 = 87;
    /// The backup command exited 0 without writing anything.
    pub const BACKUP_EMPTY: u32 = 88;
    /// The backup's verify command rejected it.
    pub const BACKUP_UNVERIFIED: u32 = 89;
    /// The dead-deployer guard fired before the deployer confirmed.
    pub const GUARD_FIRED: u32 = 90;
    /// The host has neither `docker compose` nor `docker-compose`.
    pub const NO_COMPOSE: u32 = 91;
    /// `compose config` rejects the compose file.
    pub const COMPOSE_INVALID: u32 = 92;
    /// Pulling the images failed.
    pub const PULL_FAILED: u32 = 93;
    /// A delta upload could not build the release exactly (the current release differs from
    /// its manifest, a tool failed, or the result did not verify); nothing was kept.
    pub const DELTA_FAILED: u32 = 94;
    /// A copy of an identical release could not be verified against its manifest (a file
    /// patched in place, a missing manifest, names a listing cannot carry); nothing was
    /// kept, the caller uploads instead.
    pub const REUSE_UNVERIFIED: u32 = 100;
    /// A path a script would remove or replace is not a plain name or relative path inside
    /// the directory it works in (or goes through a symlink); nothing was removed.
    pub const PATH_OUTSIDE: u32 = 101;
    /// A directory shipit would write in (or one of its ancestors) is owned by another user,
    /// writable by group or others, or a symlink where none may be; path, owner and mode on
    /// stderr, nothing written (see [`strict`](super::strict)).
    pub const UNSAFE_PATH: u32 = 95;
    /// The file at a path shipit would replace exists and was not written by shipit (or is
    /// not a regular file): the env file, a file written with `files::write`, a site's
    /// `sites-enabled` entry that is not shipit's link, a masked unit. Never replaced.
    pub const FOREIGN_FILE: u32 = 96;
    /// The env file's mode is not 0600 or its owner not the app user (its content printed
    /// all the same): it is rewritten even when its content is unchanged.
    pub const ENV_LOOSE: u32 = 97;
    /// A shared path's parent in the release is a link; nothing was kept.
    pub const SHARED_THROUGH_LINK: u32 = 105;
    /// Confirming found this run's guard disarmed by another run (`shipit unlock` while this
    /// run held the lock): that run owns the host now.
    pub const GUARD_DISARMED: u32 = 110;
    /// A dead-deployer guard that fired is still switching the host back; its run's token
    /// is on stdout.
    pub const GUARD_BUSY: u32 = 111;
    /// The env file this run staged is gone at the switch (removed by `shipit unlock` or
    /// by hand): the switch must not go on with the old one as if nothing had changed.
    pub const ENV_STAGING_GONE: u32 = 112;
    /// The idle port of a blue-green unit is taken by a process that is not its instance:
    /// a check there would check that process. Nothing was started.
    pub const PORT_TAKEN: u32 = 113;
    /// A backup's sha256 is not the one recorded when it was made, or its verify command
    /// rejects it: nothing was restored.
    pub const BACKUP_DAMAGED: u32 = 114;
    /// No such backup of this app (or a name that is not one of its backup names).
    pub const BACKUP_NOT_FOUND: u32 = 115;
    /// The restore (or the drill's restore into its scratch database) failed.
    pub const RESTORE_FAILED: u32 = 117;
    /// `sudo` is not installed (see [`sudo`](super::sudo)).
    pub const NO_SUDO: u32 = 118;
    /// `sudo -n true` failed: a password is required, or the user may not run commands as
    /// root; sudo's words on stderr.
    pub const SUDO_REFUSED: u32 = 119;
}

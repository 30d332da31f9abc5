//! `shipit shell <stage> --hosts h`: an interactive login shell on one host, started in its
//! current release, as `ssh -t host` would give it: a pseudo-terminal of the local
//! terminal's type and size (following resizes), the local terminal in raw mode meanwhile
//! (Ctrl-C, Ctrl-D and the arrows reach the remote shell) and restored when it ends. The
//! remote shell's exit status is shipit's.
//!
//! This module owns the local terminal: its mode (termios), its size, SIGWINCH, and a
//! thread reading the keys (a blocking read that can be told to stop, unlike tokio's stdin,
//! which would keep the process from exiting until a key is pressed).

use std::io::IsTerminal;
use std::os::fd::RawFd;

use tokio::sync::{mpsc, watch};

use crate::inventory::{Host, Inventory, TransportKind};
use crate::transport::fleet::Connector;
use crate::transport::{Exit, Interactive, Stream, WindowSize};

const STDIN: RawFd = 0;

/// Checks what `shipit shell` needs before anything connects: exactly one selected host
/// and a terminal on stdin.
pub fn check_usage(hosts: &[&Host], stage: &str) -> Result<(), String> {
    if hosts.len() != 1 {
        let names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
        return Err(format!(
            "`shell` opens one host, and {} are selected ({}): pick one with `--hosts NAME`, e.g. `shipit shell {stage} --hosts {}`",
            hosts.len(),
            names.join(", "),
            names.first().copied().unwrap_or("web-1")
        ));
    }
    if !std::io::stdin().is_terminal() {
        return Err(
            "`shell` is interactive and stdin is not a terminal; to run a command, use `shipit exec <stage> -- CMD`"
                .to_owned(),
        );
    }
    Ok(())
}

/// Opens the shell on `host` and waits for it to end; the exit code to leave with.
pub async fn run(inventory: &Inventory, host: &Host, connector: &Connector) -> Result<u8, String> {
    let cmd = crate::commands::login::shell(&inventory.app.deploy_to);
    if inventory.transport == TransportKind::Local {
        // This machine's own terminal: the shell uses it directly.
        let status = tokio::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(cmd.render())
            .status()
            .await
            .map_err(|e| format!("cannot start a shell: {e}"))?;
        use std::os::unix::process::ExitStatusExt;
        return Ok(match (status.code(), status.signal()) {
            (Some(code), _) => code as u8,
            (None, Some(signal)) => 128u8.saturating_add(signal as u8),
            (None, None) => 255,
        });
    }
    let transport = connector
        .connect(host)
        .await
        .map_err(|e| crate::error::chain(&e))?;
    let terminal = Terminal::new();
    let size = terminal.size();
    // Raw before the first key is read: typed ahead, keys still go through as typed.
    let raw = terminal.raw();
    let (keys, input) = match Keys::start() {
        Ok(keys) => keys,
        Err(e) => {
            drop(raw);
            transport.close().await;
            return Err(format!("cannot read the terminal: {e}"));
        }
    };
    let (resize_tx, resized) = watch::channel(size);
    let resizes = tokio::spawn(follow_resizes(resize_tx));
    let sink = |stream: Stream, bytes: &[u8]| crate::output::terminal(stream, bytes);
    let session = Interactive {
        cmd: &cmd,
        term: std::env::var("TERM")
            .ok()
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| "xterm-256color".to_owned()),
        size,
        resized,
        input,
        output: &sink,
    };
    let ended = {
        use tokio::signal::unix::{SignalKind, signal};
        let (term, hup) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        );
        let stopped = async move {
            match (term, hup) {
                (Ok(mut term), Ok(mut hup)) => tokio::select! {
                    _ = term.recv() => 128u8 + 15,
                    _ = hup.recv() => 128u8 + 1,
                },
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            exit = transport.interactive(session) => exit.map(|e| exit_code(&e)).map_err(|e| crate::error::chain(&e)),
            // Killed politely: the terminal is restored on the way out, as ssh does.
            code = stopped => Ok(code),
        }
    };
    drop(raw);
    keys.stop();
    resizes.abort();
    transport.close().await;
    ended
}

/// The exit code a remote shell's end becomes: its status, or 128 + the signal that killed
/// it (as a local shell reports it), 255 for a signal without a number here.
fn exit_code(exit: &Exit) -> u8 {
    match exit {
        Exit::Code(code) => (*code & 0xff) as u8,
        Exit::Signal(name) => {
            const SIGNALS: &[(&str, u8)] = &[
                ("HUP", 1),
                ("INT", 2),
                ("QUIT", 3),
                ("ILL", 4),
                ("ABRT", 6),
                ("FPE", 8),
                ("KILL", 9),
                ("USR1", 10),
                ("SEGV", 11),
                ("USR2", 12),
                ("PIPE", 13),
                ("ALRM", 14),
                ("TERM", 15),
            ];
            SIGNALS
                .iter()
                .find(|(n, _)| name.trim_start_matches("SIG") == *n)
                .map_or(255, |(_, number)| 128 + number)
        }
    }
}

/// Sends the window's size each time it changes (SIGWINCH).
async fn follow_resizes(tx: watch::Sender<WindowSize>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut winch) = signal(SignalKind::window_change()) else {
        return;
    };
    while winch.recv().await.is_some() {
        if tx.send(Terminal::new().size()).is_err() {
            return;
        }
    }
}

/// The local terminal on stdin.
struct Terminal;

impl Terminal {
    fn new() -> Terminal {
        Terminal
    }

    /// The window's size; 80x24 when the terminal does not say.
    fn size(&self) -> WindowSize {
        // SAFETY: TIOCGWINSZ writes one `winsize` into the struct we pass; on failure it
        // writes nothing and we keep the zeros.
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::ioctl(STDIN, libc::TIOCGWINSZ, &mut ws) };
        if rc != 0 || ws.ws_col == 0 || ws.ws_row == 0 {
            return WindowSize { cols: 80, rows: 24 };
        }
        WindowSize {
            cols: ws.ws_col,
            rows: ws.ws_row,
        }
    }

    /// Puts the terminal in raw mode until the guard is dropped (`None`: it could not be,
    /// and the session runs with the terminal as it is).
    fn raw(&self) -> Option<RawMode> {
        // SAFETY: tcgetattr fills the termios we pass for a valid fd, or fails and we stop.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        if unsafe { libc::tcgetattr(STDIN, &mut saved) } != 0 {
            return None;
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw only edits the struct; tcsetattr reads it.
        unsafe { libc::cfmakeraw(&mut raw) };
        if unsafe { libc::tcsetattr(STDIN, libc::TCSANOW, &raw) } != 0 {
            return None;
        }
        Some(RawMode { saved })
    }
}

/// The terminal's mode before raw mode, put back on drop (also when unwinding).
struct RawMode {
    saved: libc::termios,
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the settings read from the same fd.
        unsafe {
            libc::tcsetattr(STDIN, libc::TCSANOW, &self.saved);
        }
    }
}

/// A thread reading the keys typed, until stdin ends or [`Keys::stop`].
struct Keys {
    /// Writing a byte here wakes the thread's `poll` and ends it.
    stop_write: RawFd,
}

impl Keys {
    fn start() -> std::io::Result<(Keys, mpsc::Receiver<Vec<u8>>)> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: pipe writes two fds into the array on success.
        if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let [stop_read, stop_write] = fds;
        let (tx, rx) = mpsc::channel(64);
        std::thread::spawn(move || {
            read_keys(stop_read, &tx);
            // SAFETY: the thread owns the read end and closes it once.
            unsafe { libc::close(stop_read) };
        });
        Ok((Keys { stop_write }, rx))
    }

    fn stop(self) {
        // SAFETY: writing one byte to our own pipe, then closing our end once.
        unsafe {
            libc::write(self.stop_write, [1u8].as_ptr().cast(), 1);
            libc::close(self.stop_write);
        }
    }
}

fn read_keys(stop: RawFd, tx: &mpsc::Sender<Vec<u8>>) {
    let mut buf = [0u8; 4096];
    loop {
        let mut fds = [
            libc::pollfd {
                fd: STDIN,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: poll reads and writes the two pollfds of the array we pass.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        if fds[1].revents != 0 {
            return;
        }
        if fds[0].revents == 0 {
            continue;
        }
        // SAFETY: reads at most `buf.len()` bytes into `buf`.
        let got = unsafe { libc::read(STDIN, buf.as_mut_ptr().cast(), buf.len()) };
        match got {
            0 => return,
            n if n < 0 => {
                if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return;
            }
            n => {
                if tx.blocking_send(buf[..n as usize].to_vec()).is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_remote_end_becomes_the_exit_code() {
        assert_eq!(exit_code(&Exit::Code(0)), 0);
        assert_eq!(exit_code(&Exit::Code(3)), 3);
        assert_eq!(exit_code(&Exit::Code(256 + 7)), 7);
        assert_eq!(exit_code(&Exit::Signal("KILL".to_owned())), 137);
        assert_eq!(exit_code(&Exit::Signal("SIGTERM".to_owned())), 143);
        assert_eq!(exit_code(&Exit::Signal("Custom(\"XCPU\")".to_owned())), 255);
    }
}

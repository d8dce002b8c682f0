//! Helpers for the tests that run a server in a child process of their own (the
//! `harness = false` binaries `signals` and `systemd`): its output read line by line on
//! channels, waits for a line bounded by [`STEP`], and the child killed whatever a check
//! did.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command};
use std::sync::mpsc;
use std::time::Instant;

use super::STEP;

/// Runs `check` on `child` with its output's lines, then kills it, whatever `check` did.
#[cfg(unix)]
pub fn checking(
    mut child: Child,
    check: impl FnOnce(&Child, &mpsc::Receiver<String>, &mpsc::Receiver<String>),
) {
    let stdout = lines(child.stdout.take().expect("stdout"));
    let stderr = lines(child.stderr.take().expect("stderr"));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        check(&child, &stdout, &stderr)
    }));
    let _ = child.kill();
    let _ = child.wait();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// A path in the temporary directory, free when made and removed when dropped, also when
/// a check panics.
#[cfg(unix)]
pub struct TempFile(pub std::path::PathBuf);

#[cfg(unix)]
impl TempFile {
    pub fn new(name: &str) -> TempFile {
        let path = std::env::temp_dir().join(name);
        let _ = std::fs::remove_file(&path);
        TempFile(path)
    }
}

#[cfg(unix)]
impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The value of a `name=value` field of a log line.
#[cfg(unix)]
pub fn field<'a>(line: &'a str, name: &str) -> &'a str {
    let at = line
        .find(name)
        .unwrap_or_else(|| panic!("no {name} in {line}"))
        + name.len();
    line[at..].split_whitespace().next().unwrap_or("")
}

/// The lines of a child's output, as they come, on a channel.
pub fn lines(out: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The address a child server prints (`addr=…`) once it is bound.
#[cfg(unix)]
pub fn child_addr(stdout: &mpsc::Receiver<String>) -> String {
    wait_for(stdout, "addr=")
        .trim_start_matches("addr=")
        .to_owned()
}

/// A child server's log, at info level, on its stderr (which the test reads).
pub fn log_to_stderr() {
    tracing_subscriber::fmt()
        .with_env_filter("syncbridge=info")
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
}

/// The first line that contains `needle`, within [`STEP`].
pub fn wait_for(lines: &mpsc::Receiver<String>, needle: &str) -> String {
    wait_for_collecting(lines, needle).0
}

/// The first line that contains `needle`, within [`STEP`], and the lines before it.
pub fn wait_for_collecting(lines: &mpsc::Receiver<String>, needle: &str) -> (String, Vec<String>) {
    let deadline = Instant::now() + STEP;
    let mut before = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return (line, before),
            Ok(line) => before.push(line),
            Err(_) => panic!("no line with {needle:?} within {STEP:?}"),
        }
    }
}

#[cfg(unix)]
pub fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -TERM failed");
}

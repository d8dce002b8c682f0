//! Ctrl-C and SIGTERM end a server process, so the server runs in a process of its own:
//! this binary (no test harness) runs itself again as the server when `CHILD` is set.
//!
//! What it checks: a second SIGTERM cuts the shutdown short at any point, here during
//! the background task drain that follows the connection drain's deadline, and during
//! the connection drain itself; and the log says which cut it off. Under systemd:
//! `tests/systemd.rs`.

mod support;

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::child::log_to_stderr;
#[cfg(unix)]
use support::child::{checking, child_addr, sigterm, wait_for, wait_for_collecting};
use support::STEP;

const CHILD: &str = "SYNCBRIDGE_SIGNALS_CHILD";

/// The child's connection drain deadline, in milliseconds (default 200).
const CHILD_SHUTDOWN_MS: &str = "SYNCBRIDGE_SIGNALS_SHUTDOWN_MS";

/// Set: the child's handler starts the shutdown itself, through the server's handle.
const CHILD_HANDLE_SHUTDOWN: &str = "SYNCBRIDGE_SIGNALS_HANDLE_SHUTDOWN";

/// What the child's drains would wait without a second signal.
const TASK_DRAIN: Duration = Duration::from_secs(60);

fn main() {
    if std::env::var_os(CHILD).is_some() {
        child();
    } else {
        #[cfg(unix)]
        {
            a_second_sigterm_cuts_the_task_drain_short();
            a_second_sigterm_during_the_connection_drain_cuts_it_off_and_says_so();
            a_sigterm_after_a_shutdown_through_the_handle_is_the_first_not_the_second();
        }
    }
}

/// The server: one handler that starts a background task and blocks, both for far longer
/// than the test may take, so only a cut-off ends the shutdown in time.
fn child() {
    log_to_stderr();
    let shutdown_ms = std::env::var(CHILD_SHUTDOWN_MS)
        .ok()
        .and_then(|ms| ms.parse().ok())
        .unwrap_or(200);
    let server = syncbridge::Server::bind("127.0.0.1:0")
        .shutdown_timeout(Duration::from_millis(shutdown_ms))
        .task_drain_timeout(TASK_DRAIN);
    println!("addr={}", server.local_addr());
    let handle = server.shutdown_handle();
    let handle_shutdown = std::env::var_os(CHILD_HANDLE_SHUTDOWN).is_some();
    server
        .serve(move |_req: syncbridge::Request| {
            let tasks = syncbridge::TaskSet::current().expect("a task set");
            let _ = tasks.spawn_blocking(|_ctx| {
                std::thread::sleep(TASK_DRAIN * 2);
                Ok::<_, std::io::Error>(())
            });
            println!("handler started");
            if handle_shutdown {
                handle.shutdown();
            }
            std::thread::sleep(TASK_DRAIN * 2);
            "late"
        })
        .expect("serve");
    println!("serve returned");
}

/// Runs the server process with `shutdown_ms` as its drain deadline, sends it a request
/// that never finishes, then runs `check` on it with its output's lines; the process is
/// killed after, whatever `check` did.
#[cfg(unix)]
fn with_child_serving(
    name: &str,
    shutdown_ms: u64,
    handle_shutdown: bool,
    check: impl FnOnce(&Child, &mpsc::Receiver<String>, &mpsc::Receiver<String>),
) {
    let mut command = Command::new(std::env::current_exe().expect("own path"));
    if handle_shutdown {
        command.env(CHILD_HANDLE_SHUTDOWN, "1");
    }
    let child = command
        .env(CHILD, "1")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .env(CHILD_SHUTDOWN_MS, shutdown_ms.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the server process");
    checking(child, |child, stdout, stderr| {
        let addr = child_addr(stdout);
        let mut conn = std::net::TcpStream::connect(addr).expect("connect");
        conn.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .expect("request");
        wait_for(stdout, "handler started");
        check(child, stdout, stderr);
    });
    println!("{name} ... ok");
}

#[cfg(unix)]
fn a_second_sigterm_cuts_the_task_drain_short() {
    with_child_serving(
        "a_second_sigterm_cuts_the_task_drain_short",
        200,
        false,
        |child, stdout, stderr| {
            sigterm(child);
            wait_for(stderr, "draining background tasks");
            let second = Instant::now();
            sigterm(child);
            wait_for(stderr, "second shutdown signal");
            wait_for(stdout, "serve returned");
            assert!(
                second.elapsed() < STEP,
                "serve returned {:?} after the second SIGTERM",
                second.elapsed()
            );
        },
    );
}

#[cfg(unix)]
fn a_second_sigterm_during_the_connection_drain_cuts_it_off_and_says_so() {
    let name = "a_second_sigterm_during_the_connection_drain_cuts_it_off_and_says_so";
    // A drain deadline far past the test's patience: only the second signal ends it.
    with_child_serving(name, 60_000, false, |child, stdout, stderr| {
        sigterm(child);
        wait_for(stderr, "draining in-flight requests");
        sigterm(child);
        let cut = wait_for(stderr, "cutting off the remaining connections");
        assert!(cut.contains("second shutdown signal"), "cut off for: {cut}");
        // The connection is cut at its next poll: nothing is left behind.
        let (stopped, before) = wait_for_collecting(stderr, "syncbridge stopped");
        assert!(
            before.iter().all(|line| !line.contains("left behind")),
            "a connection was said left behind: {before:#?} then {stopped}"
        );
        wait_for(stdout, "serve returned");
    });
}

#[cfg(unix)]
fn a_sigterm_after_a_shutdown_through_the_handle_is_the_first_not_the_second() {
    let name = "a_sigterm_after_a_shutdown_through_the_handle_is_the_first_not_the_second";
    // An app that began its own drain, then gets its orchestrator's usual SIGTERM: the
    // drain goes on; only a second signal cuts it off.
    with_child_serving(name, 60_000, true, |child, stdout, stderr| {
        wait_for(stderr, "draining in-flight requests");
        sigterm(child);
        let (heard, before) = wait_for_collecting(stderr, "already draining");
        assert!(
            before.iter().all(|line| !line.contains("cutting off")),
            "the first signal cut the drain off: {before:#?} then {heard}"
        );
        sigterm(child);
        let cut = wait_for(stderr, "cutting off the remaining connections");
        assert!(cut.contains("second shutdown signal"), "cut off for: {cut}");
        wait_for(stdout, "serve returned");
    });
}

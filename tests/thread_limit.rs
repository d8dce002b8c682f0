//! `Server::serve` under an OS thread limit (`RLIMIT_NPROC`, as systemd's `TasksMax` or a
//! container's pids limit would set): a limit too low for the runtime's workers is an
//! error the caller can print, not tokio's panic and a hang; a limit just high enough
//! still serves. Each case runs in a child process of this test binary, as another user:
//! root is exempt from the limit, and a limit on this process would bind every test.
#![cfg(target_os = "linux")]

use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use syncbridge::Server;

/// Set in a child: which case it runs.
const CHILD: &str = "SYNCBRIDGE_THREAD_LIMIT_CHILD";
/// A user no process runs as, so that the limit counts only the child's threads.
const UNUSED_ID: libc::uid_t = 47_913;
/// Printed by a child whose case passed.
const PASSED: &str = "thread-limit child passed";
/// The runtime's workers in every case.
const WORKERS: usize = 2;

#[test]
fn serve_under_a_thread_limit() {
    if let Ok(case) = std::env::var(CHILD) {
        return limited_child(&case);
    }
    // SAFETY: no arguments.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: only root can run a child as another user to limit its threads");
        return;
    }
    let refused = run_child("serve_under_a_thread_limit", &[(CHILD, "one_short")]);
    assert!(refused.contains(PASSED), "{refused}");
    assert!(
        refused.contains("the OS refused to start the runtime's worker threads (1 of 2 started)"),
        "{refused}"
    );
    assert!(!refused.contains("panicked"), "{refused}");
    let served = run_child("serve_under_a_thread_limit", &[(CHILD, "exact")]);
    assert!(served.contains(PASSED), "{served}");
}

/// tokio panics on a `TOKIO_WORKER_THREADS` it cannot use; `serve` says what is wrong.
#[test]
fn serve_with_a_bad_worker_count_in_the_environment() {
    if std::env::var(CHILD).is_ok() {
        let err = Server::try_bind("127.0.0.1:0")
            .unwrap()
            .handle_signals(false)
            .serve(|_req: syncbridge::Request| "unreachable")
            .unwrap_err();
        assert!(err.is_runtime(), "{err:?}");
        println!("{err}\n{PASSED}");
        return;
    }
    for value in ["0", "two"] {
        let printed = run_child(
            "serve_with_a_bad_worker_count_in_the_environment",
            &[("TOKIO_WORKER_THREADS", value)],
        );
        assert!(printed.contains(PASSED), "{printed}");
        let expected =
            format!("TOKIO_WORKER_THREADS must be a whole number above 0, not \"{value}\"");
        assert!(printed.contains(&expected), "{printed}");
    }
}

/// Runs `test` alone in a child of this binary with `env` (and `CHILD` set), and returns
/// what it printed. A child that does not end within 30 s is killed, and fails the test:
/// tokio's unwind hung.
fn run_child(test: &str, env: &[(&str, &str)]) -> String {
    let case = format!("{test} {env:?}");
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD, "")
        .envs(env.iter().copied())
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || done_tx.send(child.wait_with_output()));
    let Ok(output) = done_rx.recv_timeout(Duration::from_secs(30)) else {
        // SAFETY: a plain signal to the child, which has not been reaped (its waiter
        // still waits).
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        panic!("the {case} child hung: tokio's unwind waits for the workers it started");
    };
    let output = output.unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "the {case} child failed:\n{printed}"
    );
    printed
}

/// In the child: become a user with no other process, limit it to this process's
/// threads plus one worker fewer than the runtime needs (`one_short`) or exactly as many
/// (`exact`), and serve.
fn limited_child(case: &str) {
    // SAFETY: plain integer arguments and a null list; glibc applies each change to
    // every thread of the process. The ids are set together, so the process loses its
    // capabilities, and with them the exemption from the limit.
    unsafe {
        assert_eq!(libc::setgroups(0, std::ptr::null()), 0);
        assert_eq!(libc::setgid(UNUSED_ID), 0);
        assert_eq!(libc::setuid(UNUSED_ID), 0);
    }
    let workers = match case {
        "one_short" => WORKERS - 1,
        "exact" => WORKERS,
        other => panic!("no case {other}"),
    };
    // Several runs: each runtime's workers must be gone from the count before the next
    // check, and the check's threads before its runtime's workers start.
    // The check's own race (a joined thread still counted) is rare: 100 runs, a few
    // milliseconds each, give a check without its wait a fair chance to fail here.
    let runs = if case == "exact" { 100 } else { 1 };
    let idle = threads();
    for _ in 0..runs {
        wait_for_threads(idle);
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `limit` outlives both calls; the first only writes it, the second only
        // reads it. The hard limit stays: without privilege it may only come down.
        unsafe {
            assert_eq!(libc::getrlimit(libc::RLIMIT_NPROC, &mut limit), 0);
            limit.rlim_cur = idle + workers as u64;
            assert_eq!(libc::setrlimit(libc::RLIMIT_NPROC, &limit), 0);
        }
        let server = Server::try_bind("127.0.0.1:0")
            .unwrap()
            .worker_threads(WORKERS)
            .handle_signals(false);
        // Shut down before it starts: `serve` builds its runtime, then returns.
        server.shutdown_handle().shutdown();
        let result = server.serve(|_req: syncbridge::Request| "unreachable");
        match case {
            "one_short" => {
                let err = result.unwrap_err();
                assert!(err.is_runtime(), "{err:?}");
                println!("{err}");
            }
            _ => result.unwrap(),
        }
    }
    println!("{PASSED}");
}

/// The process's threads now.
fn threads() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let (_, fields) = stat.rsplit_once(')').unwrap();
    fields.split_whitespace().nth(17).unwrap().parse().unwrap()
}

/// Waits (up to 5 s) until the threads of a runtime shut down are gone from the count.
fn wait_for_threads(idle: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while threads() > idle {
        assert!(
            Instant::now() < deadline,
            "{} threads, not {idle}",
            threads()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

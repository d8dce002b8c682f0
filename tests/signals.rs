//! Ctrl-C and SIGTERM end a server process, so the server runs in a process of its own:
//! this binary (no test harness) runs itself again as the server when `CHILD` is set.
//!
//! What it checks: a second SIGTERM cuts the shutdown short at any point, here during
//! the background task drain that follows the connection drain's deadline.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const CHILD: &str = "SYNCBRIDGE_SIGNALS_CHILD";
/// What the child's drains would wait without a second signal.
const TASK_DRAIN: Duration = Duration::from_secs(60);
/// How long any step may take before it counts as a hang.
const STEP: Duration = Duration::from_secs(10);

fn main() {
    if std::env::var_os(CHILD).is_some() {
        child();
    } else {
        #[cfg(unix)]
        a_second_sigterm_cuts_the_task_drain_short();
    }
}

/// The server: one handler that starts a background task and blocks, both for far longer
/// than the test may take, so only a cut-off ends the shutdown in time.
fn child() {
    tracing_subscriber::fmt()
        .with_env_filter("syncbridge=info")
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
    let server = syncbridge::Server::bind("127.0.0.1:0")
        .shutdown_timeout(Duration::from_millis(200))
        .task_drain_timeout(TASK_DRAIN);
    println!("addr={}", server.local_addr());
    server
        .serve(|_req: syncbridge::Request| {
            let tasks = syncbridge::TaskSet::current().expect("a task set");
            let _ = tasks.spawn_blocking(|_ctx| {
                std::thread::sleep(TASK_DRAIN * 2);
                Ok::<_, std::io::Error>(())
            });
            println!("handler started");
            std::thread::sleep(TASK_DRAIN * 2);
            "late"
        })
        .expect("serve");
    println!("serve returned");
}

#[cfg(unix)]
fn a_second_sigterm_cuts_the_task_drain_short() {
    let mut child = Command::new(std::env::current_exe().expect("own path"))
        .env(CHILD, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the server process");
    let stdout = lines(child.stdout.take().expect("stdout"));
    let stderr = lines(child.stderr.take().expect("stderr"));
    let result = std::panic::catch_unwind(|| {
        let addr = wait_for(&stdout, "addr=");
        let addr = addr.trim_start_matches("addr=");
        let mut conn = std::net::TcpStream::connect(addr).expect("connect");
        conn.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .expect("request");
        wait_for(&stdout, "handler started");

        sigterm(&child);
        wait_for(&stderr, "draining background tasks");
        let second = Instant::now();
        sigterm(&child);
        wait_for(&stderr, "second shutdown signal");
        wait_for(&stdout, "serve returned");
        assert!(
            second.elapsed() < STEP,
            "serve returned {:?} after the second SIGTERM",
            second.elapsed()
        );
    });
    let _ = child.kill();
    let _ = child.wait();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
    println!("a_second_sigterm_cuts_the_task_drain_short ... ok");
}

/// The lines of a child's output, as they come, on a channel.
fn lines(out: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
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

/// The first line that contains `needle`, within [`STEP`].
fn wait_for(lines: &mpsc::Receiver<String>, needle: &str) -> String {
    let deadline = Instant::now() + STEP;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => continue,
            Err(_) => panic!("no line with {needle:?} within {STEP:?}"),
        }
    }
}

#[cfg(unix)]
fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -TERM failed");
}

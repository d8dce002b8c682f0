//! A server under systemd, run as systemd runs it: in a process of its own, so this
//! binary (no test harness) runs itself again as the server when `WATCHDOG_CHILD` or
//! `ACTIVATED_CHILD` is set.
//!
//! What it checks: that a server (`$NOTIFY_SOCKET` set) says when it is ready and when
//! it stops, pings its watchdog (`$WATCHDOG_USEC`) while it serves and its runtime runs,
//! tries a ping again when systemd's queue is full, and serves the sockets systemd
//! passes it (`$LISTEN_FDS`).

mod support;

#[cfg(unix)]
use std::io::Write;
#[cfg(unix)]
use std::process::{Child, Command, Stdio};
#[cfg(unix)]
use std::sync::mpsc;
#[cfg(unix)]
use std::time::{Duration, Instant};

#[cfg(unix)]
use support::child::{
    checking, child_addr, field, lines, log_to_stderr, sigterm, wait_for, TempFile,
};
#[cfg(unix)]
use support::STEP;

/// Set: the child serves the socket systemd would pass it (`Server::from_systemd`).
const ACTIVATED_CHILD: &str = "SYNCBRIDGE_SYSTEMD_ACTIVATED_CHILD";

/// Set: the child serves on a runtime of its own, which its requests can block
/// ([`watchdog_child`]).
const WATCHDOG_CHILD: &str = "SYNCBRIDGE_SYSTEMD_WATCHDOG_CHILD";
/// Set: that child's server has `notify_systemd(false)`.
const NO_READY: &str = "SYNCBRIDGE_SYSTEMD_NO_READY";
/// Set: that child's server has `systemd_watchdog(false)`.
const NO_WATCHDOG: &str = "SYNCBRIDGE_SYSTEMD_NO_WATCHDOG";

fn main() {
    if std::env::var_os(ACTIVATED_CHILD).is_some() {
        #[cfg(unix)]
        activated_child();
    } else if std::env::var_os(WATCHDOG_CHILD).is_some() {
        #[cfg(unix)]
        watchdog_child();
    } else {
        #[cfg(unix)]
        {
            systemd_hears_ready_once_the_server_listens_and_its_status_at_shutdown(false);
            #[cfg(target_os = "linux")]
            systemd_hears_ready_once_the_server_listens_and_its_status_at_shutdown(true);
            systemd_s_watchdog_is_pinged_while_the_server_runs_and_not_while_its_runtime_stalls();
            a_watchdog_ping_that_finds_systemd_s_queue_full_goes_once_there_is_room();
            readiness_and_the_watchdog_are_switched_apart();
            a_server_started_by_its_socket_unit_serves_the_sockets_systemd_passed();
        }
    }
}

/// systemd's side of `Type=notify`: a datagram socket, bound by path or (Linux) by an
/// abstract name, and a thread that reads it and notes when each message came.
#[cfg(unix)]
struct NotifySocket {
    messages: mpsc::Receiver<(Instant, String)>,
    /// What `$NOTIFY_SOCKET` says.
    name: String,
    /// Its file, if bound by path: removed with it.
    _file: Option<TempFile>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

#[cfg(unix)]
impl NotifySocket {
    fn bind(test: &str, abstract_name: bool) -> NotifySocket {
        use std::os::unix::net::UnixDatagram;
        use std::sync::atomic::{AtomicBool, Ordering};
        let name = format!("syncbridge-notify-{}-{test}", std::process::id());
        let (socket, name, file) = if abstract_name {
            #[cfg(target_os = "linux")]
            {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(&name).unwrap();
                (
                    UnixDatagram::bind_addr(&addr).unwrap(),
                    format!("@{name}"),
                    None,
                )
            }
            #[cfg(not(target_os = "linux"))]
            unreachable!("abstract names are Linux's")
        } else {
            let file = TempFile::new(&name);
            let socket = UnixDatagram::bind(&file.0).unwrap();
            (socket, file.0.display().to_string(), Some(file))
        };
        // Short, so that the thread sees `stop` soon after the test is done.
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let (tx, messages) = mpsc::channel();
        let stopped = stop.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !stopped.load(Ordering::Relaxed) {
                if let Ok(n) = socket.recv(&mut buf) {
                    let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                    if tx.send((Instant::now(), message)).is_err() {
                        return;
                    }
                }
            }
        });
        NotifySocket {
            messages,
            name,
            _file: file,
            stop,
        }
    }

    /// The next message, within [`STEP`].
    fn received(&self) -> String {
        self.received_at().1
    }

    /// The next message, within [`STEP`], and when it came.
    fn received_at(&self) -> (Instant, String) {
        self.messages
            .recv_timeout(STEP)
            .expect("a message within the step")
    }

    /// Drops every message read so far, and says how many there were.
    fn skip_received(&self) -> usize {
        self.messages.try_iter().count()
    }
}

#[cfg(unix)]
impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// [`watchdog_child`], run by `command` (this binary, with the child's settings), as a
/// unit of `Type=notify` runs it: `$NOTIFY_SOCKET` is `notify_socket`, and
/// `$WATCHDOG_USEC` and `$WATCHDOG_PID` are `usec` and `pid` (unset if `None`).
#[cfg(unix)]
fn notified_child(
    command: &mut Command,
    notify_socket: &str,
    usec: Option<&str>,
    pid: Option<&str>,
) -> Child {
    command
        .env(WATCHDOG_CHILD, "1")
        .env("NOTIFY_SOCKET", notify_socket)
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID");
    if let Some(usec) = usec {
        command.env("WATCHDOG_USEC", usec);
    }
    if let Some(pid) = pid {
        command.env("WATCHDOG_PID", pid);
    }
    command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the server process")
}

/// Starts a request that [`watchdog_child`] holds for [`HOLD`] on `addr`, waits until its
/// handler runs, and sends the child SIGTERM: its shutdown then has that request to
/// drain. The connection is returned, to be kept open meanwhile.
#[cfg(unix)]
fn sigterm_while_holding(
    child: &Child,
    stdout: &mpsc::Receiver<String>,
    addr: &str,
) -> std::net::TcpStream {
    let mut held = std::net::TcpStream::connect(addr).expect("connect");
    held.write_all(b"GET /hold HTTP/1.1\r\nhost: x\r\n\r\n")
        .expect("request");
    wait_for(stdout, "holding");
    sigterm(child);
    held
}

/// A command that runs this binary again.
#[cfg(unix)]
fn this_binary() -> Command {
    Command::new(std::env::current_exe().expect("own path"))
}

/// By path or (`abstract_name`, Linux) by an abstract name. Its watchdog variables are
/// for another process (the one systemd started, which started this one): no pings.
#[cfg(unix)]
fn systemd_hears_ready_once_the_server_listens_and_its_status_at_shutdown(abstract_name: bool) {
    let notify = NotifySocket::bind(&format!("ready-{abstract_name}"), abstract_name);
    // This process's id: never the child's.
    let other_process = std::process::id().to_string();
    let child = notified_child(
        &mut this_binary(),
        &notify.name,
        Some("100000"),
        Some(&other_process),
    );
    checking(child, |child, stdout, _| {
        let addr = child_addr(stdout);
        assert_eq!(
            notify.received(),
            format!("READY=1\nSTATUS=syncbridge listening on {addr}")
        );
        // Ready means accepting: a client connects and is served at once.
        let _held = sigterm_while_holding(child, stdout, &addr);
        // The status only: `STOPPING=1` would stop the whole unit. And no `WATCHDOG=1`
        // before it, although a ping for this process would go at once after `READY=1`.
        assert_eq!(notify.received(), "STATUS=syncbridge shutting down");
    });
    println!("systemd_hears_ready_once_the_server_listens_and_its_status_at_shutdown (abstract name: {abstract_name}) ... ok");
}

/// A server on a runtime of one thread (`serve_async` on a current-thread runtime) that
/// outlives it. `/stall` has a background task block that thread for [`STALL`], as a sync
/// call made from async code does; any other path holds its handler thread for
/// [`HOLD`], so that a shutdown has a request to drain. After `serve_async` returns, the
/// runtime idles for three of the watchdog's intervals before the process ends.
#[cfg(unix)]
fn watchdog_child() {
    log_to_stderr();
    let switched_on = |name| std::env::var_os(name).is_none();
    let server = syncbridge::Server::bind("127.0.0.1:0")
        .notify_systemd(switched_on(NO_READY))
        .systemd_watchdog(switched_on(NO_WATCHDOG));
    println!("addr={}", server.local_addr());
    let interval = std::env::var("WATCHDOG_USEC")
        .ok()
        .and_then(|usec| usec.parse().ok())
        .map_or(Duration::ZERO, |usec| Duration::from_micros(usec) / 2);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let handler = |req: syncbridge::Request| {
            if req.uri().path() == "/stall" {
                let tasks = syncbridge::TaskSet::current().expect("a task set");
                let _ = tasks.spawn(|_ctx| async {
                    std::thread::sleep(STALL);
                    Ok::<_, std::io::Error>(())
                });
                "stalling\n"
            } else {
                println!("holding");
                std::thread::sleep(HOLD);
                "held\n"
            }
        };
        server.serve_async(handler).await.expect("serve");
        println!("serve returned");
        tokio::time::sleep(interval * 3).await;
        println!("idled");
    });
}

/// How long [`watchdog_child`] blocks its runtime, against a watchdog limit of 400 ms.
#[cfg(unix)]
const STALL: Duration = Duration::from_millis(600);

/// How long [`watchdog_child`] holds a request that its shutdown drains.
#[cfg(unix)]
const HOLD: Duration = Duration::from_millis(1000);

#[cfg(unix)]
fn systemd_s_watchdog_is_pinged_while_the_server_runs_and_not_while_its_runtime_stalls() {
    let notify = NotifySocket::bind("watchdog", false);
    // An empty `$WATCHDOG_PID` is not "any process": sd_watchdog_enabled(3) refuses it.
    let child = notified_child(&mut this_binary(), &notify.name, Some("400000"), Some(""));
    checking(child, |child, _, stderr| {
        wait_for(stderr, "WATCHDOG_PID is \"\", not a process id");
        assert!(notify.received().starts_with("READY=1\n"));
        sigterm(child);
        assert_eq!(notify.received(), "STATUS=syncbridge shutting down");
    });

    let child = notified_child(&mut this_binary(), &notify.name, Some("400000"), None);
    checking(child, |child, stdout, stderr| {
        let addr = child_addr(stdout);
        assert!(notify.received().starts_with("READY=1\n"));
        let pinging = wait_for(stderr, "pinging systemd's watchdog");
        assert_eq!(field(&pinging, "every_ms="), "200", "{pinging}");
        assert_eq!(notify.received(), "WATCHDOG=1", "a first ping at once");

        // A background task blocks the runtime's one thread for STALL: no ping goes for
        // that long (systemd would have killed the service), and then the stall is said.
        let (mut last_ping, _) = notify.received_at();
        let mut conn = std::net::TcpStream::connect(&addr).expect("connect");
        conn.set_read_timeout(Some(STEP)).unwrap();
        conn.write_all(b"GET /stall HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .expect("request");
        let (mut longest, sent) = (Duration::ZERO, Instant::now());
        // Half the stall: what the reader thread sees, it may see late.
        while longest < STALL / 2 {
            assert!(
                sent.elapsed() < STEP,
                "pinged all along: {longest:?} at most between"
            );
            let (at, ping) = notify.received_at();
            assert_eq!(ping, "WATCHDOG=1");
            longest = longest.max(at - last_ping);
            last_ping = at;
        }
        // The stall's line: on a loaded machine a shorter hiccup may be said before it.
        // Told apart by the time since the last ping, which the stall makes 600 ms or
        // more (a hiccup's line, with a recent ping, is passed over); its tick is late by
        // less: by the stall, less what was left of the period when it began.
        let (said, since_last_ping) = loop {
            let said = wait_for(stderr, "ping task did not run for");
            let since_last_ping: u64 = field(&said, "since_last_ping_ms=").parse().unwrap();
            if since_last_ping >= 550 {
                break (said, since_last_ping);
            }
        };
        let late_ms: u64 = field(&said, "late_ms=").parse().unwrap();
        assert!(late_ms >= 300 && late_ms < since_last_ping, "{said}");
        assert_eq!(field(&said, "watchdog_ms="), "400", "{said}");
        let mut answer = String::new();
        std::io::Read::read_to_string(&mut conn, &mut answer).expect("answer");
        assert!(answer.ends_with("stalling\n"), "{answer}");

        // Pinged through the drain of a request that holds on after SIGTERM, and not
        // once `serve_async` has returned, though its runtime goes on.
        let _held = sigterm_while_holding(child, stdout, &addr);
        let signalled = Instant::now();
        while notify.received() != "STATUS=syncbridge shutting down" {
            assert!(signalled.elapsed() < STEP, "no shutdown status");
        }
        assert_eq!(notify.received(), "WATCHDOG=1", "a ping during the drain");
        wait_for(stdout, "serve returned");
        notify.skip_received();
        wait_for(stdout, "idled");
        // One may have been on its way when the server stopped.
        let after = notify.skip_received();
        assert!(after <= 1, "{after} pings after serve_async returned");
    });
    println!("systemd_s_watchdog_is_pinged_while_the_server_runs_and_not_while_its_runtime_stalls ... ok");
}

/// Readiness and the watchdog have a switch each: a program that says `READY=1` itself
/// still has its server's runtime watched, and one that pings itself still has the
/// server say it is ready.
#[cfg(unix)]
fn readiness_and_the_watchdog_are_switched_apart() {
    let notify = NotifySocket::bind("switched", false);
    let with_off = |switch| {
        let mut command = this_binary();
        command.env(switch, "1");
        notified_child(&mut command, &notify.name, Some("400000"), None)
    };
    checking(with_off(NO_READY), |child, stdout, stderr| {
        wait_for(stderr, "pinging systemd's watchdog");
        // Pinged, at once and then again, and never told `READY=1`.
        assert_eq!(notify.received(), "WATCHDOG=1");
        assert_eq!(notify.received(), "WATCHDOG=1");
        sigterm(child);
        // Nor its shutdown, which was over three intervals before the child says this.
        wait_for(stdout, "idled");
        for (_, message) in notify.messages.try_iter() {
            assert_eq!(message, "WATCHDOG=1", "the server told systemd more");
        }
    });

    checking(with_off(NO_WATCHDOG), |child, stdout, _| {
        let addr = child_addr(stdout);
        assert!(notify.received().starts_with("READY=1\n"));
        let _held = sigterm_while_holding(child, stdout, &addr);
        // No ping went between, though one would at once after `READY=1`.
        assert_eq!(notify.received(), "STATUS=syncbridge shutting down");
    });
    println!("readiness_and_the_watchdog_are_switched_apart ... ok");
}

/// systemd busy: its queue of notifications is full when the server starts, so that
/// `READY=1` and the first ping find no room. Both go once there is, the ping within
/// its retry, not half the limit (5 s here) later.
#[cfg(unix)]
fn a_watchdog_ping_that_finds_systemd_s_queue_full_goes_once_there_is_room() {
    use std::os::unix::net::UnixDatagram;
    let file = TempFile::new(&format!("syncbridge-full-{}", std::process::id()));
    let path = &file.0;
    let socket = UnixDatagram::bind(path).unwrap();
    let filler = UnixDatagram::unbound().unwrap();
    filler.set_nonblocking(true).unwrap();
    let mut queued = 0;
    while filler.send_to(b"filler", path).is_ok() {
        queued += 1;
        assert!(queued < 100_000, "the queue never filled");
    }
    let name = path.display().to_string();
    let child = notified_child(&mut this_binary(), &name, Some("10000000"), None);
    checking(child, |_, _, stderr| {
        wait_for(stderr, "could not ping systemd's watchdog");
        socket.set_read_timeout(Some(STEP)).unwrap();
        let mut buf = [0u8; 512];
        for _ in 0..queued {
            let n = socket.recv(&mut buf).expect("a filler");
            assert_eq!(&buf[..n], b"filler");
        }
        let room = Instant::now();
        let mut pinged = None;
        let mut ready = false;
        while pinged.is_none() || !ready {
            let n = socket
                .recv(&mut buf)
                .expect("READY=1 and a ping within the step");
            match &buf[..n] {
                b"WATCHDOG=1" => pinged = Some(room.elapsed()),
                message => ready |= message.starts_with(b"READY=1\n"),
            }
        }
        let pinged = pinged.unwrap_or_default();
        assert!(
            pinged < Duration::from_secs(2),
            "pinged {pinged:?} after there was room"
        );
        wait_for(stderr, "systemd's watchdog is pinged again");
    });
    println!("a_watchdog_ping_that_finds_systemd_s_queue_full_goes_once_there_is_room ... ok");
}

/// A server as systemd starts it for its `.socket` unit: it serves what it was passed, or
/// prints why it cannot.
#[cfg(unix)]
fn activated_child() {
    match syncbridge::Server::from_systemd() {
        Ok(server) => {
            let addrs: Vec<String> = server
                .listen_addrs()
                .iter()
                .map(|a| a.to_string())
                .collect();
            println!("serving {}", addrs.join(", "));
            server
                .serve(|_req: syncbridge::Request| "activated\n")
                .expect("serve");
            println!("serve returned");
        }
        Err(err) => {
            println!("from_systemd: {err}");
            let passed: i32 = std::env::var("LISTEN_FDS").map_or(1, |n| n.parse().unwrap());
            for fd in 3..3 + passed {
                // SAFETY: a plain integer; `fcntl` on a number that is not open fails.
                let open = unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0;
                println!(
                    "descriptor {fd} after: {}",
                    if open { "open" } else { "closed" }
                );
            }
        }
    }
}

/// A child process, killed when dropped: a failed check leaves no server behind.
#[cfg(unix)]
struct Running(Child);

#[cfg(unix)]
impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the activated child as systemd would: `passed` as its descriptors 3, 4 and on,
/// `$LISTEN_FDS` their number and `$LISTEN_PID` its own pid (a shell that execs it keeps
/// its pid); with none passed, neither variable.
#[cfg(unix)]
fn start_activated(
    passed: &[std::os::fd::RawFd],
    notify: Option<&NotifySocket>,
) -> (Running, mpsc::Receiver<String>) {
    use std::os::unix::process::CommandExt;
    let mut command = Command::new("sh");
    command
        .args(["-c", "LISTEN_PID=$$ exec \"$0\""])
        .arg(std::env::current_exe().expect("own path"))
        .env(ACTIVATED_CHILD, "1")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(notify) = notify {
        command.env("NOTIFY_SOCKET", &notify.name);
    }
    if !passed.is_empty() {
        // At most 8: the child's side below allocates nothing after the fork.
        assert!(passed.len() <= 8, "pass at most 8 descriptors");
        command.env("LISTEN_FDS", passed.len().to_string());
        let passed = passed.to_vec();
        // SAFETY: `dup2` and `fcntl` are async-signal-safe, and touch only descriptors;
        // nothing is allocated.
        unsafe {
            command.pre_exec(move || {
                // Each moved out of the way first (closed at the exec), so that putting
                // one in place cannot overwrite another still to be moved.
                let mut moved = [0; 8];
                for (i, &fd) in passed.iter().enumerate() {
                    moved[i] = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 100);
                    if moved[i] < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                for (i, &fd) in moved[..passed.len()].iter().enumerate() {
                    if libc::dup2(fd, 3 + i as i32) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    }
    let mut child = command.spawn().expect("start the activated server");
    let stdout = lines(child.stdout.take().expect("stdout"));
    (Running(child), stdout)
}

/// Sends one `GET /` over `stream` and returns the whole answer (the server closes).
#[cfg(unix)]
fn get_over(mut stream: impl std::io::Read + Write) -> String {
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .expect("request");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("answer");
    answer
}

#[cfg(unix)]
fn a_server_started_by_its_socket_unit_serves_the_sockets_systemd_passed() {
    use std::os::fd::AsRawFd;
    let stop = |child: Running, stdout: &mpsc::Receiver<String>| {
        sigterm(&child.0);
        wait_for(stdout, "serve returned");
    };

    // TCP: a connection made before the server started waits in the socket's backlog,
    // and is served.
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = tcp.local_addr().unwrap();
    let early = std::net::TcpStream::connect(addr).unwrap();
    let (child, stdout) = start_activated(&[tcp.as_raw_fd()], None);
    drop(tcp);
    let serving = wait_for(&stdout, "serving ");
    assert!(serving.ends_with(&addr.to_string()), "{serving}");
    let answer = get_over(early);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("activated\n"), "{answer}");
    stop(child, &stdout);

    // A Unix socket: its file is systemd's, and stays when the server stops.
    let file = TempFile::new(&format!("syncbridge-activated-{}.sock", std::process::id()));
    let path = &file.0;
    let unix = std::os::unix::net::UnixListener::bind(path).unwrap();
    let (child, stdout) = start_activated(&[unix.as_raw_fd()], None);
    drop(unix);
    wait_for(&stdout, &format!("serving unix:{}", path.display()));
    let answer = get_over(std::os::unix::net::UnixStream::connect(path).unwrap());
    assert!(answer.ends_with("activated\n"), "{answer}");
    stop(child, &stdout);
    assert!(path.exists(), "the socket file is systemd's to remove");
    let _ = std::fs::remove_file(path);

    // Two sockets (two `ListenStream=` lines): one server, serving both, in their order,
    // and its status names both.
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = tcp.local_addr().unwrap();
    let _ = std::fs::remove_file(path);
    let unix = std::os::unix::net::UnixListener::bind(path).unwrap();
    let notify = NotifySocket::bind("activated", false);
    let (child, stdout) = start_activated(&[tcp.as_raw_fd(), unix.as_raw_fd()], Some(&notify));
    drop((tcp, unix));
    let both = format!("{addr}, unix:{}", path.display());
    wait_for(&stdout, &format!("serving {both}"));
    let ready = notify.received();
    assert_eq!(
        ready,
        format!("READY=1\nSTATUS=syncbridge listening on {both}")
    );
    let answer = get_over(std::os::unix::net::UnixStream::connect(path).unwrap());
    assert!(answer.ends_with("activated\n"), "{answer}");
    let answer = get_over(std::net::TcpStream::connect(addr).unwrap());
    assert!(answer.ends_with("activated\n"), "{answer}");
    stop(child, &stdout);

    // One of two is a connection (`Accept=yes`): neither is taken, and the refusal
    // names the one.
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let connection = std::net::TcpStream::connect(tcp.local_addr().unwrap()).unwrap();
    let (_child, stdout) = start_activated(&[tcp.as_raw_fd(), connection.as_raw_fd()], None);
    let refused = wait_for(&stdout, "from_systemd: ");
    assert!(
        refused.contains("descriptor 4: not a listening stream socket"),
        "{refused}"
    );
    assert!(wait_for(&stdout, "descriptor 3 after: ").ends_with("open"));
    assert!(wait_for(&stdout, "descriptor 4 after: ").ends_with("open"));

    // `Accept=yes` passes a connection, not the listener: refused, and said why.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let connection = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (_child, stdout) = start_activated(&[connection.as_raw_fd()], None);
    let refused = wait_for(&stdout, "from_systemd: ");
    assert!(
        refused.contains("not a listening stream socket"),
        "{refused}"
    );

    // Descriptor 3 is something else (a file, a runtime's epoll): refused, and left open.
    let file = std::fs::File::open("/dev/null").unwrap();
    let (_child, stdout) = start_activated(&[file.as_raw_fd()], None);
    let refused = wait_for(&stdout, "from_systemd: ");
    assert!(refused.contains("descriptor 3"), "{refused}");
    let still = wait_for(&stdout, "descriptor 3 after: ");
    assert!(still.ends_with("open"), "{still}");

    // Started by hand, without systemd: nothing to take.
    let (_child, stdout) = start_activated(&[], None);
    let refused = wait_for(&stdout, "from_systemd: ");
    assert!(
        refused.contains("LISTEN_PID and LISTEN_FDS are not set"),
        "{refused}"
    );
    println!("a_server_started_by_its_socket_unit_serves_the_sockets_systemd_passed ... ok");
}

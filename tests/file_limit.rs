//! The bundled server at the process's open-file limit: it keeps serving the connections
//! it has, says why new ones wait once a second rather than at every retry of `accept`,
//! and takes them once files free up. A binary of its own: it lowers the limit of the
//! whole process.
#![cfg(target_os = "linux")]
mod support;

use std::io::{Read, Write};
use std::time::Duration;

use support::{logs, within, TestServer};

fn nofile() -> libc::rlimit {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` outlives the call, which only writes it.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
        0
    );
    limit
}

fn set_nofile(limit: libc::rlimit) {
    // SAFETY: reads `limit` only.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
}

/// One keep-alive request on `stream`, which must come back `200`.
fn hello(stream: &mut std::net::TcpStream) {
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    let mut rest = [0u8; 512];
    let _ = stream.read(&mut rest).unwrap();
}

#[tokio::test]
async fn at_the_open_file_limit_accept_failures_are_logged_once_a_second() {
    logs::install();
    let server = TestServer::start(|_req: syncbridge::Request| "ok");
    let mut held = std::net::TcpStream::connect(server.addr).unwrap();
    held.set_read_timeout(Some(support::STEP)).unwrap();
    hello(&mut held);

    let before = nofile();
    let open = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
    set_nofile(libc::rlimit {
        rlim_cur: open + 16,
        ..before
    });
    // Placeholders take every file left; one is then handed to a client, so the process
    // is at the limit with that client waiting in the backlog, and the server's `accept`
    // fails for it with EMFILE until a file frees up. (Clients alone would race the
    // server for the last file: it could take it, leaving nothing to fail.)
    let mut placeholders = Vec::new();
    let refused = loop {
        match std::fs::File::open("/dev/null") {
            Ok(file) => placeholders.push(file),
            Err(err) => break err,
        }
        assert!(placeholders.len() < 64, "never reached the limit");
    };
    assert_eq!(refused.raw_os_error(), Some(libc::EMFILE), "{refused}");
    placeholders.pop();
    let waiting = std::net::TcpStream::connect(server.addr).unwrap();
    // Measured over a time, so waited for: ten retries a second meanwhile.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let lines = logs::count(&["accept failed"]);

    // The connection the server already had is served all along.
    hello(&mut held);
    set_nofile(before);
    drop((placeholders, waiting));
    let reply = within(support::get(server.addr, "/")).await;
    assert_eq!(reply.status, 200);
    server.stop().await;
    assert!(
        (1..=3).contains(&lines),
        "{lines} `accept failed` lines in 1.5 s"
    );
}

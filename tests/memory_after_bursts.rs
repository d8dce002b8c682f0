//! What a burst's handlers freed goes back to the OS once the pool is idle: glibc's malloc
//! would keep it for good, and a server's resident memory would stay at its peak.
//!
//! In a file of its own: it reads the resident memory of the whole test process.
#![cfg(all(target_os = "linux", target_env = "gnu"))]

mod support;

use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use support::{within, TestServer};
use syncbridge::{BlockingPool, Request, Server};

/// Small allocations that outlive their request (a cache entry, a pooled connection),
/// each made above a burst's memory in its thread's arena, which then cannot shrink past
/// it on its own.
static PINNED: Mutex<Vec<Box<[u8]>>> = Mutex::new(Vec::new());

const MIB: u64 = 1 << 20;

const HANDLERS: usize = 8;

/// How long the pools' threads wait for work before they leave.
const KEEP: Duration = Duration::from_millis(300);

/// Serves on `server` (`HANDLERS` threads kept 300 ms), whose handlers each hold 8 MiB
/// of their thread's arena at the same time, then free it under a small allocation that
/// outlives them; returns once `HANDLERS` requests were served.
async fn burst(server: Server) -> TestServer {
    const PIECE: usize = 32 * 1024; // under glibc's mmap threshold: from the arena
    const PER_HANDLER: usize = 8 << 20;
    let together = Arc::new(Barrier::new(HANDLERS));
    let server = TestServer::start_with(server, move |_req: Request| {
        let pieces: Vec<Vec<u8>> = (0..PER_HANDLER / PIECE).map(|_| vec![1u8; PIECE]).collect();
        PINNED
            .lock()
            .unwrap()
            .push(vec![2u8; 64].into_boxed_slice());
        // Each handler holds its pieces on its own thread at the same time.
        together.wait();
        drop(pieces);
        "done"
    });
    let requests: Vec<_> = (0..HANDLERS)
        .map(|_| tokio::spawn(support::get(server.addr, "/")))
        .collect();
    for request in requests {
        assert_eq!(within(request).await.unwrap().status, 200);
    }
    server
}

/// Waits until `pool` has no thread left.
async fn threads_gone(pool: &BlockingPool) {
    within(async {
        while pool.stats().threads > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

// One test, its two halves in turn: both read the process's memory.
#[tokio::test]
async fn memory_a_burst_freed_is_handed_back_once_the_servers_pool_is_idle() {
    let (_, before) = support::memory();

    // A pool of one's own, which does not trim unless asked: the memory stays with the
    // allocator.
    let pool = BlockingPool::builder()
        .max_threads(HANDLERS)
        .keep_alive(KEEP)
        .build();
    let server = burst(Server::bind("127.0.0.1:0").pool(pool.clone())).await;
    let (_, after_burst) = support::memory();
    assert!(
        after_burst >= before + 32 * MIB,
        "the burst held {} MiB",
        (after_burst.saturating_sub(before)) / MIB
    );
    threads_gone(&pool).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, kept) = support::memory();
    assert!(kept >= before + 32 * MIB, "{} MiB", kept / MIB);
    server.stop().await;

    // The server's own pool: the last thread out hands it back, this burst's and the one
    // before.
    let server = burst(
        Server::bind("127.0.0.1:0")
            .max_threads(HANDLERS)
            .thread_keep_alive(KEEP),
    )
    .await;
    let handed_back = within(async {
        loop {
            let (_, now) = support::memory();
            if now <= before + 16 * MIB {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(handed_back < kept);
    server.stop().await;
}

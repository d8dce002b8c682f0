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

#[tokio::test]
async fn memory_a_burst_freed_is_handed_back_once_the_pool_is_idle() {
    const HANDLERS: usize = 8;
    const PIECE: usize = 32 * 1024; // under glibc's mmap threshold: from the arena
    const PER_HANDLER: usize = 8 << 20;
    let pool = BlockingPool::builder()
        .max_threads(HANDLERS)
        .keep_alive(Duration::from_millis(300))
        .build();
    let together = Arc::new(Barrier::new(HANDLERS));
    let server = TestServer::start_with(
        Server::bind("127.0.0.1:0").pool(pool.clone()),
        move |_req: Request| {
            let pieces: Vec<Vec<u8>> = (0..PER_HANDLER / PIECE).map(|_| vec![1u8; PIECE]).collect();
            PINNED
                .lock()
                .unwrap()
                .push(vec![2u8; 64].into_boxed_slice());
            // Each handler holds its pieces on its own thread at the same time.
            together.wait();
            drop(pieces);
            "done"
        },
    );
    let (_, before) = support::memory();
    let requests: Vec<_> = (0..HANDLERS)
        .map(|_| tokio::spawn(support::get(server.addr, "/")))
        .collect();
    for request in requests {
        assert_eq!(within(request).await.unwrap().status, 200);
    }
    let (_, after_burst) = support::memory();
    assert!(
        after_burst >= before + 32 * MIB,
        "the burst held {} MiB",
        (after_burst.saturating_sub(before)) / MIB
    );

    // The pool's threads leave 300 ms after their last job; the last one out trims.
    let handed_back = within(async {
        loop {
            let (_, now) = support::memory();
            if pool.stats().threads == 0 && now <= before + 16 * MIB {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(handed_back < after_burst);
    server.stop().await;
}

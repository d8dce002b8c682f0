//! Settings at the ends of their ranges: `usize::MAX` for "no limit", names std would
//! refuse. Each server starts, serves and stops; none panics inside the crate or tokio.
mod support;

use std::time::Duration;

use support::{get, within, TestServer};
use syncbridge::{BlockingPool, Request, Server, SingleThread, TaskSet};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A handler that spawns a blocking task and waits for it: both pools and the task set.
fn spawn_and_join(_: Request) -> syncbridge::Result<String> {
    let value = TaskSet::current()?
        .spawn_blocking(|_| Ok::<_, BoxError>(41 + 1))?
        .join_blocking()?;
    Ok(format!(
        "{value} on {}",
        std::thread::current().name().unwrap_or("?")
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_of_usize_max_mean_no_limit() {
    // Before: the admission check's `free + queue_capacity` overflowed, a panic on the
    // runtime thread (no response) in debug builds and a wrong `503` in release; and
    // the task set's semaphore panicked at `serve`.
    let server = Server::bind("127.0.0.1:0")
        .max_threads(usize::MAX)
        .queue_capacity(usize::MAX)
        .max_task_threads(usize::MAX)
        .task_queue_capacity(usize::MAX)
        .max_tasks(usize::MAX);
    let server = TestServer::start_with(server, spawn_and_join);
    for _ in 0..3 {
        let reply = get(server.addr, "/").await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert!(reply.text().starts_with("42 on "), "{}", reply.text());
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_of_usize_max_behind_two_threads_still_starts_the_second() {
    let pool = BlockingPool::builder()
        .max_threads(2)
        .queue_capacity(usize::MAX)
        .build();
    let (busy, release) = support::occupy_one_thread(&pool).await;
    // With the sum wrapped, a second call was refused though a thread was free.
    let second = within(syncbridge::ensure_async_on(&pool, || 7)).await;
    assert_eq!(second.unwrap(), 7);
    release.send(()).unwrap();
    within(busy).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thread_names_with_a_nul_byte_are_taken_without_it() {
    // Before: std panicked starting each thread, on the runtime's thread, and the pool's
    // counters kept the failed thread as busy for good.
    let pool = BlockingPool::builder()
        .max_threads(2)
        .thread_name("legacy\0app")
        .build();
    let server = TestServer::start_with(Server::bind("127.0.0.1:0").pool(pool), |_: Request| {
        std::thread::current().name().unwrap_or("?").to_owned()
    });
    for _ in 0..3 {
        let reply = get(server.addr, "/").await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.text(), "legacyapp");
    }
    server.stop().await;

    let single = within(tokio::task::spawn_blocking(|| {
        SingleThread::builder()
            .thread_name("single\0thread")
            .queue_timeout(Duration::from_secs(5))
            .spawn(|| |_: Request| std::thread::current().name().unwrap_or("?").to_owned())
    }))
    .await
    .unwrap();
    assert!(single.is_ok(), "{:?}", single.err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_thread_queue_of_usize_max_is_not_allocated_up_front() {
    // Before: std's bounded channel allocated every place at `spawn` (about 350 bytes
    // each: 3.4 GB for ten million), and panicked on `usize::MAX`.
    let (_, memory_before) = support::memory();
    let single = within(tokio::task::spawn_blocking(|| {
        SingleThread::builder()
            .queue_capacity(usize::MAX)
            .spawn(|| |_: Request| "served")
    }))
    .await
    .unwrap()
    .expect("spawned");
    let (_, memory_after) = support::memory();
    // The process's memory, which the binary's other tests, running meanwhile, share:
    // 512 MiB is far above what they take, and far below the gigabytes of an
    // allocation up front (3.4 GB for ten million places, more for `usize::MAX`).
    assert!(
        memory_after < memory_before + 512 * 1024 * 1024,
        "{memory_before} -> {memory_after} bytes"
    );
    let server = TestServer::start(single);
    let reply = get(server.addr, "/").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "served");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_of_duration_max_is_sent_as_one_day() {
    // Before: the header carried all 20 digits of `u64::MAX` seconds.
    let pool = BlockingPool::builder()
        .max_threads(1)
        .queue_capacity(0)
        .build();
    let server = Server::bind("127.0.0.1:0")
        .pool(pool.clone())
        .retry_after(Duration::MAX);
    let server = TestServer::start_with(server, |_: Request| "ok");
    let (busy, release) = support::occupy_one_thread(&pool).await;
    let reply = get(server.addr, "/").await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.headers["retry-after"], "86400");
    release.send(()).unwrap();
    within(busy).await.unwrap().unwrap();
    server.stop().await;
}

/// Uses about `frames` × 4 KiB of stack.
fn deep(frames: usize) -> u64 {
    let page = std::hint::black_box([frames as u8; 4096]);
    if frames == 0 {
        return 0;
    }
    deep(frames - 1) + u64::from(page[frames % 4096])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stack_size_serves_handlers_and_tasks_that_need_more_than_2_mib() {
    // About 6 MiB of stack, in the handler and in a background task: past std's 2 MiB
    // default, where the overflow would abort this whole test binary.
    let server = Server::bind("127.0.0.1:0").thread_stack_size(16 << 20);
    let server = TestServer::start_with(server, |_: Request| -> syncbridge::Result<String> {
        let in_task = TaskSet::current()?
            .spawn_blocking(|_| Ok::<_, BoxError>(deep(1500)))?
            .join_blocking()?;
        Ok(format!("{} {in_task}", deep(1500)))
    });
    let reply = get(server.addr, "/").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let expected = (1..=1500u64).map(|n| n % 256).sum::<u64>();
    assert_eq!(reply.text(), format!("{expected} {expected}"));
    server.stop().await;
}

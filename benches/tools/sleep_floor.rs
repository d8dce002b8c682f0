//! The floor under W3: how many 50 ms sleeps per second N plain threads complete on this
//! machine, and how late they wake, with no server, no sockets and no client.
//!
//! W3 asks for 5,050 req/s and a p99 of 53 ms from 256 clients whose requests each sleep
//! 50 ms on a blocking thread. A thread's sleep ends when the kernel, and on a VM the
//! host, gets round to running it again; whatever that costs here, no server can beat.
//!
//! Standard library only, so it builds without cargo:
//!
//! ```text
//! rustc -O -o /tmp/sleep_floor benches/tools/sleep_floor.rs
//! taskset -c 0 /tmp/sleep_floor 256 5     # threads, seconds
//! ```
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SLEEP: Duration = Duration::from_millis(50);

fn main() {
    let mut args = std::env::args().skip(1);
    let threads: usize = args.next().map_or(256, |a| a.parse().expect("threads"));
    let seconds: u64 = args.next().map_or(5, |a| a.parse().expect("seconds"));
    let stop = Arc::new(AtomicBool::new(false));
    let lates = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|i| {
            let (stop, lates) = (stop.clone(), lates.clone());
            std::thread::spawn(move || {
                // Spread the first sleeps over one period, as wrk's clients spread out
                // after the first wave.
                std::thread::sleep(SLEEP * i as u32 / threads as u32);
                let mut own = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let before = Instant::now();
                    std::thread::sleep(SLEEP);
                    own.push(before.elapsed().saturating_sub(SLEEP));
                }
                lates.lock().unwrap().extend(own);
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(seconds));
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.join().unwrap();
    }
    let elapsed = started.elapsed();
    let mut lates = Arc::try_unwrap(lates).unwrap().into_inner().unwrap();
    lates.sort();
    let at = |p: usize| lates[(lates.len() * p / 100).min(lates.len() - 1)];
    let mean = lates.iter().sum::<Duration>() / lates.len() as u32;
    println!(
        "{threads} threads, {} sleeps in {:.2} s: {:.0} sleeps/s; late by mean {} µs, p50 {} µs, p90 {} µs, p99 {} µs",
        lates.len(),
        elapsed.as_secs_f64(),
        lates.len() as f64 / elapsed.as_secs_f64(),
        mean.as_micros(),
        at(50).as_micros(),
        at(90).as_micros(),
        at(99).as_micros(),
    );
}

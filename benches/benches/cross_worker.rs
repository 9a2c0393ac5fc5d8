//! Cross-worker message round trips: two continuations on two workers
//! bouncing a message (molt's inbox, with its spin-then-park workers), next
//! to the same two-party ping-pong over crossbeam-channel, flume and tokio
//! mpsc, measured in the same run. The initiator timestamps every round trip.
//!
//! First a percentile table (HdrHistogram, 20,000 round trips each after a
//! warm-up), then criterion's means.

use std::time::{Duration, Instant};

use criterion::Criterion;
use fixture_probe::tag;
use molt_benches::{Percentiles, expect, probe_runtime_spin};
use molt_runtime::Runtime;

const ROUNDS: u64 = 20_000;

struct Molt {
    rt: Runtime,
    c0: u64,
    c1: u64,
    _v: molt_runtime::module::VersionRef,
}

impl Molt {
    fn new(spin: Duration) -> Molt {
        let (rt, v) = probe_runtime_spin(2, spin);
        let c0 = rt.spawn(&v, 0, 0).unwrap();
        let c1 = rt.spawn(&v, 1, 0).unwrap();
        expect(&rt, tag::STARTED);
        expect(&rt, tag::STARTED);
        Molt { rt, c0, c1, _v: v }
    }

    fn run(&self, rounds: u64) -> Vec<u64> {
        let mut m = self.c1.to_le_bytes().to_vec();
        m.extend_from_slice(&rounds.to_le_bytes());
        self.rt.send(self.c0, tag::TIMED_START, &m).unwrap();
        let r = expect(&self.rt, tag::TIMED_DONE);
        r.data.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())).collect()
    }
}

/// A two-thread ping-pong over a bounded(1) channel pair, the initiator
/// timing each round trip. crossbeam-channel and flume share this API shape,
/// so one body serves both.
macro_rules! thread_ping_pong {
    ($name:ident, $bounded:path) => {
        fn $name(rounds: u64) -> Vec<u64> {
            let (to_b, b_rx) = $bounded(1);
            let (to_a, a_rx) = $bounded(1);
            let b = std::thread::spawn(move || {
                while let Ok(v) = b_rx.recv() {
                    if to_a.send(v).is_err() {
                        break;
                    }
                }
            });
            let mut out = Vec::with_capacity(rounds as usize);
            for i in 0..rounds {
                let t = Instant::now();
                to_b.send(i).unwrap();
                a_rx.recv().unwrap();
                out.push(t.elapsed().as_nanos() as u64);
            }
            drop(to_b);
            b.join().unwrap();
            out
        }
    };
}

thread_ping_pong!(crossbeam, crossbeam_channel::bounded::<u64>);
thread_ping_pong!(flume, flume::bounded::<u64>);

/// The echoing party of a tokio ping-pong: sends back what it receives.
async fn tokio_echo(mut rx: tokio::sync::mpsc::Receiver<u64>, tx: tokio::sync::mpsc::Sender<u64>) {
    while let Some(v) = rx.recv().await {
        if tx.send(v).await.is_err() {
            break;
        }
    }
}

/// The timing party: `rounds` round trips, each timed.
async fn tokio_ping(
    tx: tokio::sync::mpsc::Sender<u64>,
    mut rx: tokio::sync::mpsc::Receiver<u64>,
    rounds: u64,
) -> Vec<u64> {
    let mut out = Vec::with_capacity(rounds as usize);
    for i in 0..rounds {
        let t = Instant::now();
        tx.send(i).await.unwrap();
        rx.recv().await.unwrap();
        out.push(t.elapsed().as_nanos() as u64);
    }
    out
}

fn tokio_mpsc(rt: &tokio::runtime::Runtime, rounds: u64) -> Vec<u64> {
    rt.block_on(async move {
        let (to_b, b_rx) = tokio::sync::mpsc::channel::<u64>(1);
        let (to_a, a_rx) = tokio::sync::mpsc::channel::<u64>(1);
        let b = tokio::spawn(tokio_echo(b_rx, to_a));
        let out = tokio::spawn(tokio_ping(to_b, a_rx, rounds)).await.unwrap();
        b.await.unwrap();
        out
    })
}

/// tokio mpsc with each party on its own thread (a current-thread runtime
/// each), so every round trip crosses threads as molt's does.
fn tokio_two_threads(rounds: u64) -> Vec<u64> {
    let (to_b, b_rx) = tokio::sync::mpsc::channel::<u64>(1);
    let (to_a, a_rx) = tokio::sync::mpsc::channel::<u64>(1);
    let b = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(tokio_echo(b_rx, to_a));
    });
    let out = tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(tokio_ping(to_b, a_rx, rounds));
    b.join().unwrap();
    out
}

fn total(samples: &[u64]) -> Duration {
    Duration::from_nanos(samples.iter().sum())
}

fn main() {
    let tokio_rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap();
    // Warm-up, then the percentile table: molt at several spin-before-park
    // settings (the trade-off behind the default), then the peers.
    crossbeam(2_000);
    flume(2_000);
    tokio_mpsc(&tokio_rt, 2_000);
    tokio_two_threads(2_000);
    println!("\ncross-worker round trip, {ROUNDS} round trips each\n{}", Percentiles::header());
    for us in [0u64, 5, 20, 50, 200] {
        let m = Molt::new(Duration::from_micros(us));
        m.run(2_000);
        println!("{}", Percentiles::of(&format!("molt, spin {us} us"), &m.run(ROUNDS)).row());
        m.rt.shutdown();
    }
    let molt = Molt::new(molt_runtime::RuntimeConfig::default().spin);
    molt.run(2_000);
    for p in [
        Percentiles::of("crossbeam-channel bounded(1)", &crossbeam(ROUNDS)),
        Percentiles::of("flume bounded(1)", &flume(ROUNDS)),
        Percentiles::of("tokio mpsc (2 workers)", &tokio_mpsc(&tokio_rt, ROUNDS)),
        Percentiles::of("tokio mpsc (one thread each)", &tokio_two_threads(ROUNDS)),
    ] {
        println!("{}", p.row());
    }
    println!();

    let mut c = Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .configure_from_args();
    let mut g = c.benchmark_group("cross_worker_round_trip");
    g.bench_function("molt", |b| b.iter_custom(|n| total(&molt.run(n))));
    g.bench_function("crossbeam_channel", |b| b.iter_custom(|n| total(&crossbeam(n))));
    g.bench_function("flume", |b| b.iter_custom(|n| total(&flume(n))));
    g.bench_function("tokio_mpsc", |b| b.iter_custom(|n| total(&tokio_mpsc(&tokio_rt, n))));
    g.bench_function("tokio_mpsc_one_thread_each", |b| b.iter_custom(|n| total(&tokio_two_threads(n))));
    g.finish();
    c.final_summary();
}

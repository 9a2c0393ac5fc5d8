//! Continuation create + destroy on a worker: slot reservation, the version
//! refcount (acquire on create, release on END), the START and END
//! dispatches into the module, and the slot's return to the free list.

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use molt_runtime::module::ModuleSpec;

fn create_destroy(c: &mut Criterion) {
    let (rt, probe) = molt_benches::probe_runtime(1);
    drop(probe);
    // `hello` does nothing on START and END, so only the mechanism is measured.
    let v = rt.load(&ModuleSpec::new(molt_benches::module_lib("hello"))).unwrap();
    let mut g = c.benchmark_group("continuation");
    let v2 = v.clone();
    g.bench_function("create_start_destroy_end", |b| {
        b.iter_custom(|iters| {
            let v = v2.clone();
            rt.on_worker(0, move |w| {
                let t = Instant::now();
                for _ in 0..iters {
                    let id = w.spawn_local(&v, None, core::ptr::null_mut(), 0, 0).unwrap();
                    w.destroy(id).unwrap();
                    w.run_until_idle();
                }
                t.elapsed()
            })
            .unwrap_or(Duration::ZERO)
        });
    });
    g.finish();
    drop(v);
    rt.shutdown();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = create_destroy
}
criterion_main!(benches);

//! CPU affinity.

/// Pin the calling thread to CPU `cpu` modulo the CPUs this process may
/// use; returns the CPU chosen.
pub fn pin_current_thread(cpu: usize) -> std::io::Result<usize> {
    let allowed = rustix::thread::sched_getaffinity(None)?;
    let usable: Vec<usize> = (0..rustix::thread::CpuSet::MAX_CPU).filter(|c| allowed.is_set(*c)).collect();
    if usable.is_empty() {
        return Err(std::io::Error::other("no CPU in this thread's affinity mask"));
    }
    let chosen = usable[cpu % usable.len()];
    let mut set = rustix::thread::CpuSet::new();
    set.set(chosen);
    rustix::thread::sched_setaffinity(None, &set)?;
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinning_leaves_exactly_the_chosen_cpu_in_the_mask() {
        std::thread::spawn(|| {
            let cpu = pin_current_thread(1).unwrap();
            let mask = rustix::thread::sched_getaffinity(None).unwrap();
            assert_eq!(mask.count(), 1);
            assert!(mask.is_set(cpu));
        })
        .join()
        .unwrap();
    }
}

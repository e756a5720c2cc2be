//! The OS clocks that `std::time` does not expose: `CLOCK_MONOTONIC` as a
//! plain number (logind stamps its idle hints with it) and the calling
//! thread's CPU time (what a unit run really cost, as opposed to its wall
//! time, which depends on what else the machine was doing).

use std::time::Duration;

/// Reads clock `id`; None where the platform has no such clock.
#[cfg(unix)]
fn read(id: libc::clockid_t) -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec to a valid pointer.
    if unsafe { libc::clock_gettime(id, &mut ts) } != 0 {
        return None;
    }
    Some(Duration::new(
        u64::try_from(ts.tv_sec).ok()?,
        u32::try_from(ts.tv_nsec).ok()?,
    ))
}

/// Time since boot on `CLOCK_MONOTONIC`.
pub fn monotonic() -> Option<Duration> {
    #[cfg(unix)]
    {
        read(libc::CLOCK_MONOTONIC)
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// CPU time (user + system) the calling thread has used so far; None where
/// the platform cannot tell.
pub fn thread_cpu() -> Option<Duration> {
    #[cfg(unix)]
    {
        read(libc::CLOCK_THREAD_CPUTIME_ID)
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Runs `f` and says how much CPU the calling thread spent in it (None
/// where unknown). Only meaningful when `f` stays on this thread, as a
/// sandbox run does: wasmtime's async driver polls the unit in place.
pub fn with_thread_cpu<R>(f: impl FnOnce() -> R) -> (R, Option<Duration>) {
    let before = thread_cpu();
    let result = f();
    let spent = thread_cpu()
        .zip(before)
        .map(|(after, before)| after.saturating_sub(before));
    (result, spent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// Busy work counts, sleeping does not: the clock is the thread's CPU,
    /// not the wall.
    #[cfg(unix)]
    #[test]
    fn thread_cpu_counts_work_not_sleep() {
        let ((), slept) = with_thread_cpu(|| std::thread::sleep(Duration::from_millis(200)));
        let slept = slept.expect("thread CPU clock");
        assert!(
            slept < Duration::from_millis(100),
            "sleep counted: {slept:?}"
        );

        // Spinning on the OS clock, on this thread: real CPU is the point.
        #[allow(clippy::disallowed_methods)]
        let ((), spun) = with_thread_cpu(|| {
            let until = Instant::now() + Duration::from_millis(300);
            let mut x = 0u64;
            while Instant::now() < until {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
        });
        let spun = spun.expect("clock");
        // Under load the thread may get less than the wall time, never more.
        assert!(
            spun > Duration::from_millis(10),
            "work not counted: {spun:?}"
        );
        assert!(
            spun <= Duration::from_millis(450),
            "more CPU than wall: {spun:?}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn monotonic_moves_forward() {
        let a = monotonic().expect("monotonic clock");
        std::thread::sleep(Duration::from_millis(5));
        assert!(monotonic().expect("clock") > a);
    }
}

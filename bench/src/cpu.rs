//! CPU time of threads, read from `/proc` (Linux), for the benchmarks that report what
//! the server and the clients cost.

/// CPU time (ns) of this process's threads whose name starts with `prefix`.
///
/// From each thread's `/proc/self/task/*/schedstat`, the scheduler's own count in ns
/// (`stat`'s user and system times are whole clock ticks, 10 ms apart, too coarse for a
/// 0.8 s run); a running thread's, as of its last switch or tick.
pub(crate) fn threads_cpu_ns(prefix: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(|task| {
            let dir = task.ok()?.path();
            let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
            comm.starts_with(prefix).then(|| task_cpu_ns(&dir))
        })
        .sum()
}

/// CPU time (ns) of the calling thread, exact (`clock_gettime(CLOCK_THREAD_CPUTIME_ID)`):
/// `/proc` gives a running thread's time only as of its last switch or tick, and the
/// caller is running.
pub(crate) fn this_thread_cpu_ns() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// The CPU time (ns) in a `/proc/self/task/<tid>` directory's `schedstat` (first field);
/// 0 if it cannot be read.
fn task_cpu_ns(dir: &std::path::Path) -> u64 {
    std::fs::read_to_string(dir.join("schedstat"))
        .ok()
        .and_then(|stat| stat.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Clock ticks per second (`getconf CLK_TCK`), 100 if that cannot be run.
pub(crate) fn clock_ticks_per_sec() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// What this process's threads have used so far. Threads that have ended are not
/// counted, so take differences over spans in which the threads that matter live on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ProcessUsage {
    /// CPU time, ns, of every thread ([`threads_cpu_ns`]'s source; the calling
    /// thread's from [`this_thread_cpu_ns`]).
    pub cpu_ns: u64,
    /// Context switches, voluntary (a thread went to sleep: waiting for a wake-up or for
    /// I/O) and not (`voluntary_ctxt_switches` and `nonvoluntary_ctxt_switches` in
    /// `/proc/self/task/*/status`).
    pub switches: u64,
}

impl ProcessUsage {
    /// The usage of every thread of this process now; zero where `/proc` cannot be read.
    /// The calling thread's CPU time is exact ([`this_thread_cpu_ns`]): a one-thread
    /// runtime on loopback never sleeps between round trips, so `/proc` alone could be a
    /// tick (up to 4 ms) behind for it.
    pub(crate) fn now() -> Self {
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return Self::default();
        };
        let this_thread = std::fs::read_link("/proc/thread-self")
            .ok()
            .and_then(|link| link.file_name().map(|tid| tid.to_owned()));
        tasks
            .filter_map(|task| task.ok())
            .map(|task| {
                let dir = task.path();
                let cpu_ns = if Some(task.file_name()) == this_thread {
                    this_thread_cpu_ns()
                } else {
                    task_cpu_ns(&dir)
                };
                Self {
                    cpu_ns,
                    switches: std::fs::read_to_string(dir.join("status"))
                        .map(|status| context_switches(&status))
                        .unwrap_or(0),
                }
            })
            .fold(Self::default(), |sum, thread| Self {
                cpu_ns: sum.cpu_ns + thread.cpu_ns,
                switches: sum.switches + thread.switches,
            })
    }

    /// The usage from `earlier` to `self`.
    pub(crate) fn since(self, earlier: Self) -> Self {
        Self {
            cpu_ns: self.cpu_ns.saturating_sub(earlier.cpu_ns),
            switches: self.switches.saturating_sub(earlier.switches),
        }
    }
}

/// Voluntary plus involuntary context switches in a `/proc/*/status` text.
fn context_switches(status: &str) -> u64 {
    status
        .lines()
        .filter_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.ends_with("ctxt_switches")
                .then(|| value.trim().parse::<u64>().ok())?
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_switches_add_both_kinds() {
        let status = "Name:\tx\nvoluntary_ctxt_switches:\t12\nnonvoluntary_ctxt_switches:\t3\n";
        assert_eq!(context_switches(status), 15);
        assert_eq!(context_switches("Name:\tx\n"), 0);
    }

    #[test]
    fn a_sleeping_thread_switches_and_a_busy_one_uses_cpu() {
        let before = ProcessUsage::now();
        std::thread::sleep(std::time::Duration::from_millis(2));
        // Busy until this thread alone has used 5 ms more, however loaded the machine;
        // read right after, with no sleep between, so `/proc` alone could lag a tick.
        let (start, deadline) = (this_thread_cpu_ns(), std::time::Instant::now());
        while this_thread_cpu_ns() < start + 5_000_000 {
            assert!(deadline.elapsed() < std::time::Duration::from_secs(30));
        }
        let used = ProcessUsage::now().since(before);
        assert!(used.switches >= 1, "the sleep switched: {used:?}");
        assert!(used.cpu_ns >= 5_000_000, "{used:?}");
    }
}

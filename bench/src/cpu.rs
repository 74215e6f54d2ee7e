//! CPU time of threads, read from `/proc` (Linux), for the benchmarks that report what
//! the server and the clients cost.

/// CPU time (user + system, clock ticks) of this process's threads whose name starts with
/// `prefix`, from `/proc/self/task/*/stat`.
pub(crate) fn threads_cpu_ticks(prefix: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(|task| {
            let dir = task.ok()?.path();
            let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
            if !comm.starts_with(prefix) {
                return None;
            }
            let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
            // Fields after the name, from field 3 (state): utime is 14, stime 15.
            let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
            let utime: u64 = fields.get(11)?.parse().ok()?;
            let stime: u64 = fields.get(12)?.parse().ok()?;
            Some(utime + stime)
        })
        .sum()
}

/// CPU time of the calling thread, clock ticks.
pub(crate) fn this_thread_cpu_ticks() -> u64 {
    let Ok(stat) = std::fs::read_to_string("/proc/thread-self/stat") else {
        return 0;
    };
    let Some(end) = stat.rfind(')') else {
        return 0;
    };
    let fields: Vec<&str> = stat[end + 1..].split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
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
    /// CPU time, ns: the scheduler's own count (`/proc/self/task/*/schedstat`, first
    /// field), exact where `stat`'s clock ticks are 10 ms apart.
    pub cpu_ns: u64,
    /// Context switches, voluntary (a thread went to sleep: waiting for a wake-up or for
    /// I/O) and not (`voluntary_ctxt_switches` and `nonvoluntary_ctxt_switches` in
    /// `/proc/self/task/*/status`).
    pub switches: u64,
}

impl ProcessUsage {
    /// The usage of every thread of this process now; zero where `/proc` cannot be read.
    ///
    /// `/proc` gives a thread's CPU time as of its last switch or scheduler tick, so for
    /// the calling thread, which is running, it could be a tick (up to 4 ms) behind: a
    /// one-thread runtime on loopback never sleeps between round trips. That thread's
    /// time comes from `clock_gettime(CLOCK_THREAD_CPUTIME_ID)` instead, which is exact.
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
                    let now = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
                    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
                } else {
                    std::fs::read_to_string(dir.join("schedstat"))
                        .ok()
                        .and_then(|stat| stat.split_whitespace().next()?.parse().ok())
                        .unwrap_or(0)
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
        let this_thread_ns = || {
            let now = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
            now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
        };
        let before = ProcessUsage::now();
        std::thread::sleep(std::time::Duration::from_millis(2));
        // Busy until this thread alone has used 5 ms more, however loaded the machine;
        // read right after, with no sleep between, so `/proc` alone could lag a tick.
        let (start, deadline) = (this_thread_ns(), std::time::Instant::now());
        while this_thread_ns() < start + 5_000_000 {
            assert!(deadline.elapsed() < std::time::Duration::from_secs(30));
        }
        let used = ProcessUsage::now().since(before);
        assert!(used.switches >= 1, "the sleep switched: {used:?}");
        assert!(used.cpu_ns >= 5_000_000, "{used:?}");
    }
}

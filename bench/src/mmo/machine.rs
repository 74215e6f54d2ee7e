//! How busy the whole machine was during the window, beside this process: on a shared
//! machine the workload gets only what other processes leave, and the report says how
//! much that was.

/// CPU time counters at one moment, in clock ticks (`USER_HZ`), from `/proc`.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuClock {
    /// Every core's busy time (user, nice, system, irq, softirq, steal), summed.
    machine: u64,
    /// This process's user and system time, every thread.
    process: u64,
}

impl CpuClock {
    /// Reads the counters now; zeros where `/proc` cannot be read.
    pub fn read() -> Self {
        Self {
            machine: machine_busy_ticks().unwrap_or(0),
            process: process_ticks().unwrap_or(0),
        }
    }

    /// CPU used since `before`, in seconds: (the whole machine, this process).
    pub fn since(self, before: CpuClock, ticks_per_sec: f64) -> (f64, f64) {
        let seconds = |ticks: u64| ticks as f64 / ticks_per_sec;
        (
            seconds(self.machine.saturating_sub(before.machine)),
            seconds(self.process.saturating_sub(before.process)),
        )
    }
}

/// The machine's busy ticks, from the first line of `/proc/stat`
/// (`cpu user nice system idle iowait irq softirq steal ...`).
fn machine_busy_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map_while(|f| f.parse().ok())
        .collect();
    // Busy: everything but idle (3) and iowait (4); guest time is already in user.
    let busy = [0, 1, 2, 5, 6, 7];
    Some(busy.iter().filter_map(|&i| fields.get(i)).sum())
}

/// This process's user + system ticks, from `/proc/self/stat` (fields 14 and 15).
fn process_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The fields after the command name, which may hold spaces, from field 3 (state).
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Datagrams the kernel dropped so far because the receive buffer of a UDP socket bound to
/// one of `ports` was full, summed (the `drops` column of `/proc/net/udp` and
/// `/proc/net/udp6`). A receiver that cannot keep up loses packets here, and QUIC's loss
/// recovery then slows the connections down.
pub fn udp_drops(ports: &[u16]) -> u64 {
    ["/proc/net/udp", "/proc/net/udp6"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .filter_map(|line| socket_drops(line, ports))
                .collect::<Vec<_>>()
        })
        .sum()
}

/// One socket's drops if its local port is one of `ports`. A line reads
/// `sl local_address rem_address st tx_queue:rx_queue ... drops`, the address as hex
/// `IP:PORT`.
fn socket_drops(line: &str, ports: &[u16]) -> Option<u64> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let local = fields.get(1)?;
    let port = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
    if !ports.contains(&port) {
        return None;
    }
    fields.last()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_drops_reads_the_last_column_of_a_matching_port() {
        let line = "  812: 0100007F:9C98 00000000:0000 07 00000000:00642CA4 00:00000000 \
                    00000000     0        0 123456 2 0000000000000000 77464";
        assert_eq!(socket_drops(line, &[0x9C98]), Some(77_464));
        assert_eq!(socket_drops(line, &[1234]), None);
        assert_eq!(socket_drops("garbage", &[0x9C98]), None);
    }
}

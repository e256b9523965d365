//! CPU time of the load generator and of the server, per operation: the
//! client shares the machine's cores, and its CPU is kube-apiserver's cost.

/// This process's user + system CPU time, in seconds.
pub(crate) fn process_cpu_seconds() -> Option<f64> {
    cpu_seconds_of("self")
}

/// The summed CPU time of `pids`, or `None` if one cannot be read (gone,
/// or not on this machine).
pub(crate) fn processes_cpu_seconds(pids: &[u32]) -> Option<f64> {
    pids.iter()
        .map(|p| cpu_seconds_of(&p.to_string()))
        .sum::<Option<f64>>()
}

fn cpu_seconds_of(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the line, in clock ticks (USER_HZ, 100 on Linux).
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cpu_time_is_readable_on_linux() {
        if cfg!(target_os = "linux") {
            let t = process_cpu_seconds().expect("/proc/self/stat");
            assert!(t >= 0.0);
            let me = std::process::id();
            let twice = processes_cpu_seconds(&[me, me]).expect("own pid");
            assert!(twice >= 2.0 * t);
            assert_eq!(processes_cpu_seconds(&[me, u32::MAX]), None);
        }
    }
}

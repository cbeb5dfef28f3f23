//! Broker resource readings from /proc (Linux only).

use anyhow::{Context, Result};

/// Clock ticks per second of /proc/PID/stat times (USER_HZ; 100 on every
/// mainstream Linux configuration).
pub const CLK_TCK: f64 = 100.0;

/// Resident set size of `pid` in KiB (VmRSS in /proc/PID/status).
pub fn rss_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no VmRSS in {path}"))
}

/// User + system CPU time of `pid` in clock ticks.
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // Fields after the `(comm)`; comm may contain spaces.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .with_context(|| format!("malformed {path}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime 15.
    let num = |i: usize| -> Result<u64> {
        fields
            .get(i - 3)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("malformed field {i} in {path}"))
    };
    Ok(num(14)? + num(15)?)
}

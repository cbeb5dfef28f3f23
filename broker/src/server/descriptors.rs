//! The process's open-file (descriptor) limit, checked once at start.
//!
//! Every connection holds one descriptor, so the limit caps the connections
//! a node can take. Shells and many service managers start processes with a
//! soft limit of 1,024 and a much larger hard limit; like most servers, the
//! broker raises its soft limit to the hard one. When what is left is still
//! below `limits.max_connections` (plus [`RESERVED`] for the broker's own
//! files: listeners, the store, plugins, cluster links), it says so at start,
//! naming the setting, instead of letting accepts fail later under load.

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
use tracing::{info, warn};

/// Descriptors kept for the broker's own files and sockets.
pub const RESERVED: u64 = 64;
/// With `max_connections` unlimited, a limit below this is worth a warning:
/// a fleet of devices would meet it.
const LOW: u64 = 65_536;

/// What [`raise`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// The soft limit before (`None`: unlimited).
    pub before: Option<u64>,
    /// The soft limit now.
    pub now: Option<u64>,
}

impl Limit {
    /// Connections the limit leaves room for (`None`: no limit).
    pub fn room(&self) -> Option<u64> {
        self.now.map(|n| n.saturating_sub(RESERVED))
    }
}

/// Raises the soft descriptor limit to the hard limit and logs the outcome
/// against `max_connections` (0 = unlimited). Never fails the start: a limit
/// that cannot be raised is reported and the broker runs within it.
pub fn raise(max_connections: usize) -> Limit {
    let Rlimit { current, maximum } = getrlimit(Resource::Nofile);
    let mut now = current;
    if let Some(cur) = current {
        if maximum.is_none_or(|max| max > cur) {
            // An unlimited hard limit is not a valid soft one for NOFILE
            // (the kernel caps it at fs.nr_open): keep to the hard figure or
            // to nr_open, which setrlimit accepts.
            let target = maximum.unwrap_or_else(nr_open);
            match setrlimit(
                Resource::Nofile,
                Rlimit {
                    current: Some(target),
                    maximum,
                },
            ) {
                Ok(()) => {
                    now = Some(target);
                    info!(
                        from = cur,
                        to = target,
                        "descriptor limit raised to the hard limit"
                    );
                }
                Err(e) => warn!(limit = cur, error = %e, "descriptor limit could not be raised"),
            }
        }
    }
    let limit = Limit {
        before: current,
        now,
    };
    report(limit, max_connections);
    limit
}

fn report(limit: Limit, max_connections: usize) {
    let Some(n) = limit.now else {
        return;
    };
    let room = limit.room().unwrap_or(u64::MAX);
    let max = max_connections as u64;
    if max > 0 && room < max {
        warn!(
            limit = n,
            max_connections = max,
            "descriptor limit {n} leaves room for about {room} connections, below limits.max_connections = {max} \
             ({RESERVED} are kept for the broker's own files): connections past it will fail to be accepted; \
             raise the limit (systemd LimitNOFILE=, or ulimit -n before starting; see the README's connection limits)"
        );
    } else if max == 0 && n < LOW {
        warn!(
            limit = n,
            "descriptor limit {n} leaves room for about {room} connections (limits.max_connections is unlimited); \
             raise it for more (systemd LimitNOFILE=, or ulimit -n before starting; see the README's connection limits)"
        );
    } else {
        info!(limit = n, "descriptor limit");
    }
}

/// The kernel's ceiling for a soft NOFILE limit (`fs.nr_open`, 1,048,576 by
/// default), read from /proc.
fn nr_open() -> u64 {
    std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1_048_576)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_keeps_the_reserve() {
        let l = Limit {
            before: Some(1024),
            now: Some(1024),
        };
        assert_eq!(l.room(), Some(1024 - RESERVED));
        let small = Limit {
            before: Some(10),
            now: Some(10),
        };
        assert_eq!(small.room(), Some(0));
        let unlimited = Limit {
            before: None,
            now: None,
        };
        assert_eq!(unlimited.room(), None);
    }

    #[test]
    fn raise_leaves_the_soft_limit_at_the_hard_one() {
        let l = raise(0);
        let Rlimit { current, maximum } = getrlimit(Resource::Nofile);
        assert_eq!(l.now, current);
        if let (Some(c), Some(m)) = (current, maximum) {
            assert_eq!(c, m, "the soft limit was not raised to the hard one");
        }
    }
}

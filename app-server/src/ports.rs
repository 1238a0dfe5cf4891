//! The ports app processes listen on: handed out from `app.ports` (below Linux's ephemeral
//! range, so no outgoing connection is ever given one), each held by one process until it
//! stops, and checked free when handed out. A program outside app-server could still bind a
//! port between that check and the app's own bind, so a new process only gets traffic once its
//! port is seen to be listened on by its own process group ([`listened_on_by_group`]).

use std::collections::HashSet;
use std::sync::Mutex;

#[derive(Debug)]
pub struct PortPool {
    low: u16,
    high: u16,
    state: Mutex<PoolState>,
}

#[derive(Debug, Default)]
struct PoolState {
    taken: HashSet<u16>,
    /// Where the next search starts: ports are reused as late as possible, so a client still
    /// holding a connection to a stopped process does not reach its successor by accident.
    next: u16,
}

impl PortPool {
    pub fn new(low: u16, high: u16) -> Self {
        // Start somewhere in the range, not at its bottom: two app-servers on one machine
        // (tests, a staging beside production) rarely try the same port at the same moment.
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() ^ std::process::id())
            .unwrap_or(0);
        let next = low + (seed % (u32::from(high - low) + 1)) as u16;
        Self {
            low,
            high,
            state: Mutex::new(PoolState {
                taken: HashSet::new(),
                next,
            }),
        }
    }

    /// A port of the pool that nothing of ours holds and that can be bound right now.
    pub fn take(&self) -> std::io::Result<u16> {
        let mut state = match self.state.lock() {
            Ok(state) => state,
            Err(poisoned) => poisoned.into_inner(),
        };
        let size = u32::from(self.high - self.low) + 1;
        for step in 0..size {
            let offset = (u32::from(state.next - self.low) + step) % size;
            let port = self.low + offset as u16;
            if state.taken.contains(&port) {
                continue;
            }
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                state.taken.insert(port);
                state.next = if port == self.high {
                    self.low
                } else {
                    port + 1
                };
                return Ok(port);
            }
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!(
                "every port of app.ports ({}-{}) is in use",
                self.low, self.high
            ),
        ))
    }

    /// Gives a port back (its process has stopped for good).
    pub fn give_back(&self, port: u16) {
        if let Ok(mut state) = self.state.lock() {
            state.taken.remove(&port);
        }
    }
}

/// Whether a socket listening on `port` (IPv4 or IPv6) belongs to a process of process group
/// `pgid`. `None` when that cannot be told (no `/proc`), which callers take as yes.
pub fn listened_on_by_group(port: u16, pgid: i32) -> Option<bool> {
    let inodes = listening_inodes(port)?;
    if inodes.is_empty() {
        return Some(false);
    }
    let processes = std::fs::read_dir("/proc").ok()?;
    for entry in processes.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if process_group(pid) != Some(pgid) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path())
                && let Some(inode) = target
                    .to_str()
                    .and_then(|t| t.strip_prefix("socket:["))
                    .and_then(|t| t.strip_suffix(']'))
                && inodes.contains(inode)
            {
                return Some(true);
            }
        }
    }
    Some(false)
}

/// The socket inodes listening on `port`, from `/proc/net/tcp` and `/proc/net/tcp6`.
fn listening_inodes(port: u16) -> Option<HashSet<String>> {
    let mut inodes = HashSet::new();
    let mut readable = false;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        readable = true;
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            let (Some(local), Some(state), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            let local_port = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if *state == "0A" && local_port == Some(port) {
                inodes.insert((*inode).to_owned());
            }
        }
    }
    readable.then_some(inodes)
}

/// The process group of `pid`, from `/proc/{pid}/stat` (the fifth field, after the command
/// name in parentheses, which may itself hold spaces).
fn process_group(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(2)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_handed_out_once_and_given_back() {
        let pool = PortPool::new(38_100, 38_102);
        let a = pool.take().expect("port");
        let b = pool.take().expect("port");
        let c = pool.take().expect("port");
        assert_eq!(
            HashSet::from([a, b, c]),
            HashSet::from([38_100, 38_101, 38_102])
        );
        assert!(pool.take().is_err(), "all taken");
        pool.give_back(b);
        assert_eq!(pool.take().expect("port"), b);
    }

    #[test]
    fn a_port_bound_by_someone_else_is_skipped() {
        let other = std::net::TcpListener::bind("127.0.0.1:38110").expect("bind");
        let pool = PortPool::new(38_110, 38_111);
        assert_eq!(pool.take().expect("port"), 38_111);
        drop(other);
    }

    #[test]
    fn tells_whose_listener_a_port_is() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let own_group = nix::unistd::getpgrp().as_raw();
        assert_eq!(listened_on_by_group(port, own_group), Some(true));
        assert_eq!(
            listened_on_by_group(port, own_group + 1_000_000),
            Some(false)
        );
        drop(listener);
        assert_eq!(listened_on_by_group(port, own_group), Some(false));
    }
}

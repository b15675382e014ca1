//! `--perf-syscalls`: the server's system calls over the measured window,
//! counted by `perf stat` on syscall tracepoints.
//!
//! perf is started (attached to `--server-pid`) before the window with its
//! counters disabled (`-D -1`), and driven through its control channel
//! (`--control fd:0,1`: commands on its stdin, acks on its stdout):
//! `enable` at the window's start, `disable` at its end, each waited for,
//! then SIGINT and its `-x,` CSV read from stderr. So the counts cover the
//! same window as the CPU figures, to well under a millisecond.
//!
//! Counting tracepoints in `perf stat` mode costs the server little (a
//! counter increment per counted syscall; with any syscall tracepoint on,
//! every syscall on the machine takes the kernel's slower tracing entry).
//! Threads the server starts after perf attached are not counted; the
//! servers measured start theirs at startup.

use std::io::Read;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

/// Write, read and wait syscalls counted, without the `syscalls:sys_enter_`
/// prefix.
pub const WRITES: [&str; 4] = ["writev", "write", "sendto", "sendmsg"];
/// Read syscalls counted.
pub const READS: [&str; 4] = ["read", "readv", "recvfrom", "recvmsg"];
/// Event-loop waits counted (one per loop iteration that waited).
pub const WAITS: [&str; 3] = ["epoll_wait", "epoll_pwait", "epoll_pwait2"];

/// How long perf may take to start and to answer a command.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// A `perf stat` attached to the server, counting while enabled.
pub struct Perf {
    child: Child,
    ctl: ChildStdin,
    acks: Receiver<()>,
}

/// Counts over the window, by syscall name (as in [`WRITES`] etc.).
#[derive(Clone, Debug, Default)]
pub struct Syscalls {
    /// (name, count) for every event perf reported.
    pub counts: Vec<(String, u64)>,
}

impl Syscalls {
    /// The count of `name` (0 when not reported or not counted).
    pub fn get(&self, name: &str) -> u64 {
        self.counts
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |&(_, c)| c)
    }

    /// The sum over `names`.
    pub fn sum(&self, names: &[&str]) -> u64 {
        names.iter().map(|n| self.get(n)).sum()
    }
}

impl Perf {
    /// Starts perf attached to `pids`, counters off.
    pub fn start(pids: &[u32]) -> Result<Perf, String> {
        if pids.is_empty() {
            return Err("--perf-syscalls needs --server-pid".into());
        }
        let events: Vec<String> = WRITES
            .iter()
            .chain(&READS)
            .chain(&WAITS)
            .map(|n| format!("syscalls:sys_enter_{n}"))
            .collect();
        let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
        let mut child = Command::new("perf")
            .args(["stat", "-x,", "-D", "-1", "--control", "fd:0,1", "-e"])
            .arg(events.join(","))
            .arg("-p")
            .arg(pids.join(","))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run perf: {e}"))?;
        let ctl = child.stdin.take().expect("perf stdin");
        let mut out = child.stdout.take().expect("perf stdout");
        let (tx, acks) = channel();
        // perf answers each command with "ack\n" (and a NUL).
        std::thread::Builder::new()
            .name("perf-acks".into())
            .spawn(move || {
                let mut buf = [0u8; 64];
                let mut seen = Vec::new();
                while let Ok(n) = out.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    while let Some(i) = seen.windows(4).position(|w| w == b"ack\n") {
                        seen.drain(..i + 4);
                        if tx.send(()).is_err() {
                            return;
                        }
                    }
                }
            })
            .map_err(|e| format!("perf ack reader: {e}"))?;
        Ok(Perf { child, ctl, acks })
    }

    fn command(&mut self, cmd: &str) -> Result<(), String> {
        use std::io::Write;
        self.ctl
            .write_all(format!("{cmd}\n").as_bytes())
            .and_then(|()| self.ctl.flush())
            .map_err(|e| format!("perf {cmd}: {e}"))?;
        self.acks
            .recv_timeout(ACK_TIMEOUT)
            .map_err(|_| format!("perf did not acknowledge {cmd} (see its message above)"))
    }

    /// Starts counting (returns once perf has).
    pub fn enable(&mut self) -> Result<(), String> {
        self.command("enable")
    }

    /// Stops counting.
    pub fn disable(&mut self) -> Result<(), String> {
        self.command("disable")
    }

    /// Ends perf and reads its counts.
    pub fn finish(mut self) -> Result<Syscalls, String> {
        // SAFETY: kill has no memory-safety preconditions; the pid is our
        // own child, not yet waited for.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGINT);
        }
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        let _ = self.child.wait();
        let s = parse(&err);
        if s.counts.is_empty() {
            return Err(format!("no counts from perf: {}", err.trim()));
        }
        Ok(s)
    }
}

impl Drop for Perf {
    fn drop(&mut self) {
        // After finish the child is already reaped: kill then fails, fine.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads `perf stat -x,` lines: `count,unit,event,run time,percent,...`
/// (`<not counted>` when the event never ran: 0).
pub fn parse(text: &str) -> Syscalls {
    let mut counts = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(',').collect();
        let (Some(value), Some(event)) = (f.first(), f.get(2)) else {
            continue;
        };
        let Some(name) = event.strip_prefix("syscalls:sys_enter_") else {
            continue;
        };
        let n = value.trim().parse().unwrap_or(0);
        counts.push((name.to_string(), n));
    }
    Syscalls { counts }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_perf_csv_and_not_counted() {
        let s = parse(
            "Events disabled\nEvents enabled\n\
             12,,syscalls:sys_enter_writev,36760067,100.00,,\n\
             <not counted>,,syscalls:sys_enter_sendto,0,100.00,,\n\
             7,,syscalls:sys_enter_write,36760067,100.00,,\n",
        );
        assert_eq!(s.get("writev"), 12);
        assert_eq!(s.get("sendto"), 0);
        assert_eq!(s.sum(&WRITES), 19);
        assert_eq!(s.counts.len(), 3);
    }
}

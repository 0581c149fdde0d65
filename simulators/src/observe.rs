//! Watching the system from outside during reliability runs (Linux only): the gateway
//! process's memory, CPU and descriptors from `/proc`, the simulator's own, the gateway's
//! `/readyz`, the kernel's listen-queue counters, and a fault file written by the script that
//! injects the fault.
//!
//! The gateway may be restarted during a run (that is the point of a `kill` run), so it can be
//! named by a pid file that is read again at every sample; a new pid starts a new CPU baseline.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Clock ticks per second of `/proc/<pid>/stat` times (`getconf CLK_TCK`; 100 on Linux
/// everywhere that matters).
const CLK_TCK: f64 = 100.0;

/// How the gateway process is found.
#[derive(Debug, Clone, Default)]
pub enum GatewayPid {
    /// Not watched.
    #[default]
    None,
    /// A fixed pid.
    Pid(u32),
    /// A file holding the current pid, read again at every sample.
    File(PathBuf),
}

impl GatewayPid {
    /// From the command line's `--gateway-pid` / `--gateway-pid-file`.
    pub fn from_args(pid: Option<u32>, file: Option<PathBuf>) -> Self {
        match (file, pid) {
            (Some(file), _) => GatewayPid::File(file),
            (None, Some(pid)) => GatewayPid::Pid(pid),
            (None, None) => GatewayPid::None,
        }
    }

    fn current(&self) -> Option<u32> {
        match self {
            GatewayPid::None => None,
            GatewayPid::Pid(pid) => Some(*pid),
            GatewayPid::File(path) => std::fs::read_to_string(path).ok()?.trim().parse().ok(),
        }
    }

    /// Whether anything is watched.
    pub fn is_some(&self) -> bool {
        !matches!(self, GatewayPid::None)
    }
}

/// One look at a process.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ProcSample {
    /// The pid looked at.
    pub pid: u32,
    /// `VmRSS`, KiB.
    pub rss_kib: u64,
    /// `VmHWM` (the process's peak resident set so far), KiB.
    pub hwm_kib: u64,
    /// CPU used since the previous sample of the same pid, percent of one core (200 = both
    /// cores of this machine); `None` on the first sample of a pid.
    pub cpu_pct: Option<f64>,
    /// Open file descriptors.
    pub fds: u64,
}

/// Samples one process (the gateway, following restarts, or the simulator itself) and keeps
/// its peaks.
#[derive(Debug)]
pub struct ProcWatch {
    pid: GatewayPid,
    last: Option<(u32, u64, std::time::Instant)>,
    /// Peaks and totals so far.
    pub summary: ProcSummary,
}

/// Peaks and totals of a watched process over a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProcSummary {
    /// Every pid seen, in order (more than one when the gateway was restarted).
    pub pids: Vec<u32>,
    /// Samples taken (one a second).
    pub samples: u64,
    /// Largest `VmRSS` sampled, KiB.
    pub max_rss_kib: u64,
    /// Largest `VmHWM` read, KiB. Linux updates it lazily, so it can trail a sampled RSS; the
    /// larger of the two is the peak.
    pub max_hwm_kib: u64,
    /// `max(max_rss_kib, max_hwm_kib)`, MiB.
    pub peak_rss_mib: f64,
    /// CPU time used over the samples, seconds (all pids).
    pub cpu_secs: f64,
    /// Largest one-second CPU use, percent of one core.
    pub peak_cpu_pct: f64,
    /// Average CPU use over the sampled time, percent of one core.
    pub avg_cpu_pct: f64,
    /// Most open descriptors seen.
    pub max_fds: u64,
    #[serde(skip)]
    sampled_secs: f64,
}

impl ProcWatch {
    /// Watches the gateway.
    pub fn new(pid: GatewayPid) -> Self {
        ProcWatch {
            pid,
            last: None,
            summary: ProcSummary::default(),
        }
    }

    /// Watches this process.
    pub fn myself() -> Self {
        ProcWatch::new(GatewayPid::Pid(std::process::id()))
    }

    /// Takes a sample now; `None` if the process is not there (between a kill and a restart).
    pub fn sample(&mut self) -> Option<ProcSample> {
        let pid = self.pid.current()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let ticks = read_cpu_ticks(pid)?;
        let now = std::time::Instant::now();
        // A zombie (killed, not yet reaped) has no memory lines: it is not there any more.
        let rss_kib = status_kib(&status, "VmRSS:")?;
        let hwm_kib = status_kib(&status, "VmHWM:").unwrap_or(0);
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|dir| dir.count() as u64)
            .unwrap_or(0);
        let cpu_pct = match self.last {
            Some((last_pid, last_ticks, at)) if last_pid == pid => {
                let wall = now.duration_since(at).as_secs_f64();
                let used = ticks.saturating_sub(last_ticks) as f64 / CLK_TCK;
                let s = &mut self.summary;
                s.cpu_secs += used;
                s.sampled_secs += wall;
                (wall > 0.0).then(|| 100.0 * used / wall)
            }
            _ => None,
        };
        self.last = Some((pid, ticks, now));
        let s = &mut self.summary;
        if s.pids.last() != Some(&pid) {
            s.pids.push(pid);
        }
        s.samples += 1;
        s.max_rss_kib = s.max_rss_kib.max(rss_kib);
        s.max_hwm_kib = s.max_hwm_kib.max(hwm_kib);
        s.peak_rss_mib = s.max_rss_kib.max(s.max_hwm_kib) as f64 / 1024.0;
        s.max_fds = s.max_fds.max(fds);
        if let Some(pct) = cpu_pct {
            s.peak_cpu_pct = s.peak_cpu_pct.max(pct);
        }
        if s.sampled_secs > 0.0 {
            s.avg_cpu_pct = 100.0 * s.cpu_secs / s.sampled_secs;
        }
        Some(ProcSample {
            pid,
            rss_kib,
            hwm_kib,
            cpu_pct,
            fds,
        })
    }
}

/// utime + stime of a process, clock ticks.
fn read_cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_ticks(&stat)
}

/// Fields 14 and 15 (utime, stime) of `/proc/<pid>/stat`; the command name (field 2) may hold
/// spaces and parentheses, so fields are counted after its last `)`.
fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// A `kB` field of `/proc/<pid>/status`.
/// A `kB` field of `/proc/<pid>/status`.
pub(crate) fn read_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_kib(&status, field)
}

fn status_kib(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// The soft limit on open files of this process, from `/proc/self/limits`.
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// The kernel's TCP listen-queue counters (`TcpExt` of `/proc/net/netstat`): connections
/// dropped because a listener's accept queue was full, and SYNs dropped for any reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ListenCounters {
    /// `ListenOverflows`: the accept queue was full.
    pub listen_overflows: u64,
    /// `ListenDrops`: SYNs dropped (overflows included).
    pub listen_drops: u64,
    /// `TCPReqQFullDrop`: the SYN queue was full (no syncookies).
    pub syn_queue_full_drops: u64,
}

impl ListenCounters {
    /// Reads the counters now (zeros if unreadable).
    pub fn read() -> Self {
        std::fs::read_to_string("/proc/net/netstat")
            .ok()
            .map(|text| Self::parse(&text))
            .unwrap_or_default()
    }

    fn parse(text: &str) -> Self {
        let mut lines = text.lines();
        let mut values = BTreeMap::new();
        while let (Some(names), Some(nums)) = (lines.next(), lines.next()) {
            let (Some(("TcpExt", names)), Some(("TcpExt", nums))) =
                (names.split_once(':'), nums.split_once(':'))
            else {
                continue;
            };
            for (name, num) in names.split_whitespace().zip(nums.split_whitespace()) {
                if let Ok(n) = num.parse::<u64>() {
                    values.insert(name.to_owned(), n);
                }
            }
        }
        let get = |name: &str| values.get(name).copied().unwrap_or(0);
        ListenCounters {
            listen_overflows: get("ListenOverflows"),
            listen_drops: get("ListenDrops"),
            syn_queue_full_drops: get("TCPReqQFullDrop"),
        }
    }

    /// What happened since `earlier` (system-wide: other listeners count too).
    pub fn since(self, earlier: ListenCounters) -> ListenCounters {
        ListenCounters {
            listen_overflows: self
                .listen_overflows
                .saturating_sub(earlier.listen_overflows),
            listen_drops: self.listen_drops.saturating_sub(earlier.listen_drops),
            syn_queue_full_drops: self
                .syn_queue_full_drops
                .saturating_sub(earlier.syn_queue_full_drops),
        }
    }
}

/// `GET /readyz` on the gateway's API: the HTTP status, or `None` if there was no answer
/// within `wait` (gateway down, or the store health check hanging).
pub async fn probe_readyz(api: &str, wait: Duration) -> Option<u16> {
    let exchange = async {
        let mut stream = TcpStream::connect(api).await.ok()?;
        let request = format!("GET /readyz HTTP/1.1\r\nHost: {api}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut head = Vec::with_capacity(256);
        let mut buf = [0u8; 256];
        while !head.contains(&b'\n') {
            let n = stream.read(&mut buf).await.ok()?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(buf.get(..n).unwrap_or_default());
        }
        parse_status_line(&head)
    };
    timeout(wait, exchange).await.ok().flatten()
}

fn parse_status_line(head: &[u8]) -> Option<u16> {
    let line = std::str::from_utf8(head).ok()?.lines().next()?;
    let mut parts = line.split_whitespace();
    parts.next().filter(|v| v.starts_with("HTTP/"))?;
    parts.next()?.parse().ok()
}

/// When the fault happened, as written by the script that injected it: a text file of
/// `start=<unix ms>` and (once the fault is lifted) `end=<unix ms>` lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FaultTimes {
    /// When the fault was injected (unix ms).
    pub start_ms: Option<i64>,
    /// When it was lifted (unix ms): the gateway restarted, the database started.
    pub end_ms: Option<i64>,
}

impl FaultTimes {
    /// Reads the fault file (nothing yet if it does not exist).
    pub fn read(path: &Path) -> Self {
        std::fs::read_to_string(path)
            .map(|text| Self::parse(&text))
            .unwrap_or_default()
    }

    fn parse(text: &str) -> Self {
        let mut times = FaultTimes::default();
        for line in text.lines() {
            let Some((key, ms)) = line.split_once('=') else {
                continue;
            };
            match key.trim() {
                "start" => times.start_ms = ms.trim().parse().ok(),
                "end" => times.end_ms = ms.trim().parse().ok(),
                _ => {}
            }
        }
        times
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_status() {
        let status = "Name:\tsentinella\nVmHWM:\t  123456 kB\nVmRSS:\t   99999 kB\n";
        assert_eq!(status_kib(status, "VmHWM:"), Some(123_456));
        assert_eq!(status_kib(status, "VmRSS:"), Some(99_999));
        assert_eq!(status_kib(status, "VmSwap:"), None);
        assert_eq!(status_kib("VmRSS:\tlots kB", "VmRSS:"), None);
    }

    #[test]
    fn reads_own_memory() {
        let me = std::process::id();
        assert!(read_status_kib(me, "VmRSS:").is_some_and(|k| k > 0));
        assert!(read_status_kib(me, "VmHWM:").is_some_and(|k| k > 0));
    }

    #[test]
    fn parses_stat_with_odd_names() {
        let stat = "4242 (sen tin(ella)) S 1 4242 4242 0 -1 4194560 5000 0 0 0 1234 567 0 0 20 0 9";
        assert_eq!(parse_stat_ticks(stat), Some(1234 + 567));
        assert_eq!(parse_stat_ticks("garbage"), None);
    }

    #[test]
    fn samples_itself() {
        let mut me = ProcWatch::myself();
        let first = me.sample().unwrap();
        assert!(first.rss_kib > 0 && first.fds > 0 && first.cpu_pct.is_none());
        let second = me.sample().unwrap();
        assert!(second.cpu_pct.is_some());
        assert_eq!(me.summary.pids, [std::process::id()]);
        assert!(open_files_limit().is_some_and(|n| n > 0));
    }

    #[test]
    fn parses_netstat_and_fault_file() {
        let text = "TcpExt: SyncookiesSent ListenOverflows ListenDrops TCPReqQFullDrop\n\
                    TcpExt: 0 12 15 3\n\
                    IpExt: InNoRoutes\nIpExt: 0\n";
        let c = ListenCounters::parse(text);
        assert_eq!(
            (c.listen_overflows, c.listen_drops, c.syn_queue_full_drops),
            (12, 15, 3)
        );
        assert_eq!(c.since(c), ListenCounters::default());
        let f = FaultTimes::parse("start=1000\n end = 2500 \nnoise\n");
        assert_eq!((f.start_ms, f.end_ms), (Some(1000), Some(2500)));
        assert_eq!(FaultTimes::parse("start=1").end_ms, None);
        assert_eq!(
            parse_status_line(b"HTTP/1.1 503 Service Unavailable\r\n"),
            Some(503)
        );
        assert_eq!(parse_status_line(b"SSH-2.0"), None);
    }
}

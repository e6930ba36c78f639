//! A test bed of hosts in Linux network namespaces: a LAN on one machine, for tests of what a
//! real network does (silent failures, partitions, multicast across a switch) that loopback
//! cannot show.
//!
//! [`TestBed::new`] creates K *host* namespaces and one *switch* namespace holding a Linux bridge
//! (with multicast snooping off, so that LAN beacons are flooded like on a dumb switch). Each
//! host has one interface, `eth0`, the end of a veth pair whose other end is a port of the
//! bridge, with the address `198.18.0.(10 + i)/24` (198.18.0.0/15 is reserved for benchmarking
//! network devices, RFC 2544; no real network uses it). Nothing is added to the root namespace:
//! every veth is created directly inside the switch and host namespaces.
//!
//! Processes are started inside a host with [`TestBed::spawn`] (`ip netns exec`, which execs the
//! program, so the child's pid is the program's) and their output lines are collected with the
//! time they arrived, so that tests wait for a line instead of sleeping. Faults:
//!
//! * [`TestBed::cut`] / [`TestBed::mend`]: a pulled cable (the host's bridge port is detached:
//!   frames vanish, no FIN, no RST, the carrier stays up);
//! * [`TestBed::split`] / [`TestBed::join`]: the LAN split in groups (each on its own bridge);
//! * [`NodeProcess::freeze`] / [`NodeProcess::thaw`]: SIGSTOP / SIGCONT;
//! * [`NodeProcess::kill`]: SIGKILL (sockets close at once, as in a crash).
//!
//! **Teardown rule.** Dropping the [`TestBed`] kills every process it started and deletes every
//! namespace it created (deleting a namespace deletes its veths and bridges), also when the test
//! panics, since `Drop` runs during unwinding. Namespaces are named
//! `chaski-<pid>-<n>-<role>`; [`TestBed::new`] first deletes those left by a test process that
//! no longer runs (one killed before it could clean up).
//!
//! Needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN) and iproute2's `ip`; [`TestBed::new`] fails with
//! an error saying which is missing.

use std::{
    collections::HashSet,
    io::{self, BufRead, BufReader, Read},
    net::Ipv4Addr,
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Condvar, Mutex, PoisonError,
        atomic::{AtomicU32, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use rustix::process::{Pid, Signal, kill_process};

/// Test beds created by this process (names stay unique across parallel tests).
static NEXT_BED: AtomicU32 = AtomicU32::new(0);

/// Serialises the tests that use a test bed within one test binary: they measure timing on a
/// 2-core machine and would disturb each other. Hold the guard for the test's whole life.
static EXCLUSIVE: Mutex<()> = Mutex::new(());

/// Lines kept per process; older ones are dropped (and counted) beyond this.
pub const MAX_LINES: usize = 200_000;

/// A LAN of hosts in network namespaces. See the [module docs](self).
#[derive(Debug)]
pub struct TestBed {
    prefix: String,
    switch: String,
    hosts: Vec<String>,
    /// The bridges in the switch namespace: `br0` always, `br1`... while split.
    bridges: usize,
    children: Vec<Arc<Mutex<Option<Child>>>>,
    _exclusive: std::sync::MutexGuard<'static, ()>,
}

impl TestBed {
    /// Creates `hosts` hosts joined by one switch. Takes the test-bed lock first, so test beds
    /// of one test binary never overlap in time.
    pub fn new(hosts: usize) -> io::Result<TestBed> {
        let exclusive = EXCLUSIVE.lock().unwrap_or_else(PoisonError::into_inner);
        check_prerequisites()?;
        remove_stale_namespaces();
        let prefix = format!(
            "chaski-{}-{}",
            std::process::id(),
            NEXT_BED.fetch_add(1, Ordering::Relaxed)
        );
        let mut bed = TestBed {
            switch: format!("{prefix}-sw"),
            hosts: Vec::new(),
            bridges: 1,
            prefix,
            children: Vec::new(),
            _exclusive: exclusive,
        };
        // From here on, `Drop` removes whatever was created, whatever fails.
        ip(&["netns", "add", &bed.switch])?;
        let sw = bed.switch.clone();
        ip(&["-n", &sw, "link", "set", "lo", "up"])?;
        bed.add_bridge(0)?;
        for i in 0..hosts {
            let host = format!("{}-h{i}", bed.prefix);
            ip(&["netns", "add", &host])?;
            bed.hosts.push(host.clone());
            let port = format!("p{i}");
            ip(&[
                "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &host,
            ])?;
            ip(&["-n", &sw, "link", "set", &port, "master", "br0", "up"])?;
            ip(&["-n", &host, "link", "set", "lo", "up"])?;
            let cidr = format!("{}/24", bed.addr(i));
            ip(&["-n", &host, "addr", "add", &cidr, "dev", "eth0"])?;
            ip(&["-n", &host, "link", "set", "eth0", "up"])?;
            // Multicast (LAN beacons) leaves through eth0, the host's only interface.
            ip(&["-n", &host, "route", "add", "224.0.0.0/4", "dev", "eth0"])?;
        }
        Ok(bed)
    }

    fn add_bridge(&mut self, n: usize) -> io::Result<()> {
        let name = format!("br{n}");
        ip(&[
            "-n",
            &self.switch,
            "link",
            "add",
            &name,
            "type",
            "bridge",
            "mcast_snooping",
            "0",
            "forward_delay",
            "0",
        ])?;
        ip(&["-n", &self.switch, "link", "set", &name, "up"])?;
        Ok(())
    }

    /// How many hosts.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// Whether the bed has no host.
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// The address of host `i` on the LAN.
    pub fn addr(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 0, 10 + u8::try_from(i).expect("at most 245 hosts"))
    }

    /// The namespace name of host `i` (for `ip netns exec`).
    pub fn namespace(&self, i: usize) -> &str {
        &self.hosts[i]
    }

    /// Starts `program` with `args` inside host `i`, collecting its standard output and error
    /// line by line.
    pub fn spawn(
        &mut self,
        host: usize,
        name: &str,
        program: &Path,
        args: &[&str],
    ) -> io::Result<NodeProcess> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.hosts[host]])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let output = Arc::new(Output::default());
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let readers = vec![
            collect(stdout, Stream::Stdout, output.clone()),
            collect(stderr, Stream::Stderr, output.clone()),
        ];
        let pid = child.id();
        let child = Arc::new(Mutex::new(Some(child)));
        self.children.push(child.clone());
        Ok(NodeProcess {
            name: name.to_owned(),
            host,
            pid,
            child,
            output,
            readers,
        })
    }

    /// Pulls host `i`'s cable: its bridge port leaves the bridge, so frames to and from it
    /// vanish without any error on the host (the carrier stays up).
    pub fn cut(&self, host: usize) -> io::Result<()> {
        self.set_port(host, &["nomaster"])
    }

    /// Plugs host `i`'s cable back into the first bridge.
    pub fn mend(&self, host: usize) -> io::Result<()> {
        self.attach(host, 0)
    }

    fn attach(&self, host: usize, bridge: usize) -> io::Result<()> {
        self.set_port(host, &["master", &format!("br{bridge}")])
    }

    /// `ip link set p<host> <settings>` in the switch namespace.
    fn set_port(&self, host: usize, settings: &[&str]) -> io::Result<()> {
        let port = format!("p{host}");
        let mut args = vec!["-n", &self.switch, "link", "set", &port];
        args.extend_from_slice(settings);
        ip(&args)
    }

    /// Splits the LAN: each group of hosts gets a bridge of its own; hosts in no group are cut
    /// off.
    pub fn split(&mut self, groups: &[&[usize]]) -> io::Result<()> {
        while self.bridges < groups.len() {
            self.add_bridge(self.bridges)?;
            self.bridges += 1;
        }
        let mut placed = HashSet::new();
        for (bridge, group) in groups.iter().enumerate() {
            for &host in *group {
                self.attach(host, bridge)?;
                placed.insert(host);
            }
        }
        for host in (0..self.hosts.len()).filter(|h| !placed.contains(h)) {
            self.cut(host)?;
        }
        Ok(())
    }

    /// Ends any split or cut: every host is on the first bridge again.
    pub fn join(&self) -> io::Result<()> {
        for host in 0..self.hosts.len() {
            self.attach(host, 0)?;
        }
        Ok(())
    }
}

impl Drop for TestBed {
    fn drop(&mut self) {
        for child in &self.children {
            if let Some(mut child) = child.lock().unwrap_or_else(PoisonError::into_inner).take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        for ns in self.hosts.iter().chain(std::iter::once(&self.switch)) {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// Which output a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// One line of a process's output, with the time it was read.
#[derive(Debug, Clone)]
pub struct Line {
    /// When the test read it.
    pub at: Instant,
    /// Where it came from.
    pub stream: Stream,
    /// The line, without its end.
    pub text: String,
}

#[derive(Debug, Default)]
struct Output {
    lines: Mutex<Lines>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct Lines {
    kept: Vec<Line>,
    dropped: usize,
    /// Both streams ended.
    closed: usize,
}

fn collect(
    pipe: impl Read + Send + 'static,
    stream: Stream,
    output: Arc<Output>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut buf = String::new();
        loop {
            buf.clear();
            match reader.read_line(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = Line {
                        at: Instant::now(),
                        stream,
                        text: buf.trim_end_matches(['\n', '\r']).to_owned(),
                    };
                    let mut lines = output.lines.lock().unwrap_or_else(PoisonError::into_inner);
                    if lines.kept.len() >= MAX_LINES {
                        lines.dropped += 1;
                    } else {
                        lines.kept.push(line);
                    }
                    drop(lines);
                    output.changed.notify_all();
                }
            }
        }
        output
            .lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .closed += 1;
        output.changed.notify_all();
    })
}

/// A process started in a host of a [`TestBed`]. The bed kills it when dropped, if it still
/// runs.
#[derive(Debug)]
pub struct NodeProcess {
    name: String,
    host: usize,
    pid: u32,
    child: Arc<Mutex<Option<Child>>>,
    output: Arc<Output>,
    readers: Vec<thread::JoinHandle<()>>,
}

impl NodeProcess {
    /// The name the test gave it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host it runs on.
    pub fn host(&self) -> usize {
        self.host
    }

    /// Every line read so far (at most [`MAX_LINES`]).
    pub fn lines(&self) -> Vec<Line> {
        self.output
            .lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .kept
            .clone()
    }

    /// Waits until a line from index `from` on satisfies `matches`; returns its index and the
    /// line, or `None` after `timeout` (or once the process's output has ended without one).
    pub fn wait_line(
        &self,
        from: usize,
        timeout: Duration,
        matches: impl Fn(&Line) -> bool,
    ) -> Option<(usize, Line)> {
        let deadline = Instant::now() + timeout;
        let mut lines = self
            .output
            .lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut next = from;
        loop {
            while next < lines.kept.len() {
                if matches(&lines.kept[next]) {
                    return Some((next, lines.kept[next].clone()));
                }
                next += 1;
            }
            let now = Instant::now();
            if now >= deadline || lines.closed == 2 {
                return None;
            }
            lines = self
                .output
                .changed
                .wait_timeout(lines, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// How many lines were read so far: the index a later [`wait_line`](Self::wait_line) can
    /// start from.
    pub fn cursor(&self) -> usize {
        self.output
            .lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .kept
            .len()
    }

    fn signal(&self, signal: Signal) -> io::Result<()> {
        let pid = Pid::from_raw(i32::try_from(self.pid).map_err(io::Error::other)?)
            .ok_or_else(|| io::Error::other("pid 0"))?;
        kill_process(pid, signal).map_err(io::Error::from)
    }

    /// Freezes the process (SIGSTOP): its sockets stay open, the kernel still acknowledges
    /// what arrives, but nothing is read or answered.
    pub fn freeze(&self) -> io::Result<()> {
        self.signal(Signal::STOP)
    }

    /// Resumes a frozen process (SIGCONT).
    pub fn thaw(&self) -> io::Result<()> {
        self.signal(Signal::CONT)
    }

    /// Asks the process to stop (SIGTERM) and waits for it, at most `timeout`; kills it after
    /// that. Returns its exit code, if it exited by itself.
    pub fn terminate(&mut self, timeout: Duration) -> io::Result<Option<i32>> {
        self.end(Some(Signal::TERM), timeout)
    }

    /// Waits for the process to exit by itself (a command that ends), at most `timeout`;
    /// kills it after that. Returns its exit code, if it exited by itself.
    pub fn wait(&mut self, timeout: Duration) -> io::Result<Option<i32>> {
        self.end(None, timeout)
    }

    fn end(&mut self, signal: Option<Signal>, timeout: Duration) -> io::Result<Option<i32>> {
        let Some(mut child) = self
            .child
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        else {
            return Ok(None);
        };
        if let Some(signal) = signal {
            self.signal(signal)?;
        }
        let (done_tx, done_rx) = std::sync::mpsc::sync_channel(1);
        let waiter = thread::spawn(move || {
            let status = child.wait();
            let _ = done_tx.send(());
            status
        });
        let exited = done_rx.recv_timeout(timeout).is_ok();
        if !exited {
            let _ = self.signal(Signal::KILL);
        }
        let status = waiter
            .join()
            .map_err(|_| io::Error::other("the waiting thread panicked"))??;
        self.join_readers();
        Ok(if exited { status.code() } else { None })
    }

    /// Kills the process (SIGKILL), as a crash would, and waits for it.
    pub fn kill(&mut self) -> io::Result<()> {
        let child = self
            .child
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(mut child) = child {
            child.kill()?;
            child.wait()?;
        }
        self.join_readers();
        Ok(())
    }

    fn join_readers(&mut self) {
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }
}

/// Runs `ip ARGS`, failing with its error output.
fn ip(args: &[&str]) -> io::Result<()> {
    let output = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot run `ip` (iproute2): {e}")))?;
    if output.status.success() {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "`ip {}` failed ({}): {}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    )))
}

fn check_prerequisites() -> io::Result<()> {
    if !rustix::process::geteuid().is_root() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the network-namespace test bed needs root (ip netns add); run the tests as root",
        ));
    }
    ip(&["-V"])
}

/// Deletes the namespaces of test processes that no longer run.
fn remove_stale_namespaces() {
    let Ok(output) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix("chaski-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

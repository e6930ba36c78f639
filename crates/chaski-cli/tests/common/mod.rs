//! Helpers for driving the real `chaski` binary: background processes whose standard error is
//! read line by line, waited on with deadlines.

#![allow(dead_code, unreachable_pub)]

use std::{
    io::{BufRead, BufReader, Read},
    process::{Child, Command, Stdio},
    sync::mpsc::{Receiver, RecvTimeoutError, sync_channel},
    thread,
    time::{Duration, Instant},
};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_chaski");

/// How long any one step of a test may take.
pub const STEP: Duration = Duration::from_secs(15);

/// A `chaski` command with no `CHASKI_*` variables inherited.
pub fn chaski() -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::new(BIN);
    for (key, _) in std::env::vars() {
        if key.starts_with("CHASKI_") || key == "RUST_LOG" {
            cmd.env_remove(key);
        }
    }
    cmd.timeout(STEP);
    cmd
}

/// A `chaski` process running in the background; killed when dropped.
pub struct Background {
    child: Child,
    lines: Receiver<String>,
    /// Every standard error line read so far.
    pub seen: Vec<String>,
    stdout: Option<thread::JoinHandle<Vec<u8>>>,
}

impl Background {
    /// Starts `chaski ARGS`.
    pub fn start(args: &[&str]) -> Background {
        Background::start_with(args, &[])
    }

    /// Starts `chaski ARGS` with extra environment variables.
    pub fn start_with(args: &[&str], env: &[(&str, &str)]) -> Background {
        let mut cmd = Command::new(BIN);
        for (key, _) in std::env::vars() {
            if key.starts_with("CHASKI_") || key == "RUST_LOG" {
                cmd.env_remove(key);
            }
        }
        cmd.args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn chaski");
        let stderr = child.stderr.take().expect("piped");
        let mut stdout = child.stdout.take().expect("piped");
        let (tx, lines) = sync_channel(1024);
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdout = thread::spawn(move || {
            let mut out = Vec::new();
            let _ = stdout.read_to_end(&mut out);
            out
        });
        Background {
            child,
            lines,
            seen: Vec::new(),
            stdout: Some(stdout),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a standard error line containing every one of `parts`; returns it.
    pub fn wait_for(&mut self, parts: &[&str]) -> String {
        let deadline = Instant::now() + STEP;
        if let Some(line) = self
            .seen
            .iter()
            .find(|l| parts.iter().all(|p| l.contains(p)))
        {
            return line.clone();
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if parts.iter().all(|p| line.contains(p)) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "no line with {parts:?} within {STEP:?}; seen: {:#?}",
                        self.seen
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!(
                        "the process ended without a line with {parts:?}; seen: {:#?}",
                        self.seen
                    )
                }
            }
        }
    }

    /// The address in the node's `listening on ADDR` line.
    pub fn listen_addr(&mut self) -> String {
        let line = self.wait_for(&["listening on "]);
        let rest = line.split("listening on ").nth(1).expect("address");
        rest.split_whitespace().next().expect("address").to_owned()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// Waits for the process to end (at most [`STEP`]); its exit code and standard output.
    pub fn finish(&mut self) -> (Option<i32>, Vec<u8>) {
        let deadline = Instant::now() + STEP;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "the process did not end within {STEP:?}; seen: {:#?}",
                self.seen
            );
            thread::sleep(Duration::from_millis(20));
        };
        // Keep the rest of standard error for assertions.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
            self.seen.push(line);
        }
        let out = self
            .stdout
            .take()
            .expect("once")
            .join()
            .expect("stdout reader");
        (status.code(), out)
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh directory under the system's temporary directory, removed when dropped (also when
/// the test fails: the drop runs while a panic unwinds).
pub struct TempDir(std::path::PathBuf);

impl std::ops::Deref for TempDir {
    type Target = std::path::Path;

    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn tempdir() -> TempDir {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "chaski-cli-test-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}

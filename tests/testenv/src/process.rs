//! Child processes that never outlive the test process.
//!
//! Each server (etcd, kube-apiserver) runs in its own process group, so that a Ctrl-C in
//! the terminal does not reach it before we can stop it in order, and so that we can signal
//! the whole group.
//!
//! Stopping happens in two ways:
//! - normally, [`Proc::terminate`] from `Drop` or `stop()`: SIGTERM, a short grace, SIGKILL;
//! - if the test process dies without running destructors (a `static` shared control plane,
//!   `panic = "abort"`, SIGKILL, Ctrl-C), a [`Watchdog`] does it: a `/bin/sh` in its own process
//!   group that blocks reading a pipe whose only writer is this process. The kernel closes that
//!   pipe when this process exits, however it exits; the watchdog then SIGTERMs (then SIGKILLs)
//!   every registered process group, newest first (kube-apiserver before etcd), and removes the
//!   control plane's temporary directory. No `unsafe` (`pre_exec`/`prctl`) is needed, and unlike
//!   `PR_SET_PDEATHSIG` it does not fire when the *thread* that spawned a child exits (tokio
//!   worker and test threads come and go).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// A server process in its own process group, with its output in a log file.
pub(crate) struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Spawns `cmd` in a new process group, stdin from /dev/null, stdout and stderr to `log`.
    pub(crate) fn spawn(name: &'static str, mut cmd: Command, log: &Path) -> Result<Self> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        Ok(Self {
            name,
            child,
            log: log.to_path_buf(),
        })
    }

    /// The process id (also its process group id).
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log file holding the process's stdout and stderr.
    pub(crate) fn log(&self) -> &Path {
        &self.log
    }

    /// `Some(status)` if the process has exited (and reaps it).
    pub(crate) fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The last `lines` lines of the log, for error messages.
    pub(crate) fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }

    /// A one-line description of how the process ended, with the tail of its log.
    pub(crate) fn exit_report(&mut self, status: ExitStatus) -> String {
        format!(
            "{} exited early ({status}); last lines of its log:\n{}",
            self.name,
            self.log_tail(40)
        )
    }

    /// Sends SIGTERM to the process group, waits up to `grace`, then SIGKILLs and reaps.
    /// Synchronous, so it can run in `Drop`.
    pub(crate) fn terminate(&mut self, grace: Duration) {
        if self.exited().is_some() {
            return;
        }
        // The child is not reaped yet, so its pid (= pgid) cannot have been reused.
        let pgid = Pid::from_raw(self.child.id() as i32);
        let _ = killpg(pgid, Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = killpg(pgid, Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.terminate(Duration::from_secs(5));
    }
}

/// Returns the last `lines` lines of a log file (at most 64 KiB are read).
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    let Ok(mut file) = File::open(path) else {
        return format!("(cannot read {})", path.display());
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut buf = Vec::new();
    let _ = file.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

const WATCHDOG_SCRIPT: &str = r#"
trap '' INT TERM HUP PIPE
pids=
while read -r pid; do pids="$pid $pids"; done
for pid in $pids; do
  kill -s TERM -- "-$pid" 2>/dev/null || continue
  i=0
  while kill -s 0 -- "-$pid" 2>/dev/null && [ "$i" -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
  kill -s KILL -- "-$pid" 2>/dev/null
done
rm -rf -- "$1"
"#;

/// Stops registered process groups and removes a directory when this process dies.
/// See the module documentation.
pub(crate) struct Watchdog {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Watchdog {
    /// Starts the watchdog; `dir` is removed after the registered processes are stopped.
    pub(crate) fn spawn(dir: &Path) -> Result<Self> {
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(WATCHDOG_SCRIPT)
            .arg("llmesh-testenv-watchdog")
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context("starting the /bin/sh watchdog that cleans up if the test process dies")?;
        let stdin = child.stdin.take();
        Ok(Self { child, stdin })
    }

    /// Registers a process group to stop when this process dies; later ones are stopped first.
    pub(crate) fn register(&mut self, proc: &Proc) -> Result<()> {
        let stdin = self.stdin.as_mut().context("watchdog already disarmed")?;
        writeln!(stdin, "{}", proc.pid())
            .and_then(|()| stdin.flush())
            .context("registering a process with the watchdog")
    }

    /// Kills the watchdog without letting it act: we are about to stop everything ourselves.
    pub(crate) fn disarm(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        }
        self.stdin = None;
        let _ = self.child.wait();
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.disarm();
    }
}

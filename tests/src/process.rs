//! One managed child process: how to start it, its log file, and the faults a test can inject.
//!
//! A [`Service`] remembers its command line, so it can be restarted with exactly the same
//! arguments (same port, same data directory). Its stdout and stderr are appended to one log
//! file, and every (re)start writes a marker line there first. Dropping a `Service` kills the
//! process (SIGKILL) and reaps it, so a panicking test leaves no orphans behind.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

use anyhow::{Context, bail};

/// A child process with a fixed command line and a log file.
#[derive(Debug)]
pub struct Service {
    name: String,
    program: PathBuf,
    args: Vec<OsString>,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
    paused: bool,
}

impl Service {
    /// Describes a process without starting it. `log` is created on the first start.
    pub fn new(
        name: impl Into<String>,
        program: impl Into<PathBuf>,
        log: impl Into<PathBuf>,
    ) -> Self {
        Self {
            name: name.into(),
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            log: log.into(),
            child: None,
            paused: false,
        }
    }

    /// Appends command-line arguments.
    #[must_use]
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// The value that follows `flag` among the process's arguments, if any.
    pub fn arg_value(&self, flag: &str) -> Option<String> {
        self.args
            .iter()
            .position(|arg| arg == flag)
            .and_then(|at| self.args.get(at + 1))
            .map(|value| value.to_string_lossy().into_owned())
    }

    /// Sets an environment variable for the process.
    #[must_use]
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// The name used in messages and log dumps, e.g. `datanode-3`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The log file that receives the process's stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The OS process id while the process runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts the process. Variables named `CARTDB_*` are removed from the inherited
    /// environment so that a developer's shell cannot change what a test runs.
    ///
    /// # Errors
    /// When it is already running, or the log cannot be opened, or the program cannot be spawned.
    pub fn start(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("{} is already running", self.name);
        }
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        writeln!(
            log,
            "=== harness: starting {}: {}",
            self.name,
            self.command_line()
        )?;
        let stderr = log.try_clone()?;
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("CARTDB_") {
                command.env_remove(key);
            }
        }
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "info");
        }
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        let child = command
            .spawn()
            .with_context(|| format!("spawning {}: {}", self.name, self.program.display()))?;
        self.child = Some(child);
        self.paused = false;
        Ok(())
    }

    /// Kills the process with SIGKILL (no chance to clean up) and reaps it. Does nothing if it
    /// is not running.
    ///
    /// # Errors
    /// When the signal cannot be sent or the process cannot be reaped.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            if child.try_wait()?.is_none() {
                child
                    .kill()
                    .with_context(|| format!("killing {}", self.name))?;
            }
            child
                .wait()
                .with_context(|| format!("reaping {}", self.name))?;
        }
        self.paused = false;
        Ok(())
    }

    /// Kills the process if it runs, then starts it again with the same command line.
    ///
    /// # Errors
    /// As [`Service::kill`] and [`Service::start`].
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill()?;
        self.start()
    }

    /// Freezes the process with SIGSTOP: it keeps its sockets but answers nothing.
    ///
    /// # Errors
    /// When the process is not running or the signal cannot be sent.
    pub fn pause(&mut self) -> anyhow::Result<()> {
        self.signal("STOP")?;
        self.paused = true;
        Ok(())
    }

    /// Lets a paused process continue with SIGCONT.
    ///
    /// # Errors
    /// When the process is not running or the signal cannot be sent.
    pub fn resume(&mut self) -> anyhow::Result<()> {
        self.signal("CONT")?;
        self.paused = false;
        Ok(())
    }

    /// Sends SIGTERM (a polite stop); the process is not waited for.
    ///
    /// # Errors
    /// When the process is not running or the signal cannot be sent.
    pub fn terminate(&mut self) -> anyhow::Result<()> {
        self.signal("TERM")
    }

    /// Sends SIG`signal` with the shell's `kill` builtin (always there, unlike procps): the
    /// test crate then needs no libc binding, which keeps its dependency features equal to
    /// the rest of the workspace, so CI compiles every dependency once.
    fn signal(&mut self, signal: &str) -> anyhow::Result<()> {
        let Some(child) = &self.child else {
            bail!("{} is not running, cannot send SIG{signal}", self.name);
        };
        let status = Command::new("sh")
            .args(["-c", "kill -s \"$0\" \"$1\"", signal])
            .arg(child.id().to_string())
            .status()
            .with_context(|| format!("running kill -{signal} for {}", self.name))?;
        if !status.success() {
            bail!(
                "kill -{signal} {} ({}) failed: {status}",
                child.id(),
                self.name
            );
        }
        Ok(())
    }

    /// Whether the process was stopped with [`Service::pause`] and not resumed.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// The exit status if the process was started and has since exited on its own.
    ///
    /// # Errors
    /// When the OS cannot be asked.
    pub fn exit_status(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        match &mut self.child {
            Some(child) => Ok(child.try_wait()?),
            None => Ok(None),
        }
    }

    /// Fails, with the tail of the log, if the process was started and has exited.
    ///
    /// # Errors
    /// When the process is no longer running.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.exit_status()? {
            bail!(
                "{} exited unexpectedly ({status}); last lines of {}:\n{}",
                self.name,
                self.log.display(),
                self.log_tail(40)
            );
        }
        Ok(())
    }

    /// The last `lines` lines of the log (at most the last 64 KiB of it).
    pub fn log_tail(&self, lines: usize) -> String {
        read_tail(&self.log, lines)
            .unwrap_or_else(|e| format!("(cannot read {}: {e})", self.log.display()))
    }

    fn command_line(&self) -> String {
        let mut line = self.program.display().to_string();
        for arg in &self.args {
            line.push(' ');
            line.push_str(&arg.to_string_lossy());
        }
        line
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Err(error) = self.kill() {
            eprintln!("harness: could not stop {}: {error:#}", self.name);
        }
    }
}

fn read_tail(path: &Path, lines: usize) -> std::io::Result<String> {
    const WINDOW: u64 = 64 * 1024;
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(WINDOW)))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    Ok(all[all.len().saturating_sub(lines)..].join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(dir: &Path, script: &str) -> Service {
        Service::new("sh", "/bin/sh", dir.join("sh.log")).args(["-c", script])
    }

    #[test]
    fn output_goes_to_the_log_and_the_tail_shows_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let mut service = sh(dir.path(), "for i in 1 2 3 4 5; do echo line$i; done");
        service.start().unwrap();
        let status = service.child.as_mut().unwrap().wait().unwrap();
        assert!(status.success());
        let tail = service.log_tail(2);
        assert_eq!(tail, "line4\nline5");
    }

    #[test]
    fn kill_pause_resume_and_restart_a_running_process() {
        let dir = tempfile::tempdir().unwrap();
        let mut service = sh(dir.path(), "exec sleep 600");
        service.start().unwrap();
        service.pause().unwrap();
        assert!(service.is_paused());
        service.resume().unwrap();
        assert!(service.exit_status().unwrap().is_none());
        let first = service.pid();
        service.restart().unwrap();
        assert_ne!(service.pid(), first);
        service.kill().unwrap();
        assert!(service.pid().is_none());
        assert!(
            service.pause().is_err(),
            "a stopped service cannot be paused"
        );
        let log = std::fs::read_to_string(service.log_path()).unwrap();
        assert_eq!(log.matches("=== harness: starting sh").count(), 2);
    }

    #[test]
    fn an_exited_process_is_reported_with_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut service = sh(dir.path(), "echo boom; exit 3");
        service.start().unwrap();
        service.child.as_mut().unwrap().wait().unwrap();
        let error = service.ensure_running().unwrap_err().to_string();
        assert!(
            error.contains("boom") && error.contains("exited"),
            "{error}"
        );
    }
}

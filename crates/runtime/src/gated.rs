//! The gated child of `baton record -- CMD`: forked, but held before `exec` until profiling is
//! attached, so the profile starts at the command's first instruction.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::Error;

/// A child that is forked but blocked before `exec` until profiling is attached. (std's
/// `Command::spawn` waits for the exec, so the fork is done by hand.)
#[derive(Debug)]
pub struct GatedChild {
    pid: libc::pid_t,
    gate: Option<OwnedFd>,
    /// Read end of a pipe whose write end the child holds close-on-exec: it reads EOF once the
    /// child has exec'd (or died).
    execd: Option<OwnedFd>,
    status: Option<i32>,
}

/// Finds `prog` the way a shell would: a path as is, a bare name along `$PATH`.
fn resolve_program(prog: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        p.is_file()
            && p.metadata()
                .map(|m| m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
    };
    if prog.contains('/') {
        let p = PathBuf::from(prog);
        return executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(prog))
        .find(|p| executable(p))
}

/// A new pipe whose two ends close on exec: (read end, write end).
fn cloexec_pipe(what: &'static str) -> Result<(OwnedFd, OwnedFd), Error> {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(Error::io(what)(std::io::Error::last_os_error()));
    }
    // SAFETY: pipe2 returned two new descriptors that we now own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

impl GatedChild {
    /// Forks `argv`, held before its `exec` until [`GatedChild::release`].
    pub fn spawn(argv: &[String]) -> Result<GatedChild, Error> {
        GatedChild::spawn_with_env(argv, &[])
    }

    /// [`GatedChild::spawn`] with `env` set (over this process's environment) in the command's.
    pub fn spawn_with_env(argv: &[String], env: &[(String, String)]) -> Result<GatedChild, Error> {
        let prog =
            resolve_program(&argv[0]).ok_or_else(|| Error::CommandNotFound(argv[0].clone()))?;
        let c_prog = CString::new(prog.as_os_str().as_bytes())
            .map_err(|_| Error::NulByte("the command contains a NUL byte"))?;
        let c_args: Vec<CString> = argv
            .iter()
            .map(|a| CString::new(a.as_bytes()))
            .collect::<Result<_, _>>()
            .map_err(|_| Error::NulByte("an argument contains a NUL byte"))?;
        let mut c_argv: Vec<*const libc::c_char> = c_args.iter().map(|a| a.as_ptr()).collect();
        c_argv.push(std::ptr::null());
        let mut vars: Vec<(std::ffi::OsString, std::ffi::OsString)> = std::env::vars_os()
            .filter(|(k, _)| !env.iter().any(|(n, _)| k.as_bytes() == n.as_bytes()))
            .collect();
        vars.extend(env.iter().map(|(k, v)| (k.into(), v.into())));
        let c_env: Vec<CString> = vars
            .iter()
            .map(|(k, v)| CString::new([k.as_bytes(), b"=", v.as_bytes()].concat()))
            .collect::<Result<_, _>>()
            .map_err(|_| Error::NulByte("the environment contains a NUL byte"))?;
        let mut c_envp: Vec<*const libc::c_char> = c_env.iter().map(|a| a.as_ptr()).collect();
        c_envp.push(std::ptr::null());

        let (rd, wr) = cloexec_pipe("creating the start gate")?;
        let (exec_rd, exec_wr) = cloexec_pipe("creating the exec pipe")?;
        // SAFETY: after fork the child only calls async-signal-safe functions (close, read,
        // execve, _exit) on memory prepared before the fork.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(Error::io("fork")(std::io::Error::last_os_error()));
        }
        if pid == 0 {
            // SAFETY: see above; this branch never returns.
            unsafe {
                libc::close(wr.as_raw_fd());
                libc::close(exec_rd.as_raw_fd());
                let mut b = 0u8;
                let n = libc::read(rd.as_raw_fd(), (&mut b as *mut u8).cast(), 1);
                if n != 1 {
                    // The parent gave up before profiling started: do not run the command.
                    libc::_exit(126);
                }
                libc::execve(c_prog.as_ptr(), c_argv.as_ptr(), c_envp.as_ptr());
                libc::_exit(127);
            }
        }
        drop(rd);
        drop(exec_wr);
        Ok(GatedChild {
            pid,
            gate: Some(wr),
            execd: Some(exec_rd),
            status: None,
        })
    }

    /// The child's pid.
    pub fn id(&self) -> u32 {
        self.pid as u32
    }

    /// Waits up to `timeout` for the released child to exec (or die), and then for its
    /// executable to be mapped: the close-on-exec descriptors close before the kernel maps the
    /// new program.
    pub fn wait_exec(&mut self, timeout: Duration) {
        let Some(fd) = self.execd.take() else {
            return;
        };
        let t0 = Instant::now();
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: polling one valid descriptor we own, with a valid pollfd.
        unsafe { libc::poll(&mut p, 1, timeout.as_millis() as libc::c_int) };
        let Ok(exe) = std::fs::read_link(format!("/proc/{}/exe", self.pid)) else {
            return;
        };
        let exe = exe.to_string_lossy().into_owned();
        while t0.elapsed() < timeout {
            match std::fs::read_to_string(format!("/proc/{}/maps", self.pid)) {
                Ok(maps) if !maps.lines().any(|l| l.ends_with(exe.as_str())) => {
                    std::thread::sleep(Duration::from_micros(200));
                }
                _ => break,
            }
        }
    }

    /// Lets the child exec.
    pub fn release(&mut self) {
        if let Some(gate) = self.gate.take() {
            // SAFETY: writing one byte from a valid buffer to a descriptor we own.
            unsafe { libc::write(gate.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
        }
    }

    /// The exit status once the child has exited (reaping it), else None.
    pub fn try_wait(&mut self) -> Option<i32> {
        if self.status.is_none() {
            let mut st = 0;
            // SAFETY: waiting on our own child with a valid status pointer.
            if unsafe { libc::waitpid(self.pid, &mut st, libc::WNOHANG) } == self.pid {
                self.status = Some(st);
            }
        }
        self.status
    }

    /// Kills and reaps the child (it never runs the command if it was not released).
    pub fn kill(&mut self) {
        self.gate.take();
        // SAFETY: signalling and reaping our own child.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            libc::waitpid(self.pid, std::ptr::null_mut(), 0);
        }
    }
}

/// A wait status in words: `exit code N` or `killed by signal N`.
pub fn describe_status(st: i32) -> String {
    if libc::WIFEXITED(st) {
        format!("exit code {}", libc::WEXITSTATUS(st))
    } else if libc::WIFSIGNALED(st) {
        format!("killed by signal {}", libc::WTERMSIG(st))
    } else {
        format!("status {st}")
    }
}

/// The file `execvp` would run for `cmd`: itself when it has a slash, else the first match on
/// `PATH`, canonicalized (the profilers place uprobes on it before the exec).
pub fn exec_path(cmd: &str) -> Option<PathBuf> {
    if cmd.contains('/') {
        return std::fs::canonicalize(cmd).ok();
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(cmd))
        .find(|p| p.is_file())
        .and_then(|p| std::fs::canonicalize(p).ok())
}

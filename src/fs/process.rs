//! Which process a `close()` comes from. The kernel sends a FLUSH for every
//! descriptor closed, including the copies a child inherits: a program that
//! starts a subprocess (fork, then exec closing the copies marked
//! close-on-exec) while it writes a file would otherwise publish the file
//! half-written. As mountpoint-s3 does, only a close by the process that
//! opened the file publishes at `close()`; a file whose opener closed
//! first is published when its last descriptor is released.

/// The process that opened a handle, as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opener {
    /// The thread id of the request (FUSE reports the caller's tid).
    pid: u32,
    /// Its thread group (the process), when /proc could tell.
    tgid: Option<u32>,
}

impl Opener {
    /// The opener of a request from thread `pid`.
    pub fn of(pid: u32) -> Opener {
        Opener {
            pid,
            tgid: tgid(pid),
        }
    }

    /// Whether a flush from thread `pid` is a close by the opening process.
    /// A pid of 0 (a caller outside the daemon's pid namespace) cannot be
    /// told apart and counts as the opener.
    pub fn is_same_process(&self, pid: u32) -> bool {
        if self.pid == 0 || pid == 0 || pid == self.pid {
            return true;
        }
        match (self.tgid, tgid(pid)) {
            (Some(a), Some(b)) => a == b,
            _ => false,
        }
    }
}

/// The thread group id of thread `tid`, from `/proc/<tid>/status`.
fn tgid(tid: u32) -> Option<u32> {
    if tid == 0 {
        return None;
    }
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_of_one_process_are_the_same_process() {
        let me = Opener::of(std::process::id());
        assert_eq!(me.tgid, Some(std::process::id()));
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            tx.send(unsafe { libc::gettid() } as u32).unwrap();
            let _ = done_rx.recv();
        });
        let tid = rx.recv().unwrap();
        assert_ne!(tid, std::process::id());
        assert!(me.is_same_process(tid), "another thread of the opener");
        drop(done_tx);
        t.join().unwrap();
    }

    #[test]
    fn another_process_is_not_the_opener() {
        let me = Opener::of(std::process::id());
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let other = child.id();
        let same = me.is_same_process(other);
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!same);
        assert!(me.is_same_process(0), "pid 0 cannot be told apart");
    }
}

//! `gridback local up` as a real child process, with its real FUSE mount.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The `gridback` binary under test: `GRIDBACK_BIN`, or the one cargo built next to this
/// test executable (`target/<profile>/gridback`).
pub fn gridback_bin() -> PathBuf {
    if let Ok(p) = std::env::var("GRIDBACK_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>");
    let bin = profile_dir.join("gridback");
    assert!(
        bin.exists(),
        "{} not found: build it first (`cargo build -p gridback`) or set GRIDBACK_BIN",
        bin.display()
    );
    bin
}

/// A running `gridback local up`.
pub struct LocalGridProcess {
    /// `--data`.
    pub data: PathBuf,
    /// `--mount`.
    pub mount: PathBuf,
    /// `DIR/client.toml`.
    pub config: PathBuf,
    /// Where its output goes.
    pub log: PathBuf,
    child: Option<Child>,
}

impl LocalGridProcess {
    /// Start `gridback local up --nodes N` and wait until the mount answers.
    pub fn start(data: &Path, mount: &Path, nodes: usize) -> Self {
        Self::start_with(data, mount, &["--nodes", &nodes.to_string()])
    }

    /// Start `gridback local up ARGS…` (e.g. `--topology FILE`) and wait until the mount
    /// answers.
    pub fn start_with(data: &Path, mount: &Path, args: &[&str]) -> Self {
        std::fs::create_dir_all(data).unwrap();
        std::fs::create_dir_all(mount).unwrap();
        let log = data.with_extension("local-up.log");
        let out = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(gridback_bin())
            .args(["local", "up"])
            .args(args)
            .arg("--data")
            .arg(data)
            .arg("--mount")
            .arg(mount)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start gridback local up");
        let mut g = Self {
            data: data.to_path_buf(),
            mount: mount.to_path_buf(),
            config: data.join("client.toml"),
            log,
            child: Some(child),
        };
        g.wait_until_mounted();
        g
    }

    fn wait_until_mounted(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!("gridback local up exited ({status}):\n{}", self.log_text());
            }
            if self.mount.join("snapshots").is_dir()
                && std::fs::read_to_string(&self.log)
                    .unwrap_or_default()
                    .contains("is up")
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "local grid did not come up:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Output of `local up` so far.
    pub fn log_text(&self) -> String {
        let mut s = std::fs::read_to_string(&self.log).unwrap_or_default();
        for name in ["mount", "coordinator", "node-01"] {
            let p = self.data.join("logs").join(format!("{name}.log"));
            if let Ok(t) = std::fs::read_to_string(&p) {
                let lines: Vec<&str> = t.lines().collect();
                s.push_str(&format!("\n--- {name}.log (tail) ---\n"));
                s.push_str(&lines[lines.len().saturating_sub(30)..].join("\n"));
            }
        }
        s
    }

    /// Run `gridback ARGS… --config DIR/client.toml`.
    pub fn gridback(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run gridback")
    }

    /// `gridback ARGS… --config DIR/client.toml`, not started yet (to spawn and kill it).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(gridback_bin());
        c.args(args).arg("--config").arg(&self.config);
        c
    }

    /// `gridback admin ARGS… --config DIR/admin.toml`, not started (for commands that keep
    /// running, like `admin log --follow`).
    pub fn admin_command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(gridback_bin());
        c.arg("admin")
            .args(args)
            .arg("--config")
            .arg(self.data.join("admin.toml"));
        c
    }

    /// Run `gridback admin ARGS… --config DIR/admin.toml`.
    pub fn admin(&self, args: &[&str]) -> Output {
        self.admin_command(args)
            .output()
            .expect("run gridback admin")
    }

    /// `gridback admin ARGS… --json`, which must succeed, parsed.
    pub fn admin_json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self.admin(&a);
        assert!(
            out.status.success(),
            "gridback admin {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "gridback admin {args:?}: not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// This grid's client id, from `gridback status --json`.
    pub fn client_id(&self) -> String {
        self.status()["client"]
            .as_str()
            .expect("status names the client")
            .to_string()
    }

    /// `gridback status --json`.
    pub fn status(&self) -> serde_json::Value {
        let out = self.gridback(&["status", "--json"]);
        assert!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status JSON")
    }

    /// Bytes used on every node, summed.
    pub fn nodes_used_bytes(&self) -> u64 {
        self.status()["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["used_bytes"].as_u64().unwrap())
            .sum()
    }

    /// Stop with SIGTERM (like Ctrl-C) and check it exits cleanly and unmounts.
    pub fn stop(mut self) {
        let mut child = self.child.take().expect("running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "local up did not stop:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(
            status.success(),
            "local up exited with {status}:\n{}",
            self.log_text()
        );
        assert!(
            !self.mount.join("snapshots").exists(),
            "mount still present after stop"
        );
    }
}

impl Drop for LocalGridProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
            let _ = nix::mount::umount2(&self.mount, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// Copy a tree like a person would: `cp -a SRC/. DST/`.
pub fn cp_a(src: &Path, dst: &Path) {
    let out = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", src.display()))
        .arg(dst)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cp -a failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Pid of the `gridback mount` process serving `mount`, found in /proc.
pub fn mount_pid(mount: &Path) -> Option<u32> {
    let want = mount.as_os_str().as_encoded_bytes();
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        if args.len() > 2 && args[1] == b"mount" && args[2] == want {
            return Some(pid);
        }
    }
    None
}

/// Peak resident set size of a process (VmHWM), in bytes.
pub fn peak_rss(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = s
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

/// Write `len` pseudo-random bytes to `path` (fast, deterministic), returning their BLAKE3.
pub fn write_random_file(path: &Path, len: u64, seed: u64) -> blake3::Hash {
    use std::io::Write;
    let mut rng = crate::tree::Rng::new(seed);
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill(&mut buf[..n]);
        f.write_all(&buf[..n]).unwrap();
        h.update(&buf[..n]);
        left -= n as u64;
    }
    f.flush().unwrap();
    h.finalize()
}

/// BLAKE3 of a file, streamed.
pub fn hash_file(path: &Path) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    h.update_reader(std::fs::File::open(path).unwrap()).unwrap();
    h.finalize()
}

//! A real Ceph cluster for the tests of `storage: rbd`: one per test binary, started on
//! first use by `scripts/ceph/cluster.sh` (one monitor, one manager, one bluestore OSD on a
//! sparse file, all on 127.0.0.1), and stopped by the script's guardian when the test
//! process ends. The `rbd` command line is the yardstick the tests hold cowctl against.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub struct Cluster {
    dir: PathBuf,
}

/// A manifest's `ceph` section for the cluster as the configuration `conf` reaches it, its
/// clones named `<prefix>.<pc>`.
pub fn section_at(conf: &Path, prefix: &str) -> String {
    format!(
        "ceph:\n  conf: {}\n  pool: rbd\n  prefix: {prefix}\n",
        conf.display()
    )
}

/// `rbd -c CONF ARGS`; its stdout, and a panic when it fails.
pub fn rbd_at(conf: &Path, args: &[&str]) -> String {
    let out = rbd_output_at(conf, args);
    assert!(
        out.status.success(),
        "rbd {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn rbd_output_at(conf: &Path, args: &[&str]) -> std::process::Output {
    Command::new("rbd")
        .arg("-c")
        .arg(conf)
        .args(args)
        .output()
        .expect("rbd runs")
}

/// The binary's cluster; the first caller waits for it (about 10 s).
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("cowctl-ceph-{}", std::process::id()));
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/ceph/cluster.sh");
        let out = Command::new(script)
            .arg("start")
            .arg(&dir)
            .args(["--owner-pid", &std::process::id().to_string()])
            .output()
            .expect("scripts/ceph/cluster.sh runs");
        assert!(
            out.status.success(),
            "the test cluster did not start:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("{}", String::from_utf8_lossy(&out.stdout).trim());
        Cluster { dir }
    })
}

impl Cluster {
    /// A cluster somebody else started and stops, in `dir` (the VM's tests use the host's,
    /// started by scripts/test-vm-rbd.sh).
    pub fn existing(dir: PathBuf) -> Cluster {
        assert!(
            dir.join("ceph.conf").exists(),
            "no cluster in {}",
            dir.display()
        );
        Cluster { dir }
    }

    pub fn conf(&self) -> PathBuf {
        self.dir.join("ceph.conf")
    }

    /// The manifest's `ceph` section for this cluster, its clones named `<prefix>.<pc>`.
    pub fn section(&self, prefix: &str) -> String {
        section_at(&self.conf(), prefix)
    }

    /// `rbd ARGS` against the cluster; its stdout, and a panic when it fails.
    pub fn rbd(&self, args: &[&str]) -> String {
        rbd_at(&self.conf(), args)
    }

    /// `ceph ARGS` against the cluster; its stdout, and a panic when it fails.
    pub fn ceph(&self, args: &[&str]) -> String {
        let out = Command::new("ceph")
            .arg("-c")
            .arg(self.conf())
            .args(args)
            .output()
            .expect("ceph runs");
        assert!(
            out.status.success(),
            "ceph {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The addresses of the clients watching an image (`rbd status`): who has it open.
    pub fn watchers(&self, image: &str) -> Vec<String> {
        self.rbd(&["status", &format!("rbd/{image}")])
            .split_whitespace()
            .filter_map(|w| w.strip_prefix("watcher="))
            .map(str::to_string)
            .collect()
    }

    pub fn rbd_output(&self, args: &[&str]) -> std::process::Output {
        rbd_output_at(&self.conf(), args)
    }

    /// A golden image `name` in pool rbd with these bytes, and its protected snapshot `snap`.
    pub fn golden(&self, name: &str, snap: &str, bytes: &[u8]) {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), bytes).unwrap();
        self.golden_from(name, snap, file.path());
    }

    /// A golden image `name` imported from a file (its holes stay unwritten), snapshot `snap`.
    pub fn golden_from(&self, name: &str, snap: &str, file: &Path) {
        let path = file.to_str().unwrap();
        self.rbd(&["import", "--no-progress", path, &format!("rbd/{name}")]);
        self.rbd(&["snap", "create", &format!("rbd/{name}@{snap}")]);
        self.rbd(&["snap", "protect", &format!("rbd/{name}@{snap}")]);
    }

    /// `rbd du`'s used bytes of one image (whole objects, as cowctl counts them).
    pub fn du(&self, image: &str) -> u64 {
        let out = self.rbd(&["du", "--format", "json", &format!("rbd/{image}")]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["images"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == image && i.get("snapshot").is_none())
            .map(|i| i["used_size"].as_u64().unwrap())
            .unwrap_or_else(|| panic!("rbd du lists no {image}: {out}"))
    }

    /// The images in pool rbd.
    pub fn images(&self) -> Vec<String> {
        self.rbd(&["ls", "rbd"])
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// The parent of a clone, as `rbd info` says it (`rbd/golden@v1`).
    pub fn parent(&self, image: &str) -> Option<String> {
        let out = self.rbd(&["info", "--format", "json", &format!("rbd/{image}")]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let p = v.get("parent")?;
        Some(format!(
            "{}/{}@{}",
            p["pool"].as_str()?,
            p["image"].as_str()?,
            p["snapshot"].as_str()?
        ))
    }
}

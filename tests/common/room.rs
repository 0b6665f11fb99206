//! The test room: a temp dir with a golden image (or a version store), a COW directory, the
//! secrets the manifest names and `room.yaml` written from typed settings; `cowctl` run on
//! it, and `cowctl down` when it is dropped.
//!
//! ```ignore
//! let room = RoomBuilder::userspace()
//!     .golden(Golden::Fill(0x11, 16 << 20))
//!     .cow("32MiB", "4KiB")
//!     .iscsi(Iscsi::new("iqn.2024-01.lan.test").acl("initiator").chap("lab", MASTER))
//!     .pc(Pc::new("pc-{1..2}").initiator("iqn.2024-01.lan.pc:{name}"))
//!     .build();
//! room.cowctl(&["apply"]);
//! ```
//!
//! Every listener the builder does not get an address for is on 127.0.0.1 at a port of its
//! own ([`super::free_port`]); `{d}` in any fragment is the room's folder.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super as common;

/// What the golden image `g` is.
#[derive(Clone)]
pub enum Golden {
    /// `golden.img` of `size` bytes, each `byte`.
    Fill(u8, usize),
    /// `golden.img` with these bytes.
    Bytes(Vec<u8>),
    /// `golden.img`, sparse, of this size: it reads zeros.
    Sparse(u64),
    /// `golden.img`: the counting boot sector of `tests/data/counter-boot.asm` (pc.rs).
    Counter(u64),
    /// No file: `versions: {d}/versions`, a store the test imports into.
    Versions,
    /// `golden.img`: a real Linux on a GPT disk (realos.rs).
    RealOs,
    /// `golden.img`: a symbolic link to this file or device.
    Link(PathBuf),
    /// No file: `storage: rbd` with `rbd: IMAGE@SNAPSHOT` in the ceph section's pool (the
    /// test makes it, and adds the ceph section with `extra`).
    Rbd(String),
}

/// The `iscsi` section: the portal is 127.0.0.1 at a free port unless given.
#[derive(Clone)]
pub struct Iscsi {
    prefix: String,
    portal: Option<String>,
    acl: Option<String>,
    /// CHAP username and the master secret, written to `{d}/chap.secret`.
    chap: Option<(String, String)>,
    /// Lines of the section after the portals, instead of acl and chap.
    access: Option<String>,
}

impl Iscsi {
    pub fn new(iqn_prefix: &str) -> Iscsi {
        Iscsi {
            prefix: iqn_prefix.into(),
            portal: None,
            acl: None,
            chap: None,
            access: None,
        }
    }

    /// A fixed portal (`127.0.0.1:3260`, `10.9.0.1:3260`).
    pub fn portal(mut self, portal: &str) -> Iscsi {
        self.portal = Some(portal.into());
        self
    }

    pub fn acl(mut self, acl: &str) -> Iscsi {
        self.acl = Some(acl.into());
        self
    }

    /// CHAP as `username`, with `master` in `{d}/chap.secret` (0600).
    pub fn chap(mut self, username: &str, master: &str) -> Iscsi {
        self.chap = Some((username.into(), master.into()));
        self
    }

    /// The section's lines after `portals:` as written (`{d}` is the room's folder), in place
    /// of acl and chap.
    pub fn access(mut self, lines: &str) -> Iscsi {
        self.access = Some(lines.into());
        self
    }
}

/// The `http` section: both listeners on 127.0.0.1 at free ports unless given.
#[derive(Clone, Default)]
pub struct Http {
    listen: Option<String>,
    admin_listen: Option<String>,
    /// The admin token, written to `{d}/token` (0600) and named by `token_file`.
    token: Option<String>,
    server: Option<String>,
}

impl Http {
    pub fn new() -> Http {
        Http::default()
    }

    /// The PC-facing listener: a host (its port free) or `host:port`.
    pub fn listen(mut self, at: &str) -> Http {
        self.listen = Some(at.into());
        self
    }

    /// The admin listener: a host (its port free) or `host:port`.
    pub fn admin(mut self, at: &str) -> Http {
        self.admin_listen = Some(at.into());
        self
    }

    pub fn token(mut self, token: &str) -> Http {
        self.token = Some(token.into());
        self
    }

    /// The address PCs reach this host at (`http.server`).
    pub fn server(mut self, server: &str) -> Http {
        self.server = Some(server.into());
        self
    }
}

/// One entry of `pcs:`, its fields in the order given.
#[derive(Clone)]
pub struct Pc {
    name: String,
    fields: Vec<(String, String)>,
}

impl Pc {
    /// `name` may be a range (`pc-{1..2}`).
    pub fn new(name: &str) -> Pc {
        Pc {
            name: name.into(),
            fields: Vec::new(),
        }
    }

    /// Any field, its value as YAML (`autoextend`, `{threshold: 50, step: 100, max: 16MiB}`).
    pub fn set(mut self, key: &str, value: &str) -> Pc {
        self.fields.push((key.into(), value.into()));
        self
    }

    pub fn ip(self, ip: &str) -> Pc {
        self.set("ip", ip)
    }

    pub fn mac(self, mac: &str) -> Pc {
        self.set("mac", mac)
    }

    pub fn initiator(self, iqn: &str) -> Pc {
        self.set("initiator", iqn)
    }

    pub fn export(self, export: &str) -> Pc {
        self.set("export", export)
    }

    /// `export: aoe` as `e<shelf>.<slot>`.
    pub fn aoe(self, shelf: u16, slot: u8) -> Pc {
        self.export("aoe")
            .set("shelf", &shelf.to_string())
            .set("slot", &slot.to_string())
    }

    /// A field set to `true` (`self_reset`, `reset_on_boot`, `keep`, `read_only`).
    pub fn flag(self, key: &str) -> Pc {
        self.set(key, "true")
    }
}

/// Builds a [`Room`]: the manifest's sections in the order cowctl's docs write them.
#[derive(Clone)]
pub struct RoomBuilder {
    backend: Option<String>,
    golden: Golden,
    /// `version:` of image g (a path image).
    version: Option<String>,
    /// `storage:` of image g.
    storage: Option<String>,
    /// More images after g: (name, file in the room, bytes).
    images: Vec<(String, String, Vec<u8>)>,
    /// The defaults' image (`g` unless given).
    default_image: String,
    cow_dir: String,
    cow_size: String,
    chunk: String,
    export: Option<String>,
    defaults_extra: String,
    iscsi: Option<Iscsi>,
    aoe: Option<String>,
    /// The NBD listener (None: a free port on 127.0.0.1) and the socket's file name.
    nbd: Option<(Option<String>, Option<String>)>,
    http: Option<Http>,
    /// Top-level YAML after the sections, before `pcs:` (`warn_percent: 50\n`, `pxe: …`).
    extra: String,
    pcs: Vec<Pc>,
    manifest: String,
}

impl RoomBuilder {
    /// A room with no `backend:` line (auto): 1 MiB golden image of 7s, 2 MiB COWs of 4 KiB
    /// chunks, no sections, no PCs.
    pub fn new() -> RoomBuilder {
        RoomBuilder {
            backend: None,
            golden: Golden::Fill(7, 1 << 20),
            version: None,
            storage: None,
            images: Vec::new(),
            default_image: "g".into(),
            cow_dir: "cow".into(),
            cow_size: "2MiB".into(),
            chunk: "4KiB".into(),
            export: None,
            defaults_extra: String::new(),
            iscsi: None,
            aoe: None,
            nbd: None,
            http: None,
            extra: String::new(),
            pcs: Vec::new(),
            manifest: "room.yaml".into(),
        }
    }

    /// `backend: userspace` with an NBD listener (127.0.0.1, a free port; `{d}/nbd.sock`).
    pub fn userspace() -> RoomBuilder {
        RoomBuilder::new().backend("userspace").nbd()
    }

    /// `backend: kernel`.
    pub fn kernel() -> RoomBuilder {
        RoomBuilder::new().backend("kernel")
    }

    pub fn backend(mut self, backend: &str) -> RoomBuilder {
        self.backend = Some(backend.into());
        self
    }

    pub fn golden(mut self, golden: Golden) -> RoomBuilder {
        self.golden = golden;
        self
    }

    /// Image g's `version:` label.
    pub fn version(mut self, v: &str) -> RoomBuilder {
        self.version = Some(v.into());
        self
    }

    /// Image g's `storage:` (`reflink`).
    pub fn storage(mut self, s: &str) -> RoomBuilder {
        self.storage = Some(s.into());
        self
    }

    /// Another image, `name`, in `file` with these bytes.
    pub fn image(mut self, name: &str, file: &str, bytes: Vec<u8>) -> RoomBuilder {
        self.images.push((name.into(), file.into(), bytes));
        self
    }

    /// The image the defaults name (`g` unless given).
    pub fn default_image(mut self, name: &str) -> RoomBuilder {
        self.default_image = name.into();
        self
    }

    /// The defaults' COW size and chunk (`"8MiB", "4KiB"`).
    pub fn cow(mut self, size: &str, chunk: &str) -> RoomBuilder {
        self.cow_size = size.into();
        self.chunk = chunk.into();
        self
    }

    /// The COW folder in the room (`cow` unless given).
    pub fn cow_dir(mut self, dir: &str) -> RoomBuilder {
        self.cow_dir = dir.into();
        self
    }

    /// The defaults' `export:`.
    pub fn export(mut self, export: &str) -> RoomBuilder {
        self.export = Some(export.into());
        self
    }

    /// More lines of `defaults:` as written (`  identity: {site: north}\n`).
    pub fn defaults(mut self, lines: &str) -> RoomBuilder {
        self.defaults_extra.push_str(lines);
        self
    }

    pub fn iscsi(mut self, iscsi: Iscsi) -> RoomBuilder {
        self.iscsi = Some(iscsi);
        self
    }

    /// `aoe: interface: <name>`.
    pub fn aoe(mut self, interface: &str) -> RoomBuilder {
        self.aoe = Some(interface.into());
        self
    }

    /// An NBD listener on 127.0.0.1 at a free port, its socket `{d}/nbd.sock`.
    pub fn nbd(mut self) -> RoomBuilder {
        self.nbd = Some((None, Some("nbd.sock".into())));
        self
    }

    /// The NBD listener at `listen` (`127.0.0.1:10809`), with a socket of this file name or
    /// none.
    pub fn nbd_at(mut self, listen: &str, socket: Option<&str>) -> RoomBuilder {
        self.nbd = Some((Some(listen.into()), socket.map(Into::into)));
        self
    }

    /// The NBD socket's file name in the room.
    pub fn nbd_socket(mut self, file: &str) -> RoomBuilder {
        let listen = self.nbd.take().and_then(|n| n.0);
        self.nbd = Some((listen, Some(file.into())));
        self
    }

    pub fn http(mut self, http: Http) -> RoomBuilder {
        self.http = Some(http);
        self
    }

    /// Top-level YAML written before `pcs:` (`{d}` is the room's folder).
    pub fn extra(mut self, yaml: &str) -> RoomBuilder {
        self.extra.push_str(yaml);
        self
    }

    pub fn pc(mut self, pc: Pc) -> RoomBuilder {
        self.pcs.push(pc);
        self
    }

    /// The manifest's file name in the room (`room.yaml` unless given).
    pub fn manifest_name(mut self, name: &str) -> RoomBuilder {
        self.manifest = name.into();
        self
    }

    /// The room in a new temp dir; `cowctl down` runs when it is dropped.
    pub fn build(self) -> Room {
        let dir = tempfile::tempdir().unwrap();
        let mut room = self.write_in(dir);
        room.down_on_drop = true;
        room
    }

    /// [`Self::build`] in a new temp dir under `parent` (a file system of the test's own).
    pub fn build_in(self, parent: &Path) -> Room {
        let dir = tempfile::Builder::new().tempdir_in(parent).unwrap();
        let mut room = self.write_in(dir);
        room.down_on_drop = true;
        room
    }

    /// The room's files in a new temp dir, for tests that run cowctl's library on it (the
    /// fake kernel): nothing runs when it is dropped.
    pub fn files(self) -> Room {
        self.write_in(tempfile::tempdir().unwrap())
    }

    /// The manifest's text alone, for a room in `dir` (free ports picked now): for tests that
    /// write files of their own or edit the text.
    pub fn text_for(&self, dir: &Path) -> String {
        self.text(dir, &Ports::pick(self))
    }

    /// Writes the room into `dir`: images, COW folder, secrets, the manifest.
    fn write_in(self, dir: tempfile::TempDir) -> Room {
        let d = dir.path();
        match &self.golden {
            Golden::Fill(byte, size) => std::fs::write(d.join("golden.img"), vec![*byte; *size]),
            Golden::Bytes(bytes) => std::fs::write(d.join("golden.img"), bytes),
            Golden::Sparse(size) => {
                std::fs::File::create(d.join("golden.img")).and_then(|f| f.set_len(*size))
            }
            Golden::Counter(size) => {
                common::pc::counter_image(&d.join("golden.img"), *size);
                Ok(())
            }
            Golden::Versions | Golden::Rbd(_) => Ok(()),
            Golden::RealOs => {
                common::realos::golden(&d.join("golden.img"));
                Ok(())
            }
            Golden::Link(to) => std::os::unix::fs::symlink(to, d.join("golden.img")),
        }
        .unwrap();
        for (_, file, bytes) in &self.images {
            std::fs::write(d.join(file), bytes).unwrap();
        }
        std::fs::create_dir_all(d.join(&self.cow_dir)).unwrap();
        if let Some((_, master)) = self.iscsi.as_ref().and_then(|i| i.chap.as_ref()) {
            common::write_private(&d.join("chap.secret"), &format!("{master}\n"));
        }
        if let Some(token) = self.http.as_ref().and_then(|h| h.token.as_ref()) {
            common::write_private(&d.join("token"), &format!("{token}\n"));
        }
        let ports = Ports::pick(&self);
        let text = self.text(d, &ports);
        let manifest = d.join(&self.manifest);
        std::fs::write(&manifest, &text).unwrap();
        Room {
            dir,
            manifest,
            text,
            ports,
            down_on_drop: false,
        }
    }

    /// The manifest's text for a room in `dir` with these ports.
    fn text(&self, dir: &Path, p: &Ports) -> String {
        let d = dir.display().to_string();
        let mut t = String::new();
        if let Some(b) = &self.backend {
            writeln!(t, "backend: {b}").unwrap();
        }
        t.push_str("images:\n  g:\n");
        match &self.golden {
            Golden::Versions => writeln!(t, "    versions: {d}/versions").unwrap(),
            Golden::Rbd(snapshot) => writeln!(t, "    storage: rbd\n    rbd: {snapshot}").unwrap(),
            _ => writeln!(t, "    path: {d}/golden.img").unwrap(),
        }
        if let Some(v) = &self.version {
            writeln!(t, "    version: \"{v}\"").unwrap();
        }
        if let Some(s) = &self.storage {
            writeln!(t, "    storage: {s}").unwrap();
        }
        for (name, file, _) in &self.images {
            writeln!(t, "  {name}:\n    path: {d}/{file}").unwrap();
        }
        write!(
            t,
            "defaults:\n  image: {}\n  cow_dir: {d}/{}\n  cow_size: {}\n  chunk: {}\n",
            self.default_image, self.cow_dir, self.cow_size, self.chunk
        )
        .unwrap();
        if let Some(e) = &self.export {
            writeln!(t, "  export: {e}").unwrap();
        }
        t.push_str(&self.defaults_extra);
        if let Some(i) = &self.iscsi {
            write!(
                t,
                "iscsi:\n  iqn_prefix: {}\n  portals: [{}]\n",
                i.prefix, p.iscsi_portal
            )
            .unwrap();
            if let Some(access) = &i.access {
                t.push_str(access);
            } else {
                if let Some(acl) = &i.acl {
                    writeln!(t, "  acl: {acl}").unwrap();
                }
                if let Some((user, _)) = &i.chap {
                    write!(
                        t,
                        "  chap:\n    username: {user}\n    secret_file: {d}/chap.secret\n"
                    )
                    .unwrap();
                }
            }
        }
        if let Some(a) = &self.aoe {
            writeln!(t, "aoe:\n  interface: {a}").unwrap();
        }
        if let Some((_, socket)) = &self.nbd {
            writeln!(t, "nbd:\n  listen: {}", p.nbd_listen).unwrap();
            if let Some(s) = socket {
                writeln!(t, "  socket: {d}/{s}").unwrap();
            }
        }
        if let Some(h) = &self.http {
            write!(
                t,
                "http:\n  listen: {}\n  admin_listen: {}\n",
                p.http_listen, p.admin_listen
            )
            .unwrap();
            if h.token.is_some() {
                writeln!(t, "  token_file: {d}/token").unwrap();
            }
            if let Some(s) = &h.server {
                writeln!(t, "  server: {s}").unwrap();
            }
        }
        t.push_str(&self.extra);
        t.push_str("pcs:\n");
        for pc in &self.pcs {
            writeln!(t, "  - name: {}", pc.name).unwrap();
            for (k, v) in &pc.fields {
                writeln!(t, "    {k}: {v}").unwrap();
            }
        }
        t.replace("{d}", &d)
    }
}

/// A userspace room served over AoE on `interface` (each test's own veth): pc-01 as e7.3
/// answering `pc_mac` only, and pc-02 as e7.4 for another MAC.
pub fn two_aoe_pcs(interface: &str, pc_mac: &str) -> RoomBuilder {
    RoomBuilder::userspace()
        .aoe(interface)
        .pc(Pc::new("pc-01").aoe(7, 3).mac(pc_mac))
        .pc(Pc::new("pc-02").aoe(7, 4).mac("02:42:00:00:00:22"))
}

impl Default for RoomBuilder {
    fn default() -> Self {
        RoomBuilder::new()
    }
}

/// The listeners' addresses as the manifest has them, and their ports.
#[derive(Clone, Default)]
pub struct Ports {
    pub nbd_listen: String,
    pub iscsi_portal: String,
    pub http_listen: String,
    pub admin_listen: String,
}

impl Ports {
    fn pick(b: &RoomBuilder) -> Ports {
        // A host alone gets a free port; host:port is kept.
        let at = |given: Option<&String>| match given {
            Some(a) if a.contains(':') => a.clone(),
            Some(host) => format!("{host}:{}", common::free_port()),
            None => format!("127.0.0.1:{}", common::free_port()),
        };
        Ports {
            nbd_listen: b
                .nbd
                .as_ref()
                .map(|(listen, _)| at(listen.as_ref()))
                .unwrap_or_default(),
            iscsi_portal: b
                .iscsi
                .as_ref()
                .map(|i| at(i.portal.as_ref()))
                .unwrap_or_default(),
            http_listen: b
                .http
                .as_ref()
                .map(|h| at(h.listen.as_ref()))
                .unwrap_or_default(),
            admin_listen: b
                .http
                .as_ref()
                .map(|h| at(h.admin_listen.as_ref()))
                .unwrap_or_default(),
        }
    }
}

/// Where this host reaches a listener: an address on every interface (0.0.0.0) is asked on
/// 127.0.0.1.
fn reach(addr: &str) -> SocketAddr {
    let a: SocketAddr = addr.parse().unwrap();
    if a.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], a.port()))
    } else {
        a
    }
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr:?}"))
}

/// A room on disk. Its `cowctl` runs with `COWCTL_RUN_DIR={d}/run` and the manifest in
/// `COWCTL_MANIFEST`.
pub struct Room {
    pub dir: tempfile::TempDir,
    pub manifest: PathBuf,
    /// The manifest as written.
    pub text: String,
    pub ports: Ports,
    down_on_drop: bool,
}

impl Room {
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The NBD listener's port.
    pub fn nbd_port(&self) -> u16 {
        port_of(&self.ports.nbd_listen)
    }

    /// The iSCSI portal's port.
    pub fn iscsi_port(&self) -> u16 {
        port_of(&self.ports.iscsi_portal)
    }

    /// The NBD listener, as this host reaches it.
    pub fn nbd(&self) -> SocketAddr {
        reach(&self.ports.nbd_listen)
    }

    /// The HTTP service's PC-facing listener, as this host reaches it.
    pub fn http(&self) -> SocketAddr {
        reach(&self.ports.http_listen)
    }

    /// The HTTP service's admin listener, as this host reaches it.
    pub fn admin(&self) -> SocketAddr {
        reach(&self.ports.admin_listen)
    }

    /// `nbd://` for a PC's export over TCP.
    pub fn nbd_uri(&self, pc: &str) -> String {
        format!("nbd://{}/{pc}", self.nbd())
    }

    /// `cowctl ARGS` for this room, not yet run.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = common::room_command(self.dir.path(), args);
        c.env("COWCTL_MANIFEST", &self.manifest);
        c
    }

    /// Runs `cowctl ARGS`, whatever it returns.
    pub fn output(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// Runs `cowctl ARGS` and returns its standard output; panics with its stderr unless it
    /// exited 0 or 2 (2: a PC is over the warning threshold).
    pub fn cowctl(&self, args: &[&str]) -> String {
        let out = self.output(args);
        assert!(
            out.status.success() || out.status.code() == Some(2),
            "cowctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs `cowctl ARGS`, which must fail, and returns its stderr.
    pub fn refused(&self, args: &[&str]) -> String {
        let out = self.output(args);
        assert!(
            !out.status.success(),
            "cowctl {args:?} should fail: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).to_string()
    }

    /// `cowctl apply` with these variables in the environment (the service inherits them);
    /// it must exit 0.
    pub fn apply_with_env(&self, env: &[(&str, &str)]) {
        let out = self
            .command(&["apply"])
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `cowctl --json status` of every PC.
    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.cowctl(&["--json", "status"])).unwrap()
    }

    /// One PC's row of `cowctl --json status`.
    pub fn status_of(&self, pc: &str) -> serde_json::Value {
        self.status()
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == pc)
            .unwrap()
            .clone()
    }

    /// Writes `mib` MiB of 0x33 at `at_mib` MiB through NBD with qemu-io; false when the
    /// disk refused.
    pub fn nbd_write_mib(&self, pc: &str, at_mib: u64, mib: u64) -> bool {
        Command::new("qemu-io")
            .args(["-f", "raw", "-c"])
            .arg(format!("write -P 0x33 {at_mib}M {mib}M"))
            .arg(self.nbd_uri(pc))
            .output()
            .map(|o| o.status.success() && !String::from_utf8_lossy(&o.stdout).contains("error"))
            .unwrap()
    }

    /// `cowctl serve`'s log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("run/serve.log")).unwrap()
    }

    /// `cowctl serve`'s log, or nothing yet.
    pub fn log_so_far(&self) -> String {
        std::fs::read_to_string(self.path("run/serve.log")).unwrap_or_default()
    }

    /// The pid of `cowctl serve`.
    pub fn serve_pid(&self) -> i32 {
        std::fs::read_to_string(self.path("run/serve.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// Kills `cowctl serve` with SIGKILL and waits until it is gone: exited, or a zombie
    /// whose threads are all gone (its sockets and files are closed then; how soon its
    /// parent, init, reaps it is not the service's time).
    pub fn kill_service(&self) {
        let pid = self.serve_pid();
        let target = nix::unistd::Pid::from_raw(pid);
        nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGKILL).unwrap();
        while !cowctl::service::control::has_exited(pid) {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

impl Drop for Room {
    fn drop(&mut self) {
        if self.down_on_drop {
            let _ = self.command(&["down"]).output();
        }
    }
}

//! What each kernel subsystem refuses, as one enum per subsystem: every variant names its
//! device, path or target, and reads as the sentence the admin sees (a `#[source]` adds the
//! kernel's own words after ": " in the CLI's chain). The fake returns the same types.

use std::io;
use std::path::PathBuf;

use crate::kernel::supervise::SuperviseError;

/// A call the recording fake was told to fail (`Fake::fail_on`).
#[derive(Debug, thiserror::Error)]
#[error("fake failure: {call}")]
pub struct FakeFailure {
    pub call: String,
}

/// Loop devices (`Loops`).
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    #[error("cannot open /dev/loop-control (is the loop module loaded?)")]
    Control(#[source] io::Error),
    #[error("no free loop device")]
    NoFree(#[source] io::Error),
    #[error("cannot attach {} to a loop device", file.display())]
    Attach {
        file: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("loop device has no path")]
    NoPath,
    #[error("{} vanished after attaching {}", dev.display(), file.display())]
    Vanished { dev: PathBuf, file: PathBuf },
    #[error("cannot detach {}", dev.display())]
    Detach {
        dev: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot make {} take its file's new size", dev.display())]
    SetCapacity {
        dev: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A loop's sysfs files could not be read (`/sys/block/loopN/dev`).
    #[error(transparent)]
    Sysfs(#[from] io::Error),
    /// A loop's `dev` file is not major:minor.
    #[error("{reason}")]
    Number { reason: String },
    #[error("{} is in use by dm device {name}", dev.display())]
    InUse { dev: PathBuf, name: String },
    #[error("no loop {}", dev.display())]
    NoLoop { dev: PathBuf },
    #[error("cannot read which file {} holds open", dev.display())]
    Status {
        dev: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Fake(#[from] FakeFailure),
}

/// Device-mapper (`DeviceMapper`).
#[derive(Debug, thiserror::Error)]
pub enum DmError {
    #[error("device-mapper is not available on this kernel (no /dev/mapper/control, and `modprobe dm-snapshot` did not add it)")]
    Unavailable,
    #[error("{name:?} is not a device-mapper name: {reason}")]
    BadName { name: String, reason: String },
    #[error("{name} has {count} targets, not one")]
    Targets { name: String, count: usize },
    #[error("cannot create {}", dir.display())]
    NodeDir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot make {}", node.display())]
    Mknod {
        node: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("cannot list device-mapper devices")]
    List(#[source] devicemapper::DmError),
    #[error("cannot create dm device {name}")]
    Create {
        name: String,
        #[source]
        source: devicemapper::DmError,
    },
    /// A new device's table refused (the device is removed again); the kernel's words
    /// are part of the sentence.
    #[error("cannot load table \"{kind} {params}\" into {name}: {error}")]
    CreateLoad {
        name: String,
        kind: String,
        params: String,
        error: devicemapper::DmError,
    },
    #[error("cannot load table \"{kind} {params}\" into {name}")]
    Load {
        name: String,
        kind: String,
        params: String,
        #[source]
        source: devicemapper::DmError,
    },
    #[error("cannot suspend {name}")]
    Suspend {
        name: String,
        #[source]
        source: devicemapper::DmError,
    },
    #[error("cannot resume {name}")]
    Resume {
        name: String,
        #[source]
        source: devicemapper::DmError,
    },
    #[error("cannot read {name}'s state")]
    State {
        name: String,
        #[source]
        source: devicemapper::DmError,
    },
    #[error("cannot remove dm device {name} (is it still in use?)")]
    Remove {
        name: String,
        #[source]
        source: devicemapper::DmError,
    },
    #[error("no dm device {name}")]
    NoDevice {
        name: String,
        #[source]
        source: Option<devicemapper::DmError>,
    },
    #[error("cannot read the table of {name}")]
    ReadTable {
        name: String,
        #[source]
        source: devicemapper::DmError,
    },
    #[error("cannot read the status of {name}")]
    ReadStatus {
        name: String,
        #[source]
        source: devicemapper::DmError,
    },
    /// A table or status line cowctl cannot read.
    #[error("{name}: {error}")]
    Parse {
        name: String,
        error: crate::dm::ParseError,
    },
    #[error("dm device {name} exists")]
    Exists { name: String },
    #[error("dm device {name} is busy (open by {holder})")]
    Busy { name: String, holder: &'static str },
    #[error(transparent)]
    Fake(#[from] FakeFailure),
}

/// Configfs file operations (`ConfigFs`); paths are under its root.
#[derive(Debug, thiserror::Error)]
pub enum ConfigfsError {
    #[error("mkdir {}", path.display())]
    Mkdir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("rmdir {}", path.display())]
    Rmdir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing {value:?} to {}", path.display())]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: io::Error,
    },
    #[error("reading {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("linking {} to {}", link.display(), target.display())]
    Symlink {
        link: PathBuf,
        target: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("unlinking {}", link.display())]
    Unlink {
        link: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("listing {}", path.display())]
    List {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading link {}", link.display())]
    Readlink {
        link: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} exists")]
    Exists { path: String },
    #[error("rmdir {path}: not empty ({})", busy.join(", "))]
    NotEmpty { path: String, busy: Vec<String> },
    #[error("no file {path}")]
    NoFile { path: String },
    #[error("link target {target} does not exist")]
    NoTarget { target: String },
    #[error("no link {link}")]
    NoLink { link: String },
    #[error(transparent)]
    Fake(#[from] FakeFailure),
}

/// The iSCSI target tree (`Lio`): which step of an export failed.
#[derive(Debug, thiserror::Error)]
pub enum LioError {
    #[error(transparent)]
    Configfs(#[from] ConfigfsError),
    #[error("creating iSCSI target {iqn}")]
    Create {
        iqn: String,
        #[source]
        source: Box<LioError>,
    },
    #[error("creating the iblock backstore for {device}")]
    Backstore {
        device: String,
        #[source]
        source: ConfigfsError,
    },
    #[error("registering the iSCSI fabric (is iscsi_target_mod available?)")]
    Fabric(#[source] ConfigfsError),
    #[error("portal {portal} (is the address configured on this host?)")]
    Portal {
        portal: String,
        #[source]
        source: ConfigfsError,
    },
}

/// Supervised vblade processes (`Vblades`).
#[derive(Debug, thiserror::Error)]
pub enum VbladeError {
    #[error(transparent)]
    Process(#[from] SuperviseError),
    #[error(transparent)]
    Fake(#[from] FakeFailure),
}

/// The kernel's rbd driver (`RbdMaps`).
#[derive(Debug, thiserror::Error)]
pub enum RbdMapError {
    #[error("the kernel's rbd mapping needs {what} without spaces, commas or control characters")]
    Field { what: &'static str },
    #[error("the monitor address {token:?} is not an IP address with a port (the kernel's rbd driver takes addresses, not host names: set mon_host in ceph.conf to addresses)")]
    Monitor { token: String },
    #[error("cannot read {}", path.display())]
    Sysfs {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} holds {text:?}, not a number", path.display())]
    Value { path: PathBuf, text: String },
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the kernel could not map {image} (is the rbd module there and the kernel 5.3 or later, for the object map; the cluster reachable; the image's lock free?)")]
    Map {
        image: String,
        #[source]
        source: Box<RbdMapError>,
    },
    #[error("no key for client.{client} in {}: the kernel's rbd driver needs the client's key (set keyring in the ceph section)", keyrings.join(", "))]
    NoKey {
        client: String,
        keyrings: Vec<String>,
    },
    #[error("client.{client}'s key in the keyring is not base64")]
    Secret { client: String },
    #[error("the kernel mapped {image}, but no device shows it")]
    Vanished { image: String },
    #[error("the kernel could not unmap /dev/rbd{id} (is something still holding it open?)")]
    Unmap {
        id: u32,
        #[source]
        source: Box<RbdMapError>,
    },
    #[error(transparent)]
    Fake(#[from] FakeFailure),
}

/// Network interfaces over rtnetlink (`Net`).
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The runtime rtnetlink's socket runs on.
    #[error(transparent)]
    Runtime(io::Error),
    #[error("cannot open a netlink socket")]
    Socket(#[source] io::Error),
    #[error("cannot list network interfaces")]
    Links(#[source] rtnetlink::Error),
    #[error("cannot list addresses")]
    Addresses(#[source] rtnetlink::Error),
    #[error("no network interface {interface:?}")]
    NoInterface { interface: String },
    #[error("cannot add {ip}/32 to {interface}")]
    AddAddress {
        ip: std::net::Ipv4Addr,
        interface: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("cannot remove {ip} from {interface}")]
    RemoveAddress {
        ip: std::net::Ipv4Addr,
        interface: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("cannot announce {ip} on {interface} (gratuitous ARP)")]
    Announce {
        ip: std::net::Ipv4Addr,
        interface: String,
        #[source]
        source: io::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CLI prints `{:#}`: each step's sentence, then its source's, joined by ": ",
    /// as the `.context` chain it replaced did.
    #[test]
    fn a_failed_step_reads_as_its_chain() {
        let mkdir = ConfigfsError::Mkdir {
            path: "/cfg/iscsi/t/tpgt_1/np/10.0.0.1:3260".into(),
            source: io::Error::from_raw_os_error(99),
        };
        let e = LioError::Create {
            iqn: "iqn.2024-01.lab:pc1".into(),
            source: Box::new(LioError::Portal {
                portal: "10.0.0.1:3260".into(),
                source: mkdir,
            }),
        };
        assert_eq!(e.to_string(), "creating iSCSI target iqn.2024-01.lab:pc1");
        assert_eq!(
            crate::base::logtext::chain(&e),
            format!(
                "creating iSCSI target iqn.2024-01.lab:pc1: portal 10.0.0.1:3260 (is the address \
                 configured on this host?): mkdir /cfg/iscsi/t/tpgt_1/np/10.0.0.1:3260: {}",
                io::Error::from_raw_os_error(99)
            )
        );
        let fake = LoopError::from(FakeFailure {
            call: "loop attach /x".into(),
        });
        assert_eq!(
            crate::base::logtext::chain(&fake),
            "fake failure: loop attach /x"
        );
    }
}

//! Network links a test makes and removes: a veth pair (a target on one end, an initiator
//! on the other) or a tap device (a qemu PC's NIC on this host).

use std::process::Command;

/// `ip ARGS`; its stdout, and a panic when it fails.
pub fn ip(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("ip (Debian package iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A name no other test run uses: `prefix` and this process's id.
fn name(prefix: &str, n: u32) -> String {
    format!("{prefix}{}{n}", std::process::id() % 100_000)
}

/// Removed (with its peer) when dropped.
pub struct Link {
    pub name: String,
    /// The veth pair's other end; None for a tap.
    pub peer: Option<String>,
}

impl Link {
    /// A veth pair `target` ↔ `initiator` with this MTU, both up.
    pub fn veth(n: u32, mtu: u32) -> Link {
        let (a, b) = (name("cwt", n), name("cwi", n));
        ip(&[
            "link",
            "add",
            &a,
            "mtu",
            &mtu.to_string(),
            "type",
            "veth",
            "peer",
            "name",
            &b,
            "mtu",
            &mtu.to_string(),
        ]);
        let link = Link {
            name: a.clone(),
            peer: Some(b.clone()),
        };
        ip(&["link", "set", &a, "up"]);
        ip(&["link", "set", &b, "up"]);
        link
    }

    /// A tap device for a qemu PC, up.
    pub fn tap(n: u32) -> Link {
        let t = name("cwp", n);
        ip(&["tuntap", "add", "dev", &t, "mode", "tap"]);
        let link = Link {
            name: t.clone(),
            peer: None,
        };
        ip(&["link", "set", &t, "up"]);
        link
    }

    /// A bridge, up: a room's switch, for a PC's tap and other machines' links.
    pub fn bridge(n: u32) -> Link {
        let b = name("cwb", n);
        ip(&["link", "add", &b, "type", "bridge"]);
        let link = Link {
            name: b.clone(),
            peer: None,
        };
        ip(&["link", "set", &b, "up"]);
        link
    }

    /// Plugs this link into a bridge.
    pub fn join(&self, bridge: &Link) {
        ip(&["link", "set", &self.name, "master", &bridge.name]);
    }

    /// Gives this end an address, as a room's interface on the server has (`10.9.0.1/24`).
    pub fn add_address(&self, cidr: &str) {
        ip(&["addr", "add", cidr, "dev", &self.name]);
    }

    pub fn peer(&self) -> &str {
        self.peer.as_deref().expect("a veth pair")
    }

    /// Gives the initiator's end another MAC (as a different PC would have).
    pub fn set_peer_mac(&self, mac: &str) {
        ip(&["link", "set", self.peer(), "address", mac]);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.name])
            .output();
    }
}

/// A network namespace: another machine on the room's network. Removed when dropped.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(n: u32) -> Netns {
        let ns = name("cwns", n);
        ip(&["netns", "add", &ns]);
        Netns { name: ns }
    }

    /// Moves the veth pair's initiator end in here, with this address, up.
    pub fn take(&self, link: &Link, cidr: &str) {
        ip(&["link", "set", link.peer(), "netns", &self.name]);
        let inside = |args: &[&str]| {
            let mut a = vec!["netns", "exec", &self.name, "ip"];
            a.extend_from_slice(args);
            ip(&a);
        };
        inside(&["addr", "add", cidr, "dev", link.peer()]);
        inside(&["link", "set", link.peer(), "up"]);
        inside(&["link", "set", "lo", "up"]);
    }

    /// A command run in here.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

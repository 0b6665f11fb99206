//! Network links a test makes and removes: a veth pair (a target on one end, an initiator
//! on the other) or a tap device (a qemu PC's NIC on this host).

use std::process::Command;

fn ip(args: &[&str]) {
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

//! Which machine, and which boot of it, this process runs on: what a gateway writes beside
//! a lock it takes, so that a later process can tell its own dead predecessor (whose lock
//! it may break at once) from a live gateway elsewhere (whose lock it must not). A host
//! name alone cannot tell (gateways cloned from one disk share it, and a machine id), nor
//! can a boot id alone (containers on one kernel share it): both must match.

/// The host name, for people to read ("?" when the kernel does not say).
pub fn host_name() -> String {
    known_host_name().unwrap_or_else(|| "?".into())
}

/// The host name, when the kernel says it (and it is text).
pub fn known_host_name() -> Option<String> {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
}

/// This boot of this machine: the kernel's random boot id, new at every boot (the host
/// name where the kernel has none).
pub fn boot_id() -> String {
    // A test knob: a second "machine" on the test's one host.
    if let Ok(boot) = std::env::var("COWCTL_TEST_BOOT_ID") {
        return boot;
    }
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(host_name)
}

/// Whether a lock's holder ran on this boot of this machine, from what it wrote: its host
/// name and boot id (only its host name: a cowctl from before boot ids).
pub fn ran_here(said_boot: Option<&str>, said_host: Option<&str>) -> bool {
    said_host.is_some_and(|h| h == host_name()) && said_boot.is_none_or(|b| b == boot_id())
}

/// A lease's cookie for `gateway` on this boot of this machine: `gateway@host:boot-id`.
pub fn lease_cookie(gateway: &str) -> String {
    format!("{gateway}@{}:{}", host_name(), boot_id())
}

/// The gateway a lease's cookie names (the whole cookie when it names no boot).
pub fn cookie_gateway(cookie: &str) -> &str {
    cookie.rsplit_once('@').map_or(cookie, |(g, _)| g)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_taken_on_another_boot_or_machine_is_not_this_ones() {
        let (boot, host) = (boot_id(), host_name());
        assert!(ran_here(Some(&boot), Some(&host)));
        // A clone of this machine: same host name, another boot.
        assert!(!ran_here(
            Some("00000000-1111-2222-3333-444444444444"),
            Some(&host)
        ));
        // A container on this kernel: same boot, another host name.
        assert!(!ran_here(Some(&boot), Some("a-container")));
        assert!(!ran_here(Some(&boot), None));
        // Written by a cowctl that named the host only.
        assert!(ran_here(None, Some(&host)));
        assert!(!ran_here(None, Some("another-host")));
        assert!(!ran_here(None, None));
    }

    #[test]
    fn a_cookie_names_its_gateway_and_boot() {
        let c = lease_cookie("gw-a");
        assert_eq!(cookie_gateway(&c), "gw-a");
        assert!(c.ends_with(&format!("{}:{}", host_name(), boot_id())));
        assert_eq!(cookie_gateway("gw-b"), "gw-b");
        assert_ne!(lease_cookie("gw-a"), format!("gw-a@{}", "another-boot"));
    }
}

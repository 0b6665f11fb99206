//! `cowctl doctor` on a room with rbd images, against the test's cluster: the cluster's
//! health and the pool's free space against the PCs' quotas as the monitors say them, the
//! client's keyring private; a cluster that does not answer is a FAIL within seconds that
//! names the pool and the client.

use super::{cluster, rbd_room};

/// `cowctl --json doctor`'s findings of `area`: (status, says).
fn findings(out: &std::process::Output, area: &str) -> Vec<(String, String)> {
    let all: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor's JSON: {e}: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    all.as_array()
        .unwrap()
        .iter()
        .filter(|c| c["area"] == area)
        .map(|c| {
            (
                c["status"].as_str().unwrap().to_string(),
                c["says"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn doctor_reads_the_clusters_health_space_and_keyring() {
    let c = cluster();
    c.golden("doc", "base", &vec![7; 16 << 20]);
    let room = rbd_room("doc", "doc").build();

    let out = room.output(&["--json", "doctor"]);
    let ceph = findings(&out, "ceph");
    assert!(
        ceph.iter()
            .any(|(_, s)| s.starts_with("client.admin reaches pool rbd; the cluster says HEALTH_")),
        "{ceph:?}"
    );
    let space = ceph
        .iter()
        .find(|(_, s)| s.starts_with("pool rbd has "))
        .unwrap_or_else(|| panic!("{ceph:?}"));
    assert!(
        space.1.ends_with(
            "the room's rbd PCs may write up to 12.0 MiB (their cow_size, or autoextend.max)"
        ),
        "three PCs of 4 MiB: {space:?}"
    );
    assert_eq!(space.0, "ok", "a 4 GiB OSD holds 12 MiB: {space:?}");
    let keyring = c.conf().with_file_name("ceph.client.admin.keyring");
    assert!(
        findings(&out, "secret").contains(&(
            "ok".into(),
            format!(
                "the keyring {} of client.admin is readable by its owner only",
                keyring.display()
            )
        )),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Monitors that do not answer: a FAIL naming the pool and the client, within seconds.
    let conf = std::fs::read_to_string(c.conf()).unwrap();
    let dead = room.dir.path().join("dead.conf");
    let port = super::common::free_port();
    let mon = conf
        .lines()
        .find(|l| l.trim_start().starts_with("mon_host") || l.trim_start().starts_with("mon host"))
        .unwrap_or_else(|| panic!("no mon_host in {conf}"));
    std::fs::write(
        &dead,
        conf.replace(mon, &format!("mon_host = v2:127.0.0.1:{port}")),
    )
    .unwrap();
    std::fs::write(
        &room.manifest,
        room.text
            .replace(&c.conf().display().to_string(), &dead.display().to_string()),
    )
    .unwrap();
    let start = std::time::Instant::now();
    let out = room.output(&["--json", "doctor"]);
    assert_eq!(out.status.code(), Some(1), "a FAIL makes doctor exit 1");
    // Connecting gives up after 5 s (the service's own connections wait 15).
    assert!(start.elapsed().as_secs() < 12, "{:?}", start.elapsed());
    let ceph = findings(&out, "ceph");
    assert!(
        ceph.iter().any(|(st, s)| st == "fail"
            && s.starts_with("cannot reach pool rbd as client.admin: ")),
        "{ceph:?}"
    );
}

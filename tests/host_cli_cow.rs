//! `cowctl cow ...` as a user runs it.

#![allow(clippy::cast_possible_truncation)] // tests index small in-memory images

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use assert_cmd::Command;

fn cowctl() -> Command {
    Command::cargo_bin("cowctl").unwrap()
}

fn json(args: &[&str]) -> serde_json::Value {
    let out = cowctl()
        .arg("--json")
        .args(args)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    serde_json::from_slice(&out).unwrap()
}

fn stderr(args: &[&str]) -> String {
    String::from_utf8(
        cowctl()
            .args(args)
            .assert()
            .failure()
            .get_output()
            .stderr
            .clone(),
    )
    .unwrap()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn flatten(golden: &Path, cow: &Path, out: &Path) -> serde_json::Value {
    json(&["cow", "flatten", "--base", p(golden), p(cow), "-o", p(out)])
}

#[test]
fn create_makes_a_sparse_cow_the_kernel_would_load_empty() {
    let dir = tempfile::tempdir().unwrap();
    let cow = dir.path().join("pc.cow");
    let c = json(&[
        "cow",
        "create",
        p(&cow),
        "--size",
        "200MiB",
        "--chunk",
        "32KiB",
    ]);
    assert_eq!(c["chunk_sectors"], 64);
    let meta = std::fs::metadata(&cow).unwrap();
    assert_eq!(meta.len(), 200 << 20);
    assert!(
        meta.blocks() * 512 <= 64 << 10,
        "not sparse: {} bytes allocated",
        meta.blocks() * 512
    );
    let i = json(&["cow", "inspect", p(&cow)]);
    for (key, value) in [
        ("valid", serde_json::json!(true)),
        ("chunk_sectors", 64.into()),
        ("exceptions", 0.into()),
        ("sectors_allocated", 128.into()),
        ("total_sectors", 409600.into()),
        ("metadata_sectors", 128.into()),
        ("data_fill_percent", 0.0.into()),
    ] {
        assert_eq!(i[key], value, "{key}");
    }
}

#[test]
fn create_rounds_up_a_size_whose_fill_would_invalidate_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let cow = dir.path().join("pc.cow");
    // 34 chunks of 512 bytes: the 32 data chunks of area 0 end the file.
    let out = cowctl()
        .args([
            "cow",
            "create",
            p(&cow),
            "--size",
            "17408",
            "--chunk",
            "512",
        ])
        .assert()
        .success();
    let text = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    assert!(text.contains("rounded up by one chunk"), "{text}");
    assert_eq!(std::fs::metadata(&cow).unwrap().len(), 35 * 512);
    assert_eq!(
        json(&["cow", "inspect", p(&cow)])["fill_invalidates"],
        false
    );
    // A file made elsewhere at exactly that size is flagged.
    let raw = dir.path().join("raw.cow");
    let mut bytes = vec![0u8; 34 * 512];
    bytes[..16].copy_from_slice(&cowctl::cow::Header::new(1, true).encode());
    std::fs::write(&raw, bytes).unwrap();
    assert_eq!(json(&["cow", "inspect", p(&raw)])["fill_invalidates"], true);
    let shown = cowctl()
        .args(["cow", "inspect", p(&raw)])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let shown = String::from_utf8(shown).unwrap();
    assert!(
        shown.contains("invalidates the snapshot even with PO"),
        "{shown}"
    );
    let other = dir.path().join("other.cow");
    let c = json(&[
        "cow",
        "create",
        p(&other),
        "--size",
        "17408",
        "--chunk",
        "512",
    ]);
    assert_eq!(
        (c["size_bytes"].as_u64(), c["requested_bytes"].as_u64()),
        (Some(35 * 512), Some(34 * 512))
    );
}

#[test]
fn create_never_overwrites_and_explains_bad_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let cow = dir.path().join("pc.cow");
    std::fs::write(&cow, b"precious").unwrap();
    let err = stderr(&["cow", "create", p(&cow), "--size", "1MiB"]);
    assert!(
        err.contains("already exists") && err.contains("never overwrites"),
        "{err}"
    );
    assert_eq!(std::fs::read(&cow).unwrap(), b"precious");
    let other = dir.path().join("x.cow");
    assert!(stderr(&[
        "cow",
        "create",
        p(&other),
        "--size",
        "1MiB",
        "--chunk",
        "3KiB"
    ])
    .contains("not a power of two"));
    assert!(stderr(&[
        "cow",
        "create",
        p(&other),
        "--size",
        "1000",
        "--chunk",
        "4KiB"
    ])
    .contains("whole number of 512-byte sectors"));
    assert!(stderr(&[
        "cow",
        "create",
        p(&other),
        "--size",
        "8KiB",
        "--chunk",
        "4KiB"
    ])
    .contains("too small"));
    assert!(stderr(&["cow", "create", p(&other), "--size", "10MB"]).contains("unknown unit"));
}

#[test]
fn flatten_writes_the_pcs_disk_and_reset_returns_it_to_golden() {
    let dir = tempfile::tempdir().unwrap();
    let golden = dir.path().join("golden.img");
    let cow = dir.path().join("pc.cow");
    let image: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
    std::fs::write(&golden, &image).unwrap();
    json(&[
        "cow",
        "create",
        p(&cow),
        "--size",
        "4MiB",
        "--chunk",
        "8KiB",
    ]);

    let mut expected = image.clone();
    {
        let engine = cowctl::cowfile::open_engine(&golden, &cow, None, false).unwrap();
        for (offset, len) in [
            (0usize, 100usize),
            (8191, 2),
            (300_000, 70_000),
            ((1 << 20) - 5, 5),
        ] {
            let data = vec![0xEE; len];
            engine.write_at(&data, offset as u64).unwrap();
            expected[offset..offset + len].copy_from_slice(&data);
        }
        engine.flush().unwrap();
    }
    let i = json(&["cow", "inspect", p(&cow)]);
    assert_eq!(
        i["exceptions"],
        1 + 1 + 10 + 1,
        "chunk 0 is shared by the first two writes"
    );
    assert!(i["data_fill_percent"].as_f64().unwrap() > 0.0);

    let out = dir.path().join("disk.raw");
    flatten(&golden, &cow, &out);
    assert!(
        std::fs::read(&out).unwrap() == expected,
        "flattened disk differs"
    );
    assert!(stderr(&[
        "cow",
        "flatten",
        "--base",
        p(&golden),
        p(&cow),
        "-o",
        p(&out)
    ])
    .contains("already exists"));
    assert!(stderr(&[
        "cow",
        "flatten",
        "--base",
        p(&golden),
        p(&cow),
        "-o",
        p(&golden)
    ])
    .contains("same file"));

    let before = std::fs::metadata(&cow).unwrap().blocks();
    let r = json(&["cow", "reset", p(&cow)]);
    assert_eq!(r["holes_punched"], true);
    assert!(std::fs::metadata(&cow).unwrap().blocks() < before);
    assert_eq!(
        std::fs::metadata(&cow).unwrap().len(),
        4 << 20,
        "reset keeps the size"
    );
    let i = json(&["cow", "inspect", "--chunk", "8KiB", p(&cow)]);
    assert_eq!(i["state"], "new");
    assert_eq!(i["exceptions"], 0);
    let out2 = dir.path().join("disk2.raw");
    flatten(&golden, &cow, &out2);
    assert!(
        std::fs::read(&out2).unwrap() == image,
        "after reset the disk is golden again"
    );
}

#[test]
fn reset_refuses_what_is_not_a_cow_and_a_cow_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let golden = dir.path().join("golden.img");
    std::fs::write(&golden, vec![7u8; 1 << 20]).unwrap();
    let err = stderr(&["cow", "reset", p(&golden)]);
    assert!(
        err.contains("does not start with a snapshot header") && err.contains("golden.img"),
        "{err}"
    );
    assert_eq!(std::fs::read(&golden).unwrap(), vec![7u8; 1 << 20]);

    let cow = dir.path().join("pc.cow");
    json(&["cow", "create", p(&cow), "--size", "1MiB"]);
    let _engine = cowctl::cowfile::open_engine(&golden, &cow, None, false).unwrap();
    assert!(stderr(&["cow", "reset", p(&cow)]).contains("in use by another cowctl process"));
}

#[test]
fn inspect_names_the_file_and_the_fault() {
    let dir = tempfile::tempdir().unwrap();
    let cow = dir.path().join("broken.cow");
    let mut bytes = vec![0u8; 64 << 10];
    bytes[..16].copy_from_slice(
        &cowctl::cow::Header {
            version: 7,
            ..cowctl::cow::Header::new(8, true)
        }
        .encode(),
    );
    std::fs::write(&cow, bytes).unwrap();
    let err = stderr(&["cow", "inspect", p(&cow)]);
    assert!(
        err.contains("broken.cow") && err.contains("version 7"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one sentence: {err}");
}

//! A real Linux boots from cowctl's userspace iSCSI target on a BIOS PC (qemu's iPXE ROM)
//! and on a UEFI PC (OVMF, PXE through the room's dnsmasq to Debian's ipxe.efi): the
//! firmware sanboots the disk, publishes the connection in the iBFT, and the OS's own
//! open-iscsi (`iscsistart` in its initramfs) logs in again with the same initiator name,
//! while the firmware's session may still be open, and mounts its root over iSCSI. Its init
//! checks the files earlier boots wrote, writes its own, syncs and powers off; the next boot
//! finds them, and after `cowctl reset` they are gone. The kernel's messages on the serial
//! console must tell of no I/O error, and of no broken connection that was not made again
//! (the OS's iscsid logs in once more as it takes over the session from the initramfs).

mod common;

use std::time::{Duration, Instant};

use common::net::Link;
use common::pc::HOST;
use common::realos::{self, Firmware, Job, Report};
use common::room::{Golden, Http, Iscsi, Pc, Room, RoomBuilder};

const BOOT_LIMIT: Duration = Duration::from_secs(240);
const UEFI_MAC: &str = "52:54:00:c0:ee:41";
const AOE_MAC: &str = "52:54:00:c0:ee:43";
const UEFI_AOE_MAC: &str = "52:54:00:c0:ee:44";

fn builder() -> RoomBuilder {
    RoomBuilder::userspace()
        .golden(Golden::RealOs)
        .cow("64MiB", "4KiB")
        .defaults("  initiator: iqn.2024-01.lan.os:init-{name}\n")
}

/// A BIOS PC on qemu's user network: its connections reach the portal on loopback from
/// 127.0.0.1, which is its ip. NBD lets the test read the disk from outside.
fn bios_room() -> Room {
    let room = builder()
        .nbd()
        .iscsi(
            Iscsi::new("iqn.2024-01.lan.os")
                .acl("initiator")
                .chap("room", "the-room-master-secret"),
        )
        .http(Http::new().server(HOST))
        .pc(Pc::new("os-01").ip("127.0.0.1"))
        .build();
    room.cowctl(&["apply"]);
    room
}

fn boot_bios(room: &Room, job: Job) -> realos::Pc {
    boot_bios_with(room, job, "", &[])
}

/// A BIOS PC on qemu's user network whose iPXE runs the commands `first`, then chains the
/// room's `/boot.ipxe`; `more_nics` are its other NICs.
fn boot_bios_with(room: &Room, job: Job, first: &str, more_nics: &[String]) -> realos::Pc {
    let tftp = room.dir.path().join("tftp");
    std::fs::create_dir_all(&tftp).unwrap();
    let script = format!(
        "#!ipxe\n{first}chain http://{HOST}:{}/boot.ipxe\n",
        room.http().port()
    );
    std::fs::write(tftp.join("boot.ipxe"), script).unwrap();
    let mut nics = realos::user_nic(&tftp, "boot.ipxe");
    nics.extend_from_slice(more_nics);
    realos::Pc::start(room.dir.path(), Firmware::Bios, &nics, job)
}

/// Asserts the boot's line, that no I/O failed, and that every connection that broke was
/// made again.
fn booted(report: &Report, room: &Room, want: (u32, u32, u32), what: &str) {
    assert_eq!(
        report.boot(),
        Some(want),
        "{what}: serial log:\n{}\nserve log:\n{}",
        report.log,
        room.log_so_far()
    );
    assert_eq!(
        report.io_errors(),
        Vec::<String>::new(),
        "{what}: the OS saw I/O fail:\n{}\nserve log:\n{}",
        report.log,
        room.log_so_far()
    );
    assert!(
        report.recoveries() >= report.connection_errors().len(),
        "{what}: a broken connection was not made again:\n{}\nserve log:\n{}",
        report.log,
        room.log_so_far()
    );
}

/// How many times the PC's initiator logged in to its target so far.
fn logins(room: &Room) -> usize {
    room.log_so_far()
        .matches("iqn.2024-01.lan.os:init-os-01 logged in to iqn.2024-01.lan.os:os-01")
        .count()
}

fn boots_keeps_its_files_and_starts_over(room: &Room, boot: &dyn Fn(Job) -> realos::Pc) {
    let first = boot(Job::Boot).finish(BOOT_LIMIT);
    booted(&first, room, (1, 0, 0), "first boot");
    // The handoff: the firmware logged in, then the OS again with the same initiator name
    // (from the iBFT) while the firmware's session was still open, then the OS's iscsid
    // once more as it took the session over.
    assert!(
        logins(room) >= 2,
        "the firmware's login and the OS's:\n{}",
        room.log_so_far()
    );
    let second = boot(Job::Boot).finish(BOOT_LIMIT);
    booted(
        &second,
        room,
        (2, 1, 0),
        "second boot: finds the first one's file",
    );
    room.cowctl(&["reset", "os-01"]);
    let third = boot(Job::Boot).finish(BOOT_LIMIT);
    booted(
        &third,
        room,
        (1, 0, 0),
        "after the reset: the golden image again",
    );
    println!(
        "real OS boot times: {:.1} s, {:.1} s, {:.1} s",
        first.took.as_secs_f64(),
        second.took.as_secs_f64(),
        third.took.as_secs_f64()
    );
}

#[test]
fn a_real_linux_boots_on_a_bios_pc_keeps_its_files_and_starts_over_after_a_reset() {
    let room = bios_room();
    boots_keeps_its_files_and_starts_over(&room, &|job| boot_bios(&room, job));
}

/// The room's own network on a tap device: cowctl's dnsmasq hands the UEFI PC's PXE
/// Debian's ipxe.efi, then /boot.ipxe.
struct UefiRoom {
    room: Room,
    tap: Link,
}

/// A UEFI PC's room: iSCSI (`aoe` false) or AoE, on a tap of its own (`n`).
fn uefi_room(n: u32, aoe: bool) -> UefiRoom {
    let net = (std::process::id() + n) % 200 + 20;
    let subnet = format!("10.{net}.91");
    let server = format!("{subnet}.1");
    let tap = Link::tap(n);
    tap.add_address(&format!("{server}/24"));
    let b = builder().http(Http::new().listen(&server)).extra(&format!(
        "pxe:\n  interface: {}\n  dhcp: {subnet}.100-{subnet}.150\n",
        tap.name
    ));
    let ip = format!("{subnet}.11");
    let b = if aoe {
        b.aoe(&tap.name)
            .pc(Pc::new("os-01").ip(&ip).aoe(6, 1).mac(UEFI_AOE_MAC))
    } else {
        b.iscsi(
            Iscsi::new("iqn.2024-01.lan.os")
                .portal(&server)
                .acl("initiator")
                .chap("room", "the-room-master-secret"),
        )
        .pc(Pc::new("os-01").mac(UEFI_MAC).ip(&ip))
    };
    let room = b.build();
    let out = room.cowctl(&["apply"]);
    assert!(out.contains("started dnsmasq"), "{out}");
    UefiRoom { room, tap }
}

fn boot_uefi(room: &UefiRoom, mac: &str, job: Job) -> realos::Pc {
    let nics = vec![
        "-netdev".to_string(),
        format!("tap,id=n0,ifname={},script=no,downscript=no", room.tap.name),
        // No option ROM: OVMF's own virtio-net driver and PXE, as a PC's vendor firmware.
        "-device".to_string(),
        format!("virtio-net-pci,netdev=n0,mac={mac},romfile="),
    ];
    realos::Pc::start(room.room.dir.path(), Firmware::Uefi, &nics, job)
}

#[test]
fn a_real_linux_boots_on_a_uefi_pc_through_pxe_keeps_its_files_and_starts_over_after_a_reset() {
    let room = uefi_room(41, false);
    boots_keeps_its_files_and_starts_over(&room.room, &|job| boot_uefi(&room, UEFI_MAC, job));
    let dhcp = std::fs::read_to_string(room.room.path("run/pxe/dhcp.log")).unwrap();
    assert!(
        dhcp.contains("PXEClient:Arch:00007") && dhcp.contains("ipxe.efi"),
        "dnsmasq sent the UEFI PC's PXE Debian's ipxe.efi:\n{dhcp}"
    );
}

/// Over AoE on a UEFI PC: its one NIC does PXE (OVMF's own), fetches the script and sanboots
/// AoE, so the EFI iPXE, which drives only the NIC it was loaded from, finds the target; it
/// publishes the aBFT as an ACPI table, where the initramfs finds it. The OS boots from it
/// and writes and syncs its file (keeping files and a reset over AoE are the BIOS test's:
/// one boot here keeps the test command's time down).
#[test]
fn a_real_linux_boots_over_aoe_on_a_uefi_pc() {
    let room = uefi_room(44, true);
    let first = boot_uefi(&room, UEFI_AOE_MAC, Job::Boot).finish(BOOT_LIMIT);
    booted(&first, &room.room, (1, 0, 0), "a boot over AoE on UEFI");
    assert!(
        first.log.contains("aBFT target e6.1") && first.log.contains("EFI v"),
        "{}",
        first.log
    );
}

/// A planned restart (SIGHUP: the binary on disk takes every socket and session over in
/// the same process) while the booted OS writes and syncs: it keeps writing (up to file
/// `until`), and from the restart on its console tells of no broken connection and no
/// I/O error. Returns how long the handover took, as serve's log tells it.
fn upgrade_under(pc: &mut realos::Pc, room: &Room, until: &str) -> String {
    let from = pc.log().len();
    let pid = room.serve_pid();
    let handovers = room.log_so_far().matches("handover: took over").count();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while room.log_so_far().matches("handover: took over").count() == handovers {
        assert!(
            Instant::now() < deadline,
            "no handover:\n{}",
            room.log_so_far()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(room.serve_pid(), pid, "the same process serves on");
    assert!(
        pc.wait_for(&format!("cowctl-os synced {until} "), BOOT_LIMIT),
        "the OS did not keep writing after the restart:\n{}\nserve log:\n{}",
        pc.log(),
        room.log_so_far()
    );
    let log = pc.log();
    assert_eq!(
        realos::trouble(&log[from..]),
        Vec::<String>::new(),
        "the OS saw the planned restart:\n{log}\nserve log:\n{}",
        room.log_so_far()
    );
    let serve_log = room.log_so_far();
    let line = serve_log
        .lines()
        .rfind(|l| l.contains("handover: took over"))
        .unwrap_or_default();
    // The wait for a sync across the restart: from the last file synced before it to the
    // first one after.
    let at = |text: &str| {
        Report {
            log: text.to_string(),
            took: Duration::ZERO,
        }
        .synced_at()
    };
    let across = match (at(&log[..from]).last(), at(&log[from..]).first()) {
        (Some(before), Some(after)) => after - before,
        _ => f64::NAN,
    };
    format!(
        "{}; the OS's wait for a sync across it: {across:.2} s",
        line.split("handover: ").nth(1).unwrap_or_default()
    )
}

/// `cowctl serve` is restarted as planned (SIGHUP) while the booted OS writes and syncs: no
/// broken connection, no I/O error. Then it is killed (SIGKILL) and started again by
/// `cowctl apply`: the OS's iscsid makes its connection again, its writes carry on without
/// an I/O error. The next boot finds every file it synced intact, and the root file system
/// checks clean from outside.
#[test]
fn a_real_linux_rides_out_a_planned_restart_and_a_killed_cowctl_serve_with_every_synced_write_kept()
{
    let room = bios_room();
    let mut pc = boot_bios(&room, Job::Write(30));
    assert!(
        pc.wait_for("cowctl-os synced boot-1-w3 ", BOOT_LIMIT),
        "the OS did not start writing:\n{}\nserve log:\n{}",
        pc.log(),
        room.log_so_far()
    );
    let upgrade = upgrade_under(&mut pc, &room, "boot-1-w6");
    println!("planned restart under a writing OS (iSCSI): {upgrade}");
    let before_kill = pc.log().len();
    // A resumed session logs its attachment as a login too: count only those after the kill.
    let logins_before_kill = logins(&room);
    let killed = Instant::now();
    room.kill_service();
    room.cowctl(&["apply"]);
    let restarted = killed.elapsed();
    let report = pc.finish(BOOT_LIMIT);
    booted(
        &report,
        &room,
        (1, 0, 0),
        "the boot the service was killed under",
    );
    assert!(
        !realos::trouble(&report.log[before_kill..]).is_empty(),
        "the OS's connection broke with the service:\n{}",
        report.log
    );
    assert!(
        logins(&room) > logins_before_kill,
        "the OS's iscsid logged in again after the restart:\n{}",
        room.log_so_far()
    );
    let synced = report.synced();
    let after_kill = synced.iter().skip_while(|f| *f != "boot-1-w6").count();
    assert!(
        after_kill > 3,
        "the OS kept writing after the restart: {synced:?}\n{}",
        report.log
    );
    println!(
        "killed serve: started again in {:.2} s; the OS's longest wait for a sync: {:.2} s; \
         {} files synced",
        restarted.as_secs_f64(),
        report.longest_stall(),
        synced.len()
    );

    // Every file it synced is there, intact: its boot file and the ones it wrote after.
    let next = boot_bios(&room, Job::Boot).finish(BOOT_LIMIT);
    let files = u32::try_from(synced.len()).unwrap();
    booted(
        &next,
        &room,
        (2, 1 + files, 0),
        "the boot after the restart",
    );
    root_checks_clean(&room);
}

/// e2fsck finds nothing to fix on the PC's root file system, read over NBD.
fn root_checks_clean(room: &Room) {
    let disk = room.path("os-01.raw");
    common::qemu_img_convert(&room.nbd_uri("os-01"), "raw", disk.to_str().unwrap());
    let root = room.path("os-01-root.ext4");
    let out = std::process::Command::new("dd")
        .arg(format!("if={}", disk.display()))
        .arg(format!("of={}", root.display()))
        .args(["bs=1M", "skip=45", "count=80", "status=none"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let fsck = std::process::Command::new("e2fsck")
        .args(["-f", "-n"])
        .arg(&root)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "e2fsck -fn: {}{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
}

/// Over AoE (BIOS; iPXE publishes an aBFT, and the initramfs binds the kernel's aoe driver
/// to the NIC it names): boots, keeps its files, rides out a planned restart (the raw socket
/// is handed over with the frames waiting in it) and a killed `cowctl serve` (AoE has no
/// connection: the driver sends again until the target answers), starts over after a reset.
#[test]
fn a_real_linux_boots_over_aoe_rides_out_a_planned_restart_and_a_killed_cowctl_serve_and_starts_over(
) {
    let tap = Link::tap(43);
    let room = builder()
        .aoe(&tap.name)
        .http(Http::new().server(HOST))
        .pc(Pc::new("os-01").ip("127.0.0.1").aoe(6, 1).mac(AOE_MAC))
        .build();
    room.cowctl(&["apply"]);
    let aoe_nic = common::pc::tap_nic(&tap.name, AOE_MAC);
    let boot = |job| boot_bios_with(&room, job, "ifopen net1\n", &aoe_nic);
    let first = boot(Job::Boot).finish(BOOT_LIMIT);
    booted(&first, &room, (1, 0, 0), "first boot over AoE");
    assert!(first.log.contains("aBFT target e6.1"), "{}", first.log);

    let mut pc = boot(Job::Write(20));
    assert!(
        pc.wait_for("cowctl-os synced boot-2-w3 ", BOOT_LIMIT),
        "the OS did not start writing:\n{}\nserve log:\n{}",
        pc.log(),
        room.log_so_far()
    );
    let upgrade = upgrade_under(&mut pc, &room, "boot-2-w6");
    println!("planned restart under a writing OS (AoE): {upgrade}");
    room.kill_service();
    room.cowctl(&["apply"]);
    let second = pc.finish(BOOT_LIMIT);
    booted(
        &second,
        &room,
        (2, 1, 0),
        "the boot over AoE the service was killed under",
    );
    let files = u32::try_from(second.synced().len()).unwrap();
    println!(
        "AoE: the OS's longest wait for a sync across the restart: {:.2} s; {files} files",
        second.longest_stall()
    );

    let third = boot(Job::Boot).finish(BOOT_LIMIT);
    booted(
        &third,
        &room,
        (3, 2 + files, 0),
        "every file synced over AoE is there",
    );
    room.cowctl(&["reset", "os-01"]);
    let fourth = boot(Job::Boot).finish(BOOT_LIMIT);
    booted(
        &fourth,
        &room,
        (1, 0, 0),
        "after the reset: the golden image again",
    );
}

//! An AoE initiator's NIC for the tests: raw AoE frames sent from the peer end of a veth
//! pair (`net::Link`) to `cowctl serve`'s target on the other end, and its answers.

use std::time::{Duration, Instant};

use super::net::Link;
use cowctl::aoe::socket::{Socket, MAX_FRAME};
use cowctl::aoe::wire::{ATA_LEN, HEADER_LEN};

/// The initiator's end of the link.
pub struct Initiator {
    socket: Socket,
    mac: [u8; 6],
    target: [u8; 6],
}

impl Initiator {
    pub fn new(link: &Link) -> Initiator {
        let socket = Socket::open(link.peer()).unwrap();
        socket.set_read_timeout(Duration::from_millis(200)).unwrap();
        let mac = socket.mac().unwrap();
        let target =
            std::fs::read_to_string(format!("/sys/class/net/{}/address", link.name)).unwrap();
        let target = target.trim().parse::<cowctl::manifest::Mac>().unwrap().0;
        Initiator {
            socket,
            mac,
            target,
        }
    }

    /// Sends `frame` (built for PC_MAC) from this NIC's MAC, to everyone for a Query Config
    /// (discovery) and to the target's MAC otherwise, and collects the answers that arrive
    /// within `wait`.
    pub fn ask(&self, frame: &[u8], wait: Duration) -> Vec<Vec<u8>> {
        let mut f = frame.to_vec();
        let dst = if f[19] == 1 { [0xff; 6] } else { self.target };
        f[0..6].copy_from_slice(&dst);
        f[6..12].copy_from_slice(&self.mac);
        self.socket.send(&f).unwrap();
        let mut answers = Vec::new();
        let mut buf = vec![0u8; MAX_FRAME];
        let end = Instant::now() + wait;
        while Instant::now() < end {
            if let Ok(Some(n)) = self.socket.recv(&mut buf) {
                let a = &buf[..n];
                // Our own request is not an answer; nor is a stale announcement.
                if a[14] & 0x08 != 0 && a[20..24] == f[20..24] && a[19] == f[19] {
                    answers.push(a.to_vec());
                }
            }
        }
        answers
    }

    /// The single answer to an ATA command: its status register and data.
    pub fn ata(&self, frame: &[u8]) -> (u8, Vec<u8>) {
        for _ in 0..5 {
            let mut answers = self.ask(frame, Duration::from_millis(400));
            if let Some(a) = answers.pop() {
                assert_eq!(a[14] & 0x04, 0, "an AoE error {}", a[15]);
                return (a[HEADER_LEN + 3], a[HEADER_LEN + ATA_LEN..].to_vec());
            }
        }
        panic!("no answer to the ATA command");
    }
}

//! A small HTTP/1.1 client whose requests come from a chosen source address (any of
//! 127.0.0.0/8 works on loopback), so tests can be the PCs the manifest lists.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};

pub struct Reply {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

pub fn request(
    from: IpAddr,
    to: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::new(from, 0).into()).unwrap();
    s.connect(&to.into()).unwrap();
    let mut stream: std::net::TcpStream = s.into();
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    // A Host of the test's own, or the address asked.
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {to}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if method == "POST" {
        req.push_str("Content-Length: 0\r\n");
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP reply");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "this client reads only replies with a length: {head}"
    );
    Reply {
        status,
        headers: head.to_string(),
        body: body.to_string(),
    }
}

pub fn get(from: &str, to: SocketAddr, path: &str) -> Reply {
    request(from.parse().unwrap(), to, "GET", path, &[])
}

pub fn post(from: &str, to: SocketAddr, path: &str, token: Option<&str>) -> Reply {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    request(from.parse().unwrap(), to, "POST", path, &headers)
}

/// Loads `url` in headless Chromium (Debian's package) with its profile in `profile`, and
/// returns what it prints: the rendered page with `--dump-dom`, nothing with `--screenshot`.
pub fn chromium(url: &str, profile: &std::path::Path, extra: &[&str]) -> String {
    let out = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
        ])
        .args(["--virtual-time-budget=3000", "--window-size=1280,360"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .output()
        .expect("chromium (Debian's package; scripts/provision.sh --tests installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

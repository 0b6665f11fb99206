//! Who is asking: the connection's addresses, the PC the source address belongs to, and
//! whether the admin's bearer token came with the request.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use axum::http::{header, HeaderMap, StatusCode};

use super::Refusal;
use crate::manifest::{Manifest, Pc};

/// Both ends of an HTTP connection: the PC's address, and the one it reached us at (what a
/// boot script points iSCSI at when the portal listens everywhere).
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub remote: SocketAddr,
    pub local: Option<SocketAddr>,
}

impl Peer {
    /// The source address, IPv4-mapped IPv6 written as IPv4 (a dual-stack listener).
    pub fn ip(&self) -> IpAddr {
        self.remote.ip().to_canonical()
    }
}

/// The PC whose manifest `ip` is this address.
pub fn pc_at(m: &Manifest, ip: IpAddr) -> Option<&Pc> {
    m.pcs.iter().find(|p| p.ip == Some(ip))
}

/// What the request's bearer token says about the caller.
#[derive(Debug, PartialEq, Eq)]
pub enum Token {
    Absent,
    Admin,
}

/// Whether a request's Host header names this service: an IP address, `localhost`, this
/// machine's name, or one of `http.hosts`. A browser tricked by DNS rebinding sends the
/// attacker's name instead.
pub fn host_allowed(host: &str, extra: &[String]) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        return rest
            .split(']')
            .next()
            .is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok());
    } else {
        host.rsplit_once(':').map_or(host, |(n, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                n
            } else {
                host
            }
        })
    };
    let name = name.to_ascii_lowercase();
    name.parse::<IpAddr>().is_ok()
        || name == "localhost"
        || extra.contains(&name)
        || crate::base::machine::known_host_name().is_some_and(|h| h.eq_ignore_ascii_case(&name))
}

/// A request a web page on another site made a browser send: its `Origin` is not this
/// service, or the browser says so (`Sec-Fetch-Site: cross-site`). Tools such as curl send
/// neither header.
pub fn cross_site(headers: &HeaderMap, host: Option<&str>) -> bool {
    if headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == "cross-site")
    {
        return true;
    }
    match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        None => false,
        Some(origin) => {
            let authority = origin.split_once("://").map_or(origin, |(_, a)| a);
            host.is_none_or(|h| !h.eq_ignore_ascii_case(authority))
        }
    }
}

/// Checks `Authorization: Bearer …` against the token file (read at each request, so a
/// new token takes effect at once; the file must be private). A wrong token is refused
/// outright.
pub fn token(headers: &HeaderMap, token_file: Option<&Path>) -> Result<Token, Refusal> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(Token::Absent);
    };
    let unauthorized = |m: &str| Refusal::new(StatusCode::UNAUTHORIZED, m);
    let given = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| unauthorized("the Authorization header must be \"Bearer <token>\""))?;
    let Some(file) = token_file else {
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "no admin token is configured (set http.token_file in the manifest)",
        ));
    };
    let expected =
        crate::manifest::secrets::read_private(file, "admin token", 16, 4096).map_err(|e| {
            tracing::error!("{e}");
            Refusal::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the admin token file cannot be used (see the service's log)",
            )
        })?;
    if same(given.trim().as_bytes(), expected.as_bytes()) {
        Ok(Token::Admin)
    } else {
        Err(unauthorized("the bearer token is not the admin token"))
    }
}

/// Compares without stopping at the first difference, so timing tells nothing.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_that_name_this_service() {
        let extra = vec!["boot.lab".to_string()];
        for ok in [
            "10.0.0.1:8080",
            "10.0.0.1",
            "[::1]:8081",
            "localhost:8080",
            "BOOT.lab:80",
        ] {
            assert!(host_allowed(ok, &extra), "{ok}");
        }
        for bad in [
            "evil.example:8080",
            "evil.example",
            "[nonsense]",
            "boot.lab.evil.example",
        ] {
            assert!(!host_allowed(bad, &extra), "{bad}");
        }
    }

    #[test]
    fn cross_site_requests_are_told_apart() {
        let mut h = HeaderMap::new();
        assert!(
            !cross_site(&h, Some("10.0.0.1:8081")),
            "curl sends no Origin"
        );
        h.insert(header::ORIGIN, "http://10.0.0.1:8081".parse().unwrap());
        assert!(
            !cross_site(&h, Some("10.0.0.1:8081")),
            "the dashboard itself"
        );
        h.insert(header::ORIGIN, "http://evil.example".parse().unwrap());
        assert!(cross_site(&h, Some("10.0.0.1:8081")));
        let mut h = HeaderMap::new();
        h.insert("sec-fetch-site", "cross-site".parse().unwrap());
        assert!(cross_site(&h, Some("10.0.0.1:8081")));
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
        assert!(!same(b"", b"a"));
    }
}

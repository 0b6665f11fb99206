//! Who is asking: the connection's addresses, the PC the source address belongs to, and
//! whether the admin's bearer token came with the request.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use axum::extract::connect_info::Connected;
use axum::http::{header, HeaderMap, StatusCode};
use axum::serve::IncomingStream;

use super::Refusal;
use crate::manifest::{Manifest, Pc};

/// Both ends of an HTTP connection: the PC's address, and the one it reached us at (what a
/// boot script points iSCSI at when the portal listens everywhere).
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub remote: SocketAddr,
    pub local: Option<SocketAddr>,
}

impl Connected<IncomingStream<'_, tokio::net::TcpListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        Peer {
            remote: *stream.remote_addr(),
            local: stream.io().local_addr().ok(),
        }
    }
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

/// Checks `Authorization: Bearer …` against the token file (read at each request, so a
/// new token takes effect at once). A wrong token is refused outright.
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
    let expected = std::fs::read_to_string(file).map_err(|e| {
        tracing::error!("cannot read the admin token file {}: {e}", file.display());
        Refusal::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the admin token file cannot be read (see the service's log)",
        )
    })?;
    let expected = expected.trim();
    if expected.is_empty() {
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "the admin token file is empty: no admin token is accepted",
        ));
    }
    if same(given.trim().as_bytes(), expected.as_bytes()) {
        Ok(Token::Admin)
    } else {
        Err(unauthorized("the bearer token is not the admin token"))
    }
}

/// Compares without stopping at the first difference, so timing tells nothing.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
        assert!(!same(b"", b"a"));
    }
}

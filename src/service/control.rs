//! The control socket of `cowctl serve`: one JSON request per connection, one JSON reply.
//! `cowctl plan/apply/status/reset/down` use it on the userspace backend, so they print
//! the same things as on the kernel backend.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::room::reset::Reset;
use crate::room::status::PcStatus;

use super::{ClientError, Error};

/// Requests larger than this are refused (the largest real one names a manifest path).
const MAX_REQUEST: u64 = 64 << 10;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Plan {
        manifest: PathBuf,
    },
    Apply {
        manifest: PathBuf,
    },
    Status,
    Reset {
        pcs: Vec<String>,
    },
    /// Commit a PC's disk into a new image version; `pause` stops its I/O meanwhile
    /// instead of refusing a PC that is in use.
    Commit {
        pc: String,
        version: Option<String>,
        note: String,
        pause: bool,
    },
    /// Stop serving these PCs; all of them (and the service exits) when empty.
    Down {
        pcs: Vec<String>,
    },
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Response {
    pub error: Option<String>,
    /// Steps planned or done, in order.
    #[serde(default)]
    pub steps: Vec<crate::room::step::Step>,
    #[serde(default)]
    pub status: Vec<PcStatus>,
    #[serde(default)]
    pub resets: Vec<Reset>,
    #[serde(default)]
    pub committed: Option<crate::image::Committed>,
}

pub fn socket_path(run_dir: &Path) -> PathBuf {
    run_dir.join("cowctl.sock")
}

/// Sends a request to the service; None when no service is listening.
pub fn call(run_dir: &Path, request: &Request) -> Result<Option<Response>, ClientError> {
    let path = socket_path(run_dir);
    let mut stream = match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(source) => return Err(ClientError::Reach { path, source }),
    };
    let down_all = matches!(request, Request::Down { pcs } if pcs.is_empty());
    let pid = down_all.then(|| serve_pid(run_dir)).flatten();
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut reply = String::new();
    let mut reader = BufReader::new(stream);
    if let Err(source) = reader.read_line(&mut reply) {
        return Err(ClientError::NoReply { path, source });
    }
    if down_all && !reply.is_empty() {
        wait_for_exit(reader.get_mut(), &path, pid)?;
    }
    if reply.is_empty() {
        return Err(ClientError::Closed { path });
    }
    let response: Response = serde_json::from_str(&reply).map_err(ClientError::Malformed)?;
    match response.error {
        Some(e) => Err(ClientError::Refused(e)),
        None => Ok(Some(response)),
    }
}

/// The pid `cowctl serve` wrote in the run directory.
fn serve_pid(run_dir: &Path) -> Option<i32> {
    std::fs::read_to_string(run_dir.join("serve.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// After `down` of every PC the service exits, holding this connection open until it
/// does; then every one of its threads must be gone too, since the last of them to go is
/// what closes its listening sockets. Only then are its ports free, and a `cowctl apply`
/// straight after binds them again instead of finding them in use.
fn wait_for_exit(
    stream: &mut UnixStream,
    path: &Path,
    pid: Option<i32>,
) -> Result<(), ClientError> {
    const LIMIT: Duration = Duration::from_secs(120);
    let started = std::time::Instant::now();
    stream.set_read_timeout(Some(LIMIT))?;
    let mut rest = Vec::new();
    if let Err(source) = std::io::Read::read_to_end(stream, &mut rest) {
        return Err(ClientError::Late {
            path: path.to_path_buf(),
            seconds: LIMIT.as_secs(),
            source,
        });
    }
    while let Some(pid) = pid.filter(|&p| !has_exited(p)) {
        if started.elapsed() > LIMIT {
            return Err(ClientError::StillRunning {
                path: path.to_path_buf(),
                seconds: LIMIT.as_secs(),
                pid,
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// True once `pid` is gone, or a zombie whose threads have all exited (and so closed its
/// files): an unreaped zombie holds no socket, but a zombie leader may still have threads
/// on their way out.
pub fn has_exited(pid: i32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return true;
    };
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or("")
            .to_string()
    };
    field("State:").starts_with('Z') && field("Threads:") == "1"
}

/// Reads one request from a control connection.
pub fn read_request(stream: &UnixStream) -> Result<Request, Error> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut line = String::new();
    BufReader::new(std::io::Read::take(stream, MAX_REQUEST)).read_line(&mut line)?;
    serde_json::from_str(&line).map_err(Error::NotARequest)
}

pub fn write_response(mut stream: &UnixStream, response: &Response) -> Result<(), Error> {
    let mut line = serde_json::to_vec(response)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_through_json() {
        for r in [
            Request::Apply {
                manifest: "/etc/cowctl/cowctl.yaml".into(),
            },
            Request::Status,
            Request::Reset {
                pcs: vec!["pc-01".into()],
            },
            Request::Down { pcs: vec![] },
        ] {
            let text = serde_json::to_string(&r).unwrap();
            assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), r);
        }
        assert_eq!(
            serde_json::to_string(&Request::Status).unwrap(),
            r#"{"op":"status"}"#
        );
    }
}

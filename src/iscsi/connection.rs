//! One TCP connection from login to logout: login PDUs through [`Login`] within a
//! deadline, the attachment to the PC's disk, then the full feature phase, with the line
//! watched for idleness (NOP-In pings) and the session's resources released at the end.

use std::io::{self, BufWriter};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::login::{Directory, End, Established, Login, SessionKind};
use super::negotiate::OUR_MAX_RECV_DATA;
use super::pdu::{InitiatorOpcode, LoginRequest, LoginStatus};
use super::reader::{Digests, PduReader, PduWriter, ReadError};
use super::scsi::{Lu, Nexus};
use super::session::{self, Discovery, Kind, Next, Session};

/// A login that has not reached the full feature phase by then is dropped.
pub const LOGIN_TIMEOUT: Duration = Duration::from_secs(15);
/// How often a quiet connection wakes up to see whether it needs a ping.
const TICK: Duration = Duration::from_secs(2);
/// What a login may carry in one PDU before the operational limits apply.
const LOGIN_MAX_DATA: usize = 64 << 10;
const WRITE_BUFFER: usize = 256 << 10;

/// A PC's disk as one session uses it, and whatever must live as long as the session
/// (the slot's connection registration).
pub struct Attachment {
    pub lu: Arc<Lu>,
    pub nexus: Nexus,
    pub guard: Box<dyn Send>,
}

/// What a connection needs of the service behind the portal.
pub trait Portal: Sync {
    fn directory(&self) -> &dyn Directory;
    /// Ties an established normal session to the PC's disk; `close` shuts the connection
    /// down (a reset or down calls it). A refusal is the login status to send instead.
    fn attach(
        &self,
        est: &Established,
        peer: SocketAddr,
        close: Box<dyn Fn() + Send>,
    ) -> Result<Attachment, LoginStatus>;
    /// The portals SendTargets reports.
    fn portals(&self) -> Vec<SocketAddr>;
}

/// How a connection ended, for the log.
#[derive(Debug)]
pub enum Ended {
    Refused(LoginStatus, String),
    LoginTimeout,
    Closed(String),
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Refused(status, why) => write!(f, "login refused with {status}: {why}"),
            Ended::LoginTimeout => write!(
                f,
                "the login did not finish within {} s",
                LOGIN_TIMEOUT.as_secs()
            ),
            Ended::Closed(why) => f.write_str(why),
        }
    }
}

/// What the connection loop needs of its transport besides reading and writing.
pub trait Line {
    /// Blocks reads at most this long (None: forever).
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()>;
    /// A callback that shuts the connection down from another thread.
    fn closer(&self) -> io::Result<Box<dyn Fn() + Send>>;
}

impl Line for TcpStream {
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        TcpStream::set_read_timeout(self, t)
    }

    fn closer(&self) -> io::Result<Box<dyn Fn() + Send>> {
        let s = self.try_clone()?;
        Ok(Box::new(move || {
            let _ = s.shutdown(Shutdown::Both);
        }))
    }
}

/// Serves one TCP connection until it ends.
pub fn serve(stream: TcpStream, portal: &dyn Portal) -> io::Result<Ended> {
    let _ = stream.set_nodelay(true);
    let peer = stream.peer_addr()?;
    let local = stream.local_addr().ok();
    let reader = PduReader::new(stream.try_clone()?, LOGIN_MAX_DATA);
    let writer = PduWriter::new(BufWriter::with_capacity(WRITE_BUFFER, stream.try_clone()?));
    converse(reader, writer, &stream, peer, local, portal)
}

/// Login, then the full feature phase, over any line (tests use memory).
pub fn converse<R: io::Read, W: io::Write>(
    mut reader: PduReader<R>,
    mut writer: PduWriter<W>,
    line: &dyn Line,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    portal: &dyn Portal,
) -> io::Result<Ended> {
    let deadline = Instant::now() + LOGIN_TIMEOUT;
    let mut login = Login::new(next_tsih(), session::WINDOW);
    let (est, attachment) = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(Ended::LoginTimeout);
        }
        line.set_read_timeout(Some(left))?;
        let pdu = match reader.read_pdu() {
            Ok(p) => p,
            Err(ReadError::TimedOut) => return Ok(Ended::LoginTimeout),
            Err(ReadError::Closed) => {
                return Ok(Ended::Closed("the initiator left during login".into()))
            }
            Err(e) => return Ok(Ended::Closed(format!("during login: {e}"))),
        };
        if InitiatorOpcode::from_byte(pdu.bhs.opcode_byte()) != Some(InitiatorOpcode::Login) {
            return Ok(Ended::Closed(
                "the first PDU of a connection is not a Login Request".into(),
            ));
        }
        let req = LoginRequest::parse(&pdu.bhs);
        let mut reply = login.handle(&req, pdu.data, portal.directory());
        let mut attachment = None;
        if let Some(End::FullFeature(est)) = &reply.end {
            if let SessionKind::Normal { .. } = est.kind {
                match portal.attach(est, peer, line.closer()?) {
                    Ok(a) => attachment = Some(a),
                    Err(status) => super::login::refuse(
                        &mut reply,
                        status,
                        "the PC's disk is not being served",
                    ),
                }
            }
        }
        writer.send(&reply.bhs, &reply.data)?;
        writer.flush()?;
        match reply.end {
            None => continue,
            Some(End::Refused(status, why)) => return Ok(Ended::Refused(status, why)),
            Some(End::FullFeature(est)) => break (*est, attachment),
        }
    };
    let digests = Digests {
        header: est.params.header_digest,
        data: est.params.data_digest,
    };
    reader.set_limits(OUR_MAX_RECV_DATA as usize, digests);
    line.set_read_timeout(Some(TICK))?;
    let kind = match &attachment {
        Some(a) => Kind::Normal {
            lu: a.lu.clone(),
            nexus: a.nexus,
        },
        None => Kind::Discovery,
    };
    let discovery = Discovery {
        directory: portal.directory(),
        portals: portal.portals(),
        local,
    };
    let mut session = Session::new(writer, est, kind, discovery);
    let ended = full_feature(&mut reader, &mut session);
    session.end();
    let _ = session.flush();
    drop(session);
    drop(attachment);
    ended
}

fn full_feature<R: io::Read, W: io::Write>(
    reader: &mut PduReader<R>,
    session: &mut Session<'_, W>,
) -> io::Result<Ended> {
    loop {
        if !reader.has_pdu() {
            session.flush()?;
        }
        let next = match reader.read_pdu() {
            Ok(pdu) => session.handle(&pdu)?,
            Err(ReadError::TimedOut) => session.idle()?,
            Err(ReadError::DataDigest(bhs)) => session.data_digest_error(&bhs)?,
            Err(ReadError::Closed) => {
                return Ok(Ended::Closed("the initiator closed the connection".into()))
            }
            Err(e) => return Ok(Ended::Closed(e.to_string())),
        };
        if let Next::Close(why) = next {
            session.flush()?;
            return Ok(Ended::Closed(why));
        }
    }
}

/// Session handles are not reused soon; 0 is reserved.
fn next_tsih() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(1);
    loop {
        let t = NEXT.fetch_add(1, Ordering::Relaxed);
        if t != 0 {
            return t;
        }
    }
}

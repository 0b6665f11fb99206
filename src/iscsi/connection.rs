//! One TCP connection from login to logout: login PDUs through [`Login`] within a
//! deadline, the attachment to the PC's disk, then the full feature phase, with the line
//! watched for idleness (NOP-In pings) and the session's resources released at the end.

use std::io::{self, BufWriter};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::login::{Directory, End, Established, Login, Reply, SessionKind};
use super::negotiate::OUR_MAX_RECV_DATA;
use super::pdu::{InitiatorOpcode, LoginRequest, LoginStatus};
use super::reader::{Digests, PduReader, PduWriter, ReadError};
use super::scsi::{Lu, Nexus};
use super::session::{self, Discovery, Kind, Next, Session};

pub use super::line::{Clocked, Line};

/// A login that has not reached the full feature phase by then is dropped, however
/// slowly its bytes trickle in: the deadline holds inside every read.
pub const LOGIN_TIMEOUT: Duration = Duration::from_secs(15);
/// A discovery session (no CHAP, no disk) ends this long after its connection came.
pub const DISCOVERY_LIFETIME: Duration = Duration::from_secs(30);
/// A discovery session that sends nothing for this long is closed.
pub const DISCOVERY_IDLE: Duration = Duration::from_secs(10);
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
    /// The service's planned restarts, when it has them.
    fn handoff(&self) -> Option<&dyn Handoff> {
        None
    }
}

/// A planned restart of the service (an upgrade): each connection stops at a moment its
/// session stands still and hands its socket and session to the next process, which
/// resumes it where it stood. The initiator sees a short pause, not a broken connection.
pub trait Handoff: Sync {
    /// Readable once a handover is asked for: blocked reads wake on it.
    fn wake(&self) -> Arc<OwnedFd>;
    /// True once a handover is asked for.
    fn requested(&self) -> bool;
    /// A session stood still and is on its way to [`take`](Self::take) (so the handover
    /// waits for it even after its attachment to the PC's disk is gone).
    fn parking(&self);
    /// Takes a session that stood still (None: it could not be parked after all).
    fn take(&self, parked: Option<Parked>);
}

/// A session handed over: its connection, where it stands (the StatSN and ExpCmdSN of the
/// next PDUs), and what was received and not yet read.
pub struct Parked {
    pub stream: TcpStream,
    pub est: Established,
    pub unread: Vec<u8>,
}

/// How a connection ended, for the log.
#[derive(Debug)]
pub enum Ended {
    Refused(LoginStatus, String),
    LoginTimeout,
    Closed(String),
    /// Stood still and was handed to the next process (see [`Handoff`]).
    HandedOver {
        est: Box<Established>,
        unread: Vec<u8>,
    },
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
            Ended::HandedOver { .. } => f.write_str("handed over to the next process"),
        }
    }
}

/// The service's say on a connection whose initiator has logged into a PC's target.
pub trait Admission {
    /// The connection stops counting as a stranger's; false refuses the login (the
    /// service has no room for one more logged-in connection).
    fn logged_in(&mut self) -> bool;
}

/// Admits every login (tests, fuzzing).
pub struct AdmitAll;

impl Admission for AdmitAll {
    fn logged_in(&mut self) -> bool {
        true
    }
}

/// Serves one TCP connection until it ends.
pub fn serve(
    stream: TcpStream,
    portal: &dyn Portal,
    admission: &mut dyn Admission,
) -> io::Result<Ended> {
    let _ = stream.set_nodelay(true);
    let peer = stream.peer_addr()?;
    let local = stream.local_addr().ok();
    let line = Clocked::new(stream, portal.handoff().map(|h| h.wake()));
    let reader = PduReader::new(line.try_clone()?, LOGIN_MAX_DATA);
    let writer = PduWriter::new(BufWriter::with_capacity(
        WRITE_BUFFER,
        line.stream.try_clone()?,
    ));
    let ended = converse(reader, writer, &line, peer, local, portal, admission)?;
    park(ended, &line, portal)
}

/// Gives a session that stood still to the service's handoff; other ends pass through.
fn park(ended: Ended, line: &Clocked, portal: &dyn Portal) -> io::Result<Ended> {
    match (ended, portal.handoff()) {
        (Ended::HandedOver { est, unread }, Some(handoff)) => {
            let stream = match line.stream.try_clone() {
                Ok(s) => s,
                Err(e) => {
                    handoff.take(None);
                    return Err(e);
                }
            };
            handoff.take(Some(Parked {
                stream,
                est: (*est).clone(),
                unread: unread.clone(),
            }));
            Ok(Ended::HandedOver { est, unread })
        }
        (ended, _) => Ok(ended),
    }
}

/// Resumes a session the previous process handed over: attached to the PC's disk again
/// and straight into the full feature phase, with the StatSN and ExpCmdSN it stood at.
pub fn resume(
    parked: Parked,
    portal: &dyn Portal,
    admission: &mut dyn Admission,
) -> io::Result<Ended> {
    let Parked {
        stream,
        est,
        unread,
    } = parked;
    let _ = stream.set_nodelay(true);
    let peer = stream.peer_addr()?;
    let local = stream.local_addr().ok();
    let line = Clocked::new(stream, portal.handoff().map(|h| h.wake()));
    let mut reader = PduReader::new(line.try_clone()?, LOGIN_MAX_DATA);
    let writer = PduWriter::new(BufWriter::with_capacity(
        WRITE_BUFFER,
        line.stream.try_clone()?,
    ));
    if !matches!(est.kind, SessionKind::Normal { .. }) {
        return Ok(Ended::Closed("a discovery session is not resumed".into()));
    }
    if !admission.logged_in() {
        return Ok(Ended::Closed(
            "as many initiators are logged in as the service takes".into(),
        ));
    }
    let attachment = match portal.attach(&est, peer, line.closer()?) {
        Ok(a) => a,
        Err(status) => {
            return Ok(Ended::Refused(
                status,
                "the PC's disk is not served after the restart".into(),
            ))
        }
    };
    reader.set_limits(OUR_MAX_RECV_DATA as usize, digests(&est));
    if let Err(e) = reader.prefill(&unread) {
        return Ok(Ended::Closed(format!("resuming: {e}")));
    }
    let ended = feature_phase(
        &mut reader,
        writer,
        &line,
        est,
        Some(attachment),
        local,
        None,
        portal,
    )?;
    park(ended, &line, portal)
}

fn digests(est: &Established) -> Digests {
    Digests {
        header: est.params.header_digest,
        data: est.params.data_digest,
    }
}

/// Login, then the full feature phase, over any line (tests use memory).
pub fn converse<R: io::Read, W: io::Write>(
    mut reader: PduReader<R>,
    mut writer: PduWriter<W>,
    line: &dyn Line,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    portal: &dyn Portal,
    admission: &mut dyn Admission,
) -> io::Result<Ended> {
    let came = Instant::now();
    let deadline = came + LOGIN_TIMEOUT;
    line.set_deadline(Some(deadline));
    let mut login = Login::new(next_tsih(), session::WINDOW);
    let (est, attachment) = loop {
        // The line holds every read to the deadline (Clocked): no timeout to set per PDU.
        if Instant::now() >= deadline {
            return Ok(Ended::LoginTimeout);
        }
        let pdu = match reader.read_pdu() {
            Ok(p) => p,
            // A handover's wake-up: a login is not handed over, it goes on or times out.
            Err(ReadError::TimedOut) if Instant::now() < deadline => continue,
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
        let attachment = attach(&mut reply, line, peer, portal, admission)?;
        writer.send(&reply.bhs, &reply.data)?;
        writer.flush()?;
        match reply.end {
            None => continue,
            Some(End::Refused(status, why)) => return Ok(Ended::Refused(status, why)),
            Some(End::FullFeature(est)) => break (*est, attachment),
        }
    };
    reader.set_limits(OUR_MAX_RECV_DATA as usize, digests(&est));
    // A discovery session proves nothing: it stays a stranger's, with a lifetime.
    let until = attachment.is_none().then(|| came + DISCOVERY_LIFETIME);
    feature_phase(
        &mut reader,
        writer,
        line,
        est,
        attachment,
        local,
        until,
        portal,
    )
}

/// The full feature phase of an established session, until its connection ends or it is
/// handed over.
#[allow(clippy::too_many_arguments)]
fn feature_phase<R: io::Read, W: io::Write>(
    reader: &mut PduReader<R>,
    writer: PduWriter<W>,
    line: &dyn Line,
    est: Established,
    attachment: Option<Attachment>,
    local: Option<SocketAddr>,
    until: Option<Instant>,
    portal: &dyn Portal,
) -> io::Result<Ended> {
    line.set_read_timeout(Some(TICK))?;
    line.set_deadline(until);
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
    let handoff = portal.handoff().filter(|_| attachment.is_some());
    let ended = full_feature(reader, &mut session, (line, until), handoff);
    match ended {
        Ok(Ended::HandedOver { est, .. }) => {
            // Not ended: the next process carries the session on.
            if let Err(e) = session.flush() {
                if let Some(h) = portal.handoff() {
                    h.take(None);
                }
                return Err(e);
            }
            Ok(Ended::HandedOver {
                est,
                unread: reader.unread().to_vec(),
            })
        }
        ended => {
            session.end();
            let _ = session.flush();
            ended
        }
    }
}

/// A login that reached the full feature phase of a normal session: admitted, then tied
/// to the PC's disk; a refusal of either turns the reply into a refusal. Admitted before
/// attaching: a refused login must not reinstate (close) the PC's running session.
fn attach(
    reply: &mut Reply,
    line: &dyn Line,
    peer: SocketAddr,
    portal: &dyn Portal,
    admission: &mut dyn Admission,
) -> io::Result<Option<Attachment>> {
    let Some(End::FullFeature(est)) = &reply.end else {
        return Ok(None);
    };
    let SessionKind::Normal { .. } = est.kind else {
        return Ok(None);
    };
    let attached = if admission.logged_in() {
        portal.attach(est, peer, line.closer()?)
    } else {
        Err(LoginStatus::OUT_OF_RESOURCES)
    };
    match attached {
        Ok(a) => return Ok(Some(a)),
        Err(LoginStatus::OUT_OF_RESOURCES) => super::login::refuse(
            reply,
            LoginStatus::OUT_OF_RESOURCES,
            "as many initiators are logged in as the service takes",
        ),
        Err(status) => super::login::refuse(reply, status, "the PC's disk is not being served"),
    }
    Ok(None)
}

/// The full feature phase until the connection ends; a discovery session (`until` set)
/// also ends at its deadline or when it is idle.
fn full_feature<R: io::Read, W: io::Write>(
    reader: &mut PduReader<R>,
    session: &mut Session<'_, W>,
    (line, until): (&dyn Line, Option<Instant>),
    handoff: Option<&dyn Handoff>,
) -> io::Result<Ended> {
    loop {
        if handoff.is_some_and(|h| h.requested()) {
            // Reads and writes in flight are answered first: a busy session stands still
            // only once they are.
            session.settle()?;
        }
        if let Some((h, est)) = handoff
            .filter(|h| h.requested())
            .and_then(|h| Some((h, session.suspend()?)))
        {
            h.parking();
            return Ok(Ended::HandedOver {
                est: Box::new(est),
                unread: Vec::new(),
            });
        }
        if !reader.has_pdu() {
            wait_in_flight(session, line)?;
            session.flush()?;
        }
        let next = match reader.read_pdu() {
            Ok(pdu) => session.handle(&pdu)?,
            Err(ReadError::TimedOut) if until.is_some_and(|u| Instant::now() >= u) => {
                Next::Close(format!(
                    "a discovery session lasts at most {} s",
                    DISCOVERY_LIFETIME.as_secs()
                ))
            }
            Err(ReadError::TimedOut) if until.is_some() && session.quiet() >= DISCOVERY_IDLE => {
                Next::Close(format!(
                    "the discovery session was idle for {} s",
                    DISCOVERY_IDLE.as_secs()
                ))
            }
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

/// Before waiting for the initiator: answers the reads and writes in flight as they finish,
/// until all are answered or the initiator sends more (they stay in flight meanwhile).
fn wait_in_flight<W: io::Write>(session: &mut Session<'_, W>, line: &dyn Line) -> io::Result<()> {
    while session.answer_done()? {
        session.flush()?;
        let Some(fd) = session.in_flight_fd() else {
            return Ok(());
        };
        match line.wait_ready(fd, TICK) {
            Some(true) => return Ok(()),
            Some(false) => {}
            None => return session.settle(),
        }
    }
    Ok(())
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

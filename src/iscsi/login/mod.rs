//! The login phase (RFC 7143 §6.3, §11.12–13) as a state machine without I/O: each Login
//! Request in, one Login Response out, until the connection enters the full feature phase
//! or is refused with a status. Security negotiation (None or CHAP, one-way or mutual),
//! then operational negotiation; an initiator may skip stages the rules let it skip.
//!
//! This file: the stages and the keys of each request; who logs in and how they prove it
//! is in `security.rs`.

mod security;

use super::chap::{self, Credentials};
use super::negotiate::{Answer, Params, OUR_MAX_RECV_DATA};
use super::pdu::{login_response, Bhs, LoginRequest, LoginStatus, SeqNumbers};
use super::text::{Pairs, MAX_TEXT};
use security::Auth;

const SECURITY: u8 = 0;
const OPERATIONAL: u8 = 1;
const FULL_FEATURE: u8 = 3;
/// The portal group every cowctl target has (LIO's `tpgt_1`).
pub const PORTAL_GROUP: u16 = 1;

/// How the target a login names may be entered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// The target's IQN as the initiator gave it.
    pub target: String,
    /// CHAP required; None lets the initiator in without authentication.
    pub chap: Option<Credentials>,
}

/// The targets a portal serves, as login and discovery see them.
pub trait Directory {
    /// May `initiator` log into `target`? A refusal is the status to send.
    fn access(&self, target: &str, initiator: &str) -> Result<Access, LoginStatus>;
    /// The targets `initiator` may log into, for SendTargets.
    fn visible(&self, initiator: &str) -> Vec<String>;
    /// Where `target` is served now when it is not served here (another gateway's portal,
    /// `ip:port`): a login is redirected there (RFC 7143 §11.13.5, Target moved
    /// temporarily) instead of being told to come back later.
    fn moved(&self, _target: &str) -> Option<String> {
        None
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SessionKind {
    Discovery,
    Normal { target: String },
}

/// A login that succeeded: what the full feature phase starts from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Established {
    pub kind: SessionKind,
    pub initiator: String,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub params: Params,
    /// The StatSN the next response carries.
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    /// Whether the initiator proved itself with CHAP (for logs and status).
    pub authenticated: bool,
}

/// One Login Response to send, and whether the login phase ended with it.
#[derive(Debug)]
pub struct Reply {
    pub bhs: Bhs,
    pub data: Vec<u8>,
    pub end: Option<End>,
}

#[derive(Debug)]
pub enum End {
    FullFeature(Box<Established>),
    /// The connection must close after the response; the reason is for the log.
    Refused(LoginStatus, String),
}

pub struct Login {
    tsih: u16,
    window: u32,
    stat_sn: Option<u32>,
    exp_cmd_sn: u32,
    initiator: Option<String>,
    kind: Option<SessionKind>,
    access: Option<Access>,
    auth: Auth,
    params: Params,
    /// Text of PDUs sent with the C bit, joined until the last piece.
    pending: Vec<u8>,
    declared: bool,
    first: bool,
    /// The TargetAddress a redirection sends the initiator to.
    moved_to: Option<String>,
}

impl Login {
    /// `tsih` is the session handle to give a new session; `window` how many commands the
    /// target accepts ahead of ExpCmdSN.
    pub fn new(tsih: u16, window: u32) -> Login {
        Login {
            tsih,
            window: window.max(1),
            stat_sn: None,
            exp_cmd_sn: 0,
            initiator: None,
            kind: None,
            access: None,
            auth: Auth::Start,
            params: Params::default(),
            pending: Vec::new(),
            declared: false,
            first: true,
            moved_to: None,
        }
    }

    /// Answers one Login Request.
    pub fn handle(&mut self, req: &LoginRequest, data: &[u8], dir: &dyn Directory) -> Reply {
        let stat_sn = *self.stat_sn.get_or_insert(req.exp_stat_sn);
        self.stat_sn = Some(stat_sn.wrapping_add(1));
        if self.first {
            self.exp_cmd_sn = req.cmd_sn;
        }
        let sn = SeqNumbers {
            stat_sn,
            exp_cmd_sn: self.exp_cmd_sn,
            max_cmd_sn: self.exp_cmd_sn.wrapping_add(self.window - 1),
        };
        match self.step(req, data, dir) {
            Ok(Step::More) => Reply {
                bhs: login_response(req, false, req.csg, 0, 0, sn, LoginStatus::SUCCESS),
                data: Vec::new(),
                end: None,
            },
            Ok(Step::Answer { keys, transit }) => {
                let nsg = if transit { req.nsg } else { 0 };
                let done = transit && req.nsg == FULL_FEATURE;
                let tsih = if done { self.tsih } else { 0 };
                let mut bhs =
                    login_response(req, transit, req.csg, nsg, tsih, sn, LoginStatus::SUCCESS);
                let data = keys.encode();
                bhs.set_data_len(data.len());
                let end = done.then(|| {
                    End::FullFeature(Box::new(Established {
                        kind: self.kind.clone().expect("set by the first request"),
                        initiator: self.initiator.clone().expect("set by the first request"),
                        isid: req.isid,
                        tsih: self.tsih,
                        params: self.params,
                        stat_sn: stat_sn.wrapping_add(1),
                        exp_cmd_sn: self.exp_cmd_sn,
                        authenticated: self.auth == Auth::Done { chap: true },
                    }))
                });
                Reply { bhs, data, end }
            }
            Err((status, why)) => {
                let mut bhs = login_response(req, false, req.csg, 0, 0, sn, status);
                let mut keys = Pairs::default();
                if let Some(to) = self.moved_to.take() {
                    // No portal group tag with a redirect (RFC 7143 §13.8).
                    keys.push("TargetAddress", to);
                }
                let data = keys.encode();
                bhs.set_data_len(data.len());
                Reply {
                    bhs,
                    data,
                    end: Some(End::Refused(status, why)),
                }
            }
        }
    }

    fn step(
        &mut self,
        req: &LoginRequest,
        data: &[u8],
        dir: &dyn Directory,
    ) -> Result<Step, (LoginStatus, String)> {
        self.check_request(req, data)?;
        self.pending.extend_from_slice(data);
        if req.cont {
            return Ok(Step::More);
        }
        let text = std::mem::take(&mut self.pending);
        let keys = Pairs::parse(&text).map_err(|e| bad(&e.to_string()))?;
        let mut out = Pairs::default();
        if self.first {
            self.first = false;
            self.begin(&keys, dir)?;
            if matches!(self.kind, Some(SessionKind::Normal { .. })) {
                out.push("TargetPortalGroupTag", PORTAL_GROUP.to_string());
            }
        }
        if req.csg == OPERATIONAL && !matches!(self.auth, Auth::Done { .. }) {
            // The security stage was skipped: allowed only where no authentication is due.
            self.auth_method("None")?;
        }
        for (k, v) in &keys.0 {
            match k.as_str() {
                "InitiatorName" | "TargetName" | "SessionType" => {}
                "AuthMethod" if req.csg == SECURITY => {
                    let chosen = self.auth_method(v)?;
                    out.push("AuthMethod", chosen);
                }
                "CHAP_A" if req.csg == SECURITY => self.chap_algorithm(v, &mut out)?,
                "CHAP_N" | "CHAP_R" | "CHAP_I" | "CHAP_C" if req.csg == SECURITY => {}
                _ => match self.params.offer(k, v) {
                    Answer::Reply(answer) => out.push(k, answer),
                    Answer::Silent => {}
                    Answer::NotOperational => out.push(k, "NotUnderstood"),
                },
            }
        }
        if keys.get("CHAP_N").is_some() || keys.get("CHAP_R").is_some() {
            self.check_chap(&keys, &mut out)?;
        }
        if req.csg == SECURITY && self.auth == Auth::Start && req.transit {
            // No AuthMethod offered at all: as if None.
            self.auth_method("None")?;
        }
        // Until CHAP is through, the initiator stays in the security stage.
        let transit = req.transit && matches!(self.auth, Auth::Done { .. });
        // Operational keys belong to the operational stage (or the jump past it).
        if req.csg == OPERATIONAL || (transit && req.nsg == FULL_FEATURE) {
            self.declare(&mut out);
        }
        Ok(Step::Answer { keys: out, transit })
    }

    /// A request's header against the protocol (version, no added connection, stages and
    /// their order, T and C bits) and its text against the cap, before any key is read.
    fn check_request(&self, req: &LoginRequest, data: &[u8]) -> Result<(), (LoginStatus, String)> {
        if req.version_min > 0 {
            return Err((
                LoginStatus::UNSUPPORTED_VERSION,
                format!(
                    "the initiator needs protocol version {} or later",
                    req.version_min
                ),
            ));
        }
        if req.tsih != 0 {
            return Err((
                LoginStatus::SESSION_DOES_NOT_EXIST,
                "a connection was added to an existing session (MaxConnections is 1)".into(),
            ));
        }
        if req.csg != SECURITY && req.csg != OPERATIONAL {
            return Err(bad(
                "a login request is in neither the security nor the operational stage",
            ));
        }
        if req.transit && (req.nsg <= req.csg || req.nsg == 2) {
            return Err(bad(
                "a login request asks for a stage that does not follow its own",
            ));
        }
        if req.transit && req.cont {
            return Err(bad("a login request has both the T and C bits"));
        }
        if self.pending.len() + data.len() > MAX_TEXT {
            return Err(bad("the login text is over 64 KiB"));
        }
        Ok(())
    }

    /// CHAP_A: MD5 among the offered algorithms; the answer is our identifier and challenge.
    fn chap_algorithm(&mut self, v: &str, out: &mut Pairs) -> Result<(), (LoginStatus, String)> {
        if self.auth != Auth::AwaitAlgorithm {
            return Err(bad("CHAP_A came when no CHAP exchange was under way"));
        }
        if !v.split(',').any(|a| a == "5") {
            return Err((
                LoginStatus::AUTHENTICATION_FAILURE,
                format!("the initiator offers CHAP algorithms {v}, not MD5 (5)"),
            ));
        }
        let (id, challenge) =
            chap::challenge().map_err(|e| (LoginStatus::TARGET_ERROR, e.to_string()))?;
        out.push("CHAP_A", "5");
        out.push("CHAP_I", id.to_string());
        out.push("CHAP_C", chap::encode_hex(&challenge));
        self.auth = Auth::AwaitResponse {
            id,
            challenge: challenge.to_vec(),
        };
        Ok(())
    }

    /// Our declarative keys, once, in the operational stage (or on the way past it).
    fn declare(&mut self, out: &mut Pairs) {
        if !self.declared {
            self.declared = true;
            out.push("MaxRecvDataSegmentLength", OUR_MAX_RECV_DATA.to_string());
        }
    }
}

/// A refusal for the initiator's error.
fn bad(why: &str) -> (LoginStatus, String) {
    (LoginStatus::INITIATOR_ERROR, why.to_string())
}

/// Turns a successful last response into a refusal (the disk could not be attached).
pub fn refuse(reply: &mut Reply, status: LoginStatus, why: &str) {
    reply.bhs.0[1] &= 0x0c; // T=0, NSG=0, CSG kept
    reply.bhs.set_u16(14, 0);
    reply.bhs.0[36] = status.class;
    reply.bhs.0[37] = status.detail;
    reply.bhs.set_data_len(0);
    reply.data.clear();
    reply.end = Some(End::Refused(status, why.to_string()));
}

enum Step {
    /// A piece of continued text was taken; the initiator sends the rest.
    More,
    Answer {
        keys: Pairs,
        transit: bool,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iscsi::chap::Secret;

    struct OneTarget(Option<Credentials>);

    impl Directory for OneTarget {
        fn access(&self, target: &str, initiator: &str) -> Result<Access, LoginStatus> {
            if target != "iqn.t:pc" {
                return Err(LoginStatus::NOT_FOUND);
            }
            if initiator == "iqn.i:stranger" {
                return Err(LoginStatus::AUTHORIZATION_FAILURE);
            }
            Ok(Access {
                target: target.into(),
                chap: self.0.clone(),
            })
        }
        fn visible(&self, _: &str) -> Vec<String> {
            vec!["iqn.t:pc".into()]
        }
    }

    fn req(csg: u8, nsg: u8, transit: bool) -> LoginRequest {
        let mut b = Bhs::default();
        b.0[0] = 0x43;
        b.0[1] = (u8::from(transit) << 7) | (csg << 2) | nsg;
        b.set_u32(24, 10);
        b.set_u32(28, 100);
        LoginRequest::parse(&b)
    }

    fn keys(r: &Reply) -> Pairs {
        Pairs::parse(&r.data).unwrap()
    }

    fn status(r: &Reply) -> (u8, u8) {
        (r.bhs.0[36], r.bhs.0[37])
    }

    const FIRST: &[u8] =
        b"InitiatorName=iqn.i:pc\0TargetName=iqn.t:pc\0SessionType=Normal\0AuthMethod=CHAP,None\0";

    /// A target served by another gateway: not here, but there.
    struct Moved;

    impl Directory for Moved {
        fn access(&self, _: &str, _: &str) -> Result<Access, LoginStatus> {
            Err(LoginStatus::SERVICE_UNAVAILABLE)
        }
        fn visible(&self, _: &str) -> Vec<String> {
            Vec::new()
        }
        fn moved(&self, _: &str) -> Option<String> {
            Some("10.0.0.2:3260".into())
        }
    }

    #[test]
    fn a_target_served_elsewhere_redirects_the_login_there() {
        let mut l = Login::new(7, 32);
        let r = l.handle(&req(0, 1, true), FIRST, &Moved);
        assert_eq!(status(&r), (1, 1), "Target moved temporarily");
        assert_eq!(keys(&r).get("TargetAddress"), Some("10.0.0.2:3260"));
        assert_eq!(r.bhs.data_len(), r.data.len());
        assert!(matches!(r.end, Some(End::Refused(..))));
        // Not served anywhere (no address): come back later, as before.
        let r = Login::new(7, 32).handle(&req(0, 1, true), FIRST, &OneTarget(None));
        assert_eq!(status(&r), (0, 0));
    }

    #[test]
    fn no_authentication_then_operational_then_full_feature() {
        let dir = OneTarget(None);
        let mut l = Login::new(7, 32);
        let r = l.handle(&req(0, 1, true), FIRST, &dir);
        assert!(r.end.is_none());
        assert_eq!(keys(&r).get("AuthMethod"), Some("None"));
        assert_eq!(keys(&r).get("TargetPortalGroupTag"), Some("1"));
        assert_eq!(r.bhs.0[1], 0x80 | 1, "T, CSG 0, NSG 1");
        assert_eq!(
            r.bhs.u32_at(24),
            100,
            "StatSN starts at the initiator's ExpStatSN"
        );
        let r = l.handle(
            &req(1, 3, true),
            b"HeaderDigest=None\0MaxRecvDataSegmentLength=65536\0ImmediateData=Yes\0X-foo=1\0",
            &dir,
        );
        assert_eq!(keys(&r).get("HeaderDigest"), Some("None"));
        assert_eq!(keys(&r).get("X-foo"), Some("NotUnderstood"));
        assert_eq!(keys(&r).get("MaxRecvDataSegmentLength"), Some("262144"));
        assert_eq!(r.bhs.u16_at(14), 7, "TSIH in the last response");
        let Some(End::FullFeature(e)) = r.end else {
            panic!("{:?}", r.end)
        };
        assert_eq!(e.params.initiator_max_recv_data, 65536);
        assert_eq!(e.stat_sn, 102);
        assert_eq!(e.exp_cmd_sn, 10);
        assert!(!e.authenticated);
    }

    fn creds(mutual: bool) -> Credentials {
        Credentials {
            initiator: Secret {
                username: "pc".into(),
                secret: "initiator-secret".into(),
            },
            target: mutual.then(|| Secret {
                username: "target".into(),
                secret: "target-secret-12".into(),
            }),
        }
    }

    /// Runs the CHAP exchange as an initiator would; returns the last reply.
    fn chap_login(dir: &OneTarget, secret: &str, mutual: bool) -> Reply {
        let mut l = Login::new(1, 32);
        let r = l.handle(&req(0, 1, true), FIRST, dir);
        assert_eq!(keys(&r).get("AuthMethod"), Some("CHAP"));
        assert_eq!(r.bhs.0[1] & 0x80, 0, "no transit before CHAP");
        let r = l.handle(&req(0, 1, false), b"CHAP_A=7,5\0", dir);
        let k = keys(&r);
        assert_eq!(k.get("CHAP_A"), Some("5"));
        let id: u8 = k.get("CHAP_I").unwrap().parse().unwrap();
        let c = chap::decode_binary(k.get("CHAP_C").unwrap()).unwrap();
        let resp = chap::encode_hex(&chap::response(id, secret.as_bytes(), &c));
        let mut text = format!("CHAP_N=pc\0CHAP_R={resp}\0");
        if mutual {
            text.push_str("CHAP_I=9\0CHAP_C=0x0102030405060708\0");
        }
        l.handle(&req(0, 1, true), text.as_bytes(), dir)
    }

    #[test]
    fn chap_one_way_and_mutual() {
        let dir = OneTarget(Some(creds(false)));
        let r = chap_login(&dir, "initiator-secret", false);
        assert!(r.end.is_none(), "{:?}", r.end);
        assert_eq!(r.bhs.0[1], 0x80 | 1);
        let r = chap_login(&dir, "wrong-secret-xx", false);
        assert_eq!(status(&r), (2, 1));
        assert!(matches!(r.end, Some(End::Refused(..))));
        // Mutual without a target secret fails; with one, the target proves itself.
        assert_eq!(status(&chap_login(&dir, "initiator-secret", true)), (2, 1));
        let dir = OneTarget(Some(creds(true)));
        let r = chap_login(&dir, "initiator-secret", true);
        let k = keys(&r);
        assert_eq!(k.get("CHAP_N"), Some("target"));
        let want = chap::response(9, b"target-secret-12", &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(chap::decode_binary(k.get("CHAP_R").unwrap()).unwrap(), want);
    }

    #[test]
    fn refusals() {
        let dir = OneTarget(Some(creds(false)));
        let mut l = Login::new(1, 32);
        let r = l.handle(
            &req(0, 1, true),
            b"InitiatorName=iqn.i:pc\0TargetName=iqn.t:pc\0AuthMethod=None\0",
            &dir,
        );
        assert_eq!(status(&r), (2, 1), "CHAP required");
        let mut l = Login::new(1, 32);
        let r = l.handle(
            &req(1, 3, true),
            b"InitiatorName=iqn.i:pc\0TargetName=iqn.t:pc\0",
            &dir,
        );
        assert_eq!(status(&r), (2, 1), "skipping security with CHAP required");
        let mut l = Login::new(1, 32);
        let r = l.handle(
            &req(0, 1, true),
            b"InitiatorName=iqn.i:stranger\0TargetName=iqn.t:pc\0",
            &dir,
        );
        assert_eq!(status(&r), (2, 2));
        let mut l = Login::new(1, 32);
        let r = l.handle(
            &req(0, 1, true),
            b"InitiatorName=iqn.i:pc\0TargetName=iqn.t:nope\0",
            &dir,
        );
        assert_eq!(status(&r), (2, 3));
        let mut l = Login::new(1, 32);
        let r = l.handle(&req(0, 1, true), b"TargetName=iqn.t:pc\0", &dir);
        assert_eq!(status(&r), (2, 7));
        let mut l = Login::new(1, 32);
        let r = l.handle(
            &req(0, 1, true),
            b"InitiatorName=iqn.i:pc\0InitiatorName=iqn.i:pc\0",
            &dir,
        );
        assert_eq!(status(&r), (2, 0), "a key twice");
    }

    #[test]
    fn discovery_needs_no_secret_and_text_may_continue() {
        let dir = OneTarget(Some(creds(false)));
        let mut l = Login::new(1, 32);
        let r = l.handle(
            &req(0, 3, false).with_cont(),
            b"InitiatorName=iqn.i:pc\0Sessio",
            &dir,
        );
        assert!(r.end.is_none());
        let r = l.handle(
            &req(0, 3, true),
            b"nType=Discovery\0AuthMethod=None\0",
            &dir,
        );
        assert_eq!(keys(&r).get("AuthMethod"), Some("None"));
        let Some(End::FullFeature(e)) = r.end else {
            panic!()
        };
        assert_eq!(e.kind, SessionKind::Discovery);
    }

    impl LoginRequest {
        fn with_cont(mut self) -> Self {
            self.cont = true;
            self
        }
    }
}

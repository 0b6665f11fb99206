//! The security stage of a login: who logs in to what (the first request, checked
//! against the Directory), the AuthMethod agreed, and the initiator's CHAP response checked
//! (and ours given for mutual CHAP).

use super::{Directory, Login, SessionKind};
use crate::iscsi::chap;
use crate::iscsi::pdu::LoginStatus;
use crate::iscsi::text::Pairs;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Auth {
    /// AuthMethod not yet agreed.
    Start,
    /// AuthMethod=CHAP agreed: waiting for CHAP_A.
    AwaitAlgorithm,
    /// Challenge sent: waiting for CHAP_N and CHAP_R.
    AwaitResponse {
        id: u8,
        challenge: Vec<u8>,
    },
    Done {
        chap: bool,
    },
}

impl Login {
    /// The first request: who the initiator is, what kind of session, which target.
    pub(super) fn begin(
        &mut self,
        keys: &Pairs,
        dir: &dyn Directory,
    ) -> Result<(), (LoginStatus, String)> {
        let missing = |k: &str| {
            (
                LoginStatus::MISSING_PARAMETER,
                format!("the first login request has no {k}"),
            )
        };
        let initiator = keys
            .get("InitiatorName")
            .ok_or_else(|| missing("InitiatorName"))?;
        if initiator.is_empty() || initiator.len() > 223 {
            return Err((
                LoginStatus::INITIATOR_ERROR,
                "the InitiatorName is not a valid iSCSI name".into(),
            ));
        }
        self.initiator = Some(initiator.to_string());
        let kind = match keys.get("SessionType").unwrap_or("Normal") {
            "Discovery" => SessionKind::Discovery,
            "Normal" => {
                let target = keys
                    .get("TargetName")
                    .ok_or_else(|| missing("TargetName"))?;
                let access = match dir.access(target, initiator) {
                    Ok(a) => a,
                    Err(s) => {
                        let moved = (s == LoginStatus::SERVICE_UNAVAILABLE)
                            .then(|| dir.moved(target))
                            .flatten();
                        if let Some(to) = moved {
                            let why =
                                format!("{target} is served at {to}: {initiator} is sent there");
                            self.moved_to = Some(to);
                            return Err((LoginStatus::TARGET_MOVED_TEMPORARILY, why));
                        }
                        return Err((s, format!("{initiator} may not log into {target}")));
                    }
                };
                self.access = Some(access);
                SessionKind::Normal {
                    target: target.to_string(),
                }
            }
            other => {
                return Err((
                    LoginStatus::SESSION_TYPE_NOT_SUPPORTED,
                    format!("session type {other:?} is not Normal or Discovery"),
                ))
            }
        };
        self.kind = Some(kind);
        Ok(())
    }

    /// Picks from the initiator's AuthMethod list what the target requires.
    pub(super) fn auth_method(
        &mut self,
        offered: &str,
    ) -> Result<&'static str, (LoginStatus, String)> {
        if self.auth != Auth::Start {
            return Err((
                LoginStatus::INITIATOR_ERROR,
                "AuthMethod was negotiated twice".into(),
            ));
        }
        let offers: Vec<&str> = offered.split(',').collect();
        let chap_required = self.access.as_ref().is_some_and(|a| a.chap.is_some());
        if chap_required {
            if offers.contains(&"CHAP") {
                self.auth = Auth::AwaitAlgorithm;
                return Ok("CHAP");
            }
            return Err((
                LoginStatus::AUTHENTICATION_FAILURE,
                format!(
                    "the target requires CHAP and {} offers AuthMethod={offered}",
                    self.initiator.as_deref().unwrap_or("the initiator")
                ),
            ));
        }
        if offers.contains(&"None") {
            self.auth = Auth::Done { chap: false };
            return Ok("None");
        }
        Err((
            LoginStatus::AUTHENTICATION_FAILURE,
            format!("the initiator requires AuthMethod={offered}, and no secret is configured for this target"),
        ))
    }

    pub(super) fn check_chap(
        &mut self,
        keys: &Pairs,
        out: &mut Pairs,
    ) -> Result<(), (LoginStatus, String)> {
        let fail = |why: String| (LoginStatus::AUTHENTICATION_FAILURE, why);
        let Auth::AwaitResponse { id, challenge } = self.auth.clone() else {
            return Err((
                LoginStatus::INITIATOR_ERROR,
                "a CHAP response came before the challenge".into(),
            ));
        };
        let creds = self
            .access
            .as_ref()
            .and_then(|a| a.chap.clone())
            .ok_or_else(|| fail("no CHAP secret is configured".into()))?;
        let (Some(name), Some(resp)) = (keys.get("CHAP_N"), keys.get("CHAP_R")) else {
            return Err(fail("the CHAP response lacks CHAP_N or CHAP_R".into()));
        };
        let resp =
            chap::decode_binary(resp).ok_or_else(|| fail("CHAP_R is not a binary value".into()))?;
        let expected = chap::response(id, creds.initiator.secret.as_bytes(), &challenge);
        let name_ok = chap::same(name.as_bytes(), creds.initiator.username.as_bytes());
        if !(chap::same(&resp, &expected) & name_ok) {
            return Err(fail(format!(
                "CHAP user {name:?} gave a wrong response (wrong user name or secret)"
            )));
        }
        match (keys.get("CHAP_I"), keys.get("CHAP_C")) {
            (None, None) => {}
            (Some(i), Some(c)) => {
                let mine = creds.target.as_ref().ok_or_else(|| {
                    fail(
                        "the initiator asks for mutual CHAP and no target secret is configured"
                            .into(),
                    )
                })?;
                let id: u8 = i
                    .parse()
                    .map_err(|_| fail(format!("CHAP_I {i:?} is not a number from 0 to 255")))?;
                let c = chap::decode_binary(c)
                    .ok_or_else(|| fail("CHAP_C is not a binary value".into()))?;
                if chap::same(&c, &challenge) {
                    return Err(fail("the initiator sent our own challenge back".into()));
                }
                out.push("CHAP_N", mine.username.clone());
                out.push(
                    "CHAP_R",
                    chap::encode_hex(&chap::response(id, mine.secret.as_bytes(), &c)),
                );
            }
            _ => return Err(fail("mutual CHAP needs both CHAP_I and CHAP_C".into())),
        }
        self.auth = Auth::Done { chap: true };
        Ok(())
    }
}

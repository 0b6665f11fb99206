//! Text requests: SendTargets (all targets, one, or the session's own) answered with each
//! target's portals, a long answer sent in pieces the initiator asks for.

use std::io::{self, Write};
use std::net::SocketAddr;

use super::{Next, Session};
use crate::iscsi::login::PORTAL_GROUP;
use crate::iscsi::pdu::*;
use crate::iscsi::text::Pairs;

fn valid_send_targets(v: &str) -> bool {
    v == "All"
        || v.is_empty()
        || v.starts_with("iqn.")
        || v.starts_with("eui.")
        || v.starts_with("naa.")
}

impl<'a, W: Write> Session<'a, W> {
    pub(super) fn text(&mut self, b: &Bhs, data: &[u8]) -> io::Result<Next> {
        let c = Common::parse(b);
        if !self.take_cmd_sn(c.cmd_sn, c.immediate) {
            return Ok(Next::Continue);
        }
        // A follow-up for the rest of a long answer.
        if c.tag2 != RESERVED_TAG {
            if let Some((ttt, left)) = self.text_left.take() {
                if ttt == c.tag2 {
                    return self.send_text(c.itt, left).map(|()| Next::Continue);
                }
            }
        }
        self.text_left = None;
        if b.flags() & 0x40 != 0 {
            // Continued requests: SendTargets fits in one PDU; anything longer is refused.
            self.reject(RejectReason::InvalidPduField, b)?;
            return Ok(Next::Continue);
        }
        let keys = match Pairs::parse(data) {
            Ok(k) => k,
            Err(e) => {
                tracing::debug!(
                    "iSCSI: bad text request: {}",
                    crate::base::logtext::Escaped(e)
                );
                self.reject(RejectReason::ProtocolError, b)?;
                return Ok(Next::Continue);
            }
        };
        // The only request served is SendTargets (of all targets, one, or the session's).
        let what = match keys.0.as_slice() {
            [(k, v)] if k == "SendTargets" && valid_send_targets(v) => v.clone(),
            _ => {
                self.reject(RejectReason::ProtocolError, b)?;
                return Ok(Next::Continue);
            }
        };
        let mut answer = Pairs::default();
        self.send_targets(&what, &mut answer);
        self.send_text(c.itt, answer.encode())?;
        Ok(Next::Continue)
    }

    fn send_targets(&self, what: &str, answer: &mut Pairs) {
        let visible = self.discovery.directory.visible(&self.est.initiator);
        let targets: Vec<String> = match what {
            "All" => visible,
            // In a normal session, an empty value means the session's own target.
            "" => match &self.est.kind {
                crate::iscsi::login::SessionKind::Normal { target } => vec![target.clone()],
                _ => Vec::new(),
            },
            name => visible.into_iter().filter(|t| t == name).collect(),
        };
        for t in targets {
            answer.push("TargetName", t);
            for p in &self.discovery.portals {
                let addr = match (p.ip().is_unspecified(), self.discovery.local) {
                    (true, Some(local)) => SocketAddr::new(local.ip().to_canonical(), p.port()),
                    _ => *p,
                };
                answer.push("TargetAddress", format!("{addr},{PORTAL_GROUP}"));
            }
        }
    }

    /// Sends a text answer, in pieces of what the initiator receives when it is long.
    fn send_text(&mut self, itt: u32, mut text: Vec<u8>) -> io::Result<()> {
        let max = self.est.params.initiator_max_recv_data as usize;
        if text.len() > max {
            let rest = text.split_off(max);
            let ttt = self.ttt();
            let bhs = text_response(itt, false, true, ttt, self.status_sn(), text.len());
            self.text_left = Some((ttt, rest));
            return self.out.send(&bhs, &text);
        }
        let bhs = text_response(itt, true, false, RESERVED_TAG, self.status_sn(), text.len());
        self.out.send(&bhs, &text)
    }
}

//! Operational parameter negotiation (RFC 7143 §13): for each key the initiator offers,
//! the answer its result function gives against what this target supports, and the
//! session parameters that come out of it.

use super::text::{parse_bool, parse_number, yes_no};

/// What this target receives in one PDU (declared as MaxRecvDataSegmentLength).
pub const OUR_MAX_RECV_DATA: u32 = 256 << 10;
/// The largest burst this target accepts or sends (MaxBurstLength, FirstBurstLength):
/// the protocol's maximum, rounded down to whole blocks.
pub const OUR_MAX_BURST: u32 = (1 << 24) - 1024;
/// R2Ts this target keeps outstanding per command.
pub const OUR_MAX_OUTSTANDING_R2T: u32 = 4;

/// The session's operational parameters; `Default` is RFC 7143's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Params {
    pub header_digest: bool,
    pub data_digest: bool,
    pub immediate_data: bool,
    /// What the initiator receives in one PDU: our Data-In and text segments stay below.
    pub initiator_max_recv_data: u32,
    pub max_burst: u32,
    pub first_burst: u32,
    pub default_time2wait: u32,
    pub default_time2retain: u32,
    pub max_outstanding_r2t: u32,
    pub data_pdu_in_order: bool,
    pub data_sequence_in_order: bool,
    pub error_recovery_level: u32,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            header_digest: false,
            data_digest: false,
            immediate_data: true,
            initiator_max_recv_data: 8192,
            max_burst: 262_144,
            first_burst: 65_536,
            default_time2wait: 2,
            default_time2retain: 20,
            max_outstanding_r2t: 1,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            error_recovery_level: 0,
        }
    }
}

/// The answer to one offered key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Send `key=value` back.
    Reply(String),
    /// Declarative (or an answer to us): nothing to send.
    Silent,
    /// Not an operational key: the login layer handles it.
    NotOperational,
}

impl Params {
    /// Applies one key of the initiator's offer and says what to answer.
    pub fn offer(&mut self, key: &str, value: &str) -> Answer {
        // An answer that only echoes a refusal or "irrelevant" settles nothing.
        if matches!(value, "NotUnderstood" | "Irrelevant" | "Reject") {
            return Answer::Silent;
        }
        match key {
            "HeaderDigest" | "DataDigest" => self.digest(key, value),
            "MaxConnections" => match number(value, 1, 65535) {
                Some(_) => reply("1"),
                None => reject(),
            },
            "InitialR2T" => match parse_bool(value) {
                // Result function OR, and ours is Yes: data beyond immediate data is always
                // asked for with R2T, so a command refused early has no data in flight.
                Some(_) => reply("Yes"),
                None => reject(),
            },
            "ImmediateData" => match parse_bool(value) {
                // Result function AND; ours is Yes.
                Some(b) => {
                    self.immediate_data = b;
                    reply(yes_no(b))
                }
                None => reject(),
            },
            "MaxRecvDataSegmentLength" | "MaxBurstLength" | "FirstBurstLength" => {
                self.length(key, value)
            }
            "DefaultTime2Wait" | "DefaultTime2Retain" => self.time(key, value),
            "MaxOutstandingR2T" => match number(value, 1, 65535) {
                Some(n) => {
                    self.max_outstanding_r2t = n.min(OUR_MAX_OUTSTANDING_R2T);
                    reply(&self.max_outstanding_r2t.to_string())
                }
                None => reject(),
            },
            "DataPDUInOrder" | "DataSequenceInOrder" => match parse_bool(value) {
                // Result function OR; ours is Yes, so the answer is always Yes.
                Some(_) => reply("Yes"),
                None => reject(),
            },
            "ErrorRecoveryLevel" => match number(value, 0, 2) {
                Some(_) => reply("0"),
                None => reject(),
            },
            // RFC 3720's markers, gone from RFC 7143: result AND with our No.
            "IFMarker" | "OFMarker" => match parse_bool(value) {
                Some(_) => reply("No"),
                None => reject(),
            },
            "IFMarkInt" | "OFMarkInt" => reply("Irrelevant"),
            // RFC 7144: we speak RFC 7143's level.
            "iSCSIProtocolLevel" => match number(value, 0, 31) {
                Some(n) => reply(&n.min(1).to_string()),
                None => reject(),
            },
            "TaskReporting" => reply("RFC3720"),
            "InitiatorAlias" => Answer::Silent,
            // Keys only a target declares.
            "TargetAlias" | "TargetAddress" | "TargetPortalGroupTag" => reply("Irrelevant"),
            "InitiatorName" | "TargetName" | "SessionType" | "AuthMethod" | "SendTargets" => {
                Answer::NotOperational
            }
            k if k.starts_with("CHAP_") => Answer::NotOperational,
            _ => reply("NotUnderstood"),
        }
    }

    /// HeaderDigest, DataDigest: the first value in the initiator's list that we support.
    fn digest(&mut self, key: &str, value: &str) -> Answer {
        let chosen = value.split(',').find(|v| matches!(*v, "CRC32C" | "None"));
        match chosen {
            Some(v) => {
                let on = v == "CRC32C";
                if key == "HeaderDigest" {
                    self.header_digest = on;
                } else {
                    self.data_digest = on;
                }
                reply(v)
            }
            None => reject(),
        }
    }

    /// MaxRecvDataSegmentLength (declarative), MaxBurstLength and FirstBurstLength
    /// (result function: minimum, the first burst within the burst).
    fn length(&mut self, key: &str, value: &str) -> Answer {
        let Some(n) = number(value, 512, (1 << 24) - 1) else {
            return reject();
        };
        match key {
            "MaxRecvDataSegmentLength" => {
                self.initiator_max_recv_data = n;
                Answer::Silent
            }
            "MaxBurstLength" => {
                self.max_burst = n.min(OUR_MAX_BURST);
                self.first_burst = self.first_burst.min(self.max_burst);
                reply(&self.max_burst.to_string())
            }
            _ => {
                self.first_burst = n.min(OUR_MAX_BURST).min(self.max_burst);
                reply(&self.first_burst.to_string())
            }
        }
    }

    fn time(&mut self, key: &str, value: &str) -> Answer {
        let Some(n) = number(value, 0, 3600) else {
            return reject();
        };
        if key == "DefaultTime2Wait" {
            // Result function: maximum; ours is 2.
            self.default_time2wait = n.max(2);
            reply(&self.default_time2wait.to_string())
        } else {
            // Result function: minimum. Level 0 recovery keeps nothing after a drop.
            self.default_time2retain = n.min(20);
            reply(&self.default_time2retain.to_string())
        }
    }
}

fn reply(v: &str) -> Answer {
    Answer::Reply(v.to_string())
}

fn reject() -> Answer {
    Answer::Reply("Reject".to_string())
}

fn number(v: &str, min: u32, max: u32) -> Option<u32> {
    parse_number(v)
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| (min..=max).contains(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(p: &mut Params, k: &str, v: &str) -> Option<String> {
        match p.offer(k, v) {
            Answer::Reply(s) => Some(s),
            _ => None,
        }
    }

    #[test]
    fn result_functions() {
        let mut p = Params::default();
        assert_eq!(
            answer(&mut p, "HeaderDigest", "CRC32C,None").as_deref(),
            Some("CRC32C")
        );
        assert!(p.header_digest);
        assert_eq!(
            answer(&mut p, "DataDigest", "None,CRC32C").as_deref(),
            Some("None")
        );
        assert!(!p.data_digest);
        assert_eq!(
            answer(&mut p, "DataDigest", "MD5").as_deref(),
            Some("Reject")
        );
        assert_eq!(answer(&mut p, "InitialR2T", "No").as_deref(), Some("Yes"));
        assert_eq!(answer(&mut p, "ImmediateData", "No").as_deref(), Some("No"));
        assert_eq!(
            answer(&mut p, "MaxBurstLength", "33554432").as_deref(),
            Some("Reject")
        );
        assert_eq!(
            answer(&mut p, "MaxBurstLength", "16777215").as_deref(),
            Some("16776192")
        );
        assert_eq!(
            answer(&mut p, "MaxBurstLength", "1048576").as_deref(),
            Some("1048576")
        );
        assert_eq!(
            answer(&mut p, "FirstBurstLength", "4194304").as_deref(),
            Some("1048576")
        );
        assert_eq!(
            answer(&mut p, "MaxOutstandingR2T", "64").as_deref(),
            Some("4")
        );
        assert_eq!(
            answer(&mut p, "ErrorRecoveryLevel", "2").as_deref(),
            Some("0")
        );
        assert_eq!(
            answer(&mut p, "DefaultTime2Wait", "0").as_deref(),
            Some("2")
        );
        assert_eq!(
            answer(&mut p, "DefaultTime2Retain", "0").as_deref(),
            Some("0")
        );
        assert_eq!(answer(&mut p, "MaxConnections", "8").as_deref(), Some("1"));
        assert_eq!(
            answer(&mut p, "X-com.example.Foo", "1").as_deref(),
            Some("NotUnderstood")
        );
        assert_eq!(answer(&mut p, "MaxRecvDataSegmentLength", "65536"), None);
        assert_eq!(p.initiator_max_recv_data, 65536);
        assert_eq!(
            answer(&mut p, "MaxRecvDataSegmentLength", "100").as_deref(),
            Some("Reject")
        );
        assert_eq!(p.offer("AuthMethod", "None"), Answer::NotOperational);
    }
}

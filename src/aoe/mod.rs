//! An ATA over Ethernet target (AoE revision 1, as vblade and Linux's `aoe` driver speak
//! it) for the userspace engine, so PCs can boot with iPXE's `sanboot aoe:eX.Y`. Wire
//! format (`wire`) apart from the ATA device (`ata`) and a target's answers (`target`);
//! answers are built in a `frame` buffer; raw frames come and go through `socket`, and `crate::service::aoe` ties targets to the
//! PCs' slots.

pub mod ata;
pub mod frame;
pub mod socket;
pub mod target;
pub mod wire;

pub use target::{Port, Unit};

//! Layer 0: units and formats with no policy that every layer above may use: sizes, file
//! identity and durable writes, base64, log text, the run directory, sockets handed to the next process, this machine's boot, IQNs, portal and MAC
//! addresses, a disk's SCSI identity, the chunk map.

pub mod base64;
pub mod chunkmap;
pub mod diskid;
pub mod durable;
pub mod fileid;
pub mod inherit;
pub mod iqn;
pub mod logtext;
pub mod machine;
pub mod netaddr;
pub mod rundir;
pub mod units;

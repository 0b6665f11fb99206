//! cowctl: serve many diskless PCs from one golden image, each through its own
//! copy-on-write file in the kernel's dm-snapshot persistent format.

pub mod aoe;
pub mod backend;
pub mod backing;
pub mod chunkmap;
pub mod cli;
pub mod control;
pub mod cow;
pub mod cowfile;
pub mod disk;
pub mod diskid;
pub mod dm;
pub mod doctor;
pub mod durable;
pub mod engine;
pub mod fileid;
pub mod filekind;
pub mod image;
pub mod iqn;
pub mod iscsi;
pub mod kernel;
pub mod logtext;
pub mod manifest;
pub mod nbd;
pub mod netaddr;
pub mod pxe;
pub mod reflink;
pub mod rundir;
pub mod secrets;
pub mod service;
pub mod supervise;
pub mod units;
pub mod web;

//! cowctl: serve many diskless PCs from one golden image, each through its own
//! copy-on-write file in the kernel's dm-snapshot persistent format.

pub mod aoe;
pub mod backend;
pub mod base;
pub mod cli;
pub mod control;
pub mod cow;
pub mod cowfile;
pub mod dm;
pub mod doctor;
pub mod engine;
pub mod image;
pub mod iscsi;
pub mod kernel;
pub mod manifest;
pub mod nbd;
pub mod pxe;
pub mod rbd;
pub mod rbdpc;
pub mod reflink;
pub mod room;
pub mod service;
pub mod web;

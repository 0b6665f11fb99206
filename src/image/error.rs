//! What the image store refuses and which file failed (`image::Error`); the copies a
//! new version's disk is built with fail as a `CopyError`. Each variant reads as the
//! sentence the admin sees, the cause (if any) as its `#[source]`.

use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;

use crate::cow::FormatError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot open golden image {}", path.display())]
    OpenGolden {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A read in the middle of a disk (hashing, fingerprinting).
    #[error("reading {}", path.display())]
    Reading {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot create {}", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot flush {}", path.display())]
    Flush {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot move {} aside", path.display())]
    MoveAside {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot remove {}", path.display())]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot move {} into place as {}", from.display(), to.display())]
    Publish {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A disk's size or mode could not be read or set.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// A record could not be turned into JSON.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error("{} is not a version record", path.display())]
    NotARecord {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{} is not a promotion record", path.display())]
    NotAPromotion {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{} is not a golden-image record", path.display())]
    NotAGolden {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{} names version {named}, but it lies in {}", record.display(), dir.display())]
    Misplaced {
        record: PathBuf,
        named: String,
        dir: PathBuf,
    },
    #[error("{} has no version {version} (it has {have})", store.display())]
    NoVersion {
        store: PathBuf,
        version: String,
        /// The versions it has, or "none".
        have: String,
    },
    #[error("{} already has a version {version} ({}): versions are never overwritten; choose another name with --version", store.display(), dir.display())]
    Taken {
        store: PathBuf,
        version: String,
        dir: PathBuf,
    },
    #[error("no image named {family:?} in {}", manifest.display())]
    NoImage { family: String, manifest: PathBuf },
    #[error("image {family} is one file (images.{family}.path: {}): give it `versions: DIR` in {} to keep versions", path.display(), manifest.display())]
    OneFile {
        family: String,
        path: PathBuf,
        manifest: PathBuf,
    },
    #[error("{pc}: image {family} is one file (images.{family}.path): give it `versions: DIR` to commit PCs into new versions")]
    CommitOneFile { pc: String, family: String },
    #[error("{pc}: image {family} is one snapshot in a Ceph pool (rbd: IMAGE@SNAPSHOT), not versions cowctl keeps; to commit PCs, name it rbd: NAME and import its first version with `cowctl image import FILE --image {family}`")]
    CommitRbd { pc: String, family: String },
    #[error(
        "image {family} keeps its versions in a Ceph pool, but the manifest has no ceph section"
    )]
    NoCeph { family: String },
    #[error("another cowctl is changing the versions of {family} ({holders}: an import, commit, promote or prune) and has not finished: try again when it has")]
    VersionsBusy { family: String, holders: String },
    #[error("the lease on {family}'s versions ran out before this change was written (the cluster did not answer its renewals in time): nothing more was written; run the command again")]
    VersionsLeaseLost { family: String },
    #[error("the version record {what} in the cluster is unreadable: {reason}")]
    RbdRecord { what: String, reason: String },
    #[error(transparent)]
    Rbd(#[from] crate::rbdpc::Error),
    #[error("{pc}'s disk is not a clone of a version of {family}: reset it onto one before committing it")]
    NotOnAVersion { pc: String, family: String },
    #[error(
        "version {version} was made current or promoted meanwhile (on another gateway?): it stays"
    )]
    PromotedMeanwhile { version: String },
    /// The PC's COW is over a version the store does not hold (`cow_problem`'s sentence).
    #[error("{problem}")]
    VersionGone { pc: String, problem: String },
    #[error("{reason}")]
    BadVersionName { reason: String },
    #[error("{pc}: its disk has no changes over {family}@{parent}: there is nothing to commit")]
    NothingToCommit {
        pc: String,
        family: String,
        parent: String,
    },
    #[error("{} is {size} bytes, not a whole number of sectors", disk.display())]
    NotSectors { disk: PathBuf, size: u64 },
    #[error("the new disk is {size} bytes but version {other} is {other_size}: every version of an image has one size, since PCs move between them under a live export")]
    SizeDiffers {
        size: u64,
        other: String,
        other_size: u64,
    },
    #[error("cannot load the COW {}", cow.display())]
    LoadCow {
        cow: PathBuf,
        #[source]
        source: FormatError,
    },
    #[error("{} is an invalid snapshot (it overflowed or was dropped): its disk cannot be read, so it cannot become a version", cow.display())]
    InvalidCow { cow: PathBuf },
    #[error("copying {} to {}", from.display(), to.display())]
    CopyParent {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: CopyError,
    },
    #[error("copying chunks {first}..{end} of {} into {}", cow.display(), out.display())]
    CopyChunks {
        first: u64,
        end: u64,
        cow: PathBuf,
        out: PathBuf,
        #[source]
        source: CopyError,
    },
    #[error("committing {pc}")]
    Commit {
        pc: String,
        #[source]
        source: Box<Error>,
    },
    #[error("cannot run qemu-img (Debian: apt-get install qemu-utils)")]
    NoQemuImg(#[source] io::Error),
    #[error("qemu-img cannot read {}: {stderr}", src.display())]
    QemuImgInfo { src: PathBuf, stderr: String },
    #[error("qemu-img info {} said no JSON", src.display())]
    QemuImgJson {
        src: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{} is a {format:?} image; cowctl imports {}", src.display(), imports.join(", "))]
    Format {
        src: PathBuf,
        format: String,
        /// The formats cowctl imports.
        imports: &'static [&'static str],
    },
    #[error("{} already exists", path.display())]
    Exists { path: PathBuf },
    #[error("cannot run qemu-img")]
    QemuImg(#[source] io::Error),
    #[error("qemu-img convert {} failed ({status})", src.display())]
    Convert { src: PathBuf, status: ExitStatus },
    /// A COW made over another image than the one it would be laid over.
    #[error(transparent)]
    OtherImage(Box<OtherImage>),
}

/// The COW `cow` of `pc` records another image than `image`.
#[derive(Debug, thiserror::Error)]
#[error("{pc}: COW {} was made against golden image {} ({recorded_size} bytes, fingerprint {}…), not {} ({size} bytes, fingerprint {}…); attaching it would show garbage. Reset the COW (cowctl reset {pc}) or point the PC at its own image",
    cow.display(), recorded_image.display(), short(recorded_fingerprint), image.display(), short(fingerprint))]
pub struct OtherImage {
    pub pc: String,
    pub cow: PathBuf,
    pub recorded_image: PathBuf,
    pub recorded_size: u64,
    pub recorded_fingerprint: String,
    pub image: PathBuf,
    pub size: u64,
    pub fingerprint: String,
}

impl Error {
    /// The sentence with its causes after it, joined by ": " (`logtext::chain`, as the
    /// CLI prints it), for a problem listed among others.
    pub fn with_causes(&self) -> String {
        crate::base::logtext::chain(self)
    }
}

/// A fingerprint's first 12 hex digits, as the admin is shown it.
fn short(fingerprint: &str) -> &str {
    fingerprint.get(..12).unwrap_or(fingerprint)
}

/// One copy of a byte range between two files failed.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Sys(#[from] nix::errno::Errno),
    /// An offset or length past what the system calls take.
    #[error(transparent)]
    Range(#[from] std::num::TryFromIntError),
    #[error("the source ended {left} bytes early")]
    SourceEnded { left: usize },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_read_as_before() {
        let e = Error::OtherImage(Box::new(OtherImage {
            pc: "pc-01".into(),
            cow: "/c/pc-01.cow".into(),
            recorded_image: "/g/a.img".into(),
            recorded_size: 512,
            recorded_fingerprint: "0123456789abcdef".into(),
            image: "/g/b.img".into(),
            size: 1024,
            fingerprint: "fedcba9876543210".into(),
        }));
        assert_eq!(
            e.to_string(),
            "pc-01: COW /c/pc-01.cow was made against golden image /g/a.img (512 bytes, \
             fingerprint 0123456789ab…), not /g/b.img (1024 bytes, fingerprint fedcba987654…); \
             attaching it would show garbage. Reset the COW (cowctl reset pc-01) or point the \
             PC at its own image"
        );
        let e = Error::Commit {
            pc: "pc-01".into(),
            source: Box::new(Error::CopyChunks {
                first: 3,
                end: 5,
                cow: "/c".into(),
                out: "/o".into(),
                source: CopyError::SourceEnded { left: 7 },
            }),
        };
        let chained =
            "committing pc-01: copying chunks 3..5 of /c into /o: the source ended 7 bytes early";
        assert_eq!(e.with_causes(), chained);
        assert_eq!(crate::base::logtext::chain(&e), chained);
    }
}

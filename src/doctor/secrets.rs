//! The manifest's secret files (CHAP masters, the admin token): there, private, and what
//! cowctl would accept, by the same rule serving reads them with (`secrets::read_private`).

use std::path::Path;

use super::{Area, Check};
use crate::manifest::secrets::{read_private, SecretError};
use crate::manifest::Manifest;

/// A command that writes a new random secret only its owner may read.
fn generate(path: &Path) -> String {
    format!(
        "(umask 077; head -c 18 /dev/urandom | base64 > {})",
        path.display()
    )
}

fn check(field: &str, path: &Path, what: &'static str, min: usize, max: usize) -> Check {
    let at = format!("{field} {}", path.display());
    match read_private(path, what, min, max) {
        Ok(_) => Check::ok(Area::Secret, format!("{at} is readable by its owner only")),
        Err(SecretError::Exposed { mode, .. }) => Check::fail(
            Area::Secret,
            format!("{at} is readable by others (mode {mode:04o})"),
            format!("chmod 600 {}", path.display()),
        ),
        Err(SecretError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Check::fail(Area::Secret, format!("{at} does not exist"), generate(path))
        }
        Err(SecretError::Read { source, .. }) => Check::fail(
            Area::Secret,
            format!("{at} cannot be read: {source}"),
            "run cowctl doctor as the user that serves the room",
        ),
        Err(e @ (SecretError::Length { .. } | SecretError::Characters { .. })) => {
            Check::fail(Area::Secret, e.to_string(), generate(path))
        }
    }
}

pub fn checks(m: &Manifest) -> Vec<Check> {
    let mut out = Vec::new();
    if let Some(chap) = m.iscsi.as_ref().and_then(|i| i.chap.as_ref()) {
        out.push(check(
            "iscsi.chap.secret_file",
            &chap.secret_file,
            "CHAP secret",
            12,
            255,
        ));
        if let Some(f) = &chap.mutual_secret_file {
            out.push(check(
                "iscsi.chap.mutual_secret_file",
                f,
                "mutual CHAP secret",
                12,
                255,
            ));
        }
    }
    if let Some(f) = m.http.as_ref().and_then(|h| h.token_file.as_ref()) {
        out.push(check("http.token_file", f, "admin token", 16, 4096));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::{testing::manifest, Status};
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn exposed_missing_short_and_private_secrets() {
        let d = tempfile::tempdir().unwrap();
        let secret = d.path().join("chap.secret");
        let mutual = d.path().join("mutual.secret");
        let token = d.path().join("token");
        std::fs::write(&secret, "a-long-enough-secret\n").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(&token, "short\n").unwrap();
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
        let m = manifest(
            d.path(),
            &format!(
                "images:\n  g:\n    path: /g.img\ndefaults:\n  image: g\n  cow_dir: /c\n  cow_size: 1GiB\n\
                 iscsi:\n  iqn_prefix: iqn.2024-01.lan.t\n  portals: [\"127.0.0.1:3260\"]\n  acl: open\n  chap:\n    username: room\n    secret_file: {}\n    mutual_secret_file: {}\n\
                 http:\n  token_file: {}\npcs:\n  - name: a\n    export: iscsi\n",
                secret.display(),
                mutual.display(),
                token.display()
            ),
        );
        let c = checks(&m);
        let s: Vec<String> = c.iter().map(|c| c.to_string()).collect();
        assert_eq!(c.len(), 3);
        assert!(c.iter().all(|c| c.status == Status::Fail), "{s:#?}");
        assert!(
            s[0].contains("is readable by others (mode 0644)"),
            "{}",
            s[0]
        );
        assert_eq!(
            c[0].fix.as_deref(),
            Some(format!("chmod 600 {}", secret.display()).as_str())
        );
        assert!(
            s[1].contains("does not exist") && s[1].contains("umask 077"),
            "{}",
            s[1]
        );
        assert!(s[2].contains("must be 16 to 4096 characters"), "{}", s[2]);
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(checks(&m)[0].status, Status::Ok);
        assert!(
            !s.iter().any(|l| l.contains("a-long-enough-secret")),
            "secrets are never printed"
        );
    }
}

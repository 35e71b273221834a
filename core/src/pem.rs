//! Light checks of PEM files named in configuration, so that a wrong path or
//! a swapped certificate and key is reported at start with the key that
//! names it, not as a handshake failure later. The TLS library parses the
//! files for real.

use std::path::Path;

/// What a PEM file must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PemKind {
    /// One or more certificates (a chain, or CA roots).
    Certificates,
    /// One private key (PKCS#8, PKCS#1 or SEC1).
    PrivateKey,
}

/// Reads `path` and checks that it holds `kind`. The error is one line
/// for a config message.
pub fn read(path: &Path, kind: PemKind) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    check(&bytes, kind).map_err(|m| format!("{}: {m}", path.display()))?;
    Ok(bytes)
}

/// Checks PEM text for the labels `kind` needs.
pub fn check(bytes: &[u8], kind: PemKind) -> Result<(), &'static str> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not a PEM file (not text)")?;
    let labels: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("-----BEGIN ")?.strip_suffix("-----"))
        .collect();
    let is_key = |l: &&str| l.ends_with("PRIVATE KEY");
    match kind {
        PemKind::Certificates if labels.contains(&"CERTIFICATE") => Ok(()),
        PemKind::Certificates if labels.iter().any(is_key) => {
            Err("holds a private key where certificates were expected")
        }
        PemKind::Certificates => Err("holds no PEM certificate"),
        PemKind::PrivateKey if labels.iter().any(is_key) => Ok(()),
        PemKind::PrivateKey if labels.contains(&"CERTIFICATE") => {
            Err("holds a certificate where a private key was expected")
        }
        PemKind::PrivateKey => Err("holds no PEM private key"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_decide() {
        let cert = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let key = b"-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n";
        let rsa = b"-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----\n";
        assert_eq!(check(cert, PemKind::Certificates), Ok(()));
        assert_eq!(check(key, PemKind::PrivateKey), Ok(()));
        assert_eq!(check(rsa, PemKind::PrivateKey), Ok(()));
        assert!(check(key, PemKind::Certificates)
            .unwrap_err()
            .contains("private key"));
        assert!(check(cert, PemKind::PrivateKey)
            .unwrap_err()
            .contains("certificate"));
        assert!(check(b"hello", PemKind::Certificates).is_err());
        assert!(check(&[0xff, 0xfe], PemKind::PrivateKey).is_err());
        let missing = read(Path::new("/nonexistent/x.pem"), PemKind::Certificates);
        assert!(missing.unwrap_err().contains("/nonexistent/x.pem"));
    }
}

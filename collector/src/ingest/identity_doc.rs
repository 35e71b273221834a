//! Checks an agent's AWS instance-identity document: the JSON document from
//! IMDS `dynamic/instance-identity/document`, signed by AWS (RSA PKCS#1
//! v1.5 with SHA-256, base64 in `.../signature`). With the AWS public
//! certificates for the regions in use (`[fleet] aws_identity_certs`), the
//! collector knows an agent's instance id, AMI and region were not made up
//! by whoever holds an agent token.

use base64::Engine as _;
use ring::signature::{UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256};
use serde::Deserialize;
use sonde_proto::v1::AgentIdentity;
use thiserror::Error;

/// Why a document was not accepted.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("no signed instance-identity document was sent")]
    Missing,
    #[error("the signature is not base64")]
    SignatureEncoding,
    #[error("the signature does not verify under any configured AWS certificate")]
    BadSignature,
    #[error("the document is not an instance-identity document")]
    Malformed,
    #[error("the document's {0} differs from the one the agent reports")]
    Mismatch(&'static str),
}

/// The configured public keys.
#[derive(Debug, Clone)]
pub struct Verifier {
    /// `RSAPublicKey` DER, one per certificate.
    keys: Vec<Vec<u8>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Document {
    instance_id: String,
    #[serde(default)]
    image_id: Option<String>,
    #[serde(default)]
    region: Option<String>,
}

impl Verifier {
    /// From PEM certificates (the AWS public certificates, RSA).
    pub fn from_pem(pem: &[u8]) -> Result<Verifier, String> {
        let mut keys = Vec::new();
        for item in rustls_pemfile::certs(&mut &pem[..]) {
            let der = item.map_err(|e| format!("not PEM: {e}"))?;
            let key = rsa_public_key(&der).ok_or(
                "a certificate without an RSA public key (AWS signs identity documents with RSA)",
            )?;
            keys.push(key.to_vec());
        }
        if keys.is_empty() {
            return Err("holds no PEM certificate".into());
        }
        Ok(Verifier { keys })
    }

    /// Checks the signature, then that the document names the instance,
    /// AMI and region the agent reports.
    pub fn verify(&self, identity: &AgentIdentity) -> Result<(), VerifyError> {
        let doc = identity.identity_document.as_bytes();
        if doc.is_empty() || identity.identity_signature.trim().is_empty() {
            return Err(VerifyError::Missing);
        }
        let sig: String = identity
            .identity_signature
            .chars()
            .filter(|c| !c.is_ascii_whitespace())
            .collect();
        let sig = base64::engine::general_purpose::STANDARD
            .decode(sig)
            .map_err(|_| VerifyError::SignatureEncoding)?;
        let signed = self.keys.iter().any(|k| {
            UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, k)
                .verify(doc, &sig)
                .is_ok()
        });
        if !signed {
            return Err(VerifyError::BadSignature);
        }
        let d: Document = serde_json::from_slice(doc).map_err(|_| VerifyError::Malformed)?;
        if d.instance_id != identity.instance_id {
            return Err(VerifyError::Mismatch("instanceId"));
        }
        let differs = |doc: &Option<String>, reported: &str| {
            doc.as_deref()
                .is_some_and(|v| !reported.is_empty() && v != reported)
        };
        if differs(&d.image_id, &identity.ami_id) {
            return Err(VerifyError::Mismatch("imageId"));
        }
        if differs(&d.region, &identity.region) {
            return Err(VerifyError::Mismatch("region"));
        }
        Ok(())
    }
}

/// One DER element: (tag, contents, rest).
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The `RSAPublicKey` inside an X.509 certificate (v1 or v3), for ring.
fn rsa_public_key(cert: &[u8]) -> Option<&[u8]> {
    const SEQUENCE: u8 = 0x30;
    const RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    let (SEQUENCE, cert, _) = der(cert)? else {
        return None;
    };
    let (SEQUENCE, mut tbs, _) = der(cert)? else {
        return None;
    };
    // [0] version (v3 only), serial, signature, issuer, validity, subject.
    if tbs.first() == Some(&0xa0) {
        tbs = der(tbs)?.2;
    }
    for _ in 0..5 {
        tbs = der(tbs)?.2;
    }
    let (SEQUENCE, spki, _) = der(tbs)? else {
        return None;
    };
    let (SEQUENCE, alg, rest) = der(spki)? else {
        return None;
    };
    let (0x06, oid, _) = der(alg)? else {
        return None;
    };
    if oid != RSA_ENCRYPTION {
        return None;
    }
    let (0x03, bits, _) = der(rest)? else {
        return None;
    };
    // The BIT STRING's first byte counts unused bits: 0 for a key.
    bits.split_first().filter(|(&u, _)| u == 0).map(|(_, k)| k)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// An RSA certificate and a signature over `doc`, made with openssl.
    fn signed(doc: &str) -> (Vec<u8>, String) {
        let dir = tempfile::tempdir().unwrap();
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .current_dir(dir.path())
                .args(args)
                .output()
                .expect("openssl");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            out.stdout
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "k.pem",
            "-out",
            "c.pem",
            "-days",
            "1",
            "-subj",
            "/CN=test identity",
        ]);
        std::fs::write(dir.path().join("doc"), doc).unwrap();
        let sig = run(&["dgst", "-sha256", "-sign", "k.pem", "doc"]);
        let cert = std::fs::read(dir.path().join("c.pem")).unwrap();
        (cert, base64::engine::general_purpose::STANDARD.encode(sig))
    }

    #[test]
    fn signed_documents_verify_and_forgeries_do_not() {
        let doc = r#"{"instanceId":"i-1","imageId":"ami-1","region":"eu-west-1"}"#;
        let (cert, sig) = signed(doc);
        let v = Verifier::from_pem(&cert).unwrap();
        let good = AgentIdentity {
            instance_id: "i-1".into(),
            ami_id: "ami-1".into(),
            region: "eu-west-1".into(),
            identity_document: doc.into(),
            // AWS wraps the base64 over lines.
            identity_signature: format!("{}\n{}", &sig[..40], &sig[40..]),
            ..Default::default()
        };
        assert_eq!(v.verify(&good), Ok(()));
        let other_instance = AgentIdentity {
            instance_id: "i-2".into(),
            ..good.clone()
        };
        assert_eq!(
            v.verify(&other_instance),
            Err(VerifyError::Mismatch("instanceId"))
        );
        let other_ami = AgentIdentity {
            ami_id: "ami-2".into(),
            ..good.clone()
        };
        assert_eq!(v.verify(&other_ami), Err(VerifyError::Mismatch("imageId")));
        let tampered = AgentIdentity {
            identity_document: doc.replace("i-1", "i-9"),
            instance_id: "i-9".into(),
            ..good.clone()
        };
        assert_eq!(v.verify(&tampered), Err(VerifyError::BadSignature));
        let unsigned = AgentIdentity {
            identity_signature: String::new(),
            ..good.clone()
        };
        assert_eq!(v.verify(&unsigned), Err(VerifyError::Missing));
        let garbage = AgentIdentity {
            identity_signature: "%%%".into(),
            ..good
        };
        assert_eq!(v.verify(&garbage), Err(VerifyError::SignatureEncoding));
        // Another key does not verify it.
        let (other_cert, _) = signed(doc);
        let v2 = Verifier::from_pem(&other_cert).unwrap();
        let good_again = AgentIdentity {
            instance_id: "i-1".into(),
            identity_document: doc.into(),
            identity_signature: sig,
            ..Default::default()
        };
        assert_eq!(v2.verify(&good_again), Err(VerifyError::BadSignature));
        assert!(Verifier::from_pem(b"nothing").is_err());
    }
}

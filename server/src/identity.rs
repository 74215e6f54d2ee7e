//! The server's TLS identity: a certificate chain and its private key.

use peergroup_protocol::Fingerprint;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};

/// A certificate chain (leaf first) and the leaf's private key.
#[derive(Debug)]
pub struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

/// The identity could not be loaded, made or saved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A PEM file held no certificate or no key, or could not be parsed.
    #[error("{path}: {detail}")]
    Pem {
        /// The file (or `<memory>`).
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// rcgen could not make a certificate.
    #[error("generating a certificate failed: {0}")]
    Generate(#[from] rcgen::Error),
}

pub use peergroup_transport::fingerprint_of;

impl Identity {
    /// Parses a PEM certificate chain (leaf first) and a PEM private key (PKCS#8, PKCS#1 or
    /// SEC1).
    ///
    /// # Errors
    /// [`IdentityError::Pem`] when either holds nothing usable.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, IdentityError> {
        Self::parse(
            cert_pem,
            key_pem,
            Path::new("<memory>"),
            Path::new("<memory>"),
        )
    }

    /// Reads [`Identity::from_pem`]'s inputs from files.
    ///
    /// # Errors
    /// [`IdentityError::Io`] or [`IdentityError::Pem`].
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, IdentityError> {
        let cert_pem = read(cert)?;
        let key_pem = read(key)?;
        Self::parse(&cert_pem, &key_pem, cert, key)
    }

    /// A fresh self-signed certificate (ECDSA P-256) for the given DNS names or addresses.
    ///
    /// # Errors
    /// [`IdentityError::Generate`].
    pub fn generate(names: &[&str]) -> Result<Self, IdentityError> {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let certified = rcgen::generate_simple_self_signed(names)?;
        Ok(Self {
            chain: vec![certified.cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into()),
        })
    }

    /// Loads `dir/cert.pem` and `dir/key.pem`, or, when neither exists, generates a
    /// self-signed identity for `peergroup`, `localhost`, `127.0.0.1` and `::1` and saves
    /// it there (the key readable by the owner only), so the fingerprint stays the same
    /// across restarts.
    ///
    /// # Errors
    /// [`IdentityError`] when the files cannot be read, parsed, made or written, or when
    /// only one of the two exists.
    pub fn load_or_generate(dir: &Path) -> Result<Self, IdentityError> {
        let cert_path = dir.join("cert.pem");
        let key_path = dir.join("key.pem");
        // Several processes may start on a fresh directory at once: one creates the
        // identity (the key appears first, atomically), the others wait for the
        // certificate and load it.
        const ATTEMPTS: u32 = 40;
        for attempt in 1..=ATTEMPTS {
            match (cert_path.exists(), key_path.exists()) {
                (true, true) => return Self::from_pem_files(&cert_path, &key_path),
                (false, false) => {
                    if let Some(identity) = Self::create(dir, &cert_path, &key_path)? {
                        return Ok(identity);
                    }
                }
                _ if attempt < ATTEMPTS => std::thread::sleep(std::time::Duration::from_millis(25)),
                _ => {}
            }
        }
        Err(IdentityError::Pem {
            path: dir.to_path_buf(),
            detail: "holds only one of cert.pem and key.pem".into(),
        })
    }

    /// Generates an identity into `dir`; `None` if another process created one first.
    fn create(
        dir: &Path,
        cert_path: &Path,
        key_path: &Path,
    ) -> Result<Option<Self>, IdentityError> {
        let certified = rcgen::generate_simple_self_signed(vec![
            "peergroup".to_string(),
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ])?;
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| IdentityError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let unique = format!(
            "{}.{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        );
        let (tmp_cert, tmp_key) = (
            dir.join(format!(".cert.pem.{unique}")),
            dir.join(format!(".key.pem.{unique}")),
        );
        let cleanup = || {
            let _ = std::fs::remove_file(&tmp_cert);
            let _ = std::fs::remove_file(&tmp_key);
        };
        std::fs::write(&tmp_cert, certified.cert.pem()).map_err(io(&tmp_cert))?;
        if let Err(error) =
            write_private(&tmp_key, certified.signing_key.serialize_pem().as_bytes())
        {
            cleanup();
            return Err(io(&tmp_key)(error));
        }
        // A hard link is created only if the name is free: exactly one process wins.
        match std::fs::hard_link(&tmp_key, key_path) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                cleanup();
                return Ok(None);
            }
            Err(error) => {
                cleanup();
                return Err(io(key_path)(error));
            }
        }
        let renamed = std::fs::rename(&tmp_cert, cert_path).map_err(io(cert_path));
        cleanup();
        renamed?;
        Self::from_pem_files(cert_path, key_path).map(Some)
    }

    /// SHA-256 of the leaf certificate: what clients pin.
    pub fn fingerprint(&self) -> Fingerprint {
        fingerprint_of(&self.chain[0])
    }

    /// The leaf certificate, DER.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.chain[0]
    }

    pub(crate) fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.chain.clone()
    }

    pub(crate) fn key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }

    fn parse(
        cert_pem: &[u8],
        key_pem: &[u8],
        cert_path: &Path,
        key_path: &Path,
    ) -> Result<Self, IdentityError> {
        let pem_error = |path: &Path, detail: String| IdentityError::Pem {
            path: path.to_path_buf(),
            detail,
        };
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_error(cert_path, e.to_string()))?;
        if chain.is_empty() {
            return Err(pem_error(cert_path, "no CERTIFICATE block".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| pem_error(key_path, format!("no usable private key: {e}")))?;
        Ok(Self { chain, key })
    }
}

fn read(path: &Path) -> Result<Vec<u8>, IdentityError> {
    std::fs::read(path).map_err(|source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_identity_persists_and_keeps_its_fingerprint() {
        let dir = std::env::temp_dir().join(format!("pg-identity-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = Identity::load_or_generate(&dir).unwrap();
        let second = Identity::load_or_generate(&dir).unwrap();
        assert_eq!(first.fingerprint(), second.fingerprint());
        let reparsed = Identity::from_pem(
            &std::fs::read(dir.join("cert.pem")).unwrap(),
            &std::fs::read(dir.join("key.pem")).unwrap(),
        )
        .unwrap();
        assert_eq!(reparsed.fingerprint(), first.fingerprint());
        std::fs::remove_file(dir.join("key.pem")).unwrap();
        assert!(matches!(
            Identity::load_or_generate(&dir),
            Err(IdentityError::Pem { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn processes_creating_one_identity_at_once_all_get_the_same_one() {
        let dir = std::env::temp_dir().join(format!("pg-identity-race-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let dir = dir.clone();
                std::thread::spawn(move || {
                    Identity::load_or_generate(&dir).map(|i| i.fingerprint())
                })
            })
            .collect();
        let fingerprints: Vec<Fingerprint> = threads
            .into_iter()
            .map(|t| t.join().unwrap().expect("every one loads"))
            .collect();
        assert!(
            fingerprints.windows(2).all(|w| w[0] == w[1]),
            "one identity"
        );
        let on_disk = Identity::load_or_generate(&dir).unwrap().fingerprint();
        assert_eq!(on_disk, fingerprints[0]);
        let leftovers = std::fs::read_dir(&dir).unwrap().count();
        assert_eq!(leftovers, 2, "no temporary files are left");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn pem_without_blocks_is_a_clear_error() {
        let err = Identity::from_pem(b"nothing here", b"nor here").unwrap_err();
        assert!(err.to_string().contains("no CERTIFICATE"), "{err}");
    }
}

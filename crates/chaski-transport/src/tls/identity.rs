//! A node's key pair and certificate, and the private files that hold keys.

use std::{
    fmt, fs,
    io::{self, Write as _},
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::Path,
    sync::Arc,
};

use chaski_wire::NodeId;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use zeroize::Zeroizing;

use super::{ANY_NODE, node_id_of_key};

/// The PEM label of the network's beacon key in an identity issued by a network CA.
const BEACON_KEY_LABEL: &str = "CHASKI NETWORK BEACON KEY";
/// The length of a beacon key.
pub(crate) const BEACON_KEY_LEN: usize = 32;

/// Why an identity, a network key or a CA could not be made, read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The key file could not be read or written.
    #[error("identity file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What failed.
        source: io::Error,
    },
    /// The key file can be read by others than its owner: the key would no longer be secret.
    #[error(
        "identity file {path} is readable by others (mode {mode:o}); make it private: chmod 600 {path}"
    )]
    Permissions {
        /// The file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// The key file does not hold an Ed25519 private key in PKCS#8 PEM form.
    #[error("identity file {path} does not hold an Ed25519 private key (PKCS#8 PEM)")]
    NotAKey {
        /// The file.
        path: String,
    },
    /// A certificate file does not hold a certificate, or not one Chaski can use.
    #[error("{path} does not hold a usable certificate: {reason}")]
    NotACertificate {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A network key too short to be a secret.
    #[error(
        "a network key must have at least {min} characters (this one has {len}); make one with `chaski network-key`"
    )]
    WeakNetworkKey {
        /// Its length.
        len: usize,
        /// The minimum.
        min: usize,
    },
    /// A closed network's node needs an identity issued by the network's CA.
    #[error("the identity of node {node} is not issued by this network's CA: {reason}")]
    NotIssued {
        /// The node.
        node: NodeId,
        /// Why it cannot be used.
        reason: String,
    },
    /// The key or its certificate could not be made.
    #[error("cannot make the node's key or certificate: {0}")]
    Crypto(String),
}

/// A node's key pair, the certificate that carries it, and the id derived from it.
///
/// The certificate is self-signed (open networks), or issued by a network CA with
/// [`CertificateAuthority::issue`](super::CertificateAuthority::issue); in a network closed by a
/// shared key each node issues its own from the key when it starts.
///
/// `Debug` shows the id only: the private key never appears in logs or errors.
#[derive(Clone)]
pub struct Identity {
    pub(crate) node_id: NodeId,
    key: Arc<Zeroizing<Vec<u8>>>,
    pub(crate) cert: CertificateDer<'static>,
    /// With a CA-issued certificate: the network's beacon key, which the CA hands to every
    /// node it issues.
    pub(crate) beacon_key: Option<Arc<Zeroizing<Vec<u8>>>>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("node_id", &self.node_id)
            .field("issued", &self.is_issued())
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// A fresh identity (a new key pair from the operating system's randomness), with a
    /// self-signed certificate.
    pub fn generate() -> Result<Identity, IdentityError> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
            .map_err(|e| IdentityError::Crypto(e.to_string()))?;
        Identity::from_key_pair(&key)
    }

    /// The identity in `pem`, as [`to_pem`](Identity::to_pem) writes it: a PKCS#8 Ed25519
    /// private key, and for an identity issued by a network CA its certificate and the
    /// network's beacon key.
    pub fn from_pem(pem: &str) -> Result<Identity, IdentityError> {
        Identity::parse(pem, "(text)")
    }

    fn parse(pem: &str, path: &str) -> Result<Identity, IdentityError> {
        let not_a_key = || IdentityError::NotAKey {
            path: path.to_owned(),
        };
        let blocks = pem::parse_many(pem).map_err(|_| not_a_key())?;
        let key = blocks
            .iter()
            .find(|b| b.tag() == "PRIVATE KEY")
            .ok_or_else(not_a_key)?;
        let key = rcgen::KeyPair::try_from(key.contents()).map_err(|_| not_a_key())?;
        if !key.is_compatible(&rcgen::PKCS_ED25519) {
            return Err(not_a_key());
        }
        let mut identity = Identity::from_key_pair(&key)?;
        let cert = blocks.iter().find(|b| b.tag() == "CERTIFICATE");
        let beacon = blocks.iter().find(|b| b.tag() == BEACON_KEY_LABEL);
        match (cert, beacon) {
            (None, None) => Ok(identity),
            (Some(cert), Some(beacon)) if beacon.contents().len() == BEACON_KEY_LEN => {
                let cert = CertificateDer::from(cert.contents().to_vec());
                let proven = super::node_id_of_certificate(&cert).map_err(|e| {
                    IdentityError::NotACertificate {
                        path: path.to_owned(),
                        reason: e.to_string(),
                    }
                })?;
                if proven != identity.node_id {
                    return Err(IdentityError::NotACertificate {
                        path: path.to_owned(),
                        reason: "the certificate is for another key".to_owned(),
                    });
                }
                identity.cert = cert;
                identity.beacon_key = Some(Arc::new(Zeroizing::new(beacon.contents().to_vec())));
                Ok(identity)
            }
            _ => Err(IdentityError::NotACertificate {
                path: path.to_owned(),
                reason: format!("an issued identity holds a certificate and a {BEACON_KEY_LABEL}"),
            }),
        }
    }

    fn from_key_pair(key: &rcgen::KeyPair) -> Result<Identity, IdentityError> {
        let crypto = |e: rcgen::Error| IdentityError::Crypto(e.to_string());
        let node_id = node_id_of_key(key.public_key_raw());
        let params = rcgen::CertificateParams::new(vec![ANY_NODE.to_owned()]).map_err(crypto)?;
        let cert = params.self_signed(key).map_err(crypto)?;
        Ok(Identity {
            node_id,
            key: Arc::new(Zeroizing::new(key.serialize_der())),
            cert: cert.der().clone(),
            beacon_key: None,
        })
    }

    /// This identity with `cert` (issued for its key) and the network's beacon key.
    pub(crate) fn issued(&self, cert: CertificateDer<'static>, beacon_key: &[u8]) -> Identity {
        Identity {
            cert,
            beacon_key: Some(Arc::new(Zeroizing::new(beacon_key.to_vec()))),
            ..self.clone()
        }
    }

    /// The identity in PEM form: the private key, and for an issued identity its certificate
    /// and the network's beacon key. Secret: write it only to a private file.
    pub fn to_pem(&self) -> Zeroizing<String> {
        let mut blocks = vec![pem::Pem::new("PRIVATE KEY", self.key.as_slice().to_vec())];
        if let Some(beacon) = &self.beacon_key {
            blocks.push(pem::Pem::new("CERTIFICATE", self.cert.as_ref().to_vec()));
            blocks.push(pem::Pem::new(BEACON_KEY_LABEL, beacon.as_slice().to_vec()));
        }
        let text = Zeroizing::new(pem::encode_many(&blocks));
        for block in blocks {
            drop(Zeroizing::new(block.into_contents()));
        }
        text
    }

    /// Reads the identity in `path`, or makes a new one and writes it there (a new file, mode
    /// 0600) if there is none. Returns the identity and whether it was created. A file that
    /// others can read is refused ([`IdentityError::Permissions`]).
    pub fn load_or_create(path: &Path) -> Result<(Identity, bool), IdentityError> {
        match Identity::load(path) {
            Err(IdentityError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                let identity = Identity::generate()?;
                write_private(path, identity.to_pem().as_bytes())?;
                Ok((identity, true))
            }
            other => other.map(|identity| (identity, false)),
        }
    }

    /// Reads the identity in `path` (a private file, as [`load_or_create`] writes).
    ///
    /// [`load_or_create`]: Identity::load_or_create
    pub fn load(path: &Path) -> Result<Identity, IdentityError> {
        let pem = read_private(path)?;
        Identity::parse(&pem, &path.display().to_string())
    }

    /// Writes the identity to a new private file (mode 0600); an existing file is left alone
    /// and refused.
    pub fn write_new(&self, path: &Path) -> Result<(), IdentityError> {
        write_private(path, self.to_pem().as_bytes())
    }

    /// The node id this identity proves.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The certificate that carries the public key (DER): self-signed, or issued by a CA.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// Whether the certificate was issued by a network CA (with the network's beacon key).
    pub fn is_issued(&self) -> bool {
        self.beacon_key.is_some()
    }

    pub(crate) fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.as_slice().to_vec()))
    }

    /// The key pair, for signing a certificate for it.
    pub(crate) fn key_pair(&self) -> Result<rcgen::KeyPair, IdentityError> {
        rcgen::KeyPair::try_from(self.key.as_slice())
            .map_err(|e| IdentityError::Crypto(e.to_string()))
    }
}

/// Reads a private file (one that only its owner can read): a key.
pub(crate) fn read_private(path: &Path) -> Result<Zeroizing<String>, IdentityError> {
    let shown = path.display().to_string();
    let io = |source| IdentityError::Io {
        path: shown.clone(),
        source,
    };
    // The checks and the read are of one open file: it cannot be swapped in between.
    let mut file = fs::File::open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(IdentityError::Permissions { path: shown, mode });
    }
    // A file someone else owns could hold a key they know.
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(IdentityError::Io {
            path: shown,
            source: io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("owned by user {}, not by this user ({me})", meta.uid()),
            ),
        });
    }
    let mut text = Zeroizing::new(String::new());
    io::Read::read_to_string(&mut file, &mut text).map_err(io)?;
    Ok(text)
}

/// Writes `contents` to a new file that only its owner can read (mode 0600, never replacing
/// a file already there), and syncs it.
pub(crate) fn write_private(path: &Path, contents: &[u8]) -> Result<(), IdentityError> {
    write_new_file(path, contents, 0o600)
}

/// Writes `contents` to a new file with `mode`, never replacing one already there.
pub(crate) fn write_new_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), IdentityError> {
    let io = |source| IdentityError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    file.write_all(contents).map_err(io)?;
    file.sync_all().map_err(io)
}

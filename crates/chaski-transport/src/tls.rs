//! Who is who: node identities and mutually authenticated TLS 1.3.
//!
//! An [`Identity`] is an Ed25519 key pair; the node's [`NodeId`] is derived from its public key
//! ([`node_id_of_key`]: the first 16 bytes of its SHA-256), so an id cannot be claimed without
//! the key. A connection in [`Security::Tls`] runs TLS 1.3 (rustls, ring's primitives) before
//! anything else; each side presents a self-signed certificate for its node key (as libp2p-tls
//! does) and proves it holds the key in the handshake's `CertificateVerify`. The peer's id is
//! taken from the certificate it proved, never from a field it writes: a hello that names
//! another id is refused ([`HandshakeError::IdentityMismatch`]).
//!
//! A dial that expects a given node (`Endpoint::connect_expecting`) names it in the TLS server
//! name, and the verifier refuses any other certificate before this side has sent its own.
//!
//! What this does not do (yet): a closed network (a shared secret or a CA) and encrypted
//! datagrams. In open mode anyone may join, but nobody can read a connection's traffic, claim
//! another node's id on a connection, or alter what a connection carries.
//!
//! [`HandshakeError::IdentityMismatch`]: crate::HandshakeError::IdentityMismatch

use std::{
    fmt, fs,
    io::{self, Write as _},
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::Path,
    sync::Arc,
};

use chaski_wire::NodeId;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, ServerConfig,
    SignatureScheme,
    client::{
        Resumption,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime},
    server::danger::{ClientCertVerified, ClientCertVerifier},
};
use zeroize::Zeroizing;

/// The TLS server name of a dial that expects no particular node.
const ANY_NODE: &str = "chaski";

/// Why an identity could not be made, read or written.
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
    /// The key or its certificate could not be made.
    #[error("cannot make the node's key or certificate: {0}")]
    Crypto(String),
}

/// A node's key pair, the self-signed certificate that carries it, and the id derived from it.
///
/// `Debug` shows the id only: the private key never appears in logs or errors.
#[derive(Clone)]
pub struct Identity {
    node_id: NodeId,
    key: Arc<Zeroizing<Vec<u8>>>,
    cert: CertificateDer<'static>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// A fresh identity (a new key pair from the operating system's randomness).
    pub fn generate() -> Result<Identity, IdentityError> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
            .map_err(|e| IdentityError::Crypto(e.to_string()))?;
        Identity::from_key_pair(&key)
    }

    /// The identity whose private key is `pem` (PKCS#8, as [`to_pem`](Identity::to_pem) writes).
    pub fn from_pem(pem: &str) -> Result<Identity, IdentityError> {
        let not_a_key = || IdentityError::NotAKey {
            path: String::from("(text)"),
        };
        let key = rcgen::KeyPair::from_pem(pem).map_err(|_| not_a_key())?;
        if !key.is_compatible(&rcgen::PKCS_ED25519) {
            return Err(not_a_key());
        }
        Identity::from_key_pair(&key)
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
        })
    }

    /// The private key in PKCS#8 PEM form: secret, write it only to a private file.
    pub fn to_pem(&self) -> Zeroizing<String> {
        // Parsing back what `from_key_pair` serialised cannot fail.
        rcgen::KeyPair::try_from(self.key.as_slice())
            .map(|key| Zeroizing::new(key.serialize_pem()))
            .unwrap_or_default()
    }

    /// Reads the identity in `path`, or makes a new one and writes it there (a new file, mode
    /// 0600) if there is none. Returns the identity and whether it was created. A file that
    /// others can read is refused ([`IdentityError::Permissions`]).
    pub fn load_or_create(path: &Path) -> Result<(Identity, bool), IdentityError> {
        let shown = path.display().to_string();
        let io = |source| IdentityError::Io {
            path: shown.clone(),
            source,
        };
        match fs::metadata(path) {
            Ok(meta) => {
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(IdentityError::Permissions { path: shown, mode });
                }
                let pem = Zeroizing::new(fs::read_to_string(path).map_err(io)?);
                let identity =
                    Identity::from_pem(&pem).map_err(|_| IdentityError::NotAKey { path: shown })?;
                Ok((identity, false))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let identity = Identity::generate()?;
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(io)?;
                file.write_all(identity.to_pem().as_bytes()).map_err(io)?;
                file.sync_all().map_err(io)?;
                Ok((identity, true))
            }
            Err(e) => Err(io(e)),
        }
    }

    /// The node id this identity proves.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The self-signed certificate that carries the public key (DER).
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.as_slice().to_vec()))
    }
}

/// The node id of an Ed25519 public key (its 32 raw bytes): the first 16 bytes of the key's
/// SHA-256, big-endian.
pub fn node_id_of_key(public_key: &[u8]) -> NodeId {
    let digest = ring::digest::digest(&ring::digest::SHA256, public_key);
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest.as_ref()[..16]);
    NodeId::from_u128(u128::from_be_bytes(first))
}

/// The node id proven by a peer's certificate: that of its Ed25519 key. Any other kind of key
/// is refused.
pub fn node_id_of_certificate(cert: &CertificateDer<'_>) -> Result<NodeId, rustls::Error> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
    let spki = parsed.public_key();
    if spki.algorithm.algorithm != x509_parser::oid_registry::OID_SIG_ED25519 {
        return Err(rustls::Error::InvalidCertificate(CertificateError::Other(
            rustls::OtherError(Arc::new(NotANodeKey)),
        )));
    }
    Ok(node_id_of_key(&spki.subject_public_key.data))
}

/// The TLS server name that asks for `node` (or for any node).
pub(crate) fn server_name(node: Option<NodeId>) -> ServerName<'static> {
    let name = node.map_or_else(
        || ANY_NODE.to_owned(),
        |n| format!("n{:032x}.{ANY_NODE}", n.as_u128()),
    );
    // Both forms are valid DNS names.
    ServerName::try_from(name).unwrap_or_else(|_| ServerName::try_from(ANY_NODE).expect("valid"))
}

/// The node a server name asks for, if any.
fn expected_node(name: &ServerName<'_>) -> Option<NodeId> {
    let ServerName::DnsName(dns) = name else {
        return None;
    };
    let hex = dns.as_ref().strip_prefix('n')?.strip_suffix(".chaski")?;
    u128::from_str_radix(hex, 16).ok().map(NodeId::from_u128)
}

/// How a transport's connections are protected.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub enum Security {
    /// Plain TCP: anyone on the path reads and alters everything, anyone may claim any id. For
    /// benchmarks and fully trusted links only. The transport's default, as the transport
    /// alone has no identity to prove; a Chaski node (`chaski-streamer`) uses TLS unless told
    /// otherwise.
    #[default]
    InsecurePlaintext,
    /// TLS 1.3, both sides authenticated by their node keys.
    Tls(Arc<Tls>),
}

impl Security {
    /// TLS with `identity`.
    pub fn tls(identity: &Identity) -> Result<Security, IdentityError> {
        Ok(Security::Tls(Arc::new(Tls::new(identity)?)))
    }

    /// Whether connections are encrypted and authenticated.
    pub fn is_tls(&self) -> bool {
        matches!(self, Security::Tls(_))
    }
}

/// The TLS configurations of one identity, for dialing and accepting.
pub struct Tls {
    node_id: NodeId,
    connector: tokio_rustls::TlsConnector,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// TLS 1.3 only, no session resumption (each connection proves its certificate), peers
    /// verified by [`node_id_of_certificate`].
    pub fn new(identity: &Identity) -> Result<Tls, IdentityError> {
        let crypto = |e: rustls::Error| IdentityError::Crypto(e.to_string());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Arc::new(PeerVerifier {
            provider: provider.clone(),
        });
        let mut client = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(crypto)?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_client_auth_cert(vec![identity.cert.clone()], identity.private_key())
            .map_err(crypto)?;
        client.resumption = Resumption::disabled();
        let mut server = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(crypto)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![identity.cert.clone()], identity.private_key())
            .map_err(crypto)?;
        server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        server.send_tls13_tickets = 0;
        Ok(Tls {
            node_id: identity.node_id,
            connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
        })
    }

    /// The node id this side proves.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The connector, for running this identity's TLS over a stream of one's own (then
    /// [`Endpoint::establish`](crate::Endpoint::establish) it).
    pub fn connector(&self) -> &tokio_rustls::TlsConnector {
        &self.connector
    }

    /// The acceptor, as [`connector`](Tls::connector).
    pub fn acceptor(&self) -> &tokio_rustls::TlsAcceptor {
        &self.acceptor
    }
}

/// Accepts any well-formed certificate with an Ed25519 key whose possession the handshake
/// proves (with rustls' own signature check); the key is the node's identity. A dial that asks
/// for a node (in the server name) accepts only that node's key.
#[derive(Debug)]
struct PeerVerifier {
    provider: Arc<CryptoProvider>,
}

/// A certificate whose key is not an Ed25519 node key.
#[derive(Debug)]
struct NotANodeKey;

impl fmt::Display for NotANodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the certificate's key is not an Ed25519 node key")
    }
}

impl std::error::Error for NotANodeKey {}

#[derive(Debug)]
struct UnexpectedNode {
    expected: NodeId,
    found: NodeId,
}

impl fmt::Display for UnexpectedNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "expected node {}, found {}", self.expected, self.found)
    }
}

impl std::error::Error for UnexpectedNode {}

impl PeerVerifier {
    fn signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
}

/// TLS 1.2 is never negotiated (both configurations offer TLS 1.3 only).
fn no_tls12() -> Result<HandshakeSignatureValid, rustls::Error> {
    Err(rustls::Error::General(
        "TLS 1.2 signature: only TLS 1.3 is used".into(),
    ))
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let found = node_id_of_certificate(end_entity)?;
        if let Some(expected) = expected_node(server_name) {
            if found != expected {
                return Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                    rustls::OtherError(Arc::new(UnexpectedNode { expected, found })),
                )));
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        no_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

impl ClientCertVerifier for PeerVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        node_id_of_certificate(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        no_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// The node a failed TLS handshake found instead of the one expected, if that is why it failed.
pub(crate) fn unexpected_node(error: &rustls::Error) -> Option<(NodeId, NodeId)> {
    let rustls::Error::InvalidCertificate(CertificateError::Other(other)) = error else {
        return None;
    };
    let e = other.0.downcast_ref::<UnexpectedNode>()?;
    Some((e.expected, e.found))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_round_trips_through_pem_and_derives_its_id_from_its_key() {
        let a = Identity::generate().unwrap();
        let b = Identity::from_pem(&a.to_pem()).unwrap();
        assert_eq!(a.node_id(), b.node_id());
        assert_eq!(
            node_id_of_certificate(a.certificate()).unwrap(),
            a.node_id()
        );
        assert_ne!(a.node_id(), Identity::generate().unwrap().node_id());
        assert!(!format!("{a:?}").contains("PRIVATE"), "{a:?}");
    }

    #[test]
    fn server_names_carry_the_node_expected() {
        let id = NodeId::from_u128(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
        assert_eq!(expected_node(&server_name(Some(id))), Some(id));
        assert_eq!(expected_node(&server_name(None)), None);
    }
}

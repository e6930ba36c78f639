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
//! An **open** network ([`Tls::new`]) accepts anyone who proves a key: nobody can read a
//! connection's traffic, claim another node's id on a connection, or alter what a connection
//! carries, but anyone may join. A **closed** network ([`Tls::closed`], [`Network`]) accepts
//! only peers whose certificate the network's CA signed: a CA derived from a shared
//! [`NetworkKey`], or a [`CertificateAuthority`] of the organisation's. A refused certificate
//! is a distinct [`HandshakeError`] on each side (the refusing side knows why; the refused
//! side learns it from the TLS alert).
//!
//! [`HandshakeError`]: crate::HandshakeError
//!
//! [`HandshakeError::IdentityMismatch`]: crate::HandshakeError::IdentityMismatch

mod identity;
mod network;

use std::{fmt, sync::Arc};

use chaski_wire::NodeId;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, ServerConfig,
    SignatureScheme,
    client::{
        Resumption,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime},
    server::danger::{ClientCertVerified, ClientCertVerifier},
};

pub use self::{
    identity::{Identity, IdentityError},
    network::{
        CertificateAuthority, DEFAULT_CERTIFICATE_VALIDITY, MIN_NETWORK_KEY_LEN, Network,
        NetworkKey, NetworkKind, NetworkTag,
    },
};

/// The TLS server name of a dial that expects no particular node.
const ANY_NODE: &str = "chaski";

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
        return Err(refusal(Refusal::NotANodeKey));
    }
    Ok(node_id_of_key(&spki.subject_public_key.data))
}

/// When a certificate stops being valid.
pub(crate) fn not_after(cert: &CertificateDer<'_>) -> Option<std::time::SystemTime> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let secs = u64::try_from(parsed.validity().not_after.timestamp()).ok()?;
    std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(secs))
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

    /// TLS with `identity` in the closed `network` ([`Tls::closed`]).
    pub fn closed(identity: &Identity, network: &Network) -> Result<Security, IdentityError> {
        Ok(Security::Tls(Arc::new(Tls::closed(identity, network)?)))
    }

    /// Whether connections are encrypted and authenticated.
    pub fn is_tls(&self) -> bool {
        matches!(self, Security::Tls(_))
    }
}

/// The TLS configurations of one identity, for dialing and accepting.
pub struct Tls {
    node_id: NodeId,
    network: Option<NetworkKind>,
    tag: Option<NetworkTag>,
    connector: tokio_rustls::TlsConnector,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("node_id", &self.node_id)
            .field("network", &self.network)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// An open network: TLS 1.3 only, no session resumption (each connection proves its
    /// certificate), any peer that proves a node key accepted ([`node_id_of_certificate`]).
    pub fn new(identity: &Identity) -> Result<Tls, IdentityError> {
        Tls::build(identity, None)
    }

    /// A closed network: as [`Tls::new`], and only peers whose certificate `network`'s CA
    /// signed (and that its deny list does not name) are accepted. With a network key the
    /// node's certificate is issued from the key now; with a CA `identity` must be one the CA
    /// issued ([`CertificateAuthority::issue`]), valid now.
    pub fn closed(identity: &Identity, network: &Network) -> Result<Tls, IdentityError> {
        let member = network.member_identity(identity)?;
        let check = Arc::new(MemberCheck::new(network)?);
        // The node's own certificate must pass the check its peers will make.
        check
            .verify(member.certificate(), UnixTime::now())
            .map_err(|e| IdentityError::NotIssued {
                node: identity.node_id(),
                reason: e.to_string(),
            })?;
        let mut tls = Tls::build(&member, Some(check))?;
        tls.network = Some(network.kind());
        tls.tag = network.beacon_tag(&member);
        Ok(tls)
    }

    fn build(identity: &Identity, members: Option<Arc<MemberCheck>>) -> Result<Tls, IdentityError> {
        let crypto = |e: rustls::Error| IdentityError::Crypto(e.to_string());
        let provider = Arc::new(provider());
        let verifier = Arc::new(PeerVerifier {
            provider: provider.clone(),
            members,
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
            network: None,
            tag: None,
            connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
        })
    }

    /// The node id this side proves.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// How the network is closed, or `None` for an open network.
    pub fn network(&self) -> Option<NetworkKind> {
        self.network
    }

    /// The key that tags and checks beacons, in a closed network.
    pub fn network_tag(&self) -> Option<&NetworkTag> {
        self.tag.as_ref()
    }

    /// The connector, for running this identity's TLS over a stream of one's own (a test's
    /// raw peer, say). [`Endpoint::establish`](crate::Endpoint::establish) over such a stream
    /// does not bind the hello to the certificate: check
    /// [`node_id_of_certificate`] of the peer's certificate yourself.
    pub fn connector(&self) -> &tokio_rustls::TlsConnector {
        &self.connector
    }

    /// The acceptor, as [`connector`](Tls::connector).
    pub fn acceptor(&self) -> &tokio_rustls::TlsAcceptor {
        &self.acceptor
    }
}

/// ring's provider, with AES-128-GCM first among the TLS 1.3 suites: as secure for this use as
/// AES-256 (a 128-bit key), and about a third cheaper per byte, which large messages feel
/// (`cargo xtask bench node`, 64 KiB over TLS).
fn provider() -> CryptoProvider {
    use rustls::crypto::ring::cipher_suite as suite;
    CryptoProvider {
        cipher_suites: vec![
            suite::TLS13_AES_128_GCM_SHA256,
            suite::TLS13_AES_256_GCM_SHA384,
            suite::TLS13_CHACHA20_POLY1305_SHA256,
        ],
        ..rustls::crypto::ring::default_provider()
    }
}

/// A closed network's check of a peer's certificate: signed by the network's CA (with
/// webpki, as rustls does for the web), valid now, and not denied.
struct MemberCheck {
    webpki: Arc<rustls::client::WebPkiServerVerifier>,
    deny: Arc<std::collections::HashSet<NodeId>>,
}

impl fmt::Debug for MemberCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemberCheck")
            .field("denied", &self.deny.len())
            .finish_non_exhaustive()
    }
}

impl MemberCheck {
    fn new(network: &Network) -> Result<MemberCheck, IdentityError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
            network.roots.clone(),
            provider,
        )
        .build()
        .map_err(|e| IdentityError::Crypto(e.to_string()))?;
        Ok(MemberCheck {
            webpki,
            deny: network.deny.clone(),
        })
    }

    /// Checks `cert` (one certificate: members' certificates are issued by the CA itself) and
    /// returns the node id it proves. Issued certificates name the host `chaski` and serve
    /// both ends of a connection.
    fn verify(&self, cert: &CertificateDer<'_>, now: UnixTime) -> Result<NodeId, rustls::Error> {
        let node = node_id_of_certificate(cert)?;
        let any =
            ServerName::try_from(ANY_NODE).map_err(|_| rustls::Error::General("name".into()))?;
        match self.webpki.verify_server_cert(cert, &[], &any, &[], now) {
            Ok(_) => {}
            Err(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer))
                if is_self_signed(cert) =>
            {
                return Err(refusal(Refusal::SelfSigned));
            }
            Err(e) => return Err(e),
        }
        if self.deny.contains(&node) {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
        Ok(node)
    }
}

/// Whether a certificate names itself as its issuer.
fn is_self_signed(cert: &CertificateDer<'_>) -> bool {
    x509_parser::parse_x509_certificate(cert.as_ref()).is_ok_and(|(_, parsed)| {
        parsed.tbs_certificate.issuer.as_raw() == parsed.tbs_certificate.subject.as_raw()
    })
}

/// Verifies a peer's certificate: an Ed25519 key whose possession the handshake proves (with
/// rustls' own signature check) is the node's identity; in a closed network the certificate
/// must also pass the [`MemberCheck`]. A dial that asks for a node (in the server name)
/// accepts only that node's key.
#[derive(Debug)]
struct PeerVerifier {
    provider: Arc<CryptoProvider>,
    members: Option<Arc<MemberCheck>>,
}

/// Why a certificate was refused, beyond rustls' own reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The key is not an Ed25519 node key.
    NotANodeKey,
    /// A self-signed certificate in a closed network: the peer has no credentials.
    SelfSigned,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::NotANodeKey => "the certificate's key is not an Ed25519 node key",
            Refusal::SelfSigned => "a self-signed certificate: the peer has no network credentials",
        })
    }
}

impl std::error::Error for Refusal {}

fn refusal(why: Refusal) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(why))))
}

/// The refusal behind a TLS error, if it is one of ours.
pub(crate) fn refusal_of(error: &rustls::Error) -> Option<Refusal> {
    let rustls::Error::InvalidCertificate(CertificateError::Other(other)) = error else {
        return None;
    };
    other.0.downcast_ref::<Refusal>().copied()
}

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

    /// The node id `end_entity` proves, if it may join.
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        now: UnixTime,
    ) -> Result<NodeId, rustls::Error> {
        match &self.members {
            Some(members) => members.verify(end_entity, now),
            None => node_id_of_certificate(end_entity),
        }
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
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let found = self.check(end_entity, now)?;
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
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity, now)?;
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
    fn a_key_file_owned_by_another_user_is_refused() {
        // Needs root (as CI and the namespace tests do): to give the file away.
        /// Removes the file also when the test fails.
        struct Removed(std::path::PathBuf);
        impl Drop for Removed {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
        let file =
            Removed(std::env::temp_dir().join(format!("chaski-owner-{}.key", std::process::id())));
        let path = &file.0;
        let _ = std::fs::remove_file(path);
        Identity::generate().unwrap().write_new(path).unwrap();
        assert!(Identity::load(path).is_ok());
        std::os::unix::fs::chown(path, Some(65534), None).expect("chown (run as root)");
        match Identity::load(path) {
            Err(IdentityError::Io { source, .. }) => {
                assert_eq!(
                    source.kind(),
                    std::io::ErrorKind::PermissionDenied,
                    "{source}"
                );
            }
            other => panic!("loaded a key file another user owns: {other:?}"),
        }
    }

    #[test]
    fn server_names_carry_the_node_expected() {
        let id = NodeId::from_u128(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
        assert_eq!(expected_node(&server_name(Some(id))), Some(id));
        assert_eq!(expected_node(&server_name(None)), None);
    }
}

//! Closed networks: who is a member. Either a shared **network key** (a secret a small team
//! shares) or a **network CA** (an organisation's certificate authority).
//!
//! Both come down to one check at the handshake: the peer's certificate must be signed by the
//! network's CA. With a network key, the CA's key pair is derived from the secret (HKDF-SHA256,
//! then an Ed25519 key from the derived seed), so every holder of the secret can issue its own
//! certificate when it starts and nobody else can make one. With a network CA, `chaski ca init`
//! makes the CA and `chaski ca issue` signs node identities; nodes hold only the CA's
//! certificate.
//!
//! Beacons (LAN discovery) carry an HMAC-SHA256 tag under the network's **beacon key**: derived
//! from the secret with a network key; with a CA derived from the CA's private key and handed
//! to each node in its issued identity.

use std::{collections::HashSet, fmt, path::Path, sync::Arc, time::Duration};

use chaski_wire::NodeId;
use ring::{hkdf, hmac};
use rustls::{RootCertStore, pki_types::CertificateDer};
use zeroize::Zeroizing;

use super::identity::{BEACON_KEY_LEN, read_private, write_new_file, write_private};
use super::{ANY_NODE, Identity, IdentityError};

/// The shortest network key accepted, in characters.
pub const MIN_NETWORK_KEY_LEN: usize = 16;
/// How long a certificate issued by `chaski ca issue` is valid unless told otherwise.
pub const DEFAULT_CERTIFICATE_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// How far back an issued certificate's validity starts, for clocks a little behind.
const CLOCK_SKEW: Duration = Duration::from_secs(3600);

/// The salt of every key derived from a network secret.
const KEY_SALT: &[u8] = b"chaski network key v1";
/// The salt of the beacon key derived from a CA's private key.
const CA_SALT: &[u8] = b"chaski network ca v1";

/// A shared network secret. `Debug` does not show it.
#[derive(Clone)]
pub struct NetworkKey(Zeroizing<String>);

impl fmt::Debug for NetworkKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NetworkKey(..)")
    }
}

impl NetworkKey {
    /// A new random key: 32 bytes from the operating system, as 64 hex digits.
    pub fn generate() -> Result<NetworkKey, IdentityError> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), bytes.as_mut())
            .map_err(|_| IdentityError::Crypto("no randomness".into()))?;
        let mut text = Zeroizing::new(String::with_capacity(64));
        for b in bytes.iter() {
            text.push_str(&format!("{b:02x}"));
        }
        Ok(NetworkKey(text))
    }

    /// A key given as text (surrounding white space is ignored); at least
    /// [`MIN_NETWORK_KEY_LEN`] characters.
    pub fn from_text(text: &str) -> Result<NetworkKey, IdentityError> {
        let text = text.trim();
        let len = text.chars().count();
        if len < MIN_NETWORK_KEY_LEN {
            return Err(IdentityError::WeakNetworkKey {
                len,
                min: MIN_NETWORK_KEY_LEN,
            });
        }
        Ok(NetworkKey(Zeroizing::new(text.to_owned())))
    }

    /// Reads a key file (private: mode 0600 or stricter).
    pub fn load(path: &Path) -> Result<NetworkKey, IdentityError> {
        NetworkKey::from_text(&read_private(path)?)
    }

    /// Writes the key to a new private file (mode 0600).
    pub fn write_new(&self, path: &Path) -> Result<(), IdentityError> {
        let mut text = Zeroizing::new(String::with_capacity(self.0.len() + 1));
        text.push_str(&self.0);
        text.push('\n');
        write_private(path, text.as_bytes())
    }

    /// The key's text: secret.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The key stretched for derivation: PBKDF2-HMAC-SHA256, [`KEY_STRETCH`] rounds. A
    /// certificate or a beacon lets an outsider test guesses at the key offline; stretching
    /// makes each guess cost as much as a node's start does, for keys a person chose.
    fn stretched(&self) -> Zeroizing<[u8; 32]> {
        let mut out = Zeroizing::new([0u8; 32]);
        ring::pbkdf2::derive(
            ring::pbkdf2::PBKDF2_HMAC_SHA256,
            KEY_STRETCH,
            KEY_SALT,
            self.0.as_bytes(),
            out.as_mut(),
        );
        out
    }
}

/// PBKDF2 rounds of a network key (about 0.1 s on one core of a 2020s server).
const KEY_STRETCH: std::num::NonZeroU32 = match std::num::NonZeroU32::new(200_000) {
    Some(n) => n,
    None => panic!("nonzero"),
};

/// 32 bytes derived by HKDF-SHA256 from `secret` for `purpose`.
fn derive(salt: &[u8], secret: &[u8], purpose: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut out = Zeroizing::new([0u8; 32]);
    let info = [purpose];
    // 32 bytes is the length of HKDF_SHA256's output: neither step can fail.
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(secret);
    if let Ok(okm) = prk.expand(&info, hkdf::HKDF_SHA256) {
        let _ = okm.fill(out.as_mut());
    }
    out
}

/// The PKCS#8 (RFC 8410) encoding of the Ed25519 private key with `seed`.
fn ed25519_pkcs8(seed: &[u8; 32]) -> Zeroizing<Vec<u8>> {
    const PREFIX: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    let mut der = Zeroizing::new(Vec::with_capacity(48));
    der.extend_from_slice(&PREFIX);
    der.extend_from_slice(seed);
    der
}

/// A beacon authentication key: beacons are tagged and checked with HMAC-SHA256 under it.
/// `Debug` does not show it.
#[derive(Clone)]
pub struct NetworkTag(hmac::Key);

impl fmt::Debug for NetworkTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NetworkTag(..)")
    }
}

impl NetworkTag {
    fn new(key: &[u8]) -> NetworkTag {
        NetworkTag(hmac::Key::new(hmac::HMAC_SHA256, key))
    }

    /// The tag of `data`.
    pub(crate) fn sign(&self, data: &[u8]) -> hmac::Tag {
        hmac::sign(&self.0, data)
    }

    /// Whether `tag` is `data`'s (in constant time).
    pub(crate) fn verify(&self, data: &[u8], tag: &[u8]) -> bool {
        hmac::verify(&self.0, data, tag).is_ok()
    }
}

/// How a closed network decides who is a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NetworkKind {
    /// A shared secret.
    Key,
    /// A certificate authority.
    Ca,
}

/// A network's certificate authority: its key pair and self-signed CA certificate.
///
/// `Debug` shows its name only.
pub struct CertificateAuthority {
    name: String,
    key: Zeroizing<Vec<u8>>,
    cert: CertificateDer<'static>,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

fn crypto(e: rcgen::Error) -> IdentityError {
    IdentityError::Crypto(e.to_string())
}

/// The parameters of a CA certificate named `name`.
fn ca_params(name: &str) -> Result<rcgen::CertificateParams, IdentityError> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(crypto)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

impl CertificateAuthority {
    /// A new CA named `name` (a fresh Ed25519 key pair).
    pub fn generate(name: &str) -> Result<CertificateAuthority, IdentityError> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).map_err(crypto)?;
        CertificateAuthority::with_key(name, &key)
    }

    fn with_key(name: &str, key: &rcgen::KeyPair) -> Result<CertificateAuthority, IdentityError> {
        let cert = ca_params(name)?.self_signed(key).map_err(crypto)?;
        Ok(CertificateAuthority {
            name: name.to_owned(),
            key: Zeroizing::new(key.serialize_der()),
            cert: cert.der().clone(),
        })
    }

    /// The CA a network key stands for.
    fn of_network_key(stretched: &[u8; 32]) -> Result<CertificateAuthority, IdentityError> {
        let seed = derive(KEY_SALT, stretched, b"ca ed25519 seed");
        let pkcs8 = ed25519_pkcs8(&seed);
        let pair = rcgen::KeyPair::try_from(pkcs8.as_slice()).map_err(crypto)?;
        let digest = ring::digest::digest(&ring::digest::SHA256, pair.public_key_raw());
        let name = format!("chaski network {}", hex(&digest.as_ref()[..8]));
        CertificateAuthority::with_key(&name, &pair)
    }

    /// Reads a CA from its key file (private) and certificate file, as [`write_new`] writes
    /// them.
    ///
    /// [`write_new`]: CertificateAuthority::write_new
    pub fn load(key_path: &Path, cert_path: &Path) -> Result<CertificateAuthority, IdentityError> {
        let shown = key_path.display().to_string();
        let pem = read_private(key_path)?;
        let key = rcgen::KeyPair::from_pem(&pem)
            .ok()
            .filter(|k| k.is_compatible(&rcgen::PKCS_ED25519))
            .ok_or(IdentityError::NotAKey { path: shown })?;
        let cert = read_certificate(cert_path)?;
        let (name, public_key) =
            ca_subject(&cert).map_err(|reason| IdentityError::NotACertificate {
                path: cert_path.display().to_string(),
                reason,
            })?;
        if public_key != key.public_key_raw() {
            return Err(IdentityError::NotACertificate {
                path: cert_path.display().to_string(),
                reason: format!(
                    "it is not the certificate of the key in {}",
                    key_path.display()
                ),
            });
        }
        Ok(CertificateAuthority {
            name,
            key: Zeroizing::new(key.serialize_der()),
            cert,
        })
    }

    /// Writes the CA's key to a new private file (mode 0600) and its certificate to a new
    /// file (mode 0644: it is public, every node needs it). Existing files are refused.
    pub fn write_new(&self, key_path: &Path, cert_path: &Path) -> Result<(), IdentityError> {
        let pair = rcgen::KeyPair::try_from(self.key.as_slice()).map_err(crypto)?;
        write_private(key_path, Zeroizing::new(pair.serialize_pem()).as_bytes())?;
        write_new_file(cert_path, self.certificate_pem().as_bytes(), 0o644)
    }

    /// The CA's name (its certificate's common name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The CA certificate (DER).
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The CA certificate in PEM form.
    pub fn certificate_pem(&self) -> String {
        pem::encode(&pem::Pem::new("CERTIFICATE", self.cert.as_ref().to_vec()))
    }

    /// The network's beacon key, the same for every identity this CA issues.
    fn beacon_key(&self) -> Zeroizing<[u8; 32]> {
        derive(CA_SALT, &self.key, b"beacon hmac-sha256")
    }

    /// Issues `identity` a certificate valid from now (less an hour, for clocks a little
    /// behind) for `valid_for`, named `name`; the identity returned carries it and the
    /// network's beacon key.
    pub fn issue(
        &self,
        identity: &Identity,
        name: &str,
        valid_for: Duration,
    ) -> Result<Identity, IdentityError> {
        let now = std::time::SystemTime::now();
        self.issue_between(identity, name, now - CLOCK_SKEW, now + valid_for)
    }

    /// As [`issue`](CertificateAuthority::issue), valid between the two instants given (for
    /// tests of expired certificates, say).
    pub fn issue_between(
        &self,
        identity: &Identity,
        name: &str,
        not_before: std::time::SystemTime,
        not_after: std::time::SystemTime,
    ) -> Result<Identity, IdentityError> {
        let ca_key = rcgen::KeyPair::try_from(self.key.as_slice()).map_err(crypto)?;
        let issuer = rcgen::Issuer::new(ca_params(&self.name)?, &ca_key);
        let mut params =
            rcgen::CertificateParams::new(vec![ANY_NODE.to_owned()]).map_err(crypto)?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = time::OffsetDateTime::from(not_before);
        params.not_after = time::OffsetDateTime::from(not_after);
        let leaf = identity.key_pair()?;
        let cert = params.signed_by(&leaf, &issuer).map_err(crypto)?;
        Ok(identity.issued(cert.der().clone(), self.beacon_key().as_ref()))
    }
}

/// Reads a certificate file (PEM).
pub(crate) fn read_certificate(path: &Path) -> Result<CertificateDer<'static>, IdentityError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| IdentityError::Io {
        path: shown.clone(),
        source,
    })?;
    certificate_from_pem(&text).map_err(|reason| IdentityError::NotACertificate {
        path: shown,
        reason,
    })
}

fn certificate_from_pem(text: &str) -> Result<CertificateDer<'static>, String> {
    let block = pem::parse(text).map_err(|e| e.to_string())?;
    if block.tag() != "CERTIFICATE" {
        return Err(format!("a {} block, not a CERTIFICATE", block.tag()));
    }
    Ok(CertificateDer::from(block.into_contents()))
}

/// A CA certificate's common name and raw Ed25519 public key.
fn ca_subject(cert: &CertificateDer<'_>) -> Result<(String, Vec<u8>), String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|_| "not a valid X.509 certificate".to_owned())?;
    if !parsed.is_ca() {
        return Err("not a CA certificate".to_owned());
    }
    let name = parsed
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or("the certificate has no common name")?
        .to_owned();
    Ok((name, parsed.public_key().subject_public_key.data.to_vec()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A closed network: the CA whose certificates make members, the beacon key (with a network
/// key; with a CA each node's issued identity brings it) and the node ids refused even with a
/// valid certificate.
#[derive(Clone)]
pub struct Network {
    pub(crate) kind: NetworkKind,
    pub(crate) roots: Arc<RootCertStore>,
    /// The network key's CA, with which each node issues its own certificate.
    pub(crate) own_ca: Option<Arc<CertificateAuthority>>,
    pub(crate) beacon_key: Option<Zeroizing<[u8; BEACON_KEY_LEN]>>,
    pub(crate) deny: Arc<HashSet<NodeId>>,
    label: String,
}

impl fmt::Debug for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Network")
            .field("kind", &self.kind)
            .field("ca", &self.label)
            .field("denied", &self.deny.len())
            .finish_non_exhaustive()
    }
}

impl Network {
    /// The network of everyone who holds `key`.
    pub fn from_key(key: &NetworkKey) -> Result<Network, IdentityError> {
        let stretched = key.stretched();
        let ca = CertificateAuthority::of_network_key(&stretched)?;
        let beacon_key = derive(KEY_SALT, stretched.as_ref(), b"beacon hmac-sha256");
        let mut network = Network::trusting(NetworkKind::Key, ca.certificate().clone(), ca.name())?;
        network.beacon_key = Some(beacon_key);
        network.own_ca = Some(Arc::new(ca));
        Ok(network)
    }

    /// The network of the nodes the CA with certificate `ca` (DER) issued.
    pub fn from_ca(ca: CertificateDer<'static>) -> Result<Network, IdentityError> {
        let (name, _) = ca_subject(&ca).map_err(|reason| IdentityError::NotACertificate {
            path: "(CA certificate)".to_owned(),
            reason,
        })?;
        Network::trusting(NetworkKind::Ca, ca, &name)
    }

    /// As [`from_ca`](Network::from_ca), the certificate read from a PEM file.
    pub fn load_ca(path: &Path) -> Result<Network, IdentityError> {
        let cert = read_certificate(path)?;
        Network::from_ca(cert).map_err(|e| match e {
            IdentityError::NotACertificate { reason, .. } => IdentityError::NotACertificate {
                path: path.display().to_string(),
                reason,
            },
            other => other,
        })
    }

    fn trusting(
        kind: NetworkKind,
        ca: CertificateDer<'static>,
        name: &str,
    ) -> Result<Network, IdentityError> {
        let mut roots = RootCertStore::empty();
        roots.add(ca).map_err(|e| IdentityError::NotACertificate {
            path: "(CA certificate)".to_owned(),
            reason: e.to_string(),
        })?;
        Ok(Network {
            kind,
            roots: Arc::new(roots),
            own_ca: None,
            beacon_key: None,
            deny: Arc::new(HashSet::new()),
            label: name.to_owned(),
        })
    }

    /// Refuses these nodes even with a valid certificate (a deny list: revoked members).
    pub fn deny(mut self, nodes: impl IntoIterator<Item = NodeId>) -> Network {
        Arc::make_mut(&mut self.deny).extend(nodes);
        self
    }

    /// How membership is decided.
    pub fn kind(&self) -> NetworkKind {
        self.kind
    }

    /// The name of the network's CA (with a network key, derived from it: two networks with
    /// the same name have the same key).
    pub fn ca_name(&self) -> &str {
        &self.label
    }

    /// The nodes refused whatever their certificate.
    pub fn denied(&self) -> &HashSet<NodeId> {
        &self.deny
    }

    /// The identity a node of this network uses: with a network key, `identity`'s key with a
    /// certificate issued from the key now; with a CA, `identity` itself, which must have been
    /// issued by the CA.
    pub(crate) fn member_identity(&self, identity: &Identity) -> Result<Identity, IdentityError> {
        match &self.own_ca {
            Some(ca) => ca.issue(
                identity,
                &format!("node {}", identity.node_id()),
                // Without a CA to renew it, the certificate lasts: it dies with the process.
                Duration::from_secs(100 * 365 * 24 * 3600),
            ),
            None if identity.is_issued() => Ok(identity.clone()),
            None => Err(IdentityError::NotIssued {
                node: identity.node_id(),
                reason: "it has a self-signed certificate; make one with `chaski ca issue`"
                    .to_owned(),
            }),
        }
    }

    /// The tag key of beacons, for a node with `identity` (from [`member_identity`]).
    ///
    /// [`member_identity`]: Network::member_identity
    pub(crate) fn beacon_tag(&self, identity: &Identity) -> Option<NetworkTag> {
        match (&self.beacon_key, &identity.beacon_key) {
            (Some(key), _) => Some(NetworkTag::new(key.as_ref())),
            (None, Some(key)) => Some(NetworkTag::new(key)),
            (None, None) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_network_key_derives_the_same_ca_everywhere_and_another_key_another() {
        let key = NetworkKey::from_text("correct horse battery staple").unwrap();
        let a = Network::from_key(&key).unwrap();
        let b = Network::from_key(&key.clone()).unwrap();
        assert_eq!(a.ca_name(), b.ca_name());
        let other = Network::from_key(&NetworkKey::generate().unwrap()).unwrap();
        assert_ne!(a.ca_name(), other.ca_name());
        assert!(!format!("{key:?}{a:?}").contains("horse"));
    }

    #[test]
    fn short_network_keys_are_refused() {
        assert!(matches!(
            NetworkKey::from_text("  short  "),
            Err(IdentityError::WeakNetworkKey { len: 5, .. })
        ));
        assert_eq!(NetworkKey::generate().unwrap().expose().len(), 64);
    }
}

//! Mutual TLS for peer and client connections: loading the cluster CA and
//! the certificates named in cluster.toml's `[tls]` section, building the
//! rustls configurations, and reading who a certificate says its holder is.
//!
//! Identity lives in a certificate's DNS subject alternative names, all
//! under the `raftkit` pseudo-domain, signed by the cluster CA:
//!
//! | name | role | may |
//! |---|---|---|
//! | `n<ID>.raftkit` | peer: node ID | open a peer link claiming to be ID; serve as node ID |
//! | `client.raftkit` | client | Hello as a client; reads, writes, status, log, member list |
//! | `admin.raftkit` | admin | what a client may, plus faults, membership changes, leader transfer |
//!
//! A client checks the node it dials against `n<ID>.raftkit` (so node
//! addresses need not be in certificates); a node checks a client's
//! certificate against the cluster CA, and the role at the Hello.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::raft::NodeId;

/// The DNS name a node's certificate carries, and clients check.
pub fn node_name(id: NodeId) -> String {
    format!("n{}.raftkit", id.0)
}
/// The DNS name of a client certificate.
pub const CLIENT_NAME: &str = "client.raftkit";
/// The DNS name of an admin certificate.
pub const ADMIN_NAME: &str = "admin.raftkit";

/// What a client connection's certificate allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Reads, writes, status, log, member list.
    Client,
    /// Everything a client may, plus faults, membership changes and
    /// leader transfers. A connection without TLS is admin (as before TLS).
    Admin,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Client => write!(f, "client"),
            Role::Admin => write!(f, "admin"),
        }
    }
}

/// A TLS file or setting that cannot be used, with the file it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsError {
    pub path: PathBuf,
    pub message: String,
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.message)
    }
}

impl std::error::Error for TlsError {}

fn error(path: &Path, message: impl Into<String>) -> TlsError {
    TlsError {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// The certificates of a PEM file (a chain: the holder's first).
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|e| error(path, format!("cannot read: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(error(path, "no CERTIFICATE block in this PEM file"));
    }
    Ok(certs)
}

/// The private key of a PEM file.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = std::fs::read(path).map_err(|e| error(path, format!("cannot read: {e}")))?;
    PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|e| error(path, format!("not a PEM private key file: {e}")))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(ca)? {
        roots
            .add(cert)
            .map_err(|e| error(ca, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(Arc::new(roots))
}

/// A node's two sides: the server that accepts peers and clients (each
/// must show a certificate from the cluster CA), and the client that
/// dials its peers with its own certificate.
pub struct NodeTls {
    pub server: Arc<ServerConfig>,
    pub client: Arc<ClientConfig>,
}

impl NodeTls {
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<NodeTls, TlsError> {
        let roots = roots(ca)?;
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), provider())
            .build()
            .map_err(|e| error(ca, format!("cannot verify clients with this CA: {e}")))?;
        let certs = read_certs(cert)?;
        let server = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| error(cert, e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, read_key(key)?)
            .map_err(|e| error(key, format!("does not go with {}: {e}", cert.display())))?;
        let client = client_config(ca, cert, key)?;
        Ok(NodeTls {
            server: Arc::new(server),
            client,
        })
    }
}

/// A client's configuration: trusts the cluster CA, shows `cert`.
pub fn client_config(ca: &Path, cert: &Path, key: &Path) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = roots(ca)?;
    let certs = read_certs(cert)?;
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| error(cert, e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, read_key(key)?)
        .map_err(|e| error(key, format!("does not go with {}: {e}", cert.display())))?;
    Ok(Arc::new(config))
}

/// A client connection to node `id`, which must show `n<ID>.raftkit`.
pub fn connect_to(
    config: &Arc<ClientConfig>,
    id: NodeId,
) -> Result<rustls::ClientConnection, rustls::Error> {
    let name = ServerName::try_from(node_name(id))
        .map_err(|_| rustls::Error::General(format!("bad server name for {id}")))?;
    rustls::ClientConnection::new(Arc::clone(config), name)
}

/// Whether `cert` (already verified against the CA during the handshake)
/// names `name` among its DNS names.
pub fn cert_names(cert: &CertificateDer<'_>, name: &str) -> bool {
    let Ok(ee) = webpki::EndEntityCert::try_from(cert) else {
        return false;
    };
    let Ok(server_name) = ServerName::try_from(name) else {
        return false;
    };
    ee.verify_is_valid_for_subject_name(&server_name).is_ok()
}

/// The client role `cert` grants, if any: admin over client.
pub fn client_role(cert: &CertificateDer<'_>) -> Option<Role> {
    if cert_names(cert, ADMIN_NAME) {
        Some(Role::Admin)
    } else if cert_names(cert, CLIENT_NAME) {
        Some(Role::Client)
    } else {
        None
    }
}

/// Replaces `{id}` in a `[tls]` path template.
pub fn for_node(template: &Path, id: NodeId) -> PathBuf {
    PathBuf::from(
        template
            .to_string_lossy()
            .replace("{id}", &id.0.to_string()),
    )
}

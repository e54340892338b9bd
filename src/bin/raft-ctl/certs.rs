//! `raft-ctl certs`: a cluster CA and the certificates signed by it, in
//! one command. Identity and role are DNS names (src/tls.rs): a node's
//! certificate names `n<ID>.raftkit`, a client's `client.raftkit`, an
//! admin's `admin.raftkit`. Keys are written readable by their owner only
//! (0600); the CA key stays in the directory so that `certs add-node` can
//! sign a node added later. Keep that directory private.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use raftkit::config::{parse_node_id, Config};
use raftkit::raft::NodeId;
use raftkit::tls::{node_name, ADMIN_NAME, CLIENT_NAME};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use crate::{fail, EXIT_BAD_ARGS, EXIT_ERROR};

#[derive(Subcommand, Debug)]
pub enum CertsCmd {
    /// Create a cluster CA, one certificate per node (bound to its id), a
    /// client certificate and an admin certificate.
    Init {
        /// Where to write them.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// Node ids, comma-separated (1,2,3); default: cluster.toml's nodes.
        #[arg(long, value_delimiter = ',', value_parser = parse_node_id)]
        nodes: Option<Vec<NodeId>>,
    },
    /// Sign a certificate for a node added later, with the CA in --dir.
    AddNode {
        #[arg(value_parser = parse_node_id)]
        id: NodeId,
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
    },
}

const CA_NAME: &str = "raftkit cluster CA";

pub fn run(cmd: &CertsCmd, config_path: &Path) -> ExitCode {
    let result = match cmd {
        CertsCmd::Init { dir, nodes } => {
            let ids = match nodes {
                Some(ids) => ids.clone(),
                None => match Config::load(config_path) {
                    Ok(c) => c.ids(),
                    Err(e) => {
                        return fail(
                            EXIT_BAD_ARGS,
                            format!("{e} (give --nodes to make certificates without it)"),
                        )
                    }
                },
            };
            init(dir, &ids)
        }
        CertsCmd::AddNode { id, dir } => add_node(dir, *id),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(EXIT_ERROR, e),
    }
}

/// The CA's parameters. Rebuilt the same for `add-node` (the subject is
/// fixed), so that the certificates it signs chain to the CA on disk.
fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_NAME);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

fn init(dir: &Path, ids: &[NodeId]) -> Result<(), String> {
    if ids.is_empty() {
        return Err("no node ids: give --nodes 1,2,3".into());
    }
    let ca_key_path = dir.join("ca.key");
    if ca_key_path.exists() {
        return Err(format!(
            "{} exists: this directory has a CA already (use `certs add-node ID` for a new node, or another --dir)",
            ca_key_path.display()
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: cannot create: {e}", dir.display()))?;
    let ca_key = KeyPair::generate().map_err(|e| format!("cannot make the CA key: {e}"))?;
    let ca_cert = ca_params()
        .self_signed(&ca_key)
        .map_err(|e| format!("cannot make the CA certificate: {e}"))?;
    write_file(&dir.join("ca.pem"), &ca_cert.pem(), 0o644)?;
    write_file(&ca_key_path, &ca_key.serialize_pem(), 0o600)?;
    let issuer = Issuer::new(ca_params(), ca_key);
    for &id in ids {
        leaf(dir, &issuer, &format!("n{}", id.0), &node_name(id), true)?;
    }
    leaf(dir, &issuer, "client", CLIENT_NAME, false)?;
    leaf(dir, &issuer, "admin", ADMIN_NAME, false)?;
    let list: Vec<String> = ids.iter().map(|i| format!("n{}", i.0)).collect();
    println!(
        "wrote a cluster CA, node certificates ({}), client and admin certificates to {}",
        list.join(", "),
        dir.display()
    );
    print_snippet(dir);
    Ok(())
}

fn add_node(dir: &Path, id: NodeId) -> Result<(), String> {
    let ca_key_path = dir.join("ca.key");
    let text = std::fs::read_to_string(&ca_key_path)
        .map_err(|e| format!("{}: cannot read the CA key: {e}", ca_key_path.display()))?;
    let ca_key = KeyPair::from_pem(&text)
        .map_err(|e| format!("{}: not a PEM private key: {e}", ca_key_path.display()))?;
    let cert_path = dir.join(format!("n{}.pem", id.0));
    if cert_path.exists() {
        return Err(format!("{} exists already", cert_path.display()));
    }
    let issuer = Issuer::new(ca_params(), ca_key);
    leaf(dir, &issuer, &format!("n{}", id.0), &node_name(id), true)?;
    println!("wrote {} and its key", cert_path.display());
    Ok(())
}

/// Signs `<stem>.pem` (and writes `<stem>.key`) naming `dns`; a node's
/// certificate serves (its peers and clients dial it) and dials (its
/// peers), a client's or admin's only dials.
fn leaf(
    dir: &Path,
    issuer: &Issuer<'_, KeyPair>,
    stem: &str,
    dns: &str,
    node: bool,
) -> Result<(), String> {
    let mut p = CertificateParams::new(vec![dns.to_string()])
        .map_err(|e| format!("bad name {dns}: {e}"))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, dns);
    p.distinguished_name = dn;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = if node {
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ]
    } else {
        vec![ExtendedKeyUsagePurpose::ClientAuth]
    };
    let key = KeyPair::generate().map_err(|e| format!("cannot make a key: {e}"))?;
    let cert = p
        .signed_by(&key, issuer)
        .map_err(|e| format!("cannot sign {dns}: {e}"))?;
    write_file(&dir.join(format!("{stem}.pem")), &cert.pem(), 0o644)?;
    write_file(
        &dir.join(format!("{stem}.key")),
        &key.serialize_pem(),
        0o600,
    )?;
    Ok(())
}

/// Writes a new file with `mode` from its creation on (a key is never
/// readable by others, not even for a moment).
fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), String> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| format!("{}: cannot create: {e}", path.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("{}: cannot write: {e}", path.display()))
}

fn print_snippet(dir: &Path) {
    let d = dir.display();
    println!(
        "add to cluster.toml (paths relative to it):\n\n[tls]\nca = \"{d}/ca.pem\"\ncert = \"{d}/n{{id}}.pem\"\nkey = \"{d}/n{{id}}.key\"\nclient_cert = \"{d}/client.pem\"\nclient_key = \"{d}/client.key\"\n\nadmin commands (fault, member changes, transfer-leader): raft-ctl --cert {d}/admin.pem --key {d}/admin.key ..."
    );
}

//! The daemon's TLS certificates for its relay names: a rustls [`ResolvesServerCert`] whose
//! certificate set can be swapped at runtime (new handshakes see the new certificate, open
//! connections keep theirs), a self-signed certificate until a real one arrives, and the
//! key + chain files in `<state_dir>/certs/` (`<name>.key` mode 0600, `<name>.pem`).
//!
//! Owns: parsing, storing and loading certificates, choosing one by SNI, reporting expiry.
//! Must not: talk to an ACME server (that is `acme`), or log private keys.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Largest certificate or key file read, in bytes.
pub const MAX_PEM_BYTES: u64 = 256 * 1024;

/// Why a certificate could not be loaded, stored or made.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("the certificate chain has no certificate")]
    EmptyChain,
    #[error("the certificate chain does not parse: {0}")]
    BadChain(String),
    #[error("the private key does not parse or is not supported: {0}")]
    BadKey(String),
    #[error("the private key does not match the certificate: {0}")]
    KeyMismatch(String),
    #[error("could not make a self-signed certificate: {0}")]
    SelfSigned(String),
    #[error("no names to make a certificate for")]
    NoNames,
    #[error("{0:?} cannot be used as a file name")]
    BadName(String),
}

/// What the daemon currently serves, for `gate status`, the web UI and `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Names the certificate covers.
    pub names: Vec<String>,
    /// Not valid before.
    pub not_before: SystemTime,
    /// Not valid after.
    pub not_after: SystemTime,
    /// True for the self-signed stand-in.
    pub self_signed: bool,
    /// The certificate's serial number, hex.
    pub serial: String,
}

impl CertInfo {
    /// Seconds since the Unix epoch at which the certificate expires (the metric's value).
    pub fn expiry_unix_seconds(&self) -> u64 {
        self.not_after
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }
}

struct Loaded {
    key: Arc<CertifiedKey>,
    info: CertInfo,
}

/// One certificate set: the certificate and the names it answers for.
struct CertSet {
    loaded: Loaded,
}

/// The certificates the daemon serves. Share it as `Arc<CertStore>`; use [`CertStore::resolver`]
/// in a rustls `ServerConfig`.
pub struct CertStore {
    dir: PathBuf,
    primary: String,
    names: Vec<String>,
    current: RwLock<Arc<CertSet>>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("dir", &self.dir)
            .field("names", &self.names)
            .field("current", &self.info())
            .finish()
    }
}

impl CertStore {
    /// Opens `<state_dir>/certs/` for `names` (the first is the file name): loads the stored
    /// certificate when there is one that parses, else makes a self-signed one (not stored).
    pub fn open(state_dir: &Path, names: &[String]) -> Result<Arc<Self>, CertError> {
        let primary = names.first().ok_or(CertError::NoNames)?.clone();
        check_file_name(&primary)?;
        let dir = state_dir.join("certs");
        let stored = match load_files(&dir, &primary) {
            Ok(loaded) => Some(loaded),
            Err(CertError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "ignoring the stored certificate; serving a self-signed one");
                None
            }
        };
        let loaded = match stored {
            Some(l) => l,
            None => self_signed(names)?,
        };
        Ok(Arc::new(Self {
            dir,
            primary,
            names: names.to_vec(),
            current: RwLock::new(Arc::new(CertSet { loaded })),
        }))
    }

    /// The names this store serves.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// What is being served now.
    pub fn info(&self) -> CertInfo {
        self.snapshot().loaded.info.clone()
    }

    /// Paths of the stored key and chain.
    pub fn paths(&self) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("{}.key", self.primary)),
            self.dir.join(format!("{}.pem", self.primary)),
        )
    }

    /// Checks `chain_pem` + `key_pem`, stores them (key mode 0600, atomic replace) and serves
    /// them from the next handshake on. Open connections are not affected.
    pub fn install(&self, chain_pem: &str, key_pem: &str) -> Result<CertInfo, CertError> {
        let loaded = parse(chain_pem.as_bytes(), key_pem.as_bytes(), false)?;
        std::fs::create_dir_all(&self.dir).map_err(|source| io_err(&self.dir, source))?;
        let (key_path, chain_path) = self.paths();
        write_atomic(&key_path, key_pem.as_bytes(), 0o600)?;
        write_atomic(&chain_path, chain_pem.as_bytes(), 0o644)?;
        let info = loaded.info.clone();
        let next = Arc::new(CertSet { loaded });
        match self.current.write() {
            Ok(mut guard) => *guard = next,
            Err(poisoned) => *poisoned.into_inner() = next,
        }
        tracing::info!(names = ?info.names, serial = %info.serial, "serving a new certificate");
        Ok(info)
    }

    /// While the served certificate is self-signed, makes sure it names `names` (the names the
    /// relays granted), so a client that pins it (`curl --cacert`) can check the host name.
    /// Returns whether a new one was made. A stored or ACME certificate is left alone.
    pub fn cover_with_self_signed(&self, names: &[String]) -> Result<bool, CertError> {
        let current = self.snapshot();
        let info = &current.loaded.info;
        if !info.self_signed || names.is_empty() {
            return Ok(false);
        }
        let mut wanted: Vec<String> = self.names.iter().chain(names).cloned().collect();
        wanted.sort();
        wanted.dedup();
        let mut have = info.names.clone();
        have.sort();
        if have == wanted {
            return Ok(false);
        }
        let loaded = self_signed(&wanted)?;
        let next = Arc::new(CertSet { loaded });
        match self.current.write() {
            // An ACME certificate may have been installed in between: keep it.
            Ok(mut guard) if guard.loaded.info.self_signed => *guard = next,
            Err(poisoned) => *poisoned.into_inner() = next,
            Ok(_) => return Ok(false),
        }
        tracing::info!(names = ?wanted, "serving a self-signed certificate for the relay names");
        Ok(true)
    }

    /// A resolver for rustls server configs.
    pub fn resolver(self: &Arc<Self>) -> Arc<CertResolver> {
        Arc::new(CertResolver(self.clone()))
    }

    /// A TLS server configuration serving this store's certificates with these ALPN protocols.
    pub fn server_config(self: &Arc<Self>, alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap_or_else(|_| rustls::ServerConfig::builder());
        let mut config = builder
            .with_no_client_auth()
            .with_cert_resolver(self.resolver());
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    fn snapshot(&self) -> Arc<CertSet> {
        match self.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

/// The rustls side of a [`CertStore`]: the current certificate for every handshake.
pub struct CertResolver(Arc<CertStore>);

impl fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CertResolver").field(&self.0.names).finish()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // One certificate covers all of the daemon's names; the relay only forwards those.
        Some(self.0.snapshot().loaded.key.clone())
    }
}

/// Names the daemon's certificate should cover: its relay names then `letsencrypt.domains`,
/// lower-case, without duplicates, in order.
pub fn certificate_names(relay_names: &[String], extra: &[String]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for name in relay_names.iter().chain(extra) {
        let name = name.trim().trim_end_matches('.').to_ascii_lowercase();
        if !name.is_empty() && !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

fn check_file_name(name: &str) -> Result<(), CertError> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'*'));
    if ok {
        Ok(())
    } else {
        Err(CertError::BadName(name.to_owned()))
    }
}

fn io_err(path: &Path, source: std::io::Error) -> CertError {
    CertError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, CertError> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| io_err(path, e))?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(io_err(
            path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("larger than {MAX_PEM_BYTES} bytes"),
            ),
        ));
    }
    Ok(bytes)
}

fn load_files(dir: &Path, primary: &str) -> Result<Loaded, CertError> {
    let key = read_bounded(&dir.join(format!("{primary}.key")))?;
    let chain = read_bounded(&dir.join(format!("{primary}.pem")))?;
    parse(&chain, &key, false)
}

fn parse(chain_pem: &[u8], key_pem: &[u8], self_signed: bool) -> Result<Loaded, CertError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| CertError::BadChain(e.to_string()))?;
    let leaf = chain.first().ok_or(CertError::EmptyChain)?;
    let info = describe(leaf, self_signed)?;
    let key_der =
        PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| CertError::BadKey(e.to_string()))?;
    let signing_key = any_supported_type(&key_der).map_err(|e| CertError::BadKey(e.to_string()))?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified
        .keys_match()
        .map_err(|e| CertError::KeyMismatch(e.to_string()))?;
    Ok(Loaded {
        key: Arc::new(certified),
        info,
    })
}

fn describe(leaf: &CertificateDer<'_>, self_signed: bool) -> Result<CertInfo, CertError> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| CertError::BadChain(e.to_string()))?;
    let to_time = |t: i64| {
        u64::try_from(t)
            .map(|s| UNIX_EPOCH + Duration::from_secs(s))
            .unwrap_or(UNIX_EPOCH)
    };
    let validity = cert.validity();
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                names.push((*dns).to_owned());
            }
        }
    }
    Ok(CertInfo {
        names,
        not_before: to_time(validity.not_before.timestamp()),
        not_after: to_time(validity.not_after.timestamp()),
        self_signed,
        serial: cert.raw_serial_as_string().replace(':', ""),
    })
}

fn self_signed(names: &[String]) -> Result<Loaded, CertError> {
    let key = rcgen::KeyPair::generate().map_err(|e| CertError::SelfSigned(e.to_string()))?;
    let mut params = rcgen::CertificateParams::new(names.to_vec())
        .map_err(|e| CertError::SelfSigned(e.to_string()))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Gate self-signed (until ACME)");
    let cert = params
        .self_signed(&key)
        .map_err(|e| CertError::SelfSigned(e.to_string()))?;
    parse(cert.pem().as_bytes(), key.serialize_pem().as_bytes(), true)
}

/// Writes `bytes` to `path` atomically with `mode` ([`gate_rt::fs::write_atomic`]).
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CertError> {
    gate_rt::fs::write_atomic(path, bytes, mode, gate_rt::fs::Durability::Durable)
        .map_err(|e| io_err(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("gate-certs-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).ok();
        dir
    }

    #[test]
    fn starts_self_signed_then_installs_and_reloads() {
        let dir = temp_dir("install");
        let names = vec!["node.example.test".to_owned()];
        let store = CertStore::open(&dir, &names).expect("open");
        let first = store.info();
        assert!(first.self_signed);
        assert_eq!(first.names, names);

        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(names.clone())
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let info = store
            .install(&cert.pem(), &key.serialize_pem())
            .expect("install");
        assert!(!info.self_signed);
        assert_ne!(info.serial, first.serial);
        let (key_path, chain_path) = store.paths();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_path)
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(chain_path.exists());

        let reopened = CertStore::open(&dir, &names).expect("reopen");
        assert_eq!(reopened.info().serial, info.serial);
        assert!(!reopened.info().self_signed);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn self_signed_follows_the_granted_names_until_a_real_one_is_installed() {
        let dir = temp_dir("cover");
        let store = CertStore::open(&dir, &["node".to_owned()]).expect("open");
        let granted = vec!["node.gate.test".to_owned(), "mine.gate.test".to_owned()];
        assert!(store.cover_with_self_signed(&granted).expect("cover"));
        let mut names = store.info().names;
        names.sort();
        assert_eq!(names, ["mine.gate.test", "node", "node.gate.test"]);
        assert!(store.info().self_signed);
        // Same names again: nothing to do.
        assert!(!store.cover_with_self_signed(&granted).expect("again"));

        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(granted.clone())
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let installed = store
            .install(&cert.pem(), &key.serialize_pem())
            .expect("install");
        assert!(!store
            .cover_with_self_signed(&["other.gate.test".to_owned()])
            .expect("after install"));
        assert_eq!(store.info().serial, installed.serial);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_mismatched_key_is_refused_and_nothing_changes() {
        let dir = temp_dir("mismatch");
        let names = vec!["node.example.test".to_owned()];
        let store = CertStore::open(&dir, &names).expect("open");
        let before = store.info();
        let key = rcgen::KeyPair::generate().expect("key");
        let other = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(names.clone())
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let err = store
            .install(&cert.pem(), &other.serialize_pem())
            .expect_err("mismatch");
        assert!(matches!(err, CertError::KeyMismatch(_)), "{err:?}");
        assert_eq!(store.info(), before);
        assert!(!store.paths().0.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn certificate_names_dedupe_and_lowercase() {
        let names = certificate_names(
            &["A.example.test".into(), "b.example.test.".into()],
            &["a.example.test".into(), "".into(), "c.example.test".into()],
        );
        assert_eq!(
            names,
            ["a.example.test", "b.example.test", "c.example.test"]
        );
    }

    #[test]
    fn file_names_must_be_plain() {
        assert!(check_file_name("../x").is_err());
        assert!(check_file_name("a/b").is_err());
        assert!(check_file_name("node.example.test").is_ok());
    }
}

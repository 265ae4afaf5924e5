//! TLS for the tests: a CA and leaf certificates made with `openssl`, clients and a recording
//! upstream behind TLS.

use super::{openssl, Scratch};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct Pki {
    pub ca: PathBuf,
    /// (cert, key) of `*.example.test`, `example.test` and `*.example-content.test`, and of
    /// `other.test`.
    pub wild: (PathBuf, PathBuf),
    pub other: (PathBuf, PathBuf),
    _dir: Scratch,
}

pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

pub fn pki() -> Pki {
    let dir = Scratch::new("eg-tls");
    let ca = dir.join("ca.pem");
    let ca_key = dir.join("ca.key");
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        s(&ca_key),
        "-out",
        s(&ca),
        "-days",
        "2",
        "-subj",
        "/CN=edgegate test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    ]);
    let leaf = |name: &str, sans: &str| -> (PathBuf, PathBuf) {
        let (cert, key, csr, ext) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
            dir.join(format!("{name}.csr")),
            dir.join(format!("{name}.ext")),
        );
        std::fs::write(
            &ext,
            format!(
                "subjectAltName={sans}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
            ),
        )
        .expect("ext");
        openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            s(&key),
            "-out",
            s(&csr),
            "-subj",
            &format!("/CN={name}"),
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            s(&csr),
            "-CA",
            s(&ca),
            "-CAkey",
            s(&ca_key),
            "-CAcreateserial",
            "-out",
            s(&cert),
            "-days",
            "2",
            "-extfile",
            s(&ext),
        ]);
        (cert, key)
    };
    Pki {
        wild: leaf(
            "wild",
            "DNS:*.example.test,DNS:example.test,DNS:*.example-content.test",
        ),
        other: leaf("other", "DNS:other.test"),
        ca,
        _dir: dir,
    }
}

pub fn client(pki: &Pki, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(&pki.ca).expect("ca");
    let der = pem_to_der(&pem);
    roots
        .add(rustls::pki_types::CertificateDer::from(der))
        .expect("add CA");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

/// The DER of the first PEM block.
pub fn pem_to_der(pem: &[u8]) -> Vec<u8> {
    use base64::Engine;
    let text = String::from_utf8_lossy(pem);
    let b64: String = text
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("pem base64")
}

pub async fn connect(
    gw: std::net::SocketAddr,
    tls: &tokio_rustls::TlsConnector,
    sni: &str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(gw).await.expect("tcp");
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).expect("name");
    tls.connect(name, tcp).await.expect("TLS handshake")
}

pub type Snis = Arc<std::sync::Mutex<Vec<Option<String>>>>;

/// A TLS acceptor for an upstream, serving the wildcard certificate.
pub fn upstream_acceptor(pki: &Pki) -> tokio_rustls::TlsAcceptor {
    let chain = vec![rustls::pki_types::CertificateDer::from(pem_to_der(
        &std::fs::read(&pki.wild.0).expect("cert"),
    ))];
    let key = rustls::pki_types::PrivateKeyDer::try_from(pem_to_der(
        &std::fs::read(&pki.wild.1).expect("key"),
    ))
    .expect("key der");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server config");
    tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
}

/// A recording upstream behind TLS, serving the wildcard certificate; records each SNI.
pub async fn tls_upstream(pki: &Pki) -> (edgegate::demo::EchoUpstream, Snis) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let up = edgegate::demo::EchoUpstream::unbound("tls-up", listener.local_addr().expect("addr"));
    let acceptor = upstream_acceptor(pki);
    let served = up.clone();
    let snis: Snis = Arc::default();
    let seen_snis = snis.clone();
    tokio::spawn(async move {
        let mut n = 0;
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, up, snis) = (acceptor.clone(), served.clone(), seen_snis.clone());
            n += 1;
            let conn = n;
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    let sni = tls.get_ref().1.server_name().map(str::to_string);
                    if let Ok(mut v) = snis.lock() {
                        v.push(sni);
                    }
                    let _ = up.serve(tls, conn).await;
                }
            });
        }
    });
    (up, snis)
}

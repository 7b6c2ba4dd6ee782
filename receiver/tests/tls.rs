//! TLS: a CA and a server certificate made in the test; the client trusts only that CA.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use flowpack_receiver::App;
use flowpack_testkit::{Client, install_provider};

struct Pki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

fn pki() -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "flowpack test CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    Pki {
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

fn client_trusting(ca_pem: &str) -> Client {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    Client::from_reqwest(
        reqwest::Client::builder()
            .use_preconfigured_tls(config)
            .build()
            .unwrap(),
    )
}

#[tokio::test]
async fn serves_https_with_a_certificate_from_pem_files() {
    install_provider();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    flowpack_testkit::init(&data);
    let pki = pki();
    let cert = tmp.path().join("server.pem");
    let key = tmp.path().join("server.key");
    std::fs::write(&cert, &pki.cert_pem).unwrap();
    std::fs::write(&key, &pki.key_pem).unwrap();
    let acceptor = flowpack_receiver::tls_acceptor(&cert, &key).unwrap();
    let app = Arc::new(App::load(&data).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(flowpack_receiver::run(
        listener,
        app.clone(),
        Some(acceptor),
        async {
            let _ = rx.await;
        },
    ));

    let client = client_trusting(&pki.ca_pem);
    let r = client
        .get(format!("https://localhost:{port}/v1/keys"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["sealing_recipient"], app.sealing.recipient().to_string());

    // A client that trusts another CA refuses the server.
    let other = client_trusting(&pki_ca_only());
    assert!(
        other
            .get(format!("https://localhost:{port}/healthz"))
            .send()
            .await
            .is_err()
    );
    // Plain HTTP to the TLS port gets no answer.
    assert!(
        Client::new()
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
            .map(|r| r.status() != 200)
            .unwrap_or(true)
    );
    tx.send(()).unwrap();
    task.await.unwrap().unwrap();
}

fn pki_ca_only() -> String {
    pki().ca_pem
}

#[test]
fn tls_acceptor_refuses_missing_or_empty_pem() {
    install_provider();
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    assert!(flowpack_receiver::tls_acceptor(&empty, &empty).is_err());
    assert!(flowpack_receiver::tls_acceptor(&tmp.path().join("nope"), &empty).is_err());
}

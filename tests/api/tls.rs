//! HTTPS: the API served over TLS, and https participants verified against an extra CA.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use poem::listener::{Acceptor, Listener, RustlsCertificate, RustlsConfig, TcpListener};
use serde_json::{json, Value};
use tcc_coordinator::{App, AppError, Config, TlsFiles};

use crate::helpers::{in_secs, spawn_app_with};

/// A test certificate authority and a server certificate for localhost and 127.0.0.1.
struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn pki() -> Pki {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "tcc-coordinator test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
        .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    Pki {
        ca: write("ca.pem", ca.pem()),
        cert: write("cert.pem", cert.pem()),
        key: write("key.pem", key.serialize_pem()),
        _dir: dir,
    }
}

fn trusting(pki: &Pki) -> reqwest::Client {
    let roots = reqwest::Certificate::from_pem_bundle(&std::fs::read(&pki.ca).unwrap()).unwrap();
    reqwest::Client::builder()
        .tls_certs_merge(roots)
        .no_proxy()
        .build()
        .unwrap()
}

#[tokio::test]
async fn the_api_is_served_over_https_with_the_given_certificate() {
    let pki = pki();
    let files = TlsFiles {
        cert: pki.cert.clone(),
        key: pki.key.clone(),
    };
    let app = spawn_app_with(|c| c.tls = Some(files)).await;
    assert!(app.base.starts_with("https://127.0.0.1:"), "{}", app.base);

    let http = trusting(&pki);
    let live = http.get(app.url("/health/live")).send().await.unwrap();
    assert_eq!(live.status(), 200);
    let listed: Value = http
        .get(app.url("/reservations"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["items"], json!([]));

    // Plain HTTP on the TLS port gets no API answer.
    let plain = app.base.replace("https://", "http://");
    let answer = reqwest::get(format!("{plain}/health/live")).await;
    assert!(answer.is_err() || !answer.unwrap().status().is_success());
    app.stop().await;
}

#[tokio::test]
async fn unusable_certificate_files_stop_the_start_naming_the_file() {
    let pki = pki();
    let mut config = Config::ephemeral();
    config.tls = Some(TlsFiles {
        cert: pki.key.clone(),
        key: pki.key.clone(),
    });
    let Err(AppError::Tls(message)) = App::build(config).await else {
        panic!("a key given as the certificate was accepted");
    };
    assert!(message.contains("key.pem"), "{message}");

    let mut config = Config::ephemeral();
    config.tls = Some(TlsFiles {
        cert: pki.cert.clone(),
        key: pki.cert.with_file_name("missing.pem"),
    });
    let Err(AppError::Tls(message)) = App::build(config).await else {
        panic!("a missing key was accepted");
    };
    assert!(message.contains("missing.pem"), "{message}");
}

/// An https participant that answers every PUT with 204 and counts them.
async fn https_participant(pki: &Pki) -> (String, Arc<AtomicUsize>) {
    let puts = Arc::new(AtomicUsize::new(0));
    let counted = puts.clone();
    let app = poem::Route::new().at(
        "/holds/:n",
        poem::put(poem::endpoint::make_sync(move |_| {
            counted.fetch_add(1, Ordering::SeqCst);
            poem::http::StatusCode::NO_CONTENT
        })),
    );
    let tls = RustlsConfig::new().fallback(
        RustlsCertificate::new()
            .cert(std::fs::read(&pki.cert).unwrap())
            .key(std::fs::read(&pki.key).unwrap()),
    );
    let acceptor = TcpListener::bind("127.0.0.1:0")
        .rustls(tls)
        .into_acceptor()
        .await
        .unwrap();
    let port = acceptor.local_addr()[0].as_socket_addr().unwrap().port();
    tokio::spawn(poem::Server::new_with_acceptor(acceptor).run(app));
    (format!("https://localhost:{port}"), puts)
}

#[tokio::test]
async fn https_participants_are_verified_against_the_extra_ca() {
    let pki = pki();
    let (participant, puts) = https_participant(&pki).await;
    let link = json!({"participants": [{"link": {
        "uri": format!("{participant}/holds/1"), "expires": in_secs(600)}}]});

    // Without the CA, the participant's certificate is not trusted: nothing is confirmed.
    let untrusting = spawn_app_with(|_| {}).await;
    let id = untrusting.create(&link).await;
    untrusting
        .post(&format!("/reservations/{id}/confirm"))
        .await;
    let (_, body) = untrusting
        .wait_for(&id, |_, b| {
            b["participants"][0]["attempts"].as_u64() >= Some(1)
        })
        .await;
    let error = body["participants"][0]["last_error"].as_str().unwrap();
    assert!(error.starts_with("TLS handshake failed"), "{error}");
    assert_eq!(puts.load(Ordering::SeqCst), 0);
    untrusting.stop().await;

    // With --participant-ca, it is.
    let ca = pki.ca.clone();
    let trusting = spawn_app_with(move |c| c.participant_ca = Some(ca)).await;
    let id = trusting.create(&link).await;
    trusting.post(&format!("/reservations/{id}/confirm")).await;
    trusting.wait_for(&id, |s, _| s == 303).await;
    assert_eq!(puts.load(Ordering::SeqCst), 1);
    trusting.stop().await;
}

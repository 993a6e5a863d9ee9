//! AMQPS (issue 15): a TLS listener beside plain TCP, client certificates verified
//! against a CA, SASL EXTERNAL naming the user by the certificate's subject (its whole
//! DN, or its CN), TLS 1.2 and 1.3 only, plain TCP turned off, and the certificate
//! re-read on SIGHUP without dropping connections. The CA and certificates are made
//! here with rcgen.

mod common;

use common::pki::{Pki, free_port, tls_connect};
use common::*;
use integration_tests::{WarrenProcess, temp_data_dir};

#[tokio::test(flavor = "multi_thread")]
async fn amqps_with_client_certificates_and_external_login() {
    let pki = Pki::new("tls-external");
    pki.sign("server", &["localhost"], "localhost", None);
    let alice = pki.sign("alice", &[], "alice", Some("Example"));
    let bob = pki.sign("bob", &[], "bob", None);
    let dir = temp_data_dir("tls-external");
    let tls_port = free_port().to_string();
    let (cert, key, ca) = (
        pki.path("server.pem"),
        pki.path("server.key"),
        pki.path("ca.pem"),
    );
    let broker = WarrenProcess::start_with_args(
        &dir,
        &[
            "--tls-port",
            &tls_port,
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-ca",
            &ca,
        ],
    )
    .await;
    // alice is named by her certificate's whole subject (RabbitMQ's default), written
    // as RFC 4514 writes it, last RDN first: what `openssl x509 -noout -subject
    // -nameopt RFC2253` prints for this certificate (rcgen puts CN first).
    ctl_ok(&dir, &["add_user", "O=Example,CN=alice", "unused"]);
    warren_ctl(
        &dir,
        &["set_permissions", "O=Example,CN=alice", ".*", ".*", ".*"],
    );
    let amqps = |rest: &str| format!("amqps://localhost:{tls_port}/%2f{rest}");

    // PLAIN over TLS, without a client certificate.
    let plain = tls_connect(
        &format!("amqps://guest:guest@localhost:{tls_port}/%2f"),
        &pki.ca_pem,
        None,
    )
    .await
    .expect("PLAIN over TLS");
    let ch = channel(&plain).await;
    declare_queue(&ch, "over-tls").await;
    publish(&ch, "", "over-tls", b"secret").await;
    assert_eq!(message_count(&ch, "over-tls").await, 1);

    // EXTERNAL: the certificate's subject is the user; no password.
    let external = tls_connect(
        &amqps("?auth_mechanism=external"),
        &pki.ca_pem,
        Some(alice.clone()),
    )
    .await
    .expect("EXTERNAL with alice's certificate");
    let ch = channel(&external).await;
    assert_eq!(message_count(&ch, "over-tls").await, 1);
    // bob has a certificate but no user: refused as RabbitMQ refuses a login.
    assert_amqp_error(
        tls_connect(&amqps("?auth_mechanism=external"), &pki.ca_pem, Some(bob)).await,
        403,
        "ACCESS_REFUSED - Login was refused using authentication mechanism EXTERNAL. For details see the broker logfile.",
    );
    // pika, with Python's ssl module, logs in the same way.
    let alice_cert = pki.path("alice.pem");
    let alice_key = pki.path("alice.key");
    let (status, output) = integration_tests::python::run_example_with(
        "tls_external.py",
        &amqps(""),
        &[
            ("TLS_CA", ca.as_str()),
            ("TLS_CERT", alice_cert.as_str()),
            ("TLS_KEY", alice_key.as_str()),
        ],
        std::time::Duration::from_secs(60),
    )
    .await
    .expect("run tls_external.py");
    assert!(
        status.success() && output.contains("summary: over tls with EXTERNAL"),
        "{status}: {output}"
    );
    // Plain TCP still works beside it.
    connect_uri(&broker.uri()).await.expect("plain AMQP");
    broker.terminate();
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&pki.dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_only_with_common_name_logins_and_a_certificate_reload_on_sighup() {
    let pki = Pki::new("tls-only");
    pki.sign("server", &["localhost"], "localhost", None);
    let carol = pki.sign("carol", &[], "carol", Some("Example"));
    let dir = temp_data_dir("tls-only");
    let tls_port = free_port().to_string();
    let (cert, key, ca) = (
        pki.path("server.pem"),
        pki.path("server.key"),
        pki.path("ca.pem"),
    );
    // Users are made over ctl before the TLS-only start: the data directory keeps them.
    let setup = WarrenProcess::start(&dir).await;
    ctl_ok(&dir, &["add_user", "carol", "unused"]);
    ctl_ok(&dir, &["set_permissions", "carol", ".*", ".*", ".*"]);
    setup.terminate();
    let port: u16 = tls_port.parse().expect("a port");
    let broker = WarrenProcess::start_tls_only(
        &dir,
        &[
            "--no-tcp",
            "--tls-port",
            &tls_port,
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-ca",
            &ca,
            "--tls-fail-if-no-peer-cert",
            "--tls-cert-login-from",
            "common-name",
        ],
        port,
    )
    .await;
    let uri = format!("amqps://localhost:{tls_port}/%2f?auth_mechanism=external");
    let conn = tls_connect(&uri, &pki.ca_pem, Some(carol.clone()))
        .await
        .expect("carol by CN");
    // Without a certificate, the TLS handshake itself is refused.
    assert!(
        tls_connect(
            &format!("amqps://guest:guest@localhost:{tls_port}/%2f"),
            &pki.ca_pem,
            None
        )
        .await
        .is_err()
    );
    assert_eq!(served_cn(port, &pki, &carol).await, "localhost");
    // A new server certificate, then SIGHUP: the open connection stays, new ones
    // see the new certificate.
    pki.sign("server", &["localhost"], "localhost-renewed", None);
    broker.hang_up();
    let again = integration_tests::wait_for(std::time::Duration::from_secs(10), || {
        let (uri, ca, carol) = (uri.clone(), pki.ca_pem.clone(), carol.clone());
        async move { tls_connect(&uri, &ca, Some(carol)).await.is_ok() }
    })
    .await;
    assert!(again, "connections after the reload");
    let renewed = integration_tests::wait_for(std::time::Duration::from_secs(10), || async {
        served_cn(port, &pki, &carol).await == "localhost-renewed"
    })
    .await;
    assert!(renewed, "the reloaded certificate is served");
    let ch = channel(&conn).await;
    declare_queue(&ch, "still-open").await;
    broker.terminate();
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&pki.dir);
}

/// The common name of the certificate the broker's TLS listener on `port` serves,
/// seen by a rustls client trusting `pki`'s CA with `identity`.
async fn served_cn(port: u16, pki: &Pki, identity: &(String, String)) -> String {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pki.ca_pem.as_bytes()) {
        roots.add(cert.expect("a CA cert")).expect("add the CA");
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(identity.0.as_bytes())
        .collect::<Result<_, _>>()
        .expect("the client chain");
    let key = PrivateKeyDer::from_pem_slice(identity.1.as_bytes()).expect("the client key");
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("a client config");
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = within("tcp", tokio::net::TcpStream::connect(("127.0.0.1", port)))
        .await
        .expect("connect");
    let name = ServerName::try_from("localhost").expect("a name");
    let tls = within("tls", connector.connect(name, tcp))
        .await
        .expect("handshake");
    let cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .expect("the server's certificate")
        .clone();
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).expect("x509");
    parsed
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .expect("a CN")
        .to_owned()
}

//! Access control and transport: bearer tokens on inference (health and reflection by
//! choice), TLS, and mutual TLS, against a real server.

mod common;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tonic::{
    Code, Request,
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use wrn::pb::{ListModelsRequest, classifier_client::ClassifierClient};

use common::TestServer;

const SMALL: &str = "wrn_16_4";
const TOKEN: &str = "s3cret-token-for-tests-0123456789";

fn classify_req(token: Option<&str>) -> Request<wrn::pb::ClassifyRequest> {
    let mut r = Request::new(common::zero_tensor_request(SMALL, 1, 32));
    if let Some(t) = token {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_guards_inference_but_not_health_by_default() {
    if !common::assets(
        "bearer_token_guards_inference_but_not_health_by_default",
        &[SMALL],
    ) {
        return;
    }
    let server = TestServer::start(common::serve_args(&[SMALL], &["--auth-tokens", TOKEN])).await;
    let mut c = server.client().await;
    let e = c.classify(classify_req(None)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("Bearer"), "{}", e.message());
    let e = c
        .classify(classify_req(Some("not-the-right-token-at-all")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(
        !e.message().contains("not-the-right"),
        "the presented token is not echoed"
    );
    let ok = c
        .classify(classify_req(Some(TOKEN)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.results.len(), 1);
    let e = c.list_models(ListModelsRequest {}).await.unwrap_err();
    assert_eq!(
        e.code(),
        Code::Unauthenticated,
        "every Classifier method is guarded"
    );
    // Health answers without a token (probes carry none).
    let mut h = HealthClient::new(server.channel().await);
    assert!(
        h.check(HealthCheckRequest {
            service: String::new()
        })
        .await
        .is_ok()
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_can_require_the_token_too() {
    if !common::assets("health_can_require_the_token_too", &[SMALL]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    std::fs::write(&file, format!("# accepted tokens\n{TOKEN}\n")).unwrap();
    let args = common::serve_args(
        &[SMALL],
        &["--auth-token-file", file.to_str().unwrap(), "--auth-health"],
    );
    // The harness waits for SERVING through a tokenless health check, so poll with a token.
    let rt = common::runtime();
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = grpc.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(wrn::server::run(args, rt, grpc, None, async move {
        let _ = rx.await;
    }));
    let ch = loop {
        if let Ok(ch) = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
        {
            break ch;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let mut h = HealthClient::new(ch);
    let e = h
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let mut r = Request::new(HealthCheckRequest {
        service: String::new(),
    });
    r.metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    assert!(h.check(r).await.is_ok());
    let _ = tx.send(());
    task.await.unwrap().unwrap();
}

struct Pki {
    ca_pem: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

fn pki() -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&server_key, &ca)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let client = CertificateParams::new(vec!["client".to_string()])
        .unwrap()
        .signed_by(&client_key, &ca)
        .unwrap();
    Pki {
        ca_pem: ca.pem(),
        server_cert: server.pem(),
        server_key: server_key.serialize_pem(),
        client_cert: client.pem(),
        client_key: client_key.serialize_pem(),
    }
}

async fn tls_channel(
    addr: std::net::SocketAddr,
    pki: &Pki,
    with_identity: bool,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca_pem))
        .domain_name("localhost");
    if with_identity {
        tls = tls.identity(Identity::from_pem(&pki.client_cert, &pki.client_key));
    }
    Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

async fn start_tls(
    pki: &Pki,
    mutual: bool,
) -> (
    tempfile::TempDir,
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let dir = tempfile::tempdir().unwrap();
    let w = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let (cert, key, ca) = (
        w("server.pem", &pki.server_cert),
        w("server.key", &pki.server_key),
        w("ca.pem", &pki.ca_pem),
    );
    let mut extra = vec!["--tls-cert", cert.as_str(), "--tls-key", key.as_str()];
    if mutual {
        extra.extend(["--tls-client-ca", ca.as_str()]);
    }
    let args = common::serve_args(&[SMALL], &extra);
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = grpc.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(wrn::server::run(
        args,
        common::runtime(),
        grpc,
        None,
        async move {
            let _ = rx.await;
        },
    ));
    (dir, addr, tx, task)
}

async fn classify_until_ready(ch: Channel) -> Result<(), tonic::Status> {
    let mut c = ClassifierClient::new(ch);
    for _ in 0..600 {
        match c.classify(classify_req(None)).await {
            Err(e) if e.code() == Code::Unavailable => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await
            }
            other => return other.map(|_| ()),
        }
    }
    Err(tonic::Status::unavailable("never ready"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_mutual_tls() {
    if !common::assets("tls_and_mutual_tls", &[SMALL]) {
        return;
    }
    let pki = pki();
    // Server TLS: a client trusting the CA classifies; a plaintext client cannot.
    let (_dir, addr, stop, task) = start_tls(&pki, false).await;
    let ch = loop {
        if let Ok(ch) = tls_channel(addr, &pki, false).await {
            break ch;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    classify_until_ready(ch).await.expect("classify over TLS");
    let plain = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await;
    if let Ok(ch) = plain {
        let e = ClassifierClient::new(ch)
            .classify(classify_req(None))
            .await
            .unwrap_err();
        // The TLS server closes the connection on the plaintext preface; depending on timing
        // hyper reports that as a failed connection (Unavailable, Unknown, Internal) or as a
        // closed one mid-call (Cancelled: "connection closed").
        assert!(
            matches!(
                e.code(),
                Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
            ),
            "{e}"
        );
    }
    let _ = stop.send(());
    task.await.unwrap().unwrap();
    // Mutual TLS: a client without a certificate is refused, one with a CA-signed one works.
    let (_dir, addr, stop, task) = start_tls(&pki, true).await;
    let ch = loop {
        if let Ok(ch) = tls_channel(addr, &pki, true).await {
            break ch;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    classify_until_ready(ch)
        .await
        .expect("classify over mutual TLS");
    let refused = match tls_channel(addr, &pki, false).await {
        Err(_) => true,
        Ok(ch) => ClassifierClient::new(ch)
            .classify(classify_req(None))
            .await
            .is_err(),
    };
    assert!(
        refused,
        "a client without a certificate is refused under mTLS"
    );
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

//! Bounded work for any policy text (issue 11, item 3), over real gRPC with the compiler
//! served by the service kit exactly as `kino-policy-compiler` serves it, on a runtime with
//! ONE thread (so a parse running on the runtime would stall every other RPC):
//!
//! - deeply nested documents (80 KB and 200 KB of `[[[[…`, which cost 4.8 s and > 15 s of
//!   CPU before) and a text over 1 MiB are refused with INVALID_ARGUMENT naming the limit,
//!   for ImportPolicies and ValidatePolicies;
//! - a big import held in the middle of its parse does not stop health checks answering;
//! - an import whose caller goes away stops parsing at its next step (counted by the
//!   service, never timed).
//!
//! No datastore is needed: every request here ends before anything would be stored.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use kino_api::policy as pb;
use kino_api::policy::policy_service_client::PolicyServiceClient;
use kino_policy_compiler::grpc::PolicyGrpc;
use kino_policy_compiler::policy::bounds::{MAX_DOCUMENT_BYTES, MAX_NESTING_DEPTH};
use kino_policy_compiler::service::{PolicyService, ServiceOptions};
use kino_policy_compiler::store::Store;
use kino_service_kit::{ClientTlsArgs, Listener, ServeSpec, TlsArgs, serve};
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// How long a test waits for a step it needs before it fails (never a timing assertion:
/// only a bound on waiting for something that must happen).
const PATIENCE: Duration = Duration::from_secs(60);

/// A compiler served on its own one-thread runtime.
struct Served {
    address: String,
    service: Arc<PolicyService>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Served {
    fn start() -> Served {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                // Nothing here reaches the datastore; a lazy channel to a closed port.
                let channel =
                    kino_service_kit::connect_lazy("127.0.0.1:9", &ClientTlsArgs::default())
                        .expect("a valid target");
                let service = Arc::new(PolicyService::new(
                    Store::new(channel),
                    ServiceOptions::default(),
                ));
                let listener = Listener::bind(&"127.0.0.1:0".parse().expect("addr"))
                    .await
                    .expect("bind");
                let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
                tx.send((listener.local_addr().to_string(), service.clone(), stop))
                    .expect("test alive");
                serve(
                    ServeSpec::on_listener("kino-policy-compiler", listener)
                        // Bounded work, not trust: plaintext (integration-tests' trust.rs
                        // covers mTLS).
                        .with_tls(TlsArgs::insecure())
                        .with_authorization(kino_policy_compiler::authorization::AUTHORIZATION)
                        .add_service(PolicyGrpc::new(service).into_server())
                        .with_shutdown(async move {
                            let _ = stopped.await;
                        })
                        .with_grace_period(Duration::from_millis(200)),
                )
                .await
                .expect("serve");
            });
        });
        let (address, service, stop) = rx.recv().expect("the server started");
        Served {
            address,
            service,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    async fn client(&self) -> PolicyServiceClient<Channel> {
        PolicyServiceClient::connect(format!("http://{}", self.address))
            .await
            .expect("connect")
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        // Let any held parse go, then stop the server and wait for its thread.
        self.service.set_parse_observer(None);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn nested(bytes: usize) -> String {
    let depth = bytes / 2;
    format!(
        "apiVersion: kino.io/v1\nkind: KinoNetworkPolicy\nmetadata: {{name: deep}}\nspec: {}{}\n",
        "[".repeat(depth),
        "]".repeat(depth)
    )
}

fn import_request(documents: String) -> pb::ImportPoliciesRequest {
    pb::ImportPoliciesRequest {
        documents,
        default_namespace: String::new(),
    }
}

/// `n` valid policies, one document each.
fn many_policies(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "apiVersion: kino.io/v1\nkind: KinoNetworkPolicy\nmetadata: {{name: p{i}, namespace: shop}}\n\
                 spec:\n  endpointSelector: {{matchLabels: {{app: web}}}}\n  ingress:\n  \
                 - fromEndpoints: [{{matchLabels: {{app: lb}}}}]\n    toPorts: [{{ports: [{{port: \"80\"}}]}}]\n---\n"
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_and_large_documents_are_refused_naming_the_limit() {
    let served = Served::start();
    let mut client = served.client().await;
    for bytes in [80 * 1024, 200 * 1024] {
        let status = client
            .import_policies(import_request(nested(bytes)))
            .await
            .expect_err("a document nested thousands deep is refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            status
                .message()
                .contains(&format!("deeper than {MAX_NESTING_DEPTH} levels")),
            "{bytes} bytes: {}",
            status.message()
        );
        let validated = client
            .validate_policies(pb::ValidatePoliciesRequest {
                documents: nested(bytes),
                default_namespace: String::new(),
            })
            .await
            .expect("ValidatePolicies answers with errors as data")
            .into_inner();
        assert!(
            validated.errors[0]
                .message
                .contains(&format!("deeper than {MAX_NESTING_DEPTH} levels")),
            "{:?}",
            validated.errors
        );
    }
    let large = format!(
        "{}\n# {}\n",
        many_policies(1),
        "x".repeat(MAX_DOCUMENT_BYTES)
    );
    let status = client
        .import_policies(import_request(large))
        .await
        .expect_err("more than 1 MiB is refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("at most 1048576 bytes (1 MiB)"),
        "{}",
        status.message()
    );
    // The same limits pass a document exactly at them.
    let at_limit = format!(
        "apiVersion: kino.io/v1\nkind: KinoNetworkPolicy\nmetadata: {{name: deep}}\nspec: {{description: {}x{}}}\n",
        "[".repeat(MAX_NESTING_DEPTH - 2),
        "]".repeat(MAX_NESTING_DEPTH - 2)
    );
    let validated = client
        .validate_policies(pb::ValidatePoliciesRequest {
            documents: at_limit,
            default_namespace: String::new(),
        })
        .await
        .expect("validate")
        .into_inner();
    assert!(
        validated
            .errors
            .iter()
            .all(|e| !e.message.contains("levels")),
        "{:?}",
        validated.errors
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_while_a_big_import_is_parsing() {
    let served = Served::start();
    // Hold the parse after its first document until the health check has answered.
    let (held_tx, held_rx) = mpsc::channel::<()>();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let release_rx = std::sync::Mutex::new(release_rx);
    served
        .service
        .set_parse_observer(Some(Arc::new(move |done: usize| {
            if done == 1 {
                let _ = held_tx.send(());
                // Bounded: on a runtime blocked by this parse, the health check never
                // answers and the test fails below instead of hanging.
                let _ = release_rx.lock().unwrap().recv_timeout(PATIENCE);
            }
        })));
    let mut client = served.client().await;
    let import = tokio::spawn(async move {
        client
            .import_policies(import_request(many_policies(50)))
            .await
    });
    tokio::task::spawn_blocking(move || held_rx.recv_timeout(PATIENCE))
        .await
        .unwrap()
        .expect("the parse reached its second document");

    let channel = Channel::from_shared(format!("http://{}", served.address))
        .unwrap()
        .connect()
        .await
        .expect("connect");
    let health = tokio::time::timeout(
        PATIENCE,
        HealthClient::new(channel).check(HealthCheckRequest {
            service: "kino.policy.v1.PolicyService".into(),
        }),
    )
    .await;
    let answered_while_held = release_tx.send(()).is_ok();
    let health = health
        .expect("the health check answered while the import was parsing")
        .expect("health")
        .into_inner();
    assert_eq!(health.status, 1, "SERVING: {health:?}");
    assert!(
        answered_while_held,
        "the parse had already given up waiting"
    );
    import.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_whose_caller_goes_away_stops_parsing() {
    let served = Served::start();
    const DOCUMENTS: usize = 200;
    let steps = Arc::new(std::sync::Mutex::new(Vec::<usize>::new()));
    let (held_tx, held_rx) = mpsc::channel::<()>();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let release_rx = std::sync::Mutex::new(release_rx);
    let seen = steps.clone();
    served
        .service
        .set_parse_observer(Some(Arc::new(move |done: usize| {
            seen.lock().unwrap().push(done);
            if done == 1 {
                let _ = held_tx.send(());
                let _ = release_rx.lock().unwrap().recv_timeout(PATIENCE);
            }
        })));
    let mut client = served.client().await;
    let import = tokio::spawn(async move {
        client
            .import_policies(import_request(many_policies(DOCUMENTS)))
            .await
    });
    tokio::task::spawn_blocking(move || held_rx.recv_timeout(PATIENCE))
        .await
        .unwrap()
        .expect("the parse reached its second document");

    // The caller goes away: its task (and the HTTP/2 stream) is dropped.
    import.abort();
    let counts = served.service.parse_counts();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while counts.abandoned.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server never noticed the caller leaving"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    release_tx.send(()).expect("the parse is still held");
    while counts.cancelled.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert_eq!(
            counts.finished.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "the abandoned parse ran to its end"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "the parse neither stopped nor finished"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let steps = steps.lock().unwrap().clone();
    // Held at step 1 and released after the cancel: the check that follows the observer in
    // that same step stopped it; no later document was read.
    assert_eq!(steps, vec![0, 1], "steps the parse took");
    assert!(steps.len() < DOCUMENTS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_names_and_long_error_lists_make_short_messages() {
    let served = Served::start();
    let mut client = served.client().await;
    let huge = "n".repeat(1 << 20);
    // A 1 MB name: refused naming the field, at most 128 bytes of it repeated.
    let status = client
        .get_policy(pb::GetPolicyRequest {
            policy: Some(pb::PolicyRef {
                namespace: "shop".into(),
                name: huge.clone(),
            }),
        })
        .await
        .expect_err("a 1 MB name is refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("policy.name"),
        "{}",
        &status.message()[..100]
    );
    assert!(
        status.message().len() < 512,
        "{} bytes",
        status.message().len()
    );
    let status = client
        .allocate_identity(pb::AllocateIdentityRequest {
            labels: Some(kino_api::types::Labels {
                labels: vec![kino_api::types::Label {
                    key: "app".into(),
                    value: huge.clone(),
                    source: "k8s".into(),
                }],
            }),
        })
        .await
        .expect_err("a 1 MB label value is refused");
    assert!(
        status.message().contains("labels[0].value"),
        "{}",
        &status.message()[..100]
    );
    assert!(
        status.message().len() < 512,
        "{} bytes",
        status.message().len()
    );

    // Thousands of errors with long (cut) keys: the status message stays within the cap
    // every server applies, and says it was cut.
    let fields: String = (0..5000).map(|i| format!("  {i:0>120}: 1\n")).collect();
    let documents = format!(
        "apiVersion: kino.io/v1\nkind: KinoNetworkPolicy\nmetadata: {{name: many, namespace: shop}}\nspec:\n{fields}"
    );
    let status = client
        .import_policies(import_request(documents))
        .await
        .expect_err("5000 unknown fields");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().len() <= kino_service_kit::MAX_STATUS_MESSAGE_BYTES,
        "{} bytes",
        status.message().len()
    );
    assert!(
        status.message().starts_with("5001 error(s)"),
        "{}",
        &status.message()[..100]
    );
    assert!(
        status.message().contains("message cut"),
        "{}",
        status.message()
    );
}

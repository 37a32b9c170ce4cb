//! Authorization of every RPC by the caller's identity, in one tower layer installed by
//! [`crate::serve`].
//!
//! Each service declares a table: full gRPC method (`/kino.ipam.v1.IpamService/Allocate`) →
//! who may call it. A method the table does not list is denied to everyone, admin included,
//! so a new RPC is unreachable until someone decides who may call it. Admin may call every
//! listed method; health and reflection are open to any authenticated caller. Rules that
//! depend on the request's content (the gateway's per-kind rules, an agent acting only for
//! its own node) are the handlers' job, with the [`Caller`] this layer puts on the request.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo, UdsConnectInfo};
use tower::{Layer, Service};

use crate::principal::{Caller, Principal, Role};
use crate::standard_services::{HEALTH_SERVICE, REFLECTION_V1_SERVICE, REFLECTION_V1ALPHA_SERVICE};

/// Who may call one method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Any caller with a valid certificate (reads that reveal nothing sensitive).
    Authenticated,
    /// These roles, and admin.
    Roles(&'static [Role]),
}

/// One row of a service's authorization table: full method path and who may call it.
pub type MethodRule = (&'static str, Access);

/// How the listener identifies its callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// TLS with client certificates: the certificate is the identity; none is UNAUTHENTICATED.
    MutualTls,
    /// A unix socket whose mode admits only its owner: every peer is admin.
    UnixSocket,
    /// Plaintext TCP by the operator's explicit choice (`--insecure`): every caller is admin.
    Insecure,
}

/// The rules of one server (every service it serves), looked up per request.
#[derive(Debug, Clone, Default)]
pub(crate) struct Rules {
    by_method: HashMap<&'static str, Access>,
}

impl Rules {
    /// Adds a service's table; a method listed twice keeps its last rule.
    pub(crate) fn add(&mut self, table: &'static [MethodRule]) {
        self.by_method.extend(table.iter().copied());
    }

    /// Whether `caller` may call `path`; the error is the status to answer with.
    pub(crate) fn check(
        &self,
        service_name: &str,
        path: &str,
        caller: &Caller,
    ) -> Result<(), tonic::Status> {
        if is_always_open(path) {
            return Ok(());
        }
        let Some(access) = self.by_method.get(path) else {
            return Err(tonic::Status::permission_denied(format!(
                "{caller} may not call {path}: {service_name} lists no such method in its authorization table, so nobody may call it"
            )));
        };
        let role = caller.role();
        let allowed = match access {
            Access::Authenticated => true,
            Access::Roles(roles) => {
                role == Some(Role::Admin) || role.is_some_and(|r| roles.contains(&r))
            }
        };
        if allowed {
            return Ok(());
        }
        Err(tonic::Status::permission_denied(format!(
            "{caller} may not call {path}: allowed {}",
            describe(access)
        )))
    }
}

/// Health and reflection: readable by any caller that got this far (authenticated).
fn is_always_open(path: &str) -> bool {
    let service = path
        .strip_prefix('/')
        .and_then(|p| p.split_once('/'))
        .map(|(service, _)| service);
    matches!(
        service,
        Some(HEALTH_SERVICE | REFLECTION_V1_SERVICE | REFLECTION_V1ALPHA_SERVICE)
    )
}

/// `roles admin, operator` / `any authenticated caller`, for messages and docs.
pub fn describe(access: &Access) -> String {
    match access {
        Access::Authenticated => "any authenticated caller".to_owned(),
        Access::Roles(roles) => {
            let mut names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
            if !roles.contains(&Role::Admin) {
                names.push(Role::Admin.as_str());
            }
            format!("roles {}", names.join(", "))
        }
    }
}

/// The methods of `service` (fully qualified, e.g. `kino.ipam.v1.IpamService`) in kino's API
/// that `table` does not list: a service's unit test asserts this is empty, so an RPC added
/// to the proto without a decision about who may call it fails the build's tests rather
/// than shipping unreachable (or, worse, guessed at).
pub fn unlisted_methods(table: &[MethodRule], service: &str) -> Vec<String> {
    use prost::Message;
    let set = prost_types::FileDescriptorSet::decode(kino_api::FILE_DESCRIPTOR_SET)
        .expect("kino's descriptor set decodes");
    let mut methods = Vec::new();
    for file in &set.file {
        for described in &file.service {
            let full = format!("{}.{}", file.package(), described.name());
            if full != service {
                continue;
            }
            for method in &described.method {
                methods.push(format!("/{full}/{}", method.name()));
            }
        }
    }
    assert!(!methods.is_empty(), "{service} is not in kino's API");
    methods
        .into_iter()
        .filter(|method| !table.iter().any(|(listed, _)| listed == method))
        .collect()
}

/// The tower layer [`crate::serve`] installs: establishes the [`Caller`] and applies the
/// server's [`Rules`].
#[derive(Debug, Clone)]
pub(crate) struct AuthorizeLayer {
    service_name: &'static str,
    transport: Transport,
    rules: Arc<Rules>,
}

impl AuthorizeLayer {
    pub(crate) fn new(service_name: &'static str, transport: Transport, rules: Rules) -> Self {
        Self {
            service_name,
            transport,
            rules: Arc::new(rules),
        }
    }
}

impl<S> Layer<S> for AuthorizeLayer {
    type Service = Authorize<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authorize {
            inner,
            layer: self.clone(),
        }
    }
}

/// See [`AuthorizeLayer`].
#[derive(Debug, Clone)]
pub(crate) struct Authorize<S> {
    inner: S,
    layer: AuthorizeLayer,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> Service<http::Request<B>> for Authorize<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let path = request.uri().path().to_owned();
        let decision =
            identify(self.layer.transport, request.extensions(), &path).and_then(|caller| {
                self.layer
                    .rules
                    .check(self.layer.service_name, &path, &caller)
                    .map(|()| caller)
            });
        match decision {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                let response = self.inner.call(request);
                Box::pin(response)
            }
            Err(status) => {
                tracing::info!(
                    service = self.layer.service_name,
                    method = %path,
                    code = ?status.code(),
                    reason = status.message(),
                    "request refused"
                );
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

/// The caller of a request on a listener of this transport.
fn identify(
    transport: Transport,
    extensions: &http::Extensions,
    path: &str,
) -> Result<Caller, tonic::Status> {
    match transport {
        Transport::Insecure => Ok(Caller::Insecure),
        Transport::UnixSocket => Ok(Caller::LocalSocket {
            uid: extensions
                .get::<UdsConnectInfo>()
                .and_then(|info| info.peer_cred)
                .map(|cred| cred.uid()),
        }),
        Transport::MutualTls => {
            let leaf = extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|info| info.peer_certs())
                .and_then(|certs| certs.first().cloned());
            let Some(leaf) = leaf else {
                return Err(tonic::Status::unauthenticated(format!(
                    "no client certificate: {path} needs one signed by the cluster CA (`kino pki init` makes them; clients take --upstream-tls-cert/--upstream-tls-key, or run as root to use the default PKI directory)"
                )));
            };
            Principal::from_certificate(&leaf)
                .map(Caller::Certificate)
                .map_err(tonic::Status::unauthenticated)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static TABLE: &[MethodRule] = &[
        ("/kino.x.v1.X/Read", Access::Authenticated),
        ("/kino.x.v1.X/Write", Access::Roles(&[Role::Agent])),
        ("/kino.x.v1.X/Admin", Access::Roles(&[])),
    ];

    fn rules() -> Rules {
        let mut rules = Rules::default();
        rules.add(TABLE);
        rules
    }

    fn caller(role: Role) -> Caller {
        Caller::Certificate(Principal {
            name: format!("test-{role}"),
            role: Some(role),
            organizations: vec![role.as_str().to_owned()],
        })
    }

    #[test]
    fn listed_roles_and_admin_may_call_others_are_denied_by_name() {
        let rules = rules();
        assert!(
            rules
                .check("kino-x", "/kino.x.v1.X/Write", &caller(Role::Agent))
                .is_ok()
        );
        assert!(
            rules
                .check("kino-x", "/kino.x.v1.X/Write", &caller(Role::Admin))
                .is_ok()
        );
        let denied = rules
            .check("kino-x", "/kino.x.v1.X/Write", &caller(Role::Ipam))
            .expect_err("ipam may not write");
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        let message = denied.message();
        assert!(message.contains("\"test-ipam\" (role ipam)"), "{message}");
        assert!(message.contains("/kino.x.v1.X/Write"), "{message}");
        assert!(message.contains("roles agent, admin"), "{message}");
        assert!(
            rules
                .check("kino-x", "/kino.x.v1.X/Admin", &caller(Role::Operator))
                .is_err()
        );
    }

    #[test]
    fn unknown_methods_are_denied_even_to_admin() {
        let denied = rules()
            .check("kino-x", "/kino.x.v1.X/New", &caller(Role::Admin))
            .expect_err("not listed");
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert!(
            denied.message().contains("nobody may call it"),
            "{denied:?}"
        );
    }

    #[test]
    fn health_reflection_and_reads_are_open_to_any_certificate() {
        let rules = rules();
        let nobody = Caller::Certificate(Principal {
            name: "stranger".into(),
            role: None,
            organizations: vec!["example".into()],
        });
        for path in [
            "/grpc.health.v1.Health/Check",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/kino.x.v1.X/Read",
        ] {
            assert!(rules.check("kino-x", path, &nobody).is_ok(), "{path}");
        }
        let denied = rules
            .check("kino-x", "/kino.x.v1.X/Write", &nobody)
            .expect_err("no role");
        assert!(
            denied.message().contains("names no kino role"),
            "{denied:?}"
        );
    }

    #[test]
    fn a_tls_request_without_a_certificate_is_unauthenticated() {
        let status = identify(
            Transport::MutualTls,
            &http::Extensions::new(),
            "/kino.x.v1.X/Read",
        )
        .expect_err("no certificate");
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert!(
            identify(
                Transport::UnixSocket,
                &http::Extensions::new(),
                "/kino.x.v1.X/Read"
            )
            .expect("socket peers are admin")
            .is_admin()
        );
    }
}

//! The kino side of the run: a real cluster (`kino_integration_tests::cluster`: gateway,
//! ipam, policy-compiler, an agent per node namespace), a client pod and 10 backend pods
//! on node 1 (kino-rr servers on :8080), and S services created through kino-ipam's
//! `kino.service.v1` — the API `kino service create` calls — all with the same 10 backends
//! (backends must be addresses IPAM allocated) on VIPs of the default service CIDR.
//!
//! Whether a frontend is programmed is read from each agent's pinned frontend map
//! (`lb_map.rs`), the map its socket programs consult at `connect`.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use kino_api::service as pb;
use kino_api::service::load_balancing_service_client::LoadBalancingServiceClient;
use kino_integration_tests::cluster::{Cluster, ClusterOptions, ClusterPod};
use kino_integration_tests::rr::{Endpoints, RrServer, client_sysctls};
use kino_service_kit::TracedChannel;

use crate::lb_map::FrontendMap;
use crate::reference::BACKENDS;
use crate::services::{BACKEND_PORT, NAMESPACE, SERVICE_PORT};

/// The cluster, its pods and a client of kino-ipam's service API.
pub struct KinoWorld {
    // Fields drop in order: servers, pods, map handles, then the cluster.
    _servers: Vec<RrServer>,
    /// The client pod.
    pub client: ClusterPod,
    _backend_pods: Vec<ClusterPod>,
    /// The backend pods' addresses.
    pub backends: Vec<Ipv4Addr>,
    services: LoadBalancingServiceClient<TracedChannel>,
    frontends: Vec<FrontendMap>,
    _cluster: Cluster,
}

impl KinoWorld {
    /// Starts a `nodes`-node cluster with the pods on node 1, servers pinned to `server_cpu`.
    pub async fn start(nodes: usize, server_cpu: usize) -> anyhow::Result<KinoWorld> {
        let cluster = Cluster::start_converged(
            "bsv",
            ClusterOptions {
                nodes,
                routing: "native",
                agent_args: vec!["--metrics-address".into(), "off".into()],
            },
        )
        .await;
        let client = cluster.add_pod(0, "client", &[("app", "client")]);
        client_sysctls(&client.netns.name)?;
        let mut backend_pods = Vec::new();
        let mut servers = Vec::new();
        for i in 0..BACKENDS {
            let pod = cluster.add_pod(0, &format!("backend{i}"), &[("app", "backend")]);
            servers.push(RrServer::spawn(&pod.netns.name, server_cpu, BACKEND_PORT)?);
            backend_pods.push(pod);
        }
        let backends = backend_pods
            .iter()
            .map(|p| p.ipv4.parse::<Ipv4Addr>())
            .collect::<Result<Vec<_>, _>>()?;
        let channel =
            kino_service_kit::connect(&cluster.suite.ipam_target(), &cluster.suite.admin_tls())
                .await
                .map_err(|e| anyhow!("connecting to kino-ipam: {e}"))?;
        // Each agent pins its maps under <pin root>/<node name>.
        let frontends = cluster
            .nodes
            .iter()
            .map(|node| FrontendMap::open(&cluster.suite.pin_root.join(&node.name)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(KinoWorld {
            _cluster: cluster,
            client,
            backends,
            services: LoadBalancingServiceClient::new(channel),
            frontends,
            _servers: servers,
            _backend_pods: backend_pods,
        })
    }

    /// The client → backend 0 path (the limit of the kino rows).
    pub fn straight(&self) -> Endpoints {
        Endpoints {
            client_netns: self.client.netns.name.clone(),
            server: SocketAddr::new(self.backends[0].into(), BACKEND_PORT),
        }
    }

    /// The client → service `i`'s VIP path.
    pub fn via_vip(&self, i: usize) -> Endpoints {
        Endpoints {
            client_netns: self.client.netns.name.clone(),
            server: SocketAddr::new(kino_vip(i).into(), SERVICE_PORT),
        }
    }

    /// Creates services `from..to` (16 requests in flight); how long it took.
    pub async fn create_services(&self, from: usize, to: usize) -> anyhow::Result<Duration> {
        let start = Instant::now();
        let limit = Arc::new(tokio::sync::Semaphore::new(16));
        let mut tasks = tokio::task::JoinSet::new();
        for i in from..to {
            let permit = limit.clone().acquire_owned().await?;
            let mut client = self.services.clone();
            let request = self.create_request(i);
            tasks.spawn(async move {
                let _permit = permit;
                client
                    .create_service(request)
                    .await
                    .map_err(|s| anyhow!("creating service {i}: {}", s.message()))
            });
        }
        while let Some(done) = tasks.join_next().await {
            done??;
        }
        Ok(start.elapsed())
    }

    /// Creates service `i` alone; the time to kino-ipam's answer.
    pub async fn create_one(&self, i: usize) -> anyhow::Result<Duration> {
        let start = Instant::now();
        self.services
            .clone()
            .create_service(self.create_request(i))
            .await
            .map_err(|s| anyhow!("creating service {i}: {}", s.message()))?;
        Ok(start.elapsed())
    }

    /// Deletes service `i`; the time to kino-ipam's answer.
    pub async fn delete_one(&self, i: usize) -> anyhow::Result<Duration> {
        let start = Instant::now();
        self.services
            .clone()
            .delete_service(pb::DeleteServiceRequest {
                namespace: NAMESPACE.to_owned(),
                name: kino_service_name(i),
            })
            .await
            .map_err(|s| anyhow!("deleting service {i}: {}", s.message()))?;
        Ok(start.elapsed())
    }

    fn create_request(&self, i: usize) -> pb::CreateServiceRequest {
        pb::CreateServiceRequest {
            service: Some(pb::Service {
                namespace: NAMESPACE.to_owned(),
                name: kino_service_name(i),
                r#type: pb::ServiceType::ClusterIp as i32,
                frontends: vec![pb::Frontend {
                    r#type: pb::FrontendType::ClusterIp as i32,
                    address: kino_vip(i).to_string(),
                    port: u32::from(SERVICE_PORT),
                    protocol: pb::Protocol::Tcp as i32,
                    ..Default::default()
                }],
                backends: self
                    .backends
                    .iter()
                    .map(|ip| pb::Backend {
                        address: ip.to_string(),
                        port: u32::from(BACKEND_PORT),
                        protocol: pb::Protocol::Tcp as i32,
                        weight: 1,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }),
        }
    }

    /// Waits until every node's frontend map has (`present`: with all its backends) or has
    /// not the frontend of service `i`; how long since `since`.
    pub async fn wait_programmed(
        &self,
        i: usize,
        present: bool,
        since: Instant,
    ) -> anyhow::Result<Duration> {
        let deadline = since + Duration::from_secs(30);
        let mut pending: Vec<&FrontendMap> = self.frontends.iter().collect();
        loop {
            let mut still = Vec::new();
            for map in pending {
                let backends = map.backends(kino_vip(i), SERVICE_PORT)?;
                let done = match backends {
                    Some(n) => present && n as usize == self.backends.len(),
                    None => !present,
                };
                if !done {
                    still.push(map);
                }
            }
            if still.is_empty() {
                return Ok(since.elapsed());
            }
            pending = still;
            if Instant::now() > deadline {
                return Err(anyhow!(
                    "service {i}'s frontend {}:{SERVICE_PORT} is not {} on every node after 30 s",
                    kino_vip(i),
                    if present { "programmed" } else { "gone" }
                ));
            }
            // Busy-poll (a lookup is microseconds): the wait is what is measured.
            tokio::task::yield_now().await;
        }
    }
}

/// Service `i`'s name.
pub fn kino_service_name(i: usize) -> String {
    format!("svc-{i:05}")
}

/// Service `i`'s VIP in kino's default service CIDR 172.20.0.0/16.
pub fn kino_vip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 20, 0, 1)) + i as u32)
}

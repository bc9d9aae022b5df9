//! End-to-end: the two canonical use cases of `examples/`, loaded from their manifests as a
//! user would `kubectl apply` them, enforced by the node agents, checked with real traffic.
//!
//! - `examples/tenant-ingress`: default-deny ingress in `tenant-a`, open to the ingress
//!   controller's namespace on the web pods' named port `http`, also through the Service.
//! - `examples/egress-db-dns`: the `api` pods may reach only the managed database
//!   (`10.200.0.0/24`, TCP 5432; here an external host of the harness holding 10.200.0.10,
//!   routed by the nodes) and the cluster DNS (the `kube-dns` pods in `kube-system`, UDP and
//!   TCP 53, also through the ClusterIP 10.96.0.10 of the harness's kube-proxy stand-in).
//!
//! The namespaces and policies are the files unchanged; the Deployments become pods of the
//! harness (`<deployment>-<replica>`, with the template's labels and container ports) placed
//! on both nodes so that same-node and cross-node paths are both exercised. The expected
//! cells are the tables of the examples' READMEs.
//!
//! Needs root and the built binaries; skips loudly when not root.

mod agent_support;

use std::net::IpAddr;

use agent_support::*;
use nftpol_e2e::kube_cluster::KubeCluster;
use nftpol_e2e::{Family, Outcome, Pod, PodSpec, Proto, Service, service_ip, skip_unless_root};
use serde_json::Value;

/// Applies every document of kind `kind` of a manifest file.
fn apply_kind(kc: &KubeCluster, docs: &[Value], kind: &str) -> usize {
    let mut n = 0;
    for doc in docs.iter().filter(|d| d["kind"] == kind) {
        kc.apply(doc.clone()).unwrap();
        n += 1;
    }
    n
}

/// One pod per replica of every Deployment: `<name>-<i>` with the template's labels and
/// container ports, on the node `place(deployment, replica)` says.
fn deployment_pods(docs: &[Value], place: impl Fn(&str, usize) -> usize) -> Vec<PodSpec> {
    let mut specs = Vec::new();
    for d in docs.iter().filter(|d| d["kind"] == "Deployment") {
        let name = d["metadata"]["name"].as_str().unwrap();
        let namespace = d["metadata"]["namespace"].as_str().unwrap();
        let template = &d["spec"]["template"];
        for i in 0..d["spec"]["replicas"].as_u64().unwrap_or(1) as usize {
            let mut spec = PodSpec::new(namespace, &format!("{name}-{i}")).on(place(name, i));
            for (k, v) in template["metadata"]["labels"].as_object().unwrap() {
                spec = spec.label(k, v.as_str().unwrap());
            }
            for c in template["spec"]["containers"].as_array().unwrap() {
                for p in c["ports"].as_array().into_iter().flatten() {
                    let proto = match p["protocol"].as_str() {
                        Some("UDP") => Proto::Udp,
                        _ => Proto::Tcp,
                    };
                    let port = p["containerPort"].as_u64().unwrap() as u16;
                    spec = spec.port(p["name"].as_str().unwrap_or(""), proto, port);
                }
            }
            specs.push(spec);
        }
    }
    specs
}

/// The harness Services for the manifest's Services: backends are the pods the selector
/// matches, the target port resolved (by name) on each.
fn services(docs: &[Value], pods: &[Pod], first_ip: u16) -> Vec<Service> {
    let mut out = Vec::new();
    for (n, s) in (first_ip..).zip(docs.iter().filter(|d| d["kind"] == "Service")) {
        let name = format!(
            "{}/{}",
            s["metadata"]["namespace"].as_str().unwrap(),
            s["metadata"]["name"].as_str().unwrap()
        );
        let selector = s["spec"]["selector"].as_object().unwrap();
        let backends: Vec<&Pod> = pods
            .iter()
            .filter(|p| {
                p.namespace() == s["metadata"]["namespace"]
                    && selector
                        .iter()
                        .all(|(k, v)| p.spec.labels.get(k).map(String::as_str) == v.as_str())
            })
            .collect();
        let ip = service_ip(Family::V4, n);
        for port in s["spec"]["ports"].as_array().unwrap() {
            let proto = match port["protocol"].as_str() {
                Some("UDP") => Proto::Udp,
                _ => Proto::Tcp,
            };
            let mut svc = Service::new(&name, proto, ip, port["port"].as_u64().unwrap() as u16);
            for pod in &backends {
                let target = match &port["targetPort"] {
                    Value::String(named) => pod
                        .spec
                        .ports
                        .iter()
                        .find(|(n, p, _)| n == named && *p == proto)
                        .map(|(_, _, port)| *port)
                        .unwrap_or_else(|| panic!("{} has no port {named}", pod.key())),
                    v => v.as_u64().unwrap() as u16,
                };
                svc = svc.backend(pod.ips[0], target);
            }
            out.push(svc);
        }
    }
    out
}

fn pod<'a>(pods: &'a [Pod], key: &str) -> &'a Pod {
    pods.iter()
        .find(|p| p.key() == key)
        .unwrap_or_else(|| panic!("no pod {key}"))
}

#[test]
fn tenant_ingress_example_default_deny_admits_only_the_ingress_controllers_namespace() {
    skip_unless_root!(
        "tenant_ingress_example_default_deny_admits_only_the_ingress_controllers_namespace"
    );
    // Dual-stack: the policies have no address in them, so IPv6 must behave like IPv4.
    let kc = builder("ex-tenant")
        .dual_stack(true)
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let namespaces = manifests("examples/tenant-ingress/00-namespaces.yaml");
    let policies = manifests("examples/tenant-ingress/10-policies.yaml");
    let workloads = manifests("examples/tenant-ingress/20-demo-workloads.yaml");
    assert_eq!(apply_kind(&kc, &namespaces, "Namespace"), 3);

    // web-0 and neighbour on node-0, web-1 on node-1; the clients of the other namespaces
    // on node-1 (same node as web-1, across nodes from web-0).
    let specs = deployment_pods(&workloads, |deployment, replica| match deployment {
        "web" => replica % 2,
        "neighbour" => 0,
        _ => 1,
    });
    let pods = kc.add_pods(specs).unwrap();
    for p in &pods {
        // The README's "another port" too; every pod answers both, so a blocked cell can
        // only be a drop.
        p.serve_all(&[(Proto::Tcp, 8080), (Proto::Tcp, 9999)])
            .unwrap();
    }
    let svcs = services(&workloads, &pods, 1);
    assert_eq!(svcs.len(), 1);
    let web_svc = sock(svcs[0].cluster_ip, svcs[0].port);
    for s in svcs {
        kc.add_service(s).unwrap();
    }
    let (web0, web1) = (pod(&pods, "tenant-a/web-0"), pod(&pods, "tenant-a/web-1"));
    let neighbour = pod(&pods, "tenant-a/neighbour-0");
    let outsider = pod(&pods, "tenant-b/outsider-0");
    let client = pod(&pods, "ingress-nginx/ingress-client-0");

    // Before any policy: everybody gets through.
    expect(outsider, web_svc, Proto::Tcp, Outcome::Connected);
    expect(
        neighbour,
        sock(web1.ips[0], 8080),
        Proto::Tcp,
        Outcome::Connected,
    );

    assert_eq!(apply_kind(&kc, &policies, "NetworkPolicy"), 2);
    kc.wait_watched("networkpolicy", 2, WAIT).unwrap();
    until_blocked(outsider, Proto::Tcp, sock(web0.ips[0], 8080));
    until_blocked(outsider, Proto::Tcp, sock(web1.ips[0], 8080));

    use Outcome::{Blocked, Connected};
    let (n0, n1) = (kc.node(0), kc.node(1));
    let at = |p: &Pod, port| sock(p.ips[0], port);
    let at6 = |p: &Pod, port| sock(p.ipv6().unwrap(), port);
    expect_all(
        "tenant-ingress",
        &[
            // The README's table.
            cell(client, Proto::Tcp, web_svc, "Service web:80", Connected),
            cell(outsider, Proto::Tcp, web_svc, "Service web:80", Blocked),
            cell(neighbour, Proto::Tcp, web_svc, "Service web:80", Blocked),
            cell(
                client,
                Proto::Tcp,
                at(web0, 9999),
                "web-0 (other port)",
                Blocked,
            ),
            // Each web pod, same node and across nodes.
            cell(client, Proto::Tcp, at(web0, 8080), "web-0 http", Connected),
            cell(client, Proto::Tcp, at(web1, 8080), "web-1 http", Connected),
            cell(outsider, Proto::Tcp, at(web0, 8080), "web-0 http", Blocked),
            cell(outsider, Proto::Tcp, at(web1, 8080), "web-1 http", Blocked),
            cell(neighbour, Proto::Tcp, at(web0, 8080), "web-0 http", Blocked),
            cell(neighbour, Proto::Tcp, at(web1, 8080), "web-1 http", Blocked),
            // Default deny covers the whole namespace, the controller included.
            cell(
                client,
                Proto::Tcp,
                at(neighbour, 8080),
                "neighbour",
                Blocked,
            ),
            cell(web0, Proto::Tcp, at(neighbour, 8080), "neighbour", Blocked),
            // Kubelet probes: a node reaches its own pods, not the other node's.
            cell(n0, Proto::Tcp, at(web0, 8080), "web-0 http", Connected),
            cell(n0, Proto::Tcp, at(neighbour, 9999), "neighbour", Connected),
            cell(n1, Proto::Tcp, at(web1, 9999), "web-1", Connected),
            cell(n1, Proto::Tcp, at(web0, 8080), "web-0 http", Blocked),
            // tenant-a's pods are not limited in what they start; tenant-b is open.
            cell(
                neighbour,
                Proto::Tcp,
                at(outsider, 9999),
                "outsider",
                Connected,
            ),
            cell(
                web0,
                Proto::Tcp,
                at(client, 8080),
                "ingress-client",
                Connected,
            ),
            cell(
                client,
                Proto::Tcp,
                at(outsider, 8080),
                "outsider",
                Connected,
            ),
            // The same over IPv6.
            cell(
                client,
                Proto::Tcp,
                at6(web0, 8080),
                "web-0 http v6",
                Connected,
            ),
            cell(
                client,
                Proto::Tcp,
                at6(web1, 8080),
                "web-1 http v6",
                Connected,
            ),
            cell(
                client,
                Proto::Tcp,
                at6(web1, 9999),
                "web-1 v6 (other port)",
                Blocked,
            ),
            cell(
                outsider,
                Proto::Tcp,
                at6(web0, 8080),
                "web-0 http v6",
                Blocked,
            ),
            cell(
                outsider,
                Proto::Tcp,
                at6(web1, 8080),
                "web-1 http v6",
                Blocked,
            ),
            cell(
                neighbour,
                Proto::Tcp,
                at6(web0, 8080),
                "web-0 http v6",
                Blocked,
            ),
            cell(n0, Proto::Tcp, at6(web0, 8080), "web-0 http v6", Connected),
            cell(n1, Proto::Tcp, at6(web0, 8080), "web-0 http v6", Blocked),
            cell(
                neighbour,
                Proto::Tcp,
                at6(outsider, 9999),
                "outsider v6",
                Connected,
            ),
        ],
    );
}

#[test]
fn egress_db_dns_example_lets_the_api_pods_reach_only_the_database_and_the_cluster_dns() {
    skip_unless_root!(
        "egress_db_dns_example_lets_the_api_pods_reach_only_the_database_and_the_cluster_dns"
    );
    let kc = cluster("ex-egress");
    let namespace = manifests("examples/egress-db-dns/00-namespace.yaml");
    let policies = manifests("examples/egress-db-dns/10-policy.yaml");
    let workloads = manifests("examples/egress-db-dns/20-demo-workloads.yaml");
    assert_eq!(apply_kind(&kc, &namespace, "Namespace"), 1);

    // The managed database: an external host holding 10.200.0.10 in the policy's
    // 10.200.0.0/24, which the nodes route to it.
    let db = kc.add_host("db").unwrap();
    let db_ip: IpAddr = "10.200.0.10".parse().unwrap();
    db.netns
        .ip(&["addr", "add", "10.200.0.10/24", "dev", "eth0"])
        .unwrap();
    for node in kc.nodes() {
        node.netns
            .ip(&["route", "add", "10.200.0.0/24", "via", &db.ipv4.to_string()])
            .unwrap();
    }
    db.netns.serve(Proto::Tcp, 5432).unwrap();

    // The cluster DNS: kube-dns pods on both nodes, behind the ClusterIP 10.96.0.10.
    let mut specs: Vec<PodSpec> = (0..2)
        .map(|i| {
            PodSpec::new("kube-system", &format!("coredns-{i}"))
                .on(i)
                .label("k8s-app", "kube-dns")
                .port("dns", Proto::Udp, 53)
                .port("dns-tcp", Proto::Tcp, 53)
                .port("metrics", Proto::Tcp, 9153)
        })
        .collect();
    // api and batch on node-0 (one DNS pod with them, one across), an unrelated pod on node-1.
    specs.extend(deployment_pods(&workloads, |_, _| 0));
    specs.push(PodSpec::new("elsewhere", "web").on(1));
    let pods = kc.add_pods(specs).unwrap();
    for p in &pods {
        if p.namespace() == "kube-system" {
            p.serve_all(&[(Proto::Udp, 53), (Proto::Tcp, 53), (Proto::Tcp, 9153)])
                .unwrap();
        } else {
            p.serve(Proto::Tcp, 8080).unwrap();
        }
    }
    let dns_ip = service_ip(Family::V4, 10);
    let dns = |proto| {
        pods.iter().filter(|p| p.namespace() == "kube-system").fold(
            Service::new("kube-system/kube-dns", proto, dns_ip, 53),
            |s, p| s.backend(p.ips[0], 53),
        )
    };
    kc.add_service(dns(Proto::Udp)).unwrap();
    kc.add_service(dns(Proto::Tcp)).unwrap();
    for node in kc.nodes() {
        node.netns.serve(Proto::Tcp, 10250).unwrap();
    }
    let api = pod(&pods, "shop/api-0");
    let batch = pod(&pods, "shop/batch-0");
    let other = pod(&pods, "elsewhere/web");
    let (dns0, dns1) = (
        pod(&pods, "kube-system/coredns-0"),
        pod(&pods, "kube-system/coredns-1"),
    );
    expect(
        api,
        sock(other.ips[0], 8080),
        Proto::Tcp,
        Outcome::Connected,
    );

    assert_eq!(apply_kind(&kc, &policies, "NetworkPolicy"), 1);
    kc.wait_watched("networkpolicy", 1, WAIT).unwrap();
    until_blocked(api, Proto::Tcp, sock(other.ips[0], 8080));

    use Outcome::{Blocked, Connected, Refused};
    let at = |p: &Pod, port| sock(p.ips[0], port);
    let node0 = kc.node(0);
    let node0_kubelet = sock(IpAddr::V4(node0.ipv4), 10250);
    expect_all(
        "egress-db-dns",
        &[
            // The README's table.
            cell(api, Proto::Tcp, sock(db_ip, 5432), "database", Connected),
            cell(
                api,
                Proto::Udp,
                sock(dns_ip, 53),
                "kube-dns ClusterIP",
                Connected,
            ),
            cell(
                api,
                Proto::Tcp,
                sock(dns_ip, 53),
                "kube-dns ClusterIP",
                Connected,
            ),
            cell(
                api,
                Proto::Tcp,
                sock(db_ip, 8080),
                "database, other port",
                Blocked,
            ),
            cell(
                api,
                Proto::Tcp,
                at(dns0, 9153),
                "coredns-0 metrics",
                Blocked,
            ),
            cell(
                batch,
                Proto::Tcp,
                sock(db_ip, 8080),
                "database, other port",
                Refused,
            ),
            // The DNS pods directly, same node and across nodes.
            cell(api, Proto::Udp, at(dns0, 53), "coredns-0", Connected),
            cell(api, Proto::Tcp, at(dns1, 53), "coredns-1", Connected),
            cell(api, Proto::Udp, at(dns1, 53), "coredns-1", Connected),
            cell(
                api,
                Proto::Tcp,
                at(dns1, 9153),
                "coredns-1 metrics",
                Blocked,
            ),
            // Anything else: the same host outside the CIDR, other pods, its own node.
            cell(
                api,
                Proto::Tcp,
                sock(IpAddr::V4(db.ipv4), 5432),
                "db host, other address",
                Blocked,
            ),
            cell(
                api,
                Proto::Tcp,
                at(batch, 8080),
                "batch (same node)",
                Blocked,
            ),
            cell(api, Proto::Tcp, at(other, 8080), "elsewhere/web", Blocked),
            cell(api, Proto::Tcp, node0_kubelet, "its node", Blocked),
            // Nothing limits who connects to api, nor what batch does.
            cell(other, Proto::Tcp, at(api, 8080), "api", Connected),
            cell(batch, Proto::Tcp, at(api, 8080), "api", Connected),
            cell(batch, Proto::Tcp, sock(db_ip, 5432), "database", Connected),
            cell(
                batch,
                Proto::Tcp,
                at(dns0, 9153),
                "coredns-0 metrics",
                Connected,
            ),
            cell(
                batch,
                Proto::Tcp,
                at(other, 8080),
                "elsewhere/web",
                Connected,
            ),
            cell(batch, Proto::Tcp, node0_kubelet, "its node", Connected),
        ],
    );
}

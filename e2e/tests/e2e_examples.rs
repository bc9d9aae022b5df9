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
use nftpol_e2e::examples::{
    DATABASE_IP, DATABASE_PORT, add_database, apply_kind, deployment_pods, kube_dns_ip,
    kube_dns_pods, kube_dns_services, serve_declared_ports, services,
};
use nftpol_e2e::{Outcome, Pod, PodSpec, Proto, skip_unless_root};
use serde_json::Value;

/// The documents of a manifest of `examples/`.
fn manifests(relative: &str) -> Vec<Value> {
    nftpol_e2e::examples::manifests(relative).unwrap_or_else(|e| panic!("{e}"))
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
    let namespaces = manifests("tenant-ingress/00-namespaces.yaml");
    let policies = manifests("tenant-ingress/10-policies.yaml");
    let workloads = manifests("tenant-ingress/20-demo-workloads.yaml");
    assert_eq!(apply_kind(&kc, &namespaces, "Namespace").unwrap(), 3);

    // web-0 and neighbour on node-0, web-1 on node-1; the clients of the other namespaces
    // on node-1 (same node as web-1, across nodes from web-0).
    let specs = deployment_pods(&workloads, |deployment, replica| match deployment {
        "web" => replica % 2,
        "neighbour" => 0,
        _ => 1,
    })
    .unwrap();
    let pods = kc.add_pods(specs).unwrap();
    for p in &pods {
        // The README's "another port" too; every pod answers both, so a blocked cell can
        // only be a drop.
        p.serve_all(&[(Proto::Tcp, 8080), (Proto::Tcp, 9999)])
            .unwrap();
    }
    let svcs = services(&workloads, &pods, 1).unwrap();
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

    assert_eq!(apply_kind(&kc, &policies, "NetworkPolicy").unwrap(), 2);
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
    let namespace = manifests("egress-db-dns/00-namespace.yaml");
    let policies = manifests("egress-db-dns/10-policy.yaml");
    let workloads = manifests("egress-db-dns/20-demo-workloads.yaml");
    assert_eq!(apply_kind(&kc, &namespace, "Namespace").unwrap(), 1);

    // The managed database: an external host holding 10.200.0.10 in the policy's
    // 10.200.0.0/24, which the nodes route to it.
    let db = add_database(&kc).unwrap();
    let db_ip = IpAddr::V4(DATABASE_IP);

    // The cluster DNS: kube-dns pods on both nodes, behind the ClusterIP 10.96.0.10.
    let mut specs: Vec<PodSpec> = kube_dns_pods(2);
    // api and batch on node-0 (one DNS pod with them, one across), an unrelated pod on node-1.
    specs.extend(deployment_pods(&workloads, |_, _| 0).unwrap());
    specs.push(PodSpec::new("elsewhere", "web").on(1));
    let pods = kc.add_pods(specs).unwrap();
    for p in &pods {
        if p.namespace() == "kube-system" {
            serve_declared_ports(p).unwrap();
        } else {
            p.serve(Proto::Tcp, 8080).unwrap();
        }
    }
    let dns_ip = kube_dns_ip();
    for svc in kube_dns_services(&pods) {
        kc.add_service(svc).unwrap();
    }
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

    assert_eq!(apply_kind(&kc, &policies, "NetworkPolicy").unwrap(), 1);
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
            cell(
                api,
                Proto::Tcp,
                sock(db_ip, DATABASE_PORT),
                "database",
                Connected,
            ),
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
                sock(IpAddr::V4(db.ipv4), DATABASE_PORT),
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
            cell(
                batch,
                Proto::Tcp,
                sock(db_ip, DATABASE_PORT),
                "database",
                Connected,
            ),
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

//! A local demo: a 2-node dual-stack cluster with 3 namespaces x 3 pods, a Service, and the
//! connectivity matrix without any policy. With `--wait` the namespaces stay up until Enter is
//! pressed, so you can look around (`ip netns exec <node> nft list ruleset`, probe by hand).
//!
//! Run as root: `cargo run -p nftpol-e2e --example demo -- --wait`. If it is killed, the next
//! run removes what it left.

use std::time::Duration;

use nftpol_e2e::{Cluster, Family, Matrix, PodSpec, Proto, Service, service_ip};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if !nftpol_e2e::is_root() {
        eprintln!("the demo needs root: it creates network namespaces");
        std::process::exit(2);
    }
    nftpol_e2e::init_logging();
    let wait = std::env::args().any(|a| a == "--wait");

    let cluster = Cluster::builder("demo").nodes(2).dual_stack(true).build()?;
    let mut specs = Vec::new();
    for (n, ns) in ["x", "y", "z"].iter().enumerate() {
        cluster.set_namespace_labels(ns, [("team", *ns)]);
        for (p, pod) in ["a", "b", "c"].iter().enumerate() {
            specs.push(
                PodSpec::new(ns, pod)
                    .on((n + p) % 2)
                    .label("pod", pod)
                    .port("http", Proto::Tcp, 80),
            );
        }
    }
    let pods = cluster.add_pods(specs)?;
    for pod in &pods {
        pod.serve_all(&[(Proto::Tcp, 80), (Proto::Udp, 53)])?;
    }
    let backend = pods[4].ipv4().ok_or("pod without IPv4")?;
    let svc_ip = service_ip(Family::V4, 10);
    cluster.add_service(Service::new("x/web", Proto::Tcp, svc_ip, 80).backend(backend, 80))?;
    cluster.add_service(Service::new("x/dns", Proto::Udp, svc_ip, 53).backend(backend, 53))?;
    println!("{}", cluster.describe());

    let result = Matrix::new(Duration::from_secs(1))
        .rows(&pods)
        .rows(cluster.nodes())
        .pod_cols(&pods, Family::V4)
        .col("svc x/web", svc_ip)
        .case(Proto::Tcp, 80)
        .case(Proto::Udp, 53)
        .run();
    println!(
        "without any policy ({:?}):\n{}",
        result.elapsed,
        result.grid()
    );

    if wait {
        println!("namespaces stay up; press Enter to tear down");
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
    }
    cluster.shutdown()?;
    Ok(())
}

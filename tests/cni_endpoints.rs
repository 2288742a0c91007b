//! The CNI plugin as a container runtime runs it, against a real `beeline agent` process and the
//! in-memory Kubernetes API: the agent installs the plugin and writes the conflist, the test
//! execs the installed `beeline-cni` with the CNI environment and the conflist's config on stdin
//! against network namespaces it creates. Checks the pod's network, the host veth with
//! `from_container` attached, the endpoint map row, the CiliumEndpoint and CiliumIdentity; DEL,
//! DEL twice, CHECK; a burst of 200 concurrent ADD/DEL; an agent restart keeping endpoints.
//!
//! Root: BPF, veths and namespaces. Everything is created under unique names and removed on drop.

mod integration;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use beeline::cni::network::host_ifname;
use beeline::cni::types::{CniResult, NetworkConfigList};
use beeline::crds::cilium_endpoint::CiliumEndpoint;
use beeline::crds::CiliumIdentity;
use beeline::datapath::{attach, tables, Direction};
use integration::{
    free_port, require_root, wait_for, write_kubeconfig, BpffsDir, NetNs, Proc, TestApiServer, Topology,
};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{Api, ObjectMeta, PostParams};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_beeline");
const POD_CIDR: &str = "10.77.1.0/24";
const NODE_IP: &str = "192.168.77.10";
const NAMESPACE: &str = "shop";

struct Cluster {
    /// The test's own API calls and agent-socket requests run here (the server has its own).
    rt: tokio::runtime::Runtime,
    api: TestApiServer,
    dir: tempfile::TempDir,
    bpf: BpffsDir,
    health_port: u16,
}

impl Cluster {
    /// An in-process client; its request buffer lives on [`Self::rt`].
    fn client(&self) -> kube::Client {
        let _enter = self.rt.enter();
        self.api.server.client()
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }
    fn socket(&self) -> PathBuf {
        self.dir.path().join("run/beeline.sock")
    }
    fn plugin(&self) -> PathBuf {
        self.dir.path().join("bin/beeline-cni")
    }
    fn conflist(&self) -> PathBuf {
        self.dir.path().join("net.d/05-beeline.conflist")
    }

    /// The in-memory API with the CRDs, the Node (with its pod CIDR: `ipam: kubernetes`) and the
    /// pods' namespace.
    fn start(pods: usize) -> Cluster {
        let api = TestApiServer::start();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let client = {
            let _enter = rt.enter();
            api.server.client()
        };
        rt.block_on(async {
            let options = beeline::operator::crd_install::InstallOptions {
                timeout: Duration::from_secs(20),
                ..Default::default()
            };
            beeline::operator::crd_install::install(&client, &beeline::crds::all(), &options).await.unwrap();
            let node: Node = serde_json::from_value(json!({
                "metadata": {"name": "node-a"},
                "spec": {"podCIDR": POD_CIDR, "podCIDRs": [POD_CIDR]},
                "status": {"addresses": [{"type": "InternalIP", "address": NODE_IP}]}
            }))
            .unwrap();
            Api::<Node>::all(client.clone()).create(&PostParams::default(), &node).await.unwrap();
            let ns = Namespace {
                metadata: ObjectMeta {
                    name: Some(NAMESPACE.into()),
                    labels: Some([("team".to_string(), "a".to_string())].into()),
                    ..Default::default()
                },
                ..Default::default()
            };
            Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.unwrap();
            let pods_api: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
            for i in 0..pods {
                let pod: Pod = serde_json::from_value(json!({
                    "metadata": {"name": format!("web-{i}"), "labels": {"app": "web", "pod-template-hash": format!("h{i}")}},
                    "spec": {"serviceAccountName": "web-sa", "nodeName": "node-a", "containers": [{"name": "c", "image": "x"}]}
                }))
                .unwrap();
                pods_api.create(&PostParams::default(), &pod).await.unwrap();
            }
        });
        let dir = tempfile::Builder::new().prefix("beeline-cni-test-").tempdir().unwrap();
        write_kubeconfig(dir.path(), api.port);
        Cluster { rt, api, dir, bpf: BpffsDir::new("cni"), health_port: free_port() }
    }

    /// Runs `beeline agent` and waits until it wrote the conflist (its IPAM is ready).
    fn agent(&self) -> Proc {
        let _ = std::fs::remove_file(self.conflist());
        let set = |kv: String| ["--set".to_string(), kv];
        let d = self.dir.path();
        let mut args = vec![
            "agent".to_string(),
            "--kubeconfig".into(),
            d.join("kubeconfig").display().to_string(),
            "--node-name".into(),
            "node-a".into(),
        ];
        for kv in [
            self.bpf.bpf_root_set(),
            "ipam=kubernetes".into(),
            format!("agent-health-port={}", self.health_port),
            format!("agent-socket-path={}", self.socket().display()),
            format!("state-dir={}", d.join("state").display()),
            format!("cni-conf-dir={}", d.join("net.d").display()),
            format!("cni-bin-dir={}", d.join("bin").display()),
        ] {
            args.extend(set(kv));
        }
        let log = std::fs::File::create(d.join("agent.log")).unwrap();
        let child = Command::new(BIN)
            .args(&args)
            .env_remove("KUBECONFIG")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let proc = Proc(child);
        wait_for("the agent to write the CNI conflist", Duration::from_secs(60), || {
            self.conflist().exists().then_some(())
        });
        proc
    }

    fn agent_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// The plugin's stdin, as a runtime derives it from the conflist.
    fn plugin_config(&self) -> Vec<u8> {
        let list = NetworkConfigList::parse(&std::fs::read(self.conflist()).unwrap()).unwrap();
        let mut conf = serde_json::to_value(&list.plugins[0]).unwrap();
        conf["name"] = json!(list.name);
        conf["cniVersion"] = json!("1.1.0");
        serde_json::to_vec(&conf).unwrap()
    }

    fn cni(&self, command: &str, container: &str, pod: &str, netns: &Path, stdin: &[u8]) -> (i32, String) {
        let mut child = Command::new(self.plugin())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", container)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", self.dir.path().join("bin"))
            .env("CNI_ARGS", format!("K8S_POD_NAMESPACE={NAMESPACE};K8S_POD_NAME={pod};IgnoreUnknown=1"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        let out = child.wait_with_output().unwrap();
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn cep(&self, pod: &str) -> Option<CiliumEndpoint> {
        self.block_on(Api::<CiliumEndpoint>::namespaced(self.client(), NAMESPACE).get_opt(pod)).unwrap()
    }

    fn identities(&self) -> Vec<CiliumIdentity> {
        self.block_on(Api::<CiliumIdentity>::all(self.client()).list(&Default::default())).unwrap().items
    }

    /// The IPv4 rows (this cluster is IPv4-only).
    fn rows(&self) -> BTreeMap<Ipv4Addr, beeline_common::endpoint::EndpointInfo> {
        let rows = tables::list_endpoints(&self.bpf.pin_dir()).unwrap();
        assert!(rows.keys().all(IpAddr::is_ipv4), "no IPv6 rows in an IPv4-only cluster: {rows:?}");
        rows.into_iter().map(|(ip, row)| (v4(ip), row)).collect()
    }

    /// Pod addresses the agent holds (router and health excluded).
    fn pod_allocations(&self) -> Vec<IpAddr> {
        let listing: beeline::controllers::agent::ipam_state::IpamListing =
            self.block_on(beeline::cli::agent_client::get_json(&self.socket(), "/v1/ipam")).unwrap();
        listing
            .allocations
            .into_iter()
            .filter(|a| matches!(a.owner, beeline::ipam::Owner::Endpoint { .. }))
            .map(|a| a.ip)
            .collect()
    }
}

fn v4(ip: IpAddr) -> Ipv4Addr {
    match ip {
        IpAddr::V4(v) => v,
        IpAddr::V6(_) => panic!("IPv4 expected"),
    }
}

/// `ip -j <args>` inside `ns`.
fn ip_json(ns: &NetNs, args: &[&str]) -> Value {
    let out = ns.command("ip").unwrap().arg("-j").args(args).output().unwrap();
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn add_check_del_against_a_real_agent_with_identity_and_cilium_endpoint() {
    require_root();
    let cluster = Cluster::start(2);
    let mut agent = cluster.agent();
    let conf = cluster.plugin_config();
    let mut topo = Topology::new("cnie");
    let ns = topo.namespace("pod0").unwrap();

    // ADD.
    let (code, out) = cluster.cni("ADD", "ctr-web-0", "web-0", &ns.path(), &conf);
    assert_eq!(code, 0, "{out}\n{}", cluster.agent_log());
    let result: CniResult = serde_json::from_str(&out).unwrap();
    let lxc = host_ifname("ctr-web-0");
    assert_eq!(result.interfaces[0].name, lxc);
    assert_eq!(result.interfaces[1].name, "eth0");
    let pod_ip = result.ips[0].address.addr();
    assert!(POD_CIDR.parse::<ipnet::IpNet>().unwrap().contains(&pod_ip), "{pod_ip}");
    assert_eq!(result.ips[0].gateway, Some("10.77.1.1".parse().unwrap()));

    // The pod's side: eth0 with the /32, a link route to the router, the default via it.
    let addrs = ip_json(&ns, &["addr", "show", "dev", "eth0"]);
    let addr_info = &addrs[0]["addr_info"];
    assert!(
        addr_info.as_array().unwrap().iter().any(|a| a["local"] == pod_ip.to_string() && a["prefixlen"] == 32),
        "{addrs}"
    );
    assert_eq!(addrs[0]["address"], result.interfaces[1].mac.clone().unwrap());
    assert_eq!(addrs[0]["mtu"], 1450, "tunnel mode MTU");
    let routes = ip_json(&ns, &["route", "show", "dev", "eth0"]);
    let routes = routes.as_array().unwrap();
    assert!(routes.iter().any(|r| r["dst"] == "default" && r["gateway"] == "10.77.1.1"), "{routes:?}");
    assert!(routes.iter().any(|r| r["dst"] == "10.77.1.1" && r["scope"] == "link"), "{routes:?}");

    // The host's side: the veth up without an address, a route to the pod, from_container on it.
    let host_ifindex = attach::ifindex(&lxc).expect("host veth exists");
    let host = Command::new("ip").args(["-j", "addr", "show", "dev", &lxc]).output().unwrap();
    let host: Value = serde_json::from_slice(&host.stdout).unwrap();
    assert!(host[0]["flags"].as_array().unwrap().contains(&json!("UP")), "{host}");
    assert!(
        host[0]["addr_info"].as_array().unwrap().iter().all(|a| a["family"] != "inet"),
        "no IPv4 address on the host veth: {host}"
    );
    let route = Command::new("ip").args(["route", "show", &format!("{pod_ip}/32")]).output().unwrap();
    assert!(String::from_utf8_lossy(&route.stdout).contains(&format!("dev {lxc}")), "host route to the pod");
    let programs = attach::tcx_programs(&lxc, Direction::Ingress).unwrap();
    assert!(programs.iter().any(|p| p.name == "from_container"), "{programs:?}");

    // The endpoint row: ifindex, MACs, endpoint ID and a cluster identity.
    let row = cluster.rows()[&v4(pod_ip)];
    assert_eq!(row.ifindex, host_ifindex);
    assert_eq!(Some(row.mac), beeline::lab::topology::parse_mac(result.interfaces[1].mac.as_deref().unwrap()));
    assert_eq!(Some(row.node_mac), beeline::lab::topology::parse_mac(result.interfaces[0].mac.as_deref().unwrap()));
    assert!(row.lxc_id >= 1);
    assert!(row.sec_id >= 256, "a cluster identity, not init: {}", row.sec_id);

    // CiliumIdentity and CiliumEndpoint.
    let identity = cluster
        .identities()
        .into_iter()
        .find(|i| i.numeric_id() == Some(row.sec_id))
        .expect("the endpoint's CiliumIdentity exists");
    let labels = &identity.security_labels;
    assert_eq!(labels.get("k8s:app").map(String::as_str), Some("web"));
    assert_eq!(labels.get("k8s:io.kubernetes.pod.namespace").map(String::as_str), Some(NAMESPACE));
    assert_eq!(labels.get("k8s:io.cilium.k8s.namespace.labels.team").map(String::as_str), Some("a"));
    assert_eq!(labels.get("k8s:io.cilium.k8s.policy.serviceaccount").map(String::as_str), Some("web-sa"));
    assert!(!labels.keys().any(|k| k.contains("pod-template-hash")), "{labels:?}");
    let cep = cluster.cep("web-0").expect("CiliumEndpoint published");
    let owner = &cep.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("Pod", "web-0"));
    let status = cep.status.unwrap();
    assert_eq!(status.id, Some(i64::from(row.lxc_id)));
    assert_eq!(status.identity.as_ref().unwrap().id, i64::from(row.sec_id));
    assert_eq!(status.state.as_deref(), Some("ready"));
    let networking = status.networking.unwrap();
    assert_eq!(networking.node.as_deref(), Some(NODE_IP));
    assert_eq!(networking.addressing[0].ipv4.as_deref(), Some(pod_ip.to_string().as_str()));

    // A second pod with the same security labels (another pod-template-hash) shares the identity.
    let ns1 = topo.namespace("pod1").unwrap();
    let (code, out) = cluster.cni("ADD", "ctr-web-1", "web-1", &ns1.path(), &conf);
    assert_eq!(code, 0, "{out}");
    let second: CniResult = serde_json::from_str(&out).unwrap();
    let row1 = cluster.rows()[&v4(second.ips[0].address.addr())];
    assert_eq!(row1.sec_id, row.sec_id, "same labels, same identity");
    assert_ne!(row1.lxc_id, row.lxc_id);

    // CHECK with the ADD result as prevResult.
    let mut with_prev: Value = serde_json::from_slice(&conf).unwrap();
    with_prev["prevResult"] = serde_json::from_str(&out).unwrap();
    let (code, out) = cluster.cni("CHECK", "ctr-web-1", "web-1", &ns1.path(), &serde_json::to_vec(&with_prev).unwrap());
    assert_eq!((code, out.as_str()), (0, ""));

    // The agent restarts: the endpoint comes back from its state file, still attached, row kept.
    assert!(agent.sigterm_and_wait().success());
    agent = cluster.agent();
    let listed: Vec<beeline::agent::endpoint_core::Endpoint> =
        cluster.block_on(beeline::cli::agent_client::get_json(&cluster.socket(), "/v1/endpoint")).unwrap();
    let restored: BTreeSet<&str> = listed.iter().map(|e| e.container_id.as_str()).collect();
    assert_eq!(restored, BTreeSet::from(["ctr-web-0", "ctr-web-1"]), "{}", cluster.agent_log());
    assert_eq!(cluster.rows()[&v4(pod_ip)], row);
    assert!(attach::tcx_programs(&lxc, Direction::Ingress).unwrap().iter().any(|p| p.name == "from_container"));

    // DEL: veth, row, CiliumEndpoint and address gone; DEL twice and DEL without netns succeed.
    for _ in 0..2 {
        let (code, out) = cluster.cni("DEL", "ctr-web-0", "web-0", &ns.path(), &conf);
        assert_eq!((code, out.as_str()), (0, ""), "{}", cluster.agent_log());
    }
    assert_eq!(attach::ifindex(&lxc), None, "host veth deleted");
    assert!(!cluster.rows().contains_key(&v4(pod_ip)));
    assert!(cluster.cep("web-0").is_none(), "CiliumEndpoint deleted");
    assert!(!cluster.pod_allocations().contains(&pod_ip), "address released");
    assert!(ip_json(&ns, &["link", "show"]).as_array().unwrap().iter().all(|l| l["ifname"] != "eth0"));
    let (code, _) = cluster.cni("DEL", "never-added", "web-9", Path::new("/var/run/netns/does-not-exist"), &conf);
    assert_eq!(code, 0, "DEL of an unknown container with its namespace gone is success");

    assert!(agent.sigterm_and_wait().success());
}

#[test]
fn a_burst_of_200_concurrent_adds_and_dels_leaves_no_duplicate_and_no_leak() {
    require_root();
    const PODS: usize = 100;
    let cluster = Cluster::start(PODS);
    let mut agent = cluster.agent();
    let conf = cluster.plugin_config();
    let mut topo = Topology::new("cnib");
    let namespaces: Vec<NetNs> = (0..PODS).map(|i| topo.namespace(&format!("p{i}")).unwrap()).collect();

    // 100 concurrent ADDs, then 100 concurrent DELs: 200 plugin runs, each phase all at once.
    let run_all = |command: &str| -> Vec<(i32, String)> {
        std::thread::scope(|scope| {
            let handles: Vec<_> = namespaces
                .iter()
                .enumerate()
                .map(|(i, ns)| {
                    let conf = &conf;
                    let cluster = &cluster;
                    scope.spawn(move || {
                        cluster.cni(command, &format!("burst-{i}"), &format!("web-{i}"), &ns.path(), conf)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    };
    let adds = run_all("ADD");
    let mut ips = BTreeSet::new();
    for (i, (code, out)) in adds.iter().enumerate() {
        assert_eq!(*code, 0, "ADD burst-{i}: {out}\n{}", cluster.agent_log());
        let result: CniResult = serde_json::from_str(out).unwrap();
        assert!(ips.insert(result.ips[0].address.addr()), "duplicate address {}", result.ips[0].address);
    }
    let rows = cluster.rows();
    assert_eq!(rows.len(), PODS);
    let ids: BTreeSet<u16> = rows.values().map(|r| r.lxc_id).collect();
    assert_eq!(ids.len(), PODS, "endpoint IDs are unique");
    let identities: BTreeSet<u32> = rows.values().map(|r| r.sec_id).collect();
    assert_eq!(identities.len(), 1, "one identity for 100 pods with the same labels: {identities:?}");
    assert_eq!(cluster.identities().len(), 1);
    for (i, ns) in namespaces.iter().enumerate() {
        let addrs = ip_json(ns, &["addr", "show", "dev", "eth0"]);
        let local: IpAddr = addrs[0]["addr_info"][0]["local"].as_str().unwrap().parse().unwrap();
        assert!(rows.contains_key(&v4(local)), "burst-{i}'s address {local} has a row");
    }

    let dels = run_all("DEL");
    for (i, (code, out)) in dels.iter().enumerate() {
        assert_eq!((*code, out.as_str()), (0, ""), "DEL burst-{i}");
    }
    assert!(cluster.rows().is_empty(), "no row left");
    assert!(cluster.pod_allocations().is_empty(), "no address leaked");
    let leftover: Vec<usize> =
        (0..PODS).filter(|i| attach::ifindex(&host_ifname(&format!("burst-{i}"))).is_some()).collect();
    assert!(leftover.is_empty(), "host veths left: {leftover:?}");
    let ceps = cluster
        .block_on(Api::<CiliumEndpoint>::namespaced(cluster.client(), NAMESPACE).list(&Default::default()))
        .unwrap()
        .items;
    assert!(ceps.is_empty(), "CiliumEndpoints left: {}", ceps.len());
    assert!(agent.sigterm_and_wait().success());
}

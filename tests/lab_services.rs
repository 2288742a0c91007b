//! In-cluster Service behaviour in a lab (issue 10's lab tests), all in one two-node lab with
//! real TCP from client pods' namespaces through the agents' eBPF datapath:
//! - a ClusterIP over 3 replicas spreads new connections over all of them;
//! - ClientIP affinity: 20 requests hit one pod, the node's affinity map holds the entry
//!   (`beeline bpf affinity list`), which expires after `timeoutSeconds` and is written afresh by
//!   the next request;
//! - `internalTrafficPolicy: Local`: only node-local backends answer; none on the node → no answer;
//! - 100 more Services program the maps and add no iptables or nftables rule anywhere;
//! - the seeds' resilience demo: the node's agent stopped, the Service still answers; a backend
//!   deleted meanwhile is gone from the maps once the agent is back, no request reaches it, and
//!   its address is released (the kubelet retries the CNI DEL that failed while the agent was down).

mod integration;

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    process::Command,
    time::{Duration, Instant},
};

use integration::{
    lab::{down_and_assert_gone, pod_netns, poll, run, stdout, LabDir, BIN},
    require_root,
};

const WORKER: &str = "kind-worker";
const CONTROL_PLANE: &str = "kind-control-plane";
const AFFINITY_TIMEOUT_S: u64 = 4;

fn workloads() -> String {
    let deployment = |name: &str, replicas: u32, node: &str, tier: &str| {
        format!(
            "apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: default}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: web, tier: {tier}}}}}
  template:
    metadata: {{labels: {{app: web, tier: {tier}}}}}
    spec:
      nodeSelector: {{kubernetes.io/hostname: {node}}}
      containers: [{{name: web, image: echo, ports: [{{name: http, containerPort: 8080}}]}}]
---
"
        )
    };
    let client = |name: &str, node: &str| {
        format!(
            "apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: default, labels: {{app: client}}}}
spec:
  nodeSelector: {{kubernetes.io/hostname: {node}}}
  containers: [{{name: client, image: netshoot}}]
---
"
        )
    };
    let service = |name: &str, selector: &str, extra: &str| {
        format!(
            "apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  selector: {selector}
  ports: [{{name: http, port: 80, targetPort: http}}]
{extra}---
"
        )
    };
    [
        deployment("web", 3, WORKER, "spread"),
        deployment("web-cp", 1, CONTROL_PLANE, "cp"),
        client("client-a", WORKER),
        client("client-b", CONTROL_PLANE),
        service("spread", "{tier: spread}", ""),
        service(
            "sticky",
            "{tier: spread}",
            &format!(
                "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {{clientIP: {{timeoutSeconds: {AFFINITY_TIMEOUT_S}}}}}\n"
            ),
        ),
        service("local-web", "{app: web}", "  internalTrafficPolicy: Local\n"),
        service("local-none", "{tier: spread}", "  internalTrafficPolicy: Local\n"),
    ]
    .concat()
}

/// A pod's name from the echo server's answer.
fn answered_by(body: &str) -> String {
    let reply: serde_json::Value = serde_json::from_str(body.trim()).unwrap_or_else(|e| panic!("{e}: {body}"));
    reply["pod"].as_str().unwrap().to_string()
}

/// `count` GETs (each a new TCP connection) from `netns` to `addr`; the pods that answered, in order.
fn hits(netns: &str, addr: SocketAddr, count: usize) -> Vec<String> {
    (0..count)
        .map(|i| {
            let (code, body) = beeline::lab::probe::http_get_in(netns, addr, "/")
                .unwrap_or_else(|e| panic!("request {i} of {count} to {addr}: {e}"));
            assert_eq!(code, 200, "{addr}: {body}");
            answered_by(&body)
        })
        .collect()
}

fn distinct(names: &[String]) -> BTreeSet<String> {
    names.iter().cloned().collect()
}

struct Cluster {
    lab: LabDir,
}

impl Cluster {
    fn cluster_ip(&self, service: &str) -> SocketAddr {
        let ip = self.lab.kubectl(&["get", "svc", service, "-o", "jsonpath={.spec.clusterIP}"]);
        SocketAddr::new(ip.parse().unwrap_or_else(|e| panic!("{service}: ClusterIP {ip:?}: {e}")), 80)
    }

    fn pin_dir(&self, node: &str) -> String {
        let plan = self.lab.plan();
        let node = plan.nodes.iter().find(|n| n.name == node).unwrap();
        node.bpf_root.join("beeline").to_string_lossy().into_owned()
    }

    /// `beeline <args> --pin-dir <node's pins> -o json`.
    fn beeline_json(&self, node: &str, args: &[&str]) -> Vec<serde_json::Value> {
        let out = run(Command::new(BIN).args(args).args(["--pin-dir", &self.pin_dir(node), "-o", "json"]));
        serde_json::from_str(&stdout(&out)).unwrap()
    }

    /// The backend addresses (without port) the node's service map has for `frontend`.
    fn backends(&self, node: &str, frontend: SocketAddr) -> BTreeSet<String> {
        let want = format!("{frontend}/TCP");
        self.beeline_json(node, &["service", "list"])
            .iter()
            .filter(|row| row["frontend"] == want.as_str())
            .flat_map(|row| row["backends"].as_array().cloned().unwrap_or_default())
            .filter(|b| b["state"] == "active")
            .map(|b| b["address"].as_str().unwrap().split(':').next().unwrap().to_string())
            .collect()
    }

    fn pod_names(&self, selector: &str) -> BTreeSet<String> {
        self.lab.kubectl_json(&["get", "pods", "-l", selector])["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    }
}

#[test]
fn cluster_ip_spread_affinity_traffic_policy_scale_and_agent_restart_in_one_lab() {
    require_root();
    let lab = LabDir::new();
    lab.up(2, "vxlan.yaml");
    lab.apply("services.yaml", &workloads());
    let c = Cluster { lab };
    let web = c.lab.running_pods("tier=spread", 3, Duration::from_secs(90));
    c.lab.running_pods("tier=cp", 1, Duration::from_secs(60));
    let clients = c.lab.running_pods("app=client", 2, Duration::from_secs(60));
    let client = |node: &str| {
        let pod = clients.iter().find(|p| p["spec"]["nodeName"] == node).unwrap();
        (pod_netns(pod), pod["status"]["podIP"].as_str().unwrap().to_string())
    };
    let (netns_a, ip_a) = client(WORKER);
    let (netns_b, _) = client(CONTROL_PLANE);
    let web_names = c.pod_names("tier=spread");
    let cp_names = c.pod_names("tier=cp");
    let web_ips: BTreeSet<String> = web.iter().map(|p| p["status"]["podIP"].as_str().unwrap().to_string()).collect();

    // The worker's agent programmed every ClusterIP with its backends before traffic starts.
    let spread = c.cluster_ip("spread");
    poll("spread's three backends in the worker's service map", Duration::from_secs(30), || {
        (c.backends(WORKER, spread) == web_ips).then_some(())
    });

    // 1. New connections spread over all three replicas (a miss has probability 3·(2/3)^30 ≈ 2e-5).
    let spread_hits = hits(&netns_a, spread, 30);
    assert_eq!(distinct(&spread_hits), web_names, "30 connections to {spread}: {spread_hits:?}");

    // 2. ClientIP affinity: 20 requests, one pod; the entry is in the client node's affinity map.
    let sticky = c.cluster_ip("sticky");
    let sticky_hits = hits(&netns_a, sticky, 20);
    assert_eq!(distinct(&sticky_hits).len(), 1, "affinity: {sticky_hits:?}");
    let entry = |state: &str| {
        let rows = c.beeline_json(WORKER, &["bpf", "affinity", "list"]);
        let mine: Vec<&serde_json::Value> = rows.iter().filter(|r| r["client"] == ip_a.as_str()).collect();
        assert_eq!(mine.len(), 1, "one affinity entry for client-a ({ip_a}): {rows:?}");
        assert_eq!(mine[0]["state"], state, "{rows:?}");
        assert_eq!(mine[0]["timeout_s"], AFFINITY_TIMEOUT_S, "{rows:?}");
        mine[0].clone()
    };
    let first = entry("valid");
    // After the timeout the entry is still there but expired (nothing sweeps the map) ...
    std::thread::sleep(Duration::from_secs(AFFINITY_TIMEOUT_S + 2));
    let expired = entry("expired");
    assert_eq!(expired["last_used"], first["last_used"], "untouched while idle");
    // ... and the next request writes a fresh one.
    hits(&netns_a, sticky, 1);
    let fresh = entry("valid");
    assert!(
        fresh["last_used"].as_u64() > first["last_used"].as_u64() && fresh["idle_s"].as_i64() <= Some(1),
        "a fresh entry: before {first}, after {fresh}"
    );

    // 3. internalTrafficPolicy: Local — each node's clients reach only that node's backends.
    let local_web = c.cluster_ip("local-web");
    let from_worker = hits(&netns_a, local_web, 15);
    assert!(distinct(&from_worker).is_subset(&web_names), "from {WORKER}: {from_worker:?}");
    let from_cp = hits(&netns_b, local_web, 5);
    assert_eq!(distinct(&from_cp), cp_names, "from {CONTROL_PLANE}: {from_cp:?}");
    // No backend on the node: no answer. The datapath rejects (ICMP unreachable → refused) at once.
    let local_none = c.cluster_ip("local-none");
    assert_eq!(c.backends(WORKER, local_none).len(), 3, "{WORKER} has local backends for local-none");
    assert!(c.backends(CONTROL_PLANE, local_none).is_empty(), "{CONTROL_PLANE} has none");
    let started = Instant::now();
    let refused = beeline::lab::probe::http_get_in(&netns_b, local_none, "/").unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused, "{local_none} from {CONTROL_PLANE}: {refused}");
    assert!(started.elapsed() < Duration::from_secs(2), "rejected, not timed out: {:?}", started.elapsed());

    // 4. 100 more Services: programmed in the maps, and no iptables/nftables rule for any of them.
    let many: String = (0..100)
        .map(|i| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: many-{i}, namespace: default}}\nspec:\n  selector: {{tier: spread}}\n  ports: [{{port: 80, targetPort: http}}]\n---\n"
            )
        })
        .collect();
    c.lab.apply("many.yaml", &many);
    let many_ips: Vec<String> = poll("100 ClusterIPs allocated", Duration::from_secs(30), || {
        let ips = c.lab.kubectl(&["get", "svc", "-o", "jsonpath={.items[*].spec.clusterIP}"]);
        let all: Vec<String> = ips.split_whitespace().map(str::to_string).collect();
        (all.len() >= 100 + 4).then_some(all)
    });
    poll("every ClusterIP programmed on both nodes", Duration::from_secs(60), || {
        [WORKER, CONTROL_PLANE]
            .iter()
            .all(|node| {
                let frontends: BTreeSet<String> = c
                    .beeline_json(node, &["service", "list"])
                    .iter()
                    .map(|r| r["frontend"].as_str().unwrap().split(':').next().unwrap().to_string())
                    .collect();
                many_ips.iter().all(|ip| frontends.contains(ip))
            })
            .then_some(())
    });
    let plan = c.lab.plan();
    let mut places: Vec<Option<String>> = vec![None];
    places.extend(plan.nodes.iter().map(|n| Some(n.netns.clone())));
    for place in places {
        for tool in [&["iptables-save"][..], &["nft", "list", "ruleset"]] {
            let mut cmd = match &place {
                Some(ns) => {
                    let mut cmd = Command::new("nsenter");
                    cmd.arg(format!("--net=/run/netns/{ns}")).args(tool);
                    cmd
                }
                None => {
                    let mut cmd = Command::new(tool[0]);
                    cmd.args(&tool[1..]);
                    cmd
                }
            };
            // Missing tools fail loudly (scripts/setup.sh installs iptables and nftables).
            let rules = stdout(&run(&mut cmd));
            let where_ = place.as_deref().unwrap_or("the host");
            for ip in &many_ips {
                assert!(!rules.contains(ip.as_str()), "{tool:?} in {where_} has a rule for ClusterIP {ip}:\n{rules}");
            }
            assert!(!rules.contains("KUBE-SVC"), "{tool:?} in {where_} has kube-proxy chains");
        }
    }

    // 5. Resilience: the worker's agent stopped, the Service keeps answering from the pinned datapath.
    run(c.lab.beeline("stop-agent").arg(WORKER));
    let agent_pid = beeline::lab::probe::read_pid(&plan.pid_file(&format!("agent-{WORKER}")));
    assert!(agent_pid.is_none_or(|pid| !beeline::lab::probe::is_ours(pid, c.lab.arg())), "the agent is really gone");
    let while_down = hits(&netns_a, spread, 10);
    assert!(distinct(&while_down).is_subset(&web_names), "{while_down:?}");
    // A backend pod deleted meanwhile: its sandbox goes (the kubelet does not need the agent for that).
    let victim = &web[0];
    let victim_name = victim["metadata"]["name"].as_str().unwrap().to_string();
    let victim_ip = victim["status"]["podIP"].as_str().unwrap().to_string();
    c.lab.kubectl(&["delete", "pod", &victim_name]);
    assert!(
        c.backends(WORKER, spread).contains(&victim_ip),
        "with the agent down nothing removes {victim_ip} from the maps yet"
    );
    run(c.lab.beeline("start-agent").arg(WORKER));
    // Back: the victim is gone from the maps, the replacement (started once CNI works again) is in.
    let now_web = c.lab.running_pods("tier=spread", 3, Duration::from_secs(60));
    let now_ips: BTreeSet<String> =
        now_web.iter().map(|p| p["status"]["podIP"].as_str().unwrap().to_string()).collect();
    assert!(!c.pod_names("tier=spread").contains(&victim_name));
    poll("the worker's map lists the current pods only", Duration::from_secs(30), || {
        (c.backends(WORKER, spread) == now_ips).then_some(())
    });
    if !now_ips.contains(&victim_ip) {
        assert!(!c.backends(WORKER, spread).contains(&victim_ip));
    }
    // The victim's CNI DEL failed while the agent was down; the kubelet retries it, so the agent
    // releases the victim's address instead of holding it until `lab down`.
    let victim_container: String =
        victim["metadata"]["uid"].as_str().unwrap().chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    let socket = plan.nodes.iter().find(|n| n.name == WORKER).unwrap().agent_socket();
    poll("the deleted pod's address released by the agent", Duration::from_secs(30), || {
        let listing = stdout(&run(Command::new(BIN).args(["ipam", "-o", "json", "--socket"]).arg(&socket)));
        (!listing.contains(&victim_container)).then_some(())
    });
    // Every request succeeds and none reaches the deleted pod.
    let after = hits(&netns_a, spread, 30);
    assert!(!after.contains(&victim_name), "{after:?}");
    assert_eq!(distinct(&after), c.pod_names("tier=spread"), "{after:?}");

    down_and_assert_gone(&c.lab);
}

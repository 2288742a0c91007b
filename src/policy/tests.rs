//! Table-driven compiler scenarios: policies written as users write them (the seeds' walkthrough, the
//! Star Wars demo and Cilium's documentation examples) compiled against a small cluster of identities,
//! asserting both the resulting map entries and the verdicts the datapath would reach.
#![allow(clippy::type_complexity)] // case tables

use std::collections::BTreeSet;

use k8s_openapi::api::networking::v1::NetworkPolicy;

use super::compiler::{compile_endpoint, CompilerConfig, Endpoint, EnforcementMode, NamedPorts, PolicyRepository};
use super::identity::{
    pod_labels, reserved_identities, CidrIdentityAllocator, Identity, Label, NumericIdentity, PodIdentitySource,
};
use super::mapstate::{Direction, Verdict};
use super::ports::proto::{ICMP, ICMPV6, SCTP, TCP, UDP};
use super::rules::{ParseContext, Policy, PolicyError};
use super::selector_cache::SelectorCache;
use super::EndpointPolicy;
use crate::crds::{CiliumClusterwideNetworkPolicy, CiliumNetworkPolicy};

const DEATHSTAR: u32 = 1000;
const TIEFIGHTER: u32 = 1001;
const XWING: u32 = 1002;
const KUBE_DNS: u32 = 1003;
const EMPIRE_OTHER_NS: u32 = 1004;
const NGINX: u32 = 1005;
const NETSHOOT: u32 = 1006;
const UNAUTHORIZED: u32 = 1007;
const HOST: u32 = 1;
const WORLD: u32 = 2;
const REMOTE_NODE: u32 = 6;
const KUBE_APISERVER: u32 = 7;

const IN: Direction = Direction::Ingress;
const EG: Direction = Direction::Egress;
use Verdict::{Allow, DefaultDeny, Deny};

struct Cluster {
    cache: SelectorCache,
    repo: PolicyRepository,
    config: CompilerConfig,
    cidr: CidrIdentityAllocator,
    named_ports: NamedPorts,
    warnings: Vec<String>,
}

fn pod(id: u32, namespace: &str, labels: &[(&str, &str)], namespace_labels: &[(&str, &str)]) -> Identity {
    let src = PodIdentitySource {
        namespace,
        pod_labels: labels,
        namespace_labels,
        service_account: "default",
        cluster: "default",
    };
    Identity { id: NumericIdentity(id), labels: pod_labels(&src), cidrs: vec![] }
}

fn cluster() -> Cluster {
    let default_ns: &[(&str, &str)] = &[("kubernetes.io/metadata.name", "default")];
    let mut identities = reserved_identities();
    identities.extend([
        pod(DEATHSTAR, "default", &[("org", "empire"), ("class", "deathstar")], default_ns),
        pod(TIEFIGHTER, "default", &[("org", "empire"), ("class", "tiefighter")], default_ns),
        pod(XWING, "default", &[("org", "alliance"), ("class", "xwing")], default_ns),
        pod(KUBE_DNS, "kube-system", &[("k8s-app", "kube-dns")], &[("kubernetes.io/metadata.name", "kube-system")]),
        pod(
            EMPIRE_OTHER_NS,
            "other",
            &[("org", "empire")],
            &[("kubernetes.io/metadata.name", "other"), ("team", "rebels")],
        ),
        pod(NGINX, "default", &[("app", "nginx")], default_ns),
        pod(NETSHOOT, "default", &[("app", "netshoot-client")], default_ns),
        pod(UNAUTHORIZED, "default", &[], default_ns),
    ]);
    Cluster {
        cache: SelectorCache::new(identities),
        repo: PolicyRepository::default(),
        config: CompilerConfig::default(),
        cidr: CidrIdentityAllocator::default(),
        named_ports: [("dns".to_string(), [(UDP, 53), (TCP, 53)].into())].into(),
        warnings: vec![],
    }
}

impl Cluster {
    fn add(&mut self, policy: Policy) {
        self.warnings.extend(policy.warnings.iter().cloned());
        self.repo.upsert(policy);
        // As the agent does: allocate CIDR identities for the prefixes policies mention.
        let delta = self.cidr.sync(&self.repo.cidr_prefixes());
        self.cache.upsert_identities(delta.added);
        self.cache.remove_identities(delta.removed);
    }

    fn cnp(&mut self, yaml: &str) -> &mut Self {
        let cnp: CiliumNetworkPolicy = serde_saphyr::from_str(yaml).expect("CNP parses");
        self.add(Policy::from_cnp(&cnp, &ParseContext::default()).expect("CNP compiles"));
        self
    }

    fn ccnp(&mut self, yaml: &str) -> &mut Self {
        let ccnp: CiliumClusterwideNetworkPolicy = serde_saphyr::from_str(yaml).expect("CCNP parses");
        self.add(Policy::from_ccnp(&ccnp, &ParseContext::default()).expect("CCNP compiles"));
        self
    }

    fn knp(&mut self, yaml: &str) -> &mut Self {
        let knp: NetworkPolicy = serde_saphyr::from_str(yaml).expect("NetworkPolicy parses");
        self.add(Policy::from_knp(&knp).expect("NetworkPolicy compiles"));
        self
    }

    fn compile_with(&mut self, endpoint: Endpoint) -> EndpointPolicy {
        compile_endpoint(&self.repo, &mut self.cache, &self.config, &endpoint, &self.named_ports)
    }

    fn compile(&mut self, id: u32) -> EndpointPolicy {
        self.compile_with(Endpoint { identity: NumericIdentity(id), ..Default::default() })
    }

    fn cidr_id(&self, prefix: &str) -> u32 {
        self.cidr.get(&prefix.parse().unwrap()).unwrap_or_else(|| panic!("no identity for {prefix}")).0
    }

    /// `(endpoint, direction, peer, proto, port, verdict)` rows.
    fn check(&mut self, rows: &[(u32, Direction, u32, u8, u16, Verdict)]) {
        for &(endpoint, dir, peer, protocol, port, want) in rows {
            let policy = self.compile(endpoint);
            let got = policy.verdict(dir, NumericIdentity(peer), protocol, port);
            assert_eq!(
                got, want,
                "endpoint {endpoint} {dir} peer {peer} proto {protocol} port {port}: {:#?}",
                policy.map
            );
        }
    }
}

/// Entries as `"direction peer proto/port/prefix verdict"` strings, for exact assertions.
fn entries(policy: &EndpointPolicy) -> Vec<String> {
    policy.map.entries().iter().map(|(k, v)| format!("{k} {}", if v.deny { "deny" } else { "allow" })).collect()
}

const STAR_WARS_L3_L4: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: rule1
  namespace: default
spec:
  description: "L3-L4 policy to restrict deathstar access to empire ships only"
  endpointSelector:
    matchLabels:
      org: empire
      class: deathstar
  ingress:
  - fromEndpoints:
    - matchLabels:
        org: empire
    toPorts:
    - ports:
      - port: "80"
        protocol: TCP
"#;

#[test]
fn star_wars_empire_reaches_deathstar_on_tcp_80_only() {
    let mut c = cluster();
    c.cnp(STAR_WARS_L3_L4);
    let deathstar = c.compile(DEATHSTAR);
    assert!(deathstar.ingress_enforcing && !deathstar.egress_enforcing);
    // Empire pods of the policy's namespace only (namespace implied); the local host is allowed.
    assert_eq!(
        entries(&deathstar),
        ["ingress 1 any allow", "ingress 1000 6/80/16 allow", "ingress 1001 6/80/16 allow"]
    );
    c.check(&[
        (DEATHSTAR, IN, TIEFIGHTER, TCP, 80, Allow),
        (DEATHSTAR, IN, TIEFIGHTER, TCP, 443, DefaultDeny),
        (DEATHSTAR, IN, TIEFIGHTER, UDP, 80, DefaultDeny),
        (DEATHSTAR, IN, XWING, TCP, 80, DefaultDeny),
        (DEATHSTAR, IN, EMPIRE_OTHER_NS, TCP, 80, DefaultDeny),
        (DEATHSTAR, IN, WORLD, TCP, 80, DefaultDeny),
        (DEATHSTAR, IN, HOST, TCP, 9999, Allow),
        // Egress of the deathstar and everything about unselected endpoints stays open.
        (DEATHSTAR, EG, XWING, TCP, 80, Allow),
        (XWING, IN, TIEFIGHTER, TCP, 80, Allow),
    ]);
    assert!(!c.compile(XWING).ingress_enforcing);
}

#[test]
fn seeds_walkthrough_nginx_admits_only_the_labelled_client() {
    let mut c = cluster();
    c.cnp(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: ch03-policy, namespace: default}
spec:
  endpointSelector:
    matchLabels: {app: nginx}
  ingress:
  - fromEndpoints:
    - matchLabels: {app: netshoot-client}
    toPorts:
    - ports:
      - port: "80"
"#,
    );
    // No protocol: ANY expands to TCP, UDP and SCTP.
    assert_eq!(
        entries(&c.compile(NGINX)),
        [
            "ingress 1 any allow",
            "ingress 1006 6/80/16 allow",
            "ingress 1006 17/80/16 allow",
            "ingress 1006 132/80/16 allow"
        ]
    );
    c.check(&[
        (NGINX, IN, NETSHOOT, TCP, 80, Allow),
        (NGINX, IN, NETSHOOT, SCTP, 80, Allow),
        (NGINX, IN, UNAUTHORIZED, TCP, 80, DefaultDeny),
        (NGINX, IN, NETSHOOT, ICMP, 8, DefaultDeny),
    ]);
}

#[test]
fn allow_rule_shapes_l3_l4_and_l3_l4() {
    let policy = |ingress: &str| {
        format!(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: p, namespace: default}}\nspec:\n  endpointSelector: {{matchLabels: {{class: deathstar}}}}\n  ingress:\n{ingress}"
        )
    };
    let l3 = "  - fromEndpoints: [{matchLabels: {class: tiefighter}}]\n";
    let l4 = "  - toPorts: [{ports: [{port: \"80\", protocol: TCP}]}]\n";
    let l3l4 = "  - fromEndpoints: [{matchLabels: {class: tiefighter}}]\n    toPorts: [{ports: [{port: \"80\", protocol: TCP}]}]\n";
    let empty = "  - {}\n";
    let explicit_none = "  - fromEndpoints: []\n    toPorts: [{ports: [{port: \"80\", protocol: TCP}]}]\n";
    let cases: &[(&str, &[&str], &[(u32, u16, Verdict)])] = &[
        (l3, &["ingress 1 any allow", "ingress 1001 any allow"], &[(TIEFIGHTER, 22, Allow), (XWING, 80, DefaultDeny)]),
        // L4 only: any peer (identity 0), even outside the cluster.
        (
            l4,
            &["ingress any 6/80/16 allow", "ingress 1 any allow"],
            &[(XWING, 80, Allow), (WORLD, 80, Allow), (XWING, 81, DefaultDeny)],
        ),
        (
            l3l4,
            &["ingress 1 any allow", "ingress 1001 6/80/16 allow"],
            &[(TIEFIGHTER, 80, Allow), (TIEFIGHTER, 22, DefaultDeny), (XWING, 80, DefaultDeny)],
        ),
        // `- {}` selects nothing but turns default deny on.
        (empty, &["ingress 1 any allow"], &[(TIEFIGHTER, 80, DefaultDeny)]),
        // An explicitly empty peer list selects nothing, it is not a wildcard.
        (explicit_none, &["ingress 1 any allow"], &[(TIEFIGHTER, 80, DefaultDeny)]),
    ];
    for (ingress, want_entries, rows) in cases {
        let mut c = cluster();
        c.cnp(&policy(ingress));
        assert_eq!(entries(&c.compile(DEATHSTAR)), *want_entries, "{ingress}");
        for &(peer, port, want) in *rows {
            assert_eq!(
                c.compile(DEATHSTAR).verdict(IN, NumericIdentity(peer), TCP, port),
                want,
                "{ingress} peer {peer}:{port}"
            );
        }
    }
}

#[test]
fn deny_rules_win_over_allows_of_every_kind() {
    // Cilium's deny documentation table: allow L3 + L4 80/81; deny L4 80; deny L3.
    let allow = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: allow, namespace: default}
spec:
  endpointSelector: {matchLabels: {class: deathstar}}
  ingress:
  - fromEndpoints: [{matchLabels: {class: tiefighter}}]
  - fromEndpoints: [{matchLabels: {class: tiefighter}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}, {port: "81", protocol: TCP}]}]
"#;
    let deny_l4 = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: deny-l4, namespace: default}
spec:
  endpointSelector: {matchLabels: {class: deathstar}}
  ingressDeny:
  - toPorts: [{ports: [{port: "80", protocol: TCP}]}]
"#;
    let deny_l3 = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: deny-l3, namespace: default}
spec:
  endpointSelector: {matchLabels: {class: deathstar}}
  ingressDeny:
  - fromEndpoints: [{matchLabels: {class: tiefighter}}]
"#;
    let deny_l3_l4 = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: deny-l3-l4, namespace: default}
spec:
  endpointSelector: {matchLabels: {class: deathstar}}
  ingressDeny:
  - fromEndpoints: [{matchLabels: {class: tiefighter}}]
    toPorts: [{ports: [{port: "81", protocol: TCP}]}]
"#;
    // (extra policies, tcp/81, tcp/80, icmp echo)
    let cases: &[(&[&str], Verdict, Verdict, Verdict)] = &[
        (&[], Allow, Allow, Allow),
        (&[deny_l4], Allow, Deny, Allow),
        (&[deny_l3_l4], Deny, Allow, Allow),
        (&[deny_l4, deny_l3], Deny, Deny, Deny),
        (&[deny_l3], Deny, Deny, Deny),
    ];
    for (i, (extra, p81, p80, ping)) in cases.iter().enumerate() {
        let mut c = cluster();
        c.cnp(allow);
        for yaml in *extra {
            c.cnp(yaml);
        }
        let p = c.compile(DEATHSTAR);
        let t = NumericIdentity(TIEFIGHTER);
        assert_eq!(
            (p.verdict(IN, t, TCP, 81), p.verdict(IN, t, TCP, 80), p.verdict(IN, t, ICMP, 8)),
            (*p81, *p80, *ping),
            "case {i}: {:#?}",
            p.map
        );
    }
    // The L3+L4 deny entry itself.
    let mut c = cluster();
    c.cnp(deny_l3_l4);
    assert_eq!(entries(&c.compile(DEATHSTAR)), ["ingress 1 any allow", "ingress 1001 6/81/16 deny"]);
}

#[test]
fn deny_wins_across_policy_kinds() {
    // A Kubernetes NetworkPolicy allows everything into the deathstar; a CCNP denies the tiefighter.
    let mut c = cluster();
    c.knp(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all, namespace: default}
spec:
  podSelector: {matchLabels: {class: deathstar}}
  ingress:
  - {}
"#,
    );
    c.ccnp(
        r#"
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: no-tiefighters}
spec:
  endpointSelector: {matchLabels: {class: deathstar}}
  ingressDeny:
  - fromEndpoints: [{matchLabels: {class: tiefighter}}]
"#,
    );
    c.check(&[
        (DEATHSTAR, IN, XWING, TCP, 80, Allow),
        (DEATHSTAR, IN, WORLD, UDP, 53, Allow),
        (DEATHSTAR, IN, TIEFIGHTER, TCP, 80, Deny),
    ]);
}

#[test]
fn enable_default_deny_false_keeps_other_traffic_flowing() {
    let ccnp = r#"
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: no-world-egress}
spec:
  endpointSelector: {}
  enableDefaultDeny: {egress: false, ingress: false}
  egressDeny:
  - toEntities: [world]
  ingress:
  - fromEntities: [cluster]
"#;
    let mut c = cluster();
    c.ccnp(ccnp);
    let p = c.compile(XWING);
    assert!(p.ingress_enforcing && p.egress_enforcing);
    c.check(&[
        (XWING, EG, WORLD, TCP, 443, Deny),
        (XWING, EG, DEATHSTAR, TCP, 80, Allow),
        (XWING, IN, WORLD, TCP, 80, Allow),
    ]);
    // Another policy selecting the same endpoint with default deny turns it on for everyone.
    c.cnp(STAR_WARS_L3_L4);
    c.check(&[
        (DEATHSTAR, IN, WORLD, TCP, 80, DefaultDeny),
        (DEATHSTAR, IN, XWING, TCP, 80, Allow), // allowed by `fromEntities: [cluster]`
        (DEATHSTAR, EG, WORLD, TCP, 443, Deny),
        (DEATHSTAR, EG, XWING, TCP, 443, Allow),
        (XWING, IN, WORLD, TCP, 80, Allow),
    ]);
}

#[test]
fn enforcement_modes() {
    // (mode, with the star wars policy, deathstar ingress from xwing, xwing ingress from world, host)
    let cases = [
        (EnforcementMode::Default, false, Allow, Allow, Allow),
        (EnforcementMode::Default, true, DefaultDeny, Allow, Allow),
        (EnforcementMode::Always, false, DefaultDeny, DefaultDeny, Allow),
        (EnforcementMode::Always, true, DefaultDeny, DefaultDeny, Allow),
        (EnforcementMode::Never, true, Allow, Allow, Allow),
    ];
    for (mode, with_policy, deathstar, xwing, host) in cases {
        let mut c = cluster();
        c.config.mode = mode;
        if with_policy {
            c.cnp(STAR_WARS_L3_L4);
        }
        let d = c.compile(DEATHSTAR);
        let x = c.compile(XWING);
        let got = (
            d.verdict(IN, NumericIdentity(XWING), TCP, 80),
            x.verdict(IN, NumericIdentity(WORLD), TCP, 80),
            x.verdict(IN, NumericIdentity(HOST), TCP, 80),
        );
        assert_eq!(got, (deathstar, xwing, host), "{mode:?} policy={with_policy}");
        assert_eq!(x.egress_enforcing, mode == EnforcementMode::Always);
    }
    assert_eq!("never".parse::<EnforcementMode>(), Ok(EnforcementMode::Never));
    assert!("sometimes".parse::<EnforcementMode>().is_err());
}

#[test]
fn from_requires_narrows_every_allow_selecting_the_endpoint() {
    // Cilium docs: only env=prod may reach env=prod, whatever other rules allow.
    let mut c = cluster();
    let prod = pod(2000, "default", &[("env", "prod"), ("role", "backend")], &[]);
    let prod_frontend = pod(2001, "default", &[("env", "prod"), ("role", "frontend")], &[]);
    let dev_frontend = pod(2002, "default", &[("env", "dev"), ("role", "frontend")], &[]);
    c.cache.upsert_identities([prod, prod_frontend, dev_frontend]);
    c.cnp(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: requires-rule, namespace: default}
specs:
- endpointSelector: {matchLabels: {env: prod}}
  ingress:
  - fromRequires: [{matchLabels: {env: prod}}]
- endpointSelector: {matchLabels: {env: prod}}
  ingress:
  - fromEndpoints: [{matchLabels: {role: frontend}}]
"#,
    );
    c.check(&[(2000, IN, 2001, TCP, 80, Allow), (2000, IN, 2002, TCP, 80, DefaultDeny)]);
}

#[test]
fn entities_map_to_reserved_identities() {
    let policy = |entity: &str| {
        format!(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: p, namespace: default}}\nspec:\n  endpointSelector: {{matchLabels: {{class: xwing}}}}\n  egress:\n  - toEntities: [{entity}]\n"
        )
    };
    let peers = [HOST, WORLD, REMOTE_NODE, KUBE_APISERVER, 4, 5, 8, DEATHSTAR, KUBE_DNS, EMPIRE_OTHER_NS];
    let cases: &[(&str, &[u32])] = &[
        ("world", &[WORLD]),
        ("cluster", &[HOST, REMOTE_NODE, KUBE_APISERVER, 4, 5, 8, DEATHSTAR, KUBE_DNS, EMPIRE_OTHER_NS]),
        ("host", &[HOST]),
        ("remote-node", &[REMOTE_NODE]),
        ("kube-apiserver", &[KUBE_APISERVER]),
        ("health", &[4]),
        ("init", &[5]),
        ("ingress", &[8]),
        ("all", &peers),
        ("none", &[]),
    ];
    for (entity, want) in cases {
        let mut c = cluster();
        c.cnp(&policy(entity));
        let p = c.compile(XWING);
        let allowed: Vec<u32> =
            peers.iter().copied().filter(|&peer| p.verdict(EG, NumericIdentity(peer), TCP, 80) == Allow).collect();
        assert_eq!(allowed, *want, "toEntities: [{entity}]");
    }
}

#[test]
fn cidr_rules_with_except_select_only_outside_addresses() {
    let mut c = cluster();
    c.cnp(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: egress-cidr, namespace: default}
spec:
  endpointSelector: {matchLabels: {class: xwing}}
  egress:
  - toCIDRSet:
    - cidr: 192.0.2.0/24
      except: [192.0.2.128/25]
  - toCIDR: [198.51.100.7/32]
    toPorts: [{ports: [{port: "443", protocol: TCP}]}]
"#,
    );
    // Identities were allocated for the remaining prefix and the plain CIDR only.
    let allowed = c.cidr_id("192.0.2.0/25");
    let host_rule = c.cidr_id("198.51.100.7/32");
    assert!(NumericIdentity(allowed).is_local() && NumericIdentity(host_rule).is_local());
    assert_eq!(c.repo.cidr_prefixes().len(), 2);
    // An address in the except range maps (through the ipcache) to a broader identity: world here, or a
    // CIDR identity another policy created; neither is selected.
    c.cnp(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: other, namespace: default}
spec:
  endpointSelector: {matchLabels: {class: deathstar}}
  egress:
  - toCIDR: [192.0.2.0/24]
"#,
    );
    let broader = c.cidr_id("192.0.2.0/24");
    c.check(&[
        (XWING, EG, allowed, TCP, 80, Allow),
        (XWING, EG, broader, TCP, 80, DefaultDeny),
        (XWING, EG, WORLD, TCP, 80, DefaultDeny),
        (XWING, EG, host_rule, TCP, 443, Allow),
        (XWING, EG, host_rule, TCP, 80, DefaultDeny),
        // Cluster-managed addresses keep their own identities: never selected by a CIDR rule.
        (XWING, EG, DEATHSTAR, TCP, 80, DefaultDeny),
        (XWING, EG, REMOTE_NODE, TCP, 80, DefaultDeny),
        (DEATHSTAR, EG, broader, TCP, 80, Allow),
        (DEATHSTAR, EG, allowed, TCP, 80, Allow),
    ]);
    // 0.0.0.0/0 is the world.
    let mut c = cluster();
    c.cnp("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: default}\nspec:\n  endpointSelector: {}\n  egress:\n  - toCIDR: [0.0.0.0/0]\n");
    c.check(&[
        (XWING, EG, WORLD, TCP, 80, Allow),
        (XWING, EG, 9, TCP, 80, Allow),
        (XWING, EG, DEATHSTAR, TCP, 80, DefaultDeny),
    ]);
}

#[test]
fn port_ranges_named_ports_and_icmp() {
    let mut c = cluster();
    c.cnp(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: ports, namespace: default}
spec:
  endpointSelector: {matchLabels: {class: deathstar}}
  ingress:
  - fromEndpoints: [{matchLabels: {class: tiefighter}}]
    toPorts:
    - ports:
      - {port: "8080", endPort: 8083, protocol: TCP}
      - {port: "http", protocol: TCP}
    icmps:
    - fields:
      - {type: 8}
      - {type: EchoRequest, family: IPv6}
  egress:
  - toEndpoints: [{matchLabels: {k8s-app: kube-dns, io.kubernetes.pod.namespace: kube-system}}]
    toPorts: [{ports: [{port: dns}]}]
"#,
    );
    let endpoint = Endpoint {
        identity: NumericIdentity(DEATHSTAR),
        named_ports: [("http".to_string(), [(TCP, 8000)].into())].into(),
        node_labels: None,
    };
    let p = c.compile_with(endpoint);
    assert_eq!(
        entries(&p),
        [
            "ingress 1 any allow",
            "ingress 1001 1/8/16 allow",
            "ingress 1001 6/8000/16 allow",
            "ingress 1001 6/8080/14 allow",
            "ingress 1001 58/128/16 allow",
            "egress 1003 6/53/16 allow",
            "egress 1003 17/53/16 allow",
        ]
    );
    let t = NumericIdentity(TIEFIGHTER);
    for (protocol, port, want) in [
        (TCP, 8079, DefaultDeny),
        (TCP, 8080, Allow),
        (TCP, 8083, Allow),
        (TCP, 8084, DefaultDeny),
        (TCP, 8000, Allow),
        (ICMP, 8, Allow),
        (ICMP, 0, DefaultDeny),
        (ICMPV6, 128, Allow),
    ] {
        assert_eq!(p.verdict(IN, t, protocol, port), want, "{protocol}/{port}");
    }
}

const KNP_PEERS: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: knp, namespace: default}
spec:
  podSelector: {matchLabels: {class: deathstar}}
  ingress:
  - from:
    - podSelector: {matchLabels: {org: empire}}
    - namespaceSelector: {matchLabels: {team: rebels}}
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}
      podSelector: {matchLabels: {k8s-app: kube-dns}}
    - ipBlock: {cidr: 203.0.113.0/24, except: [203.0.113.0/25]}
    ports:
    - {port: 7000, endPort: 7001}
    - {protocol: UDP}
"#;

#[test]
fn kubernetes_network_policy_translation() {
    let mut c = cluster();
    c.knp(KNP_PEERS);
    let ip_allowed = c.cidr_id("203.0.113.128/25");
    c.check(&[
        // podSelector: same namespace implied.
        (DEATHSTAR, IN, TIEFIGHTER, TCP, 7000, Allow),
        (DEATHSTAR, IN, TIEFIGHTER, TCP, 7001, Allow),
        (DEATHSTAR, IN, TIEFIGHTER, TCP, 7002, DefaultDeny),
        // Protocol defaults to TCP; a port-less entry is every port of its protocol.
        (DEATHSTAR, IN, TIEFIGHTER, UDP, 7000, Allow),
        (DEATHSTAR, IN, TIEFIGHTER, UDP, 9999, Allow),
        (DEATHSTAR, IN, TIEFIGHTER, SCTP, 7000, DefaultDeny),
        // namespaceSelector alone: every pod of matching namespaces (org=empire in "other" via team=rebels).
        (DEATHSTAR, IN, EMPIRE_OTHER_NS, TCP, 7000, Allow),
        // namespaceSelector + podSelector: both must match.
        (DEATHSTAR, IN, KUBE_DNS, TCP, 7000, Allow),
        (DEATHSTAR, IN, XWING, TCP, 7000, DefaultDeny),
        (DEATHSTAR, IN, ip_allowed, TCP, 7000, Allow),
        (DEATHSTAR, IN, WORLD, TCP, 7000, DefaultDeny),
        // No Egress policy type: egress not enforced.
        (DEATHSTAR, EG, WORLD, TCP, 7000, Allow),
    ]);
    assert_eq!(c.repo.cidr_prefixes(), BTreeSet::from(["203.0.113.128/25".parse().unwrap()]));
}

#[test]
fn kubernetes_policy_types() {
    let knp = |spec: &str| {
        format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p, namespace: default}}\nspec:\n  podSelector: {{matchLabels: {{class: deathstar}}}}\n{spec}")
    };
    // (spec, ingress enforcing, egress enforcing, ingress from xwing, egress to world)
    let cases = [
        ("  policyTypes: [Ingress]\n", true, false, DefaultDeny, Allow),
        ("  policyTypes: [Egress]\n", false, true, Allow, DefaultDeny),
        (
            "  policyTypes: [Ingress, Egress]\n  egress:\n  - to: [{ipBlock: {cidr: 0.0.0.0/0}}]\n",
            true,
            true,
            DefaultDeny,
            Allow,
        ),
        // Without policyTypes: Ingress always, Egress when egress rules exist.
        ("  ingress:\n  - {}\n", true, false, Allow, Allow),
        ("  egress:\n  - ports: [{port: 53, protocol: UDP}]\n", true, true, DefaultDeny, DefaultDeny),
    ];
    for (spec, ing, eg, from_xwing, to_world) in cases {
        let mut c = cluster();
        c.knp(&knp(spec));
        let p = c.compile(DEATHSTAR);
        assert_eq!((p.ingress_enforcing, p.egress_enforcing), (ing, eg), "{spec}");
        assert_eq!(p.verdict(IN, NumericIdentity(XWING), TCP, 80), from_xwing, "{spec}");
        assert_eq!(p.verdict(EG, NumericIdentity(WORLD), TCP, 80), to_world, "{spec}");
    }
}

#[test]
fn unsupported_features_are_reported_not_silently_enforced() {
    let mut c = cluster();
    c.cnp(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: l7, namespace: default}
spec:
  endpointSelector: {matchLabels: {class: deathstar}}
  ingress:
  - fromEndpoints: [{matchLabels: {org: empire}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http: [{method: POST, path: /v1/request-landing}]
  egress:
  - toFQDNs: [{matchName: api.example.com}]
"#,
    );
    assert_eq!(
        c.warnings,
        [
            "spec.ingress[0].toPorts[0].rules: L7 rules are not enforced (no L7 proxy); the L4 ports are allowed",
            "spec.egress[0].toFQDNs: DNS-based policy is not supported; the names select no peers",
        ]
    );
    c.check(&[
        (DEATHSTAR, IN, TIEFIGHTER, TCP, 80, Allow),
        (DEATHSTAR, IN, XWING, TCP, 80, DefaultDeny),
        // toFQDNs selects nothing: egress is default deny, not open.
        (DEATHSTAR, EG, WORLD, TCP, 443, DefaultDeny),
    ]);
}

#[test]
fn invalid_rules_are_rejected_with_the_field_path() {
    let cnp = |spec: &str| -> Result<Policy, PolicyError> {
        let yaml = format!(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: p, namespace: default}}\n{spec}"
        );
        let cnp: CiliumNetworkPolicy = serde_saphyr::from_str(&yaml).unwrap();
        Policy::from_cnp(&cnp, &ParseContext::default())
    };
    let cases: &[(&str, &str)] = &[
        (
            "spec:\n  endpointSelector: {}\n  ingress:\n  - toPorts: [{ports: [{port: \"90\", endPort: 80}]}]\n",
            "spec.ingress[0].toPorts.ports[0].endPort: endPort 80 is below port 90",
        ),
        (
            "spec:\n  endpointSelector: {}\n  ingress:\n  - toPorts: [{ports: [{port: http, endPort: 80}]}]\n",
            "spec.ingress[0].toPorts.ports[0].endPort: endPort needs a numeric port, got \"http\"",
        ),
        (
            "specs:\n- endpointSelector: {}\n  egress: [{}]\n- endpointSelector: {}\n  egress:\n  - toCIDRSet: [{cidr: 10.0.0.0/8, except: [nope]}]\n",
            "specs[1].egress[0].toCIDRSet[0].except[0]: invalid CIDR \"nope\"",
        ),
        ("spec:\n  nodeSelector: {}\n  ingress: [{}]\n", "spec.nodeSelector: nodeSelector is only valid in a CiliumClusterwideNetworkPolicy"),
        (
            "spec:\n  endpointSelector: {}\n  ingress:\n  - toPorts: [{ports: [{port: \"80\", protocol: GRE}]}]\n",
            "spec.ingress[0].toPorts.ports[0]: protocol GRE only supports port 0 (all ports)",
        ),
        ("spec:\n  endpointSelector: {}\n  ingress:\n  - icmps: [{fields: [{type: Bogus}]}]\n", "spec.ingress[0].icmps[0].fields[0].type: invalid ICMP type \"Bogus\""),
    ];
    for (spec, want) in cases {
        assert_eq!(cnp(spec).unwrap_err().to_string(), *want);
    }
}

#[test]
fn host_policies_select_the_host_endpoint_by_node_labels() {
    let mut c = cluster();
    c.ccnp(
        r#"
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: host-fw}
spec:
  nodeSelector: {matchLabels: {node-role.kubernetes.io/control-plane: ""}}
  ingress:
  - fromEntities: [remote-node]
    toPorts: [{ports: [{port: "6443", protocol: TCP}]}]
"#,
    );
    let node = |role: bool| Endpoint {
        identity: NumericIdentity::HOST,
        node_labels: Some(if role {
            [Label::new("k8s", "node-role.kubernetes.io/control-plane", "")].into()
        } else {
            Default::default()
        }),
        ..Default::default()
    };
    let cp = c.compile_with(node(true));
    assert_eq!(entries(&cp), ["ingress 6 6/6443/16 allow"]);
    assert_eq!(cp.verdict(IN, NumericIdentity(WORLD), TCP, 6443), DefaultDeny);
    assert!(!c.compile_with(node(false)).ingress_enforcing);
    // Pods are not selected by a nodeSelector.
    assert!(!c.compile(DEATHSTAR).ingress_enforcing);
}

#[test]
fn wildcard_peer_selector_scope_follows_the_policy_kind() {
    let mut c = cluster();
    c.cnp("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: other}\nspec:\n  endpointSelector: {}\n  ingress:\n  - fromEndpoints: [{}]\n");
    // In a CNP `{}` means every pod of the namespace; the policy only selects pods of its namespace.
    c.check(&[
        (EMPIRE_OTHER_NS, IN, EMPIRE_OTHER_NS, TCP, 80, Allow),
        (EMPIRE_OTHER_NS, IN, XWING, TCP, 80, DefaultDeny),
        (XWING, IN, WORLD, TCP, 80, Allow),
    ]);
    let mut c = cluster();
    c.ccnp("apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: p}\nspec:\n  endpointSelector: {}\n  ingress:\n  - fromEndpoints: [{}]\n");
    c.check(&[(EMPIRE_OTHER_NS, IN, XWING, TCP, 80, Allow), (XWING, IN, EMPIRE_OTHER_NS, TCP, 80, Allow)]);
}

#[test]
fn identity_churn_recompiles_only_affected_endpoints() {
    let mut c = cluster();
    c.cnp(STAR_WARS_L3_L4);
    c.cnp("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: x, namespace: default}\nspec:\n  endpointSelector: {matchLabels: {class: xwing}}\n  ingress:\n  - fromEntities: [world]\n");
    let before = c.compile(DEATHSTAR);
    let xwing = c.compile(XWING);

    // A new empire ship appears.
    let changes =
        c.cache.upsert_identities([pod(1100, "default", &[("org", "empire"), ("class", "interceptor")], &[])]);
    assert!(before.affected_by(&changes));
    assert!(!xwing.affected_by(&changes));
    let after = c.compile(DEATHSTAR);
    let delta = before.map.diff(&after.map);
    assert_eq!(delta.deletes, vec![]);
    assert_eq!(delta.upserts.iter().map(|(k, _)| k.to_string()).collect::<Vec<_>>(), ["ingress 1100 6/80/16"]);

    // And leaves.
    let changes = c.cache.remove_identities([NumericIdentity(1100)]);
    assert!(after.affected_by(&changes));
    assert_eq!(after.map.diff(&c.compile(DEATHSTAR).map).deletes.len(), 1);
}

/// Property: for random allow/deny rule sets, the LPM entries (range → prefix expansion, deny precedence,
/// wildcard peers and the datapath's two lookups) decide exactly what evaluating the rules directly does.
#[test]
fn compiled_entries_agree_with_direct_rule_evaluation() {
    use super::rules::{DirectionRules, NormalizedRule, PeerRule, PolicySource, PortMatch, Subject, L4};
    use super::selector::{LabelMatcher, Requirement};

    fn next(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }
    let classes = [("tiefighter", TIEFIGHTER), ("xwing", XWING), ("deathstar", DEATHSTAR)];
    let probes_peers = [TIEFIGHTER, XWING, DEATHSTAR, WORLD, HOST];
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for round in 0..150 {
        let mut c = cluster();
        // (deny, peers (None = any), ranges (None = any L4))
        let mut model: Vec<(bool, Option<Vec<u32>>, Option<Vec<(u8, u16, u16)>>)> = Vec::new();
        let mut dir =
            DirectionRules { enforces: true, default_deny: !next(&mut seed).is_multiple_of(4), ..Default::default() };
        for _ in 0..(1 + next(&mut seed) % 4) {
            let deny = next(&mut seed).is_multiple_of(3);
            let l4 = match next(&mut seed) % 3 {
                0 => None,
                _ => Some(
                    (0..1 + next(&mut seed) % 2)
                        .map(|_| {
                            let proto = if next(&mut seed).is_multiple_of(2) { TCP } else { UDP };
                            let start = (next(&mut seed) % 64) as u16;
                            (proto, start, start + (next(&mut seed) % 40) as u16)
                        })
                        .collect::<Vec<_>>(),
                ),
            };
            let peers = match next(&mut seed) % 3 {
                0 if l4.is_some() => None,
                _ => Some(vec![classes[(next(&mut seed) % 3) as usize]]),
            };
            let rule = PeerRule {
                endpoints: peers
                    .iter()
                    .flatten()
                    .map(|(class, _)| {
                        LabelMatcher::default().with(Requirement::equals("class", class)).in_namespace("default")
                    })
                    .collect(),
                others: vec![],
                any_peer: peers.is_none(),
                l4: match &l4 {
                    None => L4::Any,
                    Some(ranges) => L4::Ports(
                        ranges.iter().map(|&(proto, start, end)| PortMatch::Range { proto, start, end }).collect(),
                    ),
                },
            };
            if deny {
                dir.deny.push(rule);
            } else {
                dir.allow.push(rule);
            }
            model.push((deny, peers.map(|p| p.iter().map(|(_, id)| *id).collect()), l4));
        }
        let default_deny = dir.default_deny;
        c.repo.upsert(Policy {
            source: PolicySource::Ccnp { name: "random".into() },
            rules: vec![NormalizedRule {
                subject: Subject::Endpoints(LabelMatcher::default().with(Requirement::equals("class", "deathstar"))),
                ingress: dir,
                egress: Default::default(),
            }],
            warnings: vec![],
        });
        let compiled = c.compile(DEATHSTAR);
        for _ in 0..60 {
            let peer = probes_peers[(next(&mut seed) % probes_peers.len() as u64) as usize];
            let protocol = [TCP, UDP, ICMP][(next(&mut seed) % 3) as usize];
            let port = (next(&mut seed) % 110) as u16;
            let matches = |deny: bool| {
                model.iter().filter(|m| m.0 == deny).any(|(_, peers, l4)| {
                    peers.as_ref().is_none_or(|p| p.contains(&peer))
                        && l4
                            .as_ref()
                            .is_none_or(|r| r.iter().any(|&(pr, s, e)| pr == protocol && (s..=e).contains(&port)))
                })
            };
            let want = if matches(true) {
                Deny
            } else if matches(false) || peer == HOST || !default_deny {
                Allow
            } else {
                DefaultDeny
            };
            let got = compiled.verdict(IN, NumericIdentity(peer), protocol, port);
            assert_eq!(
                got, want,
                "round {round}: peer {peer} {protocol}/{port} model {model:?} map {:#?}",
                compiled.map
            );
        }
    }
}

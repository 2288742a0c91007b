//! The policy controller end to end without root: the in-memory API server, real reflectors, the
//! pure state, and the map manager's writer over the fake kernel backend; local endpoints from a fake
//! endpoint manager (the watch channel).

use std::collections::{BTreeMap, BTreeSet};

use beeline_common::policy::{PolicyEndpointConfig, PolicyEndpointKey, PolicyEntry, PolicyKey, DIR_EGRESS};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};
use serde_json::json;

use super::*;
use crate::controllers::agent::local_endpoints::{self, LocalEndpoint};
use crate::controllers::test_util::{api_with_crds, eventually};
use crate::datapath::manager::fake::{FakeKernel, Faults};
use crate::datapath::manager::maps::POLICY_GROUP;
use crate::datapath::manager::writer::WriterOptions;
use crate::datapath::manager::{ManagerOptions, MapDef, MapManager};
use crate::policy::{CompilerConfig, ParseContext};

const NGINX: u32 = 1000;
const CLIENT: u32 = 1001;
const CLIENT_OTHER_NS: u32 = 1002;
const WEB_OTHER_NS: u32 = 1003;

fn identity(id: u32, ns: &str, app: &str) -> CiliumIdentity {
    let labels = BTreeMap::from([
        ("k8s:app".to_string(), app.to_string()),
        ("k8s:io.kubernetes.pod.namespace".to_string(), ns.to_string()),
        ("k8s:io.cilium.k8s.policy.cluster".to_string(), "default".to_string()),
    ]);
    CiliumIdentity::new(id, labels)
}

fn endpoint(id: u16, identity: u32, ns: &str, app: &str) -> (u16, LocalEndpoint) {
    let labels = BTreeMap::from([("app".to_string(), app.to_string())]);
    (id, LocalEndpoint { id, identity, labels, namespace: ns.into(), pod: format!("{app}-{id}") })
}

fn cnp(name: &str, spec: serde_json::Value) -> CiliumNetworkPolicy {
    serde_json::from_value(json!({
        "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
        "metadata": {"namespace": "default", "name": name}, "spec": spec,
    }))
    .unwrap()
}

/// The seeds' walkthrough: nginx accepts app=netshoot-client on `port` (a `toPorts` port entry).
fn walkthrough(port: serde_json::Value) -> CiliumNetworkPolicy {
    cnp(
        "allow-client",
        json!({
            "endpointSelector": {"matchLabels": {"app": "nginx"}},
            "ingress": [{
                "fromEndpoints": [{"matchLabels": {"app": "netshoot-client"}}],
                "toPorts": [{"ports": [port]}],
            }],
        }),
    )
}

/// Kernel rows rendered as `"<ep> <dir> <identity> <proto>/<port>/<prefix> <verdict>"`.
fn rows(kernel: &FakeKernel) -> BTreeSet<String> {
    let entries: BTreeMap<PolicyKey, PolicyEntry> = kernel.contents(PolicyMap::NAME);
    entries
        .iter()
        .map(|(k, v)| {
            let d = &k.data;
            let dir = if d.egress == DIR_EGRESS { "egress" } else { "ingress" };
            let l4 = if d.protocol == 0 {
                "any".to_string()
            } else {
                format!("{}/{}/{}", d.protocol, u16::from_be(d.dport_be), k.port_prefix_len())
            };
            let verdict = if v.is_deny() { "deny" } else { "allow" };
            format!("{} {dir} {} {l4} {verdict}", d.endpoint_id, d.identity)
        })
        .collect()
}

fn enforcement(kernel: &FakeKernel) -> BTreeMap<u32, u32> {
    let rows: BTreeMap<PolicyEndpointKey, PolicyEndpointConfig> = kernel.contents(PolicyEndpoints::NAME);
    rows.into_iter().map(|(k, v)| (k.endpoint_id, v.flags)).collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

async fn wait_rows(kernel: &FakeKernel, want: BTreeSet<String>, what: &str) {
    eventually(what, 100, || async { rows(kernel) == want }).await;
}

async fn valid_condition(api: &Api<CiliumNetworkPolicy>, name: &str) -> Option<(String, String)> {
    let obj = api.get(name).await.ok()?;
    let c = obj.status?.conditions.into_iter().find(|c| c.type_ == "Valid")?;
    Some((c.status, c.message))
}

#[tokio::test]
async fn policies_identities_and_endpoints_become_policy_rows_and_conditions() {
    let (_server, client) = api_with_crds().await;
    let kernel = FakeKernel::new(Faults::None);
    let manager = MapManager::new(ManagerOptions::default());
    let owner = manager.register_owner("policy");
    let (name, order) = POLICY_GROUP;
    let mut group = manager.group(name, order);
    let tables = PolicyTables {
        entries: group.add::<PolicyMap>(kernel.map(PolicyMap::NAME)).unwrap(),
        endpoints: group.add::<PolicyEndpoints>(kernel.map(PolicyEndpoints::NAME)).unwrap(),
        ipcache: group.add::<Ipcache>(kernel.map(Ipcache::NAME)).unwrap(),
    };
    let token = CancellationToken::new();
    let _stop = token.clone().drop_guard();
    tokio::spawn(group.build().run(WriterOptions::default(), token.clone()));

    let ids: Api<CiliumIdentity> = Api::all(client.clone());
    for ci in [
        identity(NGINX, "default", "nginx"),
        identity(CLIENT, "default", "netshoot-client"),
        identity(CLIENT_OTHER_NS, "other", "netshoot-client"),
        identity(WEB_OTHER_NS, "other", "web"),
    ] {
        ids.create(&PostParams::default(), &ci).await.unwrap();
    }
    let (eps_tx, eps_rx) = local_endpoints::channel();
    let view = SharedPolicyView::default();
    let ctl = PolicyController {
        state: PolicyState::new(CompilerConfig::default(), ParseContext::default()),
        owner,
        tables,
        view: view.clone(),
        debounce: Duration::from_millis(50),
    };
    let controller = tokio::spawn(run(client.clone(), ctl, eps_rx, token.clone()));

    // No pass before the endpoint manager has published: nothing is pruned or written yet.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!manager.status().ready, "no first pass without local endpoints");
    let eps = BTreeMap::from([
        endpoint(11, NGINX, "default", "nginx"),
        endpoint(12, CLIENT, "default", "netshoot-client"),
        endpoint(13, WEB_OTHER_NS, "other", "web"),
    ]);
    eps_tx.send(Arc::new(eps.clone())).unwrap();
    eventually("first pass", 100, || async { manager.status().ready }).await;
    assert!(rows(&kernel).is_empty(), "no policy, no rows");
    assert_eq!(enforcement(&kernel), BTreeMap::from([(11, 0), (12, 0), (13, 0)]), "nobody enforces");

    // nginx's CiliumEndpoint as the endpoint API published it (no policy status yet).
    let ceps: Api<CiliumEndpoint> = Api::namespaced(client.clone(), "default");
    let nginx_cep = CiliumEndpoint::new("default", "nginx-11", Default::default());
    ceps.create(&PostParams::default(), &nginx_cep).await.unwrap();
    let cep_policy = |want: (bool, bool)| {
        let ceps = ceps.clone();
        async move {
            let status = ceps.get("nginx-11").await.ok().and_then(|c| c.status).and_then(|s| s.policy);
            status == Some(crate::crds::cilium_endpoint::EndpointPolicy::enforcing(want.0, want.1))
        }
    };

    // The walkthrough: nginx enforces ingress; the host and default/netshoot-client on TCP 80 only
    // (not the client of namespace `other`: a CNP's selectors are in its namespace).
    let cnps: Api<CiliumNetworkPolicy> = Api::namespaced(client.clone(), "default");
    cnps.create(&PostParams::default(), &walkthrough(json!({"port": "80", "protocol": "TCP"}))).await.unwrap();
    wait_rows(&kernel, set(&["11 ingress 1 any allow", "11 ingress 1001 6/80/16 allow"]), "walkthrough rows").await;
    assert_eq!(enforcement(&kernel), BTreeMap::from([(11, 1), (12, 0), (13, 0)]));
    eventually("nginx's CiliumEndpoint reports ingress enforcement", 100, || cep_policy((true, false))).await;
    let key = ("default".to_string(), "nginx-11".to_string());
    assert_eq!(view.lock().unwrap().enforcing[&key], Enforcing { ingress: true, egress: false });
    eventually("Valid=True", 100, || async {
        valid_condition(&cnps, "allow-client").await == Some(("True".into(), "Policy validation succeeded".into()))
    })
    .await;

    // A rule change reaches the running endpoint: port 80 → 8080-8081 (one /15 prefix).
    let mut changed = cnps.get("allow-client").await.unwrap();
    changed.spec = walkthrough(json!({"port": "8080", "endPort": 8081, "protocol": "TCP"})).spec;
    cnps.replace("allow-client", &PostParams::default(), &changed).await.unwrap();
    wait_rows(&kernel, set(&["11 ingress 1 any allow", "11 ingress 1001 6/8080/15 allow"]), "rule change").await;

    // A namespace-restricted Kubernetes NetworkPolicy in `other`: web accepts that namespace's
    // netshoot-client only (the namespace is implied in podSelector peers).
    let knp: NetworkPolicy = serde_json::from_value(json!({
        "metadata": {"namespace": "other", "name": "web-from-client"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "netshoot-client"}}}]}],
        },
    }))
    .unwrap();
    let ns: Api<Namespace> = Api::all(client.clone());
    ns.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "other"}})).unwrap())
        .await
        .unwrap();
    Api::<NetworkPolicy>::namespaced(client.clone(), "other").create(&PostParams::default(), &knp).await.unwrap();
    wait_rows(
        &kernel,
        set(&[
            "11 ingress 1 any allow",
            "11 ingress 1001 6/8080/15 allow",
            "13 ingress 1 any allow",
            "13 ingress 1002 any allow",
        ]),
        "network policy rows",
    )
    .await;
    assert_eq!(enforcement(&kernel), BTreeMap::from([(11, 1), (12, 0), (13, 1)]));

    // A deny over the allow: a clusterwide ingressDeny from every netshoot-client to nginx removes
    // the allow (deny precedence) and denies both clients.
    let ccnp: CiliumClusterwideNetworkPolicy = serde_json::from_value(json!({
        "apiVersion": "cilium.io/v2", "kind": "CiliumClusterwideNetworkPolicy",
        "metadata": {"name": "deny-clients"},
        "spec": {
            "endpointSelector": {"matchLabels": {"app": "nginx"}},
            "ingressDeny": [{"fromEndpoints": [{"matchLabels": {"app": "netshoot-client"}}]}],
        },
    }))
    .unwrap();
    let ccnps: Api<CiliumClusterwideNetworkPolicy> = Api::all(client.clone());
    ccnps.create(&PostParams::default(), &ccnp).await.unwrap();
    wait_rows(
        &kernel,
        set(&[
            "11 ingress 1 any allow",
            "11 ingress 1001 any deny",
            "11 ingress 1002 any deny",
            "13 ingress 1 any allow",
            "13 ingress 1002 any allow",
        ]),
        "deny wins",
    )
    .await;

    // An invalid rule: Valid=False with the compiler's message; the policy contributes nothing.
    let bad = cnp(
        "bad-port",
        json!({
            "endpointSelector": {"matchLabels": {"app": "netshoot-client"}},
            "egress": [{"toPorts": [{"ports": [{"port": "99999", "protocol": "TCP"}]}]}],
        }),
    );
    cnps.create(&PostParams::default(), &bad).await.unwrap();
    eventually("Valid=False", 100, || async {
        matches!(valid_condition(&cnps, "bad-port").await, Some((s, m)) if s == "False" && m.contains("invalid port"))
    })
    .await;
    assert_eq!(enforcement(&kernel)[&12], 0, "a rejected policy enforces nothing");

    // The view the CLI reads.
    let v = view.lock().unwrap().clone();
    let nginx = v.endpoints.as_array().unwrap().iter().find(|e| e["id"] == 11).unwrap().clone();
    assert_eq!((nginx["ingress_enforcing"].as_bool(), nginx["egress_enforcing"].as_bool()), (Some(true), Some(false)));
    assert!(v.selectors.as_array().unwrap().iter().any(|s| s["identities"] == json!([CLIENT, CLIENT_OTHER_NS])));

    token.cancel();
    controller.await.unwrap().expect("controller stops cleanly on shutdown");
}

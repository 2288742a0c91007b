//! Every example validates against the generated schemas (and parses into the Rust types); a corpus of
//! invalid objects is rejected with an error naming the offending field.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

fn crds() -> Vec<Value> {
    beeline::crds::all().iter().map(|c| serde_json::to_value(c).expect("CRD serializes")).collect()
}

fn crd_for<'a>(crds: &'a [Value], kind: &str) -> &'a Value {
    crds.iter().find(|c| c["spec"]["names"]["kind"] == kind).unwrap_or_else(|| panic!("no CRD for {kind}"))
}

fn examples() -> Vec<(PathBuf, Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("examples/ exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .flat_map(|path| {
            let text = std::fs::read_to_string(&path).expect("readable");
            let docs: Vec<Value> = serde_saphyr::from_str_multiple(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"));
            docs.into_iter().map(move |d| (path.clone(), d))
        })
        .collect()
}

fn example(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(name);
    serde_saphyr::from_str(&std::fs::read_to_string(&path).expect("example exists")).expect("example parses")
}

fn validate(crds: &[Value], object: &Value) -> Result<(), Vec<beeline_schema::FieldError>> {
    let kind = object["kind"].as_str().expect("kind");
    beeline_schema::validate_against_crd(crd_for(crds, kind), object)
}

/// Deserializes into the typed struct and back: the types accept what the schema accepts.
fn roundtrip(object: &Value) {
    use beeline::crds::*;
    fn check<T: serde::de::DeserializeOwned + serde::Serialize>(object: &Value) {
        let typed: T = serde_json::from_value(object.clone()).unwrap_or_else(|e| panic!("{e}: {object}"));
        serde_json::to_value(&typed).expect("serializes");
    }
    match object["kind"].as_str().unwrap() {
        "CiliumNode" => check::<CiliumNode>(object),
        "CiliumPodIPPool" => check::<CiliumPodIPPool>(object),
        "CiliumLoadBalancerIPPool" => check::<CiliumLoadBalancerIPPool>(object),
        "CiliumNetworkPolicy" => check::<CiliumNetworkPolicy>(object),
        "CiliumClusterwideNetworkPolicy" => check::<CiliumClusterwideNetworkPolicy>(object),
        "CiliumEndpoint" => check::<CiliumEndpoint>(object),
        "CiliumIdentity" => check::<CiliumIdentity>(object),
        other => panic!("unexpected kind {other}"),
    }
}

#[test]
fn every_example_is_valid_and_typed() {
    let crds = crds();
    let examples = examples();
    assert!(examples.len() >= 12, "examples/ lost files: {}", examples.len());
    let mut kinds: Vec<&str> = examples.iter().map(|(_, o)| o["kind"].as_str().unwrap()).collect();
    kinds.sort();
    kinds.dedup();
    assert_eq!(kinds.len(), 7, "an example for every kind: {kinds:?}");
    for (path, object) in &examples {
        if let Err(errors) = validate(&crds, object) {
            panic!("{}: {errors:?}", path.display());
        }
        roundtrip(object);
    }
}

/// Applies `edit` (JSON pointer → new value, or `None` to remove) to a copy of `base`.
fn edited(base: &Value, pointer: &str, new: Option<Value>) -> Value {
    let mut object = base.clone();
    let (parent, key) = pointer.rsplit_once('/').expect("pointer has a parent");
    let parent = object.pointer_mut(parent).unwrap_or_else(|| panic!("no {parent} in base"));
    match (parent, new) {
        (Value::Object(map), Some(v)) => {
            map.insert(key.to_string(), v);
        }
        (Value::Object(map), None) => {
            map.remove(key).unwrap_or_else(|| panic!("nothing at {pointer}"));
        }
        (Value::Array(items), Some(v)) => items[key.parse::<usize>().unwrap()] = v,
        (Value::Array(items), None) => {
            items.remove(key.parse::<usize>().unwrap());
        }
        _ => panic!("{pointer}: parent is not a container"),
    }
    object
}

#[test]
fn bad_input_is_rejected_naming_the_field() {
    let crds = crds();
    let pool = example("pod-ip-pool-default.yaml");
    let lb = example("lb-ip-pool-range.yaml");
    let cnp = example("cnp-l3-l4.yaml");
    let l7 = example("cnp-l7-http.yaml");
    let deny = example("cnp-deny.yaml");
    let ccnp = example("ccnp-host-policy.yaml");
    let node = example("cilium-node.yaml");
    let cep = example("cilium-endpoint.yaml");
    let identity = example("cilium-identity.yaml");

    #[rustfmt::skip]
    let corpus: Vec<(&str, Value, &str)> = vec![
        // CiliumPodIPPool
        ("missing maskSize", edited(&pool, "/spec/ipv4/maskSize", None), "spec.ipv4.maskSize"),
        ("maskSize 40 in IPv4", edited(&pool, "/spec/ipv4/maskSize", Some(json!(40))), "spec.ipv4.maskSize"),
        ("maskSize 0", edited(&pool, "/spec/ipv4/maskSize", Some(json!(0))), "spec.ipv4.maskSize"),
        ("maskSize 129 in IPv6", edited(&pool, "/spec/ipv6/maskSize", Some(json!(129))), "spec.ipv6.maskSize"),
        ("maskSize as string", edited(&pool, "/spec/ipv4/maskSize", Some(json!("24"))), "spec.ipv4.maskSize"),
        ("malformed pool CIDR", edited(&pool, "/spec/ipv4/cidrs/0", Some(json!("10.10.0/16"))), "spec.ipv4.cidrs[0]"),
        ("pool without cidrs", edited(&pool, "/spec/ipv6/cidrs", None), "spec.ipv6.cidrs"),
        ("pool with empty cidrs", edited(&pool, "/spec/ipv4/cidrs", Some(json!([]))), "spec.ipv4.cidrs"),
        ("pool without spec", edited(&pool, "/spec", None), "spec"),
        ("unknown pool field", edited(&pool, "/spec/ipv4/blockSize", Some(json!(24))), "spec.ipv4.blockSize"),
        ("bad selector operator", edited(&pool, "/spec/podSelector", Some(json!({"matchExpressions": [{"key": "a", "operator": "Has"}]}))), "spec.podSelector.matchExpressions[0].operator"),
        // CiliumLoadBalancerIPPool
        ("allowFirstLastIPs: Maybe", edited(&lb, "/spec/allowFirstLastIPs", Some(json!("Maybe"))), "spec.allowFirstLastIPs"),
        ("malformed block CIDR", edited(&lb, "/spec/blocks/0/cidr", Some(json!("10.0.10.0/33"))), "spec.blocks[0].cidr"),
        ("block CIDR without prefix", edited(&lb, "/spec/blocks/2/cidr", Some(json!("2004::"))), "spec.blocks[2].cidr"),
        ("unknown block field", edited(&lb, "/spec/blocks/1/end", Some(json!("20.0.20.250"))), "spec.blocks[1].end"),
        ("disabled not a boolean", edited(&lb, "/spec/disabled", Some(json!("yes"))), "spec.disabled"),
        ("LB pool without spec", edited(&lb, "/spec", None), "spec"),
        ("bad matchLabels value", edited(&lb, "/spec/serviceSelector/matchLabels/color", Some(json!("blue green"))), "spec.serviceSelector.matchLabels.color"),
        // CiliumNetworkPolicy
        ("unknown entity", edited(&cnp, "/spec/egress/2/toEntities/0", Some(json!("internet"))), "spec.egress[2].toEntities[0]"),
        ("protocol not in enum", edited(&cnp, "/spec/ingress/0/toPorts/0/ports/0/protocol", Some(json!("ICMP"))), "spec.ingress[0].toPorts[0].ports[0].protocol"),
        ("malformed port name", edited(&cnp, "/spec/ingress/0/toPorts/0/ports/0/port", Some(json!("http!"))), "spec.ingress[0].toPorts[0].ports[0].port"),
        ("port as a number", edited(&cnp, "/spec/ingress/0/toPorts/0/ports/0/port", Some(json!(80))), "spec.ingress[0].toPorts[0].ports[0].port"),
        ("endPort 70000", edited(&cnp, "/spec/ingress/0/toPorts/0/ports/1/endPort", Some(json!(70000))), "spec.ingress[0].toPorts[0].ports[1].endPort"),
        ("port missing", edited(&cnp, "/spec/ingress/0/toPorts/0/ports/0/port", None), "spec.ingress[0].toPorts[0].ports[0].port"),
        ("malformed CIDR set", edited(&cnp, "/spec/egress/1/toCIDRSet/0/cidr", Some(json!("192.0.2.0/24/8"))), "spec.egress[1].toCIDRSet[0].cidr"),
        ("malformed except", edited(&cnp, "/spec/egress/1/toCIDRSet/0/except/0", Some(json!("not-a-cidr"))), "spec.egress[1].toCIDRSet[0].except[0]"),
        ("ICMP family", edited(&cnp, "/spec/egress/2/icmps/0/fields/0/family", Some(json!("IPv5"))), "spec.egress[2].icmps[0].fields[0].family"),
        ("ICMP type name", edited(&cnp, "/spec/egress/2/icmps/0/fields/1/type", Some(json!("Ping"))), "spec.egress[2].icmps[0].fields[1].type"),
        ("no endpointSelector", edited(&cnp, "/spec/endpointSelector", None), "spec"),
        ("typo in rule field", edited(&cnp, "/spec/ingres", Some(json!([]))), "spec.ingres"),
        ("L7 rules inside ingressDeny", edited(&deny, "/spec/ingressDeny/1/toPorts/0/rules", Some(json!({"http": [{"method": "GET"}]}))), "spec.ingressDeny[1].toPorts[0].rules"),
        ("toFQDNs in egressDeny", edited(&deny, "/spec/egressDeny/0/toFQDNs", Some(json!([{"matchName": "x.io"}]))), "spec.egressDeny[0].toFQDNs"),
        ("malformed fromCIDR", edited(&deny, "/spec/ingressDeny/1/fromCIDR/0", Some(json!("203.0.113.0"))), "spec.ingressDeny[1].fromCIDR[0]"),
        ("FQDN with both name and pattern", edited(&l7, "/specs/1/egress/1/toFQDNs/0/matchPattern", Some(json!("*.github.com"))), "specs[1].egress[1].toFQDNs[0]"),
        ("FQDN name with a space", edited(&l7, "/specs/1/egress/1/toFQDNs/0/matchName", Some(json!("api github.com"))), "specs[1].egress[1].toFQDNs[0].matchName"),
        ("two L7 protocols", edited(&l7, "/specs/1/egress/0/toPorts/0/rules/http", Some(json!([{"method": "GET"}]))), "specs[1].egress[0].toPorts[0].rules"),
        ("unknown http rule field", edited(&l7, "/specs/0/ingress/0/toPorts/0/rules/http/0/verb", Some(json!("GET"))), "specs[0].ingress[0].toPorts[0].rules.http[0].verb"),
        // CiliumClusterwideNetworkPolicy
        ("both selectors", edited(&ccnp, "/spec/endpointSelector", Some(json!({}))), "spec"),
        ("unknown entity in CCNP", edited(&ccnp, "/spec/ingress/1/fromEntities/0", Some(json!("world-ipv5"))), "spec.ingress[1].fromEntities[0]"),
        // CiliumNode
        ("malformed allocated CIDR", edited(&node, "/spec/ipam/pools/allocated/0/cidrs/0", Some(json!("10.10.3.0"))), "spec.ipam.pools.allocated[0].cidrs[0]"),
        ("pod CIDR status not in enum", edited(&node, "/status/ipam/pod-cidrs/10.0.1.0~124/status", Some(json!("full"))), "status.ipam.pod-cidrs.10.0.1.0/24.status"),
        ("camelCase instead of kebab-case", edited(&node, "/spec/ipam/minAllocate", Some(json!(8))), "spec.ipam.minAllocate"),
        ("negative pre-allocate", edited(&node, "/spec/ipam/pre-allocate", Some(json!(-1))), "spec.ipam.pre-allocate"),
        // CiliumEndpoint
        ("named port 70000", edited(&cep, "/status/named-ports/0/port", Some(json!(70000))), "status.named-ports[0].port"),
        ("named port protocol", edited(&cep, "/status/named-ports/0/protocol", Some(json!("ICMP"))), "status.named-ports[0].protocol"),
        ("endpoint spec", edited(&cep, "/spec", Some(json!({}))), "spec"),
        // CiliumIdentity
        ("security label not a string", edited(&identity, "/security-labels/k8s:app", Some(json!(1))), "security-labels.k8s:app"),
        ("missing security-labels", edited(&identity, "/security-labels", None), "security-labels"),
    ];
    assert!(corpus.len() >= 30);
    for (what, object, path) in &corpus {
        match validate(&crds, object) {
            Ok(()) => panic!("{what}: accepted, want an error at {path}"),
            Err(errors) => {
                assert!(errors.iter().any(|e| e.path == *path), "{what}: want an error at {path}, got {errors:?}")
            }
        }
    }
}

#[test]
fn semantic_mistakes_are_not_schema_errors() {
    let crds = crds();
    let lb = example("lb-ip-pool-range.yaml");
    let reversed = edited(&lb, "/spec/blocks/1", Some(json!({"start": "20.0.20.200", "stop": "20.0.20.100"})));
    assert_eq!(validate(&crds, &reversed), Ok(()), "start > stop is for the operator's conditions");
    let mixed = edited(&lb, "/spec/blocks/0", Some(json!({"cidr": "10.0.10.0/24", "start": "10.0.10.5"})));
    assert_eq!(validate(&crds, &mixed), Ok(()), "cidr and start in one block is for the operator's conditions");
    // Cilium's port pattern only anchors the number at the start, so its schema accepts "70000";
    // Cilium (and beeline's policy controller) reject it when the rule is sanitized.
    let cnp = example("cnp-l3-l4.yaml");
    let big_port = edited(&cnp, "/spec/ingress/0/toPorts/0/ports/0/port", Some(json!("70000")));
    assert_eq!(validate(&crds, &big_port), Ok(()), "never stricter than Cilium's schema");
    let no_blocks = edited(&lb, "/spec/blocks", None);
    assert_eq!(validate(&crds, &no_blocks), Ok(()), "Cilium's schema accepts a pool without blocks");
}

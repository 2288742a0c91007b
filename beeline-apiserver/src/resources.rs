//! The resource types the server knows: the built-in kinds the project uses, plus one entry per
//! CustomResourceDefinition created through the API.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

/// Storage key of a resource type: (group, plural). All served versions share one storage.
pub type TypeKey = (String, String);

#[derive(Clone, Debug)]
pub struct ResourceType {
    pub group: String,
    /// Served versions; the first is the preferred (storage) version.
    pub versions: Vec<String>,
    pub kind: String,
    pub plural: String,
    pub singular: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    /// Whether the `status` subresource exists (spec and status written separately).
    pub status_subresource: bool,
    /// The CRD that defines this type, for schema validation and list types.
    pub crd: Option<Arc<Value>>,
}

impl ResourceType {
    pub fn key(&self) -> TypeKey {
        (self.group.clone(), self.plural.clone())
    }

    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_string()
        } else {
            format!("{}/{version}", self.group)
        }
    }

    pub fn preferred_version(&self) -> &str {
        &self.versions[0]
    }

    pub fn is_crd(&self) -> bool {
        self.crd.is_some()
    }
}

struct Builtin {
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
    status: bool,
}

const fn b(
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
    status: bool,
) -> Builtin {
    Builtin { group, version, kind, plural, namespaced, short, status }
}

const BUILTINS: &[Builtin] = &[
    b("", "v1", "Namespace", "namespaces", false, &["ns"], true),
    b("", "v1", "Node", "nodes", false, &["no"], true),
    b("", "v1", "Pod", "pods", true, &["po"], true),
    b("", "v1", "Service", "services", true, &["svc"], true),
    b("", "v1", "Endpoints", "endpoints", true, &["ep"], false),
    b("", "v1", "Event", "events", true, &["ev"], false),
    b("", "v1", "ConfigMap", "configmaps", true, &["cm"], false),
    b("", "v1", "Secret", "secrets", true, &[], false),
    b("", "v1", "ServiceAccount", "serviceaccounts", true, &["sa"], false),
    b("apps", "v1", "Deployment", "deployments", true, &["deploy"], true),
    b("apps", "v1", "ReplicaSet", "replicasets", true, &["rs"], true),
    b("apps", "v1", "DaemonSet", "daemonsets", true, &["ds"], true),
    b("apps", "v1", "StatefulSet", "statefulsets", true, &["sts"], true),
    b("rbac.authorization.k8s.io", "v1", "Role", "roles", true, &[], false),
    b("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings", true, &[], false),
    b("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", false, &[], false),
    b("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding", "clusterrolebindings", false, &[], false),
    b("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices", true, &[], false),
    b("networking.k8s.io", "v1", "NetworkPolicy", "networkpolicies", true, &["netpol"], false),
    b("coordination.k8s.io", "v1", "Lease", "leases", true, &[], false),
    b("events.k8s.io", "v1", "Event", "events", true, &["ev"], false),
    b(
        "apiextensions.k8s.io",
        "v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        false,
        &["crd", "crds"],
        true,
    ),
];

/// All known types, keyed by (group, plural).
#[derive(Clone, Debug)]
pub struct Registry {
    types: BTreeMap<TypeKey, ResourceType>,
}

impl Default for Registry {
    fn default() -> Self {
        let mut types = BTreeMap::new();
        for bt in BUILTINS {
            let t = ResourceType {
                group: bt.group.into(),
                versions: vec![bt.version.into()],
                kind: bt.kind.into(),
                plural: bt.plural.into(),
                singular: bt.kind.to_lowercase(),
                namespaced: bt.namespaced,
                short_names: bt.short.iter().map(|s| s.to_string()).collect(),
                categories: if ["pods", "services", "daemonsets", "deployments", "replicasets", "statefulsets"]
                    .contains(&bt.plural)
                {
                    vec!["all".into()]
                } else {
                    vec![]
                },
                status_subresource: bt.status,
                crd: None,
            };
            types.insert(t.key(), t);
        }
        Registry { types }
    }
}

impl Registry {
    /// The type served at `/<group>/<version>/<plural>`, if that version is served.
    pub fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceType> {
        self.types.get(&(group.to_string(), plural.to_string())).filter(|t| t.versions.iter().any(|v| v == version))
    }

    pub fn get(&self, key: &TypeKey) -> Option<&ResourceType> {
        self.types.get(key)
    }

    pub fn all(&self) -> impl Iterator<Item = &ResourceType> {
        self.types.values()
    }

    /// (group, version) pairs served, core first, in a stable order.
    pub fn group_versions(&self) -> Vec<(String, String)> {
        let mut gvs: Vec<(String, String)> = Vec::new();
        for t in self.types.values() {
            for v in &t.versions {
                let gv = (t.group.clone(), v.clone());
                if !gvs.contains(&gv) {
                    gvs.push(gv);
                }
            }
        }
        gvs.sort();
        gvs
    }

    /// Registers (or re-registers) the type a CRD defines. Returns the type key.
    pub fn register_crd(&mut self, crd: &Value) -> Option<TypeKey> {
        let t = type_from_crd(crd)?;
        let key = t.key();
        self.types.insert(key.clone(), t);
        Some(key)
    }

    pub fn unregister(&mut self, key: &TypeKey) {
        if self.types.get(key).is_some_and(|t| t.is_crd()) {
            self.types.remove(key);
        }
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect()).unwrap_or_default()
}

/// The served type described by a CRD object; `None` when the CRD lacks required names.
pub fn type_from_crd(crd: &Value) -> Option<ResourceType> {
    let spec = crd.get("spec")?;
    let names = spec.get("names")?;
    let group = spec.get("group")?.as_str()?.to_string();
    let kind = names.get("kind")?.as_str()?.to_string();
    let plural = names.get("plural")?.as_str()?.to_string();
    let singular = names.get("singular").and_then(Value::as_str).map(String::from).unwrap_or(kind.to_lowercase());
    let mut versions: Vec<(bool, String, bool)> = Vec::new();
    for v in spec.get("versions").and_then(Value::as_array).into_iter().flatten() {
        if v.get("served").and_then(Value::as_bool) != Some(true) {
            continue;
        }
        let name = v.get("name")?.as_str()?.to_string();
        let storage = v.get("storage").and_then(Value::as_bool).unwrap_or(false);
        let status = v.pointer("/subresources/status").is_some();
        versions.push((storage, name, status));
    }
    if versions.is_empty() {
        return None;
    }
    // Storage version first: it is the preferred version in discovery.
    versions.sort_by_key(|(storage, _, _)| !storage);
    Some(ResourceType {
        group,
        status_subresource: versions.iter().any(|(_, _, s)| *s),
        versions: versions.into_iter().map(|(_, n, _)| n).collect(),
        kind,
        plural,
        singular,
        namespaced: spec.get("scope").and_then(Value::as_str) != Some("Cluster"),
        short_names: strings(names.get("shortNames").unwrap_or(&Value::Null)),
        categories: strings(names.get("categories").unwrap_or(&Value::Null)),
        crd: Some(Arc::new(crd.clone())),
    })
}

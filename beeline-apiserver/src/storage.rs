//! The object store: every object as JSON, one global resourceVersion counter, an event log for
//! watch resumption, and the write pipeline shared by create/update/patch/apply/delete (status
//! isolation, generation, finalizers, managedFields, no-op detection, garbage collection).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::{json, Map, Value};
use tokio::sync::broadcast;

use crate::errors::{ApiError, ApiResult, Cause};
use crate::managed::{self, Scope, TypeInfo, Writer};
use crate::resources::{Registry, ResourceType, TypeKey};
use crate::selectors::{FieldSelector, LabelSelector};
use crate::service_ips::{Family, ServiceCidrs};
use crate::validation::Validator;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, as kept in the event log and broadcast to watchers.
#[derive(Clone, Debug)]
pub struct StoredEvent {
    pub rv: u64,
    pub key: TypeKey,
    pub namespace: String,
    pub kind: EventType,
    pub object: Value,
    /// The object before the change (for selector transitions in filtered watches).
    pub prev: Option<Value>,
}

/// Which part of the object a write addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sub {
    Main,
    Status,
}

impl Sub {
    pub fn name(self) -> &'static str {
        match self {
            Sub::Main => "",
            Sub::Status => "status",
        }
    }
}

/// Who writes, and how.
#[derive(Clone, Debug)]
pub struct WriteOpts {
    pub manager: String,
    pub sub: Sub,
    pub version: String,
    pub dry_run: bool,
}

/// How a delete cascades.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Propagation {
    Background,
    Orphan,
}

pub struct ListResult {
    pub items: Vec<Value>,
    pub resource_version: u64,
    pub continue_token: Option<String>,
    pub remaining: Option<usize>,
}

/// Where a watch starts.
pub enum WatchStart {
    /// Current objects (sent as ADDED), then live events after `rv`.
    Snapshot { objects: Vec<Value>, rv: u64 },
    /// Logged events after the requested resourceVersion, then live events.
    Replay { events: Vec<Arc<StoredEvent>>, rv: u64 },
}

type ObjKey = (String, String);

pub struct State {
    pub rv: u64,
    pub registry: Registry,
    objects: BTreeMap<TypeKey, BTreeMap<ObjKey, Value>>,
    log: VecDeque<Arc<StoredEvent>>,
    log_capacity: usize,
    /// Watches must start at or after this resourceVersion (older events were dropped).
    compacted_rv: u64,
    /// Next offset into each family's service range (see [`ServiceCidrs`]).
    next_service_ip: u128,
    next_service_ip6: u128,
    service_cidrs: ServiceCidrs,
    next_node_port: u32,
    events: broadcast::Sender<Arc<StoredEvent>>,
    validator: Validator,
}

static UID_COUNTER: AtomicU64 = AtomicU64::new(0);

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn random_u64() -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    splitmix(nanos as u64 ^ splitmix(UID_COUNTER.fetch_add(1, Ordering::Relaxed)))
}

/// A version-4 style UUID.
pub fn new_uid() -> String {
    let (a, b) = (random_u64(), random_u64());
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | (b >> 48 & 0x3fff),
        b & 0xffff_ffff_ffff
    )
}

/// RFC 3339 time with second precision, as metav1.Time.
pub fn now() -> String {
    jiff::Timestamp::now().round(jiff::Unit::Second).map(|t| t.to_string()).unwrap_or_default()
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut r = random_u64();
    (0..5)
        .map(|_| {
            let c = ALPHABET[(r % ALPHABET.len() as u64) as usize] as char;
            r /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

fn meta(obj: &Value) -> &Value {
    obj.get("metadata").unwrap_or(&Value::Null)
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> &'a str {
    meta(obj).get(field).and_then(Value::as_str).unwrap_or("")
}

fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    obj["metadata"].as_object_mut().expect("metadata is an object")
}

fn finalizers(obj: &Value) -> usize {
    meta(obj).get("finalizers").and_then(Value::as_array).map_or(0, Vec::len)
}

/// The object without what does not count as a change (resourceVersion, managedFields times).
fn comparable(obj: &Value) -> Value {
    let mut c = obj.clone();
    if let Some(m) = c.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
        if let Some(Value::Array(mf)) = m.get_mut("managedFields") {
            for e in mf {
                if let Some(e) = e.as_object_mut() {
                    e.remove("time");
                }
            }
        }
    }
    c
}

/// The object without metadata (and status when written separately): what `generation` tracks.
fn spec_part(obj: &Value, status_separate: bool) -> Value {
    let mut c = obj.clone();
    if let Some(m) = c.as_object_mut() {
        m.remove("metadata");
        if status_separate {
            m.remove("status");
        }
    }
    c
}

/// The CRD schema for a version of a custom resource.
pub fn crd_schema<'a>(rt: &'a ResourceType, version: &str) -> Option<&'a Value> {
    let crd = rt.crd.as_deref()?;
    crd.pointer("/spec/versions")?
        .as_array()?
        .iter()
        .find(|v| v.get("name").and_then(Value::as_str) == Some(version))?
        .pointer("/schema/openAPIV3Schema")
}

impl State {
    pub fn new(log_capacity: usize, validator: Validator) -> (Self, broadcast::Receiver<Arc<StoredEvent>>) {
        let (events, rx) = broadcast::channel(16384);
        let mut s = State {
            rv: 1,
            registry: Registry::default(),
            objects: BTreeMap::new(),
            log: VecDeque::new(),
            log_capacity: log_capacity.max(1),
            compacted_rv: 0,
            next_service_ip: 10,
            next_service_ip6: 10,
            service_cidrs: ServiceCidrs::default(),
            next_node_port: 30000,
            events,
            validator,
        };
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let rt = s.registry.get(&(String::new(), "namespaces".into())).cloned().expect("namespaces type");
            let opts =
                WriteOpts { manager: "beeline-apiserver".into(), sub: Sub::Main, version: "v1".into(), dry_run: false };
            s.create(&rt, "", json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}), &opts)
                .expect("bootstrap namespace");
        }
        (s, rx)
    }

    /// Sets the service ranges ClusterIPs are allocated from (`--service-cluster-ip-range`).
    pub fn set_service_cidrs(&mut self, cidrs: ServiceCidrs) {
        self.service_cidrs = cidrs;
        self.resume_allocators();
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<StoredEvent>> {
        self.events.subscribe()
    }

    fn bucket(&mut self, key: &TypeKey) -> &mut BTreeMap<ObjKey, Value> {
        self.objects.entry(key.clone()).or_default()
    }

    pub fn get(&self, rt: &ResourceType, ns: &str, name: &str) -> ApiResult<Value> {
        self.objects
            .get(&rt.key())
            .and_then(|b| b.get(&(ns.to_string(), name.to_string())))
            .cloned()
            .ok_or_else(|| ApiError::not_found(&rt.group, &rt.plural, name))
    }

    pub fn list(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
        limit: Option<usize>,
        continue_from: Option<&str>,
    ) -> ApiResult<ListResult> {
        let start: Option<ObjKey> = match continue_from {
            Some(tok) if !tok.is_empty() => {
                let (n, name) = tok
                    .split_once('/')
                    .ok_or_else(|| ApiError::bad_request(format!("invalid continue token {tok:?}")))?;
                Some((n.to_string(), name.to_string()))
            }
            _ => None,
        };
        let matching: Vec<&Value> = self
            .objects
            .get(&rt.key())
            .into_iter()
            .flat_map(|b| b.iter())
            .filter(|((ons, _), _)| ns.is_none_or(|n| n == ons))
            .filter(|(k, _)| start.as_ref().is_none_or(|s| *k > s))
            .map(|(_, v)| v)
            .filter(|v| labels.matches(v) && fields.matches(v))
            .collect();
        let total = matching.len();
        let take = limit.filter(|l| *l > 0).unwrap_or(usize::MAX).min(total);
        let items: Vec<Value> = matching.into_iter().take(take).cloned().collect();
        let continue_token = (take < total)
            .then(|| items.last().map(|v| format!("{}/{}", meta_str(v, "namespace"), meta_str(v, "name"))))
            .flatten();
        Ok(ListResult {
            items,
            resource_version: self.rv,
            remaining: continue_token.as_ref().map(|_| total - take),
            continue_token,
        })
    }

    /// Where a watch from `rv` (None or 0: from now, with the current objects first) starts.
    pub fn watch_start(&self, rt: &ResourceType, rv: Option<u64>) -> ApiResult<WatchStart> {
        let key = rt.key();
        match rv {
            None | Some(0) => Ok(WatchStart::Snapshot {
                objects: self.objects.get(&key).into_iter().flat_map(|b| b.values().cloned()).collect(),
                rv: self.rv,
            }),
            Some(rv) if rv < self.compacted_rv => {
                Err(ApiError::gone(format!("too old resource version: {rv} ({})", self.compacted_rv)))
            }
            Some(rv) => Ok(WatchStart::Replay {
                events: self.log.iter().filter(|e| e.rv > rv && e.key == key).cloned().collect(),
                rv: rv.max(self.rv),
            }),
        }
    }

    fn emit(&mut self, rt: &ResourceType, kind: EventType, object: Value, prev: Option<Value>) {
        let ev = Arc::new(StoredEvent {
            rv: self.rv,
            key: rt.key(),
            namespace: meta_str(&object, "namespace").to_string(),
            kind,
            object,
            prev,
        });
        self.log.push_back(ev.clone());
        while self.log.len() > self.log_capacity {
            if let Some(old) = self.log.pop_front() {
                self.compacted_rv = old.rv;
            }
        }
        // No receivers is fine: nobody watches.
        let _ = self.events.send(ev);
    }

    fn type_info<'a>(rt: &'a ResourceType, version: &str) -> TypeInfo<'a> {
        TypeInfo { kind: &rt.kind, schema: crd_schema(rt, version) }
    }

    fn scope(rt: &ResourceType, sub: Sub) -> Scope {
        match sub {
            Sub::Main => Scope::Main { status_separate: rt.status_subresource },
            Sub::Status => Scope::Status,
        }
    }

    fn writer<'a>(rt: &ResourceType, opts: &'a WriteOpts, api_version: &'a str, now: &'a str) -> Writer<'a> {
        Writer {
            manager: &opts.manager,
            subresource: opts.sub.name(),
            api_version,
            now,
            scope: Self::scope(rt, opts.sub),
        }
    }

    fn check_namespace(&self, rt: &ResourceType, ns: &str) -> ApiResult<()> {
        if !rt.namespaced {
            return Ok(());
        }
        if ns.is_empty() {
            return Err(ApiError::bad_request("the namespace of the object must be set"));
        }
        let exists = self
            .objects
            .get(&(String::new(), "namespaces".to_string()))
            .is_some_and(|b| b.contains_key(&(String::new(), ns.to_string())));
        if exists {
            Ok(())
        } else {
            Err(ApiError::not_found("", "namespaces", ns))
        }
    }

    fn validate(&self, rt: &ResourceType, obj: &Value) -> ApiResult<()> {
        let name = meta_str(obj, "name");
        if name.is_empty() {
            return Err(ApiError::invalid(
                &rt.group,
                &rt.kind,
                name,
                vec![Cause {
                    kind: "FieldValueRequired".into(),
                    field: "metadata.name".into(),
                    message: "Required value: name or generateName is required".into(),
                }],
            ));
        }
        if let Some(crd) = &rt.crd {
            if let Err(errors) = (self.validator)(crd, obj) {
                let causes = errors
                    .into_iter()
                    .map(|e| Cause { kind: "FieldValueInvalid".into(), field: e.path, message: e.message })
                    .collect();
                return Err(ApiError::invalid(&rt.group, &rt.kind, name, causes));
            }
        }
        Ok(())
    }

    /// Defaults the real API server fills in on create.
    fn defaults_on_create(&mut self, rt: &ResourceType, obj: &mut Value) -> ApiResult<()> {
        match (rt.group.as_str(), rt.plural.as_str()) {
            ("", "pods") => {
                obj["status"] = json!({"phase": "Pending"});
            }
            ("", "namespaces") => {
                obj["status"] = json!({"phase": "Active"});
            }
            ("", "services") => {
                let name = meta_str(obj, "name").to_string();
                let spec = obj.get_mut("spec").and_then(Value::as_object_mut);
                let Some(spec) = spec else { return Ok(()) };
                let ty = spec.entry("type").or_insert(json!("ClusterIP")).as_str().unwrap_or("ClusterIP").to_string();
                if ty != "ExternalName" && !spec.contains_key("clusterIP") {
                    let policy = spec.get("ipFamilyPolicy").and_then(Value::as_str);
                    let requested: Vec<String> = spec
                        .get("ipFamilies")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .map(|v| v.as_str().unwrap_or_default().to_string())
                        .collect();
                    let (families, policy) = self
                        .service_cidrs
                        .families(policy, &requested)
                        .map_err(|cause| ApiError::invalid("", "Service", &name, vec![cause]))?;
                    let mut ips = Vec::new();
                    for family in &families {
                        let next = match family {
                            Family::V4 => &mut self.next_service_ip,
                            Family::V6 => &mut self.next_service_ip6,
                        };
                        let ip = self.service_cidrs.address(*family, *next).ok_or_else(|| {
                            ApiError::new(500, "InternalError", format!("the {} service range is full", family.name()))
                        })?;
                        *next += 1;
                        ips.push(ip.to_string());
                    }
                    spec.insert("clusterIP".into(), json!(ips[0]));
                    spec.insert("clusterIPs".into(), json!(ips));
                    spec.insert("ipFamilies".into(), json!(families.iter().map(|f| f.name()).collect::<Vec<_>>()));
                    spec.insert("ipFamilyPolicy".into(), json!(policy));
                }
                spec.entry("sessionAffinity").or_insert(json!("None"));
                if let Some(Value::Array(ports)) = spec.get_mut("ports") {
                    for p in ports {
                        let port = p.get("port").cloned().unwrap_or(Value::Null);
                        let p = p.as_object_mut().expect("port is an object");
                        p.entry("protocol").or_insert(json!("TCP"));
                        p.entry("targetPort").or_insert(port);
                        if (ty == "NodePort" || ty == "LoadBalancer") && !p.contains_key("nodePort") {
                            p.insert("nodePort".into(), json!(self.next_node_port));
                            self.next_node_port += 1;
                        }
                    }
                }
                // kube-apiserver allocates the eTP=Local health-check node port of a
                // LoadBalancer Service from the node port range too.
                let local = spec.get("externalTrafficPolicy").and_then(Value::as_str) == Some("Local");
                let unset = spec.get("healthCheckNodePort").is_none_or(|v| v.is_null() || v.as_u64() == Some(0));
                if ty == "LoadBalancer" && local && unset {
                    spec.insert("healthCheckNodePort".into(), json!(self.next_node_port));
                    self.next_node_port += 1;
                }
                obj["status"] = json!({"loadBalancer": {}});
            }
            _ => {
                // Status is reset on create for types with a status subresource, except nodes
                // (the kubelet registers a node with its status).
                if rt.status_subresource && rt.plural != "nodes" {
                    if let Some(m) = obj.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
        }
        if rt.group == "apiextensions.k8s.io" {
            crd_status(obj);
        }
        Ok(())
    }

    pub fn create(&mut self, rt: &ResourceType, ns: &str, mut obj: Value, opts: &WriteOpts) -> ApiResult<Value> {
        if !obj.is_object() {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        }
        let m = meta_mut(&mut obj);
        let body_ns = m.get("namespace").and_then(Value::as_str).unwrap_or("").to_string();
        if rt.namespaced {
            if !body_ns.is_empty() && body_ns != ns {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            m.insert("namespace".into(), json!(ns));
        } else {
            m.remove("namespace");
        }
        if m.get("name").and_then(Value::as_str).unwrap_or("").is_empty() {
            if let Some(prefix) = m.get("generateName").and_then(Value::as_str) {
                let name = format!("{prefix}{}", random_suffix());
                m.insert("name".into(), json!(name));
            }
        }
        let now = now();
        m.insert("uid".into(), json!(new_uid()));
        m.insert("creationTimestamp".into(), json!(now));
        m.insert("generation".into(), json!(1));
        for f in ["deletionTimestamp", "deletionGracePeriodSeconds", "resourceVersion", "managedFields", "selfLink"] {
            m.remove(f);
        }
        let ns = if rt.namespaced { ns } else { "" };
        let name = meta_str(&obj, "name").to_string();
        self.validate(rt, &obj)?;
        self.check_namespace(rt, ns)?;
        if self.bucket(&rt.key()).contains_key(&(ns.to_string(), name.clone())) {
            return Err(ApiError::already_exists(&rt.group, &rt.plural, &name));
        }
        obj["apiVersion"] = json!(rt.api_version(&opts.version));
        obj["kind"] = json!(rt.kind);
        self.defaults_on_create(rt, &mut obj)?;
        let api_version = rt.api_version(&opts.version);
        let opts_main = WriteOpts { sub: Sub::Main, ..opts.clone() };
        managed::record_update(
            None,
            &mut obj,
            Self::type_info(rt, &opts.version),
            &Self::writer(rt, &opts_main, &api_version, &now),
        );
        self.store_new(rt, ns, obj, opts.dry_run)
    }

    fn store_new(&mut self, rt: &ResourceType, ns: &str, mut obj: Value, dry_run: bool) -> ApiResult<Value> {
        if dry_run {
            meta_mut(&mut obj).insert("resourceVersion".into(), json!(self.rv.to_string()));
            return Ok(obj);
        }
        self.rv += 1;
        meta_mut(&mut obj).insert("resourceVersion".into(), json!(self.rv.to_string()));
        let name = meta_str(&obj, "name").to_string();
        self.bucket(&rt.key()).insert((ns.to_string(), name), obj.clone());
        if rt.group == "apiextensions.k8s.io" {
            self.registry.register_crd(&obj);
        }
        self.emit(rt, EventType::Added, obj.clone(), None);
        Ok(obj)
    }

    /// Creates an object through server-side apply (PATCH with apply content on a missing object).
    pub fn apply_create(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        applied: Value,
        opts: &WriteOpts,
    ) -> ApiResult<Value> {
        if opts.sub == Sub::Status {
            return Err(ApiError::not_found(&rt.group, &rt.plural, name));
        }
        let now = now();
        let api_version = rt.api_version(&opts.version);
        let ti = Self::type_info(rt, &opts.version);
        let applied = restrict_to_scope(&applied, Self::scope(rt, opts.sub));
        let mut obj = managed::apply(
            None,
            &applied,
            ti,
            &Self::writer(rt, opts, &api_version, &now),
            false,
            (&rt.group, &rt.plural, name),
        )?;
        let mf = obj.pointer("/metadata/managedFields").cloned();
        let m = meta_mut(&mut obj);
        m.insert("name".into(), json!(name));
        let mut created = self.create(rt, ns, obj, &WriteOpts { dry_run: true, ..opts.clone() })?;
        // `create` records an Update entry; the apply entry is the one that counts.
        if let Some(mf) = mf {
            meta_mut(&mut created).insert("managedFields".into(), mf);
        }
        if let Some(m) = created.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
        }
        let ns = if rt.namespaced { ns } else { "" };
        self.store_new(rt, ns, created, opts.dry_run)
    }

    /// Replaces an object (PUT, or the result of a patch). `new` is the full desired object.
    pub fn update(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        mut new: Value,
        opts: &WriteOpts,
        require_rv: bool,
    ) -> ApiResult<Value> {
        let ns = if rt.namespaced { ns } else { "" };
        let old = self.get(rt, ns, name)?;
        if !new.is_object() {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        }
        let body_name = meta_str(&new, "name");
        if !body_name.is_empty() && body_name != name {
            return Err(ApiError::bad_request("the name of the object does not match the name on the URL"));
        }
        let body_rv = meta_str(&new, "resourceVersion").to_string();
        if !body_rv.is_empty() && body_rv != meta_str(&old, "resourceVersion") {
            return Err(ApiError::conflict(&rt.group, &rt.plural, name));
        }
        if body_rv.is_empty() && require_rv && rt.is_crd() {
            return Err(ApiError::invalid(
                &rt.group,
                &rt.kind,
                name,
                vec![Cause {
                    kind: "FieldValueInvalid".into(),
                    field: "metadata.resourceVersion".into(),
                    message: "Invalid value: 0x0: must be specified for an update".into(),
                }],
            ));
        }
        // System-owned metadata comes from the stored object.
        {
            let om = meta(&old).clone();
            let m = meta_mut(&mut new);
            for f in [
                "name",
                "namespace",
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "managedFields",
                "resourceVersion",
            ] {
                match om.get(f) {
                    Some(v) => m.insert(f.into(), v.clone()),
                    None => m.remove(f),
                };
            }
        }
        new["apiVersion"] = old["apiVersion"].clone();
        new["kind"] = json!(rt.kind);
        match opts.sub {
            Sub::Main if rt.status_subresource => match old.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    new.as_object_mut().expect("object").remove("status");
                }
            },
            Sub::Main => {}
            Sub::Status => {
                let status = new.get("status").cloned();
                new = old.clone();
                match status {
                    Some(s) => new["status"] = s,
                    None => {
                        new.as_object_mut().expect("object").remove("status");
                    }
                }
            }
        }
        let now = now();
        let api_version = rt.api_version(&opts.version);
        managed::record_update(
            Some(&old),
            &mut new,
            Self::type_info(rt, &opts.version),
            &Self::writer(rt, opts, &api_version, &now),
        );
        self.commit_update(rt, ns, old, new, opts.dry_run)
    }

    /// Server-side apply onto an existing object.
    pub fn apply_update(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        applied: Value,
        opts: &WriteOpts,
        force: bool,
    ) -> ApiResult<Value> {
        let ns = if rt.namespaced { ns } else { "" };
        let old = self.get(rt, ns, name)?;
        let body_rv = meta_str(&applied, "resourceVersion");
        if !body_rv.is_empty() && body_rv != meta_str(&old, "resourceVersion") {
            return Err(ApiError::conflict(&rt.group, &rt.plural, name));
        }
        let now = now();
        let api_version = rt.api_version(&opts.version);
        let applied = restrict_to_scope(&applied, Self::scope(rt, opts.sub));
        let new = managed::apply(
            Some(&old),
            &applied,
            Self::type_info(rt, &opts.version),
            &Self::writer(rt, opts, &api_version, &now),
            force,
            (&rt.group, &rt.plural, name),
        )?;
        self.commit_update(rt, ns, old, new, opts.dry_run)
    }

    /// The common end of every update: generation, validation, no-op detection, finalizer-driven
    /// removal, resourceVersion and the MODIFIED event.
    fn commit_update(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        old: Value,
        mut new: Value,
        dry_run: bool,
    ) -> ApiResult<Value> {
        let name = meta_str(&old, "name").to_string();
        if spec_part(&old, rt.status_subresource) != spec_part(&new, rt.status_subresource) {
            let g = meta(&old).get("generation").and_then(Value::as_i64).unwrap_or(0);
            meta_mut(&mut new).insert("generation".into(), json!(g + 1));
        }
        if rt.group == "apiextensions.k8s.io" {
            crd_status(&mut new);
        }
        self.validate(rt, &new)?;
        if comparable(&old) == comparable(&new) {
            return Ok(old);
        }
        if dry_run {
            return Ok(new);
        }
        if meta(&new).get("deletionTimestamp").is_some() && finalizers(&new) == 0 {
            return Ok(self.remove(rt, ns, &name, new, Propagation::Background));
        }
        self.rv += 1;
        meta_mut(&mut new).insert("resourceVersion".into(), json!(self.rv.to_string()));
        self.bucket(&rt.key()).insert((ns.to_string(), name), new.clone());
        if rt.group == "apiextensions.k8s.io" {
            self.registry.register_crd(&new);
        }
        self.emit(rt, EventType::Modified, new.clone(), Some(old));
        Ok(new)
    }

    /// Deletes an object: with finalizers it only gets a deletionTimestamp; otherwise it is removed
    /// and its dependents (by ownerReferences) are garbage-collected.
    pub fn delete(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        preconditions: (Option<&str>, Option<&str>),
        propagation: Propagation,
        dry_run: bool,
    ) -> ApiResult<Value> {
        let ns = if rt.namespaced { ns } else { "" };
        let old = self.get(rt, ns, name)?;
        let (uid, rv) = preconditions;
        if uid.is_some_and(|u| u != meta_str(&old, "uid")) || rv.is_some_and(|r| r != meta_str(&old, "resourceVersion"))
        {
            return Err(ApiError::conflict(&rt.group, &rt.plural, name));
        }
        if dry_run {
            return Ok(old);
        }
        if finalizers(&old) > 0 {
            if meta(&old).get("deletionTimestamp").is_some() {
                return Ok(old);
            }
            let mut new = old.clone();
            let g = meta(&old).get("generation").and_then(Value::as_i64).unwrap_or(0);
            let m = meta_mut(&mut new);
            m.insert("deletionTimestamp".into(), json!(now()));
            m.insert("deletionGracePeriodSeconds".into(), json!(0));
            m.insert("generation".into(), json!(g + 1));
            self.rv += 1;
            meta_mut(&mut new).insert("resourceVersion".into(), json!(self.rv.to_string()));
            self.bucket(&rt.key()).insert((ns.to_string(), name.to_string()), new.clone());
            self.emit(rt, EventType::Modified, new.clone(), Some(old));
            return Ok(new);
        }
        Ok(self.remove(rt, ns, name, old, propagation))
    }

    fn remove(&mut self, rt: &ResourceType, ns: &str, name: &str, mut last: Value, propagation: Propagation) -> Value {
        self.rv += 1;
        meta_mut(&mut last).insert("resourceVersion".into(), json!(self.rv.to_string()));
        let prev = self.bucket(&rt.key()).remove(&(ns.to_string(), name.to_string()));
        self.emit(rt, EventType::Deleted, last.clone(), prev);
        if rt.group == "apiextensions.k8s.io" {
            if let Some(t) = crate::resources::type_from_crd(&last) {
                self.drop_all(&t);
                self.registry.unregister(&t.key());
            }
        }
        if rt.group.is_empty() && rt.plural == "namespaces" {
            self.drop_namespace(name);
        }
        if propagation == Propagation::Background {
            self.collect_garbage();
        }
        last
    }

    fn drop_all(&mut self, rt: &ResourceType) {
        let keys: Vec<ObjKey> = self.bucket(&rt.key()).keys().cloned().collect();
        for (ns, name) in keys {
            if let Ok(obj) = self.get(rt, &ns, &name) {
                self.remove(rt, &ns, &name, obj, Propagation::Orphan);
            }
        }
    }

    fn drop_namespace(&mut self, ns: &str) {
        let types: Vec<ResourceType> = self.registry.all().filter(|t| t.namespaced).cloned().collect();
        for rt in types {
            let names: Vec<String> =
                self.bucket(&rt.key()).keys().filter(|(n, _)| n == ns).map(|(_, name)| name.clone()).collect();
            for name in names {
                let _ = self.delete(&rt, ns, &name, (None, None), Propagation::Background, false);
            }
        }
    }

    /// Deletes objects whose every owner is gone, like the garbage collector (background policy).
    fn collect_garbage(&mut self) {
        for _round in 0..64 {
            let live: std::collections::HashSet<String> =
                self.objects.values().flat_map(|b| b.values()).map(|o| meta_str(o, "uid").to_string()).collect();
            let mut orphans = Vec::new();
            for (key, bucket) in &self.objects {
                for ((ns, name), obj) in bucket {
                    let refs = meta(obj).get("ownerReferences").and_then(Value::as_array);
                    let Some(refs) = refs.filter(|r| !r.is_empty()) else { continue };
                    let all_gone =
                        refs.iter().all(|r| !live.contains(r.get("uid").and_then(Value::as_str).unwrap_or("")));
                    if all_gone && meta(obj).get("deletionTimestamp").is_none() {
                        orphans.push((key.clone(), ns.clone(), name.clone()));
                    }
                }
            }
            if orphans.is_empty() {
                return;
            }
            for (key, ns, name) in orphans {
                if let Some(rt) = self.registry.get(&key).cloned() {
                    let _ = self.delete(&rt, &ns, &name, (None, None), Propagation::Background, false);
                }
            }
        }
    }

    /// Everything, for a snapshot file.
    pub fn snapshot(&self) -> Value {
        let mut types = Vec::new();
        for ((group, plural), bucket) in &self.objects {
            if bucket.is_empty() {
                continue;
            }
            types.push(json!({"group": group, "plural": plural, "objects": bucket.values().collect::<Vec<_>>()}));
        }
        json!({"resourceVersion": self.rv, "types": types})
    }

    /// Restores a snapshot (CRDs first, so their custom resources have a type).
    pub fn restore(&mut self, snap: &Value) -> ApiResult<()> {
        let bad = || ApiError::bad_request("malformed snapshot");
        let types = snap.get("types").and_then(Value::as_array).ok_or_else(bad)?;
        self.objects.clear();
        self.registry = Registry::default();
        let mut ordered: Vec<&Value> = types.iter().collect();
        ordered.sort_by_key(|t| t.get("group").and_then(Value::as_str) != Some("apiextensions.k8s.io"));
        for t in ordered {
            let group = t.get("group").and_then(Value::as_str).ok_or_else(bad)?.to_string();
            let plural = t.get("plural").and_then(Value::as_str).ok_or_else(bad)?.to_string();
            for obj in t.get("objects").and_then(Value::as_array).ok_or_else(bad)? {
                if group == "apiextensions.k8s.io" {
                    self.registry.register_crd(obj);
                }
                let k = (meta_str(obj, "namespace").to_string(), meta_str(obj, "name").to_string());
                self.objects.entry((group.clone(), plural.clone())).or_default().insert(k, obj.clone());
            }
        }
        self.rv = snap.get("resourceVersion").and_then(Value::as_u64).ok_or_else(bad)?;
        self.resume_allocators();
        self.log.clear();
        self.compacted_rv = self.rv;
        Ok(())
    }
}

impl State {
    /// After a restore, ClusterIP and NodePort allocation continues past what the restored Services
    /// hold, so a new Service never gets an address or port already in use.
    fn resume_allocators(&mut self) {
        let services = self.objects.get(&(String::new(), "services".to_string()));
        for svc in services.into_iter().flat_map(|b| b.values()) {
            let ips = svc.pointer("/spec/clusterIPs").and_then(Value::as_array).into_iter().flatten();
            for ip in ips.filter_map(|v| v.as_str()?.parse().ok()) {
                match self.service_cidrs.offset(ip) {
                    Some((Family::V4, n)) => self.next_service_ip = self.next_service_ip.max(n + 1),
                    Some((Family::V6, n)) => self.next_service_ip6 = self.next_service_ip6.max(n + 1),
                    None => {}
                }
            }
            let ports = svc.pointer("/spec/ports").and_then(Value::as_array).into_iter().flatten();
            let health = svc.pointer("/spec/healthCheckNodePort").and_then(Value::as_u64);
            for port in ports.filter_map(|p| p.get("nodePort").and_then(Value::as_u64)).chain(health) {
                self.next_node_port = self.next_node_port.max(u32::try_from(port).unwrap_or(u32::MAX - 1) + 1);
            }
        }
    }
}

/// The part of an applied configuration a write may touch.
fn restrict_to_scope(applied: &Value, scope: Scope) -> Value {
    let mut a = applied.clone();
    if let Some(m) = a.as_object_mut() {
        match scope {
            Scope::Main { status_separate: true } => {
                m.remove("status");
            }
            Scope::Main { .. } => {}
            Scope::Status => m.retain(|k, _| ["apiVersion", "kind", "metadata", "status"].contains(&k.as_str())),
        }
    }
    a
}

/// A CRD is accepted and established as soon as it is created (there is no controller to wait for).
fn crd_status(crd: &mut Value) {
    let names = crd.pointer("/spec/names").cloned().unwrap_or(json!({}));
    let stored: Vec<Value> = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .map(|vs| {
            vs.iter()
                .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
                .filter_map(|v| v.get("name").cloned())
                .collect()
        })
        .unwrap_or_default();
    let time = crd.pointer("/metadata/creationTimestamp").cloned().unwrap_or_else(|| json!(now()));
    let cond = |t: &str, reason: &str, msg: &str| json!({"type": t, "status": "True", "lastTransitionTime": time, "reason": reason, "message": msg});
    crd["status"] = json!({
        "acceptedNames": names,
        "conditions": [
            cond("NamesAccepted", "NoConflicts", "no conflicts found"),
            cond("Established", "InitialNamesAccepted", "the initial names have been accepted"),
        ],
        "storedVersions": stored,
    });
}

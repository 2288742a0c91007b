//! The HTTP face: one handler that routes Kubernetes API paths, used both in-process (as a
//! `tower::Service`) and on TCP listeners.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use bytes::Bytes;
use http::{header, HeaderMap, Method, StatusCode};
use serde_json::{json, Value};

use crate::discovery;
use crate::errors::{ApiError, ApiResult};
use crate::patch::{self, PatchKind};
use crate::record::Access;
use crate::resources::ResourceType;
use crate::selectors::{FieldSelector, LabelSelector};
use crate::storage::{now, Propagation, Sub, WriteOpts};
use crate::watch::{self, WatchRequest};
use crate::ApiServer;

const MAX_BODY: usize = 64 << 20;

pub fn router(server: ApiServer) -> axum::Router {
    axum::Router::new().fallback(handle).with_state(server)
}

fn json_response(code: StatusCode, body: &Value) -> Response {
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap_or_default()))
        .expect("valid response")
}

fn error_response(err: &ApiError) -> Response {
    json_response(StatusCode::from_u16(err.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), &err.to_status())
}

/// The parsed query string (`+` and percent escapes decoded).
struct Query(Vec<(String, String)>);

impl Query {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1"))
    }
}

async fn handle(State(server): State<ApiServer>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let query = Query(
        form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect(),
    );
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(e) => return error_response(&ApiError::bad_request(format!("reading the body: {e}"))),
    };
    let path = parts.uri.path().trim_end_matches('/').to_string();
    let _span = tracing::debug_span!("request", method = %parts.method, %path).entered();
    match route(&server, &parts.method, &path, &query, &parts.headers, body) {
        Ok(resp) => resp,
        Err(e) => error_response(&e),
    }
}

fn route(
    server: &ApiServer,
    method: &Method,
    path: &str,
    query: &Query,
    headers: &HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let get_only =
        || if method == Method::GET { Ok(()) } else { Err(ApiError::method_not_allowed("only GET is served here")) };
    let registry = || server.state().registry.clone();
    match segs.as_slice() {
        ["version"] => get_only().map(|_| json_response(StatusCode::OK, &discovery::version())),
        ["healthz" | "livez" | "readyz"] => Ok(Response::new(Body::from("ok"))),
        ["api"] => get_only().map(|_| json_response(StatusCode::OK, &discovery::api_versions())),
        ["apis"] => get_only().map(|_| json_response(StatusCode::OK, &discovery::api_group_list(&registry()))),
        ["api", v] => {
            get_only()?;
            discovery::resource_list(&registry(), "", v)
                .map(|d| json_response(StatusCode::OK, &d))
                .ok_or_else(|| ApiError::new(404, "NotFound", "the server could not find the requested resource"))
        }
        ["apis", g] => {
            get_only()?;
            discovery::api_group(&registry(), g)
                .map(|d| json_response(StatusCode::OK, &d))
                .ok_or_else(|| ApiError::new(404, "NotFound", "the server could not find the requested resource"))
        }
        ["apis", g, v] => {
            get_only()?;
            discovery::resource_list(&registry(), g, v)
                .map(|d| json_response(StatusCode::OK, &d))
                .ok_or_else(|| ApiError::new(404, "NotFound", "the server could not find the requested resource"))
        }
        ["openapi", "v3"] => get_only().map(|_| json_response(StatusCode::OK, &discovery::openapi_index(&registry()))),
        ["openapi", "v3", "api", v] => openapi_doc(&registry(), "", v),
        ["openapi", "v3", "apis", g, v] => openapi_doc(&registry(), g, v),
        ["api", v, rest @ ..] => resource(server, method, "", v, rest, query, headers, body),
        ["apis", g, v, rest @ ..] => resource(server, method, g, v, rest, query, headers, body),
        _ => Err(ApiError::new(404, "NotFound", "the server could not find the requested resource")),
    }
}

fn openapi_doc(registry: &crate::resources::Registry, g: &str, v: &str) -> ApiResult<Response> {
    discovery::openapi_document(registry, g, v)
        .map(|d| json_response(StatusCode::OK, &d))
        .ok_or_else(|| ApiError::new(404, "NotFound", "the server could not find the requested resource"))
}

/// The object or collection a resource path names.
struct Target {
    rt: ResourceType,
    version: String,
    namespace: Option<String>,
    name: Option<String>,
    sub: Sub,
}

fn parse_target(server: &ApiServer, group: &str, version: &str, rest: &[&str]) -> ApiResult<Target> {
    let not_found = || ApiError::new(404, "NotFound", "the server could not find the requested resource");
    let (namespace, rest) = match rest {
        ["namespaces", ns, plural, tail @ ..] if !["status", "finalize"].contains(plural) => (Some(ns.to_string()), {
            let mut v = vec![*plural];
            v.extend_from_slice(tail);
            v
        }),
        _ => (None, rest.to_vec()),
    };
    let (plural, name, sub) = match rest.as_slice() {
        [plural] => (*plural, None, Sub::Main),
        [plural, name] => (*plural, Some(name.to_string()), Sub::Main),
        [plural, name, "status"] => (*plural, Some(name.to_string()), Sub::Status),
        _ => return Err(not_found()),
    };
    let rt = server.state().registry.lookup(group, version, plural).cloned().ok_or_else(not_found)?;
    if sub == Sub::Status && !rt.status_subresource {
        return Err(not_found());
    }
    if namespace.is_some() && !rt.namespaced {
        return Err(not_found());
    }
    Ok(Target { rt, version: version.to_string(), namespace, name, sub })
}

fn wants_table(headers: &HeaderMap) -> bool {
    headers.get(header::ACCEPT).and_then(|a| a.to_str().ok()).is_some_and(|a| a.contains("as=Table"))
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// The client named in the access record: a component header, else the User-Agent.
fn client_name(headers: &HeaderMap) -> String {
    let component = header_str(headers, "x-beeline-component");
    if component.is_empty() {
        header_str(headers, "user-agent").to_string()
    } else {
        component.to_string()
    }
}

/// The field manager: the `fieldManager` parameter, else the User-Agent's product name.
fn field_manager(query: &Query, headers: &HeaderMap) -> String {
    if let Some(m) = query.get("fieldManager").filter(|m| !m.is_empty()) {
        return m.to_string();
    }
    let ua = header_str(headers, "user-agent");
    let product = ua.split('/').next().unwrap_or("").trim();
    if product.is_empty() {
        "unknown".into()
    } else {
        product.into()
    }
}

fn output(t: &Target, mut obj: Value) -> Value {
    obj["apiVersion"] = json!(t.rt.api_version(&t.version));
    obj
}

/// Like the real API server's request info: a list or watch limited by `metadata.name=X` is a
/// request for the named object X, so RBAC rules with `resourceNames` can allow it.
fn name_from_field_selector(verb: &str, query: &Query) -> String {
    if verb != "list" && verb != "watch" {
        return String::new();
    }
    query
        .get("fieldSelector")
        .unwrap_or("")
        .split(',')
        .find_map(|term| term.strip_prefix("metadata.name=").or_else(|| term.strip_prefix("metadata.name==")))
        .unwrap_or("")
        .to_string()
}

fn parse_body(body: &Bytes) -> ApiResult<Value> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))
}

#[allow(clippy::too_many_arguments)]
fn resource(
    server: &ApiServer,
    method: &Method,
    group: &str,
    version: &str,
    rest: &[&str],
    query: &Query,
    headers: &HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let t = parse_target(server, group, version, rest)?;
    let watching = query.flag("watch");
    let verb = match (method.as_str(), &t.name, watching) {
        ("GET", None, true) => "watch",
        ("GET", None, false) => "list",
        ("GET", Some(_), _) => "get",
        ("POST", None, _) => "create",
        ("PUT", Some(_), _) => "update",
        ("PATCH", Some(_), _) => "patch",
        ("DELETE", Some(_), _) => "delete",
        ("DELETE", None, _) => "deletecollection",
        _ => return Err(ApiError::method_not_allowed(format!("{method} is not supported on this path"))),
    };
    server.inner.recorder.push(Access {
        client: client_name(headers),
        verb: verb.into(),
        group: t.rt.group.clone(),
        resource: t.rt.plural.clone(),
        subresource: t.sub.name().into(),
        namespace: t.namespace.clone().unwrap_or_default(),
        name: match &t.name {
            Some(name) => name.clone(),
            None => name_from_field_selector(verb, query),
        },
    });
    let ns = t.namespace.clone().unwrap_or_default();
    let opts = WriteOpts {
        manager: field_manager(query, headers),
        sub: t.sub,
        version: t.version.clone(),
        dry_run: query.get("dryRun") == Some("All"),
    };
    let as_table = wants_table(headers);
    let single = |obj: Value| {
        let obj = output(&t, obj);
        if as_table {
            table(&t.rt, &t.version, vec![obj], None)
        } else {
            obj
        }
    };
    match verb {
        "get" => {
            let name = t.name.as_deref().unwrap_or("");
            let obj = server.state().get(&t.rt, &ns, name)?;
            Ok(json_response(StatusCode::OK, &single(obj)))
        }
        "list" => list(server, &t, query, as_table),
        "watch" => watch_response(server, t, query, as_table),
        "create" => {
            let obj = parse_body(&body)?;
            let created = server.state().create(&t.rt, &ns, obj, &opts)?;
            Ok(json_response(StatusCode::CREATED, &output(&t, created)))
        }
        "update" => {
            let name = t.name.as_deref().unwrap_or("");
            let obj = parse_body(&body)?;
            let updated = server.state().update(&t.rt, &ns, name, obj, &opts, true)?;
            Ok(json_response(StatusCode::OK, &output(&t, updated)))
        }
        "patch" => patch(server, &t, &ns, query, headers, &body, &opts),
        "delete" => {
            let name = t.name.as_deref().unwrap_or("");
            let options: Value = if body.is_empty() { json!({}) } else { parse_body(&body)? };
            let propagation = match options.get("propagationPolicy").and_then(Value::as_str) {
                Some("Orphan") => Propagation::Orphan,
                _ if options.get("orphanDependents") == Some(&json!(true)) => Propagation::Orphan,
                _ => Propagation::Background,
            };
            let dry_run = opts.dry_run
                || options.get("dryRun").and_then(Value::as_array).is_some_and(|d| d.iter().any(|x| x == "All"));
            let pre = options.get("preconditions");
            let uid = pre.and_then(|p| p.get("uid")).and_then(Value::as_str);
            let rv = pre.and_then(|p| p.get("resourceVersion")).and_then(Value::as_str);
            let obj = server.state().delete(&t.rt, &ns, name, (uid, rv), propagation, dry_run)?;
            Ok(json_response(StatusCode::OK, &output(&t, obj)))
        }
        "deletecollection" => {
            let labels = LabelSelector::parse(query.get("labelSelector").unwrap_or(""))?;
            let fields = FieldSelector::parse(query.get("fieldSelector").unwrap_or(""))?;
            let mut state = server.state();
            let scope = t.namespace.as_deref();
            let found = state.list(&t.rt, scope, &labels, &fields, None, None)?;
            let mut deleted = Vec::new();
            for item in found.items {
                let meta = &item["metadata"];
                let (ins, iname) = (
                    meta["namespace"].as_str().unwrap_or("").to_string(),
                    meta["name"].as_str().unwrap_or("").to_string(),
                );
                if let Ok(obj) = state.delete(&t.rt, &ins, &iname, (None, None), Propagation::Background, opts.dry_run)
                {
                    deleted.push(output(&t, obj));
                }
            }
            let rv = state.rv;
            Ok(json_response(StatusCode::OK, &list_body(&t, deleted, rv, None, None)))
        }
        _ => unreachable!("verbs are enumerated above"),
    }
}

fn list_body(t: &Target, items: Vec<Value>, rv: u64, cont: Option<String>, remaining: Option<usize>) -> Value {
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if let Some(c) = cont {
        metadata["continue"] = json!(c);
    }
    if let Some(r) = remaining {
        metadata["remainingItemCount"] = json!(r);
    }
    json!({
        "kind": format!("{}List", t.rt.kind),
        "apiVersion": t.rt.api_version(&t.version),
        "metadata": metadata,
        "items": items,
    })
}

fn list(server: &ApiServer, t: &Target, query: &Query, as_table: bool) -> ApiResult<Response> {
    let labels = LabelSelector::parse(query.get("labelSelector").unwrap_or(""))?;
    let fields = FieldSelector::parse(query.get("fieldSelector").unwrap_or(""))?;
    let limit = query.get("limit").and_then(|l| l.parse().ok());
    let result = server.state().list(&t.rt, t.namespace.as_deref(), &labels, &fields, limit, query.get("continue"))?;
    let items: Vec<Value> = result.items.into_iter().map(|o| output(t, o)).collect();
    let body = if as_table {
        table(&t.rt, &t.version, items, Some(result.resource_version))
    } else {
        list_body(t, items, result.resource_version, result.continue_token, result.remaining)
    };
    Ok(json_response(StatusCode::OK, &body))
}

fn watch_response(server: &ApiServer, t: Target, query: &Query, table: bool) -> ApiResult<Response> {
    let rv = match query.get("resourceVersion") {
        None | Some("") => None,
        Some(v) => Some(v.parse::<u64>().map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {v:?}")))?),
    };
    let send_initial_events = query.flag("sendInitialEvents");
    let req = WatchRequest {
        rt: t.rt.clone(),
        version: t.version.clone(),
        namespace: t.namespace.clone(),
        labels: LabelSelector::parse(query.get("labelSelector").unwrap_or(""))?,
        fields: FieldSelector::parse(query.get("fieldSelector").unwrap_or(""))?,
        bookmarks: query.flag("allowWatchBookmarks"),
        send_initial_events,
        timeout: Duration::from_secs(query.get("timeoutSeconds").and_then(|s| s.parse().ok()).unwrap_or(1800)),
        bookmark_interval: server.inner.config.bookmark_interval,
        table,
    };
    // Start point and subscription are taken under one lock, so no event falls in between.
    let (start, rx) = {
        let state = server.state();
        let start_rv = if send_initial_events { None } else { rv };
        (state.watch_start(&t.rt, start_rv), state.subscribe())
    };
    let (tx, mut lines) = tokio::sync::mpsc::channel::<Bytes>(256);
    tokio::spawn(watch::run(req, start, rx, tx));
    let stream =
        futures::stream::poll_fn(move |cx| lines.poll_recv(cx).map(|l| l.map(Ok::<_, std::convert::Infallible>)));
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .expect("valid response"))
}

fn patch(
    server: &ApiServer,
    t: &Target,
    ns: &str,
    query: &Query,
    headers: &HeaderMap,
    body: &Bytes,
    opts: &WriteOpts,
) -> ApiResult<Response> {
    let name = t.name.as_deref().unwrap_or("");
    let ct = header_str(headers, "content-type");
    let kind = PatchKind::from_content_type(ct).ok_or_else(|| ApiError::unsupported_media_type(ct))?;
    if kind == PatchKind::Apply {
        if query.get("fieldManager").is_none_or(str::is_empty) {
            return Err(ApiError::bad_request("PATCH, application/apply-patch+yaml requires fieldManager to be set"));
        }
        let applied: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(_) => serde_saphyr::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("the applied configuration is not valid YAML: {e}")))?,
        };
        let force = query.flag("force");
        let mut state = server.state();
        let exists = state.get(&t.rt, if t.rt.namespaced { ns } else { "" }, name).is_ok();
        return if exists {
            let obj = state.apply_update(&t.rt, ns, name, applied, opts, force)?;
            Ok(json_response(StatusCode::OK, &output(t, obj)))
        } else {
            let obj = state.apply_create(&t.rt, ns, name, applied, opts)?;
            Ok(json_response(StatusCode::CREATED, &output(t, obj)))
        };
    }
    let patch_doc = parse_body(body)?;
    let mut state = server.state();
    let old = state.get(&t.rt, if t.rt.namespaced { ns } else { "" }, name)?;
    let mut new = old.clone();
    match kind {
        PatchKind::Merge => patch::json_merge(&mut new, &patch_doc),
        PatchKind::Json => patch::json_patch(&mut new, &patch_doc)?,
        PatchKind::Strategic if t.rt.is_crd() => return Err(ApiError::unsupported_media_type(ct)),
        PatchKind::Strategic => patch::strategic_merge(&t.rt.kind, &mut new, &patch_doc)?,
        PatchKind::Apply => unreachable!("handled above"),
    }
    let obj = state.update(&t.rt, ns, name, new, opts, false)?;
    Ok(json_response(StatusCode::OK, &output(t, obj)))
}

/// A `meta.k8s.io/v1` Table of objects (kubectl's default output), with the columns of `version`.
pub fn table(rt: &ResourceType, version: &str, objects: Vec<Value>, rv: Option<u64>) -> Value {
    let now = now().parse::<jiff::Timestamp>().unwrap_or_else(|_| jiff::Timestamp::now());
    crate::printers::table(rt, version, &objects, rv, now)
}

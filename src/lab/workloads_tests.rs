use super::*;
use k8s_openapi::api::apps::v1::{DeploymentSpec, ReplicaSetStatus};
use k8s_openapi::api::core::v1::{Container, PodCondition, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::json;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn deployment(replicas: i32, image: &str) -> Deployment {
    Deployment {
        metadata: ObjectMeta {
            name: Some("web".into()),
            namespace: Some("default".into()),
            uid: Some("d-uid".into()),
            generation: Some(3),
            ..Default::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector { match_labels: Some(labels(&[("app", "web")])), ..Default::default() },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels(&[("app", "web")])), ..Default::default() }),
                spec: Some(PodSpec {
                    containers: vec![Container { name: "c".into(), image: Some(image.into()), ..Default::default() }],
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    }
}

fn owned_rs(name: &str, replicas: i32, status_replicas: i32, ready: i32) -> ReplicaSet {
    ReplicaSet {
        metadata: ObjectMeta { name: Some(name.into()), uid: Some(format!("{name}-uid")), ..Default::default() },
        spec: Some(ReplicaSetSpec { replicas: Some(replicas), ..Default::default() }),
        status: Some(ReplicaSetStatus { replicas: status_replicas, ready_replicas: Some(ready), ..Default::default() }),
    }
}

#[test]
fn template_hash_is_stable_and_changes_with_the_template() {
    let a = template_hash(&deployment(1, "nginx:1").spec.unwrap().template);
    assert_eq!(a, template_hash(&deployment(5, "nginx:1").spec.unwrap().template), "replicas are not the template");
    assert_ne!(a, template_hash(&deployment(1, "nginx:2").spec.unwrap().template));
    assert!(a.bytes().all(|b| SAFE_ALPHABET.contains(&b)), "{a}");
}

#[test]
fn a_new_deployment_gets_one_replicaset_with_the_hash_label_and_an_owner() {
    let d = deployment(2, "nginx");
    let actions = reconcile_deployment(&d, &[]);
    let rs = actions.create.expect("a ReplicaSet is created");
    let hash = template_hash(&d.spec.as_ref().unwrap().template);
    assert_eq!(rs.metadata.name.as_deref(), Some(format!("web-{hash}").as_str()));
    let spec = rs.spec.unwrap();
    assert_eq!(spec.replicas, Some(2));
    assert_eq!(spec.selector.match_labels.unwrap()[POD_TEMPLATE_HASH], hash);
    assert_eq!(spec.template.unwrap().metadata.unwrap().labels.unwrap()[POD_TEMPLATE_HASH], hash);
    let owner = &rs.metadata.owner_references.unwrap()[0];
    assert_eq!((owner.kind.as_str(), owner.uid.as_str(), owner.controller), ("Deployment", "d-uid", Some(true)));
    assert!(actions.scale.is_empty());
}

#[test]
fn scaling_and_rollout_scale_the_current_replicaset_and_zero_the_old_ones() {
    struct Case {
        what: &'static str,
        replicas: i32,
        image: &'static str,
        want_create: bool,
        want_scale: Vec<(&'static str, i32)>,
    }
    let d1 = deployment(2, "nginx:1");
    let current = format!("web-{}", template_hash(&d1.spec.as_ref().unwrap().template));
    let owned = [owned_rs(&current, 2, 2, 2), owned_rs("web-old", 1, 1, 1)];
    let cases = [
        Case {
            what: "steady state",
            replicas: 2,
            image: "nginx:1",
            want_create: false,
            want_scale: vec![("web-old", 0)],
        },
        Case {
            what: "scale up",
            replicas: 4,
            image: "nginx:1",
            want_create: false,
            want_scale: vec![("CURRENT", 4), ("web-old", 0)],
        },
        Case {
            what: "template change",
            replicas: 2,
            image: "nginx:2",
            want_create: true,
            want_scale: vec![("CURRENT", 0), ("web-old", 0)],
        },
    ];
    for case in cases {
        let actions = reconcile_deployment(&deployment(case.replicas, case.image), &owned);
        assert_eq!(actions.create.is_some(), case.want_create, "{}", case.what);
        let want: Vec<(String, i32)> = case
            .want_scale
            .iter()
            .map(|(n, r)| (if *n == "CURRENT" { current.clone() } else { n.to_string() }, *r))
            .collect();
        assert_eq!(actions.scale, want, "{}", case.what);
    }
}

#[test]
fn deployment_status_sums_its_replicasets() {
    let d = deployment(3, "nginx:1");
    let current = format!("web-{}", template_hash(&d.spec.as_ref().unwrap().template));
    let status = reconcile_deployment(&d, &[owned_rs(&current, 3, 3, 2), owned_rs("web-old", 0, 1, 1)]).status;
    assert_eq!(status.replicas, Some(4));
    assert_eq!(status.updated_replicas, Some(3));
    assert_eq!(status.ready_replicas, Some(3));
    assert_eq!(status.observed_generation, Some(3));
    assert_eq!(status.conditions.unwrap()[0].status, "True");
}

fn rs(replicas: i32) -> ReplicaSet {
    ReplicaSet {
        metadata: ObjectMeta {
            name: Some("web-abc".into()),
            namespace: Some("default".into()),
            uid: Some("rs-uid".into()),
            ..Default::default()
        },
        spec: Some(ReplicaSetSpec {
            replicas: Some(replicas),
            template: Some(PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels(&[("app", "web")])), ..Default::default() }),
                spec: Some(PodSpec::default()),
            }),
            ..Default::default()
        }),
        status: None,
    }
}

fn pod(name: &str, node: Option<&str>, ready: bool, created: i64, deleting: bool) -> Pod {
    let ts = |s: i64| Time(k8s_openapi::jiff::Timestamp::from_second(s).unwrap());
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            creation_timestamp: Some(ts(created)),
            deletion_timestamp: deleting.then(|| ts(created + 100)),
            ..Default::default()
        },
        spec: Some(PodSpec { node_name: node.map(String::from), ..Default::default() }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    }
}

#[test]
fn replicaset_creates_missing_pods_from_its_template() {
    let actions =
        reconcile_replicaset(&rs(3), &[pod("a", Some("n1"), true, 1, false), pod("gone", None, false, 0, true)]);
    assert_eq!(actions.create.len(), 2, "a terminating pod does not count");
    let p = &actions.create[0];
    assert_eq!(p.metadata.generate_name.as_deref(), Some("web-abc-"));
    assert_eq!(p.metadata.labels.as_ref().unwrap()["app"], "web");
    assert_eq!(p.metadata.owner_references.as_ref().unwrap()[0].uid, "rs-uid");
    assert!(actions.delete.is_empty());
    assert_eq!(actions.status.replicas, 1);
    assert_eq!(actions.status.ready_replicas, Some(1));
}

#[test]
fn replicaset_scales_down_unscheduled_then_unready_then_newest_first() {
    let pods = [
        pod("old-ready", Some("n1"), true, 1, false),
        pod("new-ready", Some("n1"), true, 5, false),
        pod("unready", Some("n1"), false, 2, false),
        pod("unscheduled", None, false, 3, false),
    ];
    for (replicas, want) in [
        (4, vec![]),
        (3, vec!["unscheduled"]),
        (2, vec!["unscheduled", "unready"]),
        (1, vec!["unscheduled", "unready", "new-ready"]),
        (0, vec!["unscheduled", "unready", "new-ready", "old-ready"]),
    ] {
        let actions = reconcile_replicaset(&rs(replicas), &pods);
        assert_eq!(actions.delete, want, "replicas {replicas}");
        assert!(actions.create.is_empty());
    }
}

#[test]
fn selectors_match_labels_and_expressions() {
    let sel: LabelSelector = serde_json::from_value(json!({
        "matchLabels": {"app": "web"},
        "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]},
                             {"key": "canary", "operator": "DoesNotExist"}]
    }))
    .unwrap();
    for (pairs, want) in [
        (vec![("app", "web"), ("tier", "a")], true),
        (vec![("app", "web"), ("tier", "c")], false),
        (vec![("app", "web"), ("tier", "b"), ("canary", "1")], false),
        (vec![("tier", "a")], false),
    ] {
        assert_eq!(selector_matches(&sel, &labels(&pairs)), want, "{pairs:?}");
    }
}

//! The checked-in CRDs match the Rust types, and their shape is what Cilium users and kubectl expect.

use std::path::Path;

#[test]
fn checked_in_crds_match_the_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/crds");
    let rendered = beeline::crds::render_all().expect("CRDs render");
    for (name, yaml) in &rendered {
        let on_disk = std::fs::read_to_string(dir.join(name))
            .unwrap_or_else(|e| panic!("manifests/crds/{name} missing ({e}); run `beeline crdgen`"));
        assert!(on_disk == *yaml, "manifests/crds/{name} is out of date; run `cargo run -- crdgen`");
    }
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .expect("manifests/crds exists")
        .map(|e| e.expect("dir entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    on_disk.sort();
    let mut expected: Vec<String> = rendered.into_iter().map(|(n, _)| n).collect();
    expected.sort();
    assert_eq!(on_disk, expected, "stale or missing files in manifests/crds");
}

#[test]
fn crd_names_scopes_and_short_names_are_ciliums() {
    let crds = beeline::crds::all();
    let find = |kind: &str| crds.iter().find(|c| c.spec.names.kind == kind).unwrap_or_else(|| panic!("{kind}"));
    let cases: &[(&str, &str, &[&str], &[&str])] = &[
        ("CiliumNode", "Cluster", &["cn", "ciliumn"], &["v2"]),
        ("CiliumPodIPPool", "Cluster", &["cpip"], &["v2alpha1"]),
        ("CiliumLoadBalancerIPPool", "Cluster", &["ippools", "ippool", "lbippool", "lbippools"], &["v2", "v2alpha1"]),
        ("CiliumNetworkPolicy", "Namespaced", &["cnp", "ciliumnp"], &["v2"]),
        ("CiliumClusterwideNetworkPolicy", "Cluster", &["ccnp"], &["v2"]),
        ("CiliumEndpoint", "Namespaced", &["cep", "ciliumep"], &["v2"]),
        ("CiliumIdentity", "Cluster", &["ciliumid"], &["v2"]),
    ];
    for (kind, scope, short, versions) in cases {
        let crd = find(kind);
        assert_eq!(crd.spec.group, "cilium.io");
        assert_eq!(&crd.spec.scope, scope, "{kind}");
        assert_eq!(crd.spec.names.short_names.as_deref().unwrap_or_default(), *short, "{kind}");
        let names: Vec<&str> = crd.spec.versions.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(&names, versions, "{kind}");
        assert_eq!(crd.spec.versions.iter().filter(|v| v.storage).count(), 1, "{kind}: one storage version");
        assert_eq!(crd.spec.names.categories.as_deref(), Some(&["cilium".to_string()][..]), "{kind}");
    }
    let lb = find("CiliumLoadBalancerIPPool");
    let stored: Vec<&str> = lb.spec.versions.iter().filter(|v| v.storage).map(|v| v.name.as_str()).collect();
    assert_eq!(stored, ["v2"]);
    assert!(lb.spec.versions.iter().all(|v| v.served));
}

#[test]
fn printer_columns_follow_cilium() {
    let crds = beeline::crds::all();
    let columns = |kind: &str| -> Vec<(String, String)> {
        let crd = crds.iter().find(|c| c.spec.names.kind == kind).unwrap();
        crd.spec.versions[0]
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| (c.name.clone(), c.json_path.clone()))
            .collect()
    };
    let names = |kind: &str| columns(kind).into_iter().map(|(n, _)| n).collect::<Vec<_>>();
    assert_eq!(names("CiliumNode"), ["CiliumInternalIP", "InternalIP", "Age"]);
    assert_eq!(names("CiliumLoadBalancerIPPool"), ["Disabled", "Conflicting", "IPs Available", "Age"]);
    assert_eq!(names("CiliumEndpoint"), ["Security Identity", "Endpoint State", "IPv4", "IPv6"]);
    let lb = columns("CiliumLoadBalancerIPPool");
    assert!(lb[1].1.contains("cilium.io/PoolConflict") && lb[2].1.contains("cilium.io/IPsAvailable"));
}

#[test]
fn status_subresources_where_controllers_write_status() {
    for crd in beeline::crds::all() {
        let kind = crd.spec.names.kind.as_str();
        let has_status = crd.spec.versions.iter().all(|v| v.subresources.as_ref().is_some_and(|s| s.status.is_some()));
        let want = matches!(
            kind,
            "CiliumNode" | "CiliumLoadBalancerIPPool" | "CiliumNetworkPolicy" | "CiliumClusterwideNetworkPolicy"
        );
        assert_eq!(has_status, want, "{kind}");
    }
}

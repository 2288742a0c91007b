use super::*;

/// The spec's example configuration list (comments removed: JSON has none).
const SPEC_CONFLIST: &str = r#"{
  "cniVersion": "1.1.0",
  "cniVersions": ["0.3.1", "0.4.0", "1.0.0", "1.1.0"],
  "name": "dbnet",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "keyA": ["some more", "plugin specific", "configuration"],
      "ipam": {
        "type": "host-local",
        "subnet": "10.1.0.0/16",
        "gateway": "10.1.0.1",
        "routes": [ {"dst": "0.0.0.0/0"} ]
      },
      "dns": { "nameservers": [ "10.1.0.1" ] }
    },
    { "type": "tuning", "capabilities": { "mac": true }, "sysctl": { "net.core.somaxconn": "500" } },
    { "type": "portmap", "capabilities": {"portMappings": true} }
  ]
}"#;

/// The spec's request configuration for `tuning`, with the bridge plugin's result as prevResult.
const SPEC_TUNING_REQUEST: &str = r#"{
  "cniVersion": "1.1.0",
  "name": "dbnet",
  "type": "tuning",
  "sysctl": { "net.core.somaxconn": "500" },
  "runtimeConfig": { "mac": "00:11:22:33:44:66" },
  "prevResult": {
    "ips": [ { "address": "10.1.0.5/16", "gateway": "10.1.0.1", "interface": 2 } ],
    "routes": [ { "dst": "0.0.0.0/0" } ],
    "interfaces": [
        { "name": "cni0", "mac": "00:11:22:33:44:55" },
        { "name": "veth3243", "mac": "55:44:33:22:11:11" },
        { "name": "eth0", "mac": "99:88:77:66:55:44", "sandbox": "/var/run/netns/blue" }
    ],
    "dns": { "nameservers": [ "10.1.0.1" ] }
  }
}"#;

/// The spec's host-local (IPAM) result: no interfaces, no interface index.
const SPEC_IPAM_RESULT: &str = r#"{
    "ips": [ { "address": "10.1.0.5/16", "gateway": "10.1.0.1" } ],
    "routes": [ { "dst": "0.0.0.0/0" } ],
    "dns": { "nameservers": [ "10.1.0.1" ] }
}"#;

const SPEC_GC_REQUEST: &str = r#"{
  "cniVersion": "1.1.0",
  "name": "dbnet",
  "type": "beeline-cni",
  "cni.dev/valid-attachments": [
    { "containerID": "a1b2c3", "ifname": "eth0" },
    { "containerID": "d4e5f6", "ifname": "eth0" }
  ]
}"#;

#[test]
fn parses_the_spec_conflist() {
    let conf = NetworkConfigList::parse(SPEC_CONFLIST.as_bytes()).unwrap();
    assert_eq!(conf.name, "dbnet");
    assert_eq!(conf.cni_versions, ["0.3.1", "0.4.0", "1.0.0", "1.1.0"]);
    let types: Vec<&str> = conf.plugins.iter().map(|p| p.plugin_type.as_str()).collect();
    assert_eq!(types, ["bridge", "tuning", "portmap"]);
    assert_eq!(conf.plugins[0].extra["bridge"], "cni0");
    assert_eq!(conf.plugins[0].extra["ipam"]["type"], "host-local");
    assert_eq!(conf.plugins[1].capabilities.as_ref().unwrap()["mac"], true);
    assert_eq!(negotiate_version(&conf).unwrap(), SpecVersion(1, 1, 0));
    // Unknown plugin keys survive a round trip (the runtime must pass them through).
    let again: NetworkConfigList = serde_json::from_str(&serde_json::to_string(&conf).unwrap()).unwrap();
    assert_eq!(again, conf);
}

#[test]
fn conflist_errors_carry_the_right_code() {
    let cases: &[(&str, &str, ErrorCode)] = &[
        ("not json", "{", ErrorCode::DECODE_FAILURE),
        ("name missing", r#"{"cniVersion":"1.1.0","plugins":[]}"#, ErrorCode::DECODE_FAILURE),
        ("bad name", r#"{"cniVersion":"1.1.0","name":"-db net","plugins":[]}"#, ErrorCode::INVALID_CONFIG),
        ("bad version", r#"{"cniVersion":"one","name":"db","plugins":[]}"#, ErrorCode::DECODE_FAILURE),
        ("type missing", r#"{"cniVersion":"1.1.0","name":"db","plugins":[{"bridge":"x"}]}"#, ErrorCode::DECODE_FAILURE),
        (
            "type with a slash",
            r#"{"cniVersion":"1.1.0","name":"db","plugins":[{"type":"../x"}]}"#,
            ErrorCode::INVALID_CONFIG,
        ),
        (
            "inline-only without plugins",
            r#"{"cniVersion":"1.1.0","name":"db","loadOnlyInlinedPlugins":true}"#,
            ErrorCode::INVALID_CONFIG,
        ),
    ];
    for (name, json, code) in cases {
        let err = NetworkConfigList::parse(json.as_bytes()).expect_err(name);
        assert_eq!(err.code, *code, "{name}: {err}");
        assert!(!err.msg.is_empty(), "{name}");
    }
}

#[test]
fn version_negotiation_picks_the_highest_common_version() {
    let conf = |version: &str, versions: &[&str]| NetworkConfigList {
        cni_version: version.into(),
        cni_versions: versions.iter().map(|v| v.to_string()).collect(),
        name: "n".into(),
        disable_check: false,
        disable_gc: false,
        load_only_inlined_plugins: false,
        plugins: vec![],
    };
    let cases: &[(&str, &[&str], Option<SpecVersion>)] = &[
        ("1.1.0", &[], Some(SpecVersion(1, 1, 0))),
        ("0.3.1", &[], Some(SpecVersion(0, 3, 1))),
        ("1.0.0", &["0.4.0", "1.0.0"], Some(SpecVersion(1, 0, 0))),
        ("2.0.0", &["1.0.0", "2.0.0"], Some(SpecVersion(1, 0, 0))),
        ("0.2.0", &["0.1.0"], None),
        ("9.9.9", &[], None),
    ];
    for (version, versions, want) in cases {
        let got = negotiate_version(&conf(version, versions));
        match want {
            Some(v) => assert_eq!(got.as_ref().ok(), Some(v), "{version} {versions:?}"),
            None => assert_eq!(got.unwrap_err().code, ErrorCode::INCOMPATIBLE_VERSION, "{version} {versions:?}"),
        }
    }
}

#[test]
fn spec_versions_parse_and_order_numerically() {
    let cases: &[(&str, Option<SpecVersion>)] = &[
        ("1.1.0", Some(SpecVersion(1, 1, 0))),
        ("0.10.0", Some(SpecVersion(0, 10, 0))),
        ("1.0", None),
        ("1.0.0.0", None),
        ("1..0", None),
        ("v1.0.0", None),
        ("", None),
    ];
    for (text, want) in cases {
        assert_eq!(SpecVersion::parse(text), *want, "{text:?}");
    }
    assert!(SpecVersion(0, 10, 0) > SpecVersion(0, 4, 0));
    assert_eq!(check_version("1.1.0"), Ok(SpecVersion(1, 1, 0)));
    assert_eq!(check_version("0.2.0").unwrap_err().code, ErrorCode::INCOMPATIBLE_VERSION);
    assert_eq!(check_version("latest").unwrap_err().code, ErrorCode::DECODE_FAILURE);
}

#[test]
fn parses_a_request_with_prev_result() {
    let conf = PluginConfig::parse(SPEC_TUNING_REQUEST.as_bytes()).unwrap();
    assert_eq!((conf.name.as_str(), conf.plugin_type.as_str()), ("dbnet", "tuning"));
    assert_eq!(conf.version(), SpecVersion(1, 1, 0));
    assert_eq!(conf.runtime_config.as_ref().unwrap()["mac"], "00:11:22:33:44:66");
    assert_eq!(conf.extra["sysctl"]["net.core.somaxconn"], "500");
    let prev = conf.prev_result.as_ref().unwrap();
    assert_eq!(prev.interfaces.len(), 3);
    assert_eq!(prev.interfaces[2].sandbox.as_deref(), Some("/var/run/netns/blue"));
    assert_eq!(prev.ips[0].address.to_string(), "10.1.0.5/16", "the host part of the address is kept");
    assert_eq!(prev.ips[0].gateway, Some("10.1.0.1".parse().unwrap()));
    assert_eq!(prev.ips[0].interface, Some(2));
    assert_eq!(prev.routes[0].dst.to_string(), "0.0.0.0/0");
    assert_eq!(prev.dns.nameservers, ["10.1.0.1".parse::<IpAddr>().unwrap()]);
    assert_eq!(conf.valid_attachments, None);
}

#[test]
fn parses_a_gc_request() {
    let conf = PluginConfig::parse(SPEC_GC_REQUEST.as_bytes()).unwrap();
    let valid = conf.valid_attachments.unwrap();
    assert_eq!(
        valid,
        [
            ValidAttachment { container_id: "a1b2c3".into(), ifname: "eth0".into() },
            ValidAttachment { container_id: "d4e5f6".into(), ifname: "eth0".into() },
        ]
    );
    assert!(!conf.extra.contains_key(VALID_ATTACHMENTS_KEY), "not duplicated into the plugin-specific keys");
}

#[test]
fn request_errors_carry_the_right_code() {
    let cases: &[(&str, &str, ErrorCode)] = &[
        ("truncated", r#"{"cniVersion":"1.1.0""#, ErrorCode::DECODE_FAILURE),
        ("old version", r#"{"cniVersion":"0.2.0","name":"n","type":"t"}"#, ErrorCode::INCOMPATIBLE_VERSION),
        ("future version", r#"{"cniVersion":"2.0.0","name":"n","type":"t"}"#, ErrorCode::INCOMPATIBLE_VERSION),
        ("no type", r#"{"cniVersion":"1.1.0","name":"n"}"#, ErrorCode::DECODE_FAILURE),
        ("empty type", r#"{"cniVersion":"1.1.0","name":"n","type":""}"#, ErrorCode::INVALID_CONFIG),
        ("bad name", r#"{"cniVersion":"1.1.0","name":"a b","type":"t"}"#, ErrorCode::INVALID_CONFIG),
        (
            "bad address in prevResult",
            r#"{"cniVersion":"1.1.0","name":"n","type":"t","prevResult":{"ips":[{"address":"10.1.0.5"}]}}"#,
            ErrorCode::DECODE_FAILURE,
        ),
        (
            "dangling interface index",
            r#"{"cniVersion":"1.1.0","name":"n","type":"t","prevResult":{"ips":[{"address":"10.1.0.5/32","interface":1}]}}"#,
            ErrorCode::INVALID_CONFIG,
        ),
        (
            "malformed attachments",
            r#"{"cniVersion":"1.1.0","name":"n","type":"t","cni.dev/valid-attachments":[{"containerID":"a"}]}"#,
            ErrorCode::DECODE_FAILURE,
        ),
    ];
    for (name, json, code) in cases {
        let err = PluginConfig::parse(json.as_bytes()).expect_err(name);
        assert_eq!(err.code, *code, "{name}: {err}");
    }
}

#[test]
fn plugin_fields_are_typed_on_demand() {
    let conf = PluginConfig::parse(br#"{"cniVersion":"1.0.0","name":"n","type":"t","mtu":1450,"socket":7}"#).unwrap();
    assert_eq!(conf.plugin_field::<u32>("mtu").unwrap(), Some(1450));
    assert_eq!(conf.plugin_field::<String>("absent").unwrap(), None);
    let err = conf.plugin_field::<String>("socket").unwrap_err();
    assert_eq!((err.code, err.cni_version.as_str()), (ErrorCode::INVALID_CONFIG, "1.0.0"));
    assert!(err.msg.contains("\"socket\""), "{err}");
}

#[test]
fn ipam_result_parses_without_interfaces() {
    let result: CniResult = serde_json::from_str(SPEC_IPAM_RESULT).unwrap();
    assert!(result.interfaces.is_empty());
    assert_eq!(result.ips[0].interface, None);
    result.validate().unwrap();
}

#[test]
fn result_serialises_per_version() {
    let result = CniResult {
        cni_version: None,
        interfaces: vec![
            Interface { name: "lxc1a2b3c".into(), mac: Some("aa:bb:cc:dd:ee:ff".into()), ..Default::default() },
            Interface {
                name: "eth0".into(),
                mtu: Some(1450),
                sandbox: Some("/var/run/netns/pod".into()),
                ..Default::default()
            },
        ],
        ips: vec![
            IpConfig {
                address: "10.0.1.235/32".parse().unwrap(),
                gateway: Some("10.0.1.133".parse().unwrap()),
                interface: Some(1),
                version: None,
            },
            IpConfig { address: "fd00::17/128".parse().unwrap(), gateway: None, interface: Some(1), version: None },
        ],
        routes: vec![Route {
            dst: "0.0.0.0/0".parse().unwrap(),
            gw: Some("10.0.1.133".parse().unwrap()),
            mtu: Some(1450),
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        }],
        dns: Dns::default(),
    };
    let v11 = serde_json::to_value(result.for_version(SpecVersion(1, 1, 0))).unwrap();
    assert_eq!(
        v11,
        serde_json::json!({
            "cniVersion": "1.1.0",
            "interfaces": [
                {"name": "lxc1a2b3c", "mac": "aa:bb:cc:dd:ee:ff"},
                {"name": "eth0", "mtu": 1450, "sandbox": "/var/run/netns/pod"}
            ],
            "ips": [
                {"address": "10.0.1.235/32", "gateway": "10.0.1.133", "interface": 1},
                {"address": "fd00::17/128", "interface": 1}
            ],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.0.1.133", "mtu": 1450}]
        })
    );
    let v04 = serde_json::to_value(result.for_version(SpecVersion(0, 4, 0))).unwrap();
    assert_eq!(v04["cniVersion"], "0.4.0");
    assert_eq!(v04["ips"][0]["version"], "4");
    assert_eq!(v04["ips"][1]["version"], "6");
    // Back from 0.4.0 to 1.0.0 the field disappears again.
    let back: CniResult = serde_json::from_value(v04).unwrap();
    assert!(serde_json::to_value(back.for_version(SpecVersion(1, 0, 0))).unwrap()["ips"][0].get("version").is_none());
}

#[test]
fn error_and_version_results_match_the_spec_shape() {
    let err = CniError::new(
        ErrorCode::INVALID_CONFIG,
        "Invalid Configuration",
        "Network 192.168.0.0/31 too small to allocate from.",
    );
    assert_eq!(
        serde_json::from_str::<Value>(&err.to_json()).unwrap(),
        serde_json::json!({
            "cniVersion": "1.1.0",
            "code": 7,
            "msg": "Invalid Configuration",
            "details": "Network 192.168.0.0/31 too small to allocate from."
        })
    );
    assert_eq!(
        err.to_string(),
        "CNI error 7: Invalid Configuration (Network 192.168.0.0/31 too small to allocate from.)"
    );
    let parsed: CniError = serde_json::from_str(r#"{"cniVersion":"1.0.0","code":11,"msg":"later"}"#).unwrap();
    assert_eq!((parsed.code, parsed.details.as_str()), (ErrorCode::TRY_AGAIN_LATER, ""));

    let version = VersionResult::for_request(Some("1.0.0"));
    assert_eq!(version.cni_version, "1.0.0");
    assert!(version.supported_versions.contains(&"1.1.0".to_string()));
    assert_eq!(VersionResult::for_request(None).cni_version, CURRENT_VERSION);
}

#[test]
fn identifiers_follow_the_spec_rule() {
    for (text, ok) in [
        ("dbnet", true),
        ("05-beeline", true),
        ("a_b.c-d", true),
        ("", false),
        ("-x", false),
        ("_x", false),
        ("a b", false),
        ("a/b", false),
    ] {
        assert_eq!(is_valid_identifier(text), ok, "{text:?}");
    }
}

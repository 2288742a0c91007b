use std::collections::HashMap;

use super::*;

fn env(pairs: &[(&str, &str)]) -> Result<CniEnv, CniError> {
    let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    CniEnv::from_lookup(|k| map.get(k).cloned())
}

const ADD: &[(&str, &str)] = &[
    ("CNI_COMMAND", "ADD"),
    ("CNI_CONTAINERID", "3c7f1a9e0b2d"),
    ("CNI_NETNS", "/var/run/netns/cni-1234"),
    ("CNI_IFNAME", "eth0"),
    ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=netshoot-client;K8S_POD_INFRA_CONTAINER_ID=3c7f1a9e0b2d;K8S_POD_UID=1f2e"),
    ("CNI_PATH", "/opt/cni/bin:/usr/libexec/cni"),
];

type Vars = Vec<(&'static str, &'static str)>;
/// `Ok(command)` or `Err(variable names the error must mention)`.
type Expect = Result<Command, &'static [&'static str]>;
type Pairs = &'static [(&'static str, &'static str)];

fn with(base: &[(&'static str, &'static str)], overrides: &[(&'static str, &'static str)]) -> Vars {
    let mut out: Vec<(&str, &str)> =
        base.iter().filter(|(k, _)| !overrides.iter().any(|(o, _)| o == k)).copied().collect();
    out.extend(overrides.iter().filter(|(_, v)| *v != "<unset>"));
    out
}

#[test]
fn a_kubelet_add_parses_completely() {
    let parsed = env(ADD).unwrap();
    assert_eq!(parsed.command, Command::Add);
    let attachment = parsed.attachment.unwrap();
    assert_eq!(attachment.container_id, "3c7f1a9e0b2d");
    assert_eq!(attachment.ifname, "eth0");
    assert_eq!(attachment.netns, Some(PathBuf::from("/var/run/netns/cni-1234")));
    assert_eq!(parsed.args.pod_namespace(), Some("default"));
    assert_eq!(parsed.args.pod_name(), Some("netshoot-client"));
    assert_eq!(parsed.args.pod_uid(), Some("1f2e"));
    assert_eq!(parsed.args.infra_container_id(), Some("3c7f1a9e0b2d"));
    assert_eq!(parsed.path, [PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/libexec/cni")]);
}

#[test]
fn required_variables_depend_on_the_command() {
    // (case, overrides on top of ADD, Ok(command) or Err(names that the details must mention))
    let cases: Vec<(&str, Vars, Expect)> = vec![
        ("DEL without netns is fine", vec![("CNI_COMMAND", "DEL"), ("CNI_NETNS", "<unset>")], Ok(Command::Del)),
        ("CHECK needs netns", vec![("CNI_COMMAND", "CHECK"), ("CNI_NETNS", "<unset>")], Err(&["CNI_NETNS"])),
        ("ADD needs netns", vec![("CNI_NETNS", "")], Err(&["CNI_NETNS"])),
        (
            "every missing variable is named",
            vec![("CNI_CONTAINERID", "<unset>"), ("CNI_IFNAME", "<unset>"), ("CNI_NETNS", "<unset>")],
            Err(&["CNI_CONTAINERID", "CNI_IFNAME", "CNI_NETNS"]),
        ),
        ("bad container id", vec![("CNI_CONTAINERID", "-abc")], Err(&["CNI_CONTAINERID"])),
        ("interface name too long", vec![("CNI_IFNAME", "eth0123456789012")], Err(&["CNI_IFNAME"])),
        ("interface name with a colon", vec![("CNI_IFNAME", "eth0:1")], Err(&["CNI_IFNAME"])),
        ("interface name dot-dot", vec![("CNI_IFNAME", "..")], Err(&["CNI_IFNAME"])),
        ("bad CNI_ARGS", vec![("CNI_ARGS", "K8S_POD_NAME")], Err(&["CNI_ARGS"])),
        ("unknown command", vec![("CNI_COMMAND", "REMOVE")], Err(&["CNI_COMMAND"])),
        ("no command", vec![("CNI_COMMAND", "<unset>")], Err(&["CNI_COMMAND"])),
        ("lower-case command", vec![("CNI_COMMAND", "add")], Err(&["CNI_COMMAND"])),
        (
            "STATUS needs no attachment",
            vec![("CNI_COMMAND", "STATUS"), ("CNI_CONTAINERID", "<unset>")],
            Ok(Command::Status),
        ),
        ("GC needs no attachment", vec![("CNI_COMMAND", "GC"), ("CNI_IFNAME", "<unset>")], Ok(Command::Gc)),
        ("VERSION ignores the rest", vec![("CNI_COMMAND", "VERSION"), ("CNI_NETNS", "<unset>")], Ok(Command::Version)),
    ];
    for (name, overrides, want) in cases {
        let got = env(&with(ADD, &overrides));
        match want {
            Ok(command) => {
                let parsed = got.unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(parsed.command, command, "{name}");
                assert_eq!(parsed.attachment.is_some(), command.is_attachment_command(), "{name}");
            }
            Err(names) => {
                let err = got.expect_err(name);
                assert_eq!(err.code, ErrorCode::INVALID_ENVIRONMENT, "{name}");
                let text = format!("{} {}", err.msg, err.details);
                for variable in names {
                    assert!(text.contains(variable), "{name}: {text:?} does not name {variable}");
                }
            }
        }
    }
}

#[test]
fn cni_args_parse_table() {
    let cases: &[(&str, Option<Pairs>)] = &[
        ("", Some(&[])),
        ("A=1", Some(&[("A", "1")])),
        ("A=1;B=two;", Some(&[("A", "1"), ("B", "two")])),
        ("A=;B=x=y", Some(&[("A", ""), ("B", "x=y")])),
        ("=1", None),
        ("A=1;junk", None),
    ];
    for (text, want) in cases {
        match (CniArgs::parse(text), want) {
            (Ok(args), Some(pairs)) => {
                let expected: BTreeMap<String, String> =
                    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
                assert_eq!(args.0, expected, "{text:?}");
            }
            (Err(err), None) => assert_eq!(err.code, ErrorCode::INVALID_ENVIRONMENT, "{text:?}"),
            (got, _) => panic!("{text:?}: unexpected {got:?}"),
        }
    }
    assert_eq!(CniArgs::parse("A=").unwrap().get("A"), None, "empty values read as absent");
}

#[test]
fn commands_need_a_recent_enough_version() {
    let cases: &[(Command, SpecVersion, bool)] = &[
        (Command::Add, SpecVersion(0, 3, 0), true),
        (Command::Check, SpecVersion(0, 3, 1), false),
        (Command::Check, SpecVersion(0, 4, 0), true),
        (Command::Gc, SpecVersion(1, 0, 0), false),
        (Command::Gc, SpecVersion(1, 1, 0), true),
        (Command::Status, SpecVersion(1, 0, 0), false),
        (Command::Status, SpecVersion(1, 1, 0), true),
    ];
    for (command, version, ok) in cases {
        let got = command.check_version(*version);
        assert_eq!(got.is_ok(), *ok, "{command} at {version}");
        if let Err(err) = got {
            assert_eq!(err.code, ErrorCode::INCOMPATIBLE_VERSION);
            assert_eq!(err.cni_version, version.to_string());
        }
    }
    for command in Command::ALL {
        assert_eq!(command.as_str().parse::<Command>().unwrap(), command);
    }
}

use super::*;

fn meta(labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> Meta {
    let map = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    Meta { labels: map(labels), annotations: map(annotations) }
}

fn selector(pairs: &[(&str, &str)]) -> Option<LabelSelector> {
    Some(LabelSelector {
        match_labels: pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..Default::default()
    })
}

#[test]
fn pool_choice_order() {
    let pools = vec![
        PoolSelectors { name: "gpu".into(), pod_selector: selector(&[("hw", "gpu")]), namespace_selector: None },
        PoolSelectors { name: "team-x".into(), pod_selector: None, namespace_selector: selector(&[("team", "x")]) },
        // No selector: never chosen by selectors.
        PoolSelectors { name: "plain".into(), ..Default::default() },
    ];
    type Case = (&'static str, Family, Meta, Meta, Result<&'static str, ()>);
    let cases: Vec<Case> = vec![
        ("nothing: default", Family::V4, meta(&[], &[]), meta(&[], &[]), Ok("default")),
        (
            "pod ip-pool",
            Family::V4,
            meta(&[], &[(POOL_ANNOTATION, "a")]),
            meta(&[], &[(POOL_ANNOTATION, "b")]),
            Ok("a"),
        ),
        (
            "pod ipv4-pool wins over pod ip-pool",
            Family::V4,
            meta(&[], &[(POOL_ANNOTATION, "a"), (IPV4_POOL_ANNOTATION, "v4")]),
            meta(&[], &[]),
            Ok("v4"),
        ),
        (
            "ipv4-pool does not apply to IPv6",
            Family::V6,
            meta(&[], &[(POOL_ANNOTATION, "a"), (IPV4_POOL_ANNOTATION, "v4")]),
            meta(&[], &[]),
            Ok("a"),
        ),
        (
            "pod ipv6-pool",
            Family::V6,
            meta(&[], &[(IPV6_POOL_ANNOTATION, "v6")]),
            meta(&[], &[(POOL_ANNOTATION, "b")]),
            Ok("v6"),
        ),
        ("namespace ip-pool", Family::V4, meta(&[("hw", "gpu")], &[]), meta(&[], &[(POOL_ANNOTATION, "b")]), Ok("b")),
        (
            "namespace ipv4-pool wins over namespace ip-pool",
            Family::V4,
            meta(&[], &[]),
            meta(&[], &[(POOL_ANNOTATION, "b"), (IPV4_POOL_ANNOTATION, "b4")]),
            Ok("b4"),
        ),
        ("pod selector", Family::V4, meta(&[("hw", "gpu")], &[]), meta(&[], &[]), Ok("gpu")),
        ("namespace selector", Family::V6, meta(&[], &[]), meta(&[("team", "x")], &[]), Ok("team-x")),
        ("two selectors match", Family::V4, meta(&[("hw", "gpu")], &[]), meta(&[("team", "x")], &[]), Err(())),
    ];
    for (what, family, pod, ns, want) in cases {
        let got = choose_pool("ns/pod", family, &pod, &ns, &pools);
        match (got, want) {
            (Ok(p), Ok(w)) => assert_eq!(p, w, "{what}"),
            (Err(e), Err(())) => {
                let text = e.to_string();
                assert!(text.contains("gpu, team-x") && text.contains("ns/pod"), "{what}: {text}");
            }
            (got, want) => panic!("{what}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn needed_rounds_up_to_the_pre_allocation() {
    let cases = [
        (0, 0, 16, 16),
        (1, 0, 16, 32),
        (16, 0, 16, 32),
        (17, 0, 16, 48),
        (10, 6, 16, 32),
        (0, 0, 8, 8),
        (12, 0, 8, 24),
        (42, 0, 8, 56),
        (5, 2, 0, 7),
    ];
    for (in_use, pending, pre, want) in cases {
        assert_eq!(needed(in_use, pending, pre), want, "in_use {in_use}, pending {pending}, pre {pre}");
    }
}

#[test]
fn releases_unused_newest_first_while_the_rest_covers_needed() {
    let n = |s: &str| s.parse::<IpNet>().unwrap();
    let cidrs = [n("10.0.0.0/27"), n("10.0.0.32/27"), n("10.0.0.64/27")];
    type Case = (&'static [(&'static str, u128)], u64, &'static [&'static str]);
    let cases: &[Case] = &[
        // All three unused, need 30: keep the oldest only.
        (&[], 30, &["10.0.0.64/27", "10.0.0.32/27"]),
        // Need 31: two must stay; the newest goes.
        (&[], 31, &["10.0.0.64/27"]),
        // The newest is in use: the older unused ones go, newest first.
        (&[("10.0.0.64/27", 1)], 24, &["10.0.0.32/27", "10.0.0.0/27"]),
        // ... as long as the rest still covers needed.
        (&[("10.0.0.64/27", 1)], 31, &["10.0.0.32/27"]),
        // Everything is needed.
        (&[], 90, &[]),
        // The oldest in use, need 56: one of the others must stay (the older one).
        (&[("10.0.0.0/27", 20)], 56, &["10.0.0.64/27"]),
    ];
    for (used, needed, want) in cases {
        let used_in = |c: &IpNet| used.iter().find(|(u, _)| n(u) == *c).map_or(0, |(_, k)| *k);
        let got = releasable(&cidrs, used_in, *needed);
        let want: Vec<IpNet> = want.iter().map(|s| n(s)).collect();
        assert_eq!(got, want, "used {used:?}, needed {needed}");
    }
}

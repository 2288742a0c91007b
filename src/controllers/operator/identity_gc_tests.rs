use std::sync::{Arc, Mutex};

use kube::api::PostParams;

use super::*;
use crate::controllers::test_util::{api_with_crds, eventually};
use crate::crds::cilium_endpoint::{EndpointIdentity, EndpointStatus};

fn refs(names: &[&str]) -> Vec<IdentityRef> {
    names.iter().map(|n| IdentityRef { name: n.to_string(), uid: Some(format!("uid-{n}")) }).collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[test]
fn unused_identities_are_deleted_after_a_whole_heartbeat_timeout() {
    const MIN: Duration = Duration::from_secs(60);
    // (minute, identities that exist, identities in use, expected deletions)
    type Step = (u64, &'static [&'static str], &'static [&'static str], &'static [&'static str]);
    struct Case {
        name: &'static str,
        steps: &'static [Step],
    }
    let cases = [
        Case {
            name: "never used: first seen starts the clock",
            steps: &[(0, &["300"], &[], &[]), (29, &["300"], &[], &[]), (30, &["300"], &[], &["300"])],
        },
        Case {
            name: "in use is never deleted",
            steps: &[(0, &["300"], &["300"], &[]), (60, &["300"], &["300"], &[]), (120, &["300"], &["300"], &[])],
        },
        Case {
            name: "unused since the last time it was seen in use",
            steps: &[
                (0, &["300"], &["300"], &[]),
                (20, &["300"], &["300"], &[]),
                (45, &["300"], &[], &[]),
                (50, &["300"], &[], &["300"]),
            ],
        },
        Case {
            name: "used again before the timeout: kept",
            steps: &[(0, &["300"], &[], &[]), (29, &["300"], &["300"], &[]), (58, &["300"], &[], &[])],
        },
        Case {
            name: "an identity recreated after deletion starts afresh",
            steps: &[
                (0, &["300"], &[], &[]),
                (30, &["300"], &[], &["300"]),
                (31, &[], &[], &[]),
                (40, &["300"], &[], &[]),
                (69, &["300"], &[], &[]),
            ],
        },
        Case {
            name: "only the expired of several",
            steps: &[(0, &["300", "301"], &["301"], &[]), (30, &["300", "301", "302"], &["301"], &["300"])],
        },
    ];
    for case in cases {
        let t0 = Instant::now();
        let mut gc = IdentityGc::new(30 * MIN);
        for (minute, existing, used, want) in case.steps {
            let got = gc.pass(&refs(existing), &set(used), t0 + *minute as u32 * MIN);
            let got: Vec<&str> = got.iter().map(|i| i.name.as_str()).collect();
            assert_eq!(got, *want, "{} at minute {minute}", case.name);
            for name in got {
                gc.deleted(name);
            }
        }
    }
}

#[test]
fn identities_in_use_come_from_endpoint_status() {
    let ep = |id: Option<i64>| {
        CiliumEndpoint::new(
            "default",
            "p",
            EndpointStatus { identity: id.map(|id| EndpointIdentity { id, labels: vec![] }), ..Default::default() },
        )
    };
    assert_eq!(
        identities_in_use(&[ep(Some(300)), ep(None), ep(Some(0)), ep(Some(300)), ep(Some(7))]),
        set(&["300", "7"])
    );
}

#[tokio::test]
async fn the_gc_deletes_only_unused_identities_through_the_api() {
    let (_server, client) = api_with_crds().await;
    let identities: Api<CiliumIdentity> = Api::all(client.clone());
    let endpoints: Api<CiliumEndpoint> = Api::namespaced(client.clone(), "default");
    for id in [1000, 1001] {
        identities.create(&PostParams::default(), &CiliumIdentity::new(id, BTreeMap::new())).await.unwrap();
    }
    let status = EndpointStatus { identity: Some(EndpointIdentity { id: 1000, labels: vec![] }), ..Default::default() };
    endpoints.create(&PostParams::default(), &CiliumEndpoint::new("default", "web", status)).await.unwrap();

    let t0 = Instant::now();
    let offset = Arc::new(Mutex::new(Duration::ZERO));
    let clock = {
        let offset = offset.clone();
        move || t0 + *offset.lock().unwrap()
    };
    let options =
        IdentityGcOptions { interval: Duration::from_millis(100), heartbeat_timeout: Duration::from_secs(1800) };
    let token = CancellationToken::new();
    let _stop = token.clone().drop_guard();
    let task = tokio::spawn(run(client.clone(), options, clock, token.clone()));
    let names = || async {
        let mut n: Vec<String> = identities
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|i| i.metadata.name)
            .collect();
        n.sort();
        n
    };

    // Several passes within the timeout: nothing is deleted.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(names().await, vec!["1000", "1001"]);

    // Past the timeout: the unused one goes, the used one stays.
    *offset.lock().unwrap() = Duration::from_secs(1801);
    eventually("1001 deleted", 100, || async { names().await == vec!["1000"] }).await;

    // An identity created now is young: kept although unused. The endpoint goes away: 1000 is
    // deleted one timeout after it was last seen in use.
    identities.create(&PostParams::default(), &CiliumIdentity::new(1002, BTreeMap::new())).await.unwrap();
    endpoints.delete("web", &Default::default()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(names().await, vec!["1000", "1002"]);
    *offset.lock().unwrap() = Duration::from_secs(1801 + 1800);
    eventually("1000 and 1002 deleted", 100, || async { names().await.is_empty() }).await;

    token.cancel();
    task.await.unwrap().expect("the GC stops cleanly on shutdown");
}

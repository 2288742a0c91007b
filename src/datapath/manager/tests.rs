//! The manager against the fake backend: convergence under injected faults, write order, conflicts,
//! restart safety (prune gate) and drift repair. Time is simulated: passes take an explicit `now`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use beeline_common::lb::{Lb4Backend, Lb4BackendKey, Lb4Key, Lb4RevNatKey, Lb4ReverseNat, Lb4Service};

use super::fake::{CallOp, FakeKernel, Faults};
use super::maps::{Lb4Backends, Lb4RevNat, Lb4Services};
use super::*;

/// A test map: u32 → u32 in one hash map.
struct Plain;
impl MapDef for Plain {
    type Key = Lb4BackendKey;
    type Value = Lb4RevNatKeyValue;
    const NAME: &'static str = "plain";
    const KIND: MapKind = MapKind::Hash;
    const MAX_ENTRIES: u32 = 1024;
    fn row_json(k: &Self::Key, v: &Self::Value) -> serde_json::Value {
        serde_json::json!({"k": k.backend_id, "v": v.0})
    }
}

/// A Pod value for [`Plain`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Lb4RevNatKeyValue(u32);
// SAFETY: a single u32.
unsafe impl aya::Pod for Lb4RevNatKeyValue {}

fn k(id: u32) -> Lb4BackendKey {
    Lb4BackendKey { backend_id: id }
}

struct SplitMix(u64);
impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Runs passes with the clock advanced past every backoff until nothing is left to write.
/// Returns the number of passes taken; panics if it does not settle within `max_passes`.
fn settle(writer: &mut GroupWriter, now: &mut Instant, max_passes: usize) -> usize {
    for pass in 1..=max_passes {
        writer.sync_once(*now);
        if writer.idle() && writer.next_retry().is_none() {
            return pass;
        }
        *now = writer.next_retry().map_or(*now, |t| t.max(*now)) + Duration::from_millis(1);
    }
    panic!("writer did not settle within {max_passes} passes");
}

#[test]
fn random_owner_updates_converge_under_ten_percent_faults() {
    for seed in [1u64, 2, 3] {
        let kernel = FakeKernel::new(Faults::Fraction { per_mille: 100, seed });
        let manager = MapManager::new(ManagerOptions::default());
        let owners: Vec<Owner> = ["endpoints", "nodes", "services"].iter().map(|n| manager.register_owner(n)).collect();
        let mut group = manager.group("plain", WriteOrder::DeletesFirst);
        // The start-up dump may hit an injected fault too; a real agent retries start-up.
        let table = (0..100)
            .find_map(|_| group.add::<Plain>(kernel.map("plain")).ok())
            .expect("a start-up dump succeeds within 100 tries at 10% faults");
        let mut writer = group.build();
        for o in &owners {
            o.initial_pass_done();
        }
        let mut rng = SplitMix(seed);
        let mut now = Instant::now();
        let mut expected: Vec<BTreeMap<u32, u32>> = vec![BTreeMap::new(); owners.len()];
        for round in 0..60 {
            let who = rng.below(owners.len() as u64) as usize;
            // Each owner draws keys from its own range (plus a shared range that conflicts sometimes).
            let rows: BTreeMap<u32, u32> = (0..rng.below(20))
                .map(|_| {
                    let key = if rng.below(10) == 0 { 1000 + rng.below(5) } else { who as u64 * 100 + rng.below(50) };
                    (key as u32, round * 10 + who as u32)
                })
                .collect();
            expected[who] = rows.clone();
            table.replace_owner(&owners[who], rows.iter().map(|(k, v)| (super::tests::k(*k), Lb4RevNatKeyValue(*v))));
            // Interleave partial passes with updates, like a busy agent.
            if rng.below(3) == 0 {
                writer.sync_once(now);
                now += Duration::from_millis(rng.below(200));
            }
        }
        settle(&mut writer, &mut now, 500);

        let want: BTreeMap<Lb4BackendKey, Lb4RevNatKeyValue> = table.desired();
        let got: BTreeMap<Lb4BackendKey, Lb4RevNatKeyValue> = kernel.contents("plain");
        assert_eq!(got, want, "seed {seed}: kernel must equal the desired table");
        // Desired = union of owners' rows; on shared keys exactly one owner's value is in effect.
        let all_keys: std::collections::BTreeSet<u32> = expected.iter().flat_map(|m| m.keys().copied()).collect();
        assert_eq!(want.keys().map(|k| k.backend_id).collect::<std::collections::BTreeSet<_>>(), all_keys);
        for (key, value) in &want {
            assert!(
                expected.iter().any(|m| m.get(&key.backend_id) == Some(&value.0)),
                "value of {key:?} from some owner"
            );
        }
        assert!(kernel.log().iter().any(|c| !c.ok), "seed {seed}: faults must actually have been injected");
        let status = table.status();
        assert_eq!((status.counts.pending, status.counts.failed, status.counts.stale), (0, 0, 0));
    }
}

/// The LB group on a fake kernel with its three tables.
struct Lb {
    kernel: FakeKernel,
    manager: MapManager,
    owner: Owner,
    backends: TableHandle<Lb4Backends>,
    revnat: TableHandle<Lb4RevNat>,
    services: TableHandle<Lb4Services>,
    writer: GroupWriter,
}

fn lb_group(kernel: FakeKernel, owners: &[&str]) -> (Lb, Vec<Owner>) {
    let manager = MapManager::new(ManagerOptions::default());
    let owner = manager.register_owner("services");
    let extra: Vec<Owner> = owners.iter().map(|o| manager.register_owner(o)).collect();
    let (name, order) = maps::LB_GROUP;
    let mut group = manager.group(name, order);
    let backends = group.add::<Lb4Backends>(kernel.map(Lb4Backends::NAME)).unwrap();
    let revnat = group.add::<Lb4RevNat>(kernel.map(Lb4RevNat::NAME)).unwrap();
    let services = group.add::<Lb4Services>(kernel.map(Lb4Services::NAME)).unwrap();
    let writer = group.build();
    (Lb { kernel, manager, owner, backends, revnat, services, writer }, extra)
}

const VIP: u32 = 0x0a60_0001;

type ServiceRows = (Vec<(Lb4BackendKey, Lb4Backend)>, Vec<(Lb4RevNatKey, Lb4ReverseNat)>, Vec<(Lb4Key, Lb4Service)>);

/// The rows of "service VIP:80 with backends `ids`" — what a service controller would produce.
fn service_rows(ids: &[u32]) -> ServiceRows {
    let frontend = |slot: u16| Lb4Key {
        address: VIP.to_be(),
        dport: 80u16.to_be(),
        backend_slot: slot,
        proto: 6,
        ..Default::default()
    };
    let backends = ids
        .iter()
        .map(|id| {
            (
                k(*id),
                Lb4Backend {
                    address: (0x0a00_0000 + id).to_be(),
                    port: 8080u16.to_be(),
                    proto: 6,
                    ..Default::default()
                },
            )
        })
        .collect();
    let revnat =
        vec![(Lb4RevNatKey { rev_nat_index: 1 }, Lb4ReverseNat { address: VIP.to_be(), port: 80u16.to_be(), pad: 0 })];
    let mut services: Vec<(Lb4Key, Lb4Service)> =
        vec![(frontend(0), Lb4Service { count: ids.len() as u16, rev_nat_index: 1, ..Default::default() })];
    for (slot, id) in ids.iter().enumerate() {
        services
            .push((frontend(slot as u16 + 1), Lb4Service { backend_id: *id, rev_nat_index: 1, ..Default::default() }));
    }
    (backends, revnat, services)
}

impl Lb {
    fn set_service(&self, ids: &[u32]) {
        let (b, r, s) = service_rows(ids);
        // Deliberately in the "wrong" order: the manager, not the caller, orders the writes.
        self.services.replace_owner(&self.owner, s);
        self.revnat.replace_owner(&self.owner, r);
        self.backends.replace_owner(&self.owner, b);
    }

    /// The successful writes as (map, op, slot-or-id) in log order.
    fn writes(&self) -> Vec<(&'static str, CallOp, String)> {
        self.kernel.log().into_iter().filter(|c| c.ok && c.op != CallOp::Dump).map(|c| (c.map, c.op, c.key)).collect()
    }
}

fn is_master(key: &str) -> bool {
    key.contains("backend_slot: 0,")
}

#[test]
fn service_writes_go_backends_slots_then_master_and_deletes_reverse() {
    let (mut lb, _) = lb_group(FakeKernel::new(Faults::None), &[]);
    lb.owner.initial_pass_done();
    lb.set_service(&[1, 2, 3]);
    lb.writer.sync_once(Instant::now());

    let writes = lb.writes();
    let maps: Vec<&str> = writes.iter().map(|w| w.0).collect();
    assert_eq!(maps.len(), 3 + 1 + 4);
    assert!(maps[..3].iter().all(|m| *m == Lb4Backends::NAME), "backends first: {maps:?}");
    assert_eq!(maps[3], Lb4RevNat::NAME);
    assert!(maps[4..].iter().all(|m| *m == Lb4Services::NAME));
    assert!(writes[4..7].iter().all(|w| !is_master(&w.2)), "slots before master: {writes:?}");
    assert!(is_master(&writes[7].2), "master slot 0 written last");

    // Shrink to 2 backends: master (count 2) is rewritten before slot 3 and backend 3 go away.
    lb.kernel.clear_log();
    lb.set_service(&[1, 2]);
    lb.writer.sync_once(Instant::now());
    let writes = lb.writes();
    let ops: Vec<(&str, CallOp, bool)> = writes.iter().map(|w| (w.0, w.1, is_master(&w.2))).collect();
    assert_eq!(
        ops,
        vec![
            (Lb4Services::NAME, CallOp::Upsert, true),
            (Lb4Services::NAME, CallOp::Delete, false),
            (Lb4Backends::NAME, CallOp::Delete, false),
        ]
    );

    // Delete the whole service: master first, then slots, then rev-NAT, then backends.
    lb.kernel.clear_log();
    lb.services.replace_owner(&lb.owner, []);
    lb.revnat.replace_owner(&lb.owner, []);
    lb.backends.replace_owner(&lb.owner, []);
    lb.writer.sync_once(Instant::now());
    let writes = lb.writes();
    assert!(writes.iter().all(|w| w.1 == CallOp::Delete));
    let maps: Vec<&str> = writes.iter().map(|w| w.0).collect();
    assert!(is_master(&writes[0].2), "master deleted first: {writes:?}");
    assert_eq!(&maps[..3], &[Lb4Services::NAME; 3]);
    assert_eq!(maps[3], Lb4RevNat::NAME);
    assert_eq!(&maps[4..], &[Lb4Backends::NAME; 2]);
    assert!(lb.kernel.contents::<Lb4Key, Lb4Service>(Lb4Services::NAME).is_empty());
}

#[test]
fn a_failed_backend_write_holds_back_slots_and_master_until_it_succeeds() {
    // Call 1-3 are the start-up dumps; call 4 is the first backend upsert.
    let (mut lb, _) = lb_group(FakeKernel::new(Faults::Calls(vec![4])), &[]);
    lb.owner.initial_pass_done();
    lb.set_service(&[1, 2]);
    let t0 = Instant::now();
    let report = lb.writer.sync_once(t0);
    assert_eq!(report.failed_ops, 1);
    assert!(report.blocked_steps > 0);
    assert!(
        lb.kernel.contents::<Lb4Key, Lb4Service>(Lb4Services::NAME).is_empty(),
        "no slot may point at a missing backend"
    );
    let retry_at = lb.writer.next_retry().expect("the failed backend is scheduled for retry");
    assert_eq!(retry_at, t0 + Duration::from_millis(50));

    lb.writer.sync_once(retry_at);
    assert_eq!(lb.kernel.contents::<Lb4Key, Lb4Service>(Lb4Services::NAME).len(), 3);
    assert_eq!(lb.kernel.contents::<Lb4BackendKey, Lb4Backend>(Lb4Backends::NAME).len(), 2);
    let writes = lb.writes();
    assert!(is_master(&writes.last().unwrap().2), "master still written last");
}

#[test]
fn two_owners_on_one_key_report_a_conflict() {
    let (lb, extra) = lb_group(FakeKernel::new(Faults::None), &["other"]);
    let (b, _, _) = service_rows(&[7]);
    lb.backends.replace_owner(&lb.owner, b.clone());
    let mut other_row = b.clone();
    other_row[0].1.port = 9999u16.to_be();
    let diff = lb.backends.replace_owner(&extra[0], other_row);
    assert_eq!(diff.conflicts.len(), 1);
    assert_eq!(&*diff.conflicts[0].holder, "services");
    assert_eq!(lb.backends.desired()[&k(7)], b[0].1, "the first holder's row stays in effect");
    assert_eq!(lb.backends.status().counts.conflicts, 1);
    let status = lb.manager.status();
    assert_eq!(status.tables.iter().map(|t| t.counts.conflicts).sum::<usize>(), 1);
}

#[test]
fn restored_entries_survive_until_every_owner_finished_its_first_pass() {
    let kernel = FakeKernel::new(Faults::None);
    // What a previous agent left: service with backends 1,2,3.
    {
        let (mut lb, _) = lb_group(kernel.clone(), &[]);
        lb.owner.initial_pass_done();
        lb.set_service(&[1, 2, 3]);
        lb.writer.sync_once(Instant::now());
    }
    let before = kernel.contents::<Lb4Key, Lb4Service>(Lb4Services::NAME);
    assert_eq!(before.len(), 4);

    // The new agent: two owners; the service controller now wants only backends 1 and 2.
    let (mut lb, extra) = lb_group(kernel.clone(), &["endpoints"]);
    assert_eq!(lb.backends.restored().len(), 3, "restored rows are offered to the ID allocators");
    lb.set_service(&[1, 2]);
    lb.owner.initial_pass_done();
    let t0 = Instant::now();
    lb.writer.sync_once(t0);
    let status = lb.manager.status();
    assert_eq!(status.initial_sync, gate::GateState::Waiting);
    assert_eq!(status.waiting_for, vec!["endpoints".to_string()]);
    assert!(!status.ready);
    // Slot 3 and backend 3 are stale but kept: the gate is closed.
    assert_eq!(kernel.contents::<Lb4Key, Lb4Service>(Lb4Services::NAME).len(), 4);
    assert_eq!(kernel.contents::<Lb4BackendKey, Lb4Backend>(Lb4Backends::NAME).len(), 3);
    assert_eq!(lb.backends.status().counts.stale, 1);

    extra[0].initial_pass_done();
    lb.writer.sync_once(t0);
    let services = kernel.contents::<Lb4Key, Lb4Service>(Lb4Services::NAME);
    assert_eq!(services.keys().map(|k| k.backend_slot).collect::<Vec<_>>(), vec![0, 1, 2]);
    let backends = kernel.contents::<Lb4BackendKey, Lb4Backend>(Lb4Backends::NAME);
    assert_eq!(backends.keys().map(|k| k.backend_id).collect::<Vec<_>>(), vec![1, 2]);
    let status = lb.manager.status();
    assert_eq!(status.initial_sync, gate::GateState::Complete);
    assert!(status.ready);
}

#[test]
fn the_prune_gate_times_out() {
    let kernel = FakeKernel::new(Faults::None);
    kernel.map::<Lb4BackendKey, Lb4RevNatKeyValue>("plain");
    kernel.poke("plain", k(1), Some(Lb4RevNatKeyValue(1)));
    let manager = MapManager::new(ManagerOptions { initial_sync_timeout: Duration::from_secs(5) });
    let _never = manager.register_owner("never-reports");
    let mut group = manager.group("plain", WriteOrder::DeletesFirst);
    group.add::<Plain>(kernel.map("plain")).unwrap();
    let mut writer = group.build();
    let t0 = Instant::now();
    writer.sync_once(t0);
    assert_eq!(kernel.contents::<Lb4BackendKey, Lb4RevNatKeyValue>("plain").len(), 1);
    writer.sync_once(t0 + Duration::from_secs(6));
    assert!(kernel.contents::<Lb4BackendKey, Lb4RevNatKeyValue>("plain").is_empty());
    assert_eq!(manager.status().initial_sync, gate::GateState::TimedOut);
}

#[test]
fn refresh_repairs_drift() {
    let (mut lb, _) = lb_group(FakeKernel::new(Faults::None), &[]);
    lb.owner.initial_pass_done();
    lb.set_service(&[1, 2]);
    let t0 = Instant::now();
    lb.writer.sync_once(t0);
    let want = lb.kernel.contents::<Lb4BackendKey, Lb4Backend>(Lb4Backends::NAME);

    // Someone else changes backend 1, deletes backend 2 and adds backend 9.
    lb.kernel.poke(Lb4Backends::NAME, k(1), Some(Lb4Backend::default()));
    lb.kernel.poke::<_, Lb4Backend>(Lb4Backends::NAME, k(2), None);
    lb.kernel.poke(Lb4Backends::NAME, k(9), Some(Lb4Backend::default()));
    lb.writer.sync_once(t0);
    assert_ne!(
        lb.kernel.contents::<Lb4BackendKey, Lb4Backend>(Lb4Backends::NAME),
        want,
        "a pass alone cannot see drift"
    );

    assert_eq!(lb.writer.refresh(), 3);
    lb.writer.sync_once(t0);
    assert_eq!(lb.kernel.contents::<Lb4BackendKey, Lb4Backend>(Lb4Backends::NAME), want);
}

#[tokio::test]
async fn the_async_writer_batches_a_burst_into_one_pass_and_stops_on_shutdown() {
    let (lb, _) = lb_group(FakeKernel::new(Faults::None), &[]);
    lb.owner.initial_pass_done();
    let Lb { kernel, backends, owner, writer, .. } = lb;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(writer.run(writer::WriterOptions::default(), shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(1)).await;
    // The test runtime is single-threaded: the writer cannot run between these calls, so they are one
    // burst no matter how slow the machine is.
    for n in 1..=50u32 {
        backends.replace_owner(&owner, (1..=n).map(|i| (k(i), Lb4Backend::default())));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while kernel.contents::<Lb4BackendKey, Lb4Backend>(Lb4Backends::NAME).len() < 50 {
        assert!(Instant::now() < deadline, "writer did not write the burst within 10 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let upserts = kernel.log().iter().filter(|c| c.op == CallOp::Upsert).count();
    assert_eq!(upserts, 50, "a burst of 50 growing snapshots is written once per key, not 1+2+..+50 times");
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), task).await.expect("writer stops").unwrap();
}

#[test]
fn metrics_count_writes_failures_retries_and_prunes() {
    let kernel = FakeKernel::new(Faults::Calls(vec![2]));
    kernel.map::<Lb4BackendKey, Lb4RevNatKeyValue>("plain");
    kernel.poke("plain", k(99), Some(Lb4RevNatKeyValue(0)));
    let manager = MapManager::new(ManagerOptions::default());
    let owner = manager.register_owner("o");
    let mut group = manager.group("plain", WriteOrder::DeletesFirst);
    let table = group.add::<Plain>(kernel.map("plain")).unwrap(); // call 1: dump
    let mut writer = group.build();
    table.replace_owner(&owner, [(k(1), Lb4RevNatKeyValue(1))]);
    owner.initial_pass_done();
    let mut now = Instant::now();
    settle(&mut writer, &mut now, 10);
    let mut registry = prometheus_client::registry::Registry::default();
    manager.register_metrics(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    let value = |name: &str| -> u64 {
        let line = text.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name} missing in\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    // Call 2 (the prune of 99, deletes go first) fails, is retried once and succeeds; 1 is written.
    assert_eq!(value("bpf_map_write_failures_total{map=\"plain\"}"), 1);
    assert_eq!(value("bpf_map_retries_total{map=\"plain\"}"), 1);
    assert_eq!(value("bpf_map_writes_total{map=\"plain\"}"), 2);
    assert_eq!(value("bpf_map_prunes_total{map=\"plain\"}"), 1);
    assert!(text.contains("bpf_map_sync_pass_seconds_count{group=\"plain\"}"));
}

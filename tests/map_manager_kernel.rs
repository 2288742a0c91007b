//! The map manager on real pinned BPF maps (needs root and bpffs at /sys/fs/bpf; fails otherwise).
//! Every test pins under its own directory, removed on drop (also when the test panics).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use beeline::datapath::manager::ids::IdAllocator;
use beeline::datapath::manager::kernel::{self, KernelLpmMap, KernelMap};
use beeline::datapath::manager::maps::{
    Ipcache, Lb4Backends, Lb4RevNat, Lb4Services, TunnelMap, LB_GROUP, REMOTE_GROUP,
};
use beeline::datapath::manager::writer::GroupWriter;
use beeline::datapath::manager::{gate::GateState, ManagerOptions, MapDef, MapManager, MapSpec, Owner, TableHandle};
use beeline_common::ipcache::{IpcacheKey, RemoteEndpointInfo};
use beeline_common::lb::{Lb4Backend, Lb4BackendKey, Lb4Key, Lb4RevNatKey, Lb4ReverseNat, Lb4Service};

struct PinDir(PathBuf);

impl PinDir {
    fn new(test: &str) -> Self {
        assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root (BPF maps pinned in /sys/fs/bpf)");
        assert!(Path::new("/sys/fs/bpf").is_dir(), "bpffs must be mounted at /sys/fs/bpf");
        let dir = PathBuf::from(format!("/sys/fs/bpf/beeline-test-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create pin dir on bpffs");
        Self(dir)
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        // Unlinking the pins frees the maps (nothing else holds them).
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The service controller's side: its owner identity and the LB tables.
struct Tables {
    services_owner: Owner,
    backends: TableHandle<Lb4Backends>,
    revnat: TableHandle<Lb4RevNat>,
    services: TableHandle<Lb4Services>,
}

struct Agent {
    manager: MapManager,
    endpoints_owner: Owner,
    tables: Tables,
    writer: GroupWriter,
}

fn start_agent(pins: &Path) -> Agent {
    let manager = MapManager::new(ManagerOptions::default());
    let services_owner = manager.register_owner("services");
    let endpoints_owner = manager.register_owner("endpoints");
    let mut group = manager.group(LB_GROUP.0, LB_GROUP.1);
    let backends = group.add::<Lb4Backends>(KernelMap::open_or_create::<Lb4Backends>(pins).unwrap()).unwrap();
    let revnat = group.add::<Lb4RevNat>(KernelMap::open_or_create::<Lb4RevNat>(pins).unwrap()).unwrap();
    let services = group.add::<Lb4Services>(KernelMap::open_or_create::<Lb4Services>(pins).unwrap()).unwrap();
    Agent {
        manager,
        endpoints_owner,
        tables: Tables { services_owner, backends, revnat, services },
        writer: group.build(),
    }
}

fn backend(last_octet: u8) -> Lb4Backend {
    Lb4Backend {
        address: u32::from_be_bytes([10, 0, 1, last_octet]).to_be(),
        port: 8080u16.to_be(),
        proto: 6,
        ..Default::default()
    }
}

fn frontend(slot: u16) -> Lb4Key {
    Lb4Key {
        address: u32::from_be_bytes([10, 96, 0, 10]).to_be(),
        dport: 80u16.to_be(),
        backend_slot: slot,
        proto: 6,
        ..Default::default()
    }
}

/// What a service controller does: allocate backend IDs (restored ones first) and emit rows.
fn publish_service(t: &Tables, ids: &mut IdAllocator<Lb4Backend>, backends: &[Lb4Backend]) -> Vec<u32> {
    let assigned: Vec<u32> = backends.iter().map(|b| ids.allocate(b).unwrap()).collect();
    t.backends.replace_owner(
        &t.services_owner,
        backends.iter().zip(&assigned).map(|(b, id)| (Lb4BackendKey { backend_id: *id }, *b)),
    );
    t.revnat.replace_owner(
        &t.services_owner,
        [(
            Lb4RevNatKey { rev_nat_index: 1 },
            Lb4ReverseNat { address: frontend(0).address, port: frontend(0).dport, pad: 0 },
        )],
    );
    let mut rows =
        vec![(frontend(0), Lb4Service { count: backends.len() as u16, rev_nat_index: 1, ..Default::default() })];
    rows.extend(assigned.iter().enumerate().map(|(i, id)| {
        (frontend(i as u16 + 1), Lb4Service { backend_id: *id, rev_nat_index: 1, ..Default::default() })
    }));
    t.services.replace_owner(&t.services_owner, rows);
    assigned
}

fn dump<M: MapDef>(pins: &Path) -> BTreeMap<M::Key, M::Value> {
    use beeline::datapath::manager::backend::MapBackend;
    let mut map = KernelMap::<M::Key, M::Value>::open_pinned::<M>(pins).unwrap();
    map.dump().unwrap().into_iter().collect()
}

#[test]
fn a_restarted_manager_restores_ids_keeps_entries_until_initial_sync_then_prunes_exactly_the_stale_ones() {
    let pins = PinDir::new("restart");
    let (a, b, c, d) = (backend(1), backend(2), backend(3), backend(4));

    // First agent: service with backends a, b, c.
    let first_ids = {
        let mut agent = start_agent(&pins.0);
        let mut ids = IdAllocator::new(1, 65535);
        let assigned = publish_service(&agent.tables, &mut ids, &[a, b, c]);
        agent.tables.services_owner.initial_pass_done();
        agent.endpoints_owner.initial_pass_done();
        agent.writer.sync_once(Instant::now());
        assert!(agent.manager.status().ready);
        assigned
    }; // the manager is gone; the pinned maps stay.
    assert_eq!(dump::<Lb4Services>(&pins.0).len(), 4);

    // Second agent on the same pins.
    let mut agent = start_agent(&pins.0);
    let mut ids = IdAllocator::new(1, 65535);
    for (key, value) in agent.tables.backends.restored() {
        ids.restore(*value, key.backend_id).unwrap();
    }
    // Backend c went away, d is new.
    let assigned = publish_service(&agent.tables, &mut ids, &[a, b, d]);
    assert_eq!(&assigned[..2], &first_ids[..2], "a and b keep their backend IDs across the restart");
    assert!(!first_ids.contains(&assigned[2]), "the new backend does not reuse c's ID while c may be in use");
    agent.tables.services_owner.initial_pass_done();
    let t0 = Instant::now();
    agent.writer.sync_once(t0);

    // Endpoints has not reported: c's backend entry is stale but kept; everything wanted is written.
    let status = agent.manager.status();
    assert_eq!(status.initial_sync, GateState::Waiting);
    assert!(!status.ready);
    let backends = dump::<Lb4Backends>(&pins.0);
    assert_eq!(backends.len(), 4, "a, b, d written and the stale c kept: {backends:?}");
    assert_eq!(backends[&Lb4BackendKey { backend_id: first_ids[2] }], c);

    agent.endpoints_owner.initial_pass_done();
    agent.writer.sync_once(t0);
    let backends = dump::<Lb4Backends>(&pins.0);
    assert_eq!(backends, agent.tables.backends.desired(), "exactly the stale backend is pruned");
    assert_eq!(dump::<Lb4Services>(&pins.0), agent.tables.services.desired());
    assert_eq!(dump::<Lb4RevNat>(&pins.0), agent.tables.revnat.desired());
    assert!(agent.manager.status().ready);
}

#[test]
fn drift_from_a_direct_map_write_is_repaired_by_refresh() {
    use beeline::datapath::manager::backend::MapBackend;
    let pins = PinDir::new("drift");
    let mut agent = start_agent(&pins.0);
    let mut ids = IdAllocator::new(1, 65535);
    let assigned = publish_service(&agent.tables, &mut ids, &[backend(1), backend(2)]);
    agent.tables.services_owner.initial_pass_done();
    agent.endpoints_owner.initial_pass_done();
    agent.writer.sync_once(Instant::now());
    let want = agent.tables.backends.desired();
    assert_eq!(dump::<Lb4Backends>(&pins.0), want);

    // Another process rewrites backend 1, deletes backend 2 and adds a backend nobody wants.
    let mut intruder = KernelMap::<Lb4BackendKey, Lb4Backend>::open_pinned::<Lb4Backends>(&pins.0).unwrap();
    intruder.upsert(&Lb4BackendKey { backend_id: assigned[0] }, &backend(99)).unwrap();
    intruder.delete(&Lb4BackendKey { backend_id: assigned[1] }).unwrap();
    intruder.upsert(&Lb4BackendKey { backend_id: 4242 }, &backend(42)).unwrap();
    assert_ne!(dump::<Lb4Backends>(&pins.0), want);

    assert_eq!(agent.writer.refresh(), 3, "refresh sees all three drifted entries");
    agent.writer.sync_once(Instant::now());
    assert_eq!(dump::<Lb4Backends>(&pins.0), want);
}

#[test]
fn a_pinned_map_of_another_shape_is_recreated_and_a_matching_one_reused() {
    use beeline::datapath::manager::backend::MapBackend;
    let pins = PinDir::new("shape");
    let mut wrong = MapSpec::of::<Lb4Backends>();
    wrong.value_size += 4;
    kernel::open_or_create(&pins.0, &wrong).unwrap();
    let path = pins.0.join(Lb4Backends::NAME);
    assert_eq!(kernel::pinned_spec(&path, Lb4Backends::NAME).unwrap(), wrong);

    let mut map = KernelMap::open_or_create::<Lb4Backends>(&pins.0).unwrap();
    assert_eq!(kernel::pinned_spec(&path, Lb4Backends::NAME).unwrap(), MapSpec::of::<Lb4Backends>());
    map.upsert(&Lb4BackendKey { backend_id: 1 }, &backend(1)).unwrap();
    drop(map);

    // Same shape: reopened with its entries.
    let mut again = KernelMap::open_or_create::<Lb4Backends>(&pins.0).unwrap();
    assert_eq!(again.dump().unwrap(), vec![(Lb4BackendKey { backend_id: 1 }, backend(1))]);
    assert_eq!(again.get(&Lb4BackendKey { backend_id: 2 }).unwrap(), None);
    again.delete(&Lb4BackendKey { backend_id: 2 }).expect("deleting a missing key succeeds");
}

#[tokio::test]
async fn the_async_writer_syncs_to_the_kernel_and_stops() {
    let pins = PinDir::new("async");
    let agent = start_agent(&pins.0);
    agent.tables.services_owner.initial_pass_done();
    agent.endpoints_owner.initial_pass_done();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let Agent { manager, tables, writer, .. } = agent;
    let task = tokio::spawn(writer.run(Default::default(), shutdown.clone()));
    let mut ids = IdAllocator::new(1, 65535);
    let backends: Vec<Lb4Backend> = (1..=20).map(backend).collect();
    publish_service(&tables, &mut ids, &backends);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !manager.status().ready || dump::<Lb4Services>(&pins.0).len() < 21 {
        assert!(Instant::now() < deadline, "not synced within 10 s: {:?}", manager.status());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), task).await.expect("writer stops").unwrap();
}

#[test]
fn the_cli_lists_pinned_maps_directly() {
    let pins = PinDir::new("cli");
    let mut agent = start_agent(&pins.0);
    let mut ids = IdAllocator::new(1, 65535);
    publish_service(&agent.tables, &mut ids, &[backend(1), backend(2)]);
    agent.tables.services_owner.initial_pass_done();
    agent.endpoints_owner.initial_pass_done();
    agent.writer.sync_once(Instant::now());

    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_beeline"))
            .args(args)
            .arg("--pin-dir")
            .arg(&pins.0)
            .output()
            .expect("run beeline");
        assert!(out.status.success(), "beeline {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let json: serde_json::Value = serde_json::from_str(&run(&["bpf", "backend", "list", "-o", "json"])).unwrap();
    let addresses: Vec<&str> = json.as_array().unwrap().iter().map(|r| r["address"].as_str().unwrap()).collect();
    assert_eq!(addresses, vec!["10.0.1.1:8080", "10.0.1.2:8080"]);

    let text = run(&["bpf", "lb", "list"]);
    assert_eq!(text.lines().count(), 1 + 3, "header, master and two slots:\n{text}");
    assert!(text.contains("10.96.0.10:80"), "{text}");
    let revnat = run(&["bpf", "revnat", "list", "-o", "json"]);
    assert!(revnat.contains("\"rev_nat_index\": 1"), "{revnat}");
}

fn ipcache_key(a: [u8; 4], len: u32) -> IpcacheKey {
    IpcacheKey::ipv4(u32::from_ne_bytes(a), len)
}

fn remote(identity: u32, tunnel: [u8; 4]) -> RemoteEndpointInfo {
    RemoteEndpointInfo { sec_identity: identity, tunnel_endpoint: u32::from_ne_bytes(tunnel), ..Default::default() }
}

/// The ipcache (an LPM trie) through the manager: rows written, longest-prefix lookups see them, a
/// restarted manager keeps the previous agent's rows until its owner's first pass and then prunes
/// exactly the stale prefix; the CLI lists the trie.
#[test]
fn ipcache_lpm_rows_are_written_restored_and_pruned_after_the_first_pass() {
    use beeline::datapath::manager::backend::MapBackend;
    let pins = PinDir::new("ipcache");
    let start = |pins: &Path| {
        let manager = MapManager::new(ManagerOptions::default());
        let owner = manager.register_owner("remote-nodes");
        let mut group = manager.group(REMOTE_GROUP.0, REMOTE_GROUP.1);
        let tunnel = group.add::<TunnelMap>(KernelMap::open_or_create::<TunnelMap>(pins).unwrap()).unwrap();
        let ipcache = group.add::<Ipcache>(KernelLpmMap::open_or_create::<Ipcache>(pins).unwrap()).unwrap();
        (manager, owner, tunnel, ipcache, group.build())
    };
    let lookup = |ip: [u8; 4]| {
        let map = KernelLpmMap::<IpcacheKey, RemoteEndpointInfo>::open_pinned::<Ipcache>(&pins.0).unwrap();
        map.lookup(&ipcache_key(ip, 32)).unwrap()
    };
    let pod_cidr = ipcache_key([10, 0, 1, 0], 24);
    let pod = ipcache_key([10, 0, 1, 7], 32);
    let old_cidr = ipcache_key([10, 0, 9, 0], 24);
    {
        let (manager, owner, _tunnel, ipcache, mut writer) = start(&pins.0);
        ipcache.replace_owner(
            &owner,
            [
                (pod_cidr, remote(2, [192, 168, 0, 2])),
                (pod, remote(4242, [192, 168, 0, 2])),
                (old_cidr, remote(2, [192, 168, 0, 9])),
            ],
        );
        owner.initial_pass_done();
        writer.sync_once(Instant::now());
        assert!(manager.status().ready, "{:?}", manager.status());
    }
    assert_eq!(lookup([10, 0, 1, 7]), Some(remote(4242, [192, 168, 0, 2])), "the /32 wins over the /24");
    assert_eq!(lookup([10, 0, 1, 8]), Some(remote(2, [192, 168, 0, 2])), "other pods of the CIDR match the /24");
    assert_eq!(lookup([10, 0, 2, 1]), None);

    // A restarted agent: the node with 10.0.9.0/24 went away while it was down.
    let (manager, owner, _tunnel, ipcache, mut writer) = start(&pins.0);
    assert_eq!(ipcache.restored().len(), 3, "the trie's rows are read back at start");
    ipcache.replace_owner(&owner, [(pod_cidr, remote(2, [192, 168, 0, 2])), (pod, remote(4242, [192, 168, 0, 2]))]);
    writer.sync_once(Instant::now());
    assert_eq!(lookup([10, 0, 9, 1]), Some(remote(2, [192, 168, 0, 9])), "kept until the owner's first pass");
    assert_eq!(ipcache.status().counts.stale, 1);
    owner.initial_pass_done();
    writer.sync_once(Instant::now());
    assert_eq!(lookup([10, 0, 9, 1]), None, "pruned after the first pass");
    let mut map = KernelLpmMap::<IpcacheKey, RemoteEndpointInfo>::open_pinned::<Ipcache>(&pins.0).unwrap();
    let rows: BTreeMap<_, _> = map.dump().unwrap().into_iter().collect();
    assert_eq!(rows, ipcache.desired());
    assert!(manager.status().ready);

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_beeline"))
        .args(["bpf", "ipcache", "list", "-o", "json", "--pin-dir"])
        .arg(&pins.0)
        .output()
        .expect("run beeline");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let prefixes: Vec<&str> = json.as_array().unwrap().iter().map(|r| r["prefix"].as_str().unwrap()).collect();
    assert_eq!(prefixes, vec!["10.0.1.0/24", "10.0.1.7/32"]);
}

/// The manager's definitions of the remote maps have the exact shape the eBPF object declares, so
/// the loader and the manager share one pin (a mismatch would make the manager recreate the map
/// empty, cutting the loaded programs off from the rows).
#[test]
fn remote_map_definitions_match_the_ebpf_objects_maps() {
    let pins = PinDir::new("shape-ebpf");
    let _datapath = beeline::datapath::Datapath::load(&pins.0).expect("load the eBPF object");
    for (name, want) in [(Ipcache::NAME, MapSpec::of::<Ipcache>()), (TunnelMap::NAME, MapSpec::of::<TunnelMap>())] {
        let pinned = kernel::pinned_spec(&pins.0.join(name), want.name).unwrap();
        assert_eq!(pinned, want, "{name}");
    }
}

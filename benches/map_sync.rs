//! Benchmark (not a test): rows/s the map manager syncs, against the in-memory fake and — as root —
//! real pinned BPF maps. Run with `cargo bench --bench map_sync [-- SERVICES BACKENDS_PER_SERVICE]`.

use std::path::PathBuf;
use std::time::Instant;

use beeline::datapath::manager::fake::{FakeKernel, Faults};
use beeline::datapath::manager::kernel::KernelMap;
use beeline::datapath::manager::maps::{Lb4Backends, Lb4RevNat, Lb4Services, LB_GROUP};
use beeline::datapath::manager::{backend::MapBackend, ManagerOptions, MapDef, MapManager};
use beeline_common::lb::{Lb4Backend, Lb4BackendKey, Lb4Key, Lb4RevNatKey, Lb4ReverseNat, Lb4Service};

type Rows = (Vec<(Lb4BackendKey, Lb4Backend)>, Vec<(Lb4RevNatKey, Lb4ReverseNat)>, Vec<(Lb4Key, Lb4Service)>);

/// `services` services with `per_service` backends each; `generation` changes every backend port.
fn rows(services: u32, per_service: u32, generation: u16) -> Rows {
    let (mut b, mut r, mut s) = (Vec::new(), Vec::new(), Vec::new());
    for svc in 0..services {
        let vip = (0x0a60_0000 + svc).to_be();
        let rev = svc as u16 + 1;
        r.push((Lb4RevNatKey { rev_nat_index: rev }, Lb4ReverseNat { address: vip, port: 80u16.to_be(), pad: 0 }));
        let key = |slot: u16| Lb4Key {
            address: vip,
            dport: 80u16.to_be(),
            backend_slot: slot,
            proto: 6,
            ..Default::default()
        };
        s.push((key(0), Lb4Service { count: per_service as u16, rev_nat_index: rev, ..Default::default() }));
        for i in 0..per_service {
            let id = svc * per_service + i + 1;
            b.push((
                Lb4BackendKey { backend_id: id },
                Lb4Backend {
                    address: (0x0a01_0000 + id).to_be(),
                    port: (8000 + generation).to_be(),
                    proto: 6,
                    ..Default::default()
                },
            ));
            s.push((key(i as u16 + 1), Lb4Service { backend_id: id, rev_nat_index: rev, ..Default::default() }));
        }
    }
    (b, r, s)
}

fn bench<B, R, S>(label: &str, backends: B, revnat: R, services: S, n_services: u32, per_service: u32)
where
    B: MapBackend<<Lb4Backends as MapDef>::Key, <Lb4Backends as MapDef>::Value> + 'static,
    R: MapBackend<<Lb4RevNat as MapDef>::Key, <Lb4RevNat as MapDef>::Value> + 'static,
    S: MapBackend<<Lb4Services as MapDef>::Key, <Lb4Services as MapDef>::Value> + 'static,
{
    let manager = MapManager::new(ManagerOptions::default());
    let owner = manager.register_owner("bench");
    let mut group = manager.group(LB_GROUP.0, LB_GROUP.1);
    let tb = group.add::<Lb4Backends>(backends).expect("backends");
    let tr = group.add::<Lb4RevNat>(revnat).expect("revnat");
    let ts = group.add::<Lb4Services>(services).expect("services");
    let mut writer = group.build();
    owner.initial_pass_done();

    for (phase, generation) in [("initial", 0u16), ("update all", 1), ("delete all", u16::MAX)] {
        let (b, r, s) =
            if generation == u16::MAX { (vec![], vec![], vec![]) } else { rows(n_services, per_service, generation) };
        let changed = if generation == u16::MAX {
            tb.desired().len() + tr.desired().len() + ts.desired().len()
        } else if generation == 1 {
            b.len()
        } else {
            b.len() + r.len() + s.len()
        };
        let start = Instant::now();
        tb.replace_owner(&owner, b);
        tr.replace_owner(&owner, r);
        ts.replace_owner(&owner, s);
        let report = writer.sync_once(Instant::now());
        let took = start.elapsed();
        assert_eq!(report.failed_ops, 0, "{label}: {report:?}");
        println!(
            "{label:<7} {phase:<11} {changed:>8} rows in {:>8.1} ms = {:>10.0} rows/s",
            took.as_secs_f64() * 1e3,
            changed as f64 / took.as_secs_f64()
        );
    }
}

fn main() {
    let args: Vec<u32> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    // Under `cargo test` (no `--bench`): a smoke run with small counts.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let (default_services, default_per_service) = if smoke { (100, 4) } else { (1000, 10) };
    let n_services = args.first().copied().unwrap_or(default_services);
    let per_service = args.get(1).copied().unwrap_or(default_per_service);
    println!("map_sync: {n_services} services x {per_service} backends");

    let kernel = FakeKernel::new(Faults::None);
    bench(
        "fake",
        kernel.map(Lb4Backends::NAME),
        kernel.map(Lb4RevNat::NAME),
        kernel.map(Lb4Services::NAME),
        n_services,
        per_service,
    );

    if unsafe { libc::geteuid() } != 0 {
        println!("kernel  (not run: needs root for pinned BPF maps)");
        return;
    }
    let dir = PathBuf::from(format!("/sys/fs/bpf/beeline-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("pin dir");
    bench(
        "kernel",
        KernelMap::open_or_create::<Lb4Backends>(&dir).expect("backends map"),
        KernelMap::open_or_create::<Lb4RevNat>(&dir).expect("revnat map"),
        KernelMap::open_or_create::<Lb4Services>(&dir).expect("services map"),
        n_services,
        per_service,
    );
    let _ = std::fs::remove_dir_all(&dir);
}

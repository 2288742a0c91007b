//! (a) Programming: the services controller's pass (`ServicesSync::sync`: Services + EndpointSlices →
//! desired rows → the map manager's tables) and the LB group writer's pass into real pinned maps,
//! timed separately and together. Full program on empty maps, then incremental changes with N
//! present — each is one full controller pass, which is what the agent does on any change.

use std::path::Path;
use std::time::Instant;

use beeline::bench::fixtures::{Objects, Shape};
use beeline::bench::report::{ProgCell, ProgOp, BEELINE};
use beeline::config::LbAlgorithm;
use beeline::controllers::agent::services::ServicesSync;
use beeline::datapath::manager::kernel::KernelMap;
use beeline::datapath::manager::maps::{Lb4Backends, Lb4RevNat, Lb4Services};
use beeline::datapath::manager::writer::GroupWriter;
use beeline::datapath::manager::{backend::MapBackend, ManagerOptions, MapManager};
use beeline::services::{Inputs, ServicesConfig};

use crate::integration::BpffsDir;
use crate::Budget;

/// The agent's LB wiring (as `agent::lb::start` builds it) over the pinned maps in `pin_dir`,
/// driven by hand instead of by the watch loop and the writer task.
pub struct Programmer {
    sync: ServicesSync,
    writer: GroupWriter,
}

/// Seconds spent in one pass.
#[derive(Clone, Copy, Debug)]
pub struct PassTime {
    pub compute: f64,
    pub write: f64,
}

impl PassTime {
    pub fn total(&self) -> f64 {
        self.compute + self.write
    }
}

pub fn config() -> ServicesConfig {
    ServicesConfig {
        node_name: "bench-node".into(),
        extra_node_addresses: vec![],
        kube_proxy_replacement: true,
        node_port_range: (30000, 32767),
        lb_algorithm: LbAlgorithm::Random,
        service_proxy_name: None,
        maglev_table_size: beeline::services::frontends::DEFAULT_MAGLEV_TABLE_SIZE,
    }
}

impl Programmer {
    pub fn open(pin_dir: &Path) -> Result<Programmer, String> {
        let manager = MapManager::new(ManagerOptions::default());
        let owner = manager.register_owner("services");
        let (tables, writer) = beeline::agent::lb::open_tables(&manager, pin_dir)
            .map_err(|e| format!("opening the LB maps under {}: {e}", pin_dir.display()))?;
        Ok(Programmer { sync: ServicesSync::new(owner, tables, config()), writer })
    }

    /// One controller pass over `objects` and one writer pass; fails unless every write landed.
    pub fn pass(&mut self, objects: &Objects) -> Result<PassTime, String> {
        let inputs =
            Inputs { services: &objects.services, endpoint_slices: &objects.endpoint_slices, ..Default::default() };
        let t0 = Instant::now();
        let desired = self.sync.sync(&inputs);
        let t1 = Instant::now();
        let report = self.writer.sync_once(Instant::now());
        let t2 = Instant::now();
        if report.failed_ops > 0 || !self.writer.idle() {
            return Err(format!("map writer pass incomplete: {report:?}"));
        }
        if !desired.notes.is_empty() {
            return Err(format!("services core skipped something: {:?}", &desired.notes[..desired.notes.len().min(3)]));
        }
        Ok(PassTime { compute: (t1 - t0).as_secs_f64(), write: (t2 - t1).as_secs_f64() })
    }
}

/// Rows per map actually in the kernel (the check that the pass really programmed N services).
pub fn kernel_rows(pin_dir: &Path) -> Result<(usize, usize, usize), String> {
    let e = |x: &dyn std::fmt::Display| format!("reading back the LB maps: {x}");
    let services = KernelMap::open_pinned::<Lb4Services>(pin_dir).map_err(|x| e(&x))?.dump().map_err(|x| e(&x))?;
    let backends = KernelMap::open_pinned::<Lb4Backends>(pin_dir).map_err(|x| e(&x))?.dump().map_err(|x| e(&x))?;
    let rev_nat = KernelMap::open_pinned::<Lb4RevNat>(pin_dir).map_err(|x| e(&x))?.dump().map_err(|x| e(&x))?;
    Ok((services.len(), backends.len(), rev_nat.len()))
}

/// Full program of `n` × `b` (`reps` times, each into fresh maps), then `inc_reps` × (add one
/// service, move one backend) with the maps of the last repetition.
pub fn measure(n: u32, b: u32, reps: usize, inc_reps: usize, budget: &Budget) -> Result<Vec<ProgCell>, String> {
    eprintln!("(a) beeline: program {n} services × {b} backends ({reps} reps), then {inc_reps} incremental changes");
    let objects = Shape::new(n, b).objects();
    let (mut full, mut full_write) = (Vec::new(), Vec::new());
    let mut last = None;
    for _ in 0..reps.max(1) {
        budget.check("beeline programming")?;
        let bpffs = BpffsDir::new("svcbench-prog");
        let mut programmer = Programmer::open(&bpffs.pin_dir())?;
        let t = programmer.pass(&objects)?;
        full.push(t.total());
        full_write.push(t.write);
        last = Some((bpffs, programmer));
    }
    let (bpffs, mut programmer) = last.expect("at least one repetition");
    let want = (n as usize * (b as usize + 1), n as usize * b as usize, n as usize);
    let got = kernel_rows(&bpffs.pin_dir())?;
    if got != want {
        return Err(format!(
            "after the full program the kernel holds (services, backends, rev-NAT) = {got:?}, want {want:?}"
        ));
    }
    eprintln!("    full program: {:.1} ms (writes {:.1} ms); kernel rows {got:?}", full[0] * 1e3, full_write[0] * 1e3);

    let (mut add, mut add_w, mut moved, mut moved_w) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let target = n - 1;
    let mut done = 0u32;
    for r in 0..inc_reps as u32 {
        // A stop keeps the repetitions done so far.
        if budget.check("beeline incremental changes").is_err() {
            break;
        }
        // Built before the clock starts: the agent gets its objects from informers, ready-made.
        // The moved backend stays where the previous repetition left it: "add" adds one service only.
        let grown = Shape::new(n + r + 1, b).with_moved_backend(target, r % 2);
        let t = programmer.pass(&grown.objects())?;
        add.push(t.total());
        add_w.push(t.write);
        let t = programmer.pass(&grown.with_moved_backend(target, (r + 1) % 2).objects())?;
        moved.push(t.total());
        moved_w.push(t.write);
        done += 1;
    }
    let services = n + done;
    let want = (services as usize * (b as usize + 1), services as usize * b as usize, services as usize);
    let got = kernel_rows(&bpffs.pin_dir())?;
    if got != want {
        return Err(format!("after the incremental changes the kernel holds {got:?}, want {want:?}"));
    }
    drop(programmer);
    drop(bpffs);

    let cells = [
        (ProgOp::Full, &full),
        (ProgOp::Add1, &add),
        (ProgOp::Add1Tx, &add_w),
        (ProgOp::Backend, &moved),
        (ProgOp::BackendTx, &moved_w),
    ];
    Ok(cells.into_iter().filter_map(|(op, samples)| ProgCell::from_samples(BEELINE, n, op, samples)).collect())
}

//! The agent's conntrack GC against the real pinned conntrack map: a pass deletes exactly the
//! entries past their lifetime and reports the live ones. Root (loads the datapath).

mod integration;

use beeline::datapath::{ct_gc, lb_tables, Datapath};
use beeline_common::lb::{Ct4Entry, Ct4Tuple, Ct6Tuple, TUPLE_F_OUT, TUPLE_F_SERVICE};
use integration::{require_root, BpffsDir};

fn tuple(sport: u16, flags: u8) -> Ct4Tuple {
    Ct4Tuple {
        saddr: u32::from_be_bytes([10, 0, 1, 2]).to_be(),
        daddr: u32::from_be_bytes([10, 96, 0, 10]).to_be(),
        sport: sport.to_be(),
        dport: 80u16.to_be(),
        nexthdr: 6,
        flags,
        pad: 0,
    }
}

fn tuple6(sport: u16) -> Ct6Tuple {
    Ct6Tuple {
        saddr: "fd00:10:0:1::2".parse::<std::net::Ipv6Addr>().unwrap().octets(),
        daddr: "fd00:10:96::a".parse::<std::net::Ipv6Addr>().unwrap().octets(),
        sport: sport.to_be(),
        dport: 80u16.to_be(),
        nexthdr: 6,
        flags: TUPLE_F_OUT,
        pad: 0,
    }
}

#[test]
fn a_gc_pass_deletes_expired_entries_and_keeps_live_ones() {
    require_root();
    let bpffs = BpffsDir::new("ctgc");
    let pin_dir = bpffs.pin_dir();
    let _datapath = Datapath::load(&pin_dir).expect("load the datapath");
    let now = lb_tables::monotonic_secs() as u32;
    let planted = [
        (tuple(40001, TUPLE_F_SERVICE), now.saturating_sub(5)), // expired
        (tuple(40001, TUPLE_F_OUT), now.saturating_sub(1)),     // expired
        (tuple(40002, TUPLE_F_SERVICE), now + 3600),            // live
        (tuple(40002, TUPLE_F_OUT), now + 3600),                // live
    ];
    for (key, lifetime) in &planted {
        lb_tables::upsert_ct(&pin_dir, key, &Ct4Entry { lifetime: *lifetime, packets: 1, ..Default::default() })
            .unwrap();
    }

    // The IPv6 table is collected in the same pass.
    for (sport, lifetime) in [(40003, now.saturating_sub(2)), (40004, now + 3600)] {
        lb_tables::upsert_ct6(&pin_dir, &tuple6(sport), &Ct4Entry { lifetime, packets: 1, ..Default::default() })
            .unwrap();
    }

    let stats = ct_gc::collect(&pin_dir).expect("GC pass");
    assert_eq!((stats.deleted, stats.alive), (3, 3), "{stats:?}");
    assert!(stats.capacity > 0, "the pass knows the map's capacity: {stats:?}");
    let mut left: Vec<u16> = lb_tables::list_ct(&pin_dir).unwrap().iter().map(|(t, _)| u16::from_be(t.sport)).collect();
    left.sort_unstable();
    assert_eq!(left, [40002, 40002], "only the live flow's two entries remain");
    let left6: Vec<u16> = lb_tables::list_ct6(&pin_dir).unwrap().iter().map(|(t, _)| u16::from_be(t.sport)).collect();
    assert_eq!(left6, [40004], "only the live IPv6 entry remains");

    let again = ct_gc::collect(&pin_dir).unwrap();
    assert_eq!((again.deleted, again.alive), (0, 3), "a second pass finds nothing more to delete");
}

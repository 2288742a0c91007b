//! In-memory maps with deterministic fault injection and a call log shared by every map of one
//! [`FakeKernel`], so tests can assert the order of writes across maps.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::backend::{BackendError, MapBackend};

/// A call as the fake kernel saw it (after fault injection decided it; failed calls are logged too).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    pub map: &'static str,
    pub op: CallOp,
    /// `Debug` rendering of the key (empty for dumps).
    pub key: String,
    pub ok: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallOp {
    Upsert,
    Delete,
    Dump,
}

/// Which calls fail.
#[derive(Clone, Debug, Default)]
pub enum Faults {
    #[default]
    None,
    /// Fail exactly these call numbers (1-based, counted across every map of the kernel).
    Calls(Vec<u64>),
    /// Fail each call with probability `per_mille / 1000`, from a seeded generator (reproducible).
    Fraction { per_mille: u32, seed: u64 },
}

#[derive(Default)]
struct KernelState {
    calls: u64,
    faults: Faults,
    rng: u64,
    log: Vec<Call>,
    maps: BTreeMap<&'static str, Box<dyn std::any::Any + Send>>,
}

impl KernelState {
    fn fails(&mut self) -> Option<u64> {
        self.calls += 1;
        let call = self.calls;
        let fail = match &self.faults {
            Faults::None => false,
            Faults::Calls(list) => list.contains(&call),
            Faults::Fraction { per_mille, .. } => {
                // splitmix64: tiny, deterministic, good enough to spread faults.
                self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = self.rng;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^= z >> 31;
                z % 1000 < u64::from(*per_mille)
            }
        };
        fail.then_some(call)
    }
}

/// A set of fake maps sharing one call counter, fault plan and call log.
#[derive(Clone, Default)]
pub struct FakeKernel {
    state: Arc<Mutex<KernelState>>,
}

impl FakeKernel {
    pub fn new(faults: Faults) -> Self {
        let rng = match faults {
            Faults::Fraction { seed, .. } => seed,
            _ => 0,
        };
        Self { state: Arc::new(Mutex::new(KernelState { faults, rng, ..Default::default() })) }
    }

    /// Replaces the fault plan (e.g. stop failing so a test can converge).
    pub fn set_faults(&self, faults: Faults) {
        let mut s = self.state.lock().unwrap();
        if let Faults::Fraction { seed, .. } = faults {
            s.rng = seed;
        }
        s.faults = faults;
    }

    /// A handle to the map `name`; handles to the same name share contents.
    pub fn map<K, V>(&self, name: &'static str) -> FakeMap<K, V>
    where
        K: Ord + Clone + std::fmt::Debug + Send + 'static,
        V: Clone + Send + 'static,
    {
        self.state
            .lock()
            .unwrap()
            .maps
            .entry(name)
            .or_insert_with(|| Box::new(BTreeMap::<K, V>::new()) as Box<dyn std::any::Any + Send>);
        FakeMap { name, kernel: self.clone(), _types: std::marker::PhantomData }
    }

    /// The call log so far.
    pub fn log(&self) -> Vec<Call> {
        self.state.lock().unwrap().log.clone()
    }

    pub fn clear_log(&self) {
        self.state.lock().unwrap().log.clear();
    }

    /// The contents of map `name` (no fault injection, not logged).
    pub fn contents<K: Ord + Clone + 'static, V: Clone + 'static>(&self, name: &'static str) -> BTreeMap<K, V> {
        let s = self.state.lock().unwrap();
        s.maps.get(name).and_then(|m| m.downcast_ref::<BTreeMap<K, V>>()).cloned().unwrap_or_default()
    }

    /// Writes `key` directly, bypassing the manager (to simulate drift or another writer).
    pub fn poke<K: Ord + 'static, V: 'static>(&self, name: &'static str, key: K, value: Option<V>) {
        let mut s = self.state.lock().unwrap();
        let map = s.maps.get_mut(name).and_then(|m| m.downcast_mut::<BTreeMap<K, V>>()).expect("map exists");
        match value {
            Some(v) => map.insert(key, v),
            None => map.remove(&key),
        };
    }
}

/// One fake map.
pub struct FakeMap<K, V> {
    name: &'static str,
    kernel: FakeKernel,
    _types: std::marker::PhantomData<fn() -> (K, V)>,
}

impl<K, V> FakeMap<K, V>
where
    K: Ord + Clone + std::fmt::Debug + Send + 'static,
    V: Clone + Send + 'static,
{
    fn call<R>(
        &self,
        op: CallOp,
        key: Option<&K>,
        f: impl FnOnce(&mut BTreeMap<K, V>) -> R,
    ) -> Result<R, BackendError> {
        let mut s = self.kernel.state.lock().unwrap();
        let failed = s.fails();
        s.log.push(Call {
            map: self.name,
            op,
            key: key.map(|k| format!("{k:?}")).unwrap_or_default(),
            ok: failed.is_none(),
        });
        if let Some(call) = failed {
            return Err(BackendError::Injected { map: self.name.to_string(), call });
        }
        let map = s.maps.get_mut(self.name).and_then(|m| m.downcast_mut::<BTreeMap<K, V>>()).expect("typed map");
        Ok(f(map))
    }
}

impl<K, V> MapBackend<K, V> for FakeMap<K, V>
where
    K: Ord + Clone + std::fmt::Debug + Send + 'static,
    V: Clone + Send + 'static,
{
    fn upsert(&mut self, key: &K, value: &V) -> Result<(), BackendError> {
        self.call(CallOp::Upsert, Some(key), |m| {
            m.insert(key.clone(), value.clone());
        })
    }

    fn delete(&mut self, key: &K) -> Result<(), BackendError> {
        self.call(CallOp::Delete, Some(key), |m| {
            m.remove(key);
        })
    }

    fn dump(&mut self) -> Result<Vec<(K, V)>, BackendError> {
        self.call(CallOp::Dump, None, |m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nth_call_faults_are_exact_and_logged() {
        let kernel = FakeKernel::new(Faults::Calls(vec![2]));
        let mut m = kernel.map::<u32, u32>("m");
        assert!(m.upsert(&1, &1).is_ok());
        assert_eq!(m.upsert(&2, &2), Err(BackendError::Injected { map: "m".into(), call: 2 }));
        assert!(m.upsert(&2, &2).is_ok());
        assert_eq!(kernel.contents::<u32, u32>("m").len(), 2);
        let oks: Vec<bool> = kernel.log().iter().map(|c| c.ok).collect();
        assert_eq!(oks, vec![true, false, true]);
    }

    #[test]
    fn fractional_faults_are_reproducible_and_near_the_rate() {
        let run = |seed| {
            let kernel = FakeKernel::new(Faults::Fraction { per_mille: 100, seed });
            let mut m = kernel.map::<u32, u32>("m");
            (0..2000).map(|i| m.upsert(&i, &i).is_err()).collect::<Vec<_>>()
        };
        let a = run(7);
        assert_eq!(a, run(7), "same seed, same faults");
        assert_ne!(a, run(8), "different seed, different faults");
        let failures = a.iter().filter(|f| **f).count();
        assert!((120..=280).contains(&failures), "about 10% of 2000 calls should fail, got {failures}");
    }
}

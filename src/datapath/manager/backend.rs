//! The storage a writer syncs into: a pinned kernel map ([`super::kernel::KernelMap`]) or the
//! in-memory fake ([`super::fake::FakeMap`]). Calls are synchronous: BPF map syscalls do not block.

/// Why a backend call failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum BackendError {
    #[error("map {map}: {op} failed: {message}")]
    Syscall { map: String, op: &'static str, message: String },
    #[error("map {map}: injected fault on call #{call}")]
    Injected { map: String, call: u64 },
}

/// One BPF map, typed.
pub trait MapBackend<K, V>: Send {
    /// Inserts or overwrites `key`.
    fn upsert(&mut self, key: &K, value: &V) -> Result<(), BackendError>;
    /// Deletes `key`; deleting a missing key succeeds.
    fn delete(&mut self, key: &K) -> Result<(), BackendError>;
    /// Every entry currently in the map.
    fn dump(&mut self) -> Result<Vec<(K, V)>, BackendError>;
}

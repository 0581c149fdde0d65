//! The device registry as the gateway sees it: a short-lived cache in front of the store.
//!
//! The edge asks it whether a device may connect; the ingest pipeline asks it which patient a
//! device's readings belong to. Entries live `ttl`, so a revoked or reassigned device is seen
//! within that time without a store round trip per message.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use store::{DeviceAuth, Store};

/// Cached view of the devices table.
#[derive(Debug)]
pub(crate) struct Registry {
    store: Store,
    ttl: Duration,
    entries: Mutex<HashMap<String, (Option<DeviceAuth>, Instant)>>,
}

impl Registry {
    /// A registry reading through to `store`.
    pub(crate) fn new(store: Store, ttl: Duration) -> Self {
        Registry {
            store,
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The device's registry entry, `None` if it is not provisioned.
    pub(crate) async fn lookup(
        &self,
        device_id: &str,
    ) -> Result<Option<DeviceAuth>, store::StoreError> {
        if let Some(hit) = self.cached(device_id) {
            return Ok(hit);
        }
        let fresh = self.store.device_auth(device_id).await?;
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() > 200_000 {
            // Bounded memory against a flood of unknown ids: start over rather than grow.
            entries.clear();
        }
        entries.insert(device_id.to_owned(), (fresh.clone(), Instant::now()));
        Ok(fresh)
    }

    /// Forgets a device's cached entry, so its next lookup reads the store (e.g. revoked).
    pub(crate) fn invalidate(&self, device_id: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.remove(device_id);
    }

    fn cached(&self, device_id: &str) -> Option<Option<DeviceAuth>> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let (entry, at) = entries.get(device_id)?;
        (at.elapsed() < self.ttl).then(|| entry.clone())
    }
}

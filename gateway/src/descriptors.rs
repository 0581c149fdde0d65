//! The process's file-descriptor budget and the edge's share of it.
//!
//! Every device connection costs one descriptor, the device's socket: the edge talks to
//! rumqttd's router through an in-process link, not a loopback connection. The API's
//! connections and the store's pool draw on the same limit (`RLIMIT_NOFILE`), so the edge may
//! hold at most `limit − API share − store pool − reserve` devices. At start the soft limit is raised
//! to the hard one (which an unprivileged process cannot exceed) and `max_connections` is
//! derived from it, or checked against it when configured: a configuration that would let
//! devices exhaust descriptors the API and the store need is refused at start.

use std::fmt;

/// Descriptors one device connection holds.
pub const PER_DEVICE: usize = 1;

/// Descriptors kept spare for everything else: listeners, the database files of migrations,
/// TLS and configuration files, logs.
pub const RESERVE: usize = 256;

/// How the process's descriptors are shared out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DescriptorBudget {
    /// The process's open-files limit (after raising the soft limit to the hard one).
    pub limit: u64,
    /// Descriptors the API's connections may hold.
    pub api: usize,
    /// Descriptors the store's pool may hold.
    pub store: usize,
    /// Descriptors kept spare ([`RESERVE`]).
    pub reserve: usize,
}

impl DescriptorBudget {
    /// Raises the soft open-files limit to the hard one and builds the budget on it.
    pub fn of_process(api: usize, store: usize) -> Self {
        let limit = match rlimit::increase_nofile_limit(u64::MAX) {
            Ok(limit) => limit,
            Err(e) => {
                tracing::warn!(error = %e, "could not raise the open-files limit; using the current one");
                rlimit::getrlimit(rlimit::Resource::NOFILE)
                    .map(|(soft, _)| soft)
                    .unwrap_or(1024)
            }
        };
        DescriptorBudget {
            limit,
            api,
            store,
            reserve: RESERVE,
        }
    }

    /// The most device connections the budget allows.
    pub fn device_connections(&self) -> usize {
        let limit = usize::try_from(self.limit).unwrap_or(usize::MAX);
        limit.saturating_sub(self.api + self.store + self.reserve) / PER_DEVICE
    }

    /// The edge's connection limit: `configured`, if the budget allows it, else the budget's.
    pub fn resolve(&self, configured: Option<usize>) -> Result<usize, String> {
        let most = self.device_connections();
        if most == 0 {
            return Err(format!(
                "{self}: no descriptors left for device connections; raise the hard limit \
                 (e.g. LimitNOFILE= in the systemd unit, or ulimit -Hn)"
            ));
        }
        match configured {
            None => Ok(most),
            Some(0) => Err("[gateway] max_connections must be at least 1".into()),
            Some(n) if n > most => Err(format!(
                "[gateway] max_connections = {n} needs {} descriptors ({PER_DEVICE} per device: \
                 its socket), but {self}, \
                 which leaves room for at most {most} device connections. Lower \
                 max_connections (or leave it unset to get {most}), or raise the hard limit \
                 (e.g. LimitNOFILE= in the systemd unit)",
                n.saturating_mul(PER_DEVICE)
            )),
            Some(n) => Ok(n),
        }
    }
}

impl fmt::Display for DescriptorBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the process may open {} descriptors (RLIMIT_NOFILE), of which {} are for API \
             connections, {} for the store's pool and {} kept spare",
            self.limit, self.api, self.store, self.reserve
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_leaves_room_for_the_api_and_the_store() {
        let budget = DescriptorBudget {
            limit: 20_000,
            api: 1024,
            store: 16,
            reserve: RESERVE,
        };
        // One descriptor per device: 18,704 devices under this machine's 20,000.
        assert_eq!(budget.device_connections(), 20_000 - 1024 - 16 - 256);
        assert_eq!(budget.resolve(None), Ok(18_704));
        assert_eq!(budget.resolve(Some(18_000)), Ok(18_000));
        let err = budget.resolve(Some(20_000)).unwrap_err();
        assert!(err.contains("at most 18704"), "{err}");
        assert!(err.contains("20000 descriptors"), "{err}");
        assert!(budget.resolve(Some(0)).is_err());
        let tiny = DescriptorBudget {
            limit: 1000,
            ..budget
        };
        assert!(tiny.resolve(None).is_err());
    }
}

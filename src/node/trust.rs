//! The node's release trust policy, from `[trust]` (or `--trust` keys for `outpost serve`).
//!
//! Owns: reading the configured keys (key lines, or `.pub` files) and tenant key ids into a
//! `bundle::sign::TrustPolicy`, with errors that name the config key.
//! Must not: decide trust itself (that is `bundle::sign::trust`).

use std::collections::BTreeMap;

use anyhow::{Context, anyhow};

use crate::bundle::sign::{self, TrustPolicy};
use crate::ops::process::ExitError;

/// Builds a trust policy from `--trust` values: key lines or key files.
pub fn trust_policy(
    keys: &[(String, String)],
    threshold: usize,
    tenants: BTreeMap<String, Vec<String>>,
) -> anyhow::Result<TrustPolicy> {
    let mut parsed = Vec::with_capacity(keys.len());
    for (label, k) in keys {
        let text = crate::base::keyline::read_text(k).map_err(|e| anyhow!("{label}: {e}"))?;
        parsed.push(sign::parse_public_key(&text).with_context(|| format!("{label}: {k}"))?);
    }
    let mut policy = TrustPolicy::new(parsed)?.with_threshold(threshold)?;
    for (tenant, ids) in tenants {
        let ids = ids
            .iter()
            .map(|id| {
                id.parse::<sign::KeyId>()
                    .map_err(|e| anyhow!("tenants.{tenant}: {id:?}: {e}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        policy = policy.with_tenant_keys(&tenant, ids)?;
    }
    Ok(policy)
}

/// The node's trust policy from `[trust]`.
pub fn node_trust_policy(cfg: &crate::ops::config::Config) -> Result<TrustPolicy, ExitError> {
    trust_policy(
        &cfg.trust.keys,
        cfg.trust.threshold,
        cfg.trust.tenants.clone(),
    )
    .map_err(|e| ExitError::config(anyhow!("{}: trust.{e:#}", cfg.origin())))
}

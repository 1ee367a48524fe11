//! Fleet mode: `replaymig migrate SERVICE --to NODE` asked at any node.
//! A node that does not own the service hands the request to the owner
//! the registry names, over an authenticated peer link, and relays its
//! report or error; the owner runs the migration as if asked locally.

use crate::context::NodeShared;
use crate::{Method, MigrationReport};
use anyhow::{bail, Context, Result};
use replaymig_peer::{Message, PeerLink};
use std::time::Duration;

/// Bound on a forwarded migration, end to end (a catch-up alone may take
/// two minutes).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(600);

/// Whether a migration of `service` asked here goes to another node: fleet
/// mode, and this node does not own it.
pub(crate) async fn owner_elsewhere(node: &NodeShared, service: &str) -> Option<String> {
    node.fleet.as_ref()?;
    let host = node.services.get(service)?;
    let owner = host.state.lock().await.owner.clone();
    (owner != node.config.name).then_some(owner)
}

/// Asks `owner` to migrate `service` to `to`; its report.
pub(crate) async fn forward(
    node: &NodeShared,
    owner: &str,
    service: &str,
    to: &str,
    method: Method,
    unverified: bool,
) -> Result<MigrationReport> {
    let addr = node.peer_addr(owner)?;
    let mut link = PeerLink::connect(addr, &node.auth)
        .await
        .with_context(|| format!("cannot reach {owner}, which owns {service}"))?;
    link.send(Message::MigrateRequest {
        service: service.to_string(),
        to: to.to_string(),
        method: serde_json::to_vec(&method)?,
        unverified,
    })
    .await?;
    let answer = link.recv_timeout(FORWARD_TIMEOUT).await.with_context(|| {
        format!(
            "no answer from {owner}, which runs the migration: it may still be running there, \
             or settling its outcome with the registry — `replaymig status --fleet` says who \
             owns {service} now"
        )
    })?;
    match answer {
        Message::MigrateResult {
            report: Some(report),
            ..
        } => Ok(serde_json::from_slice(&report).context("a malformed report")?),
        Message::MigrateResult {
            error: Some(error), ..
        } => bail!("{owner} (the owner) ran the migration: {error}"),
        other => bail!("{owner} answered {} to a migration request", other.name()),
    }
}

/// Runs a migration another node forwarded here and answers with its
/// outcome.
pub(crate) async fn serve(
    node: &NodeShared,
    mut link: PeerLink,
    service: String,
    to: String,
    method: Vec<u8>,
    unverified: bool,
) -> Result<()> {
    if node.fleet.is_none() {
        bail!("a forwarded migration outside fleet mode");
    }
    let outcome = match serde_json::from_slice::<Method>(&method) {
        Ok(method) => {
            crate::source::migrate_out(node, &service, &to, method, unverified, &|_| {}).await
        }
        Err(e) => Err(anyhow::anyhow!("malformed method: {e}")),
    };
    let answer = match outcome {
        Ok(report) => Message::MigrateResult {
            report: Some(serde_json::to_vec(&report)?),
            error: None,
        },
        Err(e) => Message::MigrateResult {
            report: None,
            error: Some(format!("{e:#}")),
        },
    };
    link.send(answer).await?;
    Ok(())
}

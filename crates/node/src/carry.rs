//! CRIU carrying the client connections (`carry_connections`): the
//! source hands the socket holder a copy of the proxy's end of every
//! service connection for the length of the dump, so the image holds both
//! ends; the destination takes the restored proxy ends from the restored
//! holder and continues each connection on its own socket
//! (`replaymig_snapshot::holder` has the mechanism).

use crate::context::ServiceHost;
use anyhow::{bail, Context, Result};
use replaymig_journal::ConnId;
use replaymig_snapshot::{holder, Driver, Placeholders};
use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

/// The dump of a snapshot that carries the connections, under `hold`
/// (the gate is held, so the set of connections and their input is
/// fixed): copies to the holder, the dump, the copies let go again —
/// whatever the dump did — and the check that no answer bytes were read
/// meanwhile (the proxy's `carry` module says why that would make the
/// image ambiguous). Returns how many connections the image carries.
pub(crate) async fn dump_carrying(
    host: &ServiceHost,
    hold: &replaymig_proxy::Quiesced,
    driver: &Driver,
    dir: &Path,
    vars: &Placeholders,
) -> Result<usize> {
    let service = host.config.name.clone();
    let sockets = host
        .proxy
        .service_sockets(hold)
        .await
        .context("cannot copy the proxy's service connections for the dump")?;
    let count = sockets.len();
    let name = service.clone();
    let held = tokio::task::spawn_blocking(move || {
        let conns: Vec<_> = sockets.iter().map(|(c, fd)| (*c, fd.as_fd())).collect();
        holder::hold(&name, &conns)
    })
    .await?;
    let result = match held {
        Ok(n) if n == count => driver.fix_point(dir, vars).await.map_err(Into::into),
        Ok(n) => Err(anyhow::anyhow!(
            "the socket holder holds {n} connections, {count} were handed to it"
        )),
        Err(e) => Err(anyhow::Error::from(e).context("cannot hand the connections to the holder")),
    };
    let name = service.clone();
    let released = tokio::task::spawn_blocking(move || holder::release(&name)).await?;
    result?;
    // Not let go: a connection the proxy closes stays open for the
    // service until the holder is stopped.
    released.context("the socket holder did not let the dumped connections go")?;
    let moved = host.proxy.answers_moved(hold);
    if !moved.is_empty() {
        bail!(
            "answer bytes arrived on {} connection(s) ({}) while the service was dumped: where \
             their answers resume in the image is unknown, so the snapshot is refused",
            moved.len(),
            moved
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    tracing::info!(
        connections = count,
        "the dump carries the client connections"
    );
    Ok(count)
}

/// The restored proxy ends, by connection, from the holder restored with
/// the service.
pub(crate) async fn take_restored(service: &str) -> Result<BTreeMap<ConnId, OwnedFd>> {
    let name = service.to_string();
    tokio::task::spawn_blocking(move || holder::take(&name))
        .await?
        .context("cannot take the restored connections from the socket holder")
}

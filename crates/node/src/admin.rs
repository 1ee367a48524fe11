//! The admin endpoint (loopback): one JSON request per line, JSON lines
//! back. `{"migrate": {"service": "redis", "to": "b"}}` (optionally with
//! `"method": {"iterative": {"dirty_threshold_bytes_per_second": N,
//! "max_iterations": N}}`) streams
//! `{"phase": "..."}` lines and ends with `{"report": {...}}` or
//! `{"error": "..."}`; `{"status": {}}` answers `{"services": [...]}`;
//! `{"fleet": {}}` answers `{"fleet": {"nodes": [...], "services": [...]}}`
//! in fleet mode.
//!
//! Who may ask: without an admin token, only loopback peers (anyone else
//! gets an error line and nothing done); with one (`admin_token_file`),
//! any peer whose request carries `"token": "..."` equal to it (compared
//! in constant time). Refusals are logged and counted
//! (`replaymig_admin_refused_total{reason}`).

use crate::context::{status, NodeShared};
use crate::listener::{self, Limits};
use metrics::counter;
use serde::Deserialize;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// One admin request.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// Move a service away from this node.
    Migrate {
        /// The service.
        service: String,
        /// The destination node.
        to: String,
        /// How (default: replay).
        #[serde(default)]
        method: crate::Method,
        /// Migrate by replay even though the service's answers are not
        /// journaled (nothing to check the replay against).
        #[serde(default)]
        unverified: bool,
    },
    /// Report services, owners, epochs, journal heads.
    Status {},
    /// Fleet mode: the registry's nodes and services (see
    /// `FleetStatus`).
    Fleet {},
}

/// The admin listener: one request per connection (see `listener` for the
/// bound, backoff and drain; a connection that has not sent its request
/// when the node shuts down is dropped).
pub(crate) async fn serve(
    listener: TcpListener,
    limits: Limits,
    node: Arc<NodeShared>,
    stop: CancellationToken,
) {
    listener::serve(listener, limits, stop, move |stream, peer, stop| {
        handle(stream, peer, node.clone(), stop)
    })
    .await;
}

/// Longest admin request line read (a request is a few hundred bytes).
const MAX_REQUEST_BYTES: u64 = 64 * 1024;

/// Why an admin request was refused (the metric's `reason`).
fn refuse(reason: &'static str, peer: SocketAddr, detail: &str) -> serde_json::Value {
    counter!(crate::telemetry::ADMIN_REFUSED_TOTAL, "reason" => reason).increment(1);
    tracing::warn!(%peer, reason, "admin request refused: {detail}");
    json!({ "error": format!("admin request refused: {detail}") })
}

/// The request, if `line` is one this peer may make.
fn authorize(
    line: &str,
    peer: SocketAddr,
    token: Option<&replaymig_peer::Secret>,
) -> Result<Request, serde_json::Value> {
    if token.is_none() && !peer.ip().is_loopback() {
        return Err(refuse(
            "not_loopback",
            peer,
            "this node serves admin requests from loopback only (configure admin_token_file)",
        ));
    }
    let mut value: serde_json::Value = serde_json::from_str(line)
        .map_err(|e| refuse("malformed", peer, &format!("bad request: {e}")))?;
    let given = value
        .as_object_mut()
        .and_then(|o| o.remove("token"))
        .and_then(|t| t.as_str().map(str::to_string));
    if let Some(token) = token {
        let ok = given
            .as_deref()
            .is_some_and(|g| token.matches(g.as_bytes()));
        if !ok {
            return Err(refuse("bad_token", peer, "missing or wrong admin token"));
        }
    }
    serde_json::from_value(value)
        .map_err(|e| refuse("malformed", peer, &format!("bad request: {e}")))
}

async fn handle(
    stream: TcpStream,
    peer: SocketAddr,
    node: Arc<NodeShared>,
    stop: CancellationToken,
) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read.take(MAX_REQUEST_BYTES)).lines();
    let line = tokio::select! {
        line = lines.next_line() => line,
        _ = stop.cancelled() => return,
    };
    let Ok(Some(line)) = line else {
        return;
    };
    let request = match authorize(&line, peer, node.admin_token.as_ref()) {
        Ok(r) => r,
        Err(answer) => {
            let _ = write.write_all(format!("{answer}\n").as_bytes()).await;
            return;
        }
    };
    match request {
        Request::Status {} => {
            let body = json!({"services": status(&node).await});
            let _ = write.write_all(format!("{body}\n").as_bytes()).await;
        }
        Request::Fleet {} => {
            let body = match crate::fleet_view::status(&node).await {
                Some(fleet) => json!({ "fleet": fleet }),
                None => {
                    json!({ "error": "this node is not in fleet mode (no [fleet] in its configuration)" })
                }
            };
            let _ = write.write_all(format!("{body}\n").as_bytes()).await;
        }
        Request::Migrate {
            service,
            to,
            method,
            unverified,
        } => {
            if let Some(owner) = crate::forward::owner_elsewhere(&node, &service).await {
                let note = json!({ "forwarded": owner });
                let _ = write.write_all(format!("{note}\n").as_bytes()).await;
                let last =
                    match crate::forward::forward(&node, &owner, &service, &to, method, unverified)
                        .await
                    {
                        Ok(report) => json!({ "report": report }),
                        Err(e) => json!({ "error": format!("{e:#}") }),
                    };
                let _ = write.write_all(format!("{last}\n").as_bytes()).await;
                return;
            }
            let (tx, mut rx) = mpsc::unbounded_channel();
            let progress = move |event: crate::Progress| {
                let line = match event {
                    crate::Progress::Phase(phase) => json!({ "phase": phase }),
                    shipping => json!({ "progress": shipping }),
                };
                let _ = tx.send(line);
            };
            let run =
                crate::source::migrate_out(&node, &service, &to, method, unverified, &progress);
            tokio::pin!(run);
            let outcome = loop {
                tokio::select! {
                    outcome = &mut run => break outcome,
                    Some(line) = rx.recv() => {
                        let _ = write.write_all(format!("{line}\n").as_bytes()).await;
                    }
                }
            };
            while let Ok(line) = rx.try_recv() {
                let _ = write.write_all(format!("{line}\n").as_bytes()).await;
            }
            let last = match outcome {
                Ok(report) => json!({ "report": report }),
                Err(e) => json!({ "error": format!("{e:#}") }),
            };
            let _ = write.write_all(format!("{last}\n").as_bytes()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn loopback_only_without_a_token_and_the_token_everywhere_with_one() {
        let status = r#"{"status": {}}"#;
        let here = addr("127.0.0.1:5000");
        let there = addr("10.0.0.9:5000");
        assert!(authorize(status, here, None).is_ok());
        let refused = authorize(status, there, None).unwrap_err();
        assert!(refused["error"].as_str().unwrap().contains("loopback only"));

        let token = replaymig_peer::Secret::new("admin-token-0123456789").unwrap();
        for peer in [here, there] {
            assert!(authorize(status, peer, Some(&token)).is_err(), "no token");
            let wrong = r#"{"status": {}, "token": "admin-token-0123456780"}"#;
            assert!(authorize(wrong, peer, Some(&token)).is_err(), "wrong token");
            let right = r#"{"status": {}, "token": "admin-token-0123456789"}"#;
            assert!(matches!(
                authorize(right, peer, Some(&token)),
                Ok(Request::Status {})
            ));
        }
        assert!(authorize("not json", here, None).is_err());
        assert!(authorize(r#"{"reboot": {}}"#, here, None).is_err());
    }
}

//! The admin endpoint (loopback): one JSON request per line, JSON lines
//! back. `{"migrate": {"service": "redis", "to": "b"}}` (optionally with
//! `"method": {"iterative": {"dirty_threshold_bytes_per_second": N,
//! "max_iterations": N}}`) streams
//! `{"phase": "..."}` lines and ends with `{"report": {...}}` or
//! `{"error": "..."}`; `{"status": {}}` answers `{"services": [...]}`.

use crate::migration;
use crate::node::{status, NodeShared};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
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
    },
    /// Report services, owners, epochs, journal heads.
    Status {},
}

pub(crate) async fn serve(listener: TcpListener, node: Arc<NodeShared>, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        if let Ok((stream, _)) = accepted {
            tokio::spawn(handle(stream, node.clone()));
        }
    }
}

async fn handle(stream: TcpStream, node: Arc<NodeShared>) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let Ok(Some(line)) = lines.next_line().await else {
        return;
    };
    let request: Request = match serde_json::from_str(&line) {
        Ok(r) => r,
        Err(e) => {
            let _ = write
                .write_all(
                    format!("{}\n", json!({"error": format!("bad request: {e}")})).as_bytes(),
                )
                .await;
            return;
        }
    };
    match request {
        Request::Status {} => {
            let body = json!({"services": status(&node).await});
            let _ = write.write_all(format!("{body}\n").as_bytes()).await;
        }
        Request::Migrate {
            service,
            to,
            method,
        } => {
            let (tx, mut rx) = mpsc::unbounded_channel();
            let progress = move |event: crate::Progress| {
                let line = match event {
                    crate::Progress::Phase(phase) => json!({ "phase": phase }),
                    shipping => json!({ "progress": shipping }),
                };
                let _ = tx.send(line);
            };
            let run = migration::migrate_out(&node, &service, &to, method, &progress);
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

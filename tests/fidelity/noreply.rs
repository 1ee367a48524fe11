//! Suite k: memcached (`-t 1`, driver `none`) with requests that get no
//! answer — `noreply` writers, and 768 KiB values sent slowly in pieces —
//! next to a shared counter. Such connections never look answered, so a
//! barrier that only waited would never go quiet; it closes them once
//! everything else is quiet (`close_connections`) and the writers
//! reconnect. The oracle: a `noreply` write confirmed by a later answered
//! `mn` (meta no-op) on its connection must be in the final state, and
//! the final value of every key is one its writer sent, no older than the
//! last confirmed one. (Slowly sent large values are suite j's, on Redis:
//! here, with driver `none` replaying the whole history settled, they
//! kept the replay from catching up until the load ended.)

use super::*;

/// What one suite-k client saw.
#[derive(Debug, Default)]
pub(crate) struct NoreplyLog {
    pub(super) name: String,
    /// Per key: the last sequence number sent, and the last confirmed.
    writes: BTreeMap<String, (u64, u64)>,
    /// incr answers of the shared counter.
    incrs: Vec<i64>,
    closes: u64,
    pub(super) errors: Vec<String>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum NoreplyRole {
    /// `set … noreply` to its 4 keys, an `mn` every 8 writes.
    Writer,
    /// `incr` of the shared counter (answered).
    Incr,
}

const K_COUNTER: &str = "k:counter";
const MAX_CLOSES: u64 = 20;

pub(crate) fn noreply_client(
    name: &str,
    role: NoreplyRole,
    addr: SocketAddr,
    ctl: &Control,
) -> JoinHandle<NoreplyLog> {
    spawn_client(name, ctl, move |log, ctl| {
        noreply_session(log, role, addr, ctl)
    })
}

fn noreply_session(
    log: &mut NoreplyLog,
    role: NoreplyRole,
    addr: SocketAddr,
    ctl: &Control,
) -> Result<(), String> {
    let mut conn: Option<LineConn> = None;
    let mut n = 0u64;
    // Writes sent on the current connection since its last `mn` answer.
    let mut unconfirmed: Vec<(String, u64)> = Vec::new();
    while ctl.go(n) {
        n += 1;
        if conn.is_none() {
            conn = Some(LineConn::connect(addr)?);
            unconfirmed.clear();
        }
        let c = conn.as_mut().expect("connected");
        let exchange: Result<(), String> = match role {
            NoreplyRole::Writer => {
                let key = format!("k:{}:{}", log.name, n % 4);
                let value = n.to_string();
                let sent = c.send(
                    format!("set {key} 0 0 {} noreply\r\n{value}\r\n", value.len()).as_bytes(),
                );
                if sent.is_ok() {
                    log.writes.entry(key.clone()).or_default().0 = n;
                    unconfirmed.push((key, n));
                }
                let confirmed = sent.and_then(|()| {
                    if !n.is_multiple_of(8) {
                        return Ok(());
                    }
                    c.send(b"mn\r\n")?;
                    match c.line()?.as_str() {
                        "MN" => Ok(()),
                        other => Err(format!("PROTOCOL: mn answered {other:?}")),
                    }
                });
                if confirmed.is_ok() && n.is_multiple_of(8) {
                    for (key, seq) in unconfirmed.drain(..) {
                        log.writes.entry(key).or_default().1 = seq;
                    }
                }
                // Paced: in settled forwarding (from the snapshot point on)
                // a request without an answer goes out after a 2 ms settle
                // wait, source and destination alike, so a faster stream of
                // them would never let the replay catch up (with driver
                // `none` it replays the whole history at that pace).
                std::thread::sleep(Duration::from_millis(20));
                confirmed
            }
            NoreplyRole::Incr => {
                let answered = c
                    .send(format!("incr {K_COUNTER} 1\r\n").as_bytes())
                    .and_then(|()| c.line());
                match answered {
                    Ok(line) => match line.parse::<i64>() {
                        Ok(v) => {
                            log.incrs.push(v);
                            Ok(())
                        }
                        Err(_) => Err(format!("PROTOCOL: incr answered {line:?}")),
                    },
                    Err(e) => Err(e),
                }
            }
        };
        if let Err(e) = exchange {
            if e.starts_with("PROTOCOL") {
                return Err(e);
            }
            // Closed (by a barrier): reconnect; nothing unanswered counts.
            conn = None;
            log.closes += 1;
            if log.closes > MAX_CLOSES {
                return Err(format!("closed {} times, last: {e}", log.closes));
            }
        }
    }
    Ok(())
}

pub(crate) fn noreply_clients(c: &Cluster, ctl: &Control) -> Vec<JoinHandle<NoreplyLog>> {
    let a = c.proxy_a();
    // From node a's network namespace when the nodes run in a testbed.
    c.on('a', || {
        let mut init = LineConn::connect(a).expect("memcached through the proxy");
        init.send(format!("set {K_COUNTER} 0 0 1\r\n0\r\n").as_bytes())
            .expect("init");
        assert_eq!(init.line().expect("init"), "STORED");
    });
    use NoreplyRole::*;
    vec![
        noreply_client("w1", Writer, a, ctl),
        noreply_client("w2", Writer, a, ctl),
        noreply_client("incr", Incr, a, ctl),
        noreply_client("tunneled", Writer, c.proxy_b(), ctl),
    ]
}

/// The value stored under `key` at the holder, if any.
fn mc_get(c: &mut LineConn, key: &str) -> Result<Option<Vec<u8>>, String> {
    c.send(format!("get {key}\r\n").as_bytes())?;
    let line = c.line()?;
    if line == "END" {
        return Ok(None);
    }
    let len: usize = line
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("get {key} answered {line:?}"))?;
    let data = c.exact(len + 2)?;
    if c.line()? != "END" {
        return Err(format!("get {key}: no END"));
    }
    Ok(Some(data[..len].to_vec()))
}

pub(crate) fn check_noreply(logs: &[NoreplyLog], cluster: &Cluster, holder: char) -> Verdict {
    let mut failures = Vec::new();
    for l in logs {
        for e in &l.errors {
            failures.push(format!("client {}: {e}", l.name));
        }
    }
    let incrs: Vec<i64> = logs.iter().flat_map(|l| l.incrs.iter().copied()).collect();
    report_some(&mut failures, exactly_one_to_n(&incrs, "shared counter"));
    let writes: usize = logs.iter().map(|l| l.writes.len()).sum();
    let state = (|| -> Result<Vec<String>, String> {
        let mut out = Vec::new();
        let mut c = LineConn::connect(cluster.backend(holder))?;
        for l in logs {
            for (key, (sent, confirmed)) in &l.writes {
                let stored = mc_get(&mut c, key)?
                    .and_then(|v| String::from_utf8_lossy(&v).parse::<u64>().ok());
                match stored {
                    Some(v) if v >= *confirmed && v <= *sent && v % 4 == sent % 4 => {}
                    other => out.push(format!(
                        "{key}: stored {other:?}, but {confirmed} was confirmed and {sent} the last sent"
                    )),
                }
            }
        }
        let counter = mc_get(&mut c, K_COUNTER)?
            .and_then(|v| String::from_utf8_lossy(&v).trim().parse::<i64>().ok());
        if counter != Some(incrs.len() as i64) {
            out.push(format!(
                "the counter is {counter:?}, {} incrs were acknowledged",
                incrs.len()
            ));
        }
        Ok(out)
    })();
    match state {
        Ok(found) => report_some(&mut failures, found),
        Err(e) => failures.push(format!("cannot read {holder}'s memcached: {e}")),
    }
    Verdict {
        failures,
        summary: format!(
            "{} incrs, {writes} keys written without answers, {} closes",
            incrs.len(),
            logs.iter().map(|l| l.closes).sum::<u64>()
        ),
    }
}

/// Suite n: suite k's oracle, and no writer was ever closed — CRIU
/// carried each connection with the `noreply` input it had taken.
pub(crate) fn check_noreply_carried(
    logs: &[NoreplyLog],
    cluster: &Cluster,
    holder: char,
) -> Verdict {
    let mut verdict = check_noreply(logs, cluster, holder);
    fail_closed(
        &mut verdict,
        logs.iter().map(|l| (l.name.as_str(), l.closes)),
    );
    verdict
}

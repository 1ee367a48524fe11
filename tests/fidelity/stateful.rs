//! Suites i and j: clients that keep server-side state on long-lived
//! connections, with `connection_state` undeclared. A connection in use
//! at the snapshot cannot continue at the destination (a fresh connection
//! there lacks its state), and input without an answer cannot be waited
//! for: the barrier closes such connections (`close_connections`, the
//! default) and the clients reconnect, setting their state up again. The
//! oracle checks every reply and that nothing a client was not
//! acknowledged ran: a closed connection's unanswered input never ran.

use super::*;

/// Redis's password in suite j.
pub(crate) const PASSWORD: &str = "fidelity";

/// A Redis client connection that (re)connects with a setup (`AUTH`,
/// `SELECT`, `CLIENT SETNAME`, `SUBSCRIBE` …), counting the times the
/// server closed it.
struct Session {
    addr: SocketAddr,
    setup: Vec<Vec<String>>,
    conn: Option<RespClient>,
    /// Closes seen (each followed by a reconnect).
    closes: u64,
}

/// At most this many closes per client: more is a failure, not churn.
const MAX_CLOSES: u64 = 20;

impl Session {
    fn new(addr: SocketAddr, setup: &[&[&str]]) -> Session {
        Session {
            addr,
            setup: setup
                .iter()
                .map(|cmd| cmd.iter().map(|s| s.to_string()).collect())
                .collect(),
            conn: None,
            closes: 0,
        }
    }

    /// The connection, set up (connecting and running the setup if it is
    /// not open). Each setup command's reply is returned for checking.
    fn open(&mut self) -> Result<&mut RespClient, String> {
        if self.conn.is_none() {
            let mut c = RespClient::connect(self.addr).map_err(|e| format!("connect: {e:#}"))?;
            for cmd in &self.setup {
                let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
                let reply = c.cmd(&args).map_err(|e| format!("{cmd:?}: {e:#}"))?;
                let ok = match (&reply, args[0]) {
                    (Reply::Status(s), _) => s == "OK",
                    (Reply::Array(items), "SUBSCRIBE") => {
                        items.first() == Some(&Reply::Bulk(b"subscribe".to_vec()))
                    }
                    _ => false,
                };
                if !ok {
                    return Err(format!("setup {cmd:?} answered {reply:?}"));
                }
            }
            self.conn = Some(c);
        }
        Ok(self.conn.as_mut().expect("just opened"))
    }

    /// A failed exchange: the server (a barrier) closed the connection.
    /// Nothing of it counts as acknowledged; the next `open` reconnects.
    fn closed(&mut self, what: &str, e: &anyhow::Error) -> Result<(), String> {
        self.conn = None;
        self.closes += 1;
        if self.closes > MAX_CLOSES {
            return Err(format!(
                "closed {} times, last at {what}: {e:#}",
                self.closes
            ));
        }
        Ok(())
    }

    /// One command, reconnecting once if the connection was closed under
    /// it: `None` = not acknowledged (closed), so not run.
    fn cmd(&mut self, args: &[&str]) -> Result<Option<Reply>, String> {
        let c = self.open()?;
        match c.cmd(args) {
            Ok(reply) => Ok(Some(reply)),
            Err(e) => {
                self.closed(args[0], &e)?;
                Ok(None)
            }
        }
    }
}

fn auth() -> Vec<&'static str> {
    vec!["AUTH", PASSWORD]
}

/// What one suite-j client saw.
#[derive(Debug, Default)]
pub(crate) struct StateLog {
    pub(super) name: String,
    /// Answers of the shared counter's INCRs (database 3).
    incrs: Vec<i64>,
    /// First answers of each acknowledged two-INCR transaction.
    tx_firsts: Vec<i64>,
    /// PUBLISH: (message number, receivers answered).
    published: Vec<(u64, i64)>,
    /// Messages the subscriber received, in order.
    received: Vec<u64>,
    /// RPUSH acknowledged: element numbers.
    pushed: Vec<u64>,
    /// BLPOP answered: element numbers.
    popped: Vec<u64>,
    /// Large SETs acknowledged: (key, sequence number).
    large: Vec<(String, u64)>,
    /// Keys SET by the connection that stayed idle through the snapshot.
    idle_keys: Vec<String>,
    /// Keys SET in database 3 and acknowledged (suite i).
    selected_keys: Vec<String>,
    closes: u64,
    pub(super) errors: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StateRole {
    /// AUTH, SELECT 3, CLIENT SETNAME; INCR the shared counter, and check
    /// the name now and then.
    Selected,
    /// AUTH, SELECT 3; MULTI, INCR, (pause), INCR, EXEC — a transaction
    /// open across the barrier.
    Transaction,
    /// AUTH, SUBSCRIBE; records every message.
    Subscriber,
    /// AUTH; PUBLISH numbered messages.
    Publisher,
    /// AUTH; BLPOP the queue with no timeout (blocked until a push).
    Popper,
    /// AUTH; RPUSH numbered elements to the queue, slowly.
    Pusher,
    /// AUTH; SET 2 MiB values sent in 128 KiB pieces with pauses.
    Large,
    /// Connects before the migration and sends nothing until it ended:
    /// such a connection continues (it must never be closed).
    Idle,
    /// Suite i (no password): SELECT 3, then only SETs.
    SelectOnly,
}

const J_COUNTER: &str = "fidelity:j:counter";
const J_TX: &str = "fidelity:j:tx";
const J_CHANNEL: &str = "fidelity:j:channel";
const J_QUEUE: &str = "fidelity:j:queue";
/// The element that tells the popper the load is over.
const J_LAST: u64 = u64::MAX;
const LARGE_VALUE: usize = 2 << 20;
const LARGE_PIECE: usize = 128 << 10;

pub(crate) fn state_client(
    name: &str,
    role: StateRole,
    addr: SocketAddr,
    ctl: &Control,
) -> JoinHandle<StateLog> {
    spawn_client(name, ctl, move |log, ctl| {
        state_session(log, role, addr, ctl)
    })
}

fn state_session(
    log: &mut StateLog,
    role: StateRole,
    addr: SocketAddr,
    ctl: &Control,
) -> Result<(), String> {
    let name = log.name.clone();
    let setup: Vec<Vec<&str>> = match role {
        StateRole::Selected => vec![
            auth(),
            vec!["SELECT", "3"],
            vec!["CLIENT", "SETNAME", &name],
        ],
        StateRole::Transaction => vec![auth(), vec!["SELECT", "3"]],
        StateRole::Subscriber => vec![auth(), vec!["SUBSCRIBE", J_CHANNEL]],
        StateRole::SelectOnly => vec![vec!["SELECT", "3"]],
        _ => vec![auth()],
    };
    let setup: Vec<&[&str]> = setup.iter().map(Vec::as_slice).collect();
    let mut s = Session::new(addr, &setup);
    let result = match role {
        StateRole::Selected => selected(&mut s, log, ctl),
        StateRole::Transaction => transaction(&mut s, log, ctl),
        StateRole::Subscriber => subscriber(&mut s, log, ctl),
        StateRole::Publisher => publisher(&mut s, log, ctl),
        StateRole::Popper => popper(&mut s, log, ctl),
        StateRole::Pusher => pusher(&mut s, log, ctl),
        StateRole::Large => large(&mut s, log, ctl),
        StateRole::Idle => idle(&mut s, log, ctl),
        StateRole::SelectOnly => select_only(&mut s, log, ctl),
    };
    log.closes = s.closes;
    result
}

fn selected(s: &mut Session, log: &mut StateLog, ctl: &Control) -> Result<(), String> {
    let mut n = 0u64;
    while ctl.go(n) {
        n += 1;
        match s.cmd(&["INCR", J_COUNTER])? {
            Some(Reply::Int(v)) => log.incrs.push(v),
            Some(other) => return Err(format!("INCR answered {other:?}")),
            None => continue,
        }
        if n.is_multiple_of(16) {
            match s.cmd(&["CLIENT", "GETNAME"])? {
                Some(Reply::Bulk(b)) if b == log.name.as_bytes() => {}
                Some(other) => return Err(format!("CLIENT GETNAME answered {other:?}")),
                None => {}
            }
        }
    }
    Ok(())
}

fn transaction(s: &mut Session, log: &mut StateLog, ctl: &Control) -> Result<(), String> {
    let mut n = 0u64;
    'tx: while ctl.go(n) {
        n += 1;
        for (cmd, want) in [
            (vec!["MULTI"], "OK"),
            (vec!["INCR", J_TX], "QUEUED"),
            (vec!["INCR", J_TX], "QUEUED"),
        ] {
            match s.cmd(&cmd)? {
                Some(Reply::Status(st)) if st == want => {}
                Some(other) => return Err(format!("{cmd:?} in MULTI answered {other:?}")),
                None => continue 'tx,
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        match s.cmd(&["EXEC"])? {
            Some(Reply::Array(items)) => match items.as_slice() {
                [Reply::Int(a), Reply::Int(b)] if *b == a + 1 => log.tx_firsts.push(*a),
                _ => return Err(format!("EXEC answered {items:?}")),
            },
            Some(other) => return Err(format!("EXEC answered {other:?}")),
            None => {}
        }
    }
    Ok(())
}

fn subscriber(s: &mut Session, log: &mut StateLog, ctl: &Control) -> Result<(), String> {
    while ctl.go(0) {
        let c = s.open()?;
        let _ = c
            .stream()
            .set_read_timeout(Some(Duration::from_millis(200)));
        match c.read_reply() {
            Ok(Reply::Array(items)) => match items.as_slice() {
                [Reply::Bulk(kind), Reply::Bulk(chan), Reply::Bulk(payload)]
                    if kind == b"message" && chan == J_CHANNEL.as_bytes() =>
                {
                    let text = String::from_utf8_lossy(payload);
                    let k = text
                        .strip_prefix('m')
                        .and_then(|k| k.parse().ok())
                        .ok_or_else(|| format!("odd message {text:?}"))?;
                    log.received.push(k);
                }
                _ => return Err(format!("the subscription got {items:?}")),
            },
            Ok(other) => return Err(format!("the subscription got {other:?}")),
            // Nothing published meanwhile: read again.
            Err(e) if is_timeout(&e) => {}
            Err(e) => s.closed("a subscription read", &e)?,
        }
    }
    Ok(())
}

fn is_timeout(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>().is_some_and(|e| {
        matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        )
    })
}

fn publisher(s: &mut Session, log: &mut StateLog, ctl: &Control) -> Result<(), String> {
    let mut k = 0u64;
    while ctl.go(k) {
        k += 1;
        let message = format!("m{k}");
        match s.cmd(&["PUBLISH", J_CHANNEL, &message])? {
            Some(Reply::Int(n)) if (0..=1).contains(&n) => log.published.push((k, n)),
            Some(other) => return Err(format!("PUBLISH answered {other:?}")),
            None => {}
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

fn pusher(s: &mut Session, log: &mut StateLog, ctl: &Control) -> Result<(), String> {
    let mut k = 0u64;
    while ctl.go(k) {
        k += 1;
        match s.cmd(&["RPUSH", J_QUEUE, &k.to_string()])? {
            Some(Reply::Int(_)) => log.pushed.push(k),
            Some(other) => return Err(format!("RPUSH answered {other:?}")),
            None => {}
        }
        std::thread::sleep(Duration::from_millis(4));
    }
    // Tell the popper the load is over (once acknowledged).
    for _ in 0..MAX_CLOSES {
        if let Some(reply) = s.cmd(&["RPUSH", J_QUEUE, &J_LAST.to_string()])? {
            return match reply {
                Reply::Int(_) => Ok(()),
                other => Err(format!("the last RPUSH answered {other:?}")),
            };
        }
    }
    Err("the last RPUSH was never acknowledged".into())
}

fn popper(s: &mut Session, log: &mut StateLog, ctl: &Control) -> Result<(), String> {
    // Runs until the pusher's last element (or the load's bound): a BLPOP
    // abandoned while blocked could lose an element popped just then.
    while Instant::now() < ctl.deadline {
        match s.cmd(&["BLPOP", J_QUEUE, "0"])? {
            Some(Reply::Array(items)) => match items.as_slice() {
                [Reply::Bulk(q), Reply::Bulk(e)] if q == J_QUEUE.as_bytes() => {
                    let e: u64 = String::from_utf8_lossy(e)
                        .parse()
                        .map_err(|_| format!("odd element {e:?}"))?;
                    if e == J_LAST {
                        return Ok(());
                    }
                    log.popped.push(e);
                }
                _ => return Err(format!("BLPOP answered {items:?}")),
            },
            Some(other) => return Err(format!("BLPOP answered {other:?}")),
            None => {}
        }
    }
    Err("the pusher's last element never came".into())
}

fn large(s: &mut Session, log: &mut StateLog, ctl: &Control) -> Result<(), String> {
    let mut k = 0u64;
    while ctl.go(k) {
        k += 1;
        let key = format!("fidelity:j:large:{}", k % 3);
        let mut value = format!("seq={k:012};").into_bytes();
        value.resize(LARGE_VALUE, b'x');
        let request = replaymig_testkit::encode_command_bytes(&[b"SET", key.as_bytes(), &value]);
        let c = s.open()?;
        let mut sent = Ok(());
        for piece in request.chunks(LARGE_PIECE) {
            let mut stream = c.stream();
            sent = stream.write_all(piece);
            if sent.is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(3));
        }
        let reply = match sent {
            Ok(()) => c.read_reply(),
            Err(e) => Err(e.into()),
        };
        match reply {
            Ok(Reply::Status(ok)) if ok == "OK" => log.large.push((key, k)),
            Ok(other) => return Err(format!("SET {key} (2 MiB) answered {other:?}")),
            Err(e) => s.closed("a 2 MiB SET", &e)?,
        }
        std::thread::sleep(Duration::from_millis(30));
    }
    Ok(())
}

fn idle(s: &mut Session, log: &mut StateLog, ctl: &Control) -> Result<(), String> {
    // Connected (no setup yet: `open` would send AUTH), then silent until
    // the migration ended.
    let mut c = RespClient::connect(s.addr).map_err(|e| format!("connect: {e:#}"))?;
    ctl.wait_migrated();
    let mut n = 0u64;
    let mut first = true;
    while ctl.go(n) && n < 50 {
        n += 1;
        let key = format!("fidelity:j:idle:{}:{n}", log.name);
        let exchange = (|| -> anyhow::Result<()> {
            if first {
                let reply = c.cmd(&["AUTH", PASSWORD])?;
                anyhow::ensure!(reply == Reply::Status("OK".into()), "AUTH: {reply:?}");
            }
            let reply = c.cmd(&["SET", &key, "v"])?;
            anyhow::ensure!(reply == Reply::Status("OK".into()), "SET: {reply:?}");
            Ok(())
        })();
        exchange.map_err(|e| {
            format!("the connection idle through the migration failed (it must continue): {e:#}")
        })?;
        first = false;
        log.idle_keys.push(key);
    }
    Ok(())
}

fn select_only(s: &mut Session, log: &mut StateLog, ctl: &Control) -> Result<(), String> {
    let mut n = 0u64;
    while ctl.go(n) {
        n += 1;
        let key = format!("fidelity:sel:{}:{n}", log.name);
        match s.cmd(&["SET", &key, "v"])? {
            Some(Reply::Status(ok)) if ok == "OK" => log.selected_keys.push(key),
            Some(other) => return Err(format!("SET {key} answered {other:?}")),
            None => {}
        }
    }
    Ok(())
}

/// Suite j's clients, all through node a's proxy but the publisher
/// (tunneled from b before the hand-over).
pub(crate) fn state_clients(c: &Cluster, ctl: &Control) -> Vec<JoinHandle<StateLog>> {
    use StateRole::*;
    vec![
        state_client("sel1", Selected, c.proxy_a(), ctl),
        state_client("sel2", Selected, c.proxy_a(), ctl),
        state_client("tx", Transaction, c.proxy_a(), ctl),
        state_client("sub", Subscriber, c.proxy_a(), ctl),
        state_client("pub", Publisher, c.proxy_b(), ctl),
        state_client("pop", Popper, c.proxy_a(), ctl),
        state_client("push", Pusher, c.proxy_a(), ctl),
        state_client("large", Large, c.proxy_a(), ctl),
        state_client("idle", Idle, c.proxy_a(), ctl),
    ]
}

/// Suite i's clients.
pub(crate) fn select_clients(c: &Cluster, ctl: &Control) -> Vec<JoinHandle<StateLog>> {
    vec![
        state_client("sel1", StateRole::SelectOnly, c.proxy_a(), ctl),
        state_client("sel2", StateRole::SelectOnly, c.proxy_a(), ctl),
    ]
}

/// A direct connection to the holder's Redis (authenticated if `password`).
fn holder_redis(cluster: &Cluster, holder: char, password: bool) -> Result<RespClient, String> {
    let mut c = RespClient::connect(cluster.backend(holder)).map_err(|e| format!("{e:#}"))?;
    if password {
        c.cmd(&["AUTH", PASSWORD]).map_err(|e| format!("{e:#}"))?;
    }
    Ok(c)
}

fn get_int(c: &mut RespClient, key: &str) -> Result<i64, String> {
    match c.cmd(&["GET", key]).map_err(|e| format!("{e:#}"))? {
        Reply::Nil => Ok(0),
        Reply::Bulk(b) => String::from_utf8_lossy(&b)
            .parse()
            .map_err(|_| format!("{key} holds {b:?}")),
        other => Err(format!("GET {key}: {other:?}")),
    }
}

pub(crate) fn check_state(logs: &[StateLog], cluster: &Cluster, holder: char) -> Verdict {
    let mut failures = Vec::new();
    for l in logs {
        for e in &l.errors {
            failures.push(format!("client {}: {e}", l.name));
        }
    }
    let all = |f: fn(&StateLog) -> &Vec<u64>| -> Vec<u64> {
        logs.iter().flat_map(|l| f(l).iter().copied()).collect()
    };
    let incrs: Vec<i64> = logs.iter().flat_map(|l| l.incrs.iter().copied()).collect();
    report_some(
        &mut failures,
        exactly_one_to_n(&incrs, "shared counter (database 3)"),
    );
    // Transactions: firsts are 1, 3, 5, … each once.
    let mut firsts: Vec<i64> = logs
        .iter()
        .flat_map(|l| l.tx_firsts.iter().copied())
        .collect();
    firsts.sort_unstable();
    let want: Vec<i64> = (0..firsts.len() as i64).map(|i| 2 * i + 1).collect();
    if firsts != want {
        failures.push(format!(
            "transactions: first INCR answers {:?}… are not 1, 3, 5, …",
            &firsts[..firsts.len().min(SHOWN)]
        ));
    }
    // Every message published to a subscriber (answered 1) was received,
    // in order, once; nothing else was.
    let delivered: Vec<u64> = logs
        .iter()
        .flat_map(|l| l.published.iter().filter(|(_, n)| *n == 1).map(|(k, _)| *k))
        .collect();
    let received = all(|l| &l.received);
    if received != delivered {
        let got: BTreeSet<u64> = received.iter().copied().collect();
        let missing: Vec<u64> = delivered
            .iter()
            .filter(|k| !got.contains(k))
            .copied()
            .collect();
        failures.push(format!(
            "subscription: {} messages published to a subscriber, {} received; missing {:?}; \
             in order and once: {}",
            delivered.len(),
            received.len(),
            &missing[..missing.len().min(SHOWN)],
            received.windows(2).all(|w| w[0] < w[1])
        ));
    }
    let (pushed, popped) = (all(|l| &l.pushed), all(|l| &l.popped));
    let summary = format!(
        "{} INCRs, {} transactions, {} of {} messages to a subscriber, {} pushed/{} popped, {} large SETs, {} closes",
        incrs.len(),
        firsts.len(),
        received.len(),
        logs.iter().map(|l| l.published.len()).sum::<usize>(),
        pushed.len(),
        popped.len(),
        logs.iter().map(|l| l.large.len()).sum::<usize>(),
        logs.iter().map(|l| l.closes).sum::<u64>(),
    );
    for l in logs
        .iter()
        .filter(|l| !l.idle_keys.is_empty() && l.closes > 0)
    {
        failures.push(format!(
            "{}: closed {} times although idle",
            l.name, l.closes
        ));
    }
    let state = (|| -> Result<Vec<String>, String> {
        let mut out = Vec::new();
        let mut c = holder_redis(cluster, holder, true)?;
        let queue = c.lrange(J_QUEUE).map_err(|e| format!("{e:#}"))?;
        let mut seen: Vec<u64> = popped.clone();
        seen.extend(
            queue
                .iter()
                .filter_map(|e| e.parse::<u64>().ok())
                .filter(|e| *e != J_LAST),
        );
        seen.sort_unstable();
        let mut want = pushed.clone();
        want.sort_unstable();
        if seen != want {
            out.push(format!(
                "queue: {} elements pushed, {} popped + {} left ({} in all)",
                want.len(),
                popped.len(),
                queue.len(),
                seen.len()
            ));
        }
        let mut last: BTreeMap<&str, u64> = BTreeMap::new();
        for l in logs {
            for (key, k) in &l.large {
                last.insert(key, *k);
            }
        }
        for (key, k) in last {
            let head = match c
                .cmd(&["GETRANGE", key, "0", "16"])
                .map_err(|e| format!("{e:#}"))?
            {
                Reply::Bulk(b) => String::from_utf8_lossy(&b).into_owned(),
                other => format!("{other:?}"),
            };
            if head != format!("seq={k:012};") {
                out.push(format!(
                    "{key} holds {head:?}, but its last acknowledged SET was {k}"
                ));
            }
        }
        for l in logs {
            for key in &l.idle_keys {
                if c.cmd(&["EXISTS", key]).map_err(|e| format!("{e:#}"))? != Reply::Int(1) {
                    out.push(format!("{key} was acknowledged but {holder} lacks it"));
                }
            }
        }
        c.cmd(&["SELECT", "3"]).map_err(|e| format!("{e:#}"))?;
        let counter = get_int(&mut c, J_COUNTER)?;
        if counter != incrs.len() as i64 {
            out.push(format!(
                "database 3's counter is {counter}, {} INCRs were acknowledged",
                incrs.len()
            ));
        }
        let tx = get_int(&mut c, J_TX)?;
        if tx != 2 * firsts.len() as i64 {
            out.push(format!(
                "database 3's transaction counter is {tx}, {} transactions of 2 INCRs were acknowledged",
                firsts.len()
            ));
        }
        Ok(out)
    })();
    match state {
        Ok(found) => report_some(&mut failures, found),
        Err(e) => failures.push(format!("cannot read {holder}'s Redis: {e}")),
    }
    Verdict { failures, summary }
}

pub(crate) fn check_selected(logs: &[StateLog], cluster: &Cluster, holder: char) -> Verdict {
    let mut failures = Vec::new();
    for l in logs {
        for e in &l.errors {
            failures.push(format!("client {}: {e}", l.name));
        }
    }
    let keys: Vec<&String> = logs.iter().flat_map(|l| l.selected_keys.iter()).collect();
    let found = (|| -> Result<Vec<String>, String> {
        let mut c = holder_redis(cluster, holder, false)?;
        c.cmd(&["SELECT", "3"]).map_err(|e| format!("{e:#}"))?;
        let mut missing = Vec::new();
        for k in &keys {
            if c.cmd(&["EXISTS", k]).map_err(|e| format!("{e:#}"))? != Reply::Int(1) {
                missing.push((*k).clone());
            }
        }
        Ok(missing)
    })();
    match found {
        Err(e) => failures.push(format!("cannot read database 3 on {holder}: {e}")),
        Ok(missing) => report_some(
            &mut failures,
            missing
                .iter()
                .map(|k| format!("{k} was acknowledged in database 3 but {holder} lacks it there"))
                .collect(),
        ),
    }
    Verdict {
        failures,
        summary: format!(
            "{} SETs in database 3 acknowledged, {} closes",
            keys.len(),
            logs.iter().map(|l| l.closes).sum::<u64>()
        ),
    }
}

/// Suite l: suite j's oracle, and no connection was ever closed: CRIU
/// carried each one with its state (without carrying, the snapshot's
/// barrier closes those in use, and the barriers those with input left
/// unanswered — a blocked `BLPOP`, a value still being sent).
pub(crate) fn check_carried_state(logs: &[StateLog], cluster: &Cluster, holder: char) -> Verdict {
    let mut verdict = check_state(logs, cluster, holder);
    fail_closed(
        &mut verdict,
        logs.iter().map(|l| (l.name.as_str(), l.closes)),
    );
    verdict
}

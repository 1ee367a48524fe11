//! One replayer, two users: migration (feed the journal after the snapshot
//! point into the restored service, then hand the connections over) and the
//! debugging tool (`replaymig replay`). A stored journal range is fed by
//! one loop (`feed`), for the tool and for a node rebuilding a service.
//!
//! Records go to the target in LSN order, through one sequencer
//! (`inflight`). Each journaled connection gets a fresh connection to the
//! target. Before a data record is sent, the target must have produced, on
//! that connection, as many answer bytes as the original client had
//! received when it sent it (`resp_before`), across all connections as
//! many as were delivered journal-wide (`resp_total_before`) — both counted
//! from the replay's starting point — and every answer segment journaled
//! before the record (the proxy journals every answer it delivered before
//! reading a record ahead of it). With `settle`, a record also waits until
//! the target answered the one sent before it, as the source's proxy did
//! while a migration caught up, so the target executes input in LSN order.
//! Answers are read as they come and counted; with `compare_answers` they
//! are checked against the journaled segments, and with `verify_answers`
//! (migration) every byte up to a close or hand-over must be covered and
//! equal. Those the original client had received are dropped, the rest kept
//! for a connection take-over (see `answers`); any difference is a
//! divergence (see docs/fidelity.md for what can still differ).

mod answers;
pub mod compare;
pub mod feed;
mod inflight;
mod worker;

use answers::{AnswerReader, TotalAnswers};
use inflight::InFlight;
use replaymig_journal::marker::{Preambles, SnapshotMark};
use replaymig_journal::{ConnId, Entry, Lsn, Record};
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// How a replay runs.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// The service to feed.
    pub target: SocketAddr,
    /// Only these connections (all when `None`). Cross-connection causality
    /// is not enforced when filtering: the skipped connections' answers
    /// never come.
    pub only: Option<HashSet<ConnId>>,
    /// How long to wait for answer bytes the original had before declaring
    /// a divergence.
    pub answer_timeout: Duration,
    /// Stop at the first divergence (migration) or record it and go on
    /// (debugging).
    pub stop_on_divergence: bool,
    /// Pacing (opt-in): at speed `N`, record `k` is dispatched no earlier
    /// than `N`-times-faster original timing: the first applied record's
    /// dispatch instant plus `(time_us(k) - time_us(first)) / N`, on top of
    /// the causality waits. `None` (the default): as fast as possible.
    /// Must be finite and positive.
    pub speed: Option<f64>,
    /// Compare the target's answers with the answer segments journaled
    /// (`answer` records) and report each difference.
    pub compare_answers: bool,
    /// Strict checking (migration): implies `compare_answers`, and every
    /// answer byte the target produced up to a close or a hand-over must be
    /// covered by a journaled segment and equal to it; answers beyond what
    /// the original delivered at a hand-over are a divergence too.
    pub verify_answers: bool,
    /// Settled sending (migration, matching the source proxy's settled
    /// forwarding): a record goes out only once the target answered the
    /// one sent before it, or after this long without an answer.
    pub settle: Option<Duration>,
    /// Whether a connection open at the starting point may continue on a
    /// fresh target connection although it had been answered before that
    /// point. Such a connection may carry server-side state a fresh one
    /// lacks (Redis `SELECT`, `AUTH`, `MULTI`, a subscription), which no
    /// answer check can see when the answers happen to match (`+OK` in the
    /// wrong database). `true` (the default, for debugging replays): go on;
    /// `false` (a migration whose service does not declare its connections
    /// stateless): each such connection is a `carried_state` divergence.
    pub stateless_connections: bool,
    /// Whether the original may have been stopped in the middle of its
    /// answers at the hand-over (a migration that pauses the service
    /// instead of waiting for it to go quiet, because its snapshot carried
    /// the connections): answers the target produced beyond what the
    /// original delivered are then the rest of them, kept for the clients
    /// (like every answer after the hand-over, checked against nothing),
    /// not an `extra_answer`.
    pub answers_continue: bool,
}

impl ReplayOptions {
    /// Defaults: every connection, 5 s answer timeout, stop at the first divergence.
    pub fn new(target: SocketAddr) -> Self {
        ReplayOptions {
            target,
            only: None,
            answer_timeout: Duration::from_secs(5),
            stop_on_divergence: true,
            speed: None,
            compare_answers: false,
            verify_answers: false,
            settle: None,
            stateless_connections: true,
            answers_continue: false,
        }
    }
}

/// What went differently from the original.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DivergenceKind {
    /// The target produced fewer answer bytes than the original client got.
    MissingAnswer {
        /// Bytes the original had delivered at this point.
        expected: u64,
        /// Bytes the target produced within the timeout.
        got: u64,
    },
    /// The target produced more answer bytes than the original client got.
    ExtraAnswer {
        /// Bytes the original delivered in all.
        expected: u64,
    },
    /// The target closed or reset the connection while input remained.
    TargetClosed,
    /// The target could not be connected to or written to.
    TargetIo {
        /// The I/O error.
        error: String,
    },
    /// The target's answers differ in content from the journaled ones
    /// (`compare_answers`).
    AnswerMismatch(compare::AnswerMismatch),
    /// The target never reproduced an answer segment the original had
    /// delivered before this record (the replay cannot go on faithfully).
    AnswerNeverCame {
        /// The answer record's LSN.
        answer_lsn: Lsn,
    },
    /// A connection re-created for one open at the snapshot did not start
    /// with the greeting the original got.
    GreetingMismatch {
        /// The original greeting's length.
        len: u64,
        /// What the target sent instead (escaped).
        got_preview: String,
    },
    /// Answer bytes no journaled segment covers (`verify_answers`): they
    /// cannot be proven equal to the original's.
    UncheckedAnswer(compare::UncheckedAnswer),
    /// A connection open at the starting point that had been answered
    /// before it would continue on a fresh target connection, without the
    /// server-side state it may have built (see
    /// `ReplayOptions::stateless_connections`).
    CarriedState {
        /// Answer bytes (beyond any greeting) it had received before the
        /// starting point.
        answered: u64,
    },
}

impl std::fmt::Display for DivergenceKind {
    /// In words, for the CLI's list and a migration's refusal (answer
    /// counts are from the replay's starting point).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DivergenceKind::MissingAnswer { expected, got } => write!(
                f,
                "missing_answer: the original client had {expected} answer bytes by then, the target gave {got}"
            ),
            DivergenceKind::ExtraAnswer { expected } => write!(
                f,
                "extra_answer: the target answered more than the original's {expected} bytes"
            ),
            DivergenceKind::TargetClosed => write!(
                f,
                "target_closed: the target closed the connection while input remained"
            ),
            DivergenceKind::TargetIo { error } => write!(f, "target_io: {error}"),
            DivergenceKind::AnswerMismatch(m) => {
                let at = if m.exact {
                    "first differing byte"
                } else {
                    "segment (digest only)"
                };
                write!(
                    f,
                    "answer_mismatch: {at} at answer offset {} (answer record LSN {}, {}-byte segment); got \"{}\"",
                    m.offset, m.answer_lsn, m.segment_len, m.got_preview
                )?;
                if !m.expected_preview.is_empty() {
                    write!(f, ", expected \"{}\"", m.expected_preview)?;
                }
                Ok(())
            }
            DivergenceKind::UncheckedAnswer(u) => write!(
                f,
                "unchecked_answer: {} answer bytes at offset {} cannot be checked against the journal ({})",
                u.len, u.offset, u.why
            ),
            DivergenceKind::AnswerNeverCame { answer_lsn } => write!(
                f,
                "answer_never_came: the target did not reproduce the answers journaled at LSN {answer_lsn}, which the original had delivered before this record"
            ),
            DivergenceKind::CarriedState { answered } => write!(
                f,
                "carried_state: this connection was open at the snapshot and had been answered ({answered} bytes) before it, so it may hold server-side state (SELECT, AUTH, MULTI, a subscription) that a fresh connection at the destination lacks; declare connection_state = \"none\" for a service that keeps none"
            ),
            DivergenceKind::GreetingMismatch { len, got_preview } => write!(
                f,
                "greeting_mismatch: a re-created connection did not start with the original's {len}-byte greeting; got \"{got_preview}\""
            ),
        }
    }
}

/// A divergence, located by LSN and connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Divergence {
    /// The record being applied when it showed.
    pub lsn: Lsn,
    /// The journaled connection.
    pub conn: ConnId,
    /// What differed.
    #[serde(flatten)]
    pub kind: DivergenceKind,
}

/// Figures of a replay.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplayReport {
    /// Records applied (all kinds).
    pub records: u64,
    /// Data records sent.
    pub data_records: u64,
    /// Client bytes sent to the target.
    pub data_bytes: u64,
    /// Target connections opened.
    pub connections: u64,
    /// Of those, connections continued on a restored socket of the
    /// original (a snapshot that carried them: [`Replayer::carry`]).
    pub carried: u64,
    /// Answer bytes consumed from the target.
    pub answer_bytes: u64,
    /// Journaled answer segments compared (`compare_answers`).
    pub answer_segments: u64,
    /// Last LSN applied.
    pub last_lsn: Option<Lsn>,
    /// What differed from the original.
    pub divergences: Vec<Divergence>,
    /// Wall time spent applying.
    pub elapsed_seconds: f64,
}

/// Why a replay stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The target answered differently and `stop_on_divergence` is set.
    #[error("replay diverged at LSN {} (connection {}): {}", .0.lsn, .0.conn, .0.kind)]
    Diverged(Divergence),
}

/// A replayed connection still open when the replay finished: the
/// migration takes it over as the client's live service connection.
pub struct OpenConnection {
    /// The journaled connection it replays.
    pub conn: ConnId,
    /// The target connection; `None` if the target closed it.
    pub stream: Option<TcpStream>,
    /// Answer bytes read from the target since the replay's starting point.
    pub answered: u64,
    /// The answers read beyond what the journal says the original client
    /// had received: the first bytes to forward after a take-over.
    pub pending: bytes::Bytes,
    /// `resp_before` base: answer bytes the original connection had
    /// delivered before the replay's starting point.
    pub base: u64,
}

struct ReplayConn {
    /// Work for this connection's task (see `worker`).
    queue: tokio::sync::mpsc::Sender<worker::Work>,
    answers: Arc<AnswerReader>,
    /// Answer bytes of the original before the starting point.
    base: u64,
    /// The last client record sent on it: what a journaled answer segment
    /// that follows responds to.
    last_input_lsn: Option<Lsn>,
    /// Where the answer segments journaled on it end (answer bytes since
    /// the starting point): what its client is known to have received.
    journaled: u64,
    /// Wakes its task when its oldest record's turn comes (`InFlight`).
    turn: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<worker::WorkerEnd>,
}

/// Applies records one at a time; keeps the target connections between
/// calls, so it can follow a live journal tail.
pub struct Replayer {
    options: ReplayOptions,
    conns: BTreeMap<ConnId, ReplayConn>,
    total: Arc<TotalAnswers>,
    /// Journal-wide answer bytes before the starting point: from the
    /// snapshot mark, else `resp_total_before` of the first data record.
    total_base: Option<u64>,
    /// Per-connection answer bytes before the starting point, from the
    /// snapshot mark (connections not in it: their first record's
    /// `resp_before`, or 0 when opened in range).
    bases: std::collections::HashMap<ConnId, u64>,
    /// Greetings of the connections open at the starting point (length,
    /// CRC-32), from its `preambles` marker.
    preambles: std::collections::HashMap<ConnId, (u64, u32)>,
    /// Restored sockets of connections open at the starting point, not
    /// taken up yet (see [`Replayer::carry`]).
    carried: std::collections::HashMap<ConnId, std::net::TcpStream>,
    /// First LSN applied.
    first_lsn: Option<Lsn>,
    /// Divergences found by the connection tasks.
    failures: Arc<std::sync::Mutex<Vec<Divergence>>>,
    /// Tasks of connections the journal closed, awaited at the end.
    closing: Vec<(
        Arc<AnswerReader>,
        tokio::task::JoinHandle<worker::WorkerEnd>,
    )>,
    report: ReplayReport,
    started: Instant,
    /// Tells the connection tasks the replay is finishing.
    hurry: tokio_util::sync::CancellationToken,
    /// Applied records not yet handed to the target.
    inflight: Arc<InFlight>,
    /// With `speed`: when the first record was applied, and its `time_us`.
    pace_origin: Option<(tokio::time::Instant, u64)>,
}

impl Replayer {
    /// A replayer with no connection open yet.
    pub fn new(mut options: ReplayOptions) -> Self {
        options.compare_answers |= options.verify_answers;
        Replayer {
            options,
            conns: BTreeMap::new(),
            total: Arc::new(TotalAnswers::default()),
            total_base: None,
            bases: Default::default(),
            preambles: Default::default(),
            carried: Default::default(),
            first_lsn: None,
            failures: Default::default(),
            closing: Vec::new(),
            report: ReplayReport::default(),
            started: Instant::now(),
            hurry: tokio_util::sync::CancellationToken::new(),
            inflight: Arc::default(),
            pace_origin: None,
        }
    }

    /// Counts answers from a snapshot point: what each connection (and the
    /// whole journal) had delivered when the snapshot was taken. Applied by
    /// itself when the replay starts right after a `snapshot` marker's point
    /// and meets that marker before any data.
    pub fn start_at(&mut self, mark: &SnapshotMark) {
        self.total_base = Some(mark.resp_total);
        self.bases = mark.delivered.iter().map(|(c, d)| (*c, *d)).collect();
    }

    /// The greetings of the connections open at the starting point: a
    /// connection re-created for one of them must start with it (checked,
    /// and not counted as an answer).
    pub fn set_preambles(&mut self, preambles: &Preambles) {
        self.preambles = preambles
            .0
            .iter()
            .map(|(c, l, crc)| (*c, (*l, *crc)))
            .collect();
    }

    /// The restored target ends of connections open at the starting point
    /// (a process snapshot that carried them with their state and unread
    /// bytes): each continues on its own socket instead of a fresh one —
    /// no greeting is expected again, and its state needs no declaring —
    /// taken up when the replay meets the snapshot mark (so answers pushed
    /// to it before any input of its own are read and checked too), or at
    /// its first record. One that the journal closes unused is closed.
    pub fn carry(&mut self, conns: impl IntoIterator<Item = (ConnId, std::net::TcpStream)>) {
        self.carried.extend(conns);
    }

    /// Takes up every carried connection (after the mark set the bases).
    async fn open_carried(&mut self) {
        let conns: Vec<ConnId> = self.carried.keys().copied().collect();
        for conn in conns {
            let base = self.bases.get(&conn).copied().unwrap_or(0);
            if let Err(kind) = self.open(conn, base).await {
                let lsn = self.report.last_lsn.unwrap_or_default();
                self.failures
                    .lock()
                    .expect("poisoned")
                    .push(Divergence { lsn, conn, kind });
            }
        }
    }

    /// The original client of `conn` has received `delivered` answer bytes
    /// in all (told by the old owner at hand-over): those are dropped, and
    /// only answers beyond them are kept for the take-over.
    pub fn set_delivered(&mut self, conn: ConnId, delivered: u64) {
        if let Some(c) = self.conns.get(&conn) {
            c.answers.raise_watermark(delivered.saturating_sub(c.base));
        }
    }

    /// For a replay that ends without the old owner's word on what each
    /// client received (a node rebuilding a service after a restart, where
    /// no hand-over message says it): every answer journaled on a
    /// connection counts as received, since the proxy journals the answers
    /// it delivered. As after [`Replayer::set_delivered`], only answers
    /// beyond those are then kept (with `verify_answers`, a divergence).
    /// Nothing changes for a journal without answer records.
    pub fn deliver_journaled_answers(&mut self) {
        for c in self.conns.values() {
            c.answers.raise_watermark(c.journaled);
        }
    }

    /// Makes sure connection `conn`, open at the old owner with
    /// `delivered` answer bytes received by its client, has a target
    /// connection to be taken over — also when it sent nothing since the
    /// starting point (an idle client must survive a hand-over too).
    pub async fn ensure_open(&mut self, conn: ConnId, delivered: u64) -> Result<(), ReplayError> {
        if self.conns.contains_key(&conn) {
            return Ok(());
        }
        let base = self.bases.get(&conn).copied().unwrap_or(delivered);
        let opened = match self.check_carried(conn, base) {
            Ok(()) => self.open(conn, delivered).await.map(|_| ()),
            Err(kind) => Err(kind),
        };
        if let Err(kind) = opened {
            let lsn = self.report.last_lsn.unwrap_or_default();
            self.failures
                .lock()
                .expect("poisoned")
                .push(Divergence { lsn, conn, kind });
        }
        self.first_failure()
    }

    /// The figures so far.
    pub fn report(&self) -> &ReplayReport {
        &self.report
    }

    /// Applies one record. Divergences are recorded in the report; with
    /// `stop_on_divergence` the first one is also returned as an error.
    pub async fn apply(&mut self, entry: &Entry) -> Result<(), ReplayError> {
        self.pace(entry).await;
        let lsn = entry.lsn;
        self.inflight.applied(lsn);
        let first = *self.first_lsn.get_or_insert(lsn);
        let Some(conn) = entry.record.conn(lsn) else {
            // Marks of the point this replay starts right after.
            let no_data_yet = self.report.data_records == 0;
            let starts_here = |at: Lsn| at + 1 == first && no_data_yet;
            if let Some(mark) = SnapshotMark::from_record(&entry.record) {
                if starts_here(mark.lsn) {
                    self.start_at(&mark);
                    self.open_carried().await;
                }
            }
            if let Some((at, preambles)) = Preambles::from_record(&entry.record) {
                if starts_here(at) {
                    self.set_preambles(&preambles);
                }
            }
            self.count(lsn);
            return Ok(());
        };
        if self
            .options
            .only
            .as_ref()
            .is_some_and(|only| !only.contains(&conn))
        {
            return Ok(());
        }
        self.count(lsn);
        let outcome = match &entry.record {
            Record::Opened { .. } => self.open(conn, 0).await.map(|_| ()),
            Record::Data {
                resp_before,
                resp_total_before,
                data,
                ..
            } => {
                self.send(lsn, conn, *resp_before, *resp_total_before, data)
                    .await
            }
            Record::HalfClosed { .. } => self.half_close(lsn, conn).await,
            Record::Closed { resp_total, .. } => self.close(lsn, conn, *resp_total).await,
            Record::Answer {
                offset,
                len,
                crc32,
                data,
                ..
            } => {
                self.expect_answer(lsn, conn, *offset, *len, *crc32, data)
                    .await;
                Ok(())
            }
            Record::Marker { .. } => Ok(()),
        };
        if let Err(kind) = outcome {
            let d = Divergence { lsn, conn, kind };
            log_divergence(self.options.stop_on_divergence, &d);
            self.failures.lock().expect("poisoned").push(d);
        }
        self.first_failure()
    }

    /// Every record applied up to this LSN has been handed to the target
    /// (sent after the answers it depends on, or given up on a divergence);
    /// 0 before any. What a migration acknowledges: `apply` only queues.
    pub fn replayed_lsn(&self) -> Lsn {
        self.inflight.replayed()
    }

    /// With a `speed`, sleeps until `entry` is due: the first record at
    /// once, each later one at its original offset from the first divided
    /// by the speed (records journaled out of time order are not delayed).
    async fn pace(&mut self, entry: &Entry) {
        let Some(speed) = self.options.speed else {
            return;
        };
        let time_us = entry.record.time_us();
        let (start, first_us) = *self
            .pace_origin
            .get_or_insert_with(|| (tokio::time::Instant::now(), time_us));
        if let Some(due) = pace_due(start, first_us, time_us, speed) {
            tokio::time::sleep_until(due).await;
        }
    }

    /// The first divergence so far, as an error when the replay stops at it.
    fn first_failure(&mut self) -> Result<(), ReplayError> {
        let failures = std::mem::take(&mut *self.failures.lock().expect("poisoned"));
        self.report.divergences.extend(failures);
        match self.report.divergences.first() {
            Some(d) if self.options.stop_on_divergence => Err(ReplayError::Diverged(d.clone())),
            _ => Ok(()),
        }
    }

    fn count(&mut self, lsn: Lsn) {
        self.report.records += 1;
        self.report.last_lsn = Some(lsn);
    }

    /// A connection not open yet in this replay, that had received `base`
    /// answer bytes before the starting point: refused (without
    /// `stateless_connections`) when those were more than its greeting —
    /// it was in use, so it may hold state a fresh connection lacks.
    fn check_carried(&self, conn: ConnId, base: u64) -> Result<(), DivergenceKind> {
        if self.options.stateless_connections
            || self.conns.contains_key(&conn)
            || self.carried.contains_key(&conn)
        {
            return Ok(());
        }
        let greeting = self.preambles.get(&conn).map_or(0, |(len, _)| *len);
        if base > greeting {
            return Err(DivergenceKind::CarriedState {
                answered: base - greeting,
            });
        }
        Ok(())
    }

    /// Opens the target connection for `conn` and its task; `base` =
    /// answer bytes the original had delivered before the starting point.
    async fn open(&mut self, conn: ConnId, base: u64) -> Result<&mut ReplayConn, DivergenceKind> {
        if !self.conns.contains_key(&conn) {
            let io = |e: std::io::Error| DivergenceKind::TargetIo {
                error: e.to_string(),
            };
            let carried = self.carried.remove(&conn);
            let was_carried = carried.is_some();
            let stream = match carried {
                Some(restored) => {
                    restored.set_nonblocking(true).map_err(io)?;
                    self.report.carried += 1;
                    TcpStream::from_std(restored).map_err(io)?
                }
                None => TcpStream::connect(self.options.target).await.map_err(io)?,
            };
            let _ = stream.set_nodelay(true);
            let (read, write) = stream.into_split();
            let answers = Arc::new(AnswerReader::spawn(
                read,
                self.total.clone(),
                conn,
                self.failures.clone(),
                self.inflight.clone(),
                answers::Checking {
                    compare: self.options.compare_answers,
                    strict: self.options.verify_answers,
                    warn: self.options.stop_on_divergence,
                    // A carried connection got its greeting long ago.
                    greeting: (!was_carried)
                        .then(|| self.preambles.get(&conn).copied())
                        .flatten(),
                },
            ));
            let turn = Arc::new(tokio::sync::Notify::new());
            let (queue, work) = tokio::sync::mpsc::channel(worker::QUEUE);
            let task = tokio::spawn(worker::run(
                write,
                work,
                worker::WorkerCtx {
                    conn,
                    answers: answers.clone(),
                    total: self.total.clone(),
                    timeout: self.options.answer_timeout,
                    failures: self.failures.clone(),
                    hurry: self.hurry.clone(),
                    inflight: self.inflight.clone(),
                    turn: turn.clone(),
                    settle: self.options.settle,
                    warn: self.options.stop_on_divergence,
                },
            ));
            self.conns.insert(
                conn,
                ReplayConn {
                    queue,
                    answers,
                    base,
                    last_input_lsn: None,
                    journaled: 0,
                    turn,
                    task,
                },
            );
            self.report.connections += 1;
        }
        Ok(self.conns.get_mut(&conn).expect("inserted"))
    }

    async fn send(
        &mut self,
        lsn: Lsn,
        conn: ConnId,
        resp_before: u64,
        resp_total_before: u64,
        data: &bytes::Bytes,
    ) -> Result<(), DivergenceKind> {
        let enforce_total = self.options.only.is_none();
        let total_base = *self.total_base.get_or_insert(resp_total_before);
        // A connection opened before the starting point: what it had
        // received by its first replayed record is its base.
        let base = self.bases.get(&conn).copied().unwrap_or(resp_before);
        self.check_carried(conn, base)?;
        let inflight = self.inflight.clone();
        let c = self.open(conn, base).await?;
        let expected = resp_before.saturating_sub(c.base);
        c.last_input_lsn = Some(lsn);
        c.answers.raise_watermark(expected);
        let work = worker::Work::Send {
            lsn,
            seq: 0,
            expected,
            total: enforce_total.then(|| resp_total_before.saturating_sub(total_base)),
            data: data.clone(),
        };
        if !queue_work(&inflight, c, work).await {
            return Ok(()); // the task ended on a divergence it reported
        }
        self.report.data_records += 1;
        self.report.data_bytes += data.len() as u64;
        Ok(())
    }

    /// A journaled answer segment: the original proxy had delivered it
    /// before it journaled anything that follows, so no later record goes
    /// to the target before the target produced it (faithful order across
    /// connections); with `compare_answers` its content is checked too.
    /// Segments from before the connection's starting point are skipped.
    async fn expect_answer(
        &mut self,
        lsn: Lsn,
        conn: ConnId,
        offset: u64,
        len: u64,
        crc32: u32,
        data: &bytes::Bytes,
    ) {
        let inflight = self.inflight.clone();
        let compare = self.options.compare_answers;
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let Some(relative) = offset.checked_sub(c.base) else {
            return;
        };
        c.journaled = c.journaled.max(relative + len);
        if compare {
            self.report.answer_segments += 1;
            c.answers.expect(compare::ExpectedSegment {
                request_lsn: c.last_input_lsn.unwrap_or(lsn),
                answer_lsn: lsn,
                offset: relative,
                original_offset: offset,
                len,
                crc32,
                data: data.clone(),
            });
        }
        inflight.await_pending(lsn);
        c.answers.await_bytes(relative + len, lsn);
    }

    async fn half_close(&mut self, lsn: Lsn, conn: ConnId) -> Result<(), DivergenceKind> {
        let inflight = self.inflight.clone();
        if let Some(c) = self.conns.get(&conn) {
            queue_work(&inflight, c, worker::Work::HalfClose { lsn, seq: 0 }).await;
        }
        Ok(())
    }

    /// The original connection ended having delivered `resp_total` answer
    /// bytes: its task checks that the target produces exactly as many.
    async fn close(
        &mut self,
        lsn: Lsn,
        conn: ConnId,
        resp_total: u64,
    ) -> Result<(), DivergenceKind> {
        // Carried but never used: closed as the original was.
        self.carried.remove(&conn);
        let Some(c) = self.conns.remove(&conn) else {
            return Ok(());
        };
        let expected = resp_total.saturating_sub(c.base);
        let _ = c.queue.send(worker::Work::Close { lsn, expected }).await;
        self.closing.push((c.answers, c.task));
        Ok(())
    }

    /// Ends the replay: connections the journal had not closed are handed
    /// back open (nothing beyond the original's answers read from them).
    ///
    /// Before handing a connection back, it waits (bounded by the answer
    /// timeout) until the target has produced every answer byte the
    /// original client received: those must be dropped here, never reach
    /// the client twice. A shortfall is recorded as a divergence.
    pub async fn finish(mut self) -> (ReplayReport, Vec<OpenConnection>) {
        self.hurry.cancel();
        // Every queued record goes out first, in its turn: a reader stopped
        // early would starve a later record that waits for its answers.
        let mut ends = Vec::new();
        for (conn, c) in std::mem::take(&mut self.conns) {
            // Closing the queue lets the task finish what it holds.
            drop(c.queue);
            ends.push((conn, c.answers, c.base, c.task));
        }
        let mut closed = Vec::new();
        for (answers, task) in std::mem::take(&mut self.closing) {
            let _ = task.await;
            closed.push(answers);
        }
        let mut waited = Vec::new();
        for (conn, answers, base, task) in ends {
            let end = task.await.unwrap_or(worker::WorkerEnd { write: None });
            let owed = answers.watermark();
            if let Err(kind) = wait_answers(&answers, owed, self.options.answer_timeout).await {
                let lsn = self.report.last_lsn.unwrap_or_default();
                self.failures
                    .lock()
                    .expect("poisoned")
                    .push(Divergence { lsn, conn, kind });
            }
            // Strict checking (migration): every answer byte compared.
            answers.require_checked(owed);
            waited.push((conn, answers, base, end));
        }
        // Every task is done: nothing else holds an answer reader now.
        self.inflight.forget_last_sent();
        for answers in closed {
            self.report.answer_bytes += answers.got();
            if let Ok(answers) = Arc::try_unwrap(answers) {
                let _ = answers.stop().await;
            }
        }
        if self.options.verify_answers && !waited.is_empty() {
            // What the target says beyond the original's answers would
            // reach the clients after a hand-over: give it a moment to show.
            tokio::time::sleep(EXTRA_ANSWER_GRACE).await;
        }
        let mut open = Vec::new();
        for (conn, answers, base, end) in waited {
            let answered = answers.got();
            self.report.answer_bytes += answered;
            let owed = answers.watermark();
            let (read, pending) = match Arc::try_unwrap(answers) {
                Ok(answers) => answers.stop().await,
                Err(_) => (None, bytes::Bytes::new()),
            };
            if self.options.verify_answers && !self.options.answers_continue && !pending.is_empty()
            {
                let lsn = self.report.last_lsn.unwrap_or_default();
                self.failures.lock().expect("poisoned").push(Divergence {
                    lsn,
                    conn,
                    kind: DivergenceKind::ExtraAnswer {
                        expected: base + owed,
                    },
                });
            }
            let stream = match (read, end.write) {
                (Some(r), Some(w)) => r.reunite(w).ok(),
                _ => None,
            };
            open.push(OpenConnection {
                conn,
                stream,
                answered,
                pending,
                base,
            });
        }
        let failures = std::mem::take(&mut *self.failures.lock().expect("poisoned"));
        self.report.divergences.extend(failures);
        self.report.elapsed_seconds = self.started.elapsed().as_secs_f64();
        (self.report, open)
    }
}

/// How long a strict replay's finish waits for answers beyond the
/// original's before it hands connections over.
const EXTRA_ANSWER_GRACE: Duration = Duration::from_millis(5);

/// Queues `work` for `c`'s task, holding its place in the sequencer;
/// false if the task already ended (on a divergence it reported).
async fn queue_work(inflight: &InFlight, c: &ReplayConn, mut work: worker::Work) -> bool {
    if let Some((_, lsn)) = work.queued() {
        inflight.hold(lsn);
        work.set_seq(inflight.queue(c.turn.clone()));
    }
    let queued = work.queued();
    // A full queue waits: "applied" never runs far ahead of the target.
    if c.queue.send(work).await.is_err() {
        if let Some((seq, lsn)) = queued {
            inflight.done(seq, lsn);
        }
        return false;
    }
    true
}

/// When a record journaled at `time_us` is due at `speed`, given the first
/// record (journaled at `first_us`) was dispatched at `start`; `None` when
/// it is not later than the first or `speed` is not a positive number.
fn pace_due(
    start: tokio::time::Instant,
    first_us: u64,
    time_us: u64,
    speed: f64,
) -> Option<tokio::time::Instant> {
    let offset_us = time_us.checked_sub(first_us).filter(|d| *d > 0)?;
    if !(speed.is_finite() && speed > 0.0) {
        return None;
    }
    let offset = Duration::try_from_secs_f64(offset_us as f64 / 1e6 / speed).ok()?;
    start.checked_add(offset)
}

/// A divergence that stops the replay (migration) is worth a warning; when
/// the caller collects them all (the CLI lists them), one per record would
/// flood the log, so they are debug lines.
pub(crate) fn log_divergence(warn: bool, d: &Divergence) {
    if warn {
        tracing::warn!(lsn = d.lsn, conn = d.conn, kind = ?d.kind, "replay diverged");
    } else {
        tracing::debug!(lsn = d.lsn, conn = d.conn, kind = ?d.kind, "replay diverged");
    }
}

pub(crate) async fn wait_answers(
    answers: &AnswerReader,
    expected: u64,
    timeout: Duration,
) -> Result<(), DivergenceKind> {
    match tokio::time::timeout(timeout, answers.wait_for(expected)).await {
        Ok(true) => Ok(()),
        Ok(false) if answers.got() < expected => Err(DivergenceKind::TargetClosed),
        _ => Err(DivergenceKind::MissingAnswer {
            expected,
            got: answers.got(),
        }),
    }
}

pub(crate) async fn wait_total(
    total: &TotalAnswers,
    expected: u64,
    timeout: Duration,
) -> Result<(), DivergenceKind> {
    tokio::time::timeout(timeout, total.wait_for(expected))
        .await
        .map_err(|_| DivergenceKind::MissingAnswer {
            expected,
            got: total.get(),
        })
}

/// Replays every entry of `entries` (in LSN order) and finishes, closing
/// what remains open. For the debugging tool and tests.
pub async fn replay_all<I>(entries: I, options: ReplayOptions) -> Result<ReplayReport, ReplayError>
where
    I: IntoIterator<Item = Entry>,
{
    let mut replayer = Replayer::new(options);
    for entry in entries {
        replayer.apply(&entry).await?;
    }
    let stop = replayer.options.stop_on_divergence;
    let (report, _open) = replayer.finish().await;
    match report.divergences.first() {
        Some(d) if stop => Err(ReplayError::Diverged(d.clone())),
        _ => Ok(report),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pace_due_scales_the_original_offset_by_the_speed() {
        let start = tokio::time::Instant::now();
        let at = |time_us, speed| pace_due(start, 1_000_000, time_us, speed);
        assert_eq!(at(1_000_000, 1.0), None, "the first record: at once");
        assert_eq!(at(900_000, 1.0), None, "out of time order: not delayed");
        assert_eq!(at(2_000_000, 1.0), Some(start + Duration::from_secs(1)));
        assert_eq!(at(2_000_000, 2.0), Some(start + Duration::from_millis(500)));
        assert_eq!(at(2_000_000, 0.5), Some(start + Duration::from_secs(2)));
        assert_eq!(at(2_500_000, 1.5), Some(start + Duration::from_secs(1)));
        assert_eq!(at(2_000_000, 0.0), None);
        assert_eq!(at(2_000_000, f64::NAN), None);
    }
}

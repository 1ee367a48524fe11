//! The source's side of a migration as a pure state machine: which step
//! comes next, which message from the destination is legal in which state,
//! and where the commit point lies. No I/O here — the node's driver
//! carries out each [`SourceAction`] and feeds back what happened as a
//! [`SourceEvent`]; `on` answers with the next state and actions, or
//! refuses an event that is illegal where the migration stands.
//!
//! Replay (paper Algorithm 2) and iterative (Algorithm 1) each have their
//! own rows (`replay_row`, `iterative_row`) on top of the rows they share:
//! iterative pre-copies first, keeps the first barrier's hold up to the
//! hand-over, and forwards unsettled (its destination does not replay).

use crate::incoming::Incoming;
use crate::phase::Phase;
use std::fmt;

/// How the service's state moves (the driver's method carries the
/// iterative limits; the protocol only needs which one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Approach {
    /// One snapshot, then the journal is shipped and replayed.
    Replay,
    /// Pre-copy rounds, then one hold for the final delta and hand-over.
    Iterative,
}

/// Where the source stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceState {
    /// Linking to the destination.
    Connecting,
    /// `MigrateBegin` sent; waiting for `MigrateReady`.
    AwaitingReady,
    /// Iterative only: dumps while the service runs.
    PreCopying,
    /// The barrier that fixes the snapshot point (input held).
    Quiescing,
    /// The driver fixes the snapshot point (input still held).
    FixingPoint,
    /// The rest of the dump (replay: input flows again).
    FinishingDump,
    /// Snapshot chunks go out, with log batches between them.
    Transferring,
    /// Log shipping until the destination's lag is small.
    CatchingUp,
    /// Replay only: the hand-over's barrier (input held).
    Holding,
    /// The tail goes out; waiting until the destination applied it.
    ShippingTail,
    /// `HandOver` sent; waiting for `HandOverDone`.
    AwaitingDone,
    /// Recording durably that the destination owns the service: the
    /// commit point. Until this is written, any failure aborts.
    Committing,
    /// Committed: the destination owns the service; connections switch.
    Switching,
    /// The old service stops.
    Stopping,
    /// The destination owns the service.
    Done,
    /// Failed before the commit; the source owns and serves on.
    Aborted {
        /// Why, for the operator.
        reason: String,
    },
}

/// What the driver tells the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceEvent {
    /// The authenticated link to the destination is up.
    Linked,
    /// A message from the destination (see [`Incoming`]).
    Received(Incoming),
    /// The pre-copy rounds are done (the destination holds the last one).
    PreCopied,
    /// The barrier holds client input at a quiet point.
    Quiesced,
    /// The snapshot point is fixed (the driver's `fix_point`).
    PointFixed,
    /// The dump is complete and its manifest built.
    Dumped,
    /// Every snapshot chunk went out.
    Transferred,
    /// The destination's lag is small enough to hold the clients for the rest.
    CaughtUp,
    /// The destination applied everything up to the held head.
    TailApplied,
    /// The ownership record names the destination.
    CommitRecorded,
    /// Connections went over to the destination.
    Switched,
    /// The old service stopped.
    Stopped,
    /// A local step failed.
    Failed {
        /// What failed, for the operator and the destination.
        reason: String,
    },
}

/// What the machine asks the driver to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceAction {
    /// Send `MigrateBegin`, then read the destination's answer (→ `Received`).
    SendBegin,
    /// Run the pre-copy rounds (→ `PreCopied`).
    PreCopy,
    /// Hold client input at a quiet point (→ `Quiesced`).
    Quiesce,
    /// Forward settled from here to the end (replay: the destination
    /// replays in the order the service executed).
    ForwardSettled,
    /// Fix the snapshot point (→ `PointFixed`).
    FixPoint,
    /// Let client input flow again (drops the hold).
    ReleaseInput,
    /// Finish the dump and build its manifest (→ `Dumped`).
    FinishDump,
    /// Send the snapshot, log batches between its chunks (→ `Transferred`).
    Transfer,
    /// Ship the log until the lag is small (→ `CaughtUp`).
    CatchUp,
    /// Ship the rest of the log up to the held head (→ `TailApplied`).
    ShipTail,
    /// Send `HandOver`, then read the destination's answer (→ `Received`).
    SendHandOver,
    /// Write the ownership record naming the destination (→ `CommitRecorded`).
    RecordCommit,
    /// Tell the destination it owns the service (best effort: its tunnels
    /// and questions carry the commit too).
    SendCommit,
    /// Switch client connections to the destination (→ `Switched`).
    SwitchConnections,
    /// Stop the old service (→ `Stopped`).
    StopService,
    /// Tell the destination why the migration ends.
    TellAbort {
        /// The reason.
        reason: String,
    },
}

/// An event the machine refuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    /// The event is not legal in this state.
    Unexpected {
        /// The state's name.
        state: &'static str,
        /// The event.
        event: String,
    },
    /// After the commit nothing can abort: the destination owns the service.
    AfterCommit {
        /// The state's name.
        state: &'static str,
        /// The failure the driver reported.
        reason: String,
    },
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::Unexpected { state, event } => {
                write!(f, "unexpected {event} while {state}")
            }
            ProtocolError::AfterCommit { state, reason } => {
                write!(
                    f,
                    "a failure after the commit ({state}) cannot abort: {reason}"
                )
            }
        }
    }
}

impl std::error::Error for ProtocolError {}

/// The source's machine: its approach, the epoch it moves the service to,
/// and where it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Replay or iterative.
    pub approach: Approach,
    /// The new owner's epoch (`HandOverDone` must name it).
    pub epoch: u64,
    /// Where it stands.
    pub state: SourceState,
}

impl SourceState {
    /// Its name, in errors and in docs/protocol.md.
    pub fn name(&self) -> &'static str {
        use SourceState::*;
        match self {
            Connecting => "connecting",
            AwaitingReady => "awaiting_ready",
            PreCopying => "pre_copying",
            Quiescing => "quiescing",
            FixingPoint => "fixing_point",
            FinishingDump => "finishing_dump",
            Transferring => "transferring",
            CatchingUp => "catching_up",
            Holding => "holding",
            ShippingTail => "shipping_tail",
            AwaitingDone => "awaiting_done",
            Committing => "committing",
            Switching => "switching",
            Stopping => "stopping",
            Done => "done",
            Aborted { .. } => "aborted",
        }
    }

    /// The operator-visible phase it belongs to.
    pub fn phase(&self) -> Phase {
        use SourceState::*;
        match self {
            Connecting | AwaitingReady => Phase::Connecting,
            PreCopying => Phase::PreCopying,
            Quiescing => Phase::Quiescing,
            FixingPoint | FinishingDump => Phase::Dumping,
            Transferring => Phase::Transferring,
            CatchingUp => Phase::CatchingUp,
            Holding | ShippingTail | AwaitingDone | Committing | Switching => Phase::HandingOver,
            Stopping => Phase::Stopping,
            Done => Phase::Done,
            Aborted { .. } => Phase::Aborted,
        }
    }

    /// Whether the commit point has passed: the destination owns the
    /// service, and no failure can give it back.
    pub fn committed(&self) -> bool {
        matches!(
            self,
            SourceState::Switching | SourceState::Stopping | SourceState::Done
        )
    }

    /// Whether the migration has ended.
    pub fn finished(&self) -> bool {
        matches!(self, SourceState::Done | SourceState::Aborted { .. })
    }

    /// Which messages from the destination are legal here — the one place
    /// that says so. Log acknowledgements arrive while the log ships; an
    /// abort is legal until the commit.
    pub fn accepts(&self, m: &Incoming) -> bool {
        use SourceState::*;
        match (self, m) {
            (AwaitingReady, Incoming::Ready) => true,
            (Transferring | CatchingUp | Holding | ShippingTail, Incoming::LogApplied) => true,
            (AwaitingDone, Incoming::HandOverDone { .. }) => true,
            (s, Incoming::Abort { .. }) => !s.committed() && !s.finished(),
            _ => false,
        }
    }
}

impl Source {
    /// A migration about to link to its destination (state `Connecting`).
    pub fn new(approach: Approach, epoch: u64) -> Source {
        Source {
            approach,
            epoch,
            state: SourceState::Connecting,
        }
    }

    fn to(self, state: SourceState, actions: Vec<SourceAction>) -> Step {
        Ok((Source { state, ..self }, actions))
    }

    /// The transition for `event`: the next machine and what to do, in
    /// order; an event illegal in this state is an error (the driver
    /// aborts with it while it can).
    pub fn on(self, event: SourceEvent) -> Step {
        use SourceAction as A;
        use SourceEvent as E;
        use SourceState as S;
        if let E::Failed { reason } = &event {
            if self.state.committed() || self.state.finished() {
                return Err(ProtocolError::AfterCommit {
                    state: self.state.name(),
                    reason: reason.clone(),
                });
            }
            let tell = A::TellAbort {
                reason: reason.clone(),
            };
            let reason = format!("{} failed: {reason}", self.state.phase().name());
            // Before the link is up there is nobody to tell.
            let actions = if self.state == S::Connecting {
                vec![]
            } else {
                vec![tell]
            };
            return self.to(S::Aborted { reason }, actions);
        }
        if let E::Received(m) = &event {
            if !self.state.accepts(m) {
                return Err(self.unexpected(&event));
            }
            if let Incoming::Abort { reason } = m {
                let reason = format!(
                    "{} failed: the peer aborted: {reason}",
                    self.state.phase().name()
                );
                return self.to(S::Aborted { reason }, vec![]);
            }
        }
        let row = match self.approach {
            Approach::Replay => replay_row(&self.state, &event),
            Approach::Iterative => iterative_row(&self.state, &event),
        }
        .or_else(|| shared_row(&self.state, &event, self.epoch));
        match row {
            Some((state, actions)) => self.to(state, actions),
            None => Err(self.unexpected(&event)),
        }
    }

    fn unexpected(&self, event: &SourceEvent) -> ProtocolError {
        ProtocolError::Unexpected {
            state: self.state.name(),
            event: event.name(),
        }
    }
}

/// A row of a transition table: the next state and the actions.
type Row = Option<(SourceState, Vec<SourceAction>)>;

/// The rows only replay has: settled forwarding from the snapshot point,
/// the input released once the point is fixed, a second barrier for the
/// hand-over.
fn replay_row(state: &SourceState, event: &SourceEvent) -> Row {
    use SourceAction as A;
    use SourceEvent as E;
    use SourceState as S;
    Some(match (state, event) {
        (S::AwaitingReady, E::Received(Incoming::Ready)) => (S::Quiescing, vec![A::Quiesce]),
        (S::Quiescing, E::Quiesced) => (S::FixingPoint, vec![A::ForwardSettled, A::FixPoint]),
        (S::FixingPoint, E::PointFixed) => (S::FinishingDump, vec![A::ReleaseInput, A::FinishDump]),
        (S::CatchingUp, E::CaughtUp) => (S::Holding, vec![A::Quiesce]),
        (S::Holding, E::Quiesced) => (S::ShippingTail, vec![A::ShipTail]),
        _ => return None,
    })
}

/// The rows only iterative has: pre-copy rounds first, and one hold from
/// its only barrier to the switch.
fn iterative_row(state: &SourceState, event: &SourceEvent) -> Row {
    use SourceAction as A;
    use SourceEvent as E;
    use SourceState as S;
    Some(match (state, event) {
        (S::AwaitingReady, E::Received(Incoming::Ready)) => (S::PreCopying, vec![A::PreCopy]),
        (S::PreCopying, E::PreCopied) => (S::Quiescing, vec![A::Quiesce]),
        (S::Quiescing, E::Quiesced) => (S::FixingPoint, vec![A::FixPoint]),
        (S::FixingPoint, E::PointFixed) => (S::FinishingDump, vec![A::FinishDump]),
        (S::CatchingUp, E::CaughtUp) => (S::ShippingTail, vec![A::ShipTail]),
        _ => return None,
    })
}

/// The rows both approaches share.
fn shared_row(state: &SourceState, event: &SourceEvent, epoch: u64) -> Row {
    use SourceAction as A;
    use SourceEvent as E;
    use SourceState as S;
    Some(match (state, event) {
        (S::Connecting, E::Linked) => (S::AwaitingReady, vec![A::SendBegin]),
        (S::FinishingDump, E::Dumped) => (S::Transferring, vec![A::Transfer]),
        (S::Transferring, E::Transferred) => (S::CatchingUp, vec![A::CatchUp]),
        (S::ShippingTail, E::TailApplied) => (S::AwaitingDone, vec![A::SendHandOver]),
        (S::AwaitingDone, E::Received(Incoming::HandOverDone { epoch: e })) if *e == epoch => {
            (S::Committing, vec![A::RecordCommit])
        }
        (S::Committing, E::CommitRecorded) => {
            (S::Switching, vec![A::SendCommit, A::SwitchConnections])
        }
        (S::Switching, E::Switched) => (S::Stopping, vec![A::ReleaseInput, A::StopService]),
        (S::Stopping, E::Stopped) => (S::Done, vec![]),
        _ => return None,
    })
}

/// A transition's result.
pub type Step = Result<(Source, Vec<SourceAction>), ProtocolError>;

impl SourceState {
    /// Every state (one `Aborted`), for tables and tests.
    pub fn all() -> Vec<SourceState> {
        use SourceState::*;
        vec![
            Connecting,
            AwaitingReady,
            PreCopying,
            Quiescing,
            FixingPoint,
            FinishingDump,
            Transferring,
            CatchingUp,
            Holding,
            ShippingTail,
            AwaitingDone,
            Committing,
            Switching,
            Stopping,
            Done,
            Aborted {
                reason: String::new(),
            },
        ]
    }
}

impl SourceEvent {
    /// One of each event (messages from [`Incoming::samples`]), for tables
    /// and tests.
    pub fn samples(epoch: u64) -> Vec<SourceEvent> {
        use SourceEvent::*;
        let mut all = vec![Linked];
        all.extend(Incoming::samples(epoch).into_iter().map(Received));
        all.extend([
            PreCopied,
            Quiesced,
            PointFixed,
            Dumped,
            Transferred,
            CaughtUp,
            TailApplied,
            CommitRecorded,
            Switched,
            Stopped,
            Failed {
                reason: "…".into()
            },
        ]);
        all
    }
}

/// Every legal transition of both approaches as a Markdown table —
/// docs/protocol.md holds it, and a test keeps the two equal.
pub fn transition_table() -> String {
    let mut out = String::from(
        "| approach | state | event | next state | actions |\n|---|---|---|---|---|\n",
    );
    for approach in [Approach::Replay, Approach::Iterative] {
        for state in SourceState::all() {
            for event in SourceEvent::samples(1) {
                let m = Source {
                    approach,
                    epoch: 1,
                    state: state.clone(),
                };
                let Ok((next, actions)) = m.on(event.clone()) else {
                    continue;
                };
                let actions: Vec<String> = actions.iter().map(crate::variant_name).collect();
                out.push_str(&format!(
                    "| {} | {} | {} | {} | {} |\n",
                    match approach {
                        Approach::Replay => "replay",
                        Approach::Iterative => "iterative",
                    },
                    state.name(),
                    event.name(),
                    next.state.name(),
                    actions.join(", ")
                ));
            }
        }
    }
    out
}

impl SourceEvent {
    /// Its name, in errors.
    pub fn name(&self) -> String {
        match self {
            SourceEvent::Received(m) => format!("message {}", m.name()),
            other => format!("event {}", crate::variant_name(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use SourceAction as A;
    use SourceEvent as E;
    use SourceState as S;

    const EPOCH: u64 = 7;

    fn all_states() -> Vec<SourceState> {
        SourceState::all()
    }

    /// Feeds `events`, checking each step's actions; the phases visited
    /// only go forward.
    fn run(approach: Approach, steps: &[(SourceEvent, Vec<SourceAction>)]) -> Source {
        let mut m = Source::new(approach, EPOCH);
        for (event, actions) in steps {
            let before = m.state.phase();
            let (next, got) = m
                .on(event.clone())
                .unwrap_or_else(|e| panic!("{event:?}: {e}"));
            assert_eq!(&got, actions, "after {event:?}");
            let after = next.state.phase();
            assert!(
                before == after || before.can_advance_to(after),
                "{before:?} -> {after:?}"
            );
            m = next;
        }
        m
    }

    #[test]
    fn a_replay_migration_goes_through_every_step_in_order() {
        let m = run(
            Approach::Replay,
            &[
                (E::Linked, vec![A::SendBegin]),
                (E::Received(Incoming::Ready), vec![A::Quiesce]),
                (E::Quiesced, vec![A::ForwardSettled, A::FixPoint]),
                (E::PointFixed, vec![A::ReleaseInput, A::FinishDump]),
                (E::Dumped, vec![A::Transfer]),
                (E::Transferred, vec![A::CatchUp]),
                (E::CaughtUp, vec![A::Quiesce]),
                (E::Quiesced, vec![A::ShipTail]),
                (E::TailApplied, vec![A::SendHandOver]),
                (
                    E::Received(Incoming::HandOverDone { epoch: EPOCH }),
                    vec![A::RecordCommit],
                ),
                (E::CommitRecorded, vec![A::SendCommit, A::SwitchConnections]),
                (E::Switched, vec![A::ReleaseInput, A::StopService]),
                (E::Stopped, vec![]),
            ],
        );
        assert_eq!(m.state, S::Done);
    }

    #[test]
    fn an_iterative_migration_precopies_and_holds_from_its_barrier_to_the_end() {
        let m = run(
            Approach::Iterative,
            &[
                (E::Linked, vec![A::SendBegin]),
                (E::Received(Incoming::Ready), vec![A::PreCopy]),
                (E::PreCopied, vec![A::Quiesce]),
                // No settled forwarding, no release: the hold lasts.
                (E::Quiesced, vec![A::FixPoint]),
                (E::PointFixed, vec![A::FinishDump]),
                (E::Dumped, vec![A::Transfer]),
                (E::Transferred, vec![A::CatchUp]),
                // No second barrier.
                (E::CaughtUp, vec![A::ShipTail]),
                (E::TailApplied, vec![A::SendHandOver]),
                (
                    E::Received(Incoming::HandOverDone { epoch: EPOCH }),
                    vec![A::RecordCommit],
                ),
                (E::CommitRecorded, vec![A::SendCommit, A::SwitchConnections]),
                (E::Switched, vec![A::ReleaseInput, A::StopService]),
                (E::Stopped, vec![]),
            ],
        );
        assert_eq!(m.state, S::Done);
    }

    #[test]
    fn every_message_is_legal_only_where_accepts_says_and_illegal_ones_are_refused() {
        for approach in [Approach::Replay, Approach::Iterative] {
            for state in all_states() {
                for msg in Incoming::samples(EPOCH) {
                    let m = Source {
                        approach,
                        epoch: EPOCH,
                        state: state.clone(),
                    };
                    let legal = state.accepts(&msg);
                    let result = m.on(E::Received(msg.clone()));
                    match (&msg, legal) {
                        (_, false) => assert!(
                            matches!(result, Err(ProtocolError::Unexpected { .. })),
                            "{msg:?} in {state:?} must be refused: {result:?}"
                        ),
                        (Incoming::Abort { .. }, true) => {
                            let (next, actions) = result.unwrap();
                            assert!(matches!(next.state, S::Aborted { .. }));
                            assert!(actions.is_empty(), "the peer knows why");
                        }
                        // Acknowledgements are consumed while shipping:
                        // never a transition of their own.
                        (Incoming::LogApplied, true) => assert!(result.is_err()),
                        (_, true) => assert!(result.is_ok(), "{msg:?} in {state:?}: {result:?}"),
                    }
                }
            }
        }
    }

    #[test]
    fn only_the_expected_epochs_hand_over_done_leads_to_the_commit() {
        let m = Source {
            approach: Approach::Replay,
            epoch: EPOCH,
            state: S::AwaitingDone,
        };
        let stale = m
            .clone()
            .on(E::Received(Incoming::HandOverDone { epoch: EPOCH - 1 }));
        assert!(matches!(stale, Err(ProtocolError::Unexpected { .. })));
        let (next, _) = m
            .on(E::Received(Incoming::HandOverDone { epoch: EPOCH }))
            .unwrap();
        assert_eq!(next.state, S::Committing);
    }

    #[test]
    fn a_failure_aborts_until_the_commit_and_never_after() {
        for state in all_states() {
            let m = Source {
                approach: Approach::Replay,
                epoch: EPOCH,
                state: state.clone(),
            };
            let result = m.on(E::Failed {
                reason: "disk full".into(),
            });
            if state.committed() || state.finished() {
                assert!(
                    matches!(result, Err(ProtocolError::AfterCommit { .. })),
                    "{state:?}: {result:?}"
                );
                continue;
            }
            let (next, actions) = result.unwrap();
            let S::Aborted { reason } = &next.state else {
                panic!("{state:?} -> {:?}", next.state);
            };
            assert!(reason.starts_with(state.phase().name()), "{reason}");
            assert!(reason.ends_with("failed: disk full"), "{reason}");
            let told = vec![A::TellAbort {
                reason: "disk full".into(),
            }];
            let expected = if state == S::Connecting { vec![] } else { told };
            assert_eq!(actions, expected, "{state:?}");
        }
    }

    #[test]
    fn local_events_out_of_their_place_are_refused() {
        let local = [
            E::Linked,
            E::PreCopied,
            E::Quiesced,
            E::PointFixed,
            E::Dumped,
            E::Transferred,
            E::CaughtUp,
            E::TailApplied,
            E::CommitRecorded,
            E::Switched,
            E::Stopped,
        ];
        // Where each local event is legal, per approach.
        let legal = |approach: Approach, s: &SourceState, e: &SourceEvent| {
            let replay = approach == Approach::Replay;
            match (s, e) {
                (S::PreCopying, E::PreCopied) => !replay,
                (S::Holding, E::Quiesced) => replay,
                _ => matches!(
                    (s, e),
                    (S::Connecting, E::Linked)
                        | (S::Quiescing, E::Quiesced)
                        | (S::FixingPoint, E::PointFixed)
                        | (S::FinishingDump, E::Dumped)
                        | (S::Transferring, E::Transferred)
                        | (S::CatchingUp, E::CaughtUp)
                        | (S::ShippingTail, E::TailApplied)
                        | (S::Committing, E::CommitRecorded)
                        | (S::Switching, E::Switched)
                        | (S::Stopping, E::Stopped)
                ),
            }
        };
        for approach in [Approach::Replay, Approach::Iterative] {
            for state in all_states() {
                for event in &local {
                    let m = Source {
                        approach,
                        epoch: EPOCH,
                        state: state.clone(),
                    };
                    let result = m.on(event.clone());
                    assert_eq!(
                        result.is_ok(),
                        legal(approach, &state, event),
                        "{approach:?}: {event:?} in {state:?}: {result:?}"
                    );
                }
            }
        }
    }
}

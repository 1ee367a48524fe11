//! The destination's side of a migration as a pure state machine: whether
//! to accept a migration, which message is legal while the snapshot
//! arrives, while the log is replayed and while a prepared hand-over waits
//! for the source's word — and that a prepared destination never decides
//! alone (the source may have committed, so discarding could leave nobody
//! owning; it may have aborted, so owning could leave two). No I/O here:
//! the node's driver carries out each [`DestinationAction`] and feeds back
//! a [`DestinationEvent`].

use crate::incoming::Incoming;
use crate::phase::Phase;
pub use crate::source::ProtocolError;

/// What this node knows about the service when a migration is offered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Here {
    /// This node owns the service already.
    pub owns: bool,
    /// A migration of it runs here already.
    pub migrating: bool,
    /// The ownership epoch this node knows.
    pub epoch: u64,
}

/// Where the destination stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DestinationState {
    /// Nothing yet: a `MigrateBegin` may arrive.
    Idle,
    /// Pre-copy rounds, then the snapshot; log batches that come with it
    /// wait until the service is restored.
    ReceivingSnapshot,
    /// The snapshot is checked and restored; early batches replayed.
    Restoring,
    /// Log batches are journaled and replayed, progress acknowledged.
    CatchingUp,
    /// `HandOver` came: the replay finishes and every answer is checked.
    Finishing,
    /// Recording the prepared hand-over durably.
    Preparing,
    /// `HandOverDone` sent: waiting for the source's word.
    AwaitingCommit,
    /// The word did not come: asking the source until it decides.
    Asking,
    /// Taking ownership (the source committed).
    Owning,
    /// Dropping the prepared hand-over (the source kept the service).
    Discarding,
    /// This node owns the service.
    Done,
    /// The migration ended without this node owning the service.
    Aborted {
        /// Why, for the operator.
        reason: String,
    },
}

/// What the source decided, as learnt by asking it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// It committed: own the service.
    Commit,
    /// It kept the service: discard.
    Keep,
    /// Settled meanwhile by other means (a tunnel under the new epoch
    /// committed it).
    Settled,
}

/// What the driver tells the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DestinationEvent {
    /// A message from the source (`Begin` comes with what this node knows:
    /// [`DestinationEvent::Offered`]).
    Received(Incoming),
    /// `MigrateBegin` for `epoch` arrived; `here` is this node's view.
    Offered {
        /// The epoch offered.
        epoch: u64,
        /// This node's view of the service.
        here: Here,
    },
    /// A complete snapshot arrived; `precopy`: a pre-copy round (more follow).
    SnapshotReceived {
        /// Whether it was a pre-copy round.
        precopy: bool,
    },
    /// The service runs from the snapshot; early batches were replayed.
    Restored,
    /// The replay finished and every answer matched.
    ReplayFinished,
    /// The prepared hand-over is recorded durably.
    Prepared,
    /// No word from the source in time (or the link is gone).
    NoWord,
    /// Asking the source found its decision.
    Decided(Decision),
    /// Ownership taken.
    Owned,
    /// The prepared hand-over is dropped.
    Discarded,
    /// A local step failed (a divergence, a restore, a full disk).
    Failed {
        /// What failed.
        reason: String,
    },
}

/// What the machine asks the driver to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DestinationAction {
    /// Mark the service as migrating here, send `MigrateReady`.
    Accept,
    /// Send `MigrateAbort` with the reason and end.
    Refuse {
        /// Why.
        reason: String,
    },
    /// Receive one snapshot (a pre-copy round or the real one), keeping
    /// log batches that arrive meanwhile (→ `SnapshotReceived`).
    ReceiveSnapshot,
    /// Check the snapshot, restore the service, replay the early batches
    /// (→ `Restored`).
    Restore,
    /// Journal and replay log batches, acknowledging progress, until
    /// another message comes (→ `Received`).
    CatchUp,
    /// Finish the replay up to what the source delivered (→ `ReplayFinished`).
    FinishReplay,
    /// Park the replayed connections, record the prepared hand-over (→ `Prepared`).
    Prepare,
    /// Send `HandOverDone`, then wait for the word (→ `Received` or `NoWord`).
    SendDone,
    /// Ask the source until it decides (→ `Decided`).
    AskSource,
    /// Own the service under the epoch (→ `Owned`).
    Own,
    /// Drop the prepared hand-over and the restored copy (→ `Discarded`).
    Discard,
    /// Stop a restored copy that never became the owner.
    StopRestored,
    /// Tell the source why the migration ends.
    TellAbort {
        /// The reason.
        reason: String,
    },
}

/// The destination's machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// The epoch offered (0 until `Offered`).
    pub epoch: u64,
    /// Where it stands.
    pub state: DestinationState,
}

impl Default for Destination {
    fn default() -> Self {
        Destination {
            epoch: 0,
            state: DestinationState::Idle,
        }
    }
}

impl DestinationState {
    /// Its name, in errors and in docs/protocol.md.
    pub fn name(&self) -> &'static str {
        use DestinationState::*;
        match self {
            Idle => "idle",
            ReceivingSnapshot => "receiving_snapshot",
            Restoring => "restoring",
            CatchingUp => "catching_up",
            Finishing => "finishing",
            Preparing => "preparing",
            AwaitingCommit => "awaiting_commit",
            Asking => "asking",
            Owning => "owning",
            Discarding => "discarding",
            Done => "done",
            Aborted { .. } => "aborted",
        }
    }

    /// The operator-visible phase it belongs to.
    pub fn phase(&self) -> Phase {
        use DestinationState::*;
        match self {
            Idle => Phase::Connecting,
            ReceivingSnapshot => Phase::Transferring,
            Restoring | CatchingUp => Phase::CatchingUp,
            Finishing | Preparing | AwaitingCommit | Asking | Owning | Discarding => {
                Phase::HandingOver
            }
            Done => Phase::Done,
            Aborted { .. } => Phase::Aborted,
        }
    }

    /// Prepared: from here on only the source's decision ends it.
    pub fn prepared(&self) -> bool {
        use DestinationState::*;
        matches!(self, AwaitingCommit | Asking | Owning | Discarding)
    }

    /// Whether the migration has ended here.
    pub fn finished(&self) -> bool {
        matches!(
            self,
            DestinationState::Done | DestinationState::Aborted { .. }
        )
    }

    /// Which messages from the source are legal here — the one place that
    /// says so. Snapshot parts and early log batches while the snapshot
    /// arrives; log batches while catching up (consumed by the replay
    /// step); `HandOver` to end catching up; the commit while prepared;
    /// an abort until the hand-over is prepared, and while waiting for
    /// the word.
    pub fn accepts(&self, m: &Incoming) -> bool {
        use DestinationState::*;
        matches!(
            (self, m),
            (ReceivingSnapshot, Incoming::Snapshot | Incoming::LogBatch)
                | (CatchingUp, Incoming::LogBatch | Incoming::HandOver { .. })
                | (AwaitingCommit, Incoming::Commit { .. })
                | (
                    ReceivingSnapshot | Restoring | CatchingUp | AwaitingCommit,
                    Incoming::Abort { .. }
                )
        )
    }
}

/// A transition's result.
pub type Step = Result<(Destination, Vec<DestinationAction>), ProtocolError>;

impl DestinationState {
    /// Every state (one `Aborted`), for tables and tests.
    pub fn all() -> Vec<DestinationState> {
        use DestinationState::*;
        vec![
            Idle,
            ReceivingSnapshot,
            Restoring,
            CatchingUp,
            Finishing,
            Preparing,
            AwaitingCommit,
            Asking,
            Owning,
            Discarding,
            Done,
            Aborted {
                reason: String::new(),
            },
        ]
    }
}

impl DestinationEvent {
    /// One of each event (an acceptable and a stale offer; messages from
    /// [`Incoming::samples`]), for tables and tests.
    pub fn samples(epoch: u64) -> Vec<DestinationEvent> {
        use DestinationEvent::*;
        let here = Here {
            owns: false,
            migrating: false,
            epoch: epoch - 1,
        };
        let mut all = vec![
            Offered {
                epoch,
                here: here.clone(),
            },
            Offered {
                epoch,
                here: Here { epoch, ..here },
            },
        ];
        all.extend(Incoming::samples(epoch).into_iter().map(Received));
        all.extend([
            SnapshotReceived { precopy: true },
            SnapshotReceived { precopy: false },
            Restored,
            ReplayFinished,
            Prepared,
            NoWord,
            Decided(Decision::Commit),
            Decided(Decision::Keep),
            Decided(Decision::Settled),
            Owned,
            Discarded,
            Failed {
                reason: "…".into()
            },
        ]);
        all
    }

    /// Its name in tables: the variant, with the field that decides.
    fn label(&self) -> String {
        use DestinationEvent::*;
        match self {
            Received(m) => format!("message {}", m.name()),
            Offered { epoch, here } if *epoch <= here.epoch => "event Offered (stale)".into(),
            Offered { .. } => "event Offered".into(),
            SnapshotReceived { precopy } => format!("event SnapshotReceived (precopy: {precopy})"),
            Decided(d) => format!("event Decided ({d:?})"),
            other => other.name(),
        }
    }

    /// Its name, in errors.
    pub fn name(&self) -> String {
        match self {
            DestinationEvent::Received(m) => format!("message {}", m.name()),
            other => format!("event {}", crate::variant_name(other)),
        }
    }
}

/// Every legal transition as a Markdown table — docs/protocol.md holds
/// it, and a test keeps the two equal.
pub fn transition_table() -> String {
    let mut out = String::from("| state | event | next state | actions |\n|---|---|---|---|\n");
    for state in DestinationState::all() {
        for event in DestinationEvent::samples(2) {
            let m = Destination {
                epoch: 2,
                state: state.clone(),
            };
            let Ok((next, actions)) = m.on(event.clone()) else {
                continue;
            };
            let actions: Vec<String> = actions.iter().map(crate::variant_name).collect();
            out.push_str(&format!(
                "| {} | {} | {} | {} |\n",
                state.name(),
                event.label(),
                next.state.name(),
                actions.join(", ")
            ));
        }
    }
    out
}

impl Destination {
    fn to(self, state: DestinationState, actions: Vec<DestinationAction>) -> Step {
        Ok((Destination { state, ..self }, actions))
    }

    fn unexpected(&self, event: &DestinationEvent) -> ProtocolError {
        ProtocolError::Unexpected {
            state: self.state.name(),
            event: event.name(),
        }
    }

    /// The transition for `event`: the next machine and what to do, in
    /// order; an event illegal in this state is an error.
    pub fn on(self, event: DestinationEvent) -> Step {
        use DestinationAction as A;
        use DestinationEvent as E;
        use DestinationState as S;
        if let E::Failed { reason } = &event {
            return match &self.state {
                // Nothing restored or recorded yet, or a restored copy
                // that never owned: stop it and tell the source.
                S::ReceivingSnapshot
                | S::Restoring
                | S::CatchingUp
                | S::Finishing
                | S::Preparing => {
                    let tell = A::TellAbort {
                        reason: reason.clone(),
                    };
                    let reason = format!("{} failed: {reason}", self.state.phase().name());
                    self.to(S::Aborted { reason }, vec![A::StopRestored, tell])
                }
                // Prepared: a failure to hear the word is no word.
                S::AwaitingCommit => self.to(S::Asking, vec![A::AskSource]),
                _ => Err(ProtocolError::AfterCommit {
                    state: self.state.name(),
                    reason: reason.clone(),
                }),
            };
        }
        if let E::Received(m) = &event {
            if !self.state.accepts(m) {
                return Err(self.unexpected(&event));
            }
            if let Incoming::Abort { reason } = m {
                let reason = format!("the source aborted: {reason}");
                return if self.state == S::AwaitingCommit {
                    self.to(S::Discarding, vec![A::Discard])
                } else {
                    self.to(S::Aborted { reason }, vec![A::StopRestored])
                };
            }
        }
        match (&self.state, &event) {
            (S::Idle, E::Offered { epoch, here }) => {
                let refusal = if here.owns {
                    Some("this node already owns the service".to_string())
                } else if here.migrating {
                    Some("a migration is already running here".to_string())
                } else if *epoch <= here.epoch {
                    Some(format!("stale epoch {epoch} (current is {})", here.epoch))
                } else {
                    None
                };
                let epoch = *epoch;
                match refusal {
                    Some(reason) => Ok((
                        Destination {
                            epoch,
                            state: S::Aborted {
                                reason: format!("migration refused: {reason}"),
                            },
                        },
                        vec![A::Refuse { reason }],
                    )),
                    None => Ok((
                        Destination {
                            epoch,
                            state: S::ReceivingSnapshot,
                        },
                        vec![A::Accept, A::ReceiveSnapshot],
                    )),
                }
            }
            (S::ReceivingSnapshot, E::SnapshotReceived { precopy: true }) => {
                self.to(S::ReceivingSnapshot, vec![A::ReceiveSnapshot])
            }
            (S::ReceivingSnapshot, E::SnapshotReceived { precopy: false }) => {
                self.to(S::Restoring, vec![A::Restore])
            }
            (S::Restoring, E::Restored) => self.to(S::CatchingUp, vec![A::CatchUp]),
            (S::CatchingUp, E::Received(Incoming::HandOver { epoch })) if *epoch == self.epoch => {
                self.to(S::Finishing, vec![A::FinishReplay])
            }
            (S::Finishing, E::ReplayFinished) => self.to(S::Preparing, vec![A::Prepare]),
            (S::Preparing, E::Prepared) => self.to(S::AwaitingCommit, vec![A::SendDone]),
            (S::AwaitingCommit, E::Received(Incoming::Commit { epoch }))
                if *epoch == self.epoch =>
            {
                self.to(S::Owning, vec![A::Own])
            }
            (S::AwaitingCommit, E::NoWord) => self.to(S::Asking, vec![A::AskSource]),
            (S::Asking, E::Decided(Decision::Commit)) => self.to(S::Owning, vec![A::Own]),
            (S::Asking, E::Decided(Decision::Keep)) => self.to(S::Discarding, vec![A::Discard]),
            (S::Asking, E::Decided(Decision::Settled)) => self.to(S::Done, vec![]),
            (S::Owning, E::Owned) => self.to(S::Done, vec![]),
            (S::Discarding, E::Discarded) => {
                let reason = "handing_over failed: the source kept the service".to_string();
                self.to(S::Aborted { reason }, vec![])
            }
            _ => Err(self.unexpected(&event)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DestinationAction as A;
    use DestinationEvent as E;
    use DestinationState as S;

    const EPOCH: u64 = 4;

    fn free() -> Here {
        Here {
            owns: false,
            migrating: false,
            epoch: EPOCH - 1,
        }
    }

    fn all_states() -> Vec<DestinationState> {
        DestinationState::all()
    }

    fn at(state: DestinationState) -> Destination {
        Destination {
            epoch: EPOCH,
            state,
        }
    }

    fn run(steps: &[(DestinationEvent, Vec<DestinationAction>)]) -> Destination {
        let mut m = Destination::default();
        for (event, actions) in steps {
            let before = m.state.phase();
            let (next, got) = m
                .on(event.clone())
                .unwrap_or_else(|e| panic!("{event:?}: {e}"));
            assert_eq!(&got, actions, "after {event:?}");
            let after = next.state.phase();
            assert!(
                before == after
                    || before.can_advance_to(after)
                    || after == Phase::Aborted
                    // The destination's first phase is the transfer.
                    || (before == Phase::Connecting && after == Phase::Transferring)
                    || (before == Phase::HandingOver && after == Phase::Done),
                "{before:?} -> {after:?}"
            );
            m = next;
        }
        m
    }

    #[test]
    fn a_migration_is_received_replayed_prepared_and_committed() {
        let m = run(&[
            (
                E::Offered {
                    epoch: EPOCH,
                    here: free(),
                },
                vec![A::Accept, A::ReceiveSnapshot],
            ),
            // Two pre-copy rounds, then the snapshot.
            (
                E::SnapshotReceived { precopy: true },
                vec![A::ReceiveSnapshot],
            ),
            (
                E::SnapshotReceived { precopy: true },
                vec![A::ReceiveSnapshot],
            ),
            (E::SnapshotReceived { precopy: false }, vec![A::Restore]),
            (E::Restored, vec![A::CatchUp]),
            (
                E::Received(Incoming::HandOver { epoch: EPOCH }),
                vec![A::FinishReplay],
            ),
            (E::ReplayFinished, vec![A::Prepare]),
            (E::Prepared, vec![A::SendDone]),
            (E::Received(Incoming::Commit { epoch: EPOCH }), vec![A::Own]),
            (E::Owned, vec![]),
        ]);
        assert_eq!(m.state, S::Done);
        assert_eq!(m.epoch, EPOCH);
    }

    #[test]
    fn an_offer_is_refused_when_owned_running_or_stale() {
        for (here, why) in [
            (
                Here {
                    owns: true,
                    ..free()
                },
                "already owns",
            ),
            (
                Here {
                    migrating: true,
                    ..free()
                },
                "already running",
            ),
            (
                Here {
                    epoch: EPOCH,
                    ..free()
                },
                "stale epoch 4 (current is 4)",
            ),
        ] {
            let (m, actions) = Destination::default()
                .on(E::Offered { epoch: EPOCH, here })
                .unwrap();
            let S::Aborted { reason } = &m.state else {
                panic!("{:?}", m.state)
            };
            assert!(reason.contains(why), "{reason}");
            assert!(matches!(&actions[..], [A::Refuse { reason }] if reason.contains(why)));
        }
    }

    #[test]
    fn a_prepared_destination_never_decides_alone() {
        // No word: ask; then whatever the source says.
        let (m, actions) = at(S::AwaitingCommit).on(E::NoWord).unwrap();
        assert_eq!((m.state.clone(), actions), (S::Asking, vec![A::AskSource]));
        let (own, a) = m.clone().on(E::Decided(Decision::Commit)).unwrap();
        assert_eq!((own.state, a), (S::Owning, vec![A::Own]));
        let (drop, a) = m.clone().on(E::Decided(Decision::Keep)).unwrap();
        assert_eq!((drop.state, a), (S::Discarding, vec![A::Discard]));
        let (done, a) = m.clone().on(E::Decided(Decision::Settled)).unwrap();
        assert_eq!((done.state, a), (S::Done, vec![]));
        // A failure while waiting is no word, never a discard.
        let (m, actions) = at(S::AwaitingCommit)
            .on(E::Failed {
                reason: "link reset".into(),
            })
            .unwrap();
        assert_eq!((m.state, actions), (S::Asking, vec![A::AskSource]));
        // Asking, owning and discarding cannot fail out.
        for s in [S::Asking, S::Owning, S::Discarding] {
            let r = at(s.clone()).on(E::Failed { reason: "x".into() });
            assert!(matches!(r, Err(ProtocolError::AfterCommit { .. })), "{s:?}");
        }
        // The source's abort while prepared discards.
        let (m, a) = at(S::AwaitingCommit)
            .on(E::Received(Incoming::Abort {
                reason: "tail".into(),
            }))
            .unwrap();
        assert_eq!((m.state.clone(), a), (S::Discarding, vec![A::Discard]));
        let (m, _) = m.on(E::Discarded).unwrap();
        assert!(matches!(m.state, S::Aborted { .. }));
    }

    #[test]
    fn a_failure_before_the_hand_over_is_prepared_stops_the_copy_and_tells_the_source() {
        for s in [
            S::ReceivingSnapshot,
            S::Restoring,
            S::CatchingUp,
            S::Finishing,
            S::Preparing,
        ] {
            let (m, actions) = at(s.clone())
                .on(E::Failed {
                    reason: "replay diverged".into(),
                })
                .unwrap();
            let S::Aborted { reason } = &m.state else {
                panic!("{s:?}")
            };
            assert!(reason.ends_with("failed: replay diverged"), "{reason}");
            assert_eq!(
                actions,
                vec![
                    A::StopRestored,
                    A::TellAbort {
                        reason: "replay diverged".into()
                    }
                ]
            );
        }
    }

    #[test]
    fn every_message_is_legal_only_where_accepts_says_and_illegal_ones_are_refused() {
        for state in all_states() {
            for msg in Incoming::samples(EPOCH) {
                let legal = state.accepts(&msg);
                let result = at(state.clone()).on(E::Received(msg.clone()));
                match (&msg, legal) {
                    (_, false) => assert!(
                        matches!(result, Err(ProtocolError::Unexpected { .. })),
                        "{msg:?} in {state:?} must be refused: {result:?}"
                    ),
                    (Incoming::Abort { .. }, true) => {
                        let (next, _) = result.unwrap();
                        assert!(
                            matches!(next.state, S::Aborted { .. } | S::Discarding),
                            "{state:?}"
                        );
                    }
                    // Consumed by the step that receives them, never a
                    // transition of their own.
                    (Incoming::Snapshot | Incoming::LogBatch, true) => assert!(result.is_err()),
                    (_, true) => assert!(result.is_ok(), "{msg:?} in {state:?}: {result:?}"),
                }
            }
        }
    }

    #[test]
    fn a_hand_over_or_commit_for_another_epoch_is_refused() {
        let r = at(S::CatchingUp).on(E::Received(Incoming::HandOver { epoch: EPOCH + 1 }));
        assert!(matches!(r, Err(ProtocolError::Unexpected { .. })));
        let r = at(S::AwaitingCommit).on(E::Received(Incoming::Commit { epoch: EPOCH - 1 }));
        assert!(matches!(r, Err(ProtocolError::Unexpected { .. })));
    }
}

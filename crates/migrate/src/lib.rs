//! Replay migration between nodes (DESIGN.md, paper Algorithm 2): the
//! protocol as two pure state machines — [`source`] and [`destination`],
//! which say what comes next and which message is legal where (the node's
//! drivers carry out their actions; docs/protocol.md draws them) — and
//! [`logship`], streaming a journal from the snapshot point to another
//! node, which journals the records under the same LSNs and acknowledges
//! what it applied.

pub mod destination;
pub mod incoming;
pub mod logship;
pub mod phase;
pub mod source;

pub use incoming::Incoming;
pub use phase::Phase;

/// An enum value's variant name (`Failed` for `Failed { .. }`), for
/// errors and the generated tables: the machines' events and actions are
/// named after their variants.
pub(crate) fn variant_name(value: &impl std::fmt::Debug) -> String {
    let debug = format!("{value:?}");
    debug
        .split([' ', '{', '('])
        .next()
        .unwrap_or("")
        .to_string()
}

#[cfg(test)]
mod docs_match {
    const DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/protocol.md");

    /// `doc` with the generated table after `marker` replaced by `table`.
    fn with_table(doc: &str, marker: &str, table: &str) -> String {
        let start = doc.find(marker).expect("the marker") + marker.len() + 1;
        let end = start + doc[start..].find("<!-- end -->").expect("the end marker");
        format!("{}{table}{}", &doc[..start], &doc[end..])
    }

    /// docs/protocol.md shows both machines' transition tables; they are
    /// generated from the machines, and this test fails when the code and
    /// the document drift apart (it prints the table the code has;
    /// `UPDATE_PROTOCOL_MD=1` writes it into the document instead).
    #[test]
    fn protocol_md_holds_the_machines_transition_tables() {
        let mut doc = std::fs::read_to_string(DOC).expect("docs/protocol.md");
        let tables = [
            (
                "<!-- source table: generated -->",
                crate::source::transition_table(),
            ),
            (
                "<!-- destination table: generated -->",
                crate::destination::transition_table(),
            ),
        ];
        if std::env::var_os("UPDATE_PROTOCOL_MD").is_some() {
            for (marker, table) in &tables {
                doc = with_table(&doc, marker, table);
            }
            std::fs::write(DOC, &doc).expect("write docs/protocol.md");
        }
        for (marker, table) in &tables {
            assert_eq!(
                with_table(&doc, marker, table),
                doc,
                "docs/protocol.md's table after {marker} differs from the code's:\n{table}"
            );
        }
    }

    /// The edges `from --> to` of the Mermaid diagram under `heading`,
    /// without the start and end markers.
    fn diagram_edges(doc: &str, heading: &str) -> BTreeSet<(String, String)> {
        let section = &doc[doc.find(heading).expect("the heading")..];
        let block = &section[section.find("```mermaid").expect("a diagram")..];
        let block = &block[..block[3..].find("```").expect("its end") + 3];
        block
            .lines()
            .filter_map(|l| {
                let (from, rest) = l.trim().split_once(" --> ")?;
                let to = rest.split(':').next()?.trim();
                (from != "[*]" && to != "[*]").then(|| (from.to_string(), to.to_string()))
            })
            .collect()
    }

    use std::collections::BTreeSet;

    /// The diagrams draw exactly the machines' transitions, failures and
    /// aborts aside (the prose covers those): an edge the code lacks, or a
    /// transition the diagram lacks, fails.
    #[test]
    fn protocol_md_diagrams_draw_the_machines_transitions() {
        use crate::destination::{Destination, DestinationEvent, DestinationState};
        use crate::source::{Approach, Source, SourceEvent, SourceState};
        use crate::Incoming;
        let doc = std::fs::read_to_string(DOC).expect("docs/protocol.md");
        // Failures, and aborts that end in `aborted`, are the prose's.
        let aside =
            |m: &Incoming, next: &str| matches!(m, Incoming::Abort { .. }) && next == "aborted";
        let mut source = BTreeSet::new();
        for approach in [Approach::Replay, Approach::Iterative] {
            for state in SourceState::all() {
                for event in SourceEvent::samples(1) {
                    if matches!(event, SourceEvent::Failed { .. }) {
                        continue;
                    }
                    let m = Source {
                        approach,
                        epoch: 1,
                        state: state.clone(),
                    };
                    if let Ok((next, _)) = m.on(event.clone()) {
                        let to = next.state.name();
                        if let SourceEvent::Received(msg) = &event {
                            if aside(msg, to) {
                                continue;
                            }
                        }
                        source.insert((state.name().to_string(), to.to_string()));
                    }
                }
            }
        }
        assert_eq!(
            diagram_edges(&doc, "## Source"),
            source,
            "the source diagram"
        );
        let mut destination = BTreeSet::new();
        for state in DestinationState::all() {
            for event in DestinationEvent::samples(2) {
                if matches!(event, DestinationEvent::Failed { .. }) {
                    continue;
                }
                let m = Destination {
                    epoch: 2,
                    state: state.clone(),
                };
                if let Ok((next, _)) = m.on(event.clone()) {
                    let to = next.state.name();
                    if let DestinationEvent::Received(msg) = &event {
                        if aside(msg, to) {
                            continue;
                        }
                    }
                    destination.insert((state.name().to_string(), to.to_string()));
                }
            }
        }
        assert_eq!(
            diagram_edges(&doc, "## Destination"),
            destination,
            "the destination diagram"
        );
    }
}

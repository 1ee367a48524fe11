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

#[cfg(test)]
mod docs_match {
    /// docs/protocol.md shows both machines' transition tables; they are
    /// generated from the machines, and this test fails when the code and
    /// the document drift apart (it prints the table the code has).
    #[test]
    fn protocol_md_holds_the_machines_transition_tables() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/protocol.md");
        let doc = std::fs::read_to_string(path).expect("docs/protocol.md");
        for (name, table) in [
            ("source", crate::source::transition_table()),
            ("destination", crate::destination::transition_table()),
        ] {
            assert!(
                doc.contains(&table),
                "docs/protocol.md lacks the {name} machine's table as the code has it:\n{table}"
            );
        }
    }
}

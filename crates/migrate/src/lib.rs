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
}

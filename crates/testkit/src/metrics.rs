//! Reading a Prometheus endpoint the way an operator's scraper does:
//! plain HTTP, text format, one sample per series.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Samples of one scrape: `name{labels}` → value.
pub struct Metrics(pub BTreeMap<String, f64>);

impl Metrics {
    /// The value of a series written exactly as on the page; a bare family
    /// name sums its labelled series; `family{a="x",b="y"}` not on the page
    /// as written sums the series carrying those labels among others (a
    /// global `node` label, say: see [`Metrics::get_labelled`]). 0 if absent.
    pub fn get(&self, series: &str) -> f64 {
        if let Some(v) = self.0.get(series) {
            return *v;
        }
        if let Some((family, labels)) = series.split_once('{') {
            let pairs: Vec<(&str, &str)> = labels
                .trim_end_matches('}')
                .split(',')
                .filter_map(|pair| pair.split_once('='))
                .map(|(name, value)| (name, value.trim_matches('"')))
                .collect();
            return self.get_labelled(family, &pairs);
        }
        let prefix = format!("{series}{{");
        self.0
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .map(|(_, v)| v)
            .sum()
    }
    /// The sum of the family's series that carry every one of `labels`
    /// (whatever other labels they have, in whatever order: a node's or a
    /// proxy's global `node` label, say).
    pub fn get_labelled(&self, family: &str, labels: &[(&str, &str)]) -> f64 {
        let prefix = format!("{family}{{");
        self.0
            .iter()
            .filter(|(k, _)| {
                k.strip_prefix(&prefix).is_some_and(|rest| {
                    let set: Vec<&str> = rest.trim_end_matches('}').split(',').collect();
                    labels
                        .iter()
                        .all(|(name, value)| set.contains(&format!("{name}=\"{value}\"").as_str()))
                })
            })
            .map(|(_, v)| v)
            .sum()
    }

    /// Whether any series of the family exists.
    pub fn has_family(&self, prefix: &str) -> bool {
        self.0.keys().any(|k| k.starts_with(prefix))
    }
}

/// GET /metrics over plain HTTP/1.0.
pub fn scrape(addr: SocketAddr) -> anyhow::Result<Metrics> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    // The samples are the body, after the HTTP headers.
    let body = body
        .split_once("\r\n\r\n")
        .map_or(body.as_str(), |(_, b)| b);
    let mut samples = BTreeMap::new();
    for line in body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        if let Some((series, value)) = line.rsplit_once(' ') {
            if let Ok(v) = value.parse() {
                samples.insert(series.to_string(), v);
            }
        }
    }
    Ok(Metrics(samples))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labelled_lookups_ignore_other_labels_and_their_order() {
        let m = Metrics(
            [
                (r#"e_total{node="a",service="s",kind="x"}"#.to_string(), 2.0),
                (r#"e_total{kind="x",service="t"}"#.to_string(), 3.0),
                (r#"e_total{service="s",kind="y"}"#.to_string(), 5.0),
            ]
            .into_iter()
            .collect(),
        );
        assert_eq!(
            m.get_labelled("e_total", &[("service", "s"), ("kind", "x")]),
            2.0
        );
        assert_eq!(m.get_labelled("e_total", &[("kind", "x")]), 5.0);
        assert_eq!(m.get_labelled("e_total", &[("kind", "z")]), 0.0);
        assert_eq!(m.get_labelled("other", &[]), 0.0);
        assert_eq!(
            m.get(r#"e_total{service="s",kind="x"}"#),
            2.0,
            "other labels ignored"
        );
        assert_eq!(m.get(r#"e_total{kind="x",service="t"}"#), 3.0, "as written");
        assert_eq!(m.get("e_total"), 10.0, "the family");
    }
}

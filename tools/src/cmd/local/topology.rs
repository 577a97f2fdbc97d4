//! `local up --topology FILE`: simulated locations for the nodes and the client of a local
//! grid, so placement rules can be tried (and tested) on one machine.
//!
//! ```text
//! # two regions, three zones
//! node   eu/eu-1/a  48.1,11.6
//! node   eu/eu-2/b
//! node   us/us-1/c  40.7,-74.0
//! client eu/eu-1/laptop
//! ```

use std::path::Path;

use anyhow::{Context, Result, bail};
use gridback_proto::Location;

/// Locations read from a topology file.
#[derive(Debug, Clone, PartialEq)]
pub struct Topology {
    /// One per node, in order (node-01 first).
    pub nodes: Vec<Location>,
    /// The client's, if given.
    pub client: Option<Location>,
}

impl Topology {
    /// Read and check a topology file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the topology file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in the topology file {}", path.display()))
    }

    /// Parse the text of a topology file.
    pub fn parse(text: &str) -> Result<Self> {
        let mut nodes = Vec::new();
        let mut client = None;
        for (n, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (kind, labels, coords) = match fields.as_slice() {
                [k, l] => (*k, *l, None),
                [k, l, c] => (*k, *l, Some(*c)),
                _ => bail!(
                    "line {}: expected `node|client REGION/ZONE/HOST [LAT,LON]`, got {raw:?}",
                    n + 1
                ),
            };
            let loc = Location::parse(labels, coords).with_context(|| format!("line {}", n + 1))?;
            match kind {
                "node" => nodes.push(loc),
                "client" if client.is_some() => bail!("line {}: a second `client` line", n + 1),
                "client" => client = Some(loc),
                other => bail!(
                    "line {}: unknown kind {other:?} (expected `node` or `client`)",
                    n + 1
                ),
            }
        }
        if nodes.is_empty() {
            bail!("no `node` lines");
        }
        Ok(Self { nodes, client })
    }
}

/// The TOML lines that give a daemon or client its location.
pub fn location_toml(loc: &Location) -> String {
    let mut s = format!("location = \"{}\"\n", loc.labels());
    if let Some(c) = loc.coords {
        s.push_str(&format!("coords = \"{c}\"\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nodes_in_order_and_the_client() {
        let t = Topology::parse(
            "# comment\nnode eu/eu-1/a 48.1,11.6\n\nnode us/us-1/b # trailing\nclient eu/eu-1/c\n",
        )
        .unwrap();
        assert_eq!(t.nodes.len(), 2);
        assert_eq!(t.nodes[0].labels(), "eu/eu-1/a");
        assert!(t.nodes[0].coords.is_some());
        assert_eq!(t.nodes[1].labels(), "us/us-1/b");
        assert_eq!(t.client.unwrap().labels(), "eu/eu-1/c");
    }

    #[test]
    fn errors_name_the_line() {
        let e = format!(
            "{:#}",
            Topology::parse("node eu/eu-1/a\nnode eu/x\n").unwrap_err()
        );
        assert!(e.contains("line 2"), "{e}");
        let e = format!("{:#}", Topology::parse("rack eu/eu-1/a\n").unwrap_err());
        assert!(e.contains("unknown kind"), "{e}");
        assert!(Topology::parse("client eu/a/b\n").is_err());
        let e = format!("{:#}", Topology::parse("node eu/a/b 100,0\n").unwrap_err());
        assert!(e.contains("latitude"), "{e}");
    }
}

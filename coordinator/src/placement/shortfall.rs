//! [`Shortfall`]: why a chunk could not be placed, worked out after the walk failed, and the
//! refusal message that names the constraint (capacity, backup or packet proximity).

use std::collections::HashSet;
use std::fmt::Write as _;

use gridback_proto::ChunkId;
use gridback_proto::location::{Bounds, Distance, Location, Proximity};
use gridback_proto::units::format_size;

use super::topology::{SlotFacts, Source, Topology};

/// Why a chunk could not be placed; [`Shortfall::message`] names the constraint.
#[derive(Debug, Clone, PartialEq)]
pub enum Shortfall {
    /// Too few nodes are up with room for one packet.
    Capacity {
        /// Eligible nodes.
        fit: usize,
        /// Up, not excluded nodes.
        up: usize,
    },
    /// Backup proximity leaves too few nodes.
    Backup {
        /// The bounds.
        bounds: Bounds,
        /// Nodes with room that satisfy them.
        fit: usize,
        /// The client's location (boxed: keeps the error small).
        client: Box<Location>,
    },
    /// Packet proximity: the best set found was too small.
    Packet {
        /// The bounds.
        bounds: Bounds,
        /// Largest compatible set found.
        best: usize,
        /// Zones with an eligible node.
        zones: usize,
        /// Regions with an eligible node.
        regions: usize,
    },
}

/// A bound with its level named: `min 2 (same region)`, `max 500km`.
pub fn describe(b: &Bounds) -> String {
    let name = |d: Distance| match d {
        Distance::Level(l) => {
            let what = ["same host", "same zone", "same region", "other region"];
            format!("{l} ({})", what.get(usize::from(l)).copied().unwrap_or("?"))
        }
        Distance::Km(_) => d.to_string(),
    };
    let mut s = String::new();
    if let Some(min) = b.min {
        let _ = write!(s, "min {}", name(min));
    }
    if let Some(max) = b.max {
        let sep = if s.is_empty() { "" } else { " " };
        let _ = write!(s, "{sep}max {}", name(max));
    }
    if s.is_empty() {
        s.push_str("unbounded");
    }
    s
}

impl Shortfall {
    /// The refusal as the client sees it and the log shows it.
    pub fn message(&self, chunk: &ChunkId, need: usize, shard_bytes: u64) -> String {
        match self {
            Shortfall::Capacity { fit, up } => format!(
                "no placement for chunk {chunk}: capacity: need {need} nodes with {} free, \
                 {fit} of {up} up nodes have room",
                format_size(shard_bytes)
            ),
            Shortfall::Backup {
                bounds,
                fit,
                client,
            } => format!(
                "no placement for chunk {chunk}: backup proximity {} from client location {} \
                 leaves {fit} of {need} needed targets",
                describe(bounds),
                client.labels()
            ),
            Shortfall::Packet {
                bounds,
                best,
                zones,
                regions,
            } => format!(
                "no placement for chunk {chunk}: packet proximity {} leaves {best} of {need} \
                 needed targets; {zones} zones in {regions} regions up",
                describe(bounds)
            ),
        }
    }

    /// The constraint's short name, for log fields.
    pub fn constraint(&self) -> &'static str {
        match self {
            Shortfall::Capacity { .. } => "capacity",
            Shortfall::Backup { .. } => "backup proximity",
            Shortfall::Packet { .. } => "packet proximity",
        }
    }
}

impl<F: SlotFacts> Topology<F> {
    /// Which constraint left too few nodes, after the best walk found `best` of `need`.
    pub(super) fn diagnose(
        &self,
        best: usize,
        need: usize,
        shard: u64,
        src: &Source,
        rules: &Proximity,
    ) -> Shortfall {
        let roomy: Vec<usize> = (0..self.map().slots.len())
            .filter(|&i| self.roomy(i, shard))
            .collect();
        if roomy.len() < need {
            return Shortfall::Capacity {
                fit: roomy.len(),
                up: self.up_count(),
            };
        }
        let fit: Vec<usize> = roomy
            .into_iter()
            .filter(|&i| self.fits(i, shard, src, rules))
            .collect();
        if fit.len() < need {
            return Shortfall::Backup {
                bounds: rules.backup,
                fit: fit.len(),
                client: Box::new(src.location.clone()),
            };
        }
        let slots = &self.map().slots;
        let zones: HashSet<u32> = fit.iter().map(|&i| slots[i].zone).collect();
        let regions: HashSet<u32> = fit.iter().map(|&i| slots[i].region).collect();
        Shortfall::Packet {
            bounds: rules.packet,
            best,
            zones: zones.len(),
            regions: regions.len(),
        }
    }
}

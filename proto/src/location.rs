//! Where a node or client is, and the one definition of distance (F12, F13).
//!
//! A location is three labels, `region/zone/host`, plus optional coordinates. Distance
//! between two locations is defined here and nowhere else:
//!
//! * by labels, as a level: same host 0, same zone 1, same region 2, other region 3
//!   (labels compare hierarchically: a zone is only "the same" inside the same region);
//! * in kilometres (great-circle, haversine on a 6371 km sphere) when both ends have
//!   coordinates.
//!
//! A placement bound ([`Distance`]) is either a level (`2`) or kilometres (`500km`). A level
//! bound compares the label level; a kilometre bound compares kilometres and is *not*
//! satisfied when either end lacks coordinates (a bound that cannot be checked is not
//! assumed to hold).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Mean Earth radius used for great-circle distances.
const EARTH_RADIUS_KM: f64 = 6371.0;

/// Longest label (region, zone or host) accepted.
pub const MAX_LABEL_BYTES: usize = 64;

/// Error for an unparsable location, coordinate pair or distance.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LocationError(String);

/// Latitude and longitude in degrees.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Coords {
    /// Latitude, -90..=90.
    pub lat: f64,
    /// Longitude, -180..=180.
    pub lon: f64,
}

impl FromStr for Coords {
    type Err = LocationError;

    /// Parse `LAT,LON`, e.g. `48.14,11.58`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || {
            LocationError(format!(
                "{s:?} is not LAT,LON in degrees (e.g. 48.14,11.58)"
            ))
        };
        let (a, b) = s.split_once(',').ok_or_else(err)?;
        let lat: f64 = a.trim().parse().map_err(|_| err())?;
        let lon: f64 = b.trim().parse().map_err(|_| err())?;
        if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lon) {
            return Err(LocationError(format!(
                "{s:?}: latitude must be within ±90 and longitude within ±180"
            )));
        }
        Ok(Self { lat, lon })
    }
}

impl fmt::Display for Coords {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{},{}", self.lat, self.lon)
    }
}

/// A registered location: `region/zone/host` labels and optional coordinates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Location {
    /// Region label (e.g. `eu`).
    pub region: String,
    /// Zone label within the region (e.g. `eu-1`).
    pub zone: String,
    /// Host label within the zone.
    pub host: String,
    /// Coordinates, when known.
    pub coords: Option<Coords>,
}

impl Location {
    /// A location from its labels, without coordinates.
    pub fn new(region: &str, zone: &str, host: &str) -> Self {
        Self {
            region: region.to_string(),
            zone: zone.to_string(),
            host: host.to_string(),
            coords: None,
        }
    }

    /// Parse `REGION/ZONE/HOST` and optional `LAT,LON`.
    pub fn parse(labels: &str, coords: Option<&str>) -> Result<Self, LocationError> {
        let mut loc: Location = labels.parse()?;
        loc.coords = coords.map(str::parse).transpose()?;
        Ok(loc)
    }

    /// `REGION/ZONE/HOST`, the form used in records and flags.
    pub fn labels(&self) -> String {
        format!("{}/{}/{}", self.region, self.zone, self.host)
    }

    /// Distance level to `other`: same host 0, same zone 1, same region 2, other region 3.
    pub fn level(&self, other: &Location) -> u8 {
        if self.region != other.region {
            3
        } else if self.zone != other.zone {
            2
        } else if self.host != other.host {
            1
        } else {
            0
        }
    }

    /// Great-circle distance in kilometres, when both ends have coordinates.
    pub fn km(&self, other: &Location) -> Option<f64> {
        let (a, b) = (self.coords?, other.coords?);
        let (p1, p2) = (a.lat.to_radians(), b.lat.to_radians());
        let dp = p2 - p1;
        let dl = (b.lon - a.lon).to_radians();
        let h = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
        Some(2.0 * EARTH_RADIUS_KM * h.sqrt().min(1.0).asin())
    }
}

impl FromStr for Location {
    type Err = LocationError;

    /// Parse `REGION/ZONE/HOST` (no coordinates).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.trim().split('/').collect();
        if parts.len() != 3 {
            return Err(LocationError(format!(
                "{s:?} is not REGION/ZONE/HOST (e.g. eu/eu-1/rack7-a)"
            )));
        }
        for p in &parts {
            if p.is_empty()
                || p.len() > MAX_LABEL_BYTES
                || !p
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                return Err(LocationError(format!(
                    "{s:?}: each label must be 1-{MAX_LABEL_BYTES} characters of \
                     A-Z a-z 0-9 - _ ."
                )));
            }
        }
        Ok(Self::new(parts[0], parts[1], parts[2]))
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.labels())?;
        if let Some(c) = self.coords {
            write!(f, " ({c})")?;
        }
        Ok(())
    }
}

/// A distance bound: a label level (0-3) or kilometres. Serialized as its text form
/// (`2`, `500km`), so JSON records read like the flags.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Distance {
    /// A label level: 0 same host, 1 same zone, 2 same region, 3 other region.
    Level(u8),
    /// Kilometres (needs coordinates at both ends).
    Km(f64),
}

impl Distance {
    /// The distance between `a` and `b` in this bound's unit (`None`: not measurable).
    pub fn measure(&self, a: &Location, b: &Location) -> Option<f64> {
        match self {
            Distance::Level(_) => Some(f64::from(a.level(b))),
            Distance::Km(_) => a.km(b),
        }
    }

    fn value(&self) -> f64 {
        match self {
            Distance::Level(l) => f64::from(*l),
            Distance::Km(k) => *k,
        }
    }
}

impl FromStr for Distance {
    type Err = LocationError;

    /// `0`..`3` (levels) or a number of kilometres with `km` (`500km`, `12.5km`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if let Some(km) = t.strip_suffix("km") {
            return match km.trim().parse::<f64>() {
                Ok(v) if v.is_finite() && v >= 0.0 => Ok(Distance::Km(v)),
                _ => Err(LocationError(format!(
                    "{s:?}: kilometres must be a non-negative number (e.g. 500km)"
                ))),
            };
        }
        match t.parse::<u8>() {
            Ok(l) if l <= 3 => Ok(Distance::Level(l)),
            _ => Err(LocationError(format!(
                "{s:?} is not a distance: use a level 0-3 (0 same host, 1 same zone, \
                 2 same region, 3 other region) or kilometres like 500km"
            ))),
        }
    }
}

impl TryFrom<String> for Distance {
    type Error = LocationError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Distance> for String {
    fn from(d: Distance) -> Self {
        d.to_string()
    }
}

impl fmt::Display for Distance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Distance::Level(l) => write!(f, "{l}"),
            Distance::Km(k) => write!(f, "{k}km"),
        }
    }
}

/// Which side of a bound a pair of locations broke.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Violation {
    /// Closer than the minimum.
    BelowMin(Distance),
    /// Farther than the maximum.
    AboveMax(Distance),
    /// A kilometre bound, but one end has no coordinates.
    Unmeasurable(Distance),
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::BelowMin(d) => write!(f, "min {d}"),
            Violation::AboveMax(d) => write!(f, "max {d}"),
            Violation::Unmeasurable(d) => write!(f, "{d} (no coordinates)"),
        }
    }
}

/// A min/max pair of distances (either may be absent).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Bounds {
    /// Smallest allowed distance.
    pub min: Option<Distance>,
    /// Largest allowed distance.
    pub max: Option<Distance>,
}

impl Bounds {
    /// Whether no bound is set.
    pub fn is_unbounded(&self) -> bool {
        self.min.is_none() && self.max.is_none()
    }

    /// Check one pair of locations.
    pub fn check(&self, a: &Location, b: &Location) -> Result<(), Violation> {
        if let Some(min) = self.min {
            match min.measure(a, b) {
                None => return Err(Violation::Unmeasurable(min)),
                Some(d) if d < min.value() => return Err(Violation::BelowMin(min)),
                Some(_) => {}
            }
        }
        if let Some(max) = self.max {
            match max.measure(a, b) {
                None => return Err(Violation::Unmeasurable(max)),
                Some(d) if d > max.value() => return Err(Violation::AboveMax(max)),
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// The minimum and maximum when both are set in the same unit and the minimum is the
    /// larger: no pair of locations can satisfy them. (A level against kilometres depends on
    /// geography and is not judged here.)
    pub fn contradiction(&self) -> Option<(Distance, Distance)> {
        match (self.min?, self.max?) {
            (min @ Distance::Level(a), max @ Distance::Level(b)) if a > b => Some((min, max)),
            (min @ Distance::Km(a), max @ Distance::Km(b)) if a > b => Some((min, max)),
            _ => None,
        }
    }

    /// `self` with every bound that `over` sets replaced by `over`'s.
    pub fn overlay(&self, over: &Bounds) -> Bounds {
        Bounds {
            min: over.min.or(self.min),
            max: over.max.or(self.max),
        }
    }
}

impl fmt::Display for Bounds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |d: Option<Distance>| d.map_or_else(|| "-".to_string(), |d| d.to_string());
        write!(f, "min {} max {}", show(self.min), show(self.max))
    }
}

/// The proximity rules: between packets of one chunk (F12) and between the source client
/// and every target of its data (F13). Set cluster-wide, overridable per subscription.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Proximity {
    /// Packet proximity: any two targets holding packets of the same chunk.
    pub packet: Bounds,
    /// Backup proximity: the source client and each target of its data.
    pub backup: Bounds,
}

impl Proximity {
    /// Refuse rules no placement can meet: a minimum above the maximum of the same rule.
    /// The message names both bounds as the flags do (`packet-min 3 is more than
    /// packet-max 1`).
    pub fn check_consistent(&self) -> Result<(), LocationError> {
        for (name, b) in [("packet", &self.packet), ("backup", &self.backup)] {
            if let Some((min, max)) = b.contradiction() {
                return Err(LocationError(format!(
                    "{name}-min {min} is more than {name}-max {max}: no placement can \
                     satisfy both"
                )));
            }
        }
        Ok(())
    }

    /// `self` (cluster-wide) with a subscription's overrides applied.
    pub fn overlay(&self, over: &Proximity) -> Proximity {
        Proximity {
            packet: self.packet.overlay(&over.packet),
            backup: self.backup.overlay(&over.backup),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(s: &str) -> Location {
        s.parse().unwrap()
    }

    #[test]
    fn levels_follow_the_hierarchy() {
        let a = loc("eu/eu-1/h1");
        assert_eq!(a.level(&loc("eu/eu-1/h1")), 0);
        assert_eq!(a.level(&loc("eu/eu-1/h2")), 1);
        assert_eq!(a.level(&loc("eu/eu-2/h1")), 2);
        // Same zone name in another region is another region.
        assert_eq!(a.level(&loc("us/eu-1/h1")), 3);
    }

    #[test]
    fn kilometres_need_both_coordinates() {
        let munich = Location::parse("eu/de/m", Some("48.137,11.575")).unwrap();
        let paris = Location::parse("eu/fr/p", Some("48.857,2.352")).unwrap();
        let km = munich.km(&paris).unwrap();
        assert!((680.0..690.0).contains(&km), "{km}");
        assert_eq!(munich.km(&loc("eu/fr/p")), None);
        let b = Bounds {
            min: Some("500km".parse().unwrap()),
            max: None,
        };
        assert_eq!(b.check(&munich, &paris), Ok(()));
        assert!(matches!(
            b.check(&munich, &loc("eu/fr/p")),
            Err(Violation::Unmeasurable(_))
        ));
    }

    #[test]
    fn bounds_and_overlay() {
        let b = Bounds {
            min: Some(Distance::Level(1)),
            max: Some(Distance::Level(2)),
        };
        let a = loc("eu/z1/h1");
        assert_eq!(
            b.check(&a, &a),
            Err(Violation::BelowMin(Distance::Level(1)))
        );
        assert_eq!(b.check(&a, &loc("eu/z2/h1")), Ok(()));
        assert_eq!(
            b.check(&a, &loc("us/z2/h1")),
            Err(Violation::AboveMax(Distance::Level(2)))
        );
        let over = Bounds {
            min: None,
            max: Some(Distance::Level(3)),
        };
        assert_eq!(b.overlay(&over).max, Some(Distance::Level(3)));
        assert_eq!(b.overlay(&over).min, Some(Distance::Level(1)));
    }

    #[test]
    fn parse_errors_are_clear() {
        assert!("eu/z1".parse::<Location>().is_err());
        assert!("eu/z 1/h".parse::<Location>().is_err());
        assert!("4".parse::<Distance>().is_err());
        assert!("-5km".parse::<Distance>().is_err());
        assert!("91,0".parse::<Coords>().is_err());
        assert_eq!("500km".parse::<Distance>().unwrap().to_string(), "500km");
        let d: Distance = serde_json::from_str("\"2\"").unwrap();
        assert_eq!(d, Distance::Level(2));
    }

    #[test]
    fn a_minimum_above_the_maximum_is_refused_naming_both() {
        let d = |s: &str| Some(s.parse::<Distance>().unwrap());
        let mut p = Proximity::default();
        assert!(p.check_consistent().is_ok());
        p.packet = Bounds {
            min: d("3"),
            max: d("1"),
        };
        let e = p.check_consistent().unwrap_err().to_string();
        assert!(
            e.contains("packet-min 3") && e.contains("packet-max 1"),
            "{e}"
        );
        p.packet = Bounds {
            min: d("2"),
            max: d("2"),
        };
        p.backup = Bounds {
            min: d("900km"),
            max: d("500km"),
        };
        let e = p.check_consistent().unwrap_err().to_string();
        assert!(
            e.contains("backup-min 900km") && e.contains("backup-max 500km"),
            "{e}"
        );
        // Different units are not judged.
        p.backup = Bounds {
            min: d("3"),
            max: d("500km"),
        };
        assert!(p.check_consistent().is_ok());
    }
}

//! Run-time changes: node and client locations, node capacity, cluster-wide placement
//! rules, subscriptions. Each is logged by the coordinator and picked up without restarts.

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use gridback_proto::admin_api::{
    AdminClientSet, AdminNodeSet, AdminPlacementGet, AdminPlacementSet, AdminSubscriptionSet,
    AdminSubscriptionShow, AdminSubscriptionSuspend, PlacementRules,
};
use gridback_proto::location::{Bounds as ProximityBounds, Proximity};
use gridback_proto::units::{parse_rate, parse_size};
use gridback_proto::{ClientId, Coords, Distance, Location, NodeId};

use super::records::{print_client, print_node};
use super::table::Table;
use super::when::{Relative, parse_instant};
use super::{Admin, parse_id, print_json};
use crate::cli::{LocationArgs, PlacementCmd, ProximityArgs, SubscriptionCmd, SubscriptionSetArgs};

/// Check location flags, naming the flag and its value.
fn check_location(place: &LocationArgs) -> Result<()> {
    if let Some(l) = &place.location {
        l.parse::<Location>().context("--location")?;
    }
    if let Some(c) = &place.coords {
        c.parse::<Coords>().context("--coords")?;
    }
    Ok(())
}

/// Check `admin node set NODE_ID [--location] [--coords] [--capacity]`.
pub fn prepare_node_set(
    id: &str,
    place: &LocationArgs,
    capacity: Option<&str>,
) -> Result<AdminNodeSet> {
    let id: NodeId = parse_id("node", id)?;
    check_location(place)?;
    let capacity_bytes = capacity.map(parse_size).transpose().context("--capacity")?;
    if place.location.is_none() && place.coords.is_none() && capacity_bytes.is_none() {
        bail!("nothing to change: give --location, --coords or --capacity");
    }
    Ok(AdminNodeSet {
        id,
        location: place.location.clone(),
        coords: place.coords.clone(),
        capacity_bytes,
    })
}

/// `admin node set …`, checked by [`prepare_node_set`].
pub async fn node_set(admin: &Admin, req: AdminNodeSet, json: bool) -> Result<ExitCode> {
    print_node(&admin.call(req).await?, json)
}

/// Check `admin client set CLIENT_ID [--location] [--coords]`.
pub fn prepare_client_set(id: &str, place: &LocationArgs) -> Result<AdminClientSet> {
    let id: ClientId = parse_id("client", id)?;
    check_location(place)?;
    if place.location.is_none() && place.coords.is_none() {
        bail!("nothing to change: give --location or --coords");
    }
    Ok(AdminClientSet {
        id,
        location: place.location.clone(),
        coords: place.coords.clone(),
    })
}

/// `admin client set …`, checked by [`prepare_client_set`].
pub async fn client_set(admin: &Admin, req: AdminClientSet, json: bool) -> Result<ExitCode> {
    print_client(&admin.call(req).await?, json)
}

fn distance(flag: &str, v: &Option<String>) -> Result<Option<Distance>> {
    v.as_deref()
        .map(|s| s.parse::<Distance>().with_context(|| format!("--{flag}")))
        .transpose()
}

/// The four bounds given on the command line (`none` clears one: it is listed in `unset`),
/// with a minimum above a maximum given together refused here (the coordinator checks them
/// again against the rules already in force).
fn bounds(args: &ProximityArgs, unset: &mut Vec<String>) -> Result<Proximity> {
    let mut one = |flag: &str, v: &Option<String>| -> Result<Option<Distance>> {
        if v.as_deref() == Some("none") {
            unset.push(flag.to_string());
            return Ok(None);
        }
        distance(flag, v)
    };
    let p = Proximity {
        packet: ProximityBounds {
            min: one("packet-min", &args.packet_min)?,
            max: one("packet-max", &args.packet_max)?,
        },
        backup: ProximityBounds {
            min: one("backup-min", &args.backup_min)?,
            max: one("backup-max", &args.backup_max)?,
        },
    };
    p.check_consistent()?;
    Ok(p)
}

fn print_rules(r: &PlacementRules, json: bool) -> Result<ExitCode> {
    if json {
        return print_json(r);
    }
    let show = |d: Option<Distance>| d.map_or_else(|| "-".into(), |d| d.to_string());
    let mut t = Table::new(&["RULE", "MIN", "MAX"]);
    t.row(vec![
        "packet proximity".into(),
        show(r.proximity.packet.min),
        show(r.proximity.packet.max),
    ]);
    t.row(vec![
        "backup proximity".into(),
        show(r.proximity.backup.min),
        show(r.proximity.backup.max),
    ]);
    t.print();
    println!("distance: 0 same host, 1 same zone, 2 same region, 3 other region, or km");
    Ok(ExitCode::SUCCESS)
}

/// A checked `admin placement` command.
#[derive(Debug)]
pub enum PlacementRequest {
    /// `placement show`.
    Show,
    /// `placement set …`.
    Set(AdminPlacementSet),
}

/// Check `admin placement set|show`.
pub fn prepare_placement(cmd: PlacementCmd) -> Result<PlacementRequest> {
    match cmd {
        PlacementCmd::Show => Ok(PlacementRequest::Show),
        PlacementCmd::Set { bounds: b, clear } => {
            let mut unset = Vec::new();
            let b = bounds(&b, &mut unset)?;
            if !unset.is_empty() {
                bail!(
                    "`none` is not accepted here; use --clear and give the bounds to keep \
                     ({})",
                    unset.join(", ")
                );
            }
            if !clear && b == Proximity::default() {
                bail!(
                    "nothing to change: give --packet-min/--packet-max/--backup-min/--backup-max or --clear"
                );
            }
            Ok(PlacementRequest::Set(AdminPlacementSet {
                packet_min: b.packet.min,
                packet_max: b.packet.max,
                backup_min: b.backup.min,
                backup_max: b.backup.max,
                clear,
            }))
        }
    }
}

/// `admin placement set|show`, checked by [`prepare_placement`].
pub async fn placement(admin: &Admin, req: PlacementRequest, json: bool) -> Result<ExitCode> {
    match req {
        PlacementRequest::Show => print_rules(&admin.call(AdminPlacementGet).await?, json),
        PlacementRequest::Set(set) => print_rules(&admin.call(set).await?, json),
    }
}

/// A limit flag: a value, or `none` to remove the limit.
fn limit<T>(
    flag: &str,
    v: &Option<String>,
    unset: &mut Vec<String>,
    parse: impl Fn(&str) -> Result<T>,
) -> Result<Option<T>> {
    match v.as_deref() {
        None => Ok(None),
        Some("none") => {
            unset.push(flag.to_string());
            Ok(None)
        }
        Some(s) => parse(s).with_context(|| format!("--{flag}")).map(Some),
    }
}

fn positive(s: &str) -> Result<u32> {
    match s.parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => bail!("{s:?} is not a positive whole number"),
    }
}

fn prepare_subscription_set(a: SubscriptionSetArgs) -> Result<AdminSubscriptionSet> {
    let client: ClientId = parse_id("client", &a.id)?;
    let mut unset = Vec::new();
    let quota_bytes = limit("quota", &a.quota, &mut unset, |s| Ok(parse_size(s)?))?;
    let bandwidth_up = limit("bandwidth-up", &a.bandwidth_up, &mut unset, |s| {
        Ok(parse_rate(s)?)
    })?;
    let bandwidth_down = limit("bandwidth-down", &a.bandwidth_down, &mut unset, |s| {
        Ok(parse_rate(s)?)
    })?;
    for (flag, v) in [
        ("bandwidth-up", bandwidth_up),
        ("bandwidth-down", bandwidth_down),
    ] {
        if v == Some(0) {
            bail!("--{flag} must be more than 0 (use `none` for unlimited)");
        }
    }
    let threads = limit("threads", &a.threads, &mut unset, positive)?;
    let transfers = limit("transfers", &a.transfers, &mut unset, positive)?;
    let expires_unix_ms = match a.expires.as_deref() {
        None => None,
        Some("never") | Some("none") => {
            unset.push("expires".into());
            None
        }
        Some(s) => Some(parse_instant(s, Relative::FromNow).context("--expires")?),
    };
    let b = bounds(&a.bounds, &mut unset)?;
    Ok(AdminSubscriptionSet {
        client,
        plan: a.plan,
        quota_bytes,
        bandwidth_up,
        bandwidth_down,
        threads,
        transfers,
        packet_min: b.packet.min,
        packet_max: b.packet.max,
        backup_min: b.backup.min,
        backup_max: b.backup.max,
        expires_unix_ms,
        unset,
    })
}

/// A checked `admin subscription` command.
#[derive(Debug)]
pub enum SubscriptionRequest {
    /// `subscription set …`.
    Set(Box<AdminSubscriptionSet>),
    /// `subscription show ID`.
    Show(ClientId),
    /// `subscription suspend|resume ID`.
    Suspend(AdminSubscriptionSuspend),
}

/// Check `admin subscription set|show|suspend|resume`.
pub fn prepare_subscription(cmd: SubscriptionCmd) -> Result<SubscriptionRequest> {
    let suspend = |id: &str, suspend: bool| -> Result<SubscriptionRequest> {
        Ok(SubscriptionRequest::Suspend(AdminSubscriptionSuspend {
            client: parse_id("client", id)?,
            suspend,
        }))
    };
    match cmd {
        SubscriptionCmd::Set(a) => Ok(SubscriptionRequest::Set(Box::new(
            prepare_subscription_set(*a)?,
        ))),
        SubscriptionCmd::Show { id } => Ok(SubscriptionRequest::Show(parse_id("client", &id)?)),
        SubscriptionCmd::Suspend { id } => suspend(&id, true),
        SubscriptionCmd::Resume { id } => suspend(&id, false),
    }
}

/// `admin subscription set|show|suspend|resume`, checked by [`prepare_subscription`].
pub async fn subscription(admin: &Admin, req: SubscriptionRequest, json: bool) -> Result<ExitCode> {
    let d = match req {
        SubscriptionRequest::Set(set) => admin.call(*set).await?,
        SubscriptionRequest::Show(client) => admin.call(AdminSubscriptionShow { client }).await?,
        SubscriptionRequest::Suspend(s) => admin.call(s).await?,
    };
    print_client(&d, json)
}

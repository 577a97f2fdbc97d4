//! Run-time changes: node and client locations, node capacity, cluster-wide placement
//! rules, subscriptions. Each is logged by the coordinator and picked up without restarts.

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use gridback_proto::admin_api::{
    AdminClientSet, AdminNodeSet, AdminPlacementGet, AdminPlacementSet, AdminSubscriptionSet,
    AdminSubscriptionShow, AdminSubscriptionSuspend, PlacementRules,
};
use gridback_proto::units::{parse_rate, parse_size};
use gridback_proto::{ClientId, Coords, Distance, Location, NodeId};

use super::records::{print_client, print_node};
use super::table::Table;
use super::when::{Relative, parse_instant};
use super::{Admin, parse_id, print_json};
use crate::cli::{LocationArgs, PlacementCmd, ProximityArgs, SubscriptionCmd, SubscriptionSetArgs};

/// Check location flags locally, so a typo is reported before anything is sent.
fn check_location(place: &LocationArgs) -> Result<()> {
    if let Some(l) = &place.location {
        l.parse::<Location>()?;
    }
    if let Some(c) = &place.coords {
        c.parse::<Coords>()?;
    }
    Ok(())
}

/// `admin node set NODE_ID [--location] [--coords] [--capacity]`.
pub async fn node_set(
    admin: &Admin,
    id: &str,
    place: &LocationArgs,
    capacity: Option<&str>,
    json: bool,
) -> Result<ExitCode> {
    let id: NodeId = parse_id("node", id)?;
    check_location(place)?;
    let capacity_bytes = capacity.map(parse_size).transpose().context("--capacity")?;
    if place.location.is_none() && place.coords.is_none() && capacity_bytes.is_none() {
        bail!("nothing to change: give --location, --coords or --capacity");
    }
    let d = admin
        .call(AdminNodeSet {
            id,
            location: place.location.clone(),
            coords: place.coords.clone(),
            capacity_bytes,
        })
        .await?;
    print_node(&d, json)
}

/// `admin client set CLIENT_ID [--location] [--coords]`.
pub async fn client_set(
    admin: &Admin,
    id: &str,
    place: &LocationArgs,
    json: bool,
) -> Result<ExitCode> {
    let id: ClientId = parse_id("client", id)?;
    check_location(place)?;
    if place.location.is_none() && place.coords.is_none() {
        bail!("nothing to change: give --location or --coords");
    }
    let d = admin
        .call(AdminClientSet {
            id,
            location: place.location.clone(),
            coords: place.coords.clone(),
        })
        .await?;
    print_client(&d, json)
}

fn distance(flag: &str, v: &Option<String>) -> Result<Option<Distance>> {
    v.as_deref()
        .map(|s| s.parse::<Distance>().with_context(|| format!("--{flag}")))
        .transpose()
}

struct Bounds4 {
    packet_min: Option<Distance>,
    packet_max: Option<Distance>,
    backup_min: Option<Distance>,
    backup_max: Option<Distance>,
}

fn bounds(b: &ProximityArgs, unset: &mut Vec<String>) -> Result<Bounds4> {
    let mut one = |flag: &str, v: &Option<String>| -> Result<Option<Distance>> {
        if v.as_deref() == Some("none") {
            unset.push(flag.to_string());
            return Ok(None);
        }
        distance(flag, v)
    };
    Ok(Bounds4 {
        packet_min: one("packet-min", &b.packet_min)?,
        packet_max: one("packet-max", &b.packet_max)?,
        backup_min: one("backup-min", &b.backup_min)?,
        backup_max: one("backup-max", &b.backup_max)?,
    })
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

/// `admin placement set|show`.
pub async fn placement(admin: &Admin, cmd: PlacementCmd, json: bool) -> Result<ExitCode> {
    match cmd {
        PlacementCmd::Show => print_rules(&admin.call(AdminPlacementGet).await?, json),
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
            if !clear
                && b.packet_min.is_none()
                && b.packet_max.is_none()
                && b.backup_min.is_none()
                && b.backup_max.is_none()
            {
                bail!(
                    "nothing to change: give --packet-min/--packet-max/--backup-min/--backup-max or --clear"
                );
            }
            let r = admin
                .call(AdminPlacementSet {
                    packet_min: b.packet_min,
                    packet_max: b.packet_max,
                    backup_min: b.backup_min,
                    backup_max: b.backup_max,
                    clear,
                })
                .await?;
            print_rules(&r, json)
        }
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

async fn subscription_set(admin: &Admin, a: SubscriptionSetArgs, json: bool) -> Result<ExitCode> {
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
    let d = admin
        .call(AdminSubscriptionSet {
            client,
            plan: a.plan,
            quota_bytes,
            bandwidth_up,
            bandwidth_down,
            threads,
            transfers,
            packet_min: b.packet_min,
            packet_max: b.packet_max,
            backup_min: b.backup_min,
            backup_max: b.backup_max,
            expires_unix_ms,
            unset,
        })
        .await?;
    print_client(&d, json)
}

/// `admin subscription set|show|suspend|resume`.
pub async fn subscription(admin: &Admin, cmd: SubscriptionCmd, json: bool) -> Result<ExitCode> {
    match cmd {
        SubscriptionCmd::Set(a) => subscription_set(admin, *a, json).await,
        SubscriptionCmd::Show { id } => {
            let client: ClientId = parse_id("client", &id)?;
            print_client(&admin.call(AdminSubscriptionShow { client }).await?, json)
        }
        SubscriptionCmd::Suspend { id } => suspend(admin, &id, true, json).await,
        SubscriptionCmd::Resume { id } => suspend(admin, &id, false, json).await,
    }
}

async fn suspend(admin: &Admin, id: &str, suspend: bool, json: bool) -> Result<ExitCode> {
    let client: ClientId = parse_id("client", id)?;
    let d = admin
        .call(AdminSubscriptionSuspend { client, suspend })
        .await?;
    print_client(&d, json)
}

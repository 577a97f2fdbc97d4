//! A whole `gridback admin` command line checked into typed requests *before* the admin
//! config or certificate is read, so a bad id, size, rate, time, distance or location is
//! reported with its flag and value whether or not a grid is there.

use std::process::ExitCode;

use gridback_proto::admin_api::{AdminClientSet, AdminNodeSet};
use gridback_proto::{ChunkId, ClientId, NodeId};

use super::rules::{PlacementRequest, SubscriptionRequest};
use super::schedule::ScheduleRequest;
use super::when::{Relative, parse_instant};
use super::{Admin, parse_id, records, rules, schedule};
use crate::cli::{AdminCmd, ClientSetCmd, NodeSetCmd};
use anyhow::{Context, Result, bail};

/// One checked admin command.
#[derive(Debug)]
pub enum Request {
    /// `clients`.
    Clients,
    /// `client ID`.
    Client(ClientId),
    /// `client set ID …`.
    ClientSet(AdminClientSet),
    /// `snapshots --client ID`.
    Snapshots(ClientId),
    /// `node ID`.
    Node(NodeId),
    /// `node set ID …`.
    NodeSet(AdminNodeSet),
    /// `chunk ID`.
    Chunk(ChunkId),
    /// `chunks --client ID [--snapshot NAME]`.
    Chunks {
        /// The client.
        client: ClientId,
        /// Only this snapshot's chunks.
        snapshot: Option<String>,
    },
    /// `log [--follow] [--since T]`.
    Log {
        /// Keep printing new entries.
        follow: bool,
        /// Only entries since (ms since the Unix epoch).
        since_unix_ms: Option<u64>,
    },
    /// `placement …`.
    Placement(PlacementRequest),
    /// `subscription …`.
    Subscription(SubscriptionRequest),
    /// `schedule …`.
    Schedule(ScheduleRequest),
}

impl Request {
    /// Check every argument of `cmd`; nothing is read or sent.
    pub fn parse(cmd: AdminCmd) -> Result<Self> {
        Ok(match cmd {
            AdminCmd::Clients => Request::Clients,
            AdminCmd::Client(c) => match (c.id, c.set) {
                (Some(id), None) => Request::Client(parse_id("client", &id)?),
                (None, Some(ClientSetCmd::Set { id, place })) => {
                    Request::ClientSet(rules::prepare_client_set(&id, &place)?)
                }
                _ => {
                    bail!("give a client id: `gridback admin client ID` or `admin client set ID …`")
                }
            },
            AdminCmd::Snapshots { client } => {
                Request::Snapshots(parse_id("client", &client).context("--client")?)
            }
            AdminCmd::Node(n) => match (n.id, n.set) {
                (Some(id), None) => Request::Node(parse_id("node", &id)?),
                (
                    None,
                    Some(NodeSetCmd::Set {
                        id,
                        place,
                        capacity,
                    }),
                ) => Request::NodeSet(rules::prepare_node_set(&id, &place, capacity.as_deref())?),
                _ => bail!("give a node id: `gridback admin node ID` or `admin node set ID …`"),
            },
            AdminCmd::Chunk { id } => Request::Chunk(parse_id("chunk", &id)?),
            AdminCmd::Chunks { client, snapshot } => Request::Chunks {
                client: parse_id("client", &client).context("--client")?,
                snapshot,
            },
            AdminCmd::Log { follow, since } => Request::Log {
                follow,
                since_unix_ms: since
                    .map(|s| parse_instant(&s, Relative::Ago).context("--since"))
                    .transpose()?,
            },
            AdminCmd::Placement(p) => Request::Placement(rules::prepare_placement(p)?),
            AdminCmd::Subscription(s) => Request::Subscription(rules::prepare_subscription(s)?),
            AdminCmd::Schedule(s) => Request::Schedule(schedule::prepare(s)?),
        })
    }

    /// Send it and print the answer.
    pub async fn run(
        self,
        admin: &Admin,
        json: bool,
        stop: &crate::cmd::StopSignal,
    ) -> Result<ExitCode> {
        match self {
            Request::Clients => records::clients(admin, json).await,
            Request::Client(id) => records::client(admin, id, json).await,
            Request::ClientSet(set) => rules::client_set(admin, set, json).await,
            Request::Snapshots(client) => records::snapshots(admin, client, json).await,
            Request::Node(id) => records::node(admin, id, json).await,
            Request::NodeSet(set) => rules::node_set(admin, set, json).await,
            Request::Chunk(id) => records::chunk(admin, id, json).await,
            Request::Chunks { client, snapshot } => {
                records::chunks(admin, client, snapshot, json).await
            }
            Request::Log {
                follow,
                since_unix_ms,
            } => records::log(admin, follow, since_unix_ms, json, stop).await,
            Request::Placement(p) => rules::placement(admin, p, json).await,
            Request::Subscription(s) => rules::subscription(admin, s, json).await,
            Request::Schedule(s) => schedule::run(admin, s, json).await,
        }
    }
}

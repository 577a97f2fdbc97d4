//! Issue 4 end to end: a local grid of 7 nodes over 3 zones in 2 regions (`local up
//! --topology`), placement rules proven from the coordinator's records (`gridback admin
//! chunks --json`), run-time changes picked up without restarts, quota and suspension errors
//! as the writing program sees them, a bandwidth limit, and a coordinator-requested backup.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed step fails the test

use std::collections::HashSet;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use gridback_tests::fuse_available_or_required;
use gridback_tests::local::{LocalGridProcess, hash_file};
use gridback_tests::tree::{Rng, assert_same_tree, make_tree, random};

/// 3 zones in 2 regions; nodes 1 and 2 share a host.
const TOPOLOGY: &str = "\
# region/zone/host
node eu/eu-1/h1
node eu/eu-1/h1
node eu/eu-2/h2
node eu/eu-2/h3
node us/us-1/h4
node us/us-1/h5
node us/us-1/h6
client eu/eu-1/laptop
";

/// Write `len` random bytes to `path` and fsync; the error is what the program would see.
fn write_synced(path: &Path, len: usize, seed: u64) -> std::io::Result<blake3::Hash> {
    let data = random(&mut Rng::new(seed), len);
    let mut f = std::fs::File::create(path)?;
    f.write_all(&data)?;
    f.sync_all()?;
    drop(f);
    Ok(blake3::hash(&data))
}

fn poll_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn ok(grid: &LocalGridProcess, args: &[&str]) -> String {
    let out = grid.admin(args);
    assert!(
        out.status.success(),
        "gridback admin {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        grid.log_text()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn chunks_of(grid: &LocalGridProcess, client: &str, snapshot: &str) -> Vec<serde_json::Value> {
    let v = grid.admin_json(&["chunks", "--client", client, "--snapshot", snapshot]);
    let chunks = v.as_array().expect("a JSON array of chunks").clone();
    assert!(!chunks.is_empty(), "snapshot {snapshot} has no chunks");
    chunks
}

fn target_locations(chunk: &serde_json::Value) -> Vec<String> {
    chunk["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["location"].as_str().unwrap().to_string())
        .collect()
}

fn zone_of(loc: &str) -> String {
    loc.rsplit_once('/').unwrap().0.to_string()
}

fn host_of(loc: &str) -> &str {
    loc.rsplit_once('/').unwrap().1
}

fn target_nodes(chunk: &serde_json::Value) -> Vec<String> {
    chunk["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["node"].as_str().unwrap().to_string())
        .collect()
}

/// Open snapshot `name`, write `mib` MiB of random bytes into it (closed and synced), and
/// return the chunk records of the snapshot.
fn write_snapshot(
    grid: &LocalGridProcess,
    mnt: &Path,
    client: &str,
    name: &str,
    mib: usize,
    seed: u64,
    written: &mut Vec<(std::path::PathBuf, blake3::Hash)>,
) -> Vec<serde_json::Value> {
    let dir = mnt.join("snapshots").join(name);
    std::fs::create_dir(&dir).unwrap();
    let p = dir.join("f");
    written.push((p.clone(), write_synced(&p, mib << 20, seed).unwrap()));
    chunks_of(grid, client, name)
}

/// Every rule of requirement 8 proven from the records on one grid of 7 nodes over 3 zones
/// in 2 regions: packet proximity by zone and by host, backup proximity by level and in
/// kilometres, per-subscription overrides, a client and nodes that move, an impossible rule
/// (ENOSPC, named in the log, nothing earlier harmed), contradictory bounds refused, a node
/// that applies a smaller capacity and, full, gets no new packets, the log followed live,
/// and resource limits set through the CLI reaching the records and the mount.
#[test]
fn placement_rules_hold_in_the_records() {
    if !fuse_available_or_required() {
        return;
    }
    gridback_tests::init_tracing();
    let work = tempfile::tempdir().unwrap();
    let topo = work.path().join("topology");
    std::fs::write(&topo, TOPOLOGY).unwrap();
    let data = work.path().join("data");
    let mnt = work.path().join("mnt");
    let grid = LocalGridProcess::start_with(
        &data,
        &mnt,
        &[
            "--topology",
            topo.to_str().unwrap(),
            "--erasure-k",
            "2",
            "--erasure-m",
            "1",
        ],
    );
    let client = grid.client_id();

    // Records: the client profile and every node carry their registered locations.
    let clients = grid.admin_json(&["clients"]);
    let me = clients
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == client.as_str())
        .unwrap_or_else(|| panic!("client {client} not in {clients}"));
    assert_eq!(me["location"]["region"], "eu", "{me}");
    assert_eq!(me["location"]["zone"], "eu-1", "{me}");
    assert_eq!(me["location_labels"], "eu/eu-1/laptop", "{me}");
    let status = grid.status();
    let nodes: Vec<(String, String)> = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["id"].as_str().unwrap().to_string(),
                n["location"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(nodes.len(), 7);
    assert_eq!(
        nodes.iter().filter(|(_, l)| l.starts_with("us/")).count(),
        3,
        "{nodes:?}"
    );
    let at = |loc: &str| -> Vec<String> {
        nodes
            .iter()
            .filter(|(_, l)| l == loc)
            .map(|(id, _)| id.clone())
            .collect()
    };
    let h1 = at("eu/eu-1/h1");
    assert_eq!(h1.len(), 2, "{nodes:?}");
    let (h2, h3, h4) = (
        at("eu/eu-2/h2")[0].clone(),
        at("eu/eu-2/h3")[0].clone(),
        at("us/us-1/h4")[0].clone(),
    );
    let mut written = Vec::new();

    // F12: packet proximity min 2 = no two packets of a chunk in one zone.
    ok(&grid, &["placement", "set", "--packet-min", "2"]);
    for c in write_snapshot(&grid, &mnt, &client, "zones", 3, 100, &mut written) {
        let locs = target_locations(&c);
        assert_eq!(locs.len(), 3, "{c}");
        let distinct: HashSet<String> = locs.iter().map(|l| zone_of(l)).collect();
        assert_eq!(distinct.len(), locs.len(), "two packets in one zone: {c}");
        assert!(
            c["sources"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s == client.as_str()),
            "{c}"
        );
        for (i, t) in c["targets"].as_array().unwrap().iter().enumerate() {
            assert_eq!(t["packet"].as_u64(), Some(i as u64), "{c}");
            assert_eq!(t["node"].as_str().map(str::len), Some(32), "{c}");
        }
    }
    // The single-chunk view is the same record.
    let first = &chunks_of(&grid, &client, "zones")[0];
    let one = grid.admin_json(&["chunk", first["id"].as_str().unwrap()]);
    assert_eq!(&one, first);

    // F12 by host: packet proximity min 1 = no two packets of a chunk on one host. Kept in
    // the source's region (backup max 2), the 3 packets must go to 3 of the 4 European
    // nodes, which sit on 3 hosts (two share h1): without the rule, about half the chunks
    // would hold both h1 nodes.
    ok(
        &grid,
        &[
            "placement",
            "set",
            "--clear",
            "--packet-min",
            "1",
            "--backup-max",
            "2",
        ],
    );
    for c in write_snapshot(&grid, &mnt, &client, "hosts", 6, 150, &mut written) {
        let locs = target_locations(&c);
        let hosts: HashSet<&str> = locs.iter().map(|l| host_of(l)).collect();
        assert_eq!(hosts.len(), 3, "two packets on one host: {c}");
        assert!(locs.iter().all(|l| l.starts_with("eu/")), "{c}");
    }

    // F13: backup proximity min 3 = no packet in the source's region (eu).
    ok(&grid, &["placement", "set", "--clear", "--backup-min", "3"]);
    for c in write_snapshot(&grid, &mnt, &client, "far", 3, 200, &mut written) {
        for l in target_locations(&c) {
            assert!(l.starts_with("us/"), "a packet in the source's region: {c}");
        }
    }

    // The client moves to the US: the same rule now keeps its packets in Europe, without
    // restarting anything.
    ok(
        &grid,
        &["client", "set", &client, "--location", "us/us-1/laptop"],
    );
    for c in write_snapshot(&grid, &mnt, &client, "moved", 3, 300, &mut written) {
        for l in target_locations(&c) {
            assert!(
                l.starts_with("eu/"),
                "a packet in the moved source's region: {c}"
            );
        }
    }

    // An impossible rule: three packets in three different regions, with two regions.
    ok(&grid, &["placement", "set", "--clear", "--packet-min", "3"]);
    let imp = mnt.join("snapshots/impossible");
    std::fs::create_dir(&imp).unwrap();
    let err = write_synced(&imp.join("f"), 2 << 20, 400).expect_err("no placement can exist");
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    let coord_log = std::fs::read_to_string(data.join("logs/coordinator.log")).unwrap();
    assert!(
        coord_log.contains("packet proximity"),
        "the coordinator's log does not name the constraint:\n{coord_log}"
    );
    // Nothing stored earlier is harmed.
    for (p, h) in &written {
        assert_eq!(&hash_file(p), h, "{} changed", p.display());
    }
    // A maximum below the minimum in force is refused, naming both, and changes nothing.
    let out = grid.admin(&["placement", "set", "--packet-max", "1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "packet-max 1 under packet-min 3 accepted"
    );
    assert!(
        err.contains("packet-min 3") && err.contains("packet-max 1"),
        "{err}"
    );
    let rules = grid.admin_json(&["placement", "show"]);
    assert!(rules["proximity"]["packet"]["max"].is_null(), "{rules}");
    ok(&grid, &["placement", "set", "--clear"]);

    // A per-subscription bound: this client (now in us/us-1) keeps its data within its own
    // region (backup max 2), with no cluster-wide rule.
    ok(
        &grid,
        &["subscription", "set", &client, "--backup-max", "2"],
    );
    for c in write_snapshot(&grid, &mnt, &client, "near", 3, 500, &mut written) {
        for l in target_locations(&c) {
            assert!(
                l.starts_with("us/"),
                "a packet outside the client's region: {c}"
            );
        }
    }
    let detail = grid.admin_json(&["client", &client]);
    assert_eq!(
        detail["effective_proximity"]["backup"]["max"], "2",
        "{detail}"
    );
    ok(
        &grid,
        &["subscription", "set", &client, "--backup-max", "none"],
    );

    // A per-subscription packet bound overrides the cluster's: the cluster asks only for
    // distinct hosts (min 1), this subscription for distinct zones (min 2).
    ok(&grid, &["placement", "set", "--clear", "--packet-min", "1"]);
    ok(
        &grid,
        &["subscription", "set", &client, "--packet-min", "2"],
    );
    for c in write_snapshot(&grid, &mnt, &client, "subzones", 6, 550, &mut written) {
        let zones: HashSet<String> = target_locations(&c).iter().map(|l| zone_of(l)).collect();
        assert_eq!(zones.len(), 3, "two packets in one zone: {c}");
    }
    let detail = grid.admin_json(&["client", &client]);
    assert_eq!(
        detail["effective_proximity"]["packet"]["min"], "2",
        "{detail}"
    );
    let rules = grid.admin_json(&["placement", "show"]);
    assert_eq!(rules["proximity"]["packet"]["min"], "1", "{rules}");
    ok(
        &grid,
        &["subscription", "set", &client, "--packet-min", "none"],
    );
    ok(&grid, &["placement", "set", "--clear"]);

    // Kilometres: coordinates set at run time; within 500 km of Munich are the two nodes in
    // Munich and the one in Frankfurt, not Paris (same region, 685 km) nor New York.
    let coords = [
        (&h1[0], "48.14,11.58"),
        (&h1[1], "48.14,11.58"),
        (&h2, "50.11,8.68"),
        (&h3, "48.86,2.35"),
    ];
    for (node, c) in coords {
        ok(&grid, &["node", "set", node, "--coords", c]);
    }
    for (node, _) in nodes.iter().filter(|(_, l)| l.starts_with("us/")) {
        ok(&grid, &["node", "set", node, "--coords", "40.71,-74.01"]);
    }
    ok(
        &grid,
        &["client", "set", &client, "--coords", "48.14,11.58"],
    );
    let paris = grid.admin_json(&["node", &h3]);
    assert_eq!(paris["location"]["coords"]["lat"], 48.86, "{paris}");
    assert_eq!(paris["location_labels"], "eu/eu-2/h3", "{paris}");
    assert_eq!(paris["status"]["location_labels"], "eu/eu-2/h3", "{paris}");
    ok(
        &grid,
        &["subscription", "set", &client, "--backup-max", "500km"],
    );
    let near: HashSet<&String> = [&h1[0], &h1[1], &h2].into_iter().collect();
    for c in write_snapshot(&grid, &mnt, &client, "km", 3, 600, &mut written) {
        let targets = target_nodes(&c);
        assert!(
            targets.iter().all(|n| near.contains(n)),
            "a packet farther than 500 km: {c}"
        );
    }
    ok(
        &grid,
        &["subscription", "set", &client, "--backup-max", "none"],
    );

    // A node moved by the operator: with its data kept out of the client's region (us),
    // h3 moves to the US and gets no new packets, h4 moves to Europe and gets some.
    ok(&grid, &["placement", "set", "--backup-min", "3"]);
    ok(&grid, &["node", "set", &h3, "--location", "us/us-2/h3"]);
    ok(&grid, &["node", "set", &h4, "--location", "eu/eu-3/h7"]);
    assert_eq!(grid.admin_json(&["node", &h3])["location"]["region"], "us");
    let chunks = write_snapshot(&grid, &mnt, &client, "relocated", 6, 700, &mut written);
    let eligible: HashSet<&String> = [&h1[0], &h1[1], &h2, &h4].into_iter().collect();
    let mut h4_used = false;
    for c in &chunks {
        for t in c["targets"].as_array().unwrap() {
            let node = t["node"].as_str().unwrap().to_string();
            assert!(
                eligible.contains(&node),
                "a packet on a node outside eu: {c}"
            );
            if node == h4 {
                assert_eq!(t["location"], "eu/eu-3/h7", "{c}");
                h4_used = true;
            }
        }
    }
    assert!(
        h4_used,
        "no packet reached the node moved into Europe: {chunks:?}"
    );
    ok(&grid, &["placement", "set", "--clear"]);

    // Target allocation: the operator shrinks a node below what it holds. The node applies
    // it (it reports the new capacity in its next heartbeat) and, full, gets no new
    // packets.
    let full = &h1[0];
    let held = grid.admin_json(&["node", full])["recorded_packets"]
        .as_u64()
        .unwrap();
    assert!(held > 0, "the node to fill holds nothing yet");
    ok(&grid, &["node", "set", full, "--capacity", "1KiB"]);
    poll_until("the node to report its new capacity", || {
        grid.admin_json(&["node", full])["status"]["reported_capacity_bytes"] == 1024
    });
    let st = grid.status();
    let me = st["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == full.as_str())
        .unwrap();
    assert_eq!(me["reported_capacity_bytes"], 1024, "{me}");
    assert_eq!(me["capacity_bytes"], 1024, "{me}");
    for c in write_snapshot(&grid, &mnt, &client, "full", 6, 800, &mut written) {
        assert!(
            !target_nodes(&c).contains(full),
            "a packet on a full node: {c}"
        );
    }
    assert_eq!(
        grid.admin_json(&["node", full])["recorded_packets"].as_u64(),
        Some(held),
        "the full node's record changed"
    );

    // The global backup log, followed: a change made now appears as a new line, and the
    // resource limits given through the CLI reach the records and the mount.
    let mut follow = grid
        .admin_command(&["log", "--follow", "--json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    // The history comes first: once a line is there, the follower is following.
    let first = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("no log history");
    assert!(first.contains("\"kind\""), "{first}");
    ok(
        &grid,
        &[
            "subscription",
            "set",
            &client,
            "--plan",
            "gold",
            "--threads",
            "3",
            "--transfers",
            "5",
            "--bandwidth-down",
            "20MB/s",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let wait = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(wait).expect("the change never appeared");
        if line.contains("subscription.set") && line.contains("plan=gold") {
            break;
        }
    }
    follow.kill().unwrap();
    follow.wait().unwrap();
    let detail = grid.admin_json(&["client", &client]);
    let shown = grid.admin_json(&["subscription", "show", &client]);
    for d in [&detail, &shown] {
        let sub = &d["subscription"];
        assert_eq!(sub["plan"], "gold", "{d}");
        assert_eq!(sub["limits"]["threads"], 3, "{d}");
        assert_eq!(sub["limits"]["transfers"], 5, "{d}");
        assert_eq!(sub["limits"]["bandwidth_down"], 20_000_000, "{d}");
        assert_eq!(d["profile"]["plan"], "gold", "{d}");
    }
    let text = ok(&grid, &["subscription", "show", &client]);
    assert!(
        text.contains("gold") && text.contains("threads       3"),
        "{text}"
    );
    poll_until("the mount to apply the new limits", || {
        let log = std::fs::read_to_string(data.join("logs/mount.log")).unwrap_or_default();
        log.contains("bandwidth_down=Some(20000000)")
            && log.contains("threads=Some(3)")
            && log.contains("transfers=Some(5)")
    });

    // Source data records: snapshots by name, trees only by size and chunk references.
    let snaps = grid.admin_json(&["snapshots", "--client", &client]);
    let names: HashSet<&str> = snaps
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["info"]["name"].as_str().unwrap())
        .collect();
    for n in ["zones", "hosts", "far", "moved", "km", "relocated", "full"] {
        assert!(names.contains(n), "{snaps}");
    }
    for (p, h) in &written {
        assert_eq!(&hash_file(p), h, "{} changed", p.display());
    }

    // Every change is in the global backup log.
    let out = ok(&grid, &["log", "--since", "1h", "--json"]);
    let kinds: HashSet<String> = out
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["kind"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    for k in [
        "placement.set",
        "client.set",
        "node.set",
        "subscription.set",
    ] {
        assert!(kinds.contains(k), "{k} missing from the log: {kinds:?}");
    }
    grid.stop();
}

/// F15/F16/F17 as a program sees them: EDQUOT past the quota with earlier files intact,
/// EACCES while suspended or expired (reads keep working), and a 5 MB/s upload limit.
#[test]
fn quota_suspension_and_bandwidth() {
    if !fuse_available_or_required() {
        return;
    }
    gridback_tests::init_tracing();
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let mnt = work.path().join("mnt");
    // 2 + 2 coding: twice the data on the wire, so a limit that charged parity would show
    // (50 MB at 5 MB/s would take 20 s instead of 10 s).
    let grid = LocalGridProcess::start_with(
        &data,
        &mnt,
        &["--nodes", "6", "--erasure-k", "2", "--erasure-m", "2"],
    );
    let client = grid.client_id();
    let snap = mnt.join("snapshots/s");
    std::fs::create_dir(&snap).unwrap();
    let a = snap.join("a");
    let ha = write_synced(&a, 2 << 20, 1).unwrap();

    let usage = |grid: &LocalGridProcess| {
        grid.admin_json(&["client", &client])["profile"]["usage"]["charged_bytes"]
            .as_u64()
            .unwrap()
    };
    let used = usage(&grid);
    assert!(
        used >= 2 << 20,
        "usage {used} does not count the 2 MiB file"
    );

    // Quota: 1 MB of room left; an 8 MiB file cannot fit.
    let quota = (used + 1_000_000).to_string();
    ok(&grid, &["subscription", "set", &client, "--quota", &quota]);
    // statfs reports the subscription's space once the mount has the new terms.
    let want_total = used + 1_000_000;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let st = nix::sys::statvfs::statvfs(&snap).unwrap();
        let frag = st.fragment_size();
        let total = st.blocks() * frag;
        let free = st.blocks_available() * frag;
        if total.abs_diff(want_total) < frag {
            assert!(
                free <= 1_000_000 && free + 2 * frag >= 1_000_000,
                "free {free}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "statfs total {total}, want the quota {want_total}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let err = write_synced(&snap.join("big"), 8 << 20, 2).expect_err("quota must refuse");
    assert_eq!(err.raw_os_error(), Some(libc::EDQUOT), "{err}");
    assert_eq!(hash_file(&a), ha, "a closed file changed after EDQUOT");
    // The refused new file stays, empty: no partial content is ever committed. (FUSE sends
    // the last release after close(2) returns, so the abandonment may land a moment later.)
    poll_until("the refused file to be empty", || {
        std::fs::metadata(snap.join("big")).unwrap().len() == 0
    });
    assert_eq!(std::fs::read(snap.join("big")).unwrap(), Vec::<u8>::new());
    // Rewriting an existing file past the quota fails and keeps its previous content.
    let err = write_synced(&a, 8 << 20, 6).expect_err("quota must refuse a rewrite");
    assert_eq!(err.raw_os_error(), Some(libc::EDQUOT), "{err}");
    poll_until("the refused rewrite to be dropped", || {
        std::fs::metadata(&a).unwrap().len() == 2 << 20
    });
    assert_eq!(
        hash_file(&a),
        ha,
        "a rewritten file lost its content after EDQUOT"
    );
    let shown = grid.admin_json(&["subscription", "show", &client]);
    assert_eq!(
        shown["subscription"]["limits"]["quota_bytes"].as_u64(),
        Some(used + 1_000_000),
        "{shown}"
    );
    ok(&grid, &["subscription", "set", &client, "--quota", "none"]);
    write_synced(&snap.join("c"), 1 << 20, 3).expect("writes work again without a quota");

    // Suspension: new writes and every change to an open snapshot get EACCES, reads and
    // restores keep working, status says why. A sealed snapshot to restore while suspended:
    std::fs::create_dir(mnt.join("snapshots/kept")).unwrap();
    let hk = write_synced(&mnt.join("snapshots/kept/k"), 1 << 20, 8).unwrap();
    std::fs::create_dir(snap.join("dir")).unwrap();
    std::fs::write(snap.join("empty-before"), b"").unwrap();
    let sealed = grid.gridback(&["snapshot", "seal", "kept"]);
    assert!(sealed.status.success(), "{sealed:?}");
    ok(&grid, &["subscription", "suspend", &client]);
    let st = grid.status();
    assert_eq!(st["subscription"]["state"], "suspended", "{st}");
    // The mount learns it at its next terms poll: a chmod of a directory to the mode it
    // already has changes nothing while active and is EACCES once suspended.
    let same_mode = || std::fs::set_permissions(snap.join("dir"), PermissionsExt::from_mode(0o755));
    poll_until("the mount to refuse changes", || {
        same_mode().is_err_and(|e| e.raw_os_error() == Some(libc::EACCES))
    });
    let eacces = |what: &str, r: std::io::Result<()>| {
        let e = r.expect_err(what);
        assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{what}: {e}");
    };
    eacces("mkdir", std::fs::create_dir(snap.join("newdir")));
    eacces(
        "rename",
        std::fs::rename(snap.join("empty-before"), snap.join("renamed")),
    );
    eacces("unlink", std::fs::remove_file(snap.join("c")));
    eacces("rmdir", std::fs::remove_dir(snap.join("dir")));
    eacces(
        "chmod",
        std::fs::set_permissions(&a, PermissionsExt::from_mode(0o600)),
    );
    eacces(
        "create of an empty file",
        std::fs::File::create(snap.join("empty")).map(drop),
    );
    eacces("symlink", std::os::unix::fs::symlink("a", snap.join("ln")));
    let err = write_synced(&snap.join("d"), 1 << 20, 4).expect_err("suspended");
    assert_eq!(err.raw_os_error(), Some(libc::EACCES), "{err}");
    for gone in ["newdir", "renamed", "empty", "ln", "d"] {
        assert!(
            std::fs::symlink_metadata(snap.join(gone)).is_err(),
            "{gone} exists after a refused change"
        );
    }
    // Browsing and reading are unaffected.
    assert_eq!(hash_file(&a), ha);
    let names = std::fs::read_dir(&snap).unwrap().count();
    assert!(names >= 5, "readdir while suspended: {names} entries");
    let dest = work.path().join("restored-while-suspended");
    let restored = grid.gridback(&["restore", "kept", dest.to_str().unwrap()]);
    assert!(
        restored.status.success(),
        "restore while suspended failed: {}",
        String::from_utf8_lossy(&restored.stderr)
    );
    assert_eq!(hash_file(&dest.join("k")), hk);
    let mount_log = std::fs::read_to_string(data.join("logs/mount.log")).unwrap_or_default();
    let warnings = mount_log
        .matches("subscription does not allow changes")
        .count();
    assert_eq!(warnings, 1, "one rate-limited warning, not one per refusal");
    let text = grid.gridback(&["status"]);
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("suspended"),
        "{}",
        String::from_utf8_lossy(&text.stdout)
    );
    ok(&grid, &["subscription", "resume", &client]);
    poll_until("the mount to allow changes again", || same_mode().is_ok());
    write_synced(&snap.join("d"), 1 << 20, 4).expect("writes work again after resume");
    std::fs::create_dir(snap.join("newdir")).expect("mkdir after resume");
    std::fs::rename(snap.join("empty-before"), snap.join("renamed")).expect("rename");
    std::fs::remove_file(snap.join("c")).expect("unlink after resume");
    std::fs::set_permissions(&a, PermissionsExt::from_mode(0o600)).expect("chmod after resume");
    std::fs::File::create(snap.join("empty")).expect("create after resume");
    assert_eq!(std::fs::metadata(snap.join("empty")).unwrap().len(), 0);

    // Expiry: a contract that ended refuses writes the same way, until it is extended.
    ok(
        &grid,
        &["subscription", "set", &client, "--expires", "2020-01-01"],
    );
    assert_eq!(grid.status()["subscription"]["state"], "expired");
    let err = write_synced(&snap.join("e"), 1 << 20, 7).expect_err("expired");
    assert_eq!(err.raw_os_error(), Some(libc::EACCES), "{err}");
    poll_until("the mount to see the expiry", || {
        same_mode().is_err_and(|e| e.raw_os_error() == Some(libc::EACCES))
    });
    ok(&grid, &["subscription", "set", &client, "--expires", "30d"]);
    assert_eq!(grid.status()["subscription"]["state"], "active");
    poll_until("the mount to see the extended contract", || {
        same_mode().is_ok()
    });
    write_synced(&snap.join("e"), 1 << 20, 7).expect("writes work again once extended");

    // Bandwidth: 5 MB/s up makes 50 MB take about 10 s (generous bounds, not a timing test).
    ok(
        &grid,
        &["subscription", "set", &client, "--bandwidth-up", "5MB/s"],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(data.join("logs/mount.log"))
        .unwrap_or_default()
        .contains("bandwidth_up=Some(5000000)")
    {
        assert!(
            Instant::now() < deadline,
            "the mount did not pick up the new limits:\n{}",
            grid.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let packets = |grid: &LocalGridProcess| {
        grid.admin_json(&["client", &client])["profile"]["usage"]["uploaded_packet_bytes"]
            .as_u64()
            .unwrap()
    };
    let packets_before = packets(&grid);
    let started = Instant::now();
    let hb = write_synced(&snap.join("fifty"), 50_000_000, 5).unwrap();
    let secs = started.elapsed().as_secs_f64();
    // Parity did travel: about 100 MB of packets for 50 MB of data.
    let sent = packets(&grid) - packets_before;
    assert!(sent >= 98_000_000, "{sent} packet bytes for 50 MB at 2+2");
    println!("50 MB at a 5 MB/s upload limit: {secs:.1} s");
    // The limit meters sealed data (parity is free): about 10 s. Charging the 2+2 packets
    // on the wire instead would take about 20 s; the window is generous (80 % over) yet
    // tells the two apart.
    assert!(
        (7.0..18.0).contains(&secs),
        "50 MB under a 5 MB/s limit took {secs:.1} s, want about 10 s"
    );
    assert_eq!(hash_file(&snap.join("fifty")), hb);
    ok(
        &grid,
        &["subscription", "set", &client, "--bandwidth-up", "none"],
    );
    let log = ok(&grid, &["log", "--json"]);
    for k in [
        "subscription.set",
        "subscription.suspend",
        "subscription.resume",
    ] {
        assert!(log.contains(k), "{k} missing from the log");
    }
    grid.stop();
}

/// F18: the operator schedules a backup; the agent started by `local up` runs it; the
/// sealed snapshot restores identical and the run is in the backup log.
#[test]
fn requested_backup_runs_and_is_logged() {
    if !fuse_available_or_required() {
        return;
    }
    gridback_tests::init_tracing();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    std::fs::create_dir(&src).unwrap();
    make_tree(&src, 11, 3 << 20);
    let data = work.path().join("data");
    let mnt = work.path().join("mnt");
    let grid = LocalGridProcess::start(&data, &mnt, 6);
    let client = grid.client_id();
    ok(
        &grid,
        &[
            "schedule",
            "add",
            "--client",
            &client,
            "--path",
            src.to_str().unwrap(),
            "--every",
            "10s",
        ],
    );
    // The sealed snapshots the agent made so far, oldest first.
    let sealed = || -> Vec<String> {
        let out = grid.gridback(&["snapshot", "list", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let mut names: Vec<String> = v["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["name"].as_str().unwrap().starts_with("sched-") && s["state"] == "sealed")
            .map(|s| s["name"].as_str().unwrap().to_string())
            .collect();
        names.sort();
        names
    };
    let wait_for = |count: usize| -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let names = sealed();
            if names.len() >= count {
                return names;
            }
            assert!(
                Instant::now() < deadline,
                "{} requested backups appeared, waiting for {count}:\n{}\n{}",
                names.len(),
                grid.log_text(),
                std::fs::read_to_string(data.join("logs/agent.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    };
    let first = wait_for(1)[0].clone();
    // The requested backup is an ordinary sealed snapshot: browse it through the mount.
    assert_same_tree(&src, &mnt.join("snapshots").join(&first));

    // A change to the source, then the next run: it sees the change, and it is incremental
    // (the agent backs up from the previous run, so unchanged files are not read again).
    std::fs::write(src.join("changed-after-the-first-run"), b"new").unwrap();
    let before = sealed().len();
    let names = wait_for(before + 1);
    let latest = names.last().unwrap().clone();
    let schedules = grid.admin_json(&["schedule", "list"]);
    let last = &schedules[0]["last_result"];
    assert_eq!(last["ok"], true, "{schedules}");
    let reported = last["snapshot"].as_str().unwrap().to_string();
    assert!(names.contains(&reported), "{schedules}");
    let detail = last["detail"].as_str().unwrap();
    let unchanged: u64 = detail
        .split(", ")
        .find_map(|p| p.strip_suffix(" unchanged"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no unchanged count in {detail:?}"));
    assert!(unchanged > 0, "a later run read every file again: {detail}");
    let log = ok(&grid, &["log", "--json"]);
    for name in [&first, &latest] {
        assert!(
            log.lines()
                .any(|l| l.contains("backup.scheduled") && l.contains(name.as_str())),
            "{name} is not in the backup log:\n{log}"
        );
    }
    // And restore the latest: the change is in it.
    let dest = work.path().join("restored");
    let out = grid.gridback(&["restore", &latest, dest.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "restore failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_same_tree(&src, &dest);
    grid.stop();
}

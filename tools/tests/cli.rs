//! The `gridback` binary as a user meets it: help, defaults, and clear refusals.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed step fails the test

use std::process::Command;

fn gridback() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gridback"))
}

#[test]
fn help_teaches_the_first_command() {
    let out = gridback().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("gridback local up"), "{text}");
    for sub in [["local", "up"], ["snapshot", "seal"], ["status", "--json"]] {
        let out = gridback().args(&sub[..1]).arg("--help").output().unwrap();
        assert!(out.status.success(), "{sub:?}");
    }
}

#[test]
fn print_config_shows_every_default() {
    for which in ["client", "node", "coordinator"] {
        let out = gridback().args(["print-config", which]).output().unwrap();
        assert!(out.status.success(), "{which}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("coordinator_addr") || text.contains("listen_addr"),
            "{which}: {text}"
        );
    }
}

#[test]
fn local_up_refuses_a_missing_or_non_empty_mountpoint() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = gridback()
        .args(["local", "up", "--nodes", "1", "--data"])
        .arg(&data)
        .arg("--mount")
        .arg(dir.path().join("does-not-exist"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));

    let full = dir.path().join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("x"), b"x").unwrap();
    let out = gridback()
        .args(["local", "up", "--nodes", "1", "--data"])
        .arg(&data)
        .arg("--mount")
        .arg(&full)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
    assert!(
        !data.exists(),
        "nothing is started or created when the mountpoint is wrong"
    );
}

#[test]
fn client_commands_without_a_config_say_what_is_missing() {
    let out = gridback()
        .args(["status", "--config", "/nonexistent/client.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/client.toml"), "{err}");
}

#[test]
fn a_busy_port_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    // Hold a UDP port, then ask the coordinator to listen on it.
    let holder = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = holder.local_addr().unwrap();
    let cfg = dir.path().join("coordinator.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = {:?}\nlisten_addr = \"{addr}\"\n",
            dir.path().join("c").display().to_string()
        ),
    )
    .unwrap();
    let out = gridback()
        .args(["coordinator", "run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("already in use") && err.contains(&addr.to_string()),
        "{err}"
    );
}

#[test]
fn a_node_config_with_unknown_settings_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("node.toml");
    std::fs::write(
        &cfg,
        "data_dir = \"/tmp/x\"\ncoordinator_addr = \"127.0.0.1:1\"\ncapacty = \"1GiB\"\n",
    )
    .unwrap();
    let out = gridback()
        .args(["node", "run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("capacty"), "{err}");
}

/// Admin commands refuse bad input before they talk to anyone, and say which flag is wrong.
#[test]
fn admin_input_errors_name_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let out = gridback()
        .args(["admin", "clients"])
        .env_remove("GRIDBACK_ADMIN_CONFIG")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("admin.toml") && err.contains("--config"),
        "{err}"
    );

    // A config pointing at a coordinator that is not there: the certificate is looked for
    // first, and the message says where it comes from.
    let cfg = dir.path().join("admin.toml");
    std::fs::write(
        &cfg,
        format!(
            "coordinator_addr = \"127.0.0.1:9\"\ntls_dir = \"{}\"\n",
            dir.path().join("nowhere").display()
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = gridback()
            .arg("admin")
            .args(args)
            .arg("--config")
            .arg(&cfg)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run(&["clients"]);
    assert!(
        err.contains("admin.crt") && err.contains("COORDINATOR_DATA/admin"),
        "{err}"
    );

    // Flags are checked locally: the message names the flag and the accepted forms.
    std::fs::write(&cfg, "coordinator_addr = \"x\"\nbogus = 1\n").unwrap();
    let err = run(&["clients"]);
    assert!(err.contains("bogus"), "unknown key not named: {err}");

    // Bad values are reported with their flag and value before any config or certificate
    // is read: the same with no config at all as with one that points nowhere.
    let client = "00112233445566778899aabbccddeeff";
    let cases: [(&[&str], &[&str]); 8] = [
        (
            &["subscription", "set", client, "--quota", "lots"],
            &["--quota", "\"lots\""],
        ),
        (
            &["subscription", "set", client, "--packet-min", "7"],
            &["--packet-min", "\"7\"", "level 0-3"],
        ),
        (
            &["subscription", "set", client, "--expires", "someday"],
            &["--expires", "\"someday\""],
        ),
        (
            &["node", "set", client, "--location", "a/b"],
            &["--location", "a/b", "REGION/ZONE/HOST"],
        ),
        (
            &["client", "set", client, "--coords", "91,0"],
            &["--coords", "91,0"],
        ),
        (
            &["placement", "set", "--packet-min", "3", "--packet-max", "1"],
            &["packet-min 3", "packet-max 1"],
        ),
        (
            &[
                "subscription",
                "set",
                client,
                "--backup-min",
                "900km",
                "--backup-max",
                "500km",
            ],
            &["backup-min 900km", "backup-max 500km"],
        ),
        (&["chunk", "not-hex"], &["\"not-hex\"", "chunk id"]),
    ];
    for (args, want) in cases {
        for config in [None, Some(&cfg)] {
            let mut cmd = gridback();
            cmd.arg("admin")
                .args(args)
                .env_remove("GRIDBACK_ADMIN_CONFIG");
            if let Some(c) = config {
                cmd.arg("--config").arg(c);
            }
            let out = cmd.output().unwrap();
            assert!(!out.status.success(), "{args:?} succeeded");
            let err = String::from_utf8_lossy(&out.stderr);
            for w in want {
                assert!(err.contains(w), "{args:?}: {w:?} missing from: {err}");
            }
            assert!(
                !err.contains("admin config") && !err.contains("bogus"),
                "{args:?}: the config was read before the flags were checked: {err}"
            );
        }
    }
}

#[test]
fn topology_file_errors_name_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let topo = dir.path().join("topology");
    std::fs::write(&topo, "node eu/eu-1/a\nnode eu-only\n").unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let out = gridback()
        .args(["local", "up", "--topology"])
        .arg(&topo)
        .arg("--data")
        .arg(dir.path().join("data"))
        .arg("--mount")
        .arg(&mnt)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 2") && err.contains("REGION/ZONE/HOST"),
        "{err}"
    );
    // Nothing was started: no coordinator state was created.
    assert!(!dir.path().join("data/coordinator").exists());
}

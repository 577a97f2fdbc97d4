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

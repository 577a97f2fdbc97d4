//! `gridback print-config`: each configuration file with every default filled in.

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::PrintConfigArgs;

/// `gridback print-config`.
pub fn run(a: PrintConfigArgs) -> Result<ExitCode> {
    let text = match a.which.as_str() {
        "client" => {
            gridback_fs::config::ClientConfig::new("127.0.0.1:7400", "/var/lib/gridback/client")
                .to_toml()
        }
        "node" => {
            gridback_storage_node::NodeConfig::new("/var/lib/gridback/node", "127.0.0.1:7400")
                .to_toml()
        }
        _ => {
            gridback_coordinator::CoordinatorConfig::new("/var/lib/gridback/coordinator").to_toml()
        }
    };
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

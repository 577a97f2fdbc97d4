//! `gridback admin`: the operator's client of the coordinator. Records are printed as
//! tables, or as JSON with `--json` (ids as hex strings, sizes in bytes, times in ms since
//! the Unix epoch).

mod records;
mod request;
mod rules;
mod schedule;
mod table;
mod when;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use gridback_fs::coord_client::CoordClient;
use gridback_proto::coord_api::CoordRequest;
use gridback_proto::tls::Identity;
use gridback_proto::transport::{ConnPool, client_endpoint};
use gridback_proto::{ErrorCode, Rpc};
use serde::Deserialize;

use crate::cli::AdminArgs;
use request::Request;

/// The admin config file (`DATA/admin.toml` of a local grid).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// The coordinator's address (`host:port`).
    pub coordinator_addr: String,
    /// Directory with `admin.crt`, `admin.key` and `ca.crt` (the coordinator writes them to
    /// `COORDINATOR_DATA/admin` at init).
    pub tls_dir: PathBuf,
}

impl AdminConfig {
    /// Read an admin config file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the admin config {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid admin config {}", path.display()))
    }
}

/// A connection to the coordinator with the admin certificate.
pub struct Admin {
    coord: CoordClient,
}

impl Admin {
    /// Connect as the operator described by `config`.
    pub fn connect(config: &AdminConfig) -> Result<Self> {
        let dir = &config.tls_dir;
        let read = |name: &str| {
            let p = dir.join(name);
            std::fs::read_to_string(&p).with_context(|| {
                format!(
                    "cannot read {} (the coordinator writes the admin certificate to \
                     COORDINATOR_DATA/admin at init)",
                    p.display()
                )
            })
        };
        let identity =
            Identity::from_pem(&read("admin.crt")?, &read("admin.key")?, &read("ca.crt")?)?;
        let ep = client_endpoint(&identity)?;
        Ok(Self {
            coord: CoordClient::new(ConnPool::new(ep), config.coordinator_addr.clone()),
        })
    }

    /// One request, with an error that names the request and the coordinator's reason.
    pub async fn call<R: Rpc<Envelope = CoordRequest>>(&self, req: R) -> Result<R::Response> {
        match self.coord.call(req).await {
            Ok(r) => Ok(r),
            Err(e) if e.code() == Some(ErrorCode::Unauthorized) => Err(anyhow::Error::new(e)
                .context(format!(
                    "the coordinator refused `{}`: is this the admin certificate of this grid?",
                    R::NAME
                ))),
            Err(e) => Err(anyhow::Error::new(e).context(format!(
                "`{}` at the coordinator {} failed",
                R::NAME,
                self.coord.addr()
            ))),
        }
    }
}

impl Drop for Admin {
    fn drop(&mut self) {
        self.coord.pool().close_all();
    }
}

/// `gridback admin …`. Every argument is checked first ([`Request::parse`]), then the
/// config and the certificate are read and the request is sent.
pub async fn run(args: AdminArgs, stop: &super::StopSignal) -> Result<ExitCode> {
    let request = Request::parse(args.command)?;
    let Some(path) = args.config.config.as_deref() else {
        bail!(
            "no admin config: pass --config FILE (DATA/admin.toml of a local grid) or set \
             GRIDBACK_ADMIN_CONFIG"
        );
    };
    let admin = Admin::connect(&AdminConfig::load(path)?)?;
    request.run(&admin, args.config.json, stop).await
}

/// Parse an id argument with a message that names what was expected.
fn parse_id<T: std::str::FromStr>(what: &str, s: &str) -> Result<T>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    s.parse::<T>()
        .with_context(|| format!("{s:?} is not a {what} id (hex, as `gridback admin` prints it)"))
}

/// Print a value as one JSON document (with [`add_location_labels`]).
fn print_json<T: serde::Serialize>(v: &T) -> Result<ExitCode> {
    let mut v = serde_json::to_value(v)?;
    add_location_labels(&mut v);
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(ExitCode::SUCCESS)
}

/// Give every object whose `location` is a `{region, zone, host, coords}` object a sibling
/// `location_labels`: the same place as the `REGION/ZONE/HOST` string that chunk targets
/// and `gridback status --json` carry as `location`. Added, never replacing a field.
fn add_location_labels(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            let labels = map.get("location").and_then(|l| {
                let part = |k: &str| l.get(k).and_then(Value::as_str);
                Some(format!(
                    "{}/{}/{}",
                    part("region")?,
                    part("zone")?,
                    part("host")?
                ))
            });
            for child in map.values_mut() {
                add_location_labels(child);
            }
            if let Some(l) = labels {
                map.entry("location_labels").or_insert(Value::String(l));
            }
        }
        Value::Array(items) => items.iter_mut().for_each(add_location_labels),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::add_location_labels;
    use serde_json::json;

    #[test]
    fn location_objects_gain_their_label_string_and_strings_stay() {
        let mut v = json!({
            "location": {"region": "eu", "zone": "eu-1", "host": "h1", "coords": null},
            "status": {"location": {"region": "us", "zone": "us-1", "host": "h4"}},
            "targets": [{"location": "eu/eu-2/h2", "node": "ab"}],
        });
        add_location_labels(&mut v);
        assert_eq!(v["location_labels"], "eu/eu-1/h1");
        assert_eq!(v["location"]["zone"], "eu-1", "the object stays");
        assert_eq!(v["status"]["location_labels"], "us/us-1/h4");
        assert_eq!(v["targets"][0]["location"], "eu/eu-2/h2");
        assert!(v["targets"][0].get("location_labels").is_none());
    }
}

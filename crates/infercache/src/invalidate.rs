//! `infercache invalidate`: `POST /v1/cache/invalidate` for one scope.

use clap::{ArgGroup, Args};
use serde_json::{Value, json};

use crate::client::{self, Client, ServerArgs};

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("scope").required(true).args(["all", "model", "namespace"])))]
pub struct InvalidateCommand {
    /// Everything in the cache.
    #[arg(long)]
    all: bool,
    /// Every version of this model (its id or an alias).
    #[arg(long, value_name = "MODEL")]
    model: Option<String>,
    /// Only this version of --model.
    #[arg(long, value_name = "VERSION", requires = "model")]
    version: Option<String>,
    /// Everything of this namespace (tenant).
    #[arg(long, value_name = "NS")]
    namespace: Option<String>,
    #[command(flatten)]
    server: ServerArgs,
}

impl InvalidateCommand {
    /// The body the server expects (see `infercache_server::routes::admin`).
    fn body(&self) -> Value {
        match (&self.model, &self.version, &self.namespace) {
            (Some(model), Some(version), _) => {
                json!({ "scope": "version", "model": model, "version": version })
            }
            (Some(model), None, _) => json!({ "scope": "model", "model": model }),
            (None, _, Some(namespace)) => json!({ "scope": "namespace", "namespace": namespace }),
            (None, _, None) => json!({ "scope": "all" }),
        }
    }
}

pub fn run(cmd: &InvalidateCommand) -> anyhow::Result<()> {
    let client = Client::new(&cmd.server)?;
    let answer = client::runtime()?.block_on(client.post("v1/cache/invalidate", &cmd.body()))?;
    let scope = &answer["invalidated"];
    let described = match scope["scope"].as_str() {
        Some("all") => "everything".to_owned(),
        Some("namespace") => format!("namespace {}", scope["namespace"]),
        Some("model") => format!("model {}", scope["model"]),
        Some("version") => format!("model {} version {}", scope["model"], scope["version"]),
        _ => scope.to_string(),
    };
    println!("invalidated {described}");
    Ok(())
}

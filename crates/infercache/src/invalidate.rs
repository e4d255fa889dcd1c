//! `infercache invalidate`: `POST /v1/cache/invalidate` for one scope.

use anyhow::Context as _;
use clap::{ArgGroup, Args};
use infercache_api::{Invalidated, Scope};

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
    /// The scope the flags name: the body the server expects.
    fn scope(&self) -> Scope {
        match (&self.model, &self.version, &self.namespace) {
            (Some(model), Some(version), _) => Scope::Version {
                model: model.clone(),
                version: version.clone(),
            },
            (Some(model), None, _) => Scope::Model {
                model: model.clone(),
            },
            (None, _, Some(namespace)) => Scope::Namespace {
                namespace: namespace.clone(),
            },
            (None, _, None) => Scope::All,
        }
    }
}

pub fn run(cmd: &InvalidateCommand) -> anyhow::Result<()> {
    let client = Client::new(&cmd.server)?;
    let body = serde_json::to_value(cmd.scope()).context("encoding the scope")?;
    let answer = client::runtime()?.block_on(client.post("v1/cache/invalidate", &body))?;
    let answer: Invalidated = serde_json::from_value(answer)
        .context("the server's invalidation answer is not in the expected shape")?;
    let described = match answer.invalidated {
        Scope::All => "everything".to_owned(),
        Scope::Namespace { namespace } => format!("namespace {namespace:?}"),
        Scope::Model { model } => format!("model {model:?}"),
        Scope::Version { model, version } => format!("model {model:?} version {version:?}"),
    };
    println!("invalidated {described}");
    Ok(())
}

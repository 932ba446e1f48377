//! `meshgate builds rebuild ID|TRIGGER#N`: a build asked for again. A running gateway is asked
//! (`POST /api/v1/builds/{id}/rebuild`; a name is looked up first); without one, the command
//! opens the log and decides the rebuild itself (a name from the read model the gateway saved).

use anyhow::Context;
use clap::Subcommand;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::config::Config;

#[derive(Debug, Subcommand)]
pub enum BuildsCommand {
    /// A new build (a number of its own) of the same issue, trigger and git ref as BUILD, linked
    /// to it; nothing new while the build for the trigger is queued or running.
    Rebuild {
        /// The build's id, or its name: `ios-build#412` (or `"ios-build #412"`).
        build: String,
    },
}

/// A build as the command line names it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Named {
    Id(Uuid),
    Number { trigger: String, number: u64 },
}

fn parse(build: &str) -> anyhow::Result<Named> {
    if let Ok(id) = Uuid::parse_str(build) {
        return Ok(Named::Id(id));
    }
    let (trigger, number) = build.rsplit_once('#').context("name a build by its id or as TRIGGER#N")?;
    let number = number.trim().parse().context("the number after # is not a number")?;
    Ok(Named::Number { trigger: trigger.trim().to_owned(), number })
}

pub async fn run(config: &Config, command: &BuildsCommand) -> anyhow::Result<()> {
    let BuildsCommand::Rebuild { build } = command;
    let named = parse(build)?;
    let answer = match ask_gateway(config, &named).await? {
        Some(answer) => answer,
        None => rebuild_here(config, &named).await?,
    };
    let name = answer["name"].as_str().map(str::to_owned).unwrap_or_else(|| answer["build_id"].to_string());
    if answer["started"] == true {
        println!("started {name} ({}), a rebuild of {build}", answer["build_id"].as_str().unwrap_or_default());
    } else {
        println!("nothing started: {name} is already queued or running for that issue");
    }
    Ok(())
}

/// Asks the running gateway; none when no gateway answers.
async fn ask_gateway(config: &Config, named: &Named) -> anyhow::Result<Option<Value>> {
    let id = match named {
        Named::Id(id) => *id,
        Named::Number { trigger, number } => {
            let path = format!("/api/v1/builds/by-number/{trigger}/{number}");
            let Some(response) = super::gateway::get(config, &path).await? else { return Ok(None) };
            let status = response.status();
            let found: Value = response.json().await.unwrap_or_default();
            if !status.is_success() {
                anyhow::bail!("no build {trigger} #{number}: the gateway answered {status}");
            }
            found["build"]["build_id"].as_str().and_then(|s| Uuid::parse_str(s).ok()).context("no build id")?
        }
    };
    super::gateway::ask(config, &format!("/api/v1/builds/{id}/rebuild"), &json!({})).await
}

/// No gateway runs: open the log and rebuild from here.
async fn rebuild_here(config: &Config, named: &Named) -> anyhow::Result<Value> {
    let id = match named {
        Named::Id(id) => *id,
        Named::Number { trigger, number } => {
            crate::readmodel::saved_build_id(&config.readmodel_path(), trigger, *number)?.with_context(|| {
                format!("no build {trigger} #{number} in the read model (start the gateway to ask it)")
            })?
        }
    };
    let opened = crate::store::open::log(config).await?;
    let rebuilt = crate::actions::rebuild(opened.store.as_ref(), id, "admin", "admin").await.map_err(|e| match e {
        crate::actions::ActionError::UnknownBuild => anyhow::anyhow!("no build {id} in the log"),
        other => anyhow::Error::from(other),
    })?;
    Ok(json!({"build_id": rebuilt.build_id, "name": null, "rebuild_of": id, "started": rebuilt.started}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_are_named_by_id_or_trigger_and_number() {
        let id = Uuid::now_v7();
        assert_eq!(parse(&id.to_string()).unwrap(), Named::Id(id));
        let number = |t: &str, n| Named::Number { trigger: t.into(), number: n };
        assert_eq!(parse("ios-build#412").unwrap(), number("ios-build", 412));
        assert_eq!(parse("ios-build #7").unwrap(), number("ios-build", 7));
        assert!(parse("ios-build").is_err());
        assert!(parse("ios-build#x").is_err());
    }
}

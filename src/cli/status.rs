//! `meshgate status`: the farm on one screen, from the running gateway: its nodes, what runs, and
//! each queued build with why it waits.

use std::fmt::Write;

use anyhow::Context;
use serde_json::Value;

use crate::config::Config;

/// A queued build's wait, in words (as the dashboard says it).
pub fn why(waiting: &Value) -> String {
    fn list(v: &Value) -> Vec<&str> {
        v.as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default()
    }
    match waiting["reason"].as_str().unwrap_or_default() {
        "paused" => {
            format!("paused by {}: {}", waiting["by"].as_str().unwrap_or("?"), waiting["why"].as_str().unwrap_or(""))
        }
        "no_nodes" => "no live node".to_owned(),
        "no_node_with" => {
            let mut needs: Vec<String> = list(&waiting["labels"]).iter().map(|l| format!("label {l}")).collect();
            if let Some(xcode) = waiting["xcode"].as_str() {
                needs.push(format!("Xcode {xcode}"));
            }
            format!("no live node with {}", needs.join(" and "))
        }
        "lane_full" => format!("its lane runs {} at a time, all taken", waiting["max_running"]),
        "nodes_busy" => {
            format!("every node that can run it is busy ({} node(s), {} slot(s))", waiting["nodes"], waiting["slots"])
        }
        "same_change_running" => "the same change is running".to_owned(),
        "ahead" if waiting["builds"] == 0 => "next".to_owned(),
        "ahead" => format!("{} ahead of it", waiting["builds"]),
        other => other.to_owned(),
    }
}

async fn read(config: &Config, path: &str) -> anyhow::Result<Value> {
    let response = super::gateway::get(config, path)
        .await?
        .context("no gateway answers where the configuration says it listens")?;
    let status = response.status();
    let answer: Value = response.json().await.with_context(|| format!("{path} answered {status} without json"))?;
    anyhow::ensure!(
        status.is_success(),
        "{path} answered {status}: {}",
        answer["message"].as_str().unwrap_or_default()
    );
    Ok(answer)
}

/// The summary, as printed.
pub fn summary(nodes: &Value, running: &Value, queue: &Value) -> String {
    let mut out = String::new();
    let empty = Vec::new();
    let nodes = nodes["nodes"].as_array().unwrap_or(&empty);
    let count = |state: &str| nodes.iter().filter(|n| n["state"] == state).count();
    let _ = writeln!(
        out,
        "nodes: {} ({} idle, {} busy, {} draining, {} lost)",
        nodes.len(),
        count("idle"),
        count("busy"),
        count("draining"),
        count("lost")
    );
    for node in nodes {
        let labels = node["labels"]
            .as_array()
            .map(|l| l.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(","))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  {:<16} {:<9} {}/{} slots  labels: {}",
            node["node_id"].as_str().unwrap_or_default(),
            node["state"].as_str().unwrap_or_default(),
            node["running"].as_array().map_or(0, Vec::len),
            node["slots"],
            if labels.is_empty() { "-" } else { &labels }
        );
    }
    let running = running["builds"].as_array().unwrap_or(&empty);
    let _ = writeln!(out, "running: {}", running.len());
    for build in running {
        let _ = writeln!(
            out,
            "  {:<12} {:<20} on {} (attempt {})",
            build["issue_id"].as_str().unwrap_or_default(),
            format!("{} #{}", build["trigger"].as_str().unwrap_or_default(), build["number"]),
            build["state"]["node_id"].as_str().unwrap_or_default(),
            build["state"]["attempt"]
        );
    }
    if !queue["paused"]["all"].is_null() || queue["paused"]["lanes"].as_object().is_some_and(|l| !l.is_empty()) {
        out.push_str(&super::queue::describe(&queue["paused"]));
    }
    let lanes = queue["lanes"].as_array().unwrap_or(&empty);
    let queue = queue["queue"].as_array().unwrap_or(&empty);
    // The answer lists the first builds only; the lanes count them all.
    let total = if lanes.is_empty() {
        queue.len()
    } else {
        lanes.iter().filter_map(|l| l["queued"].as_u64()).sum::<u64>() as usize
    };
    let _ = writeln!(out, "queued: {total}");
    for entry in queue {
        let _ = writeln!(
            out,
            "  {:<12} {:<16} {:<10} {}",
            entry["issue_id"].as_str().unwrap_or_default(),
            entry["script"].as_str().unwrap_or_default(),
            entry["lane"].as_str().unwrap_or_default(),
            why(&entry["waiting"])
        );
    }
    if total > queue.len() {
        let _ =
            writeln!(out, "  and {} more (the dashboard's queue, or GET /api/v1/queue?lane=…)", total - queue.len());
    }
    out
}

/// The queued builds `status` lists (the first, in the order nodes get them).
const STATUS_QUEUED: usize = 50;

pub async fn run(config: &Config) -> anyhow::Result<()> {
    let nodes = read(config, "/api/v1/nodes").await?;
    let running = read(config, "/api/v1/builds?state=running&limit=1000").await?;
    let queue = read(config, &format!("/api/v1/queue?limit={STATUS_QUEUED}")).await?;
    print!("{}", summary(&nodes, &running, &queue));
    Ok(())
}

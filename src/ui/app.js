// meshgate's dashboard: plain JavaScript, no build step. Reads the API with the session cookie,
// sends changes with the session's CSRF token, and follows the log's live tail (server-sent
// events) to redraw the page it shows. Text is always set as text, never as HTML.
"use strict";

const state = { csrf: null, refresh: null, source: null, log: null, renders: 0 };

/// Most of a running build's log kept on the page (its end): the whole log is behind its link.
const LOG_SHOWN = 200000;

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

async function api(path, options = {}) {
  const init = { credentials: "same-origin", headers: {}, ...options };
  if (init.method && init.method !== "GET") {
    init.headers["X-CSRF-Token"] = state.csrf;
    init.headers["Content-Type"] = "application/json";
  }
  const response = await fetch(path, init);
  if (response.status === 401) { location.href = "/ui/login"; throw new Error("signed out"); }
  const body = response.headers.get("content-type")?.includes("json") ? await response.json() : await response.text();
  if (!response.ok) throw new Error(body?.message || `${response.status}`);
  return body;
}

function ago(iso) {
  if (!iso) return "–";
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

const when = (iso) => h("time", { datetime: iso, title: iso }, new Date(iso).toLocaleString());
const badge = (word) => h("span", { class: `state ${word}` }, word);
// How people name a build: its trigger and number (`ios-build #412`).
const buildName = (b) => (b.number ? `${b.trigger} #${b.number}` : b.build_id);
const buildLink = (b) =>
  h("a", { href: `#/builds/${b.build_id}`, "data-build": b.build_id }, b.number ? `${b.issue_id} ${buildName(b)}` : b.issue_id);
const issueLink = (issue) => h("a", { href: `#/issues/${encodeURIComponent(issue)}` }, issue);

function table(cls, heads, rows, empty) {
  if (!rows.length) return h("p", { class: "empty" }, empty);
  return h("table", { class: cls },
    h("thead", {}, h("tr", {}, heads.map((x) => h("th", {}, x)))),
    h("tbody", {}, rows.map((cells) => h("tr", {}, cells.map((c, i) =>
      h("td", { "data-label": heads[i], class: typeof c === "number" ? "num" : null }, c))))));
}

function section(id, title, ...body) {
  return h("section", { id }, h("h2", {}, title), ...body);
}

// ---- pages ----

/// Why a queued build waits, in words.
function why(w) {
  if (!w) return "–";
  switch (w.reason) {
    case "paused": return `paused by ${w.by}: ${w.why}`;
    case "no_nodes": return "no live node";
    case "no_node_with": return `no live node with ${[...w.labels.map((l) => `label ${l}`), ...(w.xcode ? [`Xcode ${w.xcode}`] : [])].join(" and ") || "what it needs"}`;
    case "lane_full": return `its lane runs ${w.max_running} at a time, all taken`;
    case "nodes_busy": return `every node that can run it is busy (${w.nodes} node(s), ${w.slots} slot(s))`;
    case "same_change_running": return "the same change is running";
    case "ahead": return w.builds === 0 ? "next" : `${w.builds} ahead of it`;
    default: return w.reason;
  }
}

/// Queued builds the overview lists per lane, first in the order nodes get them.
const QUEUED_PER_LANE = 100;

async function overview() {
  const [queue, running, nodes, outbox, recent, deliveries] = await Promise.all([
    api("/api/v1/queue?limit=1"), api("/api/v1/builds?state=running&limit=1000"), api("/api/v1/nodes"),
    api("/api/v1/outbox"), api("/api/v1/builds?limit=15"), recentDeliveries(),
  ]);
  // Each lane's first builds, with why they wait; the lanes' counts cover them all.
  const waiting = queue.lanes.filter((l) => l.queued > 0);
  const pages = await Promise.all(waiting.map((l) =>
    api(`/api/v1/queue?lane=${encodeURIComponent(l.lane)}&limit=${QUEUED_PER_LANE}`)));
  const held = [
    ...(queue.paused.all ? [["every lane", queue.paused.all]] : []),
    ...Object.entries(queue.paused.lanes || {}).map(([lane, p]) => [`lane ${lane}`, p]),
  ];
  return [
    h("h1", {}, "Overview"),
    held.length ? h("div", { id: "paused", class: "notice error", role: "status" }, held.map(([what, p]) =>
      h("p", {}, `Paused: ${what}, by ${p.by} ${ago(p.since)}: ${p.reason}. Nodes claim nothing from it until it is resumed (meshgate queue resume).`))) : null,
    section("queue", "Queue",
      waiting.length === 0 ? h("p", { class: "empty" }, "Nothing is waiting.") :
        waiting.map((lane, i) => {
          const builds = pages[i].queue;
          return [
            h("h3", {}, `${lane.lane}: ${lane.queued} waiting, longest ${ago(lane.waiting_since)}`),
            table("wide", ["Issue", "Script", "Waiting", "Why", "State"],
              builds.map((b) => [buildLink(b), b.script, ago(b.requested_at),
                h("span", { class: "why", "data-why": b.waiting.reason }, why(b.waiting)), badge("queued")]), ""),
            lane.queued > builds.length ? h("p", { class: "hint more" }, `and ${lane.queued - builds.length} more after these`) : null,
          ];
        })),
    section("running", "Running",
      table("wide", ["Issue", "Node", "Attempt", "Elapsed", "State"], running.builds.map((b) =>
        [buildLink(b), b.state.node_id, b.state.attempt, ago(b.started_at || b.updated_at), badge("running")]), "No build is running.")),
    section("nodes", "Nodes", nodesTable(nodes.nodes, false)),
    section("deliveries", "Recent deliveries",
      table("wide", ["Received", "Issue", "Outcome", "Why"], deliveries.map((d) =>
        [when(d.at), issueLink(d.issue), badge(d.outcome), d.why]), "No delivery yet.")),
    section("outbox", "Outbox",
      table("wide", ["Sink", "Pending", "Oldest pending", "Next retry", "Abandoned"], outbox.sinks.map((s) =>
        [s.sink, s.pending, s.oldest_pending_at ? ago(s.oldest_pending_at) : "–",
          s.next_retry_at ? when(s.next_retry_at) : "–", s.abandoned]), "No outbound sink is configured.")),
    section("recent", "Latest builds",
      table("wide", ["Issue", "Lane", "Requested", "State"], recent.builds.map((b) =>
        [buildLink(b), b.lane, when(b.requested_at), badge(b.state.state)]), "No build yet.")),
  ];
}

/// The last deliveries and what became of them.
async function recentDeliveries() {
  const { deliveries } = await api("/api/v1/deliveries?limit=20");
  return deliveries.map((d) => ({
    at: d.received_at, issue: d.issue_id, outcome: d.outcome,
    why: d.outcome === "enqueued" ? `${d.build_ids.length} build(s)` : (d.reason || d.event_type).replaceAll("_", " "),
  }));
}

function nodesTable(nodes, withActions) {
  const heads = ["Node", "State", "Labels", "Xcodes", "Slots", "Running", "Last seen"];
  if (withActions) heads.push("");
  return table("wide", heads, nodes.map((n) => {
    const xcodes = h("span", { class: "xcodes", title: n.xcodes.map((x) => `${x.version}: ${x.path}`).join("\n") },
      n.xcodes.map((x) => x.version).join(", ") || "–");
    const row = [n.node_id, badge(n.state), n.labels.join(", ") || "–", xcodes, n.slots, n.running.length, ago(n.last_seen)];
    if (withActions) {
      row.push(h("button", { type: "button", "data-node": n.node_id, onclick: () => drain(n.node_id, !n.draining) },
        n.draining ? "Resume" : "Drain"));
    }
    return row;
  }), "No node has asked for work yet.");
}

async function nodesPage() {
  const nodes = await api("/api/v1/nodes");
  return [h("h1", {}, "Nodes"), section("nodes", "Build nodes", nodesTable(nodes.nodes, true))];
}

async function drain(node, draining) {
  await act(() => api(`/api/v1/nodes/${encodeURIComponent(node)}/drain`, {
    method: "POST", body: JSON.stringify({ draining, reason: "from the dashboard" }),
  }));
}

function summary(e) {
  const d = e.data;
  switch (e.type) {
    case "WebhookReceived": return `${d.event_type} for ${d.issue_id} received`;
    case "WebhookRouted": return `routed to ${d.build_ids.length} build(s)`;
    case "WebhookIgnored": return `ignored: ${d.reason}`;
    case "IntentActivated": return `the active build of ${d.intent_key}`;
    case "BuildRequested": return `${d.rebuild_of ? "rebuild " : ""}requested by ${d.requested_by || "?"}: ${d.script} on ${d.git_ref} (lane ${d.lane})`;
    case "BuildRequestFolded": return `a delivery folded in (${d.reason})`;
    case "BuildClaimed": return `claimed by ${d.node_id}, attempt ${d.attempt}`;
    case "BuildLeaseRenewed": return `heartbeat from ${d.node_id}`;
    case "BuildRequeued": return `requeued: ${d.reason}`;
    case "BuildSucceeded": return "succeeded";
    case "BuildFailed": return `failed: ${d.reason}${d.report?.retry_rule ? ` (retries used up: ${d.report.retry_rule})` : ""}`;
    case "BuildRetryScheduled": return `attempt ${d.attempt} failed the way ${d.rule} says: retrying as attempt ${d.next_attempt}`;
    case "ArtifactStored": return `artifact ${d.name} (${size(d.bytes)}) from ${d.node_id}`;
    case "ArtifactsExpired": return `artifacts removed after ${d.keep_days} days: ${d.names.join(", ")}`;
    case "BuildLogsExpired": return `logs removed after ${d.keep_days} days (attempt ${d.attempts.join(", ")})`;
    case "BuildCancelled": return `cancelled: ${d.reason}`;
    case "BuildRebuilt": return `rebuilt by ${d.by} (${d.via}) as a new build`;
    case "BuildActionRequested": return `${d.action} asked by ${d.user} on ${d.via}: ${d.outcome.replace("_", " ")}`;
    case "BuildResultRejected": return `refused a stale ${d.reason || "report"}`;
    case "NotificationAttempted":
      return `${d.sink} ${d.milestone}: attempt ${d.attempt} answered ${d.status ?? "no status"}${d.excerpt ? ` (${d.excerpt})` : ""}`;
    case "NotificationDelivered": return `${d.sink} ${d.milestone}: delivered after ${d.attempts} attempt(s)`;
    case "NotificationAbandoned": return `${d.sink} ${d.milestone}: abandoned after ${d.attempts}: ${d.reason}`;
    case "PageRequested": return `on-call paged: ${d.reason}`;
    case "NotificationResendRequested": return `${d.sink} ${d.milestone}: asked to be sent again by ${d.requested_by}${d.force ? " (forced)" : ""}`;
    case "LaneClaimed": return `lane ${d.lane} taken by ${d.node_id} for attempt ${d.attempt}`;
    case "NodeSeen": return `node ${d.node_id} presented itself: ${d.slots} slot(s)${d.labels.length ? `, labels ${d.labels.join(", ")}` : ""}`;
    case "NodeDrained": return `node ${d.node_id} ${d.draining ? "drained" : "back in service"}${d.reason ? `: ${d.reason}` : ""}`;
    case "ReconcileSwept": return `YouTrack's activity read: ${d.transitions_matched} transition(s) matched, ${d.builds_started.length} build(s) started`;
    case "DeliveryReplayed": return `delivery decided again: ${d.build_ids.length} build(s) started`;
    case "SelfTestRan": return `self-test ${d.passed ? "passed" : "failed"} (${d.checks.length} check(s))`;
    case "ChatSynced": return `${d.sink} read for reactions`;
    case "QueuePaused": return `${d.lanes.length ? `lane(s) ${d.lanes.join(", ")}` : "every lane"} paused by ${d.by}: ${d.reason}`;
    case "LaneUnservable": return `no live node can serve lane ${d.lane}; on-call paged`;
    case "LaneServable": return `lane ${d.lane} can be served again; the page resolved`;
    case "QueueResumed": return `${d.lanes.length ? `lane(s) ${d.lanes.join(", ")}` : "every lane"} resumed by ${d.by}`;
    default: return `${e.type} (${Object.keys(d).join(", ")})`;
  }
}

function size(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KiB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
}

/// A span of time as people say it: `0.3 s`, `45 s`, `1 min 35 s`, `14 min`, `1 h 5 min`.
function span(ms) {
  if (ms < 10000) return `${(ms / 1000).toFixed(1)} s`;
  const s = Math.round(ms / 1000);
  if (s < 60) return `${s} s`;
  if (s < 600) return s % 60 ? `${Math.floor(s / 60)} min ${s % 60} s` : `${s / 60} min`;
  if (s < 3600) return `${Math.round(s / 60)} min`;
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
}

/// Each step with the time it took: how long the build waited for a node, how long each attempt
/// ran, how soon chat and the tracker were told, and the time since the step before.
function timeline(events) {
  let previous = null, requested = null, claimed = null;
  const milestones = {};
  return h("ol", { class: "timeline", id: "timeline" }, events.map((e) => {
    const at = Date.parse(e.recorded_at);
    const d = e.data;
    let took = null;
    switch (e.type) {
      case "BuildRequested": requested = at; milestones.queued = at; break;
      case "BuildClaimed": if (requested !== null) took = `waited ${span(at - requested)}`; claimed = at; milestones.running = at; break;
      case "BuildSucceeded": case "BuildFailed": case "BuildCancelled": case "BuildRetryScheduled": case "BuildRequeued": {
        if (claimed !== null) took = `ran ${span(at - claimed)}`;
        const name = { BuildSucceeded: "succeeded", BuildFailed: "failed", BuildCancelled: "cancelled", BuildRequeued: "requeued" }[e.type];
        if (name) milestones[name] = at;
        if (e.type !== "BuildCancelled") claimed = null;
        if (e.type === "BuildRetryScheduled" || e.type === "BuildRequeued") requested = at;
        break;
      }
      case "NotificationDelivered": {
        const since = milestones[(d.milestone || "").split("-")[0]];
        if (since !== undefined) took = `${d.sink} told ${span(at - since)} later`;
        break;
      }
    }
    const gap = previous === null ? null : `+${span(at - previous)}`;
    previous = at;
    return h("li", { "data-type": e.type },
      h("span", { class: "when" }, new Date(e.recorded_at).toLocaleTimeString(), gap ? ` (${gap})` : "", " · "),
      h("span", { class: "type" }, e.type),
      h("span", { class: "what" }, summary(e)),
      e.build ? h("span", { class: "build" }, ` · ${e.build}`) : null,
      took ? h("span", { class: "took" }, ` · ${took}`) : null);
  }));
}

async function buildPage(id) {
  const [detail, ofBuild, artifacts] = await Promise.all([
    api(`/api/v1/builds/${id}`), api(`/api/v1/events?build=${id}&limit=1000`), api(`/api/v1/builds/${id}/artifacts`),
  ]);
  const b = detail.build;
  // The delivery that asked for it (its correlation id) and everything about the build itself.
  const ofDelivery = await api(`/api/v1/events?correlation=${b.correlation_id}&limit=1000`);
  const byPosition = new Map([...ofDelivery.events, ...ofBuild.events].map((e) => [e.position, e]));
  const related = { events: [...byPosition.values()].sort((x, y) => x.position - y.position) };
  const active = b.state.state === "queued" || b.state.state === "running";
  const reason = h("input", { id: "reason", placeholder: "Why (recorded with the action)", maxlength: "500" });
  const act2 = (what) => () => {
    if (!reason.value.trim()) { reason.focus(); return notice("Say why first.", true); }
    return act(() => api(`/api/v1/builds/${id}/${what}`, { method: "POST", body: JSON.stringify({ reason: reason.value }) }));
  };
  return [
    h("h1", {}, h("span", { id: "build-name" }, buildName(b)), " of ", issueLink(b.issue_id), " ",
      h("span", { id: "build-state" }, badge(b.state.state))),
    section("facts", "Build", h("dl", { class: "facts" },
      [["Build", b.build_id], ["Number", b.number ? `#${b.number}` : "–"], ["Trigger", b.trigger], ["Script", b.script], ["Ref", b.git_ref], ["Lane", b.lane],
        ["Requested", new Date(b.requested_at).toLocaleString()], ["Node", b.state.node_id || b.report?.node_id || "–"],
        ["Xcode", b.xcode || "–"], ["Summary", b.summary || "–"],
        ...(detail.waiting ? [["Waiting", h("span", { id: "waiting", "data-why": detail.waiting.reason }, why(detail.waiting))]] : [])]
        .map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]),
      h("dt", {}, "Log"), h("dd", {}, h("a", { href: detail.log_url, id: "log-link" }, "full log")))),
    active ? h("div", { class: "actions" }, reason,
      h("button", { type: "button", id: "cancel", class: "danger", onclick: act2("cancel") }, "Cancel build"),
      b.state.state === "running" ? h("button", { type: "button", id: "requeue", onclick: act2("requeue") }, "Requeue") : null)
      : h("div", { class: "actions" }, h("button", { type: "button", id: "rebuild", onclick: () => act(async () => {
        // The build that answers: the new one, or the one already queued or running for the issue.
        const again = await api(`/api/v1/builds/${id}/rebuild`, { method: "POST", body: "{}" });
        location.hash = `#/builds/${again.build_id}`;
      }) }, "Rebuild")),
    b.rebuild_of || b.rebuilds?.length ? section("rebuilds", "Rebuilds", h("ul", { id: "rebuild-links" },
      b.rebuild_of ? h("li", {}, "A rebuild of ", h("a", { href: `#/builds/${b.rebuild_of}`, id: "rebuild-of" }, "the build it repeats")) : null,
      (b.rebuilds || []).map((r) => h("li", {}, h("a", { href: `#/builds/${r.build_id}`, "data-rebuild": r.build_id }, "rebuilt"),
        ` by ${r.by} (${r.via}) ${ago(r.at)}`)))) : null,
    section("events", "Timeline", timeline(related.events)),
    artifactsSection(b, artifacts.artifacts),
    b.state.state === "running" ? liveLog(id, b.state.attempt)
      : b.report?.log_tail ? section("log-tail", "End of the log", h("pre", {}, b.report.log_tail)) : null,
  ];
}

function artifactsSection(build, stored) {
  const removed = build.artifacts?.filter((a) => a.removed) || [];
  if (!stored.length && !removed.length) return null;
  return section("artifacts", "Artifacts", table("wide", ["Artifact", "Attempt", "Size", "SHA-256"],
    stored.map((a) => [h("a", { href: a.url, "data-artifact": a.name, download: "" }, a.name), a.attempt, size(a.bytes),
      h("code", { title: a.sha256 }, a.sha256.slice(0, 12))]), ""),
  removed.length ? h("p", { class: "empty" }, `Removed after the retention time: ${removed.map((a) => a.name).join(", ")}`) : null);
}

/// A running attempt's log, growing as the node sends it: one reader per build and attempt,
/// kept across redraws of the page (each redraw shows what it read so far).
function liveLog(id, attempt) {
  if (state.log?.id !== id || state.log.attempt !== attempt) {
    state.log?.abort.abort();
    const log = { id, attempt, text: "", abort: new AbortController() };
    state.log = log;
    readLog(log);
  }
  return section("live-log", "Log, as it runs", h("pre", { id: "log" }, state.log.text));
}

async function readLog(log) {
  try {
    const response = await fetch(`/api/v1/builds/${log.id}/log?attempt=${log.attempt}&follow=true`,
      { credentials: "same-origin", signal: log.abort.signal });
    if (!response.ok) return;
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      log.text = (log.text + value).slice(-LOG_SHOWN);
      const pre = state.log === log && document.getElementById("log");
      if (pre) {
        const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
        pre.textContent = log.text;
        if (atEnd) pre.scrollTop = pre.scrollHeight;
      }
    }
  } catch (e) {
    if (e.name !== "AbortError") console.warn("the live log stopped", e);
  }
}

async function issuePage(issue) {
  const [builds, events] = await Promise.all([
    api(`/api/v1/builds?issue=${encodeURIComponent(issue)}`),
    api(`/api/v1/events?issue=${encodeURIComponent(issue)}&limit=1000`),
  ]);
  return [
    h("h1", {}, `Issue ${issue}`),
    section("builds", "Builds", table("wide", ["Build", "Requested", "State"], builds.builds.map((b) =>
      [h("a", { href: `#/builds/${b.build_id}`, "data-build": b.build_id }, buildName(b)), when(b.requested_at), badge(b.state.state)]),
    "No build for this issue.")),
    section("events", "History", timeline(events.events)),
  ];
}

// ---- stats ----

/// The farm's history: what `#/stats` asks (`since`, `trigger`), kept while the page is redrawn.
state.stats = { since: null, trigger: "" };

const days30 = () => new Date(Date.now() - 29 * 86400000).toISOString().slice(0, 10);

async function statsPage() {
  const ask = state.stats;
  const since = ask.since || days30();
  const query = new URLSearchParams({ since, ...(ask.trigger ? { trigger: ask.trigger } : {}) });
  const st = await api(`/api/v1/stats?${query}`);
  const days = st.days.map((d) => d.day);
  const pick = (list, f) => list.map((x) => (x === undefined ? null : f(x)));
  const form = h("form", { id: "stats-ask", class: "actions", onsubmit: (e) => {
    e.preventDefault();
    state.stats = { since: e.target.since.value || null, trigger: e.target.trigger.value };
    render();
  } },
  h("label", {}, "Since ", h("input", { type: "date", name: "since", value: since, max: new Date().toISOString().slice(0, 10) })),
  h("label", {}, "Trigger ", h("select", { name: "trigger" }, h("option", { value: "" }, "every trigger"),
    [...new Set([...st.triggers.map((t) => t.trigger), ...(ask.trigger ? [ask.trigger] : [])])].map((t) =>
      h("option", { value: t, selected: t === ask.trigger }, t)))),
  h("button", { type: "submit" }, "Show"));
  const durations = ask.trigger ? st.triggers.filter((t) => t.trigger === ask.trigger) : st.triggers;
  const total = (k) => st.days.reduce((n, d) => n + d[k], 0);
  return [
    h("h1", {}, "Stats"),
    form,
    h("p", { class: "hint", id: "stats-summary" }, `${days[0]} to ${st.until}: ${total("succeeded")} passed, ${total("failed")} failed, ${total("cancelled")} cancelled`
      + (st.kept_since && st.kept_since > since ? ` (history starts ${st.kept_since})` : "")),
    section("stats-outcomes", "Builds per day", charts.bars("outcomes", "Builds per day by outcome", days, [
      { name: "passed", cls: "succeeded", values: st.days.map((d) => d.succeeded) },
      { name: "failed", cls: "failed", values: st.days.map((d) => d.failed) },
      { name: "cancelled", cls: "cancelled", values: st.days.map((d) => d.cancelled) },
    ])),
    section("stats-durations", "Build duration", durations.length === 0 ? h("p", { class: "empty" }, "No build finished in these days.") :
      durations.map((t) => [h("h3", {}, `${t.trigger}: median ${t.duration.p50 === null ? "–" : charts.seconds(t.duration.p50)}, p90 ${t.duration.p90 === null ? "–" : charts.seconds(t.duration.p90)}`),
        charts.line(`duration-${t.trigger}`, `Build duration of ${t.trigger} per day`, days, [
          { name: "median", cls: "p50", values: pick(t.days, (d) => d.p50) },
          { name: "90th percentile", cls: "p90", values: pick(t.days, (d) => d.p90) },
        ])])),
    section("stats-waits", "Queue wait", st.lanes.length === 0 ? h("p", { class: "empty" }, "No build was claimed in these days.") :
      st.lanes.map((l) => [h("h3", {}, `lane ${l.lane}: median ${charts.seconds(l.wait.p50 ?? 0)}, p90 ${charts.seconds(l.wait.p90 ?? 0)}`),
        charts.line(`wait-${l.lane}`, `Queue wait in lane ${l.lane} per day`, days, [
          { name: "median", cls: "p50", values: pick(l.days, (d) => d.p50) },
          { name: "90th percentile", cls: "p90", values: pick(l.days, (d) => d.p90) },
        ])])),
    section("stats-pass", "Pass rate", st.triggers.some((t) => t.pass_rate !== null)
      ? charts.rates("pass-rate", "Pass rate per trigger", st.triggers.filter((t) => t.pass_rate !== null).map((t) =>
        ({ name: t.trigger, value: t.pass_rate, detail: `${t.succeeded} passed of ${t.succeeded + t.failed}` })))
      : h("p", { class: "empty" }, "No build passed or failed in these days.")),
    section("stats-scripts", "Slowest scripts", table("wide", ["Script", "Builds", "Median", "p90", "Longest"],
      st.slowest_scripts.map((x) => [x.script, x.duration.count, charts.seconds(x.duration.p50), charts.seconds(x.duration.p90), charts.seconds(x.max)]),
      "No script ran in these days.")),
    section("stats-tests", "Failing tests", table("wide", ["Test", "Failures", "Flaky"],
      st.failing_tests.map((t) => [t.test, t.failures, t.flaky]), "No test failed in these days.")),
    section("stats-flaky", "Flaky tests", h("p", { class: "hint" }, "Failed, then passed on a retry or rebuild of the same commit."),
      table("wide", ["Test", "Flaky", "Failures"], st.flaky_tests.map((t) => [t.test, t.flaky, t.failures]), "No flaky test in these days.")),
    section("stats-nodes", "Nodes", h("p", { class: "hint" }, "Failures another node then passed point at a sick node."),
      table("wide", ["Node", "Attempts", "Failures", "Passed elsewhere"], st.nodes.map((n) =>
        [n.node_id, n.attempts, n.failures, h("span", { class: n.passed_elsewhere ? "sick" : null, "data-node": n.node_id }, n.passed_elsewhere)]),
      "No node finished an attempt in these days.")),
  ];
}

// ---- plumbing ----

function notice(text, error) {
  const page = document.getElementById("page");
  page.prepend(h("p", { class: `notice${error ? " error" : ""}`, role: "status" }, text));
}

async function act(call) {
  try { await call(); await render(); } catch (e) { notice(e.message, true); }
}

// Renders overlap (a link followed while the log's events redraw the page): only the one begun
// last may draw, whichever finishes last.
async function render() {
  const page = document.getElementById("page");
  const begun = ++state.renders;
  const [, kind, arg] = location.hash.match(/^#\/(builds|issues|nodes|stats)?\/?(.*)$/) || [];
  if (kind !== "builds" && state.log) { state.log.abort.abort(); state.log = null; }
  try {
    const content = kind === "builds" ? await buildPage(arg)
      : kind === "issues" ? await issuePage(decodeURIComponent(arg))
      : kind === "nodes" ? await nodesPage()
      : kind === "stats" ? await statsPage() : await overview();
    if (begun === state.renders) page.replaceChildren(...content.flat(Infinity).filter(Boolean));
  } catch (e) {
    const alert = h("p", { class: "notice error", role: "alert" }, `Cannot read the gateway: ${e.message}`);
    if (begun === state.renders) page.replaceChildren(alert);
  }
}

function scheduleRender() {
  clearTimeout(state.refresh);
  state.refresh = setTimeout(render, 250);
}

function follow() {
  const live = document.getElementById("live");
  const source = new EventSource("/api/v1/events/stream");
  source.onopen = () => { live.textContent = "live"; live.className = "live on"; };
  source.onerror = () => { live.textContent = "reconnecting…"; live.className = "live off"; };
  // Every event of the log arrives as its own type: any of them may change what the page shows.
  const types = ["WebhookReceived", "WebhookIgnored", "WebhookRouted", "BuildRequested", "BuildRequestFolded",
    "BuildClaimed", "BuildLeaseRenewed", "BuildRequeued", "BuildSucceeded", "BuildFailed", "BuildCancelled",
    "BuildResultRejected", "NotificationAttempted", "NotificationDelivered", "NotificationAbandoned", "PageRequested",
    "NodeSeen", "NodeDrained", "BuildRetryScheduled", "ArtifactStored", "ArtifactsExpired", "BuildLogsExpired", "BuildRebuilt",
    "BuildActionRequested", "QueuePaused", "QueueResumed"];
  for (const t of types) source.addEventListener(t, scheduleRender);
  state.source = source;
}

async function start() {
  const session = await api("/ui/session");
  state.csrf = session.csrf;
  document.getElementById("find").addEventListener("submit", (e) => {
    e.preventDefault();
    const issue = document.getElementById("find-issue").value.trim();
    if (issue) location.hash = `#/issues/${encodeURIComponent(issue)}`;
  });
  document.getElementById("sign-out").addEventListener("click", async () => {
    await api("/ui/logout", { method: "POST" });
    location.href = "/ui/login";
  });
  window.addEventListener("hashchange", render);
  follow();
  await render();
}

start();

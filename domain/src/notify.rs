//! What the gateway tells people about a build: one chat line per milestone, and a short comment
//! on the YouTrack issue when it fails. Pure: the shell sends the text and records every attempt.
//!
//! Tracker text (summaries, test names, log lines) is data, never markup: it is escaped for the
//! target's format, and truncated on grapheme boundaries.

use serde::{Deserialize, Serialize};
use unicode_segmentation::UnicodeSegmentation;
use uuid::Uuid;

use crate::event::Event;

/// A build state change worth telling people about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Milestone {
    Queued,
    Running,
    Succeeded,
    Failed,
    Requeued,
    Cancelled,
    /// On-call was paged about the build (the pager's only subject).
    Page,
    /// A failure matched one of the node's retry rules (infrastructure, not the change): the build
    /// runs again as this attempt. Each retry is a milestone of its own.
    Retrying(u32),
    /// Someone asked for the build again: its message says which build repeats it, and who asked.
    Rebuilt,
    /// The build's lane has had queued builds no live node could claim for too long (the build
    /// is its oldest): on-call is paged, chat told.
    Unservable,
    /// Its lane can be served again: the page is resolved, chat told.
    Servable,
    /// An operator held the queue (a lane, or every lane): chat is told once. Its id is the
    /// pause's `notice`, not a build's.
    Paused,
    /// An operator let the queue go again.
    Resumed,
}

impl Milestone {
    /// The build and milestone an event marks, if it marks one.
    pub fn of(event: &Event) -> Option<(Uuid, Milestone)> {
        let milestone = match event {
            // Not a build's: told under the pause's own id.
            Event::QueuePaused(e) => return e.notice.map(|id| (id, Milestone::Paused)),
            Event::QueueResumed(e) => return e.notice.map(|id| (id, Milestone::Resumed)),
            Event::BuildRequested(_) => Milestone::Queued,
            Event::BuildClaimed(_) => Milestone::Running,
            Event::BuildSucceeded(_) => Milestone::Succeeded,
            Event::BuildFailed(_) => Milestone::Failed,
            Event::BuildRequeued(_) => Milestone::Requeued,
            Event::BuildCancelled(_) => Milestone::Cancelled,
            Event::PageRequested(_) => Milestone::Page,
            Event::BuildRetryScheduled(e) => Milestone::Retrying(e.next_attempt),
            Event::BuildRebuilt(_) => Milestone::Rebuilt,
            Event::LaneUnservable(_) => Milestone::Unservable,
            Event::LaneServable(_) => Milestone::Servable,
            _ => return None,
        };
        Some((event.build_id()?, milestone))
    }

    /// Every kind of milestone, in a build's order (a retry stands for every retry).
    pub const ALL: [Milestone; 13] = [
        Milestone::Queued,
        Milestone::Running,
        Milestone::Retrying(0),
        Milestone::Succeeded,
        Milestone::Failed,
        Milestone::Requeued,
        Milestone::Cancelled,
        Milestone::Rebuilt,
        Milestone::Page,
        Milestone::Unservable,
        Milestone::Servable,
        Milestone::Paused,
        Milestone::Resumed,
    ];

    /// The milestone named `name` in a notification key (`failed`, `retrying-2`).
    pub fn parse(name: &str) -> Option<Milestone> {
        if let Some(attempt) = name.strip_prefix("retrying-") {
            return attempt.parse().ok().filter(|a| *a > 0).map(Milestone::Retrying);
        }
        Milestone::ALL.into_iter().filter(|m| !matches!(m, Milestone::Retrying(_))).find(|m| m.as_str() == name)
    }

    /// Whether two milestones are of one kind (every retry is of one kind).
    pub fn same_kind(self, other: Milestone) -> bool {
        std::mem::discriminant(&self) == std::mem::discriminant(&other)
    }

    /// Its name in a notification key: the kind's name, and a retry's attempt.
    pub fn key_name(self) -> String {
        match self {
            Milestone::Retrying(attempt) => format!("retrying-{attempt}"),
            other => other.as_str().to_owned(),
        }
    }

    /// The kind's name (`retrying` for every retry).
    pub fn as_str(self) -> &'static str {
        match self {
            Milestone::Queued => "queued",
            Milestone::Running => "running",
            Milestone::Succeeded => "succeeded",
            Milestone::Failed => "failed",
            Milestone::Requeued => "requeued",
            Milestone::Cancelled => "cancelled",
            Milestone::Page => "page",
            Milestone::Retrying(_) => "retrying",
            Milestone::Rebuilt => "rebuilt",
            Milestone::Unservable => "unservable",
            Milestone::Servable => "servable",
            Milestone::Paused => "paused",
            Milestone::Resumed => "resumed",
        }
    }

    pub fn emoji(self) -> &'static str {
        match self {
            Milestone::Queued => "⏳",
            Milestone::Running => "🔨",
            Milestone::Succeeded => "✅",
            Milestone::Failed => "❌",
            Milestone::Requeued => "🔁",
            Milestone::Cancelled => "⛔",
            Milestone::Page => "🚨",
            Milestone::Retrying(_) => "🔁",
            Milestone::Rebuilt => "🔁",
            Milestone::Unservable => "🚫",
            Milestone::Servable => "🟢",
            Milestone::Paused => "⏸️",
            Milestone::Resumed => "▶️",
        }
    }
}

/// (sink, build, milestone): delivered at most once within the dedupe window.
pub fn notification_key(sink: &str, build_id: Uuid, milestone: Milestone) -> String {
    format!("{sink}/{build_id}/{}", milestone.key_name())
}

/// What a message says about a build.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildFacts {
    pub build_id: Uuid,
    /// How people name the build: its trigger and number (`ios-build #412`).
    pub name: Option<String>,
    pub trigger: String,
    /// Its number among its trigger's builds (0: not known).
    pub number: u64,
    pub issue_id: String,
    pub summary: Option<String>,
    pub lane: String,
    pub script: String,
    pub node_id: Option<String>,
    pub commit_sha: Option<String>,
    pub duration_ms: Option<u64>,
    pub failing_test: Option<String>,
    pub reason: Option<String>,
    pub log_tail: Option<String>,
    pub log_url: Option<String>,
    /// The build's state now (`queued`, `running`, `succeeded`, …), for pages.
    pub state: Option<String>,
    /// Why on-call was paged, for pages.
    pub page_reason: Option<String>,
    /// The retry rule a failure matched (a retry's, or a failure's past the cap).
    pub retry_rule: Option<String>,
    /// Seconds without output before a hung build was stopped.
    pub no_output_seconds: Option<u64>,
    /// What the build produced, with signed links.
    pub artifacts: Vec<ArtifactLink>,
    /// The build this one repeats, by name.
    pub rebuild_of: Option<String>,
    /// The latest rebuild of this build: its name and who asked (`U024BE7LH (slack)`).
    pub rebuilt_as: Option<(String, String)>,
    /// Who asked (a pause's or a resume's operator).
    pub by: Option<String>,
}

/// An artifact as a message names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactLink {
    pub name: String,
    pub url: String,
}

/// Most artifacts a chat line names.
const ARTIFACTS_SHOWN: usize = 3;

/// A quiet spell as people say it: `45 s`, `10 min`, `2 min 30 s`.
fn quiet_for(seconds: u64) -> String {
    match (seconds / 60, seconds % 60) {
        (0, s) => format!("{s} s"),
        (m, 0) => format!("{m} min"),
        (m, s) => format!("{m} min {s} s"),
    }
}

/// Why a build failed, in words: a hung build says how long it was quiet.
pub fn describe_reason(reason: &str, facts: &BuildFacts) -> String {
    match (reason, facts.no_output_seconds) {
        ("hung", Some(seconds)) => format!("no output for {}", quiet_for(seconds)),
        ("hung", None) => "no output".to_owned(),
        ("setup_failed", _) => "before_build hook failed".to_owned(),
        _ => reason.to_owned(),
    }
}

/// Text with at most `max` grapheme clusters; `…` marks a cut.
pub fn truncate(text: &str, max: usize) -> String {
    let mut graphemes = text.graphemes(true);
    let kept: String = graphemes.by_ref().take(max).collect();
    if graphemes.next().is_some() {
        let mut cut: String = kept.graphemes(true).take(max.saturating_sub(1)).collect();
        cut.push('…');
        cut
    } else {
        kept
    }
}

/// Escapes Slack's control characters (`&`, `<`, `>`), so tracker text cannot form links or mentions.
pub fn escape_slack(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Escapes Markdown so tracker text is shown as typed (outside code spans, where a backslash
/// would be shown: use [`code_span`] there).
pub fn escape_markdown(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\`*_{}[]()#+-.!|<>~&".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A CommonMark code span showing `text` exactly: inside one, backslashes are shown, so nothing
/// is escaped; the fence is one backtick longer than the longest run of backticks in the text, and
/// padded with a space where the text starts or ends with a backtick or a space (one space each
/// side is taken off again when displayed). Line breaks become spaces, as in any code span.
pub fn code_span(text: &str) -> String {
    let text = text.replace(['\r', '\n'], " ");
    let mut longest = 0;
    let mut run = 0;
    for c in text.chars() {
        run = if c == '`' { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    let fence = "`".repeat(longest + 1);
    let pad = text.starts_with('`') || text.ends_with('`') || (text.starts_with(' ') && text.ends_with(' '));
    let pad = if pad && !text.trim().is_empty() { " " } else { "" };
    format!("{fence}{pad}{text}{pad}{fence}")
}

fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {}s", s / 60, s % 60),
        _ => format!("{}h {}m", s / 3600, (s % 3600) / 60),
    }
}

/// One chat line, plain text (the sink escapes it for its format).
pub fn chat_line(facts: &BuildFacts, milestone: Milestone) -> String {
    let waits = |facts: &BuildFacts| match &facts.name {
        Some(name) => format!("{} {name}", facts.issue_id),
        None => facts.issue_id.clone(),
    };
    match milestone {
        Milestone::Unservable => {
            return format!(
                "🚫 lane {}: no live node can run its queued builds ({} waits longest); on-call is paged",
                facts.lane,
                waits(facts)
            )
        }
        Milestone::Servable => return format!("🟢 lane {}: a node can run its builds again", facts.lane),
        // A pause's `lane` names what it holds (`lane signing`, `every lane`).
        Milestone::Paused => {
            return format!(
                "⏸️ {} paused by {}: {}; builds queue, running ones finish, nodes claim nothing from it until it is resumed",
                facts.lane,
                facts.by.as_deref().unwrap_or("an operator"),
                truncate(facts.reason.as_deref().unwrap_or_default(), 200)
            )
        }
        Milestone::Resumed => {
            return format!(
                "▶️ {} resumed by {}: nodes claim its builds again",
                facts.lane,
                facts.by.as_deref().unwrap_or("an operator")
            )
        }
        _ => {}
    }
    let mut head = format!("{} {}", milestone.emoji(), facts.issue_id);
    if let Some(name) = &facts.name {
        head.push_str(&format!(" {name}"));
    }
    head.push_str(&format!(" {}", milestone.as_str()));
    if let (Milestone::Retrying(_), Some(rule)) = (milestone, &facts.retry_rule) {
        head.push_str(&format!(" ({})", truncate(rule, 60)));
    }
    let mut parts = vec![head];
    if let Some(summary) = &facts.summary {
        parts.push(truncate(summary, 80));
    }
    parts.push(format!("{}/{}", facts.lane, facts.script));
    if let Some(node) = &facts.node_id {
        if milestone != Milestone::Queued {
            parts.push(format!("on {node}"));
        }
    }
    if let Some(sha) = &facts.commit_sha {
        parts.push(sha.chars().take(7).collect());
    }
    if let Some(ms) = facts.duration_ms {
        parts.push(duration(ms));
    }
    if let Milestone::Retrying(attempt) = milestone {
        parts.push(format!("attempt {attempt}"));
    }
    if let (Milestone::Failed, Some(reason)) = (milestone, &facts.reason) {
        parts.push(truncate(&describe_reason(reason, facts), 60));
        if let Some(rule) = &facts.retry_rule {
            parts.push(format!("retries used up: {}", truncate(rule, 60)));
        }
    }
    if let (Milestone::Failed, Some(test)) = (milestone, &facts.failing_test) {
        parts.push(format!("failing: {}", truncate(test, 80)));
    }
    if milestone == Milestone::Page {
        if let Some(reason) = &facts.page_reason {
            parts.push(format!("not reported: {}", truncate(reason, 80)));
        }
        if let Some(state) = &facts.state {
            parts.push(format!("build {state}"));
        }
    }
    if let Some(original) = &facts.rebuild_of {
        parts.push(format!("rebuild of {original}"));
    }
    if let (Milestone::Cancelled, Some(reason)) = (milestone, &facts.reason) {
        parts.push(truncate(reason, 80));
    }
    if let (Milestone::Rebuilt, Some((name, by))) = (milestone, &facts.rebuilt_as) {
        if let Some(state) = &facts.state {
            parts.push(format!("was {state}"));
        }
        parts.push(format!("rebuilt as {name} by {}", truncate(by, 60)));
    }
    if let Some(url) = &facts.log_url {
        parts.push(format!("log: {url}"));
    }
    if matches!(milestone, Milestone::Succeeded | Milestone::Failed) && !facts.artifacts.is_empty() {
        let mut named: Vec<String> = facts
            .artifacts
            .iter()
            .take(ARTIFACTS_SHOWN)
            .map(|a| format!("{}: {}", truncate(&a.name, 60), a.url))
            .collect();
        if facts.artifacts.len() > ARTIFACTS_SHOWN {
            named.push(format!("{} more", facts.artifacts.len() - ARTIFACTS_SHOWN));
        }
        parts.push(format!("artifacts: {}", named.join(", ")));
    }
    parts.join(" · ")
}

/// What a page says: which build could not be reported, why, and where the build stands now (a
/// build paged because its `queued` line was abandoned may have succeeded since).
pub fn page_summary(facts: &BuildFacts) -> String {
    let build = match &facts.name {
        Some(name) => format!("{name} ({})", facts.build_id),
        None => facts.build_id.to_string(),
    };
    let mut summary = format!("meshgate could not report build {build} of {}", facts.issue_id);
    if let Some(reason) = &facts.page_reason {
        summary.push_str(&format!(" ({reason})"));
    }
    if let Some(state) = &facts.state {
        summary.push_str(&format!("; the build is {state}"));
    }
    summary
}

/// The YouTrack comment for a failed build: at most five lines of Markdown.
pub fn failure_comment(facts: &BuildFacts) -> String {
    let sha = facts.commit_sha.as_deref().map(|s| s.chars().take(12).collect::<String>());
    let mut lines = vec![format!(
        "❌ Build {} failed on {} at {}",
        code_span(facts.name.as_deref().unwrap_or(&facts.script)),
        code_span(facts.node_id.as_deref().unwrap_or("no node")),
        code_span(sha.as_deref().unwrap_or("unknown commit")),
    )];
    // A reason worth its own line: anything but a script's plain non-zero exit, which the test or
    // the log's last lines explain better.
    let reason = facts.reason.as_deref().filter(|r| *r != "script_failed" || facts.retry_rule.is_some());
    if let Some(reason) = reason {
        let mut said = describe_reason(reason, facts);
        if let Some(rule) = &facts.retry_rule {
            said.push_str(&format!(" (retries used up: {rule})"));
        }
        lines.push(format!("Reason: {}", escape_markdown(&truncate(&said, 120))));
    }
    match (&facts.failing_test, &facts.log_tail) {
        (Some(test), _) => lines.push(format!("Failing test: {}", escape_markdown(&truncate(test, 120)))),
        (None, Some(tail)) => {
            let keep = if reason.is_some() { 1 } else { 2 };
            let last: Vec<&str> = tail.lines().filter(|l| !l.trim().is_empty()).collect();
            for line in last.iter().skip(last.len().saturating_sub(keep)) {
                lines.push(format!("> {}", escape_markdown(&truncate(line, 120))));
            }
        }
        (None, None) => {
            if reason.is_none() {
                if let Some(reason) = &facts.reason {
                    lines.push(format!("Reason: {}", escape_markdown(&truncate(reason, 120))));
                }
            }
        }
    }
    if let Some(url) = &facts.log_url {
        lines.push(format!("Log: {url}"));
    }
    lines.truncate(5);
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> BuildFacts {
        BuildFacts {
            build_id: Uuid::nil(),
            name: None,
            trigger: "ios-build".into(),
            number: 0,
            issue_id: "MOB-7".into(),
            summary: Some("Crash on launch <@channel> & *bold*".into()),
            lane: "default".into(),
            script: "ios-build".into(),
            node_id: Some("mac-1".into()),
            commit_sha: Some("0123456789abcdef0123456789abcdef01234567".into()),
            duration_ms: Some(83_000),
            failing_test: Some("AppTests.testOffline".into()),
            reason: Some("script_failed".into()),
            log_tail: Some("a\nb\nc\n".into()),
            log_url: Some("https://gw/api/v1/builds/x/log?key=k".into()),
            state: Some("failed".into()),
            page_reason: None,
            retry_rule: None,
            no_output_seconds: None,
            artifacts: Vec::new(),
            rebuild_of: None,
            rebuilt_as: None,
            by: None,
        }
    }

    #[test]
    fn rebuilds_are_named_in_both_timelines_and_a_cancel_says_who() {
        let mut old = BuildFacts { name: Some("ios-build #1".into()), ..facts() };
        old.rebuilt_as = Some(("ios-build #2".into(), "U024BE7LH (slack)".into()));
        let line = chat_line(&old, Milestone::Rebuilt);
        assert!(line.starts_with("🔁 MOB-7 ios-build #1 rebuilt · "), "{line}");
        assert!(line.contains(" · was failed · rebuilt as ios-build #2 by U024BE7LH (slack)"), "{line}");
        let new = BuildFacts { name: Some("ios-build #2".into()), rebuild_of: Some("ios-build #1".into()), ..facts() };
        assert!(chat_line(&new, Milestone::Queued).contains(" · rebuild of ios-build #1"));
        let cancelled = BuildFacts { reason: Some("by U024BE7LH (slack)".into()), ..facts() };
        assert!(chat_line(&cancelled, Milestone::Cancelled).contains(" · by U024BE7LH (slack)"));
    }

    /// The text a CommonMark renderer shows (YouTrack renders comments as Markdown), one line per
    /// rendered line.
    fn displayed(markdown: &str) -> String {
        use pulldown_cmark::{Event as Md, Parser, TagEnd};
        let mut shown = String::new();
        for event in Parser::new(markdown) {
            match event {
                Md::Text(text) | Md::Code(text) => shown.push_str(&text),
                Md::SoftBreak | Md::HardBreak | Md::End(TagEnd::Paragraph) => shown.push('\n'),
                Md::Html(html) | Md::InlineHtml(html) => shown.push_str(&format!("<html:{html}>")),
                _ => {}
            }
        }
        shown.trim_end().to_owned()
    }

    #[test]
    fn a_failure_comment_displays_tracker_text_exactly_as_typed() {
        let hostile =
            ["ios-build", "mac-1", "a`b", "``x``", "`edge`", "*bold* _it_", "<b>x</b> | y", "&amp; \\n", " pad "];
        for name in hostile {
            let facts = BuildFacts {
                script: name.into(),
                node_id: Some(name.into()),
                failing_test: Some(format!("Tests.{name}")),
                ..facts()
            };
            let shown = displayed(&failure_comment(&facts));
            let first = shown.lines().next().unwrap();
            assert_eq!(first, format!("❌ Build {name} failed on {name} at 0123456789ab"), "{name:?}");
            // Markdown drops spaces at the end of a line; everything else is shown as typed.
            let test = format!("Failing test: Tests.{}", name.trim_end());
            assert!(shown.contains(&test), "{name:?} shown as {shown}");
            assert!(!shown.contains("<html:"), "{name:?} became markup: {shown}");
        }
        let without_test =
            BuildFacts { failing_test: None, log_tail: Some("ok\nerror: `x` *y* <z> 1.\n".into()), ..facts() };
        let shown = displayed(&failure_comment(&without_test));
        assert!(shown.contains("error: `x` *y* <z> 1."), "{shown}");
    }

    #[test]
    fn a_page_says_why_and_where_the_build_stands_now() {
        let paged = BuildFacts {
            page_reason: Some("every chat sink abandoned".into()),
            state: Some("succeeded".into()),
            ..facts()
        };
        let line = chat_line(&paged, Milestone::Page);
        assert!(line.starts_with("🚨 MOB-7 page"), "{line}");
        assert!(line.contains("not reported: every chat sink abandoned") && line.contains("build succeeded"), "{line}");
        assert!(!line.contains("failed"), "{line}");
        let summary = page_summary(&paged);
        assert!(summary.contains("(every chat sink abandoned); the build is succeeded"), "{summary}");
    }

    #[test]
    fn a_chat_line_carries_the_state_issue_lane_node_commit_duration_and_log() {
        let line = chat_line(&facts(), Milestone::Failed);
        assert!(line.starts_with("❌ MOB-7 failed · "), "{line}");
        for part in [
            "default/ios-build",
            "on mac-1",
            "0123456",
            "1m 23s",
            "script_failed",
            "failing: AppTests.testOffline",
            "log: https://gw",
        ] {
            assert!(line.contains(part), "{part} missing from {line}");
        }
        assert!(escape_slack(&line).contains("&lt;@channel&gt; &amp;"));
    }

    #[test]
    fn a_numbered_build_is_named_by_its_trigger_and_number_in_chat_comments_and_pages() {
        let named = BuildFacts { name: Some("ios-build #412".into()), ..facts() };
        assert!(chat_line(&named, Milestone::Failed).starts_with("❌ MOB-7 ios-build #412 failed · "));
        assert!(failure_comment(&named).starts_with("❌ Build `ios-build #412` failed on `mac-1`"));
        assert!(page_summary(&named).contains("build ios-build #412 (00000000-0000-0000-0000-000000000000) of MOB-7"));
    }

    #[test]
    fn a_failure_comment_has_at_most_five_lines_and_escapes_tracker_text() {
        let comment = failure_comment(&facts());
        assert!(comment.lines().count() <= 5);
        assert!(comment.contains("Failing test: AppTests\\.testOffline"));
        assert!(comment.contains("`0123456789ab`"));
        assert!(comment.starts_with("❌ Build `ios-build` failed on `mac-1`"), "{comment}");
        let without_test = BuildFacts { failing_test: None, ..facts() };
        let comment = failure_comment(&without_test);
        assert!(comment.contains("> b") && comment.contains("> c") && !comment.contains("> a"));
    }

    #[test]
    fn a_hung_build_says_how_long_it_was_quiet_in_chat_and_in_the_comment() {
        let hung =
            BuildFacts { reason: Some("hung".into()), no_output_seconds: Some(600), failing_test: None, ..facts() };
        let line = chat_line(&hung, Milestone::Failed);
        assert!(line.contains("no output for 10 min"), "{line}");
        let comment = failure_comment(&hung);
        assert!(comment.contains("Reason: no output for 10 min"), "{comment}");
        assert!(comment.lines().count() <= 5 && comment.ends_with("log?key=k"), "{comment}");
        assert_eq!(quiet_for(45), "45 s");
        assert_eq!(quiet_for(150), "2 min 30 s");
    }

    #[test]
    fn a_retry_is_one_line_per_attempt_naming_its_rule_and_a_spent_rule_is_named_in_the_failure() {
        let retry = BuildFacts { retry_rule: Some("Failed to boot simulator".into()), ..facts() };
        let line = chat_line(&retry, Milestone::Retrying(2));
        assert!(line.starts_with("🔁 MOB-7 retrying (Failed to boot simulator) · "), "{line}");
        assert!(line.contains("attempt 2") && !line.contains("failing:"), "{line}");
        assert_ne!(
            notification_key("t", Uuid::nil(), Milestone::Retrying(2)),
            notification_key("t", Uuid::nil(), Milestone::Retrying(3))
        );
        assert_eq!(Milestone::parse("retrying-3"), Some(Milestone::Retrying(3)));
        assert_eq!(Milestone::parse("retrying"), None);
        assert_eq!(Milestone::parse("retrying-0"), None);
        assert!(Milestone::Retrying(2).same_kind(Milestone::Retrying(0)));
        let failed = chat_line(&retry, Milestone::Failed);
        assert!(failed.contains("retries used up: Failed to boot simulator"), "{failed}");
        assert!(failure_comment(&retry).contains("retries used up: Failed to boot simulator"));
    }

    #[test]
    fn the_final_line_links_the_artifacts() {
        let artifact = |n: &str| ArtifactLink { name: n.into(), url: format!("https://gw/a/{n}?key=k") };
        let built = BuildFacts { artifacts: vec![artifact("App.ipa"), artifact("App.dSYM.zip")], ..facts() };
        let line = chat_line(&built, Milestone::Succeeded);
        assert!(
            line.contains(
                "artifacts: App.ipa: https://gw/a/App.ipa?key=k, App.dSYM.zip: https://gw/a/App.dSYM.zip?key=k"
            ),
            "{line}"
        );
        assert!(!chat_line(&built, Milestone::Running).contains("artifacts"));
        let many = BuildFacts { artifacts: (0..5).map(|i| artifact(&format!("a{i}"))).collect(), ..facts() };
        assert!(chat_line(&many, Milestone::Failed).contains(", 2 more"));
    }

    #[test]
    fn truncation_keeps_whole_graphemes() {
        let family = "👨‍👩‍👧‍👦"; // one grapheme, several code points
        let text = format!("{family}{family}{family}");
        assert_eq!(truncate(&text, 3), text);
        assert_eq!(truncate(&text, 2), format!("{family}…"));
        assert_eq!(truncate("héllo", 10), "héllo");
        assert_eq!(truncate("", 0), "");
    }

    #[test]
    fn build_events_mark_milestones_and_others_do_not() {
        let e = Event::BuildCancelled(crate::event::BuildCancelled {
            build_id: Uuid::nil(),
            reason: "x".into(),
            cancelled_at: chrono::DateTime::from_timestamp(0, 0).unwrap(),
            report: None,
        });
        assert_eq!(Milestone::of(&e), Some((Uuid::nil(), Milestone::Cancelled)));
        assert_eq!(
            notification_key("team", Uuid::nil(), Milestone::Cancelled),
            format!("team/{}/cancelled", Uuid::nil())
        );
    }
}

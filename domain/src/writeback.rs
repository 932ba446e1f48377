//! Results written back to YouTrack: the command a finished build applies to its issue, from its
//! trigger's `on_success_command`, `on_failure_command` and `fixed_in_build_field`, with the
//! build's facts filled in.

use crate::notify::Milestone;
use crate::trigger::Trigger;

/// What a command may name of the build.
#[derive(Debug, Clone, Copy)]
pub struct Filled<'a> {
    /// Its number among its trigger's builds (`412`).
    pub number: u64,
    /// Its name (`ios-build #412`).
    pub name: &'a str,
    pub sha: Option<&'a str>,
    pub node: Option<&'a str>,
}

impl Filled<'static> {
    /// Facts of a made-up build, to check a template and to show what it becomes.
    pub fn sample() -> Self {
        Filled { number: 412, name: "ios-build #412", sha: Some("0123456789ab"), node: Some("mac-1") }
    }
}

/// A placeholder a command does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown placeholder `{{{0}}}`: a command may use {{number}}, {{name}}, {{sha}} and {{node}}")]
pub struct UnknownPlaceholder(pub String);

/// A value as one word of a command: braced when it has spaces (`{ios-build #412}`), as YouTrack's
/// command language reads a value with spaces.
fn value(text: &str) -> String {
    if text.contains(char::is_whitespace) {
        format!("{{{text}}}")
    } else {
        text.to_owned()
    }
}

/// `template` with `{number}`, `{name}`, `{sha}` (its first 12 characters) and `{node}` filled in;
/// other braces are the command's own (a braced value) and stay.
pub fn fill(template: &str, facts: &Filled<'_>) -> Result<String, UnknownPlaceholder> {
    let mut out = String::with_capacity(template.len() + 16);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            out.push_str(&rest[open..]);
            return Ok(out);
        };
        let name = &after[..close];
        match name {
            "number" => out.push_str(&facts.number.to_string()),
            "name" => out.push_str(&value(facts.name)),
            "sha" => {
                let sha: String = facts.sha.map_or_else(|| "unknown".to_owned(), |s| s.chars().take(12).collect());
                out.push_str(&value(&sha));
            }
            "node" => out.push_str(&value(facts.node.unwrap_or("unknown"))),
            other if other.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && !other.is_empty() => {
                return Err(UnknownPlaceholder(other.to_owned()));
            }
            // A braced value of the command itself (`{Ready for QA}`).
            _ => out.push_str(&rest[open..open + close + 2]),
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The milestones a trigger writes back on: `succeeded` with a success command or a field,
/// `failed` with a failure command.
pub fn milestones(trigger: &Trigger) -> Vec<Milestone> {
    let mut wanted = Vec::new();
    if trigger.on_success_command.is_some() || trigger.fixed_in_build_field.is_some() {
        wanted.push(Milestone::Succeeded);
    }
    if trigger.on_failure_command.is_some() {
        wanted.push(Milestone::Failed);
    }
    wanted
}

/// The command a build of `trigger` applies to its issue at `milestone`, if any: the milestone's
/// command, then (on success) the field set to the build's name.
pub fn command(
    trigger: &Trigger,
    milestone: Milestone,
    facts: &Filled<'_>,
) -> Result<Option<String>, UnknownPlaceholder> {
    let mut parts = Vec::new();
    let template = match milestone {
        Milestone::Succeeded => trigger.on_success_command.as_deref(),
        Milestone::Failed => trigger.on_failure_command.as_deref(),
        _ => return Ok(None),
    };
    if let Some(template) = template {
        parts.push(fill(template.trim(), facts)?);
    }
    if let (Milestone::Succeeded, Some(field)) = (milestone, &trigger.fixed_in_build_field) {
        parts.push(format!("{} {}", field.trim(), value(facts.name)));
    }
    Ok((!parts.is_empty()).then(|| parts.join(" ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trigger() -> Trigger {
        Trigger {
            on_success_command: Some("State {Ready for QA} tag built-on-{node}".into()),
            on_failure_command: Some("State {Build failed}".into()),
            fixed_in_build_field: Some("Fixed in build".into()),
            ..crate::trigger::tests::trigger()
        }
    }

    #[test]
    fn a_success_applies_its_command_and_sets_the_field_to_the_builds_name() {
        let command = command(&trigger(), Milestone::Succeeded, &Filled::sample()).unwrap().unwrap();
        assert_eq!(command, "State {Ready for QA} tag built-on-mac-1 Fixed in build {ios-build #412}");
        assert_eq!(command_of(Milestone::Failed), Some("State {Build failed}".into()));
        assert_eq!(command_of(Milestone::Cancelled), None);
        assert_eq!(milestones(&trigger()), [Milestone::Succeeded, Milestone::Failed]);
    }

    fn command_of(milestone: Milestone) -> Option<String> {
        command(&trigger(), milestone, &Filled::sample()).unwrap()
    }

    #[test]
    fn placeholders_are_filled_and_unknown_ones_refused() {
        let facts = Filled { number: 7, name: "app #7", sha: Some("abcdef0123456789"), node: None };
        assert_eq!(
            fill("Build {number} {name} {sha} {node}", &facts).unwrap(),
            "Build 7 {app #7} abcdef012345 unknown"
        );
        assert_eq!(fill("State {Ready for QA}", &facts).unwrap(), "State {Ready for QA}");
        assert_eq!(fill("State {issue}", &facts), Err(UnknownPlaceholder("issue".into())));
        assert_eq!(fill("odd { brace", &facts).unwrap(), "odd { brace");
    }
}

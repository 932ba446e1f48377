//! Triggers: configured rules mapping a transition (project, field, from, to) to a build request.

use serde::{Deserialize, Serialize};

use crate::payload::{Delivery, EventKind};

/// One `[[triggers]]` entry of the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trigger {
    pub name: String,
    /// Projects the rule applies to; empty: any project.
    #[serde(default)]
    pub projects: Vec<String>,
    /// The field whose change is watched, by its display name (`State`).
    pub field: String,
    /// New value names that fire the rule.
    pub to: Vec<String>,
    /// Old value names the change must come from; empty: any.
    #[serde(default)]
    pub from: Vec<String>,
    pub script: String,
    #[serde(default = "default_lane")]
    pub lane: String,
    /// A fixed ref (`main`) or a template over `{issue}` and `{project}`.
    pub git_ref: String,
    /// The Xcode the build needs: `16.2` exactly, `16` any 16.x (the highest the node has). Only
    /// nodes that have one claim the build; none: the lane's requirement, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xcode: Option<String>,
    /// A YouTrack command applied to the issue when a build of this trigger succeeds
    /// (`State Ready for QA`); `{number}`, `{name}`, `{sha}` and `{node}` are filled in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_success_command: Option<String>,
    /// The same when a build fails (`State Build failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure_command: Option<String>,
    /// A field set to the build's name when it succeeds (`Fixed in build` → `ios-build #412`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed_in_build_field: Option<String>,
}

fn default_lane() -> String {
    "default".to_owned()
}

/// A trigger that cannot work as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TriggerError {
    #[error("trigger `{trigger}`: {field} {problem}")]
    Invalid { trigger: String, field: &'static str, problem: &'static str },
}

/// `[A-Za-z0-9._-]{1,64}`: names that are safe inside stream names, paths and logs.
pub fn is_simple_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl Trigger {
    pub fn validate(&self) -> Result<(), TriggerError> {
        let invalid = |field, problem| Err(TriggerError::Invalid { trigger: self.name.clone(), field, problem });
        if !is_simple_name(&self.name) {
            return invalid("name", "must be 1-64 of [A-Za-z0-9._-]");
        }
        if self.field.trim().is_empty() {
            return invalid("field", "must not be empty");
        }
        if self.to.is_empty() {
            return invalid("to", "must list at least one value");
        }
        if !is_simple_name(&self.script) {
            return invalid("script", "must be 1-64 of [A-Za-z0-9._-]");
        }
        if !is_simple_name(&self.lane) {
            return invalid("lane", "must be 1-64 of [A-Za-z0-9._-]");
        }
        if let Some(xcode) = &self.xcode {
            if crate::xcode::Requirement::parse(xcode).is_err() {
                return invalid("xcode", "must be a version such as `16` or `16.2`");
            }
        }
        for (field, command) in
            [("on_success_command", &self.on_success_command), ("on_failure_command", &self.on_failure_command)]
        {
            if let Some(command) = command {
                let filled = crate::writeback::fill(command, &crate::writeback::Filled::sample());
                if command.trim().is_empty() || filled.is_err() {
                    return invalid(field, "must be a YouTrack command; it may use {number}, {name}, {sha} and {node}");
                }
            }
        }
        if self.fixed_in_build_field.as_ref().is_some_and(|f| f.trim().is_empty() || f.contains(['{', '}'])) {
            return invalid("fixed_in_build_field", "must name a field");
        }
        let rendered = self.git_ref_for("ISSUE-1", "PROJECT");
        if rendered.contains('{') || rendered.contains('}') {
            return invalid("git_ref", "may only use the placeholders {issue} and {project}");
        }
        if rendered.is_empty() || rendered.contains("..") || rendered.contains(char::is_whitespace) {
            return invalid("git_ref", "must be a valid git ref");
        }
        Ok(())
    }

    /// Whether this delivery is a transition the rule watches.
    pub fn matches(&self, delivery: &Delivery) -> bool {
        if delivery.event != EventKind::IssueUpdated {
            return false;
        }
        // Several fields may change in one delivery, in any order: look at every entry.
        delivery.changed_fields.iter().any(|change| {
            self.matches_change(&delivery.project, &change.name, &change.old_value.names(), &change.value.names())
        })
    }

    /// Whether a change of `field` in `project` from the values `old` to the values `new` is a
    /// transition the rule watches (a webhook's changed field, or an activity of YouTrack's REST
    /// API).
    pub fn matches_change(&self, project: &str, field: &str, old: &[&str], new: &[&str]) -> bool {
        if field != self.field || (!self.projects.is_empty() && !self.projects.iter().any(|p| p == project)) {
            return false;
        }
        let to_matches = new.iter().any(|n| self.to.iter().any(|t| t == n));
        let from_matches = self.from.is_empty() || old.iter().any(|n| self.from.iter().any(|f| f == n));
        to_matches && from_matches
    }

    /// Whether the field's current values (an issue as YouTrack shows it now) are still in the
    /// trigger's state.
    pub fn holds(&self, current: &[&str]) -> bool {
        current.iter().any(|n| self.to.iter().any(|t| t == n))
    }

    /// Whether this delivery moves the watched field away from the trigger's values (say `State`
    /// from `Building` back to `Open`): the intent's queued or running build is cancelled.
    pub fn leaves(&self, delivery: &Delivery) -> bool {
        if delivery.event != EventKind::IssueUpdated {
            return false;
        }
        if !self.projects.is_empty() && !self.projects.iter().any(|p| p == &delivery.project) {
            return false;
        }
        let in_to = |names: Vec<&str>| names.iter().any(|n| self.to.iter().any(|t| t == n));
        delivery
            .changed_fields
            .iter()
            .filter(|f| f.name == self.field)
            .any(|change| in_to(change.old_value.names()) && !in_to(change.value.names()))
    }

    /// The git ref a build of this trigger checks out for an issue.
    pub fn git_ref_for(&self, issue_id: &str, project: &str) -> String {
        self.git_ref.replace("{issue}", issue_id).replace("{project}", project)
    }

    pub fn intent_for(&self, issue_id: &str) -> IntentKey {
        IntentKey::new(issue_id, &self.name)
    }
}

/// (issue id, trigger name): what a build is for. One active build per intent.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct IntentKey(String);

impl IntentKey {
    pub fn new(issue_id: &str, trigger: &str) -> Self {
        let mut key = String::with_capacity(issue_id.len() + 1 + trigger.len());
        key.push_str(issue_id);
        key.push('/');
        key.push_str(trigger);
        IntentKey(key)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for IntentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::payload::parse;
    use serde_json::json;

    /// The trigger the domain's tests share: `State` → `Building` in project `MOB`.
    pub(crate) fn trigger() -> Trigger {
        Trigger {
            name: "ios-build".into(),
            projects: vec!["MOB".into()],
            field: "State".into(),
            to: vec!["Building".into()],
            from: vec![],
            script: "ios-build".into(),
            lane: "default".into(),
            git_ref: "feature/{issue}".into(),
            xcode: None,
            on_success_command: None,
            on_failure_command: None,
            fixed_in_build_field: None,
        }
    }

    fn update(project: &str, changes: serde_json::Value) -> Delivery {
        parse(&json!({"event": "issueUpdated", "id": format!("{project}-1"), "project": {"key": project},
                      "changedFields": changes}))
        .unwrap()
    }

    fn state(from: &str, to: &str) -> serde_json::Value {
        json!({"name": "State", "oldValue": {"name": from}, "value": {"name": to}})
    }

    #[test]
    fn a_matching_transition_fires_wherever_it_stands_in_changed_fields() {
        let d = update("MOB", json!([{"name": "summary", "oldValue": "a", "value": "b"}, state("Open", "Building")]));
        assert!(trigger().matches(&d));
    }

    #[test]
    fn other_projects_values_and_events_do_not_fire() {
        assert!(!trigger().matches(&update("WEB", json!([state("Open", "Building")]))));
        assert!(!trigger().matches(&update("MOB", json!([state("Building", "Open")]))));
        let mut created = update("MOB", json!([state("Open", "Building")]));
        created.event = EventKind::IssueCreated;
        assert!(!trigger().matches(&created));
    }

    #[test]
    fn moving_away_from_the_trigger_value_leaves_it() {
        assert!(trigger().leaves(&update("MOB", json!([state("Building", "Open")]))));
        assert!(!trigger().leaves(&update("MOB", json!([state("Open", "Building")]))));
        assert!(!trigger().leaves(&update("MOB", json!([state("Open", "Review")]))));
        assert!(!trigger().leaves(&update("WEB", json!([state("Building", "Open")]))));
    }

    #[test]
    fn from_restricts_the_old_value() {
        let t = Trigger { from: vec!["Review".into()], ..trigger() };
        assert!(!t.matches(&update("MOB", json!([state("Open", "Building")]))));
        assert!(t.matches(&update("MOB", json!([state("Review", "Building")]))));
        let from_empty = json!([{"name": "State", "oldValue": null, "value": {"name": "Building"}}]);
        assert!(!t.matches(&update("MOB", from_empty)));
    }

    #[test]
    fn git_ref_templates_render_and_bad_ones_are_refused() {
        assert_eq!(trigger().git_ref_for("MOB-7", "MOB"), "feature/MOB-7");
        assert!(trigger().validate().is_ok());
        assert!(Trigger { git_ref: "x/{branch}".into(), ..trigger() }.validate().is_err());
        assert!(Trigger { name: "a b".into(), ..trigger() }.validate().is_err());
        assert!(Trigger { to: vec![], ..trigger() }.validate().is_err());
        let command = |c: &str| Trigger { on_success_command: Some(c.into()), ..trigger() }.validate();
        assert!(command("State {Ready for QA} tag {name}").is_ok());
        assert!(command("State {issue}").is_err(), "an unknown placeholder");
        assert!(command("  ").is_err());
        assert!(Trigger { fixed_in_build_field: Some(" ".into()), ..trigger() }.validate().is_err());
    }
}

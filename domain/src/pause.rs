//! Holding the queue: an operator pauses every lane or some (an Xcode upgrade, a broken signing
//! machine) and resumes them. A paused lane keeps taking webhooks and queueing builds; nodes claim
//! nothing from it; running builds finish. Pauses are events of one stream, so they survive
//! restarts and hold on every gateway of a shared log.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::event::{Event, QueuePaused, QueueResumed};

/// The most bytes a pause's reason may have.
pub const MAX_REASON_BYTES: usize = 500;

/// Who paused, why, and since when.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pause {
    pub by: String,
    pub reason: String,
    #[serde(with = "crate::rfc3339")]
    pub since: DateTime<Utc>,
}

/// What is paused: every lane, and lanes one by one.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Paused {
    /// Every lane, those configured later included.
    pub all: Option<Pause>,
    pub lanes: BTreeMap<String, Pause>,
}

impl Paused {
    /// The pause that holds `lane`, if one does.
    pub fn of(&self, lane: &str) -> Option<&Pause> {
        self.all.as_ref().or_else(|| self.lanes.get(lane))
    }

    pub fn is_empty(&self) -> bool {
        self.all.is_none() && self.lanes.is_empty()
    }

    /// Folds a pause or a resume.
    pub fn apply(&mut self, event: &Event, at: DateTime<Utc>) {
        match event {
            Event::QueuePaused(e) => {
                let pause = Pause { by: e.by.clone(), reason: e.reason.clone(), since: at };
                if e.lanes.is_empty() {
                    self.all = Some(pause);
                } else {
                    for lane in &e.lanes {
                        self.lanes.insert(lane.clone(), pause.clone());
                    }
                }
            }
            Event::QueueResumed(e) if e.lanes.is_empty() => *self = Paused::default(),
            Event::QueueResumed(e) => e.lanes.iter().for_each(|lane| drop(self.lanes.remove(lane))),
            _ => {}
        }
    }
}

/// Why a pause or a resume is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PauseError {
    #[error("the reason is required, at most {MAX_REASON_BYTES} bytes")]
    Reason,
    #[error("no lane `{0}` is configured")]
    UnknownLane(String),
    #[error("lane `{0}` is not paused")]
    NotPaused(String),
    #[error("nothing is paused")]
    NothingPaused,
    #[error("every lane is paused: resume them all (no lanes), then pause the ones to hold")]
    AllPaused,
}

fn check_lanes(lanes: &[String], known: &[String]) -> Result<(), PauseError> {
    match lanes.iter().find(|l| !known.contains(l)) {
        Some(unknown) => Err(PauseError::UnknownLane(unknown.clone())),
        None => Ok(()),
    }
}

/// Pauses `lanes` (none: every lane) for `reason`; chat is told of it as `notice`.
pub fn decide_pause(
    lanes: &[String],
    known: &[String],
    reason: &str,
    by: &str,
    notice: uuid::Uuid,
) -> Result<Event, PauseError> {
    let reason = reason.trim();
    if reason.is_empty() || reason.len() > MAX_REASON_BYTES {
        return Err(PauseError::Reason);
    }
    check_lanes(lanes, known)?;
    Ok(Event::QueuePaused(QueuePaused {
        lanes: lanes.to_vec(),
        reason: reason.to_owned(),
        by: by.to_owned(),
        notice: Some(notice),
    }))
}

/// Resumes `lanes` (none: everything paused); chat is told of it as `notice`.
pub fn decide_resume(
    paused: &Paused,
    lanes: &[String],
    known: &[String],
    by: &str,
    notice: uuid::Uuid,
) -> Result<Event, PauseError> {
    check_lanes(lanes, known)?;
    if lanes.is_empty() {
        if paused.is_empty() {
            return Err(PauseError::NothingPaused);
        }
    } else if paused.all.is_some() {
        return Err(PauseError::AllPaused);
    } else if let Some(lane) = lanes.iter().find(|l| !paused.lanes.contains_key(*l)) {
        return Err(PauseError::NotPaused(lane.clone()));
    }
    Ok(Event::QueueResumed(QueueResumed { lanes: lanes.to_vec(), by: by.to_owned(), notice: Some(notice) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> DateTime<Utc> {
        DateTime::from_timestamp(1_787_562_900, 0).unwrap()
    }

    fn lanes(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn lanes_pause_and_resume_one_by_one_or_all_at_once() {
        let known = lanes(&["default", "signing"]);
        let mut paused = Paused::default();
        let signing =
            decide_pause(&lanes(&["signing"]), &known, " Xcode 16.3 upgrade ", "admin", uuid::Uuid::nil()).unwrap();
        paused.apply(&signing, t());
        assert_eq!(paused.of("signing").map(|p| p.reason.as_str()), Some("Xcode 16.3 upgrade"));
        assert!(paused.of("default").is_none());
        assert_eq!(
            decide_resume(&paused, &lanes(&["default"]), &known, "admin", uuid::Uuid::nil()),
            Err(PauseError::NotPaused("default".into()))
        );
        paused.apply(&decide_pause(&[], &known, "datacenter move", "admin", uuid::Uuid::nil()).unwrap(), t());
        assert!(paused.of("default").is_some() && paused.of("nightly").is_some(), "every lane, later ones too");
        assert_eq!(
            decide_resume(&paused, &lanes(&["signing"]), &known, "admin", uuid::Uuid::nil()),
            Err(PauseError::AllPaused)
        );
        paused.apply(&decide_resume(&paused, &[], &known, "admin", uuid::Uuid::nil()).unwrap(), t());
        assert!(paused.is_empty());
        assert_eq!(decide_resume(&paused, &[], &known, "admin", uuid::Uuid::nil()), Err(PauseError::NothingPaused));
    }

    #[test]
    fn bad_pauses_are_refused() {
        let known = lanes(&["default"]);
        assert_eq!(decide_pause(&[], &known, "  ", "admin", uuid::Uuid::nil()), Err(PauseError::Reason));
        assert_eq!(decide_pause(&[], &known, &"x".repeat(10_000), "admin", uuid::Uuid::nil()), Err(PauseError::Reason));
        assert_eq!(
            decide_pause(&lanes(&["gpu"]), &known, "why", "admin", uuid::Uuid::nil()),
            Err(PauseError::UnknownLane("gpu".into()))
        );
    }
}

//! Which Xcode a build runs with. A node knows the Xcodes it has (version and app path); a trigger
//! or lane may require one: `"16.2"` is that version exactly, `"16"` any 16.x (the highest the node
//! has). The gateway gives a build only to a node with a matching Xcode, and the node runs the
//! script with that Xcode's `DEVELOPER_DIR`: `xcode-select` is system-wide, so concurrent builds
//! must never switch it.

use std::cmp::Ordering;
use std::fmt;

use serde::{Deserialize, Serialize};

/// One Xcode installed on a node.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Xcode {
    /// `CFBundleShortVersionString` of the app, such as `16.2`.
    pub version: String,
    /// The app bundle, such as `/Applications/Xcode-16.2.app`.
    pub path: String,
}

impl Xcode {
    /// The folder `DEVELOPER_DIR` names for this Xcode.
    pub fn developer_dir(&self) -> String {
        format!("{}/Contents/Developer", self.path.trim_end_matches('/'))
    }
}

/// A version as numbers: `16.2` is `[16, 2]`. Trailing zeros do not count (`16.2.0` is `16.2`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version(Vec<u32>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XcodeError {
    #[error("xcode version `{0}` must be numbers separated by dots, such as `16` or `16.2`")]
    BadVersion(String),
}

impl Version {
    pub fn parse(text: &str) -> Result<Version, XcodeError> {
        let bad = || XcodeError::BadVersion(text.to_owned());
        if text.is_empty() || text.len() > 32 {
            return Err(bad());
        }
        let mut parts = text
            .split('.')
            .map(|p| if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) { None } else { p.parse().ok() })
            .collect::<Option<Vec<u32>>>()
            .ok_or_else(bad)?;
        while parts.len() > 1 && parts.last() == Some(&0) {
            parts.pop();
        }
        Ok(Version(parts))
    }

    fn major(&self) -> u32 {
        self.0[0]
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        let len = self.0.len().max(other.0.len());
        let at = |v: &Version, i: usize| v.0.get(i).copied().unwrap_or(0);
        (0..len).map(|i| at(self, i).cmp(&at(other, i))).find(|o| o.is_ne()).unwrap_or(Ordering::Equal)
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// What a trigger or lane asks of a node's Xcode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    text: String,
    version: Version,
    /// `"16"`: any version of that major release.
    any_minor: bool,
}

impl Requirement {
    pub fn parse(text: &str) -> Result<Requirement, XcodeError> {
        let version = Version::parse(text)?;
        Ok(Requirement { text: text.to_owned(), any_minor: !text.contains('.'), version })
    }

    /// Whether an Xcode of `version` meets the requirement (an unreadable version never does).
    pub fn admits(&self, version: &str) -> bool {
        let Ok(version) = Version::parse(version) else { return false };
        if self.any_minor {
            version.major() == self.version.major()
        } else {
            version == self.version
        }
    }

    /// The Xcode a build with this requirement runs with on a node that has `installed`: the
    /// highest that meets it.
    pub fn select<'a>(&self, installed: &'a [Xcode]) -> Option<&'a Xcode> {
        installed
            .iter()
            .filter(|x| self.admits(&x.version))
            .max_by(|a, b| Version::parse(&a.version).ok().cmp(&Version::parse(&b.version).ok()))
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Whether a node with `installed` can run a build that requires `required` (none: any node).
/// A requirement that does not parse is met by no node (the configuration refuses such a one).
pub fn can_run(required: Option<&str>, installed: &[Xcode]) -> bool {
    match required {
        None => true,
        Some(text) => Requirement::parse(text).is_ok_and(|r| r.select(installed).is_some()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xcodes(versions: &[&str]) -> Vec<Xcode> {
        versions.iter().map(|v| Xcode { version: (*v).into(), path: format!("/Applications/Xcode-{v}.app") }).collect()
    }

    #[test]
    fn a_major_version_takes_the_highest_of_that_major_release() {
        let installed = xcodes(&["15.4", "16.1", "16.2", "16.0.1", "17.0"]);
        let picked = Requirement::parse("16").unwrap().select(&installed).unwrap();
        assert_eq!(picked.version, "16.2");
        assert_eq!(picked.developer_dir(), "/Applications/Xcode-16.2.app/Contents/Developer");
        assert_eq!(Requirement::parse("15").unwrap().select(&installed).unwrap().version, "15.4");
        assert!(Requirement::parse("14").unwrap().select(&installed).is_none());
    }

    #[test]
    fn a_minor_version_is_that_version_exactly() {
        let installed = xcodes(&["16.1", "16.2.1", "16.10"]);
        assert!(Requirement::parse("16.2").unwrap().select(&installed).is_none());
        assert_eq!(Requirement::parse("16.2.1").unwrap().select(&installed).unwrap().version, "16.2.1");
        assert_eq!(Requirement::parse("16.1.0").unwrap().select(&installed).unwrap().version, "16.1");
        // 16.10 is above 16.2, not equal to 16.1.
        assert_eq!(Requirement::parse("16").unwrap().select(&installed).unwrap().version, "16.10");
    }

    #[test]
    fn versions_that_are_not_numbers_are_refused_and_never_admitted() {
        for bad in ["", "16.", ".2", "16.x", "latest", "16 .2", "-1", "1.2.3.4.5.6.7.8.9.10.11.12.13.14.15"] {
            assert!(Requirement::parse(bad).is_err(), "{bad:?}");
        }
        let installed = xcodes(&["beta", "16.2"]);
        assert_eq!(Requirement::parse("16").unwrap().select(&installed).unwrap().version, "16.2");
        assert!(can_run(None, &[]));
        assert!(!can_run(Some("16"), &[]));
        assert!(!can_run(Some("not a version"), &installed));
        assert!(can_run(Some("16.2"), &installed));
    }
}

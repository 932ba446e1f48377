//! The Xcodes a node has: found in a folder of applications (`/Applications` on macOS) by their
//! bundles' `Contents/version.plist`, and listed by hand (`--xcode 16.2=/Applications/Xcode.app`,
//! or the scripts file's `[xcode]` table), which wins for the same version.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use meshgate_domain::xcode::{Version, Xcode};

/// Where Xcodes are looked for when no folder is given: `/Applications` on macOS, nowhere
/// elsewhere.
pub fn default_search_dir() -> Option<PathBuf> {
    cfg!(target_os = "macos").then(|| PathBuf::from("/Applications"))
}

/// Every `Xcode*.app` in `dir` whose `Contents/version.plist` names a version.
pub fn discover(dir: &Path) -> Vec<Xcode> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut found: Vec<Xcode> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            name.starts_with("Xcode") && name.ends_with(".app")
        })
        .filter_map(|app| {
            let plist = std::fs::read_to_string(app.join("Contents/version.plist")).ok()?;
            let version = short_version(&plist)?;
            Some(Xcode { version, path: app.to_string_lossy().into_owned() })
        })
        .collect();
    found.sort_by(|a, b| a.path.cmp(&b.path));
    found
}

/// `CFBundleShortVersionString` of an XML property list, if it is a version.
pub fn short_version(plist: &str) -> Option<String> {
    let after_key = plist.split("<key>CFBundleShortVersionString</key>").nth(1)?;
    let value = after_key.trim_start().strip_prefix("<string>")?;
    let version = value.split("</string>").next()?.trim();
    Version::parse(version).ok().map(|_| version.to_owned())
}

/// `16.2=/Applications/Xcode-16.2.app`, as `--xcode` takes it.
pub fn parse_flag(text: &str) -> Result<Xcode, String> {
    let (version, path) = text
        .split_once('=')
        .ok_or_else(|| format!("--xcode `{text}` must be VERSION=PATH (16.2=/Applications/Xcode-16.2.app)"))?;
    Version::parse(version.trim()).map_err(|e| e.to_string())?;
    if path.trim().is_empty() {
        return Err(format!("--xcode `{text}`: the path is empty"));
    }
    Ok(Xcode { version: version.trim().to_owned(), path: path.trim().to_owned() })
}

/// The node's Xcodes: those found, then those listed by hand (which replace a found one of the
/// same version), one per version, lowest version first.
pub fn merge(found: Vec<Xcode>, listed: Vec<Xcode>) -> Vec<Xcode> {
    let mut by_version: BTreeMap<String, Xcode> = BTreeMap::new();
    for xcode in found.into_iter().chain(listed) {
        by_version.insert(xcode.version.clone(), xcode);
    }
    let mut all: Vec<Xcode> = by_version.into_values().collect();
    all.sort_by(|a, b| Version::parse(&a.version).ok().cmp(&Version::parse(&b.version).ok()));
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plist(version: &str) -> String {
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<plist version=\"1.0\">\n<dict>\n\t<key>BuildVersion</key>\n\t<string>3</string>\n\
             \t<key>CFBundleShortVersionString</key>\n\t<string>{version}</string>\n\t<key>CFBundleVersion</key>\n\t<string>23504</string>\n</dict>\n</plist>\n"
        )
    }

    fn app(dir: &Path, name: &str, version: Option<&str>) {
        let contents = dir.join(name).join("Contents");
        std::fs::create_dir_all(&contents).unwrap();
        if let Some(v) = version {
            std::fs::write(contents.join("version.plist"), plist(v)).unwrap();
        }
    }

    #[test]
    fn xcodes_are_found_by_their_bundles_version_and_listed_ones_win() {
        let dir = tempfile::tempdir().unwrap();
        app(dir.path(), "Xcode.app", Some("16.2"));
        app(dir.path(), "Xcode-15.4.app", Some("15.4"));
        app(dir.path(), "Xcode-beta.app", Some("not a version"));
        app(dir.path(), "Xcode-broken.app", None);
        app(dir.path(), "Simulator.app", Some("16.0"));
        let found = discover(dir.path());
        let versions: Vec<&str> = found.iter().map(|x| x.version.as_str()).collect();
        assert_eq!(versions, ["15.4", "16.2"]);
        assert!(found[1].path.ends_with("/Xcode.app"));
        let listed =
            vec![parse_flag("16.2=/Volumes/X/Xcode.app").unwrap(), parse_flag("17.0 = /opt/Xcode-17.app").unwrap()];
        let all = merge(found, listed);
        let paths: Vec<&str> = all.iter().map(|x| x.path.as_str()).collect();
        assert_eq!(paths[1..], ["/Volumes/X/Xcode.app", "/opt/Xcode-17.app"]);
        assert!(discover(&dir.path().join("missing")).is_empty());
    }

    #[test]
    fn a_bad_xcode_flag_says_what_it_wants() {
        assert!(parse_flag("16.2").unwrap_err().contains("VERSION=PATH"));
        assert!(parse_flag("x=/a").is_err());
        assert!(parse_flag("16=").is_err());
        assert_eq!(short_version(&plist("16.2")).as_deref(), Some("16.2"));
        assert_eq!(short_version("<plist/>"), None);
    }
}

//! What a build left behind, read after it ends: the failing test's name, the end of the log,
//! the commit it built. Logs can be large (tens of megabytes): they are read line by line or from
//! their end, never whole.

use std::io::{BufRead, Read, Seek, SeekFrom};
use std::path::Path;

/// The first failing test in xcodebuild / XCTest output (`Test Case '-[Suite testName]' failed`),
/// as `Suite.testName`.
pub fn failing_test_in_log(log: &str) -> Option<String> {
    log.lines().find_map(|line| {
        let start = line.find("Test Case '-[")? + "Test Case '-[".len();
        let rest = &line[start..];
        let end = rest.find("]' failed")?;
        let mut parts = rest[..end].split_whitespace();
        let suite = parts.next()?;
        let test = parts.next()?;
        Some(format!("{suite}.{test}"))
    })
}

/// The first `<testcase>` with a `<failure>` or `<error>` in a JUnit XML report, as
/// `classname.name` (or `name`).
pub fn failing_test_in_junit(xml: &str) -> Option<String> {
    let mut rest = xml;
    while let Some(start) = rest.find("<testcase") {
        let after = &rest[start..];
        let case_end = after.find("</testcase>").map(|i| i + "</testcase>".len());
        let open_end = after.find('>')?;
        let self_closing = after[..open_end].ends_with('/');
        let body = match case_end {
            Some(end) if !self_closing => &after[..end],
            _ => &after[..=open_end],
        };
        if !self_closing && (body.contains("<failure") || body.contains("<error")) {
            let head = &after[..open_end];
            let name = attribute(head, "name")?;
            return Some(match attribute(head, "classname") {
                Some(class) => format!("{class}.{name}"),
                None => name,
            });
        }
        rest = &after[body.len().max(1)..];
    }
    None
}

fn attribute(tag: &str, name: &str) -> Option<String> {
    let key = format!(" {name}=\"");
    let start = tag.find(&key)? + key.len();
    let end = tag[start..].find('"')?;
    Some(tag[start..start + end].to_owned())
}

/// The last `max` bytes of a log as valid UTF-8, cut on a character boundary.
pub fn log_tail(log: &[u8], max: usize) -> String {
    let start = log.len().saturating_sub(max);
    let mut tail = String::from_utf8_lossy(&log[start..]).into_owned();
    // Lossy decoding can grow the text (a cut sequence becomes U+FFFD); trim back to `max`.
    while tail.len() > max {
        let mut cut = tail.len() - max;
        while !tail.is_char_boundary(cut) {
            cut += 1;
        }
        tail.drain(..cut);
    }
    tail
}

/// The first failing XCTest case in a log file, read line by line.
pub fn failing_test_in_file(path: &Path) -> Option<String> {
    let file = std::fs::File::open(path).ok()?;
    let mut reader = std::io::BufReader::new(file);
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).ok()? == 0 {
            return None;
        }
        if let Some(test) = failing_test_in_log(&String::from_utf8_lossy(&line)) {
            return Some(test);
        }
    }
}

/// The last `max` bytes of a log file as valid UTF-8 (empty if it cannot be read).
pub fn file_tail(path: &Path, max: usize) -> String {
    let read = || -> std::io::Result<Vec<u8>> {
        let mut file = std::fs::File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(max as u64)))?;
        let mut bytes = Vec::with_capacity(max);
        file.take(max as u64).read_to_end(&mut bytes)?;
        Ok(bytes)
    };
    read().map(|bytes| log_tail(&bytes, max)).unwrap_or_default()
}

/// The commit a build built: `$MESHGATE_RESULT_DIR/commit-sha` if the script wrote one, else `git
/// rev-parse HEAD` in the build's work dir.
pub async fn commit_sha(work_dir: &Path, result_dir: &Path) -> Option<String> {
    let valid = |s: &str| s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit());
    if let Ok(text) = tokio::fs::read_to_string(result_dir.join("commit-sha")).await {
        let sha = text.trim().to_ascii_lowercase();
        if valid(&sha) {
            return Some(sha);
        }
    }
    let output = tokio::process::Command::new("git")
        .arg("-C")
        .arg(work_dir)
        .args(["rev-parse", "HEAD"])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .await
        .ok()?;
    let sha = String::from_utf8_lossy(&output.stdout).trim().to_ascii_lowercase();
    (output.status.success() && valid(&sha)).then_some(sha)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_failing_xctest_case_is_named_suite_dot_test() {
        let log = "Test Case '-[AppTests testLaunch]' started.\n\
                   Test Case '-[AppTests testLaunch]' passed (0.1 seconds).\n\
                   /src/AppTests.swift:12: error: -[AppTests testOffline] : XCTAssertTrue failed\n\
                   Test Case '-[AppTests testOffline]' failed (0.2 seconds).\n";
        assert_eq!(failing_test_in_log(log).as_deref(), Some("AppTests.testOffline"));
        assert_eq!(failing_test_in_log("all good\n"), None);
    }

    #[test]
    fn the_first_failing_junit_case_is_found() {
        let xml = r#"<testsuite><testcase classname="CacheTests" name="testHit"/>
            <testcase classname="CacheTests" name="testCold"><failure message="boom"/></testcase></testsuite>"#;
        assert_eq!(failing_test_in_junit(xml).as_deref(), Some("CacheTests.testCold"));
        assert_eq!(failing_test_in_junit("<testsuite><testcase name=\"a\"></testcase></testsuite>"), None);
    }

    #[test]
    fn the_tail_is_valid_utf8_and_never_longer_than_asked() {
        let log = "é".repeat(3000); // 6000 bytes of two-byte characters
        for max in [0, 1, 2, 3, 4095, 4096] {
            let tail = log_tail(log.as_bytes(), max);
            assert!(tail.len() <= max);
            assert!(log.ends_with(tail.trim_start_matches('\u{fffd}')));
        }
        assert_eq!(log_tail(b"short", 4096), "short");
    }

    #[test]
    fn a_large_log_file_is_read_from_its_end_and_line_by_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.log");
        let mut text = "Test Case '-[A testOk]' passed (0.1 seconds).\n".repeat(20_000);
        text.push_str("Test Case '-[AppTests testOffline]' failed (0.2 seconds).\n** TEST FAILED **\n");
        std::fs::write(&path, &text).unwrap();
        assert_eq!(failing_test_in_file(&path).as_deref(), Some("AppTests.testOffline"));
        let tail = file_tail(&path, 4096);
        assert_eq!(tail.len(), 4096);
        assert!(tail.ends_with("** TEST FAILED **\n"));
        assert_eq!(file_tail(&dir.path().join("missing.log"), 4096), "");
    }
}

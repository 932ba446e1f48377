//! Reading what a build left behind: the failing test's name and the end of the log.

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
}

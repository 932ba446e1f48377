//! The dashboard at `/ui/`, in a real browser: headless Chromium (Debian's `chromium`) driven
//! over WebDriver (`chromedriver`) against a real gateway process. Waits for the page happen in
//! the browser (a MutationObserver answers an async script), never by sleeping.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use crate::helpers::*;
use crate::pki::pki;
use crate::process::{start, token, with_tls, write_config, Gateway};
use crate::stand_in::{reply, stand_in};

/// A gateway process serving HTTPS with a certificate of the tests' CA, as deployed, its config in
/// `dir` (not its working directory).
fn https_gateway(dir: &Path, extra: &str) -> Gateway {
    let config = write_config(dir);
    let toml = with_tls(dir, &std::fs::read_to_string(&config).unwrap()) + extra;
    std::fs::write(&config, toml).unwrap();
    let gateway = start(dir, &["--config", config.to_str().unwrap()], &[]);
    assert_eq!(gateway.scheme, "https");
    gateway
}

/// A client that trusts the tests' CA and follows no redirects.
fn https(redirects: bool) -> reqwest::Client {
    let policy = if redirects { reqwest::redirect::Policy::default() } else { reqwest::redirect::Policy::none() };
    meshgate::tls::client(reqwest::Client::builder().redirect(policy), Some(&pki().ca_file)).unwrap()
}

/// A chromedriver on a free loopback port, stopped with the test.
struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn program(var: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| PathBuf::from(default));
    assert!(
        path.exists(),
        "{} is missing: run ./scripts/test.sh (it installs Debian's chromium and chromium-driver)",
        path.display()
    );
    path
}

/// Starts chromedriver and waits for the line that says it listens.
fn driver() -> Driver {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = Command::new(program("MESHGATE_CHROMEDRIVER", "/usr/bin/chromedriver"))
        .arg(format!("--port={port}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    for line in stdout.lines() {
        if line.unwrap().contains("started successfully") {
            return Driver { child, port };
        }
    }
    let status = child.wait();
    panic!("chromedriver exited before it listened ({status:?})");
}

async fn browser(driver: &Driver, profile: &Path) -> Client {
    browser_with(driver, profile, &[]).await
}

/// [`browser`] with more of Chromium's flags (`--force-dark-mode`).
async fn browser_with(driver: &Driver, profile: &Path, extra: &[&str]) -> Client {
    let chromium = program("MESHGATE_CHROMIUM", "/usr/bin/chromium");
    let mut caps = serde_json::Map::new();
    // As root Chromium needs --no-sandbox; the network flags keep it from calling out.
    let args = [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,900",
    ];
    let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    args.push(format!("--user-data-dir={}", profile.display()));
    args.extend(extra.iter().map(|a| a.to_string()));
    caps.insert("goog:chromeOptions".into(), json!({ "binary": chromium, "args": args }));
    caps.insert("timeouts".into(), json!({ "script": 20_000, "pageLoad": 20_000 }));
    // The gateway's certificate is of the tests' CA, which this profile does not know.
    caps.insert("acceptInsecureCerts".into(), json!(true));
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a WebDriver session")
}

/// Waits in the page until `css` matches (or 20 s pass): a MutationObserver, no polling. A
/// navigation under way (after a form is sent) ends the script early; it is asked again of the new
/// page.
async fn appears(client: &Client, css: &str) {
    let script = r#"
        const [css, done] = [arguments[0], arguments[arguments.length - 1]];
        if (document.querySelector(css)) return done(true);
        const observer = new MutationObserver(() => {
            if (document.querySelector(css)) { observer.disconnect(); done(true); }
        });
        observer.observe(document.documentElement, { childList: true, subtree: true, attributes: true });
    "#;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut found = client.execute_async(script, vec![json!(css)]).await;
    while !matches!(found, Ok(Value::Bool(true))) && std::time::Instant::now() < deadline {
        found = client.execute_async(script, vec![json!(css)]).await;
    }
    assert!(
        matches!(found, Ok(Value::Bool(true))),
        "`{css}` never appeared: {found:?}\n{}",
        client.source().await.unwrap_or_default()
    );
}

/// Waits in the page until the element `css` holds `needle` in its text (or 20 s pass): a
/// MutationObserver on text changes too, no polling.
async fn shows(client: &Client, css: &str, needle: &str) {
    let script = r#"
        const [css, needle, done] = [arguments[0], arguments[1], arguments[arguments.length - 1]];
        const holds = () => (document.querySelector(css)?.textContent || "").includes(needle);
        if (holds()) return done(true);
        const observer = new MutationObserver(() => { if (holds()) { observer.disconnect(); done(true); } });
        observer.observe(document.documentElement, { childList: true, subtree: true, characterData: true });
    "#;
    let found = client.execute_async(script, vec![json!(css), json!(needle)]).await;
    assert!(
        matches!(found, Ok(Value::Bool(true))),
        "`{css}` never showed `{needle}`: {found:?}\n{}",
        client.source().await.unwrap_or_default()
    );
}

async fn text(client: &Client, css: &str) -> String {
    client.find(Locator::Css(css)).await.unwrap().text().await.unwrap()
}

fn deliver(gateway: &Gateway, dir: &Path, issue: &str) -> reqwest::RequestBuilder {
    https(true)
        .post(gateway.url("/youtrack/webhook"))
        .header("X-YouTrack-Token", token(dir, "webhook.token"))
        .header("Content-Type", "application/json")
        .body(with(&fixture("mob-issueUpdated-state-building.json"), &json!({"id": issue})))
}

/// Screenshots for docs/ are written when `MESHGATE_SCREENSHOTS` names a folder.
async fn screenshot(client: &Client, name: &str) {
    if let Some(dir) = std::env::var_os("MESHGATE_SCREENSHOTS") {
        let png = client.screenshot().await.unwrap();
        std::fs::write(Path::new(&dir).join(name), png).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_signs_in_watches_a_build_arrive_live_opens_its_timeline_and_cancels_another() {
    let dir = tempfile::tempdir().unwrap();
    // A chat sink that refuses the first notification (503) and takes the next.
    let mut slack = stand_in(vec![reply(503, None)]).await;
    let sink = format!(
        "\n[outbound]\nca_file = \"{}\"\nretry_base_ms = 50\nretry_cap_seconds = 1\n\n[[chat]]\nname = \"team\"\nkind = \"slack_webhook\"\nurl = \"{}\"\n",
        pki().ca_file.display(),
        slack.url("/services/T0/B0/x")
    );
    let gateway = https_gateway(dir.path(), &sink);
    let admin = token(dir.path(), "admin.token");
    let driver = driver();
    let client = browser(&driver, &dir.path().join("chromium")).await;

    // Signed out, /ui/ leads to the sign-in form; the token goes in a form body, once.
    client.goto(&gateway.url("/ui/")).await.unwrap();
    assert!(client.current_url().await.unwrap().path().ends_with("/ui/login"));
    client.find(Locator::Css("#token")).await.unwrap().send_keys("not-the-token").await.unwrap();
    client.find(Locator::Css("#sign-in")).await.unwrap().click().await.unwrap();
    appears(&client, "p.error").await;
    client.find(Locator::Css("#token")).await.unwrap().send_keys(&admin).await.unwrap();
    client.find(Locator::Css("#sign-in")).await.unwrap().click().await.unwrap();
    appears(&client, "section#queue").await;
    assert!(client.current_url().await.unwrap().path().ends_with("/ui/"));
    let source = client.source().await.unwrap();
    assert!(!source.contains(&admin), "the token is in the page");
    // The session cookie is out of the page's reach (HttpOnly).
    assert_eq!(client.execute("return document.cookie", vec![]).await.unwrap(), json!(""));
    appears(&client, "#live.on").await;

    // A delivery shows up without a reload (the marker set on this page survives).
    client.execute("window.stillTheSamePage = true", vec![]).await.unwrap();
    let first = build_id(&answer_of(deliver(&gateway, dir.path(), "MOB-7")).await);
    appears(&client, &format!("#queue a[data-build='{first}']")).await;
    appears(&client, "#deliveries .state.enqueued").await;
    // No node has asked for work yet: the queue says so.
    shows(&client, "#queue .why[data-why='no_nodes']", "no live node").await;
    assert_eq!(client.execute("return window.stillTheSamePage === true", vec![]).await.unwrap(), json!(true));
    // The chat sink was tried (503) and then took the notification.
    for _ in 0..2 {
        let tried = slack.next().await;
        assert_eq!(tried.method, "POST", "{} {} {}", tried.method, tried.path, tried.body);
    }

    // A node takes it: it moves to the running builds, and the node shows as busy.
    for issue in ["MOB-9", "MOB-10"] {
        answer_of(deliver(&gateway, dir.path(), issue)).await;
    }
    let xcodes = json!([{"version": "15.4", "path": "/Applications/Xcode-15.4.app"}, {"version": "16.2", "path": "/Applications/Xcode.app"}]);
    let claim =
        json!({"node_id": "mac-mini-1", "labels": ["xcode-16"], "slots": 1, "wait_seconds": 1, "xcodes": xcodes});
    let claimed =
        https(true).post(gateway.url("/api/v1/nodes/claim")).bearer_auth(token(dir.path(), "nodes.token")).json(&claim);
    assert_eq!(answer_of(claimed).await["build"]["build_id"], first.to_string());
    appears(&client, &format!("#running a[data-build='{first}']")).await;
    appears(&client, "#nodes .state.busy").await;
    // The node's one slot is taken: the others wait for it.
    shows(&client, "#queue .why[data-why='nodes_busy']", "every node that can run it is busy (1 node(s), 1 slot(s))")
        .await;
    shows(&client, "#queue h3", "default: 2 waiting").await;
    shows(&client, "#nodes .xcodes", "15.4, 16.2").await;
    assert_eq!(client.execute("return window.stillTheSamePage === true", vec![]).await.unwrap(), json!(true));
    screenshot(&client, "dashboard-overview.png").await;

    // Its timeline: the delivery, the request, the claim and each notification attempt with its
    // answer.
    client.find(Locator::Css(&format!("#running a[data-build='{first}']"))).await.unwrap().click().await.unwrap();
    appears(&client, "#timeline li[data-type='BuildClaimed']").await;
    appears(&client, "#timeline li[data-type='WebhookReceived']").await;
    appears(&client, "#timeline li[data-type='NotificationDelivered']").await;
    let attempts = client.find_all(Locator::Css("#timeline li[data-type='NotificationAttempted']")).await.unwrap();
    assert!(!attempts.is_empty());
    let answered = attempts[0].text().await.unwrap();
    assert!(answered.contains("503"), "{answered}");
    // Read as sentences, with the time each step took and the build's name.
    shows(&client, "#timeline li[data-type='BuildClaimed'] .took", "waited ").await;
    shows(&client, "#timeline li[data-type='NotificationDelivered'] .took", "told ").await;
    shows(&client, "#timeline li[data-type='BuildRequested'] .build", "ios-build #").await;
    let raw = "return [...document.querySelectorAll('#timeline .what')].map((w) => w.textContent).filter((t) => t.startsWith('{') || t.includes('(') && t.endsWith(')') && t.split(' ')[0].match(/^[A-Z]/))";
    assert_eq!(client.execute(raw, vec![]).await.unwrap(), json!([]), "every step read as a sentence");
    // Its log grows on the page while it runs, and what it produced is linked.
    let nodes_token = token(dir.path(), "nodes.token");
    let node = https(true);
    let chunk = |offset: usize, text: &'static str| {
        node.post(
            gateway.url(&format!("/api/v1/builds/{first}/log/chunks?node_id=mac-mini-1&attempt=1&offset={offset}")),
        )
        .bearer_auth(&nodes_token)
        .body(text)
        .send()
    };
    assert_eq!(chunk(0, "Compiling Checkout.swift\n").await.unwrap().status(), 200);
    shows(&client, "#log", "Compiling Checkout.swift").await;
    assert_eq!(chunk(25, "Testing AppTests\n").await.unwrap().status(), 200);
    shows(&client, "#log", "Compiling Checkout.swift\nTesting AppTests").await;
    let ipa = "78324857e8d9bfa749dc301271df54a6572de9f4c3df8a9507cfa7b7d2b25f8e";
    let stored = node
        .put(
            gateway.url(&format!("/api/v1/builds/{first}/artifacts/App.ipa?node_id=mac-mini-1&attempt=1&sha256={ipa}")),
        )
        .bearer_auth(&nodes_token)
        .body("ipa")
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), 200);
    appears(&client, "#artifacts a[data-artifact='App.ipa']").await;
    let href = client.find(Locator::Css("#artifacts a[data-artifact='App.ipa']")).await.unwrap().attr("href").await;
    assert!(href.unwrap().unwrap().contains("/artifacts/App.ipa?attempt=1&key="));
    screenshot(&client, "dashboard-timeline.png").await;

    // Cancel it with the button: asked for a reason first, then recorded as the operator's.
    client.find(Locator::Css("#cancel")).await.unwrap().click().await.unwrap();
    appears(&client, ".notice.error").await;
    client.find(Locator::Css("#reason")).await.unwrap().send_keys("wrong branch").await.unwrap();
    client.find(Locator::Css("#cancel")).await.unwrap().click().await.unwrap();
    appears(&client, "#build-state .state.cancelled").await;
    assert_eq!(text(&client, "#build-state").await, "cancelled");
    shows(&client, "#timeline li[data-type='BuildCancelled'] .took", "ran ").await;
    let http = https(true);
    let build = answer_of(http.get(gateway.url(&format!("/api/v1/builds/{first}"))).bearer_auth(&admin)).await;
    let cancelled = build["events"].as_array().unwrap().iter().find(|e| e["type"] == "BuildCancelled").unwrap();
    assert_eq!(cancelled["data"]["reason"], "by an operator (admin): wrong branch");

    // Rebuild it with the button: a new build of the same issue, linked both ways.
    // Found and clicked in one step: the page re-renders as events arrive.
    appears(&client, "#rebuild").await;
    client.execute("document.getElementById('rebuild').click()", vec![]).await.unwrap();
    appears(&client, "#rebuild-of").await;
    let url = client.current_url().await.unwrap();
    let again: uuid::Uuid = url.fragment().unwrap().trim_start_matches("/builds/").parse().unwrap();
    assert_ne!(again, first);
    let rebuilt = answer_of(http.get(gateway.url(&format!("/api/v1/builds/{again}"))).bearer_auth(&admin)).await;
    assert_eq!(rebuilt["build"]["rebuild_of"], first.to_string());
    assert_eq!(rebuilt["build"]["state"]["state"], "queued");
    let old = answer_of(http.get(gateway.url(&format!("/api/v1/builds/{first}"))).bearer_auth(&admin)).await;
    assert_eq!(old["build"]["rebuilds"][0]["build_id"], again.to_string());

    // The issue's history, and the page at a phone's width: nothing wider than the screen.
    client.goto(&gateway.url("/ui/#/issues/MOB-7")).await.unwrap();
    appears(&client, "#events li[data-type='BuildCancelled']").await;
    client.set_window_size(390, 844).await.unwrap();
    client.goto(&gateway.url("/ui/#/")).await.unwrap();
    appears(&client, "#recent a[data-build]").await;
    // A pause shows as a banner, live (once the page follows the log).
    appears(&client, "#live.on").await;
    let pause = json!({"reason": "Xcode 16.3 upgrade", "lanes": ["default"]});
    let paused = answer_of(http.post(gateway.url("/api/v1/queue/pause")).bearer_auth(&admin).json(&pause)).await;
    assert_eq!(paused["lanes"]["default"]["reason"], "Xcode 16.3 upgrade", "{paused}");
    shows(&client, "#paused", "Paused: lane default, by admin").await;
    shows(&client, "#paused", "Xcode 16.3 upgrade").await;
    let fits = client.execute("return document.documentElement.scrollWidth <= window.innerWidth", vec![]).await;
    assert_eq!(fits.unwrap(), json!(true));
    screenshot(&client, "dashboard-phone.png").await;
    client.close().await.unwrap();
    gateway.stop();
}

#[tokio::test]
async fn a_session_reads_but_changes_nothing_without_its_csrf_token_and_ends_with_its_token() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = https_gateway(dir.path(), "");
    let admin = token(dir.path(), "admin.token");
    let http = https(false);
    let build = build_id(&answer_of(deliver(&gateway, dir.path(), "MOB-8")).await);

    let signed_in = http.post(gateway.url("/ui/login")).form(&[("token", admin.as_str())]).send().await.unwrap();
    assert_eq!(signed_in.status(), 303);
    let set_cookie = signed_in.headers()["set-cookie"].to_str().unwrap().to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Secure"] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let csrf = answer_of(http.get(gateway.url("/ui/session")).header("cookie", &cookie)).await["csrf"]
        .as_str()
        .unwrap()
        .to_owned();

    // Reads with the cookie; a change needs the CSRF token too.
    let read = http.get(gateway.url("/api/v1/builds")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(read.status(), 200);
    let cancel = |csrf: Option<&str>| {
        let mut request = http
            .post(gateway.url(&format!("/api/v1/builds/{build}/cancel")))
            .header("cookie", &cookie)
            .json(&json!({"reason": "forged"}));
        if let Some(csrf) = csrf {
            request = request.header("x-csrf-token", csrf);
        }
        request.send()
    };
    let forged = cancel(None).await.unwrap();
    assert_eq!(forged.status(), 403);
    assert_eq!(forged.json::<Value>().await.unwrap()["error"], "csrf");
    assert_eq!(cancel(Some("0".repeat(64).as_str())).await.unwrap().status(), 403);
    assert_eq!(cancel(Some(&csrf)).await.unwrap().status(), 200);

    // Without a cookie, or with one made up: signed out.
    let made_up =
        http.get(gateway.url("/api/v1/builds")).header("cookie", "meshgate_session=abc").send().await.unwrap();
    assert_eq!(made_up.status(), 401);
    let page = http.get(gateway.url("/ui/")).send().await.unwrap();
    assert_eq!(page.status(), 303);
    assert_eq!(page.headers()["location"], "/ui/login");
    assert!(page.headers()["content-security-policy"].to_str().unwrap().contains("script-src 'self'"));

    // The admin token rotated out (a new file, reloaded): the session ends with it.
    let admin_file = dir.path().join("admin.token");
    std::fs::remove_file(&admin_file).unwrap();
    meshgate::secrets::generate_token_file(&admin_file, 0o400).unwrap();
    let new_admin = token(dir.path(), "admin.token");
    let reloaded = http.post(gateway.url("/api/v1/tokens/reload")).bearer_auth(&new_admin).send().await.unwrap();
    assert_eq!(reloaded.status(), 401, "the old token is still in force until the reload; use it");
    let reloaded = http.post(gateway.url("/api/v1/tokens/reload")).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(reloaded.status(), 200);
    let after = http.get(gateway.url("/api/v1/builds")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(after.status(), 401);
    gateway.stop();
}

/// Signs in with the admin token and waits for the overview.
async fn sign_in(client: &Client, gateway: &Gateway, admin: &str) {
    client.goto(&gateway.url("/ui/login")).await.unwrap();
    client.find(Locator::Css("#token")).await.unwrap().send_keys(admin).await.unwrap();
    client.find(Locator::Css("#sign-in")).await.unwrap().click().await.unwrap();
    appears(client, "section#queue").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stats_page_draws_two_weeks_of_builds_in_light_and_dark_and_a_retried_build_reads_as_sentences() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    let seeded = crate::stats::seed_history(&dir.path().join("data/events.sqlite"), 14).await;
    let gateway = https_gateway(dir.path(), "");
    let admin = token(dir.path(), "admin.token");
    let driver = driver();

    for (mode, flags, background) in
        [("light", &[][..], "rgb(247, 248, 250)"), ("dark", &["--force-dark-mode"][..], "rgb(18, 22, 30)")]
    {
        let client = browser_with(&driver, &dir.path().join(format!("chromium-{mode}")), flags).await;
        sign_in(&client, &gateway, &admin).await;
        client.find(Locator::Css("a[href='#/stats']")).await.unwrap().click().await.unwrap();
        appears(&client, "svg[data-chart='outcomes'] rect.bar").await;
        let background_now = client.execute("return getComputedStyle(document.body).backgroundColor", vec![]).await;
        assert_eq!(background_now.unwrap(), json!(background), "{mode} mode");
        // One failed build a day (the sixth), 14 days of the 15 shown.
        let count =
            |css: &str| client.execute("return document.querySelectorAll(arguments[0]).length", vec![json!(css)]);
        assert_eq!(count("svg[data-chart='outcomes'] rect.bar.failed").await.unwrap(), json!(14));
        let passed: Vec<u64> = serde_json::from_value(
            client
                .execute("return [...document.querySelectorAll(\"svg[data-chart='outcomes'] rect.bar.succeeded\")].map((r) => +r.dataset.value)", vec![])
                .await
                .unwrap(),
        )
        .unwrap();
        assert_eq!(passed.iter().sum::<u64>(), u64::from(seeded.succeeded));
        // A median and a 90th percentile a day for each trigger, and a lane's waits.
        assert_eq!(count("svg[data-chart='duration-ios-build'] circle.p50").await.unwrap(), json!(14));
        assert_eq!(count("svg[data-chart='duration-ios-build'] circle.p90").await.unwrap(), json!(14));
        appears(&client, "svg[data-chart='wait-default'] path.series.p50").await;
        appears(&client, "svg[data-chart='pass-rate'] rect.bar.succeeded").await;
        shows(&client, "#stats-flaky", "LoginTests.testSignIn").await;
        shows(&client, "#stats-tests", "CheckoutUITests.testPay").await;
        appears(&client, "#stats-nodes .sick[data-node='mac-3']").await;
        // Text on the charts is readable: axis labels take the page's muted colour, not black on
        // a dark page.
        let tick = client.execute("return getComputedStyle(document.querySelector('.chart .tick')).fill", vec![]).await;
        let expected_tick = if mode == "dark" { "rgb(154, 164, 181)" } else { "rgb(91, 100, 117)" };
        assert_eq!(tick.unwrap(), json!(expected_tick));
        // One trigger, chosen in the form.
        client.execute("document.querySelector('#stats-ask select').value = 'android-build'", vec![]).await.unwrap();
        client.find(Locator::Css("#stats-ask button")).await.unwrap().click().await.unwrap();
        // The page of every trigger has an android-build chart too: wait for the page drawn for
        // the choice (its option selected in the markup) rather than for that chart.
        appears(&client, "#stats-ask option[value='android-build'][selected]").await;
        appears(&client, "svg[data-chart='duration-android-build']").await;
        assert_eq!(count("svg[data-chart='duration-ios-build']").await.unwrap(), json!(0));
        client.execute("document.querySelector('#stats-ask select').value = ''", vec![]).await.unwrap();
        client.find(Locator::Css("#stats-ask button")).await.unwrap().click().await.unwrap();
        appears(&client, "svg[data-chart='duration-ios-build']").await;
        let fits = client.execute("return document.documentElement.scrollWidth <= window.innerWidth", vec![]).await;
        assert_eq!(fits.unwrap(), json!(true));
        screenshot(&client, &format!("dashboard-stats-{mode}.png")).await;

        if mode == "light" {
            // A build that failed the way a retry rule says, ran again on another node and was
            // cancelled: every step a sentence, with the time it took.
            client.goto(&gateway.url(&format!("/ui/#/builds/{}", seeded.retried_and_cancelled))).await.unwrap();
            appears(&client, "#timeline li[data-type='BuildCancelled']").await;
            shows(
                &client,
                "#timeline li[data-type='BuildRetryScheduled'] .what",
                "attempt 1 failed the way Failed to boot simulator says: retrying as attempt 2",
            )
            .await;
            shows(&client, "#timeline li[data-type='BuildRetryScheduled'] .took", "ran 1 min 35 s").await;
            let claims = client.find_all(Locator::Css("#timeline li[data-type='BuildClaimed'] .took")).await.unwrap();
            assert_eq!(claims.len(), 2);
            assert_eq!(claims[0].text().await.unwrap(), "· waited 40 s");
            assert_eq!(claims[1].text().await.unwrap(), "· waited 35 s");
            shows(
                &client,
                "#timeline li[data-type='BuildCancelled'] .what",
                "cancelled: by an operator (admin): wrong branch",
            )
            .await;
            shows(&client, "#timeline li[data-type='BuildCancelled'] .took", "ran 2 min 10 s").await;
            shows(&client, "#timeline li[data-type='BuildRequested'] .build", "ios-build #").await;
            let raw = "return [...document.querySelectorAll('#timeline .what')].map((w) => w.textContent).filter((t) => t.startsWith('{') || t.includes('(') && t.endsWith(')') && t.split(' ')[0].match(/^[A-Z]/))";
            assert_eq!(client.execute(raw, vec![]).await.unwrap(), json!([]), "every step read as a sentence");
        }
        client.close().await.unwrap();
    }
    gateway.stop();
}

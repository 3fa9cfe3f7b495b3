//! The built-in web client, end to end: the real server, headless Chromium driven by
//! `tests/js/browser.test.mjs` (playwright-core), two people chatting across a server
//! restart, and reads that the server died before acknowledging. Also the static files'
//! headers, which the browser test cannot see, and the client's state rules in Node
//! (`tests/js/client-state.test.mjs`).

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{http_get_raw, js_dir, Server};

#[tokio::test]
async fn the_client_is_served_with_its_content_types_and_a_strict_policy() {
    let server = Server::start();
    let (head, body) = http_get_raw(server.addr, "/").await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("content-type: text/html; charset=utf-8"),
        "{head}"
    );
    assert!(
        head.contains("content-security-policy: default-src 'none'; script-src 'self';"),
        "{head}"
    );
    assert!(head.contains("x-content-type-options: nosniff"), "{head}");
    assert!(body.contains(r#"<script type="module" src="/web/app.js">"#));

    let (head, body) = http_get_raw(server.addr, "/web/app.js").await;
    assert!(head.contains("content-type: text/javascript"), "{head}");
    assert!(body.contains("class Session"));
    let (head, _) = http_get_raw(server.addr, "/web/style.css").await;
    assert!(head.contains("content-type: text/css"), "{head}");

    // Unknown paths, also under /web/, stay JSON 404s.
    let (status, body) = server.get("/web/missing.js", None).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "not_found");
}

#[test]
fn the_client_state_rules_hold() {
    // web/protocol.js and web/state.js are plain modules: tested in Node directly.
    let out = Command::new("node")
        .args(["--test", "client-state.test.mjs"])
        .current_dir(js_dir())
        .output()
        .expect("node is needed for the web client tests");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn two_people_chat_in_the_browser_across_a_server_restart() {
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "the browser test needs Debian's chromium (scripts/test installs it)"
    );
    let mut server = Server::start();
    let dir = js_dir();
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("test-output");
    let mut node = Command::new("node")
        .arg("browser.test.mjs")
        .current_dir(&dir)
        .env("CHAT_URL", server.url(""))
        .env("ALICE_TOKEN", server.named_token("alice", "Alice"))
        .env("BOB_TOKEN", server.named_token("bob", "Bob"))
        .env("CAROL_TOKEN", server.named_token("carol", "Carol"))
        .env("DAVE_TOKEN", server.named_token("dave", "Dave"))
        .env("SCREENSHOT_DIR", &shots)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node is needed for the browser test");

    // The script asks for server actions on stdout and waits for the answer on stdin.
    let mut stdin = node.stdin.take().unwrap();
    let stdout = common::finish_node(node, Duration::from_secs(120), |line| {
        if let Some(command) = line.strip_prefix("@@control ") {
            match command {
                "kill" => server.kill9(),
                "restart" => server.restart_same_port(),
                other => panic!("unknown control command {other:?}"),
            }
            writeln!(stdin, "{command}: done").expect("answer node");
        }
    });
    // Every scenario of the script ran and passed (its early exit cuts node:test's
    // summary, so count the TAP result lines).
    let passed = stdout.lines().filter(|l| l.starts_with("ok ")).count();
    assert_eq!(passed, 4, "{stdout}");
    for shot in [
        "desktop-conversation.png",
        "desktop-outage.png",
        "desktop-blocked.png",
        "phone-login.png",
        "phone-inbox.png",
        "phone-conversation.png",
        "phone-history.png",
        "desktop-lifecycle.png",
        "desktop-caught-up.png",
    ] {
        assert!(shots.join(shot).is_file(), "missing screenshot {shot}");
    }
}

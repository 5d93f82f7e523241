//! The web front door of a node on loopback, tried as an attacker would: no access without the
//! access token, a rebound `Host`, the security headers, login links, logout, session expiry,
//! token rotation, who got in on record, the login rate limit, bad input, slow connections, and
//! TLS.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{Value, json};
use taskmesh_tests::{TestNode, access_token, wait_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A client that sends nothing it is not told to, and follows no redirect.
fn bare() -> reqwest::Client {
    taskmesh_tests::http_client()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// A client whose connections come from `ip` (another address on loopback).
fn bare_from(ip: [u8; 4]) -> reqwest::Client {
    taskmesh_tests::http_client()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .local_address(std::net::IpAddr::from(ip))
        .build()
        .expect("client")
}

/// A fresh one-time login link from the node's API.
async fn login_link(node: &TestNode) -> Result<String> {
    let (status, link) = node.api.post("/api/login-links", &Value::Null).await?;
    anyhow::ensure!(status == 201, "login-links answered {status}: {link}");
    assert_eq!(link["expires_in_s"], 600);
    Ok(link["url"].as_str().context("url")?.to_owned())
}

/// Logs in through a login link; returns the `name=value` of the session cookie.
async fn session_of(node: &TestNode) -> Result<String> {
    let r = bare().get(login_link(node).await?).send().await?;
    assert_eq!(r.status().as_u16(), 303);
    cookie_of(&r)
}

fn cookie_of(r: &reqwest::Response) -> Result<String> {
    Ok(r.headers()
        .get("set-cookie")
        .context("no Set-Cookie")?
        .to_str()?
        .split(';')
        .next()
        .context("cookie")?
        .to_owned())
}

async fn status_of(r: reqwest::RequestBuilder) -> Result<u16> {
    Ok(r.send().await?.status().as_u16())
}

#[tokio::test]
async fn nothing_but_health_and_the_login_page_is_open_on_loopback() -> Result<()> {
    let node = TestNode::start().await?;
    let base = &node.api.base;
    let http = bare();
    for path in [
        "/api/tasks",
        "/api/cluster-key",
        "/api/settings",
        "/api/settings/export?secrets=true",
        "/api/peers",
        "/api/events",
    ] {
        let r = http.get(format!("{base}{path}")).send().await?;
        assert_eq!(r.status().as_u16(), 401, "{path}");
        let body: Value = r.json().await?;
        assert!(
            body["error"].as_str().unwrap_or("").contains("Bearer"),
            "{body}"
        );
    }
    let create = http
        .post(format!("{base}/api/tasks"))
        .json(&json!({"name": "owned", "spec": {"shell": "id"}}))
        .send()
        .await?;
    assert_eq!(create.status().as_u16(), 401);
    for (method, path) in [("PUT", "/api/settings"), ("POST", "/api/settings/import")] {
        let r = http
            .request(method.parse()?, format!("{base}{path}"))
            .json(&json!({}))
            .send()
            .await?;
        assert_eq!(r.status().as_u16(), 401, "{method} {path}");
    }
    assert_eq!(
        status_of(http.post(format!("{base}/api/token/rotate"))).await?,
        401
    );
    assert_eq!(
        status_of(http.post(format!("{base}/api/login-links"))).await?,
        401
    );
    assert!(node.handle.state().tasks.is_empty(), "a task was created");

    for page in ["/", "/index", "/settings", "/node", "/peers", "/runs/x"] {
        let r = http.get(format!("{base}{page}")).send().await?;
        assert_eq!(r.status().as_u16(), 303, "{page}");
        let to = r.headers()["location"].to_str()?;
        assert!(to.starts_with("/login?next=/"), "{page} → {to}");
    }
    assert_eq!(status_of(http.get(format!("{base}/login"))).await?, 200);
    assert_eq!(
        status_of(http.get(format!("{base}/static/app.js"))).await?,
        200
    );

    // Health answers, and tells nothing secret.
    let r = http.get(format!("{base}/api/health")).send().await?;
    assert_eq!(r.status().as_u16(), 200);
    let health: Value = r.json().await?;
    let mut keys: Vec<&str> = health
        .as_object()
        .context("object")?
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "active_runs",
            "node",
            "started_at",
            "status",
            "tasks",
            "version"
        ]
    );
    let text = health.to_string();
    let token = access_token(&node.dir)?;
    let key = node.handle.settings(true).node.cluster_key.context("key")?;
    assert!(!text.contains(&token) && !text.contains(&key), "{text}");

    // A wrong token is refused; the right one lets in.
    let r = http
        .get(format!("{base}/api/tasks"))
        .bearer_auth("wrong")
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(
        status_of(http.get(format!("{base}/api/tasks")).bearer_auth(&token)).await?,
        200
    );
    Ok(())
}

#[tokio::test]
async fn the_token_logs_a_browser_in_and_never_shows_on_a_page() -> Result<()> {
    let node = TestNode::start().await?;
    let token = access_token(&node.dir)?;
    let base = &node.api.base;
    let http = bare();
    let r = http
        .post(format!("{base}/login"))
        .form(&[("token", "nope"), ("next", "/settings")])
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 401);
    let r = http
        .post(format!("{base}/login"))
        .form(&[("token", token.as_str()), ("next", "/settings")])
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 303);
    assert_eq!(r.headers()["location"], "/settings");
    let set_cookie = r.headers()["set-cookie"].to_str()?.to_owned();
    assert!(set_cookie.contains("HttpOnly"), "{set_cookie}");
    assert!(set_cookie.contains("SameSite=Strict"), "{set_cookie}");
    assert!(!set_cookie.contains("Secure"), "no TLS here: {set_cookie}");
    let cookie = cookie_of(&r)?;
    let r = http
        .get(format!("{base}/settings"))
        .header("cookie", &cookie)
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 200);
    let page = r.text().await?;
    assert!(!page.contains(&token), "the token must not appear in pages");
    assert!(page.contains("action=\"/logout\""), "a logout button");
    Ok(())
}

#[tokio::test]
async fn a_login_link_works_once() -> Result<()> {
    let node = TestNode::start().await?;
    let link = login_link(&node).await?;
    assert!(
        link.starts_with(&format!("{}/login?code=", node.api.base)),
        "{link}"
    );
    let http = bare();
    let with_next = format!("{link}&next=/peers");
    let r = http.get(&with_next).send().await?;
    assert_eq!(r.status().as_u16(), 303);
    assert_eq!(r.headers()["location"], "/peers");
    let cookie = cookie_of(&r)?;
    let r = http
        .get(format!("{}/peers", node.api.base))
        .header("cookie", &cookie)
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 200);
    // Used up.
    let again = http.get(&with_next).send().await?;
    assert_eq!(again.status().as_u16(), 401);
    assert!(again.headers().get("set-cookie").is_none());
    assert!(again.text().await?.contains("not valid"));
    let made_up = format!("{}/login?code={}", node.api.base, "0".repeat(64));
    assert_eq!(status_of(http.get(made_up)).await?, 401);
    Ok(())
}

#[tokio::test]
async fn a_rebound_host_is_refused_even_with_credentials() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let node = TestNode::start_with(tmp.path(), |c| {
        c.allowed_hosts = vec!["taskmesh.lab".into()];
    })
    .await?;
    let token = access_token(&node.dir)?;
    let port = node.addr.port();
    let base = &node.api.base;
    let http = bare();
    let evil = format!("evil.example:{port}");
    let rebound = |r: reqwest::RequestBuilder| {
        r.header("host", &evil)
            .header("origin", format!("http://{evil}"))
            .header("sec-fetch-site", "same-origin")
    };
    let tries = [
        http.get(format!("{base}/api/cluster-key")),
        http.get(format!("{base}/api/settings/export?secrets=true")),
        http.post(format!("{base}/api/tasks"))
            .json(&json!({"name": "owned", "spec": {"shell": "id"}})),
        http.post(format!("{base}/api/tasks/owned/run")),
        http.get(format!("{base}/index")),
        http.get(format!("{base}/api/health")),
    ];
    for attempt in tries {
        for with_token in [false, true] {
            let attempt = attempt.try_clone().context("clone")?;
            let attempt = if with_token {
                attempt.bearer_auth(&token)
            } else {
                attempt
            };
            let r = rebound(attempt).send().await?;
            assert_eq!(r.status().as_u16(), 421);
            assert!(r.headers().contains_key("content-security-policy"));
            let text = r.text().await?;
            assert!(text.contains("allowed_hosts"), "{text}");
            assert!(!text.contains(&token));
        }
    }
    assert!(node.handle.state().tasks.is_empty(), "a task was created");
    // Names the node answers to: IP literals, localhost, the configured ones; any port.
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "taskmesh.lab:443".to_owned(),
        "[::1]".to_owned(),
    ] {
        let r = http
            .get(format!("{base}/api/tasks"))
            .header("host", &host)
            .bearer_auth(&token)
            .send()
            .await?;
        assert_eq!(r.status().as_u16(), 200, "{host}");
    }
    // The host of cluster.notify.ui_url, once set.
    let ui = |host: &str| {
        http.get(format!("{base}/api/health"))
            .header("host", host.to_owned())
    };
    assert_eq!(status_of(ui("ui.example:8080")).await?, 421);
    let mut settings = node.handle.settings(true);
    settings.cluster.notify.ui_url = Some("https://ui.example/taskmesh".into());
    node.handle.put_settings(settings).await?;
    assert_eq!(status_of(ui("ui.example:8080")).await?, 200);
    Ok(())
}

#[tokio::test]
async fn every_answer_carries_the_security_headers() -> Result<()> {
    let node = TestNode::start().await?;
    let base = &node.api.base;
    let cookie = session_of(&node).await?;
    let http = bare();
    let answers = [
        http.get(format!("{base}/index"))
            .header("cookie", &cookie)
            .send()
            .await?,
        http.get(format!("{base}/api/tasks"))
            .header("cookie", &cookie)
            .send()
            .await?,
        http.get(format!("{base}/api/tasks")).send().await?,
        http.get(format!("{base}/login")).send().await?,
        http.get(format!("{base}/static/app.css")).send().await?,
        http.get(format!("{base}/api/health")).send().await?,
        http.get(format!("{base}/settings")).send().await?,
    ];
    for r in &answers {
        let h = r.headers();
        assert_eq!(
            h["content-security-policy"],
            "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
            "{}",
            r.url()
        );
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["referrer-policy"], "same-origin");
        assert_eq!(h["x-frame-options"], "DENY");
    }
    assert_eq!(answers[1].headers()["cache-control"], "no-store");
    assert!(
        answers[4].headers()["cache-control"]
            .to_str()?
            .contains("max-age")
    );
    // The pages need nothing the policy forbids: no inline script or style.
    let page = http
        .get(format!("{base}/index"))
        .header("cookie", &cookie)
        .send()
        .await?
        .text()
        .await?;
    assert!(
        !page.contains("<script>") && !page.contains("style="),
        "{page}"
    );
    assert!(!page.contains("data:"), "{page}");
    Ok(())
}

#[tokio::test]
async fn logout_ends_the_session_on_the_server() -> Result<()> {
    let node = TestNode::start().await?;
    let base = &node.api.base;
    let cookie = session_of(&node).await?;
    let http = bare();
    let page = |c: &str| {
        http.get(format!("{base}/index"))
            .header("cookie", c.to_owned())
    };
    assert_eq!(status_of(page(&cookie)).await?, 200);
    // Another site cannot log a user out.
    let r = http
        .post(format!("{base}/logout"))
        .header("cookie", &cookie)
        .header("origin", "http://evil.example")
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 403);
    assert_eq!(status_of(page(&cookie)).await?, 200);
    let r = http
        .post(format!("{base}/logout"))
        .header("cookie", &cookie)
        .header("origin", base.as_str())
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 303);
    assert_eq!(r.headers()["location"], "/login");
    assert!(r.headers()["set-cookie"].to_str()?.contains("Max-Age=0"));
    // The old cookie, replayed, is dead.
    assert_eq!(status_of(page(&cookie)).await?, 303);
    Ok(())
}

#[tokio::test]
async fn a_session_ends_after_its_lifetime() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let node = TestNode::start_with(tmp.path(), |c| {
        c.session_ttl = Duration::from_secs(1);
    })
    .await?;
    let r = bare().get(login_link(&node).await?).send().await?;
    assert!(r.headers()["set-cookie"].to_str()?.contains("Max-Age=1"));
    let cookie = cookie_of(&r)?;
    let base = node.api.base.clone();
    let http = bare();
    assert_eq!(
        status_of(
            http.get(format!("{base}/api/tasks"))
                .header("cookie", &cookie)
        )
        .await?,
        200
    );
    wait_for("the session to expire", Duration::from_secs(10), || async {
        let status = status_of(
            http.get(format!("{base}/api/tasks"))
                .header("cookie", &cookie),
        )
        .await
        .ok()?;
        (status == 401).then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn rotating_the_token_ends_the_old_token_and_every_session() -> Result<()> {
    let node = TestNode::start().await?;
    let base = &node.api.base;
    let old = access_token(&node.dir)?;
    let cookie = session_of(&node).await?;
    let unused_link = login_link(&node).await?;
    let http = bare();
    let r = http
        .post(format!("{base}/api/token/rotate"))
        .bearer_auth(&old)
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 200);
    let new = access_token(&node.dir)?;
    assert_ne!(new, old);
    assert_eq!(new.len(), 64);
    let path = node.dir.join("access-token");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path)?.permissions());
    assert_eq!(mode & 0o777, 0o600);
    let tasks = |r: reqwest::RequestBuilder| status_of(r);
    assert_eq!(
        tasks(http.get(format!("{base}/api/tasks")).bearer_auth(&old)).await?,
        401
    );
    assert_eq!(
        tasks(
            http.get(format!("{base}/api/tasks"))
                .header("cookie", &cookie)
        )
        .await?,
        401
    );
    assert_eq!(status_of(http.get(&unused_link)).await?, 401);
    assert_eq!(
        tasks(http.get(format!("{base}/api/tasks")).bearer_auth(&new)).await?,
        200
    );
    Ok(())
}

/// Who got in is on record in the cluster's activity: each sign-in (with what, through which
/// named token, from where) and each rotation of a node's token; a failed login is not, so
/// that guessing cannot fill the replicated list.
#[tokio::test]
async fn sign_ins_and_a_rotation_are_listed_in_the_activity_and_failed_logins_are_not() -> Result<()>
{
    let node = TestNode::start().await?;
    let base = &node.api.base;
    let (status, made) = node
        .api
        .post("/api/tokens", &json!({"name": "alice"}))
        .await?;
    assert_eq!(status, 201, "{made}");
    let alice = made["token"].as_str().context("token")?.to_owned();
    let guesser = bare_from([127, 0, 0, 3]);
    let r = guesser
        .post(format!("{base}/login"))
        .form(&[("token", "wrong")])
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 401);
    let r = bare_from([127, 0, 0, 2])
        .post(format!("{base}/login"))
        .form(&[("token", alice.as_str())])
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 303);
    session_of(&node).await?;
    let r = bare()
        .post(format!("{base}/api/token/rotate"))
        .bearer_auth(access_token(&node.dir)?)
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 200);

    let new = access_token(&node.dir)?;
    let listed = |a: &Value| {
        (
            a["what"].as_str().unwrap_or_default().to_owned(),
            a["detail"].as_str().unwrap_or_default().to_owned(),
            a["via"].as_str().unwrap_or_default().to_owned(),
            a["client"].as_str().unwrap_or_default().to_owned(),
            a["token"].as_str().map(str::to_owned),
        )
    };
    let activity = wait_for(
        "the sign-ins and the rotation in the activity",
        Duration::from_secs(10),
        || async {
            let activity: Value = bare()
                .get(format!("{base}/api/activity?limit=20"))
                .bearer_auth(&new)
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let at_the_door: Vec<_> = activity
                .as_array()?
                .iter()
                .map(listed)
                .filter(|(what, ..)| what != "put_token")
                .collect();
            (at_the_door.len() >= 3).then_some(at_the_door)
        },
    )
    .await?;
    let ui = |detail: &str, client: &str, token: Option<&str>| {
        (
            "sign_in".to_owned(),
            detail.to_owned(),
            "ui".to_owned(),
            client.to_owned(),
            token.map(str::to_owned),
        )
    };
    for expected in [
        ui("token", "127.0.0.2", Some("alice")),
        ui("link", "127.0.0.1", None),
        (
            "rotate_token".to_owned(),
            String::new(),
            "api".to_owned(),
            "127.0.0.1".to_owned(),
            None,
        ),
    ] {
        assert!(
            activity.contains(&expected),
            "{expected:?} not in {activity:?}"
        );
    }
    assert_eq!(
        activity.len(),
        3,
        "the failed login is not listed: {activity:?}"
    );
    Ok(())
}

#[tokio::test]
async fn failed_logins_are_limited_per_client_address() -> Result<()> {
    let node = TestNode::start().await?;
    let base = &node.api.base;
    let token = access_token(&node.dir)?;
    let http = bare();
    let login = |t: &str| {
        http.post(format!("{base}/login"))
            .form(&[("token", t.to_owned())])
    };
    for _ in 0..5 {
        assert_eq!(status_of(login("wrong")).await?, 401);
    }
    let r = login("wrong").send().await?;
    assert_eq!(r.status().as_u16(), 429);
    let retry: u64 = r.headers()["retry-after"].to_str()?.parse()?;
    assert!((1..=60).contains(&retry), "{retry}");
    // While limited, not even the right token is checked, in the form or as a bearer.
    assert_eq!(status_of(login(&token)).await?, 429);
    assert_eq!(
        status_of(http.get(format!("{base}/api/tasks")).bearer_auth(&token)).await?,
        429
    );
    assert_eq!(
        status_of(http.get(format!("{base}/login?code=nope"))).await?,
        429
    );
    // Another address is not limited.
    let other = bare_from([127, 0, 0, 2]);
    let r = other
        .post(format!("{base}/login"))
        .form(&[("token", token.as_str())])
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 303);
    Ok(())
}

#[tokio::test]
async fn bad_login_input_answers_4xx_or_a_local_redirect() -> Result<()> {
    let node = TestNode::start().await?;
    let base = &node.api.base;
    let http = bare();
    let nexts = [
        "/%09/evil.example",
        "%2F%0D%0ASet-Cookie:%20x=1",
        "/%0d%0aLocation:%20http://evil.example",
        "//x",
        "/%5Cx",
        "/\\x",
        "%FF%FE",
        "https://evil.example/",
        "/%E2%80%AE",
    ];
    for next in nexts {
        // With a good login link: a redirect, always to a local path.
        let r = http
            .get(format!("{}&next={next}", login_link(&node).await?))
            .send()
            .await?;
        assert_eq!(r.status().as_u16(), 303, "{next}");
        assert_eq!(r.headers()["location"], "/index", "{next}");
        // The form login alike.
        let r = http
            .post(format!("{base}/login"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("token={}&next={next}", access_token(&node.dir)?))
            .send()
            .await?;
        assert_eq!(r.status().as_u16(), 303, "{next}");
        assert_eq!(r.headers()["location"], "/index", "{next}");
        // And the page itself renders.
        let status = status_of(http.get(format!("{base}/login?next={next}"))).await?;
        assert_eq!(status, 200, "{next}");
    }
    // A form that is not one, or too large.
    for body in ["%FF=%FF", "next=/x", &"a".repeat(100_000)] {
        let r = http
            .post(format!("{base}/login"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.to_owned())
            .send()
            .await?;
        let status = r.status().as_u16();
        assert!((400..500).contains(&status), "{status} for {body:.20}");
    }
    // A non-UTF-8 Host, a missing Host.
    let raw = raw_request(
        node.addr,
        b"GET /login HTTP/1.1\r\nHost: \xff\xfe\r\nConnection: close\r\n\r\n",
    )
    .await?;
    assert!(raw.starts_with("HTTP/1.1 4"), "{raw}");
    let raw = raw_request(node.addr, b"GET /login HTTP/1.0\r\n\r\n").await?;
    assert!(
        raw.starts_with("HTTP/1.0 4") || raw.starts_with("HTTP/1.1 4"),
        "{raw}"
    );
    Ok(())
}

/// Sends `request` on a new connection and reads the answer until the server closes it.
async fn raw_request(addr: SocketAddr, request: &[u8]) -> Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(request).await?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await??;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

#[tokio::test]
async fn slow_connections_neither_block_the_api_nor_stay_open() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let node = TestNode::start_with(tmp.path(), |c| {
        c.header_read_timeout = Duration::from_secs(1);
    })
    .await?;
    let mut slow = Vec::new();
    for i in 0..200 {
        let mut s = TcpStream::connect(node.addr).await?;
        if i % 2 == 0 {
            s.write_all(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                .await?;
        } // the others send nothing at all
        slow.push(s);
    }
    let (status, health) = node.api.get("/api/health").await?;
    assert_eq!(status, 200, "{health}");
    // Each is closed by the node once the timeout has passed (read gives EOF or a reset).
    for (i, s) in slow.iter_mut().enumerate() {
        let mut buf = [0u8; 512];
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {} // a 408 answer before the close is fine
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "slow connection {i} still open after 10 s");
    }
    Ok(())
}

const HEALTH: &[u8] = b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";

/// Whether the node closes `stream` within 10 s (an empty read or a reset).
async fn closed(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test]
async fn at_the_cap_a_silent_connection_makes_room_and_a_busy_one_does_not() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let node = TestNode::start_with(tmp.path(), |c| {
        c.max_connections = 20;
    })
    .await?;
    // (Raw requests that close: a pooled client connection would hold a slot.)
    let answer = raw_request(node.addr, HEALTH).await?;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Silent connections fill the cap; a real request still gets through, by closing the
    // oldest of them.
    let mut silent = Vec::new();
    for _ in 0..30 {
        silent.push(TcpStream::connect(node.addr).await?);
    }
    let answer = raw_request(node.addr, HEALTH).await?;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        closed(&mut silent[0]).await,
        "the oldest silent connection stays open"
    );
    drop(silent);

    // Connections that have sent a request (kept alive) are not shed: beyond the cap a new
    // connection is closed unanswered.
    let mut busy = Vec::new();
    for i in 0..20 {
        let mut s = TcpStream::connect(node.addr).await?;
        s.write_all(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await?;
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await??;
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "connection {i}");
        busy.push(s);
    }
    let answer = raw_request(node.addr, HEALTH).await.unwrap_or_default();
    assert!(answer.is_empty(), "answered beyond the cap: {answer}");
    drop(busy);
    wait_for("a free slot", Duration::from_secs(10), || async {
        let answer = raw_request(node.addr, HEALTH).await.ok()?;
        answer.starts_with("HTTP/1.1 200").then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_tls_node_answers_over_tls_with_secure_cookies() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let node = TestNode::start_with(tmp.path(), |c| {
        c.tls = Some(taskmesh::config::TlsConfig::default());
    })
    .await?;
    let token = access_token(&node.dir)?;
    let cert = std::fs::read(tmp.path().join("tls-cert.pem"))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::pem::PemObject::pem_slice_iter(&cert) {
        roots.add(c?)?;
    }
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let tls_request = |request: String| {
        let connector = connector.clone();
        let addr = node.addr;
        async move {
            let tcp = TcpStream::connect(addr).await?;
            let name = rustls::pki_types::ServerName::try_from("localhost")?;
            let mut tls = connector.connect(name, tcp).await?;
            tls.write_all(request.as_bytes()).await?;
            let mut answer = Vec::new();
            let _ =
                tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut answer)).await?;
            anyhow::Ok(String::from_utf8_lossy(&answer).into_owned())
        }
    };
    let answer = tls_request(format!(
        "POST /api/login-links HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    ))
    .await?;
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    let body: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).context("body")?)?;
    let link = body["url"].as_str().context("url")?;
    assert!(link.starts_with("https://127.0.0.1:"), "{link}");
    let path = &link[link.find("/login").context("path")?..];
    let answer = tls_request(format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    ))
    .await?;
    assert!(answer.starts_with("HTTP/1.1 303"), "{answer}");
    let cookie_line = answer
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .context("set-cookie")?;
    assert!(cookie_line.contains("; Secure"), "{cookie_line}");
    // Plain HTTP on the TLS port gets no answer.
    let plain = raw_request(
        node.addr,
        b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap_or_default();
    assert!(!plain.contains("\"status\""), "{plain}");
    Ok(())
}

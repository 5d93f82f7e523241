//! A minimal W3C WebDriver client for headless Chromium through chromedriver (Debian packages
//! `chromium` and `chromium-driver`), enough to click through the web UI.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::wait_for;

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver process and one browser session.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
    _profile: tempfile::TempDir,
}

/// An element on the page.
#[derive(Clone)]
pub struct Element {
    id: String,
}

impl Browser {
    /// Starts chromedriver on a free port and opens a headless Chromium session.
    pub async fn start() -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        // Its own process group, so that dropping the browser also ends the Chromium it started.
        let driver = std::os::unix::process::CommandExt::process_group(&mut Command::new("chromedriver"), 0)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting chromedriver (Debian package chromium-driver; scripts/install-deps installs it)")?;
        let base = format!("http://127.0.0.1:{port}");
        let http = crate::http_client().build()?;
        wait_for("chromedriver", Duration::from_secs(20), || async {
            http.get(format!("{base}/status"))
                .send()
                .await
                .ok()
                .filter(|r| r.status().is_success())
        })
        .await?;
        let profile = tempfile::tempdir()?;
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--disable-quic", "--no-first-run", "--disable-background-networking",
                         "--disable-component-update", "--disable-sync", "--window-size=1280,900",
                         format!("--user-data-dir={}", profile.path().display())]
            }
        }}});
        let r: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await?
            .json()
            .await?;
        let session = r["value"]["sessionId"]
            .as_str()
            .with_context(|| format!("no session: {r}"))?
            .to_owned();
        Ok(Self {
            driver,
            base,
            session,
            http,
            _profile: profile,
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut req = self.http.request(method, url);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let r: Value = req.send().await?.json().await?;
        if let Some(err) = r["value"]["error"].as_str() {
            bail!("webdriver {path}: {err}: {}", r["value"]["message"]);
        }
        Ok(r["value"].clone())
    }

    /// A browser logged in to the node behind `api` through a one-time login link, as a user
    /// would be (it lands on /peers).
    pub async fn logged_in(api: &crate::Api) -> Result<Self> {
        let (status, link) = api
            .post("/api/login-links", &serde_json::Value::Null)
            .await?;
        anyhow::ensure!(status == 201, "login-links answered {status}: {link}");
        let url = link["url"].as_str().unwrap_or_default().to_owned();
        let browser = Self::start().await?;
        browser.goto(&format!("{url}&next=/peers")).await?;
        wait_for(
            "the login to land on /peers",
            Duration::from_secs(10),
            || async {
                let at = browser
                    .script("return location.pathname", vec![])
                    .await
                    .ok()?;
                (at == json!("/peers")).then_some(())
            },
        )
        .await?;
        Ok(browser)
    }

    pub async fn goto(&self, url: &str) -> Result<()> {
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await
            .map(|_| ())
    }

    /// Runs JavaScript in the page and returns its result.
    pub async fn script(&self, js: &str, args: Vec<Value>) -> Result<Value> {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": js, "args": args})),
        )
        .await
    }

    /// Runs asynchronous JavaScript: the script calls its last argument with the result.
    pub async fn script_async(&self, js: &str, args: Vec<Value>) -> Result<Value> {
        self.call(
            reqwest::Method::POST,
            "/execute/async",
            Some(json!({"script": js, "args": args})),
        )
        .await
    }

    pub async fn find_all(&self, css: &str) -> Result<Vec<Element>> {
        let v = self
            .call(
                reqwest::Method::POST,
                "/elements",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await?;
        Ok(v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e[ELEMENT].as_str().map(|id| Element { id: id.to_owned() }))
            .collect())
    }

    /// Waits until `css` matches a displayed element and returns it.
    pub async fn find(&self, css: &str) -> Result<Element> {
        wait_for(
            &format!("element `{css}`"),
            Duration::from_secs(10),
            || async {
                for e in self.find_all(css).await.ok()? {
                    if self.displayed(&e).await.unwrap_or(false) {
                        return Some(e);
                    }
                }
                None
            },
        )
        .await
    }

    pub async fn displayed(&self, e: &Element) -> Result<bool> {
        Ok(self
            .call(
                reqwest::Method::GET,
                &format!("/element/{}/displayed", e.id),
                None,
            )
            .await?
            .as_bool()
            == Some(true))
    }

    pub async fn click(&self, e: &Element) -> Result<()> {
        self.call(
            reqwest::Method::POST,
            &format!("/element/{}/click", e.id),
            Some(json!({})),
        )
        .await
        .map(|_| ())
    }

    pub async fn clear(&self, e: &Element) -> Result<()> {
        self.call(
            reqwest::Method::POST,
            &format!("/element/{}/clear", e.id),
            Some(json!({})),
        )
        .await
        .map(|_| ())
    }

    pub async fn type_text(&self, e: &Element, text: &str) -> Result<()> {
        self.call(
            reqwest::Method::POST,
            &format!("/element/{}/value", e.id),
            Some(json!({"text": text})),
        )
        .await
        .map(|_| ())
    }

    pub async fn text(&self, e: &Element) -> Result<String> {
        Ok(self
            .call(
                reqwest::Method::GET,
                &format!("/element/{}/text", e.id),
                None,
            )
            .await?
            .as_str()
            .unwrap_or("")
            .to_owned())
    }

    pub async fn value(&self, e: &Element) -> Result<String> {
        Ok(self
            .call(
                reqwest::Method::GET,
                &format!("/element/{}/property/value", e.id),
                None,
            )
            .await?
            .as_str()
            .unwrap_or("")
            .to_owned())
    }

    /// Accepts a confirm() dialog.
    pub async fn accept_alert(&self) -> Result<()> {
        self.call(reqwest::Method::POST, "/alert/accept", Some(json!({})))
            .await
            .map(|_| ())
    }

    /// Dismisses a confirm() dialog (its Cancel).
    pub async fn dismiss_alert(&self) -> Result<()> {
        self.call(reqwest::Method::POST, "/alert/dismiss", Some(json!({})))
            .await
            .map(|_| ())
    }

    /// Resizes the window (a phone is 390 × 844).
    pub async fn set_window_size(&self, width: u32, height: u32) -> Result<()> {
        self.call(
            reqwest::Method::POST,
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        )
        .await
        .map(|_| ())
    }

    /// Runs a Chrome DevTools Protocol command (emulated media, device metrics).
    pub async fn cdp(&self, cmd: &str, params: Value) -> Result<Value> {
        self.call(
            reqwest::Method::POST,
            "/goog/cdp/execute",
            Some(json!({"cmd": cmd, "params": params})),
        )
        .await
    }

    pub async fn screenshot_png(&self) -> Result<Vec<u8>> {
        use base64_decode::decode;
        let v = self.call(reqwest::Method::GET, "/screenshot", None).await?;
        decode(v.as_str().unwrap_or(""))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(self.driver.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.driver.wait();
    }
}

mod base64_decode {
    //! Just enough base64 to read a screenshot.
    pub fn decode(s: &str) -> anyhow::Result<Vec<u8>> {
        let value = |c: u8| -> Option<u32> {
            Some(match c {
                b'A'..=b'Z' => c - b'A',
                b'a'..=b'z' => c - b'a' + 26,
                b'0'..=b'9' => c - b'0' + 52,
                b'+' => 62,
                b'/' => 63,
                _ => return None,
            } as u32)
        };
        let mut out = Vec::with_capacity(s.len() * 3 / 4);
        let (mut acc, mut bits) = (0u32, 0);
        for c in s.bytes().filter(|c| *c != b'=' && !c.is_ascii_whitespace()) {
            acc = (acc << 6) | value(c).ok_or_else(|| anyhow::anyhow!("bad base64"))?;
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
            }
        }
        Ok(out)
    }
}

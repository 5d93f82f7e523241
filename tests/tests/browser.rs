//! The web UI in headless Chromium: the seed's flow (New Task, expand in place, the JSON box with
//! errors where they are, the when radios, Save / Execute now / Remove), settings, escaping.
//! Screenshots of each page land in target/ui-screenshots/.

use std::time::Duration;

use anyhow::Result;
use serde_json::{Value, json};
use taskmesh_tests::webdriver::Browser;
use taskmesh_tests::{TestNode, wait_for};

async fn screenshot(browser: &Browser, name: &str) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/ui-screenshots");
    if let (Ok(png), Ok(())) = (
        browser.screenshot_png().await,
        std::fs::create_dir_all(&dir),
    ) {
        let _ = std::fs::write(dir.join(format!("{name}.png")), png);
    }
}

async fn text_of(browser: &Browser, css: &str) -> String {
    match browser.find(css).await {
        Ok(e) => browser.text(&e).await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

async fn logged_in(node: &TestNode) -> Result<Browser> {
    Browser::logged_in(&node.api).await
}

async fn wait_text(browser: &Browser, css: &str, needle: &str) -> Result<String> {
    wait_for(
        &format!("`{needle}` in {css}"),
        Duration::from_secs(10),
        || async {
            let text = text_of(browser, css).await;
            text.contains(needle).then_some(text)
        },
    )
    .await
}

#[tokio::test]
async fn the_task_flow_of_the_seed_works_in_a_browser() -> Result<()> {
    let node = TestNode::start().await?;
    let base = node.api.base.clone();
    let browser = logged_in(&node).await?;
    browser.goto(&format!("{base}/index")).await?;

    // New Task appends an empty task at the bottom, already expanded.
    let new = browser.find("#new-task").await?;
    browser.click(&new).await?;
    let name = browser.find("tbody.new form.panel .f-name").await?;
    browser.type_text(&name, "hello-ui").await?;
    let spec = browser.find("tbody.new .f-spec").await?;
    browser.clear(&spec).await?;
    let typed = "{\n  \"command\": [\"echo\", \"hi from the browser\"],,\n  \"priority\": 1\n}";
    browser.type_text(&spec, typed).await?;
    browser
        .click(&browser.find("tbody.new .save").await?)
        .await?;
    // The syntax error shows next to the JSON box, with its line; what was typed stays.
    let error = wait_text(&browser, "tbody.new [data-err=spec]", "line 2").await?;
    assert!(error.to_lowercase().contains("json"), "{error}");
    assert_eq!(browser.value(&spec).await?, typed);
    screenshot(&browser, "task-panel-error").await;

    // Values of the wrong kind are reported all at once, in plain words, each with its line.
    browser.clear(&spec).await?;
    browser
        .type_text(
            &spec,
            "{\n  \"command\": \"echo\",\n  \"priority\": \"high\"\n}",
        )
        .await?;
    browser
        .click(&browser.find("tbody.new .save").await?)
        .await?;
    let errors = wait_text(&browser, "tbody.new [data-err=spec]", "priority").await?;
    assert!(
        errors.contains("line 2") && errors.contains("\"command\" must be a list"),
        "{errors}"
    );
    assert!(
        errors.contains("line 3") && errors.contains("\"priority\" must be a whole number"),
        "{errors}"
    );

    // A bad crontab entry is reported at the schedule field.
    browser.clear(&spec).await?;
    browser
        .type_text(&spec, "{\"command\": [\"echo\", \"hi from the browser\"]}")
        .await?;
    browser
        .click(&browser.find("tbody.new .f-mode[value=cron]").await?)
        .await?;
    let schedule = browser.find("tbody.new .f-schedule").await?;
    browser.clear(&schedule).await?;
    browser.type_text(&schedule, "61 * * * *").await?;
    browser
        .click(&browser.find("tbody.new .save").await?)
        .await?;
    wait_text(&browser, "tbody.new [data-err=schedule]", "minute").await?;
    assert_eq!(browser.value(&schedule).await?, "61 * * * *");
    // The field reads a good entry back in words, with its next five times.
    browser.clear(&schedule).await?;
    browser.type_text(&schedule, "0 3 * * 1-5").await?;
    wait_text(
        &browser,
        "tbody.new .cron-preview",
        "Every weekday at 03:00",
    )
    .await?;
    let times = browser.find_all("tbody.new .cron-preview li").await?;
    assert_eq!(times.len(), 5);

    // Where, concurrency and the time limit are controls; the last two write into the JSON.
    let select = |css: &'static str, value: &'static str| {
        let browser = &browser;
        async move {
            browser
                .script(
                    &format!(
                        "const s = document.querySelector('{css}'); s.value = '{value}';
                         s.dispatchEvent(new Event('change', {{bubbles: true}}));"
                    ),
                    vec![],
                )
                .await
        }
    };
    select("tbody.new .f-placement", "all").await?;
    select("tbody.new .f-concurrency", "allow").await?;
    let timeout = browser.find("tbody.new .f-timeout").await?;
    browser.type_text(&timeout, "30s").await?;
    let written: Value = serde_json::from_str(&browser.value(&spec).await?)?;
    assert_eq!(written["concurrency"], "allow");
    assert_eq!(written["timeout"], "30s");
    assert_eq!(written["command"], json!(["echo", "hi from the browser"]));

    // A rule whose target does not exist is refused at save, at its rule, in words.
    browser
        .click(&browser.find("tbody.new .add-rule").await?)
        .await?;
    let on = browser.find("tbody.new .rule .f-on").await?;
    browser.clear(&on).await?;
    browser.type_text(&on, "!0").await?;
    select("tbody.new .rule .f-action", "run").await?;
    let arg = browser.find("tbody.new .rule .f-arg").await?;
    browser.type_text(&arg, "no-such-task").await?;
    browser
        .click(&browser.find("tbody.new .save").await?)
        .await?;
    wait_text(
        &browser,
        "tbody.new .rule [data-err=rule]",
        "no task is called `no-such-task`",
    )
    .await?;
    let (_, tasks) = node.api.get("/api/tasks").await?;
    assert_eq!(tasks, json!([]), "nothing was saved");
    browser
        .click(&browser.find("tbody.new .rule .remove-rule").await?)
        .await?;

    // Manual, then Execute now: saves and starts, with a link to the run.
    browser
        .click(&browser.find("tbody.new .f-mode[value=manual]").await?)
        .await?;
    browser
        .click(&browser.find("tbody.new .execute").await?)
        .await?;
    let task = wait_for("the task to be saved", Duration::from_secs(10), || async {
        let (status, t) = node.api.get("/api/tasks/hello-ui").await.ok()?;
        (status == 200).then_some(t)
    })
    .await?;
    let id = task["id"].as_str().expect("id").to_owned();
    assert_eq!(task["when"]["mode"], "manual");
    assert_eq!(task["placement"], "all");
    assert_eq!(task["spec"]["concurrency"], "allow");
    assert_eq!(task["spec"]["timeout"], "30s");
    let link = browser.find(&format!("#task-{id} .status a")).await?;
    screenshot(&browser, "tasks-expanded").await;
    browser.click(&link).await?;
    wait_text(&browser, "#run-log", "hi from the browser").await?;
    wait_text(&browser, "#run-status", "succeeded").await?;
    screenshot(&browser, "run").await;

    // Back on the list, a click on the row expands it in place; Remove removes it.
    browser.goto(&format!("{base}/index")).await?;
    let row = browser.find(&format!("#task-{id} tr.summary td")).await?;
    browser.click(&row).await?;
    let remove = browser.find(&format!("#task-{id} .remove")).await?;
    browser.click(&remove).await?;
    browser.accept_alert().await?;
    wait_for(
        "the task to be removed",
        Duration::from_secs(10),
        || async {
            let (status, _) = node.api.get(&format!("/api/tasks/{id}")).await.ok()?;
            (status == 404).then_some(())
        },
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn user_text_is_escaped_and_settings_validate_in_place() -> Result<()> {
    let node = TestNode::start().await?;
    let base = node.api.base.clone();
    let evil = "<img src=x onerror=\"document.title='pwned'\">";
    node.api
        .create_task(&json!({"name": evil, "spec": {"command": ["echo", "<b>bold</b>"]}, "when": {"mode": "manual"}}))
        .await?;
    let browser = logged_in(&node).await?;
    browser.goto(&format!("{base}/index")).await?;
    let row = browser.find("tbody.task tr.summary td").await?;
    assert!(browser.text(&row).await?.contains(evil));
    browser.click(&row).await?;
    browser.find("tbody.task form.panel").await?;
    let injected = browser.script("return document.querySelectorAll('img[src=\"x\"]').length + [...document.querySelectorAll('b')].filter(b => b.textContent === 'bold').length", vec![]).await?;
    assert_eq!(injected, json!(0), "user text became markup");
    assert_ne!(
        browser.script("return document.title", vec![]).await?,
        json!("pwned")
    );

    browser.goto(&format!("{base}/settings")).await?;
    let editor = browser.find("#settings-editor").await?;
    let text: Value = serde_json::from_str(&browser.value(&editor).await?)?;
    assert_eq!(text["cluster"]["retention_days"], 14);
    browser.clear(&editor).await?;
    browser
        .type_text(&editor, "{\"cluster\": {\"retention_days\": 0}}")
        .await?;
    browser
        .click(&browser.find("#settings-form button[type=submit]").await?)
        .await?;
    wait_text(&browser, "#settings-errors", "cluster.retention_days").await?;
    browser.clear(&editor).await?;
    browser
        .type_text(
            &editor,
            "{\"cluster\": {\"retention_days\": 7}, \"node\": {\"slots\": 3}}",
        )
        .await?;
    browser
        .click(&browser.find("#settings-form button[type=submit]").await?)
        .await?;
    wait_for(
        "the settings to be saved",
        Duration::from_secs(10),
        || async {
            let s = node.handle.settings(false);
            (s.cluster.retention_days == 7 && s.node.slots == 3).then_some(())
        },
    )
    .await?;
    screenshot(&browser, "settings").await;
    // The cluster key is masked until asked for.
    let key = browser.find("#cluster-key").await?;
    assert_eq!(browser.text(&key).await?, "********");
    browser
        .click(&browser.find("#cluster-key-show").await?)
        .await?;
    let shown = wait_for("the key to be shown", Duration::from_secs(10), || async {
        let text = text_of(&browser, "#cluster-key").await;
        (text.len() == 64).then_some(text)
    })
    .await?;
    assert_eq!(Some(shown), node.handle.settings(true).node.cluster_key);
    browser.goto(&format!("{base}/node")).await?;
    browser.find("main").await?;
    screenshot(&browser, "node").await;
    Ok(())
}

#[tokio::test]
async fn settings_send_a_test_notification_and_show_the_answer() -> Result<()> {
    let fake = taskmesh_tests::fake_http::FakeHttp::start().await?;
    let node = TestNode::start().await?;
    let base = node.api.base.clone();
    let mut settings = node.handle.settings(true);
    settings.cluster.channels = serde_json::from_value(json!({
        "hook": {"kind": "webhook", "url": format!("{}/hook", fake.url)}
    }))?;
    node.handle.put_settings(settings).await?;

    let browser = logged_in(&node).await?;
    browser.goto(&format!("{base}/settings")).await?;
    wait_text(&browser, "#channel-rows", "hook").await?;
    let button = browser
        .find("#channel-rows tr[data-channel=hook] button")
        .await?;
    browser.click(&button).await?;
    wait_text(
        &browser,
        "#channel-rows tr[data-channel=hook] td.result",
        "Delivered (webhook).",
    )
    .await?;
    assert_eq!(fake.seen().len(), 1);
    assert_eq!(fake.seen()[0].path, "/hook");
    screenshot(&browser, "settings-channels").await;

    // A receiver's refusal shows next to the button.
    fake.answer_next(403, json!({"error": "forbidden"}));
    browser.click(&button).await?;
    wait_text(
        &browser,
        "#channel-rows tr[data-channel=hook] td.result",
        "the webhook answered 403 Forbidden: forbidden",
    )
    .await?;

    // A channel saved in the editor is listed at once.
    let editor = browser.find("#settings-editor").await?;
    browser.clear(&editor).await?;
    let doc = json!({"cluster": {"channels": {
        "hook": {"kind": "webhook", "url": format!("{}/hook", fake.url)},
        "chat": {"kind": "telegram", "chat_id": "42"},
    }}});
    browser.type_text(&editor, &doc.to_string()).await?;
    browser
        .click(&browser.find("#settings-form button[type=submit]").await?)
        .await?;
    wait_text(&browser, "#channel-rows", "chat").await?;

    // The webhook URL carries a token: the editor shows it masked, and saving the masked
    // settings as they are keeps it, so "Send test" still reaches the hook.
    browser.goto(&format!("{base}/settings")).await?;
    let editor = browser.find("#settings-editor").await?;
    let shown = browser.value(&editor).await?;
    assert!(
        shown.contains("********") && !shown.contains(&fake.url),
        "{shown}"
    );
    browser
        .click(&browser.find("#settings-form button[type=submit]").await?)
        .await?;
    wait_text(&browser, "#settings-status", "Saved.").await?;
    let before = fake.seen().len();
    let button = browser
        .find("#channel-rows tr[data-channel=hook] button")
        .await?;
    browser.click(&button).await?;
    wait_text(
        &browser,
        "#channel-rows tr[data-channel=hook] td.result",
        "Delivered (webhook).",
    )
    .await?;
    assert_eq!(fake.seen().len(), before + 1);
    assert_eq!(fake.seen()[before].path, "/hook");
    Ok(())
}

#[tokio::test]
async fn a_browser_gets_in_by_a_login_link_only_and_logs_out() -> Result<()> {
    let node = TestNode::start().await?;
    let base = node.api.base.clone();
    // Without logging in: the login page, whatever was asked for.
    let stranger = Browser::start().await?;
    stranger.goto(&format!("{base}/settings")).await?;
    stranger.find("input[name=token]").await?;
    screenshot(&stranger, "login").await;
    drop(stranger);

    let browser = logged_in(&node).await?;
    browser.goto(&format!("{base}/index")).await?;
    // The page's script runs under the CSP: New Task opens a panel.
    browser.click(&browser.find("#new-task").await?).await?;
    browser.find("tbody.new form.panel .f-name").await?;
    browser.click(&browser.find("#logout").await?).await?;
    browser.find("input[name=token]").await?;
    // The session is gone on the server: pages send the browser back to the login page.
    browser.goto(&format!("{base}/settings")).await?;
    browser.find("input[name=token]").await?;
    assert!(browser.find_all("#settings-editor").await?.is_empty());
    Ok(())
}

async fn rows_named(browser: &Browser) -> Result<Vec<String>> {
    let names = browser
        .script(
            "return [...document.querySelectorAll('#task-table > tbody.task td.name .row-toggle')].map(b => b.textContent.trim())",
            vec![],
        )
        .await?;
    Ok(serde_json::from_value(names)?)
}

/// The list at scale: with 10,000 tasks the first page is one page of rows and under 200 KB;
/// Next goes on; the search finds one task, whose row opens its panel from the task's page;
/// the row's toggle disables it; a Save over a change made since is refused, says what changed,
/// keeps what was typed, and saves it when asked.
#[tokio::test]
async fn ten_thousand_tasks_page_search_toggle_and_refuse_a_stale_save() -> Result<()> {
    let node = TestNode::start().await?;
    let base = node.api.base.clone();
    node.adopt_tasks(0, 10_000).await?;
    let browser = logged_in(&node).await?;
    browser.goto(&format!("{base}/index")).await?;
    wait_text(&browser, "#task-count", "1–50 of 10,000 tasks").await?;
    let bytes = browser
        .script(
            "return performance.getEntriesByType('navigation')[0].decodedBodySize",
            vec![],
        )
        .await?;
    let bytes = bytes.as_u64().unwrap_or(u64::MAX);
    assert!(bytes < 200_000, "the first page is {bytes} bytes");
    let rows = rows_named(&browser).await?;
    assert_eq!(rows.len(), 50);
    assert_eq!((rows[0].as_str(), rows[49].as_str()), ("t00000", "t00049"));
    screenshot(&browser, "tasks-many").await;

    browser
        .click(&browser.find("nav.pager a[rel=next]").await?)
        .await?;
    wait_text(&browser, "#task-count", "51–100 of 10,000 tasks").await?;
    assert_eq!(rows_named(&browser).await?[0], "t00050");

    let search = browser.find("#task-filter input[name=q]").await?;
    browser.type_text(&search, "T09999").await?;
    browser
        .click(&browser.find("#task-filter button[type=submit]").await?)
        .await?;
    wait_text(&browser, "#task-count", "1 matching, of 10,000 tasks").await?;
    assert_eq!(rows_named(&browser).await?, ["t09999"]);

    // The row opens its panel, fetched from the task's page.
    browser
        .click(&browser.find("#task-id-09999 tr.summary td.name").await?)
        .await?;
    let name = browser.find("#task-id-09999 form.panel .f-name").await?;
    assert_eq!(browser.value(&name).await?, "t09999");

    // The toggle disables the task in the cluster, and the row says so.
    browser
        .click(&browser.find("#task-id-09999 button.toggle").await?)
        .await?;
    wait_for(
        "the task to be disabled",
        Duration::from_secs(10),
        || async {
            let (_, task) = node.api.get("/api/tasks/id-09999").await.ok()?;
            (task["enabled"] == json!(false)).then_some(())
        },
    )
    .await?;
    wait_text(&browser, "#task-id-09999 button.toggle", "disabled").await?;

    // Someone changes the task while the panel is open; Save is refused and shows the change.
    let (status, body) = node
        .api
        .send(
            reqwest::Method::PUT,
            "/api/tasks/id-09999",
            Some(
                &json!({"name": "t09999", "spec": {"command": ["echo", "theirs"]},
                         "when": {"mode": "manual"}, "enabled": false}),
            ),
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    let spec = browser.find("#task-id-09999 .f-spec").await?;
    browser.clear(&spec).await?;
    let mine = "{\"command\": [\"echo\", \"mine\"]}";
    browser.type_text(&spec, mine).await?;
    browser
        .click(&browser.find("#task-id-09999 .save").await?)
        .await?;
    let told = wait_text(&browser, "#task-id-09999 .conflict", "Changed there").await?;
    assert!(told.contains("the JSON"), "{told}");
    assert_eq!(browser.value(&spec).await?, mine, "what was typed stays");
    let (_, now) = node.api.get("/api/tasks/id-09999").await?;
    assert_eq!(now["spec"]["command"], json!(["echo", "theirs"]));
    screenshot(&browser, "task-conflict").await;

    browser
        .click(&browser.find("#task-id-09999 .keep-mine").await?)
        .await?;
    wait_for("mine to be saved", Duration::from_secs(10), || async {
        let (_, task) = node.api.get("/api/tasks/id-09999").await.ok()?;
        (task["spec"]["command"] == json!(["echo", "mine"])).then_some(())
    })
    .await?;
    Ok(())
}

/// Labels show on the rows and filter the list; the panel edits them and the description.
#[tokio::test]
async fn labels_group_tasks_and_the_panel_edits_them() -> Result<()> {
    let node = TestNode::start().await?;
    let base = node.api.base.clone();
    let id = node
        .api
        .create_task(
            &json!({"name": "backup", "labels": ["team=ops"], "description": "Backs up the wiki.",
            "spec": {"command": ["true"]}, "when": {"mode": "manual"}}),
        )
        .await?;
    node.api
        .create_task(&json!({"name": "deploy", "labels": ["team=web"],
            "spec": {"command": ["true"]}, "when": {"mode": "manual"}}))
        .await?;
    let browser = logged_in(&node).await?;
    browser.goto(&format!("{base}/index")).await?;
    let row = format!("#task-{id}");
    wait_text(&browser, &format!("{row} td.name .labels"), "team=ops").await?;
    wait_text(
        &browser,
        &format!("{row} td.name .description"),
        "Backs up the wiki.",
    )
    .await?;
    browser
        .click(&browser.find(&format!("{row} td.name .labels a")).await?)
        .await?;
    wait_for(
        "the list filtered by the label",
        Duration::from_secs(10),
        || async {
            let rows = rows_named(&browser).await.ok()?;
            (rows == ["backup"]).then_some(())
        },
    )
    .await?;
    assert_eq!(
        browser
            .value(&browser.find("#task-filter select[name=label]").await?)
            .await?,
        "team=ops"
    );
    browser
        .click(
            &browser
                .find(&format!("{row} tr.summary button.row-toggle"))
                .await?,
        )
        .await?;
    let labels = browser.find(&format!("{row} form.panel .f-labels")).await?;
    assert_eq!(browser.value(&labels).await?, "team=ops");
    browser.clear(&labels).await?;
    browser.type_text(&labels, "team=ops, nightly").await?;
    let description = browser
        .find(&format!("{row} form.panel .f-description"))
        .await?;
    browser.clear(&description).await?;
    browser
        .type_text(&description, "Backs up the wiki; ask ops.")
        .await?;
    browser
        .click(&browser.find(&format!("{row} .save")).await?)
        .await?;
    wait_for(
        "the labels to be saved",
        Duration::from_secs(10),
        || async {
            let (_, task) = node.api.get(&format!("/api/tasks/{id}")).await.ok()?;
            (task["labels"] == json!(["team=ops", "nightly"])
                && task["description"] == "Backs up the wiki; ask ops.")
                .then_some(())
        },
    )
    .await?;
    // A bad label is refused at its field, and nothing is saved (the saved row is drawn anew).
    let labels = wait_for(
        "the panel after the save",
        Duration::from_secs(10),
        || async {
            let labels = browser
                .find(&format!("{row} form.panel .f-labels"))
                .await
                .ok()?;
            let value = browser.value(&labels).await.ok()?;
            (value == "team=ops nightly").then_some(labels)
        },
    )
    .await?;
    browser.clear(&labels).await?;
    browser.type_text(&labels, "team=ops -bad").await?;
    browser
        .click(&browser.find(&format!("{row} .save")).await?)
        .await?;
    wait_text(&browser, &format!("{row} [data-err=labels]"), "labels[1]").await?;
    assert_eq!(
        node.api.get(&format!("/api/tasks/{id}")).await?.1["labels"],
        json!(["team=ops", "nightly"])
    );
    screenshot(&browser, "task-labels").await;
    Ok(())
}

/// The widest thing on the page, in CSS pixels, and what it is when it is wider than `limit`.
async fn widest(browser: &Browser, limit: u32) -> Result<(u64, String)> {
    let v = browser
        .script(
            "const w = document.documentElement.scrollWidth; let what = '';
             if (w > arguments[0]) for (const e of document.querySelectorAll('body *')) {
               const r = e.getBoundingClientRect();
               if (r.right > arguments[0] + 1 && r.width > 0) { what = e.tagName + '.' + e.className; }
             }
             return [w, what];",
            vec![json!(limit)],
        )
        .await?;
    Ok((
        v[0].as_u64().unwrap_or(u64::MAX),
        v[1].as_str().unwrap_or("").to_owned(),
    ))
}

/// On a 390 px phone every page fits without sideways scrolling, with a task expanded and the
/// new-task panel open; under `prefers-color-scheme: dark` the pages turn dark.
#[tokio::test]
async fn every_page_fits_a_phone_and_turns_dark_when_the_system_is() -> Result<()> {
    let node = TestNode::start().await?;
    let base = node.api.base.clone();
    let id = node
        .api
        .create_task(&json!({"name": "nightly-backup-of-the-customer-database",
            "spec": {"command": ["echo", "a rather long line of output to show on the run page"],
                     "parameters": {"target": "customers-and-invoices-and-everything-else"}},
            "when": {"mode": "cron", "schedule": "0 3 * * 1-5", "timezone": "Europe/Berlin"},
            "exit_rules": [{"on": "!0", "action": "retry"}]}))
        .await?;
    let run = node.api.execute(&id).await?;
    let run_id = run["id"].as_str().unwrap_or_default().to_owned();
    let browser = logged_in(&node).await?;
    browser.set_window_size(390, 844).await?;
    let inner = browser.script("return window.innerWidth", vec![]).await?;
    assert!(
        inner.as_u64().is_some_and(|w| w <= 390),
        "the window is {inner} wide"
    );

    browser.goto(&format!("{base}/index")).await?;
    browser
        .click(
            &browser
                .find(&format!("#task-{id} tr.summary td.name"))
                .await?,
        )
        .await?;
    browser
        .find(&format!("#task-{id} form.panel .remove"))
        .await?;
    browser.click(&browser.find("#new-task").await?).await?;
    browser.find("tbody.new form.panel .save").await?;
    let (width, what) = widest(&browser, 390).await?;
    assert!(width <= 390, "/index is {width} px wide ({what})");
    screenshot(&browser, "phone-tasks").await;
    // The Remove button is within the screen.
    let right = browser
        .script(
            &format!(
                "return document.querySelector('#task-{id} .remove').getBoundingClientRect().right"
            ),
            vec![],
        )
        .await?;
    assert!(
        right.as_f64().is_some_and(|r| r <= 390.0),
        "Remove ends at {right}"
    );

    for page in [
        format!("/tasks/{id}"),
        "/dashboard".to_owned(),
        "/runs".to_owned(),
        "/settings".to_owned(),
        "/node".to_owned(),
        "/peers".to_owned(),
        "/activity".to_owned(),
        format!("/runs/{run_id}"),
        "/no-such-page".to_owned(),
    ] {
        browser.goto(&format!("{base}{page}")).await?;
        browser.find("main").await?;
        let (width, what) = widest(&browser, 390).await?;
        assert!(width <= 390, "{page} is {width} px wide ({what})");
    }
    screenshot(&browser, "phone-run").await;

    // Dark, as the system prefers: the page's background and text swap brightness.
    let brightness = |css: &'static str, prop: &'static str| {
        let browser = &browser;
        async move {
            let rgb = browser
                .script(
                    &format!("return getComputedStyle(document.querySelector('{css}')).{prop}"),
                    vec![],
                )
                .await?;
            let text = rgb.as_str().unwrap_or_default().to_owned();
            let parts: Vec<f64> = text
                .trim_start_matches("rgba(")
                .trim_start_matches("rgb(")
                .trim_end_matches(')')
                .split(',')
                .filter_map(|p| p.trim().parse().ok())
                .collect();
            anyhow::ensure!(parts.len() >= 3, "not a colour: {text}");
            anyhow::Ok((parts[0] * 0.299 + parts[1] * 0.587 + parts[2] * 0.114) / 255.0)
        }
    };
    browser.set_window_size(1280, 900).await?;
    browser.goto(&format!("{base}/index")).await?;
    browser.find("main").await?;
    assert!(
        brightness("body", "backgroundColor").await? > 0.8,
        "light by default"
    );
    browser
        .cdp(
            "Emulation.setEmulatedMedia",
            json!({"features": [{"name": "prefers-color-scheme", "value": "dark"}]}),
        )
        .await?;
    browser.goto(&format!("{base}/index")).await?;
    browser.find("main").await?;
    let (bg, text) = (
        brightness("body", "backgroundColor").await?,
        brightness("body", "color").await?,
    );
    assert!(
        bg < 0.2 && text > 0.7,
        "dark: background {bg:.2}, text {text:.2}"
    );
    let card = brightness(".table-wrap", "backgroundColor").await?;
    assert!(card < 0.25, "the task table is dark too: {card:.2}");
    screenshot(&browser, "tasks-dark").await;
    Ok(())
}

/// The header says when the node stops answering and when it is back; Reload on the settings
/// page asks before it drops an edit.
#[tokio::test]
async fn the_header_tells_a_node_that_stopped_answering_and_reload_asks_first() -> Result<()> {
    let node = TestNode::start().await?;
    let (base, addr, dir) = (node.api.base.clone(), node.addr, node.dir.clone());
    let browser = logged_in(&node).await?;
    browser.goto(&format!("{base}/settings")).await?;
    let editor = browser.find("#settings-editor").await?;
    let typed = "{\"cluster\": {\"retention_days\": 3}}";
    browser.clear(&editor).await?;
    browser.type_text(&editor, typed).await?;
    browser
        .click(&browser.find("#settings-reset").await?)
        .await?;
    browser.dismiss_alert().await?;
    assert_eq!(
        browser.value(&editor).await?,
        typed,
        "Cancel keeps the edit"
    );
    browser
        .click(&browser.find("#settings-reset").await?)
        .await?;
    browser.accept_alert().await?;
    wait_for("the reload", Duration::from_secs(10), || async {
        let text = browser.value(&editor).await.ok()?;
        text.contains("retention_days\": 14").then_some(())
    })
    .await?;

    let tmp = node.stop().await;
    let down = wait_text(&browser, ".node-name", "not answering since").await?;
    assert!(
        browser
            .script(
                "return document.querySelector('.node-name').classList.contains('down')",
                vec![]
            )
            .await?
            == json!(true),
        "{down}"
    );
    screenshot(&browser, "node-down").await;
    let node = TestNode::start_with(&dir, |c| c.listen = addr).await?;
    wait_for(
        "the header to see the node back",
        Duration::from_secs(15),
        || async {
            let down = browser
                .script(
                    "return document.querySelector('.node-name').classList.contains('down')",
                    vec![],
                )
                .await
                .ok()?;
            (down == json!(false)).then_some(())
        },
    )
    .await?;
    node.stop().await;
    drop(tmp);
    Ok(())
}

/// The dashboard's figures are the API's (`/api/stats`, and the runs `/api/runs` lists): runs,
/// failures, success rate; the next cron run counts down; each task that ran has a sparkline.
#[tokio::test]
async fn the_dashboard_shows_what_the_api_counts() -> Result<()> {
    let node = TestNode::start().await?;
    let base = node.api.base.clone();
    let task = |name: &str, command: &str| json!({"name": name, "spec": {"shell": command}, "when": {"mode": "manual"}});
    let ok = node.api.create_task(&task("fine", "true")).await?;
    let bad = node.api.create_task(&task("broken", "exit 3")).await?;
    node.api
        .create_task(&json!({"name": "nightly", "spec": {"command": ["true"]},
            "when": {"mode": "cron", "schedule": "0 3 * * *", "timezone": "Europe/Berlin"}}))
        .await?;
    for (id, times) in [(&ok, 3), (&bad, 2)] {
        for _ in 0..times {
            wait_for("Execute now", Duration::from_secs(10), || async {
                let (status, _) = node
                    .api
                    .post(&format!("/api/tasks/{id}/run"), &Value::Null)
                    .await
                    .ok()?;
                (status == 202).then_some(())
            })
            .await?;
        }
    }
    let runs = wait_for("five finished runs", Duration::from_secs(20), || async {
        let (_, runs) = node.api.get("/api/runs?limit=100").await.ok()?;
        let runs = runs.as_array()?.clone();
        (runs.len() == 5
            && runs
                .iter()
                .all(|r| r["status"] != "running" && r["status"] != "queued"))
        .then_some(runs)
    })
    .await?;
    let failed = runs.iter().filter(|r| r["status"] == "failed").count();
    assert_eq!(failed, 2);
    let (status, stats) = node.api.get("/api/stats?hours=24").await?;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(
        (stats["runs"].as_u64(), stats["failed"].as_u64()),
        (Some(5), Some(2))
    );
    assert_eq!(stats["succeeded"].as_u64(), Some(3));
    assert_eq!(stats["tasks"][&bad]["failed"].as_u64(), Some(2));

    let browser = logged_in(&node).await?;
    browser.goto(&format!("{base}/dashboard")).await?;
    assert_eq!(text_of(&browser, "#fig-runs").await, "5");
    assert_eq!(text_of(&browser, "#fig-failed").await, "2");
    assert_eq!(text_of(&browser, "#fig-rate").await, "60.0 %");
    let next = text_of(&browser, "#dash-next").await;
    assert!(next.contains("nightly"), "{next}");
    let countdown = wait_for("a countdown", Duration::from_secs(5), || async {
        let t = text_of(&browser, "#dash-next time[data-countdown]").await;
        t.starts_with("in ").then_some(t)
    })
    .await?;
    assert!(countdown.contains(" s") || countdown.contains(" min") || countdown.contains(" h"));
    let sparks = browser.find_all("#dash-tasks svg.spark").await?;
    assert_eq!(sparks.len(), 2, "a sparkline per task that ran");
    let bars = browser.find_all("#dash-tasks svg.spark rect.bad").await?;
    assert_eq!(bars.len(), 2, "the failed runs drawn as such");
    screenshot(&browser, "dashboard").await;
    Ok(())
}

/// The run page is live: a running run's duration counts up, and an exit rule's "sending" note
/// turns into the delivery's outcome without a reload (the first try of the webhook fails, the
/// retry delivers).
#[tokio::test]
async fn the_run_page_counts_its_duration_and_shows_the_delivery() -> Result<()> {
    let fake = taskmesh_tests::fake_http::FakeHttp::start().await?;
    fake.answer_next(500, json!({"error": "busy"}));
    let node = TestNode::start().await?;
    let base = node.api.base.clone();
    let mut settings = node.handle.settings(true);
    settings.cluster.channels = serde_json::from_value(json!({
        "hook": {"kind": "webhook", "url": format!("{}/hook", fake.url)}
    }))?;
    node.handle.put_settings(settings).await?;
    let id = node
        .api
        .create_task(
            &json!({"name": "slow", "spec": {"shell": "sleep 6"}, "when": {"mode": "manual"},
            "exit_rules": [{"on": "*", "action": "notify", "channel": "hook"}]}),
        )
        .await?;
    let run = node.api.execute(&id).await?;
    let run_id = run["id"].as_str().unwrap_or_default().to_owned();
    let browser = logged_in(&node).await?;
    browser
        .cdp(
            "Emulation.setTimezoneOverride",
            json!({"timezoneId": "Asia/Tokyo"}),
        )
        .await?;
    browser.goto(&format!("{base}/runs/{run_id}")).await?;
    let first = wait_text(&browser, "[data-field=duration]", "so far").await?;
    // Times show in the browser's zone (Tokyo, UTC+9), with UTC on hover.
    let created = browser
        .script(
            "const t = document.querySelector('time[data-local]');
             return [t.getAttribute('datetime'), t.textContent, t.title];",
            vec![],
        )
        .await?;
    let at: chrono::DateTime<chrono::Utc> = created[0].as_str().unwrap_or_default().parse()?;
    let tokyo = at + chrono::Duration::hours(9);
    let clock = tokyo.format("%I:%M:%S").to_string();
    let text = created[1].as_str().unwrap_or_default();
    assert!(text.contains(&clock), "{text} is not {clock} in Tokyo");
    assert!(
        created[2].as_str().unwrap_or_default().ends_with("UTC"),
        "{created}"
    );
    let later = wait_for("the duration to count", Duration::from_secs(5), || async {
        let now = text_of(&browser, "[data-field=duration]").await;
        (now.contains("so far") && now != first).then_some(now)
    })
    .await?;
    assert_ne!(first, later);
    let delivered = wait_for(
        "the delivery on the page",
        Duration::from_secs(20),
        || async {
            let text = text_of(&browser, "[data-field=actions]").await;
            text.contains("delivered").then_some(text)
        },
    )
    .await?;
    assert!(!delivered.contains("sending"), "{delivered}");
    assert!(fake.seen().len() >= 2, "a failed try, then the delivery");
    let duration = text_of(&browser, "[data-field=duration]").await;
    assert!(!duration.contains("so far"), "{duration}");
    Ok(())
}

/// What axe-core finds on the page in the browser: `impact: rule (what) at selectors`, for the
/// serious and critical findings only.
async fn accessibility_problems(browser: &Browser) -> Result<Vec<String>> {
    static AXE: &str = include_str!("../vendor/axe-core/axe.min.js");
    browser
        .script(&format!("{AXE}\nreturn true;"), vec![])
        .await?;
    let found = browser
        .script_async(
            "const done = arguments[arguments.length - 1];
             axe.run(document, {resultTypes: ['violations']}).then(
               r => done(r.violations.filter(v => v.impact === 'serious' || v.impact === 'critical')
                 .map(v => `${v.impact}: ${v.id} (${v.help}) at ${v.nodes.slice(0, 3).map(n => n.target.join(' ')).join(', ')}`)),
               e => done([`axe failed: ${e}`]));",
            vec![],
        )
        .await?;
    Ok(serde_json::from_value(found)?)
}

/// axe-core finds no serious or critical problem on any page, light or dark, with a task
/// expanded and a new task open; every page has a skip link to its content.
#[tokio::test]
async fn every_page_passes_axe_core() -> Result<()> {
    let node = TestNode::start().await?;
    let base = node.api.base.clone();
    let id = node
        .api
        .create_task(
            &json!({"name": "report", "spec": {"command": ["echo", "hi"]},
            "when": {"mode": "cron", "schedule": "*/5 * * * *"},
            "exit_rules": [{"on": "!0", "action": "retry"}]}),
        )
        .await?;
    let run = node.api.execute(&id).await?;
    let run_id = run["id"].as_str().unwrap_or_default().to_owned();
    let anonymous = Browser::start().await?;
    anonymous.goto(&format!("{base}/login")).await?;
    anonymous.find("main").await?;
    let mut problems: Vec<String> = accessibility_problems(&anonymous)
        .await?
        .into_iter()
        .map(|p| format!("/login: {p}"))
        .collect();
    drop(anonymous);

    let browser = logged_in(&node).await?;
    for dark in [false, true] {
        if dark {
            browser
                .cdp(
                    "Emulation.setEmulatedMedia",
                    json!({"features": [{"name": "prefers-color-scheme", "value": "dark"}]}),
                )
                .await?;
        }
        for page in [
            "/dashboard".to_owned(),
            "/index".to_owned(),
            format!("/tasks/{id}"),
            "/runs".to_owned(),
            format!("/runs/{run_id}"),
            "/settings".to_owned(),
            "/node".to_owned(),
            "/peers".to_owned(),
            "/activity".to_owned(),
            "/no-such-page".to_owned(),
        ] {
            browser.goto(&format!("{base}{page}")).await?;
            browser.find("main").await?;
            if page == "/index" {
                browser
                    .click(
                        &browser
                            .find(&format!("#task-{id} tr.summary td.name"))
                            .await?,
                    )
                    .await?;
                browser
                    .find(&format!("#task-{id} form.panel .f-spec"))
                    .await?;
                browser.click(&browser.find("#new-task").await?).await?;
                browser.find("tbody.new form.panel").await?;
            }
            let skip = browser.find_all("a.skip-link[href='#main']").await?;
            if skip.is_empty() {
                problems.push(format!("{page}: no skip link"));
            }
            let theme = if dark { "dark" } else { "light" };
            for p in accessibility_problems(&browser).await? {
                problems.push(format!("{page} ({theme}): {p}"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

/// /node is the client view of the request: which tasks this node can run and what it lacks
/// for the others, its own settings (secrets masked) with a way to edit them, and export/import.
#[tokio::test]
async fn the_node_page_tells_which_tasks_this_node_can_run() -> Result<()> {
    let node = TestNode::start().await?;
    let base = node.api.base.clone();
    node.api
        .create_task(
            &json!({"name": "anywhere", "spec": {"command": ["true"]}, "when": {"mode": "manual"}}),
        )
        .await?;
    node.api
        .create_task(&json!({"name": "needs-gpu", "spec": {"command": ["true"], "dependencies": ["gpu=h100"]},
            "when": {"mode": "manual"}}))
        .await?;
    let browser = logged_in(&node).await?;
    browser.goto(&format!("{base}/node")).await?;
    let fit = text_of(&browser, "#node-tasks").await;
    let (can, cannot) = fit.split_once("Tasks it cannot run").unwrap_or((&fit, ""));
    assert!(
        can.contains("anywhere") && !can.contains("needs-gpu"),
        "{fit}"
    );
    assert!(
        cannot.contains("needs-gpu") && cannot.contains("lacks gpu=h100"),
        "{fit}"
    );
    let settings = text_of(&browser, "#node-settings pre").await;
    let parsed: Value = serde_json::from_str(&settings)?;
    assert_eq!(parsed["name"], "test-node");
    assert_eq!(parsed["cluster_key"], "********", "the key is masked");
    browser.find("#node-settings a[href='/settings']").await?;
    browser.find("#export-link").await?;
    assert!(
        !browser.find_all("#import-file").await?.is_empty(),
        "import"
    );
    screenshot(&browser, "node").await;
    Ok(())
}

/// Execute with parameters: the panel offers a field for each parameter the task declares
/// (and no button for a task without any), the run gets what was changed in place of the
/// task's value, the task keeps its own, and the run page lists what was given.
#[tokio::test]
async fn a_run_is_given_parameters_from_the_task_panel() -> Result<()> {
    let node = TestNode::start().await?;
    let base = node.api.base.clone();
    let id = node
        .api
        .create_task(&json!({"name": "deploy",
            "spec": {"command": ["echo", "deploy {{version}} to {{target}}"],
                     "parameters": {"version": "1.0", "target": "staging"}},
            "when": {"mode": "manual"}}))
        .await?;
    let plain = node
        .api
        .create_task(
            &json!({"name": "plain", "spec": {"command": ["true"]}, "when": {"mode": "manual"}}),
        )
        .await?;
    let browser = logged_in(&node).await?;
    browser.goto(&format!("{base}/index")).await?;
    browser
        .click(
            &browser
                .find(&format!("#task-{plain} tr.summary td.name"))
                .await?,
        )
        .await?;
    browser.find(&format!("#task-{plain} .execute")).await?;
    let offers = browser
        .find_all(&format!("#task-{plain} .execute-with"))
        .await?;
    assert!(
        !browser.displayed(&offers[0]).await?,
        "a task without parameters offers none"
    );

    browser
        .click(
            &browser
                .find(&format!("#task-{id} tr.summary td.name"))
                .await?,
        )
        .await?;
    browser
        .click(&browser.find(&format!("#task-{id} .execute-with")).await?)
        .await?;
    let fields = browser.find_all(&format!("#task-{id} .f-param")).await?;
    let mut values = Vec::new();
    for field in &fields {
        values.push(browser.value(field).await?);
    }
    assert_eq!(values, ["staging", "1.0"], "one field a parameter, by name");
    browser.clear(&fields[1]).await?;
    browser.type_text(&fields[1], "2.0").await?;
    screenshot(&browser, "task-parameters").await;
    let problems = accessibility_problems(&browser).await?;
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    browser
        .click(&browser.find(&format!("#task-{id} .execute-given")).await?)
        .await?;
    wait_text(
        &browser,
        &format!("#task-{id} .status"),
        "Saved and started",
    )
    .await?;
    let run = wait_for("the run to succeed", Duration::from_secs(10), || async {
        let (_, runs) = node.api.get(&format!("/api/runs?task={id}")).await.ok()?;
        let run = runs.as_array()?.first()?.clone();
        (run["status"] == "succeeded").then_some(run)
    })
    .await?;
    assert_eq!(
        run["parameters"],
        json!({"version": "2.0"}),
        "only what was changed"
    );
    let run_id = run["id"].as_str().unwrap_or_default();
    let log = node
        .api
        .http
        .get(format!("{base}/api/runs/{run_id}/log"))
        .send()
        .await?
        .text()
        .await?;
    assert_eq!(log, "deploy 2.0 to staging\n");
    let (_, task) = node.api.get(&format!("/api/tasks/{id}")).await?;
    assert_eq!(
        task["spec"]["parameters"]["version"], "1.0",
        "the task keeps its own"
    );

    browser.goto(&format!("{base}/runs/{run_id}")).await?;
    let given = wait_text(&browser, "#run-parameters", "version").await?;
    assert!(given.contains("version = 2.0"), "{given}");
    Ok(())
}

/// The drain button on /peers asks first, drains the node (no new run goes there, and Execute
/// now says why), and the undrain button ends it.
#[tokio::test]
async fn a_node_is_drained_and_undrained_from_the_peers_page() -> Result<()> {
    let node = TestNode::start().await?;
    let base = node.api.base.clone();
    node.api
        .create_task(
            &json!({"name": "job", "spec": {"command": ["true"]}, "when": {"mode": "manual"}}),
        )
        .await?;
    let browser = logged_in(&node).await?;
    browser.goto(&format!("{base}/peers")).await?;
    let drain = "button[data-drain]";
    wait_for("the drain button", Duration::from_secs(20), || async {
        browser.find(drain).await.ok()
    })
    .await?;
    browser.click(&browser.find(drain).await?).await?;
    browser.dismiss_alert().await?;
    let drained = || async {
        let (_, peers) = node.api.get("/api/peers").await.ok()?;
        Some(peers["cluster"]["members"][0]["drained"] == true)
    };
    assert_eq!(drained().await, Some(false), "Cancel drains nothing");
    browser.click(&browser.find(drain).await?).await?;
    browser.accept_alert().await?;
    wait_text(&browser, "#drain-status", "is drained").await?;
    wait_text(&browser, "#peers-live .members", "drained").await?;
    assert_eq!(drained().await, Some(true));
    let (status, refused) = node.api.post("/api/tasks/job/run", &json!({})).await?;
    assert_eq!(status, 409, "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .is_some_and(|e| e.contains("every live node that could run it is drained")),
        "{refused}"
    );
    screenshot(&browser, "peers-drained").await;
    browser.goto(&format!("{base}/node")).await?;
    wait_text(&browser, "#node-drained", "This node is drained").await?;
    browser.goto(&format!("{base}/peers")).await?;
    wait_for("the undrain button", Duration::from_secs(10), || async {
        browser.find("button[data-undrain]").await.ok()
    })
    .await?;
    browser
        .click(&browser.find("button[data-undrain]").await?)
        .await?;
    wait_text(&browser, "#drain-status", "takes runs again").await?;
    assert_eq!(drained().await, Some(false));
    let (status, run) = node.api.post("/api/tasks/job/run", &json!({})).await?;
    assert_eq!(status, 202, "{run}");
    Ok(())
}

/// Pause cron on the dashboard: every page says so, with a button that resumes it.
#[tokio::test]
async fn cron_is_paused_from_the_dashboard_and_resumed_from_any_page() -> Result<()> {
    let node = TestNode::start().await?;
    let base = node.api.base.clone();
    let browser = logged_in(&node).await?;
    browser.goto(&format!("{base}/dashboard")).await?;
    assert!(browser.find_all("#cron-paused").await?.is_empty());
    browser.click(&browser.find("#cron-pause").await?).await?;
    browser.dismiss_alert().await?;
    assert_eq!(
        node.api.get("/api/cron").await?.1["paused"],
        false,
        "Cancel pauses nothing"
    );
    browser.click(&browser.find("#cron-pause").await?).await?;
    browser.accept_alert().await?;
    wait_text(&browser, "#cron-paused", "Cron is paused").await?;
    assert_eq!(node.api.get("/api/cron").await?.1["paused"], true);
    assert!(
        browser.find_all("#cron-pause").await?.is_empty(),
        "no second pause"
    );
    browser.goto(&format!("{base}/index")).await?;
    wait_text(&browser, "#cron-paused", "Cron is paused").await?;
    screenshot(&browser, "cron-paused").await;
    browser.click(&browser.find("#cron-resume").await?).await?;
    wait_for("the banner to go", Duration::from_secs(10), || async {
        browser
            .find_all("#cron-paused")
            .await
            .ok()?
            .is_empty()
            .then_some(())
    })
    .await?;
    assert_eq!(node.api.get("/api/cron").await?.1["paused"], false);
    // The dashboard lists both, made through the UI of this node.
    browser.goto(&format!("{base}/dashboard")).await?;
    let changes = wait_text(&browser, "#dash-changes", "cron resumed").await?;
    assert!(
        changes.contains("cron paused") && changes.contains("ui on test-node from 127.0.0.1"),
        "{changes}"
    );
    browser
        .click(&browser.find("#dash-changes a[href='/activity']").await?)
        .await?;
    let all = wait_text(&browser, "#activity", "cron paused").await?;
    assert!(
        all.find("cron resumed") < all.find("cron paused"),
        "newest first: {all}"
    );
    Ok(())
}

/// A Telegram channel is set up by the form, without writing JSON: the token and the chat id
/// land in the settings, and "Send test" reaches the (fake) Bot API with them.
#[tokio::test]
async fn a_channel_is_set_up_by_form_and_tested() -> Result<()> {
    let fake = taskmesh_tests::fake_http::FakeHttp::start().await?;
    let node = TestNode::start().await?;
    let base = node.api.base.clone();
    let mut settings = node.handle.settings(true);
    settings.cluster.telegram.api_base = fake.url.clone();
    node.handle.put_settings(settings).await?;
    let browser = logged_in(&node).await?;
    browser.goto(&format!("{base}/settings")).await?;
    // Nothing typed: the form says what is missing, and nothing is saved.
    browser
        .click(&browser.find("#channel-form button[type=submit]").await?)
        .await?;
    wait_text(&browser, "#channel-errors", "Give the channel a name").await?;
    browser
        .type_text(&browser.find("#ch-name").await?, "ops")
        .await?;
    browser
        .type_text(&browser.find("#ch-telegram-token").await?, "123456:ABC")
        .await?;
    browser
        .type_text(&browser.find("#ch-chat-id").await?, "-10042")
        .await?;
    browser
        .click(&browser.find("#channel-form button[type=submit]").await?)
        .await?;
    wait_text(&browser, "#channel-status", "Saved channel ops").await?;
    let saved = node.handle.settings(true);
    assert_eq!(
        saved.cluster.telegram.bot_token.as_deref(),
        Some("123456:ABC")
    );
    let channel = serde_json::to_value(&saved.cluster.channels)?;
    assert_eq!(
        channel["ops"],
        json!({"kind": "telegram", "chat_id": "-10042"})
    );
    let button = browser
        .find("#channel-rows tr[data-channel=ops] button")
        .await?;
    browser.click(&button).await?;
    wait_text(
        &browser,
        "#channel-rows tr[data-channel=ops] td.result",
        "Delivered",
    )
    .await?;
    let seen = fake.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/bot123456:ABC/sendMessage");
    assert_eq!(seen[0].body["chat_id"], "-10042");
    Ok(())
}

/// Makes the browser ask for `languages` (`Accept-Language`) from the next page on.
async fn prefer_language(browser: &Browser, languages: &str) -> Result<()> {
    let agent = browser.script("return navigator.userAgent", vec![]).await?;
    browser
        .cdp(
            "Emulation.setUserAgentOverride",
            json!({"userAgent": agent, "acceptLanguage": languages}),
        )
        .await?;
    Ok(())
}

/// English phrases of the catalog (long enough not to be anyone's data) that a German page
/// still shows.
async fn english_left(browser: &Browser) -> Result<Vec<String>> {
    let left = browser
        .script(
            "const text = document.body.innerText;
             return (window.TASKMESH_TEXT || [])
               .filter(([en, de]) => en !== de && en.length >= 12 && !en.includes('{}') && !en.includes('<'))
               .map(([en]) => en)
               .filter((en) => text.includes(en));",
            vec![],
        )
        .await?;
    Ok(serde_json::from_value(left)?)
}

/// A browser that asks for German gets every page, the script's messages, a validation error
/// from the node and the dates in German; the switch in the header sticks to English against
/// the browser's wish, on every page, and back.
#[tokio::test]
async fn a_german_browser_gets_german_pages_and_the_switch_sticks() -> Result<()> {
    let node = TestNode::start().await?;
    let base = node.api.base.clone();
    let id = node
        .api
        .create_task(
            &json!({"name": "backup", "spec": {"shell": "exit 3"}, "when": {"mode": "manual"}}),
        )
        .await?;
    let nightly = node
        .api
        .create_task(&json!({"name": "nightly", "spec": {"command": ["true"]},
            "when": {"mode": "cron", "schedule": "0 3 1,15 * *", "timezone": "Europe/Berlin"}}))
        .await?;
    let run = node.api.execute(&id).await?;
    let run_id = run["id"].as_str().unwrap_or_default().to_owned();
    wait_for("the run to fail", Duration::from_secs(10), || async {
        let (_, run) = node.api.get(&format!("/api/runs/{run_id}")).await.ok()?;
        (run["status"] == "failed").then_some(())
    })
    .await?;

    // The login page already speaks German.
    let fresh = Browser::start().await?;
    prefer_language(&fresh, "de-DE,de;q=0.9,en;q=0.5").await?;
    fresh.goto(&format!("{base}/login")).await?;
    assert_eq!(text_of(&fresh, "label[for=token]").await, "Zugangs-Token");
    drop(fresh);

    let browser = logged_in(&node).await?;
    prefer_language(&browser, "de-DE,de;q=0.9,en;q=0.5").await?;
    browser.goto(&format!("{base}/index")).await?;
    assert_eq!(
        browser
            .script("return document.documentElement.lang", vec![])
            .await?,
        json!("de")
    );
    assert_eq!(text_of(&browser, "h1").await, "Aufgaben");
    let nav = text_of(&browser, "nav").await;
    assert!(
        nav.contains("Übersicht") && nav.contains("Läufe") && nav.contains("Einstellungen"),
        "{nav}"
    );
    let last = text_of(&browser, &format!("#task-{id} td.last-run")).await;
    assert!(
        last.contains("fehlgeschlagen") && (last.contains("vor ") || last.contains("gerade eben")),
        "the last run, in German: {last}"
    );

    // A validation error made by the node reads in German, parts and all.
    browser
        .click(
            &browser
                .find(&format!("#task-{id} tr.summary td.name"))
                .await?,
        )
        .await?;
    let spec = browser.find(&format!("#task-{id} .f-spec")).await?;
    assert_eq!(
        text_of(&browser, &format!("#task-{id} form.panel .execute")).await,
        "Jetzt ausführen"
    );
    browser.clear(&spec).await?;
    browser
        .type_text(&spec, r#"{"shell": "exit 3", "priority": "high"}"#)
        .await?;
    browser
        .click(
            &browser
                .find(&format!("#task-{id} form.panel .save"))
                .await?,
        )
        .await?;
    let error = wait_text(
        &browser,
        &format!("#task-{id} [data-err=spec]"),
        "muss eine ganze Zahl sein",
    )
    .await?;
    assert!(error.contains("nicht der Text"), "{error}");
    screenshot(&browser, "de-tasks").await;
    // A schedule in words, told in German, its list and ordinals too.
    browser
        .click(
            &browser
                .find(&format!("#task-{nightly} tr.summary td.name"))
                .await?,
        )
        .await?;
    wait_text(
        &browser,
        &format!("#task-{nightly} .cron-preview"),
        "Am 1. und 15. jedes Monats um 03:00",
    )
    .await?;

    // The run page: words, exit and a date in German.
    browser.goto(&format!("{base}/runs/{run_id}")).await?;
    assert!(text_of(&browser, "h1").await.starts_with("Lauf von backup"));
    assert_eq!(text_of(&browser, "[data-field=exit]").await, "Exit-Code 3");
    let created = text_of(&browser, "#run time[data-local]").await;
    let months = [
        "Jan", "Feb", "März", "Apr", "Mai", "Juni", "Juli", "Aug", "Sept", "Okt", "Nov", "Dez",
    ];
    assert!(
        months.iter().any(|m| created.contains(m)),
        "a German date: {created}"
    );

    // No page shows English where the catalog has German.
    for page in [
        "/index",
        "/dashboard",
        "/runs",
        "/settings",
        "/node",
        "/peers",
        "/activity",
    ] {
        browser.goto(&format!("{base}{page}")).await?;
        browser.find("main h1").await?;
        let left = english_left(&browser).await?;
        assert!(left.is_empty(), "{page} shows English: {left:?}");
    }
    browser.goto(&format!("{base}/tasks/{id}")).await?;
    let left = english_left(&browser).await?;
    assert!(left.is_empty(), "the task page shows English: {left:?}");
    // German words are longer; the pages still fit a phone.
    browser.set_window_size(390, 844).await?;
    let task_page = format!("/tasks/{id}");
    for page in [
        "/index",
        "/dashboard",
        "/runs",
        "/settings",
        "/node",
        "/peers",
        "/activity",
        &task_page,
    ] {
        browser.goto(&format!("{base}{page}")).await?;
        let (width, what) = widest(&browser, 390).await?;
        assert!(width <= 390, "{page} in German is {width} px wide ({what})");
    }
    browser.set_window_size(1280, 900).await?;

    // The switch: English against the browser's wish, on every page after, and back.
    browser.goto(&format!("{base}/runs")).await?;
    assert_eq!(text_of(&browser, "main h1").await, "Läufe");
    browser.click(&browser.find(".lang-switch").await?).await?;
    wait_text(&browser, "main h1", "Runs").await?;
    assert_eq!(
        browser
            .script("return document.documentElement.lang", vec![])
            .await?,
        json!("en")
    );
    browser.goto(&format!("{base}/dashboard")).await?;
    assert_eq!(text_of(&browser, "h1").await, "Dashboard");
    browser.click(&browser.find(".lang-switch").await?).await?;
    wait_text(&browser, "main h1", "Übersicht").await?;
    Ok(())
}

/// A read-only token is made on the settings page and shown once; a browser that logs in with
/// it sees every page marked read-only, and a Save is refused with the token named; the token
/// is removed on the same page.
#[tokio::test]
async fn a_read_only_token_is_made_in_the_settings_and_its_browser_changes_nothing() -> Result<()> {
    let node = TestNode::start().await?;
    let base = node.api.base.clone();
    node.api
        .create_task(
            &json!({"name": "job", "spec": {"command": ["true"]}, "when": {"mode": "manual"}}),
        )
        .await?;
    let admin = logged_in(&node).await?;
    admin.goto(&format!("{base}/settings")).await?;
    admin
        .type_text(&admin.find("#token-name").await?, "grafana")
        .await?;
    admin.click(&admin.find("#token-read-only").await?).await?;
    admin
        .click(&admin.find("#token-form button[type=submit]").await?)
        .await?;
    wait_text(&admin, "#token-status", "Made token grafana").await?;
    let token = text_of(&admin, "#token-value").await;
    assert_eq!(token.len(), 64, "{token}");
    let rows = text_of(&admin, "#token-rows").await;
    assert!(
        rows.contains("grafana") && rows.contains("read-only"),
        "{rows}"
    );
    admin
        .script(
            "document.querySelector('#token-made').scrollIntoView({block: 'center'})",
            vec![],
        )
        .await?;
    screenshot(&admin, "settings-tokens").await;
    let (_, listed) = node.api.get("/api/tokens").await?;
    assert_eq!(listed[0]["name"], "grafana", "{listed}");
    assert_eq!(listed[0]["read_only"], true, "{listed}");

    // Logged in with it, in another browser.
    let viewer = Browser::start().await?;
    viewer.goto(&format!("{base}/login?next=/index")).await?;
    viewer
        .type_text(&viewer.find("input[name=token]").await?, &token)
        .await?;
    viewer
        .click(&viewer.find("form button[type=submit]").await?)
        .await?;
    wait_text(&viewer, "#read-only", "grafana").await?;
    viewer.goto(&format!("{base}/tasks/job")).await?;
    wait_text(&viewer, "#read-only", "read-only: grafana").await?;
    viewer
        .click(&viewer.find("form.panel button[type=submit]").await?)
        .await?;
    let said = wait_text(&viewer, "form.panel", "is read-only").await?;
    assert!(said.contains("the token 'grafana' is read-only"), "{said}");
    screenshot(&viewer, "read-only").await;

    // Removed on the settings page: its browser is sent to the login page.
    admin.goto(&format!("{base}/settings")).await?;
    admin
        .click(&admin.find("[data-token-remove='grafana']").await?)
        .await?;
    admin.accept_alert().await?;
    wait_text(&admin, "#token-status", "Removed token grafana").await?;
    assert_eq!(node.api.get("/api/tokens").await?.1, json!([]));
    viewer.goto(&format!("{base}/index")).await?;
    viewer.find("input[name=token]").await?;
    Ok(())
}

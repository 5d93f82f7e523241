// taskmesh web UI: talks to the JSON API. Plain JavaScript, no build step.
// User text only ever reaches the page through textContent or form values, never innerHTML.
"use strict";

(() => {
  // ---------------------------------------------------------------- helpers

  const $ = (sel, root = document) => root.querySelector(sel);
  const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children) node.append(c);
    return node;
  }

  /** Calls the API; throws an Error with `details` (field errors) when it answers with an error. */
  async function api(method, url, body, { raw = false } = {}) {
    const opts = { method, headers: { Accept: "application/json" } };
    if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = raw ? body : JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch(url, opts);
    } catch (e) {
      const err = new Error("The node did not answer (" + e.message + ").");
      err.details = [];
      throw err;
    }
    const text = await res.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch { data = text; }
    if (!res.ok) {
      const message = data && typeof data === "object" && data.error ? data.error : `${res.status} ${res.statusText}`;
      const err = new Error(message);
      err.status = res.status;
      err.details = (data && Array.isArray(data.details)) ? data.details : [];
      throw err;
    }
    return data;
  }

  /** A field path for people: serde's "?" (position unknown) segments left out. */
  function cleanPath(path) {
    return String(path || "").replace(/(\.|^)\?(?=\.|\[|$)/g, "").replace(/^\./, "");
  }

  /** "line 3, column 7", "column 4" or "". */
  function where(d) {
    if (d.line && d.column) return `line ${d.line}, column ${d.column}`;
    if (d.line) return `line ${d.line}`;
    if (d.column) return `column ${d.column}`;
    return "";
  }

  function addError(box, text) {
    if (box) box.append(el("div", { text }));
  }

  function setStatus(node, text, kind) {
    if (!node) return;
    node.textContent = text;
    node.classList.toggle("ok", kind === "ok");
    node.classList.toggle("bad", kind === "bad");
  }

  /** Puts the caret at line/column of a textarea and scrolls there. */
  function caretTo(textarea, line, column) {
    if (!textarea || !line) return;
    const lines = textarea.value.split("\n");
    let offset = 0;
    for (let i = 0; i < Math.min(line - 1, lines.length); i++) offset += lines[i].length + 1;
    offset += Math.max(0, (column || 1) - 1);
    offset = Math.min(offset, textarea.value.length);
    textarea.focus();
    textarea.setSelectionRange(offset, offset);
    const lineHeight = parseFloat(getComputedStyle(textarea).lineHeight) || 18;
    textarea.scrollTop = Math.max(0, (line - 3) * lineHeight);
  }

  function relative(date) {
    const secs = Math.round((Date.now() - date.getTime()) / 1000);
    const n = Math.abs(secs);
    if (n < 5) return "just now";
    let t;
    if (n < 60) t = `${n} s`;
    else if (n < 3600) t = `${Math.floor(n / 60)} min`;
    else if (n < 86400) t = `${Math.floor(n / 3600)} h`;
    else t = `${Math.floor(n / 86400)} d`;
    return secs < 0 ? `in ${t}` : `${t} ago`;
  }

  function refreshTimes() {
    for (const t of $$("time[data-rel]")) {
      const d = new Date(t.getAttribute("datetime"));
      if (!isNaN(d)) {
        t.textContent = relative(d);
        if (!t.title) t.title = d.toLocaleString();
      }
    }
  }

  function statusLabel(status) { return String(status).replace(/_/g, " "); }
  const ACTIVE = new Set(["queued", "running"]);

  /** Calls `fn` at most once per `ms`, and once more after the last call. */
  function throttle(fn, ms) {
    let timer = null, again = false;
    return function run() {
      if (timer) { again = true; return; }
      fn();
      timer = setTimeout(() => { timer = null; if (again) { again = false; run(); } }, ms);
    };
  }

  /** Subscribes to the node's change events; reconnects by itself (EventSource does). */
  function onEvents(handlers) {
    if (!window.EventSource) return;
    const es = new EventSource("/api/events");
    for (const [name, fn] of Object.entries(handlers)) {
      es.addEventListener(name, (e) => {
        let data = null;
        try { data = JSON.parse(e.data); } catch { /* not JSON */ }
        fn(data);
      });
    }
    window.addEventListener("beforeunload", () => es.close());
  }

  // ------------------------------------------------- settings export/import

  function initTransfer(onImported) {
    const link = $("#export-link");
    const secrets = $("#export-secrets");
    if (link && secrets) {
      const update = () => {
        link.href = secrets.checked ? "/api/settings/export?secrets=true" : "/api/settings/export";
      };
      secrets.addEventListener("change", update);
      update();
    }
    const button = $("#import-button");
    const file = $("#import-file");
    if (!button || !file) return;
    const errors = $("#import-errors");
    const status = $("#import-status");
    button.addEventListener("click", async () => {
      errors.textContent = "";
      setStatus(status, "");
      const chosen = file.files && file.files[0];
      if (!chosen) {
        addError(errors, "Choose an exported settings file first.");
        file.focus();
        return;
      }
      if (!confirm(`Replace all settings with ${chosen.name}?`)) return;
      button.disabled = true;
      try {
        const text = await chosen.text();
        const settings = await api("POST", "/api/settings/import", text, { raw: true });
        setStatus(status, `Imported ${chosen.name}.`, "ok");
        if (onImported) onImported(settings);
      } catch (e) {
        addError(errors, e.message);
        for (const d of e.details) {
          const at = [cleanPath(d.path) || "(document)", where(d)].filter(Boolean).join(", ");
          addError(errors, `${at}: ${d.message}`);
        }
      } finally {
        button.disabled = false;
      }
    });
  }

  // ------------------------------------------------------------ settings page

  function initSettings() {
    const form = $("#settings-form");
    const editor = $("#settings-editor");
    const errors = $("#settings-errors");
    const status = $("#settings-status");
    const show = (settings) => {
      editor.value = JSON.stringify(settings, null, 2);
      showChannels(settings.cluster && settings.cluster.channels);
    };
    try { showChannels(JSON.parse(editor.value).cluster.channels); } catch { showChannels({}); }

    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      errors.textContent = "";
      editor.classList.remove("invalid");
      setStatus(status, "Saving…");
      try {
        const saved = await api("PUT", "/api/settings", editor.value, { raw: true });
        show(saved);
        setStatus(status, "Saved.", "ok");
      } catch (err) {
        setStatus(status, "Not saved.", "bad");
        addError(errors, err.message);
        let first = null;
        for (const d of err.details) {
          const at = [cleanPath(d.path) || "(document)", where(d)].filter(Boolean).join(", ");
          addError(errors, `${at}: ${d.message}`);
          if (!first && d.line) first = d;
        }
        editor.classList.add("invalid");
        if (first) caretTo(editor, first.line, first.column);
      }
    });
    editor.addEventListener("input", () => setStatus(status, ""));
    editor.addEventListener("keydown", (e) => {
      if ((e.ctrlKey || e.metaKey) && e.key === "s") { e.preventDefault(); form.requestSubmit(); }
    });
    $("#settings-reset").addEventListener("click", async () => {
      errors.textContent = "";
      editor.classList.remove("invalid");
      try {
        show(await api("GET", "/api/settings"));
        setStatus(status, "Reloaded from the node.", "ok");
      } catch (err) {
        addError(errors, err.message);
      }
    });
    initTransfer((settings) => { show(settings); errors.textContent = ""; });
  }

  /** The saved notification channels, each with a "Send test" button. */
  function showChannels(channels) {
    const rows = $("#channel-rows");
    if (!rows) return;
    const names = Object.keys(channels || {}).sort();
    $("#channel-table").hidden = names.length === 0;
    $("#channels-none").hidden = names.length > 0;
    rows.replaceChildren(...names.map((name) => {
      const result = el("td", { class: "result", role: "status", "aria-live": "polite" });
      const button = el("button", { type: "button", class: "btn small" }, "Send test");
      button.addEventListener("click", async () => {
        button.disabled = true;
        setStatus(result, "Sending…");
        try {
          const answer = await api("POST", `/api/channels/${encodeURIComponent(name)}/test`);
          setStatus(result, `Delivered (${answer.kind}).`, "ok");
        } catch (err) {
          setStatus(result, err.message, "bad");
        } finally {
          button.disabled = false;
        }
      });
      return el("tr", { "data-channel": name },
        el("td", {}, el("code", {}, name)),
        el("td", {}, String(channels[name].kind || "?")),
        el("td", {}, button),
        result);
    }));
  }

  // --------------------------------------------------------------- tasks page

  let newCounter = 0;

  function initTasks() {
    const table = $("#task-table");

    const tbodyOf = (node) => node.closest("tbody.task");
    const formOf = (tbody) => $("form.panel", tbody);
    const isOpen = (tbody) => !$(".panel-row", tbody).hidden;

    function setOpen(tbody, open, { focus = false, updateHash = true } = {}) {
      const panelRow = $(".panel-row", tbody);
      panelRow.hidden = !open;
      tbody.classList.toggle("open", open);
      $(".summary", tbody).setAttribute("aria-expanded", String(open));
      const id = tbody.dataset.id;
      if (updateHash && id) {
        if (open) history.replaceState(null, "", `#task-${id}`);
        else if (location.hash === `#task-${id}`) history.replaceState(null, "", location.pathname);
      }
      if (open && focus) {
        const name = $(".f-name", tbody);
        if (name) name.focus();
      }
    }

    function openFromHash() {
      const m = /^#task-(.+)$/.exec(location.hash);
      if (!m) return;
      const tbody = document.getElementById(`task-${decodeURIComponent(m[1])}`);
      if (!tbody || !tbody.classList.contains("task")) return;
      setOpen(tbody, true, { updateHash: false });
      tbody.scrollIntoView({ block: "start", behavior: "smooth" });
    }

    // Row clicks and keys: a click or Enter/Space on a summary row toggles its panel.
    table.addEventListener("click", (e) => {
      const summary = e.target.closest("tr.summary");
      if (!summary || e.target.closest("a, button, input, select, textarea")) return;
      const tbody = tbodyOf(summary);
      setOpen(tbody, !isOpen(tbody));
    });
    table.addEventListener("keydown", (e) => {
      const summary = e.target.closest("tr.summary");
      if (summary && e.target === summary && (e.key === "Enter" || e.key === " ")) {
        e.preventDefault();
        const tbody = tbodyOf(summary);
        setOpen(tbody, !isOpen(tbody));
      } else if (summary && e.target === summary && (e.key === "ArrowDown" || e.key === "ArrowUp")) {
        e.preventDefault();
        const rows = $$("tbody.task > tr.summary", table);
        const next = rows[rows.indexOf(summary) + (e.key === "ArrowDown" ? 1 : -1)];
        if (next) next.focus();
      } else if (e.key === "Escape" && e.target.closest("form.panel")) {
        const tbody = tbodyOf(e.target);
        setOpen(tbody, false);
        $(".summary", tbody).focus();
      }
    });

    // Edits mark the panel dirty (live refreshes leave it alone) and update dependent controls.
    table.addEventListener("input", (e) => {
      const form = e.target.closest("form.panel");
      if (!form) return;
      form.dataset.dirty = "1";
      const tbody = tbodyOf(form);
      if (e.target.classList.contains("f-name") && tbody.classList.contains("new")) {
        $(".new-name", tbody).textContent = e.target.value.trim() || "New task";
      }
      e.target.classList.remove("invalid");
    });
    table.addEventListener("change", (e) => {
      const form = e.target.closest("form.panel");
      if (!form) return;
      form.dataset.dirty = "1";
      if (e.target.classList.contains("f-mode")) showCron(form);
      if (e.target.classList.contains("f-action")) showArg(e.target.closest(".rule"));
    });

    table.addEventListener("click", (e) => {
      const form = e.target.closest("form.panel");
      if (!form) return;
      if (e.target.closest(".add-rule")) {
        const row = $("#rule-template").content.firstElementChild.cloneNode(true);
        $(".rules", form).append(row);
        form.dataset.dirty = "1";
        $(".f-on", row).focus();
        $(".f-on", row).select();
      } else if (e.target.closest(".remove-rule")) {
        e.target.closest(".rule").remove();
        form.dataset.dirty = "1";
      } else if (e.target.closest(".execute")) {
        save(form, { execute: true });
      } else if (e.target.closest(".remove")) {
        remove(form);
      }
    });
    table.addEventListener("submit", (e) => {
      const form = e.target.closest("form.panel");
      if (!form) return;
      e.preventDefault();
      save(form, { execute: false });
    });
    table.addEventListener("keydown", (e) => {
      const form = e.target.closest("form.panel");
      if (form && (e.ctrlKey || e.metaKey) && e.key === "s") { e.preventDefault(); save(form, { execute: false }); }
    });

    function showCron(form) {
      const mode = ($(".f-mode:checked", form) || {}).value;
      $(".cron", form).hidden = mode !== "cron";
    }

    function showArg(rule) {
      const action = $(".f-action", rule).value;
      const label = $(".rule-arg", rule);
      const arg = $(".f-arg", rule);
      label.hidden = action !== "notify" && action !== "run";
      if (action === "run") { arg.setAttribute("list", "task-names"); arg.placeholder = "task name"; }
      if (action === "notify") { arg.setAttribute("list", "channel-names"); arg.placeholder = "channel (from the settings)"; }
    }

    function collect(form) {
      const mode = ($(".f-mode:checked", form) || {}).value || "manual";
      let when = { mode };
      if (mode === "cron") {
        when = {
          mode,
          schedule: $(".f-schedule", form).value.trim(),
          timezone: $(".f-timezone", form).value.trim() || "UTC",
          catch_up: $(".f-catchup", form).value,
        };
      }
      const exit_rules = $$(".rule", form).map((row) => {
        const action = $(".f-action", row).value;
        const rule = { on: $(".f-on", row).value.trim(), action };
        const arg = $(".f-arg", row).value.trim();
        if (action === "notify") rule.channel = arg;
        if (action === "run") rule.task = arg;
        return rule;
      });
      return {
        name: $(".f-name", form).value,
        spec: $(".f-spec", form).value,
        when,
        placement: form.dataset.placement || "one",
        exit_rules,
        enabled: $(".f-enabled", form).checked,
      };
    }

    function clearErrors(form) {
      for (const box of $$(".err", form)) box.textContent = "";
      for (const f of $$(".invalid", form)) f.classList.remove("invalid");
    }

    /** Shows each error next to the field its path names; what the user typed stays. */
    function showErrors(form, err) {
      clearErrors(form);
      const box = (name, root = form) => $(`[data-err="${name}"]`, root);
      let firstField = null, caret = null;
      const mark = (field) => {
        if (!field) return;
        field.classList.add("invalid");
        if (!firstField) firstField = field;
      };
      const details = err.details || [];
      if (!details.length) addError(box("general"), err.message);
      for (const d of details) {
        const path = cleanPath(d.path);
        const at = where(d);
        let m;
        if (path === "name") {
          addError(box("name"), d.message);
          mark($(".f-name", form));
        } else if (path === "spec" || path.startsWith("spec.") || path.startsWith("spec[")) {
          const sub = path === "spec" ? "" : path.slice(5) || path;
          const prefix = [sub && `${sub}`, at].filter(Boolean).join(", ");
          addError(box("spec"), prefix ? `${prefix}: ${d.message}` : d.message);
          mark($(".f-spec", form));
          if (d.line && !caret) caret = d;
        } else if (path === "when.schedule") {
          addError(box("schedule"), at ? `${at}: ${d.message}` : d.message);
          mark($(".f-schedule", form));
        } else if (path === "when.timezone") {
          addError(box("timezone"), d.message);
          mark($(".f-timezone", form));
        } else if (path === "when" || path.startsWith("when.")) {
          addError(box("when"), d.message);
        } else if ((m = /^exit_rules\[(\d+)\](.*)$/.exec(path))) {
          const row = $$(".rule", form)[Number(m[1])];
          if (row) {
            addError(box("rule", row), d.message);
            if (m[2].startsWith(".on")) mark($(".f-on", row));
            else if (!$(".rule-arg", row).hidden) mark($(".f-arg", row));
            else mark($(".f-action", row));
          } else {
            addError(box("general"), `${path}: ${d.message}`);
          }
        } else if (path.startsWith("exit_rules")) {
          addError(box("general"), `${path}: ${d.message}`);
        } else {
          addError(box("general"), [path, at].filter(Boolean).join(", ") + (path || at ? ": " : "") + d.message);
        }
      }

      if (caret) caretTo($(".f-spec", form), caret.line, caret.column);
      else if (firstField) firstField.focus();
    }

    function busy(form, on) {
      for (const b of $$(".actions .btn", form)) b.disabled = on;
    }

    async function save(form, { execute }) {
      const tbody = tbodyOf(form);
      const status = $(".status", form);
      const id = form.dataset.id;
      clearErrors(form);
      busy(form, true);
      setStatus(status, execute ? "Saving, then starting…" : "Saving…");
      let task;
      try {
        task = id
          ? await api("PUT", `/api/tasks/${encodeURIComponent(id)}`, collect(form))
          : await api("POST", "/api/tasks", collect(form));
      } catch (err) {
        busy(form, false);
        setStatus(status, err.details && err.details.length ? "Not saved: see the marked fields." : "Not saved.", "bad");
        showErrors(form, err);
        return;
      }
      delete form.dataset.dirty;
      let run = null, runError = null;
      if (execute) {
        try {
          run = await api("POST", `/api/tasks/${encodeURIComponent(task.id)}/run`);
        } catch (err) {
          runError = err.message;
        }
      }
      if (tbody.classList.contains("new")) tbody.remove();
      await refreshList(new Set([task.id]));
      const fresh = document.getElementById(`task-${task.id}`);
      if (!fresh) { location.hash = `task-${task.id}`; location.reload(); return; }
      setOpen(fresh, true);
      const freshForm = formOf(fresh);
      const freshStatus = $(".status", freshForm);
      if (run) {
        freshStatus.textContent = "";
        freshStatus.append("Saved and started: ", el("a", { href: `/runs/${run.id}`, text: `run ${run.id.slice(0, 8)}… →` }));
        freshStatus.className = "status ok";
      } else if (runError) {
        setStatus(freshStatus, `Saved, but it did not start: ${runError}`, "bad");
      } else {
        setStatus(freshStatus, "Saved.", "ok");
      }
      $(".save", freshForm).focus();
    }

    async function remove(form) {
      const tbody = tbodyOf(form);
      const name = $(".f-name", form).value.trim() || "this new task";
      if (!form.dataset.id) {
        if (!form.dataset.dirty || confirm(`Discard ${name}?`)) { tbody.remove(); updateCount(); }
        return;
      }
      if (!confirm(`Remove the task “${name}”? Its runs stay in the history.`)) return;
      busy(form, true);
      try {
        await api("DELETE", `/api/tasks/${encodeURIComponent(form.dataset.id)}`);
        if (location.hash === `#task-${form.dataset.id}`) history.replaceState(null, "", location.pathname);
        tbody.remove();
        updateCount();
      } catch (err) {
        busy(form, false);
        showErrors(form, err);
      }
    }

    function updateCount() {
      const saved = $$("tbody.task:not(.new)", table).length;
      const all = $$("tbody.task", table).length;
      $("#no-tasks").hidden = all > 0;
      const count = $("#task-count");
      if (count) count.textContent = `${saved} task${saved === 1 ? "" : "s"} · click a row to edit it`;
    }

    $("#new-task").addEventListener("click", () => {
      const tbody = $("#new-task-template").content.firstElementChild.cloneNode(true);
      const key = `new-${++newCounter}`;
      $("form.panel", tbody).dataset.key = key;
      for (const r of $$(".f-mode", tbody)) r.name = `mode-${key}`;
      table.append(tbody);
      updateCount();
      tbody.scrollIntoView({ block: "nearest", behavior: "smooth" });
      $(".f-name", tbody).focus();
    });

    /**
     * Re-reads the list from the server and updates it in place: summaries always, panels only
     * when closed and unedited (or named in `force`), so nobody's typing is lost.
     */
    async function refreshList(force = new Set()) {
      let doc;
      try {
        const res = await fetch(location.pathname === "/" ? "/" : "/index", { headers: { Accept: "text/html" } });
        if (!res.ok) return;
        doc = new DOMParser().parseFromString(await res.text(), "text/html");
      } catch { return; }
      const focusedSummary = document.activeElement && document.activeElement.matches("tr.summary")
        ? tbodyOf(document.activeElement).dataset.id : null;
      const fresh = $$("#task-table > tbody.task", doc);
      const ids = new Set(fresh.map((t) => t.dataset.id));
      for (const tb of $$(":scope > tbody.task:not(.new)", table)) {
        if (!ids.has(tb.dataset.id) && !(formOf(tb) && formOf(tb).dataset.dirty)) tb.remove();
      }
      let anchor = $("#no-tasks");
      for (const f of fresh) {
        const id = f.dataset.id;
        const incoming = document.importNode(f, true);
        let cur = $$(":scope > tbody.task:not(.new)", table).find((t) => t.dataset.id === id);
        if (!cur) {
          cur = incoming;
          anchor.after(cur);
        } else {
          const open = isOpen(cur);
          const form = formOf(cur);
          $(".summary", cur).replaceWith($(".summary", incoming));
          if (force.has(id) || (!open && !(form && form.dataset.dirty))) {
            $(".panel-row", cur).replaceWith($(".panel-row", incoming));
          }
          setOpen(cur, open, { updateHash: false });
          if (cur.previousElementSibling !== anchor) anchor.after(cur);
        }
        anchor = cur;
      }
      for (const n of $$(":scope > tbody.task.new", table)) table.append(n);
      const names = $("#task-names", doc);
      if (names) $("#task-names").replaceWith(document.importNode(names, true));
      const channels = $("#channel-names", doc);
      if (channels) $("#channel-names").replaceWith(document.importNode(channels, true));
      updateCount();
      refreshTimes();
      if (focusedSummary) {
        const t = document.getElementById(`task-${focusedSummary}`);
        if (t) $(".summary", t).focus();
      }
    }

    /** A run changed: update its task's last-run, state and where cells right away. */
    function onRun(run) {
      if (!run || !run.task_id) return;
      const tbody = $$("tbody.task:not(.new)", table).find((t) => t.dataset.id === run.task_id);
      if (!tbody) { scheduleRefresh(); return; }
      const last = $("td.last-run", tbody);
      if (last.dataset.run && last.dataset.run > run.id) return; // an older run
      last.dataset.run = run.id;
      last.textContent = "";
      const at = run.ended_at || run.started_at || run.created_at;
      last.append(
        el("a", { class: `badge s-${run.status}`, href: `/runs/${run.id}`, text: statusLabel(run.status) }),
        " ",
        el("time", { datetime: at, "data-rel": true, title: new Date(at).toLocaleString(), text: relative(new Date(at)) }),
      );
      const state = $("td.state", tbody);
      if (ACTIVE.has(run.status)) {
        state.textContent = "";
        state.append(el("a", {
          class: run.status === "queued" ? "state-queued" : "state-running",
          href: `/runs/${run.id}`,
          text: run.status === "queued" ? "queued" : "running now",
        }));
      } else {
        scheduleRefresh(); // idle, restarting or crash loop: the server knows
      }
      const node = $("td.where", tbody);
      node.textContent = run.node || "—";
    }

    const scheduleRefresh = throttle(() => { refreshList(); }, 1500);

    onEvents({
      run: onRun,
      state: scheduleRefresh,
      supervision: scheduleRefresh,
      lagged: scheduleRefresh,
    });
    window.addEventListener("hashchange", openFromHash);
    window.addEventListener("beforeunload", (e) => {
      if ($$("form.panel", table).some((f) => f.dataset.dirty)) { e.preventDefault(); e.returnValue = ""; }
    });
    openFromHash();
  }

  // ----------------------------------------------------------------- node page

  function initNode() {
    initTransfer(null);
    const live = $("#node-live");
    if (!live) return;
    const reload = throttle(async () => {
      try {
        const res = await fetch("/node", { headers: { Accept: "text/html" } });
        if (!res.ok) return;
        const doc = new DOMParser().parseFromString(await res.text(), "text/html");
        const fresh = $("#node-live", doc);
        if (fresh) $("#node-live").replaceWith(document.importNode(fresh, true));
        refreshTimes();
      } catch { /* try again on the next event */ }
    }, 2000);
    onEvents({ run: reload, supervision: reload, state: reload, lagged: reload });
  }

  // ----------------------------------------------------------------- peers page

  function initPeers() {
    // Announcements arrive over the mesh, not as events here: refresh the table every 2 s.
    setInterval(async () => {
      try {
        const res = await fetch("/peers", { headers: { Accept: "text/html" } });
        if (!res.ok) return;
        const doc = new DOMParser().parseFromString(await res.text(), "text/html");
        const fresh = $("#peers-live", doc);
        if (fresh) $("#peers-live").replaceWith(document.importNode(fresh, true));
      } catch { /* try again */ }
    }, 2000);
  }

  // The cluster key is a secret: fetched and shown only on request.
  function initClusterKey() {
    const button = $("#cluster-key-show");
    if (!button) return;
    button.addEventListener("click", async () => {
      const code = $("#cluster-key");
      if (button.dataset.shown) {
        code.textContent = "********";
        button.textContent = "Show";
        delete button.dataset.shown;
        return;
      }
      try {
        const data = await api("GET", "/api/cluster-key");
        code.textContent = data.key || "(none)";
        button.textContent = "Hide";
        button.dataset.shown = "1";
      } catch (err) {
        code.textContent = `not available: ${err.message}`;
      }
    });
  }

  // ------------------------------------------------------------------ run page

  function initRun() {
    const box = $("#run");
    const id = box.dataset.runId;
    const log = $("#run-log");
    const status = $("#log-status");
    const follow = $("#log-follow");
    const stop = $("#stop-run");
    let offset = 0, ended = false, received = false;

    function append(text) {
      log.append(document.createTextNode(text));
      received = true;
      if (follow.checked) log.scrollTop = log.scrollHeight;
    }

    function field(name, value) {
      const dd = $(`[data-field="${name}"]`, box);
      if (!dd) return;
      dd.textContent = "";
      if (value === "" || value === null || value === undefined) dd.append(el("span", { class: "muted", text: "—" }));
      else dd.append(value);
    }

    function showRun(run) {
      for (const badge of [$("#run-status"), $('[data-field="status"]', box)]) {
        if (!badge) continue;
        badge.className = badge.className.replace(/\bs-\S+/g, "").trim() + ` s-${run.status}`;
        badge.textContent = statusLabel(run.status);
      }
      let exit = "";
      if (run.exit_code !== undefined && run.exit_code !== null) exit = `exit ${run.exit_code}`;
      else if (run.signal !== undefined && run.signal !== null) exit = `signal ${run.signal}`;
      else if (run.outcome && run.outcome.kind === "failed_to_start") exit = `failed to start: ${run.outcome.error}`;
      else if (run.outcome && run.outcome.kind === "timed_out") exit = "timed out";
      else if (run.outcome && run.outcome.kind === "lost") exit = "lost (its node went away)";
      field("exit", exit);
      const fmt = (t) => t ? new Date(t).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC").replace(/Z$/, " UTC") : "";
      if (run.started_at) field("started", fmt(run.started_at));
      field("ended", fmt(run.ended_at));
      if (run.started_at && run.ended_at) {
        const ms = new Date(run.ended_at) - new Date(run.started_at);
        const s = ms / 1000;
        field("duration", s < 1 ? `${ms} ms` : s < 60 ? `${s.toFixed(1)} s` : s < 3600
          ? `${Math.floor(s / 60)} min ${Math.floor(s % 60)} s` : `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`);
      }
      const actions = run.actions || [];
      field("actions", actions.length
        ? el("ul", { class: "plain" }, ...actions.map((a) => el("li", { text: a })))
        : el("span", { class: "muted", text: "nothing" }));
      if (stop && !ACTIVE.has(run.status)) stop.remove();
    }

    function connect() {
      const es = new EventSource(`/api/runs/${id}/log?follow=true&offset=${offset}`);
      es.addEventListener("log", (e) => {
        append(e.data);
        const next = Number(e.lastEventId);
        if (next > 0) offset = next;
      });
      es.addEventListener("end", (e) => {
        ended = true;
        es.close();
        let run = null;
        try { run = JSON.parse(e.data); } catch { /* keep the page as it is */ }
        if (!received) log.append(el("span", { class: "log-note", text: "(no output)" }));
        if (run) {
          showRun(run);
          setStatus(status, `finished: ${statusLabel(run.status)}`, run.status === "succeeded" ? "ok" : "bad");
        } else {
          setStatus(status, "finished");
        }
      });
      es.onerror = () => {
        es.close();
        if (ended) return;
        setStatus(status, "connection lost, retrying…", "bad");
        setTimeout(() => { setStatus(status, "following…"); connect(); }, 2000);
      };
    }

    if (stop) {
      stop.addEventListener("click", async () => {
        stop.disabled = true;
        setStatus(status, "stopping…");
        try {
          await api("POST", `/api/runs/${id}/stop`);
        } catch (err) {
          if (ended) return;
          stop.disabled = false;
          setStatus(status, `could not stop: ${err.message}`, "bad");
        }
      });
    }
    connect();
  }

  // ---------------------------------------------------------------------- boot

  document.addEventListener("DOMContentLoaded", () => {
    refreshTimes();
    setInterval(refreshTimes, 30000);
    if ($("#task-table")) initTasks();
    if ($("#settings-form")) initSettings();
    else if (document.body.dataset.page === "node") initNode();
    else if (document.body.dataset.page === "peers") initPeers();
    initClusterKey();
    if ($("#run")) initRun();
  });
})();

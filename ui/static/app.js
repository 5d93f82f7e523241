// taskmesh web UI: talks to the JSON API. Plain JavaScript, no build step.
// User text only ever reaches the page through textContent or form values, never innerHTML.
"use strict";

(() => {
  const $ = (sel, root = document) => root.querySelector(sel);
  const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

  // ---------------------------------------------------------------- language

  /** The page's language; a German page loads its catalog (`/static/de.js`) before this file. */
  const LANG = document.documentElement.lang || "en";

  /** The catalog's `[English, German]` pairs: exact texts, and patterns with `{}` parts. */
  const CATALOG = (() => {
    const exact = new Map();
    const patterns = [];
    for (const [en, de] of (LANG === "de" && window.TASKMESH_TEXT) || []) {
      if (en.includes("{}")) patterns.push([en, en.split("{}"), de.split("{}")]);
      else exact.set(en, de);
    }
    // The longest pattern first, as the server orders them (ui/src/i18n.rs).
    patterns.sort((a, b) => b[0].length - a[0].length);
    return { exact, patterns };
  })();

  /**
   * English text in the page's language: its entry, else the first pattern that reads it with
   * its parts translated in turn, else the text itself (as `Lang::tr` in ui/src/i18n.rs).
   */
  function T(text, depth = 3) {
    text = String(text);
    const exact = CATALOG.exact.get(text);
    if (exact !== undefined) return exact;
    if (depth === 0) return text;
    for (const [, en, de] of CATALOG.patterns) {
      const parts = readPattern(en, text);
      if (parts) return de.map((piece, i) => (i ? T(parts[i - 1], depth - 1) : "") + piece).join("");
    }
    return text;
  }

  /** The parts of `text` between a pattern's literal pieces, or null when it does not fit. */
  function readPattern(pieces, text) {
    const first = pieces[0];
    const last = pieces[pieces.length - 1];
    if (text.length < first.length + last.length || !text.startsWith(first) || !text.endsWith(last)) return null;
    let rest = text.slice(first.length, text.length - last.length);
    const parts = [];
    for (const piece of pieces.slice(1, -1)) {
      const at = rest.indexOf(piece);
      if (at <= 0) return null;
      parts.push(rest.slice(0, at));
      rest = rest.slice(at + piece.length);
    }
    if (!rest) return null;
    parts.push(rest);
    return parts;
  }

  /** The switch in the header: the choice is a cookie, so every node's pages follow it. */
  function initLanguageSwitch() {
    for (const button of $$(".lang-switch")) {
      button.addEventListener("click", () => {
        document.cookie = `taskmesh_lang=${button.dataset.lang}; Path=/; Max-Age=31536000; SameSite=Lax`;
        location.reload();
      });
    }
  }

  // ---------------------------------------------------------------- helpers

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
      const err = new Error(T(`The node did not answer (${e.message}).`));
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
      err.body = data;
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
    if (d.line && d.column) return T(`line ${d.line}, column ${d.column}`);
    if (d.line) return T(`line ${d.line}`);
    if (d.column) return T(`column ${d.column}`);
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
    if (n < 5) return T("just now");
    let t;
    if (n < 60) t = `${n} s`;
    else if (n < 3600) t = `${Math.floor(n / 60)} min`;
    else if (n < 86400) t = `${Math.floor(n / 3600)} h`;
    else t = `${Math.floor(n / 86400)} d`;
    return T(secs < 0 ? `in ${t}` : `${t} ago`);
  }

  function refreshTimes() {
    for (const t of $$("time[data-rel]")) {
      const d = new Date(t.getAttribute("datetime"));
      if (!isNaN(d)) {
        t.textContent = relative(d);
        if (!t.title) t.title = d.toLocaleString(LANG);
      }
    }
  }

  function statusLabel(status) { return T(String(status).replace(/_/g, " ")); }

  /** A `<time>` in the browser's zone, with the UTC time on hover. */
  function localTime(iso) {
    const d = new Date(iso);
    const utc = d.toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC").replace(/Z$/, " UTC");
    return el("time", { datetime: iso, title: utc, text: localText(d) });
  }

  function localText(d) {
    return d.toLocaleString(LANG, { weekday: "short", year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit" });
  }

  /** Times the server wrote in UTC (`data-local`) are shown in the browser's zone; UTC stays on hover. */
  function showLocalTimes(root = document) {
    for (const t of $$("time[data-local]", root)) {
      const d = new Date(t.getAttribute("datetime"));
      if (!isNaN(d)) t.textContent = localText(d);
    }
  }

  /** "850 ms", "12.3 s", "4 min 5 s", "2 h 3 min", as the server writes durations. */
  function durationText(ms) {
    const s = ms / 1000;
    if (s < 1) return `${Math.max(0, Math.round(ms))} ms`;
    if (s < 60) return `${s.toFixed(1)} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${Math.floor(s % 60)} s`;
    return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  }
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
        addError(errors, T("Choose an exported settings file first."));
        file.focus();
        return;
      }
      if (!confirm(T(`Replace all settings with ${chosen.name}?`))) return;
      button.disabled = true;
      try {
        const text = await chosen.text();
        const settings = await api("POST", "/api/settings/import", text, { raw: true });
        setStatus(status, T(`Imported ${chosen.name}.`), "ok");
        if (onImported) onImported(settings);
      } catch (e) {
        addError(errors, T(e.message));
        for (const d of e.details) {
          const at = [cleanPath(d.path) || T("(document)"), where(d)].filter(Boolean).join(", ");
          addError(errors, `${at}: ${T(d.message)}`);
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
    // What the editor held when last loaded or saved: anything else is an unsaved edit.
    let clean = editor.value;
    const show = (settings) => {
      editor.value = JSON.stringify(settings, null, 2);
      clean = editor.value;
      showChannels(settings.cluster && settings.cluster.channels);
    };
    const edited = () => editor.value !== clean;
    try { showChannels(JSON.parse(editor.value).cluster.channels); } catch { showChannels({}); }

    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      errors.textContent = "";
      editor.classList.remove("invalid");
      setStatus(status, T("Saving…"));
      try {
        const saved = await api("PUT", "/api/settings", editor.value, { raw: true });
        show(saved);
        setStatus(status, T("Saved."), "ok");
      } catch (err) {
        setStatus(status, T("Not saved."), "bad");
        addError(errors, T(err.message));
        let first = null;
        for (const d of err.details) {
          const at = [cleanPath(d.path) || T("(document)"), where(d)].filter(Boolean).join(", ");
          addError(errors, `${at}: ${T(d.message)}`);
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
      if (edited() && !confirm(T("Reload the settings from the node? Your unsaved edits will be lost."))) return;
      errors.textContent = "";
      editor.classList.remove("invalid");
      try {
        show(await api("GET", "/api/settings"));
        setStatus(status, T("Reloaded from the node."), "ok");
      } catch (err) {
        addError(errors, T(err.message));
      }
    });
    initTransfer((settings) => { show(settings); errors.textContent = ""; });
    initChannelForm({ editor, show, edited });
    window.addEventListener("beforeunload", (e) => {
      if (edited()) { e.preventDefault(); e.returnValue = ""; }
    });
  }

  /**
   * The channel form: writes a channel (and the bot token its kind needs) into the settings
   * document and saves the document, so that nobody has to write the JSON by hand.
   */
  function initChannelForm({ editor, show, edited }) {
    const form = $("#channel-form");
    if (!form) return;
    const kind = $("#ch-kind");
    const errors = $("#channel-errors");
    const status = $("#channel-status");
    const showKind = () => { for (const part of $$(".ch-kind", form)) part.hidden = part.dataset.kind !== kind.value; };
    kind.addEventListener("change", showKind);
    showKind();
    const value = (id) => $(id).value.trim();
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      errors.textContent = "";
      setStatus(status, "");
      const name = value("#ch-name");
      const problems = [];
      if (!name) problems.push(T("Give the channel a name, e.g. ops."));
      let settings;
      try { settings = JSON.parse(editor.value); } catch {
        problems.push(T("The settings above are not valid JSON: fix them or press Reload, then save the channel."));
      }
      let channel = null;
      if (kind.value === "telegram") {
        if (!value("#ch-chat-id")) problems.push(T("Telegram needs the chat id (see how to get it below)."));
        channel = { kind: "telegram", chat_id: value("#ch-chat-id") };
      } else if (kind.value === "slack") {
        if (value("#ch-slack-webhook")) channel = { kind: "slack", webhook_url: value("#ch-slack-webhook") };
        else if (value("#ch-slack-channel")) channel = { kind: "slack", channel: value("#ch-slack-channel") };
        else problems.push(T("Slack needs an incoming webhook URL, or a channel for the bot."));
      } else {
        if (!value("#ch-webhook-url")) problems.push(T("A webhook needs its URL."));
        channel = { kind: "webhook", url: value("#ch-webhook-url") };
      }
      if (problems.length) { for (const p of problems) addError(errors, p); return; }
      if (edited() && !confirm(T("The settings editor has unsaved edits. Save them together with the channel?"))) return;
      settings.cluster = settings.cluster || {};
      settings.cluster.channels = settings.cluster.channels || {};
      settings.cluster.channels[name] = channel;
      const token = kind.value === "telegram" ? value("#ch-telegram-token")
        : kind.value === "slack" && channel.channel ? value("#ch-slack-token") : "";
      if (token) {
        const service = kind.value;
        settings.cluster[service] = Object.assign({}, settings.cluster[service], { bot_token: token });
      }
      setStatus(status, T("Saving…"));
      try {
        show(await api("PUT", "/api/settings", settings));
        setStatus(status, T(`Saved channel ${name}. Send it a test below the list.`), "ok");
        for (const input of $$("input[type=password]", form)) input.value = "";
      } catch (err) {
        setStatus(status, T("Not saved."), "bad");
        addError(errors, T(err.message));
        for (const d of err.details || []) addError(errors, `${cleanPath(d.path)}: ${T(d.message)}`);
      }
    });
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
      const button = el("button", { type: "button", class: "btn small" }, T("Send test"));
      button.addEventListener("click", async () => {
        button.disabled = true;
        setStatus(result, T("Sending…"));
        try {
          const answer = await api("POST", `/api/channels/${encodeURIComponent(name)}/test`);
          setStatus(result, T(`Delivered (${answer.kind}).`), "ok");
        } catch (err) {
          setStatus(result, T(err.message), "bad");
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

    /** Opens or closes a row; an opened row's panel is fetched from the task's page first. */
    async function setOpen(tbody, open, { focus = false, updateHash = true } = {}) {
      const panelRow = $(".panel-row", tbody);
      panelRow.hidden = !open;
      tbody.classList.toggle("open", open);
      $(".row-toggle", tbody).setAttribute("aria-expanded", String(open));
      const id = tbody.dataset.id;
      if (updateHash && id) {
        const here = location.pathname + location.search;
        if (open) history.replaceState(null, "", `${here}#task-${id}`);
        else if (location.hash === `#task-${id}`) history.replaceState(null, "", here);
      }
      if (open) await loadPanel(tbody);
      if (open && focus) {
        const name = $(".f-name", tbody);
        if (name) name.focus();
      }
    }

    /** Puts the saved task's panel into its row, unless the row has one already. */
    async function loadPanel(tbody) {
      const cell = $(".panel-row > td", tbody);
      const id = tbody.dataset.id;
      if (!id || formOf(tbody)) return;
      if (!cell.dataset.loading) {
        cell.dataset.loading = "1";
        cell.textContent = "";
        cell.append(el("p", { class: "muted", role: "status", text: T("Loading…") }));
      }
      try {
        const res = await fetch(`/tasks/${encodeURIComponent(id)}`, { headers: { Accept: "text/html" } });
        const doc = new DOMParser().parseFromString(await res.text(), "text/html");
        const form = $(`#task-table form.panel`, doc);
        if (formOf(tbody)) return; // another call put it in first
        cell.textContent = "";
        if (res.ok && form) {
          const panel = document.importNode(form, true);
          cell.append(panel);
          readRunControls(panel);
          if (($(".f-mode:checked", panel) || {}).value === "cron") previewCron(panel, 0);
        }
        else cell.append(el("p", { class: "field-error", text: res.status === 404 ? T("This task has been removed.") : T(`The panel could not be loaded (${res.status}).`) }));
      } catch (e) {
        cell.textContent = "";
        cell.append(el("p", { class: "field-error", text: T(`The node did not answer (${e.message}).`) }));
      } finally {
        delete cell.dataset.loading;
      }
    }

    function openFromHash() {
      const m = /^#task-(.+)$/.exec(location.hash);
      if (!m) return;
      const id = decodeURIComponent(m[1]);
      const tbody = document.getElementById(`task-${id}`);
      if (!tbody || !tbody.classList.contains("task")) {
        // Not on this page of the list: the task's own page has it.
        if (document.body.dataset.page === "tasks" && $("#task-filter")) location.replace(`/tasks/${encodeURIComponent(id)}`);
        return;
      }
      setOpen(tbody, true, { updateHash: false });
      tbody.scrollIntoView({ block: "start", behavior: "smooth" });
    }

    // A click on a summary row, or on its name (a button: Enter and Space too), toggles its
    // panel; the arrow keys move between the rows' names.
    table.addEventListener("click", (e) => {
      const toggle = e.target.closest("button.toggle");
      if (toggle) { setEnabled(tbodyOf(toggle), toggle.getAttribute("aria-pressed") !== "true"); return; }
      const summary = e.target.closest("tr.summary");
      if (!summary) return;
      if (!e.target.closest(".row-toggle") && e.target.closest("a, button, input, select, textarea")) return;
      const tbody = tbodyOf(summary);
      setOpen(tbody, !isOpen(tbody));
    });
    table.addEventListener("keydown", (e) => {
      const name = e.target.closest(".row-toggle");
      if (name && (e.key === "ArrowDown" || e.key === "ArrowUp")) {
        e.preventDefault();
        const names = $$("tbody.task > tr.summary .row-toggle", table);
        const next = names[names.indexOf(name) + (e.key === "ArrowDown" ? 1 : -1)];
        if (next) next.focus();
      } else if (e.key === "Escape" && e.target.closest("form.panel")) {
        const tbody = tbodyOf(e.target);
        setOpen(tbody, false);
        $(".row-toggle", tbody).focus();
      }
    });

    // Edits mark the panel dirty (live refreshes leave it alone) and update dependent controls.
    table.addEventListener("input", (e) => {
      const form = e.target.closest("form.panel");
      // A run's parameters are not an edit of the task.
      if (!form || e.target.classList.contains("f-param")) return;
      form.dataset.dirty = "1";
      const tbody = tbodyOf(form);
      if (e.target.classList.contains("f-name") && tbody.classList.contains("new")) {
        $(".new-name", tbody).textContent = e.target.value.trim() || T("New task");
      }
      if (e.target.matches(".f-schedule, .f-timezone")) previewCron(form);
      if (e.target.classList.contains("f-spec")) readRunControls(form);
      if (e.target.classList.contains("f-timeout")) writeSpecKey(form, "timeout", e.target.value.trim() || null);
      if (e.target.classList.contains("f-arg") && $(".f-action", e.target.closest(".rule")).value === "run") {
        suggestTasks(e.target.value.trim());
      }
      e.target.classList.remove("invalid");
    });

    /** Offers the names of tasks that contain what is typed in a "run task" rule. */
    const suggestTasks = (() => {
      let timer = null, asked = null;
      return (typed) => {
        clearTimeout(timer);
        timer = setTimeout(async () => {
          if (typed === asked) return;
          asked = typed;
          let tasks;
          try { tasks = await api("GET", `/api/tasks?limit=20&q=${encodeURIComponent(typed)}`); } catch { return; }
          const list = $("#task-names");
          if (!list || typed !== asked) return;
          list.textContent = "";
          for (const t of tasks) list.append(el("option", { value: t.name }));
        }, 150);
      };
    })();

    /** The row's enable toggle: one change through the API, the row and panel follow. */
    async function setEnabled(tbody, enabled) {
      const button = $("button.toggle", tbody);
      const id = tbody.dataset.id;
      button.disabled = true;
      try {
        const task = await api("POST", `/api/tasks/${encodeURIComponent(id)}/${enabled ? "enable" : "disable"}`);
        showEnabled(tbody, task.enabled);
        const form = formOf(tbody);
        if (form && !form.dataset.dirty) {
          $(".f-enabled", form).checked = task.enabled;
          form.dataset.updatedAt = task.updated_at;
        }
      } catch (err) {
        button.title = T(`Not changed: ${err.message}`);
        button.classList.add("failed");
      } finally {
        button.disabled = false;
      }
    }

    function showEnabled(tbody, enabled) {
      const button = $("button.toggle", tbody);
      const name = $("td.name", tbody).textContent.trim();
      button.setAttribute("aria-pressed", String(enabled));
      button.classList.toggle("on", enabled);
      button.classList.toggle("off", !enabled);
      button.classList.remove("failed");
      button.textContent = enabled ? "enabled" : "disabled";
      button.title = `${enabled ? T("Disable") : T("Enable")} ${name}`;
    }
    table.addEventListener("change", (e) => {
      const form = e.target.closest("form.panel");
      if (!form) return;
      form.dataset.dirty = "1";
      if (e.target.classList.contains("f-mode")) showCron(form);
      if (e.target.classList.contains("f-concurrency")) writeSpecKey(form, "concurrency", e.target.value === "forbid" ? null : e.target.value);
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
      } else if (e.target.closest(".keep-mine")) {
        form.dataset.updatedAt = $(".conflict", form).dataset.theirs;
        $(".conflict", form).hidden = true;
        save(form, { execute: false });
      } else if (e.target.closest(".take-theirs")) {
        const tbody = tbodyOf(form);
        $(".panel-row > td", tbody).textContent = "";
        setOpen(tbody, true, { focus: true });
      } else if (e.target.closest(".execute-with")) {
        askParameters(form);
      } else if (e.target.closest(".execute-given")) {
        const parameters = givenParameters(form);
        $(".given-parameters", form).hidden = true;
        save(form, { execute: true, parameters });
      } else if (e.target.closest(".cancel-given")) {
        $(".given-parameters", form).hidden = true;
        $(".execute-with", form).focus();
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

    /**
     * The JSON box is where `timeout` and `concurrency` live; their controls write into it
     * (keeping the rest as typed, re-indented) and follow it while it reads as JSON.
     */
    function writeSpecKey(form, key, value) {
      const box = $(".f-spec", form);
      const err = $('[data-err="run"]', form);
      let spec;
      try { spec = JSON.parse(box.value || "{}"); } catch {
        err.textContent = "";
        addError(err, T(`Fix the JSON above first: ${key} is written into it.`));
        return;
      }
      if (!spec || typeof spec !== "object" || Array.isArray(spec)) return;
      err.textContent = "";
      if (value === null) delete spec[key]; else spec[key] = value;
      box.value = JSON.stringify(spec, null, 2);
    }

    /** The parameters a parsed spec declares, or null when it declares none. */
    function parametersOf(spec) {
      const given = spec && typeof spec === "object" ? spec.parameters : null;
      return given && typeof given === "object" && !Array.isArray(given) && Object.keys(given).length ? given : null;
    }

    /** The parameters the JSON box declares, or null (none, or it does not parse). */
    function specParameters(form) {
      try { return parametersOf(JSON.parse($(".f-spec", form).value || "{}")); } catch { return null; }
    }

    /** Opens the fields for a run's own parameters, one per parameter the task declares. */
    function askParameters(form) {
      const fields = $(".given-fields", form);
      fields.textContent = "";
      for (const [name, value] of Object.entries(specParameters(form) || {})) {
        const text = typeof value === "string" ? value : JSON.stringify(value);
        const input = el("input", { class: "f-param mono", type: "text", value: text, autocomplete: "off" });
        input.dataset.name = name;
        input.dataset.was = text;
        fields.append(el("label", { class: "field" }, el("span", { class: "label mono", text: name }), input));
      }
      $(".given-parameters", form).hidden = false;
      const first = $(".f-param", form);
      if (first) first.focus();
    }

    /** The parameters typed for a run: those changed from the task's own values. */
    function givenParameters(form) {
      const given = {};
      for (const input of $$(".f-param", form)) {
        if (input.value !== input.dataset.was) given[input.dataset.name] = input.value;
      }
      return given;
    }

    function readRunControls(form) {
      let spec;
      try { spec = JSON.parse($(".f-spec", form).value || "{}"); } catch { return; }
      if (!spec || typeof spec !== "object") return;
      const offer = $(".execute-with", form);
      if (offer) offer.hidden = !parametersOf(spec);
      const concurrency = $(".f-concurrency", form), timeout = $(".f-timeout", form);
      if (concurrency) concurrency.value = ["allow", "replace"].includes(spec.concurrency) ? spec.concurrency : "forbid";
      if (timeout && document.activeElement !== timeout) timeout.value = typeof spec.timeout === "string" ? spec.timeout : "";
      const err = $('[data-err="run"]', form);
      if (err) err.textContent = "";
    }

    function showCron(form) {
      const mode = ($(".f-mode:checked", form) || {}).value;
      $(".cron", form).hidden = mode !== "cron";
      if (mode === "cron") previewCron(form, 0);
    }

    /**
     * Under the crontab field: the entry in plain words and its next five times in the task's
     * timezone, as the node reads it (or why it cannot), a moment after typing stops.
     */
    function previewCron(form, delay = 300) {
      clearTimeout(form._cronTimer);
      form._cronTimer = setTimeout(async () => {
        const box = $(".cron-preview", form);
        const cron = $(".f-schedule", form).value.trim();
        const timeZone = $(".f-timezone", form).value.trim() || "UTC";
        if (!box || !cron) { if (box) box.textContent = ""; return; }
        const asked = `${cron}\n${timeZone}`;
        form._cronAsked = asked;
        let answer = null, error = null;
        try {
          answer = await api("GET", `/api/schedule?cron=${encodeURIComponent(cron)}&timezone=${encodeURIComponent(timeZone)}`);
        } catch (err) {
          error = T(err.details && err.details.length ? err.details[0].message : err.message);
        }
        if (form._cronAsked !== asked) return; // typed on meanwhile
        box.textContent = "";
        box.classList.toggle("bad", !!error);
        if (error) { box.append(el("span", { text: error })); return; }
        if (answer.reading) {
          const reading = answer.reading; // in the page's language already
          box.append(el("p", { class: "reading", text: reading[0].toUpperCase() + reading.slice(1) }));
        }
        if (answer.reboot) return;
        const list = el("ol", { class: "next-times", "aria-label": T("Next times") });
        for (const at of answer.next) {
          const date = new Date(at);
          let local;
          try {
            local = date.toLocaleString(LANG, { timeZone, weekday: "short", year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: date.getUTCSeconds() ? "2-digit" : undefined });
          } catch { local = date.toISOString(); }
          list.append(el("li", {}, el("time", { datetime: at, title: `${date.toISOString().replace(".000", "")} (UTC)` , text: local }), " ", el("span", { class: "muted", text: relative(date) })));
        }
        box.append(list);
      }, delay);
    }

    function showArg(rule) {
      const action = $(".f-action", rule).value;
      const label = $(".rule-arg", rule);
      const arg = $(".f-arg", rule);
      label.hidden = action !== "notify" && action !== "run";
      if (action === "run") { arg.setAttribute("list", "task-names"); arg.placeholder = T("task name"); }
      if (action === "notify") { arg.setAttribute("list", "channel-names"); arg.placeholder = T("channel (from the settings)"); }
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
      const task = {
        name: $(".f-name", form).value,
        description: ($(".f-description", form) || { value: "" }).value,
        labels: ($(".f-labels", form) || { value: "" }).value.split(/[\s,]+/).filter(Boolean),
        spec: $(".f-spec", form).value,
        when,
        placement: ($(".f-placement", form) || {}).value || form.dataset.placement || "one",
        exit_rules,
        enabled: $(".f-enabled", form).checked,
      };
      if (form.dataset.updatedAt) task.updated_at = form.dataset.updatedAt;
      return task;
    }

    /** What differs between the saved task and what the panel holds, in the panel's words. */
    function differences(current, mine) {
      const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);
      let spec = null;
      try { spec = JSON.parse(mine.spec); } catch { /* shown as changed */ }
      const when = current.when || {};
      const out = [];
      if (current.name !== mine.name.trim()) out.push(T(`name: now “${current.name}”`));
      if ((current.description || "") !== mine.description.trim()) out.push(T("the description"));
      if (!same(current.labels || [], mine.labels)) out.push(T(`labels: now ${(current.labels || []).join(" ") || "none"}`));
      if (!spec || !same(normalSpec(current.spec), normalSpec(spec))) out.push(T("the JSON (dependencies, parameters, priority, command)"));
      if (when.mode !== mine.when.mode) out.push(T(`when: now ${T(when.mode)}`));
      else if (when.mode === "cron" && (when.schedule !== mine.when.schedule || when.timezone !== mine.when.timezone || when.catch_up !== mine.when.catch_up)) {
        out.push(T(`schedule: now ${when.schedule} (${when.timezone})`));
      }
      if (!same((current.exit_rules || []).map((r) => [String(r.on), r.action, r.channel || r.task || ""]),
        mine.exit_rules.map((r) => [r.on, r.action, r.channel || r.task || ""]))) out.push(T("the exit-code rules"));
      if (current.enabled !== mine.enabled) out.push(current.enabled ? T("now enabled") : T("now disabled"));
      if ((current.placement || "one") !== mine.placement) out.push(T(`placement: now ${current.placement}`));
      return out;
    }

    /** A spec without its empty defaults, so that `{}` and a spec with empty lists compare equal. */
    function normalSpec(spec) {
      const out = {};
      for (const [k, v] of Object.entries(spec || {}).sort()) {
        if (v === null || v === 0 || v === false) continue;
        if (Array.isArray(v) && !v.length) continue;
        if (typeof v === "object" && !Array.isArray(v) && !Object.keys(v).length) continue;
        out[k] = v;
      }
      return out;
    }

    /** A save refused because the task changed since the panel was opened: say what changed. */
    function showConflict(form, current) {
      const box = $(".conflict", form);
      const at = new Date(current.updated_at);
      $(".conflict-text", box).textContent =
        T(`This task was changed at ${at.toLocaleString(LANG)} while you edited it. Nothing of yours is lost, and nothing was saved.`);
      const list = $(".conflict-fields", box);
      list.textContent = "";
      const diff = differences(current, collect(form));
      for (const d of diff.length ? diff : [T("nothing you can see here (it was saved again unchanged)")]) list.append(el("li", { text: T(`Changed there: ${d}`) }));
      box.hidden = false;
      box.dataset.theirs = current.updated_at;
      $(".keep-mine", box).focus();
    }

    function clearErrors(form) {
      for (const box of $$(".err", form)) box.textContent = "";
      for (const f of $$(".invalid", form)) f.classList.remove("invalid");
      const conflict = $(".conflict", form);
      if (conflict) conflict.hidden = true;
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
      if (!details.length) addError(box("general"), T(err.message));
      for (const d of details) {
        const message = T(d.message);
        const path = cleanPath(d.path);
        const at = where(d);
        let m;
        if (path === "name") {
          addError(box("name"), message);
          mark($(".f-name", form));
        } else if (path === "description") {
          addError(box("description"), message);
          mark($(".f-description", form));
        } else if (path === "labels" || path.startsWith("labels[")) {
          addError(box("labels"), path === "labels" ? message : `${path}: ${message}`);
          mark($(".f-labels", form));
        } else if (path === "spec" || path.startsWith("spec.") || path.startsWith("spec[")) {
          const sub = path === "spec" ? "" : path.slice(5) || path;
          // Messages in plain words name their field ("priority" must be …) already.
          const named = sub && message.includes(`"${sub.split(".").pop()}"`);
          const prefix = [!named && sub, at].filter(Boolean).join(", ");
          addError(box("spec"), prefix ? `${prefix}: ${message}` : message);
          mark($(".f-spec", form));
          if (d.line && !caret) caret = d;
        } else if (path === "when.schedule") {
          addError(box("schedule"), at ? `${at}: ${message}` : message);
          mark($(".f-schedule", form));
        } else if (path === "when.timezone") {
          addError(box("timezone"), message);
          mark($(".f-timezone", form));
        } else if (path === "when" || path.startsWith("when.")) {
          addError(box("when"), message);
        } else if ((m = /^exit_rules\[(\d+)\](.*)$/.exec(path))) {
          const row = $$(".rule", form)[Number(m[1])];
          if (row) {
            addError(box("rule", row), message);
            if (m[2].startsWith(".on")) mark($(".f-on", row));
            else if (!$(".rule-arg", row).hidden) mark($(".f-arg", row));
            else mark($(".f-action", row));
          } else {
            addError(box("general"), `${path}: ${message}`);
          }
        } else if (path.startsWith("exit_rules")) {
          addError(box("general"), `${path}: ${message}`);
        } else {
          addError(box("general"), [path, at].filter(Boolean).join(", ") + (path || at ? ": " : "") + message);
        }
      }

      if (caret) caretTo($(".f-spec", form), caret.line, caret.column);
      else if (firstField) firstField.focus();
    }

    function busy(form, on) {
      for (const b of $$(".actions .btn", form)) b.disabled = on;
    }

    async function save(form, { execute, parameters = {} }) {
      const tbody = tbodyOf(form);
      const status = $(".status", form);
      const id = form.dataset.id;
      clearErrors(form);
      busy(form, true);
      setStatus(status, execute ? T("Saving, then starting…") : T("Saving…"));
      let task;
      try {
        task = id
          ? await api("PUT", `/api/tasks/${encodeURIComponent(id)}`, collect(form))
          : await api("POST", "/api/tasks", collect(form));
      } catch (err) {
        busy(form, false);
        if (err.status === 409 && err.body && err.body.current) {
          setStatus(status, T("Not saved: changed elsewhere."), "bad");
          showConflict(form, err.body.current);
          return;
        }
        setStatus(status, err.details && err.details.length ? T("Not saved: see the marked fields.") : T("Not saved."), "bad");
        showErrors(form, err);
        return;
      }
      delete form.dataset.dirty;
      let run = null, runError = null;
      if (execute) {
        try {
          const given = Object.keys(parameters).length ? { parameters } : undefined;
          run = await api("POST", `/api/tasks/${encodeURIComponent(task.id)}/run`, given);
        } catch (err) {
          runError = err.message;
        }
      }
      if (tbody.classList.contains("new")) tbody.remove();
      await refreshList(new Set([task.id]));
      let fresh = document.getElementById(`task-${task.id}`);
      if (!fresh) {
        // A new task sits on the last page of the list: show it where it was typed.
        fresh = await fetchRow(task.id);
        if (!fresh) { location.href = `/tasks/${encodeURIComponent(task.id)}`; return; }
        table.append(fresh);
      }
      await setOpen(fresh, true);
      const freshForm = formOf(fresh);
      const freshStatus = $(".status", freshForm);
      if (run) {
        freshStatus.textContent = "";
        freshStatus.append(T("Saved and started:") + " ", el("a", { href: `/runs/${run.id}`, text: T(`run ${run.id.slice(0, 8)}… →`) }));
        freshStatus.className = "status ok";
      } else if (runError) {
        setStatus(freshStatus, T(`Saved, but it did not start: ${runError}`), "bad");
      } else {
        setStatus(freshStatus, T("Saved."), "ok");
      }
      $(".save", freshForm).focus();
    }

    async function remove(form) {
      const tbody = tbodyOf(form);
      const name = $(".f-name", form).value.trim() || T("this new task");
      if (!form.dataset.id) {
        if (!form.dataset.dirty || confirm(T(`Discard ${name}?`))) { tbody.remove(); updateCount(); }
        return;
      }
      if (!confirm(T(`Remove the task “${name}”? Its runs stay in the history.`))) return;
      busy(form, true);
      try {
        await api("DELETE", `/api/tasks/${encodeURIComponent(form.dataset.id)}`);
        if (location.hash === `#task-${form.dataset.id}`) history.replaceState(null, "", location.pathname);
        tbody.remove();
        updateCount();
        scheduleRefresh();
      } catch (err) {
        busy(form, false);
        showErrors(form, err);
      }
    }

    /** Shows the "no tasks" row when there is none; the count itself comes with each refresh. */
    function updateCount() {
      const none = $("#no-tasks");
      if (none) none.hidden = $$("tbody.task", table).length > 0;
    }

    /** A saved task's row as its own page renders it (panel included). */
    async function fetchRow(id) {
      try {
        const res = await fetch(`/tasks/${encodeURIComponent(id)}`, { headers: { Accept: "text/html" } });
        if (!res.ok) return null;
        const doc = new DOMParser().parseFromString(await res.text(), "text/html");
        const row = $("#task-table > tbody.task", doc);
        return row ? document.importNode(row, true) : null;
      } catch { return null; }
    }

    const newTask = $("#new-task");
    if (newTask) newTask.addEventListener("click", () => {
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
        const res = await fetch(location.pathname + location.search, { headers: { Accept: "text/html" } });
        if (!res.ok) return;
        doc = new DOMParser().parseFromString(await res.text(), "text/html");
      } catch { return; }
      const focusedSummary = document.activeElement && document.activeElement.matches(".row-toggle")
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
      for (const sel of ["#task-count", "#task-runs", "nav.pager"]) {
        const cur = $(sel), next = $(sel, doc);
        if (cur && next) cur.replaceWith(document.importNode(next, true));
      }
      const channels = $("#channel-names", doc);
      if (channels) $("#channel-names").replaceWith(document.importNode(channels, true));
      updateCount();
      refreshTimes();
      if (focusedSummary) {
        const t = document.getElementById(`task-${focusedSummary}`);
        if (t) $(".row-toggle", t).focus();
      }
    }

    /** A run changed: update its task's last-run, state and where cells right away. */
    function onRun(run) {
      if (!run || !run.task_id) return;
      const tbody = $$("tbody.task:not(.new)", table).find((t) => t.dataset.id === run.task_id);
      if (!tbody) {
        // Another page's task: this page changes only when runs decide what it lists.
        if (/[?&](state|node)=./.test(location.search)) scheduleRefresh();
        return;
      }
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
          text: run.status === "queued" ? T("queued") : T("running now"),
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
    for (const form of $$("form.panel", table)) {
      readRunControls(form);
      if (($(".f-mode:checked", form) || {}).value === "cron") previewCron(form, 0);
    }
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
    const refresh = async () => {
      try {
        const res = await fetch("/peers", { headers: { Accept: "text/html" } });
        if (!res.ok) return;
        const doc = new DOMParser().parseFromString(await res.text(), "text/html");
        const fresh = $("#peers-live", doc);
        if (fresh) $("#peers-live").replaceWith(document.importNode(fresh, true));
      } catch { /* try again */ }
    };
    // Announcements arrive over the mesh, not as events here: refresh the table every 2 s.
    setInterval(refresh, 2000);
    // Drain and undrain buttons (the table is replaced on every refresh: one listener above it).
    const status = el("p", { class: "small", id: "drain-status", role: "status", "aria-live": "polite" });
    $("#peers-live").before(status);
    document.addEventListener("click", async (e) => {
      const button = e.target.closest("[data-drain], [data-undrain]");
      if (!button) return;
      const drain = button.hasAttribute("data-drain");
      const peer = drain ? button.dataset.drain : button.dataset.undrain;
      const name = button.dataset.name;
      if (drain && !confirm(T(`Drain ${name}? No new run goes there and its always-tasks move to other nodes; what runs there goes on to its end.`))) return;
      button.disabled = true;
      try {
        await api("POST", `/api/peers/${encodeURIComponent(peer)}/${drain ? "drain" : "undrain"}`);
        setStatus(status, drain ? T(`${name} is drained.`) : T(`${name} takes runs again.`));
        await refresh();
      } catch (err) {
        button.disabled = false;
        setStatus(status, err.message, "bad");
      }
    });
  }

  // The cluster key is a secret: fetched and shown only on request.
  function initClusterKey() {
    const button = $("#cluster-key-show");
    if (!button) return;
    button.addEventListener("click", async () => {
      const code = $("#cluster-key");
      if (button.dataset.shown) {
        code.textContent = "********";
        button.textContent = T("Show");
        delete button.dataset.shown;
        return;
      }
      try {
        const data = await api("GET", "/api/cluster-key");
        code.textContent = data.key || "(none)";
        button.textContent = T("Hide");
        button.dataset.shown = "1";
      } catch (err) {
        code.textContent = T(`not available: ${err.message}`);
      }
    });
  }

  // Named access tokens on /settings: made here (the token is shown once), removed here.
  function initTokens() {
    const form = $("#token-form");
    if (!form) return;
    const rows = $("#token-rows");
    const status = $("#token-status");
    const errors = $("#token-errors");
    const shown = () => {
      const any = rows.children.length > 0;
      $("#token-table").hidden = !any;
      $("#tokens-none").hidden = any;
    };
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      errors.textContent = "";
      $("#token-made").hidden = true;
      const name = $("#token-name").value.trim();
      const readOnly = $("#token-read-only").checked;
      const expiresIn = $("#token-expires").value || null;
      try {
        const made = await api("POST", "/api/tokens", { name, read_only: readOnly, expires_in: expiresIn });
        $("#token-value").textContent = made.token;
        $("#token-made").hidden = false;
        const remove = el("button", { type: "button", class: "btn small danger", "data-token-remove": made.name, text: T("Remove") });
        rows.append(el("tr", { "data-token": made.name },
          el("td", { class: "mono", text: made.name }),
          el("td", { text: made.read_only ? T("read-only") : T("full") }),
          el("td", { text: T("just now") }),
          el("td", { text: made.expires ? new Date(made.expires).toLocaleString() : T("never") }),
          el("td", {}, remove)));
        shown();
        $("#token-name").value = "";
        setStatus(status, T(`Made token ${made.name}.`), "ok");
      } catch (err) {
        for (const d of err.details.length ? err.details : [{ message: err.message }]) addError(errors, T(d.message));
        setStatus(status, T("Not made."), "bad");
      }
    });
    rows.addEventListener("click", async (e) => {
      const button = e.target.closest("[data-token-remove]");
      if (!button) return;
      const name = button.dataset.tokenRemove;
      if (!confirm(T(`Remove the token ${name}? It and the browser sessions it made stop working on every node.`))) return;
      button.disabled = true;
      try {
        await api("DELETE", `/api/tokens/${encodeURIComponent(name)}`);
        button.closest("tr").remove();
        shown();
        setStatus(status, T(`Removed token ${name}.`), "ok");
      } catch (err) {
        button.disabled = false;
        setStatus(status, err.message, "bad");
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
    // The run as last read: its status, start and exit rules' notes.
    let current = null;

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
      if (run.exit_code !== undefined && run.exit_code !== null) exit = T(`exit ${run.exit_code}`);
      else if (run.signal !== undefined && run.signal !== null) exit = T(`signal ${run.signal}`);
      else if (run.outcome && run.outcome.kind === "failed_to_start") exit = T(`failed to start: ${run.outcome.error}`);
      else if (run.outcome && run.outcome.kind === "timed_out") exit = T("timed out");
      else if (run.outcome && run.outcome.kind === "lost") exit = T("lost (its node went away)");
      field("exit", exit);
      const at = (t) => t ? localTime(t) : "";
      if (run.started_at) field("started", at(run.started_at));
      field("ended", at(run.ended_at));
      current = run;
      if (run.started_at && run.ended_at) field("duration", durationText(new Date(run.ended_at) - new Date(run.started_at)));
      const actions = run.actions || [];
      field("actions", actions.length
        ? el("ul", { class: "plain" }, ...actions.map((a) => el("li", { text: T(a) })))
        : el("span", { class: "muted", text: T("nothing") }));
      if (stop && !ACTIVE.has(run.status)) stop.remove();
    }

    // While it runs, its duration counts up.
    const running = () => (current ? ACTIVE.has(current.status) : box.dataset.active === "true");
    setInterval(() => {
      const started = (current && current.started_at) || box.dataset.started;
      if (running() && started) field("duration", T(`${durationText(Date.now() - new Date(started))} so far`));
    }, 1000);
    // Until the run has ended and its exit rules' notes have settled ("notify ops: sending" turns
    // into "delivered" or why not), it is read again: changes on this node arrive as events at
    // once, a run on another node is asked for every 2 s.
    const settled = () => current && !ACTIVE.has(current.status)
      && !(current.actions || []).some((a) => /: sending\b/.test(a));
    onEvents({ run: (run) => { if (run && run.id === id) showRun(run); } });
    const reread = setInterval(async () => {
      if (settled()) { clearInterval(reread); return; }
      try { showRun(await api("GET", `/api/runs/${id}`)); } catch { /* the header says when the node does not answer */ }
    }, 2000);

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
        if (!received) log.append(el("span", { class: "log-note", text: T("(no output)") }));
        if (run) {
          showRun(run);
          setStatus(status, `${T("finished:")} ${statusLabel(run.status)}`, run.status === "succeeded" ? "ok" : "bad");
        } else {
          setStatus(status, "finished");
        }
      });
      es.onerror = () => {
        es.close();
        if (ended) return;
        setStatus(status, T("connection lost, retrying…"), "bad");
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
          setStatus(status, T(`could not stop: ${err.message}`), "bad");
        }
      });
    }
    connect();
  }

  // ------------------------------------------------------------ cron's pause

  /** The dashboard's Pause cron and every page's Resume cron (shown while cron is paused). */
  function initCronPause() {
    const wire = (button, path, question) => {
      if (!button) return;
      button.addEventListener("click", async () => {
        if (question && !confirm(question)) return;
        button.disabled = true;
        try {
          await api("POST", path);
          location.reload();
        } catch (err) {
          button.disabled = false;
          alert(err.message);
        }
      });
    };
    wire($("#cron-pause"), "/api/cron/pause",
      T("Pause cron for the whole cluster? No cron slot fires until it is resumed; then each task's catch-up policy decides about the slots it missed."));
    wire($("#cron-resume"), "/api/cron/resume");
  }

  // ---------------------------------------------------------------------- boot

  // ---------------------------------------------------------- the header's node

  /**
   * Asks the node whether it answers, every 5 s (and at once when the tab comes back): the dot
   * in the header turns red with the time it stopped answering, and green again when it is back.
   */
  function watchNode() {
    const badge = $(".node-name");
    if (!badge) return;
    let downSince = null, asking = false;
    const note = el("span", { class: "down-note", role: "status", "aria-live": "polite" });
    badge.append(note);
    async function ask() {
      if (asking) return;
      asking = true;
      const ctl = new AbortController();
      const timer = setTimeout(() => ctl.abort(), 4000);
      let ok = false;
      try { ok = (await fetch("/api/health", { cache: "no-store", signal: ctl.signal })).ok; } catch { ok = false; }
      clearTimeout(timer);
      asking = false;
      if (!ok && !downSince) {
        downSince = new Date();
        badge.classList.add("down");
        note.textContent = T(`not answering since ${downSince.toLocaleTimeString(LANG)}`);
        badge.title = T("This node does not answer; the page shows what it knew then.");
      } else if (ok && downSince) {
        downSince = null;
        badge.classList.remove("down");
        note.textContent = T("back");
        badge.title = T("This node");
        setTimeout(() => { if (!downSince) note.textContent = ""; }, 5000);
      }
    }
    setInterval(ask, 5000);
    document.addEventListener("visibilitychange", () => { if (!document.hidden) ask(); });
  }

  // ---------------------------------------------------------------- dashboard

  /** "in 3 min 12 s", "in 4 s", "now". */
  function countdown(date) {
    const s = Math.round((date.getTime() - Date.now()) / 1000);
    if (s <= 0) return T("now");
    if (s < 60) return T(`in ${s} s`);
    if (s < 3600) return T(`in ${Math.floor(s / 60)} min ${s % 60} s`);
    if (s < 86400) return T(`in ${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`);
    return T(`in ${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`);
  }


  function initDashboard() {
    const tick = () => {
      for (const t of $$("time[data-countdown]")) {
        const d = new Date(t.getAttribute("datetime"));
        if (!isNaN(d)) t.textContent = countdown(d);
      }
    };
    showLocalTimes();
    tick();
    setInterval(tick, 1000);
    // The figures follow the cluster: the page's live part is read again every 15 s.
    setInterval(async () => {
      if (document.hidden) return;
      try {
        const res = await fetch("/dashboard", { headers: { Accept: "text/html" } });
        if (!res.ok) return;
        const doc = new DOMParser().parseFromString(await res.text(), "text/html");
        const fresh = $("#dashboard-live", doc);
        if (fresh) $("#dashboard-live").replaceWith(document.importNode(fresh, true));
        showLocalTimes();
        refreshTimes();
        tick();
      } catch { /* the header says when the node does not answer */ }
    }, 15000);
  }

  document.addEventListener("DOMContentLoaded", () => {
    initLanguageSwitch();
    initCronPause();
    watchNode();
    showLocalTimes();
    if (document.body.dataset.page === "dashboard") initDashboard();
    refreshTimes();
    setInterval(refreshTimes, 30000);
    if ($("#task-table")) initTasks();
    if ($("#settings-form")) { initSettings(); initTokens(); }
    else if (document.body.dataset.page === "node") initNode();
    else if (document.body.dataset.page === "peers") initPeers();
    initClusterKey();
    if ($("#run")) initRun();
  });
})();

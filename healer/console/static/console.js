// taskmedic console: refreshes the server-rendered parts, follows the live log, posts
// approve/cancel/resume. No framework, nothing loaded from elsewhere.
"use strict";

(function () {
  const csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";

  // Show times in the reader's own time zone; the server renders UTC.
  function localTimes(root) {
    root.querySelectorAll("time[datetime]").forEach(function (t) {
      const d = new Date(t.getAttribute("datetime"));
      if (!isNaN(d)) {
        t.title = t.textContent;
        t.textContent = d.toLocaleString(undefined, {
          year: "numeric", month: "short", day: "numeric",
          hour: "2-digit", minute: "2-digit", second: "2-digit",
        });
      }
    });
  }

  // Replace `el`'s content with a fresh server rendering when it changed, keeping which
  // <details> the reader opened.
  function swap(el, html) {
    if (el.dataset.last === html) return false;
    el.dataset.last = html;
    const open = new Set();
    el.querySelectorAll("details[id]").forEach(function (d) { if (d.open) open.add(d.id); });
    el.innerHTML = html;
    el.querySelectorAll("details[id]").forEach(function (d) { if (open.has(d.id)) d.open = true; });
    localTimes(el);
    return true;
  }

  async function fetchFragment(name) {
    const url = new URL(window.location.href);
    url.searchParams.set("fragment", name);
    const resp = await fetch(url, { headers: { Accept: "text/html" }, credentials: "same-origin" });
    if (resp.status === 401 || resp.redirected && new URL(resp.url).pathname === "/login") {
      window.location.assign("/login?next=" + encodeURIComponent(location.pathname + location.search));
      return null;
    }
    if (!resp.ok) return null;
    return resp.text();
  }

  // Poll `el` every `ms` milliseconds while the page is visible.
  function poll(el, fragment, ms, done) {
    let timer = null;
    async function tick() {
      timer = null;
      if (!document.hidden) {
        try {
          const html = await fetchFragment(fragment);
          if (html !== null) swap(el, html);
        } catch (e) { /* offline for a moment: try again on the next tick */ }
      }
      if (!done || !done()) timer = setTimeout(tick, ms);
    }
    timer = setTimeout(tick, ms);
    document.addEventListener("visibilitychange", function () {
      if (!document.hidden && timer !== null) { clearTimeout(timer); tick(); }
    });
    return tick;
  }

  // --- the list of actions ------------------------------------------------------------------
  function actionList() {
    const table = document.getElementById("actions");
    if (!table) return;
    const filters = document.getElementById("filters");
    filters.querySelectorAll("select").forEach(function (s) {
      s.addEventListener("change", function () { filters.submit(); });
    });
    const rows = document.getElementById("rows");
    rows.dataset.last = "";
    if (table.dataset.poll) poll(rows, "rows", Number(table.dataset.poll));
  }

  // --- one action ---------------------------------------------------------------------------
  function actionPage() {
    const detail = document.getElementById("detail");
    if (!detail) return;
    let ended = !detail.dataset.poll;
    const refresh = poll(detail, "detail", Number(detail.dataset.poll || 2000), function () {
      return ended;
    });
    detail.addEventListener("click", async function (ev) {
      const button = ev.target.closest("button[data-post]");
      if (!button) return;
      const error = document.getElementById("post-error");
      button.disabled = true;
      const body = button.dataset.planHash ? { plan_hash: button.dataset.planHash } : {};
      try {
        const resp = await fetch(button.dataset.post, {
          method: "POST",
          credentials: "same-origin",
          headers: { "Content-Type": "application/json", "X-Taskmedic-CSRF": csrf },
          body: JSON.stringify(body),
        });
        if (!resp.ok) {
          let msg = resp.status + " " + resp.statusText;
          try { const j = await resp.json(); msg = j.error || j.message || msg; } catch (e) {
            /* not JSON */
          }
          error.textContent = button.textContent.trim() + " failed: " + msg;
          error.hidden = false;
          button.disabled = false;
          return;
        }
        error.hidden = true;
        ended = false;
        startLog();
        refresh();
      } catch (e) {
        error.textContent = "The healer did not answer: " + e;
        error.hidden = false;
        button.disabled = false;
      }
    });
    startLog = followLog(function (state) { ended = true; refresh(); });
    startLog();
  }
  let startLog = function () {};

  // Follow the log over Server-Sent Events. The browser reconnects by itself after a drop and
  // sends Last-Event-ID, so the server resumes after the last chunk shown: no gap, no repeat.
  // A `step` event names the step and, for a run on another host, the host of the chunks that
  // follow; each line a host printed starts with "[host] ", as in the text log and the CLI.
  function followLog(onEnd) {
    const box = document.getElementById("log");
    const status = document.getElementById("log-status");
    const jump = document.getElementById("jump");
    const picker = document.getElementById("log-host");
    const pickerLabel = document.getElementById("log-host-filter");
    const names = JSON.parse(box.dataset.steps || "[]");
    let source = null;
    let stick = true; // scroll along with new output until the reader scrolls up
    let lastStep = null;
    let host = "";
    let lastSpan = null;
    let endsWithNewline = true;
    const openLines = new Set(); // "step host stream" whose last line has no newline yet
    let only = "*"; // the host whose output shows ("" the healer's own, "*" every host)

    function atBottom() { return box.scrollTop + box.clientHeight >= box.scrollHeight - 8; }
    box.addEventListener("scroll", function () {
      stick = atBottom();
      jump.hidden = stick;
    });
    jump.addEventListener("click", function () {
      stick = true;
      jump.hidden = true;
      box.scrollTop = box.scrollHeight;
    });

    function shown(span) { return only === "*" || span.dataset.host === undefined || span.dataset.host === only; }

    function knowHost(name) {
      if (!name || picker.querySelector('option[value="' + CSS.escape(name) + '"]')) return;
      const option = document.createElement("option");
      option.value = name;
      option.textContent = name;
      picker.appendChild(option);
      pickerLabel.hidden = false;
    }

    function showOnly(name) {
      knowHost(name);
      only = name;
      picker.value = name;
      box.querySelectorAll("span[data-host]").forEach(function (s) { s.hidden = !shown(s); });
      box.dataset.host = name;
      if (stick) box.scrollTop = box.scrollHeight;
    }
    picker.addEventListener("change", function () { showOnly(picker.value); });
    document.addEventListener("click", function (ev) {
      const link = ev.target.closest("a[data-log-host]");
      if (link) showOnly(link.dataset.logHost);
    });

    function append(text, cls, from) {
      if (!text) return;
      // A reader who scrolled up before this output came stays where they are, even when the
      // scroll event has not been handled yet.
      if (stick && !atBottom()) stick = false;
      const placeholder = box.querySelector(".placeholder");
      if (placeholder) placeholder.remove();
      if (lastSpan && lastSpan.className === cls && lastSpan.dataset.host === from) {
        lastSpan.firstChild.appendData(text);
      } else {
        lastSpan = document.createElement("span");
        lastSpan.className = cls;
        if (from !== undefined) lastSpan.dataset.host = from;
        lastSpan.hidden = !shown(lastSpan);
        lastSpan.appendChild(document.createTextNode(text));
        box.appendChild(lastSpan);
      }
      endsWithNewline = text.endsWith("\n");
      if (stick) box.scrollTop = box.scrollHeight;
      else jump.hidden = false;
    }

    // "[host] " before each line a host printed; a line continued in its next chunk once.
    function tagged(text, stream) {
      if (!host || !text) return text;
      const key = lastStep + " " + host + " " + stream;
      const lines = text.match(/[^\n]*\n|[^\n]+/g) || [];
      const out = lines.map(function (line, i) {
        return i === 0 && openLines.has(key) ? line : "[" + host + "] " + line;
      }).join("");
      if (text.endsWith("\n")) openLines.delete(key); else openLines.add(key);
      return out;
    }

    function say(text) { status.textContent = text; }

    return function start() {
      if (source) return;
      source = new EventSource(box.dataset.src);
      source.onopen = function () { say("live"); };
      source.onerror = function () {
        if (source && source.readyState === EventSource.CLOSED) {
          say("disconnected: reload the page");
          source = null;
        } else {
          say("reconnecting…");
        }
      };
      source.addEventListener("step", function (e) {
        const mark = JSON.parse(e.data);
        host = mark.host || "";
        knowHost(host);
        if (mark.step === lastStep) return;
        lastStep = mark.step;
        const name = names[mark.step] ? ": " + names[mark.step] : "";
        append((endsWithNewline ? "" : "\n") + "── step " + (mark.step + 1) + name + " ──\n", "mark");
      });
      ["stdout", "stderr", "system"].forEach(function (stream) {
        source.addEventListener(stream, function (e) { append(tagged(e.data, stream), stream, host); });
      });
      source.addEventListener("end", function (e) {
        const state = JSON.parse(e.data).state;
        source.close();
        source = null;
        say("ended: " + state.replace("_", " "));
        box.dataset.ended = state;
        onEnd(state);
      });
    };
  }

  document.addEventListener("DOMContentLoaded", function () {
    localTimes(document);
    actionList();
    actionPage();
  });
})();

// b24sense settings page: plain script, no build step. Talks to /api/* with the page's signed session token
// (Authorization header, no cookies) and sends the CSRF token on every change.
(function () {
  "use strict";
  var boot = JSON.parse(document.getElementById("boot").textContent);
  var T = boot.t;
  var state = null;
  var pollTimer = null;
  var $ = function (id) { return document.getElementById(id); };

  function api(method, path, body) {
    var headers = { "Authorization": "Bearer " + boot.session };
    if (method !== "GET") {
      headers["X-CSRF-Token"] = boot.csrf;
      headers["Content-Type"] = "application/json";
    }
    return fetch("api/" + path, { method: method, headers: headers, body: body ? JSON.stringify(body) : undefined })
      .then(function (r) {
        if (r.status === 401) { throw new Error(T.session_expired); }
        var ct = r.headers.get("Content-Type") || "";
        if (ct.indexOf("json") < 0) { return r.text().then(function (t) { return { status: r.status, body: t }; }); }
        return r.json().then(function (j) { return { status: r.status, body: j }; });
      });
  }

  function text(el, v) { el.textContent = v == null ? "" : String(v); }

  function reasonName(r) { return T["reason_" + r] || r; }

  function renderSummary() {
    var dl = $("summary");
    dl.innerHTML = "";
    if (!state.saved) {
      var p = document.createElement("p"); p.className = "hint"; text(p, T.no_settings); dl.appendChild(p); return;
    }
    var s = state.settings;
    var rows = [
      [T.connection_id, s.connection_id],
      [T.chat_connection_id, s.chat_connection_id || T.not_set],
      [T.api_key, state.api_key_set ? "••••••••" : T.not_set],
      [T.language, s.language],
      [T.since, s.since || T.all],
      [T.users, s.users.length ? s.users.join(", ") : T.all],
      [T.min_duration, s.min_duration],
      [T.direction, s.direction.length ? s.direction.map(function (d) { return T["dir_" + d] || d; }).join(", ") : T.all],
      [T.mono_policy, s.mono_policy === "upload" ? T.mono_upload : s.mono_policy === "skip" ? T.mono_skip : T.mono_route + ": " + s.mono_policy.slice(6)],
      [T.sync_enabled, s.sync_enabled ? T.yes : T.no]
    ];
    if (s.organization_id) { rows.push([T.dupes, [s.organization_id, s.space_id, s.project_id].join(" / ")]); }
    rows.forEach(function (r) {
      var dt = document.createElement("dt"); text(dt, r[0]);
      var dd = document.createElement("dd"); text(dd, r[1]);
      dl.appendChild(dt); dl.appendChild(dd);
    });
  }

  function fillForm() {
    var s = state.settings;
    $("f-connection_id").value = s.connection_id || "";
    $("f-chat_connection_id").value = s.chat_connection_id || "";
    $("f-api_key").value = "";
    $("f-api_key").placeholder = state.api_key_set ? "•••••••• (" + T.api_key_saved + ")" : "";
    $("f-language").value = s.language || "ru-RU";
    $("f-since").value = (s.since || "").slice(0, 10);
    $("f-users").value = (s.users || []).join(", ");
    $("f-min_duration").value = state.saved ? s.min_duration : "";
    ["outgoing", "incoming", "redirected", "callback"].forEach(function (d) {
      $("f-dir-" + d).checked = (s.direction || []).indexOf(d) >= 0;
    });
    var mp = s.mono_policy || "upload";
    $("f-mono_policy").value = mp.indexOf("route:") === 0 ? "route" : mp;
    $("f-mono_route").value = mp.indexOf("route:") === 0 ? mp.slice(6) : "";
    $("f-organization_id").value = s.organization_id || "";
    $("f-space_id").value = s.space_id || "";
    $("f-project_id").value = s.project_id || "";
    $("f-sync_enabled").checked = !!s.sync_enabled;
    toggleRoute();
  }

  function toggleRoute() { $("fld-mono_route").hidden = $("f-mono_policy").value !== "route"; }

  function formData() {
    var dirs = [];
    ["outgoing", "incoming", "redirected", "callback"].forEach(function (d) { if ($("f-dir-" + d).checked) { dirs.push(d); } });
    return {
      connection_id: $("f-connection_id").value, chat_connection_id: $("f-chat_connection_id").value, api_key: $("f-api_key").value, language: $("f-language").value,
      since: $("f-since").value, users: $("f-users").value, min_duration: $("f-min_duration").value,
      direction: dirs, mono_policy: $("f-mono_policy").value, mono_route: $("f-mono_route").value,
      organization_id: $("f-organization_id").value, space_id: $("f-space_id").value, project_id: $("f-project_id").value,
      sync_enabled: $("f-sync_enabled").checked
    };
  }

  // A field's message goes as soon as the field is edited (the key and the connection ID also clear the
  // check's message: it was about them).
  function clearFieldError(name) {
    var e = $("err-" + name); if (e) { text(e, ""); }
    var f = $("fld-" + name); if (f) { f.classList.remove("invalid"); }
    if (name === "api_key" || name === "connection_id" || name === "chat_connection_id") {
      clearFieldError("connection");
      $("save-anyway").hidden = true;
      text($("check-result"), "");
    }
  }

  function fieldOf(el) {
    var f = el.closest(".field");
    return f && f.id.indexOf("fld-") === 0 ? f.id.slice(4) : null;
  }

  function clearErrors() {
    Array.prototype.forEach.call(document.querySelectorAll(".error"), function (e) { text(e, ""); });
    Array.prototype.forEach.call(document.querySelectorAll(".field.invalid"), function (e) { e.classList.remove("invalid"); });
  }

  function showErrors(errors) {
    Object.keys(errors).forEach(function (k) {
      var e = $("err-" + k); if (e) { text(e, errors[k]); }
      var f = $("fld-" + k); if (f) { f.classList.add("invalid"); if (f.tagName === "DETAILS" || f.closest("details")) { f.closest("details").open = true; } }
    });
  }

  function edit(on) {
    $("view").hidden = on; $("editor").hidden = !on;
    $("save-anyway").hidden = true;
    if (on) { fillForm(); clearErrors(); text($("check-result"), ""); text($("save-result"), ""); $("f-connection_id").focus(); }
  }

  // A duration in the page's language: seconds under a minute, whole minutes (rounded up) under an hour.
  function fmtSecs(s) {
    if (s == null) { return "—"; }
    if (s < 60) { return s + " " + T.unit_sec; }
    var m = Math.ceil(s / 60);
    if (m < 60) { return m + " " + T.unit_min; }
    return Math.floor(m / 60) + " " + T.unit_h + " " + (m % 60) + " " + T.unit_min;
  }

  function sum(map) { var n = 0; Object.keys(map || {}).forEach(function (k) { n += map[k]; }); return n; }

  function fmtTime(iso) {
    if (!iso) { return ""; }
    var d = new Date(iso);
    return isNaN(d) ? iso : d.toLocaleString(boot.lang === "en" ? "en-GB" : "ru-RU",
      { day: "numeric", month: "short", hour: "2-digit", minute: "2-digit" });
  }

  function fmtDelivered(d) {
    d = d || {};
    var parts = [T.d_found + " " + (d.found || 0), T.d_uploaded + " " + (d.uploaded || 0), T.d_skipped + " " + (d.skipped || 0)];
    if (d.awaiting_recording) { parts.push(T.d_awaiting + " " + d.awaiting_recording); }
    if (d.failed) { parts.push(T.d_failed + " " + d.failed); }
    return parts.join(", ");
  }

  // With continuous sync on: today, since it was turned on, and the last pass with its time.
  function renderSync(p) {
    var on = state && state.saved && state.settings.sync_enabled;
    var box = $("p-sync"); box.hidden = !on;
    if (!on) { return; }
    var s = p && p.sync, dl = $("p-sync-rows"), rows;
    dl.innerHTML = "";
    if (!s || !s.passes) {
      rows = [[T.sync_on_since, fmtTime((s && s.since) || state.settings.sync_since)], [T.sync_last, T.sync_no_pass]];
    } else {
      rows = [
        [T.sync_on_since, fmtTime(s.since) + " · " + T.sync_passes + ": " + s.passes],
        [T.sync_today, fmtDelivered(s.today)],
        [T.sync_total, fmtDelivered(s.total)],
        [T.sync_last, fmtTime(s.last_pass_at) + " — " + fmtDelivered(s.last_pass)]
      ];
    }
    rows.forEach(function (r, i) {
      var dt = document.createElement("dt"); text(dt, r[0]);
      var dd = document.createElement("dd"); dd.id = "p-sync-" + i; text(dd, r[1]);
      dl.appendChild(dt); dl.appendChild(dd);
    });
  }

  // Open Lines sessions, counted apart from the calls: uploaded, skipped, still open, failed.
  function renderChats(p) {
    var c = p && p.chats;
    $("p-chats").hidden = !c;
    if (!c) { return; }
    var failed = sum(c.failed) - ((c.failed || {}).interrupted || 0);
    text($("c-uploaded"), c.uploaded || 0);
    text($("c-skipped"), sum(c.skipped));
    text($("c-waiting"), sum(c.waiting));
    text($("c-failed"), failed);
    text($("c-state"), c.running ? T.c_running : "");
    var parts = [];
    [c.skipped, c.waiting].forEach(function (m) {
      Object.keys(m || {}).forEach(function (k) { parts.push(reasonName(k) + ": " + m[k]); });
    });
    Object.keys(c.failed || {}).filter(function (k) { return k !== "interrupted"; })
      .forEach(function (k) { parts.push(T.failed_detail + " — " + (T["fail_" + k] || k) + ": " + c.failed[k]); });
    text($("c-detail"), parts.join(", "));
    text($("c-stopped"), c.stopped || "");
  }

  function renderProgress(p) {
    renderSync(p);
    renderChats(p);
    if (!p) { return; }
    var done = p.finished, sync = p.trigger && p.trigger !== "page" && p.trigger !== "resume";
    // An interrupted run's message says it all (the server restarted); a stop says once why, and what to do.
    text($("p-status"), done ? (p.interrupted ? p.stopped : p.stopped ? T.stopped + ": " + p.stopped : sync ? T.sync_done : T.done)
      : sync ? T.sync_running : T.running);
    text($("p-notice"), p.notice || "");
    $("p-notice").hidden = !p.notice;
    $("p-status").className = done ? (p.stopped ? "status bad" : "status ok") : "status";
    $("progress").classList.toggle("stopped", !!(done && p.stopped));
    // The tiles add up: found = uploaded + skipped + awaiting + failed + not done yet (a stop's unfinished calls).
    var interrupted = (p.failed || {}).interrupted || 0;
    var failed = sum(p.failed) - interrupted;
    var awaiting = p.awaiting_recording || 0;
    var skipped = sum(p.skipped);
    text($("p-found"), p.found);
    text($("p-uploaded"), p.uploaded);
    text($("p-skipped"), skipped);
    text($("p-awaiting"), awaiting);
    text($("p-failed"), failed);
    text($("p-remaining"), Math.max(0, p.found - p.uploaded - skipped - awaiting - failed));
    var parts = Object.keys(p.skipped).map(function (k) { return reasonName(k) + ": " + p.skipped[k]; });
    var detail = parts.length ? T.skipped + " — " + parts.join(", ") : "";
    if (awaiting) { detail += (detail ? "; " : "") + T.awaiting_recording + ": " + awaiting; }
    text($("p-skipped-detail"), detail);
    var fparts = Object.keys(p.failed).filter(function (k) { return k !== "interrupted"; })
      .map(function (k) { return (T["fail_" + k] || k) + ": " + p.failed[k]; });
    text($("p-failed-detail"), fparts.length ? T.failed_detail + " — " + fparts.join(", ") : "");
    var handled = p.settled + awaiting;
    var total = p.listing_done ? p.found : Math.max(p.found, p.expected || 0);
    var pct = done && !p.stopped ? 100 : (total ? Math.min(100, Math.round(100 * handled / total)) : 0);
    $("p-bar").style.width = pct + "%";
    text($("p-rate"), (p.rate * 60).toFixed(1) + " " + T.per_min);
    text($("p-eta-label"), done ? T.took : T.eta);
    text($("p-eta"), done ? fmtSecs(p.elapsed_secs) : p.eta_secs == null ? T.estimating : fmtSecs(p.eta_secs));
    var ul = $("p-errors"); ul.innerHTML = "";
    (p.last_errors || []).forEach(function (e) { var li = document.createElement("li"); text(li, e); ul.appendChild(li); });
    $("p-errors-box").hidden = !(p.last_errors || []).length;
    $("report").hidden = p.settled === 0 && !(p.chats && p.chats.settled);
    $("start").disabled = !done;
    $("stop").disabled = done;
    if (done && pollTimer) { clearInterval(pollTimer); pollTimer = null; }
    if (!done && !pollTimer) { pollTimer = setInterval(poll, 1000); }
  }

  // The OAuth server refused to renew the portal's tokens: the administrator must reopen or reinstall.
  function renderTokenProblem(msg) {
    text($("token-problem"), msg || "");
    $("token-problem").hidden = !msg;
  }

  function poll() {
    api("GET", "progress").then(function (r) {
      renderTokenProblem(r.body.token_problem); state.progress = r.body.progress; renderProgress(r.body.progress);
    })
      .catch(function (e) { text($("export-error"), e.message); });
  }

  function load() {
    return api("GET", "state").then(function (r) {
      state = r.body;
      renderSummary();
      renderTokenProblem(state.token_problem);
      if (state.progress) { renderProgress(state.progress); } else { $("stop").disabled = true; renderSync(null); }
    }).catch(function (e) { text($("export-error"), e.message); });
  }

  // The portal's frame follows the page's height (BX24.resizeWindow, else BX24.fitWindow) as it grows and shrinks.
  function fitFrame() {
    if (!window.BX24 || !window.ResizeObserver) { return; }
    var last = 0;
    BX24.init(function () {
      var fit = function () {
        var h = Math.ceil(document.body.getBoundingClientRect().height);
        if (h === last) { return; }
        last = h;
        if (BX24.resizeWindow) { BX24.resizeWindow(document.documentElement.clientWidth, h); } else { BX24.fitWindow(); }
      };
      new ResizeObserver(fit).observe(document.body);
      fit();
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    $("edit").addEventListener("click", function () { edit(true); });
    $("cancel").addEventListener("click", function () { edit(false); });
    $("f-mono_policy").addEventListener("change", toggleRoute);
    $("pick-users").addEventListener("click", function () {
      var box = $("user-list");
      if (!box.hidden) { box.hidden = true; return; }
      api("GET", "users").then(function (r) {
        box.innerHTML = "";
        var chosen = $("f-users").value.split(/[\s,;]+/).filter(Boolean);
        (r.body.users || []).forEach(function (u) {
          var l = document.createElement("label"); l.className = "check";
          var cb = document.createElement("input"); cb.type = "checkbox"; cb.value = String(u.id);
          cb.checked = chosen.indexOf(String(u.id)) >= 0;
          cb.addEventListener("change", function () {
            var ids = Array.prototype.filter.call(box.querySelectorAll("input"), function (i) { return i.checked; })
              .map(function (i) { return i.value; });
            $("f-users").value = ids.join(", ");
          });
          l.appendChild(cb); l.appendChild(document.createTextNode(" " + u.id + " — " + (u.name || "")));
          box.appendChild(l);
        });
        box.hidden = false;
      }).catch(function (e) { text($("err-users"), e.message); });
    });
    $("check").addEventListener("click", function () {
      clearErrors();
      var out = $("check-result");
      out.className = ""; text(out, T.checking);
      $("check").disabled = true;
      api("POST", "check", formData()).then(function (r) {
        if (r.body.errors) { showErrors(r.body.errors); text(out, ""); return; }
        out.className = r.body.ok ? "ok" : "bad";
        text(out, r.body.message);
      }).catch(function (e) { out.className = "bad"; text(out, e.message); })
        .then(function () { $("check").disabled = false; });
    });
    // Save checks the key and the connection first; when SpeechSense refuses them, the administrator may still
    // save on purpose (the "save without check" button).
    function save(anyway) {
      clearErrors();
      var out = $("save-result");
      var form = formData(); form.save_anyway = anyway;
      out.className = ""; text(out, T.checking);
      $("save").disabled = true;
      api("POST", "settings", form).then(function (r) {
        if (r.body.errors) {
          showErrors(r.body.errors); out.className = "bad";
          text(out, r.body.unverified ? r.body.error : T.fix_errors);
          $("save-anyway").hidden = !r.body.unverified;
          return;
        }
        if (r.status !== 200) { out.className = "bad"; text(out, r.body.error || r.body); return; }
        state.settings = r.body.settings; state.api_key_set = r.body.api_key_set; state.saved = true;
        renderSummary(); edit(false); renderSync(state.progress);
        text($("export-error"), ""); text($("save-result"), "");
        var note = $("p-status"); if (!state.progress) { text(note, r.body.verified ? T.saved : T.saved_unverified); }
      }).catch(function (e) { out.className = "bad"; text(out, e.message); })
        .then(function () { $("save").disabled = false; });
    }
    $("form").addEventListener("submit", function (ev) { ev.preventDefault(); save(false); });
    $("save-anyway").addEventListener("click", function () { save(true); });
    $("form").addEventListener("input", function (ev) { var n = fieldOf(ev.target); if (n) { clearFieldError(n); } });
    $("form").addEventListener("change", function (ev) { var n = fieldOf(ev.target); if (n) { clearFieldError(n); } });
    $("start").addEventListener("click", function () {
      text($("export-error"), "");
      api("POST", "export/start").then(function (r) {
        if (r.status !== 200) { text($("export-error"), r.body.error || r.body); return; }
        state.progress = r.body.progress; renderProgress(r.body.progress);
        text($("export-error"), "");
      }).catch(function (e) { text($("export-error"), e.message); });
    });
    $("stop").addEventListener("click", function () {
      api("POST", "export/stop").then(poll).catch(function (e) { text($("export-error"), e.message); });
    });
    $("report").addEventListener("click", function (ev) {
      ev.preventDefault();
      fetch("api/report", { headers: { "Authorization": "Bearer " + boot.session } })
        .then(function (r) { return r.blob(); })
        .then(function (b) {
          var a = document.createElement("a");
          a.href = URL.createObjectURL(b); a.download = "b24sense-report.csv";
          document.body.appendChild(a); a.click(); a.remove();
        });
    });
    load();
    fitFrame();
    // With continuous sync on, passes start on their own: look in every few seconds.
    setInterval(function () {
      if (!pollTimer && state && state.saved && state.settings.sync_enabled) { poll(); }
    }, 5000);
    // Sessions expire after an idle hour: while the page is open, swap in a fresh one every five minutes.
    setInterval(function () {
      api("POST", "session/renew").then(function (r) {
        if (r.status === 200 && r.body.session) { boot.session = r.body.session; boot.csrf = r.body.csrf; }
      }).catch(function () {});
    }, 5 * 60 * 1000);
  });
})();

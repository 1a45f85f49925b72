/* The llm-proxy status page: polls status.json, keeps a rolling window of samples in this tab, draws them with uPlot.
 *
 * - Every `interval` ms (default 3000; `?interval=` overrides, at least 250) it fetches status.json with the bearer
 *   token kept in sessionStorage (asked for on a 401; forgotten when refused or on "Forget token").
 * - Rates come from the difference between two polls of the cumulative per-provider counters: requests/s, error
 *   rate, tokens/min; p50/p99 latency from the difference of the latency histogram buckets (interpolated inside a
 *   bucket, as Prometheus' histogram_quantile does). A counter that went down (a reload reset it) counts from zero.
 * - The last `window` seconds (default 600; `?window=`) are kept; nothing is stored beyond this tab.
 * Everything from the server is put in the page as text (textContent), never as HTML.
 */
(function () {
  "use strict";
  var TOKEN_KEY = "llm-proxy-status-token";
  var params = new URLSearchParams(location.search);
  var interval = Math.max(250, Number(params.get("interval")) || 3000);
  var windowSeconds = Math.max(30, Number(params.get("window")) || 600);
  var COLORS = ["#2f5bd3", "#d9480f", "#2b8a3e", "#ae3ec9", "#0b7285", "#e67700", "#c2255c", "#5f3dc4"];
  var CHARTS = [
    { key: "rps", title: "Requests/s (attempts per provider)", unit: "" },
    { key: "errors", title: "Error rate (%)", unit: "%" },
    { key: "p50", title: "Latency p50 (ms)", unit: " ms" },
    { key: "p99", title: "Latency p99 (ms)", unit: " ms" },
    { key: "tpm", title: "Tokens/min", unit: "" }
  ];
  var state = { samples: [], previous: null, charts: {}, names: [], polls: 0, timer: null, data: null };
  window.llmProxyStatus = state; // read by the browser test, and handy in the console

  function $(id) { return document.getElementById(id); }

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function add(parent) {
    for (var i = 1; i < arguments.length; i++) {
      var child = arguments[i];
      if (child === null || child === undefined) continue;
      parent.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return parent;
  }

  function badge(text, kind) { return el("span", "badge " + kind, text); }

  function number(value, digits) {
    if (value === null || value === undefined) return "–";
    return Number(value).toLocaleString(undefined, { maximumFractionDigits: digits === undefined ? 1 : digits });
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    if (seconds > 0 && seconds < 1) return Math.round(seconds * 1000) + "ms";
    if (seconds >= 3600 && seconds % 3600 === 0) return seconds / 3600 + "h";
    if (seconds >= 60 && seconds % 60 === 0) return seconds / 60 + "m";
    return seconds + "s";
  }

  // --- polling and sign-in --------------------------------------------------------------------------------

  function schedule() {
    clearTimeout(state.timer);
    state.timer = setTimeout(poll, interval);
  }

  function showLogin(message) {
    clearTimeout(state.timer);
    $("login-message").textContent = message;
    $("login").hidden = false;
    ["reload", "charts-section", "providers-section", "models-section", "banner"].forEach(function (id) {
      $(id).hidden = true;
    });
    $("config").textContent = "not signed in";
    $("forget").hidden = true;
    $("token").focus();
  }

  function banner(message) {
    var node = $("banner");
    node.textContent = message || "";
    node.hidden = !message;
  }

  function poll() {
    var token = sessionStorage.getItem(TOKEN_KEY);
    var headers = { Accept: "application/json" };
    if (token) headers.Authorization = "Bearer " + token;
    fetch("status.json", { headers: headers, cache: "no-store", credentials: "omit" })
      .then(function (response) {
        if (response.status === 401) {
          sessionStorage.removeItem(TOKEN_KEY);
          showLogin(token ? "The proxy refused that token." : "This proxy requires a token.");
          return null;
        }
        if (!response.ok) throw new Error("status.json answered HTTP " + response.status);
        return response.json().then(function (data) {
          $("login").hidden = true;
          $("forget").hidden = !token;
          banner("");
          update(data);
          schedule();
        });
      })
      .catch(function (error) {
        banner("Cannot reach the proxy (" + error.message + "); retrying every " + interval / 1000 + "s.");
        schedule();
      });
  }

  $("login-form").addEventListener("submit", function (event) {
    event.preventDefault();
    var input = $("token");
    sessionStorage.setItem(TOKEN_KEY, input.value.trim());
    input.value = "";
    poll();
  });

  $("forget").addEventListener("click", function () {
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin("Token forgotten.");
  });

  // --- rendering ------------------------------------------------------------------------------------------

  function update(data) {
    state.data = data;
    state.polls += 1;
    renderConfig(data);
    renderReload(data);
    renderProviders(data.providers);
    renderModels(data.models);
    record(data);
  }

  function renderConfig(data) {
    var config = data.config;
    var text = "config " + config.version + " · loaded " + new Date(config.loaded_at).toLocaleString();
    if (config.path) text += " · " + config.path;
    var totals = data.totals;
    text += " · " + number(totals.total_requests, 0) + " requests (" + number(totals.failed_requests, 0) + " failed, " +
      number(totals.cancelled_requests, 0) + " cancelled)";
    $("config").textContent = text;
  }

  function renderReload(data) {
    var box = $("reload");
    box.textContent = "";
    var reload = data.reload;
    var error = data.config.last_reload_error;
    box.className = error ? "rejected" : "";
    if (error) {
      add(box, el("strong", null, "Last reload rejected"),
        " — still serving version " + data.config.version + ". Fix the file; the next save reloads it.",
        el("pre", "reload-error", error));
    } else if (reload.last) {
      add(box, el("strong", null, reload.last.ok ? "Last reload applied" : "Last reload rejected"),
        " · " + reload.ok + " applied, " + reload.rejected + " rejected since start");
    } else {
      add(box, "No reload since start.");
    }
    box.hidden = false;
  }

  function headroom(provider) {
    var room = provider.headroom || {};
    if (!room.limited) return el("span", "muted", "unlimited");
    var parts = [];
    if (room.requests_per_minute) parts.push(number(room.requests_available, 0) + " / " + number(room.requests_per_minute, 0) + " req");
    if (room.tokens_per_minute) parts.push(number(room.tokens_available, 0) + " / " + number(room.tokens_per_minute, 0) + " tok");
    if (room.concurrency) parts.push(number(room.in_flight, 0) + " / " + room.concurrency + " in flight");
    if (room.waiting) parts.push(room.waiting + " waiting");
    return el("span", "mono", parts.join(" · "));
  }

  function breakerBadge(stateName) {
    return badge(stateName.replace("_", "-"), stateName === "closed" ? "ok" : stateName === "open" ? "bad" : "warn");
  }

  function renderProviders(providers) {
    var table = $("providers");
    table.textContent = "";
    var head = el("tr");
    ["Provider", "State", "Breaker", "Rate-limit headroom", "Requests", "Errors", "Tokens", "p50 / p99"].forEach(function (h) {
      add(head, el("th", null, h));
    });
    add(table, el("thead"));
    table.firstChild.appendChild(head);
    var body = el("tbody");
    providers.forEach(function (p) {
      var row = el("tr");
      row.dataset.provider = p.name;
      add(row, add(el("td"), el("strong", null, p.name), " ", el("span", "muted", p.type)));
      var status = el("td");
      if (p.enabled) add(status, badge("enabled", "ok"));
      else add(status, badge("disabled", "bad"), el("div", "reason", p.disabled_reason));
      add(row, status, add(el("td"), breakerBadge(p.breaker)), add(el("td"), headroom(p)));
      add(row, el("td", "num", number(p.requests, 0)), el("td", "num", number(p.errors, 0)),
        el("td", "num", number(p.tokens, 0)),
        el("td", "num", number(p.latency_ms.p50, 1) + " / " + number(p.latency_ms.p99, 1) + " ms"));
      body.appendChild(row);
    });
    add(table, body);
    $("providers-section").hidden = false;
  }

  function targetItem(model, target) {
    var item = el("li");
    var label = el("span", target.enabled ? "mono" : "mono off", target.label);
    add(item, label);
    if (target.share !== null) add(item, " ", badge(Math.round(target.share * 1000) / 10 + "%", "info"));
    if (model.strategy === "weighted") add(item, el("span", "muted", " weight " + target.weight));
    add(item, el("span", "muted", target.context_window ? " · " + number(target.context_window, 0) + " ctx" : " · ctx unknown"));
    if (!target.enabled) add(item, " ", badge("disabled", "bad"), el("div", "reason", target.disabled_reason));
    else if (target.breaker.state !== "closed") add(item, " ", breakerBadge(target.breaker.state));
    return item;
  }

  function renderModels(models) {
    var box = $("models");
    box.textContent = "";
    models.forEach(function (model) {
      var card = el("div", "card");
      card.dataset.model = model.model;
      var title = add(el("h3"), el("span", "mono", model.model), badge(model.strategy, "info"));
      if (model.default) add(title, badge("default", "ok"));
      if (!model.available_targets) add(title, badge("no target available", "bad"));
      add(card, title);
      if (model.description) add(card, el("div", "policy", model.description));
      var list = el("ol");
      model.targets.forEach(function (t) { list.appendChild(targetItem(model, t)); });
      add(card, list);
      var chain = model.fallback_chain.length ? "then " + model.fallback_chain.join(" → ") : "no fallback";
      var cache = model.cache.when === "never" ? "not cached" : "cache " + model.cache.when + " " + duration(model.cache.ttl);
      var retry = model.retry.max_attempts + " attempts/target, deadline " + duration(model.retry.deadline);
      add(card, el("div", "policy", chain + " · " + cache + " · " + retry));
      box.appendChild(card);
    });
    $("models-section").hidden = false;
  }

  // --- samples and charts ---------------------------------------------------------------------------------

  function quantile(q, counts, bounds) {
    var total = counts.reduce(function (a, b) { return a + b; }, 0);
    if (!total) return null;
    var rank = q * total, seen = 0;
    for (var i = 0; i < counts.length; i++) {
      if (seen + counts[i] >= rank && counts[i] > 0) {
        if (i >= bounds.length) return bounds[bounds.length - 1] * 1000;
        var low = i === 0 ? 0 : bounds[i - 1];
        return (low + (bounds[i] - low) * ((rank - seen) / counts[i])) * 1000;
      }
      seen += counts[i];
    }
    return bounds[bounds.length - 1] * 1000;
  }

  function delta(now, before) { return now >= before ? now - before : now; }

  function record(data) {
    var previous = state.previous;
    state.previous = data;
    if (!previous) return;
    var seconds = data.now - previous.now;
    if (seconds <= 0) return;
    var before = {};
    previous.providers.forEach(function (p) { before[p.name] = p; });
    var sample = { t: data.now, providers: {} };
    data.providers.forEach(function (p) {
      var old = before[p.name] || { requests: 0, errors: 0, tokens: 0, latency_buckets: [] };
      var requests = delta(p.requests, old.requests);
      var buckets = p.latency_buckets.map(function (count, i) { return delta(count, old.latency_buckets[i] || 0); });
      sample.providers[p.name] = {
        rps: requests / seconds,
        errors: requests ? (100 * delta(p.errors, old.errors)) / requests : null,
        p50: quantile(0.5, buckets, data.latency_bounds),
        p99: quantile(0.99, buckets, data.latency_bounds),
        tpm: (delta(p.tokens, old.tokens) / seconds) * 60
      };
    });
    state.samples.push(sample);
    while (state.samples.length && state.samples[0].t < data.now - windowSeconds) state.samples.shift();
    draw(data.providers.map(function (p) { return p.name; }));
  }

  function chartWidth(node) { return Math.max(220, node.clientWidth - 16); }

  function compact(value) {
    if (value === null || value === undefined) return "";
    var abs = Math.abs(value);
    if (abs >= 1e6) return number(value / 1e6, 1) + "M";
    if (abs >= 1e3) return number(value / 1e3, 1) + "k";
    return number(value, abs < 10 ? 2 : 0);
  }

  function clock(seconds) {
    return new Date(seconds * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  }

  function options(spec, names, box) {
    return {
      width: chartWidth(box), height: 180,
      legend: { live: false },
      cursor: { points: { size: 6 } },
      scales: {
        x: { time: true },
        y: { range: function (u, min, max) { return [0, Math.max(max || 0, spec.key === "errors" ? 5 : 1)]; } }
      },
      series: [{}].concat(names.map(function (name, i) {
        return { label: name, stroke: COLORS[i % COLORS.length], width: 2, spanGaps: false, points: { size: 4 } };
      })),
      axes: [
        { space: 90, incrs: [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600],
          values: function (u, ticks) { return ticks.map(clock); } },
        { size: 56, values: function (u, ticks) { return ticks.map(function (v) { return compact(v) + spec.unit; }); } }
      ]
    };
  }

  function draw(names) {
    var section = $("charts-section");
    section.hidden = false;
    $("window-note").textContent = "last " + duration(windowSeconds) + ", every " + interval / 1000 + "s";
    if (names.join("\n") !== state.names.join("\n")) {
      state.names = names;
      Object.keys(state.charts).forEach(function (k) { state.charts[k].destroy(); });
      state.charts = {};
      $("charts").textContent = "";
      CHARTS.forEach(function (spec) {  // every box first, so each chart is sized in the final grid
        var box = el("div", "chart");
        box.dataset.chart = spec.key;
        add(box, el("h3", null, spec.title));
        $("charts").appendChild(box);
      });
    }
    var xs = state.samples.map(function (s) { return s.t; });
    CHARTS.forEach(function (spec) {
      var data = [xs].concat(names.map(function (name) {
        return state.samples.map(function (s) { return s.providers[name] ? s.providers[name][spec.key] : null; });
      }));
      var chart = state.charts[spec.key];
      if (chart) {
        chart.setData(data);
      } else {
        var box = document.querySelector('.chart[data-chart="' + spec.key + '"]');
        state.charts[spec.key] = new uPlot(options(spec, names, box), data, box);
      }
    });
  }

  function resize() {
    Object.keys(state.charts).forEach(function (k) {
      var chart = state.charts[k];
      chart.setSize({ width: chartWidth(chart.root.parentNode), height: 180 });
    });
  }

  if (window.ResizeObserver) new ResizeObserver(resize).observe($("charts"));
  else window.addEventListener("resize", resize);

  poll();
})();

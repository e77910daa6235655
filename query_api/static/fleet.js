// The fleet page of charger-telemetry's query API (no build step; uPlot is vendored).
//
// Data comes only from the /v1 endpoints, called with the read key as the X-API-Key header.
// The key is taken from the URL fragment (#key=..., never sent to the server) or the form, kept
// in sessionStorage (this tab only), and never put in a URL. Every value from the API reaches the
// DOM through textContent: nothing is parsed as HTML.
"use strict";

(function () {
  const KEY_STORE = "charger-telemetry.read-key";
  const CHARGER_STORE = "charger-telemetry.charger";
  const FLEET_EVERY_MS = 10000;
  const LATEST_EVERY_MS = 5000;
  const WINDOW_S = 15 * 60;
  const PAGE_LIMIT = 1000; // chargers per /v1/chargers page (the API's default cap)
  const MAX_PAGES = 20; // at most 20,000 chargers counted
  const MAX_ROWS = 500; // rows drawn in the table
  const HISTORY_LIMIT = 5000; // points per history page
  const HISTORY_PAGES = 4;
  const DEFAULT_FIELD = "power_w";
  const MAX_ALARMS = 200; // active alarms listed
  const MAX_SESSIONS = 200; // sessions listed for the selected charger (last 7 days)
  const GATEWAY_PAGES = 5; // at most 5,000 gateways listed
  const IDENTITY = ["vendor", "model", "serial", "firmware"];

  const $ = (id) => document.getElementById(id);
  const view = {
    status: $("status"),
    auth: $("auth"),
    authMessage: $("auth-message"),
    form: $("key-form"),
    input: $("key-input"),
    changeKey: $("change-key"),
    fleet: $("fleet"),
    rows: $("charger-rows"),
    tableCaption: $("table-caption"),
    chargerSelect: $("charger-select"),
    fieldSelect: $("field-select"),
    chart: $("chart"),
    caption: $("chart-caption"),
    alarmRows: $("alarm-rows"),
    alarmsCaption: $("alarms-caption"),
    detail: $("detail"),
    detailTitle: $("detail-title"),
    connectorRows: $("connector-rows"),
    connectorsCaption: $("connectors-caption"),
    sessionRows: $("session-rows"),
    sessionsCaption: $("sessions-caption"),
    gatewayRows: $("gateway-rows"),
    gatewaysCaption: $("gateways-caption"),
  };

  class AuthError extends Error {}

  const state = {
    timers: [],
    chargers: [],
    selected: null, // charger id
    field: null,
    points: [[], []], // uPlot data: [seconds], [values]
    lastTs: null, // ms of the newest point charted
    plot: null,
    generation: 0, // bumped on every selection change: late answers of older ones are dropped
    limits: { chargers: PAGE_LIMIT, history: HISTORY_LIMIT, gateways: PAGE_LIMIT }, // lowered to the API's caps
  };

  // --- the key ------------------------------------------------------------------------------

  function keyFromFragment() {
    if (!location.hash) return;
    const params = new URLSearchParams(location.hash.slice(1));
    const key = params.get("key");
    if (key) sessionStorage.setItem(KEY_STORE, key);
    // Out of the address bar, the history and any screenshot.
    history.replaceState(null, "", location.pathname + location.search);
  }

  const getKey = () => sessionStorage.getItem(KEY_STORE);

  function askForKey(message) {
    stop();
    sessionStorage.removeItem(KEY_STORE);
    document.body.dataset.page = "auth";
    view.fleet.hidden = true;
    view.changeKey.hidden = true;
    view.auth.hidden = false;
    view.authMessage.textContent = message;
    setStatus("");
    view.input.focus();
  }

  // --- the API ------------------------------------------------------------------------------

  async function api(path) {
    const key = getKey();
    if (!key) throw new AuthError("Enter a key of role read.");
    let resp;
    try {
      resp = await fetch(path, {
        headers: { "X-API-Key": key, Accept: "application/json" },
        cache: "no-store",
        credentials: "omit",
        referrerPolicy: "no-referrer",
      });
    } catch (err) {
      throw new Error("the API is not reachable (" + err.message + ")");
    }
    if (resp.status === 401) {
      throw new AuthError("The API refused this key (401). Enter a key of role read.");
    }
    if (resp.status === 403) {
      throw new AuthError("This key may not read (403). Enter a key of role read.");
    }
    if (!resp.ok) {
      let problem = {};
      try {
        problem = await resp.json();
      } catch (_) {
        /* not a problem document */
      }
      const err = new Error(resp.status + ": " + (problem.detail || resp.statusText));
      err.status = resp.status;
      err.problem = problem;
      throw err;
    }
    return resp.json();
  }

  function failed(err) {
    if (err instanceof AuthError) {
      askForKey(err.message);
      return;
    }
    setStatus("Error: " + err.message, true);
  }

  // --- formatting ---------------------------------------------------------------------------

  function setStatus(text, isError) {
    view.status.textContent = text;
    view.status.classList.toggle("error", Boolean(isError));
  }

  function formatAge(seconds) {
    const s = Math.max(0, Math.round(seconds));
    if (s < 120) return s + " s";
    if (s < 7200) return Math.round(s / 60) + " min";
    if (s < 172800) return Math.floor(s / 3600) + " h " + Math.round((s % 3600) / 60) + " min";
    return Math.round(s / 86400) + " d";
  }

  const formatTs = (ts) => new Date(ts).toISOString().replace("T", " ").slice(0, 19);
  const clock = (seconds) => new Date(seconds * 1000).toISOString().slice(11, 19);

  const dash = (v) => (v === null || v === undefined || v === "" ? "–" : String(v));
  const formatKwh = (wh) => (typeof wh === "number" ? (wh / 1000).toFixed(2) + " kWh" : "–");
  const formatKw = (w) => (typeof w === "number" ? (w / 1000).toFixed(1) + " kW" : "–");

  function formatDuration(seconds) {
    if (typeof seconds !== "number") return "–";
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return s + " s";
    const m = Math.floor(s / 60);
    if (m < 60) return m + " min";
    return Math.floor(m / 60) + " h " + String(m % 60).padStart(2, "0") + " min";
  }

  function cell(text, className) {
    const td = document.createElement("td");
    td.textContent = text;
    if (className) td.className = className;
    return td;
  }

  // --- the fleet: counts and table ----------------------------------------------------------

  // The page size the API allows, from its limit-too-large problem ("... maximum of N ...").
  function allowedLimit(err) {
    const p = err.problem || {};
    if (err.status !== 422 || !String(p.type).endsWith(":limit-too-large")) return null;
    const m = /maximum of ([0-9]+)/.exec(p.detail || "");
    return m ? Number(m[1]) : null;
  }

  // Follows next_cursor for at most maxPages pages, asking for state.limits[kind] items a page;
  // if the API caps pages lower, it asks again with the cap it names, from then on.
  // onPage returns false to abandon. True when every page was read.
  async function paged(path, params, kind, maxPages, onPage) {
    let cursor = null;
    let pages = 0;
    while (pages < maxPages) {
      const query = new URLSearchParams(params);
      query.set("limit", String(state.limits[kind]));
      if (cursor) query.set("cursor", cursor);
      let page;
      try {
        page = await api(path + "?" + query.toString());
      } catch (err) {
        const allowed = allowedLimit(err);
        if (allowed !== null && allowed < state.limits[kind]) {
          state.limits[kind] = allowed;
          continue;
        }
        throw err;
      }
      if (onPage(page) === false) return false;
      pages += 1;
      cursor = page.next_cursor || null;
      if (!cursor) return true;
    }
    return false;
  }

  async function loadChargers() {
    const items = [];
    const complete = await paged("v1/chargers", {}, "chargers", MAX_PAGES, (page) => {
      items.push(...page.items);
    });
    return { items, complete };
  }

  async function refreshFleet() {
    const { items, complete } = await loadChargers();
    state.chargers = items;
    const counts = { online: 0, stale: 0, offline: 0 };
    for (const c of items) counts[c.state] = (counts[c.state] || 0) + 1;
    for (const name of ["online", "stale", "offline"]) {
      $("count-" + name).textContent = String(counts[name]);
    }
    $("count-total").textContent = String(items.length) + (complete ? "" : "+");
    drawTable(items);
    fillChargerSelect(items);
    document.body.dataset.page = "ready";
    setStatus("Updated " + clock(Date.now() / 1000) + " UTC");
  }

  async function refreshAlarms() {
    const page = await api("v1/alarms?state=active&limit=" + MAX_ALARMS);
    const rows = page.items.map((a) => {
      const tr = document.createElement("tr");
      tr.dataset.kind = a.kind;
      tr.dataset.subject = a.subject;
      tr.append(
        cell(a.kind, "id"),
        cell(a.subject, "id"),
        cell(a.severity, "severity " + a.severity),
        cell(formatTs(a.since)),
        cell(a.detail),
      );
      return tr;
    });
    view.alarmRows.replaceChildren(...rows);
    const n = page.items.length + (page.truncated ? "+" : "");
    view.alarmsCaption.textContent = page.items.length ? "Active alarms (" + n + ")" : "No active alarms";
    document.body.dataset.alarms = String(page.items.length);
  }

  // --- the gateways -------------------------------------------------------------------------

  // "in 84 d" / "in 20 h" / "expired 2 d ago", from the API's days left.
  function formatExpiry(days) {
    if (typeof days !== "number") return "–";
    const s = Math.abs(days) * 86400;
    return days > 0 ? "in " + formatAge(s) : "expired " + formatAge(s) + " ago";
  }

  function drops(outbox) {
    if (!outbox || !outbox.drops) return "–";
    return String(Object.values(outbox.drops).reduce((a, b) => a + b, 0));
  }

  async function refreshGateways() {
    const items = [];
    const complete = await paged("v1/gateways", {}, "gateways", GATEWAY_PAGES, (page) => {
      items.push(...page.items);
    });
    const now = Date.now();
    const rows = items.slice(0, MAX_ROWS).map((g) => {
      const tr = document.createElement("tr");
      tr.dataset.gateway = g.gateway_id;
      tr.dataset.state = g.state;
      const outbox = g.outbox || {};
      const oldest = outbox.oldest_unsent_ts ? formatAge((now - Date.parse(outbox.oldest_unsent_ts)) / 1000) : "–";
      const cert = cell(formatExpiry(g.cert_days_left), "num cert " + (g.cert_status || "unknown"));
      if (g.cert_not_after) cert.title = "notAfter " + formatTs(g.cert_not_after) + " UTC";
      tr.append(
        cell(g.gateway_id, "id"),
        cell(g.state, "state " + g.state),
        cell(dash(g.agent_version)),
        cell(dash(outbox.depth), "num"),
        cell(oldest, "num"),
        cell(drops(g.outbox), "num"),
        cert,
        cell(String(g.chargers.count), "num"),
      );
      return tr;
    });
    view.gatewayRows.replaceChildren(...rows);
    const n = items.length + (complete ? "" : "+");
    view.gatewaysCaption.textContent =
      items.length > MAX_ROWS ? "Gateways (first " + MAX_ROWS + " of " + n + ")" : "Gateways (" + n + ")";
    document.body.dataset.gateways = String(items.length);
  }

  function drawTable(items) {
    const rows = items.slice(0, MAX_ROWS).map((c) => {
      const tr = document.createElement("tr");
      tr.dataset.charger = c.charger_id;
      tr.dataset.state = c.state;
      if (c.charger_id === state.selected) tr.classList.add("selected");
      tr.append(
        cell(c.charger_id, "id"),
        cell(c.gateway_id || "–"),
        cell(c.state, "state " + c.state),
        cell(formatTs(c.last_seen)),
        cell(formatAge(c.age_s), "num"),
      );
      tr.addEventListener("click", () => select(c.charger_id));
      return tr;
    });
    view.rows.replaceChildren(...rows);
    view.tableCaption.textContent =
      items.length > MAX_ROWS
        ? "Chargers (first " + MAX_ROWS + " of " + items.length + ")"
        : "Chargers (" + items.length + ")";
  }

  function fillChargerSelect(items) {
    const ids = items.map((c) => c.charger_id);
    const known = Array.from(view.chargerSelect.options, (o) => o.value);
    if (ids.join("\n") !== known.join("\n")) {
      view.chargerSelect.replaceChildren(...ids.map((id) => new Option(id, id)));
    }
    if (state.selected && ids.includes(state.selected)) {
      view.chargerSelect.value = state.selected;
      return;
    }
    const remembered = sessionStorage.getItem(CHARGER_STORE);
    const online = items.find((c) => c.state === "online");
    const pick = ids.includes(remembered) ? remembered : online ? online.charger_id : ids[0];
    if (pick) select(pick);
  }

  // --- the chart: history of the last 15 minutes, then latest every few seconds --------------

  function select(chargerId) {
    if (chargerId === state.selected) return;
    state.selected = chargerId;
    sessionStorage.setItem(CHARGER_STORE, chargerId);
    view.chargerSelect.value = chargerId;
    for (const tr of view.rows.children) {
      tr.classList.toggle("selected", tr.dataset.charger === chargerId);
    }
    view.connectorRows.replaceChildren();
    view.sessionRows.replaceChildren();
    loadChart(null).catch(failed);
    refreshDetail().catch(failed);
    refreshSessions().catch(failed);
  }

  // --- the selected charger: identity, connectors (with the latest poll), sessions ---------

  async function refreshDetail() {
    const id = state.selected;
    if (!id) return;
    let detail = null;
    try {
      detail = await api("v1/chargers/" + encodeURIComponent(id));
    } catch (err) {
      if (err.status !== 404) throw err;
    }
    if (id !== state.selected) return; // another charger was picked meanwhile
    view.detail.hidden = false;
    view.detailTitle.textContent = id;
    for (const key of IDENTITY) $("ident-" + key).textContent = dash(detail && detail[key]);
    const connectors = detail ? detail.connectors : [];
    const rows = connectors.map((c) => {
      const tr = document.createElement("tr");
      const name = c.evse_id + "/" + c.connector_id;
      const session = c.session;
      tr.dataset.connector = name;
      tr.dataset.status = c.status || "";
      tr.dataset.transaction = session ? session.transaction_id : "";
      tr.append(
        cell(name, "id"),
        cell(dash(c.status), "status " + (c.status || "")),
        cell(c.status_at ? formatTs(c.status_at) : "–"),
        cell(formatKw(c.power_w), "num"),
        cell(session ? session.transaction_id : "–", "id"),
        cell(session ? formatKwh(session.energy_wh) : "–", "num"),
        cell(session ? formatDuration(session.duration_s) : "–", "num"),
      );
      return tr;
    });
    view.connectorRows.replaceChildren(...rows);
    view.connectorsCaption.textContent = rows.length
      ? "Connectors (" + rows.length + ")"
      : "No connector reported in the last 7 days";
    document.body.dataset.detail = id;
  }

  async function refreshSessions() {
    const id = state.selected;
    if (!id) return;
    const path = "v1/chargers/" + encodeURIComponent(id) + "/sessions";
    const page = await api(path + "?start=-7d&limit=" + MAX_SESSIONS);
    if (id !== state.selected) return;
    const rows = page.items.map((s) => {
      const tr = document.createElement("tr");
      tr.dataset.transaction = s.transaction_id;
      tr.dataset.state = s.state;
      tr.append(
        cell(formatTs(s.started_at)),
        cell(s.ended_at ? formatTs(s.ended_at) : s.state),
        cell(s.evse_id + "/" + s.connector_id, "id"),
        cell(formatKwh(s.energy_wh), "num"),
        cell(formatDuration(s.duration_s), "num"),
        cell(formatKw(s.max_power_w), "num"),
        cell(dash(s.stop_reason)),
        cell(s.flags.join(", "), "flags"),
      );
      return tr;
    });
    view.sessionRows.replaceChildren(...rows);
    const n = rows.length + (page.truncated ? "+" : "");
    view.sessionsCaption.textContent = rows.length
      ? "Sessions, last 7 days (" + n + ")"
      : "No session in the last 7 days";
    document.body.dataset.sessions = id;
  }

  async function loadChart(field) {
    const gen = ++state.generation;
    const id = state.selected;
    const path = "v1/chargers/" + encodeURIComponent(id);
    let latest = null;
    try {
      latest = await api(path + "/latest");
    } catch (err) {
      if (err.status !== 404) throw err;
    }
    if (gen !== state.generation) return;
    const fields = latest ? Object.keys(latest.values).sort() : [];
    if (!field) field = fields.includes(state.field) ? state.field : null;
    if (!field) field = fields.includes(DEFAULT_FIELD) ? DEFAULT_FIELD : fields[0] || DEFAULT_FIELD;
    if (!fields.includes(field)) fields.push(field);
    view.fieldSelect.replaceChildren(...fields.map((f) => new Option(f, f)));
    view.fieldSelect.value = field;
    state.field = field;

    const xs = [];
    const ys = [];
    const params = { start: "-15m", fields: field };
    await paged(path + "/history", params, "history", HISTORY_PAGES, (page) => {
      if (gen !== state.generation) return false;
      for (const p of page.points) {
        const v = p.values[field];
        if (typeof v === "number") {
          xs.push(Date.parse(p.ts) / 1000);
          ys.push(v);
        }
      }
      return true;
    });
    if (gen !== state.generation) return;
    state.points = [xs, ys];
    state.lastTs = xs.length ? xs[xs.length - 1] * 1000 : null;
    if (latest) addLatest(latest);
    draw();
  }

  function addLatest(latest) {
    const v = latest.values[state.field];
    const t = Date.parse(latest.ts);
    if (typeof v !== "number" || (state.lastTs !== null && t <= state.lastTs)) return false;
    const [xs, ys] = state.points;
    xs.push(t / 1000);
    ys.push(v);
    state.lastTs = t;
    const oldest = t / 1000 - WINDOW_S;
    let cut = 0;
    while (cut < xs.length && xs[cut] < oldest) cut += 1;
    if (cut) {
      xs.splice(0, cut);
      ys.splice(0, cut);
    }
    return true;
  }

  async function pollLatest() {
    await Promise.all([pollChart(), refreshDetail()]);
  }

  async function pollChart() {
    if (!state.selected || !state.field) return;
    const gen = state.generation;
    let latest;
    try {
      latest = await api("v1/chargers/" + encodeURIComponent(state.selected) + "/latest");
    } catch (err) {
      if (err.status === 404) return;
      throw err;
    }
    if (gen === state.generation && addLatest(latest)) draw();
  }

  function draw() {
    const [xs, ys] = state.points;
    view.chart.dataset.points = String(xs.length);
    view.chart.dataset.charger = state.selected || "";
    view.chart.dataset.field = state.field || "";
    const n = xs.length;
    const value = n ? ys[n - 1].toLocaleString("en", { maximumFractionDigits: 2 }) : "";
    view.caption.textContent = n
      ? n + " points in the last 15 min · latest " + value + " at " + formatTs(xs[n - 1] * 1000)
      : "no " + state.field + " in the last 15 min";
    const width = Math.max(300, view.chart.clientWidth);
    if (state.plot && state.plot.series[1].label === state.field) {
      state.plot.setData(state.points);
      return;
    }
    if (state.plot) state.plot.destroy();
    state.plot = new uPlot(
      {
        width,
        height: 280,
        scales: { x: { time: true } },
        series: [
          { label: "time (UTC)", value: (u, v) => (v == null ? "--" : formatTs(v * 1000)) },
          { label: state.field, stroke: "#2563eb", width: 2, fill: "rgba(37, 99, 235, 0.08)" },
        ],
        // UTC clock times like the table, one line, far enough apart not to overlap.
        axes: [{ space: 90, values: (u, splits) => splits.map(clock) }, { size: 70 }],
      },
      state.points,
      view.chart,
    );
  }

  // --- start and stop -----------------------------------------------------------------------

  function stop() {
    for (const t of state.timers) clearInterval(t);
    state.timers = [];
  }

  function every(ms, task) {
    let busy = false; // a slow API gets one request at a time from each timer, never a pile
    const tick = () => {
      if (busy) return;
      busy = true;
      task()
        .catch(failed)
        .finally(() => {
          busy = false;
        });
    };
    state.timers.push(setInterval(tick, ms));
  }

  function start() {
    stop();
    view.auth.hidden = true;
    view.fleet.hidden = false;
    view.changeKey.hidden = false;
    document.body.dataset.page = "loading";
    setStatus("Loading…");
    refreshFleet().catch(failed);
    refreshAlarms().catch(failed);
    refreshGateways().catch(failed);
    every(FLEET_EVERY_MS, refreshFleet);
    every(FLEET_EVERY_MS, refreshAlarms);
    every(FLEET_EVERY_MS, refreshGateways);
    every(LATEST_EVERY_MS, pollLatest);
    every(FLEET_EVERY_MS, refreshSessions);
  }

  view.form.addEventListener("submit", (event) => {
    event.preventDefault();
    const key = view.input.value.trim();
    if (!key) return;
    sessionStorage.setItem(KEY_STORE, key);
    view.input.value = "";
    start();
  });
  view.changeKey.addEventListener("click", () => askForKey("Enter a key of role read."));
  view.chargerSelect.addEventListener("change", () => select(view.chargerSelect.value));
  view.fieldSelect.addEventListener("change", () => {
    loadChart(view.fieldSelect.value).catch(failed);
  });
  window.addEventListener("resize", () => {
    if (state.plot) state.plot.setSize({ width: Math.max(300, view.chart.clientWidth), height: 280 });
  });

  window.addEventListener("hashchange", () => {
    // A link with a new #key= pasted into this tab: no reload happens, so take it here.
    if (!new URLSearchParams(location.hash.slice(1)).get("key")) return;
    keyFromFragment();
    start();
  });

  keyFromFragment();
  if (getKey()) start();
  else askForKey("This page shows data of the query API and needs a key of role read.");
})();

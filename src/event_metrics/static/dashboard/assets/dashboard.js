// The dashboard: the query in the URL (GET /metrics's own parameter names and values), the
// read key in local storage, and the views drawn from /metrics, /events/names and /health.

import { ApiError, getJson, Unreachable } from "./api.js";
import { chartData, Charts } from "./chart.js";
import { SeriesTable } from "./table.js";
import { browserZone, fromLocalInput, toLocalInput, toRfc3339, zoneNames } from "./zones.js";

const KEY_STORAGE = "event-metrics.read-key";
const QUERY = ["from", "to", "event_name", "granularity", "group_by", "timezone", "backend"];
const LIVE_INTERVAL_MS = 5000;
const MINUTE = 60_000;
const PRESETS = {
  "1h": { ms: 3600_000, granularity: "hour" },
  "24h": { ms: 24 * 3600_000, granularity: "hour" },
  "7d": { ms: 7 * 24 * 3600_000, granularity: "day" },
  "30d": { ms: 30 * 24 * 3600_000, granularity: "day" },
  "90d": { ms: 90 * 24 * 3600_000, granularity: "day" },
};
const DEFAULT_PRESET = "7d";
const ENGINES = { postgres: "PostgreSQL", clickhouse: "ClickHouse" };
const number = new Intl.NumberFormat();

const $ = (id) => document.getElementById(id);
const backends = document.body.dataset.backends.split(" ").filter(Boolean);
const defaultBackend = document.body.dataset.defaultBackend;

let state = null; // the query shown: {from, to (ms), event_name, granularity, ...}
let live = false;
let liveTimer = null;
let generation = 0; // answers to superseded queries are dropped
let lastTotal = null;
const charts = new Charts($("events-chart"), $("users-chart"));
const table = new SeriesTable($("table"), $("table-note"));

// --- the key -------------------------------------------------------------------------------

function storedKey() {
  try {
    return window.localStorage.getItem(KEY_STORAGE);
  } catch {
    return null;
  }
}

function showSignedIn(key) {
  $("sign-in").hidden = Boolean(key);
  $("signed-in").hidden = !key;
  $("dashboard").hidden = !key;
  if (key) $("key-shown").textContent = `Read key ${key.slice(0, 12)}…`;
}

function forgetKey() {
  window.localStorage.removeItem(KEY_STORAGE);
  stopLive();
  charts.clear();
  showSignedIn(null);
  setMessage(null);
  $("key").value = "";
  $("key").focus();
}

async function signIn(event) {
  event.preventDefault();
  const key = $("key").value.trim();
  if (!key) return;
  $("sign-in-error").hidden = true;
  try {
    // The key is kept only once the service took it; any answer past the key check
    // (a 400 for a parameter of a shared URL, a 503) means it did.
    await getJson("/events/names", { from: toRfc3339(state.from), to: toRfc3339(state.to),
      backend: state.backend }, key);
  } catch (error) {
    if (error instanceof ApiError && (error.status === 401 || error.status === 403)) {
      $("sign-in-error").textContent = `${error.message} (${error.status} ${error.code})`;
      $("sign-in-error").hidden = false;
      $("key").setAttribute("aria-invalid", "true");
      $("key").focus();
      return;
    }
    if (error instanceof Unreachable) {
      $("sign-in-error").textContent = error.message;
      $("sign-in-error").hidden = false;
      return;
    }
  }
  $("key").removeAttribute("aria-invalid");
  window.localStorage.setItem(KEY_STORAGE, key);
  $("key").value = "";
  showSignedIn(key);
  load();
}

// --- the query and the URL -----------------------------------------------------------------

function liveEnd(now = Date.now()) {
  // The next whole minute: events sent right now fall inside the window.
  return Math.floor(now / MINUTE) * MINUTE + MINUTE;
}

function presetWindow(name) {
  const to = liveEnd();
  return { from: to - PRESETS[name].ms, to };
}

function presetOf(query) {
  const span = query.to - query.from;
  const current = Math.abs(query.to - liveEnd()) <= MINUTE;
  const found = Object.entries(PRESETS).find(([, preset]) => preset.ms === span);
  return found && current ? found[0] : "custom";
}

function readUrl() {
  const params = new URLSearchParams(window.location.search);
  const from = Date.parse(params.get("from") || "");
  const to = Date.parse(params.get("to") || "");
  const query = { ...presetWindow(DEFAULT_PRESET), granularity: PRESETS[DEFAULT_PRESET].granularity };
  if (!Number.isNaN(from) && !Number.isNaN(to)) Object.assign(query, { from, to });
  // Values go to /metrics as they came, so that a bad one gets the API's own message.
  query.rawFrom = params.get("from");
  query.rawTo = params.get("to");
  query.event_name = params.get("event_name") || "";
  query.granularity = params.get("granularity") || query.granularity;
  query.group_by = params.get("group_by") || "";
  query.timezone = params.get("timezone") || browserZone();
  query.backend = params.get("backend") || (backends.length > 1 ? defaultBackend : "");
  live = params.get("live") === "1";
  return query;
}

/** The /metrics parameters of the query shown. */
function metricsParams(query) {
  const hasRaw = query.rawFrom !== null && query.rawFrom !== undefined;
  return {
    from: hasRaw ? query.rawFrom : toRfc3339(query.from),
    to: hasRaw ? query.rawTo : toRfc3339(query.to),
    event_name: query.event_name,
    granularity: query.granularity,
    group_by: query.group_by,
    timezone: query.timezone,
    backend: query.backend,
  };
}

function queryString(query) {
  const params = new URLSearchParams();
  const values = metricsParams(query);
  for (const name of QUERY) if (values[name]) params.set(name, values[name]);
  if (live) params.set("live", "1");
  return params.toString();
}

function writeUrl(push) {
  const url = `${window.location.pathname}?${queryString(state)}`;
  if (url === `${window.location.pathname}${window.location.search}`) return;
  if (push) window.history.pushState(null, "", url);
  else window.history.replaceState(null, "", url);
}

/** A control changed the query: note it in the URL (a new history entry) and load. */
function change(patch) {
  state = { ...state, ...patch, rawFrom: null, rawTo: null };
  writeUrl(true);
  showControls();
  load();
}

// --- the controls --------------------------------------------------------------------------

function fillZones() {
  const select = $("timezone");
  const options = zoneNames(browserZone(), state.timezone).map((name) => new Option(name, name));
  select.replaceChildren(...options);
}

function showControls() {
  $("range").value = presetOf(state);
  $("from").value = Number.isNaN(state.from) ? "" : toLocalInput(state.from, safeZone());
  $("to").value = Number.isNaN(state.to) ? "" : toLocalInput(state.to, safeZone());
  $("granularity").value = state.granularity;
  $("group_by").value = state.group_by;
  if (![...$("timezone").options].some((o) => o.value === state.timezone)) fillZones();
  $("timezone").value = state.timezone;
  $("backend-field").hidden = backends.length < 2;
  if (state.backend) $("backend").value = state.backend;
  if (![...$("event_name").options].some((o) => o.value === state.event_name)) {
    $("event_name").append(new Option(`${state.event_name} (not in range)`, state.event_name));
  }
  $("event_name").value = state.event_name;
  $("live").setAttribute("aria-pressed", String(live));
  $("live").textContent = live ? "Live: on" : "Live: off";
  for (const name of QUERY) $(name).removeAttribute("aria-invalid");
}

function safeZone() {
  try {
    new Intl.DateTimeFormat("en-US", { timeZone: state.timezone });
    return state.timezone;
  } catch {
    return "UTC";
  }
}

function fillEventNames(names) {
  const select = $("event_name");
  const options = [new Option("All events", "")];
  for (const name of names) {
    options.push(new Option(`${name.event_name} (${number.format(name.events)})`, name.event_name));
  }
  if (state.event_name && !names.some((n) => n.event_name === state.event_name)) {
    options.push(new Option(`${state.event_name} (not in range)`, state.event_name));
  }
  select.replaceChildren(...options);
  select.value = state.event_name;
}

function bindControls() {
  $("range").addEventListener("change", () => {
    const name = $("range").value;
    if (name === "custom") {
      $("from").focus();
      return;
    }
    change({ ...presetWindow(name), granularity: PRESETS[name].granularity });
  });
  // Chrome reports a change for each part of a date typed: one query (and one history
  // entry) once typing pauses, or at once when the field is left.
  let typing = null;
  const commitTimes = () => {
    window.clearTimeout(typing);
    const from = fromLocalInput($("from").value, safeZone());
    const to = fromLocalInput($("to").value, safeZone());
    if (Number.isNaN(from) || Number.isNaN(to)) return;
    if (from !== state.from || to !== state.to) change({ from, to });
  };
  for (const id of ["from", "to"]) {
    $(id).addEventListener("change", () => {
      window.clearTimeout(typing);
      typing = window.setTimeout(commitTimes, 600);
    });
    $(id).addEventListener("blur", commitTimes);
  }
  for (const id of ["event_name", "granularity", "group_by", "timezone", "backend"]) {
    $(id).addEventListener("change", () => change({ [id]: $(id).value }));
  }
  $("live").addEventListener("click", () => (live ? stopLive() : startLive()));
  $("sign-in").addEventListener("submit", signIn);
  $("controls").addEventListener("submit", (event) => event.preventDefault());
  $("forget").addEventListener("click", forgetKey);
  $("csv").addEventListener("click", downloadCsv);
  window.addEventListener("popstate", () => {
    state = readUrl();
    showControls();
    load();
  });
}

// --- live mode -----------------------------------------------------------------------------

function startLive() {
  live = true;
  lastTotal = null;
  slideToNow();
  writeUrl(true);
  showControls();
  load();
}

function stopLive() {
  live = false;
  window.clearTimeout(liveTimer);
  liveTimer = null;
  writeUrl(true);
  showControls();
  $("live-news").textContent = "";
}

/** Live mode keeps the window's length and moves its end to the next whole minute. */
function slideToNow() {
  const span = state.to - state.from;
  const to = liveEnd();
  state = { ...state, from: to - (Number.isNaN(span) ? PRESETS["1h"].ms : span), to,
    rawFrom: null, rawTo: null };
}

function scheduleLive() {
  window.clearTimeout(liveTimer);
  if (!live || !storedKey()) return;
  liveTimer = window.setTimeout(() => {
    slideToNow();
    writeUrl(false);
    showControls();
    load({ quiet: true });
  }, LIVE_INTERVAL_MS);
}

// --- answers -------------------------------------------------------------------------------

function setMessage(text, action) {
  const box = $("message");
  box.replaceChildren();
  box.hidden = !text;
  if (!text) return;
  const words = document.createElement("p");
  words.textContent = text;
  box.append(words);
  if (action) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = action.label;
    button.addEventListener("click", action.run);
    box.append(button);
  }
}

function setBusy(busy, quiet) {
  const main = $("dashboard");
  main.setAttribute("aria-busy", String(busy));
  main.dataset.state = busy ? "loading" : main.dataset.state;
  if (busy && !quiet) $("status").textContent = "Loading…";
}

function explain(error) {
  if (error instanceof Unreachable) {
    return { text: `${error.message}.${live ? " Trying again every 5 s." : ""}` };
  }
  if (!(error instanceof ApiError)) return { text: `Something went wrong: ${error.message}` };
  const words = `${error.message} (${error.status} ${error.code || "error"})`;
  if (error.code === "backend_unavailable" && state.backend === "clickhouse") {
    return {
      text: `ClickHouse is unavailable: ${error.message}`,
      action: { label: "Ask PostgreSQL instead", run: () => change({ backend: "postgres" }) },
    };
  }
  if (error.status === 401 || error.status === 403) {
    return { text: `The read key was refused: ${words}`,
      action: { label: "Forget key", run: forgetKey } };
  }
  return { text: words };
}

async function load({ quiet = false } = {}) {
  const key = storedKey();
  if (!key) return;
  const mine = ++generation;
  setBusy(true, quiet);
  const params = metricsParams(state);
  const names = { from: params.from, to: params.to, backend: params.backend };
  const [metrics, listed, health] = await Promise.allSettled([
    getJson("/metrics", params, key),
    getJson("/events/names", names, key),
    backends.includes("clickhouse") ? getJson("/health") : Promise.resolve(null),
  ]);
  if (mine !== generation) return; // a newer query is on its way
  performance.mark("em-answer");
  if (listed.status === "fulfilled") fillEventNames(listed.value.names);
  if (metrics.status === "rejected") {
    showFailure(metrics.reason);
  } else {
    showAnswer(metrics.value);
  }
  showLag(health.status === "fulfilled" ? health.value : null,
    metrics.status === "fulfilled" ? metrics.value : null);
  const main = $("dashboard");
  main.dataset.query = queryString(state);
  main.dataset.state = metrics.status === "fulfilled" ? "ready" : "failed";
  main.setAttribute("aria-busy", "false");
  scheduleLive();
}

function showFailure(error) {
  const { text, action } = explain(error);
  setMessage(text, action);
  $("status").textContent = "";
  $("results").hidden = true;
  if (error instanceof ApiError && error.parameter && $(error.parameter)) {
    $(error.parameter).setAttribute("aria-invalid", "true");
  }
  if (error instanceof ApiError && (error.status === 401 || error.status === 403)) stopLive();
}

function showAnswer(answer) {
  setMessage(null);
  $("results").hidden = false;
  const total = answer.total;
  $("total-events").textContent = number.format(total.events);
  $("total-events").dataset.value = total.events;
  $("total-users").textContent = number.format(total.unique_users);
  $("total-users").dataset.value = total.unique_users;
  if (live && lastTotal !== null) {
    const arrived = total.events - lastTotal;
    $("live-news").textContent = arrived > 0
      ? `+${number.format(arrived)} new event${arrived === 1 ? "" : "s"} in the last refresh`
      : "No new events in the last refresh";
  }
  lastTotal = live ? total.events : null;
  $("live-box").hidden = !live;
  const from = Date.parse(answer.from);
  const to = Date.parse(answer.to);
  const empty = total.events === 0;
  $("empty").hidden = !empty;
  $("empty").textContent = empty
    ? `No events from ${answer.from} to ${answer.to}${answer.event_name ? ` named ${answer.event_name}` : ""}.`
    : "";
  const chartable = !empty && answer.granularity !== "total";
  $("charts").hidden = !chartable;
  $("no-chart").hidden = empty || chartable;
  if (chartable) {
    const data = chartData(answer, from, to);
    charts.render(data, answer.timezone, answer.granularity);
    $("chart-note").textContent = data.hidden
      ? `The charts show the ${data.groups.length} largest groups; ${data.hidden} more are in the table.`
      : "";
  } else {
    charts.clear();
  }
  table.show(answer);
  const when = new Date().toLocaleTimeString();
  const source = { raw: "the events table", rollup: "the rollups", clickhouse: "the mirror" };
  $("status").textContent = `${ENGINES[answer.backend]} answered at ${when}, from ` +
    `${source[answer.freshness.source] || answer.freshness.source}` +
    `${live ? "; refreshing every 5 s" : ""}.`;
  // bench/dashboard_render.py reads these: the page's work, and until the next frame.
  performance.measure("em-render", "em-answer");
  window.requestAnimationFrame(() => performance.measure("em-drawn", "em-answer"));
}

/** ClickHouse's lag, from /health, whenever ClickHouse is the engine asked. */
function showLag(health, answer) {
  const box = $("lag");
  const asked = (answer && answer.backend) || state.backend || defaultBackend;
  if (asked !== "clickhouse" || !health) {
    box.hidden = true;
    return;
  }
  const replication = health.replication;
  let text;
  if (!replication) {
    text = "ClickHouse is not being replicated to by this service (REPLICATE is off).";
  } else if (replication.lag_seconds === null || replication.lag_seconds === undefined) {
    text = "ClickHouse's lag is not measured yet.";
  } else if (replication.lag_rows === 0) {
    text = "ClickHouse is up to date.";
  } else {
    const rows = `${replication.lag_rows_capped ? "over " : ""}${number.format(replication.lag_rows)}`;
    text = `ClickHouse is ${Math.round(replication.lag_seconds)} s behind ` +
      `(${rows} event${replication.lag_rows === 1 ? "" : "s"} not copied yet).`;
  }
  if (replication && replication.state === "failing") {
    text += ` Replication is failing: ${replication.last_error}`;
  }
  box.textContent = text;
  box.hidden = false;
}

function downloadCsv() {
  if (!table.answer) return;
  const blob = new Blob([table.csv()], { type: "text/csv" });
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  const stamp = (value) => value.replace(/[^0-9A-Za-z+-]/g, "");
  link.download = `metrics_${stamp(table.answer.from)}_${stamp(table.answer.to)}.csv`;
  document.body.append(link);
  link.click();
  link.remove();
  window.setTimeout(() => URL.revokeObjectURL(link.href), 0);
}

// --- start ---------------------------------------------------------------------------------

function start() {
  state = readUrl();
  fillZones();
  bindControls();
  if (live) slideToNow();
  // The URL shows the whole query shown, defaults included (the browser's zone).
  writeUrl(false);
  showControls();
  const key = storedKey();
  showSignedIn(key);
  if (key) load();
  else $("key").focus();
}

start();

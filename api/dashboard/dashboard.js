"use strict";
// cartdb dashboard: polls the API server's admin endpoints every REFRESH_MS and redraws.
// How the admin token reaches the page is explained in api/src/dashboard.rs. Every value
// from the cluster is written with textContent, never as HTML.

const REFRESH_MS = 2000;
const TOKEN_KEY = "cartdb-admin-token";
const FULL_WEIGHT = 0x10000;

const $ = (id) => document.getElementById(id);
let charts = null;

/** The token from the address's fragment (moved to session storage) or from storage. */
function token() {
  const match = location.hash.match(/(?:^#|&)token=([^&]*)/);
  if (match) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname);
  }
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

class Unauthorized extends Error {}

async function getJson(path) {
  const response = await fetch(path, {
    headers: { Authorization: "Bearer " + token() },
    cache: "no-store",
  });
  if (response.status === 401) throw new Unauthorized(path);
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    // A body that is not JSON is reported by status below.
  }
  return { status: response.status, body };
}

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function fillList(id, pairs) {
  const list = $(id);
  list.replaceChildren();
  for (const [name, value, className] of pairs) {
    const dt = document.createElement("dt");
    dt.textContent = name;
    const dd = document.createElement("dd");
    dd.textContent = value;
    if (className) dd.className = className;
    list.append(dt, dd);
  }
}

function shortHash(policy) {
  return policy ? policy.name + " " + policy.sha256.slice(0, 12) : "built-in";
}

function drawDevices(status) {
  const body = $("devices").tBodies[0];
  body.replaceChildren();
  const totalPgs = status.devices.reduce((sum, d) => sum + d.pgs, 0) || 1;
  for (const device of status.devices) {
    const row = body.insertRow();
    row.dataset.device = device.id;
    row.dataset.state = device.up ? "up" : "down";
    cell(row, String(device.id));
    cell(row, device.name);
    cell(row, device.up ? "up" : "down", device.up ? "up" : "down");
    const weight = device.reweight === 0 ? (device.auto_out ? "out (auto)" : "out") : "in" +
      (device.reweight === FULL_WEIGHT ? "" : " " + (device.reweight / FULL_WEIGHT).toFixed(2));
    cell(row, weight, device.reweight === 0 ? "out" : "");
    cell(row, String(device.pgs));
    const share = (100 * device.pgs) / totalPgs;
    const load = cell(row, share.toFixed(1) + " %");
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = (2 * share).toFixed(0) + "px";
    load.prepend(bar);
  }
}

async function drawGateways(status) {
  const views = await Promise.all(status.gateways.map(async (gateway) => {
    const { status: code, body } = await getJson("/api/cluster?gateway=" + gateway.id);
    return { id: gateway.id, view: code === 200 ? body : null };
  }));
  const body = $("gateways").tBodies[0];
  body.replaceChildren();
  const placement = new Set();
  const merge = new Set();
  for (const { id, view } of views) {
    const row = body.insertRow();
    row.dataset.gateway = id;
    cell(row, String(id));
    if (!view) {
      cell(row, "no answer", "down");
      cell(row, "");
      continue;
    }
    placement.add(view.placement_policy.sha256);
    merge.add(view.maintenance.merge_policy ? view.maintenance.merge_policy.sha256 : "");
    cell(row, shortHash(view.placement_policy), "hash");
    cell(row, shortHash(view.maintenance.merge_policy), "hash");
  }
  const agree = placement.size <= 1 && merge.size <= 1;
  $("agreement").textContent = agree
    ? "All gateways run the same policies."
    : "The gateways disagree on their policies.";
  $("agreement").className = agree ? "" : "warn";
}

function drawGroups(status) {
  const pgs = status.placement_groups;
  const r = status.replication;
  fillList("pgs", [
    ["map epoch", String(status.map_epoch)],
    ["pool / pg_num", pgs.pool + " / " + pgs.pg_num],
    ["replicas (W, R)", r.replicas + " (" + r.write_quorum + ", " + r.read_quorum + ")"],
    ["flags", status.flags.length ? status.flags.join(", ") : "none",
      status.flags.length ? "warn" : ""],
    ["clean", String(pgs.clean)],
    ["degraded", String(pgs.degraded), pgs.degraded ? "warn" : ""],
    ["remapped (backfilling)", pgs.remapped + " (" + pgs.backfilling + ")",
      pgs.remapped ? "warn" : ""],
    ["undersized", String(pgs.undersized), pgs.undersized ? "warn" : ""],
    ["without write quorum", String(pgs.without_write_quorum),
      pgs.without_write_quorum ? "down" : ""],
  ]);
  const backfill = pgs.backfill;
  $("backfill-bar").style.width = backfill
    ? ((100 * (backfill.pgs_total - backfill.pgs_left)) / backfill.pgs_total).toFixed(1) + "%"
    : "100%";
  $("backfill-text").textContent = backfill
    ? (backfill.pgs_total - backfill.pgs_left) + " / " + backfill.pgs_total + " PGs, " +
      (backfill.eta_secs === null ? "time left unknown" : "about " + backfill.eta_secs + " s left")
    : "no backfill under way";
  const m = status.maintenance;
  const sweep = m.anti_entropy;
  const rows = [
    ["read repairs (ops)", m.repairs + " (" + m.repaired_ops + ")"],
    ["repair failures", String(m.repair_failures), m.repair_failures ? "warn" : ""],
    ["compactions (ops folded)", m.compactions + " (" + m.folded_ops + ")"],
    ["merge fallbacks", String(m.merge_fallbacks), m.merge_fallbacks ? "warn" : ""],
  ];
  for (const p of m.policy_calls) {
    const failed = p.traps + p.timeouts + p.out_of_fuel + p.invalid + p.other_failures;
    const mean = p.calls ? Math.round(p.total_micros / p.calls) : 0;
    rows.push([p.kind + " policy " + p.sha256.slice(0, 12),
      p.calls + " calls, " + failed + " failed, " + p.fallbacks + " fallbacks, mean " + mean + " µs",
      failed ? "warn" : ""]);
  }
  if (sweep) {
    rows.push(
      ["anti-entropy leader", "gateway " + sweep.leader + ", " + sweep.items_per_sec + " items/s"],
      ["sweep progress", sweep.pgs_done + " / " + sweep.pgs_total + " PGs"],
      ["sweeps completed", sweep.sweeps_completed + " (the last in " + (sweep.last_pass_ms / 1000).toFixed(1) + " s)"],
      ["PGs streaming now", String(sweep.rounds_running)],
      ["items streamed", String(sweep.items_streamed)],
      ["sweep repairs (ops)", sweep.repairs + " (" + sweep.ops_repaired + ")"],
      ["PGs cleaned / items handed back", sweep.pgs_cleaned + " / " + sweep.handed_back],
    );
    const done = sweep.pgs_total ? (100 * sweep.pgs_done) / sweep.pgs_total : 0;
    $("sweep-bar").style.width = done.toFixed(1) + "%";
  }
  fillList("repair", rows);
}

function drawCharts(traffic) {
  const points = traffic.points;
  const times = points.map((p) => p.start_secs);
  const ops = [times, points.map((p) => p.ops_per_sec)];
  const latency = [times, points.map((p) => p.p50_ms), points.map((p) => p.p99_ms)];
  if (typeof uPlot === "undefined") return;
  if (!charts) {
    const width = () => Math.max(300, $("chart-ops").clientWidth);
    const axes = [{}, { size: 60 }];
    charts = {
      ops: new uPlot({
        width: width(), height: 200, axes,
        series: [{}, { label: "ops/s", stroke: "#0969da", fill: "rgba(9,105,218,.1)", points: { show: false } }],
      }, ops, $("chart-ops")),
      latency: new uPlot({
        width: width(), height: 200, axes,
        series: [{}, { label: "p50 ms", stroke: "#1a7f37" }, { label: "p99 ms", stroke: "#cf222e" }],
      }, latency, $("chart-latency")),
    };
    window.addEventListener("resize", () => {
      charts.ops.setSize({ width: width(), height: 200 });
      charts.latency.setSize({ width: width(), height: 200 });
    });
  } else {
    charts.ops.setData(ops);
    charts.latency.setData(latency);
  }
}

async function drawReadiness() {
  const response = await fetch("/readyz", { cache: "no-store" });
  const badge = $("readiness");
  badge.textContent = response.ok ? "ready" : "not ready";
  badge.className = "badge " + (response.ok ? "ready" : "not-ready");
  if (!response.ok) {
    const body = await response.json().catch(() => null);
    badge.title = body && body.error ? body.error : "status " + response.status;
  } else {
    badge.title = "";
  }
}

async function refresh() {
  try {
    const [cluster, traffic] = await Promise.all([
      getJson("/api/cluster"),
      getJson("/api/admin/traffic"),
    ]);
    if (cluster.status !== 200) {
      throw new Error("/api/cluster answered " + cluster.status +
        (cluster.body && cluster.body.error ? ": " + cluster.body.error : ""));
    }
    const status = cluster.body;
    const up = status.devices.filter((d) => d.up).length;
    $("summary").textContent = up + " of " + status.devices.length + " devices up, " +
      status.gateways.length + " gateways, map epoch " + status.map_epoch;
    drawDevices(status);
    drawGroups(status);
    await drawGateways(status);
    if (traffic.status === 200) drawCharts(traffic.body);
    await drawReadiness();
    $("error").hidden = true;
    $("login").hidden = true;
    const updated = $("updated");
    updated.textContent = "updated " + new Date().toLocaleTimeString();
    updated.dataset.loaded = "true";
  } catch (error) {
    if (error instanceof Unauthorized) {
      $("login").hidden = false;
      $("login-error").textContent = token() ? "that token was refused" : "";
    } else {
      $("error").textContent = "Cannot refresh: " + error.message;
      $("error").hidden = false;
    }
  }
}

$("login").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("token").value);
  refresh();
});

// The next refresh is scheduled when this one ends, so a slow cluster never piles them up.
async function loop() {
  await refresh();
  setTimeout(loop, REFRESH_MS);
}
loop();

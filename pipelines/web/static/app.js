// posewatch web view: a little plain JavaScript, no framework.
"use strict";

// Cameras page: each tile reloads its live image when the last one has arrived, at most
// max-fps times a second, and only while the page is visible; the states every second.
function camerasPage() {
  const tiles = document.querySelector(".tiles");
  if (!tiles) return;
  const period = 1000 / Math.max(0.1, parseFloat(tiles.dataset.maxFps || "4"));
  for (const img of document.querySelectorAll("img.live")) {
    const next = () => setTimeout(load, document.hidden ? 1000 : period);
    const load = () => {
      if (document.hidden) { next(); return; }
      img.src = img.dataset.src + "?t=" + Date.now();
    };
    img.addEventListener("load", () => { img.closest(".frame").classList.add("has-image"); next(); });
    img.addEventListener("error", () => setTimeout(load, 1000));
    load();
  }
  const refresh = async () => {
    try {
      const res = await fetch("/api/cameras", {cache: "no-store"});
      if (res.ok) {
        for (const c of await res.json()) {
          const tile = document.querySelector(`[data-camera="${CSS.escape(c.name)}"]`);
          if (!tile) continue;
          for (const f of ["status", "phase"]) {
            const el = tile.querySelector(`[data-field="${f}"]`);
            el.textContent = c[f];
            el.className = `badge ${f} ${c[f]}`;
          }
          tile.querySelector('[data-field="fps"]').textContent = c.fps.toFixed(1);
          tile.querySelector('[data-field="persons"]').textContent = c.persons;
          tile.querySelector('[data-field="alerting"]').textContent =
            c.alerting ? `${c.alerting} alerting` : "";
          tile.classList.toggle("alerting", c.alerting > 0);
        }
      }
    } catch (e) { /* the service restarts: try again */ }
    setTimeout(refresh, 1000);
  };
  refresh();
}

// Alerts page: new episodes arrive as server-sent events with their rendered row.
function alertsPage() {
  const table = document.getElementById("alerts");
  if (!table) return;
  const state = document.getElementById("live-state");
  const f = table.dataset;
  if (f.until || (f.page && f.page !== "1")) { state.textContent = "not live (filtered to the past)"; return; }
  const body = table.querySelector("tbody");
  const es = new EventSource("/api/events");
  es.onopen = () => { state.textContent = "live"; state.classList.add("on"); };
  es.onerror = () => { state.textContent = "reconnecting…"; state.classList.remove("on"); };
  es.addEventListener("alert", (ev) => {
    const msg = JSON.parse(ev.data);
    const tpl = document.createElement("template");
    tpl.innerHTML = msg.html.trim();
    const row = tpl.content.firstElementChild;
    if (f.camera && row.dataset.camera !== f.camera) return;
    if (f.verdict && row.dataset.verdict !== f.verdict) return;
    const old = document.getElementById(row.id);
    if (old) {
      old.replaceWith(row);
    } else {
      body.prepend(row);
      const count = document.getElementById("count");
      const total = parseInt(count.dataset.total, 10) + 1;
      count.dataset.total = total;
      count.textContent = `${total} episode${total === 1 ? "" : "s"}`;
    }
    const empty = document.getElementById("empty");
    if (empty) empty.remove();
    row.classList.add("fresh");
  });
}

// Alert page: the verdict buttons post JSON; the answer (or the error) is shown.
function alertPage() {
  const form = document.getElementById("verdict-form");
  if (!form) return;
  const status = document.getElementById("verdict-status");
  for (const btn of form.querySelectorAll("button[data-verdict]")) {
    btn.addEventListener("click", async () => {
      const note = document.getElementById("note").value;
      status.textContent = "saving…";
      try {
        const res = await fetch(`/api/alerts/${form.dataset.alert}/verdict`, {
          method: "POST",
          headers: {"Content-Type": "application/json"},
          body: JSON.stringify({verdict: btn.dataset.verdict, note: note}),
        });
        const out = await res.json();
        if (!res.ok) { status.textContent = `not saved: ${out.error}`; status.className = "error"; return; }
        const label = out.verdict.replace("_", " ");
        status.textContent = `marked ${label}`;
        status.className = "saved";
        document.getElementById("verdict-badge").innerHTML =
          `<span class="badge ${out.verdict}">${label}</span>`;
      } catch (e) {
        status.textContent = `not saved: ${e}`;
        status.className = "error";
      }
    });
  }
}

document.addEventListener("DOMContentLoaded", () => { camerasPage(); alertsPage(); alertPage(); });

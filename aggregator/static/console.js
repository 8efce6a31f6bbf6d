// Gondola staff console. Everything from the server is data: it is put on the page with
// textContent only (never innerHTML), so a hostile SKU or name cannot become markup.
"use strict";
(function () {
  if (location.pathname === "/login") {
    if (new URLSearchParams(location.search).has("failed")) document.getElementById("failed").classList.add("on");
    return;
  }
  let me = null, state = null, selected = null, currency = "USD";

  function h(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else if (v !== null && v !== undefined && v !== false) e.setAttribute(k, v === true ? "" : v);
    }
    for (const k of kids.flat()) if (k !== null && k !== undefined && k !== false)
      e.append(k instanceof Node ? k : document.createTextNode(String(k)));
    return e;
  }
  const $ = (id) => document.getElementById(id);
  const fill = (id, ...kids) => {
    const e = $(id);
    e.replaceChildren(...kids.flat().filter((k) => k !== null && k !== undefined && k !== false));
    return e;
  };
  const empty = (text) => h("div", { class: "empty" }, text);

  // Money in minor units, formatted for the store's currency (exponent from Intl: USD 2, JPY 0).
  function money(minor, cur) {
    if (minor === null || minor === undefined) return "—";
    const c = cur || currency;
    let f;
    try { f = new Intl.NumberFormat(undefined, { style: "currency", currency: c }); }
    catch (_) { return (minor / 100).toFixed(2) + " " + c; }
    const exp = f.resolvedOptions().maximumFractionDigits;
    return f.format(minor / Math.pow(10, exp));
  }
  // Times: 24-hour clock, like every other Gondola tool.
  const clock = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23" });
  const hhmmss = (iso) => iso ? clock.format(new Date(iso)) : "—";
  function ago(iso) {
    if (!iso) return "—";
    const s = Math.max(0, (Date.now() - new Date(iso).getTime()) / 1000);
    if (s < 90) return Math.round(s) + " s ago";
    if (s < 5400) return Math.round(s / 60) + " min ago";
    if (s < 172800) return Math.round(s / 3600) + " h ago";
    return Math.round(s / 86400) + " days ago";
  }

  async function api(path, body) {
    const opt = body === undefined ? {} : {
      method: "POST", body: JSON.stringify(body),
      headers: { "Content-Type": "application/json", "X-CSRF-Token": me ? me.csrf : "" } };
    const r = await fetch(path, { credentials: "same-origin", ...opt });
    if (r.status === 401) { location.href = "/login"; throw new Error("signed out"); }
    const doc = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(doc.error || ("HTTP " + r.status));
    return doc;
  }

  // ---------------------------------------------------------------- tabs
  document.querySelectorAll("nav button").forEach((b) => b.addEventListener("click", () => {
    document.querySelectorAll("nav button").forEach((x) => x.classList.toggle("on", x === b));
    document.querySelectorAll(".view").forEach((v) => v.classList.toggle("on", v.id === "view-" + b.dataset.view));
  }));

  // ---------------------------------------------------------------- review
  const REASONS = { low_confidence: "unsure product", misplaced: "misplaced return", ambiguous: "close second shopper",
    weak_evidence: "weak tracking", put_back_not_in_cart: "put back, not in cart", unresolved: "unknown change",
    after_receipt: "after the receipt" };

  function renderQueue() {
    const q = state.review || [];
    $("nreview").textContent = q.length;
    if (!q.length) { fill("queue", empty("Nothing to review.")); return; }
    fill("queue", q.map((it) => h("div", { class: "item" + (selected === it.line_id ? " sel" : ""), "data-line": it.line_id,
      onclick: () => select(it.line_id) },
      h("div", {}, h("b", {}, it.name || it.sku || "unknown"), " ×" + Math.abs(it.quantity), " · ", it.session_id),
      h("div", { class: "mute" }, it.unit_id + " shelf " + it.shelf + " · " + hhmmss(it.t_end)),
      h("div", {}, it.reasons.map((r) => h("span", { class: "tag" }, REASONS[r] || r))))));
    if (selected !== null && !q.some((it) => it.line_id === selected)) {
      // decided (here or by a colleague): keep showing it, refreshed
      select(selected, true);
    }
  }

  function traceSvg(trace, ev) {
    if (!trace || !trace.plates) return empty("No weight trace in this event.");
    const ns = "http://www.w3.org/2000/svg";
    const W = 600, H = 170, P = 30;
    const series = Object.entries(trace.plates);
    const all = series.flatMap(([, v]) => v.filter((x) => x !== null));
    if (!all.length) return empty("Empty trace.");
    const lo = Math.min(...all), hi = Math.max(...all), span = Math.max(hi - lo, 1);
    const n = Math.max(...series.map(([, v]) => v.length));
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`); svg.setAttribute("class", "trace");
    const colors = ["#1565c0", "#b23c17", "#2e7d32", "#6a1b9a", "#00838f", "#ef6c00"];
    const x = (i) => P + (W - 2 * P) * i / Math.max(n - 1, 1), y = (g) => H - 18 - (H - 36) * (g - lo) / span;
    const t0 = new Date(trace.t0).getTime(), ts = new Date(ev.t_start).getTime(), te = new Date(ev.t_end).getTime();
    const xt = (t) => x((t - t0) / 1000 / trace.dt_s);
    const band = document.createElementNS(ns, "rect");
    band.setAttribute("x", xt(ts)); band.setAttribute("width", Math.max(2, xt(te) - xt(ts)));
    band.setAttribute("y", 8); band.setAttribute("height", H - 26); band.setAttribute("fill", "#fff3b0");
    svg.append(band);
    series.forEach(([plate, v], k) => {
      const pl = document.createElementNS(ns, "polyline");
      pl.setAttribute("points", v.map((g, i) => g === null ? "" : `${x(i).toFixed(1)},${y(g).toFixed(1)}`).join(" "));
      pl.setAttribute("fill", "none"); pl.setAttribute("stroke", colors[k % colors.length]); pl.setAttribute("stroke-width", "2");
      svg.append(pl);
      const lab = document.createElementNS(ns, "text");
      lab.setAttribute("x", W - P + 2); lab.setAttribute("y", y(v[v.length - 1] ?? lo) + 4);
      lab.setAttribute("font-size", "11"); lab.setAttribute("fill", colors[k % colors.length]);
      lab.textContent = "plate " + plate; svg.append(lab);
    });
    for (const [g, txt] of [[hi, hi.toFixed(0) + " g"], [lo, lo.toFixed(0) + " g"]]) {
      const t = document.createElementNS(ns, "text");
      t.setAttribute("x", 2); t.setAttribute("y", y(g) + 4); t.setAttribute("font-size", "10"); t.setAttribute("fill", "#6b7585");
      t.textContent = txt; svg.append(t);
    }
    return svg;
  }

  async function select(lineId, quiet) {
    selected = lineId;
    document.querySelectorAll(".queue .item").forEach((e) => e.classList.toggle("sel", Number(e.dataset.line) === lineId));
    let it;
    try { it = await api("/api/review/" + lineId); } catch (e) { if (!quiet) fill("msg", h("span", { class: "bad" }, e.message)); return; }
    const may = me && me.may.review;
    const open = it.review_state === "open";
    const ev = it.event || {};
    const decide = (body) => async () => {
      fill("msg", h("span", { class: "mute" }, "sending…"));
      try {
        const r = await api("/api/review/" + lineId, body);
        fill("msg", h("span", { class: "mute" }, "decision " + r.decision + " queued; cartd applies it…"));
        for (let i = 0; i < 40; i++) {
          await new Promise((ok) => setTimeout(ok, 250));
          const o = await api("/api/decision/" + r.decision);
          if (o.applied) {
            fill("msg", h("span", { class: o.result.startsWith("refused") ? "bad" : "ok", id: "outcome" }, o.result));
            select(lineId, true);
            return;
          }
        }
        fill("msg", h("span", { class: "warn" }, "cartd has not applied it yet (is it running?)"));
      } catch (e) { fill("msg", h("span", { class: "bad" }, e.message)); }
    };
    const vision = ev.vision && ev.vision.status ? h("div", { class: "mute" }, "camera: " + ev.vision.status +
      (ev.vision.action ? " · action " + JSON.stringify(ev.vision.action) : "") +
      (ev.vision.skus ? " · products " + JSON.stringify(ev.vision.skus) : "")) : h("div", { class: "mute" }, "camera: none (weight only)");
    fill("detail",
      h("div", {}, h("b", { style: "font-size:16px" }, (it.name || it.sku || "unknown change") + " ×" + Math.abs(it.quantity)),
        " ", h("span", { class: ev.type }, ev.type || ""), " → ", h("b", {}, it.session_id),
        it.receipted ? h("span", { class: "mute" }, " (receipt sent: a decision issues a correction)") : null),
      h("div", {}, it.reasons.map((r) => h("span", { class: "tag" }, REASONS[r] || r)),
        open ? null : h("span", { class: "ok" }, " decided: " + it.review_state + " by " + (it.reviewed_by || "?"))),
      h("div", { class: "mute" }, `${it.unit_id} shelf ${it.shelf} plates ${(ev.plates || []).join(", ")} · ` +
        `${hhmmss(it.t_start)}–${hhmmss(it.t_end)} · Δ ${ev.delta_g} g` + (ev.noise_g === null || ev.noise_g === undefined ? "" : ` (noise ${ev.noise_g} g)`) +
        ` · confidence ${ev.confidence}` +
        (ev.arrangement ? " · " + ev.arrangement : "")),
      traceSvg(ev.trace, it),
      vision,
      h("h2", {}, "Product"),
      h("div", { class: "choices", id: "products" }, (it.products || []).map((c) => h("button", {
        class: c.sku === it.sku ? "cur" : "", disabled: !may || !c.sku, "data-sku": c.sku,
        onclick: decide({ action: "product", sku: c.sku, quantity: c.quantity }) },
        (c.name || c.sku || "nothing") + " ×" + c.quantity + " ", h("span", { class: "bar", style: `width:${Math.round(60 * c.score)}px` }),
        " " + Math.round(100 * c.score) + "%"))),
      h("h2", {}, "Shopper"),
      h("div", { class: "choices", id: "shoppers" }, (it.shoppers || []).map((c) => h("button", {
        class: c.session_id === it.session_id ? "cur" : "", disabled: !may || c.session_id === it.session_id,
        "data-session": c.session_id, onclick: decide({ action: "shopper", session_id: c.session_id }) },
        c.session_id + " ", h("span", { class: "bar", style: `width:${Math.round(60 * c.score)}px` }), " " + Math.round(100 * c.score) + "%"))),
      h("div", { class: "actions" },
        h("button", { class: "accept", id: "accept", disabled: !may, onclick: decide({ action: "accept" }) }, "Accept as is"),
        h("button", { class: "remove", id: "remove", disabled: !may, onclick: decide({ action: "remove" }) }, "Remove the line")),
      may ? null : h("div", { class: "mute" }, "Your role (" + me.role + ") may look, not decide."),
      (it.decisions || []).length ? h("table", {}, h("tr", {}, h("th", {}, "decided"), h("th", {}, "by"), h("th", {}, "action"), h("th", {}, "result")),
        it.decisions.map((d) => h("tr", {}, h("td", {}, hhmmss(d.decided_at)), h("td", {}, d.actor), h("td", {}, d.action + (d.sku ? " " + d.sku : "") + (d.session_id ? " " + d.session_id : "")),
          h("td", {}, d.result || "waiting for cartd")))) : null);
  }

  // ---------------------------------------------------------------- units
  function renderUnits() {
    const us = state.units || [];
    if (!us.length) { fill("units", empty("No unit has reported yet.")); return; }
    fill("units", us.map((u) => h("section", { class: "unit", "data-unit": u.unit_id },
      h("h3", {}, u.unit_id, h("span", { class: "state " + u.state, "data-state": u.state }, u.state),
        h("span", { class: "mute", style: "font-size:12px;font-weight:400" }, "since " + hhmmss(u.since) + " (" + ago(u.since) + ")")),
      u.reasons.length ? h("div", { class: "warn" }, u.reasons.join("; ")) : null,
      h("div", { class: "mute" }, `outbox ${u.outbox_depth ?? "—"} · last seq ${u.last_seq ?? "—"} · health ` +
        (u.health_age_s === null ? "never" : u.health_age_s + " s ago") + ` · camera ${u.camera}`),
      h("div", { class: "mute" }, "calibration " + (u.calibration.created ? ago(u.calibration.created) : "unknown")),
      h("table", {}, h("tr", {}, h("th", {}, "plate"), h("th", {}, "state"), h("th", { class: "num" }, "noise"), h("th", {}, "last verify")),
        Object.entries(u.plates).map(([k, p]) => {
          const v = (u.calibration.last_verify || {})[k];
          return h("tr", {}, h("td", {}, k), h("td", {}, p.state), h("td", { class: "num" }, p.noise_g === null ? "—" : p.noise_g + " g"),
            h("td", {}, v ? h("span", { class: v.pass ? "ok" : "bad" }, (v.pass ? "pass " : "FAIL ") + ago(v.time)) : h("span", { class: "mute" }, "never")));
        })),
      me && me.may.maintenance && Object.keys(u.plates).length ? h("div", { class: "actions" },
        h("button", { onclick: () => maint(u, 600) }, "Maintenance 10 min"), h("button", { onclick: () => maint(u, 0) }, "End maintenance")) : null)));
  }
  async function maint(u, seconds) {
    try { await api("/api/maintenance", { unit_id: u.unit_id, plates: Object.keys(u.plates), seconds }); }
    catch (e) { alert(e.message); }
  }

  // ---------------------------------------------------------------- stock
  function renderStock() {
    const s = state.stock || { alerts: [], facings: [], misplaced: [] };
    $("nlow").textContent = s.alerts.filter((a) => !a.acknowledged).length;
    fill("alerts", s.alerts.length ? h("table", {}, h("tr", {}, h("th", {}, "product"), h("th", {}, "where"), h("th", { class: "num" }, "left"), h("th", {}, "")),
      s.alerts.map((a) => h("tr", {}, h("td", {}, a.name || a.sku), h("td", {}, a.unit_id + " shelf " + a.shelf),
        h("td", { class: "num bad" }, a.units + " (≤ " + a.threshold + ")"),
        h("td", {}, a.acknowledged ? h("span", { class: "mute" }, "restock acknowledged " + hhmmss(a.acknowledged)) :
          h("button", { disabled: !(me && me.may.restock), onclick: async () => {
            try { await api("/api/restock", { unit_id: a.unit_id, shelf: a.shelf, sku: a.sku }); } catch (e) { alert(e.message); } } }, "Acknowledge"))))) : empty("No facing is low."));
    fill("misplaced", s.misplaced.length ? h("table", {}, s.misplaced.map((m) => h("tr", {}, h("td", {}, m.name || m.sku),
      h("td", {}, m.unit_id + " shelf " + m.shelf + " plates " + (m.plates || []).join(", ")), h("td", { class: "num" }, "×" + m.units)))) : empty("Nothing out of place."));
    fill("facings", s.facings.length ? h("table", {}, h("tr", {}, h("th", {}, "unit / shelf"), h("th", {}, "product"), h("th", { class: "num" }, "units"), h("th", {}, "from")),
      s.facings.map((f) => h("tr", {}, h("td", {}, f.unit_id + " / " + f.shelf), h("td", {}, f.name || f.sku),
        h("td", { class: "num " + (f.low ? "bad" : "") }, f.units ?? "?"), h("td", { class: "mute" }, f.source || "")))) : empty("No unit has sent its stock yet."));
  }

  // ---------------------------------------------------------------- store
  function linesTable(lines, cur) {
    return h("table", {}, lines.map((l) => h("tr", {}, h("td", {}, l.name || l.sku, l.needs_review ? h("span", { class: "tag" }, "review") : null),
      h("td", { class: "num" }, "×" + l.quantity), h("td", { class: "num" }, money(l.amount, cur)))));
  }
  function renderStore() {
    fill("shelves", (state.shelves || []).map((s) => h("div", { class: "shelf" }, h("h3", {}, s.unit_id + " · shelf " + s.shelf),
      s.last_events.map((e) => h("div", { class: "ev", "data-event-id": e.event_id }, h("span", { class: "t" }, hhmmss(e.t_end)),
        h("span", { class: e.type }, (e.type === "pick" ? "− " : e.type === "put_back" ? "+ " : "? ") + (e.name || e.sku || "unknown") + " ×" + e.quantity),
        h("span", { class: "mute" }, e.session_id || e.state))))));
    const carts = state.open_carts || [];
    fill("carts", carts.length ? carts.map((c) => h("div", { class: "card", "data-session-id": c.session_id }, h("h3", {}, c.session_id, h("span", { class: "mute" }, c.state === "open" ? "in store" : "left, receipt pending")),
      c.lines.length ? linesTable(c.lines, c.currency) : empty("empty cart"), h("div", { class: "total" }, money(c.total, c.currency)))) : empty("Nobody in the store."));
    const rs = state.receipts || [];
    fill("receipts", rs.length ? rs.map((r) => h("div", { class: "card receipt", "data-receipt-id": r.receipt_id }, h("h3", {}, r.receipt_id,
      h("span", { class: "mute" }, r.kind + " · " + hhmmss(r.issued_at))),
      r.lines.length ? linesTable(r.lines, r.currency) : empty("nothing bought"),
      h("div", { class: "total" }, money(r.total, r.currency), r.total_delta !== undefined ? h("span", { class: "mute" }, " (" + (r.total_delta >= 0 ? "+" : "") + money(r.total_delta, r.currency) + ")") : null))) : empty("No receipts yet."));
    const dl = state.deadletters || [];
    fill("dls", dl.length ? dl.map((d) => h("div", { class: "mute" }, hhmmss(d.t) + " ", h("b", { class: "bad" }, d.reason), " " + d.detail)) : empty("None."));
  }

  function renderAudit() {
    const a = state.audit || [];
    fill("audit", a.length ? h("table", { id: "audit-table" }, h("tr", {}, h("th", {}, "when"), h("th", {}, "who"), h("th", {}, "what"), h("th", {}, "on"), h("th", {}, "detail")),
      a.map((e) => h("tr", {}, h("td", {}, new Date(e.t).toLocaleString(undefined, { hourCycle: "h23" })), h("td", {}, e.actor), h("td", {}, e.action),
        h("td", {}, e.target || ""), h("td", { class: "mute" }, e.detail ? (e.detail.result || JSON.stringify(e.detail)) : "")))) : empty("Nothing yet."));
  }

  function render(s) {
    state = s; currency = s.currency || "USD";
    $("store").textContent = s.store_id;
    const sm = s.summary || {};
    fill("counts", [["in store", sm.open_sessions], ["receipts", sm.receipts], ["corrections", sm.corrections], ["reviewed", sm.reviewed]]
      .map(([k, v]) => h("span", {}, k + " ", h("b", {}, v ?? 0))));
    renderQueue(); renderUnits(); renderStock(); renderStore(); renderAudit();
  }

  async function start() {
    me = await api("/api/me");
    fill("who", me.username + " (" + me.role + ")", me.sso ? null : h("button", { id: "signout", onclick: async () => {
      try { await api("/logout", {}); } finally { location.href = "/login"; } } }, "Sign out"));
    render(await api("/api/state"));
    const live = $("live");
    if (window.EventSource) {
      const es = new EventSource("/events");
      es.addEventListener("state", (m) => { live.textContent = "live"; live.className = "on"; render(JSON.parse(m.data)); });
      es.onerror = () => { live.textContent = "reconnecting…"; live.className = "off"; };
    } else {
      setInterval(async () => render(await api("/api/state")), 3000);
      live.textContent = "polling";
    }
  }
  start().catch((e) => { $("live").textContent = e.message; $("live").className = "off"; });
})();

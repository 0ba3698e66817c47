// The live page: polls /report.json once a second and draws it. Deterministic: members are
// placed on a circle in key order, so the same mesh draws the same picture. Everything is
// built with createElement and textContent: names come from other nodes, never as markup.
"use strict";
(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const SCHEMA = 1;
  const POLL_MS = 1000;
  // Sampled intervals the router reports per tunnel (report.rs HISTORY_SAMPLES).
  const HISTORY = 30;
  const WIDTH = 640, HEIGHT = 520, RADIUS = 190, NODE_R = 26;

  const $ = (id) => document.getElementById(id);

  function showError(message) {
    const pre = $("errors");
    pre.hidden = false;
    pre.textContent += message + "\n";
  }
  window.addEventListener("error", (e) => showError("error: " + e.message));
  window.addEventListener("unhandledrejection", (e) => showError("error: " + e.reason));

  function el(name, text, cls) {
    const e = document.createElement(name);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  function sv(name, attrs) {
    const e = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    return e;
  }

  function bytes(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let u = 0;
    while (n >= 1024 && u < units.length - 1) { n /= 1024; u++; }
    return (u === 0 ? n.toFixed(0) : n.toFixed(1)) + " " + units[u];
  }
  const rate = (n) => bytes(n) + "/s";
  const pps = (n) => n.toFixed(n < 10 ? 1 : 0) + " pkt/s";

  // Rates come from the router, which samples each tunnel's counters (report.rs): the page
  // shows the last minutes as soon as it opens.
  function rates(tunnel) {
    return tunnel ? tunnel.rate : null;
  }

  // Bytes per second (both ways) over each sampled interval, as a small line.
  function sparkline(tunnel) {
    const svg = sv("svg", { width: 120, height: 24, viewBox: "0 0 120 24", class: "sparkline" });
    const values = tunnel.recent.map((r) => r.tx_bytes + r.rx_bytes);
    if (values.length < 2) return svg;
    const max = Math.max(...values, 1);
    const step = 120 / (HISTORY - 1);
    const x0 = 120 - step * (values.length - 1);
    const points = values.map((v, i) => (x0 + i * step).toFixed(1) + "," + (23 - (v / max) * 22).toFixed(1));
    svg.appendChild(sv("polyline", { points: points.join(" "), class: "spark" }));
    return svg;
  }

  function layout(members) {
    const pos = new Map();
    const n = members.length;
    members.forEach((m, i) => {
      if (n === 1) { pos.set(m.id, { x: WIDTH / 2, y: HEIGHT / 2 }); return; }
      const a = -Math.PI / 2 + (2 * Math.PI * i) / n;
      pos.set(m.id, { x: WIDTH / 2 + RADIUS * Math.cos(a), y: HEIGHT / 2 + RADIUS * Math.sin(a) });
    });
    return pos;
  }

  function drawTopology(report, names, tunnels) {
    const svg = $("topology");
    const pos = layout(report.members);
    const edges = sv("g", { id: "edges" });
    const nodes = sv("g", { id: "nodes" });
    for (const l of report.links) {
      const a = pos.get(l.a), b = pos.get(l.b);
      if (!a || !b) continue;
      const v = l.via && pos.get(l.via);
      let d, label;
      if (l.state === "relayed" && v && l.via !== l.a && l.via !== l.b) {
        // A quadratic curve through the relay: its control point is 2v - (a+b)/2.
        const c = { x: 2 * v.x - (a.x + b.x) / 2, y: 2 * v.y - (a.y + b.y) / 2 };
        d = `M${a.x.toFixed(1)},${a.y.toFixed(1)} Q${c.x.toFixed(1)},${c.y.toFixed(1)} ${b.x.toFixed(1)},${b.y.toFixed(1)}`;
        const t = 0.3;
        label = {
          x: (1 - t) * (1 - t) * a.x + 2 * (1 - t) * t * c.x + t * t * b.x,
          y: (1 - t) * (1 - t) * a.y + 2 * (1 - t) * t * c.y + t * t * b.y,
        };
      } else {
        d = `M${a.x.toFixed(1)},${a.y.toFixed(1)} L${b.x.toFixed(1)},${b.y.toFixed(1)}`;
        label = { x: (a.x + b.x) / 2, y: (a.y + b.y) / 2 };
      }
      const cls = "edge " + l.state + (l.asymmetric ? " asymmetric" : "") + (l.local ? " local" : "");
      const g = sv("g", { class: cls, "data-a": l.a, "data-b": l.b, "data-state": l.state });
      if (l.via) g.setAttribute("data-via", l.via);
      const title = sv("title");
      let text = `${names.get(l.a)} – ${names.get(l.b)}: ${l.state}`;
      if (l.via) text += ` via ${names.get(l.via) || l.via}`;
      if (l.asymmetric) text += ` (asymmetric: ${names.get(l.a)} sees it ${l.a_sees_b ? "up" : "down"}, ${names.get(l.b)} sees it ${l.b_sees_a ? "up" : "down"})`;
      title.textContent = text;
      g.appendChild(title);
      g.appendChild(sv("path", { d }));
      let caption = l.state + (l.via ? " via " + (names.get(l.via) || "?") : "");
      if (l.local) {
        const peer = l.a === report.node.id ? l.b : l.a;
        const t = tunnels.get(peer);
        const r = rates(t);
        const parts = [];
        if (t && t.rtt_ms !== null) parts.push(t.rtt_ms.toFixed(2) + " ms");
        if (r) parts.push(rate(r.tx_bytes + r.rx_bytes));
        if (parts.length) caption += " · " + parts.join(" · ");
      }
      const tx = sv("text", { x: label.x.toFixed(1), y: (label.y - 4).toFixed(1), "text-anchor": "middle" });
      tx.textContent = caption;
      g.appendChild(tx);
      edges.appendChild(g);
    }
    for (const m of report.members) {
      const p = pos.get(m.id);
      const g = sv("g", { class: "node" + (m.this_node ? " self" : ""), "data-id": m.id, "data-name": m.name });
      const title = sv("title");
      title.textContent = `${m.name} ${m.id}`;
      g.appendChild(title);
      g.appendChild(sv("circle", { cx: p.x.toFixed(1), cy: p.y.toFixed(1), r: NODE_R }));
      const t = sv("text", { x: p.x.toFixed(1), y: (p.y + 4).toFixed(1) });
      t.textContent = m.name;
      g.appendChild(t);
      nodes.appendChild(g);
    }
    svg.replaceChildren(edges, nodes);
  }

  function row(cells, header) {
    const tr = el("tr");
    for (const c of cells) {
      const cell = el(header ? "th" : "td");
      if (c instanceof Node) cell.appendChild(c);
      else cell.textContent = c === null || c === undefined ? "–" : String(c);
      if (typeof c === "number" || (typeof c === "string" && /^[\d.]+ /.test(c))) cell.className = "num";
      tr.appendChild(cell);
    }
    return tr;
  }

  function dl(pairs) {
    const list = el("dl");
    for (const [k, v] of pairs) {
      list.appendChild(el("dt", k));
      list.appendChild(el("dd", v === "" ? "–" : v));
    }
    return list;
  }

  function drawPanels(report, names, tunnels) {
    const panels = [];
    for (const m of report.members) {
      const p = el("section", null, "panel" + (m.this_node ? " self" : ""));
      p.setAttribute("data-id", m.id);
      p.appendChild(el("h2", m.name + (m.this_node ? " (this node)" : "")));
      const links = report.links
        .filter((l) => l.a === m.id || l.b === m.id)
        .map((l) => {
          const other = l.a === m.id ? l.b : l.a;
          return `${names.get(other)} ${l.state}` + (l.via ? ` via ${names.get(l.via) || "?"}` : "") + (l.asymmetric ? " (asymmetric)" : "");
        });
      p.appendChild(dl([
        ["key", m.id],
        ["blocks", m.blocks.join(", ")],
        ["endpoints", m.announced.concat(m.seen).join(", ")],
        ["peers", links.join("; ")],
        ["unreachable", m.unreachable.map((k) => names.get(k) || k).join(", ")],
      ]));
      if (m.this_node) {
        const table = el("table", null, "tunnels");
        table.appendChild(row(["peer", "state", "path", "RTT", "tx", "rx", "tx pkt", "rx pkt", "last 5 min", "handshake", "MTU", "cipher"], true));
        for (const t of report.tunnels) {
          const r = rates(t);
          const path = t.path === null ? null : t.path + (t.via ? " via " + (names.get(t.via) || "?") : "");
          table.appendChild(row([
            t.name || t.peer.slice(0, 10), t.state, path,
            t.rtt_ms === null ? null : t.rtt_ms.toFixed(2) + " ms",
            r ? rate(r.tx_bytes) : bytes(t.tx_bytes), r ? rate(r.rx_bytes) : bytes(t.rx_bytes),
            r ? pps(r.tx_packets) : t.tx_packets, r ? pps(r.rx_packets) : t.rx_packets,
            sparkline(t),
            t.handshake_age_secs === null ? null : t.handshake_age_secs + " s ago",
            t.mtu, t.cipher,
          ]));
        }
        p.appendChild(table);
        const drops = el("table", null, "drops");
        drops.appendChild(row(["drop reason", "count"], true));
        for (const [reason, n] of Object.entries(report.drops)) drops.appendChild(row([reason, n]));
        p.appendChild(drops);
      }
      panels.push(p);
    }
    $("panels").replaceChildren(...panels);
  }

  function draw(report) {
    const names = new Map(report.members.map((m) => [m.id, m.name]));
    const tunnels = new Map(report.tunnels.map((t) => [t.peer, t]));
    $("self-name").textContent = "· " + report.node.name + " (weft " + report.node.version + ")";
    drawTopology(report, names, tunnels);
    drawPanels(report, names, tunnels);
    const count = (s) => report.links.filter((l) => l.state === s).length;
    const summary = $("summary");
    summary.textContent = `${report.members.length} members, ${report.links.length} links: ` +
      ["direct", "relayed", "handshaking", "down"].map((s) => `${count(s)} ${s}`).join(", ") +
      `; ${report.links.filter((l) => l.asymmetric).length} asymmetric`;
    summary.setAttribute("data-members", report.members.length);
    summary.setAttribute("data-links", report.links.length);
  }

  async function poll() {
    const fresh = $("freshness");
    try {
      const response = await fetch("/report.json", { cache: "no-store" });
      if (!response.ok) throw new Error("HTTP " + response.status);
      const report = await response.json();
      if (report.schema !== SCHEMA) throw new Error(`report schema ${report.schema}, this page reads ${SCHEMA}`);
      draw(report);
      fresh.textContent = "updated " + new Date().toLocaleTimeString();
      fresh.className = "muted";
    } catch (e) {
      fresh.textContent = "cannot read the report: " + e.message;
      fresh.className = "stale";
    }
    setTimeout(poll, POLL_MS);
  }

  poll();
})();

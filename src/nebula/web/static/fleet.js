// Nebula Command fleet pages: live node cards, live charts of one node, node status on
// the Command Center, and container logs. Charts are inline SVG drawn here.
(function () {
  "use strict";
  const SPARK_POINTS = 60;
  const LIVE_KEEP = 6 * 3600; // one-second samples kept while the page stays open
  const LOG_LINES_KEPT = 2000;
  const KEYS = ["cpu", "memory", "disk", "gpu"];
  const WINDOW_MS = {
    "15m": 15 * 60e3, "1h": 3600e3, "6h": 6 * 3600e3,
    "24h": 24 * 3600e3, "7d": 7 * 86400e3, "30d": 30 * 86400e3,
  };

  // The same figures as fleet_view.figures on the server.
  function readings(metrics) {
    if (!metrics || typeof metrics !== "object") return null;
    const gpus = Array.isArray(metrics.gpus) ? metrics.gpus : [];
    const util = gpus.map((g) => Number(g.utilization || 0));
    return {
      cpu: Number(metrics.cpu_percent || 0),
      memory: Number((metrics.memory || {}).percent || 0),
      disk: Number((metrics.disk || {}).percent || 0),
      gpu: util.length ? Math.max(...util) : null,
    };
  }
  const clamp = (v) => Math.min(100, Math.max(0, v));
  const pct = (v) => (v === null || v === undefined ? "—" : `${Math.round(v)}%`);
  const when = (iso) => (iso ? new Date(iso).toISOString().replace("T", " ").slice(0, 19) + " UTC" : "never");

  function field(root, name, text) {
    const el = root.querySelector(`[data-field="${name}"]`);
    if (el) el.textContent = text;
  }

  function setStatus(name, status) {
    for (const el of document.querySelectorAll("[data-status-of]")) {
      if (el.dataset.statusOf !== name) continue;
      el.dataset.status = status;
      if (el.classList.contains("badge")) el.textContent = status;
    }
  }

  // A sparkline: the last values, evenly spaced, in a 100 x 24 box.
  function spark(svg, values) {
    const line = svg.querySelector("polyline");
    const shown = values.filter((v) => v !== null).slice(-SPARK_POINTS);
    const step = shown.length > 1 ? 100 / (shown.length - 1) : 0;
    line.setAttribute("points", shown.map((v, i) => `${(i * step).toFixed(2)},${(24 - (clamp(v) * 24) / 100).toFixed(2)}`).join(" "));
  }

  // A chart: points placed by time over the window, in a 300 x 100 box.
  function chart(svg, points, spanMs, now) {
    const start = now - spanMs;
    const shown = points.filter((p) => p.t >= start && p.v !== null && p.v !== undefined);
    const line = svg.querySelector("polyline.series");
    line.setAttribute("points", shown.map((p) => `${(((p.t - start) / spanMs) * 300).toFixed(2)},${(100 - clamp(p.v)).toFixed(2)}`).join(" "));
    svg.dataset.points = String(shown.length);
    // The latest value across the whole chart: readable even when the points of a
    // long window crowd into its right edge.
    const level = svg.querySelector("line.now");
    const last = shown[shown.length - 1];
    level.setAttribute("visibility", last ? "visible" : "hidden");
    if (last) for (const y of ["y1", "y2"]) level.setAttribute(y, (100 - clamp(last.v)).toFixed(2));
  }

  function historyPoints(body) {
    return (body.points || []).map((p) => ({
      t: Date.parse(p.at), cpu: p.cpu, memory: p.memory, disk: p.disk, gpu: p.gpu_util,
    }));
  }

  async function getJson(url) {
    const response = await fetch(url, { headers: { Accept: "application/json" } });
    if (!response.ok) throw new Error(`${url} answered ${response.status}`);
    return response.json();
  }

  // The Nodes page -----------------------------------------------------------------
  function liveNodes() {
    const root = document.getElementById("fleet");
    if (!root || !window.EventSource) return;
    const page = document.querySelector("main");
    const cards = new Map([...root.querySelectorAll("[data-node]")].map((c) => [c.dataset.node, c]));
    const history = new Map();
    const live = new Map();
    const seen = new Map();
    const draw = (name) => {
      const card = cards.get(name);
      const older = history.get(name) || [];
      const newer = live.get(name) || [];
      for (const key of KEYS) {
        const svg = card.querySelector(`svg[data-spark="${key}"]`);
        if (svg) spark(svg, older.concat(newer).map((p) => p[key]));
      }
    };
    for (const name of cards.keys()) {
      live.set(name, []);
      getJson(`/api/v1/nodes/${encodeURIComponent(name)}/metrics?window=${root.dataset.historyWindow}`)
        .then((body) => { history.set(name, historyPoints(body)); draw(name); })
        .catch(() => {}); // the sparkline starts with the live values instead
    }
    const stream = new EventSource(root.dataset.stream);
    stream.addEventListener("nodes", (event) => {
      const nodes = JSON.parse(event.data);
      if (nodes.length !== cards.size || nodes.some((n) => !cards.has(n.name))) {
        stream.close();
        window.location.reload(); // a node was added or removed: draw the cards anew
        return;
      }
      for (const node of nodes) {
        const card = cards.get(node.name);
        const r = readings(node.metrics);
        setStatus(node.name, node.status);
        field(card, "last_seen", when(node.last_seen));
        for (const key of KEYS) field(card, key, pct(r ? r[key] : null));
        field(card, "containers", node.containers ? `${node.containers.running} running of ${node.containers.total}` : "—");
        field(card, "capabilities", node.capabilities.join(", ") || "—");
        // A new report adds a point; the first event repeats what the history holds.
        const previous = seen.get(node.name);
        seen.set(node.name, node.last_seen);
        if (r && previous !== undefined && previous !== node.last_seen) {
          const points = live.get(node.name);
          points.push({ t: Date.parse(node.last_seen), ...r });
          if (points.length > SPARK_POINTS) points.shift();
        }
        draw(node.name);
      }
      for (const status of ["online", "stale", "offline"]) {
        field(page, `count_${status}`, String(nodes.filter((n) => n.status === status).length));
      }
      field(page, "live", "connected");
    });
    stream.addEventListener("error", () => field(page, "live", "reconnecting…"));
  }

  // The Command Center: node colours follow their status -----------------------------
  function liveStatus() {
    const root = document.getElementById("fleet-status");
    if (!root || !window.EventSource) return;
    const stream = new EventSource(root.dataset.stream);
    stream.addEventListener("nodes", (event) => {
      for (const node of JSON.parse(event.data)) setStatus(node.name, node.status);
    });
  }

  // One node: live charts over its 1 s stream, with history for the chosen window ---
  function liveNode() {
    const root = document.getElementById("node-live");
    if (!root || !window.EventSource) return;
    const charts = Object.fromEntries(KEYS.map((k) => [k, root.querySelector(`svg[data-chart="${k}"]`)]));
    const buttons = [...root.querySelectorAll("[data-window]")];
    let windowKey = "15m";
    let history = [];
    const live = [];
    let samples = 0;
    const redraw = () => {
      const points = history.concat(live);
      const now = Date.now();
      for (const key of KEYS) chart(charts[key], points.map((p) => ({ t: p.t, v: p[key] })), WINDOW_MS[windowKey], now);
    };
    const load = (key) => {
      windowKey = key;
      for (const b of buttons) {
        const on = b.dataset.window === key;
        b.classList.toggle("selected", on);
        b.setAttribute("aria-pressed", String(on));
      }
      redraw();
      getJson(`${root.dataset.history}?window=${encodeURIComponent(key)}`)
        .then((body) => { if (windowKey === key) { history = historyPoints(body); redraw(); } })
        .catch(() => field(root, "live", "history unavailable"));
    };
    for (const b of buttons) b.addEventListener("click", () => load(b.dataset.window));
    load(windowKey);

    // Opening this stream is what makes the node sample every second; closing the
    // page ends it.
    const stream = new EventSource(root.dataset.live);
    stream.addEventListener("sample", (event) => {
      const r = readings(JSON.parse(event.data));
      if (!r) return;
      live.push({ t: Date.now(), ...r });
      if (live.length > LIVE_KEEP) live.shift();
      samples += 1;
      field(root, "samples", String(samples));
      field(root, "live", "live, every second");
      for (const key of KEYS) field(root, key, pct(r[key]));
      field(root, "gpu_note", r.gpu === null ? "no GPU reported" : "");
      redraw();
    });
    stream.addEventListener("unreachable", (event) => {
      const body = JSON.parse(event.data);
      field(root, "live", `unreachable: ${body.reason}`);
    });
    stream.addEventListener("error", () => field(root, "live", "reconnecting…"));
  }

  // Container logs: the tail, then each new line, until the panel is closed ---------
  function containerLogs() {
    const panel = document.getElementById("logs-panel");
    if (!panel || !window.EventSource) return;
    const out = panel.querySelector("pre");
    let stream = null;
    const stop = () => {
      if (stream) stream.close();
      stream = null;
    };
    const append = (line) => {
      const stick = out.scrollTop + out.clientHeight >= out.scrollHeight - 4;
      out.appendChild(document.createTextNode(`${line}\n`));
      while (out.childNodes.length > LOG_LINES_KEPT) out.removeChild(out.firstChild);
      if (stick) out.scrollTop = out.scrollHeight;
    };
    const explain = async (url) => {
      // The stream refused before its first line: the plain read says why.
      try {
        const response = await fetch(url.replace(/\/logs\/stream$/, "/logs?tail=1"), { headers: { Accept: "application/json" } });
        const body = await response.json();
        return response.ok ? "disconnected" : `stopped: ${body.error.message}`;
      } catch (err) {
        return "disconnected";
      }
    };
    const open = (url, title) => {
      stop();
      out.textContent = "";
      panel.hidden = false;
      field(panel, "logs_title", `Logs · ${title}`);
      field(panel, "logs_status", "connecting…");
      let lines = 0;
      const current = (stream = new EventSource(url));
      current.addEventListener("open", () => field(panel, "logs_status", "following"));
      current.addEventListener("line", (event) => {
        lines += 1;
        append(JSON.parse(event.data));
      });
      current.addEventListener("error", (event) => {
        current.close();
        if (stream === current) stream = null;
        if (event.data) {
          field(panel, "logs_status", `stopped: ${JSON.parse(event.data).message}`);
        } else if (lines === 0) {
          explain(url).then((text) => field(panel, "logs_status", text));
        } else {
          field(panel, "logs_status", "disconnected");
        }
      });
      panel.scrollIntoView({ block: "nearest" });
    };
    document.addEventListener("click", (event) => {
      const target = event.target instanceof Element ? event.target : null;
      const button = target && target.closest("[data-logs]");
      if (button) {
        open(button.dataset.logs, button.dataset.logsTitle || "");
      } else if (target && target.closest("[data-logs-close]")) {
        stop();
        panel.hidden = true;
      }
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    liveNodes();
    liveStatus();
    liveNode();
    containerLogs();
  });
})();

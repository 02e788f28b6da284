// Nebula Command dashboard: CSRF for htmx and fetch, and the live Overview over SSE.
(function () {
  "use strict";
  const csrf = () => document.querySelector('meta[name="csrf-token"]')?.content || "";

  document.addEventListener("htmx:configRequest", (event) => {
    event.detail.headers["X-CSRF-Token"] = csrf();
  });

  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  function bytes(value) {
    let size = value, unit = 0;
    while (size >= 1024 && unit < units.length - 1) { size /= 1024; unit += 1; }
    return unit === 0 ? `${size} B` : `${size.toFixed(1)} ${units[unit]}`;
  }
  function duration(seconds) {
    const d = Math.floor(seconds / 86400), h = Math.floor((seconds % 86400) / 3600);
    const m = Math.floor((seconds % 3600) / 60);
    return d ? `${d}d ${h}h` : h ? `${h}h ${m}m` : `${m}m`;
  }
  function set(root, field, text) {
    const el = root.querySelector(`[data-field="${field}"]`);
    if (el) el.textContent = text;
  }
  function bar(root, name, percent) {
    const el = root.querySelector(`[data-bar="${name}"]`);
    if (el) el.style.width = `${Math.min(100, Math.max(0, percent))}%`;
  }

  function liveOverview() {
    const root = document.getElementById("overview");
    if (!root || !window.EventSource) return;
    const page = document.querySelector("main");
    const stream = new EventSource(root.dataset.stream);
    stream.addEventListener("system", (event) => {
      const s = JSON.parse(event.data);
      set(root, "cpu", `${Math.round(s.cpu_percent)}%`);
      bar(root, "cpu", s.cpu_percent);
      set(root, "cpu_detail", `${s.cpu_count} cores` + (s.load_avg.length ? ` · load ${s.load_avg.join(" ")}` : ""));
      set(root, "memory", `${Math.round(s.memory.percent)}%`);
      bar(root, "memory", s.memory.percent);
      set(root, "memory_detail", `${bytes(s.memory.used)} of ${bytes(s.memory.total)}`);
      set(root, "disk", `${Math.round(s.disk.percent)}%`);
      bar(root, "disk", s.disk.percent);
      set(root, "disk_detail", `${bytes(s.disk.free)} free of ${bytes(s.disk.total)}`);
      set(root, "uptime", duration(s.uptime_s));
      const db = s.database;
      set(root, "db_status", db.ok ? "online" : "unreachable");
      set(root, "db_detail", db.ok ? `${db.backend} ${db.version}` : db.error);
      set(page, "live", "connected");
      set(page, "updated", new Date(s.taken_at * 1000).toLocaleTimeString());
    });
    stream.addEventListener("error", () => set(page, "live", "reconnecting…"));
  }

  function liveJob() {
    const root = document.getElementById("job");
    if (!root || !root.dataset.stream || !window.EventSource) return;
    const stream = new EventSource(root.dataset.stream);
    const log = document.getElementById("job-log");
    stream.addEventListener("job", (event) => {
      const job = JSON.parse(event.data);
      set(root, "status", job.status);
      set(root, "progress", `${job.progress}%`);
      bar(root, "progress", job.progress);
      set(root, "progress_message", job.progress_message);
      set(root, "attempts", `${job.attempts} of ${job.max_attempts}`);
      set(root, "worker", job.lease_owner || "—");
      set(root, "error", job.error || "—");
      if (job.result !== null) set(root, "result", JSON.stringify(job.result));
      if (["succeeded", "failed", "cancelled"].includes(job.status)) {
        stream.close();
        window.location.reload(); // show the actions that fit the final state
      }
    });
    stream.addEventListener("log", (event) => {
      const entry = JSON.parse(event.data);
      log.querySelector("tr.empty")?.remove();
      const row = document.createElement("tr");
      for (const text of [new Date(entry.at).toISOString().replace("T", " ").slice(0, 19) + " UTC", entry.kind, entry.message]) {
        const cell = document.createElement("td");
        cell.textContent = text;
        row.appendChild(cell);
      }
      log.appendChild(row);
    });
  }

  document.addEventListener("DOMContentLoaded", liveOverview);
  document.addEventListener("DOMContentLoaded", liveJob);
})();

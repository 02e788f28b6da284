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

  document.addEventListener("DOMContentLoaded", liveOverview);
})();

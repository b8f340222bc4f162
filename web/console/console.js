// The operator console's page. It logs in once with the operator token
// (posted as JSON; the server answers with an HttpOnly session cookie and
// a CSRF token for state-changing calls), then refreshes the server's own
// data every two seconds and draws the throughput chart from the
// server's metrics.
"use strict";

(() => {
  const { el, fill, get, post, clock, stateClass } = syncpay;
  const $ = (id) => document.getElementById(id);
  const SVG = "http://www.w3.org/2000/svg";
  const REFRESH_MS = 2000;
  // Verify again at most this often, and only when new postings appeared.
  const VERIFY_EVERY_MS = 5000;

  let csrf = null;
  let timer = null;
  let lastPostingId = null;
  let verifiedPostingId = null;
  let lastVerifyAt = 0;

  function showLogin() {
    clearInterval(timer);
    $("dashboard").classList.add("hidden");
    $("logout").classList.add("hidden");
    $("live").classList.add("hidden");
    $("login-view").classList.remove("hidden");
    $("token").focus();
  }

  function showDashboard() {
    $("login-view").classList.add("hidden");
    $("dashboard").classList.remove("hidden");
    $("logout").classList.remove("hidden");
    $("live").classList.remove("hidden");
    refresh();
    verify();
    clearInterval(timer);
    timer = setInterval(refresh, REFRESH_MS);
  }

  async function login(event) {
    event.preventDefault();
    const error = $("login-error");
    error.classList.add("hidden");
    $("login").disabled = true;
    try {
      const session = await post("/api/login", { token: $("token").value });
      csrf = session.csrf;
      $("token").value = "";
      showDashboard();
    } catch (e) {
      error.textContent = e.message;
      error.classList.remove("hidden");
      $("token").select();
    } finally {
      $("login").disabled = false;
    }
  }

  async function logout() {
    try { await post("/api/logout", {}, { "X-CSRF-Token": csrf || "" }); } catch (_) { /* the session ends anyway */ }
    csrf = null;
    showLogin();
  }

  /** GET, going back to the login form when the session has ended. */
  async function read(path) {
    try {
      return await get(path);
    } catch (e) {
      if (e.status === 401) showLogin();
      throw e;
    }
  }

  function renderAccounts(data) {
    fill($("accounts").tBodies[0], data.accounts.map((a) =>
      el("tr", { dataset: { account: a.name, balance: a.balance_minor }, class: a.balance_minor < 0 ? "negative" : null },
        el("td", { class: "account", text: a.name }),
        el("td", { class: "num", text: a.debits }),
        el("td", { class: "num", text: a.credits }),
        el("td", { class: "num balance", text: a.balance }))));
  }

  function renderPostings(data) {
    lastPostingId = data.postings.length ? data.postings[0].id : 0;
    fill($("postings").tBodies[0], data.postings.map((p) =>
      el("tr", {},
        el("td", { class: "num", text: p.id }),
        el("td", { class: "num", text: p.set }),
        el("td", { text: p.kind }),
        el("td", { class: "account", text: p.account }),
        el("td", { class: "num", text: p.debit }),
        el("td", { class: "num", text: p.credit }),
        el("td", { class: "trade", text: p.trade_id }))));
  }

  function renderTrades(data) {
    fill($("states"), Object.entries(data.by_state).map(([state, n]) =>
      el("span", { class: `badge ${stateClass(state)}`, dataset: { state, count: n } }, `${state} ${n}`)));
    fill($("trades").tBodies[0], data.trades.map((t) =>
      el("tr", { dataset: { trade: t.trade_id, state: t.state } },
        el("td", { class: "when", text: clock(t.finished_at_ms || t.created_at_ms) }),
        el("td", { class: "trade", text: t.trade_id }),
        el("td", { text: t.shop }),
        el("td", { class: "mono", text: t.payer }),
        el("td", { text: t.description }),
        el("td", { class: "num", text: t.amount }),
        el("td", {}, el("span", { class: `badge ${stateClass(t.state)}`, text: t.state }),
          t.failure_reason ? el("span", { class: "reason", text: t.failure_reason }) : null))));
    $("trades-empty").classList.toggle("hidden", data.trades.length > 0);
  }

  function renderStatements(data) {
    $("statement-month").textContent = data.month;
    if (!data.statements.length) {
      fill($("statements"), el("div", { class: "muted", text: "No carrier-billed subscribers." }));
      return;
    }
    fill($("statements"), data.statements.map((s) =>
      el("div", { class: "statement" },
        el("div", { class: "statement-head" },
          el("span", {}, `${s.carrier} · `, el("span", { class: "mono", text: s.subscriber })),
          el("span", {}, `owes ${s.total} of cap ${s.cap}`)),
        el("table", {},
          el("thead", {}, el("tr", {}, el("th", { text: "Shop" }), el("th", { class: "num", text: "Charged" }),
            el("th", { class: "num", text: "Refunded" }), el("th", { class: "num", text: "Carrier fee" }))),
          el("tbody", {}, s.lines.map((l) => el("tr", {},
            el("td", { text: l.shop_name }), el("td", { class: "num", text: l.amount }),
            el("td", { class: "num", text: l.refunded }), el("td", { class: "num", text: l.fee }))))))));
  }

  function renderVerify(r) {
    const status = $("ledger-status");
    status.className = `ledger-status ${r.ok ? "ok" : "bad"}`;
    status.dataset.ok = String(r.ok);
    status.textContent = r.ok ? "✓ The ledger verifies" : `✗ ${r.violations.length} violation(s)`;
    $("ledger-counts").textContent =
      `${r.accounts_checked} accounts, ${r.postings_checked} postings, ${r.trades_checked} trades checked at ${clock(r.at_ms)}`;
    fill($("violations"), r.violations.map((v) => el("li", { text: v })));
  }

  async function verify() {
    lastVerifyAt = Date.now();
    $("verify").disabled = true;
    try {
      renderVerify(await read("/api/verify"));
      verifiedPostingId = lastPostingId;
    } catch (e) {
      $("ledger-status").textContent = `Cannot verify: ${e.message}`;
    } finally {
      $("verify").disabled = false;
    }
  }

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    return node;
  }

  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
    return 10 * p;
  }

  function drawChart(points, intervalMs) {
    const W = 720, H = 220, L = 44, R = 48, T = 10, B = 24;
    const span = 300; // seconds shown
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none" });
    const now = points.length ? points[points.length - 1].at_ms : Date.now();
    const x = (ms) => L + (W - L - R) * (1 - (now - ms) / (span * 1000));
    const maxRate = niceMax(Math.max(0, ...points.map((p) => p.settled_per_second)));
    const lat = points.filter((p) => p.mean_ms !== null);
    const maxLat = niceMax(Math.max(0, ...lat.map((p) => p.mean_ms)));
    const yRate = (v) => H - B - (H - B - T) * (v / maxRate);
    const yLat = (v) => H - B - (H - B - T) * (v / maxLat);
    root.append(svg("line", { class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B }));
    root.append(svg("line", { class: "axis", x1: L, y1: T, x2: W - R, y2: T }));
    const label = (text, attrs) => { const t = svg("text", attrs); t.textContent = text; root.append(t); };
    label(String(maxRate), { x: L - 6, y: T + 4, "text-anchor": "end" });
    label("0", { x: L - 6, y: H - B + 4, "text-anchor": "end" });
    label(maxLat >= 1000 ? `${maxLat / 1000} s` : `${maxLat} ms`, { x: W - R + 6, y: T + 4 });
    label("0", { x: W - R + 6, y: H - B + 4 });
    label("−5 min", { x: L, y: H - 6 });
    label("now", { x: W - R, y: H - 6, "text-anchor": "end" });
    const barWidth = Math.max(1, (W - L - R) * (intervalMs / 1000) / span - 1);
    for (const p of points) {
      if (p.settled_per_second <= 0 || now - p.at_ms > span * 1000) continue;
      const top = yRate(p.settled_per_second);
      root.append(svg("rect", { class: "bar", x: x(p.at_ms) - barWidth, y: top, width: barWidth, height: H - B - top }));
    }
    const path = lat.filter((p) => now - p.at_ms <= span * 1000)
      .map((p, i) => `${i ? "L" : "M"}${x(p.at_ms).toFixed(1)},${yLat(p.mean_ms).toFixed(1)}`).join(" ");
    if (path) root.append(svg("path", { class: "lat", d: path }));
    fill($("chart"), root);
  }

  function renderMetrics(m) {
    $("chart-off").classList.toggle("hidden", m.enabled);
    $("chart").classList.toggle("hidden", !m.enabled);
    if (!m.enabled) return;
    const recent = m.points.slice(-10);
    const settled = recent.reduce((n, p) => n + p.settled, 0);
    const seconds = recent.length * (m.interval_ms / 1000);
    $("fig-rate").textContent = seconds ? (settled / seconds).toFixed(1) : "–";
    const withLat = recent.filter((p) => p.mean_ms !== null);
    const weighted = withLat.reduce((n, p) => n + p.mean_ms * p.settled, 0);
    const weight = withLat.reduce((n, p) => n + p.settled, 0);
    $("fig-latency").textContent = weight ? `${Math.round(weighted / weight)} ms` : "–";
    const p95s = recent.map((p) => p.p95_ms).filter((v) => v !== null);
    $("fig-p95").textContent = p95s.length ? `${Math.round(Math.max(...p95s))} ms` : "–";
    $("fig-open").textContent = m.totals ? String(m.totals.open) : "–";
    if (m.totals) {
      const f = m.totals.finished || {};
      const parts = [`${m.totals.created} created`].concat(
        ["SETTLED", "DECLINED", "EXPIRED", "CANCELLED", "FAILED"].map((s) => `${f[s] || 0} ${s.toLowerCase()}`));
      $("since-start").textContent = parts.join(" · ");
    }
    drawChart(m.points, m.interval_ms);
  }

  async function refresh() {
    try {
      const [accounts, postings, trades, statements, metrics] = await Promise.all([
        read("/api/accounts"), read("/api/postings"), read("/api/trades"), read("/api/statements"), read("/api/metrics"),
      ]);
      renderAccounts(accounts);
      renderPostings(postings);
      renderTrades(trades);
      renderStatements(statements);
      renderMetrics(metrics);
      $("updated").textContent = clock(Date.now());
      if (lastPostingId !== verifiedPostingId && Date.now() - lastVerifyAt >= VERIFY_EVERY_MS) verify();
    } catch (e) {
      $("updated").textContent = `not updated: ${e.message}`;
    }
  }

  document.addEventListener("DOMContentLoaded", async () => {
    $("login-form").addEventListener("submit", login);
    $("logout").addEventListener("click", logout);
    $("verify").addEventListener("click", verify);
    try {
      const session = await get("/api/session");
      if (session.logged_in) {
        csrf = session.csrf;
        showDashboard();
        return;
      }
    } catch (_) { /* show the form */ }
    showLogin();
  });
})();

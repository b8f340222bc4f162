// The sample web shop's page: storefront, checkout, and the live trade.
// The backend (syncpay shop web) creates the trade through the shop's
// virtual register and streams its state; this page only shows it.
"use strict";

(() => {
  const { el, fill, get, post, follow, countdown, spaced, stateClass } = syncpay;
  const $ = (id) => document.getElementById(id);

  let items = [];
  let chosen = null;
  let stream = null;
  let current = null;
  let ticker = null;

  function show(section) {
    for (const id of ["store", "checkout", "progress"]) $(id).classList.toggle("hidden", id !== section);
  }

  function cover(item, small) {
    const node = el("div", { class: small ? "cover small" : "cover", "aria-hidden": "true" },
      small ? null : el("div", { class: "cover-title", text: item.name }),
      small ? null : el("div", { class: "cover-house", text: "Acme" }));
    node.style.setProperty("--cover", item.colour);
    return node;
  }

  async function loadCatalog() {
    try {
      const catalog = await get("/api/catalog");
      items = catalog.items;
      $("shop-name").textContent = catalog.shop_name;
      document.title = `${catalog.shop_name} — checkout with syncpay`;
      fill($("books"), items.map((item) =>
        el("li", { class: "card book", dataset: { item: item.id } },
          cover(item, false),
          el("div", {},
            el("div", { class: "book-name", text: item.name }),
            el("div", { class: "muted", text: item.blurb })),
          el("div", { class: "book-foot" },
            el("span", { class: "price", text: item.price }),
            el("button", { type: "button", class: "buy", onclick: () => startCheckout(item), "aria-label": `Buy ${item.name}` }, "Buy")))));
    } catch (e) {
      fill($("books"), el("li", { class: "alert", role: "alert", text: `The shop cannot load its catalogue: ${e.message}` }));
    }
  }

  function startCheckout(item) {
    chosen = item;
    // Nothing of the previous trade may linger for the next one.
    $("binding-code").textContent = "";
    $("trade-id").textContent = "";
    fill($("order-cover")).replaceWith(Object.assign(cover(item, true), { id: "order-cover" }));
    $("order-name").textContent = item.name;
    $("order-blurb").textContent = item.blurb;
    $("order-price").textContent = item.price;
    $("pay").textContent = `Pay ${item.price}`;
    $("pay").disabled = false;
    $("pay-error").classList.add("hidden");
    show("checkout");
    updateMethod();
    $("method-phone").checked ? $("number").focus() : $("method-bill").focus();
  }

  function updateMethod() {
    const phone = $("method-phone").checked;
    $("number-field").classList.toggle("hidden", !phone);
  }

  async function pay(event) {
    event.preventDefault();
    if (!chosen) return;
    const method = $("method-phone").checked ? "phone" : "bill";
    const number = $("number").value.trim();
    const error = $("pay-error");
    error.classList.add("hidden");
    if (method === "phone" && !number) {
      error.textContent = "Type your phone number first.";
      error.classList.remove("hidden");
      $("number").focus();
      return;
    }
    $("pay").disabled = true;
    $("pay").textContent = "Starting…";
    try {
      const trade = await post("/api/checkout", { item: chosen.id, method, number });
      startProgress(trade);
    } catch (e) {
      error.textContent = `The payment could not start: ${e.message}`;
      error.classList.remove("hidden");
      $("pay").disabled = false;
      $("pay").textContent = `Pay ${chosen.price}`;
    }
  }

  function startProgress(trade) {
    current = trade;
    $("binding-code").textContent = spaced(trade.binding_code);
    $("trade-id").textContent = trade.trade_id;
    $("progress-item").textContent = `${trade.item} · ${trade.amount} · ${trade.method === "bill" ? "on your phone bill" : "with your phone"}`;
    $("outcome").classList.add("hidden");
    $("receipt").classList.add("hidden");
    $("cancel").classList.remove("hidden");
    $("cancel").disabled = false;
    $("done").classList.add("hidden");
    show("progress");
    render(trade);
    // Keyboard users land on the one thing they can do while waiting.
    if (!trade.final) $("cancel").focus();
    if (stream) stream.close();
    stream = follow(`/api/trades/${encodeURIComponent(trade.trade_id)}/live`, (t) => { render(t); return t.final; });
    clearInterval(ticker);
    ticker = setInterval(() => current && !current.final && renderDeadline(current), 1000);
  }

  function renderDeadline(trade) {
    $("deadline").textContent = trade.final ? "" : `Time left to answer: ${countdown(trade.expires_at_ms)}`;
  }

  const TITLES = {
    SETTLED: "Paid",
    DECLINED: "Declined",
    EXPIRED: "Expired",
    CANCELLED: "Cancelled",
    FAILED: "Failed",
  };
  const MARKS = { ok: "✓", warn: "–", bad: "!" };

  function render(trade) {
    if (!current || trade.trade_id !== current.trade_id) return;
    current = trade;
    const badge = $("checkout-state");
    badge.textContent = trade.state;
    badge.className = `badge ${stateClass(trade.state)}`;
    $("status-message").textContent = trade.message;
    $("status-spinner").classList.toggle("hidden", trade.final);
    renderDeadline(trade);
    $("progress-title").textContent = trade.final ? (TITLES[trade.state] || trade.state) : "Confirm on your phone";
    if (!trade.final) return;

    clearInterval(ticker);
    $("status-line").classList.add("hidden");
    const kind = stateClass(trade.state);
    const outcome = $("outcome");
    outcome.className = `outcome ${kind}`;
    $("outcome-mark").textContent = MARKS[kind] || "";
    $("outcome-title").textContent = trade.state;
    $("outcome-message").textContent = trade.message;
    const reason = $("failure-reason");
    reason.textContent = trade.failure_reason ? `Reason: ${trade.failure_reason}` : "";
    reason.classList.toggle("hidden", !trade.failure_reason);
    $("code-box").classList.toggle("hidden", trade.state !== "SETTLED");
    $("cancel").classList.add("hidden");
    $("done").classList.remove("hidden");
    $("done").focus();

    if (trade.receipt) {
      const verdict = $("receipt-verdict");
      const names = { verified: "Verified", "terms-only": "Terms checked", failed: "Check failed" };
      const classes = { verified: "ok", "terms-only": "warn", failed: "bad" };
      verdict.textContent = names[trade.receipt.verdict] || trade.receipt.verdict;
      verdict.className = `badge ${classes[trade.receipt.verdict] || ""}`;
      verdict.dataset.verdict = trade.receipt.verdict;
      $("receipt-summary").textContent = trade.receipt.summary;
      fill($("receipt-details"), trade.receipt.details.map((d) => el("li", { text: d })));
      $("receipt").classList.remove("hidden");
    }
  }

  async function cancel() {
    if (!current) return;
    $("cancel").disabled = true;
    $("cancel").textContent = "Cancelling…";
    try {
      render(await post(`/api/trades/${encodeURIComponent(current.trade_id)}/cancel`, {}));
    } catch (e) {
      $("status-message").textContent = `Could not cancel: ${e.message}`;
      $("cancel").disabled = false;
    } finally {
      $("cancel").textContent = "Cancel payment";
    }
  }

  function backToStore() {
    if (stream) stream.close();
    stream = null;
    current = null;
    clearInterval(ticker);
    $("status-line").classList.remove("hidden");
    $("code-box").classList.remove("hidden");
    show("store");
    const first = document.querySelector(".buy");
    if (first) first.focus();
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("pay-form").addEventListener("submit", pay);
    $("method-phone").addEventListener("change", updateMethod);
    $("method-bill").addEventListener("change", updateMethod);
    $("back-to-store").addEventListener("click", backToStore);
    $("cancel").addEventListener("click", cancel);
    $("done").addEventListener("click", backToStore);
    loadCatalog();
  });
})();

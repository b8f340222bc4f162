// The handset page. The phone's Ed25519 key pair is made here with
// WebCrypto, with a private key that cannot be exported, and kept in this
// browser's IndexedDB (a CryptoKey can be stored without being readable).
// The public key is enrolled through the carrier. Offers arrive live; the
// page tells the carrier when one is on screen (the carrier then
// acknowledges delivery to the server), and signs exactly the bytes the
// carrier hands it for the button the buyer presses.
"use strict";

(() => {
  const { el, fill, get, post, follow, toBase64, fromBase64, toHex, countdown, clock, spaced, stateClass } = syncpay;
  const $ = (id) => document.getElementById(id);

  const DB_NAME = "syncpay-phone";
  const STORE = "keys";

  let phone = null; // { number, digits, label }
  let keys = null; // { privateKey, publicRaw }
  let keyState = "pending"; // pending | ready | failed
  let latest = null; // the newest screen snapshot
  const shownSent = new Set();
  const answering = new Set();
  const noticed = new Set();
  let shownOffer = null;

  function openDb() {
    return new Promise((resolve, reject) => {
      const request = indexedDB.open(DB_NAME, 1);
      request.onupgradeneeded = () => request.result.createObjectStore(STORE);
      request.onsuccess = () => resolve(request.result);
      request.onerror = () => reject(request.error);
    });
  }

  async function storedKey(number) {
    try {
      const db = await openDb();
      return await new Promise((resolve, reject) => {
        const request = db.transaction(STORE, "readonly").objectStore(STORE).get(number);
        request.onsuccess = () => resolve(request.result || null);
        request.onerror = () => reject(request.error);
      });
    } catch (_) {
      return null;
    }
  }

  async function storeKey(number, record) {
    try {
      const db = await openDb();
      await new Promise((resolve, reject) => {
        const tx = db.transaction(STORE, "readwrite");
        tx.objectStore(STORE).put(record, number);
        tx.oncomplete = resolve;
        tx.onerror = () => reject(tx.error);
      });
    } catch (_) {
      // Without storage the key lives as long as the page; a reload makes
      // and enrolls a new one, as a new phone would.
    }
  }

  async function sha256Hex(bytes) {
    return toHex(await crypto.subtle.digest("SHA-256", bytes));
  }

  /** Reuses this browser's key if it is the one enrolled; else makes and enrolls a new one. */
  async function ensureKey(enrolledSha) {
    const status = $("key-status");
    try {
      const stored = await storedKey(phone.number);
      if (stored && enrolledSha && (await sha256Hex(stored.publicRaw)) === enrolledSha) {
        keys = stored;
      } else {
        const pair = await crypto.subtle.generateKey({ name: "Ed25519" }, false, ["sign", "verify"]);
        const publicRaw = await crypto.subtle.exportKey("raw", pair.publicKey);
        const enrolled = await post(`/api/phones/${phone.digits}/key`, { public_key: toBase64(publicRaw) });
        keys = { privateKey: pair.privateKey, publicRaw };
        if (enrolled.key_sha256 !== (await sha256Hex(publicRaw))) throw new Error("the carrier enrolled another key");
        await storeKey(phone.number, keys);
      }
      const hex = toHex(keys.publicRaw);
      const fingerprint = await sha256Hex(keys.publicRaw);
      const publicKey = $("public-key");
      publicKey.textContent = hex;
      publicKey.dataset.publicKey = hex;
      publicKey.dataset.privateExtractable = String(keys.privateKey.extractable);
      $("key-fingerprint").textContent = fingerprint;
      status.className = "key-status ok";
      fill(status, "✓ Signing key made in this browser, not exportable · ", el("code", { text: fingerprint.slice(0, 16) }));
      keyState = "ready";
    } catch (e) {
      keyState = "failed";
      status.className = "key-status bad";
      const why = e && e.name === "NotSupportedError" ? "this browser cannot make Ed25519 keys" : (e && e.message) || String(e);
      status.textContent = `This phone has no key: ${why}.`;
    }
    if (latest) render(latest);
  }

  function notice(text, kind) {
    const node = $("notice");
    node.textContent = text;
    node.className = `notice ${kind || ""}`;
  }

  function openOffer(screen) {
    // The oldest offer still waiting for the buyer: that is what a phone shows first.
    const waiting = screen.offers.filter((o) => o.status === "new" || o.status === "open" || o.status === "sending");
    return waiting.length ? waiting[waiting.length - 1] : null;
  }

  function renderOffer(offer) {
    const card = $("offer");
    if (!offer) {
      card.classList.add("hidden");
      $("idle").classList.remove("hidden");
      shownOffer = null;
      return;
    }
    $("idle").classList.add("hidden");
    card.classList.remove("hidden");
    card.dataset.trade = offer.trade_id;
    $("offer-shop").textContent = offer.shop_name;
    $("offer-register").textContent = `Register: ${offer.register_label}`;
    $("offer-amount").textContent = offer.amount;
    $("offer-description").textContent = offer.description;
    $("offer-code").textContent = spaced(offer.binding_code);
    $("offer-code").dataset.code = offer.binding_code;
    $("offer-deadline").textContent = `Answer within ${countdown(offer.expires_at_ms)}`;
    const busy = offer.status === "sending" || answering.has(offer.trade_id);
    $("approve").disabled = busy || !offer.sign;
    $("decline").disabled = busy || !offer.sign;
    $("sending").classList.toggle("hidden", !busy);
    if (shownOffer !== offer.trade_id) {
      shownOffer = offer.trade_id;
      $("offer-error").classList.add("hidden");
      $("approve").focus();
    }
    // On screen now: tell the carrier, which acknowledges it to the server.
    if (offer.status === "new" && !shownSent.has(offer.trade_id)) {
      shownSent.add(offer.trade_id);
      post(`/api/phones/${phone.digits}/shown`, { trade_id: offer.trade_id }).catch((e) => {
        shownSent.delete(offer.trade_id);
        notice(`Could not reach the carrier: ${e.message}`, "bad");
      });
    }
  }

  function historyItem(o) {
    let what;
    let kind;
    if (o.status === "withdrawn") {
      what = o.withdrawn_reason;
      kind = stateClass(o.withdrawn);
    } else if (o.result) {
      what = o.result.text;
      kind = stateClass(o.result.state);
    } else {
      what = o.status === "sending" ? "Sending your answer…" : "Waiting for you";
      kind = "info";
    }
    const state = o.status === "withdrawn" ? o.withdrawn : (o.result ? o.result.state : "OPEN");
    return el("li", { dataset: { trade: o.trade_id, state } },
      el("span", { class: "what" },
        el("span", {}, el("strong", { text: o.shop_name }), " · ", o.description),
        el("span", { class: "why" }, el("span", { class: `badge ${kind}`, text: state }), " ", what)),
      el("span", { class: "amount", text: o.amount }));
  }

  function render(screen) {
    latest = screen;
    $("signal").className = `signal ${screen.carrier_connected ? "on" : "off"}`;
    if (keyState !== "ready") return;
    const offer = openOffer(screen);
    renderOffer(offer);
    const past = screen.offers.filter((o) => !offer || o.trade_id !== offer.trade_id);
    fill($("history"), past.map(historyItem));
    $("history-empty").classList.toggle("hidden", past.length > 0);
    // Say once what became of each offer that left the screen.
    for (const o of screen.offers) {
      if (noticed.has(o.trade_id)) continue;
      if (o.status === "withdrawn") {
        noticed.add(o.trade_id);
        notice(`${o.shop_name}, ${o.amount}: ${o.withdrawn_reason}`, "");
      } else if (o.status === "done" && o.result && answering.has(o.trade_id)) {
        noticed.add(o.trade_id);
        answering.delete(o.trade_id);
        notice(`${o.shop_name}, ${o.amount}: ${o.result.text}`, o.result.state === "SETTLED" ? "ok" : (o.result.state === "DECLINED" ? "" : "bad"));
      }
    }
  }

  async function answer(decision) {
    const offer = latest && openOffer(latest);
    if (!offer || !offer.sign || !keys) return;
    answering.add(offer.trade_id);
    renderOffer(offer);
    $("sending-text").textContent = decision === "approve" ? "Signing and sending your approval…" : "Signing and sending your decline…";
    try {
      // Exactly the bytes the carrier gave for this button; this page does
      // not need to know how they are laid out.
      const signature = await crypto.subtle.sign({ name: "Ed25519" }, keys.privateKey, fromBase64(offer.sign[decision]));
      await post(`/api/phones/${phone.digits}/answer`, { trade_id: offer.trade_id, decision, signature: toBase64(signature) });
    } catch (e) {
      answering.delete(offer.trade_id);
      const error = $("offer-error");
      error.textContent = `Not sent: ${e.message}`;
      error.classList.remove("hidden");
      if (latest) render(latest);
    }
  }

  async function showChooser() {
    $("chooser").classList.remove("hidden");
    try {
      const list = await get("/api/phones");
      $("carrier-name").textContent = list.carrier;
      fill($("phones"), list.phones.map((p) =>
        el("li", {}, el("a", { href: `/phone/${p.digits}` },
          el("span", {}, el("strong", { text: p.label })),
          el("span", { class: "phone-number", text: p.number })))));
    } catch (e) {
      fill($("phones"), el("li", { class: "alert", text: `Cannot list the phones: ${e.message}` }));
    }
  }

  async function showPhone(digits) {
    $("phone").classList.remove("hidden");
    let list;
    try {
      list = await get("/api/phones");
    } catch (e) {
      $("key-status").textContent = `Cannot reach the carrier: ${e.message}`;
      return;
    }
    $("carrier-name").textContent = list.carrier;
    phone = list.phones.find((p) => p.digits === digits);
    if (!phone) {
      $("key-status").textContent = "This carrier has no such phone.";
      return;
    }
    $("owner").textContent = phone.label;
    $("number").textContent = phone.number;
    document.title = `${phone.label} — ${list.carrier}`;
    let first = true;
    follow(`/api/phones/${digits}/live`, (screen) => {
      if (first) {
        first = false;
        ensureKey(screen.key_sha256);
      }
      render(screen);
      return false;
    }, (state) => {
      if (state === "reconnecting") $("signal").className = "signal off";
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("approve").addEventListener("click", () => answer("approve"));
    $("decline").addEventListener("click", () => answer("decline"));
    const tick = () => {
      $("clock").textContent = clock(Date.now()).slice(0, 5);
      const offer = latest && openOffer(latest);
      if (offer) $("offer-deadline").textContent = `Answer within ${countdown(offer.expires_at_ms)}`;
    };
    tick();
    setInterval(tick, 1000);
    const match = location.pathname.match(/^\/phone\/(\d+)$/);
    if (match) showPhone(match[1]);
    else showChooser();
  });
})();

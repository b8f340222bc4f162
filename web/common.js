// syncpay web pages: helpers the shop, the handset page and the console
// share. Plain browser JavaScript, no build step, nothing fetched from
// elsewhere. Text from the server is only ever put into pages as text
// (textContent), never as HTML.
"use strict";

const syncpay = (() => {
  /** Builds an element: el("p", {class: "x"}, "text", child, …). */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (key === "dataset") Object.assign(node.dataset, value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  /** Replaces a node's children. */
  function fill(node, ...children) {
    node.replaceChildren();
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function answer(response) {
    let body = null;
    try { body = await response.json(); } catch (_) { /* not JSON */ }
    if (!response.ok) {
      throw new ApiError(response.status, (body && body.error) || `${response.status} ${response.statusText}`);
    }
    return body;
  }

  /** GET a JSON resource of this page's own server. */
  async function get(path) {
    return answer(await fetch(path, { credentials: "same-origin", headers: { Accept: "application/json" } }));
  }

  /** POST JSON to this page's own server (the only way to change state). */
  async function post(path, body, headers) {
    return answer(await fetch(path, {
      method: "POST",
      credentials: "same-origin",
      headers: Object.assign({ "Content-Type": "application/json", Accept: "application/json" }, headers || {}),
      body: JSON.stringify(body || {}),
    }));
  }

  /**
   * Follows a live stream of JSON snapshots. `onSnapshot` gets each one and
   * returns true to stop following. The browser reconnects by itself when
   * the connection drops; `onState` hears "open" and "reconnecting".
   */
  function follow(path, onSnapshot, onState) {
    const source = new EventSource(path);
    source.addEventListener("snapshot", (event) => {
      let data;
      try { data = JSON.parse(event.data); } catch (_) { return; }
      if (onSnapshot(data) === true) source.close();
    });
    source.addEventListener("open", () => onState && onState("open"));
    source.addEventListener("error", () => onState && onState(source.readyState === EventSource.CLOSED ? "closed" : "reconnecting"));
    return source;
  }

  function toBase64(buffer) {
    const bytes = new Uint8Array(buffer);
    let text = "";
    for (const b of bytes) text += String.fromCharCode(b);
    return btoa(text);
  }

  function fromBase64(text) {
    const raw = atob(text);
    const bytes = new Uint8Array(raw.length);
    for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
    return bytes;
  }

  function toHex(buffer) {
    return Array.from(new Uint8Array(buffer), (b) => b.toString(16).padStart(2, "0")).join("");
  }

  /** "1:05" for 65 s; "0:00" once passed. */
  function countdown(untilMs) {
    const left = Math.max(0, Math.round((untilMs - Date.now()) / 1000));
    return `${Math.floor(left / 60)}:${String(left % 60).padStart(2, "0")}`;
  }

  function clock(ms) {
    if (!ms) return "";
    return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  }

  /** "123 456" for people. */
  function spaced(code) {
    return code && code.length === 6 ? `${code.slice(0, 3)} ${code.slice(3)}` : (code || "");
  }

  /** The badge class for a trade state. */
  function stateClass(state) {
    switch (state) {
      case "SETTLED": return "ok";
      case "PENDING": case "OFFERED": return "info";
      case "DECLINED": case "EXPIRED": case "CANCELLED": return "warn";
      default: return "bad";
    }
  }

  return { el, fill, get, post, follow, toBase64, fromBase64, toHex, countdown, clock, spaced, stateClass, ApiError };
})();

// Live updates: on each fleet event, re-read this page and swap its main
// part, unless the operator is typing in a form. No framework, no inline script.
"use strict";
(function () {
  const live = document.getElementById("live");
  if (!live || !window.EventSource) return;
  let timer = null;
  function refresh() {
    const a = document.activeElement;
    if (a && (a.tagName === "INPUT" || a.tagName === "TEXTAREA" || a.tagName === "SELECT")) return;
    fetch(location.href, { credentials: "same-origin", cache: "no-store" })
      .then((r) => (r.ok ? r.text() : Promise.reject(r.status)))
      .then((text) => {
        const doc = new DOMParser().parseFromString(text, "text/html");
        const fresh = doc.getElementById("main");
        const main = document.getElementById("main");
        if (fresh && main) {
          main.replaceChildren(...Array.from(fresh.childNodes).map((n) => document.importNode(n, true)));
          document.body.dataset.refreshed = String(Date.now());
        }
      })
      .catch(() => live.classList.add("off"));
  }
  const es = new EventSource("/ui/events");
  es.onopen = () => { live.classList.remove("off"); live.classList.add("on"); };
  es.onerror = () => { live.classList.remove("on"); live.classList.add("off"); };
  es.addEventListener("fleet", () => {
    // Events come in bursts (a plan, its findings): one re-read per burst.
    clearTimeout(timer);
    timer = setTimeout(refresh, 300);
  });
})();

// slapproxy dashboard: refresh the page's content in place every N seconds (data-refresh on
// <body>), without losing scroll or focus; a button pauses it (kept for the session). The
// pages work without this script: it only saves a reload.
(function () {
  "use strict";
  var body = document.body;
  var period = parseInt(body.getAttribute("data-refresh"), 10) || 0;
  body.classList.add("has-js");
  var button = document.getElementById("refresh-toggle");
  if (!period || !button || !window.fetch || !window.DOMParser) { return; }
  var key = "slapproxy-dashboard-paused";
  var paused = window.sessionStorage && sessionStorage.getItem(key) === "1";
  function show() {
    button.textContent = paused ? "Resume" : "Pause";
    button.setAttribute("aria-pressed", paused ? "true" : "false");
  }
  button.addEventListener("click", function () {
    paused = !paused;
    if (window.sessionStorage) { sessionStorage.setItem(key, paused ? "1" : "0"); }
    show();
  });
  show();
  function openDetails() {
    var open = [];
    document.querySelectorAll("main details").forEach(function (d, i) { if (d.open) { open.push(i); } });
    return open;
  }
  function refresh() {
    if (paused || document.hidden) { return; }
    fetch(window.location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (text) {
        if (!text) { return; }
        var fresh = new DOMParser().parseFromString(text, "text/html").getElementById("content");
        var main = document.getElementById("content");
        if (!fresh || !main || fresh.innerHTML === main.innerHTML) { return; }
        var open = openDetails();
        var focused = document.activeElement;
        var focusedHref = focused && focused.getAttribute && focused.getAttribute("href");
        main.replaceChildren.apply(main, Array.prototype.slice.call(fresh.childNodes).map(function (n) {
          return document.importNode(n, true);
        }));
        document.querySelectorAll("main details").forEach(function (d, i) { if (open.indexOf(i) >= 0) { d.open = true; } });
        if (focusedHref) {
          var again = main.querySelector('a[href="' + focusedHref.replace(/"/g, '\\"') + '"]');
          if (again) { again.focus(); }
        }
      })
      .catch(function () { /* the proxy restarts or the network blips: try again next time */ });
  }
  window.setInterval(refresh, period * 1000);
}());

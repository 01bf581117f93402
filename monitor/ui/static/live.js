// Keeps the status page live: every few seconds, fetch /ui/live (the same server-rendered,
// escaped HTML as the page) and swap it in. DOMParser never runs scripts, and the page's
// Content-Security-Policy allows no inline ones. Open <details> stay open across updates, and
// what someone is typing into a form of the live part (adding a silence) is kept, focus too.
"use strict";
(function () {
  var EVERY_MS = 3000;
  var failures = 0;

  function state(text) {
    var el = document.getElementById("live-state");
    if (el) { el.textContent = text; }
  }

  // A <details> is known by the data-key of the element that holds it (a failure group).
  function key(details) {
    var owner = details.closest("[data-key]");
    return owner ? owner.getAttribute("data-key") : null;
  }

  function openDetails(root) {
    var open = [];
    root.querySelectorAll("details[open]").forEach(function (d) { open.push(key(d)); });
    return open;
  }

  function reopen(root, open) {
    root.querySelectorAll("details").forEach(function (d) {
      if (open.indexOf(key(d)) >= 0) { d.open = true; }
    });
  }

  // Text typed into an input with an id, and which one has the focus, carried to the new part.
  function keepTyping(current, fresh) {
    var focused = document.activeElement;
    current.querySelectorAll("input[id][type=text]").forEach(function (input) {
      var twin = fresh.querySelector("#" + CSS.escape(input.id));
      if (twin && input.value !== input.defaultValue) { twin.value = input.value; }
    });
    return focused && focused.id && current.contains(focused) ? focused.id : null;
  }

  function update() {
    if (document.hidden) {  // a tab nobody looks at costs the monitor nothing
      window.setTimeout(update, EVERY_MS);
      return;
    }
    fetch("/ui/live", {credentials: "same-origin", cache: "no-store"})
      .then(function (resp) {
        if (!resp.ok) { throw new Error("HTTP " + resp.status); }
        return resp.text();
      })
      .then(function (html) {
        var doc = new DOMParser().parseFromString(html, "text/html");
        var fresh = doc.getElementById("live");
        var current = document.getElementById("live");
        if (!fresh || !current) { throw new Error("no live section"); }
        var open = openDetails(current);
        var focusedId = keepTyping(current, fresh);
        current.replaceWith(document.adoptNode(fresh));
        reopen(fresh, open);
        if (focusedId) {
          var again = document.getElementById(focusedId);
          if (again) { again.focus(); }
        }
        failures = 0;
        state("· live");
      })
      .catch(function () {
        failures += 1;
        state("· cannot reach the monitor (" + failures + "), retrying");
      })
      .finally(function () {
        window.setTimeout(update, EVERY_MS * Math.min(failures + 1, 10));
      });
  }

  document.addEventListener("DOMContentLoaded", function () {
    // After an action the address ends in ?done=...: a reload should not repeat its notice.
    if (window.location.search) {
      window.history.replaceState(null, "", window.location.pathname + window.location.hash);
    }
    state("· live");
    window.setTimeout(update, EVERY_MS);
  });
})();

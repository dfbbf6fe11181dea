/* Live updates: an EventSource announces each new build; the changed part of the page is
   fetched and swapped in, without reloading the page. */
(function () {
  "use strict";
  var status = document.getElementById("live-status");
  var page = document.body.getAttribute("data-page");

  function setStatus(text, state) {
    if (!status) return;
    status.textContent = text;
    status.setAttribute("data-state", state);
  }

  // Scroll positions of the email frames, restored after a swap so writing feels steady.
  function frameScrolls(root) {
    var saved = {};
    root.querySelectorAll("iframe[data-frame]").forEach(function (frame) {
      try {
        saved[frame.getAttribute("data-frame")] = [frame.contentWindow.scrollX, frame.contentWindow.scrollY];
      } catch (err) { /* not loaded yet */ }
    });
    return saved;
  }

  function restoreScrolls(root, saved) {
    root.querySelectorAll("iframe[data-frame]").forEach(function (frame) {
      var position = saved[frame.getAttribute("data-frame")];
      if (!position) return;
      frame.addEventListener("load", function () {
        try { frame.contentWindow.scrollTo(position[0], position[1]); } catch (err) { /* ignore */ }
      }, { once: true });
    });
  }

  // Follow one event stream; `part` is the id of the element that carries data-version and
  // data-server, and `url` the fragment that replaces it.
  function follow(eventsUrl, part, url) {
    var latest = null;
    var busy = false;

    function shown() {
      var element = document.getElementById(part);
      return {
        element: element,
        version: Number(element.getAttribute("data-version")),
        server: element.getAttribute("data-server")
      };
    }

    function behind() {
      var now = shown();
      return latest !== null && (latest.server !== now.server || latest.version > now.version);
    }

    function swap(html) {
      var current = shown().element;
      var holder = document.createElement("div");
      holder.innerHTML = html;
      var fresh = holder.querySelector("#" + part);
      if (!fresh) return;
      restoreScrolls(fresh, frameScrolls(current));
      current.replaceWith(fresh);
    }

    function update() {
      if (busy || !behind()) return;
      busy = true;
      fetch(url, { cache: "no-store" })
        .then(function (response) {
          if (!response.ok) throw new Error("HTTP " + response.status);
          return response.text();
        })
        .then(function (html) {
          swap(html);
          busy = false;
          var now = shown();
          if (latest && latest.server === now.server && latest.version > now.version) update();
        })
        .catch(function () {
          busy = false;
          setStatus("update failed", "down");
        });
    }

    var source = new EventSource(eventsUrl);
    source.addEventListener("open", function () { setStatus("live", "live"); });
    source.addEventListener("error", function () { setStatus("reconnecting…", "down"); });
    source.addEventListener("build", function (event) {
      setStatus("live", "live");
      latest = JSON.parse(event.data);
      update();
    });
  }

  if (page === "issue") {
    follow("events", "panel", "panel");
  } else if (page === "index") {
    follow("/events", "issues", "/list");
  } else {
    setStatus("", "idle");
  }

  var form = document.getElementById("send-test");
  if (form) {
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var output = document.getElementById("send-result");
      var button = form.querySelector("button");
      var panel = document.getElementById("panel");
      var data = new FormData();
      data.set("token", panel ? panel.getAttribute("data-token") : "");
      button.disabled = true;
      output.textContent = "sending…";
      output.removeAttribute("data-ok");
      fetch(form.getAttribute("action"), { method: "POST", body: data })
        .then(function (response) { return response.json(); })
        .then(function (result) {
          output.textContent = result.message;
          output.setAttribute("data-ok", result.ok ? "true" : "false");
        })
        .catch(function () {
          output.textContent = "the preview server did not answer";
          output.setAttribute("data-ok", "false");
        })
        .finally(function () { button.disabled = false; });
    });
  }
})();

// The console's only script: htmx settings and the flash line. No inline scripts (Content-Security-Policy).
(function () {
  // Swap error answers too (4xx/5xx): the server retargets them to #flash with the reason.
  htmx.config.responseHandling = [
    {code: "204", swap: false},
    {code: "[23]..", swap: true},
    {code: "[45]..", swap: true, error: false},
  ];
  htmx.config.allowEval = false;
  htmx.config.selfRequestsOnly = true;
  document.body.addEventListener("htmx:configRequest", function (evt) {
    var meta = document.querySelector('meta[name="csrf-token"]');
    if (meta) { evt.detail.headers["X-CSRF-Token"] = meta.content; }
  });
  function flash(text) {
    var el = document.getElementById("flash");
    if (!el) { return; }
    el.innerHTML = "";
    var p = document.createElement("p");
    p.className = "flash ok";
    p.setAttribute("role", "status");
    p.textContent = text;
    el.appendChild(p);
  }
  document.body.addEventListener("flash", function (evt) { flash(evt.detail.value); });
  document.body.addEventListener("htmx:sendError", function () { flash("The console did not answer; try again."); });
  // Select-all checkboxes of bulk tables.
  document.body.addEventListener("change", function (evt) {
    var t = evt.target;
    if (t && t.matches("input[data-select-all]")) {
      document.querySelectorAll('input[name="' + t.dataset.selectAll + '"]').forEach(function (box) {
        box.checked = t.checked;
      });
    }
  });
})();

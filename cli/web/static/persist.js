/* persist web: the little the page does itself (everything else is htmx): keep the live table to a
   bounded length, copy a conversation as a prompt, and show where a thread was opened. */
(function () {
  var MAX_ROWS = 300;  // the live table stays short: each new row costs a layout of every row shown
  document.body.addEventListener("htmx:sseMessage", function () {
    var table = document.getElementById("rows");  // a <tbody> per event, newest on top
    if (!table) return;
    var empty = document.getElementById("no-rows");
    if (empty) empty.remove();
    var extra = table.querySelectorAll("tbody tr").length - MAX_ROWS;
    while (extra > 0 && table.tBodies.length) {
      var last = table.tBodies[table.tBodies.length - 1];
      if (last.rows.length <= extra) { extra -= last.rows.length; last.remove(); }
      else { while (extra-- > 0) last.lastElementChild.remove(); }
    }
  });
  document.body.addEventListener("htmx:afterSwap", function (ev) {
    if (ev.target.id !== "prompt-out") return;
    var text = document.getElementById("prompt-text");
    if (!text) return;
    text.select();
    var done = function () { var n = document.getElementById("copied"); if (n) n.hidden = false; };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text.value).then(done, function () { document.execCommand("copy"); done(); });
    } else { document.execCommand("copy"); done(); }
  });
  var target = location.hash && document.getElementById(location.hash.slice(1));
  if (target) { target.classList.add("target"); target.scrollIntoView({block: "center"}); }
})();
